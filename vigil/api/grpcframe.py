"""gRPC over HTTP/2, the parts a server writes by hand: length-prefixed messages, the
status trailers, the `grpc-timeout` header (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md).

A message on the wire is [compressed flag u8][length u32 big endian][bytes]; a response
ends with trailers carrying `grpc-status` (a code number) and `grpc-message`
(percent-encoded UTF-8).
"""
from __future__ import annotations

import struct
from urllib.parse import quote

import grpc

from vigil.api.statusmsg import bounded

PREFIX = struct.Struct(">BI")
_pack = PREFIX.pack

CONTENT_TYPE = b"application/grpc"
RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", CONTENT_TYPE)]
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)  # printable ASCII but "%"
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def frame(message: bytes) -> bytes:
    """One uncompressed length-prefixed message."""
    return _pack(0, len(message)) + message


def frame_all(messages: list[bytes]) -> list[bytes]:
    """Each message framed (one list pass; callers join runs of them into DATA frames)."""
    return [_pack(0, len(m)) + m for m in messages]


def split_messages(body: bytes) -> list[bytes]:
    """Length-prefixed messages of a request body. ValueError if truncated or compressed
    (clients compress only when the server says it accepts an encoding; we accept none)."""
    out = []
    off = 0
    while off < len(body):
        if len(body) - off < PREFIX.size:
            raise ValueError("truncated gRPC message prefix")
        flag, n = PREFIX.unpack_from(body, off)
        if flag:
            raise ValueError("compressed gRPC message (no encoding is accepted)")
        off += PREFIX.size
        if len(body) - off < n:
            raise ValueError("truncated gRPC message")
        out.append(body[off:off + n])
        off += n
    return out


def parse_timeout(value: bytes | None) -> float | None:
    """`grpc-timeout` header value ("100m", "5S") -> seconds, None when absent or malformed."""
    if not value or len(value) < 2 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1:])
    return int(value[:-1]) * unit if unit is not None else None


def trailers(code: grpc.StatusCode, message: str = "") -> list[tuple[bytes, bytes]]:
    """The trailers ending a response with `code` (after response headers)."""
    out = [(b"grpc-status", str(code.value[0]).encode())]
    if message:
        out.append((b"grpc-message", quote(bounded(message), safe=_MESSAGE_SAFE).encode()))  # clients take ~8 KiB
    return out


def trailers_only(code: grpc.StatusCode, message: str = "") -> list[tuple[bytes, bytes]]:
    """A whole response that is only a status (no message sent before it)."""
    return RESPONSE_HEADERS + trailers(code, message)
