"""The event loop's passes over the kernel's records (Pipeline._loop), driven by a scripted
source: when it waits for the kernel, when it pauses to let records accumulate
(--event-batch-delay-ms), when it drains. No kernel, no clock: the pause is recorded, not slept."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

import vigil.agent.pipeline as pipeline_mod
from vigil.agent.pipeline import Pipeline


class ScriptedSource:
    """wait() answers from `woken` (then False), drain() hands out `batches` (then nothing);
    stops the loop once both are used up and one more empty pass is done."""

    def __init__(self, woken: list[bool], batches: list[int], trace: list[str], stop: threading.Event) -> None:
        self.woken, self.batches, self.trace, self.stop = list(woken), list(batches), trace, stop

    def wait(self, timeout: float) -> bool:
        self.trace.append("wait")
        if not self.woken:
            self.stop.set()
            return False
        return self.woken.pop(0)

    def drain(self) -> list[bytes]:
        n = self.batches.pop(0) if self.batches else 0
        if not self.stop.is_set():
            self.trace.append(f"drain {n}")
        return [b"\x05"] * n


def run_loop(monkeypatch: pytest.MonkeyPatch, delay: float, live: bool, woken: list[bool],
             batches: list[int]) -> list[str]:
    trace: list[str] = []
    stop = threading.Event()
    agent = SimpleNamespace(config=SimpleNamespace(batch_delay=delay, stats_interval=3600.0), k8s=None)
    p = Pipeline(agent)  # type: ignore[arg-type]
    p.hold = None
    p.tick = lambda: None  # type: ignore[method-assign]
    p.handle = lambda recs: None  # type: ignore[method-assign]
    monkeypatch.setattr(pipeline_mod.time, "sleep", lambda s: trace.append(f"pause {s * 1000:g}"))
    p._loop(ScriptedSource(woken, batches, trace, stop), stop, live)  # type: ignore[arg-type]
    return trace


@pytest.mark.parametrize("delay, live, woken, batches, want", [
    # woken from sleep by the first record of a burst: the loop pauses before it drains, so the
    # burst is one pass, not a pass for its first record and another one a pause later
    pytest.param(0.004, True, [True], [3], ["wait", "pause 4", "drain 3", "pause 4", "drain 0", "wait"],
                 id="woken-pauses-before-draining"),
    # two bursts with an idle spell between them: one pass each (and the empty one that ends it)
    pytest.param(0.004, True, [True, True], [2, 0, 1],
                 ["wait", "pause 4", "drain 2", "pause 4", "drain 0", "wait", "pause 4", "drain 1", "pause 4",
                  "drain 0", "wait"], id="two-bursts"),
    # a large drain (the loop is behind): no pause after it, as before, nor before the next drain
    # (the records that end that wait were there already, not the first of a burst)
    pytest.param(0.004, True, [True, True], [300, 5],
                 ["wait", "pause 4", "drain 300", "wait", "drain 5", "pause 4", "drain 0", "wait"], id="large-drain"),
    # a wait that timed out changes nothing: the next records that end a wait still pause first
    pytest.param(0.004, True, [False, True], [2],
                 ["wait", "wait", "pause 4", "drain 2", "pause 4", "drain 0", "wait"], id="timeout-then-burst"),
    # --event-batch-delay-ms 0: read as soon as records arrive
    pytest.param(0.0, True, [True], [3], ["wait", "drain 3", "wait"], id="no-delay"),
    # a replay never pauses
    pytest.param(0.004, False, [True, True], [3, 2], ["wait", "drain 3", "wait", "drain 2", "wait"], id="replay"),
])
def test_the_loop_pauses_after_a_wakeup_and_after_a_small_drain(monkeypatch: pytest.MonkeyPatch, delay: float,
                                                                 live: bool, woken: list[bool], batches: list[int],
                                                                 want: list[str]) -> None:
    assert run_loop(monkeypatch, delay, live, woken, batches) == want
