"""Real-kernel fixtures: an in-process agent and helpers to wait for events.

Waiting uses an end marker instead of sleeps: after the action under test,
the test execs a marker binary with a unique argument; records arrive in
ring-buffer order, so once the marker's exit is seen every earlier record
has been handled.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.bpfstate import require_root
from tests.marker import collect_to_marker
from vigil.agent.agent import Agent
from vigil.agent.config import AgentConfig
from vigil.kernel.paths import bpf_object

pytestmark = pytest.mark.kernel


def _require_kernel() -> None:
    require_root()
    if not bpf_object("process").exists():
        pytest.fail(f"{bpf_object('process')} missing: run `make` first")


class RunningAgent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.agent = Agent(cfg)
        self.thread = threading.Thread(target=self.agent.run, name="vigil-agent", daemon=True)

    def __enter__(self) -> RunningAgent:
        self.agent.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.agent.request_stop()
        self.thread.join(10)
        self.agent.close()

    def collect(self, action, timeout: float = 30.0, until=None) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
        """Run action(); return every event up to and including the end marker's exit, and
        on until `until(events)` holds (events an action causes may leave after the marker:
        one held for its pod leaves when the pod is known)."""
        return collect_to_marker(self.agent, action, timeout, until)

    def counted(self, timeout: float = 10.0) -> None:
        """Wait until the agent's loop step now under way is over. The loop hands a batch's
        events to subscribers while it handles the batch and counts the batch's records
        (msg_ops, handling latency) after: the last events `collect` returned may be of a batch
        not counted yet. A step ends after its batch is counted."""
        p = self.agent.pipeline
        step = p.steps
        deadline = time.monotonic() + timeout
        while p.steps == step:
            assert time.monotonic() < deadline, f"the agent's loop did not end a step within {timeout}s"
            time.sleep(0.005)


@pytest.fixture(scope="session")
def others_can_resolve_paths() -> Iterator[None]:
    """Tests that run a program as another user need / searchable by it (by its group too:
    a process given only another uid keeps gid 0). It is on any installed system; a chroot
    whose root directory was made by `mktemp -d` has mode 0700, where no unprivileged
    process can resolve any path. There g+x,o+x is added to / for the session and the
    mode restored afterwards."""
    mode = os.stat("/").st_mode & 0o7777
    if mode & 0o011 == 0o011:
        yield
        return
    os.chmod("/", mode | 0o011)
    try:
        yield
    finally:
        os.chmod("/", mode)


@pytest.fixture(scope="session")
def running_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    _require_kernel()
    export = tmp_path_factory.mktemp("export") / "events.log"
    # a policy event whose process (or parent) the cache lacks waits one 2 s try, not Tetragon's
    # 15: tests that take a process out of the cache see its stand-in within their wait
    cfg = AgentConfig(export_filename=str(export), server_address="", node_name="vigil-test",
                      event_cache_retries=1, event_cache_retry_delay=2)
    with RunningAgent(cfg) as ra:
        yield ra


@pytest.fixture
def bpffs() -> Iterator[Path]:
    """A bpf file system of the test's own, for pins (--keep-sensors-on-exit): unmounting it drops
    every pin left in it, so nothing stays attached, also on failure."""
    from vigil.kernel import sys as ksys

    _require_kernel()
    d = Path(tempfile.mkdtemp(prefix="vigil-test-bpffs-"))
    ksys.mount("bpf", str(d), "bpf")
    try:
        yield d
    finally:
        ksys.umount(str(d))
        os.rmdir(d)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A test-owned, world-readable directory with test-owned copies of binaries."""
    d = Path(tempfile.mkdtemp(prefix="vigil-test-"))
    try:
        os.chmod(d, 0o755)
        for name, src in (("child", "/bin/echo"), ("parent-sh", "/bin/sh"), ("sleeper", "/bin/sleep"),
                          ("truebin", "/bin/true")):
            shutil.copy2(os.path.realpath(src), d / name)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def agent_api(ra: RunningAgent, work: Path) -> Iterator[Any]:
    """The running agent's gRPC API on a unix socket in `work`, and a FineGuidanceSensors
    client of it; both stopped on the way out."""
    import grpc

    from tests.api.harness import running_server
    from vigil.api.pb import sensors_pb2_grpc

    with running_server(f"unix://{work}/api.sock", ra.agent.control, health=False) as (srv, _):
        ch = grpc.insecure_channel(srv.address or "")
        try:
            yield sensors_pb2_grpc.FineGuidanceSensorsStub(ch)
        finally:
            ch.close()


def execs(events: list[dict], **match: Any) -> list[dict]:
    return [e["process_exec"] for e in events if "process_exec" in e
            and all(e["process_exec"]["process"].get(k) == v for k, v in match.items())]


def exits(events: list[dict], **match: Any) -> list[dict]:
    return [e["process_exit"] for e in events if "process_exit" in e
            and all(e["process_exit"]["process"].get(k) == v for k, v in match.items())]
