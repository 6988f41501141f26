"""The fast GetEvents encoder (vigil.api.wire) against the reference conversion.

The reference is `pbdict.parse_into(ev, GetEventsResponse(), ignore_unknown=True)
.SerializeToString()`, what GetEvents sent per stream before. The fast path must give
the very same bytes (fields in number order, spliced Process messages), and parsing
both back must give equal messages, for every sample kind, with cached and uncached
Process dicts, with and without field filters.
"""
from __future__ import annotations

import copy
import random
import threading

import pytest

from tests.api import samples
from vigil.api import convert, wire
from vigil.api.pb import events_pb2
from vigil.api.streams import StreamStats, stream_events
from vigil.export import EventFilter

KINDS = sorted(samples.ALL)
MAIN_KINDS = ["exec", "exit", "kprobe", "tracepoint", "uprobe"]


def _parsed(b: bytes) -> events_pb2.GetEventsResponse:
    msg = events_pb2.GetEventsResponse()
    msg.ParseFromString(b)
    return msg


def assert_same(ev: dict, got: bytes) -> None:
    ref = wire.reference_bytes(ev)
    assert _parsed(got) == _parsed(ref)  # same message
    assert got == ref  # and byte for byte


@pytest.mark.parametrize("kind", KINDS)
def test_every_sample_kind_byte_identical(kind):
    ev = samples.ALL[kind]()
    procs = wire.ProcessCache()
    first = wire.encode(ev, procs)  # Process cache misses
    assert_same(ev, first)
    assert wire.encode(ev, procs) == first  # hits: spliced from the cache
    assert convert.to_dict(_parsed(first)) == ev  # and it still reads back as the event


def test_process_dict_shared_like_the_agent_does():
    """One dict per process: the exec's `process` is the exit's, the parent is in
    `parent` and `ancestors` of every child; all spliced from one cache entry."""
    procs = wire.ProcessCache()
    parent = samples.PARENT
    events = []
    for i in range(20):
        p = dict(samples.PROCESS, pid=1000 + i, exec_id=f"e{i}")
        events.append({"process_exec": {"process": p, "parent": parent, "ancestors": [parent, parent]},
                       "node_name": "n", "time": f"2024-01-01T00:00:{i:02d}.5Z"})
        events.append({"process_exit": {"process": p, "parent": parent, "signal": "SIGTERM" if i % 2 else "",
                                        "status": i % 3, "time": "2024-01-01T00:01:00Z"},
                       "node_name": "n", "time": "2024-01-01T00:01:00Z"})
    for ev in events:
        assert_same(ev, wire.encode(ev, procs))
    assert procs.misses == 21  # 20 processes + the parent, each converted once
    assert len(procs) == 21


def test_cache_is_keyed_by_identity_not_content_or_recycled_ids():
    procs = wire.ProcessCache(capacity=4)
    for i in range(50):  # new dicts, freed right after: ids get recycled by CPython
        ev = {"process_exec": {"process": {"pid": i, "binary": f"/b{i}"}}}
        assert_same(ev, wire.encode(ev, procs))
    assert len(procs) == 4  # bounded (LRU)
    hot = {"pid": 1, "binary": "/hot"}
    for i in range(20):  # the hot dict stays cached while others come and go
        wire.encode({"process_exec": {"process": hot, "parent": {"pid": i}}}, procs)
    misses = procs.misses
    wire.encode({"process_exec": {"process": hot}}, procs)
    assert procs.misses == misses


@pytest.mark.parametrize("ev", [
    {"process_exec": {"process": {}}},  # empty Process: present, zero length
    {"process_exec": {"process": None, "parent": {"pid": 3}}},  # null: not set
    {"process_exec": {}},  # empty body: present
    {"node_name": "only-envelope"},
    {},
    {"process_exit": {"process": {"pid": 1}, "status": 0, "signal": ""}},  # zero values not sent
    {"process_exit": {"process": {"pid": 1}, "status": "7", "time": "1969-12-31T23:59:59.999999999Z"}},
    {"process_exit": {"status": 4294967295, "time": "2024-02-29T23:30:00.1+05:30"}},
    {"process_exit": {"time": "1970-01-01T00:00:00Z"}, "time": "2024-01-01t00:00:00-01:00"},
    {"process_exec": {"process": {"pid": 1}}, "unknownTop": 1, "time": "2024-01-01T00:00:00Z"},
    {"process_exec": {"process": {"pid": 1, "no_such": 2}, "no_such_either": {}}},
    {"processExec": {"process": {"pid": 1}}, "nodeName": "camel"},  # lowerCamel keys
    {"process_exec": {"process": {"pid": 1}}, "node_name": "a", "nodeName": "b"},  # alias twice
    {"process_kprobe": {"process": {"pid": 1}, "args": [{"int_arg": 1}], "ancestors": [{"pid": 2}],
                        "data": [{"int_arg": 2}], "action": 3, "return_action": "KPROBE_ACTION_POST",
                        "policy_name": "p", "kernel_stack_trace": []}},
    {"process_exec": {"process": {"pid": 1}}, "node_labels": {"a": "b"}, "cluster_name": "c",
     "aggregation_info": {"count": "2"}},
    {"rate_limit_info": {"number_of_dropped_process_events": "18446744073709551615"}},
    {"process_exec": {"process": {"binary": "/bin/\u00e9\u4e2d", "arguments": "x" * 20000}}},
])
def test_edge_cases_byte_identical(ev):
    assert_same(ev, wire.encode(ev, wire.ProcessCache()))


@pytest.mark.parametrize("ev", [
    {"process_exec": {"process": {"pid": 1}}, "process_exit": {}},  # two bodies of the oneof
    {"process_exec": {"process": "not an object"}},
    {"process_exec": {"ancestors": {"pid": 1}}},
    {"process_exec": {"ancestors": [1]}},
    {"process_exec": {"process": {"pid": "x"}}},
    {"process_exit": {"status": -1}},
    {"process_exit": {"status": 1 << 32}},
    {"process_exit": {"status": True}},
    {"process_exit": {"signal": 9}},
    {"process_exit": {"time": "yesterday"}},
    {"process_exit": {"time": "2024-13-01T00:00:00Z"}},
    {"time": 5},
    {"node_name": ["x"]},
    {"process_kprobe": {"action": "NO_SUCH_ACTION"}},
    {"process_exec": []},
])
def test_errors_are_the_references(ev):
    with pytest.raises(convert.ConversionError) as ref:
        wire.reference_bytes(ev)
    with pytest.raises(convert.ConversionError) as fast:
        wire.encode(ev, wire.ProcessCache())
    assert str(fast.value) == str(ref.value)


def _prune(obj, rnd):
    """Randomly drop keys / list items (a cheap fuzzer over the sample shapes)."""
    if isinstance(obj, dict):
        return {k: _prune(v, rnd) for k, v in obj.items() if rnd.random() > 0.25}
    if isinstance(obj, list):
        return [_prune(v, rnd) for v in obj if rnd.random() > 0.2]
    return obj


def test_pruned_samples_byte_identical():
    rnd = random.Random(1234)
    procs = wire.ProcessCache()
    for i in range(400):
        ev = _prune(samples.ALL[KINDS[i % len(KINDS)]](), rnd)
        assert_same(ev, wire.encode(ev, procs))


FIELD_FILTERS = [
    [{"event_set": ["PROCESS_EXEC"], "fields": ["process.exec_id", "process.pid"], "action": "INCLUDE"}],
    [{"fields": ["parent", "process.pod", "ancestors"], "action": "EXCLUDE"}],
    [{"fields": ["process.binary", "function_name", "args", "signal"], "action": "INCLUDE"}],
    [{"event_set": ["PROCESS_KPROBE", "PROCESS_UPROBE"], "fields": ["process.cap", "parent.ns"],
      "action": "EXCLUDE"}],
]


@pytest.mark.parametrize("kind", MAIN_KINDS)
@pytest.mark.parametrize("ff", [None, *FIELD_FILTERS], ids=["none", "include", "exclude", "top", "typed"])
def test_filtered_events_byte_identical(kind, ff):
    enc = wire.EventEncoder()
    ev = samples.ALL[kind]()
    flt = EventFilter.from_request([], [], ff or [])
    out = flt.apply(ev)
    got = enc.encode_shared(ev) if out is ev else enc.encode_derived(out)
    assert_same(out, got)
    assert convert.to_dict(_parsed(got)) == out


class _Ctx:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active

    def abort(self, code, details):  # pragma: no cover - not reached in these tests
        raise AssertionError(details)


def _run_stream(bus, flt, encoder, n):
    """stream_events on its own subscription, collecting the first n messages."""
    sub = bus.subscribe(maxsize=100_000)
    stats = StreamStats()
    stats.open(sub)
    out: list[bytes] = []
    ctx = _Ctx()

    def run():
        for b in stream_events(sub, flt, ctx, threading.Event(), stats, encoder):
            out.append(b)
            if len(out) == n:
                ctx.active = False
                break
    t = threading.Thread(target=run)
    return t, out


def test_streams_share_one_encoding_and_filtered_streams_their_own():
    from vigil.core.bus import EventBus

    bus = EventBus()
    enc = wire.EventEncoder()
    events = [samples.ALL[k]() for _ in range(3) for k in MAIN_KINDS]
    plain = [_run_stream(bus, None, enc, len(events)) for _ in range(3)]
    allow = EventFilter.from_request([{"event_set": ["PROCESS_EXEC", "PROCESS_KPROBE"]}], [], [])
    n_allowed = sum(1 for e in events if "process_exec" in e or "process_kprobe" in e)
    allowed = _run_stream(bus, allow, enc, n_allowed)
    trim = EventFilter.from_request([], [], FIELD_FILTERS[1])
    trimmed = _run_stream(bus, trim, enc, len(events))
    bus.publish(events)
    for t, _ in (*plain, allowed, trimmed):  # one after the other: counts are exact
        t.start()
        t.join(10)
        assert not t.is_alive()
    for _, out in plain:
        assert out == [wire.reference_bytes(e) for e in events]
    assert allowed[1] == [wire.reference_bytes(e) for e in events if "process_exec" in e or "process_kprobe" in e]
    ref_trim = EventFilter.from_request([], [], FIELD_FILTERS[1])
    assert trimmed[1] == [wire.reference_bytes(ref_trim.apply(e)) for e in events]
    # shared: each event converted once for the 3 plain streams and the allow-listed one
    assert enc.encoded == len(events) + len(events)  # + one derived encoding per trimmed event
    assert enc.shared_hits == 2 * len(events) + n_allowed


def test_memo_is_bounded_and_identity_keyed():
    enc = wire.EventEncoder(memo_size=8)
    keep = []
    for i in range(100):
        ev = samples.numbered_exec(i)
        keep.append(ev)
        assert enc.encode_shared(ev) == wire.reference_bytes(ev)
    assert len(enc._memo) == 8
    twin = copy.deepcopy(keep[-1])  # equal content, other object: encoded on its own
    assert enc.encode_shared(twin) == wire.reference_bytes(twin)
    assert enc.encoded == 101
    assert enc.encode_shared(keep[-1]) == wire.reference_bytes(keep[-1])
    assert enc.shared_hits == 1


def test_over_grpc_fast_and_trimmed_clients_exact_while_slow_client_drops():
    """Real clients in other processes; events share one big parent dict (as the
    agent's do). The fast and the field-filtered client get exactly their events; the
    slow one loses events, counted on its subscription, without holding the others up."""
    import json
    import tempfile

    from tests.api.harness import marker, read_result, running_server, spawn_client, wait_for

    n_events = 3000
    parent = dict(samples.PARENT, arguments="y" * 8192)
    events = [{"process_exec": {"process": {"exec_id": f"id-{i}", "pid": i, "binary": f"/bin/b{i % 3}"},
                                "parent": parent, "ancestors": [parent]},
               "node_name": "n", "time": f"2024-01-01T00:00:{i % 60:02d}.{i:08d}1Z"} for i in range(n_events)]
    fields = [{"fields": ["process.pid", "parent.pid"], "action": "INCLUDE"}]
    with running_server(stream_queue_size=300) as (server, agent), \
            tempfile.TemporaryFile("w+") as fast_out, tempfile.TemporaryFile("w+") as trimmed_out:
        fast = spawn_client(server.address, stdout=fast_out)
        wait_for(lambda: agent.bus.subscriber_count == 1, what="fast subscription")
        trimmed = spawn_client(server.address, "--fields", json.dumps(fields), stdout=trimmed_out)
        wait_for(lambda: agent.bus.subscriber_count == 2, what="trimmed subscription")
        slow = spawn_client(server.address, "--quiet", "--sleep", "0.05")
        wait_for(lambda: agent.bus.subscriber_count == 3, what="slow subscription")
        fast_sub, trimmed_sub, slow_sub = agent.bus._subs
        for i in range(0, n_events, 100):
            agent.publish(events[i:i + 100])
            wait_for(lambda: len(fast_sub._q) == 0 and len(trimmed_sub._q) == 0, what="fast clients to drain")
        end = marker()
        end["process_exec"]["parent"] = {"pid": 1}  # survives the INCLUDE filter's trimming
        agent.publish([end])
        got, _ = read_result(fast, timeout=60, stdout_file=fast_out)
        got_trimmed, _ = read_result(trimmed, timeout=60, stdout_file=trimmed_out)
        assert fast_sub.dropped == trimmed_sub.dropped == 0
        assert slow_sub.dropped > 0
        assert agent.bus.dropped_total == slow_sub.dropped
        wait_for(lambda: server.stats()["events_dropped_slow_client"] >= slow_sub.dropped, what="stats")
        slow.kill()
        slow.communicate()
    assert got == events
    assert got_trimmed == [{"process_exec": {"process": {"pid": i}, "parent": {"pid": 52690}},
                            "node_name": "n", "time": e["time"]} for i, e in enumerate(events)]
