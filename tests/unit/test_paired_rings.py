"""The process and policy rings read as one source (vigil.kernel.ringbuf.PairedRings): a policy
record committed while the process ring is being drained waits for the next pass, so it can
never come before the exec of its process."""
from __future__ import annotations

import os
from typing import Any

from vigil.kernel.ringbuf import PairedRings


class FakeRing:
    """RingBuffer's reading side over a list; `on_drain` runs when a drain starts (what the
    kernel commits meanwhile)."""

    def __init__(self, on_drain: Any = None) -> None:
        self.records: list[bytes] = []
        self.pos = 0
        self.on_drain = on_drain
        self.r, self.w = os.pipe()

    def fileno(self) -> int:
        return self.r

    def producer_pos(self) -> int:
        return len(self.records)

    def drain(self, until: int | None = None) -> list[bytes]:
        if self.on_drain is not None:
            self.on_drain()
        end = len(self.records) if until is None else min(until, len(self.records))
        out, self.pos = self.records[self.pos:end], end
        return out

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def test_a_policy_record_never_overtakes_its_exec() -> None:
    policy = FakeRing()

    def exec_then_open() -> None:  # while the process ring drains: a new process execs, then opens
        if not process.records:
            process.records.append(b"exec 42")
            policy.records.append(b"open by 42")

    process = FakeRing(on_drain=exec_then_open)
    policy.records.append(b"open by 7")
    rings = PairedRings(process)  # type: ignore[arg-type]
    rings.add_policy_ring(policy)  # type: ignore[arg-type]
    try:
        assert rings.drain() == [b"exec 42", b"open by 7"]   # 42's open waits: it came after the snapshot
        assert rings.drain() == [b"open by 42"]
        assert rings.drain() == []
    finally:
        rings.close()


def test_without_policies_only_the_process_ring_is_read() -> None:
    process = FakeRing()
    process.records += [b"exec 1", b"exit 1"]
    rings = PairedRings(process)  # type: ignore[arg-type]
    try:
        assert rings.rings() == [process] and rings.drain() == [b"exec 1", b"exit 1"]
    finally:
        rings.close()
