"""Event kinds of a GetEventsResponse dict and the enums filters refer to.

An event dict carries exactly one "oneof" key (``process_exec``, ``process_kprobe``...)
next to the envelope fields (``node_name``, ``time``...). The helpers here find that
key quickly and translate between EventType names, numbers and JSON keys.
"""
from __future__ import annotations

from typing import Any


class FilterError(ValueError):
    """A filter (allow/deny, field or redaction) could not be parsed or compiled."""


# EventType enum: numbers equal the oneof field numbers of GetEventsResponse.
EVENT_TYPE_NUMBERS: dict[str, int] = {
    "UNDEF": 0,
    "PROCESS_EXEC": 1,
    "PROCESS_EXIT": 5,
    "PROCESS_KPROBE": 9,
    "PROCESS_TRACEPOINT": 10,
    "PROCESS_LOADER": 11,
    "PROCESS_UPROBE": 12,
    "PROCESS_THROTTLE": 27,
    "PROCESS_LSM": 28,
    "PROCESS_USDT": 29,
    "TEST": 40000,
    "RATE_LIMIT_INFO": 40001,
}
EVENT_TYPE_NAMES: dict[int, str] = {n: name for name, n in EVENT_TYPE_NUMBERS.items()}

# JSON key of the oneof body -> EventType name (the key is the lower-cased name).
EVENT_KEY_TO_TYPE: dict[str, str] = {
    name.lower(): name for name in EVENT_TYPE_NUMBERS if name != "UNDEF"
}

def event_key(event: dict[str, Any]) -> str | None:
    """The oneof key of `event` (e.g. ``"process_exec"``), or None if it has none."""
    for key in event:  # the body is normally the first key, so this is O(1) in practice
        if key in EVENT_KEY_TO_TYPE:
            return key
    return None


def event_type_name(event: dict[str, Any]) -> str | None:
    key = event_key(event)
    return EVENT_KEY_TO_TYPE[key] if key else None


def parse_event_type(value: Any, field: str = "event_set") -> str:
    """Accept an EventType name (any case), number, or numeric string; return the name."""
    if isinstance(value, bool):
        raise FilterError(f"{field}: invalid event type {value!r}")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        name = EVENT_TYPE_NAMES.get(int(value))
        if name is None:
            raise FilterError(f"{field}: unknown event type number {value!r}")
        return name
    if isinstance(value, str):
        name = value.strip().upper()
        if name in EVENT_TYPE_NUMBERS:
            return name
    known = ", ".join(n for n in EVENT_TYPE_NUMBERS if n != "UNDEF")
    raise FilterError(f"{field}: unknown event type {value!r} (known: {known})")


# CapabilitiesType enum. Value 1 is spelled without the CAP_ prefix in Tetragon's proto.
CAPABILITY_NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
_CAPABILITY_BY_NAME = {name: name for name in CAPABILITY_NAMES}
_CAPABILITY_BY_NAME["CAP_DAC_OVERRIDE"] = "DAC_OVERRIDE"  # accept the regular spelling too


def parse_capability(value: Any, field: str = "capabilities") -> str:
    """Capability name or number -> the enum name used in event JSON."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(CAPABILITY_NAMES):
            return CAPABILITY_NAMES[value]
    elif isinstance(value, str):
        name = _CAPABILITY_BY_NAME.get(value.strip().upper())
        if name is not None:
            return name
        if value.strip().isdigit():
            return parse_capability(int(value), field)
    raise FilterError(f"{field}: unknown capability {value!r}")
