"""Tetragon ``Filter`` (allow/deny list) semantics over GetEventsResponse dicts.

Inside one filter every populated field must match (AND); the values listed in one
field are alternatives (OR). An event passes a pair of lists when it matches any allow
filter (an empty allow list allows everything) and no deny filter.

Notes on fields whose behaviour depends on what the event carries:

* ``pid_set`` matches the listed processes and their descendants, as Tetragon tracks them:
  an event matches when ``process.pid`` is in the set or is a descendant seen before, or
  when its parent's is; then the process is remembered as a descendant, so its own children
  match too. Only the process and its parent count, never ``ancestors``: a grandchild matches
  when its parent was seen as a descendant before (its exec, or any event of it), as in
  Tetragon. The memory lives as long as the filter (one per GetEvents stream, one for the
  export). As Tetragon's agent, the export's allow/deny lists refuse it without
  ``--enable-pid-set-filter`` (a best-effort filter meant for tests); GetEvents takes it.
* ``ancestor_binary_regex`` checks the entries of ``ancestors`` (the processes beyond the
  parent, as in Tetragon): never the parent; refused by an agent without ``--enable-ancestors``.
* ``namespace`` sees host processes (no pod) as namespace ``""``; ``namespace_regex``,
  ``pod_regex`` and ``container_name_regex`` never match a host process.
* A string field the event leaves out is empty (protojson omits empty strings): the regex
  fields match it as ``""`` whenever the message that holds it (process, parent, pod,
  container) is there, so ``arguments_regex: ["^$"]`` finds processes run without arguments.
* ``health_check`` treats an event as a health check when its process or parent is
  flagged ``pod.container.maybe_exec_probe``.
* Events without a process (throttle, rate_limit_info) only match filters whose
  fields do not need one (``event_set``).
* ``capabilities``: as Tetragon, each set given (permitted, effective, inheritable) names exactly
  one of ``any``/``all``/``exactly``/``none`` with at least one capability, or the filter is
  refused; the sets are ANDed; a process whose sets are all empty (no ``cap`` in the event)
  has none of the capabilities; an event without a process never matches.
* ``cel_expression`` is not supported and is rejected with FilterError.
* As Tetragon's, an agent refuses ``ancestor_binary_regex`` when its events carry no
  ancestors (no ``--enable-ancestors``) and ``capabilities`` when they carry no capabilities
  (``--enable-process-cred=false``): such a filter could never do what it says
  (FilterOptions; files and stdin read by ``vigil getevents`` are not checked).
* Regexes use Python ``re`` instead of RE2 (see vigil.export.regex).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from vigil.core.ancestors import ANCESTOR_TYPES, ancestor_kinds, parse_ancestors
from vigil.export.event_types import (
    FilterError,
    event_key,
    parse_capability,
    parse_event_type,
)
from vigil.export.labels import compile_selector
from vigil.export.regex import compile_regex_list

__all__ = [
    "FilterError",
    "CompiledFilter",
    "FilterList",
    "FilterOptions",
    "compile_filter",
    "normalize_keys",
    "parse_filter_config",
    "passes",
]

Event = dict[str, Any]
# A check receives (event body, whole event) and says whether the field matches.
Check = Callable[[dict[str, Any], Event], bool]

FILTER_FIELDS = (
    "binary_regex", "namespace", "health_check", "pid", "pid_set", "event_set",
    "pod_regex", "arguments_regex", "labels", "policy_names", "capabilities",
    "parent_binary_regex", "cel_expression", "parent_arguments_regex", "container_id",
    "in_init_tree", "ancestor_binary_regex", "container_name_regex", "namespace_regex",
)
_CAP_SETS = ("permitted", "effective", "inheritable")
_CAP_MODES = ("any", "all", "exactly", "none")

_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake_case(key: str) -> str:
    """lowerCamel -> snake_case (protojson accepts both spellings on input)."""
    return _CAMEL_HUMP.sub(r"_\1", key).lower() if key[:1].islower() else key


def normalize_keys(obj: dict[str, Any], known: Iterable[str], what: str) -> dict[str, Any]:
    """Return `obj` with lowerCamel keys turned into snake_case; reject unknown keys."""
    if not isinstance(obj, dict):
        raise FilterError(f"{what} must be a JSON object, got {obj!r}")
    known_set = set(known)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = snake_case(key)
        if name not in known_set:
            raise FilterError(
                f"{what}: unknown field {key!r} (known: {', '.join(sorted(known_set))})"
            )
        out[name] = value
    return out


# the event kinds that can list ancestors, and those an ancestor_binary_regex filter without an
# event_set is for (Tetragon's: each must have its ancestors enabled, or the filter is refused)
_ALL_ANCESTOR_KINDS = ancestor_kinds(frozenset(ANCESTOR_TYPES))
_ANCESTOR_FILTER_KINDS = ("process_exec", "process_exit", "process_kprobe", "process_tracepoint", "process_uprobe",
                          "process_lsm", "process_usdt")


@dataclass(frozen=True)
class FilterOptions:
    """What the agent's events carry, for the fields that need it: a filter on something
    they never carry is refused, as Tetragon refuses it, instead of never matching."""

    # --enable-ancestors: the event kinds whose events list the ancestors (config.ancestor_kinds)
    ancestors: frozenset[str] = _ALL_ANCESTOR_KINDS   # (a bool: all of them, or none)
    process_cred: bool = True    # --enable-process-cred
    pid_set: bool = True         # --enable-pid-set-filter: the export's lists only (GetEvents: always)

    def __post_init__(self) -> None:
        if isinstance(self.ancestors, bool):
            object.__setattr__(self, "ancestors", _ALL_ANCESTOR_KINDS if self.ancestors else frozenset())

    @classmethod
    def of(cls, config: Any, export: bool = False) -> FilterOptions:
        """From an AgentConfig; `export`: for its export allow/deny lists, which take pid_set
        only with --enable-pid-set-filter (as Tetragon's; its GetEvents filters always do)."""
        return cls(ancestors=ancestor_kinds(parse_ancestors(config.enable_ancestors)),
                   process_cred=bool(config.enable_process_cred),
                   pid_set=bool(getattr(config, "enable_pid_set_filter", False)) if export else True)

    def fanout_args(self) -> list[str]:
        """The flags that tell a serving process (vigil.api.fanout) these options."""
        return [*(["--ancestor-kinds", ",".join(sorted(self.ancestors))] if self.ancestors != _ALL_ANCESTOR_KINDS
                  else []),
                *([] if self.process_cred else ["--no-process-cred"])]


ANY_EVENTS = FilterOptions()  # events of any shape (files, stdin): nothing is refused


# -- field accessors -------------------------------------------------------------


def _process(body: dict[str, Any]) -> dict[str, Any] | None:
    return body.get("process")


def _pod(proc: dict[str, Any] | None) -> dict[str, Any] | None:
    return proc.get("pod") if proc else None


def _namespace(proc: dict[str, Any] | None) -> str | None:
    """Pod namespace, "" for host processes, None without a process."""
    if proc is None:
        return None
    pod = proc.get("pod")
    return pod.get("namespace", "") if pod else ""


def _is_health_check(proc: dict[str, Any] | None) -> bool:
    pod = _pod(proc)
    return bool(pod and (pod.get("container") or {}).get("maybe_exec_probe"))


# -- per-field compilers ------------------------------------------------------------


def _list_of(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise FilterError(f"{field}: expected a list, got {value!r}")
    return value


def _string_list(value: Any, field: str) -> list[str]:
    items = _list_of(value, field)
    for item in items:
        if not isinstance(item, str):
            raise FilterError(f"{field}: expected strings, got {item!r}")
    return items


def _uint_list(value: Any, field: str) -> frozenset[int]:
    """uint32 values (pids), as protojson takes them: integers or numeric strings; 1.5 or
    2**32 is an error, never a pid truncated into another one."""
    out = set()
    for item in _list_of(value, field):
        try:
            number = int(item)
        except (TypeError, ValueError, OverflowError):   # (OverflowError: JSON's Infinity)
            raise FilterError(f"{field}: expected integers, got {item!r}") from None
        if isinstance(item, bool) or (isinstance(item, float) and item != number):
            raise FilterError(f"{field}: expected integers, got {item!r}")
        if not 0 <= number <= 0xFFFFFFFF:
            raise FilterError(f"{field}: expected integers from 0 to 4294967295, got {item!r}")
        out.add(number)
    return frozenset(out)


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise FilterError(f"{field}: expected true or false, got {value!r}")
    return value


def _regex_on(field: str, value: Any, getter: Callable[[dict[str, Any]], Any]) -> Check | None:
    pattern = compile_regex_list(_string_list(value, field), field)
    if pattern is None:
        return None
    search = pattern.search

    def check(body: dict[str, Any], event: Event) -> bool:
        text = getter(body)
        return text is not None and search(text) is not None

    return check


def _proc_field(*path: str) -> Callable[[dict[str, Any]], Any]:
    """Getter for the string body[path[0]]...[path[-1]]: None when a message on the way is
    missing, "" when only the string itself is (protojson leaves empty strings out)."""
    *messages, leaf = path

    def get(body: dict[str, Any]) -> Any:
        node: Any = body
        for step in messages:
            node = node.get(step)
            if not isinstance(node, dict):
                return None
        text = node.get(leaf)
        return text if isinstance(text, str) else ""

    return get


def _compile_capabilities(value: Any) -> Check:
    """CapFilter: each set given names exactly one mode with at least one capability, as
    Tetragon requires (a set with none, or with two, is refused, never guessed at); the sets
    given are ANDed; a CapFilter without sets still needs a process."""
    spec = normalize_keys(value, _CAP_SETS, "capabilities")
    tests: list[tuple[str, str, frozenset[str]]] = []
    for set_name, set_spec in spec.items():
        if set_spec is None:  # JSON null: the set is not given
            continue
        field = f"capabilities.{set_name}"
        modes = normalize_keys(set_spec, _CAP_MODES, field)
        given = {mode: _list_of(caps, f"{field}.{mode}") for mode, caps in modes.items()
                 if caps is not None}
        given = {mode: caps for mode, caps in given.items() if caps}  # [] is unset (protobuf)
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            raise FilterError(f"{field}: give exactly one of any, all, exactly, none, with at least "
                              f"one capability{got}")
        [(mode, caps)] = given.items()
        names = frozenset(parse_capability(c, f"{field}.{mode}") for c in caps)
        tests.append((set_name, mode, names))

    def check(body: dict[str, Any], event: Event) -> bool:
        proc = _process(body)
        if proc is None:
            return False
        cap = proc.get("cap") or {}  # (left out when every set is empty)
        for set_name, mode, wanted in tests:
            have = set(cap.get(set_name) or ())
            if mode == "any" and not (have & wanted):
                return False
            if mode == "all" and not wanted <= have:
                return False
            if mode == "exactly" and have != wanted:
                return False
            if mode == "none" and have & wanted:
                return False
        return True

    return check


def _compile_field(field: str, value: Any, options: FilterOptions = ANY_EVENTS) -> Check | None:
    """One populated Filter field -> a check; None when the value is empty (unset)."""
    if field == "binary_regex":
        return _regex_on(field, value, _proc_field("process", "binary"))
    if field == "parent_binary_regex":
        return _regex_on(field, value, _proc_field("parent", "binary"))
    if field == "arguments_regex":
        return _regex_on(field, value, _proc_field("process", "arguments"))
    if field == "parent_arguments_regex":
        return _regex_on(field, value, _proc_field("parent", "arguments"))
    if field == "pod_regex":
        return _regex_on(field, value, _proc_field("process", "pod", "name"))
    if field == "container_id":
        return _regex_on(field, value, _proc_field("process", "docker"))
    if field == "container_name_regex":
        return _regex_on(field, value, _proc_field("process", "pod", "container", "name"))
    if field == "namespace_regex":
        return _regex_on(field, value, _proc_field("process", "pod", "namespace"))
    if field == "ancestor_binary_regex":
        pattern = compile_regex_list(_string_list(value, field), field)
        if pattern is None:
            return None
        if not options.ancestors:
            raise FilterError(f"{field}: events carry no ancestors (the agent runs without "
                              "--enable-ancestors), so this filter could never match")
        # (compile_filter checks each type of the filter's event_set, as Tetragon's)
        search = pattern.search

        def ancestors_match(body: dict[str, Any], event: Event) -> bool:
            ancestors = body.get("ancestors") or ()
            return any(search(p.get("binary") or "") for p in ancestors if isinstance(p, dict))

        return ancestors_match
    if field == "namespace":
        namespaces = frozenset(_string_list(value, field))
        if not namespaces:
            return None
        return lambda body, event: _namespace(_process(body)) in namespaces
    if field == "health_check":
        wanted = _bool(value, field)
        return lambda body, event: wanted == (
            _is_health_check(_process(body)) or _is_health_check(body.get("parent"))
        )
    if field == "pid":
        pids = _uint_list(value, field)
        if not pids:
            return None
        return lambda body, event: (_process(body) or {}).get("pid") in pids
    if field == "pid_set":
        pids = _uint_list(value, field)
        if not pids:
            return None
        if not options.pid_set:
            raise FilterError(f"{field}: pid_set filters track descendants on a best-effort basis and are "
                              "meant for tests and development, not production: the agent takes them in "
                              "its export filters only with --enable-pid-set-filter")

        children: set[int] = set()  # descendants met so far (pids listed or not: `known`)

        def known(pid: Any) -> bool:
            return pid in pids or pid in children

        def in_pid_set(body: dict[str, Any], event: Event) -> bool:
            proc = body.get("process")
            if not isinstance(proc, dict):
                return False
            pid = proc.get("pid")
            if known(pid):
                return True
            parent = body.get("parent")  # (never the ancestors: Tetragon's looks no further)
            if isinstance(parent, dict) and known(parent.get("pid")):
                if isinstance(pid, int):
                    children.add(pid)
                return True
            return False

        return in_pid_set
    if field == "event_set":
        keys = frozenset(parse_event_type(v).lower() for v in _list_of(value, field))
        if not keys:
            return None
        # The body is found by its key, so checking the key is enough.
        return lambda body, event: not keys.isdisjoint(event.keys())
    if field == "labels":
        selectors = [compile_selector(s) for s in _string_list(value, field)]
        if not selectors:
            return None

        def labels_match(body: dict[str, Any], event: Event) -> bool:
            pod = _pod(_process(body))
            if not pod:
                return False  # host processes never match a label selector
            labels = pod.get("pod_labels") or {}
            return any(sel(labels) for sel in selectors)

        return labels_match
    if field == "policy_names":
        names = frozenset(_string_list(value, field))
        if not names:
            return None
        return lambda body, event: body.get("policy_name") in names
    if field == "capabilities":
        if not options.process_cred:
            raise FilterError(f"{field}: events carry no capabilities (the agent runs with "
                              "--enable-process-cred=false), so this filter cannot be applied")
        return _compile_capabilities(value)
    if field == "in_init_tree":
        wanted = _bool(value, field)
        return lambda body, event: bool((_process(body) or {}).get("in_init_tree")) == wanted
    if field == "cel_expression":
        if _string_list(value, field):
            raise FilterError("cel_expression: CEL filters are not supported by vigil")
        return None
    raise FilterError(f"unknown filter field {field!r}")  # pragma: no cover - guarded


class CompiledFilter:
    """One Filter message compiled into a list of checks (all must pass)."""

    __slots__ = ("source", "checks")

    def __init__(self, source: dict[str, Any], checks: list[Check]) -> None:
        self.source = source
        self.checks = checks

    def matches(self, event: Event) -> bool:
        body = _body(event)
        return all(check(body, event) for check in self.checks)

    def __repr__(self) -> str:
        return f"CompiledFilter({self.source!r})"


def _body(event: Event) -> dict[str, Any]:
    key = event_key(event)
    value = event[key] if key is not None else None
    return value if isinstance(value, dict) else {}


def compile_filter(spec: dict[str, Any], options: FilterOptions = ANY_EVENTS) -> CompiledFilter:
    """Compile one Filter JSON object (snake_case or lowerCamel keys) for events of `options`."""
    fields = normalize_keys(spec, FILTER_FIELDS, "filter")
    if fields.get("ancestor_binary_regex") and options.ancestors:
        _check_ancestors_enabled(fields.get("event_set"), options)
    checks = []
    for field, value in fields.items():
        if value is None:
            continue
        check = _compile_field(field, value, options)
        if check is not None:
            checks.append(check)
    return CompiledFilter(fields, checks)


def _check_ancestors_enabled(event_set: Any, options: FilterOptions) -> None:
    """As Tetragon's: an ancestor_binary_regex filter is for the types of its event_set (none:
    every type that can list ancestors), and each must list them (--enable-ancestors names it)."""
    kinds = [parse_event_type(v).lower() for v in _list_of(event_set, "event_set")] if event_set else []
    for kind in kinds or _ANCESTOR_FILTER_KINDS:
        if kind not in options.ancestors:
            enabled = ",".join(sorted(options.ancestors))
            raise FilterError(f"ancestor_binary_regex: {kind} events carry no ancestors (--enable-ancestors "
                              f"lists {kind.removeprefix('process_') if kind != 'process_exit' else 'base'}"
                              f" for them; the agent's event types with ancestors: {enabled}): give an "
                              "event_set of those, or enable it")


class FilterList:
    """A compiled allow or deny list."""

    def __init__(self, specs: Iterable[dict[str, Any] | CompiledFilter] = (),
                 options: FilterOptions = ANY_EVENTS) -> None:
        self.filters = [s if isinstance(s, CompiledFilter) else compile_filter(s, options) for s in specs]

    def __bool__(self) -> bool:
        return bool(self.filters)

    def __len__(self) -> int:
        return len(self.filters)

    def any_match(self, event: Event) -> bool:
        return any(f.matches(event) for f in self.filters)


def passes(event: Event, allow: FilterList, deny: FilterList) -> bool:
    """Allow/deny decision: any allow filter (or none given) and no deny filter."""
    if allow.filters and not allow.any_match(event):
        return False
    return not (deny.filters and deny.any_match(event))


def parse_filter_config(text: str, what: str = "filter") -> list[dict[str, Any]]:
    """Parse Tetragon's config-string form: JSON objects separated by newlines.

    Blank lines are ignored. Objects may also simply follow each other on one line
    or be given as a JSON array, which some deployment tools produce.
    """
    text = (text or "").strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            items = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise FilterError(f"{what}: invalid JSON: {e}") from None
        return [_require_object(o, what) for o in items]
    decoder = _json_stream(text, what)
    return [_require_object(o, what) for o in decoder]


def _require_object(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise FilterError(f"{what}: expected a JSON object, got {obj!r}")
    return obj


def _json_stream(text: str, what: str) -> Iterable[Any]:
    import json

    decoder = json.JSONDecoder()
    pos, end = 0, len(text)
    while pos < end:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            line = text.count("\n", 0, e.pos) + 1
            raise FilterError(f"{what}: invalid JSON on line {line}: {e.msg}") from None
        yield obj
