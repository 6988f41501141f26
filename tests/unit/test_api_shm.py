"""The shared-memory event ring (vigil.api.shm): every record read back in order, wraps and
laps accounted, framed reads as gRPC messages, and the compiled writer and reader
(native/fastpath.c ring_write, ring_read) equal to their pure-Python twins byte for byte."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.procstatus import status_kb
from vigil.api import grpcframe, shm
from vigil.core import native

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
batches = st.lists(st.lists(st.binary(max_size=700), max_size=40), min_size=1, max_size=30)


@contextmanager
def pure(on: bool) -> Iterator[None]:
    saved = native.fast
    native.fast = None if on else saved
    try:
        yield
    finally:
        native.fast = saved


def _run(batches_: list[list[bytes]], capacity: int, compiled: bool) -> tuple[bytes, list[bytes], int, list[bytes]]:
    """Write the batches, reading (plain and framed) after each; the ring's bytes, what was read."""
    with pure(not compiled):
        w = shm.RingWriter(capacity)
        r = shm.RingReader(w.fd)
        rf = shm.RingReader(w.fd)
        got: list[bytes] = []
        framed: list[bytes] = []
        try:
            for b in batches_:
                w.write_batch(b)
                got += r.read()
                framed += rf.read(framed=True)
            data = bytes(w._m[:])
            return data, got, r.lost, framed
        finally:
            r.close()
            rf.close()
            w.close()


@SETTINGS
@given(batches)
def test_every_record_comes_back_in_order_and_framed(bs: list[list[bytes]]) -> None:
    data, got, lost, framed = _run(bs, 1 << 20, compiled=native.fast is not None)
    flat = [p for b in bs for p in b]
    assert got == flat and lost == 0
    assert framed == grpcframe.frame_all(flat)


@SETTINGS
@given(batches)
def test_compiled_ring_equals_the_pure_twin(bs: list[list[bytes]]) -> None:
    assert native.fast is not None, "vigil/_fastpath is not built: `make native`"
    for capacity in (4096, 16384):  # small rings: wraps and laps between reads
        assert _run(bs, capacity, compiled=True) == _run(bs, capacity, compiled=False)


def test_a_lapped_reader_counts_what_it_lost() -> None:
    for compiled in (True, False):
        with pure(not compiled):
            w = shm.RingWriter(4096)
            r = shm.RingReader(w.fd)
            try:
                w.write_batch([b"a" * 100] * 10)
                assert len(r.read()) == 10
                w.write_batch([b"b" * 100] * 100)  # far more than the ring holds
                assert r.read() == [] and r.lost == 100
                w.write_batch([b"c" * 10] * 3)
                assert r.read() == [b"c" * 10] * 3 and r.lost == 100
            finally:
                r.close()
                w.close()


def _unpublished(w: shm.RingWriter, payloads: list[bytes]) -> tuple[int, int]:
    """Records written as the writer writes them, not published yet (a writer in the middle
    of write_batch); (head, seq) to publish them with."""
    if native.fast is not None:
        return native.fast.ring_write(w._m, shm.HEADER, w.capacity, w._head, w._seq, payloads, shm._OFF_RESERVE)
    return w._append(payloads)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pure"])
def test_records_the_writer_is_going_over_are_never_read_even_before_it_publishes(compiled: bool) -> None:
    with pure(not compiled):
        w = shm.RingWriter(4096)
        r = shm.RingReader(w.fd)
        try:
            w.write_batch([b"old-%03d" % i + b"." * 92 for i in range(10)])   # 10 records, none read yet
            new = [b"new-%03d" % i + b"." * 92 for i in range(30)]           # over the unread ones
            head, seq = _unpublished(w, new)
            assert r.read() == [] and r.lost == 10  # not the old records' bytes under the new ones
            w._publish(head, seq)
            got = r.read()
            assert got == new and r.lost == 10      # every record read once or counted lost
        finally:
            r.close()
            w.close()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pure"])
def test_a_lap_during_the_copy_drops_the_copy_and_counts_every_record_it_skips(compiled: bool) -> None:
    """The writer comes round while the reader copies: nothing of that copy is delivered, and
    lost counts each record from the first one not delivered up to the writer's last."""
    from types import SimpleNamespace

    with pure(not compiled):
        w = shm.RingWriter(4096)
        r = shm.RingReader(w.fd)
        first = [b"first-%03d" % i + b"." * 90 for i in range(10)]
        over = [b"over-%03d" % i + b"." * 92 for i in range(40)]
        published: list[tuple[int, int]] = []

        def writer_runs_meanwhile(copy: Any) -> Any:
            def wrapped(*args: Any) -> Any:
                res = copy(*args)
                if not published:  # the writer goes round the ring and publishes during the copy
                    published.append(_unpublished(w, over))
                    w._publish(*published[0])
                return res
            return wrapped

        saved = native.fast
        try:
            w.write_batch(first)
            if compiled:
                native.fast = SimpleNamespace(ring_read=writer_runs_meanwhile(saved.ring_read),
                                              ring_write=saved.ring_write)
            else:
                r._copy = writer_runs_meanwhile(r._copy)  # type: ignore[method-assign]
            assert r.read() == []
            assert r.lost == 50      # the 10 copied and dropped, and the 40 that went over them
            native.fast = saved if compiled else native.fast
            w.write_batch([b"after"] * 3)
            assert r.read() == [b"after"] * 3 and r.lost == 50
        finally:
            native.fast = saved
            r.close()
            w.close()


def test_a_writer_stopped_in_the_middle_of_a_publish_holds_no_reader() -> None:
    w = shm.RingWriter(4096)
    r = shm.RingReader(w.fd)
    try:
        w.write_batch([b"a"] * 3)
        assert r.read() == [b"a"] * 3
        ver = w._words.load(shm._OFF_VER)
        w._words.store(shm._OFF_VER, ver + 1)   # a publish begun and never finished (writer killed)
        assert r.read() == [] and r.lost == 0   # nothing new, and read() returned
        w._words.store(shm._OFF_VER, ver)
        w.write_batch([b"b"] * 2)
        assert r.read() == [b"b"] * 2 and r.lost == 0
    finally:
        r.close()
        w.close()


def test_each_serving_process_keeps_its_own_wanted_count() -> None:
    """With several serving processes, one's last client leaving must not stop the agent
    encoding for another's clients; a process started again in a slot starts from 0."""
    w = shm.RingWriter(4096)
    first, second = shm.RingReader(w.fd, 0), shm.RingReader(w.fd, 1)
    try:
        assert w.wanted == 0
        first.set_wanted(2)
        second.set_wanted(1)
        second.set_wanted(0)
        assert w.wanted == 2
        first.set_wanted(0)
        assert w.wanted == 0
        second.set_wanted(3)
        again = shm.RingReader(w.fd, 1)  # the slot's process was restarted
        assert w.wanted == 0
        again.close()
        with pytest.raises(ValueError, match="reader index"):
            shm.RingReader(w.fd, shm.READERS)
    finally:
        first.close()
        second.close()
        w.close()


def test_the_ring_takes_memory_only_once_a_stream_wants_records() -> None:
    before = status_kb("RssShmem")
    w = shm.RingWriter(32 << 20)
    try:
        assert status_kb("RssShmem") - before < 1024  # the header page, not the 32 MB
        w.populate()
        assert w.wait_populated(30)
        assert status_kb("RssShmem") - before >= 32 << 10
    finally:
        w.close()


def test_a_ring_closed_while_it_is_being_populated_closes_cleanly() -> None:
    """populate() faults the ring in on a thread of its own: close() waits for it, and no view
    of the mapping is left to stop the unmap."""
    for _ in range(10):
        w = shm.RingWriter(64 << 20)
        w.populate()
        w.close()
        assert w.fd == -1 and w.wait_populated(0)
