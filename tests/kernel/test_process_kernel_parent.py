"""The `<kernel>` process, as Tetragon makes it at start: pid 0 at ktime 1, binary "<kernel>",
flags "procFS", its own parent, sent as a process_exec of its own before the /proc scan's. It is
the parent of the processes whose parent pid is 0 (init, kthreadd): their parent_exec_id names it
and their events carry it as parent; --enable-ancestors lists ancestors up to pid 1 or 2, never
it. Before: pid 1 and kthreadd had no parent (empty parent_exec_id) and no <kernel> existed."""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import RunningAgent
from vigil.agent.config import AgentConfig

pytestmark = pytest.mark.kernel
NODE = "vigil-test"
KERNEL_ID = base64.b64encode(f"{NODE}:1:0".encode()).decode()


def ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[1])


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One agent (with ancestors): its export, and what its cache held for pids 0-2."""
    export = tmp_path_factory.mktemp("kernel-parent") / "events.log"
    cfg = AgentConfig(export_filename=str(export), server_address="", node_name=NODE, enable_ancestors=True)
    with RunningAgent(cfg) as ra:
        events = ra.collect(lambda: subprocess.run(["/bin/sh", "-c", "/bin/true"], check=True))
        cached = {pid: (p.exec_id, p.parent_exec_id) for pid in (0, 1, 2) if (p := ra.agent.cache.by_pid(pid))}
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    return {"events": events, "lines": lines, "cached": cached}


def test_the_kernel_process_is_sent_first_as_its_own_parent(started: dict[str, Any]) -> None:
    first = started["lines"][0]["process_exec"]
    proc = first["process"]
    assert {k: proc.get(k) for k in ("exec_id", "pid", "uid", "binary", "flags", "auid", "parent_exec_id", "tid",
                                     "in_init_tree")} == {
        "exec_id": KERNEL_ID, "pid": 0, "uid": 0, "binary": "<kernel>", "flags": "procFS", "auid": 4294967295,
        "parent_exec_id": KERNEL_ID, "tid": 0, "in_init_tree": False}
    assert "cwd" not in proc and "arguments" not in proc and proc["start_time"].endswith("Z")
    assert started["lines"][0]["time"] == proc["start_time"]  # ktime 1, as the event's time
    assert first["parent"] == proc
    assert started["cached"][0] == (KERNEL_ID, KERNEL_ID)


# pid -> exported: whether its /proc scan event is exported (kthreadd, a kernel thread, is cached only)
@pytest.mark.parametrize("pid, exported", [
    pytest.param(1, True, marks=pytest.mark.skipif(ppid(1) != 0, reason="pid 1's parent pid is not 0")),
    pytest.param(2, False, marks=pytest.mark.skipif(ppid(2) != 0, reason="no pid 2 with parent pid 0 (kthreadd)")),
], ids=["init", "kthreadd"])
def test_a_process_of_parent_pid_0_has_the_kernel_as_parent(started: dict[str, Any], pid: int,
                                                            exported: bool) -> None:
    assert started["cached"][pid][1] == KERNEL_ID
    sent = [e["process_exec"] for e in started["lines"]
            if "process_exec" in e and e["process_exec"]["process"]["pid"] == pid]
    if exported:
        assert len(sent) == 1 and sent[0]["process"]["parent_exec_id"] == KERNEL_ID
        assert sent[0]["parent"]["binary"] == "<kernel>" and sent[0]["parent"]["exec_id"] == KERNEL_ID
        assert "ancestors" not in sent[0]


def test_ancestors_end_at_pid_1_or_2_without_the_kernel(started: dict[str, Any]) -> None:
    ex = [e["process_exec"] for e in started["events"]
          if "process_exec" in e and e["process_exec"]["process"]["binary"].endswith("/true")]
    assert ex, "no exec of /bin/true"
    for e in ex:
        chain = [e["parent"], *e.get("ancestors", [])]
        pids = [a["pid"] for a in chain]
        assert 0 not in pids, pids
        assert all(p > 2 for p in pids[:-1]), pids  # the walk stops at the first of pid 1 or 2
