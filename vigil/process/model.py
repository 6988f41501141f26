"""A process-cache entry: one exec (or clone) of one thread group."""
from __future__ import annotations

from typing import Any


class Process:
    __slots__ = (
        "exec_id", "pid", "ktime", "parent_exec_id", "ppid", "refcnt", "json", "binary", "exe",
        "argv", "cgroup_id", "ns", "cap_effective", "flags", "exited", "removal_at", "nspid",
        "uid", "docker",
    )

    def __init__(self, exec_id: str, pid: int, ktime: int, parent_exec_id: str, ppid: int,
                 json: dict[str, Any]) -> None:
        self.exec_id = exec_id
        self.pid = pid
        self.ktime = ktime
        self.parent_exec_id = parent_exec_id
        self.ppid = ppid
        self.json = json          # the Tetragon `Process` message as a dict, built once
        self.refcnt = 0
        self.binary = json.get("binary", "")
        self.exe = ""             # resolved executed file (interpreter for scripts)
        self.argv: list[str] = []
        self.cgroup_id = 0
        self.ns: tuple[int, ...] = ()
        self.cap_effective = 0
        self.flags = json.get("flags", "")
        self.exited = False
        self.removal_at = 0
        self.nspid = 0
        self.uid = 0
        self.docker = ""

    def __repr__(self) -> str:
        return f"<Process pid={self.pid} {self.binary!r} refcnt={self.refcnt}>"
