"""The process and policy rings read as one source (vigil.kernel.ringbuf.PairedRings): records
come out in the kernel's time order, each ring's own order kept; a policy record newer than
the pass waits for the next one, so it never comes before the exec of its process."""
from __future__ import annotations

import mmap
import os
import select
import struct
from typing import Any

import pytest

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

    def pending(self) -> int:
        return len(self.records)

    def wake(self) -> None:
        """What the kernel does for a record committed with a wakeup."""
        os.write(self.w, b"x")

    def drain(self) -> list[bytes]:
        while select.select([self.r], [], [], 0)[0]:
            os.read(self.r, 64)
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


class ReaderMap:
    """The `vigil_reader` map: `on_store(state)` runs as the agent stores a state (what the
    programs do meanwhile)."""

    def __init__(self, on_store: Any = None) -> None:
        self.stored: list[int] = []
        self.on_store = on_store

    def update(self, key: bytes, value: bytes) -> None:
        state = int.from_bytes(value, "little")
        self.stored.append(state)
        if self.on_store is not None:
            self.on_store(state)


def test_a_record_whose_program_read_draining_just_before_the_reader_slept_is_found_at_once() -> None:
    """The program read DRAINING (no wakeup), the reader stored SLEEPING and polled, then the
    record was committed: without a second look it would wait for the next record or the
    whole timeout."""
    from vigil.kernel.ringbuf import READER_DRAINING, READER_SLEEPING

    process = FakeRing()

    def commit_without_wakeup(state: int) -> None:
        if state == READER_SLEEPING and not process.records:
            process.records.append(rec("exec 9", 9))

    reader = ReaderMap()
    rings = PairedRings(process, reader_state=reader)  # type: ignore[arg-type]
    try:
        process.records.append(rec("exec 8", 8))
        process.wake()
        assert rings.wait(5.0) and names(rings.drain()) == ["exec 8"]
        assert reader.stored == [READER_SLEEPING, READER_DRAINING]
        reader.on_store = commit_without_wakeup
        assert rings.wait(5.0), "the record committed without a wakeup was not found"
        assert names(rings.drain()) == ["exec 9"] and reader.stored[-1] == READER_DRAINING
        # nothing committed: asleep until the timeout, and asleep it stays (no store per call)
        reader.on_store = None
        assert not rings.wait(0.01) and reader.stored[-1] == READER_SLEEPING
        n = len(reader.stored)
        assert not rings.wait(0.01) and len(reader.stored) == n
        # asleep, a record after the last drain wakes the reader
        process.records.append(rec("exec 10", 10))
        process.wake()
        assert rings.wait(5.0) and reader.stored[-1] == READER_DRAINING
        assert names(rings.drain()) == ["exec 10"]
    finally:
        rings.close()


class MappableReader(ReaderMap):
    """A reader map with an fd: a memfd page (mapped like a BPF_F_MMAPABLE array's value) or a
    pipe (cannot be mapped: the state is stored by update, the system call)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind == "mappable":
            self.fd = os.memfd_create("vigil_reader")
            os.ftruncate(self.fd, mmap.PAGESIZE)
            self._other = -1
        else:
            self.fd, self._other = os.pipe()

    def value(self) -> int:
        return int.from_bytes(os.pread(self.fd, 4, 0), "little")

    def close(self) -> None:
        os.close(self.fd)
        if self._other >= 0:
            os.close(self._other)


# the reader map's kind, whether the state is stored through a mapping
@pytest.mark.parametrize("kind, mapped", [("mappable", True), ("unmappable", False), ("mappable-off", False)],
                         ids=["mmap", "fallback", "mmap-off"])
def test_the_reader_state_is_stored_through_the_mapped_value_where_it_can_be(kind: str, mapped: bool) -> None:
    """Going to sleep and waking stored `vigil_reader` with a bpf() system call each time
    (~two per idle spell, ~185 us with the settle wait on a live exec loop). A map the kernel
    lets us map (BPF_F_MMAPABLE) is now written with a store; one it does not, or with
    map_reader=False, by update as before. Same states in the same order either way."""
    from vigil.kernel.ringbuf import READER_DRAINING, READER_SLEEPING

    process = FakeRing()
    reader = MappableReader(kind.removesuffix("-off"))
    rings = PairedRings(process, reader_state=reader, map_reader=not kind.endswith("-off"))  # type: ignore[arg-type]
    try:
        assert rings.reader_mapped == mapped
        assert not rings.wait(0.01)
        if mapped:
            assert reader.stored == [] and reader.value() == READER_SLEEPING
        else:
            assert reader.stored == [READER_SLEEPING]
        process.records.append(rec("exec 1", 1))
        process.wake()
        assert rings.wait(5.0) and names(rings.drain()) == ["exec 1"]
        if mapped:
            assert reader.stored == [] and reader.value() == READER_DRAINING
        else:
            assert reader.stored == [READER_SLEEPING, READER_DRAINING]
            assert kind == "unmappable" or reader.value() == 0  # (a pipe has no value to read)
    finally:
        rings.close()
        reader.close()


@pytest.mark.parametrize("ring", ["process", "policy", None])
def test_a_record_committed_without_a_wakeup_while_asleep_is_found_at_the_timeout(ring: str | None) -> None:
    """Asleep, only the first record after the last drain wakes the reader (the kernel's
    rule); a preemptible program that read DRAINING long before may commit its record after
    the settle time without a wakeup, and no later record wakes the reader either. A poll
    that times out looks at the rings' positions: the record is found then, not never."""
    from vigil.kernel.ringbuf import READER_DRAINING, READER_SLEEPING

    process, policy = FakeRing(), FakeRing()
    reader = ReaderMap()
    rings = PairedRings(process, clock=lambda: 1 << 60, reader_state=reader)  # type: ignore[arg-type]
    rings.add_policy_ring(policy)  # type: ignore[arg-type]
    try:
        assert not rings.wait(0.01) and reader.stored == [READER_SLEEPING]  # asleep
        if ring is not None:
            (process if ring == "process" else policy).records.append(rec(f"{ring} record", 5))
        assert rings.wait(0.01) == (ring is not None)
        if ring is not None:
            assert reader.stored[-1] == READER_DRAINING and names(rings.drain()) == [f"{ring} record"]
        else:
            assert reader.stored == [READER_SLEEPING]
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
