"""The consumer position of a real BPF ring buffer (vigil.kernel.ringbuf.RingBuffer) is stored
as one word: a reservation reads it, and had it ever read 0 (struct.pack_into zero-fills
before it writes) a ring the producer had gone round once would look full, and records
were lost with the ring nearly empty."""
from __future__ import annotations

import os

from tests.kernel.bpfstate import require_root
from tests.sharedwatch import pack_into_zero_reads, zero_reads
from vigil.kernel.ringbuf import RingBuffer
from vigil.kernel.sys import ringbuf_map_create

SIZE = 1 << 16


def test_the_kernel_never_reads_a_consumer_position_of_zero() -> None:
    require_root()
    fd = ringbuf_map_create(SIZE)
    rb = RingBuffer(fd, SIZE)
    try:
        # the watcher sees pack_into's zero-fill on this very page ...
        assert any(pack_into_zero_reads(rb._cons, 0) for _ in range(5))
        # ... and never the ring's own advance of the position
        zeros, loads = zero_reads(rb._cons, 0, lambda i: rb._consumed(0, 8 * i, []))
        assert loads > 0 and zeros == 0, f"{zeros} of {loads} loads of consumer_pos read 0"
    finally:
        rb.close()
        os.close(fd)
