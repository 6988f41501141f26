"""Tetragon ``FieldFilter``: trim fields out of the inner event message.

A field filter applies to the event types in ``event_set`` (all types when empty; the
complement when ``invert_event_set`` is true). Paths are relative to the inner event
message: ``process.binary``, not ``process_exec.process.binary``.

The filters that apply to an event are applied one after the other, in their order, as
Tetragon's server does: an INCLUDE keeps only its paths (one INCLUDE turns the type into
default-exclude), an EXCLUDE removes its paths. So exclusion wins over inclusion in any order,
and two INCLUDE filters keep what both include (``process`` then ``parent.pid`` keeps
nothing; ``process`` then ``process.pid`` keeps the pid), not the union of their paths. A
filter without paths changes nothing (an empty FieldMask), as in Tetragon.

Envelope fields (``node_name``, ``time``...) are never touched. Paths may cross lists
(``ancestors.binary`` trims every ancestor), which protobuf field masks cannot express
but is handy. The input dict is never modified: trimmed events are fresh copies that
share untouched sub-objects with the original.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from vigil.export.event_types import FilterError, event_key, parse_event_type
from vigil.export.filters import normalize_keys, snake_case

log = logging.getLogger(__name__)

FIELD_FILTER_FIELDS = ("event_set", "fields", "action", "invert_event_set")
ACTIONS = {"INCLUDE": "INCLUDE", "EXCLUDE": "EXCLUDE", "0": "INCLUDE", "1": "EXCLUDE"}

# Top-level fields of the inner event messages, used to warn of typos in paths.
_PROCESS_EVENT = {"process", "parent", "ancestors"}
_HOOK_COMMON = _PROCESS_EVENT | {"policy_name", "message", "args", "tags", "action"}
KNOWN_TOP_FIELDS: dict[str, set[str]] = {
    "process_exec": _PROCESS_EVENT,
    "process_exit": _PROCESS_EVENT | {"signal", "status", "time"},
    "process_kprobe": _HOOK_COMMON | {"function_name", "return", "kernel_stack_trace",
                                      "return_action", "user_stack_trace", "data"},
    "process_tracepoint": _HOOK_COMMON | {"subsys", "event"},
    "process_uprobe": _HOOK_COMMON | {"path", "symbol", "offset", "ref_ctr_offset", "data"},
    "process_usdt": _HOOK_COMMON | {"path", "provider", "name", "flags"},
    "process_lsm": _HOOK_COMMON | {"function_name", "ima_hash"},
    "process_loader": _PROCESS_EVENT | {"path", "buildid"},
    "process_throttle": {"type", "cgroup"},
    "test": {"arg0", "arg1", "arg2", "arg3"},
    "rate_limit_info": {"number_of_dropped_process_events"},
}

# Path tree: {"process": {"binary": {}}, "parent": {}} -- an empty dict is a leaf.
PathTree = dict[str, "PathTree"]


def parse_paths(fields: Any, where: str = "fields") -> list[str]:
    """Comma-separated string (config form) or list of paths -> snake_case paths."""
    if isinstance(fields, dict) and "paths" in fields:  # FieldMask as an object
        fields = fields["paths"]
    if isinstance(fields, str):
        items = fields.split(",")
    elif isinstance(fields, list) and all(isinstance(f, str) for f in fields):
        items = [part for f in fields for part in f.split(",")]
    else:
        raise FilterError(f"{where}: expected a comma-separated string or a list, got {fields!r}")
    paths = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        segments = item.split(".")
        if any(not s for s in segments):
            raise FilterError(f"{where}: invalid field path {item!r}")
        paths.append(".".join(snake_case(s) for s in segments))
    return paths


def build_tree(paths: Iterable[str]) -> PathTree:
    tree: PathTree = {}
    for path in paths:
        node = tree
        segments = path.split(".")
        for i, seg in enumerate(segments):
            if seg in node and not node[seg]:
                break  # a shorter path already covers this one
            if i == len(segments) - 1:
                node[seg] = {}
            else:
                node = node.setdefault(seg, {})
    return tree


def merge_trees(a: PathTree, b: PathTree) -> PathTree:
    out = dict(a)
    for key, sub in b.items():
        if key not in out:
            out[key] = sub
        elif not out[key] or not sub:
            out[key] = {}
        else:
            out[key] = merge_trees(out[key], sub)
    return out


def keep_paths(obj: Any, tree: PathTree) -> Any:
    """Copy of `obj` holding only the paths in `tree`."""
    if isinstance(obj, list):
        return [keep_paths(item, tree) for item in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, sub in tree.items():
        if key in obj:
            out[key] = obj[key] if not sub else keep_paths(obj[key], sub)
    return out


def drop_paths(obj: Any, tree: PathTree) -> Any:
    """Copy of `obj` without the paths in `tree` (copying only along those paths)."""
    if isinstance(obj, list):
        return [drop_paths(item, tree) for item in obj]
    if not isinstance(obj, dict):
        return obj
    out = dict(obj)
    for key, sub in tree.items():
        if key not in out:
            continue
        if not sub:
            del out[key]
        else:
            out[key] = drop_paths(out[key], sub)
    return out


class FieldFilter:
    """One compiled FieldFilter message."""

    def __init__(self, spec: dict[str, Any]) -> None:
        fields = normalize_keys(spec, FIELD_FILTER_FIELDS, "field filter")
        self.source = fields
        event_set = fields.get("event_set") or []
        if not isinstance(event_set, (list, tuple)):
            raise FilterError(f"field filter event_set: expected a list of event types, got {event_set!r}")
        self.event_keys = frozenset(parse_event_type(v, "field filter event_set").lower() for v in event_set)
        invert = fields.get("invert_event_set", False)
        if not isinstance(invert, bool):
            raise FilterError(f"field filter invert_event_set: expected a bool, got {invert!r}")
        self.invert_event_set = invert
        action = str(fields.get("action", "INCLUDE")).upper()
        if action not in ACTIONS:
            raise FilterError(f"field filter action: expected INCLUDE or EXCLUDE, got {action!r}")
        self.action = ACTIONS[action]
        self.paths = parse_paths(fields.get("fields", ""), "field filter fields")
        self._check_paths()
        self.tree = build_tree(self.paths)

    def _check_paths(self) -> None:
        """A path naming no field of the selected event types is kept, as Tetragon keeps it
        (its field masks are not checked against the messages): it matches nothing, so an
        INCLUDE of it alone leaves the event empty and an EXCLUDE of it removes nothing. The
        agent's log says so, once per filter, since it is most likely a typo."""
        keys = self.event_keys or frozenset(KNOWN_TOP_FIELDS)
        if self.invert_event_set:
            keys = frozenset(KNOWN_TOP_FIELDS) - self.event_keys
        # UNDEF (0) is an event type no event has, as in Tetragon: it selects none, names no field
        known = set().union(*(KNOWN_TOP_FIELDS.get(k, ()) for k in keys)) if keys else set()
        self.unknown_paths = tuple(p for p in self.paths if p.split(".", 1)[0] not in known)
        if self.unknown_paths:
            log.warning("field filter fields: %s name no field of the selected event types (fields are "
                        "relative to the event, e.g. 'process.binary'): they match nothing (%s)",
                        ", ".join(map(repr, self.unknown_paths)),
                        "the events keep none of them" if self.action == "INCLUDE" else "nothing is removed")

    def applies_to(self, key: str) -> bool:
        if not self.event_keys:
            return True
        return (key in self.event_keys) != self.invert_event_set


class FieldFilterSet:
    """All field filters of a request or of the agent config, applied in order per event."""

    def __init__(self, specs: Iterable[dict[str, Any] | FieldFilter] = ()) -> None:
        self.filters = [s if isinstance(s, FieldFilter) else FieldFilter(s) for s in specs]
        # per event key, computed lazily: the (action, paths) steps of the filters that apply,
        # in order; runs of the same action merged (two EXCLUDEs drop the union of their paths).
        self._plans: dict[str, list[tuple[str, PathTree]]] = {}

    def __bool__(self) -> bool:
        return bool(self.filters)

    def _plan(self, key: str) -> list[tuple[str, PathTree]]:
        plan = self._plans.get(key)
        if plan is None:
            plan = []
            for f in self.filters:
                if not f.applies_to(key) or not f.tree:  # no paths: an empty FieldMask, a no-op
                    continue
                if f.action == "EXCLUDE" and plan and plan[-1][0] == "EXCLUDE":
                    plan[-1] = ("EXCLUDE", merge_trees(plan[-1][1], f.tree))
                else:
                    plan.append((f.action, f.tree))
            self._plans[key] = plan
        return plan

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """Trimmed copy of `event` (the event itself when no filter applies)."""
        if not self.filters:
            return event
        key = event_key(event)
        if key is None:
            return event
        body = event[key]
        plan = self._plan(key)
        if not plan:
            return event
        for action, tree in plan:
            body = keep_paths(body, tree) if action == "INCLUDE" else drop_paths(body, tree)
        out = dict(event)
        out[key] = body
        return out
