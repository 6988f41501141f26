"""Dry-run on streams the real agent recorded: a JSON export and a raw --record-file recording of
test-owned execs, replayed through library policies that were not loaded while recording. The
report must name exactly the test's programs the policy would have refused, with their counts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.bpfstate import require_root
from tests.kernel.conftest import RunningAgent
from tests.kernel.test_agent_cli import AgentProcess

pytestmark = pytest.mark.kernel
VIGIL = [sys.executable, "-m", "vigil.cli.main"]


@pytest.fixture
def tools() -> Iterator[dict[str, Path]]:
    """A program in /dev/shm (which deny-exec-writable-dirs covers) and one in /run (not covered)."""
    dirs = {"shm": Path(tempfile.mkdtemp(prefix="vigil-dry-", dir="/dev/shm")),
            "run": Path(tempfile.mkdtemp(prefix="vigil-dry-", dir="/run"))}
    try:
        out = {}
        for k, d in dirs.items():
            os.chmod(d, 0o755)
            shutil.copy2(os.path.realpath("/bin/true"), d / "tool")
            out[k] = d / "tool"
        yield out
    finally:
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)


def run_tools(tools: dict[str, Path], token: str) -> None:
    for _ in range(3):
        subprocess.run([str(tools["shm"]), token], check=True)
    subprocess.run([str(tools["run"]), token], check=True)


def dry_run(policy: str, events: Path) -> dict:
    r = subprocess.run([*VIGIL, "policy", "dry-run", policy, "--events", str(events), "-o", "json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["policies"][0]


def processes(report: dict) -> dict[str, int]:
    (hook,) = report["hooks"]
    (sel,) = hook["selectors"]
    return {p["binary"]: p["count"] for p in sel["processes"]}


def wait_for_line(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never reached {path}")


def test_dry_run_on_the_agents_json_export(running_agent: RunningAgent, tools: dict[str, Path]):
    token = f"vigil-dry-{uuid.uuid4().hex}"
    running_agent.collect(lambda: run_tools(tools, token))
    export = Path(running_agent.agent.config.export_filename)
    wait_for_line(export, token)
    rep = dry_run("library:deny-exec-writable-dirs", export)
    seen = processes(rep)
    assert seen.get(str(tools["shm"])) == 3          # would have been refused, three times
    assert str(tools["run"]) not in seen
    assert rep["hooks"][0]["source"] == "process_exec"


def test_dry_run_on_a_raw_recording(tmp_path: Path, tools: dict[str, Path]):
    require_root()
    rec = tmp_path / "agent.rec"
    ap = AgentProcess(tmp_path, ["--record-file", str(rec)])
    token = f"vigil-dry-{uuid.uuid4().hex}"
    try:
        run_tools(tools, token)
        wait_for_line(ap.export, token)
    finally:
        assert ap.stop() == 0
    rep = dry_run("library:deny-exec-writable-dirs", rec)
    seen = processes(rep)
    assert seen.get(str(tools["shm"])) == 3 and str(tools["run"]) not in seen
