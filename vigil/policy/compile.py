"""TracingPolicy -> per-hook kernel configuration: `compile_policy(policy, facts)`.

Pure: no I/O; everything about the kernel comes from KernelFacts, so the agent, `vigil policy
explain` and `vigil policy validate` (against the ideal kernel) share this path, and tests
check its output byte for byte with recorded facts.

Each hook becomes one or more `CompiledHook`s (a list call expands to one per function; a
stand-in may run at several sites): where it attaches (placement.py, syscall_place.py,
standins.py, enforce_placement.py), the `vp_hook` bytes for the `hook_config` map and the keys
of the lookup maps (exact strings, prefixes, postfixes, addresses, value sets). The BPF program
is the same for every policy. Anything that cannot run is refused here with every reason, each
naming the file, line and field.
"""
from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vigil.kernel import policy_layout as L
from vigil.kernel.facts import KernelFacts

from . import enums, limits, standins
from .enforce_placement import place_syscall_on_host, place_syscall_on_lsm
from .errors import Loc, PolicyErrors, PolicyValidationError
from .model import ActionSelector, ArgSelector, KProbeSpec, LsmHookSpec, Policy, Selector, TracepointSpec, UProbeSpec
from .placement import (
    INT_WIDTH,
    ArgPlan,
    Placement,
    place_kernel_function,
    place_kprobe_data,
    place_tracepoint,
    place_uprobe,
    place_usdt,
)
from .syscall_place import TRACEPOINT_NAME, list_syscall_numbers, parse_syscall, place_syscall
from .syscalls import SYSCALL_NUMBERS
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

STRING_TYPES = {L.T[t] for t in ("string", "kstring", "data_loc", "char_array", "char_buf", "char_iovec",
                                 "path_child", "linux_binprm", "fd", "file", "path", "dentry", "dentry_path",
                                 "net_device", "kiocb", "iov_iter")}
SOCK_TYPES = {L.T[t] for t in ("sockaddr", "sock", "ksockaddr", "socket", "fd_sock", "skb")}
STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
SOCK_OPS = ("SPort", "NotSPort", "SPortPriv", "NotSportPriv", "DPort", "NotDPort", "DPortPriv", "NotDPortPriv",
            "SAddr", "NotSAddr", "DAddr", "NotDAddr", "Protocol", "Family", "State")
INT_OPS = ("Equal", "NotEqual", "GT", "LT", "GreaterThan", "LessThan", "Mask", "InRange", "NotInRange",
           "InMap", "NotInMap")
# arguments whose value the kernel holds zero-extended: GT, LT and the ranges compare unsigned
# (validate_args.compares_unsigned says the same of the policy's type names)
UNSIGNED_VTYPES = {L.T[t] for t in ("uint", "size", "syscall64", "kernel_cap", "capset")}
NS_INDEX = {n: i for i, n in enumerate(enums.NAMESPACES)}
CAP_TYPE = {"Effective": 0, "Inheritable": 1, "Permitted": 2}
S_IFMT = {"sock": 0o140000, "socket": 0o140000, "lnk": 0o120000, "link": 0o120000, "reg": 0o100000,
          "regular": 0o100000, "blk": 0o060000, "block": 0o060000, "dir": 0o040000, "chr": 0o020000,
          "char": 0o020000, "fifo": 0o010000, "pipe": 0o010000}
MAX_MAP_VALUES = 65536
_TEMPLATE = re.compile(r"\$\{[^}]*\}|\$\([^)]*\)|\{\{[^}]*\}\}")
ENFORCING = ("Sigkill", "Signal", "Override")


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
    actions: list[tuple[str, ActionSelector]] = field(default_factory=list)  # user-space actions (GetUrl, ...)

    @property
    def args(self) -> list[ArgPlan]:
        return self.placement.args


@dataclass
class CompiledPolicy:
    policy: Policy
    hooks: list[CompiledHook]
    warnings: list[PolicyValidationError]
    mode: str
    placements: list[Placement] = field(default_factory=list)
    enforcers: list[Placement] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.policy.name


class _Errors:
    """Diagnostics; a selector shared by several expanded calls reports a problem once."""

    def __init__(self) -> None:
        self.errors: list[PolicyValidationError] = []
        self.warnings: list[PolicyValidationError] = []
        self.causes: list[str] = []

    def error(self, loc: Loc, msg: str, cause: str = "vigil") -> None:
        d = PolicyValidationError.at(loc, msg)
        if d not in self.errors:
            self.errors.append(d)
            self.causes.append(cause)

    def warn(self, loc: Loc, msg: str) -> None:
        d = PolicyValidationError.at(loc, msg, "warning")
        if d not in self.warnings:
            self.warnings.append(d)


def substitution_enabled(policy: Policy, default: bool) -> bool:
    from .values import parse_bool_string

    v = policy.spec.option(standins.OPTION)
    if v is None:
        return default
    try:
        return parse_bool_string(v)
    except ValueError:
        return default  # the validator reports it


# ------------------------------------------------------------------ placement of every hook

def plan_policy(policy: Policy, facts: KernelFacts, *, substitute: bool = False,
                errs: _Errors | None = None) -> list[tuple[Placement, object]]:
    """Every placement (able to run or not) of every hook of `policy` on the kernel `facts`
    describes, with the hook it came from."""
    errs = errs or _Errors()
    spec = policy.spec
    sub = substitution_enabled(policy, substitute)
    out: list[tuple[Placement, object]] = []
    for section, items in (("kprobes", spec.kprobes), ("fentries", spec.fentries)):
        for i, kp in enumerate(items):
            ftrace = _is_ftrace_list(policy, kp)
            for call in _expand_call(policy, kp, facts, errs):
                for pl in _place_call(policy, kp, section, i, call, facts, sub, kfunc=ftrace):
                    place_kprobe_data(pl, kp, facts)  # after the args, wherever the hook runs
                    out.append((pl, kp))
    for i, tp in enumerate(spec.tracepoints):
        out.append((place_tracepoint(tp, i, facts), tp))
    for i, up in enumerate(spec.uprobes):
        for j in range(max(len(up.symbols), len(up.offsets), len(up.addrs), 1)):
            out.append((place_uprobe(up, i, j, facts), up))
    for i, lh in enumerate(spec.lsmhooks):
        for pl in _place_lsm(lh, i, facts, sub):
            out.append((pl, lh))
    for i, us in enumerate(spec.usdts):
        for pl in place_usdt(us, i, facts):
            out.append((pl, us))
    for pl, hook in out:
        pl.stats_hook = stats_hook(pl.section, hook)
    return out


def stats_hook(section: str, hook: object) -> str:
    """The `hook` label of tetragon_tracingpolicy_selector_actions_total for a hook of the
    policy: named after the policy's spec (the call as written), not after where the hook runs
    here. (tetragon_policy_events_total names the hook as its events do: vigil.agent.metrics.)"""
    h: Any = hook
    if section in ("kprobes", "fentries"):
        return f"{'kprobe' if section == 'kprobes' else 'fentry'}:{h.call}"
    if section == "tracepoints":
        return f"tracepoint:{h.subsystem}/{h.event}"
    if section == "lsmhooks":
        return f"lsm:{h.hook}"
    if section == "uprobes":
        p = f"uprobe:{h.path}"
        if h.symbols:
            p += ":" + ",".join(h.symbols)
        if h.offsets:
            p += ":offsets=" + ",".join(str(o) for o in h.offsets)
        if h.addrs:
            p += ":addrs=" + ",".join(str(a) for a in h.addrs)
        return p
    if section == "usdts":
        return f"usdt:{h.path}:{h.provider}/{h.name}"
    return ""


def _has_action(hook: object, names: tuple[str, ...]) -> bool:
    return any(a.action.lower() in {n.lower() for n in names} for sel in getattr(hook, "selectors", ())
               for a in (*sel.match_actions, *sel.match_return_actions))


def _is_ftrace_list(policy: Policy, kp: KProbeSpec) -> bool:
    lst = policy.spec.list_named(kp.call[5:]) if kp.call.startswith("list:") else None
    return lst is not None and lst.type == "generated_ftrace"


def _place_call(policy: Policy, kp: KProbeSpec, section: str, i: int, call: str, facts: KernelFacts,
                sub: bool, kfunc: bool = False) -> list[Placement]:
    override = _has_action(kp, ("Override",))
    sc = None if kfunc else parse_syscall(call, kp.syscall)  # a generated_ftrace list names kernel functions
    if sc is not None:
        if not override:
            return [place_syscall(kp, section, i, call, sc, facts)]
        # Override needs a hook that can refuse the operation before it happens
        pl = place_syscall_on_lsm(kp, section, i, sc, facts, call)
        if pl is not None and pl.ok:
            return [pl]
        lsm_reason = pl.reason if pl is not None else "no LSM hook guards it"
        if policy.spec.option("vigil-enforce-fallback") == "sigkill":
            pl = place_syscall(kp, section, i, call, sc, facts)
            pl.notes.append(f"Override degraded to Sigkill after the fact (option vigil-enforce-fallback): "
                            f"{lsm_reason}")
            pl.attach["degraded"] = True
            return [pl]
        return [place_syscall_on_host(kp, section, i, sc, facts, lsm_reason, call)]
    pl = place_kernel_function(kp, section, i, call, facts, override)
    if pl.ok or all(b.cause in ("vigil", "policy") for b in pl.blockers):
        return [pl]
    return _maybe_substitute(pl, kp, section, i, call, facts, sub, override)


def _place_lsm(lh: LsmHookSpec, i: int, facts: KernelFacts, sub: bool) -> list[Placement]:
    from .placement import plan_arg, size_arg_slots

    pl = Placement("lsmhooks", i, lh.loc, lh.hook, event_kind="process_lsm")
    ok, why = facts.has("lsm")
    if not ok:
        pl.block(lh.loc, f"BPF LSM hooks are unavailable on this kernel: {why}", "kernel")
    if lh.hook and facts.has_function(f"bpf_lsm_{lh.hook}") is False:
        pl.block(lh.at("hook"), f"this kernel has no LSM hook {lh.hook}", "target")
    pl.mechanism, pl.entry_prog = "lsm", "vigil_lsm"
    pl.attach = {"func": lh.hook}
    if _has_action(lh, ("Override",)):
        pl.override = f"BPF LSM hook {lh.hook}"
    params = facts.func_params(f"bpf_lsm_{lh.hook}")
    for slot, a in enumerate(lh.args):
        if a.index > 4:
            pl.block(a.at("index"), f"LSM hook arguments 0..4 can be read; index {a.index} is beyond", "vigil")
            continue
        ctype = params[a.index][1] if params and a.index < len(params) else None
        plan = plan_arg(pl, a, slot, L.SRC_RAW, a.index, user=False, facts=facts, ctype=ctype,
                        what=f"argument {a.index} of LSM hook {lh.hook}")
        if plan is not None:
            pl.args.append(plan)
    size_arg_slots(pl)
    if pl.ok or all(b.cause in ("vigil", "policy") for b in pl.blockers):
        return [pl]
    return _maybe_substitute(pl, lh, "lsmhooks", i, f"lsm:{lh.hook}", facts, sub,
                             _has_action(lh, ("Override",)))


def _maybe_substitute(native: Placement, hook: KProbeSpec | LsmHookSpec, section: str, i: int, target: str,
                      facts: KernelFacts, sub: bool, override: bool) -> list[Placement]:
    """The native placement cannot run: the stand-in, if one exists and the user opted in;
    else the native placement, saying what the stand-in would be."""
    cands: list[Placement] = []
    if override:
        e = standins.enforce_placement(hook, section, i, target, facts)
        if e is not None:
            cands = [e]
    else:
        # the first stand-in that can run here (a renamed function before a tracepoint)
        for s in standins.candidates(target):
            cands = standins.place(hook, section, i, target, facts, s)
            if all(c.ok for c in cands):
                break
    if not cands:
        if override and standins.lookup(target) is not None:
            native.notes.append(f"a stand-in observes {target} ({standins.describe(target)}) but cannot refuse it")
        return [native]
    if sub:
        return cands
    why = "; ".join(sorted({b.message for c in cands for b in c.blockers}))
    where = ", ".join(sorted({c.substitute for c in cands}))
    msg = (f"stand-in available: {where}" + (f" (but it cannot run: {why})" if why else "")
           + f" - opt in with the policy option `{standins.OPTION}: \"true\"` or `vigil agent --hook-substitution`")
    native.block(native.loc, msg, "option")
    return [native]


def _expand_call(policy: Policy, kp: KProbeSpec, facts: KernelFacts, errs: _Errors) -> list[str]:
    if not kp.call.startswith("list:"):
        return [kp.call]
    lst = policy.spec.list_named(kp.call[5:])
    if lst is None:
        errs.error(kp.at("call"), f"no list named {kp.call[5:]!r} in spec.lists", "policy")
        return []
    if lst.type == "generated_ftrace":
        if facts.ideal_kernel:
            return ["vigil_ideal_ftrace_function"]
        if facts.kprobe_functions is None:
            errs.error(lst.at("type"), "a generated_ftrace list is made from the kernel's traceable functions "
                       "(available_filter_functions), which this kernel does not list (no ftrace, or tracefs "
                       "unreadable)", "kernel")
            return []
        try:
            pat = re.compile(lst.pattern)
        except re.error:
            return []
        names = sorted(n for n in facts.kprobe_functions if pat.search(n))
        if not names:
            errs.error(lst.at("pattern"), f"pattern {lst.pattern!r} matches no function of this kernel", "target")
        return names
    if lst.type == "generated_syscalls":
        return [f"sys_{n}" for n in sorted(SYSCALL_NUMBERS)]
    return [v if v.startswith(("sys_", "__x64_sys_", "__ia32_", "__arm64_sys_")) else f"sys_{v}" for v in lst.values]


# ------------------------------------------------------------------ the compiler

def compile_policy(policy: Policy, facts: KernelFacts, next_hook_id: Callable[[], int], *,
                   follow_bit: Callable[[str, tuple[str, ...]], int] | None = None,
                   substitute: bool = False, workloads: bool = False) -> CompiledPolicy:
    """Compile every hook; raises PolicyErrors (nothing partial) if any part cannot run here,
    with every reason.

    `workloads`: the agent knows pods (--enable-k8s-api), so a policy may be scoped to pods and
    containers (the scope itself is kept in the kernel by vigil.k8s.policyfilter)."""
    cp, errs = compile_report(policy, facts, next_hook_id, follow_bit=follow_bit, substitute=substitute,
                              workloads=workloads)
    if errs.errors:
        raise PolicyErrors(errs.errors, errs.warnings)
    return cp


def compile_report(policy: Policy, facts: KernelFacts, next_hook_id: Callable[[], int], *,
                   follow_bit: Callable[[str, tuple[str, ...]], int] | None = None,
                   substitute: bool = False, workloads: bool = False) -> tuple[CompiledPolicy, _Errors]:
    """The compile, with its diagnostics instead of an exception (explain shows them all)."""
    errs = _Errors()
    spec = policy.spec
    monitor = policy.mode == "monitor"
    if not workloads:
        for field_name, attr in (("podSelector", "pod_selector"), ("containerSelector", "container_selector")):
            sel = getattr(spec, attr)
            if sel is not None and not sel.empty:
                errs.error(spec.at(field_name), f"{field_name} needs Kubernetes pod information, which this "
                           "agent does not have (run it with --enable-k8s-api)", "option")
        if policy.namespaced:
            errs.error(policy.at("kind"), f"a TracingPolicyNamespaced applies to the pods of namespace "
                       f"{policy.namespace or '(none)'}, which this agent does not know (run it with "
                       "--enable-k8s-api)", "option")
    _check_templates(policy, errs)
    for _section, hook in policy.spec.hooks():
        if _section not in ("uprobes", "kprobes", "fentries") and getattr(hook, "data", ()):  # never read
            errs.error(hook.at("data"), "data is not supported by Vigil yet (its values, from pt_regs or "  # type: ignore[attr-defined]
                       "current_task, would be missing from the events)", "vigil")
    placements = plan_policy(policy, facts, substitute=substitute, errs=errs)
    enforcers = _place_enforcers(policy, facts, errs)
    hooks: list[CompiledHook] = []
    for pl, hook in placements:
        for b in pl.blockers:
            errs.error(b.loc, f"{pl.section}[{pl.index}] ({pl.target}): {b.message}", b.cause)
        for loc, said in pl.warnings:
            errs.warn(loc, f"{pl.section}[{pl.index}] ({pl.target}): {said}")
        if pl.ok and pl.skipped:  # left out on purpose (binaryDigests, callNotFound with ignore): said, not an error
            errs.warn(pl.loc, f"{pl.section}[{pl.index}] ({pl.target}): not attached: {pl.skipped}")
            continue
        ch = _compile_hook(policy, pl, hook, next_hook_id() if pl.ok else 0, monitor, facts, errs, follow_bit)
        if pl.ok:
            hooks.append(ch)
    for pl in enforcers:
        for b in pl.blockers:
            errs.error(b.loc, f"enforcers ({pl.target}): {b.message}", b.cause)
    cp = CompiledPolicy(policy, hooks, errs.warnings, policy.mode, [p for p, _ in placements], enforcers)
    return cp, errs


def unsupported(policy: Policy) -> list[PolicyValidationError]:
    """What of `policy` Vigil cannot do on any kernel (and what only compiling finds wrong):
    the compile against a kernel that has every feature and every name."""
    import itertools

    ids = itertools.count(1)
    _cp, errs = compile_report(policy, KernelFacts.ideal(), lambda: next(ids),
                               follow_bit=lambda op, values: 0)
    # "option" findings depend on how the agent runs (e.g. with Kubernetes), not on Vigil
    return [e for e, c in zip(errs.errors, errs.causes) if c != "option"]


def _check_templates(policy: Policy, errs: _Errors) -> None:
    """Values like ${PODCIDR} were meant to be filled in before the policy was applied."""
    for _section, hook in policy.spec.hooks():
        for sel in getattr(hook, "selectors", ()):
            for field_name in ("match_args", "match_data", "match_return_args"):
                for e in getattr(sel, field_name):
                    for k, v in enumerate(e.values):
                        if _TEMPLATE.search(v):
                            errs.error(e.at(f"values[{k}]"), f'"{v}" looks like an unexpanded template: '
                                       "substitute it before applying the policy", "policy")


def _compile_hook(policy: Policy, pl: Placement, hook: object, hook_id: int, monitor: bool, facts: KernelFacts,
                  errs: _Errors, follow_bit: Callable[[str, tuple[str, ...]], int] | None = None) -> CompiledHook:
    cfg = L.Hook()
    cfg.hook_id = hook_id
    cfg.flags = (L.HOOK_RETURN if pl.return_prog or pl.ret_raw else 0) | (L.HOOK_MONITOR if monitor else 0)
    cfg.ret_raw = pl.ret_raw
    if pl.attach.get("ret_errno"):  # a stand-in syscall's success is the LSM hook's 0
        cfg.flags |= L.HOOK_RET_ERRNO
    if pl.ret is not None and pl.ret.vtype in (L.T["int"], L.T["uint"]):  # the return register's low bits
        cfg.ret_arg.size = INT_WIDTH.get(pl.ret.policy_type, 4)
        cfg.ret_arg.is_signed = int(pl.ret.vtype == L.T["int"])
    cfg.nargs = len(pl.args)
    ret_action = getattr(hook, "return_arg_action", "")
    placed = not any(b.cause in ("kernel", "target", "option") for b in pl.blockers)
    pl.attach.setdefault("placed", placed)
    if ret_action in ("TrackSock", "UntrackSock") and placed:
        if pl.mechanism not in ("kprobe", "fentry") or not pl.return_prog:
            errs.error(hook.at("returnArgAction"), "returnArgAction TrackSock/UntrackSock needs a kernel function "  # type: ignore[attr-defined]
                       "hook with return: true (a function returning a sock)", "policy")
        else:
            cfg.flags |= L.HOOK_RET_TRACKSOCK if ret_action == "TrackSock" else L.HOOK_RET_UNTRACKSOCK
    for k, g in enumerate(pl.guards[:L.MAX_GUARDS]):
        cfg.guards[k].idx, cfg.guards[k].op, cfg.guards[k].val = g[0], g[1], g[2] & ((1 << 64) - 1)
    cfg.nguards = min(len(pl.guards), L.MAX_GUARDS)
    for p in pl.args:
        p.fill(cfg.args[p.slot])
    ch = CompiledHook(policy.name, hook_id, pl, cfg, message=getattr(hook, "message", ""),
                      tags=tuple(getattr(hook, "tags", ())), selectors=tuple(getattr(hook, "selectors", ())),
                      lists={ls.name: ls for ls in policy.spec.lists})
    if pl.substitute:
        ch.tags = (*ch.tags, f"vigil:stand-in={pl.substitute}")
    cfg.nselectors = len(ch.selectors)
    if pl.mechanism in ("fanotify", "cgroup_sock_addr"):
        from .hostdeny_check import check_host_selectors

        for loc, msg in check_host_selectors(pl, ch.selectors):
            errs.error(loc, msg, "kernel")
    for si, sel in enumerate(ch.selectors[:L.MAX_SELECTORS]):
        _compile_selector(ch, hook, pl, si, sel, cfg.sel[si], facts, errs, follow_bit)
    return ch


def str_key_size(keys: list[bytes]) -> int:
    """Bytes of a `str_map` key that tell the hook's exact strings apart: the map id and the
    longest value with its NUL (the rest of every key is zeros), in whole words."""
    longest = max((len(k[4:].rstrip(b"\0")) for k in keys), default=0)
    return min(4 + (longest + 1 + 7) // 8 * 8, 4 + L.STR_KEY)


def entry_prefilter(ch: CompiledHook) -> dict[str, int | bytes]:
    """Rodata of the syscall entry's pre-filter (`pre_arg` in bpf/generic.bpf.c), from the final
    config (a workload filter is set after compiling): when every selector holds an Equal on one
    user-string syscall argument, a hit whose string has none of those lengths is filtered in the
    entry, before the hook's maps are touched (reading no more of it than the longest of those
    lengths and two bytes, in whole words, pre_read); when all those Equals name one value (pre_val), the
    entry compares the string with it too, and the Equals hold without a str_map lookup. Empty when
    that does not hold: guards and workload filters come first in the kernel, and a string read
    shorter than STR_FAST would be cut."""
    cfg, entry = ch.config, ch.placement.entry_prog
    if not re.fullmatch(r"vigil_sys_enter\d", entry) or not cfg.nselectors or cfg.nguards or cfg.filter_id:
        return {}
    arity = int(entry[-1])  # its program reads no further than the syscall's record
    sels = [cfg.sel[i] for i in range(min(cfg.nselectors, L.MAX_SELECTORS))]
    for slot in range(min(cfg.nargs, L.MAX_ARGS)):
        a = cfg.args[slot]
        if a.type != L.T["string"] or a.src != L.SRC_SYSCALL or a.nsteps or a.off >= arity \
                or 0 < a.max_len < L.STR_FAST:
            continue
        mask, map_ids = 0, set()
        for s in sels:
            equal = [f for f in s.args[:min(s.nfilters, L.MAX_MATCH_ARGS)]
                     if f.op == L.OP["Equal"] and f.slot == slot and f.flags & L.FF_LENMASK]
            if not equal:
                break  # this selector may match any length
            m = (1 << 256) - 1
            for f in equal:  # a selector's filters all hold
                m &= sum((v & 0xFFFFFFFFFFFFFFFF) << (64 * w) for w, v in enumerate(f.lo[:4]))
                map_ids.add(f.map_id)
            mask |= m
        else:
            # the read: the longest length and its NUL, and one byte more, which a longer string
            # fills (the helper's NUL): cut there, a string is longer than every value. Rounded
            # up to a whole word: the helper copies by the word and a size's bytes past the last
            # whole one byte by byte, a user access each (~4 ns a hit for an 18-byte value's
            # read of 20); a string the longer read takes whole has a length no value has.
            pre: dict[str, int | bytes] = {"pre_arg": a.off + 1, "pre_slot": slot,
                                           "pre_lenmask": mask.to_bytes(32, "little"),
                                           "pre_read": min((mask.bit_length() + 1 + 7) // 8 * 8, L.STR_FAST)}
            # one value in all of them: the entry compares the string with it (pre_val, and its
            # read length pre_val_r), and every Equal on the argument holds exactly when it is equal
            values = {k[4:].rstrip(b"\0") for k in ch.str_keys if struct.unpack_from("<I", k)[0] in map_ids}
            if len(values) == 1 and len(v := values.pop()) + 1 < L.STR_FAST:
                pre.update(pre_val=v.ljust(L.STR_FAST, b"\0"), pre_val_r=len(v) + 1)
            return pre
    return {}


def _arg_for(pl: Placement, hook: object, e: ArgSelector, errs: _Errors) -> ArgPlan | None:
    spec_args = getattr(hook, "args", ())
    lacking = pl.attach.get("lacking", ())
    if e.args:
        if len(e.args) > 1:
            errs.error(e.at("args"), "matchArgs with several `args` (CapabilitiesGained, CelExpr) is not supported "
                       "by Vigil", "vigil")
            return None
        pos = e.args[0]
        if pos >= len(spec_args):
            errs.error(e.at("args"), f"args[{pos}] does not exist (the hook captures {len(spec_args)} arguments)",
                       "policy")
            return None
        index = spec_args[pos].index
    else:
        index = e.index
        if isinstance(hook, TracepointSpec) and not any(a.index == index for a in spec_args) \
                and index < len(spec_args):
            index = spec_args[index].index  # tracepoint selectors may name the position
    if index in lacking:
        errs.error(e.at("index"), f"argument {index} is filtered here, but the stand-in {pl.substitute} does not "
                   "carry it", "kernel")
        return None
    for p in pl.args:
        if p.index == index and not p.data:
            return p
    if any(a.index == index for a in spec_args):
        return None  # the argument could not be planned: that is reported already
    errs.error(e.at("index"), f"index {e.index} is not one of the hook's args (capture it in `args` first)",
               "policy")
    return None


def _data_for(pl: Placement, hook: object, e: ArgSelector) -> ArgPlan | None:
    """The plan of the `data` entry a matchData entry names: `index` (or its one `args`
    position) is a position in the hook's data list (validation checked it), whose slot follows
    the args'. None when that entry could not be planned (its reason is reported already)."""
    pos = e.args[0] if e.args else e.index
    return next((p for p in pl.args if p.data and p.data_pos == pos), None)


def _str_value(v: str) -> bytes:
    return v.encode("utf-8", "surrogateescape")


def _compile_filter(ch: CompiledHook, f: L.Filter, e: ArgSelector, plan: ArgPlan | None, map_id: int,
                    errs: _Errors, *, is_return: bool = False) -> None:
    """One matchArgs entry on argument `plan`, or (is_return) one matchReturnArgs entry on the
    return value (`plan`: the returnArg's plan, None when the hook declares none)."""
    op = e.operator
    vtype = plan.vtype if plan is not None else L.T["long"]
    if op in ("SubString", "SubStringIgnCase", "CelExpr", "CapabilitiesGained"):
        errs.error(e.at("operator"), f"operator {op} is not supported by Vigil", "vigil")
        return
    if op in ("FileType", "NotFileType"):
        if vtype not in (L.T["file"], L.T["path"], L.T["fd"], L.T["linux_binprm"], L.T["kiocb"], L.T["dentry"],
                         L.T["dentry_path"]):
            errs.error(e.at("operator"), f"{op} applies to file and path arguments", "policy")
            return
        f.op, f.map_id = L.OP[op], map_id
        vals = sorted({S_IFMT[v] for v in e.values if v in S_IFMT})
        if len(vals) > L.MAX_VALUES:
            errs.error(e.at("values"), f"at most {L.MAX_VALUES} file types", "vigil")
            return
        f.nvals = len(vals)
        for k, v in enumerate(vals):
            f.lo[k] = f.hi[k] = v
        return
    if op not in L.OP:
        errs.error(e.at("operator"), f'operator "{op}" is not supported by Vigil', "vigil")
        return
    if vtype == L.T["const_buf"]:
        errs.error(e.at("index"), "matchArgs on an array field (const_buf) is not supported by Vigil", "vigil")
        return
    f.op, f.map_id = L.OP[op], map_id
    loc = e.at("values")
    if vtype in STRING_TYPES and not is_return:
        if op not in STRING_OPS:
            errs.error(e.at("operator"), f'operator "{op}" does not apply to string-like arguments', "policy")
            return
        lengths = 0
        for k, v in enumerate(e.values):
            b = _str_value(v)
            if op in ("Equal", "NotEqual"):
                if len(b) >= L.STR_KEY:
                    errs.error(e.at(f"values[{k}]"), f"string values are compared in the kernel up to "
                               f"{L.STR_KEY - 1} bytes; this one has {len(b)} (Vigil's limit)", "vigil")
                    continue
                ch.str_keys.append(struct.pack("<I", map_id) + b.ljust(L.STR_KEY, b"\0"))
                lengths |= 1 << len(b)
            else:
                if len(b) > L.LPM_STR:
                    errs.error(e.at(f"values[{k}]"), f"prefix/postfix values are limited to {L.LPM_STR} bytes "
                               f"in the kernel; this one has {len(b)} (Vigil's limit)", "vigil")
                    continue
                if op in ("Postfix", "NotPostfix"):
                    b = b[::-1]
                key = struct.pack("<II", 32 + 8 * len(b), map_id) + b.ljust(L.LPM_STR, b"\0")
                (ch.postfix_keys if op in ("Postfix", "NotPostfix") else ch.prefix_keys).append(key)
        if op in ("Equal", "NotEqual"):
            # the kernel skips the map lookup for a string of no value's length
            f.flags |= L.FF_LENMASK
            for w in range(4):
                f.lo[w] = _s64((lengths >> (64 * w)) & 0xFFFFFFFFFFFFFFFF)
        return
    if vtype in SOCK_TYPES and not is_return:
        if op not in SOCK_OPS:
            errs.error(e.at("operator"), f'operator "{op}" does not apply to socket arguments', "policy")
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
            errs.error(loc, str(ex), "policy")
            return
        _set_values(ch, f, ranges, e, errs, map_id)
        return
    if op not in INT_OPS:
        if is_return:
            errs.error(e.at("operator"), f"matchReturnArgs {op}: Vigil reads return values as integers "
                       f"(a {op} filter on a returned string or socket is not supported by Vigil)", "vigil")
        else:
            errs.error(e.at("operator"), f'operator "{op}" does not apply to integer arguments', "policy")
        return
    try:
        if op in ("InMap", "NotInMap"):
            n = 0
            for v in e.values:
                if v.startswith("list:"):
                    for num in list_syscall_numbers(ch.lists, v[5:]):
                        ch.val_keys.append(struct.pack("<IIq", map_id, 0, num))
                    continue
                lo, hi = parse_int_or_range(v)
                for x in range(lo, hi + 1):
                    n += 1
                    if n > MAX_MAP_VALUES:
                        raise ValueError(f"InMap holds at most {MAX_MAP_VALUES} values (Vigil's limit)")
                    ch.val_keys.append(struct.pack("<IIq", map_id, 0, _s64(x)))
            return
        if op in ("InRange", "NotInRange"):
            ranges = [parse_int_or_range(v) for v in e.values]
        else:
            ranges = [(parse_int(v), parse_int(v)) for v in e.values]
    except ValueError as ex:
        errs.error(loc, str(ex), "policy")
        return
    if op in ("Mask", "GT", "LT", "GreaterThan", "LessThan") and len(ranges) > L.MAX_VALUES:
        errs.error(e.at("values"), f"at most {L.MAX_VALUES} values for {op} (Vigil's limit)", "vigil")
        return
    if vtype in UNSIGNED_VTYPES:
        f.flags |= L.FF_UNSIGNED  # 2^63 and above are above 2^63 - 1, not negative
    _set_values(ch, f, ranges, e, errs, map_id)


def _set_values(ch: CompiledHook, f: L.Filter, ranges: list[tuple[int, int]], e: ArgSelector, errs: _Errors,
                map_id: int) -> None:
    if len(ranges) > L.MAX_VALUES:
        # a long list: every value (every port of a range) becomes a key of the value map
        total = sum(hi - lo + 1 for lo, hi in ranges)
        if total > MAX_MAP_VALUES:
            errs.error(e.at("values"), f"{total} values (ranges expanded) for {e.operator}; at most "
                       f"{MAX_MAP_VALUES} (Vigil's limit)", "vigil")
            return
        f.flags |= L.FF_MAP
        seen: set[int] = set()
        for lo, hi in ranges:
            for x in range(lo, hi + 1):
                if x not in seen:
                    seen.add(x)
                    ch.val_keys.append(struct.pack("<IIq", map_id, 0, _s64(x)))
        return
    f.nvals = len(ranges)
    for k, (lo, hi) in enumerate(ranges):
        f.lo[k] = _s64(lo)
        f.hi[k] = _s64(hi)


def _s64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _compile_selector(ch: CompiledHook, hook: object, pl: Placement, si: int, sel: Selector, s: L.Selector,
                      facts: KernelFacts, errs: _Errors,
                      follow_bit: Callable[[str, tuple[str, ...]], int] | None = None) -> None:
    for name, yaml in (("match_parent_binaries", "matchParentBinaries"), ("match_workloads", "matchWorkloads")):
        if getattr(sel, name):
            errs.error(sel.at(yaml), f"{yaml} is not supported by Vigil yet", "vigil")
    data_ok = isinstance(hook, (UProbeSpec, KProbeSpec))  # where `data` is read (the other hooks refuse it)
    if sel.match_data and not data_ok:
        errs.error(sel.at("matchData"), "matchData is not supported by Vigil yet", "vigil")
    # matchData entries filter the data entries' slots (after the args'), as Tetragon bases them
    entries = [*((e, False) for e in sel.match_args), *((e, True) for e in (sel.match_data if data_ok else ()))]
    if len(entries) > L.MAX_MATCH_ARGS:
        errs.error(sel.at("matchData" if len(sel.match_args) <= L.MAX_MATCH_ARGS else "matchArgs"),
                   f"at most {L.MAX_MATCH_ARGS} matchArgs and matchData entries per selector", "policy")
    s.nfilters = min(len(entries), L.MAX_MATCH_ARGS)
    for j, (e, is_data) in enumerate(entries[:L.MAX_MATCH_ARGS]):
        plan = _data_for(pl, hook, e) if is_data else _arg_for(pl, hook, e, errs)
        if plan is None:
            continue
        f = s.args[j]
        f.slot = plan.slot
        _compile_filter(ch, f, e, plan, (si << 4) | j, errs)
    if sel.match_return_args:
        if not pl.return_prog and not pl.ret_raw:
            errs.error(sel.at("matchReturnArgs"), "matchReturnArgs needs `return: true` on the hook", "policy")
        elif len(sel.match_return_args) > L.MAX_RET_FILTERS:
            errs.error(sel.at("matchReturnArgs"), f"at most {L.MAX_RET_FILTERS} matchReturnArgs entries per "
                       "selector (Vigil's limit)", "vigil")
        else:
            s.present |= L.SEL_RETARGS
            s.nret = len(sel.match_return_args)
            for k, e in enumerate(sel.match_return_args):
                _compile_filter(ch, s.ret[k], e, pl.ret, (si << 4) | (8 + k), errs, is_return=True)
    if sel.match_pids:
        if len(sel.match_pids) > L.MAX_PID_FILTERS:
            errs.error(sel.at("matchPIDs"), f"at most {L.MAX_PID_FILTERS} matchPIDs entries per selector "
                       "(Vigil's limit)", "vigil")
        s.present |= L.SEL_PIDS
        s.npids = min(len(sel.match_pids), L.MAX_PID_FILTERS)
        for k, mp in enumerate(sel.match_pids[:L.MAX_PID_FILTERS]):
            if len(mp.values) > L.MAX_PIDS:
                errs.error(mp.at("values"), f"at most {L.MAX_PIDS} pids per matchPIDs entry (Vigil's limit)", "vigil")
                continue
            pf = s.pids[k]
            pf.op = 1 if mp.operator == "In" else 2
            pf.n = len(mp.values)
            pf.nspid = int(mp.is_namespace_pid)
            pf.follow = int(mp.follow_forks)
            for v_i, v in enumerate(mp.values):
                pf.pids[v_i] = v
    if sel.match_binaries:
        _compile_binaries(ch, sel, si, s, errs, follow_bit)
    if sel.match_namespaces:
        s.present |= L.SEL_NS
        s.nns = len(sel.match_namespaces)
        for k, mn in enumerate(sel.match_namespaces[:L.MAX_NS]):
            nf = s.ns[k]
            nf.ns = NS_INDEX[mn.namespace]
            nf.op = 1 if mn.operator == "In" else 2
            nf.nvals = len(mn.values)
            for vi, v in enumerate(mn.values[:L.MAX_NS_VALUES]):
                nf.inum[vi] = facts.host_ns[nf.ns] if v == "host_ns" else parse_int(v)
    if sel.match_namespace_changes:
        mc = sel.match_namespace_changes[0]
        s.present |= L.SEL_NSCHG
        s.nschg_op = 1 if mc.operator == "In" else 2
        for v in mc.values:
            s.nschg_mask |= 1 << NS_INDEX[v]
    for attr, bit, yaml, arr, count in (("match_capabilities", L.SEL_CAPS, "matchCapabilities", s.caps, "ncaps"),
                                        ("match_capability_changes", L.SEL_CAPCHG, "matchCapabilityChanges",
                                         s.capchg, "ncapchg")):
        entries = getattr(sel, attr)
        if not entries:
            continue
        if len(entries) > L.MAX_CAP_FILTERS:
            errs.error(sel.at(yaml), f"at most {L.MAX_CAP_FILTERS} {yaml} entries per selector (Vigil's limit)",
                       "vigil")
            continue
        s.present |= bit
        setattr(s, count, len(entries))
        for k, mc in enumerate(entries):
            mask = 0
            for v in mc.values:
                mask |= 1 << parse_capability(v)
            cf = arr[k]
            cf.op, cf.type, cf.mask = (1 if mc.operator == "In" else 2), CAP_TYPE[mc.type], mask
            if mc.is_namespace_capability:
                cf.ns = facts.host_ns[NS_INDEX["User"]]
                if not cf.ns and not facts.ideal_kernel:
                    errs.error(mc.at("isNamespaceCapability"), "isNamespaceCapability needs the host's user "
                               "namespace, which could not be read", "kernel")
    s.nactions = _compile_actions(ch, pl, hook, sel.match_actions, s.actions, errs, facts)
    if sel.match_return_actions and not pl.return_prog and not pl.ret_raw:
        errs.error(sel.at("matchReturnActions"), "matchReturnActions needs `return: true` on the hook", "policy")
    s.nret_actions = _compile_actions(ch, pl, hook, sel.match_return_actions, s.ret_actions, errs, facts,
                                      returning=True)


def _compile_binaries(ch: CompiledHook, sel: Selector, si: int, s: L.Selector, errs: _Errors,
                      follow_bit: Callable[[str, tuple[str, ...]], int] | None) -> None:
    mb = sel.match_binaries[0]
    if mb.follow_children:
        if mb.operator not in ("In", "Prefix", "Postfix"):
            errs.error(mb.at("operator"), "followChildren works with In, Prefix and Postfix", "vigil")
        elif follow_bit is not None:  # offline compiles (explain) allocate the bit when the policy loads
            try:
                bit = follow_bit(mb.operator, tuple(mb.values))
                s.bin_follow = bit + 1
                ch.follow_bits.append(bit)
            except ValueError as ex:
                errs.error(mb.at("followChildren"), str(ex), "vigil")
    ops = {"In": 1, "NotIn": 2, "Prefix": 3, "NotPrefix": 4, "Postfix": 5, "NotPostfix": 6}
    s.present |= L.SEL_BINS
    s.bin_op = ops[mb.operator]
    s.bin_map_id = (si << 4) | 6
    for k, v in enumerate(mb.values):
        b = _str_value(v)
        if s.bin_op <= 2:
            if len(b) >= L.STR_KEY:
                errs.error(mb.at(f"values[{k}]"), f"binary paths are compared up to {L.STR_KEY - 1} bytes (Vigil's "
                           "limit)", "vigil")
                continue
            ch.str_keys.append(struct.pack("<I", s.bin_map_id) + b.ljust(L.STR_KEY, b"\0"))
        else:
            if len(b) > L.LPM_STR:
                errs.error(mb.at(f"values[{k}]"), f"prefix/postfix values are limited to {L.LPM_STR} bytes "
                           "(Vigil's limit)", "vigil")
                continue
            if s.bin_op >= 5:
                b = b[::-1]
            key = struct.pack("<II", 32 + 8 * len(b), s.bin_map_id) + b.ljust(L.LPM_STR, b"\0")
            (ch.postfix_keys if s.bin_op >= 5 else ch.prefix_keys).append(key)


def _compile_actions(ch: CompiledHook, pl: Placement, hook: object, actions: tuple[ActionSelector, ...],
                     out: object, errs: _Errors, facts: KernelFacts, returning: bool = False) -> int:
    """returning: the actions of matchReturnActions, which run once the function has returned."""
    for k, a in enumerate(actions[:L.MAX_ACTIONS]):
        cfg = out[k]  # type: ignore[index]
        name = a.action
        canon = next((n for n in L.ACT if n.lower() == name.lower()), None)
        mech = pl.mechanism
        if not pl.attach.get("placed", True) and canon in ("Override", "TrackSock", "UntrackSock", "Set"):
            continue  # where the hook runs is undecided: its blockers say why
        if canon == "Override":
            if pl.attach.get("degraded"):
                cfg.type = L.ACT["Sigkill"]
                continue
            if returning:
                # the function has returned: its result can no longer be changed (fmod_ret, the LSM
                # verdict and bpf_override_return act before it runs)
                errs.error(a.at("action"), f"Override in matchReturnActions cannot change what {pl.target} "
                           "returns: return actions run after it has returned; put Override in matchActions",
                           "policy")
                continue
            if mech in ("fanotify", "cgroup_sock_addr"):
                cfg.type, cfg.arg = L.ACT["Override"], a.arg_error
                continue
            if mech == "lsm" and not -limits.MAX_ERRNO <= a.arg_error <= 0:
                errs.error(a.at("argError"), f"argError {a.arg_error}: a BPF LSM hook can only return 0 or a "
                           f"negative errno (-1..-{limits.MAX_ERRNO})", "kernel")
                continue
            if mech in ("lsm", "fmod_ret") or pl.entry_prog == "vigil_kprobe_override":
                if a.arg_error == 0:
                    errs.error(a.at("argError"), "Override needs a non-zero argError (0 lets the operation "
                               "proceed)", "policy")
                    continue
                cfg.type, cfg.arg = L.ACT["Override"], a.arg_error
                continue
            errs.error(a.at("action"), f"Override changes a return value, which this hook cannot do where it runs "
                       f"({pl.where()}: {_no_override_why(pl)})", "kernel")
            continue
        if canon in ("TrackSock", "UntrackSock"):
            if mech not in ("kprobe", "fentry", "lsm", "fmod_ret", "raw_tracepoint"):
                errs.error(a.at("action"), f"{canon} needs kernel socket pointers; this hook runs on {mech}", "kernel")
                continue
            plan = next((p for p in pl.args if p.index == a.arg_sock), None)
            if plan is None or plan.vtype != L.T["sock"]:
                errs.error(a.at("argSock"), f"argSock {a.arg_sock} must name a captured argument of type sock",
                           "policy")
                continue
            cfg.type, cfg.arg = L.ACT[canon], plan.slot
            continue
        if canon == "Set":
            if mech != "usdt":
                errs.error(a.at("action"), "action Set is only supported on usdts", "policy")
                continue
            plan = next((p for p in pl.args if p.index == a.arg_index), None)
            if plan is None and not pl.args:
                errs.error(a.at("argIndex"), f"argIndex {a.arg_index} must name a captured USDT argument", "policy")
                continue
            if plan is not None and not plan.off2 and pl.attach.get("offset"):
                errs.error(a.at("argIndex"), f"USDT argument {a.arg_index} is not a memory operand: there is "
                           "nothing to write to", "policy")
                continue
            if plan is not None and plan.off2 > 1:  # base + index * scale: Tetragon's Set skips these
                errs.error(a.at("argIndex"), f"USDT argument {a.arg_index} is a base + index * scale memory "
                           "operand: Set writes only through a register (+ displacement) operand", "vigil")
                continue
            ok_w, why_w = facts.has("probe_write_user")
            if not ok_w:
                errs.error(a.at("action"), f"action Set writes the process's memory with bpf_probe_write_user, "
                           f"which this kernel refuses: {why_w}", "kernel")
                continue
            cfg.type, cfg.arg, cfg.arg2 = L.ACT["Set"], a.arg_value, plan.slot if plan else 0
            continue
        if canon == "NotifyEnforcer":
            cfg.type, cfg.arg, cfg.arg2 = L.ACT["NotifyEnforcer"], a.arg_error, a.arg_sig & 0xFF
            continue
        if canon in ("GetUrl", "DnsLookup"):
            cfg.type = L.ACT[canon]
            ch.actions.append((canon, a))
            continue
        if canon is None:
            if name in enums.DEPRECATED_ACTIONS:
                continue
            errs.error(a.at("action"), f'action "{name}" is not supported by Vigil', "vigil")
            continue
        cfg.type = L.ACT[canon]
        if canon == "Signal":
            cfg.arg = a.arg_sig
        if canon == "Post":
            if a.rate_limit:
                cfg.rate_ns = a.rate_limit_seconds * 1_000_000_000
            cfg.scope = L.SCOPE.get(a.rate_limit_scope, 0)
            cfg.flags = (L.AF_KSTACK if a.kernel_stack_trace else 0) | (L.AF_USTACK if a.user_stack_trace else 0)
            if a.ima_hash and pl.attach.get("placed", True) and pl.event_kind == "process_lsm":
                why = _ima_why(pl, facts)
                if why:
                    errs.error(a.at("imaHash"), f"imaHash: {why[1]}", why[0])
                else:
                    cfg.flags |= L.AF_IMA
                    ch.config.flags |= L.HOOK_IMA
    return min(len(actions), L.MAX_ACTIONS)


def _ima_why(pl: Placement, facts: KernelFacts) -> tuple[str, str] | None:
    """(cause, reason) when the file's IMA hash cannot be added to this hook's events."""
    if pl.mechanism != "lsm" or pl.substitute:
        return "kernel", f"the file's IMA hash is computed by a sleepable BPF LSM program; this hook runs on " \
                         f"{pl.where() if pl.mechanism else 'nothing here'}"
    ok, why = facts.has("ima_hash")
    if not ok:
        return "kernel", f"bpf_ima_file_hash is not usable here: {why}"
    params = facts.func_params(f"bpf_lsm_{pl.attach.get('func', '')}")
    first = params[0][1] if params else ("struct file *" if facts.ideal_kernel else "")
    if first == "struct linux_binprm *":
        pl.attach["ima_prog"] = "vigil_ima_bprm"
    elif first == "struct file *":
        pl.attach["ima_prog"] = "vigil_ima_file"
    else:
        return "vigil", f"Vigil hashes the file of LSM hooks whose first argument is a file or a linux_binprm, " \
                        f"not {first or 'unknown'}"
    return None


def _no_override_why(pl: Placement) -> str:
    if pl.substitute:
        return f"the stand-in {pl.substitute} observes {pl.target} and cannot refuse it"
    if pl.mechanism in ("tracepoint", "raw_tracepoint"):
        return "tracepoints cannot change a return value"
    if pl.mechanism == "uprobe":
        return "uprobe return values cannot be changed by Vigil"
    return "no fmod_ret, BPF LSM hook or bpf_override_return for it"


# ------------------------------------------------------------------ enforcers

def _place_enforcers(policy: Policy, facts: KernelFacts, errs: _Errors) -> list[Placement]:
    """spec.enforcers: the syscalls where NotifyEnforcer notes are acted on."""
    spec = policy.spec
    out: list[Placement] = []
    if not spec.enforcers:
        if any(a.action == "NotifyEnforcer" for _s, h in spec.hooks() for sel in getattr(h, "selectors", ())
               for a in (*sel.match_actions, *sel.match_return_actions)):
            pass  # validation reports the missing enforcer
        return out
    want_error = any(a.action == "NotifyEnforcer" and a.arg_error for _s, h in spec.hooks()
                     for sel in getattr(h, "selectors", ()) for a in (*sel.match_actions, *sel.match_return_actions))
    enf = spec.enforcers[0]
    calls: list[tuple[str, Loc]] = []
    for k, c in enumerate(enf.calls):
        if c.startswith("list:"):
            lst = spec.list_named(c[5:])
            if lst is None:
                continue
            if lst.type == "generated_syscalls":
                calls += [(f"sys_{n}", enf.at(f"calls[{k}]")) for n in sorted(SYSCALL_NUMBERS)]
            else:
                calls += [(v, lst.at("values")) for v in lst.values]
        else:
            calls.append((c, enf.at(f"calls[{k}]")))
    for call, loc in calls:
        sc = parse_syscall(call if call.startswith(("sys_", "__")) else f"sys_{call}", True)
        pl = Placement("enforcers", 0, loc, call, event_kind="")
        if sc is None or sc.nr is None:
            pl.block(loc, f"{call} is not a syscall", "policy")
            out.append(pl)
            continue
        func = sc.symbol
        pl.attach = {"func": func}
        ok_m, why_m = facts.has("fmod_ret")
        inj = facts.error_injectable(func)
        ok_o, why_o = facts.has("override_return")
        if ok_m and inj:
            pl.mechanism, pl.entry_prog = "fmod_ret", "vigil_enforcer_fmod_ret"
        elif ok_o and inj and facts.has("kprobe")[0]:
            pl.mechanism, pl.entry_prog = "kprobe", "vigil_enforcer_kprobe"
        elif not want_error and sc.abi == "x64":
            tp = TRACEPOINT_NAME.get(sc.name, sc.name)
            pl.mechanism, pl.entry_prog = "tracepoint", "vigil_enforcer_sys_exit"
            pl.attach = {"category": "syscalls", "name": f"sys_exit_{tp}", "func": func}
            pl.notes.append("signal-only enforcer at the syscall's exit")
        else:
            why = (f"fmod_ret: {why_m}" if not ok_m else f"{func} is not error-injectable on this kernel"
                   + (" (no error-injection list: CONFIG_FUNCTION_ERROR_INJECTION off)" if inj is None else ""))
            pl.block(loc, f"an enforcer that overrides {func}'s return value (NotifyEnforcer argError) needs "
                     f"fmod_ret or bpf_override_return on it; {why}; bpf_override_return: "
                     f"{why_o if not ok_o else 'not error-injectable'}", "kernel")
        out.append(pl)
    return out
