"""Policy events and exits of a process the cache does not have yet: Tetragon's event cache, for
process info. A policy record, or an exit, can be read before the exec record of its process
(another CPU's ring, or the exec's record just behind): the cache has no entry for it when the
event is made. As Tetragon's eventcache, such an event is held and tried again, and sent with
its process once the cache has it; when the wait is over it is sent with the stand-in it was
made with (PolicyEvents.missing: {pid, start_time} or {pid, flags: unknown}; an exit's:
{pid, start_time}, as Tetragon's GetProcessExit makes it). A held exit whose process comes ends
it then, as an exit of a cached process does (EventBuilder.held_exit_found): the hold never
keeps a process that exited in the cache. An event (policy event or exit) of a cached process
whose parent (the key its exec named) the cache lacks waits for that parent the same way, as
Tetragon's GetProcessExit and policy handlers hold an event whose parent they lack (entry_type
parent_info), and leaves without it once the wait is over; so does an exec event whose parent the
cache lacks (Tetragon's GetProcessExec holds it, pid > 1; its process is cached at once), and
what follows a held exec (its process's exit and policy events, its children's execs: `waiting`)
is held behind it even when it had what it needs, so it never leaves before that exec. A clone
record whose forking process the cache lacks waits the same way (HeldClone, never sent: the
child's entry is made once that process is cached, as Tetragon's event cache retries such a
clone; else given up, parent_info). An exit
sent with its stand-in (given
up) is remembered a while (EXITED_CAPACITY keys, for as long again as the wait): its exec record,
read after all, still makes its exec event (as Tetragon sends an exec it reads after the exit)
but its process is ended at once (late_exec), not left in the cache as a live process.

Tetragon's cache (pkg/eventcache) tries its events every --event-cache-retry-delay (2 s) up to
--event-cache-retries (15) times, sends the rest of the stream meanwhile (held events come
later, out of order), and counts tetragon_event_cache_inserts_total, _entries,
_fetch_retries_total{entry_type} and _fetch_failures_total{event_type, entry_type}. The agent
has the same two options: a held event is tried at every later loop step (each drained every
ring, so an exec record committed before the policy record has been read after two), and given
up once it waited the time Tetragon's tries take (retries x delay seconds) and HOLD_MIN_STEPS
steps; --event-cache-retries 0 holds nothing. At most HOLD_CAPACITY wait (past that the oldest
is sent at once). Known processes never come here: the handlers make their events as before,
and the loop asks `pending` once per batch (a stand-in was made for it: rare).
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from vigil.core import native
from vigil.core.events import PolicyEvent, ProcessExec, ProcessExit

if TYPE_CHECKING:
    from vigil.core.events import Event, ProcessMsg
    from vigil.process.cache import ProcessCache

HOLD_CAPACITY = 4096            # events waiting at once; past that the oldest is sent with its stand-in
RETRIES, RETRY_DELAY_S = 15, 2  # Tetragon's --event-cache-retries, --event-cache-retry-delay defaults
HOLD_MIN_STEPS = 2              # a held event also waits this many later loop steps (rings drained)
# A hold of up to WALK_EVERY_STEP events is tried at every loop step (the usual case: an exec
# record just behind, sent as soon as it is read); a larger one at most every WALK_EVERY_NS, so
# a process the cache never gets, firing a policy all the time, costs the loop a walk of at most
# HOLD_CAPACITY entries (~1 ms of Python) a hundred times a second, not at every step.
WALK_EVERY_STEP, WALK_EVERY_NS = 64, 10_000_000
# exec keys of exits given up (sent with the stand-in) remembered at once, each for as long as the
# wait (retries x delay) after it was given up: the exec record read later ends its process
EXITED_CAPACITY = 1024
# a held entry's parent key once it has what it waits for (counted) but is sent only after the
# held exec of its process (or, an exec, of its parent): _READY; one held only for that: _AFTER
_READY, _AFTER, _CLONE = ("ready",), ("after",), ("clone",)


class HeldClone:
    """A clone record whose forking process the cache lacks: held (not an event: never sent)
    until the builder can make the child's entry (EventBuilder.held_clone_found)."""
    __slots__ = ("buf",)

    def __init__(self, buf: bytes) -> None:
        self.buf = buf


class ProcessHold:
    def __init__(self, cache: ProcessCache, counts: Any, retries: int = RETRIES,
                 retry_delay_s: int = RETRY_DELAY_S) -> None:
        self.cache = cache
        # the builder: missing_info counts the events sent with a stand-in; held_exit_found ends
        # the process of a held exit once it comes
        self.counts = counts
        self.configure(retries, retry_delay_s)
        # stand-ins made for kernel hooks' records since the last batch: id -> (stand-in, pid, ktime);
        # processes whose events of the batch lack their parent: id(message) -> (message, parent
        # key, its policy events too, its exec event too (its exit always))
        self.pending: dict[int, tuple[ProcessMsg, int, int, int]] = {}
        self.pending_parents: dict[int, tuple[ProcessMsg, Any, bool, bool]] = {}
        # exec_id -> held exec events of it: that process's later events, and its children's
        # execs, are held behind it (an exit never leaves before its exec)
        self.waiting: dict[str, int] = {}
        # held events, oldest first: [event, pid, ktime, since_ns, since_step, parent key, the
        # leader's start an image by pid must not be older than (0: any)]; the
        # parent key (None until its process is known) names the parent it waits for then
        self.held: deque[list[Any]] = deque()
        # held (Tetragon's inserts), sent with their process and parent, sent with the stand-in
        # (fetch failures, entry_type process_info), tries that found no process (fetch retries);
        # sent without the parent their process names (entry_type parent_info), and tries that
        # found no parent
        # ...; exec records read after their exit was given up (their process ended at once)
        self.stats = {"held": 0, "resolved": 0, "given_up": 0, "retries": 0, "parent_given_up": 0,
                      "parent_retries": 0, "late_exec": 0}
        # exec keys of the exits given up -> when, oldest first (at most EXITED_CAPACITY, each
        # for the wait's length): read in place by the compiled on_exec (never rebound)
        self.exited: dict[tuple[int, int], int] = {}
        self._walked_ns: int | None = None  # when retry last walked the hold

    def configure(self, retries: int, retry_delay_s: int) -> None:
        """--event-cache-retries, --event-cache-retry-delay: a held event is given up once it
        waited as long as Tetragon's `retries` tries `retry_delay_s` apart; 0 retries: no hold."""
        self.retries, self.retry_delay_s = retries, retry_delay_s
        self.wait_ns = retries * retry_delay_s * 1_000_000_000

    def standin(self, msg: ProcessMsg, pid: int, ktime: int, since: int = 0) -> None:
        """A stand-in was made for a kernel hook's record (PolicyEvents.missing) or an exit
        (EventBuilder.on_exit, whose key is always an exec key): its event, in
        the batch about to be emitted, is held, waiting for the image of exec key (pid, ktime)
        exactly (not an older one of that pid, whose exec record is behind), or for pid's image
        when `ktime` is 0 (no exec key: the kernel had no entry for the process, VP_EV_NO_PROC),
        not one older than `since` (VP_EV_NO_PROC: the leader's start; ProcessCache.by_pid_since)."""
        if self.retries:
            self.pending[id(msg)] = (msg, pid, ktime, since)
        else:  # no hold: sent as it is
            self.counts.missing_info += 1

    def clone(self, buf: bytes, now_ns: int) -> None:
        """A clone record whose forking process the cache lacks (EventBuilder.clone_missing),
        read at `now_ns`: held (its steps counted from the walk after, as an event held at this
        step), so it is given up no later than the events read after it; when the hold is full,
        given up at once (the child has no entry, as before the hold)."""
        if self.retries:
            self.stats["held"] += 1
            if len(self.held) >= HOLD_CAPACITY:
                self.stats["parent_given_up"] += 1
            else:
                self.held.append([HeldClone(buf), 0, 0, now_ns, -1, _CLONE, 0])

    def parent_missing(self, msg: ProcessMsg, parent_key: Any, exit: bool = False, exec: bool = False) -> None:
        """A kernel hook's event, the exit (`exit`) or the exec event (`exec`, its process
        message `msg`) of a cached process whose parent (the key its exec named) the cache does
        not have (its record behind, as Tetragon's ErrFailedToGetParentInfo): the batch's events
        of that process without a parent are held for it: its exit, its policy events unless
        only the exit or the exec said so, its exec event when that said so."""
        if self.retries:
            had = self.pending_parents.get(id(msg))
            same = had is not None and had[0] is msg
            policy = not (exit or exec) or (same and had[2])  # type: ignore[index]
            self.pending_parents[id(msg)] = (msg, parent_key, policy, exec or (same and had[3]))  # type: ignore[index]

    def take(self, events: list[Event], now_ns: int, step: int) -> list[Event]:
        """The batch less the events made with a pending stand-in, or of a process whose parent
        is pending, which are held, and those that must follow a held exec (_gate). A stand-in
        whose event is not in the batch (a correlated policy kept it) was sent as it is."""
        pending, self.pending = self.pending, {}
        parents, self.pending_parents = self.pending_parents, {}
        held, waiting = self.held, self.waiting
        # the events to look at: all when stand-ins or parents are pending (that batch), else
        # (an exec waits: up to the wait, every batch) only those that follow a held exec, found
        # by the compiled twin of _gate; the others pass as they are, in order
        todo: Any = range(len(events))
        if not pending and not parents and native.fast is not None:
            todo = native.fast.hold_follow(events, waiting, ProcessExec)
            if todo is None:
                return events
        keep: list[Event] = []
        last = 0
        for i in todo:
            if i > last:
                keep += events[last:i]
            last = i + 1
            e = events[i]
            proc = getattr(e, "process", None)
            hit = pending.pop(id(proc), None) if pending else None
            if hit is not None and hit[0] is proc:
                entry = [e, hit[1], hit[2], now_ns, step, None, hit[3]]
            else:
                ph = parents.get(id(proc)) if parents else None
                # (every policy event of that process in the batch made without its parent, its
                # exit, and its exec event when that lacked it)
                if (ph is not None and ph[0] is proc and e.parent is None
                        and (type(e) is ProcessExit or (ph[2] and isinstance(e, PolicyEvent))
                             or (ph[3] and type(e) is ProcessExec))):
                    entry = [e, 0, 0, now_ns, step, ph[1], 0]
                elif waiting and self._gate(e) is not None:  # has all it needs: behind its exec
                    entry = [e, 0, 0, now_ns, step, _AFTER, 0]
                else:
                    keep.append(e)
                    continue
            if type(e) is ProcessExec:  # what follows it waits behind it
                eid = e.process.exec_id
                waiting[eid] = waiting.get(eid, 0) + 1
            if len(held) >= HOLD_CAPACITY:  # full: the oldest goes with what it has
                old: Any = self._give_up(held.popleft(), now_ns)
                if type(old) is not HeldClone:  # (a clone record: nothing to send)
                    keep.append(self._sent(old))
            held.append(entry)
            self.stats["held"] += 1
        if last < len(events):
            keep += events[last:]
        self.counts.missing_info += len(pending)
        return keep

    def _gate(self, e: Any) -> str | None:
        """The exec_id of the held exec event `e` must be sent after, if any: its process's
        (an exit, a policy event), or its parent's (an exec event)."""
        if not self.waiting:
            return None
        proc = getattr(e, "process", None)  # (an event of no process: none)
        if proc is None:
            return None
        eid = proc.parent_exec_id if type(e) is ProcessExec else proc.exec_id
        # (never its own exec: the <kernel> process is its own parent)
        return eid if eid and eid in self.waiting and not (type(e) is ProcessExec and eid == proc.exec_id) else None

    def _sent(self, e: Event) -> Event:
        """`e` leaves the hold: an exec event no longer holds what follows it."""
        if type(e) is ProcessExec:
            eid = e.process.exec_id
            n = self.waiting.get(eid, 0) - 1
            if n > 0:
                self.waiting[eid] = n
            else:
                self.waiting.pop(eid, None)
        return e

    def retry(self, now_ns: int, step: int, final: bool = False) -> list[Event]:
        """Held events whose process (and the parent it names) the cache has now, sent with
        them, and those whose wait is over (or all: `final`, the agent stops) with what they
        have, in the order they were held. A large hold is walked at most every WALK_EVERY_NS."""
        if (not final and len(self.held) > WALK_EVERY_STEP and self._walked_ns is not None
                and now_ns - self._walked_ns < WALK_EVERY_NS):
            return []
        self._walked_ns = now_ns
        out: list[Event] = []
        keep: deque[list[Any]] = deque()
        # entries ready, behind a held exec not sent yet (in this walk, or kept): exec_id -> entries
        behind: dict[str, list[list[Any]]] = {}
        by_key, by_pid_since = self.cache._by_key, self.cache.by_pid_since
        for h in self.held:
            e, pkey = h[0], h[5]
            if pkey is _CLONE:  # a clone record: the child's entry once its forking process is cached
                if h[4] < 0:  # (held in the step before this walk)
                    h[4] = step - 1
                if self.counts.held_clone_found(e.buf, now_ns):
                    self.stats["resolved"] += 1
                elif final or (now_ns - h[3] >= self.wait_ns and step - h[4] >= HOLD_MIN_STEPS):
                    self.stats["parent_given_up"] += 1
                else:
                    self.stats["parent_retries"] += 1
                    keep.append(h)
                continue
            if pkey is _READY or pkey is _AFTER:
                if pkey is _AFTER:  # held only to follow its exec: it had what it needs
                    self.stats["resolved"] += 1
                    h[5] = _READY
                self._out(h, out, behind)
                continue
            if pkey is None:  # its process first
                p = by_key.get((h[1], h[2])) if h[2] else by_pid_since(h[1], h[6])
                if p is not None and type(e) is ProcessExit:  # its exec came: the exit ends it
                    e.process = p.msg
                    e.parent, e.ancestors = self.counts.held_exit_found(p, now_ns)
                    if e.parent is not None or not p.parent_key:
                        self.stats["resolved"] += 1
                        h[5] = _READY
                        self._out(h, out, behind)
                        continue
                    pkey = h[5] = p.parent_key  # ended; its parent not cached (yet): waits for it
                elif p is not None:
                    e.process, e.parent = p.msg, None
                    pkey = h[5] = p.parent_key or ()  # (): it names no parent
            if pkey is not None:
                parent = by_key.get(pkey) if pkey else None
                if parent is not None or not pkey:
                    if parent is not None and type(e) is not PolicyEvent:  # exit, exec: with the ancestors
                        e.parent, e.ancestors = self.counts.held_parent_found(parent)
                    else:
                        e.parent = parent.msg if parent is not None else None
                        found = getattr(self.counts, "policy_ancestors", None)
                        if parent is not None and found is not None:  # (when --enable-ancestors names its type)
                            e.ancestors = found(e.kind, parent)
                    self.stats["resolved"] += 1
                    h[5] = _READY
                    self._out(h, out, behind)
                    continue
            if final or (now_ns - h[3] >= self.wait_ns and step - h[4] >= HOLD_MIN_STEPS):
                self._give_up(h, now_ns)
                h[5] = _READY
                self._out(h, out, behind)
            else:
                self.stats["retries" if pkey is None else "parent_retries"] += 1
                keep.append(h)
        for hs in behind.values():  # their exec still held: they stay, ready, behind it
            for h in hs:
                # (bounded even if execs named each other as parents: at the stop, or once
                # it waited thrice the wait, it goes)
                if final or (now_ns - h[3] >= 3 * self.wait_ns and step - h[4] >= 3 * HOLD_MIN_STEPS):
                    out.append(self._sent(h[0]))
                else:
                    keep.append(h)
        self.held = keep
        return out

    def _out(self, h: list[Any], out: list[Event], behind: dict[str, list[list[Any]]]) -> None:
        """Send ready entry `h`, unless a held exec it follows is not sent yet (then it waits in
        `behind` for it); an exec sent lets out what waited behind it, in order."""
        todo = [h]
        while todo:
            h = todo.pop()
            gate = self._gate(h[0])
            if gate is not None:
                behind.setdefault(gate, []).append(h)
                continue
            e = self._sent(h[0])
            out.append(e)
            if type(e) is ProcessExec and e.process.exec_id not in self.waiting:
                todo.extend(reversed(behind.pop(e.process.exec_id, ())))

    def _give_up(self, h: list[Any], now_ns: int) -> Event:
        if h[5] is None:  # with the stand-in: missing its process info
            self.stats["given_up"] += 1
            self.counts.missing_info += 1
            if type(h[0]) is ProcessExit and h[2]:  # its exec record, if read later, ends it
                self._exited((h[1], h[2]), now_ns)
        elif h[5] is _CLONE:  # (the hold full) a clone record: nothing is sent
            self.stats["parent_given_up"] += 1
        elif h[5] is _AFTER:  # (the hold full) it had what it needs
            self.stats["resolved"] += 1
        elif h[5] is not _READY:  # with its process, without the parent it names
            self.stats["parent_given_up"] += 1
        return h[0]  # type: ignore[no-any-return]

    def _exited(self, key: tuple[int, int], now_ns: int) -> None:
        """Remember the exec key of an exit sent with its stand-in, forgetting those remembered
        longer than the wait, and the oldest past EXITED_CAPACITY."""
        ex = self.exited
        ex.pop(key, None)
        ex[key] = now_ns
        while True:  # (ends at the key just put last, at the latest)
            k = next(iter(ex))
            if len(ex) <= EXITED_CAPACITY and now_ns - ex[k] <= self.wait_ns:
                break
            del ex[k]

    def late_exec(self, p: Any, now_ns: int) -> None:
        """The exec record of an exit given up (sent with the stand-in) was read after all: its
        exec event goes as any (Tetragon sends an exec it reads after the exit), but the process
        ended already: released at once (its pid no longer names it, removed after the grace
        period), as its exit would have done, not kept as a live process until an eviction or
        the pid's reuse. (EventBuilder.on_exec and the compiled on_exec call it for a key in
        `exited`.)"""
        if self.exited.pop(p.key, None) is not None:
            self.stats["late_exec"] += 1
            self.cache.exit(p, now_ns)

    def status(self) -> dict[str, int]:
        return {**self.stats, "held_now": len(self.held)}
