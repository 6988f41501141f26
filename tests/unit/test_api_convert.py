"""Event dicts <-> GetEventsResponse: exact JSON shape, parity with json_format, speed."""
from __future__ import annotations

import copy
import time

import pytest
from google.protobuf import json_format

from tests.api import samples
from vigil.api import convert, pbdict
from vigil.api.pb import events_pb2, tetragon_pb2


@pytest.mark.parametrize("kind", sorted(samples.ALL))
def test_round_trip_exact(kind):
    ev = samples.ALL[kind]()
    original = copy.deepcopy(ev)
    back = convert.from_bytes(convert.to_bytes(ev))
    assert back == ev
    assert ev == original  # input untouched
    assert list(back) == list(ev)  # body first, then node_name, time (field order)


@pytest.mark.parametrize("kind", sorted(samples.ALL))
def test_same_as_json_format(kind):
    ev = samples.ALL[kind]()
    ref = json_format.ParseDict(ev, events_pb2.GetEventsResponse())
    assert convert.to_proto(ev) == ref
    assert convert.to_dict(ref) == json_format.MessageToDict(ref, preserving_proto_field_name=True)


def test_every_kprobe_arg_variant_covered():
    variants = {f.name for f in tetragon_pb2.KprobeArgument.DESCRIPTOR.oneofs_by_name["arg"].fields}
    used = {k for a in samples.all_kprobe_args() for k in a if k != "label"}
    assert used == variants


def test_json_rules():
    ev = samples.kprobe_event()
    d = convert.to_dict(convert.to_proto(ev))
    args = d["process_kprobe"]["args"]
    assert {"size_arg": "65536"} in args and {"long_arg": "-1"} in args  # 64-bit as strings
    assert {"int_arg": -3} in args and {"uint_arg": 4294967295} in args  # 32-bit as numbers
    assert d["process_kprobe"]["process"]["uid"] == 0  # wrapper kept at zero
    assert d["process_kprobe"]["process"]["in_init_tree"] is False
    assert d["process_kprobe"]["process"]["cap"]["effective"] == ["CAP_CHOWN", "DAC_OVERRIDE"]
    # zero plain scalars are omitted
    exit_ev = samples.exit_event()
    exit_ev["process_exit"]["status"] = 0
    exit_ev["process_exit"]["signal"] = ""
    out = convert.to_dict(convert.to_proto(exit_ev))["process_exit"]
    assert "status" not in out and "signal" not in out


@pytest.mark.parametrize("ts,secs,nanos", [
    ("2023-10-06T22:03:57.700327580Z", 1696629837, 700327580),
    ("2023-10-06T21:52:41Z", 1696629161, 0),
    ("2023-10-06T21:52:41.5Z", 1696629161, 500000000),
    ("2023-10-06T23:52:41.000001+02:00", 1696629161, 1000),
])
def test_timestamps(ts, secs, nanos):
    assert pbdict.parse_timestamp(ts) == (secs, nanos)


@pytest.mark.parametrize("nanos,text", [(0, "2023-10-06T21:52:41Z"), (5 * 10**8, "2023-10-06T21:52:41.500Z"),
                                        (1000, "2023-10-06T21:52:41.000001Z"), (7, "2023-10-06T21:52:41.000000007Z")])
def test_timestamp_format(nanos, text):
    assert pbdict.format_timestamp(1696629161, nanos) == text


def test_lenient_input_like_protojson():
    ev = {"processExec": {"process": {"execId": "x", "pid": "12", "startTime": "2024-01-01T00:00:00Z"}},
          "node_name": "n"}
    d = convert.to_dict(convert.to_proto(ev))
    assert d == {"process_exec": {"process": {"exec_id": "x", "pid": 12, "start_time": "2024-01-01T00:00:00Z"}},
                 "node_name": "n"}
    k = {"process_kprobe": {"action": 3, "args": [{"size_arg": 5}]}}
    assert convert.to_dict(convert.to_proto(k)) == {
        "process_kprobe": {"args": [{"size_arg": "5"}], "action": "KPROBE_ACTION_SIGKILL"}}


@pytest.mark.parametrize("event,where", [
    ({"process_exec": {"process": {"bogus": 1}}}, "process_exec.process: unknown field 'bogus'"),
    ({"process_kprobe": {"action": "KPROBE_ACTION_NOPE"}}, "process_kprobe.action"),
    ({"process_exec": {"process": {"pid": "x"}}}, "process_exec.process.pid"),
    ({"process_exec": {"process": {"pid": 1.5}}}, "process_exec.process.pid"),
    ({"process_kprobe": {"args": [{"int_arg": 1, "string_arg": "a"}]}}, "oneof 'arg'"),
    ({"process_exec": {}, "process_exit": {}}, "oneof 'event'"),
    ({"process_exec": {"process": {"start_time": "yesterday"}}}, "process_exec.process.start_time"),
    ({"process_loader": {"buildid": "!!"}}, "process_loader.buildid"),
    ({"process_kprobe": {"args": {"int_arg": 1}}}, "process_kprobe.args"),
])
def test_errors_name_the_field(event, where):
    with pytest.raises(convert.ConversionError) as e:
        convert.to_proto(event)
    assert where in str(e.value)


def test_ignore_unknown():
    msg = convert.to_proto({"process_exec": {"process": {"pid": 3, "future_field": 1}}, "x": 2}, ignore_unknown=True)
    assert convert.to_dict(msg) == {"process_exec": {"process": {"pid": 3}}}


def test_events_request_and_back():
    req = convert.events_request(
        [{"binary_regex": ["^/usr/bin/"], "eventSet": ["PROCESS_EXEC", 9], "in_init_tree": False}],
        [{"namespace": ["", "kube-system"]}],
        [{"event_set": ["PROCESS_KPROBE"], "fields": "process.exec_id,parent.binary", "action": "EXCLUDE"}],
        {"window_size": "15s"})
    assert list(req.field_filters[0].fields.paths) == ["process.exec_id", "parent.binary"]
    allow, deny, fields = convert.request_filters(req)
    assert allow == [{"binary_regex": ["^/usr/bin/"], "event_set": ["PROCESS_EXEC", "PROCESS_KPROBE"],
                      "in_init_tree": False}]
    assert deny == [{"namespace": ["", "kube-system"]}]
    assert fields == [{"event_set": ["PROCESS_KPROBE"], "fields": ["process.exec_id", "parent.binary"],
                       "action": "EXCLUDE"}]
    with pytest.raises(convert.ConversionError):
        convert.events_request([{"no_such_field": 1}])


def _rate(fn, arg, seconds=0.3) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            fn(arg)
        n += 50
    return n / (time.perf_counter() - t0)


def test_throughput(capsys):
    """Measured on one core (recorded in the report); the bound only catches collapses."""
    small = samples.numbered_exec(7)
    full = samples.exec_event()
    kprobe = samples.kprobe_event()
    rates = {
        "small exec to wire": _rate(convert.to_bytes, small),
        "full exec to wire": _rate(convert.to_bytes, full),
        "kprobe (all arg kinds) to wire": _rate(convert.to_bytes, kprobe),
        "full exec from wire": _rate(convert.from_bytes, convert.to_bytes(full)),
        "json_format full exec to wire (reference)": _rate(
            lambda e: json_format.ParseDict(e, events_pb2.GetEventsResponse()).SerializeToString(), full, 0.2),
    }
    with capsys.disabled():
        for k, v in rates.items():
            print(f"\n  convert {k}: {v:,.0f} events/s", end="")
        print()
    assert rates["small exec to wire"] > 5000
    assert rates["full exec to wire"] > 2 * rates["json_format full exec to wire (reference)"]
