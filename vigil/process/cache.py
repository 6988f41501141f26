"""Process cache keyed by exec_id, with ancestry kept alive by reference counts.

An entry holds one reference for itself (dropped at exit or when an exec
replaces it) and one for every child entry still cached. At zero it waits
a grace period (late events of a dead process still find it) and is then
removed, releasing its parent. Capacity is bounded: past it the oldest
releasable entries go first, then the oldest of all (counted as evictions).
"""
from __future__ import annotations

from collections import deque
from typing import Iterator

from vigil.process.model import Process


class ProcessCache:
    def __init__(self, capacity: int = 65536, grace_ns: int = 30_000_000_000) -> None:
        self.capacity = capacity
        self.grace_ns = grace_ns
        self._by_id: dict[str, Process] = {}
        self._by_pid: dict[int, Process] = {}
        self._pending: deque[Process] = deque()  # refcnt hit zero, in order
        self.evictions = 0
        self.misses = 0
        self.removed = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Process]:
        return iter(list(self._by_id.values()))

    def get(self, exec_id: str) -> Process | None:
        return self._by_id.get(exec_id)

    def by_pid(self, pid: int) -> Process | None:
        return self._by_pid.get(pid)

    def add(self, p: Process, now_ns: int) -> None:
        """Insert a new exec/clone; it replaces the pid's previous image."""
        if p.exec_id in self._by_id:
            return
        p.refcnt = 1
        self._by_id[p.exec_id] = p
        parent = self._by_id.get(p.parent_exec_id)
        if parent is not None:
            parent.refcnt += 1
        old = self._by_pid.get(p.pid)
        self._by_pid[p.pid] = p
        if old is not None and old is not p and not old.exited:
            old.exited = True
            self._release(old, now_ns)
        if len(self._by_id) > self.capacity:
            self._evict(now_ns)

    def exit(self, p: Process, now_ns: int) -> None:
        if p.exited:
            return
        p.exited = True
        if self._by_pid.get(p.pid) is p:
            del self._by_pid[p.pid]
        self._release(p, now_ns)

    def _release(self, p: Process, now_ns: int) -> None:
        p.refcnt -= 1
        if p.refcnt <= 0:
            p.removal_at = now_ns + self.grace_ns
            self._pending.append(p)

    def gc(self, now_ns: int) -> int:
        """Remove entries whose grace period is over; returns how many."""
        n = 0
        while self._pending and self._pending[0].removal_at <= now_ns:
            p = self._pending.popleft()
            if p.refcnt <= 0 and self._by_id.get(p.exec_id) is p:
                self._remove(p, now_ns)
                n += 1
        return n

    def _remove(self, p: Process, now_ns: int) -> None:
        del self._by_id[p.exec_id]
        if self._by_pid.get(p.pid) is p:
            del self._by_pid[p.pid]
        self.removed += 1
        parent = self._by_id.get(p.parent_exec_id)
        if parent is not None:
            self._release(parent, now_ns)

    def _evict(self, now_ns: int) -> None:
        while len(self._by_id) > self.capacity:
            victim = None
            while self._pending:
                cand = self._pending.popleft()
                if cand.refcnt <= 0 and self._by_id.get(cand.exec_id) is cand:
                    victim = cand
                    break
            if victim is None:
                victim = next(iter(self._by_id.values()))
            self._remove(victim, now_ns)
            self.evictions += 1

    def ancestors(self, p: Process, limit: int = 64) -> list[Process]:
        """Parent first, then its parent, ..."""
        out = []
        cur = self._by_id.get(p.parent_exec_id)
        while cur is not None and len(out) < limit:
            out.append(cur)
            if cur.parent_exec_id == cur.exec_id:
                break
            cur = self._by_id.get(cur.parent_exec_id)
        return out
