"""Freed heap memory goes back to the kernel when the agent asks (vigil.core.heap)."""
from __future__ import annotations

from tests.procstatus import status_kb
from vigil.core.heap import release_free_heap


def test_free_chunks_inside_the_heap_are_released():
    # malloc'd objects (above Python's small-object size) with a survivor after each: the
    # freed ones sit inside the heap, where glibc keeps them; each spans whole pages
    gone, kept = [], []
    for i in range(10_000):
        gone.append(bytes(8192) + i.to_bytes(4, "little"))
        kept.append(bytes(600) + i.to_bytes(4, "little"))
    peak = status_kb()
    del gone
    held = status_kb()
    assert peak - held < 20_000, (peak, held)  # glibc keeps what was freed inside the heap
    assert release_free_heap()
    after = status_kb()
    assert held - after > 40_000, (held, after)  # at least half of the 80 MB back, in KB
    assert len(kept) == 10_000
