"""Metrics of what the event loop meets in replayed records (no kernel needed): records no
handler can take (tetragon_handler_errors_total), exits of processes the cache never had
(tetragon_process_cache_misses_total, tetragon_events_missing_process_info_total), and the
time of the last exported event (tetragon_events_last_exported_timestamp)."""
from __future__ import annotations

import calendar
import time
from array import array
from pathlib import Path
from typing import Any

import orjson
import pytest

from vigil.agent.agent import Agent
from vigil.agent.config import AgentConfig
from vigil.agent.metrics import AgentCollector
from vigil.events import records as R
from vigil.events.source import ReplaySource
from vigil.events.synth import exit_record, generic_record, process_record

EXEC = process_record(pid=100, ktime=1000, binary="/usr/bin/bash")
GONE_HOOK = generic_record(hook_id=4000, pid=100, ktime=2000, exec_ktime=1000)


def _netdeny_record(rule_id: int) -> bytes:
    from vigil.enforce.netdeny import MSG, VIGIL_OP_NETDENY

    fields = [0] * len(MSG.unpack(bytes(MSG.size)))
    fields[0], fields[4], fields[5], fields[7], fields[8], fields[9] = VIGIL_OP_NETDENY, 2000, 100, 1000, 100, rule_id
    fields[11], fields[18], fields[19] = 2, b"\x7f\0\0\x01" + bytes(12), b"curl"  # AF_INET 127.0.0.1
    return MSG.pack(*fields)


GONE_RULE = _netdeny_record(77)


def replay(tmp_path: Path, records: list[bytes], **cfg: Any) -> tuple[dict[str, dict[tuple[str, ...], float]], list[Any]]:
    """Every sample of the agent's metrics after the replay (family -> label values -> value),
    and the exported events."""
    out = tmp_path / "events.log"
    agent = Agent(AgentConfig(export_filename=str(out), server_address="", node_name="n1", **cfg),
                  source=ReplaySource(records, batch=7))
    agent.start()
    try:
        agent.run()
        got: dict[str, dict[tuple[str, ...], float]] = {}
        for fam in AgentCollector(agent.control).collect():
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                got.setdefault(s.name, {})[tuple(f"{k}={v}" for k, v in sorted(s.labels.items()))] = s.value
    finally:
        agent.close()
    return got, [orjson.loads(line) for line in out.read_bytes().splitlines()]


# records, then the non-zero tetragon_handler_errors_total series ((opcode, error) -> count):
# Tetragon's opcode numbers (5 execve, 7 exit) and errors
@pytest.mark.parametrize("records, want", [
    ([EXEC], {}),
    ([b"", EXEC], {("0", "perf_empty_data"): 1}),
    ([bytes([0xEE]) + b"\0" * 31, EXEC, bytes([0xEE])], {("238", "unknown_opcode"): 2}),
    ([EXEC[:20], EXEC], {("5", "event_handler_failed"): 1}),
    ([exit_record(pid=1, ktime=5, exec_ktime=1)[:12], EXEC[:9]], {("7", "event_handler_failed"): 1,
                                                                  ("5", "event_handler_failed"): 1}),
    # records of a policy deleted meanwhile (no loaded hook or rule has their id): lost, and
    # counted as Tetragon's generic handler counts a record of an unknown id
    ([EXEC, GONE_HOOK, GONE_HOOK], {("13", "event_handler_failed"): 2}),
    ([EXEC, GONE_RULE], {("13", "event_handler_failed"): 1}),
], ids=["none", "empty", "unknown-op", "short-exec", "short-exit-and-exec", "gone-hook", "gone-netdeny-rule"])
def test_handler_errors_by_tetragon_opcode_and_error(tmp_path: Path, records: list[bytes],
                                                     want: dict[tuple[str, str], int]):
    got, _ = replay(tmp_path, records)
    series = {(dict(v.split("=", 1) for v in k)["opcode"], dict(v.split("=", 1) for v in k)["error"]): n
              for k, n in got["tetragon_handler_errors_total"].items()}
    # every opcode the loop handles is listed (at 0 until it fails), as Tetragon initialises them
    assert {("5", "event_handler_failed"), ("7", "event_handler_failed"), ("23", "event_handler_failed"),
            ("0", "unknown_opcode"), ("0", "perf_empty_data")} <= set(series)
    assert {k: n for k, n in series.items() if n} == want


# records, then (process_cache_misses{operation="get"}, events_missing_process_info); EXEC's
# parent (pid 1) is not in the cache (no /proc scan here): one miss wherever EXEC comes
@pytest.mark.parametrize("records, want", [
    ([EXEC, exit_record(pid=100, ktime=2000, exec_ktime=1000)], (1, 0)),
    ([EXEC, exit_record(pid=101, ktime=2000, exec_ktime=1500)], (2, 1)),
    ([exit_record(pid=7, ktime=5, exec_ktime=1), exit_record(pid=8, ktime=6, exec_ktime=2)], (2, 2)),
    # a clone of a process the cache does not have: its parent's lookup missed (no event is sent)
    ([process_record(op=R.OP_CLONE, pid=201, ktime=3000, ppid=200, pktime=2500)], (1, 0)),
    ([EXEC, process_record(op=R.OP_CLONE, pid=101, ktime=3000, ppid=100, pktime=1000)], (1, 0)),
    # an exec of a process the cache does not have: its parent's lookup missed (the event is
    # sent, without parent), by its key or by pid
    ([EXEC, process_record(pid=102, ktime=2000, ppid=100, pktime=1000)], (1, 0)),
    ([EXEC, process_record(pid=102, ktime=2000, ppid=300, pktime=1500)], (2, 0)),
    ([EXEC, process_record(pid=102, ktime=2000, ppid=300)], (2, 0)),
], ids=["known", "unknown", "two-unknown", "clone-of-unknown", "clone-of-known", "exec-of-known",
        "exec-of-unknown", "exec-of-unknown-pid"])
def test_lookups_of_processes_the_cache_lacks_are_misses(tmp_path: Path, records: list[bytes],
                                                         want: tuple[int, int]):
    got, _ = replay(tmp_path, records)
    assert (got["tetragon_process_cache_misses_total"][("operation=get",)],
            got["tetragon_events_missing_process_info_total"][()]) == want
    assert got["tetragon_process_cache_early_deletions_total"][()] == 0


def test_last_exported_timestamp_is_the_last_exported_events_time(tmp_path: Path):
    got, events = replay(tmp_path, [EXEC, exit_record(pid=100, ktime=2_000_000_000, exec_ktime=1000)])
    last = events[-1]["time"]
    want = calendar.timegm(time.strptime(last[:19], "%Y-%m-%dT%H:%M:%S"))
    assert got["tetragon_events_last_exported_timestamp"][()] == want > 0
    assert got["tetragon_events_exported_total"][()] == len(events) == 2


# PolicyEvents' lookups of an event's process (handle(), netdeny, fanotify, loader events, the
# compiled handler's stand-in: by pid and exec ktime) -> (misses, missing process info, the
# stand-in's (pid, start_time, flags, tid) or None: the cached process's): Tetragon's
# getProcessParent's stand-in, "unknown" when a kernel hook's key has no exec ktime
@pytest.mark.parametrize("lookup, want", [
    (lambda pe: pe.processes(100, 1000), (0, 0, None)),        # cached: by its key
    (lambda pe: pe.processes(100, 0), (0, 0, None)),           # cached: by pid
    (lambda pe: pe.processes(101, 1500), (1, 1, (101, "1500", "", None))),         # not cached
    (lambda pe: pe.processes(101, 0), (1, 1, (101, "", "unknown", None))),
    (lambda pe: pe.processes(101, 0, kernel=False), (1, 1, (101, "", "", None))),  # loader, fanotify
    (lambda pe: pe.processes(101, 1500, kernel=False), (1, 1, (101, "1500", "", None))),
], ids=["key", "pid", "unknown-key", "unknown-pid", "unknown-pid-loader", "unknown-key-loader"])
def test_policy_event_processes_the_cache_lacks_are_counted(lookup: Any, want: tuple[int, int, Any]):
    from vigil.agent.policy_events import PolicyEvents
    from vigil.core.events import ProcessMsg
    from vigil.process.cache import ProcessCache
    from vigil.process.model import Process

    cache = ProcessCache()
    cache.add(Process("e100", (100, 1000), "", None, 1, ProcessMsg("e100", 100)), 0)
    builder = type("B", (), {"cache": cache, "missing_info": 0, "ktime_rfc3339": staticmethod(str)})()
    pe = PolicyEvents(builder, lambda e: None, {}, None)  # type: ignore[arg-type]
    msg, _parent = lookup(pe)
    stand_in = (msg.pid, msg.start_time, msg.flags, msg.tid) if msg.exec_id == "" else None
    assert (cache.misses, builder.missing_info, stand_in) == want


def data_record(ev_ktime: int, tid: int = 9, slot: int = 0, chunk: bytes = b"abc") -> bytes:
    from vigil.kernel import policy_layout as L

    h = L.MsgDataHdr(op=12, ev_ktime=ev_ktime, tid=tid, slot=slot, offset=0, len=len(chunk))
    h.size = len(bytes(h)) + len(chunk)
    return bytes(h) + chunk


# maxData chunks whose events never came (distinct events), then tetragon_data_cache_
# (size, capacity, evictions_total): the oldest go once the cache is full
@pytest.mark.parametrize("chunks, want", [
    (0, (0, 4096, 0)),
    (3, (3, 4096, 0)),
    (4096, (4096, 4096, 0)),
    (4100, (4096, 4096, 4)),
])
def test_data_cache_size_capacity_and_evictions(tmp_path: Path, chunks: int, want: tuple[int, int, int]):
    got, _ = replay(tmp_path, [data_record(1000 + i) for i in range(chunks)] + [EXEC])
    assert (got["tetragon_data_cache_size"][()], got["tetragon_data_cache_capacity"][()],
            got["tetragon_data_cache_evictions_total"][()]) == want
    assert got["tetragon_handler_errors_total"][("error=event_handler_failed", "opcode=24")] == 0


# Tetragon's families present with no gRPC server, no Kubernetes, no policy (Tetragon registers
# them all at start): each name -> its samples' label names
ALWAYS = {
    "tetragon_notify_overflowed_events_total": set(),
    "tetragon_handler_errors_total": {"opcode", "error"},
    "tetragon_events_missing_process_info_total": set(),
    "tetragon_events_last_exported_timestamp": set(),
    "tetragon_process_cache_misses_total": {"operation"},
    "tetragon_process_cache_early_deletions_total": set(),
    "tetragon_event_cache_entries": set(),
    "tetragon_event_cache_inserts_total": set(),
    "tetragon_event_cache_fetch_failures_total": {"entry_type"},
    "tetragon_data_cache_size": set(),
    "tetragon_data_cache_capacity": set(),
    "tetragon_data_cache_evictions_total": set(),
    "tetragon_data_cache_misses_total": {"operation"},
    "tetragon_tracingpolicy_loaded": {"state"},
    "tetragon_msg_op_total": {"msg_op"},
    "tetragon_handling_latency_count": {"op"},
    "tetragon_handling_latency_bucket": {"op", "le"},
    "tetragon_map_errors_delete_total": {"map"},
}


@pytest.mark.parametrize("name, labels", ALWAYS.items(), ids=ALWAYS.keys())
def test_tetragon_families_present_on_a_bare_agent(tmp_path: Path, name: str, labels: set[str]):
    got, _ = replay(tmp_path, [EXEC])
    assert got.get(name), f"{name} missing"
    assert all({kv.split("=", 1)[0] for kv in k} == labels for k in got[name]), got[name]


def execs(n: int, exit_: bool = False) -> list[bytes]:
    out = [process_record(pid=300 + i, ktime=10_000 + i) for i in range(n)]
    return out + ([exit_record(pid=300 + i, ktime=20_000 + i, exec_ktime=10_000 + i) for i in range(n)] if exit_ else [])


# records, process cache size, then (tetragon_process_cache_evictions_total: every entry that
# left, as Tetragon's LRU counts them; tetragon_process_cache_capacity_evictions_total: for space)
@pytest.mark.parametrize("records, size, want", [
    (execs(3), 64, (0, 0)),
    (execs(3, exit_=True), 64, (3, 0)),    # removed by the GC (no grace here)
    (execs(66), 64, (2, 2)),               # evicted for space
    (execs(66, exit_=True), 64, (66, 2)),
], ids=["live", "exited", "over-capacity", "both"])
def test_process_cache_evictions_count_every_entry_that_left(tmp_path: Path, records: list[bytes], size: int,
                                                             want: tuple[int, int]):
    got, _ = replay(tmp_path, records, process_cache_size=size, process_cache_gc_interval=0.0)
    assert (got["tetragon_process_cache_evictions_total"][()],
            got["tetragon_process_cache_capacity_evictions_total"][()]) == want


def _series(got: dict[str, dict[tuple[str, ...], float]], name: str, label: str) -> dict[str, float]:
    return {dict(v.split("=", 1) for v in k)[label]: n for k, n in got.get(name, {}).items()}


# records, then the non-zero tetragon_msg_op_total series (Tetragon's opcode -> records): every
# record read counts, handled or not (an unknown op by its number, an empty record as 0)
@pytest.mark.parametrize("records, want", [
    ([EXEC], {"5": 1}),
    (execs(3, exit_=True), {"5": 3, "7": 3}),
    ([EXEC, process_record(op=R.OP_CLONE, pid=101, ktime=3000, ppid=100, pktime=1000)], {"5": 1, "23": 1}),
    ([b"", EXEC, EXEC[:20]], {"0": 1, "5": 2}),
    ([bytes([0xEE]) + b"\0" * 31, EXEC], {"238": 1, "5": 1}),
], ids=["exec", "execs-and-exits", "clone", "empty-and-short", "unknown-op"])
def test_msg_op_total_and_handling_latency_count_records_by_opcode(tmp_path: Path, records: list[bytes],
                                                                  want: dict[str, int]):
    got, _ = replay(tmp_path, records)
    ops = _series(got, "tetragon_msg_op_total", "msg_op")
    # every opcode the loop handles is listed (at 0 until a record comes), as Tetragon initialises them
    assert {"5", "7", "23", "13", "24", "26"} <= set(ops)
    assert {k: n for k, n in ops.items() if n} == want
    # one observation per record, in the histogram of its opcode; Tetragon's buckets (microseconds)
    counts = _series(got, "tetragon_handling_latency_count", "op")
    assert {k: n for k, n in counts.items() if n} == want
    les = {dict(v.split("=", 1) for v in k)["le"] for k in got["tetragon_handling_latency_bucket"]}
    assert les == {"50", "100", "500", "1000", "10000", "100000", "+Inf"}  # as Tetragon (Go) writes them
    sums = _series(got, "tetragon_handling_latency_sum", "op")
    assert all(sums[op] > 0 for op in want), sums


# a batch's records (ops), its handling time, then the bucket (upper bound, microseconds) each
# record is observed in: the batch's time per record
@pytest.mark.parametrize("ops, elapsed_us, bucket", [
    ([1, 1, 3, 3], 4 * 10, 50.0),
    ([1, 1, 3, 3], 4 * 50, 50.0),        # a bound holds its own value (le)
    ([1, 1, 3, 3], 4 * 51, 100.0),
    ([1], 700, 1000.0),
    ([10] * 8, 8 * 20_000, 100000.0),
    ([1, 10], 2 * 200_000, float("inf")),
], ids=["fast", "on-bound", "above-bound", "one", "policy", "slow"])
@pytest.mark.parametrize("count", ["py_count_ops", "_count_ops"], ids=["python", "compiled"])
def test_handling_latency_observes_each_record_at_its_batchs_time_per_record(ops: list[int], elapsed_us: int,
                                                                             bucket: float, count: str):
    from types import SimpleNamespace

    from vigil.agent.pipeline import LATENCY_BUCKETS_US, Pipeline

    p = SimpleNamespace(msg_ops={}, latency={})
    recs = [bytes([op]) + b"\0" * 7 for op in ops]
    getattr(Pipeline, count)(p, recs, elapsed_us * 1000)
    want = {op: ops.count(op) for op in set(ops)}
    assert p.msg_ops == want
    i = (*LATENCY_BUCKETS_US, float("inf")).index(bucket)
    for op, n in want.items():
        buckets, total = p.latency[op]
        assert buckets == [n if j == i else 0 for j in range(len(LATENCY_BUCKETS_US) + 1)]
        assert total[0] == pytest.approx(elapsed_us / len(ops) * n)


# batches of records (their ops; -1: an empty record), each with its handling time (ns), and
# the handler time samples (op -> (ns, calls)) the loop had taken before the first one
@pytest.mark.parametrize("batches, sampled", [
    ([([1, 1, 3, 3], 40_000)], {}),                                      # no sample: the batch's mean
    ([([1, 3, 1, 3, 2], 123_457)], {1: (9_000, 3), 3: (40, 7)}),          # both sampled, one not
    ([([3, 1], 1)], {1: (0, 1)}),                                          # a sample of 0 ns counts as 1
    ([([7] * 9 + [1], 5_000_000)], {7: (10**9, 4097), 1: (77, 4096)}),   # past _SAMPLES_KEPT: halved
    ([([-1, 1, -1, 10], 999)], {1: (5, 1)}),                               # empty records (op -1)
    ([([1, 3], 10_000), ([3, 5, 1], 700_001), ([10] * 4, 80_000_000)],
     {1: (120_000, 9), 3: (1_000, 13)}),                                   # buckets and sums add up
    ([([255, 0, 255], 3_333_333)], {0: (11, 2), 255: (12_345, 5)}),
    ([([], 5)], {1: (3, 1)}),                                              # an empty batch: nothing
    ([([*range(255, -1, -1), -1, 0, 255, -1], 777_777)], {0: (9, 3), 128: (50_000, 2), 255: (1, 1)}),  # every op
], ids=["unsampled", "mixed", "zero-ns", "halved", "empty-records", "accumulate", "edge-ops", "no-records",
        "every-op"])
def test_the_compiled_count_ops_gives_the_references_values(batches: list[tuple[list[int], int]],
                                                           sampled: dict[int, tuple[int, int]]):
    """Pipeline._count_ops runs in C (native/fastpath.c count_ops): the same msg_ops, the same
    latency buckets and float sums (bit for bit) and the same samples (halved alike) as the
    pure-Python py_count_ops, batch after batch."""
    from types import SimpleNamespace

    from vigil.agent import pipeline as P
    from vigil.core import native

    assert native.fast is not None, "the compiled fast path is not built (make native)"
    state = []
    for _ in range(2):
        samples = array("q", bytes(8 * P._S_SLOTS))
        for op, (ns, calls) in sampled.items():
            samples[op], samples[256 + op] = ns, calls
        state.append(SimpleNamespace(msg_ops={}, latency={}, samples=samples))
    py, c = state
    for ops, elapsed_ns in batches:
        recs = [bytes([op]) + b"\0" * 15 if op >= 0 else b"" for op in ops]
        P.Pipeline.py_count_ops(py, recs, elapsed_ns)  # type: ignore[arg-type]
        P.Pipeline._count_ops(c, recs, elapsed_ns)  # type: ignore[arg-type]
        assert c.msg_ops == py.msg_ops
        assert c.latency == py.latency  # floats compared exactly
        assert list(c.samples) == list(py.samples)
    assert sum(py.msg_ops.values()) == sum(len(ops) for ops, _ in batches)


def _lat_means(p: Any) -> dict[int, float]:
    return {op: total[0] / sum(buckets) for op, (buckets, total) in p.latency.items()}


@pytest.mark.parametrize("compiled", [False, True], ids=["python", "compiled"])
def test_handling_latency_gives_each_op_of_a_mixed_batch_its_own_share(compiled: bool,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """A batch of two ops interleaved (a slow one, a fast one: as exec and clone records come)
    was observed at the batch's mean time per record for both. Now the batch's time is shared
    by the ops' sampled handler times: the slow op's records are in its own buckets. Python
    loop: a fake clock the handlers move (1000 us and 10 us), so the shares are exact; compiled
    loop (its own clock): a 1 ms sleep against a handler that returns at once."""
    from types import SimpleNamespace

    from vigil.agent import pipeline as P
    from vigil.core import native

    if compiled and native.fast is None:
        pytest.fail("the compiled fast path is not built (make native)")
    clock = [0]
    if not compiled:
        monkeypatch.setattr(P.native, "fast", None)
        monkeypatch.setattr(P.time, "monotonic_ns", lambda: clock[0])

    def slow(buf: bytes, now: int) -> None:
        if compiled:
            time.sleep(0.001)
        clock[0] += 1_000_000

    def fast(buf: bytes, now: int) -> None:
        clock[0] += 10_000

    pipe = P.Pipeline(SimpleNamespace(k8s=None))  # type: ignore[arg-type]
    pipe.handlers = {1: slow, 3: fast}
    pipe.samples[P._S_EVERY] = 4  # a sample in every 3 to 6 records
    recs = [bytes([op]) + b"\0" * 7 for op in (1, 3)] * 40  # interleaved with period 2
    for i in range(0, len(recs), 20):
        pipe.handle(recs[i:i + 20])
    assert pipe.msg_ops == {1: 40, 3: 40}
    assert pipe.samples[256 + 1] > 0 and pipe.samples[256 + 3] > 0  # both ops sampled, not one phase
    means = _lat_means(pipe)
    assert means[1] > means[3], means  # the batch's mean for both before
    if not compiled:  # exact: each op its own time
        assert means == {1: pytest.approx(1000.0), 3: pytest.approx(10.0)}
        buckets = {op: b for op, (b, _) in pipe.latency.items()}
        assert buckets == {1: [0, 0, 0, 40, 0, 0, 0], 3: [40, 0, 0, 0, 0, 0, 0]}


@pytest.mark.parametrize("fails", [0, 1, 3], ids=["none", "one", "three"])
def test_an_injected_event_that_cannot_be_made_is_counted_lost(tmp_path: Path, fails: int):
    """An event made on the loop's thread from another thread's report (a loader event) whose
    making raised was logged and lost uncounted. Now `vigil status` lost.user injected_failed
    and vigil_events_lost_userspace{cause="injected_failed"} count it; the others are sent."""
    from vigil.core.events import DictEvent

    out = tmp_path / "events.log"
    agent = Agent(AgentConfig(export_filename=str(out), server_address="", node_name="n1"),
                  source=ReplaySource([EXEC], batch=7))
    agent.start()
    try:
        def bad() -> Any:
            raise KeyError("a process gone")

        for _ in range(fails):
            agent.pipeline.inject(bad)
        agent.pipeline.inject(lambda: DictEvent({"process_loader": {"path": "/x"}, "node_name": "n1"}))
        agent.run()
        lost = agent.status()["lost"]["user"]
        series = {s.labels["cause"]: s.value for fam in AgentCollector(agent.control).collect()
                  for s in fam.samples if s.name == "vigil_events_lost_userspace_total"}
    finally:
        agent.close()
    assert lost.get("injected_failed", 0) == fails
    assert series.get("injected_failed", 0) == fails
    assert sum(1 for line in out.read_bytes().splitlines() if b"process_loader" in line) == 1
