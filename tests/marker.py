"""The end marker, how tests wait for events without sleeps: after the action under test, the
test execs /bin/true with a unique argument; records arrive in ring-buffer order, so once the
marker's exit is seen every earlier record has been handled. Used by the host's in-process
agent (tests/kernel/conftest.py RunningAgent) and the VM tier's (tests/vm/vmagent.py Running)."""
from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

from vigil.agent.agent import Agent
from vigil.export.dicts import event_dict


def collect_to_marker(agent: Agent, action: Callable[[], object], timeout: float,
                      until: Callable[[list[dict[str, Any]]], bool] | None = None, *,
                      lossless: bool = True) -> list[dict[str, Any]]:
    """Run action(); return every event (in its JSON shape) up to and including the end
    marker's exit, and on until `until(events)` holds. AssertionError when that is not so
    within `timeout`; with `lossless`, also when the test's subscriber lost events."""
    marker_seen = False
    sub = agent.subscribe(maxsize=1_000_000)
    try:
        action()
        token = f"vigil-marker-{uuid.uuid4().hex}"
        subprocess.run(["/bin/true", token], check=True)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in map(event_dict, sub.get_batch(timeout=0.5, max_items=100000)):
                out.append(e)
                ex = e.get("process_exit")
                if ex and ex["process"].get("arguments") == token:
                    marker_seen = True
            if marker_seen and (until is None or until(out)):
                if lossless:
                    assert sub.dropped == 0, f"test subscriber lost {sub.dropped} events"
                return out
        what = "end marker" if not marker_seen else "awaited event"
        raise AssertionError(f"{what} not seen within {timeout}s ({len(out)} events)")
    finally:
        sub.close()
