"""Typed events -> JSON lines, as Tetragon's export writes them (protojson, proto field
names, empty and zero fields left out).

A process message is encoded once (its bytes cached on it, `ProcessMsg.enc_json`) and
spliced into every event that mentions it: its exec, its exit, its children's `parent`.
Sub-messages many processes share (capabilities, namespaces, credentials) are interned by
the process stage; their encodings are cached by identity. An event's line is cached on
the event too, for a second file sink or printer.

`encode_reference` is the plain conversion (the dict view through orjson) that the fast
path must equal byte for byte (tests/unit/test_export_codec.py).
"""
from __future__ import annotations

from typing import Any

import orjson

from vigil.core import native
from vigil.core.events import (
    DictEvent,
    Event,
    Pod,
    PodShared,
    PolicyEvent,
    ProcessExec,
    ProcessExit,
    ProcessMsg,
    split_policy_body,
)
from vigil.export.dicts import event_dict, process_fields

_NL = orjson.OPT_APPEND_NEWLINE
_dumps = orjson.dumps
_Fragment = orjson.Fragment

# id(sub-message) -> (the object, its JSON, its Fragment); the object is held so its id
# stays its own
_SUBS: dict[int, tuple[Any, bytes, Any]] = {}
_SUBS_MAX = 16384
_NODES: dict[str, bytes] = {}


def _sub_entry(d: Any) -> tuple[Any, bytes, Any]:
    e = _SUBS.get(id(d))
    if e is not None and e[0] is d:
        return e
    b = _dumps(d)
    e = (d, b, _Fragment(b))
    if len(_SUBS) >= _SUBS_MAX:
        _SUBS.clear()
    _SUBS[id(d)] = e
    return e


def _sub(d: Any) -> Any:
    """Fragment of an interned sub-message (capabilities, namespaces, credentials) or a pod."""
    if type(d) is Pod:
        return _Fragment(pod_json(d))
    return _sub_entry(d)[2]


def _sub_json(d: Any) -> bytes:
    return _sub_entry(d)[1]


# id(Pod.shared) -> (that dict, its parts), for a shared part that is a plain dict
_PODS: dict[int, tuple[dict[str, Any], tuple[bytes, bytes]]] = {}


def pod_parts(shared: dict[str, Any]) -> tuple[bytes, bytes]:
    """A container's pod object encoded once, split where a process's own fields go (before
    the container object's closing brace); cached on a PodShared (the compiled encoder reads
    it there too)."""
    if type(shared) is PodShared and shared.enc_json is not None:
        return shared.enc_json
    e = _PODS.get(id(shared))
    if e is not None and e[0] is shared:
        return e[1]
    raw, cont = _dumps(shared), _dumps(shared["container"])
    at = raw.index(b'"container":' + cont) + len(b'"container":') + len(cont) - 1
    sc = cont.rfind(b',"security_context":')   # the container's last field: pid and the rest go before it
    if sc > 0:
        at -= len(cont) - 1 - sc
    parts = (raw[:at], raw[at:])
    if type(shared) is PodShared:
        shared.enc_json = parts
    else:
        if len(_PODS) >= _SUBS_MAX:
            _PODS.clear()
        _PODS[id(shared)] = (shared, parts)
    return parts


def pod_json(p: Pod) -> bytes:
    """A process's pod object: its container's part encoded once, the process's pid and
    exec-probe guess added (the same bytes as encoding the whole dict)."""
    head, tail = pod_parts(p.shared)
    own = b""
    sep = b"," if head[-1:] != b"{" else b""
    if p.pid:
        own = b'%s"pid":%d' % (sep, p.pid)
        sep = b","
    if p.probe:
        own += sep + b'"maybe_exec_probe":true'
    return head + own + tail


def py_process_json(m: ProcessMsg) -> bytes:
    """The message's JSON object, encoded once."""
    b = m.enc_json
    if b is not None:
        return b
    d = process_fields(m, _sub)
    # orjson keeps the growable buffer (~5x the JSON) with the bytes: cache an exact copy
    b = m.enc_json = bytes(memoryview(_dumps(d)))
    return b


def _node(name: str) -> bytes:
    b = _NODES.get(name)
    if b is None:
        b = _NODES[name] = _dumps(name)
    return b


def _processes(ev: ProcessExec | ProcessExit | PolicyEvent) -> list[bytes]:
    parts = [b'{"', ev.kind.encode(), b'":{"process":', py_process_json(ev.process)]
    if ev.parent is not None:
        parts += (b',"parent":', py_process_json(ev.parent))
    return parts


def _ancestors(parts: list[bytes], ancestors: tuple[ProcessMsg, ...]) -> None:
    parts.append(b',"ancestors":[')
    parts.append(b",".join(py_process_json(a) for a in ancestors))
    parts.append(b"]")


def _line_parts(ev: Event) -> list[bytes]:
    """An event's line (not a dict, none cached) in parts: the process messages' own bytes
    and the glue between them."""
    t = ev.time.encode()
    if isinstance(ev, ProcessExec):
        parts = _processes(ev)
        if ev.ancestors:
            _ancestors(parts, ev.ancestors)
    elif isinstance(ev, ProcessExit):
        parts = _processes(ev)
        if ev.signal:
            parts += (b',"signal":', _dumps(ev.signal))
        if ev.status:
            parts += (b',"status":', str(ev.status).encode())
        parts += (b',"time":"', t, b'"')
        if ev.ancestors:
            _ancestors(parts, ev.ancestors)
    elif isinstance(ev, PolicyEvent):
        parts = _processes(ev)
        if ev.ancestors:  # at Tetragon's field: between the body's fields before it and after
            before, after = split_policy_body(ev.kind, ev.body)
            if before:
                parts += (b",", _dumps(before)[1:-1])
            _ancestors(parts, ev.ancestors)
            if after:
                parts += (b",", _dumps(after)[1:-1])
        elif ev.body:
            parts += (b",", _dumps(ev.body)[1:-1])
    else:
        raise TypeError(f"not an event: {type(ev).__name__}")
    parts += (b'},"node_name":', _node(ev.node_name), b',"time":"', t, b'"}\n')
    return parts


def py_encode(ev: Event | dict[str, Any]) -> bytes:
    """One JSON line (with its newline)."""
    if isinstance(ev, dict):
        return _dumps(ev, option=_NL)
    b = ev.enc_json
    if b is not None:
        return b
    if isinstance(ev, DictEvent):
        b = ev.enc_json = _dumps(ev.data, option=_NL)
        return b
    b = ev.enc_json = b"".join(_line_parts(ev))
    return b


def py_encode_pieces(events: list[Any]) -> tuple[list[bytes], int]:
    """The events' lines as pieces to write in order (a writev reads the cached process
    messages where they are, instead of a copy in every line), and their total size."""
    out: list[bytes] = []
    for ev in events:
        if isinstance(ev, dict) or ev.enc_json is not None or isinstance(ev, DictEvent):
            out.append(py_encode(ev))
        else:
            out += _line_parts(ev)
    return out, sum(map(len, out))


def encode_reference(ev: Event | dict[str, Any]) -> bytes:
    """The same line through the dict view: what `encode` must equal."""
    return _dumps(event_dict(ev), option=_NL)


def py_encode_events(events: list[Any]) -> list[bytes]:
    return [py_encode(e) for e in events]


# the compiled twins when built (native/fastpath.c); the functions above are the reference
encode, encode_events, encode_pieces, process_json = py_encode, py_encode_events, py_encode_pieces, py_process_json
if native.fast is not None:
    native.fast.configure_json(encode=py_encode, process_json=py_process_json, sub=_sub_json, body=_dumps,
                               pod_parts=pod_parts)
    encode, encode_events, encode_pieces, process_json = (
        native.fast.encode_json, native.fast.encode_json_batch, native.fast.encode_json_pieces,
        native.fast.process_json)
