"""Kernel clocks to wall time, and fast RFC 3339 formatting (hot path).

Every google.protobuf.Timestamp string Vigil writes is made here (the export's and the
API's formatters reuse format_timestamp): UTC, ending in Z, with the fewest of 0, 3, 6
or 9 fractional digits that hold the nanoseconds exactly, as Go's protojson writes them
("...:05Z", "...:05.120Z", "...:05.123456Z", "...:05.123456789Z")."""
from __future__ import annotations

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def frac_z(nanos: int) -> str:
    """The fraction and zone of a Timestamp string: "Z", ".123Z", ".123456Z" or ".123456789Z"."""
    if nanos % 1000:
        return f".{nanos:09d}Z"
    if nanos % 1_000_000:
        return f".{nanos // 1000:06d}Z"
    if nanos:
        return f".{nanos // 1_000_000:03d}Z"
    return "Z"


def format_timestamp(seconds: int, nanos: int) -> str:
    """(seconds, nanos) since the epoch -> the RFC 3339 string protojson writes."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + frac_z(nanos)


class WallClock:
    """Maps CLOCK_MONOTONIC ns (bpf_ktime_get_ns) to Unix ns."""

    def __init__(self) -> None:
        self._sec_start = 1 << 62  # ktime at which the cached second begins: none yet
        self._prefix = ""
        self.resync()

    def resync(self) -> None:
        # bracket the monotonic read to keep the offset error small
        a = time.monotonic_ns()
        wall = time.time_ns()
        b = time.monotonic_ns()
        self.offset = wall - (a + b) // 2
        self.boot_offset = time.clock_gettime_ns(time.CLOCK_MONOTONIC) - time.clock_gettime_ns(
            time.CLOCK_BOOTTIME
        )
        self._sec_start = 1 << 62  # the offset moved: the cached second is void

    def wall_ns(self, ktime: int) -> int:
        return ktime + self.offset

    def rfc3339(self, wall_ns: int) -> str:
        return self.ktime_rfc3339(wall_ns - self.offset)

    def ktime_rfc3339(self, ktime: int) -> str:
        # hot (two to three calls per event): within the cached second only a subtraction
        # and the zero-padded fraction (str() of 1e9 + frac, ~30% faster than {frac:09d});
        # the shorter forms (frac_z) only for a time on a whole microsecond
        frac = ktime - self._sec_start
        if frac >= 1_000_000_000 or frac < 0:
            sec, frac = divmod(ktime + self.offset, 1_000_000_000)
            self._sec_start = ktime - frac
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        if frac % 1000:
            return f"{self._prefix}{str(frac + 1_000_000_000)[1:]}Z"
        return self._prefix[:-1] + frac_z(frac)

    def boottime_to_ktime(self, boot_ns: int) -> int:
        """CLOCK_BOOTTIME ns (procfs start times) -> CLOCK_MONOTONIC ns. A process started
        before the machine had been suspended for longer than it had run (init, early daemons,
        kernel threads on a laptop) would come out negative: it gets 1, which only has to be a
        key the kernel side and this side agree on (its start_time comes from CLOCK_BOOTTIME)."""
        return max(1, boot_ns + self.boot_offset)
