"""Decoding of raw kernel records (bpf/include/vigil_events.h) into typed objects.

Decoders are registered per op in a table filled at import time; a record
with an unknown op or a bad size raises DecodeError (counted by the caller).
"""
from __future__ import annotations

from collections.abc import Callable

from vigil.core import native
from vigil.kernel.layouts import Layout

OP_EXEC = 1
OP_CLONE = 2
OP_EXIT = 3
OP_GENERIC = 10
OP_NETDENY = 11
OP_DATA = 12

# header flags (enum vigil_exec_flags)
F_ARGS_TRUNC = 1 << 0
F_PATH_TRUNC = 1 << 1
F_CWD_TRUNC = 1 << 2
F_ERR_ARGS = 1 << 3
F_ERR_CWD = 1 << 4
F_ERR_PATH = 1 << 5
F_NO_PARENT = 1 << 6
F_EXE_DELETED = 1 << 7
F_PATH_NOT_ROOTED = 1 << 8
F_CWD_NOT_ROOTED = 1 << 9
F_FILENAME_TRUNC = 1 << 10
F_CLONE = 1 << 11  # exec: the first since the process was forked
F_DATA_FILENAME = 1 << 12  # exec: a name Tetragon's exec event sends apart (its flag word dataFilename)
F_DATA_ARGS = 1 << 13  # exec: arguments Tetragon's exec event sends apart (dataArgs)

# msg_process.privs (enum vigil_exec_privs): a privileged exec, Tetragon's secureexec bits
PRIV_SETUID = 1 << 0
PRIV_SETGID = 1 << 1
PRIV_FILE_CAPS = 1 << 2
PRIV_SETUID_ROOT = 1 << 3
PRIV_SETGID_ROOT = 1 << 4

# mirrors of bpf/include/vigil_events.h, checked against the object's BTF at load
HEADER = Layout("msg_header", "op:B pad:B flags:H size:I ktime:Q")
PROCESS = Layout("msg_process", "hdr.op:B hdr.pad:B hdr.flags:H hdr.size:I hdr.ktime:Q key.pid:I key.pad:I key.ktime:Q "
                 "pkey.pid:I pkey.pad:I pkey.ktime:Q tid:I ppid:I nspid:I auid:I "
                 "uid:I gid:I euid:I egid:I suid:I sgid:I fsuid:I fsgid:I securebits:I userns_level:I userns_uid:I "
                 "userns_gid:I cap_permitted:Q cap_effective:Q cap_inheritable:Q ns:10I cgroup_id:Q ino:Q i_mode:I "
                 "i_nlink:I boottime:Q ckey.pid:I ckey.pad:I ckey.ktime:Q "
                 "exe_len:H cwd_len:H filename_len:H cgroup_len:H args_len:I privs:I")
EXIT = Layout("msg_exit", "hdr.op:B hdr.pad:B hdr.flags:H hdr.size:I hdr.ktime:Q key.pid:I key.pad:I key.ktime:Q "
              "tid:I code:I")



class DecodeError(ValueError):
    pass


class ProcessRecord:
    """An exec (op 1) or a clone (op 2) of a new thread group. caller_pid/caller_ktime: a
    clone's caller when it is not the parent (CLONE_PARENT), whose image the child runs."""

    __slots__ = (
        "op", "flags", "ktime", "pid", "exec_ktime", "ppid_key", "pktime", "tid", "ppid", "nspid", "auid",
        "uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid", "securebits",
        "userns_level", "userns_uid", "userns_gid", "cap_permitted", "cap_effective", "cap_inheritable",
        "ns", "cgroup_id", "ino", "i_mode", "i_nlink", "boottime", "caller_pid", "caller_ktime", "privs",
        "exe", "cwd", "filename", "cgroup_name", "args",
    )

    def __init__(self, buf: bytes) -> None:
        if len(buf) < PROCESS.size:
            raise DecodeError(f"process record of {len(buf)} bytes, need {PROCESS.size}")
        v = PROCESS.unpack_from(buf)
        (self.op, _, self.flags, _size, self.ktime,
         self.pid, _, self.exec_ktime, self.ppid_key, _, self.pktime,
         self.tid, self.ppid, self.nspid, self.auid,
         self.uid, self.gid, self.euid, self.egid, self.suid, self.sgid, self.fsuid, self.fsgid,
         self.securebits, self.userns_level, self.userns_uid, self.userns_gid,
         self.cap_permitted, self.cap_effective, self.cap_inheritable) = v[:30]
        self.ns = v[30:40]
        (self.cgroup_id, self.ino, self.i_mode, self.i_nlink, self.boottime,
         self.caller_pid, _, self.caller_ktime,
         exe_len, cwd_len, fn_len, cg_len, args_len, self.privs) = v[40:54]
        o = PROCESS.size
        end = o + exe_len + cwd_len + fn_len + cg_len + args_len
        if end > len(buf):
            raise DecodeError(f"process record tail overruns: {end} > {len(buf)}")
        self.exe = buf[o : o + exe_len].decode("utf-8", "replace")
        o += exe_len
        # a walk that ends at once is the root itself: cwd "/" has no components
        self.cwd = buf[o : o + cwd_len].decode("utf-8", "replace") if cwd_len or self.flags & F_ERR_CWD else "/"
        o += cwd_len
        # NUL-terminated strings; _cstr() inlined (hot path: every exec and clone)
        raw = buf[o : o + fn_len]
        i = raw.find(b"\0")
        self.filename = (raw if i < 0 else raw[:i]).decode("utf-8", "replace")
        o += fn_len
        raw = buf[o : o + cg_len]
        i = raw.find(b"\0")
        self.cgroup_name = (raw if i < 0 else raw[:i]).decode("utf-8", "replace")
        o += cg_len
        self.args = buf[o : o + args_len]


class ExitRecord:
    __slots__ = ("op", "flags", "ktime", "pid", "exec_ktime", "tid", "code")

    def __init__(self, buf: bytes) -> None:
        if len(buf) < EXIT.size:
            raise DecodeError(f"exit record of {len(buf)} bytes, need {EXIT.size}")
        (self.op, _, self.flags, _size, self.ktime, self.pid, _, self.exec_ktime,
         self.tid, self.code) = EXIT.unpack_from(buf)


# the pure-Python decoders are the reference; the compiled ones (native/fastpath.c, which
# reads the same C header) are used when built, and must decode to equal attributes
PyProcessRecord, PyExitRecord = ProcessRecord, ExitRecord
if native.fast is not None:
    if (native.fast.PROCESS_SIZE, native.fast.EXIT_SIZE) != (PROCESS.size, EXIT.size):
        raise ImportError(f"vigil/_fastpath is stale: record sizes {native.fast.PROCESS_SIZE}/"
                          f"{native.fast.EXIT_SIZE}, header says {PROCESS.size}/{EXIT.size}: run make")
    native.fast.set_decode_error(DecodeError)
    ProcessRecord, ExitRecord = native.fast.ProcessRecord, native.fast.ExitRecord  # type: ignore[misc]


def _cstr(buf: bytes, off: int, n: int) -> str:
    if n <= 0:
        return ""
    raw = buf[off : off + n]
    i = raw.find(b"\0")
    return (raw if i < 0 else raw[:i]).decode("utf-8", "replace")


DECODERS: dict[int, Callable[[bytes], object]] = {}


def register(op: int, fn: Callable[[bytes], object]) -> None:
    if op in DECODERS:
        raise RuntimeError(f"decoder for op {op} registered twice")
    DECODERS[op] = fn


register(OP_EXEC, ProcessRecord)
register(OP_CLONE, ProcessRecord)
register(OP_EXIT, ExitRecord)


def decode(buf: bytes) -> object:
    fn = DECODERS.get(buf[0]) if buf else None
    if fn is None:
        raise DecodeError(f"unknown record op {buf[0] if buf else None}")
    return fn(buf)
