"""GetUrl/DnsLookup and the policy mode, on the real kernel. Tetragon's monitor mode only turns
the enforcing actions into reported ones (do_action's enforce_mode: monitor_override,
monitor_signal, ...); a GetUrl or DnsLookup after them still sets the event's action and
argument, and its agent runs it whatever the mode. So the URL is fetched in both modes; the
signal reaches the process (the test's own child) in enforce mode alone."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import Run, loaded, open_file, openat_spec, path_is, policy_yaml, run_py, scoped
from tests.kernel.test_policy_features import mine, pywork, url_server  # noqa: F401 - pywork: a fixture

# (policy mode, the process signalled?)
MODE_CASES = [("enforce", True), ("monitor", False)]


@pytest.mark.parametrize("mode,signalled", MODE_CASES, ids=[c[0] for c in MODE_CASES])
def test_geturl_after_an_enforcing_action_runs_in_either_mode(running_agent: RunningAgent, pywork: Path,  # noqa: F811
                                                              mode: str, signalled: bool) -> None:
    d = pywork / "data"
    r = Run()
    # SIGUSR1 caught: the child records it rather than ending
    code = ("import signal\ngot = []\nsignal.signal(signal.SIGUSR1, lambda *a: got.append(1))\n"
            + open_file(str(d / "present.txt")) + "open('result', 'w').write('signalled' if got else 'not signalled')\n")
    with url_server() as (port, hits):
        spec = openat_spec([path_is(f"{d}/present.txt"), scoped(pywork), "matchActions:",
                            "- {action: Signal, argSig: 10}",
                            f'- {{action: GetUrl, argUrl: "http://127.0.0.1:{port}/vigil-{mode}"}}'])
        with loaded(running_agent, policy_yaml(f"user-actions-{mode}", spec), mode=mode):
            events = running_agent.collect(lambda: run_py(pywork, code, out=r))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not hits:
                time.sleep(0.05)
    assert (pywork / "result").read_text() == ("signalled" if signalled else "not signalled")
    assert hits == [f"/vigil-{mode}"]
    assert [e["action"] for e in mine(events, r, f"user-actions-{mode}")] == ["KPROBE_ACTION_GETURL"]


# (policy mode, the open refused?): Override on sys_openat, which this kernel may enforce through
# the fanotify stand-in (the event then comes from the permission helper's report): the
# selector's last action, GetUrl, runs as from a kernel record, in either mode
OVERRIDE_CASES = [("enforce", True), ("monitor", False)]


@pytest.mark.parametrize("mode,refused", OVERRIDE_CASES, ids=[c[0] for c in OVERRIDE_CASES])
def test_geturl_after_override_runs_in_either_mode(running_agent: RunningAgent, pywork: Path,  # noqa: F811
                                                   mode: str, refused: bool) -> None:
    d = pywork / "data"
    code = (f"try:\n    open({str(d / 'present.txt')!r}).close()\n    open('result', 'w').write('opened')\n"
            "except OSError:\n    open('result', 'w').write('refused')\n")
    with url_server() as (port, hits):
        spec = openat_spec([path_is(f"{d}/present.txt"), scoped(pywork), "matchActions:",
                            "- {action: Override, argError: -1}",
                            f'- {{action: GetUrl, argUrl: "http://127.0.0.1:{port}/override-{mode}"}}'])
        with loaded(running_agent, policy_yaml(f"override-geturl-{mode}", spec), mode=mode):
            running_agent.collect(lambda: run_py(pywork, code))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not hits:
                time.sleep(0.05)
    assert (pywork / "result").read_text() == ("refused" if refused else "opened")
    assert hits == [f"/override-{mode}"]
