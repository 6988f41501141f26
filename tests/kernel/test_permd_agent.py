"""The failure modes of issue 8 on a real `vigil agent` process: whatever happens to the
agent's Python side, a guarded exec is answered as the rule says (or by the default, or
allowed once the agent is gone), and nothing else on the host waits.

The agent enforces `sys_execve` + Override under a test directory (fanotify on this host,
through the native helper vigil-permd). Test-only hooks (VIGIL_TEST_HOOKS=1, see
vigil/agent/testhooks.py) hold the agent's GIL for 10 s or stall the helper's next
decision. Each check is an ordering, not a timing: the exec completes while the agent is
still stopped / still holding the GIL / already dead."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import enforce_cases as C
from tests.kernel.bpfstate import require_root
from tests.kernel.test_agent_cli import AgentProcess
from tests.kernel.testbins import LAUNCH_C, build, is_eperm, launch

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_root()
    return build(tmp_path_factory.mktemp("launcher"), "launch", LAUNCH_C)


class Guarded:
    def __init__(self, tmp: Path, launcher: Path, deadline_ms: int) -> None:
        self.dir = tmp / "work"
        self.dir.mkdir()
        C.prepare(self.dir)
        self.hooks = tmp / "hooks"
        self.hooks.mkdir()
        self.launcher = launcher
        policy = tmp / "deny-exec.yaml"
        policy.write_text(C.exec_control(self.dir))
        env = {**os.environ, "VIGIL_TEST_HOOKS": "1", "VIGIL_TEST_HOOK_DIR": str(self.hooks)}
        self.agent = AgentProcess(tmp, ["--tracing-policy", str(policy), "--permission-deadline-ms",
                                        str(deadline_ms)], env=env)

    def run(self, which: str, marker: str) -> int | OSError:
        return launch(self.launcher, [str(self.dir / which / "tool"), str(self.dir / marker)])

    def ran(self, marker: str) -> bool:
        return (self.dir / marker).exists()

    def wait_file(self, name: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while not (self.hooks / name).exists():
            assert self.agent.proc.poll() is None, "the agent exited"
            assert time.monotonic() < deadline, f"test hook did not write {name}"
            time.sleep(0.01)
        return (self.hooks / name).read_text()

    def check_enforcing(self) -> None:
        assert is_eperm(self.run("blocked", "m0")) and not self.ran("m0")
        assert self.run("allowed", "m1") == 0 and self.ran("m1")


@pytest.fixture
def guarded(tmp_path: Path, launcher: Path) -> Iterator[Guarded]:
    g = Guarded(tmp_path, launcher, deadline_ms=60000)
    try:
        g.check_enforcing()
        yield g
    finally:
        if g.agent.proc.poll() is None:
            os.kill(g.agent.proc.pid, signal.SIGCONT)
        g.agent.stop()


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_agent_stopped_with_sigstop(guarded: Guarded) -> None:
    pid = guarded.agent.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while state(pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state(pid) == "T"
        assert is_eperm(guarded.run("blocked", "stopped-blocked")) and not guarded.ran("stopped-blocked")
        assert guarded.run("allowed", "stopped-allowed") == 0 and guarded.ran("stopped-allowed")
        assert subprocess.run(["/bin/true"], timeout=30).returncode == 0
        assert state(pid) == "T", "the answers came while the agent was stopped"
    finally:
        os.kill(pid, signal.SIGCONT)
    guarded.check_enforcing()


def test_agent_python_blocked_holding_the_gil(guarded: Guarded) -> None:
    os.kill(guarded.agent.proc.pid, signal.SIGUSR2)  # hold the GIL for 10 s in one C call
    guarded.wait_file("gil-held")
    assert is_eperm(guarded.run("blocked", "gil-blocked")) and not guarded.ran("gil-blocked")
    assert guarded.run("allowed", "gil-allowed") == 0 and guarded.ran("gil-allowed")
    assert not (guarded.hooks / "gil-released").exists(), "the answers came while the GIL was held"
    guarded.wait_file("gil-released")
    guarded.check_enforcing()


def test_agent_killed_while_an_exec_waits(guarded: Guarded) -> None:
    """SIGKILL while the helper sits in a (60 s) decision, with a 60 s deadline: the helper
    sees the agent gone and exits, the kernel allows the waiting exec."""
    os.kill(guarded.agent.proc.pid, signal.SIGUSR1)  # the helper's next decision stalls 60 s
    helper_pid = int(guarded.wait_file("stall-armed"))
    out: list[int | OSError] = []
    t = threading.Thread(target=lambda: out.append(guarded.run("blocked", "killed-blocked")), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the helper's main thread sleeps in that decision
        with open(f"/proc/{helper_pid}/task/{helper_pid}/syscall") as f:
            if f.read().split()[0] in ("35", "230"):
                break
        time.sleep(0.005)
    else:
        pytest.fail("the helper never started the stalled decision")
    assert t.is_alive()
    guarded.agent.proc.kill()
    guarded.agent.proc.wait()
    t.join(30)
    assert out == [0] and guarded.ran("killed-blocked"), "the waiting exec was allowed once the agent was gone"
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{helper_pid}") and state(helper_pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{helper_pid}") or state(helper_pid) == "Z", "vigil-permd outlived the agent"
    # nothing is guarded any more
    assert guarded.run("blocked", "after-kill") == 0
