"""Minimal writer for the cpio "newc" format the kernel unpacks as an initramfs."""

from __future__ import annotations

import stat
from typing import BinaryIO


class NewcWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 1
        self.written = 0

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def _pad(self) -> None:
        if self.written % 4:
            self._write(b"\0" * (4 - self.written % 4))

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        name_b = name.encode() + b"\0"
        fields = [
            self.ino, mode, 0, 0, nlink, 0,  # ino mode uid gid nlink mtime
            len(data), 0, 0, 0, 0,  # filesize devmajor devminor rdevmajor rdevminor
            len(name_b), 0,  # namesize check
        ]
        self.ino += 1
        self._write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self._write(name_b)
        self._pad()
        self._write(data)
        self._pad()

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1)
        # Archives are conventionally padded to 512 bytes; the kernel does not need it.
        if self.written % 512:
            self._write(b"\0" * (512 - self.written % 512))


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, data); used by the unit tests to check what we wrote."""
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        hdr = data[pos:pos + 110]
        if hdr[:6] != b"070701":
            raise ValueError(f"bad cpio magic at {pos}")
        f = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos = (pos + namesize + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)
