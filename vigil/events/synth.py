"""Raw kernel records made in Python, in the layout of bpf/include/vigil_events.h: what
replays, kernel-free tests and the benches feed the pipeline. The one writer of that layout
outside the kernel, next to its one reader (records.py), so neither drifts from the other."""
from __future__ import annotations

from collections.abc import Sequence

from vigil.events import records as R

ALL_CAPS = (1 << 41) - 1
HOST_NS = (4026531838, 4026531839, 4026531841, 4026531836, 4026531836, 4026531840, 4026531834,
           4026531834, 4026531835, 4026531837)
AUID_UNSET = 0xFFFFFFFF


def kernel_path(path: str) -> bytes:
    """A path as the kernel's walk sends it: the full path without a NUL; the root itself
    is empty (a walk that ends at once)."""
    return b"" if path == "/" else path.encode()


def process_record(*, op: int = R.OP_EXEC, pid: int, ktime: int, ppid: int = 1, pktime: int = 0,
                   binary: str = "/usr/bin/true", args: Sequence[str] | None = None, raw_args: bytes | None = None,
                   cwd: str = "/tmp", exe: str | None = None, cgroup_name: str = "",
                   uid: int = 0, auid: int = AUID_UNSET, caps: int = ALL_CAPS,
                   ns: tuple[int, ...] | None = None, flags: int = 0, cgroup_id: int = 1234, ino: int = 99,
                   sent_ktime: int | None = None, caller: tuple[int, int] = (0, 0)) -> bytes:
    """An exec (op 1) or a clone (op 2). An exec carries its paths and arguments: argv is
    `binary` then `args`, or `raw_args` as it is (NUL-separated). `sent_ktime`: when the
    record was made (the header's time), the exec's own ktime by default. `caller`: a clone's
    (pid, exec ktime) of the process that called clone when it is not the parent (CLONE_PARENT)."""
    is_exec = op == R.OP_EXEC
    exe_b = kernel_path(exe or binary) if is_exec else b""
    cwd_b = kernel_path(cwd) if is_exec else b""
    fn_b = binary.encode() + b"\0" if is_exec else b""
    cg_b = cgroup_name.encode() + b"\0" if cgroup_name else b""
    if raw_args is not None:
        args_b = raw_args
    else:
        args_b = b"".join(a.encode() + b"\0" for a in (binary, *(args or ()))) if is_exec else b""
    tail = exe_b + cwd_b + fn_b + cg_b + args_b
    head = R.PROCESS.pack(
        op, 0, flags, R.PROCESS.size + len(tail), ktime if sent_ktime is None else sent_ktime,
        pid, 0, ktime, ppid, 0, pktime,
        pid, ppid, pid, auid,
        uid, uid, uid, uid, uid, uid, uid, uid,
        0, 0, 0, 0,
        caps, caps, 0,
        *(ns or HOST_NS),
        cgroup_id, ino, 0o100755, 1, ktime, caller[0], 0, caller[1],
        len(exe_b), len(cwd_b), len(fn_b), len(cg_b), len(args_b), 0,
    )
    return head + tail


def exit_record(*, pid: int, ktime: int, exec_ktime: int, code: int = 0) -> bytes:
    """The exit of the thread group whose exec (or clone) had `exec_ktime`."""
    return R.EXIT.pack(R.OP_EXIT, 0, 0, R.EXIT.size, ktime, pid, 0, exec_ktime, pid, code)


def generic_record(*, hook_id: int, pid: int, ktime: int, exec_ktime: int,
                   args: Sequence[tuple[bytes, int, int, int]] = (), selector: int = 0, action: int = 1,
                   ret_action: int = 0, flags: int = 0, ret: int = 0, kstack: bytes = b"", ima: bytes = b"",
                   ima_algo: int = 0) -> bytes:
    """A policy record (struct msg_generic) of hook `hook_id`: one (payload, value, flags, mode)
    per argument slot, the payloads one after another, then the kernel stack's addresses, then
    an IMA hash (of algorithm `ima_algo`)."""
    import ctypes

    from vigil.kernel import policy_layout as L

    m = L.MsgGeneric()
    m.op, m.ktime, m.pid, m.tid, m.exec_ktime, m.hook_id = R.OP_GENERIC, ktime, pid, pid, exec_ktime, hook_id
    m.selector, m.action, m.ret_action, m.flags, m.ret = selector, action, ret_action, flags, ret
    m.kstack_len, m.ima_len, m.ima_algo = len(kstack), len(ima), ima_algo
    data = b""
    for i, (payload, value, aflags, mode) in enumerate(args):
        a = m.args[i]
        a.off, a.len, a.flags, a.mode, a.value = len(data), len(payload), aflags, mode, value
        data += payload
    data += kstack + ima
    m.size = ctypes.sizeof(m) + len(data)
    return bytes(m) + data
