"""A process-cache entry: one exec (or clone) of one thread group, and its message."""
from __future__ import annotations

from vigil.core.events import ProcessMsg

Key = tuple[int, int]  # (pid, exec ktime): the cache key; exec_id is its base64 form for JSON


class Process:
    __slots__ = (
        "exec_id", "key", "pid", "ktime", "parent_exec_id", "parent_key", "ppid", "refcnt", "msg",
        "binary", "exe", "cgroup_id", "ns", "cap_effective", "flags", "exited", "removal_at", "nspid",
        "uid", "docker", "holds_parent", "in_init_tree",
    )

    def __init__(self, exec_id: str, key: Key, parent_exec_id: str, parent_key: Key | None, ppid: int,
                 msg: ProcessMsg) -> None:
        self.exec_id = exec_id
        self.key = key
        self.pid, self.ktime = key
        self.parent_exec_id = parent_exec_id
        self.parent_key = parent_key  # None: no parent known
        self.ppid = ppid
        # the Tetragon `Process` message, built once and never changed: every event of this
        # process and of its children refers to it; encoders cache their bytes on it
        self.msg = msg
        self.refcnt = 0
        self.binary = msg.binary
        self.exe = ""             # resolved executed file (interpreter for scripts)
        self.cgroup_id = 0
        self.ns: tuple[int, ...] = ()   # interned: shared by every process in the same namespaces
        self.cap_effective = 0
        self.flags = msg.flags
        self.exited = False
        self.removal_at = 0
        self.nspid = 0
        self.uid = 0
        self.docker = ""
        self.holds_parent = False  # counted in its parent's refcnt (the parent was cached when it came)
        # descends from pid 1 of its pid namespace (the container's init) by fork and exec alone:
        # not one entered from outside (setns: runc exec, kubectl exec, nsenter); see build.py
        self.in_init_tree = bool(msg.in_init_tree)

    def __repr__(self) -> str:
        return f"<Process pid={self.pid} {self.binary!r} refcnt={self.refcnt}>"
