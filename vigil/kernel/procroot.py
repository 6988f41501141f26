"""--procfs (Tetragon's option): where the agent reads the host's processes from.

The processes that existed before the agent (their stat, status, ns, exe, cwd, cgroup), the
liveness checks of those, and the host's namespaces (pid 1's) are read under this directory.
On a host it is /proc. In the Kubernetes DaemonSet the chart mounts the host's /proc at /procRoot
and sets `procfs: /procRoot`, as Tetragon's chart does; that mount is also what makes a uprobe
path such as /procRoot/<pid>/root/usr/bin/app resolve inside the agent's container. The agent's
own files (/proc/self/...) and the kernel's global ones (/proc/kallsyms, ...) are read where they
are, whatever this says."""
from __future__ import annotations

import os

HOST_PID_NS_INO = 0xEFFFFFFC  # the kernel's PROC_PID_INIT_INO: the initial pid namespace

_root = "/proc"


def proc() -> str:
    """The proc file system to read the host's processes from (no trailing slash)."""
    return _root


def check(path: str) -> str:
    """Why `path` cannot serve as --procfs ("" when it can): it must be a mounted proc file
    system (its `stat` file has the kernel's cpu lines)."""
    if not path:
        return "--procfs is empty (the host's proc file system, e.g. /proc)"
    if not os.path.isdir(path):
        return f"--procfs {path}: no such directory"
    try:
        with open(os.path.join(path, "stat"), "rb") as f:
            first = f.read(4)
    except OSError as e:
        return f"--procfs {path}: not a proc file system ({e.strerror or e}: {os.path.join(path, 'stat')})"
    if first != b"cpu ":
        return f"--procfs {path}: not a proc file system ({os.path.join(path, 'stat')} is not the kernel's)"
    return ""


def set_proc(path: str) -> None:
    """Read the host's processes under `path` from now on (check(path) passed)."""
    global _root
    _root = os.path.normpath(path) if path != "/" else path


def host_pid_ns_mismatch() -> tuple[bool, str]:
    """Whether --procfs is the host's, as Tetragon checks it: (True, why) when pid 1 there is
    not in the initial pid namespace (e.g. a container's own /proc without hostPID: warned);
    (False, why) when that cannot be told (pid 1's ns link not readable here, as in a sandbox
    without ptrace rights over pid 1: only noted); (False, "") when it is the host's."""
    p = os.path.join(_root, "1", "ns", "pid")
    try:
        ino = os.stat(p).st_ino
    except OSError as e:
        return False, (f"--procfs {_root}: cannot tell whether it is the host's proc file system "
                       f"({p}: {e.strerror or e})")
    if ino != HOST_PID_NS_INO:
        return True, (f"--procfs {_root} does not appear to be the host's proc file system ({p}: inode {ino}, "
                      f"the host pid namespace's is {HOST_PID_NS_INO}): processes outside it are not found at start")
    return False, ""
