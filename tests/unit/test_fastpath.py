"""The compiled hot path (native/fastpath.c) against its pure-Python twins, byte for byte
and attribute for attribute, on generated inputs: record decoding, argument formatting,
exec ids, and the JSON and protobuf encodings of every event kind."""
from __future__ import annotations

import errno
import gc
import struct
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vigil.api import wire
from vigil.core import native
from vigil.core.events import DictEvent, Pod, PodShared, PolicyEvent, ProcessExec, ProcessExit, ProcessMsg
from vigil.events import generic, records as R
from vigil.export import codec
from vigil.export.dicts import event_dict
from vigil.process import build, ids


def test_extension_is_built_and_selected() -> None:
    assert native.fast is not None, "vigil/_fastpath is not built: `make native`"
    assert R.ProcessRecord is native.fast.ProcessRecord
    assert codec.encode is native.fast.encode_json
    assert wire.encode_event is native.fast.encode_pb
    assert build.format_arguments is native.fast.format_arguments


FAST = native.fast
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
# every character class the encoders treat differently: ASCII, quotes, backslash, control
# characters, DEL, 2/3/4-byte UTF-8
text = st.text(st.one_of(st.characters(max_codepoint=0x7F), st.sampled_from('"\\\x00\x1f\x7f\u00e9\u2028\U0001F600')),
               max_size=24)


# ------------------------------------------------------------------ records

def _record(fields: list[int], tail: list[bytes], op: int) -> bytes:
    lens = [len(t) for t in tail]
    vals = [op, 0, fields[0] & 0xFFFF, 0, fields[1]] + fields[2:] + lens + [0]
    return R.PROCESS.pack(*vals) + b"".join(tail)


@st.composite
def process_records(draw: Any) -> bytes:
    fmt = R.PROCESS.format[1:] if R.PROCESS.format[0] in "@=<>!" else R.PROCESS.format
    # one value per field after the header's op/pad/flags/size, before the five lengths and pad
    n_mid = len(R.PROCESS.unpack(bytes(R.PROCESS.size))) - 4 - 6
    kinds = fmt.replace("10I", "I" * 10)
    codes = [c for c in kinds if c.isalpha()][4:4 + n_mid]
    mid = [draw(u64 if c == "Q" else u32) for c in codes]
    flags = draw(st.integers(0, 0xFFFF))
    tail = [draw(st.binary(max_size=40)) for _ in range(4)] + [draw(st.binary(max_size=200))]
    if draw(st.booleans()):  # argv-like: NUL-separated text
        tail[4] = b"\0".join(a.encode() for a in draw(st.lists(text, max_size=6))) + b"\0"
    return _record([flags] + mid, tail, draw(st.sampled_from([R.OP_EXEC, R.OP_CLONE])))


def _attrs(r: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(r, n) for n in names}


@SETTINGS
@given(process_records(), st.integers(0, 8))
def test_process_record(buf: bytes, cut: int) -> None:
    names = R.PyProcessRecord.__slots__
    assert _attrs(FAST.ProcessRecord(buf), names) == _attrs(R.PyProcessRecord(buf), names)
    short = buf[: len(buf) - cut] if cut and len(buf) > R.PROCESS.size else buf[: R.PROCESS.size - cut]
    outcomes = []
    for cls in (FAST.ProcessRecord, R.PyProcessRecord):
        try:
            outcomes.append(_attrs(cls(short), names))
        except R.DecodeError as e:
            outcomes.append(("DecodeError", str(e)))
    assert outcomes[0] == outcomes[1]


@SETTINGS
@given(st.binary(min_size=R.EXIT.size - 2, max_size=R.EXIT.size + 4))
def test_exit_record(buf: bytes) -> None:
    outcomes = []
    for cls in (FAST.ExitRecord, R.PyExitRecord):
        try:
            outcomes.append(_attrs(cls(buf), R.PyExitRecord.__slots__))
        except R.DecodeError as e:
            outcomes.append(("DecodeError", str(e)))
    assert outcomes[0] == outcomes[1]


@SETTINGS
@given(st.one_of(st.binary(max_size=300),
                 st.lists(text, max_size=8).map(lambda a: b"\0".join(x.encode() for x in a)),
                 st.lists(st.sampled_from([b"a", b" ", b"b c", b"\xff", b"\xe2\x82", b""]), max_size=8)
                 .map(lambda a: b"\0".join(a) + b"\0")))
def test_format_arguments(args: bytes) -> None:
    assert FAST.format_arguments(args) == build.py_format_arguments(args)


@SETTINGS
@given(text, u64, u32)
def test_exec_id(node: str, ktime: int, pid: int) -> None:
    assert FAST.exec_id(node, ktime, pid) == ids.py_exec_id(node, ktime, pid)


# ------------------------------------------------------------------ events
CAPS = {"permitted": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"]}
NS = {"uts": {"inum": 4026531838, "is_host": True}}
CREDS = {"uid": 0, "gid": 5, "securebits": ["SecBitKeepCaps"], "caps": CAPS}
SHARED_PODS = (  # a container's part of the pod object, as the resolver makes it and (plain dicts) as the twin takes it
    PodShared(namespace="default", name="web-1", uid="u-1", container={"id": "containerd://abc", "name": "c"}),
    PodShared(namespace="shop", name="api-7d9-x2", uid="u-2",
              container={"id": "containerd://" + "f" * 64, "name": "api",
                         "image": {"id": "r/api@sha256:00", "name": "r/api:1"}, "start_time": "2026-12-05T10:00:00Z"},
              pod_labels={"app": "api", "\u00e9": "\"x\""}, workload="api", workload_kind="Deployment",
              pod_annotations={"a": "b"}),
    {"namespace": "default", "name": "web-1", "uid": "u-1", "container": {"id": "containerd://abc", "name": "c"}},
    {"namespace": "shop", "name": "api-7d9-x2", "uid": "u-2",
     "container": {"id": "containerd://" + "f" * 64, "name": "api", "image": {"id": "r/api@sha256:00", "name": "r/api:1"},
                   "start_time": "2026-12-05T10:00:00Z"},
     "pod_labels": {"app": "api", "\u00e9": "\"x\""}, "workload": "api", "workload_kind": "Deployment",
     "pod_annotations": {"a": "b"}},
    # security_context is the container's last field: the process's pid and exec-probe guess go before it
    PodShared(namespace="shop", name="db-0", uid="u-3",
              container={"id": "containerd://" + "e" * 64, "name": "db", "image": {},
                         "security_context": {"privileged": True}}, workload="db", workload_kind="StatefulSet"),
    {"namespace": "shop", "name": "db-0", "uid": "u-3",
     "container": {"id": "containerd://" + "e" * 64, "name": "db", "image": {"name": "r/db:1"},
                   "start_time": "2026-12-05T10:00:00Z", "security_context": {}}},
    # an empty container object: the process's fields are its first (no comma before them)
    PodShared(namespace="x", name="empty-0", uid="u-4", container={}),
    {"namespace": "x", "name": "empty-0", "uid": "u-4", "container": {}},
)
BODIES = {
    "process_kprobe": {"function_name": "security_file_open", "args": [{"file_arg": {"path": "/etc/x"}}],
                       "action": "KPROBE_ACTION_POST", "policy_name": "p"},
    "process_tracepoint": {"subsys": "syscalls", "event": "sys_enter_openat", "args": [{"long_arg": "42"}]},
    "process_uprobe": {"path": "/bin/bash", "symbol": "readline"},
    "process_lsm": {},
}
times = st.one_of(
    st.integers(0, 2**34).map(lambda s: f"2026-12-{1 + s % 28:02d}T{s % 24:02d}:{s % 60:02d}:{s % 59:02d}."
                              f"{s % 1_000_000_000:09d}Z"),
    st.integers(0, 2**34).map(lambda s: f"2026-12-{1 + s % 28:02d}T{s % 24:02d}:{s % 60:02d}:{s % 59:02d}"
                              + ("Z", f".{s % 1000:03d}Z", f".{s % 1_000_000:06d}Z")[s % 3]),
    st.sampled_from(["1970-01-01T00:00:00.000000000Z", "2026-12-05T11:00:00Z", "2026-12-05T11:00:00.5+01:00",
                     "2024-02-29T23:59:59.999999999Z", "1970-01-01T00:00:00Z", "2026-12-05T11:00:00.120Z",
                     "2026-12-05T11:00:00.000001Z", "2026-13-05T11:00:00.120Z", "2026-12-05T11:00:00.12xZ",
                     "2026-12-05T11:00:00.1234Z"]))
maybe_int = st.one_of(st.none(), u32)


@st.composite
def msg_specs(draw: Any) -> dict[str, Any]:
    return dict(exec_id=draw(st.one_of(st.just(""), text)), pid=draw(u32), uid=draw(maybe_int), cwd=draw(text),
                binary=draw(text), arguments=draw(text), flags=draw(st.sampled_from(["", "execve", "execve clone"])),
                start_time=draw(st.one_of(st.just(""), times)), auid=draw(maybe_int),
                pod=draw(st.one_of(st.none(), st.builds(Pod, st.sampled_from(SHARED_PODS), u32, st.booleans()))),
                docker=draw(st.sampled_from(["", "0123abc"])),
                parent_exec_id=draw(st.one_of(st.just(""), text)), cap=draw(st.sampled_from([None, {}, CAPS])),
                ns=draw(st.sampled_from([None, NS])), tid=draw(maybe_int),
                process_credentials=draw(st.sampled_from([None, CREDS])),
                binary_properties=draw(st.sampled_from([None, {"setuid": 0}])),
                in_init_tree=draw(st.sampled_from([None, True, False])))


@st.composite
def event_specs(draw: Any) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(["exec", "exit", "process_kprobe", "process_tracepoint", "process_uprobe",
                                 "process_lsm", "dict"]))
    spec = dict(process=draw(msg_specs()), parent=draw(st.one_of(st.none(), msg_specs())),
                ancestors=draw(st.lists(msg_specs(), max_size=2)), time=draw(times), node=draw(text.filter(bool)),
                signal=draw(st.sampled_from(["", "SIGKILL"])), status=draw(st.one_of(st.sampled_from([0, 1, 2, 127, 128, 255]), st.integers(0, 255))))
    return kind, spec


def _make(kind: str, s: dict[str, Any]) -> Any:
    """A fresh object graph from a spec: each path encodes its own (encodings are cached)."""
    m: Callable[[dict[str, Any]], ProcessMsg] = lambda d: ProcessMsg(**d)  # noqa: E731
    parent = m(s["parent"]) if s["parent"] else None
    if kind == "exec":
        return ProcessExec(m(s["process"]), parent, tuple(map(m, s["ancestors"])), s["time"], s["node"])
    if kind == "exit":
        return ProcessExit(m(s["process"]), parent, tuple(map(m, s["ancestors"])), s["signal"], s["status"],
                           s["time"], s["node"])
    if kind == "dict":
        return DictEvent({"rate_limit_info": {"number_of_dropped_process_events": "3"}, "node_name": s["node"],
                          "time": s["time"]})
    return PolicyEvent(kind, m(s["process"]), parent, BODIES[kind], s["time"], s["node"])


def _outcome(fn: Callable[[Any], bytes], ev: Any) -> Any:
    try:
        return fn(ev)
    except Exception as e:  # noqa: BLE001 - both paths must fail alike
        return type(e).__name__


@SETTINGS
@given(event_specs())
def test_event_json(spec: tuple[str, dict[str, Any]]) -> None:
    kind, s = spec
    fast, ref = _make(kind, s), _make(kind, s)
    line = FAST.encode_json(fast)
    assert line == codec.py_encode(ref) == codec.encode_reference(_make(kind, s))
    assert FAST.encode_json(fast) is line  # cached on the event
    assert FAST.encode_json_batch([_make(kind, s), fast]) == [line, line]
    if kind != "dict":
        assert FAST.process_json(_make(kind, s).process) == codec.py_process_json(ref.process)
    # as pieces for the export's writev: the same bytes, with or without lines cached already
    batch = [_make(kind, s), fast, _make(kind, s)]
    pieces, total = FAST.encode_json_pieces(batch)
    assert b"".join(pieces) == line * 3 and total == 3 * len(line)
    assert codec.py_encode_pieces([_make(kind, s), ref])[1] == 2 * len(line)
    assert b"".join(codec.py_encode_pieces([_make(kind, s), ref])[0]) == line * 2
    if kind != "dict":  # a process message goes in by reference, not copied into the line
        assert any(p is batch[0].process.enc_json for p in pieces)


@SETTINGS
@given(event_specs())
def test_event_protobuf(spec: tuple[str, dict[str, Any]]) -> None:
    kind, s = spec
    fast, ref = _make(kind, s), _make(kind, s)
    out = _outcome(FAST.encode_pb, fast)
    assert out == _outcome(wire.py_encode_event, ref)
    if isinstance(out, bytes) and kind != "dict":
        assert out == wire.reference_bytes(event_dict(_make(kind, s)))
    if isinstance(out, bytes):
        assert FAST.encode_pb_batch([_make(kind, s)]) == [out]
        if kind != "dict":
            assert FAST.process_pb(_make(kind, s).process) == wire.py_process_bytes(ref.process)


def test_compiled_protobuf_parses_every_form_the_clock_writes() -> None:
    """The compiled encoder reads protojson's 0, 3, 6 and 9-digit Timestamp forms itself
    (the twin is asked only for other forms) and writes the twin's bytes."""
    asked: list[Any] = []

    def twin(v: Any) -> bytes:
        asked.append(v)
        return wire._ts_bytes(v)

    def configure(ts: Callable[[Any], bytes]) -> None:
        FAST.configure_pb(encode=wire.py_encode_event, process_bytes=wire.py_process_bytes, sub=wire._submsg,
                          timestamp=ts, body=wire._policy_rest, kind_numbers=dict(wire._EVENT_FIELD),
                          pod_parts=wire.pod_parts)

    forms = ["2026-12-05T11:00:00Z", "2026-12-05T11:00:00.120Z", "2026-12-05T11:00:00.000001Z",
             "2026-12-05T11:00:00.123456789Z"]
    configure(twin)
    try:
        for t in forms:
            mk = lambda t=t: ProcessExec(ProcessMsg("e", 1, start_time=t), None, (), t, "n")  # noqa: E731
            assert FAST.encode_pb(mk()) == wire.py_encode_event(mk())
        assert asked == []
        mk = lambda: ProcessExec(ProcessMsg("e", 1), None, (), "2026-12-05T11:00:00.5Z", "n")  # noqa: E731
        assert FAST.encode_pb(mk()) == wire.py_encode_event(mk())
        assert asked == ["2026-12-05T11:00:00.5Z"]
    finally:
        configure(wire._ts_bytes)


def _joined(encode_pieces: Callable[[list[Any]], tuple[list[bytes], int]]) -> Callable[[list[Any]], Any]:
    return lambda evs: (lambda p, n: (b"".join(p), n))(*encode_pieces(evs))


def test_unexpected_field_types_go_to_the_twin() -> None:
    """A field of a type the C encoder does not write is handed to the reference whole."""
    for odd in (dict(uid=-1), dict(pid=None), dict(cwd=b"/bytes"), dict(tid=True), dict(cap=["x"]),
                dict(auid=2**70), dict(in_init_tree=1), dict(in_init_tree="yes")):
        base = dict(exec_id="e", pid=1, cwd="/", binary="/b")
        base.update(odd)  # type: ignore[arg-type]
        ev = ProcessExec(ProcessMsg(**base), None, (), "2026-12-05T11:00:00.000000001Z", "n")  # type: ignore[arg-type]
        ref = ProcessExec(ProcessMsg(**base), None, (), "2026-12-05T11:00:00.000000001Z", "n")  # type: ignore[arg-type]
        assert _outcome(FAST.encode_json, ev) == _outcome(codec.py_encode, ref), odd
        ev.enc_json = ref.enc_json = None
        assert _outcome(_joined(FAST.encode_json_pieces), [ev]) == _outcome(_joined(codec.py_encode_pieces), [ref])
        ev.enc_pb = ref.enc_pb = None
        assert _outcome(FAST.encode_pb, ev) == _outcome(wire.py_encode_event, ref), odd


# ------------------------------------------------------------------ the process stage
HOST = (4026531835, 4026531836, 4026531837, 4026531838, 4026531839, 4026531840, 4026531841, 4026531842,
        4026531843, 4026531844)
NS_CHOICES = (HOST, HOST[:3] + (4026532000,) + HOST[4:], (0,) * 10, HOST[:9] + (4026532999,))
FILENAMES = ("/usr/bin/curl", "curl", "./x", "", "/dev/fd/3", "/proc/self/fd/4", "../bin/sh\u00e9", "/usr/bin/a b")
CWDS = (b"/home/u", b"", b"/", b"/tmp/\xff")
POD_UID = "5f0c7a52-8c1e-4b7e-9d55-0123456789ab"
KNOWN, UNKNOWN = "ab12" * 16, "cd34" * 16  # container ids: one of a listed pod, one of none


def _exec_record(pid: int, ktime: int, ppid: int, pktime: int, d: dict[str, Any]) -> bytes:
    exe = d["exe"].encode()
    cwd = d["cwd"]
    fn = d["filename"].encode() + b"\0"
    cg = d["cgroup"].encode() + b"\0"
    args = d["args"]
    caps = d["caps"]
    head = R.PROCESS.pack(
        d["op"], 0, d["flags"], 0, ktime + 1000, pid, 0, ktime, ppid if pktime else 0, 0, pktime,
        pid + d["tid_off"], ppid, d.get("nspid") or pid, d["auid"], d["uid"], d["uid"], d["euid"], d["uid"], d["uid"], d["uid"],
        d["uid"], d["uid"], d["securebits"], d["userns_level"], 0, 0, caps[0], caps[1], caps[2], *d["ns"], 77,
        123456, d["i_mode"], d["nlink"], ktime, d.get("ckey", (0, 0))[0], 0, d.get("ckey", (0, 0))[1],
        len(exe), len(cwd), len(fn), len(cg), len(args), d.get("privs", 0))
    return head + exe + cwd + fn + cg + args


exec_fields = st.fixed_dictionaries({
    "exe": st.sampled_from(["/usr/bin/curl", "", "/memfd:x (deleted)"]), "cwd": st.sampled_from(CWDS),
    "filename": st.sampled_from(FILENAMES),
    "cgroup": st.sampled_from(["", "session-3.scope", "cri-containerd-" + KNOWN + ".scope",
                               f"/kubepods/besteffort/pod{POD_UID}/{KNOWN}",
                               f"/kubepods/besteffort/pod{POD_UID}/{UNKNOWN}"]),
    "args": st.sampled_from([b"", b"curl\0", b"curl\0-s\0a b\0", b"x\0\xff\xfe\0"]),
    "caps": st.sampled_from([(0, 0, 0), (0x1FFFFFFFFFF, 0x1FFFFFFFFFF, 0), (1, 1, 1 << 40)]),
    "ns": st.sampled_from(NS_CHOICES), "uid": st.sampled_from([0, 1000]), "euid": st.sampled_from([0, 1000]),
    "auid": st.sampled_from([0, 4294967295]), "securebits": st.sampled_from([0, 0x2F]),
    "userns_level": st.sampled_from([0, 1]), "i_mode": st.sampled_from([0o100755, 0o104755, 0o102755]),
    "nlink": st.sampled_from([1, 1, 0]), "flags": st.sampled_from([0, 1, 1 << 3, 1 << 4, 1 << 8, (1 << 2) | 1, 1 << 11, (1 << 11) | (1 << 4),
                               1 << 12, 1 << 13, (1 << 11) | (1 << 12) | (1 << 13)]),
    "tid_off": st.sampled_from([0, 0, 3]), "op": st.sampled_from([R.OP_EXEC, R.OP_EXEC, R.OP_CLONE]),
    "nspid": st.sampled_from([0, 0, 0, 1, 2]),  # 0: the host pid; 1: pid 1 of a namespace (in_init_tree)
    # a clone's caller when it is not the parent (CLONE_PARENT): an index into the pids so far
    # (-1: none), named by its exec key or (False) by pid alone
    "caller": st.sampled_from([-1, -1, -1, 0, 1, 2, 5]), "caller_keyed": st.booleans(),
    # a privileged exec (enum vigil_exec_privs): set-user/group-ID, to root, file capabilities
    "privs": st.sampled_from([0, 0, 0, R.PRIV_SETUID, R.PRIV_SETUID | R.PRIV_SETUID_ROOT, R.PRIV_FILE_CAPS,
                              R.PRIV_SETGID | R.PRIV_SETGID_ROOT | R.PRIV_SETUID, 31]),
})
steps = st.lists(st.one_of(
    st.tuples(st.just("exec"), st.integers(0, 12), st.integers(0, 12), st.booleans(), exec_fields),
    st.tuples(st.just("exit"), st.integers(0, 14), st.integers(0, 0xFFFF), st.booleans()),
    st.tuples(st.just("gc"), st.integers(0, 3)),
    st.tuples(st.just("pod"), st.integers(0, 3)),
), min_size=1, max_size=40)




def _pod_object(variant: int) -> dict[str, Any]:
    """The pod of container KNOWN as the API server lists it; variants change its labels,
    image or exec probes (a new store entry: cached pod parts must not be reused)."""
    probe = ["curl", "-s", "a b"] if variant % 2 else ["/usr/bin/curl"]
    return {"metadata": {"name": "web-1", "namespace": "shop", "uid": POD_UID,
                         "labels": {"app": "web", "rev": str(variant)},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d4f8c", "controller": True}]},
            "spec": {"nodeName": "n", "containers": [{"name": "app", "image": f"web:{variant}",
                                                      "livenessProbe": {"exec": {"command": probe}}}]},
            "status": {"containerStatuses": [
                {"name": "app", "containerID": f"containerd://{KNOWN}", "image": f"web:{variant}",
                 "imageID": "web@sha256:" + "0" * 64, "state": {"running": {"startedAt": "2026-12-05T10:00:00Z"}}}]}}


def _resolver() -> Any:
    from vigil.k8s.enrich import PodResolver
    from vigil.k8s.pods import PodStore

    store = PodStore()
    store.upsert(_pod_object(0))
    return PodResolver(store)


def _pod_step(b: Any, variant: int) -> None:
    """The watcher's news: the pod changed (variants 0-2) or was deleted (3)."""
    if variant == 3:
        b.pods.store.delete({"metadata": {"uid": POD_UID}})
    else:
        b.pods.store.upsert(_pod_object(variant))


def _builders(opts: dict[str, Any], capacity: int) -> tuple[Any, Any]:
    from vigil.process.build import BuildOptions, EventBuilder
    from vigil.process.cache import ProcessCache
    from vigil.process.clock import WallClock

    out = []
    for _ in range(2):
        clock = WallClock()
        clock.offset, clock.boot_offset = 1_764_000_000_000_000_000, 0
        out.append(EventBuilder(ProcessCache(capacity=capacity, grace_ns=50), clock,
                                BuildOptions("node-\u00e9", host_ns=HOST, **opts)))
    return out[0], out[1]


def _cache_state(b: Any) -> Any:
    def proc(p: Any) -> tuple[Any, ...]:
        return tuple(codec.py_process_json(p.msg) if n == "msg" else getattr(p, n) for n in type(p).__slots__)

    c = b.cache
    return ({k: proc(p) for k, p in c._by_key.items()}, {k: p.key for k, p in c._by_pid.items()},
            [p.key for p in c._pending], [p.key for p in c._order], c.evictions, c.removed, c.misses,
            b.exec_count, b.exit_count, b.clone_count, b.miss_count)


def _assert_acyclic(*objs: Any) -> None:
    """None of the objects can reach itself again: the compiled builder leaves the ones it
    makes untracked by the cyclic GC (new_slotted in native/fastpath.c), which is only
    sound for objects in no reference cycle."""
    for obj in objs:
        if obj is None:
            continue
        seen: set[int] = set()
        todo = [r for r in gc.get_referents(obj) if not isinstance(r, type)]
        while todo:
            o = todo.pop()
            assert o is not obj, f"{type(obj).__name__} is in a reference cycle"
            if id(o) not in seen and not isinstance(o, (str, bytes, int)):
                seen.add(id(o))
                todo.extend(r for r in gc.get_referents(o) if not isinstance(r, type))


def test_compiled_builder_objects_are_left_to_reference_counting() -> None:
    """What the compiled builder makes per exec and exit (process, message, pod, events) is
    not tracked by the cyclic GC: young-generation collections do not traverse them."""
    fast_b, _ = _builders({"enable_cred": True, "enable_ns": True, "ancestors": True}, 64)
    fast_b.pods = _resolver()
    handlers = fast_b.record_handlers()
    d = {"exe": "/bin/true", "cwd": b"/", "filename": "/bin/true", "cgroup": f"/kubepods/besteffort/pod{POD_UID}/{KNOWN}",
         "args": b"true\0-q\0", "caps": (0, 0, 0), "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0,
         "userns_level": 0, "i_mode": 0o100755, "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC}
    parent = handlers[R.OP_EXEC](_exec_record(100, 5_000_000_000, 1, 0, d), 1)
    child = handlers[R.OP_EXEC](_exec_record(101, 6_000_000_000, 100, 5_000_000_000, d), 2)
    gone = handlers[R.OP_EXIT](R.EXIT.pack(R.OP_EXIT, 0, 0, R.EXIT.size, 7_000_000_000, 101, 0, 6_000_000_000,
                                           101, 0), 3)
    assert child.process.pod is not None and child.parent is parent.process
    made = (parent, child, gone, child.process, child.process.pod, fast_b.cache.get((101, 6_000_000_000)))
    assert [gc.is_tracked(o) for o in made] == [False] * len(made)
    _assert_acyclic(*made)


class _SlottedPod(Pod):
    __slots__ = ("extra",)


class _DictPod(Pod):  # a __dict__ and a __weakref__ of its own
    pass


def _compiled_pod(shared: PodShared, pid: int) -> Pod:
    """A Pod the compiled exec path made (from the resolver's table), holding `pid`."""
    fast_b, _ = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    fast_b.pods = _resolver()
    d = {"exe": "/bin/true", "cwd": b"/", "filename": "/bin/true", "cgroup": f"/kubepods/besteffort/pod{POD_UID}/{KNOWN}",
         "args": b"true\0-q\0", "caps": (0, 0, 0), "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0,
         "userns_level": 0, "i_mode": 0o100755, "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC, "nspid": pid}
    on_exec = fast_b.record_handlers()[R.OP_EXEC]
    on_exec(_exec_record(pid + 1, 5_000_000_000, 1, 0, d), 1)  # the first asks the resolver, which fills the table
    pod = on_exec(_exec_record(pid + 2, 6_000_000_000, 1, 0, d), 2).process.pod
    assert type(pod) is Pod and not gc.is_tracked(pod)
    return pod


# how a Pod was made -> what freeing it must give back. The registered Pod class is freed by the
# compiled module's own dealloc (subtype_dealloc, the generic one, was ~200 instructions per
# process in a container); every kind of Pod must still release everything it holds, once
@pytest.mark.parametrize("make", [
    lambda shared, v: Pod(shared, v, False),                              # the twin's: tracked
    lambda shared, v: _compiled_pod(shared, 5000),                        # the exec path's: untracked
    lambda shared, v: _SlottedPod(shared, v, True),                       # a subclass with a slot
    lambda shared, v: _DictPod(shared, v, True),                          # a subclass with a dict
], ids=["twin", "compiled", "subclass-slots", "subclass-dict"])
@pytest.mark.skipif(native.fast is None, reason="the compiled module is not built")
def test_a_freed_pod_gives_back_what_it_holds(make: Callable[[PodShared, int], Pod]) -> None:
    pod = make(PodShared({"namespace": "ns", "container": {"id": "c"}}), 10**12 + 7)
    gc.collect()  # what made it (the builder, its cache) is gone: the pod holds its own
    v, shared = pod.pid, pod.shared  # ints of their own (no cached small int): counts are the test's
    if isinstance(pod, _SlottedPod):
        pod.extra = v
    if isinstance(pod, _DictPod):
        pod.more = v  # type: ignore[attr-defined]
    held = sys.getrefcount(v), sys.getrefcount(shared)
    pod_class = type(pod)
    classes = sys.getrefcount(pod_class)
    extra = 1 + isinstance(pod, (_SlottedPod, _DictPod))  # the pid slot, and the subclass's own
    del pod
    gc.collect()
    assert (sys.getrefcount(v), sys.getrefcount(shared)) == (held[0] - extra, held[1] - 1)
    assert sys.getrefcount(pod_class) == classes - 1


# (pid, pid inside its namespace, --enable-k8s-api): the compiled exec path makes one int for
# the pid inside the namespace, which the cache entry and the pod share; a host process's is its
# pid's (values above 256: CPython's small ints are shared anyway)
@pytest.mark.parametrize("pid, nspid, pods", [
    (5000, 5000, True),    # a host process (a kubelet container in the host pid namespace)
    (5000, 4000, True),    # a process in the container's own pid namespace
    (5000, 5000, False),   # Kubernetes off
    (5000, 4000, False),
], ids=["host-pod", "ns-pod", "host", "ns"])
def test_compiled_exec_makes_one_int_for_the_namespace_pid(pid: int, nspid: int, pods: bool) -> None:
    fast_b, _ = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    if pods:
        fast_b.pods = _resolver()
    d = {"exe": "/bin/true", "cwd": b"/", "filename": "/bin/true", "cgroup": f"/kubepods/besteffort/pod{POD_UID}/{KNOWN}",
         "args": b"true\0-q\0", "caps": (0, 0, 0), "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0,
         "userns_level": 0, "i_mode": 0o100755, "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC, "nspid": nspid}
    ev = fast_b.record_handlers()[R.OP_EXEC](_exec_record(pid, 5_000_000_000, 1, 0, d), 1)
    p = fast_b.cache.get((pid, 5_000_000_000))
    assert (p.nspid, ev.process.pid) == (nspid, pid)
    if pods:
        assert ev.process.pod is not None and ev.process.pod.pid == nspid
        assert p.nspid is ev.process.pod.pid
    else:
        assert ev.process.pod is None
    assert (p.nspid is ev.process.pid) == (nspid == pid)


# an exec's (privs, links, --enable-process-cred) -> its process_exec's binary_properties.
# Tetragon adds them to that event's process alone (UpdateExecOutsideCache: a copy, never the
# cache entry): the process's exit, its policy events, a child's `parent`, a fork's entry and
# the ancestors lists carry none
@pytest.mark.parametrize("privs, links, cred, want", [
    (R.PRIV_SETUID | R.PRIV_SETUID_ROOT, 1, True,
     {"setuid": 0, "privileges_changed": ["PRIVILEGES_RAISED_EXEC_FILE_SETUID"]}),
    (0, 0, True, {"file": {"inode": {"number": "123456", "links": 0}}}),
    (0, 0, False, None),   # none at all without --enable-process-cred, as in Tetragon
    (0, 1, True, None),
], ids=["setuid-root", "unlinked", "unlinked-no-cred", "plain"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_binary_properties_are_the_exec_events_alone(compiled: bool, privs: int, links: int, cred: bool,
                                                     want: dict[str, Any] | None) -> None:
    from vigil.agent.policy_events import PolicyEvents
    from vigil.export.dicts import process_dict

    b, _ = _builders({"enable_cred": cred, "enable_ns": False, "ancestors": True}, 64)
    if compiled:
        on_exec, on_clone, on_exit = (b.record_handlers()[op] for op in (R.OP_EXEC, R.OP_CLONE, R.OP_EXIT))
    else:
        on_exec = lambda buf, now: b.on_exec(R.ProcessRecord(buf), now)  # noqa: E731
        on_clone = lambda buf, now: b.on_clone(R.ProcessRecord(buf), now)  # noqa: E731
        on_exit = lambda buf, now: b.on_exit(R.ExitRecord(buf), now)  # noqa: E731
    d = {"exe": "/bin/su", "cwd": b"/", "filename": "/bin/su", "cgroup": "", "args": b"su\0", "caps": (0, 0, 0),
         "ns": HOST, "uid": 1000, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0, "i_mode": 0o104755,
         "nlink": links, "flags": 0, "tid_off": 0, "op": R.OP_EXEC, "privs": privs}
    plain = {**d, "exe": "/bin/true", "filename": "/bin/true", "args": b"true\0", "nlink": 1, "privs": 0}
    on_exec(_exec_record(99, 4_000_000_000, 1, 0, plain), 0)
    ex = on_exec(_exec_record(100, 5_000_000_000, 99, 4_000_000_000, d), 1)
    got = event_dict(ex)["process_exec"]["process"]
    assert got.get("binary_properties") == want
    cached = b.cache.get((100, 5_000_000_000)).msg
    assert cached.binary_properties is None
    # both encodings: the event's process is the cached one's with binary_properties
    assert {k: v for k, v in got.items() if k != "binary_properties"} == process_dict(cached)
    assert wire.encode_event(ex) == wire.reference_bytes(event_dict(ex))
    on_clone(_exec_record(101, 6_000_000_000, 100, 5_000_000_000, {**plain, "op": R.OP_CLONE}), 2)
    child = on_exec(_exec_record(101, 6_000_000_000, 100, 5_000_000_000, plain), 3)
    grandchild = on_exec(_exec_record(102, 7_000_000_000, 101, 6_000_000_000, plain), 4)
    hooks, lp = _generic_hooks("kprobe-string")
    pe = PolicyEvents(b, lambda e: None, {c.hook_id: (c, lp) for c in hooks}, None)  # type: ignore[arg-type]
    rec = plain_record(pid=100, exec_ktime=5_000_000_000, args=[(b"/etc/passwd", 0, 0, 0), (b"", 3, 0, 0)])
    pol = (pe.compiled_handler() if compiled else pe.handle)(_generic_record(hooks[0], rec), 5)
    gone = on_exit(R.EXIT.pack(R.OP_EXIT, 0, 0, R.EXIT.size, 8_000_000_000, 100, 0, 5_000_000_000, 100, 0), 6)
    later = [event_dict(child)["process_exec"]["parent"], event_dict(grandchild)["process_exec"]["ancestors"][0],
             event_dict(pol)["process_kprobe"]["process"], event_dict(gone)["process_exit"]["process"]]
    assert [m["exec_id"] for m in later] == [got["exec_id"]] * 4
    assert ["binary_properties" in m for m in later] == [False] * 4


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.fixed_dictionaries({"enable_cred": st.booleans(), "enable_ns": st.booleans(),
                                     "ancestors": st.booleans()}), st.sampled_from([4, 64]), st.booleans())
def test_builder(seq: list[Any], opts: dict[str, Any], capacity: int, pods: bool) -> None:
    """Random exec/clone/exit/gc sequences (and pod changes, with --enable-k8s-api) through
    the compiled and the Python builder: the same events (their JSON and protobuf, by the
    twins and the compiled encoders), the same cache (every slot of every entry, the pid
    index, the removal and eviction queues) and the same counters."""
    fast_b, ref_b = _builders(opts, capacity)
    if pods:  # --enable-k8s-api: container processes get pod data (the real resolver)
        fast_b.pods, ref_b.pods = _resolver(), _resolver()
    handlers = fast_b.record_handlers()
    assert handlers[R.OP_EXEC] == fast_b._fast.on_exec and handlers[R.OP_CLONE] == fast_b._fast.on_clone
    pids: list[tuple[int, int]] = [(1, 0)]
    ktime = 5_000_000_000
    now = 0
    for step in seq:
        ktime += 999_999_937  # crosses seconds: the clock's cached prefix is exercised
        now += 20
        if step[0] == "gc":
            assert fast_b.cache.gc(now) == ref_b.cache.gc(now)
            continue
        if step[0] == "pod":
            if pods:
                _pod_step(fast_b, step[1])
                _pod_step(ref_b, step[1])
            continue
        if step[0] == "exec":
            _, pid_i, parent_i, known_parent, d = step
            ppid, pktime = pids[parent_i % len(pids)]
            pid = 100 + pid_i
            if d["op"] == R.OP_CLONE and d["caller"] >= 0:
                cpid, cktime = pids[d["caller"] % len(pids)]
                d = {**d, "ckey": (cpid, cktime if d["caller_keyed"] else 0)}
            buf = _exec_record(pid, ktime, ppid, pktime if known_parent else 0, d)
            pids.append((pid, ktime))
        else:
            _, which, code, keyed = step
            pid, k = pids[which % len(pids)] if which < 13 else (999, 0)
            buf = R.EXIT.pack(R.OP_EXIT, 0, 0, R.EXIT.size, ktime, pid, 0, k if keyed else 0, pid, code)
        op = buf[0]
        got = handlers[op](buf, now)
        rec = R.PyExitRecord(buf) if op == R.OP_EXIT else R.PyProcessRecord(buf)
        want = {R.OP_EXEC: ref_b.on_exec, R.OP_CLONE: ref_b.on_clone, R.OP_EXIT: ref_b.on_exit}[op](rec, now)
        assert (got is None) == (want is None)
        if want is not None:
            assert type(got) is type(want)
            assert codec.py_encode(got) == codec.py_encode(want)
            assert got.enc_dict is None and got.process.enc_dict is None
            got.enc_json = got.enc_pb = got.process.enc_json = got.process.enc_pb = None
            assert FAST.encode_json(got) == codec.encode_reference(want)
            assert FAST.encode_pb(got) == wire.py_encode_event(want)
            _assert_acyclic(got, got.process, got.process.pod, *fast_b.cache._by_key.values())
        assert _cache_state(fast_b) == _cache_state(ref_b)
        if pods:
            assert (fast_b.pods.enriched, fast_b.pods.unknown) == (ref_b.pods.enriched, ref_b.pods.unknown)


@pytest.mark.parametrize("probe", [False, True], ids=["no-probe", "probe"])
@pytest.mark.parametrize("pid", [0, 1, 4294967295], ids=["no-pid", "pid-1", "pid-max"])
@pytest.mark.parametrize("container", [
    {}, {"security_context": {}}, {"id": "containerd://abc", "name": "c"},
    {"id": "containerd://abc", "security_context": {"privileged": True}},
], ids=["empty", "security-context-alone", "id-name", "id-security-context"])
def test_a_process_pod_is_written_as_the_twin_writes_it(container: dict[str, Any], pid: int, probe: bool) -> None:
    """The compiled encoder writes a process's pod from its container's parts with the
    process's pid and exec-probe guess between them (native/fastpath.c put_pod_json), the
    same bytes as the twin (codec.pod_json): no comma after an opening brace, the pid and
    the guess only when set, before security_context."""
    shared = PodShared(namespace="ns", name="p-0", uid="u-9", container=dict(container))
    got = FAST.process_json(ProcessMsg(exec_id="e", pid=5, binary="/b", pod=Pod(shared, pid, probe)))
    want = codec.py_process_json(ProcessMsg(exec_id="e", pid=5, binary="/b", pod=Pod(dict(shared), pid, probe)))
    assert got == want


# numbers at each digit-count boundary (native/fastpath.c fmt_u64: the length first, then two
# digits at a time from the end): the message's integer fields and a pod's pid
NUMBERS = sorted({0, 2**64 - 1} | {10**k + d for k in range(20) for d in (-1, 0, 1) if 0 <= 10**k + d < 2**64})


@pytest.mark.parametrize("v", NUMBERS, ids=str)
def test_integers_are_written_as_the_twin_writes_them(v: int) -> None:
    shared = PodShared(namespace="ns", name="p-0", uid="u-9", container={"id": "containerd://abc"})
    fields = {"exec_id": "e", "pid": v, "uid": v, "auid": v, "tid": v, "binary": "/b"}
    got = FAST.process_json(ProcessMsg(**fields, pod=Pod(shared, v, False)))
    want = codec.py_process_json(ProcessMsg(**fields, pod=Pod(dict(shared), v, False)))
    assert got == want and (b'"pid":%d' % v in got or v == 0)


def test_pod_table_serves_known_containers_and_asks_the_resolver_otherwise() -> None:
    """The compiled exec path takes a known container's pod from the resolver's table; a new
    container, a changed store entry and a possible exec probe go to the resolver."""
    fast_b, ref_b = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    fast_b.pods, ref_b.pods = _resolver(), _resolver()
    fields = {"exe": "/usr/bin/curl", "cwd": b"/", "filename": "/usr/bin/curl",
              "cgroup": f"/kubepods/besteffort/pod{POD_UID}/{KNOWN}", "args": b"curl\0-v\0", "caps": (0, 0, 0),
              "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0, "i_mode": 0o100755,
              "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC}

    def run(pid: int, **changes: Any) -> tuple[Any, Any]:
        buf = _exec_record(pid, 5_000_000_000 + pid, 1, 0, {**fields, **changes})
        got, want = fast_b._fast.on_exec(buf, 0), ref_b.on_exec(R.PyProcessRecord(buf), 0)
        assert codec.py_encode(got) == codec.py_encode(want)
        return got.process.pod, want.process.pod

    def table_hits() -> int:
        return int.from_bytes(fast_b.pods.fast[1], sys.byteorder)

    run(100)                                     # first exec of the container: the resolver
    assert table_hits() == 0
    pod, _ = run(101)                            # then the table
    assert table_hits() == 1 and pod.pid == 101 and pod["container"]["pid"] == 101
    # the table's value is the container's shared pod part itself (no tuple around it), which
    # carries the container's probes for the exec path
    assert fast_b.pods._by_cg[fields["cgroup"]] is pod.shared and pod.shared.probes_longest == len("/usr/bin/curl")
    _pod_step(fast_b, 1)                         # the pod changed: probes ["curl", "-s", "a b"]
    _pod_step(ref_b, 1)
    pod, _ = run(102)                            # a changed entry: the resolver again
    assert table_hits() == 1 and pod["pod_labels"]["rev"] == "1"
    pod, want = run(103, args=b"curl\0-s\0a b\0")  # a possible exec probe: the resolver decides
    hit = fast_b.pods._by_cg[fields["cgroup"]]
    assert (hit is pod.shared and hit.probes_longest == max(map(len, hit.probes)) and hit.probes == {'-s "a b"'})
    assert table_hits() == 1 and pod.probe and want.probe
    run(104)                                     # as short as a probe's, not one: the table
    assert table_hits() == 2
    pod, _ = run(105, args=b"curl\0" + b"x" * 64 + b"\0")  # longer than every probe's: the table
    assert table_hits() == 3 and not pod.probe
    assert run(106, cgroup=f"/kubepods/besteffort/pod{POD_UID}/{UNKNOWN}") == (None, None)
    assert fast_b.pods.enriched == ref_b.pods.enriched == 6 and fast_b.pods.unknown == ref_b.pods.unknown == 1


# Container ids for the cgroup-name table of the compiled records (a set of two by a name's
# length and last 32 bytes): KNOWN's prefix with another end, and two of KNOWN's tail and
# length with other heads (KNOWN's set: the third pushes the oldest out)
PREFIX_OF_KNOWN, TAIL_OF_KNOWN, TAIL_OF_KNOWN_2 = KNOWN[:60] + "ffff", "cd34" * 8 + KNOWN[32:], "ef56" * 8 + KNOWN[32:]


def _cg(cid: str) -> str:
    return f"/kubepods/besteffort/pod{POD_UID}/{cid}"


# cgroup names of a run of records -> pairs of records that must carry the same str object:
# the records of one cgroup carry one (its hash computed once; the docker field's and the pod
# table's lookups find it by identity, and the pod table's answer is kept with it), whatever
# came between them, while its slot is not taken (two names per set)
@pytest.mark.parametrize("names, same", [
    ([_cg(KNOWN), "session-3.scope", _cg(KNOWN)], [(0, 2)]),
    ([_cg(KNOWN), _cg(PREFIX_OF_KNOWN), _cg(KNOWN), _cg(PREFIX_OF_KNOWN)], [(0, 2), (1, 3)]),
    ([_cg(KNOWN), _cg(TAIL_OF_KNOWN), _cg(KNOWN), _cg(TAIL_OF_KNOWN)], [(0, 2), (1, 3)]),
    ([_cg(KNOWN), _cg(TAIL_OF_KNOWN), _cg(TAIL_OF_KNOWN_2), _cg(KNOWN), _cg(TAIL_OF_KNOWN_2)], [(2, 4)]),
    (["cri-containerd-" + KNOWN + ".scope", "cri-containerd-" + UNKNOWN + ".scope", "cri-containerd-" + KNOWN + ".scope"],
     [(0, 2)]),
    (["caf\u00e9.scope", "", "caf\u00e9.scope", ""], []),  # not ASCII, or empty: made each time
], ids=["another-between", "shared-prefix", "shared-tail", "third-of-a-set", "systemd-scope", "not-ascii"])
def test_records_of_one_cgroup_carry_one_name(names: list[str], same: list[tuple[int, int]]) -> None:
    d = {"exe": "/bin/true", "cwd": b"/", "filename": "/bin/true", "args": b"true\0", "caps": (0, 0, 0), "ns": HOST,
         "uid": 0, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0, "i_mode": 0o100755, "nlink": 1,
         "flags": 0, "tid_off": 0, "op": R.OP_EXEC}
    recs = [R.ProcessRecord(_exec_record(100 + i, 5_000_000_000 + i, 1, 0, {**d, "cgroup": n}))
            for i, n in enumerate(names)]
    assert [r.cgroup_name for r in recs] == names
    assert [recs[i].cgroup_name is recs[j].cgroup_name for i, j in same] == [True] * len(same)


def test_pod_table_keeps_containers_of_one_set_and_prefix_apart() -> None:
    """Containers whose cgroup names share a prefix or fall in one set of the compiled
    cgroup-name table (where the pod table's answer is kept) get their own pods, round after
    round, as the twin's; a pod that changes is read again."""
    fast_b, ref_b = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 256)
    ids = (KNOWN, PREFIX_OF_KNOWN, TAIL_OF_KNOWN, TAIL_OF_KNOWN_2)

    def pod(i: int, cid: str, rev: int) -> dict[str, Any]:
        p = _pod_object(0)
        p["metadata"].update(name=f"web-{i}", uid=f"{POD_UID[:-1]}{i}", labels={"rev": str(rev)})
        p["status"]["containerStatuses"][0]["containerID"] = f"containerd://{cid}"
        return p

    for b in (fast_b, ref_b):
        from vigil.k8s.enrich import PodResolver
        from vigil.k8s.pods import PodStore

        store = PodStore()
        for i, cid in enumerate(ids):
            store.upsert(pod(i, cid, 0))
        b.pods = PodResolver(store)
    fields = {"exe": "/usr/bin/curl", "cwd": b"/", "filename": "/usr/bin/curl", "args": b"curl\0-v\0",
              "caps": (0, 0, 0), "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0,
              "i_mode": 0o100755, "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC}
    pid = 100
    for rnd in range(4):
        if rnd == 2:   # the second container's pod changes: its next processes carry the new labels
            for b in (fast_b, ref_b):
                b.pods.store.upsert(pod(1, ids[1], 1))
        for i, cid in enumerate(ids):
            pid += 1
            buf = _exec_record(pid, 5_000_000_000 + pid, 1, 0, {**fields, "cgroup": f"/kubepods/pod{POD_UID[:-1]}{i}/{cid}"})
            got, want = fast_b._fast.on_exec(buf, 0), ref_b.on_exec(R.PyProcessRecord(buf), 0)
            assert codec.py_encode(got) == codec.py_encode(want)
            assert (got.process.pod["name"], got.process.pod["container"]["id"]) == (f"web-{i}", f"containerd://{cid}")
            assert got.process.pod["pod_labels"]["rev"] == str(int(i == 1 and rnd >= 2))
    assert int.from_bytes(fast_b.pods.fast[1], sys.byteorder) == 16 - 4 - 1   # all but the first of each and the changed


@SETTINGS
@given(st.lists(st.binary(max_size=6), max_size=700))
def test_dispatch_loop(recs: list[bytes]) -> None:
    """The compiled event-loop dispatch (handle_records) against Pipeline.py_handle: the same
    events in the same batches, the same skipped records (no handler, bad record)."""
    from vigil.agent.pipeline import _BAD_RECORD, Pipeline

    def handler(buf: bytes, now: int) -> Any:
        if len(buf) == 2:
            raise R.DecodeError(f"short {buf[1]}")
        if len(buf) == 3:
            raise ValueError("bad value")
        return None if len(buf) == 4 else (buf, now)

    handlers = dict.fromkeys(range(0, 256, 3), handler)
    runs = []
    for compiled in (True, False):
        batches: list[list[Any]] = []
        errors: list[Any] = []
        pipe = Pipeline.__new__(Pipeline)
        pipe.handlers, pipe.emit = handlers, lambda evs, out=batches: out.append(list(evs))  # type: ignore[method-assign]
        if compiled:
            FAST.handle_records(list(recs), handlers, 7, pipe.emit, errors, _BAD_RECORD)
        else:
            pipe.py_handle(list(recs), 7, errors)
        runs.append((batches, errors))
    assert runs[0] == runs[1]
    assert all(len(b) <= 256 for b in runs[0][0])


def test_dispatch_loop_lets_other_errors_through() -> None:
    from vigil.agent.pipeline import _BAD_RECORD

    def boom(buf: bytes, now: int) -> None:
        raise RuntimeError("a bug, not a bad record")

    try:
        FAST.handle_records([b"\x01"], {1: boom}, 0, lambda evs: None, [], _BAD_RECORD)
    except RuntimeError as e:
        assert "a bug" in str(e)
    else:
        raise AssertionError("the handler's exception was swallowed")


GENERIC_FIELDS = ("op", "hflags", "size", "ktime", "pid", "exec_ktime", "hook_id", "tid", "selector", "action",
                  "ret_action", "flags", "kstack_len", "ustack_len", "ima_len", "ima_algo", "ret")
ARG_FIELDS = ("off", "len", "type", "flags", "mode", "value")


@SETTINGS
@given(st.binary(min_size=generic.HDR_SIZE - 3, max_size=generic.HDR_SIZE + 40))
def test_generic_record(buf: bytes) -> None:
    """decode_generic (C, from bpf/include/vigil_policy.h) against the ctypes mirror."""
    got, want = _outcome(FAST.decode_generic, buf), _outcome(generic.py_decode_generic, buf)
    if isinstance(want, str):
        assert got == want
        return
    (m, data), (ref, ref_data) = got, want
    assert data == ref_data
    assert {f: getattr(m, f) for f in GENERIC_FIELDS} == {f: getattr(ref, f) for f in GENERIC_FIELDS}
    assert len(m.args) == len(ref.args)
    for a, b in zip(m.args, ref.args):
        assert {f: getattr(a, f) for f in ARG_FIELDS} == {f: getattr(b, f) for f in ARG_FIELDS}


# ------------------------------------------------------------------ the BPF ring buffer
def _ring(records: list[tuple[int, int, bytes]], size: int, start: int) -> tuple[Any, int, int]:
    """A BPF ring buffer's producer mapping (page 1 onward: producer_pos, then the data area,
    once, as RingBuffer maps it) holding `records` (flags, payload) from consumer position
    `start`: (a RingBuffer reading it, cons, prod)."""
    from vigil.core.sharedmem import Words
    from vigil.kernel.ringbuf import RingBuffer

    page = 4096
    data = bytearray(size)
    pos = start
    for flags, _pad, payload in records:
        hdr = struct.pack("<II", len(payload) | flags, 0) + payload
        for i, byte in enumerate(hdr):
            data[(pos + i) % size] = byte
        pos += (len(payload) + 8 + 7) & ~7
    mapping = bytearray(struct.pack("<Q", pos) + bytes(page - 8)) + data
    rb = RingBuffer.__new__(RingBuffer)
    rb._prod, rb._cons = mapping, bytearray(struct.pack("<Q", start))
    rb._cons_pos = Words(rb._cons)
    rb._data_off, rb._mask, rb.size = page, size - 1, size
    rb.discarded = rb.bytes = rb.records = rb.peak = 0
    return rb, start, pos


ring_records = st.lists(st.tuples(st.sampled_from([0, 0, 0, 1 << 30, 1 << 31]), st.just(0),
                                  st.binary(max_size=300)), max_size=20)


@SETTINGS
@given(ring_records, st.integers(0, 1 << 37).map(lambda x: x * 8),  # the kernel's positions are 8-aligned
       st.sampled_from([1 << 12, 1 << 13]), st.integers(1, 1 << 13))
def test_bpf_ring_drain(records: list[tuple[int, int, bytes]], start: int, size: int, max_bytes: int) -> None:
    """Committed records up to the first still being written (BUSY), discarded ones skipped
    and counted, across the wrap of the data area, and at most about max_bytes."""
    while sum((len(p) + 15) & ~7 for _, _, p in records) > size:
        records = records[:-1]
    rb, cons, prod = _ring(records, size, start)
    want = rb.py_drain(cons, prod, max_bytes)
    want_cons, want_discarded = struct.unpack("<Q", rb._cons)[0], rb.discarded
    got, got_cons, got_discarded = FAST.bpf_ring_drain(rb._prod, rb._data_off, rb._mask, cons, prod, max_bytes)
    assert got == want
    assert (got_cons, got_discarded) == (want_cons, want_discarded)
    expect = []
    for flags, _, payload in records:
        if flags & (1 << 31):
            break
        if not flags:
            expect.append(payload)
    assert got == expect[: len(got)] and (len(got) == len(expect) or max_bytes < prod - cons)


@pytest.mark.parametrize("start", [4096 - 8, 4096 - 16, 4096 - 104, 3 * 4096 - 8])
def test_bpf_ring_drain_joins_a_payload_that_wraps(start: int) -> None:
    """The data area is mapped once: a payload that runs past its end continues at its start
    (the header right before the end, or the payload's last bytes after it)."""
    payloads = [bytes(range(100)), b"after the wrap"]
    rb, cons, prod = _ring([(0, 0, p) for p in payloads], 4096, start)
    assert rb.py_drain(cons, prod, 1 << 20) == payloads
    assert FAST.bpf_ring_drain(rb._prod, rb._data_off, rb._mask, cons, prod, 1 << 20)[0] == payloads


# ------------------------------------------------------------------ the export's writev
WRITE_CHILD = r"""
import os, resource, signal, sys
from vigil.core import native
from vigil.export.jsonl import py_write_all
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # past the limit: a short write, then EFBIG
which, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
pieces = [bytes([65 + i % 26]) * (i % 7) for i in range(3000)]
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
try:
    if which == "compiled":
        native.fast.write_pieces(fd, pieces)
    else:
        py_write_all(fd, pieces, sum(map(len, pieces)))
    print("ok")
except OSError as e:
    print(e.errno)
"""


@SETTINGS
@given(st.lists(st.binary(max_size=40), max_size=2500))
def test_write_pieces(pieces: list[bytes]) -> None:
    """All the pieces, in order, however many (more than IOV_MAX at a time) and however
    small (empty ones too): as the Python writer writes them."""
    import tempfile

    from vigil.export.jsonl import py_write_all

    with tempfile.TemporaryFile() as a, tempfile.TemporaryFile() as b:
        assert FAST.write_pieces(a.fileno(), pieces) == sum(map(len, pieces))
        py_write_all(b.fileno(), pieces, sum(map(len, pieces)))
        a.seek(0)
        b.seek(0)
        assert a.read() == b.read() == b"".join(pieces)


def test_write_pieces_short_write_goes_on_then_fails(tmp_path: Any) -> None:
    """A write cut short (here the file size limit) goes on from where it stopped; the next
    one fails with the kernel's error, which the writer answers by cutting the file back.
    Both paths write the same bytes up to the limit."""
    import subprocess
    import sys

    total = sum(i % 7 for i in range(3000))
    out = {}
    for which in ("compiled", "python"):
        path = tmp_path / which
        r = subprocess.run([sys.executable, "-c", WRITE_CHILD, which, str(path), str(total // 2 + 3)],
                           capture_output=True, text=True, check=True)
        out[which] = (r.stdout.strip(), path.read_bytes())
    assert out["compiled"] == out["python"]
    assert out["compiled"][0] == str(errno.EFBIG) and len(out["compiled"][1]) == total // 2 + 3


@SETTINGS
@given(st.lists(st.one_of(st.integers(0, 2**64 - 1).map(lambda k: struct.pack("<BBHIQ", 1, 0, 0, 16, k) + b"x"),
                          st.binary(max_size=15))), st.integers(0, 2**64 - 1))
def test_ktime_prefix(recs: list[bytes], now: int) -> None:
    """How many leading records are older than `now` (a record too short for a header: 0)."""
    from vigil.kernel.ringbuf import py_ktime_prefix

    assert FAST.ktime_prefix(recs, now) == py_ktime_prefix(recs, now)


# ------------------------------------------------------------------ policy records
GENERIC_SPECS = {
    "kprobe-string": """
        kprobes:
        - call: sys_openat
          syscall: true
          message: "an open"
          tags: ["t1", "t2"]
          args: [{index: 1, type: string, label: path}, {index: 2, type: int}]
          selectors:
          - matchArgs: [{index: 1, operator: Prefix, values: ["/etc"]}]
    """,
    "kprobe-numbers": """
        kprobes:
        - call: sys_read
          syscall: true
          args: [{index: 0, type: int, label: fd}, {index: 2, type: size_t, label: count}, {index: 1, type: uint32},
                 {index: 0, type: int64}]
    """,
    "tracepoint": """
        tracepoints:
        - subsystem: syscalls
          event: sys_enter_openat
          args: [{index: 6, type: string}, {index: 7, type: int}]
    """,
    "kprobe-file": """
        kprobes:
        - call: sys_close
          syscall: true
          args: [{index: 0, type: fd}]
    """,
    # the file-like arguments of kprobes on kernel functions (the VM tier's kernel has kprobes)
    "kprobe-file-path-binprm": """
        kprobes:
        - call: security_file_open
          syscall: false
          args: [{index: 0, type: file, label: f}]
        - call: security_path_truncate
          syscall: false
          args: [{index: 0, type: path}]
        - call: security_bprm_check
          syscall: false
          args: [{index: 0, type: linux_binprm}]
        - call: fd_install
          syscall: false
          args: [{index: 0, type: int}, {index: 1, type: file}]
    """,
    "kretprobe": """
        kprobes:
        - call: sys_openat
          syscall: true
          return: true
          args: [{index: 1, type: string}]
          returnArg: {index: 0, type: int, label: fd}
          returnArgAction: Post
        - call: sys_read
          syscall: true
          return: true
          args: [{index: 2, type: size_t}]
          returnArg: {index: 0, type: size_t}
        - call: fd_install
          syscall: false
          return: true
          args: [{index: 1, type: file}]
          returnArg: {index: 0, type: int64}
    """,
    "kprobe-sock": """
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock, label: sk}]
        - call: security_socket_connect
          syscall: false
          args: [{index: 1, type: sockaddr}, {index: 2, type: int}]
    """,
    # buffers: base64, and when cut, the size the call had (its size argument's, or the iov_iter's)
    "kprobe-bytes": """
        kprobes:
        - call: sys_write
          syscall: true
          args: [{index: 0, type: int}, {index: 1, type: char_buf, sizeArgIndex: 3, label: buf},
                 {index: 2, type: size_t}]
        - call: sys_read
          syscall: true
          args: [{index: 0, type: int}, {index: 1, type: char_buf, sizeArgIndex: 3}, {index: 2, type: uint64}]
        - call: sys_writev
          syscall: true
          args: [{index: 0, type: int}, {index: 1, type: char_iovec, sizeArgIndex: 3}, {index: 2, type: int}]
        - call: sys_write
          syscall: true
          args: [{index: 1, type: char_buf}]
    """,
    # returnCopy: the buffer read at the return; a cut one's original size is what the call returned
    "kprobe-return-copy": """
        kprobes:
        - call: sys_read
          syscall: true
          return: true
          returnArg: {index: 0, type: int}
          args: [{index: 0, type: int}, {index: 1, type: char_buf, returnCopy: true, sizeArgIndex: 3},
                 {index: 2, type: size_t}]
    """,
    "kprobe-iov-iter": """
        kprobes:
        - call: tty_write
          syscall: false
          args: [{index: 1, type: iov_iter, label: from}]
    """,
    "tracepoint-syscall64": """
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4, type: syscall64}, {index: 4, type: uint64}]
    """,
    # a tracepoint's array of longs (const_buf): one size_arg per element
    "tracepoint-const-buf": """
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4, type: syscall64}, {index: 5}, {index: 5, label: regs}]
    """,
    # user space: a function by symbol and by offset (its body says which), a USDT probe
    "uprobe": """
        uprobes:
        - path: /bin/bash
          symbols: [readline]
          message: "a line read"
          tags: ["shell"]
          args: [{index: 0, type: string, label: prompt}, {index: 1, type: int}]
        - path: /bin/bash
          offsets: [4096]
          args: [{index: 0, type: uint64}]
    """,
    "usdt": """
        usdts:
        - path: /usr/bin/python3
          provider: python
          name: function__entry
          message: "a call"
          args: [{index: 0, type: string}, {index: 2, type: int}]
    """,
    "lsm": """
        lsmhooks:
        - hook: file_open
          message: "an open"
          args: [{index: 0, type: file, label: f}]
    """,
    # capabilities, credentials and bpf commands (kprobes on kernel functions)
    "kprobe-caps-cred-bpf": """
        kprobes:
        - call: cap_capable
          syscall: false
          args: [{index: 0, type: cred, label: cred}, {index: 2, type: capability}]
        - call: security_capset
          syscall: false
          args: [{index: 2, type: kernel_cap_t}, {index: 3, type: cap_inheritable}, {index: 4, type: cap_permitted}]
        - call: sys_bpf
          syscall: true
          args: [{index: 0, type: bpf_cmd, label: cmd}]
    """,
    # the kernel objects: socket buffers, devices, BPF programs and maps, perf events, modules,
    # user namespaces
    "kprobe-kernel-objects": """
        kprobes:
        - call: __dev_queue_xmit
          syscall: false
          args: [{index: 0, type: skb, label: skb}]
        - call: dev_hard_start_xmit
          syscall: false
          args: [{index: 1, type: net_device}]
        - call: bpf_check
          syscall: false
          args: [{index: 1, type: bpf_attr}]
        - call: security_bpf_map_create
          syscall: false
          args: [{index: 0, type: bpf_map}]
        - call: security_perf_event_alloc
          syscall: false
          args: [{index: 0, type: perf_event}]
        - call: do_init_module
          syscall: false
          args: [{index: 0, type: module}]
        - call: cap_capable
          syscall: false
          args: [{index: 1, type: user_namespace, label: ns}]
        - call: do_init_module  # carries a load_info (the recorded kernels inline its functions)
          syscall: false
          args: [{index: 0, type: nop}, {index: 0, type: load_info}]
    """,
    # enforcements, and monitor mode: the message explains them
    "kprobe-enforce": """
        kprobes:
        - call: sys_openat
          syscall: true
          message: "guarded"
          args: [{index: 1, type: string}]
          selectors:
          - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/shadow"]}]
            matchActions: [{action: Sigkill}]
          - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/passwd"]}]
            matchActions: [{action: Override, argError: -1}]
          - matchBinaries: [{operator: In, values: ["/usr/bin/cat"]}]
            matchActions: [{action: Signal, argSig: 10}]
    """,
    # events that report another action than the record holds (the last one of the selector's
    # list, Post and NoPost included), and return actions
    "kprobe-reported-actions": """
        kprobes:
        - call: sys_openat
          syscall: true
          return: true
          message: "guarded"
          args: [{index: 1, type: string}]
          returnArg: {index: 0, type: int}
          selectors:
          - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/shadow"]}]
            matchActions: [{action: Sigkill}, {action: Post}]
          - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/passwd"]}]
            matchActions: [{action: Signal, argSig: 10}, {action: Post}]
            matchReturnArgs: [{index: 0, operator: Equal, values: ["0"]}]
            matchReturnActions: [{action: Signal, argSig: 10}, {action: Post}]
          - matchBinaries: [{operator: In, values: ["/usr/bin/cat"]}]
            matchActions: [{action: Sigkill}, {action: NoPost}]
            matchReturnArgs: [{index: 0, operator: Equal, values: ["1"]}]
            matchReturnActions: [{action: Post}, {action: Signal, argSig: 10}]
        - call: sys_unlinkat
          syscall: true
          args: [{index: 1, type: string}]
          selectors:
          - matchActions: [{action: Post}, {action: Signal, argSig: 10}, {action: NoPost}]
        - call: security_file_open
          syscall: false
          args: [{index: 0, type: file}]
          selectors:
          - matchActions: [{action: Override, argError: -1}, {action: Post}]
    """,
    "lsm-reported-actions": """
        lsmhooks:
        - hook: file_open
          args: [{index: 0, type: file}]
          selectors:
          - matchActions: [{action: Override, argError: -1}, {action: Post}]
          - matchActions: [{action: Signal, argSig: 10}, {action: NoPost}]
    """,
}
GENERIC_FACTS = {"kprobe-reported-actions": "vm-6.12", "lsm-reported-actions": "vm-6.12", "kprobe-file-path-binprm": "vm-6.12", "kretprobe": "vm-6.12", "kprobe-sock": "vm-6.12",
                 "kprobe-iov-iter": "vm-6.12", "lsm": "vm-6.12", "kprobe-enforce": "vm-6.12",
                 "kprobe-caps-cred-bpf": "vm-6.12", "kprobe-kernel-objects": "vm-6.12"}


def _generic_hooks(name: str) -> Any:
    import itertools
    import textwrap
    from types import SimpleNamespace

    from tests.policyfuzz import facts
    from vigil.policy import parse_policies
    from vigil.policy.compile import compile_policy

    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: twin\nspec:\n"
            + textwrap.indent(textwrap.dedent(GENERIC_SPECS[name]).strip("\n"), "  ") + "\n")
    (policy,) = parse_policies(text, "twin.yaml")
    ids = itertools.count(7)
    compiled = compile_policy(policy, facts(GENERIC_FACTS.get(name, "host-6.18")), lambda: next(ids),
                              follow_bit=lambda op, v: 0)
    return compiled.hooks, SimpleNamespace(events={}, actions={}, correlator=None)


def plain_record(**fields: Any) -> dict[str, Any]:
    """The fields of a record of pid 100 (in the cache) with no stack, action or flags, but `fields`."""
    return {"ktime": 7_000_000_000, "pid": 100, "exec_ktime": 5_000_000_000, "selector": 0, "action": 0,
            "ret_action": 0, "flags": 0, "kstack": 0, "ret": 0, "args": [], **fields}


def _generic_record(ch: Any, d: dict[str, Any]) -> bytes:
    """A record of hook `ch` (struct msg_generic, then the argument payloads and a stack)."""
    from vigil.events.synth import generic_record

    return generic_record(hook_id=ch.hook_id, pid=d["pid"], ktime=d["ktime"], exec_ktime=d["exec_ktime"],
                          args=d["args"], selector=d["selector"], action=d["action"], ret_action=d["ret_action"],
                          flags=d["flags"], ret=d["ret"], kstack=bytes(d["kstack"]), ima=d.get("ima", b""),
                          ima_algo=d.get("ima_algo", 0))


# socket payloads (read.bpf.h): a family, then fields; addresses with runs of zero hextets
_family = st.sampled_from([2, 10, 10, 1, 0, 99]).map(lambda f: f.to_bytes(2, "little"))
_addr = st.lists(st.sampled_from([0, 0, 0, 1, 0xFF, 0x20]), min_size=16, max_size=16).map(bytes)
sock_payloads = st.one_of(
    st.tuples(_family, st.binary(min_size=30, max_size=30), _addr, _addr).map(b"".join),       # sock: 64 bytes
    st.tuples(_family, st.binary(min_size=6, max_size=6), _addr).map(b"".join),                # sockaddr: 24
)
generic_fields = st.fixed_dictionaries({
    "ktime": st.integers(1, 2**62), "pid": st.sampled_from([100, 101, 555]),
    "exec_ktime": st.sampled_from([0, 5_000_000_000, 123]), "selector": st.integers(0, 3),
    "action": st.sampled_from([0, 1, 2, 3, 5, 14, 15, 200]), "ret_action": st.sampled_from([0, 0, 0, 1, 3, 200]),
    "flags": st.sampled_from([0, 0, 1, 2, 32]), "kstack": st.sampled_from([0, 0, 8]),
    "ret": st.integers(-2**63, 2**63 - 1),
    "args": st.lists(st.tuples(st.one_of(st.binary(max_size=40), st.text(max_size=20).map(str.encode),
                                         sock_payloads),
                               st.integers(-2**63, 2**63 - 1), st.sampled_from([0, 0, 0, 2, 1, 3, 8]),
                               st.one_of(st.sampled_from([0, 0o100644, 0o104755, 0o040755, 0o120777, 0o020620]),
                                         st.integers(0, 0xFFFF))),
                     min_size=4, max_size=4),
    "hook": st.integers(0, 3),
})


# records the compiled handler makes itself (no user stack or pending data, an action it
# covers; pids 100 and 101 are in the cache, 555 is not): the twin test's random records reach
# it rarely
kernel_stacks = st.lists(st.one_of(st.just(0), st.integers(0xFFFFFFFF80000000, 0xFFFFFFFFC0000000),
                                   st.integers(0, 2**64 - 1)), max_size=5).map(lambda a: struct.pack(f"<{len(a)}Q", *a))
in_plan_fields = st.tuples(generic_fields, st.sampled_from([0, 1, 2, 3, 4, 5]), st.sampled_from([0, 0, 1, 3, 4]),
                           kernel_stacks, st.binary(max_size=64), st.sampled_from([4, 2, 200])).map(
    lambda t: {**t[0], "action": t[1], "ret_action": t[2], "kstack": t[3], "ima": t[4], "ima_algo": t[5]})


@SETTINGS
@given(st.sampled_from(sorted(GENERIC_SPECS)), st.lists(generic_fields, min_size=1, max_size=6), st.booleans())
def test_generic_events(name: str, recs: list[dict[str, Any]], pending_data: bool) -> None:
    """Policy records through the compiled handler (Builder.on_generic, which hands what its
    plan does not cover to PolicyEvents.handle) and through handle(): the same events, the
    same bodies in the same key order, the same counters."""
    _generic_twins(name, recs, pending_data)


@pytest.mark.parametrize("name", sorted(GENERIC_SPECS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=st.lists(in_plan_fields, min_size=1, max_size=6), pending_data=st.booleans())
def test_generic_events_in_plan(name: str, recs: list[dict[str, Any]], pending_data: bool) -> None:
    """The same, per hook shape, for records the compiled handler makes itself (a maxData chunk
    of another event waiting or not)."""
    _generic_twins(name, recs, pending_data)


def _generic_twins(name: str, recs: list[dict[str, Any]], pending_data: bool) -> None:
    from vigil.agent.policy_events import PolicyEvents

    out = []
    for compiled in (True, False):
        b, _ = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
        d = {"exe": "/bin/cat", "cwd": b"/", "filename": "/bin/cat", "cgroup": "", "args": b"cat\0x\0",
             "caps": (0, 0, 0), "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0,
             "i_mode": 0o100755, "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC}
        handlers = b.record_handlers()
        handlers[R.OP_EXEC](_exec_record(100, 5_000_000_000, 1, 0, d), 1)
        handlers[R.OP_EXEC](_exec_record(101, 6_000_000_000, 100, 5_000_000_000, d), 2)
        hooks, lp = _generic_hooks(name)
        pe = PolicyEvents(b, lambda e: None, {ch.hook_id: (ch, lp) for ch in hooks}, None)  # type: ignore[arg-type]
        if pending_data:
            pe._data[(1, 2, 3)] = [(0, b"x")]
        handle = pe.compiled_handler() if compiled else pe.handle
        assert (handle == pe.handle) != compiled
        evs = []
        for r in recs:
            rec = _generic_record(hooks[r["hook"] % len(hooks)], r)
            ev = _outcome(lambda buf, h=handle: h(buf, 0), rec)  # type: ignore[misc]
            evs.append(ev if isinstance(ev, str) or ev is None else
                       (type(ev), ev.kind, ev.time, ev.node_name, ev.process.exec_id,
                        ev.parent.exec_id if ev.parent is not None else None, list(ev.body.items()),
                        codec.py_encode(ev)))
        out.append((evs, lp.events))
    assert out[0] == out[1]


def _counted_policy_events(spec: str, orphan_data: bool = False) -> tuple[Any, Any, Any, list[int]]:
    """(hooks, policy, compiled handler, calls): the hooks of GENERIC_SPECS[spec] over a cache
    that knows pid 100; every record the compiled handler hands to handle() adds to calls.
    orphan_data: a maxData chunk of an event that never came waits."""
    from vigil.agent.policy_events import PolicyEvents

    b, _ = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    d = {"exe": "/bin/cat", "cwd": b"/", "filename": "/bin/cat", "cgroup": "", "args": b"cat\0", "caps": (0, 0, 0),
         "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0, "i_mode": 0o100755,
         "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC}
    b.record_handlers()[R.OP_EXEC](_exec_record(100, 5_000_000_000, 1, 0, d), 1)
    hooks, lp = _generic_hooks(spec)
    pe = PolicyEvents(b, lambda e: None, {ch.hook_id: (ch, lp) for ch in hooks}, None)  # type: ignore[arg-type]
    calls: list[int] = []
    py_handle = pe.handle
    pe.handle = lambda buf, now: (calls.append(1), py_handle(buf, now))[1]  # type: ignore[method-assign]
    if orphan_data:
        pe._data[(1, 2, 3)] = [(0, b"x")]
    return hooks, lp, pe.compiled_handler(), calls


def test_generic_plain_records_need_no_python() -> None:
    """A record with plain arguments is made in C: handle() is not called, for an enforcement
    (its message explains it) or a process not in the cache neither; an action that asks user
    space to act (GetUrl) is handed to handle()."""
    (ch,), lp, handle, calls = _counted_policy_events("kprobe-string")
    rec = plain_record(selector=1, action=1, args=[(b"/etc/passwd", 0, 0, 0), (b"", 3, 0, 0)] * 2)
    ev = handle(_generic_record(ch, rec), 0)
    assert calls == [] and not gc.is_tracked(ev)
    assert list(ev.body) == ["function_name", "args", "action", "policy_name", "return_action", "message", "tags"]
    assert ev.body["args"] == [{"string_arg": "/etc/passwd", "label": "path"}, {"int_arg": 3}]
    assert lp.events == {"process_kprobe": 1}
    ev = handle(_generic_record(ch, {**rec, "action": 5}), 0)  # Override
    assert calls == [] and ev.body["action"] == "KPROBE_ACTION_OVERRIDE"
    assert ev.body["message"].startswith("an open [vigil: selector 1 (Prefix ['/etc']) matched; override")
    assert handle(_generic_record(ch, {**rec, "action": 5, "flags": 2}), 0).body["message"].endswith(
        "monitor mode: reported, not enforced via " + ch.placement.describe() + "]")
    assert calls == []
    ev = handle(_generic_record(ch, {**rec, "pid": 555, "exec_ktime": 0}), 0)  # a process not in the cache
    assert calls == [] and (ev.process.pid, ev.process.flags, ev.process.exec_id, ev.parent) == (555, "unknown", "", None)
    handle(_generic_record(ch, {**rec, "action": 14}), 0)  # GetUrl
    assert calls == [1]


def test_a_waiting_maxdata_chunk_keeps_only_its_own_records_in_python() -> None:
    """A maxData chunk whose event never came (dropped) waits in PolicyEvents._data: the records
    of other arguments are still made in C; one whose argument continues in chunks goes to
    handle(), which takes its chunks."""
    (ch,), lp, handle, calls = _counted_policy_events("kprobe-string", orphan_data=True)
    rec = plain_record(action=1, args=[(b"/etc/passwd", 0, 0, 0), (b"", 3, 0, 0)])
    handle(_generic_record(ch, rec), 0)
    assert calls == []
    handle(_generic_record(ch, {**rec, "args": [(b"/etc/passwd", 4096, 8, 0), (b"", 3, 0, 0)]}), 0)  # ARGF_DATA
    assert calls == [1]


FILE_SPEC, RET_SPEC, CAPS_SPEC, OBJ_SPEC = ("kprobe-file-path-binprm", "kretprobe", "kprobe-caps-cred-bpf",
                                            "kprobe-kernel-objects")
# read.bpf.h's cred: ids, securebits, user namespace (level, uid, gid, inum), then the capability sets
CRED = struct.pack("<13I4x3Q", 1000, 1000, 0, 0, 1000, 1000, 0, 0, 0, 1, 0, 0, 4026531837, 1 << 21, 1 << 21 | 1, 0)


@pytest.mark.parametrize("spec, hook, rec, want", [
    (FILE_SPEC, 0, {"args": [(b"/etc/shadow", 0, 0, 0o100640)]},
     {"args": [{"file_arg": {"path": "/etc/shadow", "permission": "-rw-r-----"}, "label": "f"}]}),
    (FILE_SPEC, 1, {"args": [(b"deep/name", 0, 1, 0o040755)]},
     {"args": [{"path_arg": {"path": "deep/name", "flags": "unresolvedPathComponents", "permission": "drwxr-xr-x"}}]}),
    (FILE_SPEC, 2, {"args": [(b"/usr/bin/su", 0, 0, 0o104755)]},
     {"args": [{"linux_binprm_arg": {"path": "/usr/bin/su", "permission": "-rwsr-xr-x"}}]}),
    (FILE_SPEC, 3, {"args": [(b"", 4, 0, 0), (b"", 0, 0, 0)]}, {"args": [{"int_arg": 4}, {"file_arg": {}}]}),
    # an anonymous inode (eventfd, epoll: no file type before Linux 6.15): no type letter, as Tetragon's
    (FILE_SPEC, 0, {"args": [(b"anon_inode:[eventfd]", 0, 0, 0o600)]},
     {"args": [{"file_arg": {"path": "anon_inode:[eventfd]", "permission": "rw-------"}, "label": "f"}]}),
    (RET_SPEC, 0, {"args": [(b"/etc/hosts", 0, 0, 0)], "flags": 1, "ret": -2, "ret_action": 1},
     {"args": [{"string_arg": "/etc/hosts"}], "return": {"int_arg": -2, "label": "fd"},
      "return_action": "KPROBE_ACTION_POST"}),
    (RET_SPEC, 1, {"args": [(b"", 10, 0, 0)], "flags": 1, "ret": -1},
     {"args": [{"size_arg": "10"}], "return": {"size_arg": "18446744073709551615"}}),
    (RET_SPEC, 2, {"args": [(b"/a", 0, 0, 0)], "flags": 1, "ret": 7}, {"return": {"long_arg": "7"}}),
    ("kprobe-sock", 0, {"args": [(struct.pack("<6H2I4xQ16s16s", 2, 1, 6, 2, 40000, 443, 0, 0, 77,
                                              bytes([10, 0, 0, 1]), bytes([1, 1, 1, 1])), 0, 0, 0)]},
     {"args": [{"sock_arg": {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP",
                             "saddr": "10.0.0.1", "daddr": "1.1.1.1", "sport": 40000, "dport": 443, "cookie": "77",
                             "state": "TCP_SYN_SENT"}, "label": "sk"}]}),
    ("kprobe-sock", 1, {"args": [(struct.pack("<HH4x16s", 10, 53, bytes(15) + b"\1"), 0, 0, 0), (b"", 16, 0, 0)]},
     {"args": [{"sockaddr_arg": {"family": "AF_INET6", "addr": "::1", "port": 53}}, {"int_arg": 16}]}),
    ("kprobe-bytes", 0, {"args": [(b"", 1, 0, 0), (b"hello", 0, 0, 0), (b"", 5, 0, 0)]},
     {"args": [{"int_arg": 1}, {"bytes_arg": "aGVsbG8=", "label": "buf"}, {"size_arg": "5"}]}),
    ("kprobe-bytes", 1, {"args": [(b"", 3, 0, 0), (b"\0\xff", 0, 1, 0), (b"", 65536, 0, 0)]},
     {"args": [{"int_arg": 3}, {"truncated_bytes_arg": {"bytes_arg": "AP8=", "orig_size": "65536"}},
               {"size_arg": "65536"}]}),
    # a cut iovec array's original size: the bytes its iovecs hold (the record's value), not the count
    ("kprobe-bytes", 2, {"args": [(b"", 3, 0, 0), (b"xy", 6000, 1, 0), (b"", 2, 0, 0)]},
     {"args": [{"int_arg": 3}, {"truncated_bytes_arg": {"bytes_arg": "eHk=", "orig_size": "6000"}},
               {"int_arg": 2}]}),
    # a cut returnCopy buffer's original size: what the call returned (the record's value), not the
    # size it was asked for
    ("kprobe-return-copy", 0, {"args": [(b"", 3, 0, 0), (b"xy", 5120, 1, 0), (b"", 65536, 0, 0)], "flags": 1,
                               "ret": 5120},
     {"args": [{"int_arg": 3}, {"truncated_bytes_arg": {"bytes_arg": "eHk=", "orig_size": "5120"}},
               {"size_arg": "65536"}], "return": {"int_arg": 5120}}),
    ("kprobe-bytes", 3, {"args": [(b"abcd", 0, 1, 0)]},
     {"args": [{"truncated_bytes_arg": {"bytes_arg": "YWJjZA==", "orig_size": "4"}}]}),
    ("kprobe-sock", 0, {"args": [(b"", 0, 2, 0)]},  # an argument that could not be read
     {"args": [{"error_arg": {"Message": "could not be read"}, "label": "sk"}]}),
    ("kprobe-iov-iter", 0, {"args": [(b"xyz", 4000, 1, 0)]},
     {"args": [{"truncated_bytes_arg": {"bytes_arg": "eHl6", "orig_size": "4000"}, "label": "from"}]}),
    ("tracepoint-syscall64", 0, {"args": [(b"", 0x80000000 | 5, 0, 0), (b"", 59, 0, 0)]},
     {"args": [{"syscall_id": {"id": 5, "abi": "i386"}}, {"size_arg": "59"}]}),
    ("tracepoint-const-buf", 0, {"args": [(b"", 39, 0, 0), (struct.pack("<6Q", 1, 2, 3, 0, 2**64 - 1, 6), 1, 0, 0),
                                          (struct.pack("<2Q", 7, 8), 7, 0, 0)]},
     {"args": [{"syscall_id": {"id": 39, "abi": "x64"}}, *({"size_arg": str(v)} for v in (1, 2, 3, 0, 2**64 - 1, 6)),
               {"size_arg": "7", "label": "regs"}, {"size_arg": "8", "label": "regs"}]}),
    ("tracepoint-const-buf", 0, {"args": [(b"", 39, 0, 0), (b"", 0, 2, 0), (b"", 0, 0, 0)]},
     {"args": [{"syscall_id": {"id": 39, "abi": "x64"}}, {"error_arg": {"Message": "could not be read"}}]}),
    (CAPS_SPEC, 0, {"args": [(CRED, 0, 0, 0), (b"", 21, 0, 0)]},
     {"args": [{"process_credentials_arg": {
         "uid": 1000, "gid": 1000, "euid": 0, "egid": 0, "suid": 1000, "sgid": 1000, "fsuid": 0, "fsgid": 0,
         "caps": {"permitted": ["CAP_SYS_ADMIN"], "effective": ["CAP_CHOWN", "CAP_SYS_ADMIN"]},
         "user_ns": {"level": 1, "uid": 0, "gid": 0, "ns": {"inum": 4026531837}}}, "label": "cred"},
         {"capability_arg": {"value": 21, "name": "CAP_SYS_ADMIN"}}]}),
    (CAPS_SPEC, 0, {"args": [(CRED[:56] + bytes(24), 0, 0, 0), (b"", -1, 0, 0)]},  # Tetragon's caps: always set
     {"args": [{"process_credentials_arg": {
         "uid": 1000, "gid": 1000, "euid": 0, "egid": 0, "suid": 1000, "sgid": 1000, "fsuid": 0, "fsgid": 0,
         "caps": {}, "user_ns": {"level": 1, "uid": 0, "gid": 0, "ns": {"inum": 4026531837}}}, "label": "cred"},
         {"capability_arg": {"value": -1, "name": "-1"}}]}),
    # the host's user namespace (level 0) is_host, as a user_namespace argument's; securebits by name
    (CAPS_SPEC, 0, {"args": [(CRED[:32] + struct.pack("<5I", 1 << 4 | 1 << 5, 0, 0, 0, 4026531837) + CRED[52:],
                              0, 0, 0), (b"", 21, 0, 0)]},
     {"args": [{"process_credentials_arg": {
         "uid": 1000, "gid": 1000, "euid": 0, "egid": 0, "suid": 1000, "sgid": 1000, "fsuid": 0, "fsgid": 0,
         "securebits": ["SecBitKeepCaps", "SecBitKeepCapsLocked"],
         "caps": {"permitted": ["CAP_SYS_ADMIN"], "effective": ["CAP_CHOWN", "CAP_SYS_ADMIN"]},
         "user_ns": {"level": 0, "uid": 0, "gid": 0, "ns": {"inum": 4026531837, "is_host": True}}}, "label": "cred"},
         {"capability_arg": {"value": 21, "name": "CAP_SYS_ADMIN"}}]}),
    (CAPS_SPEC, 0, {"args": [(CRED[:36] + struct.pack("<4I", 3, 1000, 1000, 0) + CRED[52:], 0, 0, 0),
                             (b"", 21, 0, 0)]},  # an unknown namespace number is left out (proto3 zero)
     {"args": [{"process_credentials_arg": {
         "uid": 1000, "gid": 1000, "euid": 0, "egid": 0, "suid": 1000, "sgid": 1000, "fsuid": 0, "fsgid": 0,
         "caps": {"permitted": ["CAP_SYS_ADMIN"], "effective": ["CAP_CHOWN", "CAP_SYS_ADMIN"]},
         "user_ns": {"level": 3, "uid": 1000, "gid": 1000, "ns": {}}}, "label": "cred"},
         {"capability_arg": {"value": 21, "name": "CAP_SYS_ADMIN"}}]}),
    (CAPS_SPEC, 1, {"args": [(b"", 0x1FFFFFFFFF, 0, 0), (b"", 0, 0, 0), (b"", -1, 0, 0)]},
     {"args": [{"kernel_cap_t_arg": "0000001fffffffff"}, {"cap_inheritable_arg": "0000000000000000"},
               {"cap_permitted_arg": "ffffffffffffffff"}]}),
    (CAPS_SPEC, 2, {"args": [(b"", 5, 0, 0)]}, {"args": [{"bpf_cmd_arg": "BPF_PROG_LOAD", "label": "cmd"}]}),
    (CAPS_SPEC, 2, {"args": [(b"", 9999, 0, 0)]}, {"args": [{"bpf_cmd_arg": "9999", "label": "cmd"}]}),
    (OBJ_SPEC, 0, {"args": [(struct.pack("<4I16s16s5IHH", 7, 1500, 0, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]),
                                         443, 50000, 6, 0, 0, 2, 0), 0, 0, 0)]},
     {"args": [{"skb_arg": {"hash": 7, "len": 1500, "saddr": "10.0.0.1", "daddr": "10.0.0.2", "sport": 443,
                            "dport": 50000, "proto": 6, "protocol": "IPPROTO_TCP", "family": "AF_INET"},
                "label": "skb"}]}),
    (OBJ_SPEC, 0, {"args": [(b"", 0, 0, 0)]}, {"args": [{"skb_arg": {}, "label": "skb"}]}),
    (OBJ_SPEC, 1, {"args": [(b"eth0", 0, 0, 0)]}, {"args": [{"net_dev_arg": {"name": "eth0"}}]}),
    (OBJ_SPEC, 1, {"args": [(b"", 0, 0, 0)]}, {"args": [{"net_dev_arg": {}}]}),
    (OBJ_SPEC, 2, {"args": [(struct.pack("<5I16s", 2, 12, 0, 0, 0, b"probe"), 0, 0, 0)]},
     {"args": [{"bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_KPROBE", "InsnCnt": 12, "ProgName": "probe"}}]}),
    (OBJ_SPEC, 3, {"args": [(struct.pack("<5I16s", 1, 0, 4, 8, 1024, b"counts"), 0, 0, 0)]},
     {"args": [{"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_HASH", "KeySize": 4, "ValueSize": 8, "MaxEntries": 1024,
                                "MapName": "counts"}}]}),
    (OBJ_SPEC, 3, {"args": [(struct.pack("<I", 999), 0, 0, 0)]}, {"args": [{"bpf_map_arg": {"MapType": "999"}}]}),
    (OBJ_SPEC, 4, {"args": [(struct.pack("<IIQQ64s", 2, 0, 5, 0, b"do_sys_open"), 0, 0, 0)]},
     {"args": [{"perf_event_arg": {"KprobeFunc": "do_sys_open", "Type": "PERF_TYPE_TRACEPOINT", "Config": "5"}}]}),
    # a struct module has no signature check (Tetragon's module_arg of a module has none)
    (OBJ_SPEC, 5, {"args": [(struct.pack("<QBB6x56s", 1 << 12 | 1 << 13, 1, 1, b"vigil_test"), 0, 0, 0)]},
     {"args": [{"module_arg": {"name": "vigil_test",
                               "tainted": ["TAINT_OUT_OF_TREE_MODULE", "TAINT_UNSIGNED_MODULE"]}}]}),
    # a load_info's check is always there, false too, even when the kernel does not record one
    (OBJ_SPEC, 7, {"args": [(b"", 0, 0, 0), (struct.pack("<QBB6x56s", 1 << 12, 0, 0, b"vigil_test"), 0, 0, 0)]},
     {"args": [{"module_arg": {"name": "vigil_test", "signature_ok": False, "tainted": ["TAINT_OUT_OF_TREE_MODULE"]}}]}),
    (OBJ_SPEC, 7, {"args": [(b"", 0, 0, 0), (struct.pack("<QBB6x56s", 0, 1, 1, b"signed"), 0, 0, 0)]},
     {"args": [{"module_arg": {"name": "signed", "signature_ok": True}}]}),
    (OBJ_SPEC, 7, {"args": [(b"", 0, 0, 0), (struct.pack("<QBB6x56s", 1 << 12, 1, 1, b""), 0, 0, 0)]},
     {"args": [{"module_arg": {}}]}),  # no name read: nothing, as Tetragon's
    (OBJ_SPEC, 6, {"args": [(struct.pack("<iIII", 0, 0, 0, 4026531837), 0, 0, 0)]},
     {"args": [{"user_ns_arg": {"level": 0, "uid": 0, "gid": 0, "ns": {"inum": 4026531837, "is_host": True}},
                "label": "ns"}]}),
    (OBJ_SPEC, 6, {"args": [(struct.pack("<iIII", 2, 1000, 1000, 0), 0, 0, 0)]},
     {"args": [{"user_ns_arg": {"level": 2, "uid": 1000, "gid": 1000, "ns": {}}, "label": "ns"}]}),
])
def test_generic_records_made_in_c(spec: str, hook: int, rec: dict[str, Any], want: dict[str, Any]) -> None:
    """file, path and linux_binprm arguments (kprobes on kernel functions), buffers, sockets,
    credentials, capabilities, bpf commands, the kernel objects' arguments and kretprobes' return
    values are made in C too: handle() is not called."""
    hooks, lp, handle, calls = _counted_policy_events(spec)
    r = plain_record(**rec)
    ev = handle(_generic_record(hooks[hook], r), 0)
    assert calls == [] and {k: ev.body[k] for k in want} == want
    assert list(ev.body.items()) == list(generic_events_reference(hooks[hook], r).items())
    # the body's dicts and lists are left to reference counting (untrack_body): sound only acyclic
    containers = [ev.body, *(x for v in ev.body.values() if isinstance(v, list) for x in [v, *v])]
    assert not any(gc.is_tracked(c) for c in containers if isinstance(c, (dict, list)))
    _assert_acyclic(ev, ev.body, *containers)
    assert codec.encode(ev) == codec.py_encode(ev)


def test_every_argument_type_is_rendered_in_c() -> None:
    """Each argument type of the policy layout has a renderer in the compiled handler (a new
    type without one would send all its hook's records to handle())."""
    from vigil.kernel import policy_layout as L
    from vigil.sensors import generic_events as G

    assert {name for name, t in L.T.items() if t not in G._GA_BY_VTYPE} == set()
    assert len(G.GA) <= G.GA_ERR_OK


def test_a_syscall_number_read_as_a_size_is_made_in_c() -> None:
    """render_arg's syscall_id of a size argument whose policy type is syscall64."""
    hooks, lp, handle, calls = _counted_policy_events("tracepoint-syscall64")
    hooks[0].placement.args[1].policy_type = "syscall64"
    r = plain_record(args=[(b"", 0x80000000 | 5, 0, 0), (b"", 1 << 32 | 59, 0, 0)])
    ev = handle(_generic_record(hooks[0], r), 0)
    assert calls == [] and ev.body["args"][1] == {"syscall_id": {"id": 59, "abi": "x64"}}
    assert ev.body["args"] == generic_events_reference(hooks[0], r)["args"]


def test_kernel_stacks_are_made_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kprobe's kernel stack, each address as the symbol it falls in and the offset into it
    (zeros skipped; below the first symbol, or in one whose address is hidden: left out, as
    Tetragon leaves out frames it cannot place; the kernel address is never written)."""
    from vigil.sensors import generic_events as G

    syms = G.KernelSymbols()
    syms._addrs, syms._names = [0, 0x1000, 0x2000], ["hidden", "alpha", "beta"]
    monkeypatch.setattr(G, "KSYMS", syms)
    (ch,), lp, handle, calls = _counted_policy_events("kprobe-string")
    stack = struct.pack("<5Q", 0x1000, 0x2010, 0, 0x10, 2**64 - 1)
    r = plain_record(action=1, kstack=stack, args=[(b"/etc/hosts", 0, 0, 0), (b"", 1, 0, 0)])
    ev = handle(_generic_record(ch, r), 0)
    assert calls == [] and ev.body["kernel_stack_trace"] == [
        {"symbol": "alpha"}, {"offset": "16", "symbol": "beta"},
        {"offset": str(2**64 - 1 - 0x2000), "symbol": "beta"}]
    assert list(ev.body.items()) == list(generic_events_reference(ch, r).items())
    # every address hidden (kptr_restrict): no frame, no list, and no kernel address anywhere
    hidden = G.KernelSymbols()
    hidden._addrs, hidden._names = [0, 0], ["alpha", "beta"]
    monkeypatch.setattr(G, "KSYMS", hidden)
    (ch,), lp, handle, calls = _counted_policy_events("kprobe-string")
    ev = handle(_generic_record(ch, r), 0)
    assert calls == [] and "kernel_stack_trace" not in ev.body and str(0x2010) not in repr(ev.body)
    assert list(ev.body.items()) == list(generic_events_reference(ch, r).items())


def test_kernel_stacks_start_below_the_program_that_took_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack taken in a tracepoint program starts with that program and the tracing code that
    ran it: those leading frames are left out (C and the reference alike), so a stand-in's stack
    starts where its tracepoint fired, as a kprobe's starts at its function. The same names
    further down are kept."""
    from vigil.sensors import generic_events as G

    syms = G.KernelSymbols()
    syms._addrs = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000]
    syms._names = ["bpf_prog_0123456789abcdef_vigil_raw_tp", "bpf_trace_run4", "perf_trace_run_bpf_submit",
                   "sk_skb_reason_drop", "__bpf_trace_x", "bpf_prog_load"]
    monkeypatch.setattr(G, "KSYMS", syms)
    (ch,), lp, handle, calls = _counted_policy_events("kprobe-string")
    # (stack, the frames kept): a program's stack; a kprobe's on bpf_prog_load, and on a function
    # named like tracing code, which start at the function (no program frame above them)
    for addrs, want in [((0x1010, 0x2020, 0x3030, 0x4040, 0x5050, 0x1010),
                         ["sk_skb_reason_drop", "__bpf_trace_x", "bpf_prog_0123456789abcdef_vigil_raw_tp"]),
                        ((0x6060, 0x4040), ["bpf_prog_load", "sk_skb_reason_drop"]),
                        ((0x3030, 0x4040), ["perf_trace_run_bpf_submit", "sk_skb_reason_drop"])]:
        stack = struct.pack(f"<{len(addrs)}Q", *addrs)
        r = plain_record(action=1, kstack=stack, args=[(b"/etc/hosts", 0, 0, 0), (b"", 1, 0, 0)])
        ev = handle(_generic_record(ch, r), 0)
        assert calls == [] and [f["symbol"] for f in ev.body["kernel_stack_trace"]] == want
        assert list(ev.body.items()) == list(generic_events_reference(ch, r).items())


def generic_events_reference(ch: Any, r: dict[str, Any]) -> dict[str, Any]:
    """build_body's body of a record of `ch`: the reference the compiled handler is held to."""
    from vigil.events.generic import decode_generic
    from vigil.sensors.generic_events import build_body

    m, data = decode_generic(_generic_record(ch, r))
    return build_body(ch, m, data)


@pytest.mark.parametrize("spec, hook, rec, keys", [
    ("uprobe", 0, {"args": [(b"$ ", 0, 0, 0), (b"", 3, 0, 0)]},
     ["path", "symbol", "policy_name", "message", "args", "tags", "action"]),  # offset: 0 for a symbol
    ("uprobe", 1, {"args": [(b"", 9, 0, 0)]}, ["path", "policy_name", "args", "offset", "action"]),
    ("usdt", 0, {"args": [(b"app.py", 0, 0, 0), (b"", 7, 0, 0)]},
     ["path", "provider", "name", "policy_name", "message", "args", "action"]),
    ("lsm", 0, {"args": [(b"/etc/hosts", 0, 0, 0o100644)]},
     ["function_name", "policy_name", "args", "action", "message"]),
    ("lsm", 0, {"args": [(b"/usr/bin/ls", 0, 0, 0o100755)], "ima": bytes(range(32)), "ima_algo": 4},
     ["function_name", "policy_name", "args", "action", "message", "ima_hash"]),
    ("tracepoint", 0, {"args": [(b"/etc/hosts", 0, 0, 0), (b"", 0, 0, 0)], "ret_action": 3},
     ["subsys", "event", "args", "policy_name", "action", "message"]),
    ("kprobe-enforce", 0, {"selector": 1, "action": 3, "args": [(b"/etc/shadow", 0, 0, 0)]},
     ["function_name", "args", "action", "policy_name", "return_action", "message"]),
    ("kprobe-enforce", 0, {"selector": 3, "action": 1, "ret_action": 4, "flags": 2, "args": [(b"/x", 0, 0, 0)]},
     ["function_name", "args", "action", "policy_name", "return_action", "message"]),
])
def test_generic_bodies_of_every_kind_made_in_c(spec: str, hook: int, rec: dict[str, Any], keys: list[str]) -> None:
    """The bodies of LSM hooks, uprobes and USDT probes, and enforcements' explained messages
    (a tracepoint's too: its return action enforced), are made in C in build_body's order."""
    hooks, lp, handle, calls = _counted_policy_events(spec)
    r = plain_record(**rec)
    ev = handle(_generic_record(hooks[hook], r), 0)
    assert calls == [] and list(ev.body) == keys
    assert list(ev.body.items()) == list(generic_events_reference(hooks[hook], r).items())
    enforcing = r["action"] in (3, 4, 5) or r["ret_action"] in (3, 4, 5)  # Sigkill, Signal, Override
    assert ("[vigil: selector" in ev.body.get("message", "")) == enforcing
    assert codec.encode(ev) == codec.py_encode(ev)


A = {n: f"KPROBE_ACTION_{n.upper()}" for n in ("Post", "NoPost", "Sigkill", "Signal", "Override")}


@pytest.mark.parametrize("spec, hook, rec, action, return_action", [
    # Post after Sigkill: the record holds Sigkill (3), the event reports Post
    ("kprobe-reported-actions", 0, {"selector": 1, "action": 3}, A["Post"], A["Post"]),
    # Signal+Post, and return actions [Signal, Post] that ran (the record's return action: Signal, 4)
    ("kprobe-reported-actions", 0, {"selector": 2, "action": 4}, A["Post"], A["Post"]),
    ("kprobe-reported-actions", 0, {"selector": 2, "action": 4, "ret_action": 4, "flags": 1}, A["Post"], A["Post"]),
    ("kprobe-reported-actions", 0, {"selector": 2, "action": 4, "flags": 1}, A["Post"], A["Post"]),
    # Override+Post
    ("kprobe-reported-actions", 2, {"selector": 1, "action": 5, "args": [(b"/etc/hosts", 0, 0, 0o100644)]},
     A["Post"], A["Post"]),
    ("kprobe-reported-actions", 2, {"selector": 1, "action": 5, "flags": 2,
                                    "args": [(b"/etc/hosts", 0, 0, 0o100644)]}, A["Post"], A["Post"]),
    # NoPost after Sigkill; return actions [Post, Signal] that ran: Signal
    ("kprobe-reported-actions", 0, {"selector": 3, "action": 3}, A["NoPost"], A["Post"]),
    ("kprobe-reported-actions", 0, {"selector": 3, "action": 3, "ret_action": 4, "flags": 1}, A["NoPost"],
     A["Signal"]),
    # a record another selector's action filled: its own name
    ("kprobe-reported-actions", 0, {"selector": 1, "action": 5}, A["Override"], A["Post"]),
    ("kprobe-reported-actions", 0, {"selector": 0, "action": 3}, A["Sigkill"], A["Post"]),
    ("kprobe-reported-actions", 1, {"selector": 1, "action": 4}, A["NoPost"], A["Post"]),
    ("lsm-reported-actions", 0, {"selector": 1, "action": 5, "args": [(b"/etc/hosts", 0, 0, 0o100644)]},
     A["Post"], None),
    ("lsm-reported-actions", 0, {"selector": 2, "action": 4, "args": [(b"/etc/hosts", 0, 0, 0o100644)]},
     A["NoPost"], None),
])
def test_reported_actions_are_made_in_c(spec: str, hook: int, rec: dict[str, Any], action: str,
                                        return_action: str | None) -> None:
    """A hook whose events report another action than the record holds (Post or NoPost after an
    enforcing action), or that has return actions, stays in the compiled handler: handle() is not
    called, and the body and its encodings are build_body's, byte for byte."""
    hooks, lp, handle, calls = _counted_policy_events(spec)
    r = plain_record(**{"args": [(b"/etc/shadow", 0, 0, 0)], **rec})
    ev = handle(_generic_record(hooks[hook], r), 0)
    assert calls == []
    assert (ev.body["action"], ev.body.get("return_action")) == (action, return_action)
    assert list(ev.body.items()) == list(generic_events_reference(hooks[hook], r).items())
    assert ("[vigil: selector" in ev.body.get("message", "")) == (r["action"] in (3, 4, 5) or r["ret_action"] in (3, 4, 5))
    assert codec.encode(ev) == codec.py_encode(ev)


# (the table, a selector and an action of the record): the compiled handler names the event's
# action (and a kprobe's return_action) by an index into tables made with the plan, not by a
# lookup per event; an entry changed in the plan is what the event reports
@pytest.mark.parametrize("table, selector, action", [
    ("reported", 1, 3),   # selector 1 reports Post for its Sigkill
    ("reported", 0, 3),   # row 0: the action's own name
    ("reported", 9, 4),   # a selector past the hook's: handle()'s (no counter key in the plan for it)
    ("ret_reported", 2, 4),
])
def test_reported_actions_are_read_from_the_plans_tables(table: str, selector: int, action: int) -> None:
    from vigil.agent.policy_events import _USER_ACTIONS, PolicyEvents
    from vigil.sensors import generic_events as G

    hooks, lp = _generic_hooks("kprobe-reported-actions")
    b, _ = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    pe = PolicyEvents(b, lambda e: None, {ch.hook_id: (ch, lp) for ch in hooks}, None)  # type: ignore[arg-type]
    ch = hooks[0]
    plan = pe.fast_plan(ch.hook_id)
    assert plan is not None
    at = G.PLAN_FIELDS.index(table)
    t = plan[at]
    sh = G._shape(ch)
    covered = set(G.ACTION_NAMES) - _USER_ACTIONS  # the actions the compiled handler names
    # the plan exposes its tables: every entry the reference's name (None: an action left to handle())
    rows = len(t) // G.REPORTED_ROW
    assert len(t) == rows * G.REPORTED_ROW and rows == 1 + len(sh.actions if table == "reported" else sh.ret_actions)
    for sel in range(rows):
        for a in range(0 if table == "reported" else 1, G.REPORTED_ROW):  # (no return action ran: Post, no lookup)
            ref = sh.action(sel, a) if table == "reported" else sh.return_action(sel, a)
            assert t[sel * G.REPORTED_ROW + a] == (ref if a in covered else None), (sel, a)
    # the compiled handler reads them: an entry changed in the plan is the event's
    row = selector if selector < rows else 0
    changed = list(t)
    changed[row * G.REPORTED_ROW + action] = "FROM_THE_TABLE"
    made = plan[:at] + (tuple(changed),) + plan[at + 1:]
    pe.fast_plan = lambda hook_id: made if hook_id == ch.hook_id else None  # type: ignore[method-assign]
    calls: list[int] = []
    py_handle = pe.handle
    pe.handle = lambda buf, now: (calls.append(1), py_handle(buf, now))[1]  # type: ignore[method-assign]
    handle = pe.compiled_handler()
    rec = {"selector": selector, "action": 3 if table == "ret_reported" else action, "args": [(b"/etc/x", 0, 0, 0)]}
    if table == "ret_reported":
        rec.update(ret_action=action, flags=1)
    ev = handle(_generic_record(ch, plain_record(**rec)), 0)
    past = selector >= len(plan[G.PLAN_FIELDS.index("keys")]) // G.REPORTED_ROW
    assert calls == ([1] if past else [])
    assert ev.body["return_action" if table == "ret_reported" else "action"] == (
        sh.action(0, action) if past else "FROM_THE_TABLE")


# the compiled handler finds a record's plan by its hook id in a table filled as plans are made
# (set_generic's last part: [hook id] -> (hook id, plan)), and whether the plan covers its event
# in the plan's own key table (generic_events.counter_table, [selector * REPORTED_ROW + action]):
# no int made and no dict read per event. (what is changed after the first event, then what the
# second event reports as its action, and whether handle() made it)
@pytest.mark.parametrize("change, action, by_handle", [
    ("no-key-in-the-plan", "KPROBE_ACTION_POST", True),  # the plan's table leaves it to handle()
    ("plans-dict", "KPROBE_ACTION_POST", False),         # the table's plan, not the dict's
    ("entry-replaced", "KPROBE_ACTION_POST", False),     # a plan of the new entry is made (and tabled)
    ("hook-id-past-the-table", "FROM_THE_DICT", False),  # no table row: the dict's plan
])
def test_a_records_plan_and_counter_key_are_read_from_tables(change: str, action: str, by_handle: bool) -> None:
    import dataclasses

    from vigil.agent.policy_events import PolicyEvents
    from vigil.sensors import generic_events as G

    hooks, lp = _generic_hooks("kprobe-string")
    ch = hooks[0]
    if change == "hook-id-past-the-table":
        ch = dataclasses.replace(ch, hook_id=70_000)
    hid = ch.hook_id
    b, _ = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    pe = PolicyEvents(b, lambda e: None, {hid: (ch, lp)}, None)  # type: ignore[arg-type]
    at_keys, at_reported = G.PLAN_FIELDS.index("keys"), G.PLAN_FIELDS.index("reported")
    made: list[Any] = []

    def fast_plan(hook_id: int) -> Any:
        plan = PolicyEvents.fast_plan(pe, hook_id)
        if plan is not None and change == "no-key-in-the-plan":
            keys = list(plan[at_keys])
            keys[1 * G.REPORTED_ROW + 1] = None
            plan = plan[:at_keys] + (tuple(keys),) + plan[at_keys + 1:]
        made.append(plan)
        return plan

    calls: list[int] = []
    plans: dict[int, Any] = {}
    table: list[Any] = []
    b._fast.set_generic((pe.hooks, plans, fast_plan, lambda buf, now: (calls.append(1), pe.handle(buf, now))[1],
                         pe._data, pe.message, pe.missing, pe.data_misses, table))
    rec = _generic_record(ch, plain_record(selector=1, action=1, args=[(b"/etc/x", 0, 0, 0), (b"", 3, 0, 0)]))
    b._fast.on_generic(rec, 0)
    assert len(made) == 1 and plans[hid] is made[0]
    assert table == ([] if hid >= 65536 else [None] * hid + [(hid, made[0])])
    if change in ("plans-dict", "hook-id-past-the-table"):
        reported = list(made[0][at_reported])
        reported[1 * G.REPORTED_ROW + 1] = "FROM_THE_DICT"
        plans[hid] = made[0][:at_reported] + (tuple(reported),) + made[0][at_reported + 1:]
    elif change == "entry-replaced":
        pe.hooks[hid] = (ch, lp)  # another entry of the hook id (a policy replaced)
    calls.clear()
    ev = b._fast.on_generic(rec, 0)
    assert calls == ([1] if by_handle else []) and ev.body["action"] == action
    assert len(made) == (2 if change == "entry-replaced" else 1)
    if change == "entry-replaced":
        assert made[1][0] is pe.hooks[hid] and table[hid] == (hid, made[1])


@SETTINGS
@given(_addr, st.sampled_from([2, 10]))
def test_socket_addresses_written_as_ipaddress_does(raw: bytes, family: int) -> None:
    """The compiled sockaddr_arg's address is the ipaddress module's text of it (IPv6: the first
    of the longest runs of zero hextets as "::")."""
    import ipaddress

    hooks, _, handle, calls = _counted_policy_events("kprobe-sock")
    payload = struct.pack("<HH4x16s", family, 80, raw)
    r = plain_record(args=[(payload, 0, 0, 0), (b"", 1, 0, 0)])
    ev = handle(_generic_record(hooks[1], r), 0)
    want = ipaddress.IPv4Address(raw[:4]) if family == 2 else ipaddress.IPv6Address(raw)
    assert calls == [] and ev.body["args"][0]["sockaddr_arg"]["addr"] == str(want)


# the parent an exec names, then (misses, early_deletions): an exec whose parent is not in the
# cache is a miss (tetragon_process_cache_misses_total{operation="get"}), as a clone's or an exit's
@pytest.mark.parametrize("parent, want", [
    ("cached", (0, 0)),            # named by its key
    ("cached-by-pid", (0, 0)),     # named by pid alone (no parent ktime)
    ("unknown", (1, 0)),
    ("unknown-by-pid", (1, 0)),
    ("gc-removed", (1, 1)),        # removed by the GC before the exec came: an early deletion too
])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_an_exec_whose_parent_is_not_cached_is_a_miss(compiled: bool, parent: str, want: tuple[int, int]) -> None:
    fast_b, ref_b = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    b = fast_b if compiled else ref_b
    on_exec = b._fast.on_exec if compiled else (lambda buf, now: b.on_exec(R.PyProcessRecord(buf), now))
    d = {"exe": "/bin/sh", "cwd": b"/", "filename": "/bin/sh", "cgroup": "", "args": b"sh\0", "caps": (0, 0, 0),
         "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0, "i_mode": 0o100755,
         "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC}
    if parent.startswith("cached") or parent == "gc-removed":
        on_exec(_exec_record(100, 5_000_000_000, 1, 0, d), 0)
    if parent == "gc-removed":
        b.cache.exit(b.cache.get((100, 5_000_000_000)), 0)
        assert b.cache.gc(1000) == 1
    misses = b.cache.misses
    ppid, pktime = (200, 4_000_000_000) if parent.startswith("unknown") else (100, 5_000_000_000)
    ev = on_exec(_exec_record(101, 6_000_000_000, ppid, 0 if parent.endswith("by-pid") else pktime, d), 0)
    assert (ev.parent is None) is (want[0] == 1)
    assert (b.cache.misses - misses, b.cache.early_deletions) == want


# pid 100 ran /bin/sh (exec key 5 s), then exec'd again at 6 s: that exec's record never
# reached the cache (lost, or not read yet). An exit, or a clone of pid 100, whose record carries
# an exec key names that image exactly, as a policy record does (369e482): never the pid's older
# image; by pid only without a key. (exit's exec key, the exit's process: a binary or the
# stand-in's start time, the pid still cached afterwards)
@pytest.mark.parametrize("exec_ktime, want, pid_left", [
    (5_000_000_000, "/bin/sh", None),
    (6_000_000_000, "1970-01-01T00:00:06Z", None),   # the older image released, not named
    (0, "/bin/sh", None),                              # no key: by pid
    (4_000_000_000, "1970-01-01T00:00:04Z", "/bin/sh"),  # an earlier process of the pid: left alone
], ids=["exec-key", "exec-missed", "no-key", "earlier-process"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_an_exit_names_the_image_of_its_exec_key(compiled: bool, exec_ktime: int, want: str,
                                                 pid_left: str | None) -> None:
    fast_b, ref_b = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    b = fast_b if compiled else ref_b
    b.clock.offset = 0
    on_exec = b._fast.on_exec if compiled else (lambda buf, now: b.on_exec(R.PyProcessRecord(buf), now))
    on_exit = b._fast.on_exit if compiled else (lambda buf, now: b.on_exit(R.PyExitRecord(buf), now))
    on_exec(_exec_record(100, 5_000_000_000, 1, 0, _SH), 0)
    ev = on_exit(R.EXIT.pack(R.OP_EXIT, 0, 0, R.EXIT.size, 7_000_000_000, 100, 0, exec_ktime, 100, 0), 0)
    got = ev.process.binary or ev.process.start_time
    assert got == want, ev.process
    left = b.cache.by_pid(100)
    assert (left.binary if left is not None else None) == pid_left


# a fork by pid 100 (its parent, or with CLONE_PARENT the caller the record names), whose image
# in the cache is /bin/sh (exec key 5 s); the record's key of that process, then the child's
# cached binary (None: no entry, a miss)
@pytest.mark.parametrize("via, ktime, want", [
    ("parent", 5_000_000_000, "/bin/sh"),
    ("parent", 6_000_000_000, None),      # an exec of pid 100 the cache missed: not /bin/sh's child
    ("parent", 0, "/bin/sh"),             # no key: by pid
    ("caller", 5_000_000_000, "/bin/sh"),
    ("caller", 6_000_000_000, None),
    ("caller", 0, "/bin/sh"),
])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_a_clone_copies_the_image_of_its_parents_exec_key(compiled: bool, via: str, ktime: int,
                                                          want: str | None) -> None:
    fast_b, ref_b = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    b = fast_b if compiled else ref_b
    on_exec = b._fast.on_exec if compiled else (lambda buf, now: b.on_exec(R.PyProcessRecord(buf), now))
    on_clone = b._fast.on_clone if compiled else (lambda buf, now: b.on_clone(R.PyProcessRecord(buf), now))
    on_exec(_exec_record(100, 5_000_000_000, 1, 0, _SH), 0)
    clone = {**_SH, "op": R.OP_CLONE}
    if via == "parent":
        rec = _exec_record(101, 7_000_000_000, 100, ktime, clone)  # ktime 0: the parent's pid alone
    else:  # CLONE_PARENT: the child's parent is the caller's (pid 1), its image the caller's
        rec = _exec_record(101, 7_000_000_000, 1, 0, {**clone, "ckey": (100, ktime)})
    misses = b.miss_count
    on_clone(rec, 0)
    child = b.cache.by_pid(101)
    assert (child.binary if child is not None else None) == want
    assert b.miss_count - misses == (want is None)


_SH = {"exe": "/bin/sh", "cwd": b"/", "filename": "/bin/sh", "cgroup": "", "args": b"sh\0", "caps": (0, 0, 0),
       "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0, "i_mode": 0o100755,
       "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC}


# the exec ktime a policy record names for pid 100, whose image (100, 5 s) the GC removed, and
# its flags, then (misses, early_deletions): an early deletion is a miss of that very image (by
# pid alone when the record names no exec key: no ktime, or VP_EV_NO_PROC, whose ktime is the
# thread group leader's start), not of a later one of the reused pid
@pytest.mark.parametrize("exec_ktime, flags, want", [
    (5_000_000_000, 0, (1, 1)),
    (0, 0, (1, 1)),
    (8_000_000_000, 0, (1, 0)),   # the pid reused by a process the cache never had
    (4_000_000_000, "EV_NO_PROC", (1, 1)),  # execve_map lacks it too: its leader started at 4 s
], ids=["exec-key", "no-key", "reused-pid", "no-proc-leader-start"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_early_deletions_of_policy_records_match_the_exec_key(compiled: bool, exec_ktime: int, flags: int | str,
                                                             want: tuple[int, int]) -> None:
    from vigil.agent.policy_events import PolicyEvents
    from vigil.kernel import policy_layout as L

    b, _ = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    d = {"exe": "/bin/cat", "cwd": b"/", "filename": "/bin/cat", "cgroup": "", "args": b"cat\0", "caps": (0, 0, 0),
         "ns": HOST, "uid": 0, "euid": 0, "auid": 0, "securebits": 0, "userns_level": 0, "i_mode": 0o100755,
         "nlink": 1, "flags": 0, "tid_off": 0, "op": R.OP_EXEC}
    b.record_handlers()[R.OP_EXEC](_exec_record(100, 5_000_000_000, 1, 0, d), 0)
    cache = b.cache
    cache.exit(cache.get((100, 5_000_000_000)), 0)
    assert cache.gc(1000) == 1
    hooks, lp = _generic_hooks("kprobe-string")
    pe = PolicyEvents(b, lambda e: None, {c.hook_id: (c, lp) for c in hooks}, None)  # type: ignore[arg-type]
    calls: list[int] = []
    py_handle = pe.handle
    pe.handle = lambda buf, now: (calls.append(1), py_handle(buf, now))[1]  # type: ignore[method-assign]
    handler = pe.compiled_handler() if compiled else py_handle
    misses = cache.misses
    rec = plain_record(action=1, exec_ktime=exec_ktime, args=[(b"/etc/passwd", 0, 0, 0), (b"", 3, 0, 0)],
                       flags=getattr(L, flags) if isinstance(flags, str) else flags)
    ev = handler(_generic_record(hooks[0], rec), 0)
    assert ev.process.binary == "" and calls == []   # a stand-in (the compiled handler made it itself)
    assert (cache.misses - misses, cache.early_deletions) == want


# a policy record of a process the cache does not have (pid 555), by the kernel's key: its
# stand-in process is Tetragon's getProcessParent's: the pid and the start time of the key,
# flags "unknown" when the kernel had no entry either (VP_EV_NO_PROC, the key's ktime then the
# thread group leader's start; or no exec ktime); no exec_id, tid, parent
@pytest.mark.parametrize("exec_ktime, tid, flags, want", [
    (5_000_000_000, 556, 0, {"pid": 555, "start_time": "2025-11-24T16:00:05Z"}),
    (5_000_000_000, 0, 0, {"pid": 555, "start_time": "2025-11-24T16:00:05Z"}),
    (5_000_000_000, 556, "EV_NO_PROC", {"pid": 555, "flags": "unknown", "start_time": "2025-11-24T16:00:05Z"}),
    (0, 556, 0, {"pid": 555, "flags": "unknown"}),
], ids=["key", "key-leader", "no-proc-leader-start", "no-key"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_a_policy_events_process_the_cache_lacks_is_tetragons_stand_in(compiled: bool, exec_ktime: int, tid: int,
                                                                      flags: int | str, want: dict[str, Any]) -> None:
    from vigil.agent.policy_events import PolicyEvents
    from vigil.kernel import policy_layout as L

    b, _ = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    hooks, lp = _generic_hooks("kprobe-string")
    pe = PolicyEvents(b, lambda e: None, {c.hook_id: (c, lp) for c in hooks}, None)  # type: ignore[arg-type]
    handler = pe.compiled_handler() if compiled else pe.handle
    rec = plain_record(pid=555, exec_ktime=exec_ktime, args=[(b"/etc/passwd", 0, 0, 0), (b"", 3, 0, 0)],
                       flags=getattr(L, flags) if isinstance(flags, str) else flags)
    ev = handler(_generic_record(hooks[0], rec) if not tid else _with_tid(_generic_record(hooks[0], rec), tid), 0)
    d = event_dict(ev)["process_kprobe"]
    assert (d["process"], "parent" in d) == (want, False)
    pb = wire.encode_event(ev)
    assert pb == wire.reference_bytes(event_dict(ev))
    assert wire.decode_response(pb)["process_kprobe"]["process"] == want


def _with_tid(rec: bytes, tid: int) -> bytes:
    """The record with another thread's id (struct msg_generic's tid)."""
    from vigil.kernel import policy_layout as L

    off = L.MsgGeneric.tid.offset
    return rec[:off] + struct.pack("<I", tid) + rec[off + 4:]


# the maxData chunks waiting when a record of pid 100 comes whose first argument continues in
# them (ARGF_DATA): its own ((ktime, tid, slot) -> chunks), another event's (never came), both
# or none; then (tetragon_data_cache_misses_total{operation="get"}, the argument, chunks left)
@pytest.mark.parametrize("waiting, want", [
    ({(7_000_000_000, 100, 0): [(0, b"/more")]}, (0, "/etc/passwd/more", 0)),
    ({}, (1, "/etc/passwd", 0)),                                    # its chunks never came
    ({(1, 2, 3): [(0, b"x")]}, (1, "/etc/passwd", 1)),              # nor these, of another event
    ({(1, 2, 3): [(0, b"x")], (7_000_000_000, 100, 0): [(0, b"/more")]}, (0, "/etc/passwd/more", 1)),
], ids=["came", "never-came", "never-came-other-waits", "came-other-waits"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_data_chunks_that_never_came_are_data_cache_misses(compiled: bool, waiting: dict[Any, Any],
                                                           want: tuple[int, str, int]) -> None:
    from vigil.agent.policy_events import PolicyEvents

    b, _ = _builders({"enable_cred": False, "enable_ns": False, "ancestors": False}, 64)
    hooks, lp = _generic_hooks("kprobe-string")
    pe = PolicyEvents(b, lambda e: None, {c.hook_id: (c, lp) for c in hooks}, None)  # type: ignore[arg-type]
    pe._data.update({k: list(v) for k, v in waiting.items()})
    handler = pe.compiled_handler() if compiled else pe.handle
    rec = plain_record(action=1, args=[(b"/etc/passwd", 4096, 8, 0), (b"", 3, 0, 0)])  # 8: ARGF_DATA
    ev = handler(_generic_record(hooks[0], rec), 0)
    assert (pe.data_misses["get"], ev.body["args"][0]["string_arg"], len(pe._data)) == want
    assert handler(_generic_record(hooks[0], plain_record(action=1, args=[(b"/a", 0, 0, 0)])), 0) is not None
    assert pe.data_misses["get"] == want[0]   # a record with no argument in chunks: none missed
