"""Export rate limit (--export-rate-limit, events per minute).

A token bucket holding at most one minute's worth of events, refilled continuously.
``-1`` (or any negative value) means unlimited and ``0`` exports nothing. Dropped
events are counted; once per ``report_interval`` seconds, if anything was dropped,
``report()`` returns a ``rate_limit_info`` event giving the count since the last report.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from vigil.process.clock import format_timestamp


def rfc3339_now() -> str:
    """Current UTC time as protojson writes a Timestamp (0, 3, 6 or 9 fractional digits)."""
    return format_timestamp(*divmod(time.time_ns(), 1_000_000_000))


class ExportRateLimiter:
    def __init__(
        self,
        events_per_minute: int,
        *,
        node_name: str = "",
        report_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_time: Callable[[], str] = rfc3339_now,
    ) -> None:
        self.limit = events_per_minute
        self.node_name = node_name
        self.report_interval = report_interval
        self._clock = clock
        self._wall_time = wall_time
        self._lock = threading.Lock()
        self._capacity = float(max(events_per_minute, 0))
        self._tokens = self._capacity
        self._refill_per_second = self._capacity / 60.0
        self._last_refill = clock()
        self._last_report = self._last_refill
        self.dropped_total = 0  # for tetragon_export_ratelimit_events_dropped_total
        self._dropped_unreported = 0

    @property
    def unlimited(self) -> bool:
        return self.limit < 0

    def allow(self, count: int = 1) -> int:
        """Take up to `count` tokens; return how many events may pass (the first ones)."""
        if self.limit < 0:
            return count
        with self._lock:
            now = self._clock()
            elapsed = max(now - self._last_refill, 0.0)
            self._last_refill = now
            self._tokens = min(self._capacity, self._tokens + elapsed * self._refill_per_second)
            allowed = min(count, int(self._tokens))
            self._tokens -= allowed
            dropped = count - allowed
            self.dropped_total += dropped
            self._dropped_unreported += dropped
            return allowed

    def report(self, force: bool = False) -> dict[str, Any] | None:
        """A rate_limit_info event if drops happened and the interval has elapsed."""
        with self._lock:
            now = self._clock()
            if not self._dropped_unreported:
                return None
            if not force and now - self._last_report < self.report_interval:
                return None
            dropped, self._dropped_unreported = self._dropped_unreported, 0
            self._last_report = now
        event: dict[str, Any] = {
            "rate_limit_info": {"number_of_dropped_process_events": str(dropped)}
        }
        if self.node_name:
            event["node_name"] = self.node_name
        event["time"] = self._wall_time()
        return event
