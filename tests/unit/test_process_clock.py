"""RFC 3339 formatting of kernel times: the per-second cache (pure and compiled) must match a
plain formatter, and write protojson's Timestamp form (0, 3, 6 or 9 fractional digits)."""
from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from vigil.core import native
from vigil.process.build import format_arguments
from vigil.process.clock import WallClock, format_timestamp, frac_z

OFFSET = 1_764_000_000_000_000_000  # 2025-11-24T16:00:00Z: ktime k is that plus k ns


def _protobuf(wall_ns: int) -> str:
    """The reference: protobuf's own Timestamp JSON (the same 0/3/6/9 rule as Go's protojson)."""
    ts = Timestamp()
    ts.FromNanoseconds(wall_ns)
    return ts.ToJsonString()


def _formatters(offset: int = OFFSET) -> list[tuple[str, Callable[[int], str]]]:
    """ktime -> string: the clock's pure formatter and the compiled builder's."""
    from vigil.process.build import BuildOptions, EventBuilder
    from vigil.process.cache import ProcessCache

    out: list[tuple[str, Callable[[int], str]]] = []
    pure = WallClock()
    pure.offset = offset
    out.append(("pure", pure.ktime_rfc3339))
    if native.fast is not None:
        clock = WallClock()
        clock.offset = offset
        b = EventBuilder(ProcessCache(), clock, BuildOptions("n", host_ns=(0,) * 10))
        assert b._fast is not None
        out.append(("compiled", b._fast.rfc3339))
    return out


TABLE = [  # nanoseconds after OFFSET -> the string
    (0, "2025-11-24T16:00:00Z"),
    (1, "2025-11-24T16:00:00.000000001Z"),
    (999, "2025-11-24T16:00:00.000000999Z"),
    (1000, "2025-11-24T16:00:00.000001Z"),
    (10_000, "2025-11-24T16:00:00.000010Z"),
    (1_000_000, "2025-11-24T16:00:00.001Z"),
    (100_000_000, "2025-11-24T16:00:00.100Z"),
    (123_000_000, "2025-11-24T16:00:00.123Z"),
    (123_456_000, "2025-11-24T16:00:00.123456Z"),
    (123_456_789, "2025-11-24T16:00:00.123456789Z"),
    (999_999_999, "2025-11-24T16:00:00.999999999Z"),
    (1_000_000_000, "2025-11-24T16:00:01Z"),           # a second boundary: no fraction at all
    (1_000_000_001, "2025-11-24T16:00:01.000000001Z"),
    (59_999_000_000, "2025-11-24T16:00:59.999Z"),
    (60_000_000_000, "2025-11-24T16:01:00Z"),
    (8 * 3600 * 10**9 - 1000, "2025-11-24T23:59:59.999999Z"),
    (8 * 3600 * 10**9, "2025-11-25T00:00:00Z"),         # a day boundary
]


@pytest.mark.parametrize("which", ["pure", "compiled"])
@pytest.mark.parametrize("ktime, want", TABLE, ids=[str(k) for k, _ in TABLE])
def test_timestamp_table(which: str, ktime: int, want: str) -> None:
    fmts = dict(_formatters())
    if which not in fmts:
        pytest.fail("vigil/_fastpath is not built: run `make`")
    assert fmts[which](ktime) == want == _protobuf(OFFSET + ktime)
    sec, ns = divmod(OFFSET + ktime, 1_000_000_000)
    assert format_timestamp(sec, ns) == want


@pytest.mark.parametrize("order", ["ascending", "descending", "jumping"])
def test_cached_second_never_leaks_into_the_next(order: str) -> None:
    """The same ktimes in different orders (the cached prefix is reused, replaced, reused
    again): every formatter writes what the plain reference writes."""
    ks = [s * 1_000_000_000 + f for s in range(3) for f, _ in TABLE[:11]]
    if order == "descending":
        ks.reverse()
    elif order == "jumping":
        ks = ks[::3] + ks[1::3] + ks[2::3]
    want = [_protobuf(OFFSET + k) for k in ks]
    for name, fmt in _formatters():
        assert [fmt(k) for k in ks] == want, name


def test_frac_z() -> None:
    assert [frac_z(n) for n in (0, 5, 5000, 5_000_000, 500_000_000, 120_000_000)] == [
        "Z", ".000000005Z", ".000005Z", ".005Z", ".500Z", ".120Z"]


def test_ktime_rfc3339_matches_reference_across_seconds():
    c = WallClock()

    def ref(ktime: int) -> str:
        return _protobuf(ktime + c.offset)

    rnd = random.Random(7)
    ks = [rnd.randrange(0, 10**13) for _ in range(2000)]
    ks += sorted(rnd.randrange(10**12, 10**12 + 5 * 10**9) for _ in range(2000))
    # times on a whole microsecond and millisecond of wall time (the shorter forms)
    ks += [k - k % 1000 - c.offset % 1000 + 1000 for k in ks[:500]]
    ks += [k - k % 1_000_000 - c.offset % 1_000_000 + 1_000_000 for k in ks[:500]]
    ks += [0, 999_999_999, 1_000_000_000, 10**12 - 1, 10**12, 10**12 - 1]
    assert [c.ktime_rfc3339(k) for k in ks] == [ref(k) for k in ks]
    for name, fmt in _formatters(c.offset):
        assert [fmt(k) for k in ks] == [ref(k) for k in ks], name
    assert c.rfc3339(1_700_000_000_000_000_001) == "2023-11-14T22:13:20.000000001Z"
    assert c.rfc3339(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.120Z"
    c.offset += 5 * 10**8  # a resync moves the offset: the cached second must not be reused
    c.resync()
    assert c.ktime_rfc3339(ks[-1]) == ref(ks[-1])


def test_every_producer_writes_the_same_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """The export's wall time (rate_limit_info events) and the API's formatter agree with the clock."""
    from vigil.api import pbdict
    from vigil.export import rate_limit

    for ns in (1_764_000_000_000_000_000, 1_764_000_000_123_000_000, 1_764_000_000_123_456_000,
               1_764_000_000_123_456_789):
        monkeypatch.setattr(rate_limit.time, "time_ns", lambda ns=ns: ns)
        want = _protobuf(ns)
        assert rate_limit.rfc3339_now() == want
        assert pbdict.format_timestamp(*divmod(ns, 1_000_000_000)) == want
        c = WallClock()
        assert c.rfc3339(ns) == want


def test_format_arguments_edge_cases():
    assert format_arguments(b"") == ""
    assert format_arguments(b"\0") == ""
    assert format_arguments(b"/bin/ls") == ""  # truncated before the first NUL
    assert format_arguments(b"/bin/ls\0-l\0a b\0") == '-l "a b"'
    assert format_arguments(b"/bin/ls\0-l\0\0") == "-l "
    assert format_arguments(b"a b\0x\0") == "x"  # argv[0] is not part of `arguments`
    assert format_arguments(b"sh\0-c\0echo  hi\0") == '-c "echo  hi"'


# Tetragon's ArgsDecoder: a quoted argument comes after a space even when it is the first; empty
# arguments before the first non-empty one add nothing, after it each adds its space
TETRAGON_ARGUMENTS = [
    (b"py\0a b\0c\0", ' "a b" c'),
    (b"py\0a b\0", ' "a b"'),
    (b"py\0c\0a b\0", 'c "a b"'),
    (b"x\0\0\0y\0", "y"),
    (b"x\0\0a b\0", ' "a b"'),
    (b"x\0\0\0", ""),
    (b"x\0y\0\0z\0", "y  z"),
    (b"x\0a b\0\0c d\0", ' "a b"  "c d"'),
]


@pytest.mark.parametrize("which", ["pure", "compiled"])
@pytest.mark.parametrize("area, want", TETRAGON_ARGUMENTS, ids=[repr(a) for a, _ in TETRAGON_ARGUMENTS])
def test_arguments_joined_as_tetragon_joins_them(which: str, area: bytes, want: str) -> None:
    from vigil.process.build import py_format_arguments

    if which == "compiled" and native.fast is None:
        pytest.fail("vigil/_fastpath is not built: run `make`")
    fmt = py_format_arguments if which == "pure" else native.fast.format_arguments
    assert fmt(area) == want


def test_processes_older_than_the_time_the_machine_slept_get_a_usable_key():
    """CLOCK_BOOTTIME counts suspended time, the kernel's ktime does not: on a machine that slept
    longer than init had run when it started, the conversion went negative and the agent could
    not start (the exec id and the kernel map key are unsigned)."""
    from vigil.process import procfs

    c = WallClock()
    c.boot_offset = -10 * 365 * 86400 * 10**9   # ten years asleep
    snaps = procfs.scan(c)
    assert snaps and all(s.ktime >= 1 and s.exec_ktime >= 1 and s.pktime >= 0 for s in snaps)
    assert c.boottime_to_ktime(5 * 10**9) == 1 and WallClock().boottime_to_ktime(0) >= 1


def _uptime_ns() -> int:
    import time
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@pytest.mark.parametrize("asleep_ns", [0, 3600 * 10**9, -1], ids=["never", "an-hour", "longer-than-its-age"])
def test_procfs_start_time_counts_the_time_asleep(asleep_ns: int) -> None:
    """A process found in /proc starts when /proc says (CLOCK_BOOTTIME, which counts suspended
    time; Tetragon's start_time for procFS processes), however long the machine slept: one
    older than the time asleep had its start_time from its key, held at 1 (the instant the
    monotonic clock began), not its start. A suspension moves wall-minus-monotonic up and
    monotonic-minus-boottime down by the time asleep; the start must not move."""
    import subprocess
    import sys
    import time

    from google.protobuf.timestamp_pb2 import Timestamp

    from vigil.process import procfs
    from vigil.process.build import BuildOptions, EventBuilder
    from vigil.process.cache import ProcessCache

    before = time.time_ns()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        after = time.time_ns()
        if asleep_ns < 0:
            asleep_ns = _uptime_ns() + 3600 * 10**9  # longer than anything here has run
        clock = WallClock()
        clock.offset += asleep_ns
        clock.boot_offset -= asleep_ns
        s = procfs.snapshot(child.pid, clock, "/sys/fs/cgroup", {})
        assert s is not None
        b = EventBuilder(ProcessCache(), clock, BuildOptions("n", host_ns=(0,) * 10))
        ev = b.on_procfs(s, time.monotonic_ns())
        ts = Timestamp()
        ts.FromJsonString(ev.process.start_time)
        tick = 10**9 // procfs.CLK_TCK  # /proc start times are whole clock ticks
        assert before - tick <= ts.ToNanoseconds() <= after, (ev.process.start_time, asleep_ns)
        assert s.exec_ktime >= 1
    finally:
        child.kill()
        child.wait()
