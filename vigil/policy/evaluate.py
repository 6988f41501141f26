"""The reference selector evaluator: what one hook of a TracingPolicy decides for one call.

Pure Python, no I/O. It is the one statement of selector semantics outside the kernel:
`vigil policy dry-run` replays recorded events through it, and the real-kernel tests use it
as the oracle (random selectors and inputs: the kernel and this module must agree). The
native permission helper's reference (`vigil.enforce.permtable`) uses its string operators.

Semantics (as bpf/generic/match.bpf.h and act.bpf.h implement them):
* selectors are tried in order and the first one whose filters all hold decides; a hook with
  no selectors posts every call; a hook with selectors none of which holds posts nothing;
* within a selector every filter must hold (matchArgs entries, matchPIDs, matchBinaries,
  matchNamespaces, matchCapabilities, the *Changes filters, then matchReturnArgs at return);
* the deciding selector's actions run in order: an event is sent unless a NoPost is among
  them (a Post, before or after it, does not undo it), Sigkill / Signal / Override enforce
  (reported, not done, in monitor mode), the record's action is the last non-Post action
  (the event reports the list's last action, Post included, as Tetragon's:
  vigil.sensors.generic_events.reported_action).

Facts the caller does not have are `None`; a filter that needs one is *undecidable* and the
decision says why, instead of guessing. `Truth` is True, False or an `Unknown` reason.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from vigil.k8s.selectors import container_labels, matches, pod_labels

from . import enums
from .model import ActionSelector, ArgSelector, KProbeArg, LabelSelector, Selector
from .syscall_place import list_syscall_numbers
from .validate_args import compares_unsigned
from .values import (
    parse_capability,
    parse_cidr,
    parse_family,
    parse_int,
    parse_int_or_range,
    parse_port,
    parse_protocol,
    parse_tcp_state,
)

STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
INT_OPS = ("Equal", "NotEqual", "GT", "LT", "GreaterThan", "LessThan", "Mask", "InRange", "NotInRange",
           "InMap", "NotInMap")
SOCK_OPS = ("SPort", "NotSPort", "SPortPriv", "NotSportPriv", "NotSPortPriv", "DPort", "NotDPort", "DPortPriv",
            "NotDPortPriv", "SAddr", "NotSAddr", "DAddr", "NotDAddr", "Protocol", "Family", "State")
ENFORCING = ("Sigkill", "Signal", "Override")
STR_KEY = 256        # the kernel compares Equal strings up to 255 bytes (longer never equal)
LPM_STR = 248        # prefixes/postfixes are looked up in the first/last 248 bytes
MAX_FOLLOW_DEPTH = 8  # matchPIDs followForks walks this many ancestors
NS_KEYS = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user")
NS_KEY = dict(zip(enums.NAMESPACES, NS_KEYS))
CAP_KEYS = {"Effective": "effective", "Inheritable": "inheritable", "Permitted": "permitted"}


class Unknown(str):
    """A filter that cannot be decided from the facts at hand; the text says what is missing."""


Truth = bool | Unknown


@dataclass(frozen=True)
class Sock:
    """A socket or socket address as the selectors see it. A sockaddr is the address being
    connected/bound to: its address and port are both the "source" and "destination" ones
    (Tetragon's SAddr/SPort on sockaddr arguments)."""

    family: int
    saddr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    sport: int = 0
    dport: int = 0
    protocol: int = 0
    state: int = 0

    @classmethod
    def sockaddr(cls, family: int, addr: str | None, port: int) -> Sock:
        ip = ipaddress.ip_address(addr) if addr else None
        return cls(family, ip, ip, port, port)


Value = str | bytes | int | Sock


@dataclass(frozen=True)
class Process:
    """What the selectors read about the calling process. None: not known."""

    binary: str | None = None
    pid: int | None = None
    nspid: int | None = None
    ancestors: tuple[int, ...] | None = None            # parent, grandparent, ... (host pids)
    ancestor_binaries: tuple[str, ...] | None = None    # binaries of those (matchBinaries followChildren)
    parent_binary: str | None = None
    namespaces: Mapping[str, tuple[int, bool]] | None = None  # NS_KEYS name -> (inum, is the host's)
    caps: Mapping[str, int] | None = None               # effective/permitted/inheritable -> bit mask
    exec_caps: Mapping[str, int] | None = None          # the same, as they were at exec
    exec_namespaces: Mapping[str, int] | None = None    # inums at exec
    pod: Mapping[str, object] | None = None             # Tetragon Pod JSON; {} = known host process


@dataclass(frozen=True)
class Call:
    """The hook's arguments by position in its `args` list (None: not available) and the
    return value (None: not known or not a return hook)."""

    args: tuple[Value | None, ...] = ()
    ret: int | None = None


@dataclass(frozen=True)
class HookRules:
    """The part of a hook that decides: its argument list and selectors."""

    args: tuple[KProbeArg, ...]
    selectors: tuple[Selector, ...]
    tracepoint: bool = False
    lists: Mapping[str, object] = field(default_factory=dict)   # spec.lists by name (InMap list:)
    ret_type: str = ""            # returnArg's type (its GT/LT/ranges order by it); "": none


@dataclass(frozen=True)
class Decision:
    matched: bool                    # a selector decided (or the hook has none): the call is acted on
    selector: int | None = None      # 0-based deciding selector; None when the hook has none
    unknown: str = ""                # non-empty: cannot be decided from the facts, and why
    post: bool = False               # an event is sent
    actions: tuple[str, ...] = ()    # canonical names of the actions that run, in order
    action: str = "Post"             # what the event reports (KPROBE_ACTION_<upper>)
    enforce: str = ""                # Sigkill | Signal | Override (done, or reported in monitor mode)
    monitor: bool = False
    arg_error: int = 0
    arg_sig: int = 0

    @property
    def decided(self) -> bool:
        return not self.unknown


# ---------------------------------------------------------------- operators
def string_match(op: str, values: Iterable[str | bytes], s: str | bytes) -> bool:
    """Equal / Prefix / Postfix and their negations, on str or bytes (values of the same kind)."""
    if op in ("Equal", "NotEqual"):
        hit = any(s == v for v in values)
    elif op in ("Prefix", "NotPrefix"):
        hit = any(s.startswith(v) for v in values)  # type: ignore[arg-type]
    elif op in ("Postfix", "NotPostfix"):
        hit = any(s.endswith(v) for v in values)  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown string operator {op}")
    return not hit if op.startswith("Not") else hit


def _as_bytes(v: str | bytes) -> bytes:
    return v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")


def kernel_string_match(op: str, values: Sequence[str], s: str | bytes) -> bool:
    """string_match with the kernel's limits: Equal compares strings shorter than 256 bytes
    (a longer argument equals nothing), Prefix looks at the first 248 bytes and Postfix at the
    last 248 (every compiled value fits in those)."""
    b = _as_bytes(s)
    vals = [_as_bytes(v) for v in values]
    if op in ("Equal", "NotEqual"):
        hit = len(b) < STR_KEY and b in vals
        return not hit if op == "NotEqual" else hit
    if op in ("Prefix", "NotPrefix"):
        return string_match(op, vals, b[:LPM_STR])
    return string_match(op, vals, b[-LPM_STR:] if len(b) > LPM_STR else b)


def s64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _int_values(e: ArgSelector, lists: Mapping[str, object]) -> list[tuple[int, int]]:
    if e.operator in ("InMap", "NotInMap"):
        out: list[tuple[int, int]] = []
        for v in e.values:
            if v.startswith("list:"):
                out += [(n, n) for n in list_syscall_numbers(lists, v[5:])]
            else:
                out.append(parse_int_or_range(v))
        return out
    if e.operator in ("InRange", "NotInRange"):
        return [parse_int_or_range(v) for v in e.values]
    return [(parse_int(v), parse_int(v)) for v in e.values]


def u64(v: int) -> int:
    return v & ((1 << 64) - 1)


def int_match(op: str, values: Sequence[tuple[int, int]], v: int, unsigned: bool = False) -> bool:
    """Integer operators on the 64-bit value the kernel holds: GT, LT and the ranges order it
    as signed, or (`unsigned`: an argument of an unsigned type) as unsigned."""
    conv = u64 if unsigned else s64
    v = conv(v)
    vals = [(conv(lo), conv(hi)) for lo, hi in values]
    if op in ("GT", "GreaterThan"):
        return bool(vals) and v > vals[0][0]
    if op in ("LT", "LessThan"):
        return bool(vals) and v < vals[0][0]
    if op in ("Equal", "NotEqual"):
        hit = any(v == lo for lo, _ in vals)
    elif op == "Mask":
        return any(v & lo for lo, _ in vals)
    elif op in ("InRange", "NotInRange", "InMap", "NotInMap"):
        hit = any(lo <= v <= hi for lo, hi in vals)
    else:
        raise ValueError(f"unknown integer operator {op}")
    return not hit if op.startswith("Not") else hit


def sock_match(op: str, values: Sequence[str], s: Sock) -> bool:
    if op in ("SPort", "NotSPort", "DPort", "NotDPort"):
        port = s.sport if op.endswith("SPort") else s.dport
        hit = any(lo <= port <= hi for lo, hi in map(parse_port, values))
        return not hit if op.startswith("Not") else hit
    if op == "SPortPriv":
        return s.sport < 1024
    if op in ("NotSportPriv", "NotSPortPriv"):
        return s.sport >= 1024
    if op == "DPortPriv":
        return s.dport < 1024
    if op == "NotDPortPriv":
        return s.dport >= 1024
    if op in ("SAddr", "NotSAddr", "DAddr", "NotDAddr"):
        if s.family not in (2, 10):
            return op.startswith("Not")
        addr = s.saddr if "SAddr" in op else s.daddr
        hit = addr is not None and any(addr in parse_cidr(v) for v in values)
        return not hit if op.startswith("Not") else hit
    parse = {"Protocol": parse_protocol, "Family": parse_family, "State": parse_tcp_state}[op]
    have = {"Protocol": s.protocol, "Family": s.family, "State": s.state}[op]
    return any(have == parse(v) for v in values)


ORDERED_OPS = ("GT", "LT", "GreaterThan", "LessThan", "InRange", "NotInRange")


def arg_match(e: ArgSelector, value: Value | None, lists: Mapping[str, object] | None = None,
              unsigned: bool | None = False) -> Truth:
    """One matchArgs / matchReturnArgs entry against one argument value. `unsigned`: how the
    argument's type orders integers (validate_args.compares_unsigned); None, not known (type
    auto): an ordered comparison the two orders decide differently is undecidable."""
    op = e.operator
    if value is None:
        return Unknown(f"argument for {op} not available")
    if isinstance(value, Sock):
        if op not in SOCK_OPS:
            return Unknown(f"operator {op} does not apply to socket arguments")
        return sock_match(op, e.values, value)
    if isinstance(value, (str, bytes)):
        if op not in STRING_OPS:
            return Unknown(f"operator {op} does not apply to string arguments")
        return kernel_string_match(op, e.values, value)
    if op not in INT_OPS:
        return Unknown(f"operator {op} does not apply to integer arguments")
    vals = _int_values(e, lists or {})
    if unsigned is None:
        hit = int_match(op, vals, value)
        if op in ORDERED_OPS and int_match(op, vals, value, unsigned=True) != hit:
            return Unknown(f"{op} on an argument of type auto: whether it is signed is not known")
        return hit
    return int_match(op, vals, value, unsigned)


# ---------------------------------------------------------------- process filters
def _binary_match(op: str, values: Sequence[str], binary: str) -> bool:
    sop = {"In": "Equal", "NotIn": "NotEqual"}.get(op, op)
    return kernel_string_match(sop, values, binary)


def binaries_match(sel: Selector, p: Process, parent: bool = False) -> Truth:
    entries = sel.match_parent_binaries if parent else sel.match_binaries
    for mb in entries:
        binary = p.parent_binary if parent else p.binary
        if binary is None:
            return Unknown("the process's binary is not known" if not parent else "the parent's binary is not known")
        hit = _binary_match(mb.operator, mb.values, binary)
        if not hit and mb.follow_children and mb.operator in ("In", "Prefix", "Postfix"):
            if p.ancestor_binaries is None:
                return Unknown("followChildren needs the binaries of the process's ancestors")
            hit = any(_binary_match(mb.operator, mb.values, b) for b in p.ancestor_binaries)
        if not hit:
            return False
    return True


def pids_match(sel: Selector, p: Process) -> Truth:
    for mp in sel.match_pids:
        pid = p.nspid if mp.is_namespace_pid else p.pid
        if pid is None:
            return Unknown("the process's pid in its namespace is not known" if mp.is_namespace_pid
                           else "the process's pid is not known")
        hit = pid in mp.values
        if not hit and mp.follow_forks and mp.is_namespace_pid:
            return Unknown("matchPIDs followForks with isNamespacePID needs each ancestor's pid in its namespace")
        if not hit and mp.follow_forks:
            if p.ancestors is None:
                return Unknown("matchPIDs followForks needs the process's ancestors")
            hit = any(a in mp.values for a in p.ancestors[:MAX_FOLLOW_DEPTH])
        if hit != (mp.operator == "In"):
            return False
    return True


def namespaces_match(sel: Selector, p: Process) -> Truth:
    for mn in sel.match_namespaces:
        if p.namespaces is None or NS_KEY[mn.namespace] not in p.namespaces:
            return Unknown(f"the process's {mn.namespace} namespace is not known")
        inum, is_host = p.namespaces[NS_KEY[mn.namespace]]
        hit = any(is_host if v == "host_ns" else inum == parse_int(v) for v in mn.values)
        if hit != (mn.operator == "In"):
            return False
    return True


def _cap_mask(values: Iterable[str]) -> int:
    mask = 0
    for v in values:
        mask |= 1 << parse_capability(v)
    return mask


def capabilities_match(sel: Selector, p: Process) -> Truth:
    for mc in sel.match_capabilities:
        if mc.is_namespace_capability:
            return Unknown("isNamespaceCapability is not evaluated")
        if p.caps is None or CAP_KEYS[mc.type] not in p.caps:
            return Unknown(f"the process's {mc.type.lower()} capabilities are not known")
        hit = bool(p.caps[CAP_KEYS[mc.type]] & _cap_mask(mc.values))
        if hit != (mc.operator == "In"):
            return False
    return True


def capability_changes_match(sel: Selector, p: Process) -> Truth:
    for mc in sel.match_capability_changes:
        key = CAP_KEYS[mc.type]
        if p.caps is None or p.exec_caps is None or key not in p.caps or key not in p.exec_caps:
            return Unknown("matchCapabilityChanges needs the capabilities at the call and at exec")
        changed, mask = p.caps[key] ^ p.exec_caps[key], _cap_mask(mc.values)
        # In: a listed capability changed; NotIn: none of them, but another one did
        if not (changed & mask if mc.operator == "In" else changed and not changed & mask):
            return False
    return True


def namespace_changes_match(sel: Selector, p: Process) -> Truth:
    for mc in sel.match_namespace_changes:
        if p.namespaces is None or p.exec_namespaces is None:
            return Unknown("matchNamespaceChanges needs the namespaces at the call and at exec")
        # In: a listed namespace changed since exec; NotIn: one of the others did
        listed = {NS_KEY.get(v) for v in mc.values}
        keys = listed if mc.operator == "In" else set(NS_KEY.values()) - listed
        changed = False
        for k in sorted(k for k in keys if k is not None):
            if k not in p.namespaces or k not in p.exec_namespaces:
                return Unknown(f"the {k} namespace at the call or at exec is not known")
            changed |= bool(p.exec_namespaces[k]) and p.namespaces[k][0] != p.exec_namespaces[k]
        if not changed:
            return False
    return True


# ---------------------------------------------------------------- selectors and decisions
def _and(*checks: Truth) -> Truth:
    unknown: Unknown | None = None
    for c in checks:
        if c is False:
            return False
        if isinstance(c, Unknown):
            unknown = unknown or c
    return unknown if unknown is not None else True


def _slot(rules: HookRules, e: ArgSelector) -> int | Unknown:
    if e.args:
        if len(e.args) > 1:
            return Unknown("matchArgs with several `args` is not evaluated")
        return e.args[0]
    for pos, a in enumerate(rules.args):
        if a.index == e.index:
            return pos
    if rules.tracepoint and e.index < len(rules.args):
        return e.index
    return Unknown(f"index {e.index} is not one of the hook's args")


def args_match(rules: HookRules, sel: Selector, call: Call) -> Truth:
    checks: list[Truth] = []
    for e in sel.match_args:
        pos = _slot(rules, e)
        if isinstance(pos, Unknown):
            return pos
        value = call.args[pos] if pos < len(call.args) else None
        atype = rules.args[pos].type if pos < len(rules.args) else "auto"
        t = arg_match(e, value, rules.lists, compares_unsigned(atype))
        if t is False:
            return False
        checks.append(t)
    if sel.match_data:
        checks.append(Unknown("matchData is not evaluated"))
    return _and(*checks)


def selector_matches(rules: HookRules, sel: Selector, p: Process, call: Call) -> Truth:
    """Do all the entry-time filters of `sel` hold? (matchReturnArgs is checked at return.)"""
    return _and(pids_match(sel, p), binaries_match(sel, p), namespaces_match(sel, p),
                capabilities_match(sel, p), capability_changes_match(sel, p), namespace_changes_match(sel, p),
                binaries_match(sel, p, parent=True) if sel.match_parent_binaries else True,
                Unknown("matchWorkloads is not evaluated") if sel.match_workloads else True,
                args_match(rules, sel, call))


def return_matches(rules: HookRules, sel: Selector, call: Call) -> Truth:
    checks: list[Truth] = []
    for e in sel.match_return_args:
        if call.ret is None:
            return Unknown("matchReturnArgs needs the return value")
        # the kernel orders a return value of no declared (or auto) type as signed
        checks.append(arg_match(e, call.ret, rules.lists, compares_unsigned(rules.ret_type) or False))
    return _and(*checks)


def _canon(name: str) -> str:
    for n in (*enums.ACTIONS, *enums.DEPRECATED_ACTIONS):
        if n.lower() == name.lower():
            return n
    return name


def run_actions(actions: Sequence[ActionSelector], monitor: bool, post: bool = True) -> dict[str, object]:
    """The effect of one action list (act.bpf.h do_actions)."""
    out: dict[str, object] = {"post": post, "action": "Post", "enforce": "", "arg_error": 0, "arg_sig": 0}
    names = []
    for a in actions:
        n = _canon(a.action)
        names.append(n)
        if n == "Post":
            pass  # sends what no NoPost holds back (its rate limit is the kernel's)
        elif n == "NoPost":
            out["post"] = False
        else:
            out["action"] = n
            if n in ENFORCING:
                out["enforce"] = n
                out["arg_error"] = a.arg_error if n == "Override" else out["arg_error"]
                out["arg_sig"] = 9 if n == "Sigkill" else a.arg_sig if n == "Signal" else out["arg_sig"]
    out["actions"] = tuple(names)
    out["monitor"] = monitor and bool(out["enforce"])
    return out


def decide(rules: HookRules, p: Process, call: Call, *, monitor: bool = False) -> Decision:
    """The hook's decision for one call (first matching selector, its actions)."""
    if not rules.selectors:
        return Decision(matched=True, post=True)
    for i, sel in enumerate(rules.selectors):
        t = selector_matches(rules, sel, p, call)
        if t is False:
            continue
        if isinstance(t, Unknown):
            return Decision(matched=False, selector=i, unknown=f"selector {i + 1}: {t}")
        eff = run_actions(sel.match_actions, monitor)
        if sel.match_return_args or sel.match_return_actions:
            r = return_matches(rules, sel, call)
            if r is False:
                return Decision(matched=False, selector=i)
            if isinstance(r, Unknown):
                return Decision(matched=False, selector=i, unknown=f"selector {i + 1}: {r}")
            if sel.match_return_actions:
                ret_eff = run_actions(sel.match_return_actions, monitor, post=bool(eff["post"]))
                eff = {**ret_eff, "action": eff["action"],  # the event reports the entry action
                       "actions": (*eff["actions"], *ret_eff["actions"]),  # type: ignore[misc]
                       "enforce": ret_eff["enforce"] or eff["enforce"],
                       "monitor": ret_eff["monitor"] or eff["monitor"]}
        return Decision(matched=True, selector=i, post=bool(eff["post"]), actions=eff["actions"],  # type: ignore[arg-type]
                        action=str(eff["action"]), enforce=str(eff["enforce"]), monitor=bool(eff["monitor"]),
                        arg_error=int(eff["arg_error"]), arg_sig=int(eff["arg_sig"]))  # type: ignore[call-overload]
    return Decision(matched=False)


def pod_selector_match(sel: LabelSelector | None, p: Process, namespace: str | None = None,
                       container_sel: LabelSelector | None = None) -> Truth:
    """spec.podSelector, spec.containerSelector (and a TracingPolicyNamespaced's namespace)
    against the process's pod, with the agent's selector evaluator (vigil.k8s.selectors)."""
    if sel is None and namespace is None and container_sel is None:
        return True
    if p.pod is None:
        return Unknown("the process's pod is not known")
    if not p.pod:  # a host process: pod-scoped policies never apply
        return False
    pod_ns = str(p.pod.get("namespace") or "")
    if namespace is not None and pod_ns != namespace:
        return False
    if sel is not None and not matches(sel, pod_labels(pod_ns, _str_map(p.pod.get("pod_labels")))):
        return False
    if container_sel is not None:
        c = p.pod.get("container")
        c = c if isinstance(c, Mapping) else {}
        image = c.get("image")
        image_id = str(image.get("id") or "") if isinstance(image, Mapping) else ""
        return matches(container_sel, container_labels(str(c.get("name") or ""), image_id))
    return True


def _str_map(v: object) -> dict[str, str]:
    return {str(k): str(x) for k, x in v.items()} if isinstance(v, Mapping) else {}


__all__ = ["Call", "Decision", "HookRules", "Process", "Sock", "Truth", "Unknown", "arg_match", "capabilities_match",
           "decide", "int_match", "kernel_string_match", "pod_selector_match",
           "run_actions", "selector_matches", "sock_match", "string_match"]
