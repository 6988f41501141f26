"""How a `vigil` command ends when its user stops it: Ctrl-C, or a reader that closes stdout
(`vigil dump processcache | head`). One mechanism for every command (vigil.cli.main.LazyGroup)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.api.fake_agent import FakeAgent
from tests.api.harness import ROOT, running_server, stop_process, wait_for

VIGIL = [sys.executable, "-m", "vigil.cli.main"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), NO_COLOR="1")


class StuckAgent(FakeAgent):
    """A fake agent whose answers wait until the test lets them go (`stuck` says a call is
    waiting), and whose replies are large (more than a pipe holds)."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = threading.Event()
        self.release = threading.Event()
        self.hold = False

    def _wait(self) -> None:
        if self.hold:
            self.stuck.set()
            self.release.wait(30)

    def health(self) -> dict[str, Any]:
        self._wait()
        return super().health()

    def status(self) -> dict[str, Any]:
        self._wait()
        return super().status()

    def list_policies(self) -> list[dict[str, Any]]:
        self._wait()
        return [{"id": i, "name": f"policy-{i:05d}", "namespace": "", "info": "", "domain": "grpc",
                 "sensors": ["generic_kprobe"], "state": "enabled", "error": "", "mode": "enforce",
                 "kernel_memory_bytes": 4096, "stats": {"post": 1}, "hooks": []} for i in range(3000)]

    def process_cache_dump(self) -> list[dict[str, Any]]:
        self._wait()
        return [{"process": {"exec_id": f"x{i}", "pid": i, "binary": "/usr/bin/" + "b" * 100},
                 "color": "green", "refcnt": 2} for i in range(3000)]


@pytest.fixture
def stuck_agent():
    agent = StuckAgent()
    with running_server(agent=agent) as (srv, _):
        try:
            yield srv.address, agent
        finally:
            agent.release.set()


COMMANDS = {
    "status": ["status"],
    "status-json": ["status", "-o", "json"],
    "info": ["info"],
    "tp-list": ["tp", "list"],
    "tp-list-json": ["tp", "list", "-o", "json"],
    "dump-processcache": ["dump", "processcache"],
    "getevents": ["getevents", "-o", "compact"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_ctrl_c_ends_quietly_with_130(stuck_agent, name: str) -> None:
    """Ctrl-C while a command waits for the agent printed click's 'Aborted!' and exited 1
    (getevents: exit 0); the shell's convention is 128 + SIGINT, and nothing printed."""
    address, agent = stuck_agent
    agent.hold = True
    proc = subprocess.Popen([*VIGIL, *COMMANDS[name], "--server-address", address], cwd=ROOT, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if name == "getevents":
            wait_for(lambda: agent.bus.subscriber_count == 1, what="getevents to subscribe")
        else:
            wait_for(agent.stuck.is_set, what="the command to wait for the agent")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert (proc.returncode, err.decode()) == (130, ""), err.decode()


@pytest.mark.parametrize("args", [
    ["getevents", "--file", "{export}", "--follow"],
    ["getevents", "--file", "{export}", "--follow", "-o", "compact"],
])
def test_ctrl_c_ends_a_follow_quietly_with_130(tmp_path: Path, args: list[str]) -> None:
    """`getevents --follow` (tail -f of an export) ended 0 on Ctrl-C; 130 as every command."""
    export = tmp_path / "export.log"
    export.write_text(json.dumps({"process_exec": {"process": {"binary": "/bin/x"}}, "node_name": "n"}) + "\n")
    proc = subprocess.Popen([*VIGIL, *[a.format(export=export) for a in args]], cwd=ROOT, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline()  # following now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert (proc.returncode, err.decode()) == (130, ""), err.decode()


def _big_export(tmp_path: Path) -> Path:
    event = {"process_exec": {"process": {"exec_id": "e", "pid": 1, "binary": "/bin/" + "x" * 200,
                                          "arguments": "a b"}}, "node_name": "n", "time": "2024-01-01T00:00:00Z"}
    path = tmp_path / "export.log"
    path.write_text("".join(json.dumps(event) + "\n" for _ in range(3000)))
    return path


PIPED = {  # each prints more than a pipe holds
    "tp-list": ["tp", "list", "--server-address", "{address}"],
    "tp-list-json": ["tp", "list", "-o", "json", "--server-address", "{address}"],
    "dump-processcache": ["dump", "processcache", "--server-address", "{address}"],
    "status": ["status", "--server-address", "{address}"],
    "getevents-file": ["getevents", "--file", "{export}"],
    "getevents-file-compact": ["getevents", "--file", "{export}", "-o", "compact"],
}


@pytest.mark.parametrize("name", list(PIPED))
def test_a_closed_stdout_ends_quietly_by_sigpipe(stuck_agent, tmp_path: Path, name: str) -> None:
    """`vigil dump processcache | head` exited 1 (click's EPIPE handling) or printed a
    BrokenPipeError, then ended 0: a reader that has had enough ends the command as it ends
    tetra (a Go program writing to a closed stdout is killed by SIGPIPE), quietly."""
    address, agent = stuck_agent
    args = [a.format(export=_big_export(tmp_path), address=address) for a in PIPED[name]]
    if name == "status":  # a long status: every policy's state
        agent.status = lambda: {"policies": {f"p{i}": {"state": "enabled"} for i in range(5000)}}  # type: ignore[method-assign]
    proc = subprocess.Popen([*VIGIL, *args], cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = proc.stdout.read(10)
        proc.stdout.close()  # as head does after its lines
        err = proc.stderr.read().decode() if proc.stderr else ""
        proc.wait(30)
    finally:
        stop_process(proc)
    assert first and (proc.returncode, err) == (-signal.SIGPIPE, ""), err


@pytest.mark.parametrize("args", [["getevents", "--file", "{export}"],
                                  ["getevents", "--file", "{export}", "-o", "compact"]])
def test_a_pipe_to_head_ends_with_141_as_tetra(tmp_path: Path, args: list[str]) -> None:
    """`vigil getevents | head -1` in a shell: the status the shell gives vigil is tetra's, 141
    (killed by SIGPIPE), and nothing is printed on stderr; head got its line."""
    import shlex

    cmd = " ".join(shlex.quote(a) for a in [*VIGIL, *[a.format(export=_big_export(tmp_path)) for a in args]])
    r = subprocess.run(["bash", "-c", f'{cmd} 2>"$1" | head -1 >/dev/null; echo "${{PIPESTATUS[0]}}"', "-",
                        str(tmp_path / "err")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert (r.stdout.strip(), (tmp_path / "err").read_text()) == ("141", "")
