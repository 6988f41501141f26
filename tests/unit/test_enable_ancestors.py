"""--enable-ancestors as Tetragon takes it: a list of event types (base, kprobe, tracepoint,
loader, uprobe, lsm, usdt; base needed by the others), from a flag, the environment or a
--config-dir file; Vigil's earlier boolean form (true = base). Policy events list the
ancestors at Tetragon's field when their type is named, in JSON (compiled and pure, byte for
byte) and protobuf (field numbers 13/11/9/10/10), and GetEvents filters on ancestors are
refused for a type without them, as Tetragon's."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.protobuf import json_format

from tests.unit.test_agent_config import captured, run  # noqa: F401 (the fixture)
from tests.unit.test_export_codec import PARENT, T, proc
from vigil.agent.config import AgentConfig, ancestor_kinds, parse_ancestors
from vigil.api import wire
from vigil.api.pb import events_pb2
from vigil.core.events import PolicyEvent, ProcessExec
from vigil.export import codec
from vigil.export.dicts import event_dict
from vigil.export.filters import FilterError, FilterOptions, compile_filter

B = frozenset({"base"})

# (how the option is given: flag args, environment, config-dir files) -> the types, or the error's words
OPTION_CASES: list[tuple[str, list[str], dict[str, str], dict[str, str], Any]] = [
    ("default", [], {}, {}, frozenset()),
    ("flag-alone", ["--enable-ancestors"], {}, {}, B),                        # Vigil's old boolean flag
    ("flag-true", ["--enable-ancestors=true"], {}, {}, B),
    ("flag-false", ["--enable-ancestors", "false"], {}, {}, frozenset()),
    ("flag-list", ["--enable-ancestors", "base,kprobe"], {}, {}, frozenset({"base", "kprobe"})),
    ("flag-list-eq-spaces", ["--enable-ancestors= base , tracepoint ,"], {}, {}, frozenset({"base", "tracepoint"})),
    ("flag-all", ["--enable-ancestors", "base,kprobe,tracepoint,loader,uprobe,lsm,usdt"], {}, {},
     frozenset({"base", "kprobe", "tracepoint", "loader", "uprobe", "lsm", "usdt"})),
    ("tetragon-env", [], {"TETRAGON_ENABLE_ANCESTORS": "base,lsm"}, {}, frozenset({"base", "lsm"})),
    ("vigil-env", [], {"VIGIL_ENABLE_ANCESTORS": "base,uprobe"}, {}, frozenset({"base", "uprobe"})),
    ("config-dir", [], {}, {"enable-ancestors": "base,kprobe,usdt\n"}, frozenset({"base", "kprobe", "usdt"})),
    ("config-dir-bool", [], {}, {"enable-ancestors": "true\n"}, B),          # the Helm chart's old value
    ("flag-beats-env", ["--enable-ancestors", "base"], {"TETRAGON_ENABLE_ANCESTORS": "base,kprobe"}, {}, B),
    # bad values: the option, its source and why
    ("bad-type", ["--enable-ancestors", "base,kprobes"], {}, {},
     "Invalid value for --enable-ancestors: unknown event type 'kprobes' in 'base,kprobes' (a comma-separated "
     "list of base, kprobe, tracepoint, loader, uprobe, lsm, usdt; or true/false)"),
    ("no-base", ["--enable-ancestors", "kprobe"], {}, {},
     "Invalid value for --enable-ancestors: 'kprobe' lacks base, which the other event types need (e.g. "
     "base,kprobe)"),
    ("bad-env", [], {"TETRAGON_ENABLE_ANCESTORS": "base;kprobe"}, {},
     "--enable-ancestors (from environment variable TETRAGON_ENABLE_ANCESTORS): unknown event type 'base;kprobe'"),
    ("bad-config-dir", [], {}, {"enable-ancestors": "tracepoint\n"}, "--enable-ancestors (from config file "),
    ("bool-in-a-list", ["--enable-ancestors", "true,kprobe"], {}, {}, "unknown event type 'true'"),
]


@pytest.mark.parametrize("case,args,env,files,want", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_the_option_as_tetragons(tmp_path: Path, captured: list, case: str, args: list[str],  # noqa: F811
                                 env: dict[str, str], files: dict[str, str], want: Any) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    r = run([*(["--config-dir", str(tmp_path)] if files else []), *args], env)
    if isinstance(want, str):
        assert r.exit_code == 2 and not captured, r.output
        assert want in " ".join(r.output.split()), r.output
        assert "Traceback" not in r.output
        if files:
            assert str(tmp_path / "enable-ancestors") in " ".join(r.output.split())
        return
    assert r.exit_code == 0, r.output
    assert captured[0].enable_ancestors == want


@pytest.mark.parametrize("value,kinds", [
    (True, {"process_exec", "process_exit"}),
    (False, set()),
    ("base,kprobe,loader", {"process_exec", "process_exit", "process_kprobe", "process_loader"}),
    ("base,tracepoint", {"process_exec", "process_exit", "process_tracepoint"}),
])
def test_types_name_the_event_kinds(value: Any, kinds: set[str]) -> None:
    assert ancestor_kinds(parse_ancestors(value)) == kinds
    assert AgentConfig(enable_ancestors=value).enable_ancestors == parse_ancestors(value)


A1, A2 = proc(30, binary="/usr/bin/make"), proc(31, binary="/sbin/init", cwd="")
# (kind, body in build_body's order, the JSON keys of the event in order: ancestors at Tetragon's field)
POLICY_CASES = [
    ("process_kprobe", {"function_name": "f", "args": [{"int_arg": 1}], "action": "KPROBE_ACTION_POST",
                        "policy_name": "p", "tags": ["t"], "data": [{"size_arg": "7"}]},
     ["process", "parent", "function_name", "args", "action", "policy_name", "tags", "ancestors", "data"]),
    ("process_kprobe", {"function_name": "f", "policy_name": "p"},
     ["process", "parent", "function_name", "policy_name", "ancestors"]),
    ("process_tracepoint", {"subsys": "syscalls", "event": "sys_enter_uname", "policy_name": "p",
                            "action": "KPROBE_ACTION_POST", "tags": ["t"]},
     ["process", "parent", "subsys", "event", "policy_name", "action", "tags", "ancestors"]),
    ("process_uprobe", {"path": "/bin/x", "symbol": "main", "policy_name": "p", "args": [{"int_arg": 1}],
                        "tags": ["t"], "offset": "16", "action": "KPROBE_ACTION_POST"},
     ["process", "parent", "path", "symbol", "policy_name", "args", "tags", "ancestors", "offset", "action"]),
    ("process_lsm", {"function_name": "file_open", "policy_name": "p", "action": "KPROBE_ACTION_POST",
                     "ima_hash": "sha256:00"},
     ["process", "parent", "function_name", "policy_name", "action", "ancestors", "ima_hash"]),
    ("process_usdt", {"path": "/bin/x", "provider": "pr", "name": "n", "policy_name": "p",
                      "action": "KPROBE_ACTION_POST"},
     ["process", "parent", "path", "provider", "name", "policy_name", "ancestors", "action"]),
]
# the ancestors' field number in each message (tetragon.proto)
ANCESTORS_FIELD = {"process_kprobe": 13, "process_tracepoint": 11, "process_uprobe": 9, "process_lsm": 10,
                   "process_usdt": 10}


def _events(kind: str, body: dict[str, Any]) -> tuple[PolicyEvent, PolicyEvent]:
    return (PolicyEvent(kind, proc(20), PARENT, dict(body), T, "n", (A1, A2)),
            PolicyEvent(kind, proc(20), PARENT, dict(body), T, "n"))


@pytest.mark.parametrize("kind,body,keys", POLICY_CASES, ids=[f"{c[0]}-{len(c[1])}" for c in POLICY_CASES])
def test_policy_event_json_lists_ancestors_at_tetragons_field(kind: str, body: dict[str, Any],
                                                              keys: list[str]) -> None:
    ev, plain = _events(kind, body)
    line = codec.encode(ev)  # the compiled encoder when built (it hands such an event to the twin)
    assert line == codec.py_encode(_events(kind, body)[0]) == codec.encode_reference(ev)
    got = orjson.loads(line)[kind]
    assert list(got) == keys
    assert [a["binary"] for a in got["ancestors"]] == ["/usr/bin/make", "/sbin/init"]
    assert list(event_dict(_events(kind, body)[0])[kind]) == keys  # the dict view (filters) alike
    # protojson's own printing of the same message: the same object
    msg = json_format.Parse(json.dumps(orjson.loads(line)), events_pb2.GetEventsResponse())
    assert json_format.MessageToDict(msg, preserving_proto_field_name=True) == orjson.loads(line)
    # without ancestors the compiled and pure encoders agree and there is none
    assert codec.encode(plain) == codec.py_encode(_events(kind, body)[1])
    assert "ancestors" not in orjson.loads(codec.encode(plain))[kind]


def _fields(buf: bytes) -> list[int]:
    """The field numbers of a protobuf message's top level, in wire order."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        out.append(key >> 3)
        wt = key & 7
        if wt == 0:
            _, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            i += n
        else:
            raise AssertionError(f"wire type {wt}")
    return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


@pytest.mark.parametrize("kind,body,keys", POLICY_CASES, ids=[f"{c[0]}-{len(c[1])}" for c in POLICY_CASES])
def test_policy_event_protobuf_lists_ancestors_at_their_field_number(kind: str, body: dict[str, Any],
                                                                     keys: list[str]) -> None:
    ev, plain = _events(kind, body)
    b = wire.encode_event(ev)
    assert b == wire.py_encode_event(_events(kind, body)[0]) == wire.reference_bytes(event_dict(ev))
    resp = events_pb2.GetEventsResponse.FromString(b)
    msg = getattr(resp, kind)
    assert [a.binary for a in msg.ancestors] == ["/usr/bin/make", "/sbin/init"]
    inner = msg.SerializeToString()
    fields = _fields(inner)
    n = ANCESTORS_FIELD[kind]
    assert fields.count(n) == 2 and fields == sorted(fields)  # in field order: after tags, before data
    assert wire.encode_event(plain) == wire.py_encode_event(_events(kind, body)[1])
    assert not getattr(events_pb2.GetEventsResponse.FromString(wire.encode_event(plain)), kind).ancestors


# (--enable-ancestors, the filter's event_set, the error's words or None: taken)
FILTER_CASES = [
    ("", None, "events carry no ancestors (the agent runs without --enable-ancestors)"),
    ("base", None, "process_kprobe events carry no ancestors"),
    ("base", ["PROCESS_EXEC"], None),
    ("base", ["PROCESS_EXEC", "PROCESS_TRACEPOINT"], "process_tracepoint events carry no ancestors"),
    ("base,tracepoint", ["PROCESS_TRACEPOINT"], None),
    ("base,tracepoint", ["PROCESS_LSM"], "process_lsm events carry no ancestors"),
    ("base,kprobe,tracepoint,uprobe,lsm", None, "process_usdt events carry no ancestors"),
    ("base,kprobe,tracepoint,uprobe,lsm,usdt", None, None),
]


@pytest.mark.parametrize("types,event_set,error", FILTER_CASES, ids=[f"{c[0] or 'none'}-{c[1]}" for c in FILTER_CASES])
def test_ancestor_filter_needs_ancestors_on_its_event_types(types: str, event_set: list[str] | None,
                                                            error: str | None) -> None:
    options = FilterOptions.of(AgentConfig(enable_ancestors=types))
    spec: dict[str, Any] = {"ancestor_binary_regex": ["make"]}
    if event_set:
        spec["event_set"] = event_set
    if error is not None:
        with pytest.raises(FilterError, match=error.replace("(", r"\(").replace(")", r"\)")):
            compile_filter(spec, options)
        return
    f = compile_filter(spec, options)
    kind = event_set[0].lower() if event_set else "process_tracepoint"
    ev = (ProcessExec(proc(20), PARENT, (A1,), T, "n") if kind == "process_exec" else
          PolicyEvent(kind, proc(20), PARENT, {"subsys": "s", "event": "e"}, T, "n", (A1,)))
    d = event_dict(ev)
    assert all(c(d[kind], d) for c in f.checks)
    d = event_dict(ProcessExec(proc(20), PARENT, (A2,), T, "n"))  # no ancestor of the regex: no match
    assert not all(c(d["process_exec"], d) for c in f.checks)


def test_the_serving_processes_get_the_same_options() -> None:
    """A GetEvents serving process (vigil.api.fanout) is told the kinds with ancestors."""
    opts = FilterOptions.of(AgentConfig(enable_ancestors="base,lsm"))
    assert opts.fanout_args()[:2] == ["--ancestor-kinds", "process_exec,process_exit,process_lsm"]
    assert FilterOptions.of(AgentConfig()).fanout_args()[:2] == ["--ancestor-kinds", ""]


def _lineage_builder(compiled: bool, kinds: frozenset[str], spec: str) -> tuple[Any, Any, Any, list[int]]:
    """A builder whose cache knows 100 (parent pid 1, not cached) -> 101 -> 102, the hook of a
    policy of test_fastpath's GENERIC_SPECS, and the handler of policy records (compiled or handle());
    every record the compiled handler hands to handle() adds to the list."""
    from tests.unit.test_fastpath import HOST, _builders, _exec_record, _generic_hooks
    from vigil.agent.policy_events import PolicyEvents
    from vigil.events import records as R

    b, _ = _builders({"enable_cred": False, "enable_ns": False, "ancestors": True, "policy_ancestors": kinds}, 64)
    d = {"exe": "/bin/sh", "cwd": b"/", "filename": "/bin/sh", "cgroup": "", "args": b"sh\0", "caps": (0, 0, 0),
         "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0, "i_mode": 0o100755,
         "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC}
    h = b.record_handlers()
    h[R.OP_EXEC](_exec_record(100, 5_000_000_000, 1, 0, d), 1)
    h[R.OP_EXEC](_exec_record(101, 6_000_000_000, 100, 5_000_000_000, d), 2)
    h[R.OP_EXEC](_exec_record(102, 6_500_000_000, 101, 6_000_000_000, d), 3)
    hooks, lp = _generic_hooks(spec)
    pe = PolicyEvents(b, lambda e: None, {c.hook_id: (c, lp) for c in hooks}, None)  # type: ignore[arg-type]
    calls: list[int] = []
    py_handle = pe.handle
    pe.handle = lambda buf, now: (calls.append(1), py_handle(buf, now))[1]  # type: ignore[method-assign]
    return b, pe, hooks[0], calls if compiled else []


# (--enable-ancestors' policy kinds, the hook's kind, whether its event lists 100 as ancestor)
BUILD_CASES = [
    (frozenset(), "kprobe", False),
    (frozenset({"process_kprobe"}), "kprobe", True),
    (frozenset({"process_kprobe"}), "tracepoint", False),
    (frozenset({"process_tracepoint"}), "tracepoint", True),
    (frozenset({"process_lsm", "process_uprobe"}), "kprobe", False),
]


@pytest.mark.parametrize("kinds,hook,listed", BUILD_CASES, ids=[f"{sorted(c[0])}-{c[1]}" for c in BUILD_CASES])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_policy_events_list_ancestors_of_the_named_types(compiled: bool, kinds: frozenset[str], hook: str,
                                                         listed: bool) -> None:
    """A policy record of pid 102 (parent 101, grandparent 100): its event lists 100 as its
    ancestor exactly when its type is named; the compiled handler leaves such a hook's records
    to handle() (and makes the others itself); both encode as the pure encoders do."""
    from tests.unit.test_fastpath import _generic_record, plain_record

    b, pe, ch, calls = _lineage_builder(compiled, kinds, "kprobe-string" if hook == "kprobe" else "tracepoint")
    handle = pe.compiled_handler() if compiled else pe.handle
    args = [(b"/etc/passwd", 0, 0, 0), (b"", 3, 0, 0)] if hook == "kprobe" else []
    rec = plain_record(pid=102, exec_ktime=6_500_000_000, args=args)
    ev = handle(_generic_record(ch, rec), 0)
    assert ev.kind == f"process_{hook}" and ev.parent.pid == 101
    assert [a.pid for a in ev.ancestors] == ([100] if listed else [])
    if compiled:
        assert calls == ([1] if listed else [])  # made in C unless its events list ancestors
    d = orjson.loads(codec.encode(ev))[ev.kind]
    assert ("ancestors" in d) == listed and codec.encode(ev) == codec.encode_reference(ev)
    assert wire.encode_event(ev) == wire.reference_bytes(event_dict(ev))


@pytest.mark.parametrize("kinds,listed", [(frozenset({"process_kprobe"}), True), (frozenset(), False)])
def test_a_held_policy_event_gets_its_ancestors_when_released(kinds: frozenset[str], listed: bool) -> None:
    """A policy record whose parent the cache lacks (its exec record behind) waits; released
    once the parent comes, it lists the ancestors then (as a held exec or exit)."""
    from tests.unit.test_fastpath import HOST, _exec_record, _generic_record, plain_record
    from vigil.events import records as R

    b, pe, kp, _ = _lineage_builder(False, kinds, "kprobe-string")
    d = {"exe": "/bin/sh", "cwd": b"/", "filename": "/bin/sh", "cgroup": "", "args": b"sh\0", "caps": (0, 0, 0),
         "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0, "i_mode": 0o100755,
         "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC}
    # 104's exec names 103 as parent, whose exec record (child of 102) comes after the policy record
    b.record_handlers()[R.OP_EXEC](_exec_record(104, 8_000_000_000, 103, 7_500_000_000, d), 4)
    rec = plain_record(pid=104, exec_ktime=8_000_000_000, ktime=9_000_000_000,
                       args=[(b"/etc/passwd", 0, 0, 0), (b"", 3, 0, 0)])
    ev = pe.handle(_generic_record(kp, rec), 0)
    assert ev.parent is None and ev.ancestors == ()
    assert b.hold.take([ev], 9_000_000_000, 1) == []  # held for its parent
    b.record_handlers()[R.OP_EXEC](_exec_record(103, 7_500_000_000, 102, 6_500_000_000, d), 5)
    assert b.hold.retry(9_500_000_000, 2) == [ev]
    assert ev.parent.pid == 103
    assert [a.pid for a in ev.ancestors] == ([102, 101, 100] if listed else [])


@pytest.mark.parametrize("value,args", [(False, ["--ancestor-kinds", ""]), (True, [])])
def test_filter_options_take_the_boolean_form(value: bool, args: list[str]) -> None:
    """FilterOptions(ancestors=False) (what events of any agent without the option carry) is
    none, True all: fanout_args failed on the bool (sorted(False))."""
    opts = FilterOptions(ancestors=value)  # type: ignore[arg-type]
    assert opts.fanout_args()[:len(args)] == args and bool(opts.ancestors) is value
