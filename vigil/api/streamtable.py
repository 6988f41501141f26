"""Each GetEvents stream's counters in shared memory, so that they outlive the serving
process that keeps them: one region per serving process in the stats block of the event
ring (vigil.api.shm), one slot per stream.

The serving process writes (StreamTable, on its event loop only): when a stream opens, where
it starts (the first ring record it can be offered, and the count of events the agent had
skipped then), then its counters as they change (sent after every write to its client;
dropped, filtered at least every 0.25 s), and when it ends, its final counters, then CLOSED.
Only the agent frees a CLOSED slot, once it has added the slot's counters to its totals
(Tally.harvest); only the serving process opens one: every stream is counted once.

Every event the agent produces while a stream is open is offered to it: a record of the
ring from the stream's first on, or an event the agent skipped (vigil.api.shm: no stream had
room). An offered event is sent, filtered (by the stream's own filters) or dropped:
  offered = sent + filtered + errors (unconvertible) + dropped.
A stream that ends counts as dropped what it had queued and the records written before its
end that its process had not read yet. When a serving process dies (Tally.carry_over), the
agent counts for each of its open streams every offered event (up to the ring's last record
and skip then) that the slot does not show sent, filtered or unconvertible as dropped: what sat
in the stream's queue, what the process had not read from the ring, and what it had sent
since it last wrote the slot (the slot's sent is written after the bytes are handed to the
connection: never ahead of it). Events written between the death and the agent noticing it
(at its next write to the process's wake pipe, or the next batch it skips) are counted too:
up to one batch more than the stream was open for, never less.

"Sent" is handed to the client's connection; what a killed process had in its connection's
buffers is lost with it, counted as sent. "Dropped" is counted before the stream's filters
(vigil.api.clientqueue): for a stream with filters (flag FILTERED, `filtered_stream` in the
agent's status) it is an upper bound on the matching events it lost, not their number.

Layout of a region (u64 words, stored whole, never through 0: vigil.core.sharedmem):
  summary: pid, ring records lost (laps), forwarded streaming calls: open, refused, ended for
    a slow client, bytes held now, bytes held at most (vigil.api.h2front)
  MAX_SLOTS slots: state (FREE, OPEN, CLOSED), first ring seq, agent skips at open, sent,
    dropped, filtered, unconvertible, flags (FILTERED: an allow or deny list), peer (40 bytes)
"""
from __future__ import annotations

import struct
import threading
from typing import Any

from vigil.api import shm
from vigil.core import sharedmem
from vigil.core.sharedmem import Words

PROCESSES = shm.READERS
MAX_SLOTS = 64                 # streams per serving process, open or ended and not yet harvested
FREE, OPEN, CLOSED = 0, 1, 2
FILTERED = 1                   # flags: the stream has an allow or deny list (its drops: counted before it)
_SUMMARY_WORDS = 7
_PID, _LOST, _FWD = 0, 8, 16   # summary offsets; _FWD: 5 words
FORWARDED = ("streams_active", "refused", "ended_slow", "held_bytes", "held_bytes_max")
_SLOT_WORDS = 8
_STATE, _SEQ, _SKIPPED, _SENT, _DROPPED, _FILTERED, _ERRORS, _FLAGS = (8 * k for k in range(_SLOT_WORDS))
_PEER = 8 * _SLOT_WORDS
PEER_SIZE = 40
SLOT = 8 * _SLOT_WORDS + PEER_SIZE
_PEER_STRUCT = struct.Struct(f"{PEER_SIZE}s")
SUMMARY = 8 * _SUMMARY_WORDS
REGION = SUMMARY + MAX_SLOTS * SLOT
assert PROCESSES * REGION <= shm.HEADER - shm.STATS_OFF and REGION % 8 == 0


def _slot(index: int, k: int) -> int:
    return index * REGION + SUMMARY + k * SLOT


class StreamTable:
    """A serving process's end: its region, written on its event loop (the summary also by
    its stats thread)."""

    def __init__(self, view: memoryview, index: int) -> None:
        if not 0 <= index < PROCESSES:
            raise ValueError(f"serving process index must be 0..{PROCESSES - 1}")
        self.view, self.index = view, index
        self.words = Words(view)
        self.base = index * REGION
        self._slots: dict[Any, int] = {}   # stream (its ClientQueue) -> slot
        self.started = 0

    def start(self, pid: int) -> None:
        """A fresh region (the agent cleared what a process before this one left), then the pid."""
        for k in range(MAX_SLOTS):
            self.words.store(_slot(self.index, k) + _STATE, FREE)
        self.words.store(self.base + _PID, pid)

    def summary(self, lost: int, forwarded: tuple[int, int, int, int, int]) -> None:
        w = self.words
        w.store(self.base + _LOST, lost)
        for k, v in enumerate(forwarded):
            w.store(self.base + _FWD + 8 * k, v)

    def open(self, q: Any, peer: str, first_seq: int, skipped: int, filtered: bool) -> bool:
        """A slot for stream `q`, which is offered the ring's records from `first_seq` on and
        the agent's skips past `skipped`; False when every slot is taken."""
        w = self.words
        for k in range(MAX_SLOTS):
            off = _slot(self.index, k)
            if w.load(off + _STATE) == FREE:
                break
        else:
            return False
        self.started += 1
        for field in (_SENT, _DROPPED, _FILTERED, _ERRORS):
            w.store(off + field, 0)
        w.store(off + _SEQ, first_seq)
        w.store(off + _SKIPPED, skipped)
        w.store(off + _FLAGS, FILTERED if filtered else 0)
        name = f"{peer or 'client'}#{self.started}".encode()[:PEER_SIZE]   # unix peers all read "unix:"
        sharedmem.write(self.view, off + _PEER, _PEER_STRUCT, name)
        w.store(off + _STATE, OPEN)   # last: the agent reads a slot only once it is OPEN
        self._slots[q] = off
        return True

    def update(self, q: Any) -> None:
        """`q`'s counters now (sent last: what it shows sent was handed to the connection)."""
        off = self._slots.get(q)
        if off is not None:
            w = self.words
            w.store(off + _DROPPED, q.dropped)
            w.store(off + _FILTERED, q.filtered)
            w.store(off + _ERRORS, q.errors)
            w.store(off + _SENT, q.sent)

    def close(self, q: Any) -> None:
        """`q` ended: its final counters, then CLOSED (for the agent to add up and free)."""
        off = self._slots.get(q)
        if off is not None:
            self.update(q)
            del self._slots[q]
            self.words.store(off + _STATE, CLOSED)

    @property
    def active(self) -> int:
        return len(self._slots)



class Tally:
    """The agent's end: the totals of every stream that ended, and what the serving processes
    show now. Thread-safe (status, metrics and the event loop's tick read it)."""

    TOTALS = ("events_sent", "events_dropped", "events_filtered", "conversion_errors", "ring_lost",
              "forwarded_refused", "forwarded_ended_slow")

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.words = Words(view)
        self.totals = dict.fromkeys(self.TOTALS, 0)
        self._lock = threading.Lock()

    def release(self) -> None:
        """Before the ring is closed (a mapping is not closed while viewed)."""
        with self._lock:
            self.words.release()
            self.view.release()

    def _counters(self, off: int) -> tuple[int, int, int, int]:
        w = self.words
        return w.load(off + _SENT), w.load(off + _DROPPED), w.load(off + _FILTERED), w.load(off + _ERRORS)

    def _add(self, sent: int, dropped: int, filtered: int, errors: int) -> None:
        t = self.totals
        t["events_sent"] += sent
        t["events_dropped"] += dropped
        t["events_filtered"] += filtered
        t["conversion_errors"] += errors

    def _harvest(self) -> None:
        w = self.words
        for i in range(PROCESSES):
            for k in range(MAX_SLOTS):
                off = _slot(i, k)
                if w.load(off + _STATE) == CLOSED:
                    self._add(*self._counters(off))
                    w.store(off + _STATE, FREE)

    def harvest(self) -> None:
        """Add the counters of the streams that ended to the totals, and free their slots."""
        with self._lock:
            self._harvest()

    def pid(self, index: int) -> int:
        return self.words.load(index * REGION + _PID)

    def carry_over(self, index: int, ring_seq: int, ring_skipped: int) -> list[dict[str, Any]]:
        """Serving process `index` is dead (it writes nothing more): what its streams had not
        sent, filtered or found unconvertible of every event offered to them, up to the ring's
        record `ring_seq` and the agent's skip count `ring_skipped`, is dropped for them; its
        other counters go into the totals and its region is cleared. Returns each stream it had
        open, as accounted."""
        w = self.words
        out = []
        with self._lock:
            self._harvest()
            for k in range(MAX_SLOTS):
                off = _slot(index, k)
                if w.load(off + _STATE) != OPEN:
                    continue
                sent, dropped, filtered, errors = self._counters(off)
                offered = max(0, ring_seq - w.load(off + _SEQ) + 1) + max(0, ring_skipped - w.load(off + _SKIPPED))
                dropped = max(dropped, offered - sent - filtered - errors)
                self._add(sent, dropped, filtered, errors)
                out.append({"peer": self._peer(off), "offered": offered, "sent": sent, "dropped": dropped,
                            "filtered": filtered, "errors": errors})
            base = index * REGION
            t = self.totals
            t["ring_lost"] += w.load(base + _LOST)
            t["forwarded_refused"] += w.load(base + _FWD + 8)
            t["forwarded_ended_slow"] += w.load(base + _FWD + 16)
            self.view[base:base + REGION] = bytes(REGION)
        return out

    def _peer(self, off: int) -> str:
        return bytes(self.view[off + _PEER:off + _PEER + PEER_SIZE]).rstrip(b"\0").decode(errors="replace")

    def stats(self) -> dict[str, Any]:
        """Totals (ended streams, dead processes) plus what the serving processes show now, and
        their open streams. (A process that died and is not carried over yet shows what it last
        wrote: carry_over only adds to that; no counter ever goes down.) Each slot's state is
        read once: a stream that ends while this runs is counted either open or in the totals
        (harvesting first and reading the states again lost a stream that ended in between)."""
        w = self.words
        with self._lock:
            open_now: list[tuple[int, int]] = []   # (process, slot) read OPEN: counted as open
            for i in range(PROCESSES):
                for k in range(MAX_SLOTS):
                    off = _slot(i, k)
                    state = w.load(off + _STATE)
                    if state == CLOSED:   # ended: its final counters go into the totals
                        self._add(*self._counters(off))
                        w.store(off + _STATE, FREE)
                    elif state == OPEN:
                        open_now.append((i, off))
            out: dict[str, Any] = {k: v for k, v in self.totals.items()
                                   if not k.startswith("forwarded_")}
            fwd = dict.fromkeys(FORWARDED, 0)
            fwd["refused"] = self.totals["forwarded_refused"]
            fwd["ended_slow"] = self.totals["forwarded_ended_slow"]
            clients = []
            pids = []
            for i in range(PROCESSES):
                base = i * REGION
                pid = w.load(base + _PID)
                if not pid:
                    continue
                pids.append(pid)
                out["ring_lost"] += w.load(base + _LOST)
                for n, key in enumerate(FORWARDED):
                    v = w.load(base + _FWD + 8 * n)
                    fwd[key] = max(fwd[key], v) if key == "held_bytes_max" else fwd[key] + v
                for j, off in open_now:
                    if j != i:
                        continue
                    sent, dropped, filtered, errors = self._counters(off)
                    out["events_sent"] += sent
                    out["events_dropped"] += dropped
                    out["events_filtered"] += filtered
                    out["conversion_errors"] += errors
                    clients.append({"peer": self._peer(off), "sent": sent, "dropped": dropped,
                                    "filtered_stream": bool(w.load(off + _FLAGS) & FILTERED)})
            out.update(streams_active=len(clients), clients=clients, forwarded=fwd, pids=pids)
            return out
