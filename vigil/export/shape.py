"""Whether an event dict read from JSON has the shape of Tetragon's export, before filters,
encoders or the dry run read it: each field they use has its JSON type. A line of another shape
is reported and skipped by the readers (`vigil getevents` from a file or stdin, `vigil policy
dry-run`), never a traceback."""
from __future__ import annotations

from typing import Any

from vigil.export.event_types import event_key

_NAMES = {str: "a string", int: "a number", bool: "a boolean", dict: "an object", list: "a list"}
_ENVELOPE: dict[str, type] = {"node_name": str, "time": str, "cluster_name": str, "aggregation_info": dict}
_PROCESS: dict[str, type] = {
    "exec_id": str, "pid": int, "uid": int, "cwd": str, "binary": str, "arguments": str, "flags": str,
    "start_time": str, "auid": int, "docker": str, "parent_exec_id": str, "tid": int, "refcnt": int,
    "pod": dict, "cap": dict, "ns": dict, "process_credentials": dict, "binary_properties": dict,
    "user": dict, "in_init_tree": bool,
}
_BODY: dict[str, type] = {
    "function_name": str, "policy_name": str, "action": str, "subsys": str, "event": str, "path": str,
    "symbol": str, "args": list, "return": dict, "tags": list, "message": str, "kernel_stack_trace": list,
    "user_stack_trace": list, "ancestors": list, "status": int, "signal": str, "time": str,
}


def _typed(d: dict[str, Any], types: dict[str, type], where: str) -> str | None:
    for k, t in types.items():
        v = d.get(k)
        if v is None or (isinstance(v, t) and not (t is int and isinstance(v, bool))):
            continue
        return f"{where}{k} is {_NAMES.get(type(v), type(v).__name__)}, not {_NAMES[t]}"
    return None


def shape_error(event: dict[str, Any]) -> str | None:
    """Why `event` is not an event of the export's shape (None: it is, as far as readers look)."""
    err = _typed(event, _ENVELOPE, "")
    key = event_key(event)
    if err or key is None:
        return err
    body = event[key]
    if body is None:
        return None
    if not isinstance(body, dict):
        return f"{key} is {_NAMES.get(type(body), type(body).__name__)}, not an object"
    if err := _typed(body, _BODY, f"{key}."):
        return err
    for pk in ("process", "parent"):
        p = body.get(pk)
        if p is None:
            continue
        if not isinstance(p, dict):
            return f"{key}.{pk} is {_NAMES.get(type(p), type(p).__name__)}, not an object"
        if err := _typed(p, _PROCESS, f"{key}.{pk}."):
            return err
    for lk in ("args", "ancestors"):
        for i, item in enumerate(body.get(lk) or ()):
            if not isinstance(item, dict):
                return f"{key}.{lk}[{i}] is {_NAMES.get(type(item), type(item).__name__)}, not an object"
            if lk == "ancestors" and (err := _typed(item, _PROCESS, f"{key}.{lk}[{i}].")):
                return err
    return None
