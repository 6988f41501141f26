"""--enable-ancestors on this host's kernel: a tracepoint policy's events list the ancestors
(beyond the parent, nearest first) with `base,tracepoint`, and not with `base` alone (its
exec events still do), in the export file's JSON (after the event's tags: Tetragon's field 11,
the last) and in the GetEvents protobuf (ProcessTracepoint.ancestors, field 11)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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


LOADER_SPEC = "loader: true\n"


def _other_source_run(ra: RunningAgent, source: str, work: Path) -> tuple[list[Any], int]:
    """Loads the policy of `source` and makes it report on a child of this test: its events
    (objects) up to a marker's exit, and the child's pid. loader: the loader sensor's
    process_loader (a mapped libc); fanotify: the permission helper's report of an open it
    refused; netdeny: the cgroup socket rules' of a connect they refused."""
    from tests import enforce_cases as C

    sub = ra.agent.subscribe(maxsize=1_000_000)
    srv = socket.socket()
    child = 0
    try:
        C.prepare(work)
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        text = {"loader": policy_yaml(f"anc-{source}", LOADER_SPEC), "fanotify": C.open_deny(work),
                "netdeny": C.connect_deny(srv.getsockname()[1])}[source]
        code = {"loader": "import os; print(os.getpid(), flush=True); import _json",
                "fanotify": f"import os; print(os.getpid(), flush=True)\ntry: open({str(work / 'secret.txt')!r})\n"
                            "except OSError: pass",
                "netdeny": "import os, socket; print(os.getpid(), flush=True)\ntry: socket.create_connection("
                           f"('127.0.0.1', {srv.getsockname()[1]}), timeout=5)\nexcept OSError: pass"}[source]
        with loaded(ra, text) as st:
            hook = st["hooks"][0]["hook"] if st["hooks"] else ""
            assert source == "loader" or ("fanotify" if source == "fanotify" else "cgroup/connect4") in hook, st
            out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True)
            child = int(out.stdout.split()[0])
            events: list[Any] = []
            marker = f"vigil-marker-{uuid.uuid4().hex}"
            subprocess.run(["/bin/true", marker], check=True)
            deadline = time.monotonic() + 30
            seen = False
            while time.monotonic() < deadline:
                batch = sub.get_batch(timeout=0.5, max_items=100000)
                events += batch
                seen = seen or any(getattr(e, "kind", "") == "process_exit" and e.process.arguments == marker
                                   for e in batch)
                # perf's loader reports and the helper's come on streams of their own: on until
                # the child's event is there
                if seen and any(_source_body(e, child) is not None for e in events):
                    return events, child
            raise AssertionError(f"no event of {source} for pid {child} within 30s")
    finally:
        srv.close()
        sub.close()


def _source_body(ev: Any, pid: int) -> dict[str, Any] | None:
    from vigil.export.dicts import event_dict

    d = event_dict(ev)
    kind = next((k for k in ("process_loader", "process_kprobe") if k in d), None)
    if kind is None or d[kind]["process"].get("pid") != pid:
        return None
    return d[kind]


# (event source, --enable-ancestors, whether its events list the ancestors)
SOURCE_CASES = [
    ("loader", "base,loader", True), ("loader", "base,kprobe", False),
    ("fanotify", "base,kprobe", True), ("fanotify", "base,loader", False),
    ("netdeny", "base,kprobe", True), ("netdeny", "base,tracepoint", False),
]


@pytest.mark.parametrize("source,types,listed", SOURCE_CASES, ids=[f"{s}-{t}" for s, t, _ in SOURCE_CASES])
def test_events_of_the_other_sources_list_ancestors_when_named(tmp_path: Path, source: str, types: str,
                                                                listed: bool) -> None:
    """The loader sensor's process_loader, the permission helper's (fanotify: an exec/open
    Override without BPF LSM) and the cgroup socket rules' (a connect Override) process_kprobe
    are made outside the kernel hooks' path: they list the ancestors (beyond the parent: this
    test, then its parent, ...) exactly when --enable-ancestors names their type, in the export
    file's JSON and in the GetEvents protobuf."""
    export = tmp_path / "events.log"
    cfg = AgentConfig(export_filename=str(export), server_address="", node_name="vigil-anc", enable_ancestors=types)
    work = tmp_path / "work"
    work.mkdir()
    with RunningAgent(cfg) as ra:
        events, child = _other_source_run(ra, source, work)
    mine = [(e, b) for e in events if (b := _source_body(e, child)) is not None]
    assert mine
    lines = [json.loads(x) for x in export.read_text().splitlines()]
    kind = "process_loader" if source == "loader" else "process_kprobe"
    for ev, body in mine:
        assert body.get("parent", {}).get("pid") == os.getpid(), body
        want = [ppid(os.getpid())] if listed else []
        assert [a["pid"] for a in body.get("ancestors", [])][:1] == want, body.get("ancestors")
        if listed:
            assert body["ancestors"][0]["exec_id"] == body["parent"]["parent_exec_id"]
        # the export file's line of it, and the protobuf
        line = next(x[kind] for x in lines if kind in x and x[kind]["process"].get("pid") == child
                    and x[kind].get("path", "") == body.get("path", ""))
        assert [a["exec_id"] for a in line.get("ancestors", [])] == [a["exec_id"] for a in body.get("ancestors", [])]
        msg = getattr(events_pb2.GetEventsResponse.FromString(wire.encode_event(ev)), kind)
        assert [a.exec_id for a in msg.ancestors] == [a["exec_id"] for a in body.get("ancestors", [])]
