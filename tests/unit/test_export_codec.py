"""The fast encoders of typed events against their references, byte for byte, for every
event kind: JSON (spliced from cached process encodings) against the dict view through
orjson, protobuf (written field by field) against the reference conversion of the dict
view; and both against canonical protojson (what json_format makes of the same message)."""
from __future__ import annotations

import json

import orjson
import pytest
from google.protobuf import json_format

from vigil.api import wire
from vigil.api.pb import events_pb2
from vigil.core.events import DictEvent, PolicyEvent, ProcessExec, ProcessExit, ProcessMsg, missing_process
from vigil.export import codec
from vigil.export.dicts import event_dict

CAPS = {"permitted": ["CAP_CHOWN", "DAC_OVERRIDE"], "effective": ["CAP_CHOWN"]}
NS = {"uts": {"inum": 4026531838, "is_host": True}, "pid": {"inum": 4026531836}}
CREDS = {"uid": 0, "gid": 0, "euid": 0, "egid": 0, "suid": 0, "sgid": 0, "fsuid": 0, "fsgid": 0,
         "securebits": ["SecBitKeepCaps"], "caps": CAPS,
         "user_ns": {"level": 0, "uid": 0, "gid": 0, "ns": {"inum": 4026531837, "is_host": True}}}


def proc(pid: int, **kw: object) -> ProcessMsg:
    base: dict[str, object] = dict(uid=1000, cwd="/home/u", binary="/usr/bin/b\u00e9", arguments='-c "a b"',
                                   flags="execve clone", start_time="2026-12-05T11:00:00.123456789Z", auid=4294967295,
                                   docker="0123456789abcdef0123456789abcde", parent_exec_id="cGFyZW50",
                                   cap=CAPS, ns=NS, tid=pid, process_credentials=CREDS)
    base.update(kw)
    return ProcessMsg(f"bjE6MTox{pid}", pid, **base)  # type: ignore[arg-type]


PARENT = proc(1, binary="/bin/sh", arguments="", parent_exec_id="")
T = "2026-12-05T11:00:01.000000001Z"
EVENTS = [
    ("exec", ProcessExec(proc(2), PARENT, (), T, "node-1")),
    ("exec-ancestors", ProcessExec(proc(3), PARENT, (proc(9, cwd=""), PARENT), T, "n\u00f6de")),
    ("exec-no-parent-kernel-thread", ProcessExec(proc(4, binary="", cwd="", arguments="", uid=0, cap=None, ns=None,
                                                      process_credentials=None, docker=""), None, (), T, "n")),
    ("exec-binary-properties", ProcessExec(proc(5, binary_properties={
        "setuid": 0, "file": {"inode": {"number": "123", "links": 0}, "path": "/memfd:x (deleted)"}}), PARENT, (),
        T, "n")),
    ("exit-signal", ProcessExit(proc(6), PARENT, (), "SIGKILL", 0, T, "n")),
    ("exit-status", ProcessExit(proc(7), PARENT, (PARENT,), "", 3, T, "n")),
    ("exit-miss", ProcessExit(missing_process(8, T), None, (), "", 0, T, "n")),
    ("kprobe", PolicyEvent("process_kprobe", proc(10), PARENT, {
        "function_name": "__x64_sys_openat", "args": [{"string_arg": "/etc/passwd", "label": "path"},
                                                     {"int_arg": -100}],
        "return": {"int_arg": 3}, "action": "KPROBE_ACTION_POST", "policy_name": "p", "tags": ["a"]}, T, "n")),
    ("tracepoint", PolicyEvent("process_tracepoint", proc(11), None, {
        "subsys": "syscalls", "event": "sys_enter_openat", "args": [{"long_arg": "42"}], "policy_name": "p",
        "action": "KPROBE_ACTION_POST"}, T, "n")),
    ("lsm", PolicyEvent("process_lsm", missing_process(12, T, "unknown"), None, {
        "function_name": "file_open", "policy_name": "p", "action": "KPROBE_ACTION_OVERRIDE",
        "message": "denied"}, T, "n")),
    ("rate-limit", DictEvent({"rate_limit_info": {"number_of_dropped_process_events": "3"}, "node_name": "n",
                              "time": T})),
    # protojson's shorter Timestamp forms (whole millisecond, microsecond, second)
    ("exec-whole-millisecond", ProcessExec(proc(13, start_time="2026-12-05T11:00:00.120Z"), PARENT, (),
                                           "2026-12-05T11:00:01.123Z", "n")),
    ("exit-whole-microsecond", ProcessExit(proc(14, start_time="2026-12-05T11:00:00Z"), PARENT, (), "", 1,
                                           "2026-12-05T11:00:02.123456Z", "n")),
    ("kprobe-whole-second", PolicyEvent("process_kprobe", proc(15, start_time="2026-12-05T11:00:00.000001Z"),
                                        None, {"function_name": "f", "policy_name": "p"},
                                        "2026-12-05T11:00:03Z", "n")),
]


@pytest.mark.parametrize("name, ev", EVENTS, ids=[n for n, _ in EVENTS])
def test_json_fast_equals_reference(name: str, ev: object) -> None:
    fast = codec.encode(ev)  # type: ignore[arg-type]
    assert fast == codec.encode_reference(ev)  # type: ignore[arg-type]
    assert codec.encode(ev) is fast  # cached on the event  # type: ignore[arg-type]
    json.loads(fast)


@pytest.mark.parametrize("name, ev", EVENTS, ids=[n for n, _ in EVENTS])
def test_protobuf_fast_equals_reference(name: str, ev: object) -> None:
    fast = wire.encode_event(ev)
    assert fast == wire.reference_bytes(event_dict(ev))  # type: ignore[arg-type]


@pytest.mark.parametrize("name, ev", EVENTS, ids=[n for n, _ in EVENTS])
def test_json_is_canonical_protojson(name: str, ev: object) -> None:
    """Our line, parsed as a GetEventsResponse and printed back by protobuf itself, is the
    same object: no empty string, zero number or empty message that protojson would drop."""
    ours = orjson.loads(codec.encode(ev))  # type: ignore[arg-type]
    msg = json_format.Parse(json.dumps(ours), events_pb2.GetEventsResponse())
    assert json_format.MessageToDict(msg, preserving_proto_field_name=True) == ours


def _exec_record(pid: int, ktime: int, event_ktime: int) -> bytes:
    """A kernel exec record of /bin/true (bpf/include/vigil_events.h's msg_process)."""
    from vigil.events import records as R

    exe, cwd, fn, cg, args = b"/bin/true", b"/", b"/bin/true\0", b"\0", b"true\0"
    head = R.PROCESS.pack(
        R.OP_EXEC, 0, 0, 0, event_ktime, pid, 0, ktime, 0, 0, 0, pid, 1, pid, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, *(0,) * 10, 0, 0, 0o100755, 1, ktime, 0, 0, 0,
        len(exe), len(cwd), len(fn), len(cg), len(args), 0)
    return head + exe + cwd + fn + cg + args


def test_event_on_a_whole_millisecond_exports_the_short_form_and_round_trips() -> None:
    """An exec whose time lands on a whole millisecond (and whose start on a whole second):
    the compiled and the pure builder write ".123Z" (and no fraction), JSON and protobuf
    encoders agree, and the protobuf bytes hold the right seconds and nanos (parsed by
    protobuf itself, printed back as the same strings)."""
    from vigil.core import native
    from vigil.events import records as R
    from vigil.process.build import BuildOptions, EventBuilder
    from vigil.process.cache import ProcessCache
    from vigil.process.clock import WallClock

    base = 1_764_000_000  # 2025-11-24T16:00:00Z
    events = []
    for compiled in (True, False):
        clock = WallClock()
        clock.offset = base * 1_000_000_000
        b = EventBuilder(ProcessCache(), clock, BuildOptions("n", host_ns=(0,) * 10))
        buf = _exec_record(4242, 5_000_000_000, 7_123_000_000)
        if compiled:
            if native.fast is None:
                continue
            ev = b.record_handlers()[R.OP_EXEC](buf, 0)
        else:
            ev = b.on_exec(R.PyProcessRecord(buf), 0)
        events.append(ev)
        assert ev.time == "2025-11-24T16:00:07.123Z"
        assert ev.process.start_time == "2025-11-24T16:00:05Z"
    assert len(events) == (2 if native.fast is not None else 1)
    for ev in events:
        line = codec.encode(ev)
        assert line == codec.encode_reference(ev)
        ours = orjson.loads(line)
        assert ours["time"] == "2025-11-24T16:00:07.123Z"
        assert ours["process_exec"]["process"]["start_time"] == "2025-11-24T16:00:05Z"
        pb = wire.encode_event(ev)
        assert pb == wire.py_encode_event(_fresh(ev)) == wire.reference_bytes(event_dict(_fresh(ev)))
        msg = events_pb2.GetEventsResponse.FromString(pb)
        assert (msg.time.seconds, msg.time.nanos) == (base + 7, 123_000_000)
        st = msg.process_exec.process.start_time
        assert (st.seconds, st.nanos) == (base + 5, 0)
        assert json_format.MessageToDict(msg, preserving_proto_field_name=True) == ours


def _fresh(ev: ProcessExec) -> ProcessExec:
    """The same event with no encoding cached (each encoder makes its own)."""
    p = ev.process.derive()
    return ProcessExec(p, ev.parent, ev.ancestors, ev.time, ev.node_name)


@pytest.mark.parametrize("text, secs, nanos", [
    ("2026-12-05T11:00:00Z", 1796468400, 0),
    ("2026-12-05T11:00:00.100Z", 1796468400, 100_000_000),
    ("2026-12-05T11:00:00.000001Z", 1796468400, 1000),
    ("2026-12-05T11:00:00.123456789Z", 1796468400, 123_456_789),
    ("2026-12-05T11:00:00.5Z", 1796468400, 500_000_000),          # not a form the agent writes
    ("2026-12-05T12:00:00.25+01:00", 1796468400, 250_000_000),
])
def test_timestamp_forms_encode_the_same_in_every_encoder(text: str, secs: int, nanos: int) -> None:
    """The compiled protobuf encoder parses the 0/3/6/9-digit forms itself (others go to the
    twin): every form gives the same Timestamp in the compiled, pure and reference paths."""
    mk = lambda: ProcessExec(proc(20, start_time=text), None, (), text, "n")  # noqa: E731
    pb = wire.encode_event(mk())
    assert pb == wire.py_encode_event(mk()) == wire.reference_bytes(event_dict(mk()))
    msg = events_pb2.GetEventsResponse.FromString(pb)
    assert (msg.time.seconds, msg.time.nanos) == (secs, nanos)
    st = msg.process_exec.process.start_time
    assert (st.seconds, st.nanos) == (secs, nanos)
