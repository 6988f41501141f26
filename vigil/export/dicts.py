"""Typed events as dicts in GetEventsResponse's JSON shape (proto field names), for what
works on the JSON shape: filters, redaction, field trimming, the compact printer, tests.

A view is built on first use and cached on the event (and the process message's on the
message), in canonical protojson form: fields that are empty or zero are absent, as in
the JSON export. Never mutate a view: it is shared by every user of the event.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vigil.core.events import Event, PolicyEvent, ProcessExec, ProcessExit, ProcessMsg, split_policy_body


def _same(x: Any) -> Any:
    return x


def process_fields(m: ProcessMsg, sub: Callable[[Any], Any] = _same) -> dict[str, Any]:
    """The message's fields in proto order, canonical protojson (empty or zero: absent).
    `sub` stands in for the interned sub-messages (capabilities, namespaces, credentials):
    the JSON encoder passes their cached encodings."""
    d: dict[str, Any] = {"exec_id": m.exec_id} if m.exec_id else {}
    d["pid"] = m.pid
    if m.uid is not None:
        d["uid"] = m.uid
    if m.cwd:
        d["cwd"] = m.cwd
    if m.binary:
        d["binary"] = m.binary
    if m.arguments:
        d["arguments"] = m.arguments
    if m.flags:
        d["flags"] = m.flags
    if m.start_time:
        d["start_time"] = m.start_time
    if m.auid is not None:
        d["auid"] = m.auid
    if m.pod:
        d["pod"] = sub(m.pod) if sub is not _same else m.pod.as_dict()
    if m.docker:
        d["docker"] = m.docker
    if m.parent_exec_id:
        d["parent_exec_id"] = m.parent_exec_id
    if m.cap:
        d["cap"] = sub(m.cap)
    if m.ns:
        d["ns"] = sub(m.ns)
    if m.tid is not None:
        d["tid"] = m.tid
    if m.process_credentials:
        d["process_credentials"] = sub(m.process_credentials)
    if m.binary_properties:
        d["binary_properties"] = m.binary_properties
    if m.in_init_tree is not None:
        d["in_init_tree"] = m.in_init_tree
    return d


def process_dict(m: ProcessMsg) -> dict[str, Any]:
    d = m.enc_dict
    if d is None:
        d = m.enc_dict = process_fields(m)
    return d


def _with_processes(ev: ProcessExec | ProcessExit | PolicyEvent) -> dict[str, Any]:
    body: dict[str, Any] = {"process": process_dict(ev.process)}
    if ev.parent is not None:
        body["parent"] = process_dict(ev.parent)
    return body


def event_dict(ev: Event | dict[str, Any]) -> dict[str, Any]:
    """The event as a GetEventsResponse-shaped dict (a dict is returned as it is)."""
    if isinstance(ev, dict):
        return ev
    d = ev.enc_dict
    if d is not None:
        return d
    if isinstance(ev, ProcessExec):
        body = _with_processes(ev)
        if ev.ancestors:
            body["ancestors"] = [process_dict(a) for a in ev.ancestors]
    elif isinstance(ev, ProcessExit):
        body = _with_processes(ev)
        if ev.signal:
            body["signal"] = ev.signal
        if ev.status:
            body["status"] = ev.status
        body["time"] = ev.time
        if ev.ancestors:
            body["ancestors"] = [process_dict(a) for a in ev.ancestors]
    elif isinstance(ev, PolicyEvent):
        body = _with_processes(ev)
        if ev.ancestors:  # at Tetragon's field: between the body's fields before it and after
            before, after = split_policy_body(ev.kind, ev.body)
            body.update(before)
            body["ancestors"] = [process_dict(a) for a in ev.ancestors]
            body.update(after)
        else:
            body.update(ev.body)
    else:
        raise TypeError(f"not an event: {type(ev).__name__}")
    d = ev.enc_dict = {ev.kind: body, "node_name": ev.node_name, "time": ev.time}
    return d
