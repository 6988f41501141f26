"""Typed events: what the process and policy stages produce and every sink consumes.

A `ProcessMsg` is Tetragon's `Process` message of one exec (or clone), built once and
never changed: every event of that process, and of its children (as `parent`), refers to
the same object. Encodings are made at the edges (vigil/export for JSON and dict views,
vigil/api for protobuf) and cached on the message and on the event (`enc_*` slots, owned
by the encoder that fills them), so a process is encoded once per format however many
events mention it, and an event once however many sinks send it.

Sub-messages many processes share (capabilities, namespaces, credentials) are plain
dicts, interned by the process stage: equal values are the same object.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from vigil.core import native


class ProcessMsg:
    """tetragon.Process. Empty strings / None mean absent (not sent, as protojson omits
    them); pid, uid, auid, tid and in_init_tree are wrapper fields, sent even when 0 / false."""

    __slots__ = (
        "exec_id", "pid", "uid", "cwd", "binary", "arguments", "flags", "start_time", "auid", "pod",
        "docker", "parent_exec_id", "cap", "ns", "tid", "process_credentials", "binary_properties",
        "in_init_tree", "enc_json", "enc_pb", "enc_dict",
    )

    def __init__(self, exec_id: str, pid: int, uid: int | None = None, cwd: str = "", binary: str = "",
                 arguments: str = "", flags: str = "", start_time: str = "", auid: int | None = None,
                 pod: Pod | None = None, docker: str = "", parent_exec_id: str = "",
                 cap: dict[str, Any] | None = None, ns: dict[str, Any] | None = None, tid: int | None = None,
                 process_credentials: dict[str, Any] | None = None,
                 binary_properties: dict[str, Any] | None = None, in_init_tree: bool | None = None) -> None:
        self.exec_id = exec_id
        self.pid = pid
        self.uid = uid
        self.cwd = cwd
        self.binary = binary
        self.arguments = arguments
        self.flags = flags
        self.start_time = start_time
        self.auid = auid
        self.pod = pod
        self.docker = docker
        self.parent_exec_id = parent_exec_id
        self.cap = cap
        self.ns = ns
        self.tid = tid
        self.process_credentials = process_credentials
        self.binary_properties = binary_properties
        # BoolValue (field 20): a cached process's is always set (true: it descends from
        # pid 1 of a pid namespace, vigil.process.build); None only for one the cache missed
        self.in_init_tree = in_init_tree
        self.enc_json: bytes | None = None   # vigil.export.codec
        self.enc_pb: bytes | None = None     # vigil.api.wire
        self.enc_dict: dict[str, Any] | None = None  # vigil.export.dicts

    def derive(self, **changes: Any) -> ProcessMsg:
        """A copy with some fields changed (a forked child's message from its parent's)."""
        p = ProcessMsg.__new__(ProcessMsg)
        for name in ProcessMsg.__slots__[:-3]:
            setattr(p, name, changes[name] if name in changes else getattr(self, name))
        p.enc_json = p.enc_pb = p.enc_dict = None
        return p

    def __repr__(self) -> str:
        return f"<ProcessMsg pid={self.pid} {self.binary!r}>"


class Event:
    """One exported event. `kind` is its field in GetEventsResponse (process_exec, ...)."""

    __slots__ = ("time", "node_name", "enc_json", "enc_pb", "enc_dict")
    kind = ""

    def __init__(self, time: str, node_name: str) -> None:
        self.time = time
        self.node_name = node_name
        self.enc_json: bytes | None = None
        self.enc_pb: bytes | None = None
        self.enc_dict: dict[str, Any] | None = None


class ProcessExec(Event):
    __slots__ = ("process", "parent", "ancestors")
    kind = "process_exec"

    def __init__(self, process: ProcessMsg, parent: ProcessMsg | None, ancestors: tuple[ProcessMsg, ...],
                 time: str, node_name: str) -> None:
        super().__init__(time, node_name)
        self.process = process
        self.parent = parent
        self.ancestors = ancestors


class ProcessExit(Event):
    __slots__ = ("process", "parent", "ancestors", "signal", "status")
    kind = "process_exit"

    def __init__(self, process: ProcessMsg, parent: ProcessMsg | None, ancestors: tuple[ProcessMsg, ...],
                 signal: str, status: int, time: str, node_name: str) -> None:
        super().__init__(time, node_name)
        self.process = process
        self.parent = parent
        self.ancestors = ancestors
        self.signal = signal
        self.status = status


class PolicyEvent(Event):
    """process_kprobe / process_tracepoint / process_uprobe / process_lsm: the process part
    typed, the hook-specific part (`body`: function_name, args, action, ... in field order)
    as the generic hook rendered it; `ancestors`: the processes beyond the parent, nearest
    first, when --enable-ancestors names the event's type (else empty). Encoders place them
    at Tetragon's field (POLICY_ANCESTORS_BEFORE)."""

    __slots__ = ("kind", "process", "parent", "body", "ancestors")

    def __init__(self, kind: str, process: ProcessMsg, parent: ProcessMsg | None, body: dict[str, Any],
                 time: str, node_name: str, ancestors: tuple[ProcessMsg, ...] = ()) -> None:
        super().__init__(time, node_name)
        self.kind = kind
        self.process = process
        self.parent = parent
        self.body = body
        self.ancestors = ancestors


# a policy event's ancestors go before the first of these body fields (Tetragon's field numbers:
# process_kprobe's ancestors 13 before data 14; process_uprobe's 9 before offset 10, ...;
# process_tracepoint's, 11, last)
POLICY_ANCESTORS_BEFORE: dict[str, frozenset[str]] = {
    "process_kprobe": frozenset(("data",)),
    "process_tracepoint": frozenset(),
    "process_uprobe": frozenset(("offset", "ref_ctr_offset", "action", "data")),
    "process_usdt": frozenset(("action", "flags")),
    "process_lsm": frozenset(("ima_hash",)),
}


def split_policy_body(kind: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A policy event's body as (the fields before its ancestors, those after)."""
    after = POLICY_ANCESTORS_BEFORE.get(kind, frozenset())
    keys = list(body)
    i = next((i for i, k in enumerate(keys) if k in after), len(keys))
    return {k: body[k] for k in keys[:i]}, {k: body[k] for k in keys[i:]}


class DictEvent(Event):
    """An event that exists only as a dict in GetEventsResponse's shape: a rate_limit_info,
    or an event a filter rewrote (redacted, trimmed)."""

    __slots__ = ("kind", "data")

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(str(data.get("time", "")), str(data.get("node_name", "")))
        self.data = data
        self.kind = next((k for k in data if k not in ("node_name", "time")), "")
        self.enc_dict = data


class PodShared(dict):  # type: ignore[type-arg]
    """The part of a pod object every process of one container shares: a plain dict of
    Tetragon's pod fields with the container's own part under "container", made once per
    container and never changed. Its encodings are cached on it (`enc_*`, owned by the
    encoder that fills them: vigil/export for JSON, vigil/api for protobuf). The pod resolver
    (vigil/k8s/enrich.py) keeps on it what the exec path needs besides it, so its table holds
    this object alone: the container's exec probes' argument strings (`probes`, None: none),
    the longest of them (`probes_longest`: longer arguments are no probe, without hashing)
    and the container it was made from (`container_info`)."""

    __slots__ = ("probes", "probes_longest", "enc_json", "enc_pb", "container_info")

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.probes: frozenset[str] | None = None
        self.probes_longest = 0
        self.enc_json: tuple[bytes, bytes] | None = None
        self.enc_pb: tuple[bytes, bytes, bytes, bytes] | None = None
        self.container_info: Any = None


class Pod(Mapping[str, Any]):
    """Tetragon's `pod` object of one process, read-only. Most of it is its container's
    (`shared`: one dict per container, never changed, with the container's own part under
    "container"); the process adds its pid inside the container and the exec-probe guess.
    Encoders encode `shared` once per container and add the rest; the compiled exec path
    makes one of these per process in a container, so nothing else is built per process
    until a consumer reads it as a mapping (`as_dict()`, made on first use)."""

    __slots__ = ("shared", "pid", "probe", "_dict")

    def __init__(self, shared: PodShared | dict[str, Any], pid: int, probe: bool) -> None:
        self.shared = shared
        self.pid = pid
        self.probe = probe
        self._dict: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The plain dict of its fields, in Tetragon's order."""
        d = self._dict
        if d is None:
            d = dict(self.shared)
            cont = d["container"] = dict(d["container"])
            sc = cont.pop("security_context", None)   # field 14: after pid (5) and maybe_exec_probe (13)
            if self.pid:
                cont["pid"] = self.pid
            if self.probe:
                cont["maybe_exec_probe"] = True
            if sc is not None:
                cont["security_context"] = sc
            self._dict = d
        return d

    def get(self, key: str, default: Any = None) -> Any:
        if key != "container":  # the shared part answers without building the dict
            return self.shared.get(key, default)
        return self.as_dict()["container"]

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.shared)

    def __len__(self) -> int:
        return len(self.shared)

    def __contains__(self, key: object) -> bool:
        return key in self.shared

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Pod):
            other = other.as_dict()
        return self.as_dict() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Pod({self.as_dict()!r})"


# A policy event's process that the cache lacks, as Tetragon's getProcessParent makes it: the
# pid and the start time of the kernel's key, flags "unknown" when the kernel had no entry for
# it either; no exec_id, tid or parent. (An exit's is built in
# vigil.process.build.EventBuilder.on_exit, as Tetragon's: pid and start_time.)
def missing_process(pid: int, start_time: str = "", flags: str = "") -> ProcessMsg:
    return ProcessMsg("", pid, flags=flags, start_time=start_time)


if native.fast is not None:  # the compiled encoders read these classes' slots directly
    native.fast.configure_events(ProcessMsg, ProcessExec, ProcessExit, PolicyEvent, Pod, PodShared)
