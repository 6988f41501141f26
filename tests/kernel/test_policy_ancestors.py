"""--enable-ancestors on this host's kernel: a tracepoint policy's events list the ancestors
(beyond the parent, nearest first) with `base,tracepoint`, and not with `base` alone (its
exec events still do), in the export file's JSON (after the event's tags: Tetragon's field 11,
the last) and in the GetEvents protobuf (ProcessTracepoint.ancestors, field 11)."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import loaded
from tests.policydoc import policy as policy_yaml
from vigil.agent.config import AgentConfig
from vigil.api import wire
from vigil.api.pb import events_pb2
from vigil.core.events import PolicyEvent, ProcessExec

pytestmark = pytest.mark.kernel
UNAME = "/usr/bin/uname"

SPEC = f"""
tracepoints:
- subsystem: syscalls
  event: sys_enter_newuname
  selectors:
  - matchBinaries: [{{operator: In, values: ["{UNAME}"]}}]
"""


def ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _run_and_collect(ra: RunningAgent, token: str, timeout: float = 30.0) -> list[Any]:
    """The agent's events (objects) while uname runs under a shell whose arguments hold `token`,
    up to the exit of a marker process."""
    sub = ra.agent.subscribe(maxsize=1_000_000)
    try:
        subprocess.run(["/bin/sh", "-c", f"{UNAME} >/dev/null; : {token}"], check=True)
        marker = f"vigil-marker-{uuid.uuid4().hex}"
        subprocess.run(["/bin/true", marker], check=True)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = sub.get_batch(timeout=0.5, max_items=100000)
            out += batch
            if any(getattr(e, "kind", "") == "process_exit" and e.process.arguments == marker for e in batch):
                return out
        raise AssertionError(f"end marker not seen within {timeout}s")
    finally:
        sub.close()


# (--enable-ancestors, whether the tracepoint's events list the ancestors)
CASES = [("base,tracepoint", True), ("base", False), ("base,kprobe", False)]


@pytest.mark.parametrize("types,listed", CASES, ids=[c[0] for c in CASES])
def test_tracepoint_events_list_ancestors_when_named(tmp_path: Path, types: str, listed: bool) -> None:
    export = tmp_path / "events.log"
    cfg = AgentConfig(export_filename=str(export), server_address="", node_name="vigil-anc", enable_ancestors=types)
    token = f"anc-{uuid.uuid4().hex}"
    name = f"ancestors-{types.replace(',', '-')}"
    with RunningAgent(cfg) as ra, loaded(ra, policy_yaml(name, SPEC)):
        events = _run_and_collect(ra, token)
    mine = [e for e in events if isinstance(e, PolicyEvent) and e.body.get("policy_name") == name
            and e.parent is not None and token in e.parent.arguments]
    assert mine, f"no process_tracepoint of {UNAME} under the test's shell"
    shell_execs = [e for e in events if isinstance(e, ProcessExec) and token in e.process.arguments]
    assert shell_execs and shell_execs[0].ancestors  # base: exec events list them either way
    lines = [json.loads(x) for x in export.read_text().splitlines()]
    for ev in mine:
        assert ev.kind == "process_tracepoint"
        # the shell's parent (this test's process) is the first ancestor, then its parent ...
        assert [a.exec_id for a in ev.ancestors][:1] == ([ev.parent.parent_exec_id] if listed else [])
        assert [a.pid for a in ev.ancestors][:2] == ([os.getpid(), ppid(os.getpid())] if listed else [])
        line = next(x["process_tracepoint"] for x in lines if "process_tracepoint" in x
                    and x["process_tracepoint"]["process"]["exec_id"] == ev.process.exec_id)
        if listed:
            assert list(line)[-1] == "ancestors"
            assert [a["exec_id"] for a in line["ancestors"]] == [a.exec_id for a in ev.ancestors]
        else:
            assert "ancestors" not in line
        msg = events_pb2.GetEventsResponse.FromString(wire.encode_event(ev)).process_tracepoint
        assert [a.exec_id for a in msg.ancestors] == [a.exec_id for a in ev.ancestors]
        assert msg.DESCRIPTOR.fields_by_name["ancestors"].number == 11
