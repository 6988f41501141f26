"""Policy events of a process the cache does not have yet (vigil.process.hold, Tetragon's event
cache for process info): held while its exec record may still come, sent with the process
once it does, else with the stand-in; other events are not held back. Driven by records
replayed through the agent's loop in order (the compiled handler and the Python one), and the
hold's own bounds (time, loop steps, capacity) by a table."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from tests.unit.test_fastpath import _generic_hooks, _generic_record, plain_record
from vigil.agent.agent import Agent
from vigil.agent.config import AgentConfig
from vigil.agent.metrics import AgentCollector
from vigil.core import native
from vigil.events import records as R
from vigil.events.source import ReplaySource
from vigil.events.synth import exit_record, process_record
from vigil.kernel.policy_layout import EV_NO_PROC
from vigil.process.hold import EXITED_CAPACITY

HOOKS, _ = _generic_hooks("kprobe-string")
S = 1_000_000_000  # ns


def _policy(pid: int, exec_ktime: int, ktime: int, flags: int = 0) -> bytes:
    return _generic_record(HOOKS[0], plain_record(pid=pid, exec_ktime=exec_ktime, ktime=ktime, flags=flags,
                                                  args=[(b"/etc/passwd", 0, 0, 0), (b"", 3, 0, 0)]))


def _no_proc(pid: int, leader_start: int, ktime: int) -> bytes:
    """A record of a process execve_map lacks: its key's ktime is the thread group leader's start."""
    return _policy(pid, leader_start, ktime, flags=EV_NO_PROC)


def _exec(pid: int, ktime: int, ppid: int = 1, pktime: int = 0) -> bytes:
    return process_record(pid=pid, ktime=ktime, ppid=ppid, pktime=pktime, binary=f"/usr/bin/p{pid}-{ktime}")


def _clone(pid: int, ktime: int, ppid: int, pktime: int) -> bytes:
    return process_record(op=R.OP_CLONE, pid=pid, ktime=ktime, ppid=ppid, pktime=pktime)


def _exit(pid: int, exec_ktime: int, ktime: int) -> bytes:
    return exit_record(pid=pid, ktime=ktime, exec_ktime=exec_ktime)


# records (in the order the loop reads them), the replay's batch size, then the events exported
# in order (kind and pid; a policy event's process "known" or "stand-in"), and the hold's counts
# (held, resolved, given up[, given up without its parent])
CASES = [
    ("known", [_exec(100, 5000), _policy(100, 5000, 6000)], 7,
     [("exec", 100), ("kprobe", 100, "known")], (0, 0, 0)),
    ("exec-later-in-the-batch", [_policy(100, 5000, 6000), _exec(100, 5000)], 7,
     [("exec", 100), ("kprobe", 100, "known")], (1, 1, 0)),
    ("exec-in-a-later-batch", [_policy(100, 5000, 6000), _exec(200, 5500), _exec(100, 5000)], 1,
     [("exec", 200), ("exec", 100), ("kprobe", 100, "known")], (1, 1, 0)),
    # the process never comes: the other events go on, it is sent with the stand-in at the stop
    ("never-comes", [_policy(300, 5000, 6000), _exec(200, 5500), _exec(100, 5000), _policy(100, 5000, 7000)], 1,
     [("exec", 200), ("exec", 100), ("kprobe", 100, "known"), ("kprobe", 300, "stand-in")], (1, 0, 1)),
    ("two-held-one-comes", [_policy(300, 5000, 6000), _policy(100, 5000, 6500), _exec(100, 5000)], 2,
     [("exec", 100), ("kprobe", 100, "known"), ("kprobe", 300, "stand-in")], (2, 1, 1)),
    # the cache has an older image of the pid (its fork, its previous exec) while the exec the
    # record's key names is still behind: the event waits for that exec, never goes with the old one
    ("older-image-cached-exec-behind", [_exec(100, 4000), _policy(100, 5000, 6000), _exec(100, 5000)], 1,
     [("exec", 100, 4000), ("exec", 100, 5000), ("kprobe", 100, "known", 5000)], (1, 1, 0)),
    ("clone-cached-exec-behind", [_exec(50, 1000), _clone(100, 4000, 50, 1000), _policy(100, 5000, 6000),
                                  _exec(100, 5000)], 1,
     [("exec", 50, 1000), ("exec", 100, 5000), ("kprobe", 100, "known", 5000)], (1, 1, 0)),
    ("older-image-cached-exec-never", [_exec(100, 4000), _policy(100, 5000, 6000)], 1,
     [("exec", 100, 4000), ("kprobe", 100, "stand-in")], (1, 0, 1)),
    # execve_map lacks the process (VP_EV_NO_PROC): its key's ktime is its leader's start, no
    # exec key, so the cache's image of that pid is its process (at once, or once it comes)
    ("no-proc-known-by-pid", [_exec(100, 5000), _no_proc(100, 4000, 6000)], 1,
     [("exec", 100, 5000), ("kprobe", 100, "known", 5000)], (0, 0, 0)),
    ("no-proc-comes-later", [_no_proc(100, 4000, 6000), _exec(200, 5500), _exec(100, 5000)], 1,
     [("exec", 200, 5500), ("exec", 100, 5000), ("kprobe", 100, "known", 5000)], (1, 1, 0)),
    # ... but not an image older than that start: an earlier process's of the pid (its exit not
    # read); one up to a clock tick before it is this process's (a /proc start, floored to a tick)
    ("no-proc-older-image-cached", [_exec(100, 4 * S), _no_proc(100, 5 * S, 6 * S)], 1,
     [("exec", 100, 4 * S), ("kprobe", 100, "stand-in")], (1, 0, 1)),
    ("no-proc-older-image-then-its-own", [_exec(100, 4 * S), _no_proc(100, 5 * S, 6 * S), _exec(100, 5 * S + 1)], 1,
     [("exec", 100, 4 * S), ("exec", 100, 5 * S + 1), ("kprobe", 100, "known", 5 * S + 1)], (1, 1, 0)),
    ("no-proc-image-a-tick-before", [_exec(100, 5 * S - 9_000_000), _no_proc(100, 5 * S, 6 * S)], 1,
     [("exec", 100, 5 * S - 9_000_000), ("kprobe", 100, "known", 5 * S - 9_000_000)], (0, 0, 0)),
    # the process is known, the parent its exec named is not (yet): held for the parent, as
    # Tetragon's event cache holds an event whose parent it lacks; sent without it once the wait
    # is over (its process info is not missing: a parent_info fetch failure). Its exec event
    # waits for that parent too (below), and its events after it
    ("parent-known", [_exec(50, 1000), _exec(100, 5000, 50, 1000), _policy(100, 5000, 6000)], 1,
     [("exec", 50, 1000, 0), ("exec", 100, 5000, 50), ("kprobe", 100, "known", 5000, 50)], (0, 0, 0)),
    ("parent-in-a-later-batch", [_exec(100, 5000, 50, 1000), _policy(100, 5000, 6000), _exec(200, 5500),
                                 _exec(50, 1000)], 1,
     [("exec", 200, 5500), ("exec", 50, 1000), ("exec", 100, 5000, 50), ("kprobe", 100, "known", 5000, 50)],
     (2, 2, 0)),
    ("parent-later-in-the-batch", [_exec(100, 5000, 50, 1000), _policy(100, 5000, 6000), _policy(100, 5000, 6100),
                                   _exec(50, 1000)], 7,
     [("exec", 50, 1000), ("exec", 100, 5000, 50), ("kprobe", 100, "known", 5000, 50),
      ("kprobe", 100, "known", 5000, 50)], (3, 3, 0)),
    # (the policy event, held for its process first, still leaves after its exec)
    ("process-then-parent", [_policy(100, 5000, 6000), _exec(100, 5000, 50, 1000), _exec(200, 5500),
                             _exec(50, 1000)], 1,
     [("exec", 200, 5500), ("exec", 50, 1000), ("exec", 100, 5000, 50), ("kprobe", 100, "known", 5000, 50)],
     (2, 2, 0)),
    ("parent-never-comes", [_exec(100, 5000, 50, 1000), _policy(100, 5000, 6000), _exec(200, 5500)], 1,
     [("exec", 200, 5500), ("exec", 100, 5000, 0), ("kprobe", 100, "known", 5000, 0)], (2, 0, 0, 2)),
    # an exec whose parent (the key its record named) the cache lacks, that parent's exec record
    # behind: held for it as Tetragon's GetProcessExec holds it, sent with it (and the ancestors)
    # once it comes, else without it once the wait is over (parent_info); never dropped. The
    # process is cached at once; what follows its exec (its exit, its policy events, its
    # children's execs) leaves after it, even when it had its parent at once
    ("exec-parent-known", [_exec(50, 1000), _exec(100, 5000, 50, 1000)], 1,
     [("exec", 50, 1000, 0), ("exec", 100, 5000, 50)], (0, 0, 0)),
    ("exec-parent-later-in-the-batch", [_exec(100, 5000, 50, 1000), _exec(50, 1000)], 7,
     [("exec", 50, 1000, 0), ("exec", 100, 5000, 50)], (1, 1, 0)),
    ("exec-parent-in-a-later-batch", [_exec(100, 5000, 50, 1000), _exec(200, 5500), _exec(50, 1000)], 1,
     [("exec", 200, 5500, 0), ("exec", 50, 1000, 0), ("exec", 100, 5000, 50)], (1, 1, 0)),
    ("exec-parent-never-comes", [_exec(100, 5000, 50, 1000), _exec(200, 5500)], 1,
     [("exec", 200, 5500, 0), ("exec", 100, 5000, 0)], (1, 0, 0, 1)),
    ("exec-parent-then-exit-in-the-batch", [_exec(100, 5000, 50, 1000), _exec(50, 1000), _exit(100, 5000, 6000)], 7,
     [("exec", 50, 1000, 0), ("exec", 100, 5000, 50), ("exit", 100, "known", 5000, 50)], (2, 2, 0)),
    ("exec-parent-then-policy-event-in-a-later-batch", [_exec(100, 5000, 50, 1000), _exec(50, 1000),
                                                        _policy(100, 5000, 6000)], 1,
     [("exec", 50, 1000, 0), ("exec", 100, 5000, 50), ("kprobe", 100, "known", 5000, 50)], (1, 1, 0)),
    ("exec-child-of-a-held-exec", [_exec(100, 5000, 50, 1000), _exec(101, 6000, 100, 5000), _exec(50, 1000)], 7,
     [("exec", 50, 1000, 0), ("exec", 100, 5000, 50), ("exec", 101, 6000, 100)], (2, 2, 0)),
    ("exec-child-of-a-held-exec-never", [_exec(100, 5000, 50, 1000), _exec(101, 6000, 100, 5000),
                                         _exit(101, 6000, 6500), _exec(200, 5500)], 1,
     [("exec", 200, 5500, 0), ("exec", 100, 5000, 0), ("exec", 101, 6000, 100), ("exit", 101, "known", 6000, 100)],
     (3, 2, 0, 1)),
    # a clone record whose forking process the cache lacks (its exec record behind): held, as
    # Tetragon's event cache holds such a clone, and the child's entry made once that process is
    # cached (the child's exit and policy events then name it, the image it forked from), else
    # given up after the wait (no entry, as before: its events go with the stand-in)
    ("clone-forker-later", [_clone(100, 4000, 50, 1000), _exec(50, 1000), _exit(100, 4000, 6000)], 1,
     [("exec", 50, 1000, 0), ("exit", 100, "known", 1000, 50)], (1, 1, 0)),
    ("clone-forker-after-the-childs-exit", [_clone(100, 4000, 50, 1000), _exit(100, 4000, 6000), _exec(50, 1000)], 1,
     [("exec", 50, 1000, 0), ("exit", 100, "known", 1000, 50)], (2, 2, 0)),
    ("clone-forker-after-the-childs-policy-event", [_clone(100, 4000, 50, 1000), _policy(100, 4000, 4500),
                                                    _exec(50, 1000)], 7,
     [("exec", 50, 1000, 0), ("kprobe", 100, "known", 1000, 50)], (2, 2, 0)),
    ("clone-forker-never-comes", [_clone(100, 4000, 50, 1000), _exec(200, 5500)], 1,
     [("exec", 200, 5500, 0)], (1, 0, 0, 1)),
    ("clone-forker-never-comes-the-childs-exit", [_clone(100, 4000, 50, 1000), _exit(100, 4000, 6000)], 1,
     [("exit", 100, "stand-in", 0)], (2, 0, 1, 1)),
    # an exit whose exec key the cache lacks (that exec's record behind it): held the same way,
    # sent with the process once its exec comes, else with the stand-in (pid, start time)
    ("exit-known", [_exec(100, 5000), _exit(100, 5000, 6000)], 1,
     [("exec", 100, 5000), ("exit", 100, "known", 5000)], (0, 0, 0)),
    ("exit-exec-later-in-the-batch", [_exit(100, 5000, 6000), _exec(100, 5000)], 7,
     [("exec", 100, 5000), ("exit", 100, "known", 5000)], (1, 1, 0)),
    ("exit-exec-in-a-later-batch", [_exit(100, 5000, 6000), _exec(200, 5500), _exec(100, 5000)], 1,
     [("exec", 200, 5500), ("exec", 100, 5000), ("exit", 100, "known", 5000)], (1, 1, 0)),
    ("exit-exec-never-comes", [_exit(300, 5000, 6000), _exec(100, 5000)], 1,
     [("exec", 100, 5000), ("exit", 300, "stand-in")], (1, 0, 1)),
    ("exit-older-image-cached-exec-behind", [_exec(100, 4000), _exit(100, 5000, 6000), _exec(100, 5000)], 1,
     [("exec", 100, 4000), ("exec", 100, 5000), ("exit", 100, "known", 5000)], (1, 1, 0)),
    ("exit-and-policy-event-exec-behind", [_policy(100, 5000, 5500), _exit(100, 5000, 6000), _exec(100, 5000)], 1,
     [("exec", 100, 5000), ("kprobe", 100, "known", 5000), ("exit", 100, "known", 5000)], (2, 2, 0)),
    # an exit of a cached process whose parent (the key its exec named) the cache lacks (that
    # exec's record behind): held for the parent as a policy event is (Tetragon's GetProcessExit
    # holds it too), sent with it once it comes, else without it (a parent_info fetch failure)
    ("exit-parent-known", [_exec(50, 1000), _exec(100, 5000, 50, 1000), _exit(100, 5000, 6000)], 1,
     [("exec", 50, 1000), ("exec", 100, 5000), ("exit", 100, "known", 5000, 50)], (0, 0, 0)),
    ("exit-parent-later-in-the-batch", [_exec(100, 5000, 50, 1000), _exit(100, 5000, 6000), _exec(50, 1000)], 7,
     [("exec", 50, 1000), ("exec", 100, 5000, 50), ("exit", 100, "known", 5000, 50)], (2, 2, 0)),
    ("exit-parent-in-a-later-batch", [_exec(100, 5000, 50, 1000), _exit(100, 5000, 6000), _exec(200, 5500),
                                      _exec(50, 1000)], 1,
     [("exec", 200, 5500), ("exec", 50, 1000), ("exec", 100, 5000, 50), ("exit", 100, "known", 5000, 50)],
     (2, 2, 0)),
    ("exit-process-then-parent", [_exit(100, 5000, 6000), _exec(100, 5000, 50, 1000), _exec(200, 5500),
                                  _exec(50, 1000)], 1,
     [("exec", 200, 5500), ("exec", 50, 1000), ("exec", 100, 5000, 50), ("exit", 100, "known", 5000, 50)],
     (2, 2, 0)),
    ("exit-parent-never-comes", [_exec(100, 5000, 50, 1000), _exit(100, 5000, 6000), _exec(200, 5500)], 1,
     [("exec", 200, 5500), ("exec", 100, 5000, 0), ("exit", 100, "known", 5000, 0)], (2, 0, 0, 2)),
    ("exit-and-policy-event-parent-behind", [_exec(100, 5000, 50, 1000), _policy(100, 5000, 5500),
                                             _exit(100, 5000, 6000), _exec(50, 1000)], 7,
     [("exec", 50, 1000), ("exec", 100, 5000, 50), ("kprobe", 100, "known", 5000, 50),
      ("exit", 100, "known", 5000, 50)], (3, 3, 0)),
]


def _replay(tmp_path: Path, records: list[bytes], batch: int, compiled: bool,
            left: list[Any] | None = None, hold: tuple[int, int] | None = None) -> tuple[list[Any], dict, dict]:
    """The exported events, status and metrics of a replay; `compiled` False: the pure-Python
    agent (as VIGIL_PURE_PYTHON=1). `left` gets the agent's process cache once it stopped;
    `hold`: the hold's (retries, retry delay in s) instead of the options'."""
    with pytest.MonkeyPatch.context() as mp:
        if not compiled:
            mp.setattr(native, "fast", None)
        out = tmp_path / "events.log"
        agent = Agent(AgentConfig(export_filename=str(out), server_address="", node_name="n1"),
                      source=ReplaySource(records, batch=batch))
        if hold is not None:
            agent.builder.hold.configure(*hold)
        agent.start()
        try:
            pe = agent.policies.events
            # the hook's policy: counters only (a policy with none goes to the Python handler)
            lp = SimpleNamespace(events={}, actions={}, correlator=None) if compiled else None
            for ch in HOOKS:
                pe.hooks[ch.hook_id] = (ch, lp)
            agent.run()
            metrics = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for fam in AgentCollector(agent.control).collect() for s in fam.samples}
            status = agent.control.status()
            if left is not None:
                left.append(agent.builder.cache)
        finally:
            agent.close()
    return [orjson.loads(line) for line in out.read_bytes().splitlines()], status, metrics


def _shape(e: dict[str, Any]) -> tuple[Any, ...]:
    kind = next(k for k in e if k not in ("node_name", "time"))
    proc = e[kind]["process"]
    # the image: the exec's ktime its binary names (/usr/bin/p<pid>-<ktime>), in the rows that say
    image = (int(proc["binary"].rsplit("-", 1)[1]),) if "-" in proc.get("binary", "") else ()
    parent = e[kind].get("parent", {}).get("pid", 0)  # 0: sent without its parent
    if kind == "process_exec":
        return ("exec", proc["pid"], *image, parent)
    return (kind.removeprefix("process_"), proc["pid"], "known" if proc.get("exec_id") else "stand-in", *image,
            parent)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("records,batch,want,counts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_policy_event_waits_for_its_process(tmp_path: Path, records: list[bytes], batch: int,
                                              want: list[tuple[Any, ...]], counts: tuple[int, ...],
                                              compiled: bool) -> None:
    events, status, metrics = _replay(tmp_path, records, batch, compiled)
    shapes = [_shape(e) for e in events]
    assert [s[:len(w)] for s, w in zip(shapes, want)] == want and len(shapes) == len(want), shapes
    held = status["event_cache"]
    parent_given_up = counts[3] if len(counts) > 3 else 0
    counts = counts[:3]
    assert (held["held"], held["resolved"], held["given_up"], held["held_now"]) == (*counts, 0)
    assert held.get("parent_given_up", 0) == parent_given_up
    assert metrics[("tetragon_event_cache_fetch_failures_total", (("entry_type", "parent_info"),))] == parent_given_up
    # a known process's event carries the process of its exec event (a forked one's: none)
    execs = {e["process_exec"]["process"]["pid"]: e["process_exec"]["process"] for e in events if "process_exec" in e}
    for e in events:
        proc = e.get("process_kprobe", {}).get("process", {})
        if proc.get("exec_id") and proc["pid"] in execs:
            assert e["process_kprobe"]["process"] == execs[e["process_kprobe"]["process"]["pid"]]
    # sent with the stand-in: missing its process info, as before the hold
    assert status["events_missing_process_info"] == counts[2]
    assert metrics[("tetragon_event_cache_inserts_total", ())] == counts[0]
    assert metrics[("tetragon_event_cache_fetch_failures_total", (("entry_type", "process_info"),))] == counts[2]
    assert metrics[("tetragon_event_cache_entries", ())] == 0


# an exit held for its exec, once that exec comes, ends the process as the exit of a cached
# process does: the pid names no image any more and the entry waits for the GC (released), the
# hold keeps nothing alive; one whose exec never comes leaves nothing either
EXIT_CASES = [
    ("exec-first", [_exec(100, 5000), _exit(100, 5000, 6000)], 1),
    ("exec-later-in-the-batch", [_exit(100, 5000, 6000), _exec(100, 5000)], 7),
    ("exec-in-a-later-batch", [_exit(100, 5000, 6000), _exec(200, 5500), _exec(100, 5000)], 1),
    ("older-image-cached-exec-behind", [_exec(100, 4000), _exit(100, 5000, 6000), _exec(100, 5000)], 1),
]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("records,batch", [c[1:] for c in EXIT_CASES], ids=[c[0] for c in EXIT_CASES])
def test_a_held_exit_ends_its_process_once_it_comes(tmp_path: Path, records: list[bytes], batch: int,
                                                    compiled: bool) -> None:
    left: list[Any] = []
    events, _, _ = _replay(tmp_path, records, batch, compiled, left)
    assert [_shape(e)[:4] for e in events if "process_exit" in e] == [("exit", 100, "known", 5000)]
    cache = left[0]
    p = cache.get((100, 5000))
    assert cache.by_pid(100) is None and p.exited and p.refcnt <= 0 and p in cache._pending
    assert cache.gc(p.removal_at) >= 1 and cache.get((100, 5000)) is None


# an exit given up (sent with the stand-in: its exec record was not read in time) is remembered
# a while: its exec record read late then makes its exec event (as Tetragon sends an exec read
# after its exit) but leaves no live process behind (the pid names no image, the entry released
# for the GC), counted (late_exec). A wait of 0 s: given up after the hold's two steps.
# (records, batch 1; is the last exec's process live in the cache afterwards (its pid names it)?;
# counts: held, resolved, given up, late execs)
LATE_CASES = [
    ("exec-after-its-exit-was-given-up", [_exit(100, 5000, 6000), _exec(200, 5500), _exec(300, 5600),
                                          _exec(100, 5000)], False, (1, 0, 1, 1)),
    # (ended by its held exit, as aed1b84)
    ("exec-in-time", [_exit(100, 5000, 6000), _exec(100, 5000)], False, (1, 1, 0, 0)),
    ("another-process-of-the-pid-after", [_exit(100, 5000, 6000), _exec(200, 5500), _exec(300, 5600),
                                          _exec(100, 7000)], True, (1, 0, 1, 0)),
    ("exec-after-a-policy-event-was-given-up", [_policy(100, 5000, 6000), _exec(200, 5500), _exec(300, 5600),
                                                _exec(100, 5000)], True, (1, 0, 1, 0)),
]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("records,live,counts", [c[1:] for c in LATE_CASES], ids=[c[0] for c in LATE_CASES])
def test_an_exec_read_after_its_exit_was_given_up_is_not_left_live(
        tmp_path: Path, records: list[bytes], live: bool, counts: tuple[int, ...], compiled: bool) -> None:
    left: list[Any] = []
    events, status, _ = _replay(tmp_path, records, 1, compiled, left, hold=(1, 0))
    execs = [_shape(e) for e in events if "process_exec" in e]
    assert len(execs) == len(records) - 1, execs  # every exec record makes its exec event
    held = status["event_cache"]
    assert (held["held"], held["resolved"], held["given_up"], held.get("late_exec", 0)) == counts
    cache = left[0]
    p = cache.get((100, execs[-1][2]))
    assert p is not None and execs[-1][1] == 100
    if live:
        assert cache.by_pid(100) is p and not p.exited and p.refcnt == 1
    else:
        assert cache.by_pid(100) is None and p.exited and p.refcnt <= 0 and p in cache._pending


# what is remembered of the events given up: an exit's exec key, for as long as the wait again
# (1 s here), at most EXITED_CAPACITY at once (the oldest forgotten); nothing of a policy event's.
# (events given up: kind, pid (exec key (pid, 5000)), when in ns; the keys remembered after)
CAP = EXITED_CAPACITY
REMEMBER_CASES = [
    ("an-exit", [("exit", 100, 0)], [(100, 5000)]),
    ("a-policy-event", [("policy", 100, 0)], []),
    ("within-the-wait", [("exit", 100, 0), ("exit", 101, S)], [(100, 5000), (101, 5000)]),
    ("past-the-wait", [("exit", 100, 0), ("exit", 101, S + 1)], [(101, 5000)]),
    ("past-the-capacity", [("exit", 1000 + i, 0) for i in range(CAP + 1)], [(1001 + i, 5000) for i in range(CAP)]),
]


@pytest.mark.parametrize("given_up,want", [c[1:] for c in REMEMBER_CASES], ids=[c[0] for c in REMEMBER_CASES])
def test_the_exits_given_up_are_remembered_a_while(given_up: list[tuple[str, int, int]],
                                                   want: list[tuple[int, int]]) -> None:
    from vigil.core.events import missing_process
    from vigil.process.hold import ProcessHold

    hold = ProcessHold(_Cache(), SimpleNamespace(missing_info=0), 1, 1)  # type: ignore[arg-type]
    for kind, pid, at in given_up:
        msg = missing_process(pid, "t")
        hold.standin(msg, pid, 5000)
        ev = _event(kind, msg)
        assert hold.take([ev], at, 0) == [] and hold.retry(at, 0, final=True) == [ev]
    assert list(hold.exited) == want


class _Cache:
    def __init__(self) -> None:
        self._by_key: dict[tuple[int, int], Any] = {}

    def by_pid(self, pid: int) -> Any:
        return next((p for k, p in self._by_key.items() if k[0] == pid), None)

    def by_pid_since(self, pid: int, start: int) -> Any:
        return next((p for k, p in self._by_key.items() if k[0] == pid and k[1] >= start), None)


# --event-cache-retries and --event-cache-retry-delay (s), one held event, then loop steps at
# (ns since it was held, steps since): what each retry sends ("" nothing yet, "gave-up"); it is
# given up once both its time (retries x delay, as Tetragon's tries take) and its steps are over
RETRY_CASES = [
    ("time-not-steps", 1, 2, [(3_000_000_000, 1), (3_000_000_001, 2)], ["", "gave-up"]),
    ("steps-not-time", 1, 2, [(100, 5), (1_999_999_999, 50), (2_000_000_000, 51)], ["", "", "gave-up"]),
    ("both-at-once", 1, 2, [(2_000_000_000, 2)], ["gave-up"]),
    ("tetragons-defaults", 15, 2, [(2_000_000_000, 2), (29_999_999_999, 90), (30_000_000_000, 91)],
     ["", "", "gave-up"]),
    ("three-tries-a-second-apart", 3, 1, [(2_999_999_999, 9), (3_000_000_000, 10)], ["", "gave-up"]),
]


def _event(kind: str, msg: Any) -> Any:
    """A policy event, or an exit, made with stand-in `msg`."""
    from vigil.core.events import PolicyEvent, ProcessExit

    return (PolicyEvent("process_kprobe", msg, None, {}, "t", "n") if kind == "policy"
            else ProcessExit(msg, None, (), "", 0, "t", "n"))


@pytest.mark.parametrize("kind", ["policy", "exit"])
@pytest.mark.parametrize("retries,delay,steps,want", [c[1:] for c in RETRY_CASES], ids=[c[0] for c in RETRY_CASES])
def test_a_held_event_is_given_up_after_its_time_and_steps(retries: int, delay: int, steps: list[tuple[int, int]],
                                                           want: list[str], kind: str) -> None:
    from vigil.core.events import missing_process
    from vigil.process.hold import ProcessHold

    counts = SimpleNamespace(missing_info=0)
    hold = ProcessHold(_Cache(), counts, retries, delay)  # type: ignore[arg-type]
    msg = missing_process(300, "t")
    hold.standin(msg, 300, 5000)
    ev = _event(kind, msg)
    assert hold.take([ev], 10, 7) == []
    got = []
    for dt, ds in steps:
        out = hold.retry(10 + dt, 7 + ds)
        got.append("gave-up" if out == [ev] else "" if out == [] else repr(out))
    assert got == want and counts.missing_info == 1 and hold.status()["held_now"] == 0
    assert (hold.status()["held"], hold.status()["given_up"], hold.status()["resolved"]) == (1, 1, 0)


@pytest.mark.parametrize("kind", ["policy", "exit"])
def test_a_full_hold_sends_its_oldest_with_the_stand_in(kind: str) -> None:
    from vigil.core.events import missing_process
    from vigil.process import hold as H

    counts = SimpleNamespace(missing_info=0)
    hold = H.ProcessHold(_Cache(), counts)  # type: ignore[arg-type]
    made = []
    for i in range(H.HOLD_CAPACITY + 2):
        msg = missing_process(1000 + i, "t")
        hold.standin(msg, 1000 + i, 5000)
        made.append(_event(kind, msg))
    sent = hold.take(made, 0, 0)
    assert sent == made[:2] and hold.status()["held_now"] == H.HOLD_CAPACITY and counts.missing_info == 2
    assert (hold.status()["held"], hold.status()["given_up"]) == (H.HOLD_CAPACITY + 2, 2)
    # the rest are all sent, in order, at the stop
    assert hold.retry(1, 1, final=True) == made[2:] and counts.missing_info == H.HOLD_CAPACITY + 2


def test_a_stand_in_whose_event_is_not_in_the_batch_counts_as_sent() -> None:
    """A correlated policy keeps its event (sent later, as it is): the batch has no event of the
    stand-in, which is then counted as an event sent missing its process info."""
    from vigil.core.events import PolicyEvent, missing_process
    from vigil.process.hold import ProcessHold

    counts = SimpleNamespace(missing_info=0)
    hold = ProcessHold(_Cache(), counts)  # type: ignore[arg-type]
    hold.standin(missing_process(300, "t"), 300, 5000)
    other = PolicyEvent("process_kprobe", missing_process(301, "t"), None, {}, "t", "n")
    assert hold.take([other], 0, 0) == [other]
    assert counts.missing_info == 1 and hold.status()["held"] == 0 and not hold.pending


def test_no_retries_hold_nothing() -> None:
    """--event-cache-retries 0: an event made with a stand-in leaves at once, missing its info."""
    from vigil.core.events import PolicyEvent, missing_process
    from vigil.process.hold import ProcessHold

    counts = SimpleNamespace(missing_info=0)
    hold = ProcessHold(_Cache(), counts, 0, 2)  # type: ignore[arg-type]
    msg = missing_process(300, "t")
    hold.standin(msg, 300, 5000)
    ev = PolicyEvent("process_kprobe", msg, None, {}, "t", "n")
    assert hold.take([ev], 10, 7) == [ev] and counts.missing_info == 1 and hold.status()["held"] == 0


@pytest.mark.parametrize("held,at_ns,sent", [
    (1, 1, True),                                    # a small hold: tried at every step
    (64, 1, True),
    (65, 1, False),                                  # a large one: walked at most every 10 ms
    (65, 9_999_999, False),
    (65, 10_000_000, True),
    (4096, 10_000_000, True),
], ids=lambda v: str(v))
def test_a_large_hold_is_walked_at_most_every_ten_ms(held: int, at_ns: int, sent: bool) -> None:
    """A process the cache never gets, firing a policy all the time, fills the hold: walking
    thousands of entries at every loop step would be per-event Python work at every step. The
    first of the held processes arrives just after a walk: a small hold sends its event at the
    next step, a large one at the first step 10 ms after the last walk."""
    from vigil.core.events import PolicyEvent, missing_process
    from vigil.process.hold import ProcessHold

    cache = _Cache()
    hold = ProcessHold(cache, SimpleNamespace(missing_info=0))  # type: ignore[arg-type]
    made = []
    for i in range(held):
        msg = missing_process(1000 + i, "t")
        hold.standin(msg, 1000 + i, 5000 + i)
        made.append(PolicyEvent("process_kprobe", msg, None, {}, "t", "n"))
    assert hold.take(made, 0, 0) == []
    assert hold.retry(0, 1) == []                     # a walk: nothing has arrived yet
    cache._by_key[(1000, 5000)] = SimpleNamespace(msg="proc-1000", parent_key=())
    out = hold.retry(at_ns, 2)
    assert out == ([made[0]] if sent else []) and hold.status()["held_now"] == held - (1 if sent else 0)
    if sent:
        assert made[0].process == "proc-1000"


# pid reuse: an exec (or clone) record of an OLDER image of a pid (older key) read after the
# pid's newer image was cached (another CPU's ring, a record just behind) is recorded, so its
# own events find it, and ended at once (a newer image of its pid means it exec'd or exited);
# it never ends the newer image, which the pid keeps naming. (records, batch 1; events: kind,
# pid, "known"/"stand-in", image; the image the pid names after, and the images ended)
REUSE_CASES = [
    ("in-order", [_exec(100, 4000), _exec(100, 5000)], [("exec", 100, 4000), ("exec", 100, 5000)], 5000, {4000}),
    ("older-exec-late", [_exec(100, 5000), _exec(100, 4000)], [("exec", 100, 5000), ("exec", 100, 4000)],
     5000, {4000}),
    ("older-clone-late", [_exec(50, 1000), _exec(100, 5000, 50, 1000), _clone(100, 4000, 50, 1000)],
     [("exec", 50, 1000), ("exec", 100, 5000)], 5000, {4000}),
    ("older-exec-late-then-the-newers-events", [_exec(100, 5000), _exec(100, 4000), _no_proc(100, 5000, 6000),
                                                _exit(100, 5000, 7000)],
     [("exec", 100, 5000), ("exec", 100, 4000), ("kprobe", 100, "known", 5000), ("exit", 100, "known", 5000)],
     None, {4000, 5000}),
    ("older-exec-late-then-its-own-events", [_exec(100, 5000), _exec(100, 4000), _policy(100, 4000, 4500),
                                             _exit(100, 4000, 4800)],
     [("exec", 100, 5000), ("exec", 100, 4000), ("kprobe", 100, "known", 4000), ("exit", 100, "known", 4000)],
     5000, {4000}),
    # the newer image exited already (the pid names none; its entry is in its grace period):
    # the late older one is still older than it, ended at once, never the pid's live image
    ("newer-exited-then-a-newer-one", [_exec(100, 5000), _exit(100, 5000, 6000), _exec(100, 7000)],
     [("exec", 100, 5000), ("exit", 100, "known", 5000), ("exec", 100, 7000)], 7000, {5000}),
    ("older-exec-late-after-the-newer-exited", [_exec(100, 5000), _exit(100, 5000, 6000), _exec(100, 4000)],
     [("exec", 100, 5000), ("exit", 100, "known", 5000), ("exec", 100, 4000)], None, {4000, 5000}),
    ("older-clone-late-after-the-newer-exited", [_exec(50, 1000), _exec(100, 5000, 50, 1000),
                                                 _exit(100, 5000, 6000), _clone(100, 4000, 50, 1000)],
     [("exec", 50, 1000), ("exec", 100, 5000), ("exit", 100, "known", 5000)], None, {4000, 5000}),
]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("records,want,named,ended", [c[1:] for c in REUSE_CASES], ids=[c[0] for c in REUSE_CASES])
def test_a_late_record_of_an_older_image_leaves_the_newer_one(
        tmp_path: Path, records: list[bytes], want: list[tuple[Any, ...]], named: int | None, ended: set[int],
        compiled: bool) -> None:
    left: list[Any] = []
    events, _, _ = _replay(tmp_path, records, 1, compiled, left)
    shapes = [_shape(e) for e in events]
    assert [s[:len(w)] for s, w in zip(shapes, want)] == want and len(shapes) == len(want), shapes
    cache = left[0]
    cur = cache.by_pid(100)
    assert (cur.key[1] if cur is not None else None) == named
    images = {k[1]: p for k, p in cache._by_key.items() if k[0] == 100}
    assert {t for t, p in images.items() if p.exited} == ended and set(images) == ended | {named} - {None}
    for t in ended:  # released for the GC, not held live by the cache
        assert images[t].refcnt <= 0 and images[t] in cache._pending


# while an exec waits for its parent, every batch goes through the hold: what does not follow
# that exec passes (an event of no process, another process's), what does is held behind it
# (its process's exit, its child's exec). (the event after the held exec; held?)
def _after_held_exec(kind: str) -> Any:
    from vigil.core.events import DictEvent, ProcessExec, ProcessExit, ProcessMsg

    own, child, other = (ProcessMsg("own", 100, parent_exec_id="p"), ProcessMsg("kid", 101, parent_exec_id="own"),
                         ProcessMsg("other", 200, parent_exec_id="p"))
    return {"dict-event": lambda: DictEvent({"rate_limit_info": {}, "time": "t"}),
            "other-process": lambda: _event("policy", other),
            "other-exec": lambda: ProcessExec(other, None, (), "t", "n"),
            "its-exit": lambda: ProcessExit(own, None, (), "", 0, "t", "n"),
            "its-childs-exec": lambda: ProcessExec(child, None, (), "t", "n")}[kind](), own


@pytest.mark.parametrize("kind,held", [("dict-event", False), ("other-process", False), ("other-exec", False),
                                       ("its-exit", True), ("its-childs-exec", True)])
def test_what_follows_a_held_exec(kind: str, held: bool) -> None:
    from vigil.core.events import ProcessExec
    from vigil.process.hold import ProcessHold

    hold = ProcessHold(_Cache(), SimpleNamespace(missing_info=0))  # type: ignore[arg-type]
    ev, own = _after_held_exec(kind)
    exec_ev = ProcessExec(own, None, (), "t", "n")
    hold.parent_missing(own, (50, 1000), exec=True)
    assert hold.take([exec_ev], 0, 0) == [] and hold.waiting == {"own": 1}
    assert hold.take([ev], 1, 1) == ([] if held else [ev])
    # the parent never comes: all leave in order at the stop, nothing waits after
    assert hold.retry(2, 2, final=True) == ([exec_ev, ev] if held else [exec_ev]) and not hold.waiting


# while an exec waits (up to the wait, 30 s by default), every batch goes through take(): only
# the events that follow it (its process's, its descendants' execs and their processes' events)
# are held; the compiled path finds them (fast.hold_follow, _gate's twin) and the others pass
# without a Python step each, the same as the pure-Python loop sends them. (the batch after the
# held exec of "own": kind, exec_id, parent_exec_id; the indices held)
def _ev(kind: str, eid: str = "", peid: str = "") -> Any:
    from vigil.core.events import DictEvent, ProcessExec, ProcessMsg

    msg = ProcessMsg(eid, 1, parent_exec_id=peid)
    return (DictEvent({"rate_limit_info": {}, "time": "t"}) if kind == "dict"
            else ProcessExec(msg, None, (), "t", "n") if kind == "exec" else _event(kind, msg))


FOLLOW_CASES = [
    ("none-follows", [("policy", "a", "p"), ("exec", "b", "a"), ("exit", "a", "p"), ("dict",)], []),
    ("its-exit-and-policy-event", [("policy", "a", "p"), ("policy", "own", "p"), ("exit", "own", "p")], [1, 2]),
    ("its-child-and-grandchild", [("exec", "kid", "own"), ("exec", "x", "y"), ("exec", "grand", "kid"),
                                  ("exit", "grand", "kid"), ("policy", "kid", "own"), ("exit", "x", "y")],
     [0, 2, 3, 4]),
    ("its-own-exec-again", [("exec", "own", "own"), ("policy", "a", "own")], []),
    ("no-exec-id", [("exec", "k", ""), ("policy", "", "own")], []),
    ("empty-batch", [], []),
]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("batch,held", [c[1:] for c in FOLLOW_CASES], ids=[c[0] for c in FOLLOW_CASES])
def test_only_what_follows_a_held_exec_waits(batch: list[tuple[str, ...]], held: list[int], compiled: bool) -> None:
    from vigil.core.events import ProcessExec, ProcessMsg
    from vigil.process.hold import ProcessHold

    with pytest.MonkeyPatch.context() as mp:
        if not compiled:
            mp.setattr(native, "fast", None)
        hold = ProcessHold(_Cache(), SimpleNamespace(missing_info=0))  # type: ignore[arg-type]
        own = ProcessMsg("own", 100, parent_exec_id="p")
        exec_ev = ProcessExec(own, None, (), "t", "n")
        hold.parent_missing(own, (50, 1000), exec=True)
        assert hold.take([exec_ev], 0, 0) == []
        events = [_ev(*spec) for spec in batch]
        gated: list[Any] = []
        gate = hold._gate
        mp.setattr(hold, "_gate", lambda e: gated.append(e) or gate(e))
        sent = hold.take(events, 1, 1)
        assert sent == [e for i, e in enumerate(events) if i not in held]
        # the compiled path steps in Python only through the events it holds
        assert gated == ([events[i] for i in held] if compiled else events)
        assert hold.retry(2, 2, final=True) == [exec_ev] + [events[i] for i in held] and not hold.waiting


# in_init_tree of an exec: pid 1 of its namespace, else its image's before the exec (its pid's),
# else (none) its parent's. A late record of an OLDER image of a pid, read after the newer one
# was cached, has no image before it in the cache (the pid names the newer one): its parent's
# mark, never the newer image's. (records, batch 1; the marks of the pid 100 exec events, in order)
_IN_TREE, _OUT_TREE = _exec(1, 100), _exec(60, 150, 2, 0)  # pid 1 (in its tree); a process outside
INIT_TREE_CASES = [
    ("in-order", [_IN_TREE, _OUT_TREE, _exec(100, 4000, 1, 100), _exec(100, 5000, 60, 150)], [True, True]),
    ("older-late-parent-outside", [_IN_TREE, _OUT_TREE, _exec(100, 5000, 1, 100), _exec(100, 4000, 60, 150)],
     [True, False]),
    ("older-late-parent-inside", [_IN_TREE, _OUT_TREE, _exec(100, 5000, 60, 150), _exec(100, 4000, 1, 100)],
     [False, True]),
]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("records,marks", [c[1:] for c in INIT_TREE_CASES], ids=[c[0] for c in INIT_TREE_CASES])
def test_a_late_older_image_takes_no_mark_from_the_newer(tmp_path: Path, records: list[bytes], marks: list[bool],
                                                          compiled: bool) -> None:
    events, _, _ = _replay(tmp_path, records, 1, compiled)
    got = [e["process_exec"]["process"].get("in_init_tree", False) for e in events
           if "process_exec" in e and e["process_exec"]["process"]["pid"] == 100]
    assert got == marks


# a child cached before its parent (its exec held for that parent, whose record was behind)
# takes its reference on the parent once that comes, as a child cached after it does: the parent
# (exited) stays cached while the child lives, and goes once the child is removed. (records,
# batch 1; whether the child exits too)
REF_CASES = [
    ("in-order", [_exec(50, 1000), _exec(100, 5000, 50, 1000), _exit(50, 1000, 6000)]),
    ("parent-later", [_exec(100, 5000, 50, 1000), _exec(50, 1000), _exit(50, 1000, 6000)]),
    ("parent-in-a-later-batch", [_exec(100, 5000, 50, 1000), _exec(200, 5500), _exec(50, 1000),
                                 _exit(50, 1000, 6000)]),
    ("parent-later-child-exits", [_exec(100, 5000, 50, 1000), _exec(50, 1000), _exit(50, 1000, 6000),
                                  _exit(100, 5000, 7000)]),
]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("records", [c[1] for c in REF_CASES], ids=[c[0] for c in REF_CASES])
def test_a_child_cached_first_holds_its_parent_once_it_comes(tmp_path: Path, records: list[bytes],
                                                            compiled: bool) -> None:
    left: list[Any] = []
    _replay(tmp_path, records, 1, compiled, left)
    cache = left[0]
    parent, child = cache.get((50, 1000)), cache.get((100, 5000))
    child_lives = not child.exited
    # (a child holds its parent until it is removed, after its grace period)
    assert child.holds_parent and parent.exited and parent.refcnt == 1
    later = max([p.removal_at for p in cache._pending] + [0]) + 1
    cache.gc(later)
    cache.gc(later + 2 * cache.grace_ns)
    assert (cache.get((50, 1000)) is parent) == child_lives and (cache.get((100, 5000)) is child) == child_lives


@pytest.mark.parametrize("children,removed", [(1, 1), (2, 1), (3, 2)], ids=lambda v: str(v))
def test_a_child_removed_before_its_parent_comes_takes_no_reference(children: int, removed: int) -> None:
    """(the cache alone) children whose parent has not come; the first `removed` are removed:
    the parent, cached after, is held by the others alone, and nothing is remembered of them."""
    from vigil.core.events import ProcessMsg
    from vigil.process.cache import ProcessCache
    from vigil.process.model import Process

    cache = ProcessCache(grace_ns=10)
    kids = [Process(f"c{i}", (100 + i, 5000), "p", (50, 1000), 50, ProcessMsg(f"c{i}", 100 + i))
            for i in range(children)]
    for c in kids:
        cache.add(c, 0)
    for c in kids[:removed]:
        cache.exit(c, 1)
    assert cache.gc(100) == removed and all(cache.get(c.key) is None for c in kids[:removed])
    parent = Process("p", (50, 1000), "", None, 1, ProcessMsg("p", 50))
    cache.add(parent, 200)
    assert parent.refcnt == 1 + children - removed and not cache._orphans
    assert [c.holds_parent for c in kids] == [False] * removed + [True] * (children - removed)
    cache.exit(parent, 300)
    for c in kids[removed:]:
        cache.exit(c, 300)
    cache.gc(400)
    assert cache.gc(1000) >= (1 if children > removed else 0) and len(cache) == 0


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_children_evicted_before_their_parent_comes_take_no_reference(tmp_path: Path, compiled: bool) -> None:
    """70 children whose parent's exec record is behind, in a cache of 64: the oldest are
    evicted (removed) while they wait; once the parent comes, the children still cached hold it,
    the evicted ones do not (the compiled eviction forgets them as ProcessCache._remove does)."""
    from vigil.agent import agent as agent_mod
    from vigil.process.cache import ProcessCache

    records = [_exec(1000 + i, 5000 + i, 50, 1000) for i in range(70)] + [_exec(50, 1000)]
    left: list[Any] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(agent_mod, "ProcessCache", lambda _size, grace: ProcessCache(64, grace))
        _replay(tmp_path, records, 7, compiled, left)
    cache = left[0]
    parent = cache.get((50, 1000))
    kids = [p for p in cache._by_key.values() if p.parent_key == (50, 1000)]
    assert len(cache) == 64 and len(kids) == 63 and cache.evictions == 7
    assert all(c.holds_parent for c in kids) and parent.refcnt == 1 + len(kids) and not cache._orphans
