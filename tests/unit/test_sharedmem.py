"""Memory another process reads while the agent writes it is never seen passing through 0
(vigil.core.sharedmem): the event ring's positions, each reader's `wanted` count and the
count of events skipped (vigil.api.shm), the serving processes' stats, and the helpers
themselves. The control shows the watcher catches struct.pack_into doing exactly that on
this machine."""
from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.sharedwatch import pack_into_zero_reads, zero_reads
from vigil.api import shm
from vigil.core import sharedmem

PAIR = struct.Struct("<QQ")
# the watcher reads from another process while this one writes: that takes a second CPU
pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: no reader can run beside the writer")


@pytest.fixture(scope="module", autouse=True)
def reader_runs_beside_writer() -> None:
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    try:
        assert any(pack_into_zero_reads(m, 0) for _ in range(5)), \
            "the watcher never saw struct.pack_into's zero-fill: it cannot judge the writers below"
    finally:
        m.close()


def _words() -> Iterator[tuple[Any, int, Callable[[int], None]]]:
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    w = sharedmem.Words(m)
    yield m, 8, lambda i: w.store(8, i)
    w.release()
    m.close()


def _write() -> Iterator[tuple[Any, int, Callable[[int], None]]]:
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    yield m, 24, lambda i: sharedmem.write(m, 16, PAIR, i, i)
    m.close()


def _ring(word: int) -> Callable[[], Iterator[tuple[Any, int, Callable[[int], None]]]]:
    def make() -> Iterator[tuple[Any, int, Callable[[int], None]]]:
        w = shm.RingWriter(1 << 16)
        yield w._m, word, lambda i: w.write_batch([b"event %d" % i])
        w.close()
    return make


def _wanted() -> Iterator[tuple[Any, int, Callable[[int], None]]]:
    w = shm.RingWriter(4096)
    r = shm.RingReader(w.fd, 2)
    yield r._m, shm._OFF_WANTED + 16, r.set_wanted
    r.close()
    w.close()


def _skipped() -> Iterator[tuple[Any, int, Callable[[int], None]]]:
    w = shm.RingWriter(4096)
    yield w._m, shm._OFF_SKIPPED, lambda _i: w.skip(1)
    w.close()


WRITERS = {
    "sharedmem.Words.store": _words,
    "sharedmem.write": _write,
    "event ring: head": _ring(shm._OFF_HEAD),
    "event ring: seq": _ring(shm._OFF_SEQ),
    "event ring: version": _ring(shm._OFF_VER),
    "event ring: a reader's wanted count": _wanted,
    "event ring: events skipped while no stream had room": _skipped,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_concurrent_reader_never_sees_the_word_pass_through_zero(name: str) -> None:
    gen = WRITERS[name]()
    buf, offset, write = next(gen)
    try:
        zeros, loads = zero_reads(buf, offset, write)
    finally:
        next(gen, None)
    assert loads > 0
    assert zeros == 0, f"{name}: {zeros} of {loads} concurrent loads read 0"


def test_words_refuse_an_unaligned_store() -> None:
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    w = sharedmem.Words(m)
    try:
        with pytest.raises(ValueError, match="unaligned"):
            w.store(4, 1)
        w.store(4088, 2**64 - 1)
        assert w.load(4088) == 2**64 - 1 and m[4088:] == b"\xff" * 8
    finally:
        w.release()
        m.close()
