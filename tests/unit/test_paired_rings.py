"""The process and policy rings read as one source (vigil.kernel.ringbuf.PairedRings): records
come out in the kernel's time order, each ring's own order kept; a policy record newer than
the pass waits for the next one, so it never comes before the exec of its process."""
from __future__ import annotations

import os
import struct
from typing import Any

from vigil.kernel.ringbuf import PairedRings


def rec(name: str, ktime: int) -> bytes:
    """A record with struct msg_header's layout (op, pad, flags, size, ktime) and a name."""
    return struct.pack("<BBHIQ", 1, 0, 0, 16, ktime) + name.encode()


def names(recs: list[bytes]) -> list[str]:
    return [r[16:].decode() for r in recs]


class FakeRing:
    """RingBuffer's reading side over a list; `on_drain` runs when a drain starts (what the
    kernel commits meanwhile)."""

    def __init__(self, on_drain: Any = None) -> None:
        self.records: list[bytes] = []
        self.on_drain = on_drain
        self.r, self.w = os.pipe()

    def fileno(self) -> int:
        return self.r

    def drain(self) -> list[bytes]:
        if self.on_drain is not None:
            self.on_drain()
        out, self.records = self.records, []
        return out

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def test_records_come_in_kernel_time_order() -> None:
    now = [100]
    process, policy = FakeRing(), FakeRing()

    def later() -> None:  # while the process ring drains, 42 execs and opens (after the pass's time)
        process.records.append(rec("exec 42", 101))
        policy.records.append(rec("open by 42", 102))

    process.records += [rec("exec 7", 10), rec("exit 7", 50)]
    policy.records += [rec("open by 7", 20)]
    policy.on_drain = later
    rings = PairedRings(process, clock=lambda: now[0])  # type: ignore[arg-type]
    rings.add_policy_ring(policy)  # type: ignore[arg-type]
    try:
        assert names(rings.drain()) == ["exec 7", "open by 7", "exit 7"]
        assert rings.wait(0)          # a record waits: the next pass comes at once
        now[0] = 200
        policy.on_drain = None
        assert names(rings.drain()) == ["exec 42", "open by 42"]
        assert rings.drain() == [] and not rings.wait(0)
    finally:
        rings.close()


def test_without_policies_only_the_process_ring_is_read() -> None:
    process = FakeRing()
    process.records += [rec("exec 1", 1), rec("exit 1", 2)]
    rings = PairedRings(process)  # type: ignore[arg-type]
    try:
        assert rings.rings() == [process] and names(rings.drain()) == ["exec 1", "exit 1"]
    finally:
        rings.close()


def test_merge_keeps_each_rings_order_and_interleaves_by_time() -> None:
    from hypothesis import given, strategies as st

    from vigil.kernel.ringbuf import _merge

    times = st.lists(st.integers(0, 50), max_size=30)

    @given(times, times)
    def check(a: list[int], b: list[int]) -> None:
        a, b = sorted(a), sorted(b)
        procs = [rec(f"p{i}", t) for i, t in enumerate(a)]
        policy = [rec(f"q{i}", t) for i, t in enumerate(b)]
        out = _merge(procs, policy)
        assert [r for r in out if r in procs] == procs and [r for r in out if r in policy] == policy
        assert [struct.unpack_from("<Q", r, 8)[0] for r in out] == sorted(a + b)
        for i, r in enumerate(out[:-1]):  # on a tie, the process record first
            if struct.unpack_from("<Q", r, 8) == struct.unpack_from("<Q", out[i + 1], 8):
                assert not (names([r])[0][0] == "q" and names([out[i + 1]])[0][0] == "p")

    check()
