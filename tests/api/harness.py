"""Helpers for gRPC API tests: an in-process server on a fake agent, and clients in
separate processes (so the wire, not shared memory, carries the events)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.api.fake_agent import FakeAgent

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SCRIPT = Path(__file__).with_name("stream_client.py")


@contextmanager
def running_server(address: str = "localhost:0", agent: FakeAgent | None = None,
                   **kw: Any) -> Iterator[tuple[Any, FakeAgent]]:
    from vigil.api.server import ApiServer

    agent = agent or FakeAgent()
    kw.setdefault("info_files", [])
    srv = ApiServer(agent, address, **kw)
    srv.start()
    try:
        yield srv, agent
    finally:
        srv.stop(grace=0.5)


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `pred` until truthy (deadline-bounded; used for cross-process readiness)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def spawn_client(address: str, *args: str, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    """`stdout` may be an open file: a client printing many big events would otherwise
    block on a full pipe until read_result()."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, str(CLIENT_SCRIPT), address, *args], cwd=ROOT, env=env,
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def read_result(proc: subprocess.Popen[str], timeout: float = 30.0,
                stdout_file: Any = None) -> tuple[list[dict], dict]:
    """Events printed by stream_client.py and its final summary line."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"client failed ({proc.returncode}): {err}"
    if stdout_file is not None:  # spawned with stdout=stdout_file
        stdout_file.seek(0)
        out = stdout_file.read()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines and "summary" in lines[-1], f"no summary from client: {out[-500:]} {err}"
    return lines[:-1], lines[-1]["summary"]


def marker(pid: int = 999_999) -> dict:
    """The event that tells stream_client.py to stop."""
    return {"process_exec": {"process": {"exec_id": "end", "pid": pid, "binary": "/end"}},
            "node_name": "test-node", "time": "2024-01-01T00:00:00Z"}


# a policy the fake agent takes by name (AddTracingPolicy tests): POLICY % name
POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: %s}
spec:
  kprobes: [{call: security_file_open, syscall: false}]
"""


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Ends a process the test started (by its Popen): `sig`, then SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
