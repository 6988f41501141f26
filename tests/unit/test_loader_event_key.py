"""A loader event (a library mapped, reported by perf) names its process by the key the agent
read from execve_map when the report came: the image that mapped. Pid 100's cached image is
/bin/sh (exec key 5 s); its re-exec at 6 s never reached the cache. As a kernel hook's record
(369e482), a key names that image or none (the stand-in: pid, start time of the key), never an
older image of the pid; by pid only when no key was read."""
from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_fastpath import _SH, _builders, _exec_record
from vigil.agent.policy_events import PolicyEvents
from vigil.events import records as R


@pytest.mark.parametrize("ktime, want", [
    (5_000_000_000, "/bin/sh"),
    (6_000_000_000, "1970-01-01T00:00:06Z"),  # the re-exec the cache missed: the stand-in
    (0, "/bin/sh"),                           # no key read: by pid
], ids=["key", "key-missed", "no-key"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-builder", "python-builder"])
def test_a_loader_event_names_the_image_of_its_key(compiled: bool, ktime: int, want: str) -> None:
    fast_b, ref_b = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    b = fast_b if compiled else ref_b
    b.clock.offset = 0
    b.record_handlers()[R.OP_EXEC](_exec_record(100, 5_000_000_000, 1, 0, _SH), 0)
    later: list[Any] = []
    pe = PolicyEvents(b, later.append, {}, None)  # type: ignore[arg-type]
    pe.exec_key = lambda pid: (pid, ktime) if ktime else None
    pe.loader_event(100, 100, "/usr/lib/libx.so", b"", 7_000_000_000)
    ev = later.pop()()
    while ev is None:  # waiting for its process's record, a loop step each: none comes
        ev = later.pop()()
    process = ev.data["process_loader"]["process"]
    assert (process.get("binary") or process["start_time"]) == want, process
