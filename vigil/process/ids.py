"""exec_id construction, as Tetragon builds it: base64("<node>:<ktime>:<pid>")."""
from __future__ import annotations

import base64
from binascii import b2a_base64

from vigil.core import native


def exec_id(node_name: str, ktime: int, pid: int) -> str:
    # binascii directly: base64.b64encode adds a Python-level wrapper per call (hot path)
    return b2a_base64(f"{node_name}:{ktime}:{pid}".encode(), newline=False).decode("ascii")


py_exec_id = exec_id
if native.fast is not None:
    exec_id = native.fast.exec_id  # the compiled twin


def parse_exec_id(eid: str) -> tuple[str, int, int]:
    node, ktime, pid = base64.b64decode(eid).decode().rsplit(":", 2)
    return node, int(ktime), int(pid)
