"""RFC 3339 formatting of kernel times: the per-second cache must match a plain formatter."""
from __future__ import annotations

import random
import time

from vigil.process.build import format_arguments
from vigil.process.clock import WallClock


def test_ktime_rfc3339_matches_reference_across_seconds():
    c = WallClock()

    def ref(ktime: int) -> str:
        sec, frac = divmod(ktime + c.offset, 1_000_000_000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"

    rnd = random.Random(7)
    ks = [rnd.randrange(0, 10**13) for _ in range(2000)]
    ks += sorted(rnd.randrange(10**12, 10**12 + 5 * 10**9) for _ in range(2000))
    ks += [0, 999_999_999, 1_000_000_000, 10**12 - 1, 10**12, 10**12 - 1]
    assert [c.ktime_rfc3339(k) for k in ks] == [ref(k) for k in ks]
    assert c.rfc3339(1_700_000_000_000_000_001) == "2023-11-14T22:13:20.000000001Z"
    c.offset += 5 * 10**8  # a resync moves the offset: the cached second must not be reused
    c.resync()
    assert c.ktime_rfc3339(ks[-1]) == ref(ks[-1])


def test_format_arguments_edge_cases():
    assert format_arguments(b"") == ""
    assert format_arguments(b"\0") == ""
    assert format_arguments(b"/bin/ls") == ""  # truncated before the first NUL
    assert format_arguments(b"/bin/ls\0-l\0a b\0") == '-l "a b"'
    assert format_arguments(b"/bin/ls\0-l\0\0") == "-l "
    assert format_arguments(b"a b\0x\0") == "x"  # argv[0] is not part of `arguments`
    assert format_arguments(b"sh\0-c\0echo  hi\0") == '-c "echo  hi"'


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
