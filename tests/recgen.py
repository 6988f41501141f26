"""Builds raw kernel records (vigil_events.h layout) for kernel-free tests."""
from __future__ import annotations

from vigil.events import records as R


def _components(path: str) -> bytes:
    """Kernel form of a path: "/a/b" (no NUL); the root itself is empty."""
    return b"" if path == "/" else path.encode()


def process_record(*, op: int = R.OP_EXEC, pid: int, ktime: int, ppid: int = 1, pktime: int = 0,
                   binary: str = "/usr/bin/true", args: list[str] | None = None, cwd: str = "/tmp",
                   uid: int = 0, caps: int = 0x1FFFFFFFFFF, ns: tuple[int, ...] | None = None,
                   flags: int = 0, cgroup_name: str = "", exe: str | None = None) -> bytes:
    exe_b = _components(exe or binary) if op == R.OP_EXEC else b""
    cwd_b = _components(cwd) if op == R.OP_EXEC else b""
    fn_b = (binary.encode() + b"\0") if op == R.OP_EXEC else b""
    cg_b = (cgroup_name.encode() + b"\0") if cgroup_name else b""
    argv = [binary, *(args or [])] if op == R.OP_EXEC else []
    args_b = b"".join(a.encode() + b"\0" for a in argv)
    tail = exe_b + cwd_b + fn_b + cg_b + args_b
    ns = ns or tuple(4026531830 + i for i in range(10))
    size = R.PROCESS.size + len(tail)
    fixed = R.PROCESS.pack(
        op, 0, flags, size, ktime,
        pid, 0, ktime, ppid, 0, pktime,
        pid, ppid, pid, 0xFFFFFFFF,
        uid, uid, uid, uid, uid, uid, uid, uid,
        0, 0, 0, 0,
        caps, caps, 0,
        *ns,
        1234, 99, 0o100755, 1, ktime,
        len(exe_b), len(cwd_b), len(fn_b), len(cg_b), len(args_b), 0,
    )
    return fixed + tail


def exit_record(*, pid: int, ktime: int, exec_ktime: int, code: int = 0) -> bytes:
    return R.EXIT.pack(R.OP_EXIT, 0, 0, R.EXIT.size, ktime, pid, 0, exec_ktime, pid, code)
