"""Bounding a gRPC status message (`grpc-message`) to what clients take.

The message travels percent-encoded in a trailer (non-ASCII UTF-8 bytes and "%" take three
bytes each); grpcio clients refuse response metadata beyond 16 KiB (and, with some
probability, beyond 8 KiB) with RESOURCE_EXHAUSTED "received metadata size exceeds hard
limit", so an error echoing what the client sent (a 100,000-character policy name, a
value of a policy field, hundreds of policy errors) reached the client as that instead of
its message. `bounded()` keeps the message under MAX_ENCODED bytes encoded: every line cut
to MAX_LINE characters (its start, which names the file, line and field, and its end), then as many whole
lines as fit, and a last line saying what was left out.
"""
from __future__ import annotations

MAX_ENCODED = 4096   # bytes of the percent-encoded message (with the other trailers, well under 8 KiB)
MAX_LINE = 400       # characters of one line


def encoded_len(text: str) -> int:
    """Length of `text` percent-encoded as gRPC sends it (printable ASCII but "%" as is)."""
    n = 0
    for ch in text:
        if " " <= ch <= "~" and ch != "%":
            n += 1
        else:
            n += 3 * len(ch.encode("utf-8", "surrogatepass"))
    return n


def _cut(line: str, limit: int) -> str:
    """The line, or its start (file, line, field) and its end (often the reason) with what
    lies between left out."""
    if encoded_len(line) <= limit and len(line) <= MAX_LINE:
        return line
    head, tail = line[:MAX_LINE * 3 // 4], line[-(MAX_LINE // 4):]
    while head or tail:
        cut = f"{head}[... {len(line) - len(head) - len(tail)} characters ...]{tail}"
        if encoded_len(cut) <= limit:
            return cut
        head, tail = head[:len(head) * 3 // 4], tail[len(tail) // 4:]
    return f"[{len(line)} characters]"


def bounded(message: str, limit: int = MAX_ENCODED) -> str:
    """`message` if it fits in `limit` encoded bytes, else its lines cut down to fit."""
    if encoded_len(message) <= limit:
        return message
    lines = message.split("\n")
    reserve = 64   # room for the "... N more lines" note
    kept: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        cut = _cut(line, max(limit - reserve, 64))
        size = encoded_len(cut) + (3 if kept else 0)   # the newline, encoded
        if used + size > limit - reserve:
            kept.append(f"... and {len(lines) - i} more lines")
            break
        kept.append(cut)
        used += size
    return "\n".join(kept)
