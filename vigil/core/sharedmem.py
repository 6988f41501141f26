"""Writing memory that another process, or the kernel, reads while we write it.

Never `struct.pack_into` there: CPython zero-fills the target before it packs the values
(`s_pack_internal`), so a concurrent reader can see 0 for a field that never holds 0. A
forked reader spinning on a u64 that `pack_into` kept advancing saw 0 in 18,103 of 19.5M
reads (2 s). A BPF ring's consumer position read as 0 by a reservation made the ring
look full once the producer had gone round it once (the records lost in process churn,
counted as `ringbuf_full_*` with the ring nearly empty); a perf ring's tail is read by
the kernel the same way.

- `Words`: the aligned u64 words of a mapping, each loaded and stored as one machine
  word (a memoryview cast to "Q" copies 8 bytes at a time), for positions and counters.
- `write`: a packed struct copied in with one memmove; each byte goes from its old value
  to its new one, never through 0.
- `prefault`: a shared mapping faulted in on a thread of its own, without the GIL.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
import threading
from typing import Any

_MADV_POPULATE_WRITE = 23  # linux/mman.h (Linux 5.14); Python's mmap module lacks the name
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class Words:
    """The u64 words of `buf` (a mmap or a writable buffer), addressed by byte offset."""

    def __init__(self, buf: Any) -> None:
        self._q = memoryview(buf).cast("B").cast("Q")

    def load(self, offset: int) -> int:
        return int(self._q[offset >> 3])

    def store(self, offset: int, value: int) -> None:
        if offset & 7:
            raise ValueError(f"unaligned u64 word at offset {offset}")
        self._q[offset >> 3] = value

    def release(self) -> None:
        """Must come before the mapping is closed (a mmap refuses to close while viewed)."""
        self._q.release()


def write(view: Any, offset: int, st: struct.Struct, *values: Any) -> None:
    """`st.pack_into(view, offset, *values)` without the zero-fill a reader could see."""
    view[offset:offset + st.size] = st.pack(*values)


def prefault(m: mmap.mmap) -> threading.Thread:
    """Fault all of `m` in for writing (madvise MADV_POPULATE_WRITE) on a thread of its own,
    through ctypes so the GIL is released meanwhile (mmap.madvise holds it). Join the thread
    before closing `m`. Before Linux 5.14 madvise fails (EINVAL) and pages come in as written."""
    view = ctypes.c_char.from_buffer(m)
    address = ctypes.addressof(view)
    del view  # no export of the mapping may outlive this call: m.close() must be able to unmap
    t = threading.Thread(target=_libc.madvise, args=(address, len(m), _MADV_POPULATE_WRITE),
                         name="vigil-prefault", daemon=True)
    t.start()
    return t
