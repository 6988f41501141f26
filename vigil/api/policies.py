"""Agent policy/sensor dicts -> tetragon.sensors protobuf messages, and enum names.

The agent reports policies as TracingPolicyStatus-shaped dicts (see
vigil.core.agent_api.AgentAPI.list_policies). It may use short names ("enabled",
"enforce") or the proto enum names; both are accepted here.
"""
from __future__ import annotations

from typing import Any

from vigil.api import pbdict
from vigil.api.pb import sensors_pb2

_STATE = sensors_pb2.TracingPolicyState
_MODE = sensors_pb2.TracingPolicyMode
_HOOK = sensors_pb2.HookState


def _enum(enum: Any, prefix: str, value: Any, default: int = 0) -> int:
    """int, "PREFIX_NAME" or "name" -> enum number (unknown -> default)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value in enum.values() else default
    if not isinstance(value, str) or not value:
        return default
    name = value.strip().upper().replace("-", "_").replace(" ", "_")
    if not name.startswith(prefix):
        name = prefix + name
    return enum.Value(name) if name in enum.keys() else default  # noqa: SIM118 - a protobuf enum wrapper, not a dict


def state_number(value: Any) -> int:
    return _enum(_STATE, "TP_STATE_", value)


def mode_number(value: Any) -> int:
    return _enum(_MODE, "TP_MODE_", value)


def mode_name(number: int) -> str:
    """TP_MODE_ENFORCE -> "enforce" (the agent API's spelling)."""
    return _MODE.Name(number).removeprefix("TP_MODE_").lower()


def _hook_statuses(hooks: Any) -> list[Any]:
    """The agent's placement report -> HookStatus messages.

    Accepted shapes: {part: hook} or a list of {"section"|"part", "hook"|"description",
    "index", "state"} dicts (or plain strings). `hook_description` carries where the
    part runs, e.g. "kprobe:security_file_open" or "tracepoint:syscalls/sys_enter_openat".
    """
    if not hooks:
        return []
    items = hooks.items() if isinstance(hooks, dict) else enumerate(hooks)
    out = []
    for i, (key, h) in enumerate(items):
        hs = sensors_pb2.HookStatus(hook_idx=i, state=_HOOK.STATUS_LOADED)
        if isinstance(h, dict):
            hs.section = str(h.get("section") or h.get("part") or h.get("name")
                             or ("" if isinstance(key, int) else key))
            hs.hook_description = str(h.get("hook") or h.get("hook_description") or h.get("description")
                                      or h.get("attach") or "")
            idx = h.get("index", h.get("hook_idx", i))
            hs.hook_idx = int(idx) if isinstance(idx, int) else i
            hs.state = _enum(_HOOK, "STATUS_", h.get("state"), _HOOK.STATUS_LOADED)
        else:
            hs.section = "" if isinstance(key, int) else str(key)
            hs.hook_description = str(h)
        out.append(hs)
    return out


def policy_status(d: dict[str, Any]) -> Any:
    st = sensors_pb2.TracingPolicyStatus(
        id=int(d.get("id") or 0),
        name=str(d.get("name") or ""),
        namespace=str(d.get("namespace") or ""),
        info=str(d.get("info") or ""),
        sensors=[str(s) for s in d.get("sensors") or ()],
        filter_id=int(d.get("filter_id") or 0),
        error=str(d.get("error") or ""),
        state=state_number(d.get("state")),
        kernel_memory_bytes=int(d.get("kernel_memory_bytes") or 0),
        mode=mode_number(d.get("mode")),
        domain=str(d.get("domain") or ""),
    )
    st.enabled = st.state == _STATE.TP_STATE_ENABLED  # deprecated field old clients still read
    stats = d.get("stats")
    if stats:
        if "action_counters" in stats or "selector_action_counters" in stats:
            pbdict.parse_into(stats, st.stats, ignore_unknown=True)
        else:  # a bare counters dict
            pbdict.parse_into(stats, st.stats.action_counters, ignore_unknown=True)
    st.hook_statuses.extend(_hook_statuses(d.get("hooks") or d.get("hook_statuses")))
    return st


def sensor_status(d: dict[str, Any]) -> Any:
    return sensors_pb2.SensorStatus(
        name=str(d.get("name") or ""), enabled=bool(d.get("enabled")),
        collection=str(d.get("collection") or ""))
