"""Process cache keyed by (pid, exec ktime), with ancestry kept alive by reference counts.

An entry holds one reference for itself (dropped at exit or when an exec
replaces it) and one for every child entry still cached. At zero it waits
a grace period (late events of a dead process still find it) and is then
removed, releasing its parent. Capacity is bounded: past it the oldest
releasable entries go first, then the oldest of all (counted as evictions).
"""
from __future__ import annotations

import binascii
import itertools
import os
from collections import deque
from collections.abc import Iterator

from vigil.process.ids import parse_exec_id
from vigil.process.model import Key, Process

_GONE_MAX = 16384  # removed processes remembered for early deletions
# a /proc image's ktime is its start floored to a clock tick (/proc/<pid>/stat): an image is of
# a process started at ktime t if its ktime is at least t less one tick (by_pid_since)
START_SLACK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class ProcessCache:
    def __init__(self, capacity: int = 65536, grace_ns: int = 30_000_000_000) -> None:
        self.capacity = capacity
        self.grace_ns = grace_ns
        self._by_key: dict[Key, Process] = {}
        self._by_pid: dict[int, Process] = {}
        # pid -> the image it named when that exited, while cached (its grace period): a late
        # record of an older image of the pid is compared with it (add), as with a live one
        self._ended: dict[int, Process] = {}
        # parent key -> cached children added before it (their exec or clone record read first;
        # held for it): each takes its reference on the parent once that is added
        # (children by key: a parent that never comes may have thousands, each removed alone)
        self._orphans: dict[Key, dict[Key, Process]] = {}
        self._pending: deque[Process] = deque()  # refcnt hit zero, in order
        # insertion order for "evict the oldest of all": a dict's first item is O(n) to
        # reach once many early entries were deleted; stale entries are skipped and the
        # deque is rebuilt when it grows past twice the cache (amortised O(1))
        self._order: deque[Process] = deque()
        self.evictions = 0
        self.misses = 0  # lookups (an event's process, an exit's) that found nothing
        self.early_deletions = 0  # misses of a process the GC had removed: its grace was too short
        self.removed = 0
        # pid -> exec ktime of the newest images the GC removed, oldest first (bounded): a later
        # miss of one of them is an early deletion (Tetragon's process_cache_early_deletions)
        self._gone: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Process]:
        return iter(list(self._by_key.values()))

    def get(self, key: Key | str | None) -> Process | None:
        """By (pid, ktime) key; an exec_id string is accepted too (API, tests)."""
        if type(key) is str:
            try:
                _node, ktime, pid = parse_exec_id(key)
            except (ValueError, binascii.Error):
                return None
            key = (pid, ktime)
        return self._by_key.get(key)  # type: ignore[arg-type]

    def by_pid(self, pid: int) -> Process | None:
        return self._by_pid.get(pid)

    def ended_by_pid(self, pid: int) -> Process | None:
        """The image `pid` named when it last exited, while that is cached (its grace period)."""
        return self._ended.get(pid)

    def by_pid_since(self, pid: int, start: int) -> Process | None:
        """pid's image, unless it is older than a process that started at ktime `start` (a
        record's thread group leader start, VP_EV_NO_PROC): then it is an earlier process's
        of that pid, not this one's (exec and fork keys are never before their process's start;
        a /proc image's is up to a clock tick before it). The compiled twin: native/fastpath.c
        generic_fast."""
        p = self._by_pid.get(pid)
        return p if p is None or p.key[1] + START_SLACK_NS >= start else None

    def missed(self, pid: int, ktime: int = 0) -> None:
        """Count a lookup of the process (pid, exec ktime; 0: by pid only) that found nothing,
        and an early deletion when the GC had removed that process."""
        self.misses += 1
        gone = self._gone.get(pid)
        if gone is not None and (not ktime or gone == ktime):
            self.early_deletions += 1

    def add(self, p: Process, now_ns: int) -> None:
        """Insert a new exec/clone; it replaces the pid's previous image, when that is older. A
        record of an older image read after a newer one of its pid (pid reuse, or the image's
        own exec, the older record behind in another ring) is recorded (its own events find it
        by its key) and ended at once, as the newer image's add would have ended it: a newer
        image of its pid means it exec'd or exited. The pid keeps naming the newer image; or
        none, when that exited already (still cached: the image the pid named then)."""
        by_key = self._by_key
        if p.key in by_key:
            return
        if len(by_key) >= self.capacity:
            self._evict(now_ns, room=1)  # room first: the bound holds at every instant, not only after add
        p.refcnt = 1
        by_key[p.key] = p
        order = self._order
        order.append(p)
        if len(order) > 2 * len(by_key) + 64:
            self._rebuild_order()
        if p.parent_key is not None:
            parent = by_key.get(p.parent_key)
            if parent is not None:
                parent.refcnt += 1
                p.holds_parent = True
            elif p.parent_key:  # its parent's record behind: the reference once that comes
                self._orphans.setdefault(p.parent_key, {})[p.key] = p
        if self._orphans:
            kids = self._orphans.pop(p.key, None)
            if kids:  # children cached before it: each holds it, as one cached after it does
                p.refcnt += len(kids)
                for c in kids.values():
                    c.holds_parent = True
        old = self._by_pid.get(p.pid) or self._ended.get(p.pid)
        if old is not None and old.key[1] > p.key[1]:  # a newer image is (or was) the pid's
            p.exited = True
            self._release(p, now_ns)
            return
        self._by_pid[p.pid] = p
        if old is not None and old is not p and not old.exited:
            old.exited = True
            self._release(old, now_ns)

    def _rebuild_order(self) -> None:
        self._order = deque(self._by_key.values())

    def exit(self, p: Process, now_ns: int) -> None:
        if p.exited:
            return
        p.exited = True
        if self._by_pid.get(p.pid) is p:
            del self._by_pid[p.pid]
            self._ended[p.pid] = p
        self._release(p, now_ns)

    def _release(self, p: Process, now_ns: int) -> None:
        p.refcnt -= 1
        if p.refcnt <= 0:
            p.removal_at = now_ns + self.grace_ns
            self._pending.append(p)

    def gc(self, now_ns: int) -> int:
        """Remove entries whose grace period is over; returns how many."""
        n = 0
        gone = self._gone
        while self._pending and self._pending[0].removal_at <= now_ns:
            p = self._pending.popleft()
            if p.refcnt <= 0 and self._by_key.get(p.key) is p:
                self._remove(p, now_ns)
                gone.pop(p.pid, None)  # newest last
                gone[p.pid] = p.key[1]
                n += 1
        if len(gone) > _GONE_MAX:
            for pid in list(itertools.islice(gone, len(gone) - _GONE_MAX // 2)):
                del gone[pid]
        if len(self._order) > 2 * len(self._by_key) + 64:
            # otherwise the removed entries (their messages too) stay referenced here until
            # execs resume: after a million-process churn the idle agent kept 880 MB RSS
            # (454 MB with this and the heap trim of Pipeline.tick; 374 MB when it started)
            self._rebuild_order()
        return n

    def _remove(self, p: Process, now_ns: int) -> None:
        del self._by_key[p.key]
        if self._by_pid.get(p.pid) is p:
            del self._by_pid[p.pid]
        if self._ended.get(p.pid) is p:
            del self._ended[p.pid]
        self.removed += 1
        # only a reference it took: a child cached before its parent took it once the parent
        # came (_orphans); one whose parent never came took none, and must not drop a later one
        if p.holds_parent and p.parent_key is not None:
            parent = self._by_key.get(p.parent_key)
            if parent is not None:
                self._release(parent, now_ns)
        elif p.parent_key and self._orphans:  # its parent never came: forget it waited
            kids = self._orphans.get(p.parent_key)
            if kids is not None and kids.get(p.key) is p:
                del kids[p.key]
                if not kids:
                    del self._orphans[p.parent_key]

    def _evict(self, now_ns: int, room: int = 0) -> None:
        while self._by_key and len(self._by_key) > self.capacity - room:
            victim = None
            while self._pending:
                cand = self._pending.popleft()
                if cand.refcnt <= 0 and self._by_key.get(cand.key) is cand:
                    victim = cand
                    break
            order = self._order
            while victim is None:
                cand = order.popleft()
                if self._by_key.get(cand.key) is cand:
                    victim = cand
            self._remove(victim, now_ns)
            self.evictions += 1

    def ancestors(self, p: Process, limit: int = 64) -> list[Process]:
        """Parent first, then its parent, ..., as Tetragon walks them: up to the first of pid 1
        or 2 (init, kthreadd), never their parent, the <kernel> process (pid 0); none above a
        process of pid 1 or 2."""
        out: list[Process] = []
        if p.pid <= 2:
            return out
        by_key = self._by_key
        cur = by_key.get(p.parent_key) if p.parent_key is not None else None
        while cur is not None and len(out) < limit:
            out.append(cur)
            if cur.parent_key == cur.key or cur.parent_key is None or cur.pid <= 2:
                break
            cur = by_key.get(cur.parent_key)
        return out
