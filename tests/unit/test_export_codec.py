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
    ("exit-miss", ProcessExit(missing_process("bWlzcw==", 8, 9), None, (), "", 0, T, "n")),
    ("kprobe", PolicyEvent("process_kprobe", proc(10), PARENT, {
        "function_name": "__x64_sys_openat", "args": [{"string_arg": "/etc/passwd", "label": "path"},
                                                     {"int_arg": -100}],
        "return": {"int_arg": 3}, "action": "KPROBE_ACTION_POST", "policy_name": "p", "tags": ["a"]}, T, "n")),
    ("tracepoint", PolicyEvent("process_tracepoint", proc(11), None, {
        "subsys": "syscalls", "event": "sys_enter_openat", "args": [{"long_arg": "42"}], "policy_name": "p",
        "action": "KPROBE_ACTION_POST"}, T, "n")),
    ("lsm", PolicyEvent("process_lsm", missing_process("", 12, 12), None, {
        "function_name": "file_open", "policy_name": "p", "action": "KPROBE_ACTION_OVERRIDE",
        "message": "denied"}, T, "n")),
    ("rate-limit", DictEvent({"rate_limit_info": {"number_of_dropped_process_events": "3"}, "node_name": "n",
                              "time": T})),
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
