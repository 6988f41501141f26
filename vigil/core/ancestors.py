"""--enable-ancestors: which event kinds list the ancestors. At the bottom layer because the
agent's configuration (its option) and the export's filters (an ancestor filter needs them on
every kind it selects) both read it."""
from __future__ import annotations

from typing import Any

# --enable-ancestors: Tetragon's names of the event types whose events list the ancestors, and
# the events each names ("base", required by the others, is the process lifecycle's)
ANCESTOR_TYPES: dict[str, tuple[str, ...]] = {
    "base": ("process_exec", "process_exit"),
    "kprobe": ("process_kprobe",),
    "tracepoint": ("process_tracepoint",),
    "loader": ("process_loader",),
    "uprobe": ("process_uprobe",),
    "lsm": ("process_lsm",),
    "usdt": ("process_usdt",),
}
_TRUE = frozenset(("true", "1", "t", "yes", "y", "on"))
_FALSE = frozenset(("false", "0", "f", "no", "n", "off", ""))


def parse_ancestors(value: Any) -> frozenset[str]:
    """--enable-ancestors as Tetragon takes it: a comma-separated list of event types of
    ANCESTOR_TYPES (spaces around each ignored, empty items skipped), `base` among them
    whenever any other is (Tetragon ignores the others without it: refused here, as a
    setting that silently does nothing). Vigil's earlier boolean form stays accepted: true
    (1, yes, on, and the flag alone) is `base`, false (or empty) none. Anything else is a
    ValueError saying why."""
    if isinstance(value, bool):
        return frozenset(("base",)) if value else frozenset()
    if isinstance(value, (frozenset, set, tuple, list)):
        value = ",".join(value)
    if not isinstance(value, str):
        raise ValueError(f"--enable-ancestors must be a list of event types (got {value!r})")
    low = value.strip().lower()
    if low in _TRUE:
        return frozenset(("base",))
    if low in _FALSE:
        return frozenset()
    names = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in names if x not in ANCESTOR_TYPES]
    if bad:
        raise ValueError(f"--enable-ancestors: unknown event type {bad[0]!r} in {value!r} "
                         f"(a comma-separated list of {', '.join(ANCESTOR_TYPES)}; or true/false)")
    if "base" not in names:
        raise ValueError(f"--enable-ancestors: {value!r} lacks base, which the other event types need "
                         f"(e.g. base,{names[0]})")
    return frozenset(names)


def ancestor_kinds(types: frozenset[str]) -> frozenset[str]:
    """The event kinds (process_exec, process_kprobe, ...) whose events list the ancestors."""
    return frozenset(k for t in types for k in ANCESTOR_TYPES.get(t, ()))
