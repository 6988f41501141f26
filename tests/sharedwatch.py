"""Watch a u64 of shared memory from another process while this one keeps writing it.

`zero_reads(buf, offset, write)` forks a reader that loads the word at `offset` of `buf`
(a MAP_SHARED mapping both processes see) as one machine word, as fast as it can, and
counts the loads that return 0, while this process calls `write(i)` with i = 1, 2, ...
(a write that never means 0). A writer that goes through 0 on the way (struct.pack_into
zero-fills its target first) shows up as zero reads within a fraction of a second on two
CPUs; `pack_into_zero_reads` is that control, so a test can tell "never through 0" from
"the reader never ran beside the writer".
"""
from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import Any


def zero_reads(buf: Any, offset: int, write: Callable[[int], None], seconds: float = 0.4) -> tuple[int, int]:
    """(loads that returned 0, loads made) while `write` ran for about `seconds`."""
    write(1)  # before the reader exists: a word that held 0 until its first write is not a zero read
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the reader: no pytest, no exceptions past this frame
        code = 1
        try:
            os.close(r)
            os.close(go_w)
            q = memoryview(buf).cast("B").cast("Q")
            idx, zeros, loads = offset >> 3, 0, 0
            os.set_blocking(go_r, False)
            while True:
                for _ in range(2000):
                    if q[idx] == 0:
                        zeros += 1
                loads += 2000
                try:
                    if os.read(go_r, 1) == b"":
                        break  # the writer is done
                except BlockingIOError:
                    pass
            os.write(w, struct.pack("<QQ", zeros, loads))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(go_r)
    try:
        time.sleep(0.05)  # the reader is spinning before the writes that count
        i, end = 2, time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(1000):
                write(i)
                i += 1
    finally:
        os.close(go_w)
        data = os.read(r, 16)
        os.close(r)
        os.waitpid(pid, 0)
    zeros, loads = struct.unpack("<QQ", data)
    return zeros, loads


def pack_into_zero_reads(buf: Any, offset: int) -> int:
    """The control: zero reads seen while struct.pack_into writes the word."""
    st = struct.Struct("<Q")
    return zero_reads(buf, offset, lambda i: st.pack_into(buf, offset, i))[0]
