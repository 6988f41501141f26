"""One GetEvents client's bounded queue of framed messages, in runs.

The serving process reads each batch from the ring framed (vigil.api.shm, `framed=True`)
and joins it once into one run of bytes shared by every unfiltered client; a client's queue
holds such runs, and sending takes bytes off the front of them, however they fall
across HTTP/2 DATA frames. Offering never blocks and never grows the queue past `limit`
events: what does not fit is dropped and counted on this client (`dropped`).

A client with filters queues the ring's messages unfiltered (`pending`, within the same
limit) and filters them in slices as it sends (`refill`), so its filtering costs only
what it actually sends, and a client whose filters cannot keep up loses its own events.

A queue that overflowed is `full` until it has sent down to half its limit: while every
stream is full, the agent does not encode events at all (vigil.api.shm, `wanted`), and
what it skipped is counted as dropped here (`skip`). The half-limit margin keeps a slow
client busy while the agent resumes, and keeps the flag from flipping on every send.

`dropped` is counted before the stream's filters. A client with filters loses events it
would have filtered out along with those it wanted: its overflow is unfiltered (`pending`),
the agent's skipped events were never encoded, the records a ring lap overwrote cannot be
read back, and none of them can be put through the filter; filtering them anyway would cost
the slow client's process the very work it could not keep up with. So for an unfiltered
stream `dropped` is exactly what its client lost, and for a filtered one it is an upper
bound on the matching events it lost (`filtered` counts only events it did evaluate).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from vigil.api import grpcframe
from vigil.api.streams import filter_messages
from vigil.api.wire import EventEncoder


class ClientQueue:
    __slots__ = ("limit", "runs", "queued", "offset", "sent", "dropped", "closed",
                 "event_filter", "encoder", "pending", "filtered", "errors", "full", "on_room")

    def __init__(self, limit: int, event_filter: Any | None = None, encoder: EventEncoder | None = None) -> None:
        self.limit = limit
        self.runs: deque[tuple[bytes, int]] = deque()  # (framed messages, how many)
        self.queued = 0        # events in `runs` and `pending`
        self.offset = 0        # bytes of runs[0] already taken
        self.sent = 0          # events whose last byte was taken
        self.dropped = 0       # events that did not fit
        self.closed = False
        self.event_filter = event_filter
        self.encoder = encoder
        self.pending: deque[bytes] = deque()  # framed, not yet filtered (a client with filters)
        self.filtered = self.errors = 0
        self.full = False      # overflowed, and not yet back down to half the limit
        self.on_room: Callable[[], None] | None = None  # called when `full` ends

    def skip(self, n: int) -> None:
        """`n` events the agent did not encode while no stream had room: dropped for this one."""
        self.dropped += n

    def _sent_some(self) -> None:
        if self.full and self.queued <= self.limit // 2:
            self.full = False
            if self.on_room is not None:
                self.on_room()

    def offer(self, framed: list[bytes], joined: bytes) -> None:
        """A batch from the ring: each message framed (`framed`), all of them joined (`joined`)."""
        n = len(framed)
        room = self.limit - self.queued
        if room < n:
            self.dropped += n - max(room, 0)
            self.full = True
            if room <= 0:
                return
            n = room
            framed, joined = framed[:n], b"".join(framed[:n])
        self.queued += n
        if self.event_filter is not None:
            self.pending.extend(framed)
        else:
            self.runs.append((joined, n))

    def refill(self, budget: int = 256) -> bool:
        """Filter up to `budget` pending messages into runs; whether more are pending."""
        if not self.pending:
            return False
        skip = grpcframe.PREFIX.size
        take = [self.pending.popleft()[skip:] for _ in range(min(budget, len(self.pending)))]
        assert self.encoder is not None
        out, filtered, errors = filter_messages(take, self.event_filter, self.encoder)
        self.filtered += filtered
        self.errors += errors
        self.queued -= filtered + errors
        if out:
            self.runs.append((b"".join(grpcframe.frame_all(out)), len(out)))
        self._sent_some()
        return bool(self.pending)

    def take_pieces(self, max_bytes: int) -> list[memoryview]:
        """Up to `max_bytes` from the front of the queue, as views of its runs (none copied)."""
        parts: list[memoryview] = []
        size = 0
        runs = self.runs
        while runs and size < max_bytes:
            data, n = runs[0]
            start = self.offset
            end = min(len(data), start + max_bytes - size)
            parts.append(memoryview(data)[start:end])
            size += end - start
            if end == len(data):
                runs.popleft()
                self.offset = 0
                self.sent += n
                self.queued -= n
            else:
                self.offset = end
        self._sent_some()
        return parts

    def take(self, max_bytes: int) -> bytes:
        """take_pieces, joined (b"" when empty)."""
        return b"".join(self.take_pieces(max_bytes))

    def has_data(self) -> bool:
        return bool(self.runs)

    def close(self) -> None:
        """The stream ended: what it had queued will never be sent, and counts as dropped
        (so sent + dropped + filtered is every event offered to it)."""
        self.closed = True
        self.dropped += self.queued
        self.queued = 0
        self.runs.clear()
        self.pending.clear()
