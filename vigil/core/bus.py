"""Fan-out of events to live subscribers, in one process (the agent's in-process gRPC
streams and tests; the serving processes' clients, fed from the shared-memory ring).

Items are whatever the publisher hands over: typed events, dicts, or encoded bytes. Each
subscriber has a bounded queue; a subscriber that falls behind loses items, and every
lost item is counted on that subscriber and in the bus total. Publishing never blocks,
so a slow client cannot stall the publisher or other clients.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Any


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._q: deque[Any] = deque()
        self._maxsize = maxsize
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def _offer(self, events: list[Any]) -> int:
        with self._cond:
            room = self._maxsize - len(self._q)
            take = events if room >= len(events) else events[: max(room, 0)]
            self._q.extend(take)
            lost = len(events) - len(take)
            self.dropped += lost
            self._cond.notify()
            return lost

    def get_batch(self, timeout: float | None = None, max_items: int = 1024) -> list[Any]:
        """Wait up to `timeout` for events; returns [] on timeout or close."""
        with self._cond:
            if not self._q and not self.closed:
                self._cond.wait(timeout)
            out: list[Any] = []
            while self._q and len(out) < max_items:
                out.append(self._q.popleft())
            return out

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._bus._remove(self)


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self.dropped_total = 0

    def subscribe(self, maxsize: int = 10000) -> Subscription:
        s = Subscription(self, maxsize)
        with self._lock:
            self._subs = [*self._subs, s]
        return s

    def _remove(self, s: Subscription) -> None:
        with self._lock:
            self._subs = [x for x in self._subs if x is not s]

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def publish(self, events: Iterable[Any]) -> None:
        subs = self._subs  # copy-on-write list: no lock on the hot path
        if not subs:
            return
        batch = events if isinstance(events, list) else list(events)
        for s in subs:
            self.dropped_total += s._offer(batch)
