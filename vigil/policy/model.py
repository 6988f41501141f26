"""Typed model of TracingPolicy / TracingPolicyNamespaced (cilium.io/v1alpha1).

Every node is a frozen dataclass that remembers where it came from: `loc` is the node itself
(file, line, column, field path such as `spec.kprobes[0].selectors[1]`) and `locs` maps each
field that was written in the YAML (and each list element, e.g. `values[2]`) to its location.
`node.at("operator")` gives the location of a field, or of the node when the field is absent,
so diagnostics always point at a real line.

The loader drives conversion from the field metadata declared with `y()`: the YAML key, whether
the key is required, and an integer `kind` for range checks. Defaults are the CRD defaults.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar, dataclass_transform

from .errors import Loc

NOWHERE = Loc("<none>", 0, 0, "")


def y(key: str | None = None, *, default: Any = MISSING, required: bool = False,
      kind: str | None = None, factory: Any = MISSING) -> Any:
    """Declare a YAML-backed field. kind: uint32 | int32 | uint64 | opaque."""
    md = {"yaml": key, "required": required, "kind": kind}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


@dataclass(frozen=True, kw_only=True)
class Node:
    loc: Loc = field(default=NOWHERE, compare=False, repr=False)
    locs: Mapping[str, Loc] = field(default_factory=dict, compare=False, repr=False)

    def at(self, key: str) -> Loc:
        return self.locs.get(key) or self.loc.child(key)

    def has(self, key: str) -> bool:
        """True when the field was written in the source (defaults do not count)."""
        return key in self.locs


_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(field, y))
def node(cls: type[_T]) -> type[_T]:
    """The decorator of every model class: a frozen, keyword-only dataclass."""
    return dataclass(frozen=True, kw_only=True)(cls)


# ---- Kubernetes bits --------------------------------------------------------------------------

@node
class LabelSelectorRequirement(Node):
    key: str = y(required=True)
    operator: str = y(required=True)  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = y(default=())


@node
class LabelSelector(Node):
    match_labels: Mapping[str, str] = y("matchLabels", factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = y("matchExpressions", default=())

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


@node
class ObjectMeta(Node):
    name: str = y(required=True)
    namespace: str | None = y(default=None)
    labels: Mapping[str, str] = y(factory=dict)
    annotations: Mapping[str, str] = y(factory=dict)
    # Server-populated fields (present in `kubectl get -o yaml` output); accepted, not used.
    generate_name: Any = y("generateName", default=None, kind="opaque")
    uid: Any = y(default=None, kind="opaque")
    resource_version: Any = y("resourceVersion", default=None, kind="opaque")
    generation: Any = y(default=None, kind="opaque")
    creation_timestamp: Any = y("creationTimestamp", default=None, kind="opaque")
    managed_fields: Any = y("managedFields", default=None, kind="opaque")
    finalizers: Any = y(default=None, kind="opaque")
    owner_references: Any = y("ownerReferences", default=None, kind="opaque")


# ---- Arguments --------------------------------------------------------------------------------

@node
class KProbeArg(Node):
    index: int = y(required=True, kind="uint32")
    type: str = y(default="auto")
    resolve: str = y(default="")
    size_arg_index: int = y("sizeArgIndex", default=0, kind="uint32")  # 1-based, 0 = none
    return_copy: bool = y("returnCopy", default=False)
    max_data: bool = y("maxData", default=False)
    label: str = y(default="")
    source: str = y(default="")  # data entries: current_task | pt_regs
    btf_type: str = y("btfType", default="")
    btf_type_module: str = y("btfTypeModule", default="")


# ---- Selectors --------------------------------------------------------------------------------

@node
class PIDSelector(Node):
    operator: str = y(required=True)
    values: tuple[int, ...] = y(default=(), kind="uint32")
    is_namespace_pid: bool = y("isNamespacePID", default=False)
    follow_forks: bool = y("followForks", default=False)


@node
class ArgSelector(Node):
    """matchArgs / matchData / matchReturnArgs entry. `args` (positions) beats `index`."""

    index: int = y(default=0, kind="uint32")
    args: tuple[int, ...] = y(default=(), kind="uint32")
    operator: str = y(required=True)
    values: tuple[str, ...] = y(default=())


@node
class BinarySelector(Node):
    operator: str = y(required=True)
    values: tuple[str, ...] = y(default=())
    follow_children: bool = y("followChildren", default=False)


@node
class NamespaceSelector(Node):
    namespace: str = y(required=True)
    operator: str = y(required=True)
    values: tuple[str, ...] = y(default=())


@node
class NamespaceChangesSelector(Node):
    operator: str = y(required=True)
    values: tuple[str, ...] = y(default=())


@node
class CapabilitiesSelector(Node):
    type: str = y(default="Effective")
    operator: str = y(required=True)
    is_namespace_capability: bool = y("isNamespaceCapability", default=False)
    values: tuple[str, ...] = y(default=())


@node
class ActionSelector(Node):
    action: str = y(required=True)
    arg_fd: int = y("argFd", default=0, kind="uint32")
    arg_name: int = y("argName", default=0, kind="uint32")
    arg_url: str = y("argUrl", default="")
    arg_fqdn: str = y("argFqdn", default="")
    arg_error: int = y("argError", default=0, kind="int32")
    arg_sig: int = y("argSig", default=0, kind="uint32")
    arg_sock: int = y("argSock", default=0, kind="uint32")
    rate_limit: str = y("rateLimit", default="")
    rate_limit_scope: str = y("rateLimitScope", default="")
    kernel_stack_trace: bool = y("kernelStackTrace", default=False)
    user_stack_trace: bool = y("userStackTrace", default=False)
    ima_hash: bool = y("imaHash", default=False)
    arg_index: int = y("argIndex", default=0, kind="uint32")
    arg_value: int = y("argValue", default=0, kind="uint32")
    arg_regs: tuple[str, ...] = y("argRegs", default=())
    arg_new_symbol: str = y("argNewSymbol", default="")
    arg_new_addr: int = y("argNewAddr", default=0, kind="uint64")
    arg_new_offset: int = y("argNewOffset", default=0, kind="uint64")

    @property
    def rate_limit_seconds(self) -> int:
        """rateLimit as seconds (0 = none); valid once the policy has loaded."""
        from .values import parse_duration

        return parse_duration(self.rate_limit) if self.rate_limit else 0


@node
class WorkloadSelector(Node):
    pod_selector: LabelSelector | None = y("podSelector", default=None)
    container_selector: LabelSelector | None = y("containerSelector", default=None)
    host_selector: LabelSelector | None = y("hostSelector", default=None)


@node
class Selector(Node):
    """KProbeSelector. After loading, fields taken from `macros` are already merged in (they
    keep their `spec.selectorsMacros.NAME...` locations)."""

    label: str = y(default="")
    match_pids: tuple[PIDSelector, ...] = y("matchPIDs", default=())
    match_args: tuple[ArgSelector, ...] = y("matchArgs", default=())
    match_data: tuple[ArgSelector, ...] = y("matchData", default=())
    match_return_args: tuple[ArgSelector, ...] = y("matchReturnArgs", default=())
    match_binaries: tuple[BinarySelector, ...] = y("matchBinaries", default=())
    match_parent_binaries: tuple[BinarySelector, ...] = y("matchParentBinaries", default=())
    match_namespaces: tuple[NamespaceSelector, ...] = y("matchNamespaces", default=())
    match_namespace_changes: tuple[NamespaceChangesSelector, ...] = y(
        "matchNamespaceChanges", default=())
    match_capabilities: tuple[CapabilitiesSelector, ...] = y("matchCapabilities", default=())
    match_capability_changes: tuple[CapabilitiesSelector, ...] = y(
        "matchCapabilityChanges", default=())
    match_workloads: tuple[WorkloadSelector, ...] = y("matchWorkloads", default=())
    match_actions: tuple[ActionSelector, ...] = y("matchActions", default=())
    match_return_actions: tuple[ActionSelector, ...] = y("matchReturnActions", default=())
    macros: tuple[str, ...] = y(default=())


# ---- Hooks ------------------------------------------------------------------------------------

@node
class KProbeIgnore(Node):
    call_not_found: bool = y("callNotFound", default=False)


@node
class UProbeIgnore(Node):
    digest_verification_failure: bool = y("digestVerificationFailure", default=False)


@node
class KProbeSpec(Node):
    """kprobes[] and fentries[] entries."""

    call: str = y(required=True)
    syscall: bool = y(default=True)  # CRD default; adds the arch prefix
    return_: bool = y("return", default=False)
    message: str = y(default="")
    args: tuple[KProbeArg, ...] = y(default=())
    data: tuple[KProbeArg, ...] = y(default=())
    return_arg: KProbeArg | None = y("returnArg", default=None)
    return_arg_action: str = y("returnArgAction", default="")
    selectors: tuple[Selector, ...] = y(default=())
    tags: tuple[str, ...] = y(default=())
    ignore: KProbeIgnore | None = y(default=None)


@node
class TracepointSpec(Node):
    subsystem: str = y(required=True)
    event: str = y(required=True)
    raw: bool = y(default=False)
    message: str = y(default="")
    args: tuple[KProbeArg, ...] = y(default=())
    selectors: tuple[Selector, ...] = y(default=())
    tags: tuple[str, ...] = y(default=())


@node
class UProbeSpec(Node):
    path: str = y(required=True)
    btf_path: str = y("btfPath", default="")
    symbols: tuple[str, ...] = y(default=())
    offsets: tuple[int, ...] = y(default=(), kind="uint64")
    addrs: tuple[int, ...] = y(default=(), kind="uint64")
    ref_ctr_offsets: tuple[int, ...] = y("refCtrOffsets", default=(), kind="uint64")
    return_: bool = y("return", default=False)
    message: str = y(default="")
    args: tuple[KProbeArg, ...] = y(default=())
    data: tuple[KProbeArg, ...] = y(default=())
    return_arg: KProbeArg | None = y("returnArg", default=None)
    selectors: tuple[Selector, ...] = y(default=())
    tags: tuple[str, ...] = y(default=())
    binary_digests: tuple[str, ...] = y("binaryDigests", default=())
    ignore: UProbeIgnore | None = y(default=None)


@node
class UsdtSpec(Node):
    path: str = y(required=True)
    btf_path: str = y("btfPath", default="")
    provider: str = y(required=True)
    name: str = y(required=True)
    message: str = y(default="")
    args: tuple[KProbeArg, ...] = y(default=())
    selectors: tuple[Selector, ...] = y(default=())
    tags: tuple[str, ...] = y(default=())


@node
class LsmHookSpec(Node):
    hook: str = y(required=True)  # without the security_ prefix
    message: str = y(default="")
    args: tuple[KProbeArg, ...] = y(default=())
    selectors: tuple[Selector, ...] = y(default=())
    tags: tuple[str, ...] = y(default=())


Hook = KProbeSpec | TracepointSpec | UProbeSpec | UsdtSpec | LsmHookSpec


# ---- Spec-level -------------------------------------------------------------------------------

@node
class ListSpec(Node):
    name: str = y(required=True)
    type: str = y(required=True)  # syscalls | generated_syscalls | generated_ftrace
    values: tuple[str, ...] = y(default=())
    pattern: str = y(default="")
    validated: bool = y(default=False)


@node
class OptionSpec(Node):
    name: str = y(required=True)
    value: str = y(default="")


@node
class EnforcerSpec(Node):
    calls: tuple[str, ...] = y(required=True)


@node
class TracingPolicySpec(Node):
    kprobes: tuple[KProbeSpec, ...] = y(default=())
    tracepoints: tuple[TracepointSpec, ...] = y(default=())
    uprobes: tuple[UProbeSpec, ...] = y(default=())
    lsmhooks: tuple[LsmHookSpec, ...] = y(default=())
    usdts: tuple[UsdtSpec, ...] = y(default=())
    fentries: tuple[KProbeSpec, ...] = y(default=())
    lists: tuple[ListSpec, ...] = y(default=())
    options: tuple[OptionSpec, ...] = y(default=())
    enforcers: tuple[EnforcerSpec, ...] = y(default=())
    pod_selector: LabelSelector | None = y("podSelector", default=None)
    container_selector: LabelSelector | None = y("containerSelector", default=None)
    host_selector: LabelSelector | None = y("hostSelector", default=None)
    node_selector: LabelSelector | None = y("nodeSelector", default=None)
    selectors_macros: Mapping[str, Selector] = y("selectorsMacros", factory=dict)
    loader: bool = y(default=False)

    def hooks(self) -> list[tuple[str, Hook]]:
        """(section, hook) for every hook, in file order per section."""
        out: list[tuple[str, Hook]] = []
        for section in ("kprobes", "fentries", "tracepoints", "uprobes", "lsmhooks", "usdts"):
            out.extend((section, h) for h in getattr(self, section))
        return out

    def option(self, name: str) -> str | None:
        for o in self.options:
            if o.name == name:
                return o.value
        return None

    def list_named(self, name: str) -> ListSpec | None:
        return next((ls for ls in self.lists if ls.name == name), None)


@node
class Policy(Node):
    """One TracingPolicy or TracingPolicyNamespaced document."""

    api_version: str = y("apiVersion", required=True)
    kind: str = y(required=True)
    metadata: ObjectMeta = y(required=True)
    spec: TracingPolicySpec = y(required=True)
    status: Any = y(default=None, kind="opaque")  # written by the API server; ignored

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespaced(self) -> bool:
        return self.kind == "TracingPolicyNamespaced"

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace if self.namespaced else None

    @property
    def mode(self) -> str:
        """enforce | monitor, from the `policy-mode` option (enforce when absent)."""
        return self.spec.option("policy-mode") or "enforce"
