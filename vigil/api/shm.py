"""A shared-memory ring of encoded events: one writer (the agent), many readers (the gRPC
serving processes), no locks and no waiting on either side.

The writer appends records and never blocks: a reader that falls a whole ring behind
loses the records the writer went over, and knows exactly how many (sequence numbers).
A reader copies a record out and then checks the writer has not lapped it meanwhile (a
torn copy is dropped and counted like a lost one): before it writes a record the writer
announces how far it is about to write (`reserve`), so a copy the writer may be going over
is found even before that write is published.

Layout of the memfd (all little endian):
  header (HEADER bytes): magic u32, version u32, capacity u64, ver u64 (even when stable),
    head u64 (bytes written, ever), seq u64 (records written, ever), wanted u64 x READERS
    (each reader's streams: how many are open << 32 | how many have room for records; the
    writer skips encoding while no stream anywhere has room), skipped u64 (events the writer
    did not encode because no stream had room, ever: each reader counts them as dropped for
    every stream it had then), reserve u64 (the byte position the writer is writing up to,
    stored before the record's bytes), then from STATS_OFF a stats block: each reader's
    counters and its streams' (vigil.api.streamtable), which outlive the reader.
  Words another process reads are stored whole (vigil.core.sharedmem), never through 0.
  data (capacity bytes): records [len u32][pad u32][seq u64][payload][pad to 8]; a record
    that does not fit before the end of the data starts at its beginning, the rest of the
    end marked with len WRAP (when at least 4 bytes are left).
"""
from __future__ import annotations

import mmap
import os
import struct
import threading
from collections.abc import Iterator

from vigil.core import native, sharedmem
from vigil.core.sharedmem import Words

MAGIC = 0x56474C52  # "VGLR"
VERSION = 5
HEADER = 32768                       # (the stats block: a slot for every stream of every reader)
READERS = 4                          # serving processes, each with its own `wanted` word
_HDR = struct.Struct("<IIQQQQ")      # magic, version, capacity, ver, head, seq
_REC = struct.Struct("<IIQ")         # len, pad, seq
_PREFIX = struct.Struct(">BI")       # a gRPC message's prefix (vigil.api.grpcframe.PREFIX)
WRAP = 0xFFFFFFFF
_OFF_VER, _OFF_HEAD, _OFF_SEQ, _OFF_WANTED = 16, 24, 32, 40
_OFF_SKIPPED = _OFF_WANTED + 8 * READERS
_OFF_RESERVE = _OFF_SKIPPED + 8
_STALL_TRIES = 100_000               # a publish seen half-done this many times: nothing new (writer gone)
STATS_OFF = 128                      # the readers' stats block starts here (up to HEADER)


class RingWriter:
    """The agent's end: create() makes the memfd that readers map (pass `fd` to them)."""

    def __init__(self, capacity: int = 64 << 20) -> None:
        if capacity < 4096 or capacity & 7:
            raise ValueError("ring capacity must be a multiple of 8, at least 4096")
        self.capacity = capacity
        self.fd = os.memfd_create("vigil-events", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, HEADER + capacity)
        # not populated here: an agent no gRPC client ever streams from keeps no ring in memory
        # (--server-ring-mb, 64 MB by default); populate() runs when the first stream subscribes
        self._m = mmap.mmap(self.fd, HEADER + capacity, flags=mmap.MAP_SHARED)
        self._populating: threading.Thread | None = None  # populate() was called
        _HDR.pack_into(self._m, 0, MAGIC, VERSION, capacity, 0, 0, 0)  # before any reader maps it
        self._words = Words(self._m)
        self._head = 0
        self._seq = 0
        self.records = 0
        self.bytes = 0
        self.skipped = 0

    @property
    def seq(self) -> int:
        """The seq of the last record published (records are numbered from 1)."""
        return self._seq

    def demand(self) -> tuple[int, int]:
        """(streams with room for records, streams open), over all readers; no room
        anywhere: encoding would be wasted."""
        room = open_ = 0
        for i in range(READERS):
            w = self._words.load(_OFF_WANTED + 8 * i)
            room += w & 0xFFFF_FFFF
            open_ += w >> 32
        return room, open_

    @property
    def wanted(self) -> int:
        """How many streams have room for records now, over all readers."""
        return self.demand()[0]

    def takes(self, n: int) -> bool:
        """Whether `n` events should be encoded now: not while no stream has room, and then
        they are counted as skipped if any stream is open (its loss, as its full queue's)."""
        room, streams = self.demand()
        if room:
            return True
        if streams:
            self.skip(n)
        return False

    def clear_reader(self, index: int) -> None:
        """A reader (serving process) that ended: its streams no longer ask for records."""
        self._words.store(_OFF_WANTED + 8 * index, 0)

    def skip(self, n: int) -> None:
        """`n` events not encoded while no stream had room: the readers count them as
        dropped for each stream they have (a full queue would have dropped them anyway)."""
        self.skipped += n
        self._words.store(_OFF_SKIPPED, self.skipped)

    def populate(self) -> None:
        """Fault the whole ring in at once, when a stream first wants records: 46 ms for 64 MB
        here, where the first lap faulting page by page cost the event path 70 ms more. On a
        thread of its own, through ctypes so the GIL is released meanwhile (mmap.madvise holds
        it): the event loop goes on draining, and what it writes first faults its own pages in."""
        if self._populating is None:
            self._populating = sharedmem.prefault(self._m)

    def wait_populated(self, timeout: float | None = None) -> bool:
        """Whether the ring has been faulted in (after populate()), waiting up to `timeout`."""
        t = self._populating
        if t is None:
            return False
        t.join(timeout)
        return not t.is_alive()

    def write_batch(self, payloads: list[bytes]) -> None:
        if native.fast is not None:
            head, seq = native.fast.ring_write(self._m, HEADER, self.capacity, self._head, self._seq, payloads,
                                               _OFF_RESERVE)
        else:
            head, seq = self._append(payloads)
        self._publish(head, seq)

    def _append(self, payloads: list[bytes]) -> tuple[int, int]:
        """The records written after the current head (the compiled ring_write's twin)."""
        m, cap = self._m, self.capacity
        head, seq = self._head, self._seq
        for p in payloads:
            need = (_REC.size + len(p) + 7) & ~7
            if need > cap:
                continue  # larger than the whole ring: cannot be carried (never for an event)
            off = head % cap
            pad = cap - off if cap - off < need else 0   # no room before the end: wrap
            self._words.store(_OFF_RESERVE, head + pad + need)  # before a byte of it is written
            if pad:
                if pad >= 4:
                    struct.pack_into("<I", m, HEADER + off, WRAP)
                head += pad
                off = 0
            seq += 1
            _REC.pack_into(m, HEADER + off, len(p), 0, seq)
            m[HEADER + off + _REC.size:HEADER + off + _REC.size + len(p)] = p
            head += need
        return head, seq

    def _publish(self, head: int, seq: int) -> None:
        w = self._words
        # publish: odd version while head and seq change (readers retry), then even
        ver = w.load(_OFF_VER)
        w.store(_OFF_VER, ver + 1)
        w.store(_OFF_HEAD, head)
        w.store(_OFF_SEQ, seq)
        w.store(_OFF_VER, ver + 2)
        self.records += seq - self._seq
        self.bytes += head - self._head
        self._head, self._seq = head, seq

    def stats_view(self) -> memoryview:
        return memoryview(self._m)[STATS_OFF:HEADER]

    def close(self) -> None:
        """Idempotent: a front end that failed to start is stopped too."""
        if self.fd < 0:
            return
        if self._populating is not None:
            self._populating.join()  # it must not be faulting the mapping in as it goes
        self._words.release()
        self._m.close()
        os.close(self.fd)
        self.fd = -1


class RingReader:
    """A serving process's end: read() returns what was written since the last call."""

    def __init__(self, fd: int, index: int = 0) -> None:
        if not 0 <= index < READERS:
            raise ValueError(f"reader index must be 0..{READERS - 1}")
        self._wanted_off = _OFF_WANTED + 8 * index
        size = os.fstat(fd).st_size
        self._m = mmap.mmap(fd, size)
        magic, version, cap, *_ = _HDR.unpack_from(self._m, 0)
        if magic != MAGIC or version != VERSION or size != HEADER + cap:
            raise ValueError("not a vigil event ring (magic/version/size)")
        self.capacity = cap
        self._words = Words(self._m)
        self.set_wanted(0)  # a reader that served this slot before and died left its count
        head, seq = self._position()
        self._pos, self._next = head, seq + 1  # start at the present: nothing old
        self.lost = 0     # records the writer went over before they were read

    def _position(self) -> tuple[int, int]:
        """(head, seq) as last published; while a publish stays half-done (a writer killed in
        the middle of one) this reader's own position: nothing new, asked again next time."""
        w = self._words
        for _ in range(_STALL_TRIES):
            v1 = w.load(_OFF_VER)
            head = w.load(_OFF_HEAD)
            seq = w.load(_OFF_SEQ)
            if v1 & 1 == 0 and w.load(_OFF_VER) == v1:
                return head, seq
        return self._pos, self._next - 1

    def set_wanted(self, room: int, streams: int | None = None) -> None:
        """This reader's streams with room for records, and open (`streams`, default:
        `room`). Its own word: readers never overwrite each other's counts, so one
        process's last client leaving cannot starve another's."""
        streams = room if streams is None else streams
        if not 0 <= room <= streams < 1 << 32:
            raise ValueError(f"stream counts out of range: {room} with room of {streams}")
        self._words.store(self._wanted_off, streams << 32 | room)

    def skipped(self) -> int:
        """Events the writer has not encoded because no stream had room, ever (RingWriter.skip)."""
        return self._words.load(_OFF_SKIPPED)

    def missed(self) -> int:
        """Events no stream of this reader got, ever: skipped by the writer, or lost to a lap."""
        return self.skipped() + self.lost

    def position(self) -> tuple[int, int]:
        """(the seq of the next record this reader will read, records it has lost so far)."""
        return self._next, self.lost

    def unread(self) -> int:
        """Records the writer has published that this reader has not read yet."""
        return max(0, self._position()[1] - self._next + 1)

    def read(self, max_records: int = 4096, *, framed: bool = False) -> list[bytes]:
        """Records written since the last call (at most max_records); `framed`: each
        as a gRPC message, behind its 5-byte prefix (vigil.api.grpcframe)."""
        head, seq = self._position()
        cap, start = self.capacity, self._pos
        if self._words.load(_OFF_RESERVE) - start > cap:  # lapped: what it has not read is gone
            return self._lapped(head, seq)
        if native.fast is not None:
            out, pos, nxt, skipped = native.fast.ring_read(self._m, HEADER, cap, start, head, self._next,
                                                           max_records, framed)
        else:
            out, pos, nxt, skipped = self._copy(start, head, self._next, max_records, framed)
        # the copies are good only if the writer has not come to their bytes since (its reserve:
        # what it is writing now, published or not); else none of them is sent
        if self._words.load(_OFF_RESERVE) - start > cap:
            return self._lapped(*self._position())
        self.lost += skipped
        self._pos, self._next = pos, nxt
        return out

    def _lapped(self, head: int, seq: int) -> list[bytes]:
        """The writer went over records not read yet: every one from the next this reader
        wanted up to `seq` is lost (counted), and reading goes on from `head`."""
        self.lost += max(0, seq - self._next + 1)
        self._pos, self._next = head, seq + 1
        return []

    def _copy(self, pos: int, head: int, nxt: int, max_records: int,
              framed: bool) -> tuple[list[bytes], int, int, int]:
        """The records from `pos`: (payloads, pos, next seq, seqs skipped) (the compiled
        ring_read's twin)."""
        m, cap = self._m, self.capacity
        out: list[bytes] = []
        skipped = 0
        while pos < head and len(out) < max_records:
            off = pos % cap
            if cap - off < 4:
                pos += cap - off
                continue
            n = struct.unpack_from("<I", m, HEADER + off)[0]
            if n == WRAP or cap - off < _REC.size:
                pos += cap - off
                continue
            if n > cap - off - _REC.size:
                break  # torn (the writer came round meanwhile): the caller's lap check drops the batch
            _n, _pad, rseq = _REC.unpack_from(m, HEADER + off)
            payload = bytes(m[HEADER + off + _REC.size:HEADER + off + _REC.size + n])
            pos += (_REC.size + n + 7) & ~7
            if rseq > nxt:  # skipped records (a partial lap between reads)
                skipped += rseq - nxt
            nxt = rseq + 1
            out.append(_PREFIX.pack(0, n) + payload if framed else payload)
        return out, pos, nxt, skipped

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.read())

    def stats_view(self) -> memoryview:
        return memoryview(self._m)[STATS_OFF:HEADER]

    def close(self) -> None:
        self._words.release()
        self._m.close()
