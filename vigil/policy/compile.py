"""TracingPolicy -> per-hook kernel configuration (pure: no kernel calls).

Each hook becomes a `CompiledHook`: where it attaches (from placement.py),
the `vp_hook` bytes for the `hook_config` map and the keys of the lookup
maps (exact strings, prefixes, postfixes, addresses, value sets). The BPF
program is the same for every policy. Anything the kernel side cannot do
is refused here, naming the file, line and field.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Callable

from . import enums
from vigil.kernel import policy_layout as L
from .errors import Loc, PolicyErrors, PolicyValidationError
from .model import ActionSelector, ArgSelector, KProbeSpec, Policy, Selector, TracepointSpec, UProbeSpec
from .enforce_placement import place_syscall_on_host, place_syscall_on_lsm
from .placement import ArgPlan, Placement, Probe, place_kprobe, place_lsm, place_tracepoint, place_uprobe, place_usdt
from .values import (parse_capability, parse_cidr, parse_family, parse_int, parse_int_or_range, parse_port,
                     parse_protocol, parse_tcp_state)

STRING_TYPES = {L.T[t] for t in ("string", "kstring", "data_loc", "char_array", "char_buf", "char_iovec",
                                 "path_child", "linux_binprm",
                                 "fd", "file", "path")}
SOCK_TYPES = {L.T["sockaddr"], L.T["sock"], L.T["ksockaddr"], L.T["socket"]}
STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
SOCK_OPS = ("SPort", "NotSPort", "SPortPriv", "NotSportPriv", "DPort", "NotDPort", "DPortPriv", "NotDPortPriv",
            "SAddr", "NotSAddr", "DAddr", "NotDAddr", "Protocol", "Family", "State")
INT_OPS = ("Equal", "NotEqual", "GT", "LT", "GreaterThan", "LessThan", "Mask", "InRange", "NotInRange",
           "InMap", "NotInMap")
NS_INDEX = {n: i for i, n in enumerate(enums.NAMESPACES)}
CAP_TYPE = {"Effective": 0, "Inheritable": 1, "Permitted": 2}
MAX_INMAP_VALUES = 65536


@dataclass
class CompiledHook:
    policy: str
    hook_id: int
    placement: Placement
    config: L.Hook
    message: str = ""
    tags: tuple[str, ...] = ()
    str_keys: list[bytes] = field(default_factory=list)
    prefix_keys: list[bytes] = field(default_factory=list)
    postfix_keys: list[bytes] = field(default_factory=list)
    addr_keys: list[bytes] = field(default_factory=list)
    val_keys: list[bytes] = field(default_factory=list)
    selectors: tuple[Selector, ...] = ()
    lists: dict = field(default_factory=dict)
    follow_bits: list[int] = field(default_factory=list)

    @property
    def args(self) -> list[ArgPlan]:
        return self.placement.args


@dataclass
class CompiledPolicy:
    policy: Policy
    hooks: list[CompiledHook]
    warnings: list[PolicyValidationError]
    mode: str

    @property
    def name(self) -> str:
        return self.policy.name


class _Errors:
    """Diagnostics; a selector shared by several expanded calls reports a problem once."""

    def __init__(self) -> None:
        self.errors: list[PolicyValidationError] = []
        self.warnings: list[PolicyValidationError] = []

    def error(self, loc: Loc, msg: str) -> None:
        d = PolicyValidationError.at(loc, msg)
        if d not in self.errors:
            self.errors.append(d)

    def warn(self, loc: Loc, msg: str) -> None:
        d = PolicyValidationError.at(loc, msg, "warning")
        if d not in self.warnings:
            self.warnings.append(d)


def host_ns_inums() -> list[int]:
    from vigil.kernel.namespaces import host_namespaces

    return list(host_namespaces())


def compile_policy(policy: Policy, has: Probe, next_hook_id: Callable[[], int],
                   host_ns: list[int] | None = None,
                   follow_bit: Callable[[str, tuple[str, ...]], int] | None = None,
                   workloads: bool = False) -> CompiledPolicy:
    """Compile every hook; raises PolicyErrors (nothing partial) if any part cannot run here.

    `workloads`: the agent knows pods (--enable-k8s-api), so a policy may be scoped to pods and
    containers (the scope itself is kept in the kernel by vigil.k8s.policyfilter)."""
    errs = _Errors()
    spec = policy.spec
    hooks: list[CompiledHook] = []
    monitor = policy.mode == "monitor"
    if not workloads:
        for field_name in ("podSelector", "containerSelector"):
            attr = {"podSelector": "pod_selector", "containerSelector": "container_selector"}[field_name]
            sel = getattr(spec, attr)
            if sel is not None and not sel.empty:
                errs.error(spec.at(field_name), f"{field_name} needs Kubernetes pod information, which this "
                           "agent does not have (run it with --enable-k8s-api)")
        if policy.namespaced:
            errs.error(policy.at("kind"), f"a TracingPolicyNamespaced applies to the pods of namespace "
                       f"{policy.namespace or '(none)'}, which this agent does not know (run it with "
                       "--enable-k8s-api)")
    if spec.enforcers:
        errs.error(spec.at("enforcers"), "enforcers (NotifyEnforcer) are not supported by this Vigil build yet")
    placements: list[tuple[Placement, KProbeSpec | TracepointSpec | UProbeSpec | object]] = []
    for section, items in (("kprobes", spec.kprobes), ("fentries", spec.fentries)):
        for i, kp in enumerate(items):
            generated = _is_generated(policy, kp)
            overrides = _has_override(kp)
            for call in _expand_call(policy, kp, errs):
                pl = None
                if overrides and kp.syscall:
                    # Override needs a hook that can refuse the operation before it happens
                    pl = place_syscall_on_lsm(kp, section, i, call, has)
                    if pl is None or not pl.ok:
                        lsm_reason = pl.reason if pl is not None else "no LSM hook guards it"
                        if policy.spec.option("vigil-enforce-fallback") == "sigkill":
                            pl = place_kprobe(kp, section, i, call, has)
                            pl.notes.append(f"Override degraded to Sigkill after the fact (option "
                                            f"vigil-enforce-fallback): {lsm_reason}")
                            pl.attach["degraded"] = True
                        else:
                            pl = place_syscall_on_host(kp, section, i, call, has, lsm_reason)
                if pl is None:
                    pl = place_kprobe(kp, section, i, call, has)
                if generated and not pl.ok and pl.reason.startswith("no tracepoint"):
                    continue  # a generated list names every syscall; this kernel lacks this one
                placements.append((pl, kp))
    for i, tp in enumerate(spec.tracepoints):
        placements.append((place_tracepoint(tp, i, has), tp))
    for i, up in enumerate(spec.uprobes):
        for j in range(max(len(up.symbols), len(up.offsets), 1)):
            placements.append((place_uprobe(up, i, j, has), up))
    for i, lh in enumerate(spec.lsmhooks):
        placements.append((place_lsm(lh, i, has), lh))
    for i, us in enumerate(spec.usdts):
        placements.append((place_usdt(us, i), us))
    ns = host_ns if host_ns is not None else host_ns_inums()
    for pl, hook in placements:
        if not pl.ok:
            errs.error(pl.reason_loc or pl.loc, f"{pl.section}[{pl.index}] ({pl.target}): {pl.reason}")
            continue
        hooks.append(_compile_hook(policy, pl, hook, next_hook_id(), monitor, ns, errs, follow_bit))
    if errs.errors:
        raise PolicyErrors(errs.errors, errs.warnings)
    return CompiledPolicy(policy, hooks, errs.warnings, policy.mode)


def _has_override(kp: KProbeSpec) -> bool:
    return any(a.action.lower() == "override" for sel in kp.selectors
               for a in (*sel.match_actions, *sel.match_return_actions))


def _is_generated(policy: Policy, kp: KProbeSpec) -> bool:
    lst = policy.spec.list_named(kp.call[5:]) if kp.call.startswith("list:") else None
    return lst is not None and lst.type == "generated_syscalls"


def _expand_call(policy: Policy, kp: KProbeSpec, errs: _Errors) -> list[str]:
    if not kp.call.startswith("list:"):
        return [kp.call]
    lst = policy.spec.list_named(kp.call[5:])
    if lst is None:
        errs.error(kp.at("call"), f"no list named {kp.call[5:]!r} in spec.lists")
        return []
    if lst.type == "generated_ftrace":
        errs.error(lst.at("type"), "generated_ftrace lists need kprobes (ftrace functions), unavailable here")
        return []
    if lst.type == "generated_syscalls":
        from .syscalls import SYSCALL_NAMES

        return [f"sys_{n}" for n in sorted(SYSCALL_NAMES)]
    return [v if v.startswith(("sys_", "__x64_sys_", "__ia32_")) else f"sys_{v}" for v in lst.values]


def _compile_hook(policy: Policy, pl: Placement, hook: object, hook_id: int, monitor: bool,
                  host_ns: list[int], errs: _Errors,
                  follow_bit: Callable[[str, tuple[str, ...]], int] | None = None) -> CompiledHook:
    cfg = L.Hook()
    cfg.hook_id = hook_id
    cfg.flags = (L.HOOK_RETURN if pl.return_prog else 0) | (L.HOOK_MONITOR if monitor else 0)
    cfg.nargs = len(pl.args)
    ret_action = getattr(hook, "return_arg_action", "")
    if ret_action:
        if pl.mechanism != "kprobe" or not pl.return_prog:
            errs.error(hook.at("returnArgAction"), "returnArgAction needs a kprobe with return: true "  # type: ignore[attr-defined]
                       "(a kernel function returning a sock)")
        else:
            cfg.flags |= L.HOOK_RET_TRACKSOCK if ret_action == "TrackSock" else L.HOOK_RET_UNTRACKSOCK
    for p in pl.args:
        a = cfg.args[p.slot]
        a.type, a.src, a.size, a.is_signed = p.vtype, p.src, p.size, int(p.is_signed)
        a.off, a.size_arg, a.return_copy, a.max_len = p.off, p.size_arg, int(p.return_copy), p.max_len
        a.max_data = int(p.max_data)
    ch = CompiledHook(policy.name, hook_id, pl, cfg, message=getattr(hook, "message", ""),
                      tags=tuple(getattr(hook, "tags", ())), selectors=tuple(getattr(hook, "selectors", ())),
                      lists={ls.name: ls for ls in policy.spec.lists})
    cfg.nselectors = len(ch.selectors)
    for si, sel in enumerate(ch.selectors):
        _compile_selector(ch, hook, pl, si, sel, cfg.sel[si], host_ns, errs, follow_bit)
    return ch


def _slot_for(pl: Placement, hook: object, e: ArgSelector, errs: _Errors) -> int | None:
    if e.args:
        if len(e.args) > 1:
            errs.error(e.at("args"), "matchArgs with several `args` (CapabilitiesGained, CelExpr) is not "
                       "supported by this Vigil build")
            return None
        pos = e.args[0]
        if pos >= len(pl.args):
            errs.error(e.at("args"), f"args[{pos}] does not exist (the hook captures {len(pl.args)} arguments)")
            return None
        return pos
    for p in pl.args:
        if p.index == e.index:
            return p.slot
    if isinstance(hook, TracepointSpec) and e.index < len(pl.args):
        return e.index  # tracepoint selectors may name the position
    errs.error(e.at("index"), f"index {e.index} is not one of the hook's args (capture it in `args` first)")
    return None


def _str_value(v: str) -> bytes:
    return v.encode("utf-8", "surrogateescape")


def _compile_filter(ch: CompiledHook, f: L.Filter, e: ArgSelector, vtype: int, map_id: int,
                    errs: _Errors, *, is_return: bool = False) -> None:
    op = e.operator
    if op not in L.OP:
        errs.error(e.at("operator"), f'operator "{op}" is not supported by this Vigil build')
        return
    f.op, f.map_id = L.OP[op], map_id
    loc = e.at("values")
    if vtype in STRING_TYPES and not is_return:
        if op not in STRING_OPS:
            errs.error(e.at("operator"), f'operator "{op}" does not apply to string-like arguments')
            return
        for k, v in enumerate(e.values):
            b = _str_value(v)
            if op in ("Equal", "NotEqual"):
                if len(b) >= L.STR_KEY:
                    errs.error(e.at(f"values[{k}]"), f"string values are compared in the kernel up to "
                               f"{L.STR_KEY - 1} bytes; this one has {len(b)}")
                    continue
                ch.str_keys.append(struct.pack("<I", map_id) + b.ljust(L.STR_KEY, b"\0"))
            else:
                if len(b) > L.LPM_STR:
                    errs.error(e.at(f"values[{k}]"), f"prefix/postfix values are limited to {L.LPM_STR} bytes "
                               f"in the kernel; this one has {len(b)}")
                    continue
                if op in ("Postfix", "NotPostfix"):
                    b = b[::-1]
                key = struct.pack("<II", 32 + 8 * len(b), map_id) + b.ljust(L.LPM_STR, b"\0")
                (ch.postfix_keys if op in ("Postfix", "NotPostfix") else ch.prefix_keys).append(key)
        return
    if vtype in SOCK_TYPES and not is_return:
        if op not in SOCK_OPS:
            errs.error(e.at("operator"), f'operator "{op}" does not apply to socket arguments')
            return
        try:
            if op in ("SAddr", "NotSAddr", "DAddr", "NotDAddr"):
                for v in e.values:
                    net = parse_cidr(v)
                    if isinstance(net, ipaddress.IPv4Network):
                        key = struct.pack("<II", 32 + net.prefixlen, map_id) + net.network_address.packed + bytes(12)
                    else:
                        key = struct.pack("<II", 32 + net.prefixlen, map_id | 0x80000000) + net.network_address.packed
                    ch.addr_keys.append(key)
                return
            if op in ("SPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv"):
                return
            parse = {"Protocol": parse_protocol, "Family": parse_family, "State": parse_tcp_state}.get(op)
            ranges = [(parse(v), parse(v)) if parse else parse_port(v) for v in e.values]
        except ValueError as ex:
            errs.error(loc, str(ex))
            return
        _set_values(f, ranges, e, errs)
        return
    if op not in INT_OPS:
        errs.error(e.at("operator"), f'operator "{op}" does not apply to integer arguments')
        return
    try:
        if op in ("InMap", "NotInMap"):
            n = 0
            for v in e.values:
                if v.startswith("list:"):
                    for num in _list_numbers(ch, v[5:], e):
                        ch.val_keys.append(struct.pack("<IIq", map_id, 0, num))
                    continue
                lo, hi = parse_int_or_range(v)
                for x in range(lo, hi + 1):
                    n += 1
                    if n > MAX_INMAP_VALUES:
                        raise ValueError(f"InMap holds at most {MAX_INMAP_VALUES} values")
                    ch.val_keys.append(struct.pack("<IIq", map_id, 0, x))
            return
        if op in ("InRange", "NotInRange"):
            ranges = [parse_int_or_range(v) for v in e.values]
        else:
            ranges = [(parse_int(v), parse_int(v)) for v in e.values]
    except ValueError as ex:
        errs.error(loc, str(ex))
        return
    _set_values(f, ranges, e, errs)


def _list_numbers(ch: CompiledHook, name: str, e: ArgSelector) -> list[int]:
    """Syscall numbers of a spec.lists entry (for syscall64 InMap)."""
    from .syscalls import SYSCALL_NUMBERS
    from .values import syscall_base

    lst = ch.lists.get(name)
    if lst is None:
        raise ValueError(f"no list named {name!r} in spec.lists")
    if lst.type == "generated_syscalls":
        return sorted(SYSCALL_NUMBERS.values())
    out = []
    for v in lst.values:
        base = syscall_base(v) or v
        if base not in SYSCALL_NUMBERS:
            raise ValueError(f"list {name!r}: {v!r} is not an x86_64 syscall")
        out.append(SYSCALL_NUMBERS[base])
    return out


def _set_values(f: L.Filter, ranges: list[tuple[int, int]], e: ArgSelector, errs: _Errors) -> None:
    if len(ranges) > L.MAX_VALUES:
        errs.error(e.at("values"), f"at most {L.MAX_VALUES} values per operator (kernel limit); use InMap for more")
        return
    f.nvals = len(ranges)
    for k, (lo, hi) in enumerate(ranges):
        f.lo[k] = _s64(lo)
        f.hi[k] = _s64(hi)


def _s64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _compile_selector(ch: CompiledHook, hook: object, pl: Placement, si: int, sel: Selector, s: L.Selector,
                      host_ns: list[int], errs: _Errors,
                      follow_bit: Callable[[str, tuple[str, ...]], int] | None = None) -> None:
    for name in ("match_data", "match_parent_binaries", "match_workloads"):
        if getattr(sel, name):
            yaml = {"match_data": "matchData", "match_parent_binaries": "matchParentBinaries",
                    "match_workloads": "matchWorkloads"}[name]
            errs.error(sel.at(yaml), f"{yaml} is not supported by this Vigil build yet")
    s.nfilters = len(sel.match_args)
    for j, e in enumerate(sel.match_args):
        slot = _slot_for(pl, hook, e, errs)
        if slot is None:
            continue
        f = s.args[j]
        f.slot = slot
        _compile_filter(ch, f, e, pl.args[slot].vtype, (si << 4) | j, errs)
    if sel.match_return_args:
        if not pl.return_prog:
            errs.error(sel.at("matchReturnArgs"), "matchReturnArgs needs `return: true` on the hook")
        elif len(sel.match_return_args) > 1:
            errs.error(sel.at("matchReturnArgs"), "one matchReturnArgs entry per selector is supported")
        else:
            s.present |= L.SEL_RETARGS
            _compile_filter(ch, s.ret, sel.match_return_args[0], L.T["long"], (si << 4) | 5, errs, is_return=True)
    if sel.match_pids:
        if len(sel.match_pids) > 1:
            errs.error(sel.at("matchPIDs"), "one matchPIDs entry per selector is supported")
        mp = sel.match_pids[0]
        if len(mp.values) > L.MAX_PIDS:
            errs.error(mp.at("values"), f"at most {L.MAX_PIDS} pids per matchPIDs entry")
        else:
            s.present |= L.SEL_PIDS
            s.pid_op = 1 if mp.operator == "In" else 2
            s.pid_n = len(mp.values)
            s.pid_nspid = int(mp.is_namespace_pid)
            s.pid_follow = int(mp.follow_forks)
            for k, v in enumerate(mp.values):
                s.pids[k] = v
    if sel.match_binaries:
        mb = sel.match_binaries[0]
        if mb.follow_children:
            if mb.operator not in ("In", "Prefix", "Postfix"):
                errs.error(mb.at("operator"), "followChildren works with In, Prefix and Postfix")
            elif follow_bit is None:
                pass  # offline compile (explain): the bit is allocated when the policy loads
            else:
                try:
                    bit = follow_bit(mb.operator, tuple(mb.values))
                    s.bin_follow = bit + 1
                    ch.follow_bits.append(bit)
                except ValueError as ex:
                    errs.error(mb.at("followChildren"), str(ex))
        ops = {"In": 1, "NotIn": 2, "Prefix": 3, "NotPrefix": 4, "Postfix": 5, "NotPostfix": 6}
        s.present |= L.SEL_BINS
        s.bin_op = ops[mb.operator]
        s.bin_map_id = (si << 4) | 6
        for k, v in enumerate(mb.values):
            b = _str_value(v)
            if s.bin_op <= 2:
                if len(b) >= L.STR_KEY:
                    errs.error(mb.at(f"values[{k}]"), f"binary paths are compared up to {L.STR_KEY - 1} bytes")
                    continue
                ch.str_keys.append(struct.pack("<I", s.bin_map_id) + b.ljust(L.STR_KEY, b"\0"))
            else:
                if len(b) > L.LPM_STR:
                    errs.error(mb.at(f"values[{k}]"), f"prefix/postfix values are limited to {L.LPM_STR} bytes")
                    continue
                if s.bin_op >= 5:
                    b = b[::-1]
                key = struct.pack("<II", 32 + 8 * len(b), s.bin_map_id) + b.ljust(L.LPM_STR, b"\0")
                (ch.postfix_keys if s.bin_op >= 5 else ch.prefix_keys).append(key)
    if sel.match_namespaces:
        s.present |= L.SEL_NS
        s.nns = len(sel.match_namespaces)
        for k, mn in enumerate(sel.match_namespaces):
            nf = s.ns[k]
            nf.ns = NS_INDEX[mn.namespace]
            nf.op = 1 if mn.operator == "In" else 2
            nf.nvals = len(mn.values)
            for vi, v in enumerate(mn.values):
                nf.inum[vi] = host_ns[nf.ns] if v == "host_ns" else parse_int(v)
    if sel.match_namespace_changes:
        mc = sel.match_namespace_changes[0]
        s.present |= L.SEL_NSCHG
        s.nschg_op = 1 if mc.operator == "In" else 2
        for v in mc.values:
            s.nschg_mask |= 1 << NS_INDEX[v]
    for attr, bit, yaml in (("match_capabilities", L.SEL_CAPS, "matchCapabilities"),
                            ("match_capability_changes", L.SEL_CAPCHG, "matchCapabilityChanges")):
        entries = getattr(sel, attr)
        if not entries:
            continue
        if len(entries) > 1:
            errs.error(sel.at(yaml), f"one {yaml} entry per selector is supported")
            continue
        mc = entries[0]
        if mc.is_namespace_capability:
            errs.error(mc.at("isNamespaceCapability"), "isNamespaceCapability is not supported by this Vigil build")
            continue
        mask = 0
        for v in mc.values:
            mask |= 1 << parse_capability(v)
        s.present |= bit
        if bit == L.SEL_CAPS:
            s.cap_op, s.cap_type, s.cap_mask = (1 if mc.operator == "In" else 2), CAP_TYPE[mc.type], mask
        else:
            s.capchg_op, s.capchg_type, s.capchg_mask = (1 if mc.operator == "In" else 2), CAP_TYPE[mc.type], mask
    s.nactions = _compile_actions(pl, sel.match_actions, s.actions, errs)
    if sel.match_return_actions and not pl.return_prog:
        errs.error(sel.at("matchReturnActions"), "matchReturnActions needs `return: true` on the hook")
    s.nret_actions = _compile_actions(pl, sel.match_return_actions, s.ret_actions, errs)


def _compile_actions(pl: Placement, actions: tuple[ActionSelector, ...], out: object, errs: _Errors) -> int:
    for k, a in enumerate(actions):
        cfg = out[k]  # type: ignore[index]
        name = a.action
        canon = next((n for n in L.ACT if n.lower() == name.lower()), None)
        if canon == "Override" and pl.attach.get("degraded"):
            cfg.type = L.ACT["Sigkill"]
            continue
        if canon == "Override" and pl.mechanism in ("fanotify", "cgroup_sock_addr"):
            cfg.type = L.ACT["Override"]
            cfg.arg = a.arg_error
            continue
        if canon == "Override" and pl.mechanism in ("lsm", "fmod_ret"):
            if a.arg_error >= 0:
                errs.error(a.at("argError"), "Override needs a negative argError (an -errno) to refuse the operation")
                continue
            cfg.type = L.ACT["Override"]
            cfg.arg = a.arg_error
            continue
        if canon in ("TrackSock", "UntrackSock") and pl.mechanism in ("kprobe", "fentry", "lsm"):
            slot = next((p.slot for p in pl.args if p.index == a.arg_sock), None)
            if slot is None or pl.args[slot].vtype != L.T["sock"]:
                errs.error(a.at("argSock"), f"argSock {a.arg_sock} must name a captured argument of type sock")
                continue
            cfg.type = L.ACT[canon]
            cfg.arg = slot
            continue
        if canon is None or canon in ("Override", "TrackSock", "UntrackSock", "NotifyEnforcer"):
            why = {
                "Override": ("Override changes a return value, which needs bpf_override_return or a BPF LSM "
                             f"hook; this hook runs on {pl.mechanism}, where neither exists"),
                "TrackSock": "TrackSock needs kernel socket pointers (kprobes)",
                "UntrackSock": "UntrackSock needs kernel socket pointers (kprobes)",
                "NotifyEnforcer": "NotifyEnforcer needs the enforcers section, not supported yet",
            }.get(canon or "", f'action "{name}" is not supported by this Vigil build yet')
            errs.error(a.at("action"), why)
            continue
        cfg.type = L.ACT[canon]
        if canon == "Signal":
            cfg.arg = a.arg_sig
        if canon == "Post":
            if a.rate_limit:
                cfg.rate_ns = a.rate_limit_seconds * 1_000_000_000
            cfg.scope = L.SCOPE.get(a.rate_limit_scope, 0)
            cfg.flags = (L.AF_KSTACK if a.kernel_stack_trace else 0) | (L.AF_USTACK if a.user_stack_trace else 0)
            if a.ima_hash:
                errs.error(a.at("imaHash"), "imaHash needs BPF LSM hooks")
    return len(actions)
