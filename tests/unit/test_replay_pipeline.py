"""Decoding, cache and export driven by replayed records: no kernel needed."""
from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from vigil.agent.agent import Agent
from vigil.agent.config import AgentConfig
from vigil.events import records as R
from vigil.events.source import ReplaySource, read_recording, write_recording
from vigil.events.synth import exit_record, process_record
from vigil.kernel.namespaces import NS_NAMES


def run_replay(tmp_path: Path, records: list[bytes], **cfg) -> list[dict]:
    out = tmp_path / "events.log"
    agent = Agent(AgentConfig(export_filename=str(out), server_address="", node_name="n1", **cfg),
                  source=ReplaySource(records, batch=7))
    agent.start()
    agent.run()
    agent.close()
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def test_exec_exit_with_parent_enrichment(tmp_path: Path):
    recs = [
        process_record(pid=100, ktime=1000, binary="/usr/bin/bash", args=["-c", "x y"], cwd="/"),
        process_record(op=R.OP_CLONE, pid=101, ktime=2000, ppid=100, pktime=1000),
        process_record(pid=101, ktime=3000, ppid=100, pktime=1000, binary="/usr/bin/ls", args=["-l", "a b"]),
        exit_record(pid=101, ktime=4000, exec_ktime=3000, code=(2 << 8)),
        exit_record(pid=100, ktime=5000, exec_ktime=1000, code=9),
    ]
    events = run_replay(tmp_path, recs)
    kinds = [next(iter(e)) for e in events]
    assert kinds == ["process_exec", "process_exec", "process_exit", "process_exit"]
    bash = events[0]["process_exec"]["process"]
    assert bash["flags"] == "execve miss rootcwd"
    assert bash["arguments"] == '-c "x y"'
    ls = events[1]["process_exec"]
    assert ls["process"]["binary"] == "/usr/bin/ls"
    assert ls["process"]["arguments"] == '-l "a b"'
    assert ls["parent"]["exec_id"] == bash["exec_id"]
    assert base64.b64decode(ls["process"]["exec_id"]) == b"n1:3000:101"
    assert events[2]["process_exit"]["status"] == 2 and "signal" not in events[2]["process_exit"]
    assert events[3]["process_exit"]["signal"] == "SIGKILL"
    for e in events:
        assert e["node_name"] == "n1" and e["time"].endswith("Z")


def test_fork_only_child_exit_uses_clone_entry(tmp_path: Path):
    recs = [
        process_record(pid=10, ktime=1, binary="/bin/sh"),
        process_record(op=R.OP_CLONE, pid=11, ktime=2, ppid=10, pktime=1),
        exit_record(pid=11, ktime=3, exec_ktime=2),
    ]
    events = run_replay(tmp_path, recs)
    x = events[1]["process_exit"]
    assert x["process"]["flags"] == "clone" and x["process"]["binary"] == "/bin/sh"
    assert x["parent"]["pid"] == 10


# an exit of a process the cache never saw, by the kernel's key of it (exec ktime; 0: the
# kernel had no entry) -> the exit's process, as Tetragon's GetProcessExit makes it: only pid
# and start_time (its key's ktime), no exec_id, flags or tid, and no parent; with no kernel
# entry, no exit at all (Tetragon's exit hook sends none then). START: the start_time of an
# exec at ktime 4000 (the first event)
@pytest.mark.parametrize("exec_ktime, want", [
    (4000, {"process": {"pid": 77, "start_time": "START"}, "status": 3}),
    (0, None),
], ids=["kernel-key", "no-kernel-entry"])
def test_exit_of_a_process_the_cache_never_saw(tmp_path: Path, exec_ktime: int, want: dict | None):
    events = run_replay(tmp_path, [process_record(pid=5, ktime=4000),
                                   exit_record(pid=77, ktime=5000, exec_ktime=exec_ktime, code=3 << 8)])
    start = events[0]["process_exec"]["process"]["start_time"]
    got = [e["process_exit"] for e in events if "process_exit" in e]
    assert all(x.pop("time") == e["time"] for x, e in zip(got, events[1:]))  # the exit's own time
    if want is None:
        assert got == []
    else:
        assert got == [{**want, "process": {**want["process"], "start_time": start}}]


def test_bad_records_are_counted_not_fatal(tmp_path: Path):
    out = tmp_path / "e.log"
    agent = Agent(AgentConfig(export_filename=str(out), server_address="", node_name="n"),
                  source=ReplaySource([b"\x63junk", b"\x01short", process_record(pid=1, ktime=1)]))
    agent.start()
    agent.run()
    assert agent.pipeline.decode_errors == 2
    assert agent.status()["events"] == {"process_exec": 1}
    agent.close()


def test_recording_round_trip(tmp_path: Path):
    recs = [process_record(pid=i, ktime=i) for i in range(1, 50)]
    path = tmp_path / "r.rec"
    write_recording(str(path), recs)
    assert read_recording(str(path)) == recs
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_recording(str(path))


def test_container_id_from_cgroup_name(tmp_path: Path):
    cid = "a" * 64
    events = run_replay(tmp_path, [process_record(pid=5, ktime=5, cgroup_name=f"cri-containerd-{cid}.scope")])
    assert events[0]["process_exec"]["process"]["docker"] == cid[:31]


def test_process_json_types_follow_tetragon(tmp_path: Path):
    events = run_replay(tmp_path, [process_record(pid=5, ktime=5)])
    p = events[0]["process_exec"]["process"]
    assert isinstance(p["pid"], int) and isinstance(p["uid"], int) and isinstance(p["auid"], int)
    assert isinstance(p["exec_id"], str) and isinstance(p["start_time"], str)
    assert set(p["ns"]) == set(NS_NAMES)
    assert all(isinstance(v["inum"], int) for v in p["ns"].values())
    assert p["cap"]["effective"][1] == "DAC_OVERRIDE"


def test_export_lines_equal_the_reference_encoding_of_published_events(tmp_path: Path):
    """Cached encodings (processes, parents, shared sub-objects) must not change a byte:
    every line equals the reference encoding (the event's dict view through orjson), and
    the dict view is plain JSON."""
    from vigil.export.codec import encode_reference
    from vigil.export.dicts import event_dict

    recs = [process_record(pid=1, ktime=1, binary="/bin/sh")]
    for i in range(2, 40):
        recs.append(process_record(pid=i, ktime=i, ppid=1, pktime=1, uid=i % 2 * 1000, caps=0 if i % 2 else 0x1FF,
                                   args=["x", "a b"] if i % 3 else None))
        if i % 4 == 0:
            recs.append(process_record(op=R.OP_CLONE, pid=i + 100, ktime=i + 100, ppid=i, pktime=i))
            recs.append(exit_record(pid=i + 100, ktime=i + 101, exec_ktime=i + 100))
        recs.append(exit_record(pid=i, ktime=i + 200, exec_ktime=i, code=i % 3))
    out = tmp_path / "events.log"
    agent = Agent(AgentConfig(export_filename=str(out), server_address="", node_name="n1", enable_ancestors=True),
                  source=ReplaySource(recs, batch=5))
    sub = agent.subscribe()
    agent.start()
    agent.run()
    agent.close()
    published = sub.get_batch(0, max_items=10_000)
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == len(published) == 38 + 38 + 10
    for line, e in zip(lines, published):
        d = event_dict(e)
        assert line == encode_reference(e) == orjson.dumps(orjson.loads(orjson.dumps(d))) + b"\n"
    assert any("parent" in event_dict(e).get("process_exit", {}) for e in published)


def test_event_loop_thread_takes_batch_scheduling_alone():
    """The live loop's thread goes to SCHED_BATCH (no wakeup preemption of the workload);
    the thread that started it, and so every other thread, keeps its policy."""
    import os
    import threading

    from vigil.agent.pipeline import batch_scheduling

    seen: dict[str, int | bool] = {}

    def loop() -> None:
        seen["set"] = batch_scheduling()
        seen["policy"] = os.sched_getscheduler(0)

    t = threading.Thread(target=loop)
    t.start()
    t.join()
    assert seen == {"set": True, "policy": os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


@pytest.mark.parametrize("base, steps, raised", [(0, 4, -4), (5, 4, 1), (-18, 4, -20), (3, 0, 3)])
def test_event_loop_priority_boost_raises_its_thread_alone(base: int, steps: int, raised: int):
    """boost_priority raises the calling thread `steps` nice levels above its own (never past
    -20) and says what it had; the thread that started it keeps its nice; restore_priority
    puts it back. 0 steps changes nothing."""
    import os
    import threading

    from vigil.agent.pipeline import boost_priority, restore_priority

    seen: dict[str, int | None] = {}

    def loop() -> None:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, base)
        seen["before"] = boost_priority(steps)
        seen["raised"] = os.getpriority(os.PRIO_PROCESS, tid)
        if seen["before"] is not None:
            restore_priority(seen["before"])
        seen["restored"] = os.getpriority(os.PRIO_PROCESS, tid)

    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=loop)
    t.start()
    t.join()
    assert seen == {"before": base if steps else None, "raised": raised, "restored": base}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice


def test_a_replay_runs_its_loop_raised_and_gives_the_thread_back(tmp_path: Path):
    """A replay's loop runs on its caller's thread: raised by the configured boost while it
    runs (seen from a sink, on that thread), back to the caller's nice after."""
    import os
    import threading

    tid = threading.get_native_id()
    nice = os.getpriority(os.PRIO_PROCESS, tid)
    recs = [process_record(pid=100, ktime=1000, binary="/usr/bin/true"), exit_record(pid=100, ktime=2000, exec_ktime=1000)]
    for boost, expected in ((4, max(-20, nice - 4)), (0, nice)):
        seen = _nice_a_sink_sees(tmp_path, ReplaySource(recs), event_loop_priority_boost=boost)
        assert seen and set(seen) == {expected}, (boost, seen)
        assert os.getpriority(os.PRIO_PROCESS, tid) == nice


def _nice_a_sink_sees(tmp_path: Path, source: ReplaySource, **cfg) -> list[int]:
    """A replay of `source` run on this thread: the nice of this thread (the replay's loop) at
    each batch a sink is given."""
    import os
    import threading

    tid = threading.get_native_id()
    seen: list[int] = []
    agent = Agent(AgentConfig(export_filename=str(tmp_path / "out.json"), server_address="", **cfg), source=source)
    agent.pipeline.sinks.append(lambda evs: seen.append(os.getpriority(os.PRIO_PROCESS, tid)))
    agent.start()
    try:
        agent.run()
    finally:
        agent.close()
    return seen


def _policy_and_nice() -> tuple[int, int]:
    """The calling thread's scheduling policy and nice, as /proc shows them (stat fields 41, 19)."""
    stat = Path("/proc/thread-self/stat").read_text()
    rest = stat[stat.rindex(")") + 2:].split()  # fields 3.. (comm may hold spaces)
    return int(rest[41 - 3]), int(rest[19 - 3])


B, N = 3, 0  # SCHED_BATCH, SCHED_NORMAL (os.SCHED_OTHER) as /proc shows them


@pytest.mark.parametrize("live, boost, base, drains, expected", [
    # records per drain -> (policy, nice) after each drain: the live loop (SCHED_BATCH, 4 levels up)
    (True, 4, 0, [0, 10, 255, 1023], [(B, -4)] * 4),                    # keeping up, or not far behind
    (True, 4, 0, [1024], [(N, -10)]),                                   # behind: normal, 10 levels up
    (True, 4, 0, [4096, 1023, 256], [(N, -10)] * 3),                    # in between: stays as it was
    (True, 4, 0, [4096, 255], [(N, -10), (B, -4)]),                     # caught up: back
    (True, 4, 0, [2000, 0, 5000, 100], [(N, -10), (B, -4), (N, -10), (B, -4)]),
    (True, 4, 15, [4096, 0], [(N, 5), (B, 11)]),                        # from the agent's own nice
    (True, 4, -15, [4096, 0], [(N, -20), (B, -19)]),                    # never past -20
    (True, 12, 0, [4096, 0], [(N, -12), (B, -12)]),                     # a larger configured boost holds
    (True, 0, 0, [4096, 0], [(N, 0), (B, 0)]),                          # --event-loop-priority-boost 0: nice untouched
    (False, 4, 0, [4096, 0], [(N, -10), (N, -4)]),                      # a replay: its caller's policy
], ids=["keeping-up", "behind", "in-between", "caught-up", "back-and-forth", "agent-nice-15", "at-most-minus-20",
        "boost-12", "boost-0", "replay"])
def test_the_loop_is_scheduled_by_how_far_behind_it_is(live: bool, boost: int, base: int, drains: list[int],
                                                       expected: list[tuple[int, int]]):
    """LoopScheduling, on a thread of its own as the loop: the policy and nice /proc shows after
    each drain; stop() gives the thread its nice back. The thread that started it keeps its own."""
    import os
    import threading

    from vigil.agent.pipeline import LoopScheduling

    seen: list[tuple[int, int]] = []
    after: list[int] = []

    def loop() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), base)
        sched = LoopScheduling(boost, batch=live)
        sched.start()
        for n in drains:
            sched.drained(n)
            seen.append(_policy_and_nice())
        sched.stop()
        after.append(_policy_and_nice()[1])

    main = _policy_and_nice()
    t = threading.Thread(target=loop)
    t.start()
    t.join()
    assert seen == expected
    assert after == [base]
    assert _policy_and_nice() == main


@pytest.mark.parametrize("batch, expected_steps", [(1024, 10), (1023, 4), (5, 4)])
def test_a_replay_behind_runs_its_loop_raised_further(tmp_path: Path, batch: int, expected_steps: int):
    """The loop looks at every drain: a replay drained 1024 records at a time runs 10 nice
    levels up (seen from a sink, on the loop's thread), smaller drains the configured 4; the
    caller's nice is back after."""
    import os
    import threading

    tid = threading.get_native_id()
    nice = os.getpriority(os.PRIO_PROCESS, tid)
    recs = [process_record(pid=1000 + i, ktime=1000 + i, binary="/bin/true") for i in range(2048)]
    seen = _nice_a_sink_sees(tmp_path, ReplaySource(recs, batch=batch))
    assert seen and set(seen) == {max(-20, nice - expected_steps)}, seen
    assert os.getpriority(os.PRIO_PROCESS, tid) == nice


def test_a_closed_agent_and_its_process_cache_are_freed(tmp_path: Path):
    """start() freezes the agent's objects for the GC; close() must thaw them, or a process that
    goes on after an agent (tests, benches) keeps that agent's whole process cache"""
    import gc
    import weakref

    recs = [process_record(pid=100 + i, ktime=1000 + i, binary="/bin/true") for i in range(50)]
    agent = Agent(AgentConfig(export_filename=str(tmp_path / "e.log"), server_address="", node_name="n1"),
                  source=ReplaySource(recs))
    agent.start()
    agent.run()
    assert len(agent.cache) >= 50
    gone = weakref.ref(agent.cache)
    agent.close()
    del agent
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("sizes, trims", [
    ([100, 5000, 9000, 9000, 100], 1),            # a churn ended: trimmed once
    ([100, 5000, 9000, 4000, 100, 50], 1),        # still shrinking after the trim: not again
    ([65536, 65536, 65536, 65536], 0),            # a churn at capacity reuses the heap: never
    ([3000, 10], 0),                              # fewer than 4,096 processes gone
    ([20000, 12000, 11000], 0),                   # lost less than half of its peak
    ([9000, 100, 9000, 100], 2),                  # two churns, two trims
])
def test_heap_is_trimmed_once_per_large_cache_shrink(monkeypatch: pytest.MonkeyPatch, sizes, trims):
    from vigil.agent import pipeline as P

    calls: list[int] = []
    monkeypatch.setattr(P, "release_free_heap", lambda: calls.append(1) or True)
    pl = P.Pipeline.__new__(P.Pipeline)
    pl.cache_peak, pl.heap_trims = 0, 0
    for n in sizes:
        pl._trim_heap_after_shrink(n)
    assert len(calls) == trims == pl.heap_trims
