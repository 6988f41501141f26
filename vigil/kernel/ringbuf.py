"""BPF ring buffer consumer over mmap, drained in batches (the loop compiled when
vigil/_fastpath is built, its pure-Python twin the reference).

No libbpf callback per record: one wakeup maps to one pass over everything
the producers committed, returned as a list of record payloads. Layout (see
kernel/bpf/ringbuf.c): page 0 holds consumer_pos (we write it), page 1 holds
producer_pos, then the data area is mapped twice back to back so a record
that wraps is still contiguous. Each record has an 8-byte header: u32 len
with BUSY (bit 31) and DISCARD (bit 30) flags, u32 page offset.
"""
from __future__ import annotations

import bisect
import mmap
import os
import select
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from vigil.core import native
from vigil.core.sharedmem import Words

if TYPE_CHECKING:
    from vigil.kernel.objects import Map

# enum vigil_reader_state (bpf/lib/vigil_common.bpf.h): what a record's program asks of the ring
READER_UNMANAGED, READER_DRAINING, READER_SLEEPING = 0, 1, 2
# how long a program that read DRAINING may take to commit its record (it runs for
# microseconds): on going to sleep the reader looks at the rings again after this
_SETTLE = 0.002
_ZERO_KEY = (0).to_bytes(4, "little")

BUSY = 1 << 31
DISCARD = 1 << 30
HDR = 8
_Q = struct.Struct("<Q")
_I = struct.Struct("<I")


class RingBuffer:
    def __init__(self, map_fd: int, size: int) -> None:
        if size & (size - 1):
            raise ValueError("ring buffer size must be a power of two")
        page = mmap.PAGESIZE
        self.size = size
        self._mask = size - 1
        self._fd = os.dup(map_fd)
        self._cons = mmap.mmap(self._fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._cons_pos = Words(self._cons)  # the kernel reads it on every reservation: one store
        # the data area mapped once, not twice as libbpf does (which makes a wrapped record
        # contiguous): a wrapped payload is copied in two pieces, and the agent's RSS counts
        # the ring's pages once (a 128 MiB ring showed as 256 MB)
        self._prod = mmap.mmap(self._fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data_off = page
        self._ep = select.epoll()
        self._ep.register(self._fd, select.EPOLLIN)
        self.records = 0
        self.discarded = 0
        self.bytes = 0
        self.peak = 0  # most bytes waiting at one drain: how close the ring came to full

    def fileno(self) -> int:
        return self._ep.fileno()

    def wait(self, timeout: float) -> bool:
        """Block until the kernel signals data (or timeout); True if signalled."""
        return bool(self._ep.poll(timeout))

    def pending(self) -> int:
        prod = _Q.unpack_from(self._prod, 0)[0]
        return prod - self._cons_pos.load(0)

    def drain(self, max_bytes: int = 1 << 62) -> list[bytes]:
        """Take every committed record; stops at the first one still being written."""
        prod_map = self._prod
        cons = self._cons_pos.load(0)
        prod = _Q.unpack_from(prod_map, 0)[0]
        if prod - cons > self.peak:
            self.peak = prod - cons
        if native.fast is not None:  # the compiled twin of the loop below
            out, end, discarded = native.fast.bpf_ring_drain(prod_map, self._data_off, self._mask, cons, prod,
                                                             max_bytes)
            self.discarded += discarded
            return self._consumed(cons, end, out)
        return self.py_drain(cons, prod, max_bytes)

    def py_drain(self, cons: int, prod: int, max_bytes: int) -> list[bytes]:
        """The records from `cons` to at most `prod`: the reference of the compiled loop."""
        prod_map = self._prod
        out: list[bytes] = []
        base, mask = self._data_off, self._mask
        start = cons
        unpack = _I.unpack_from
        while cons < prod and cons - start < max_bytes:
            off = base + (cons & mask)
            ln = unpack(prod_map, off)[0]
            if ln & BUSY:
                break
            size = ln & ~(BUSY | DISCARD)
            if not ln & DISCARD:
                at = (cons + HDR) & mask  # a header never wraps (records are 8-aligned); a payload may
                room = mask + 1 - at
                if size <= room:
                    out.append(prod_map[base + at : base + at + size])
                else:
                    out.append(prod_map[base + at : base + at + room] + prod_map[base : base + size - room])
            else:
                self.discarded += 1
            cons += (size + HDR + 7) & ~7
        return self._consumed(start, cons, out)

    def _consumed(self, start: int, cons: int, out: list[bytes]) -> list[bytes]:
        """Hands the space up to `cons` back to the kernel."""
        if cons != start:
            self._cons_pos.store(0, cons)
            self.bytes += cons - start
            self.records += len(out)
        return out

    def close(self) -> None:
        if self._fd >= 0:
            self._ep.close()
            self._prod.close()
            self._cons_pos.release()
            self._cons.close()
            os.close(self._fd)
            self._fd = -1


class PairedRings:
    """The process ring and the policy ring read as one source, in the kernel's time order.
    Policy records have a ring of their own so that a flood of them can never cost a
    process's exec or exit. Each pass notes the time, drains the process ring (everything
    committed before that time is in it), then the policy ring; the policy records made
    before that time are merged with the process records by their kernel time (each ring
    keeps its own order), the later ones wait for the next pass. So a policy record comes
    after the exec of its process and before whatever the kernel recorded after it."""

    def __init__(self, process: RingBuffer, clock: Callable[[], int] = time.monotonic_ns,
                 reader_state: Map | None = None, map_reader: bool = True) -> None:
        self.process = process
        self.policy: RingBuffer | None = None
        self.clock = clock  # CLOCK_MONOTONIC: the clock of bpf_ktime_get_ns
        self._held: list[bytes] = []  # policy records newer than the last pass's time
        self._ep = select.epoll()
        self._ep.register(process.fileno(), select.EPOLLIN)
        self._reader = reader_state  # the `vigil_reader` map every program reads (or None)
        self._state = READER_UNMANAGED
        # its value mapped (BPF_F_MMAPABLE): each change of state one store, not a system call
        self._reader_page: mmap.mmap | None = None
        self._reader_word: memoryview | None = None
        if reader_state is not None and map_reader:
            self._map_reader(reader_state)

    @property
    def reader_mapped(self) -> bool:
        """Whether the reader's state is stored through a mapping (else by a system call)."""
        return self._reader_word is not None

    def _map_reader(self, m: Map) -> None:
        """Map `vigil_reader`'s value when the map allows it (created BPF_F_MMAPABLE, Linux
        5.5+); otherwise (a map made without the flag, an older kernel, no fd) the state is
        stored with bpf(BPF_MAP_UPDATE_ELEM) as before. Either way the programs read the same
        u32; the epoll call after the store orders it before the rings' positions are read
        again, as it did after the system call."""
        try:
            fd = m.fd
            page = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (AttributeError, OSError, ValueError, TypeError):
            return
        self._reader_page = page
        self._reader_word = memoryview(page).cast("I")  # a u32 stored as one word, never through 0

    def add_policy_ring(self, rb: RingBuffer) -> None:
        """Called once, from whichever thread loads the first policy."""
        self._ep.register(rb.fileno(), select.EPOLLIN)
        self.policy = rb

    def rings(self) -> list[RingBuffer]:
        return [self.process] if self.policy is None else [self.process, self.policy]

    def fileno(self) -> int:
        return self._ep.fileno()

    def wait(self, timeout: float) -> bool:
        """Sleep until a ring has records. The programs are told to wake us only for as
        long as we sleep: between a wakeup and the next call the loop drains on its own
        clock, and a wakeup per pass would cost the task that made the record an
        interrupt. The epoll call reads the rings after the state is stored, so a record
        made before the programs saw SLEEPING is found by this call. A program that read
        DRAINING just before the store commits its record without a wakeup after that
        read: on going to sleep, the first poll lasts only until such a program has
        finished (_SETTLE), then the rings' positions are read once more. Asleep already,
        the first record after our last drain wakes us (the kernel's rule: a record wakes
        the reader that had caught up to it; the records after it need no wakeup of their
        own). A preemptible program (uprobe, LSM) that read DRAINING may commit after the
        settle time, and then no later record wakes us either: a poll that times out
        asleep reads the rings' positions too, so such a record waits at most `timeout`."""
        if self._held:
            return True
        if self._reader is not None and self._state != READER_SLEEPING:
            self._set_reader(READER_SLEEPING)
            settle = min(timeout, _SETTLE)
            if self._ep.poll(settle) or any(rb.pending() > 0 for rb in self.rings()):
                self._set_reader(READER_DRAINING)
                return True
            timeout -= settle
            if timeout <= 0:
                return False
        ready = bool(self._ep.poll(timeout)) or any(rb.pending() > 0 for rb in self.rings())
        if ready:
            self._set_reader(READER_DRAINING)
        return ready

    def _set_reader(self, state: int) -> None:
        if self._reader is not None and state != self._state:
            if self._reader_word is not None:
                self._reader_word[0] = state
            else:
                self._reader.update(_ZERO_KEY, _I.pack(state))
            self._state = state

    def drain(self) -> list[bytes]:
        policy = self.policy
        if policy is None:
            return self.process.drain()
        now = self.clock()
        procs = self.process.drain()
        held = self._held
        held += policy.drain()
        if not held:
            return procs
        # the held records made before `now` (a ring's records are in commit order)
        n = native.fast.ktime_prefix(held, now) if native.fast is not None else py_ktime_prefix(held, now)
        ready, self._held = held[:n], held[n:]
        if not procs or not ready:
            return procs or ready
        return _merge(procs, ready)

    def close(self) -> None:
        self._ep.close()
        if self._reader_word is not None and self._reader_page is not None:
            self._reader_word.release()
            self._reader_word = None
            self._reader_page.close()
        for rb in self.rings():
            rb.close()


def _merge(procs: list[bytes], policy: list[bytes]) -> list[bytes]:
    """Both lists merged by kernel time, each in its own order (process records first on a
    tie). The shorter one is placed into the longer by binary search: a flood of policy
    records with a few execs among them costs a few key reads, not one per record."""
    small, big, small_first = (procs, policy, True) if len(procs) <= len(policy) else (policy, procs, False)
    out: list[bytes] = []
    lo = 0
    for r in small:
        k = _ktime(r)
        # process records go before policy records of the same time, policy records after
        at = (bisect.bisect_left if small_first else bisect.bisect_right)(big, k, lo, key=_ktime)
        out += big[lo:at]
        out.append(r)
        lo = at
    out += big[lo:]
    return out


def py_ktime_prefix(recs: list[bytes], now: int) -> int:
    """How many leading records the kernel made before `now` (the compiled ktime_prefix's
    reference)."""
    n = 0
    while n < len(recs) and _ktime(recs[n]) < now:
        n += 1
    return n


def _ktime(rec: bytes) -> int:
    """The kernel time in a record's header (struct msg_header: op, pad, flags, size, ktime)."""
    return int(_Q.unpack_from(rec, 8)[0]) if len(rec) >= 16 else 0
