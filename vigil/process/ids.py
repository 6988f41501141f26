"""exec_id construction, as Tetragon builds it: base64("<node>:<ktime>:<pid>")."""
from __future__ import annotations

import base64


def exec_id(node_name: str, ktime: int, pid: int) -> str:
    return base64.b64encode(f"{node_name}:{ktime}:{pid}".encode()).decode()


def parse_exec_id(eid: str) -> tuple[str, int, int]:
    node, ktime, pid = base64.b64decode(eid).decode().rsplit(":", 2)
    return node, int(ktime), int(pid)
