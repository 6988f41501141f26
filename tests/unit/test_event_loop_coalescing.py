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
    # woken from sleep by the first record of a burst: drained at once (that record leaves without
    # a pause), then a pause after each small drain lets the rest accumulate, until one is empty.
    # (Pausing before that first drain as well was tried: one pass fewer per idle spell, no change
    # in the agent's CPU per exec measurable at 80-150 execs/s, and up to the whole delay more for
    # the first event after a quiet spell: not kept.)
    pytest.param(0.004, True, [True], [1, 3], ["wait", "drain 1", "pause 4", "drain 3", "pause 4", "drain 0", "wait"],
                 id="woken-drains-at-once"),
    # two bursts with an idle spell between them
    pytest.param(0.004, True, [True, True], [2, 0, 1],
                 ["wait", "drain 2", "pause 4", "drain 0", "wait", "drain 1", "pause 4", "drain 0", "wait"],
                 id="two-bursts"),
    # a large drain (the loop is behind): no pause after it; the next wait returns at once on
    # the records already there
    pytest.param(0.004, True, [True, True], [300, 5],
                 ["wait", "drain 300", "wait", "drain 5", "pause 4", "drain 0", "wait"], id="large-drain"),
    # a wait that timed out: nothing drained
    pytest.param(0.004, True, [False, True], [2],
                 ["wait", "wait", "drain 2", "pause 4", "drain 0", "wait"], id="timeout-then-burst"),
    # --event-batch-delay-ms 0: read as soon as records arrive
    pytest.param(0.0, True, [True], [3], ["wait", "drain 3", "wait"], id="no-delay"),
    # a replay never pauses
    pytest.param(0.004, False, [True, True], [3, 2], ["wait", "drain 3", "wait", "drain 2", "wait"], id="replay"),
])
def test_the_loop_pauses_after_a_small_drain(monkeypatch: pytest.MonkeyPatch, delay: float, live: bool,
                                             woken: list[bool], batches: list[int], want: list[str]) -> None:
    assert run_loop(monkeypatch, delay, live, woken, batches) == want
