"""A process-cache entry: one exec (or clone) of one thread group."""
from __future__ import annotations

from typing import Any

from vigil.export.jsonl import EncodedDict

Key = tuple[int, int]  # (pid, exec ktime): the cache key; exec_id is its base64 form for JSON


class Process:
    __slots__ = (
        "exec_id", "key", "pid", "ktime", "parent_exec_id", "parent_key", "ppid", "refcnt", "json",
        "binary", "exe", "cgroup_id", "ns", "cap_effective", "flags", "exited", "removal_at", "nspid",
        "uid", "docker",
    )

    def __init__(self, exec_id: str, key: Key, parent_exec_id: str, parent_key: Key | None, ppid: int,
                 json: dict[str, Any]) -> None:
        self.exec_id = exec_id
        self.key = key
        self.pid, self.ktime = key
        self.parent_exec_id = parent_exec_id
        self.parent_key = parent_key  # None: no parent known
        self.ppid = ppid
        # the Tetragon `Process` message, built once and never mutated (shared by every
        # event of this process and of its children); see encoded_json()
        self.json = json
        self.refcnt = 0
        self.binary = json.get("binary", "")
        self.exe = ""             # resolved executed file (interpreter for scripts)
        self.cgroup_id = 0
        self.ns: tuple[int, ...] = ()   # interned: shared by every process in the same namespaces
        self.cap_effective = 0
        self.flags = json.get("flags", "")
        self.exited = False
        self.removal_at = 0
        self.nspid = 0
        self.uid = 0
        self.docker = ""

    def encoded_json(self) -> EncodedDict:
        """The message with its JSON encoding cached, for a process whose message goes into
        many events (a parent's, in each of its children's). Leaf processes are not cached:
        ~1-4 kB per process (caps lists) is the largest part of the cache's memory."""
        j = self.json
        if type(j) is not EncodedDict:
            j = self.json = EncodedDict(j)
            j.fragment()
        return j

    def __repr__(self) -> str:
        return f"<Process pid={self.pid} {self.binary!r} refcnt={self.refcnt}>"
