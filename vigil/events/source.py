"""Where raw kernel records come from: the live ring buffer, or a recording.

The agent only needs `wait`, `drain` and `close`, so decoding, the process
cache and the exporters can be driven by a replayed recording in fast tests
with no kernel at all. A recording is a sequence of (u32 length, bytes).
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Protocol

_LEN = struct.Struct("<I")
MAGIC = b"VIGILREC1\n"


class EventSource(Protocol):
    def wait(self, timeout: float) -> bool: ...
    def drain(self) -> list[bytes]: ...
    def close(self) -> None: ...


class RecordingSource:
    """Passes records through and appends them to a recording file."""

    def __init__(self, inner: EventSource, path: str) -> None:
        self.inner = inner
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - held for the source's life, closed by close()
        self._f.write(MAGIC)

    def wait(self, timeout: float) -> bool:
        return self.inner.wait(timeout)

    def drain(self) -> list[bytes]:
        recs = self.inner.drain()
        if recs:
            pack = _LEN.pack
            self._f.write(b"".join(pack(len(r)) + r for r in recs))
            self._f.flush()
        return recs

    def close(self) -> None:
        self._f.close()
        self.inner.close()


def read_recording(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path}: not a Vigil recording (bad magic)")
    out, off = [], len(MAGIC)
    while off < len(data):
        if off + 4 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {off}")
        (n,) = _LEN.unpack_from(data, off)
        off += 4
        if off + n > len(data):
            raise ValueError(f"{path}: truncated record at byte {off}")
        out.append(data[off : off + n])
        off += n
    return out


def write_recording(path: str, records: list[bytes]) -> None:
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(b"".join(_LEN.pack(len(r)) + r for r in records))


class ReplaySource:
    """Feeds recorded (or synthesised) records back in batches."""

    def __init__(self, records: list[bytes], batch: int = 4096) -> None:
        self._records = records
        self._pos = 0
        self._batch = batch

    @property
    def exhausted(self) -> bool:
        return self._pos >= len(self._records)

    def wait(self, timeout: float) -> bool:
        return not self.exhausted

    def drain(self) -> list[bytes]:
        out = self._records[self._pos : self._pos + self._batch]
        self._pos += len(out)
        return out

    def close(self) -> None:
        self._pos = len(self._records)
