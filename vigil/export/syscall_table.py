"""Rendering raw_syscalls/sys_enter in compact output: syscall names by number (the one
table per architecture, vigil.kernel.syscalls) and the argument signatures of common ones."""
from __future__ import annotations

from vigil.kernel import syscalls

# number -> name by ABI as Tetragon's syscall_id names it (x64, arm64): the kernel tables
SYSCALL_NAMES: dict[str, tuple[str, ...]] = {"x64": syscalls.names("x86_64"), "arm64": syscalls.names("arm64")}
# Argument signatures of frequently traced syscalls: (type, name) pairs.
SYSCALL_ARGS: dict[str, tuple[tuple[str, str], ...]] = {
    "read": (("unsigned int", "fd"), ("char *", "buf"), ("size_t", "count")),
    "write": (("unsigned int", "fd"), ("const char *", "buf"), ("size_t", "count")),
    "open": (("const char *", "filename"), ("int", "flags"), ("umode_t", "mode")),
    "openat": (("int", "dfd"), ("const char *", "filename"), ("int", "flags"), ("umode_t", "mode")),
    "close": (("unsigned int", "fd"),),
    "newfstatat": (("int", "dfd"), ("const char *", "filename"), ("struct stat *", "statbuf"), ("int", "flag")),
    "fstat": (("unsigned int", "fd"), ("struct stat *", "statbuf")),
    "lseek": (("unsigned int", "fd"), ("off_t", "offset"), ("unsigned int", "whence")),
    "mmap": (("unsigned long", "addr"), ("unsigned long", "len"), ("unsigned long", "prot"), ("unsigned long", "flags"),
             ("unsigned long", "fd"), ("unsigned long", "off")),
    "mprotect": (("unsigned long", "start"), ("size_t", "len"), ("unsigned long", "prot")),
    "munmap": (("unsigned long", "addr"), ("size_t", "len")),
    "brk": (("unsigned long", "brk"),),
    "ioctl": (("unsigned int", "fd"), ("unsigned int", "cmd"), ("unsigned long", "arg")),
    "execve": (("const char *", "filename"), ("const char *const *", "argv"), ("const char *const *", "envp")),
    "exit": (("int", "error_code"),),
    "exit_group": (("int", "error_code"),),
    "kill": (("pid_t", "pid"), ("int", "sig")),
    "getpid": (),
    "setuid": (("uid_t", "uid"),),
    "setgid": (("gid_t", "gid"),),
    "socket": (("int", "family"), ("int", "type"), ("int", "protocol")),
    "connect": (("int", "fd"), ("struct sockaddr *", "uservaddr"), ("int", "addrlen")),
    "bind": (("int", "fd"), ("struct sockaddr *", "umyaddr"), ("int", "addrlen")),
    "listen": (("int", "fd"), ("int", "backlog")),
    "accept": (("int", "fd"), ("struct sockaddr *", "upeer_sockaddr"), ("int *", "upeer_addrlen")),
    "dup": (("unsigned int", "fildes"),),
    "dup2": (("unsigned int", "oldfd"), ("unsigned int", "newfd")),
    "unlink": (("const char *", "pathname"),),
    "unlinkat": (("int", "dfd"), ("const char *", "pathname"), ("int", "flag")),
    "mount": (("char *", "dev_name"), ("char *", "dir_name"), ("char *", "type"), ("unsigned long", "flags"),
              ("void *", "data")),
    "setns": (("int", "fd"), ("int", "nstype")),
    "ptrace": (("long", "request"), ("long", "pid"), ("unsigned long", "addr"), ("unsigned long", "data")),
}
