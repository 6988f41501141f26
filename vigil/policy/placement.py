"""Where each hook of a policy runs on a kernel, and how its arguments are read.

Pure: everything about the kernel comes from KernelFacts. Order of preference per hook kind
(from the facts, never the version): LSM > fentry > kprobe > tracepoint. Syscall kprobes
run on the syscall tracepoints (raw_syscalls for syscalls without one, and for 32-bit
syscalls). A hook that cannot run gets *every* blocker, each with its location and cause:

* kernel  - this kernel lacks a capability (no kprobes, no BPF LSM, ...);
* target  - the thing hooked is absent here (kernel function, tracepoint, binary, symbol);
* vigil   - Vigil does not implement this (never blamed on the kernel);
* policy  - the policy asks for something that cannot mean anything here.

The compiler refuses the policy with all of them; `explain` prints them all.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from vigil.kernel import policy_layout as L
from vigil.kernel.facts import KernelFacts

from . import enums
from .errors import Loc
from .model import KProbeArg, KProbeSpec, LsmHookSpec, TracepointSpec, UProbeSpec, UsdtSpec

INT_TYPES = {
    "int": "int", "int32": "int", "sint32": "int", "int16": "int", "sint16": "int", "int8": "int",
    "sint8": "int", "uint32": "uint", "uint16": "uint", "uint8": "uint", "int64": "long",
    "sint64": "long", "long": "long", "uint64": "size", "ulong": "size", "size_t": "size",
    "unsigned long": "size", "capability": "capability", "bpf_cmd": "bpf_cmd", "syscall64": "syscall64",
}
INT_WIDTH = {"int8": 1, "sint8": 1, "uint8": 1, "int16": 2, "sint16": 2, "uint16": 2}
# kernel pointer types -> reader (vtype name)
KERNEL_TYPES = {
    "file": "file", "path": "path", "sock": "sock", "socket": "socket", "cred": "cred",
    "linux_binprm": "linux_binprm", "skb": "skb", "net_device": "net_device", "dentry": "dentry",
    "kiocb": "kiocb", "iov_iter": "iov_iter", "bpf_attr": "bpf_attr", "bpf_prog": "bpf_prog",
    "bpf_map": "bpf_map", "perf_event": "perf_event", "module": "module", "load_info": "load_info",
    "user_namespace": "user_ns", "kernel_cap_t": "kernel_cap", "cap_inheritable": "kernel_cap",
    "cap_permitted": "kernel_cap", "cap_effective": "kernel_cap",
}
# policy types whose value is a struct Vigil reads through a pointer: the C type it expects
STRUCT_OF = {
    "file": "struct file", "path": "struct path", "sock": "struct sock", "socket": "struct socket",
    "cred": "struct cred", "linux_binprm": "struct linux_binprm", "skb": "struct sk_buff",
    "net_device": "struct net_device", "dentry": "struct dentry", "kiocb": "struct kiocb",
    "iov_iter": "struct iov_iter", "bpf_prog": "struct bpf_prog", "bpf_map": "struct bpf_map",
    "perf_event": "struct perf_event", "module": "struct module", "load_info": "struct load_info",
    "user_namespace": "struct user_namespace", "bpf_attr": "union bpf_attr",
}
CAUSES = ("kernel", "target", "vigil", "policy", "option")


@dataclass
class Blocker:
    loc: Loc
    message: str
    cause: str  # one of CAUSES

    def __str__(self) -> str:
        return self.message


@dataclass
class ArgPlan:
    slot: int
    policy_type: str
    vtype: int            # layout.T value
    src: int
    off: int
    size: int = 8
    is_signed: bool = False
    size_arg: int = 0     # 1-based slot holding the length
    return_copy: bool = False
    max_len: int = L.ARG_DATA - 1
    label: str = ""
    index: int = 0        # the policy's `index`
    render: str = ""      # JSON variant override ("string" for a path read at an LSM hook, ...)
    max_data: bool = False  # maxData: capture up to 327360 bytes (data records past the first 4 KiB)
    user: bool = False    # struct readers: the struct is in user memory
    steps: tuple[int, ...] = ()  # resolve: byte offsets (all but the last read a pointer)
    final_size: int = 0
    final_signed: bool = False
    konst: int = 0
    off2: int = 0
    note: str = ""        # where a stand-in takes this argument from
    data: bool = False    # a `data` entry (its value goes to the event's data list, not args)
    data_pos: int = -1    # a `data` entry's position in the hook's data list (matchData's index)

    def fill(self, a: L.Arg) -> None:
        a.type, a.src, a.size, a.is_signed = self.vtype, self.src, self.size & 0xFF, int(self.is_signed)
        a.off, a.size_arg = self.off & 0xFFFF, self.size_arg
        a.return_copy, a.max_len = int(self.return_copy), self.max_len
        a.max_data, a.user, a.off2, a.konst = int(self.max_data), int(self.user), self.off2, self.konst
        a.nsteps = len(self.steps)
        for k, s in enumerate(self.steps):
            a.steps[k] = s
        a.final_size, a.final_signed = self.final_size, int(self.final_signed)


@dataclass
class Placement:
    section: str
    index: int
    loc: Loc
    target: str                   # what the user asked for: sys_openat, sched/sched_process_exec, ...
    mechanism: str = ""           # tracepoint | raw_tracepoint | uprobe | kprobe | lsm | fentry | fmod_ret | ...
    attach: dict[str, Any] = field(default_factory=dict)
    entry_prog: str = ""
    return_prog: str = ""
    event_kind: str = ""          # process_kprobe | process_tracepoint | process_uprobe | process_lsm | ...
    args: list[ArgPlan] = field(default_factory=list)
    ret: ArgPlan | None = None
    blockers: list[Blocker] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[tuple[Loc, str]] = field(default_factory=list)  # said at their place; never refuse
    guards: list[tuple[int, int, int]] = field(default_factory=list)  # (raw index, G_* op, value)
    substitute: str = ""          # the stand-in this hook runs on (empty: the hook itself)
    ret_raw: int = 0              # the return value is raw argument ret_raw - 1 (stand-ins)
    override: str = ""            # how Override is enforced here (explain)
    # the hook as Tetragon's policy metrics name it (`hook` label): kprobe:<call>,
    # tracepoint:<subsystem>/<event>, lsm:<hook>, uprobe:<path>[:<symbols>], usdt:<path>:<provider>/<name>
    stats_hook: str = ""
    skipped: str = ""             # why this hook is left out without refusing the policy (not attached)
    skip_state: str = "digest_rejected"  # its HookState (ListTracingPolicies): digest_rejected | call_not_found

    @property
    def ok(self) -> bool:
        return not self.blockers

    @property
    def reason(self) -> str:
        return "; ".join(b.message for b in self.blockers)

    def block(self, loc: Loc, message: str, cause: str) -> None:
        assert cause in CAUSES, cause
        if not any(b.message == message and b.loc == loc for b in self.blockers):
            self.blockers.append(Blocker(loc, message, cause))

    @property
    def event_function(self) -> str:
        a = self.attach
        return a.get("event_func") or a.get("syscall") or a.get("func", self.target)

    def where(self) -> str:
        """Where the hook attaches, in one phrase."""
        a = self.attach
        if self.mechanism == "tracepoint":
            d = f"tracepoint:{a['category']}/{a['name']}"
            if a.get("exit_name") and self.return_prog:
                d += f" + tracepoint:{a['category']}/{a['exit_name']} (return value)"
        elif self.mechanism == "raw_tracepoint":
            d = f"raw_tracepoint:{a['name']}"
            if a.get("exit_name") and self.return_prog:
                d += f" + raw_tracepoint:{a['exit_name']} (return value)"
        elif self.mechanism == "uprobe":
            d = f"uprobe:{a['path']}:" + (f"{a['symbol']}+{a['offset']:#x}" if a.get("symbol") else f"{a['offset']:#x}")
            if self.return_prog:
                d += " + uretprobe"
        elif self.mechanism == "usdt":
            d = f"usdt:{a['path']}:{a['provider']}:{a['name']}+{a['offset']:#x}"
        elif self.mechanism == "kprobe":
            d = f"kprobe:{a['func']}" + (" + kretprobe" if self.return_prog else "")
        elif self.mechanism in ("lsm", "fentry", "fmod_ret"):
            d = f"{self.mechanism}:{a['func']}" + (" + fexit" if self.return_prog else "")
        else:
            d = f"{self.mechanism}:{a.get('func', '')}"
        return d

    def describe(self) -> str:
        if not self.ok:
            return f"not loaded: {self.reason}"
        if self.skipped:
            return f"not attached: {self.skipped}"
        d = self.where()
        if self.substitute:
            d += f" (stand-in for {self.target})"
        return d + "".join(f"; {n}" for n in self.notes)


def int_vtype(kind: str) -> int:
    return L.T[{"capability": "capability", "bpf_cmd": "bpf_cmd", "syscall64": "syscall64"}.get(kind, kind)]


def _ptr_target(ctype: str) -> str:
    return ctype[:-1].strip() if ctype.endswith("*") else ""


def plan_arg(pl: Placement, a: KProbeArg, slot: int, src: int, off: int, *, user: bool,
             facts: KernelFacts, ctype: str | None = None, what: str = "",
             user_btf: tuple[str, Loc] | None = None) -> ArgPlan | None:
    """Plan one argument whose raw value is a 64-bit word (syscall argument, register,
    raw tracepoint or function argument). `user`: the word comes from user space (syscall
    arguments), so kernel pointer types cannot apply. `ctype`: its C type when BTF says.
    `user_btf`: (btfPath, its location) of a uprobe: a user-space value that `resolve` follows
    in user memory by the struct `btfType` of that BTF file.
    Problems become blockers of `pl`; returns None then."""
    t = a.type
    plan = ArgPlan(slot, t, 0, src, off, label=a.label, index=a.index)
    if a.resolve or (a.btf_type and user_btf is None):  # (a uprobe's btfType alone: unused, as Tetragon's)
        if user and user_btf is None:
            pl.block(a.at("resolve" if a.resolve else "btfType"), f"resolve reads kernel structures; "
                     f"{what or 'this argument'} is a user-space value", "policy")
            return None
        start = (a.btf_type if a.btf_type.endswith("*") else a.btf_type + " *") if a.btf_type else ctype
        if a.btf_type_module:
            pl.block(a.at("btfTypeModule"), "btfTypeModule (types from module BTF) is not supported by "
                     "Vigil", "vigil")
            return None
        r: Any = None
        if user_btf is not None:
            btf_path, btf_loc = user_btf
            if not btf_path:
                pl.block(btf_loc, f'resolve "{a.resolve}" on a uprobe argument reads the binary\'s types from '
                         "btfPath, which is not set", "policy")
                return None
            if not a.btf_type:
                pl.block(a.loc.child("btfType"), f'resolve "{a.resolve}" on a uprobe argument needs btfType: the '
                         f"struct (of {btf_path}) the argument points to", "policy")
                return None
            r = facts.user_resolve(btf_path, a.btf_type.removeprefix("struct ").rstrip(" *"), a.resolve)
            if isinstance(r, str) and r.startswith("cannot read btfPath"):
                pl.block(btf_loc, r, "target")
                return None
            plan.user = True
        elif not a.resolve:
            ctype = start
        elif facts.ideal_kernel:
            ctype = None
        elif not start:
            pl.block(a.at("resolve"), f"resolve needs the argument's type from the kernel's BTF, which "
                     f"does not describe {what or 'this argument'} (set btfType)", "target")
            return None
        else:
            r = facts.resolve(start, a.resolve)
        if isinstance(r, str):
            pl.block(a.at("resolve"), f'resolve "{a.resolve}" from {a.btf_type if user_btf else start}: {r}',
                     "target")
            return None
        if r is not None:
            if len(r.steps) > L.MAX_STEPS:
                pl.block(a.at("resolve"), f'resolve "{a.resolve}" follows {len(r.steps)} pointers '
                         f"(Vigil follows at most {L.MAX_STEPS})", "vigil")
                return None
            plan.steps = tuple(s.offset for s in r.steps)
            if r.kind in ("int", "ptr", "enum"):
                plan.final_size = r.size if r.size in (1, 2, 4, 8) else 8
                plan.final_signed = r.signed
            ctype = r.ctype
            if r.kind in ("struct",):
                ctype = r.ctype + " *"  # its address is what a struct reader wants
    if t in INT_TYPES:
        kind = INT_TYPES[t]
        plan.vtype = int_vtype(kind)
        plan.is_signed = kind in ("int", "long")
    elif t in ("string", "filename"):
        plan.vtype = L.T["string" if user else "kstring"]
    elif t == "char_buf":
        plan.vtype = L.T["char_buf"]
        plan.size_arg = a.size_arg_index
        plan.return_copy = a.return_copy
    elif t == "char_iovec":
        plan.vtype = L.T["char_iovec"]
        plan.size_arg = a.size_arg_index
        plan.return_copy = a.return_copy
    elif t == "fd":
        plan.vtype = L.T["fd"]
    elif t == "sockaddr":
        plan.vtype = L.T["sockaddr" if user else "ksockaddr"]
    elif t == "nop":
        plan.vtype = 0
    elif t in KERNEL_TYPES:
        if user:
            pl.block(a.at("type"), f'argument type "{t}" is a kernel pointer; {what or "the argument"} is a '
                     "user-space value (use string, fd, sockaddr, char_buf, ...)", "policy")
            return None
        plan.vtype = L.T[KERNEL_TYPES[t]]
    elif t == "const_buf":
        pl.block(a.at("type"), 'argument type "const_buf" is not written in policies: it is derived from a '
                 "tracepoint's format (use auto), and Tetragon's loader refuses it too", "policy")
        return None
    elif t in ("auto", "syscall64", "data_loc"):
        pl.block(a.at("type"), f'argument type "{t}" is only for tracepoints', "policy")
        return None
    elif t == "sockaddr_un":
        pl.block(a.at("type"), 'argument type "sockaddr_un" is not supported by Vigil', "vigil")
        return None
    else:
        pl.block(a.at("type"), f'argument type "{t}" is not supported by Vigil', "vigil")
        return None
    if t in INT_WIDTH and plan.vtype in (L.T["int"], L.T["uint"]):
        plan.size = INT_WIDTH[t]
    if a.max_data:
        if t not in ("char_buf", "iov_iter"):
            pl.block(a.at("maxData"), f"maxData on a {t} argument is not supported by Vigil (char_buf, iov_iter)",
                     "vigil")
            return None
        plan.max_data = True
    if t == "char_buf" and a.size_arg_index and a.size_arg_index > L.MAX_ARGS:
        pl.block(a.at("sizeArgIndex"), f"sizeArgIndex {a.size_arg_index} is beyond the {L.MAX_ARGS} "
                 "argument slots", "vigil")
        return None
    return plan


def size_arg_slots(pl: Placement) -> None:
    """sizeArgIndex names the n-th *function* argument; point it at the slot holding it."""
    by_index = {p.index: p.slot for p in pl.args if not p.data}
    for p in pl.args:
        if p.vtype in (L.T["char_buf"], L.T["char_iovec"]) and p.size_arg:
            slot = by_index.get(p.size_arg - 1)
            if slot is None:
                pl.block(pl.loc, f"sizeArgIndex {p.size_arg} refers to argument index {p.size_arg - 1}, "
                         "which is not captured in args; add it (e.g. as size_t)", "policy")
                continue
            p.size_arg = slot + 1


def return_plan(spec: KProbeSpec | UProbeSpec) -> ArgPlan | None:
    ra = spec.return_arg
    if not spec.return_ or ra is None:
        return None
    return ArgPlan(0, ra.type, int_vtype(INT_TYPES.get(ra.type, "long")), L.SRC_RETVAL, 0, label=ra.label)


# ---------------------------------------------------------------- kernel functions

def kernel_function_blockers(pl: Placement, spec: KProbeSpec | LsmHookSpec, name: str, facts: KernelFacts,
                             key: str = "call") -> None:
    exists = facts.has_function(name)
    if exists is False:
        pl.block(spec.at(key), f"no kernel function {name} on this kernel (not in its BTF or kprobe list)",
                 "target")


def place_kernel_function(spec: KProbeSpec, section: str, index: int, call: str, facts: KernelFacts,
                          override: bool) -> Placement:
    """A non-syscall kernel function: fentry/fexit (trampolines) or kprobe/kretprobe; with
    Override: fmod_ret, the LSM hook the function is, or bpf_override_return."""
    pl = Placement(section, index, spec.loc, call, event_kind="process_kprobe")
    pl.attach = {"func": call}
    if spec.ignore is not None and spec.ignore.call_not_found and facts.has_function(call) is False:
        # Tetragon leaves such a call out (its hook status CALL_NOT_FOUND) and loads the rest: a
        # policy can name a function of older and newer kernels alike (security_bpf_map_alloc/_create)
        pl.skipped = (f"no kernel function {call} on this kernel; skipped (ignore.callNotFound), "
                      "the rest of the policy loads")
        pl.skip_state = "call_not_found"
        return pl
    kernel_function_blockers(pl, spec, call, facts)
    has = facts.has
    ok_k, why_k = has("kprobe")
    ok_f, why_f = has("fentry")
    ok_x, why_x = has("fexit")
    want_ret = bool(spec.return_)
    params = facts.func_params(call)
    # an index past the function's BTF prototype (a policy for an older signature: tty_write took
    # (file, buf, count, ppos) before 5.11, (iocb, from) since): Tetragon warns ("invalid or old
    # kprobe spec") and loads, reading that argument register. Only a kprobe has the registers.
    past = [a for a in spec.args if params is not None and not facts.ideal_kernel and len(params) <= a.index <= 4]
    if override:
        _place_override(pl, spec, call, facts)
    elif section == "fentries":
        if not ok_f:
            pl.block(spec.loc, f"fentries need BPF trampolines, which this kernel lacks ({why_f})", "kernel")
        elif want_ret and not ok_x:
            pl.block(spec.at("return"), f"return: true on an fentry needs fexit ({why_x})", "kernel")
        else:
            pl.mechanism, pl.entry_prog = "fentry", "vigil_fentry"
            pl.return_prog = "vigil_fexit" if want_ret else ""
    elif ok_f and (not want_ret or ok_x) and facts.in_btf(call) is not False \
            and facts.kprobe_target(call) is not False \
            and not (ok_k and (needs_pt_regs(spec) or past)):  # registers: a kprobe has them, an fentry not
        # (fentry needs the function in BTF: a compiler clone like f.constprop.0 is kprobe-only;
        # and its ftrace call site: a BTF function missing from available_filter_functions (6.1's
        # out-of-line copy of the inline dev_queue_xmit) fails to attach with EBUSY)
        pl.mechanism, pl.entry_prog = "fentry", "vigil_fentry"
        pl.return_prog = "vigil_fexit" if want_ret else ""
    elif ok_k:
        pl.mechanism, pl.entry_prog = "kprobe", "vigil_kprobe"
        pl.return_prog = "vigil_kretprobe" if want_ret else ""
        if facts.kprobe_target(call) is False and facts.has_function(call):
            pl.block(spec.at("call"), f"{call} is in the kernel but kprobes may not attach to it (it is not in "
                     "available_filter_functions: inlined, notrace or blacklisted)", "target")
    else:
        pl.block(spec.at("call"), f"{call} is a kernel function: it needs kprobes or BPF trampolines (fentry), "
                 f"and this kernel has neither (kprobe: {why_k}; fentry: {why_f})", "kernel")
    src = L.SRC_REGS if pl.mechanism == "kprobe" else L.SRC_RAW
    for slot, a in enumerate(spec.args):
        if a.index > 4:
            pl.block(a.at("index"), f"arguments 0..4 of a kernel function can be read; index {a.index} is "
                     "beyond (Vigil reads 5 registers)", "vigil")
            continue
        ctype = params[a.index][1] if params and a.index < len(params) else None
        if any(a is b for b in past) and pl.mechanism == "kprobe":
            said = (f"{call} has {len(params or ())} parameters on this kernel; index {a.index} reads whatever "
                    "its argument register holds (as Tetragon: a policy for another signature of the function)")
            pl.notes.append(f"args[{slot}]: {said}")
            pl.warnings.append((a.at("index"), said))  # Tetragon warns too ("invalid or old kprobe spec")
        elif params is not None and a.index >= len(params) and not facts.ideal_kernel:
            pl.block(a.at("index"), f"{call} has {len(params)} parameters; index {a.index} is out of range"
                     + (f" (only a kprobe reads past them; this hook runs as {pl.mechanism})" if pl.mechanism else ""),
                     "policy")
            continue
        plan = plan_arg(pl, a, slot, src, a.index, user=False, facts=facts, ctype=ctype,
                        what=f"argument {a.index} of {call}")
        if plan is not None:
            pl.args.append(plan)
    size_arg_slots(pl)
    pl.ret = return_plan(spec)
    return pl


def _place_override(pl: Placement, spec: KProbeSpec, call: str, facts: KernelFacts) -> None:
    has = facts.has
    want_ret = bool(spec.return_)
    reasons = []
    ok_m, why_m = has("fmod_ret")
    inj = facts.error_injectable(call)
    is_security = call.startswith("security_")
    if ok_m and (is_security or inj):
        if want_ret and not has("fexit")[0]:
            reasons.append(f"fmod_ret: return: true needs fexit ({has('fexit')[1]})")
        else:
            pl.mechanism, pl.entry_prog = "fmod_ret", "vigil_fmod_ret"
            pl.return_prog = "vigil_fexit" if want_ret else ""
            pl.override = f"fmod_ret on {call} (the function is skipped and returns argError)"
            return
    elif not ok_m:
        reasons.append(f"fmod_ret: {why_m}")
    else:
        reasons.append(f"fmod_ret: {call} is neither a security_* function nor error-injectable "
                       + ("(the kernel has no error-injection list: CONFIG_FUNCTION_ERROR_INJECTION off?)"
                          if inj is None else ""))
    hook = call[len("security_"):] if is_security else ""
    ok_l, why_l = has("lsm")
    if hook and facts.has_function(f"bpf_lsm_{hook}") and not want_ret:
        if ok_l:
            pl.mechanism, pl.entry_prog = "lsm", "vigil_lsm"
            pl.attach = {"func": hook, "event_func": call}
            pl.override = f"BPF LSM hook {hook} ({call} is an LSM hook)"
            return
        reasons.append(f"LSM hook {hook}: {why_l}")
    ok_o, why_o = has("override_return")
    ok_k, why_k = has("kprobe")
    if ok_o and ok_k and inj:
        pl.mechanism, pl.entry_prog = "kprobe", "vigil_kprobe_override"
        pl.return_prog = "vigil_kretprobe" if want_ret else ""
        pl.override = f"bpf_override_return on kprobe:{call}"
        return
    why = why_o if not ok_o else why_k if not ok_k else f"{call} is not error-injectable"
    reasons.append(f"bpf_override_return: {why}")
    pl.block(spec.at("call"), f"Override of {call} needs fmod_ret, a BPF LSM hook or bpf_override_return, and "
             f"none is usable here ({'; '.join(reasons)})", "kernel")


# ---------------------------------------------------------------- tracepoints

def place_tracepoint(spec: TracepointSpec, index: int, facts: KernelFacts) -> Placement:
    target = f"{spec.subsystem}/{spec.event}"
    pl = Placement("tracepoints", index, spec.loc, target, event_kind="process_tracepoint")
    if spec.raw:
        ok, why = facts.has("raw_tracepoint")
        if not ok:
            pl.block(spec.at("raw"), f"raw tracepoints are unavailable on this kernel: {why}", "kernel")
        hit = facts.has_raw_tracepoint(spec.event)
        if hit is False:
            hint = (" (syscalls:* events are made from the raw tracepoints sys_enter/sys_exit: use "
                    "raw_syscalls with raw: true, or raw: false)" if spec.subsystem == "syscalls" else "")
            pl.block(spec.at("event"), f"no raw tracepoint {spec.event} on this kernel{hint}", "target")
        pl.mechanism, pl.entry_prog = "raw_tracepoint", "vigil_raw_tp"
        pl.attach = {"name": spec.event, "category": spec.subsystem}
        params = facts.tp_btf_params(spec.event)
        for slot, a in enumerate(spec.args):
            ctype = params[a.index][1] if params and a.index < len(params) else None
            if a.type in ("auto", "syscall64"):
                if ctype is None and not facts.ideal_kernel:
                    pl.block(a.at("type"), f"type {a.type} on a raw tracepoint needs the kernel's BTF to say "
                             f"what argument {a.index} is", "target")
                    continue
                a2 = _auto_for(a, ctype or "long")
                plan = plan_arg(pl, a2, slot, L.SRC_RAW, a.index, user=False, facts=facts, ctype=ctype)
            else:
                plan = plan_arg(pl, a, slot, L.SRC_RAW, a.index, user=False, facts=facts, ctype=ctype,
                                what=f"argument {a.index} of raw tracepoint {spec.event}")
            if plan is not None:
                pl.args.append(plan)
        size_arg_slots(pl)
        return pl
    ok, why = facts.has("tracepoint")
    if not ok:
        pl.block(spec.loc, f"tracepoints are unavailable on this kernel: {why}", "kernel")
    fields = facts.tp_format(spec.subsystem, spec.event)
    pl.mechanism, pl.entry_prog = "tracepoint", "vigil_tp"
    pl.attach = {"category": spec.subsystem, "name": spec.event}
    if fields is None:
        if facts.ideal_kernel:  # any format: plan the arguments as their types say
            for slot, a in enumerate(spec.args):
                a2 = a if a.type not in ("auto", "syscall64", "data_loc") else _auto_for(a, "long")
                plan = plan_arg(pl, a2, slot, L.SRC_CTX, 0, user=spec.subsystem == "syscalls", facts=facts)
                if plan is not None:
                    pl.args.append(plan)
            return pl
        pl.block(spec.at("event"), f"no tracepoint {target} on this kernel", "target")
        return pl
    user_ptrs = spec.subsystem == "syscalls"
    for slot, a in enumerate(spec.args):
        if a.index >= len(fields):
            pl.block(a.at("index"), f"{target} has {len(fields)} fields (common_* included); index {a.index} is "
                     "out of range", "policy")
            continue
        f = fields[a.index]
        plan = ArgPlan(slot, a.type, 0, L.SRC_CTX, f.offset, size=min(f.size, 8), is_signed=f.signed,
                       label=a.label, index=a.index)
        t = a.type
        if a.resolve:
            pl.block(a.at("resolve"), "resolve on a tracepoint field is not supported by Vigil (use raw: true)",
                     "vigil")
            continue
        if f.type.startswith("__data_loc"):
            plan.vtype = L.T["data_loc"]
            plan.size = 4
        elif "[" in f.type and f.type.startswith("char"):
            plan.vtype = L.T["char_array"]
            plan.size = min(f.size, 255)
        elif t == "auto" and "[" in f.type and f.type.partition("[")[0].strip() in ("long", "unsigned long"):
            # an array of longs (raw_syscalls sys_enter's args): Tetragon's const_buf, one
            # size_arg per element
            if f.size > 248 or f.size % 8:
                pl.block(a.at("index"), f'field "{f.name}" ({f.type}) of {target} has {f.size} bytes; Vigil '
                         "reads arrays of up to 31 longs", "vigil")
                continue
            plan.vtype = L.T["const_buf"]
            plan.size = f.size
        elif t == "auto" or t in INT_TYPES:
            kind = INT_TYPES.get(t) or (("long" if f.signed else "size") if f.size == 8 else
                                        ("int" if f.signed else "uint"))
            plan.vtype = int_vtype(kind)
            if t == "auto" and f.size < 4:
                plan.vtype = L.T["int" if f.signed else "uint"]
            if t in INT_WIDTH:  # int8, uint16, ...: the field's low bytes
                plan.size, plan.is_signed = min(plan.size, INT_WIDTH[t]), kind == "int"
        elif t in ("string", "filename"):
            plan.vtype = L.T["string" if user_ptrs else "kstring"]
        elif t in ("char_buf", "char_iovec", "fd", "sockaddr") and user_ptrs:
            p2 = plan_arg(pl, a, slot, L.SRC_CTX, f.offset, user=True, facts=facts)
            if p2 is None:
                continue
            p2.size = 8
            plan = p2
        elif t in KERNEL_TYPES and not user_ptrs and f.size == 8:
            plan.vtype = L.T[KERNEL_TYPES[t]]
        elif t == "nop":
            plan.vtype = 0
        else:
            pl.block(a.at("type"), f'type "{t}" cannot be read from field "{f.name}" ({f.type}) of {target}',
                     "policy")
            continue
        if plan.policy_type == "auto":
            plan.policy_type = {L.T["data_loc"]: "string", L.T["char_array"]: "string"}.get(plan.vtype, "auto")
        pl.args.append(plan)
    size_arg_slots(pl)
    return pl


def _auto_for(a: KProbeArg, ctype: str) -> KProbeArg:
    """The type `auto` means for a raw tracepoint argument of C type `ctype`."""
    import dataclasses

    if a.type == "syscall64":
        return a
    t = "size_t"
    if ctype.endswith("*"):
        base = _ptr_target(ctype)
        t = next((k for k, v in STRUCT_OF.items() if v == base), "uint64")
        if base in ("char", "const char"):
            t = "string"
    elif ctype in ("int", "long int", "short int", "s32", "s64", "long", "short"):
        t = "int" if "long" not in ctype and ctype != "s64" else "int64"
    return dataclasses.replace(a, type=t)


# ---------------------------------------------------------------- user space

def target_path(path: str, facts: KernelFacts) -> str:
    """The file a uprobe/usdt `path` names: a relative one from the agent's working directory,
    as Tetragon makes it absolute (filepath.Abs) before attaching; its events name the result.
    (Left as written for the ideal kernel, which looks at no file.)"""
    return path if facts.ideal_kernel or not path else os.path.abspath(path)


def place_uprobe(spec: UProbeSpec, index: int, sym_i: int, facts: KernelFacts) -> Placement:
    path = target_path(spec.path, facts)
    pl = Placement("uprobes", index, spec.loc, path, event_kind="process_uprobe")
    ok, why = facts.has("uprobe")
    if not ok:
        pl.block(spec.loc, f"uprobes are unavailable on this kernel: {why}", "kernel")
    symbol = ""
    offset = 0
    if spec.symbols:
        symbol = spec.symbols[sym_i]
        off, err = facts.file_symbol(path, symbol)
        if off is None:
            key = "path" if not _binary_present(facts, path) else f"symbols[{sym_i}]"
            pl.block(spec.at(key), f"uprobe target: {err}", "target")
        else:
            offset = off
    elif spec.offsets:
        offset = spec.offsets[sym_i]
        info = facts.file_info(path)
        if info is not None and "error" in info:
            pl.block(spec.at("path"), f"uprobe target: {info['error']}", "target")
    elif spec.addrs:  # virtual addresses: the file offsets of their executable segments, as Tetragon's
        off, err = facts.file_addr(path, spec.addrs[sym_i])
        if off is None:
            key = "path" if not _binary_present(facts, path) else f"addrs[{sym_i}]"
            pl.block(spec.at(key), f"uprobe target: {err}", "target")
        else:
            offset = off
    ref_ctr = 0
    if spec.ref_ctr_offsets:  # one per symbol (offset, address): a semaphore the kernel counts up while attached
        sites = len(spec.symbols) or len(spec.offsets) or len(spec.addrs)
        if len(spec.ref_ctr_offsets) != sites:
            what = "symbols" if spec.symbols else "offsets" if spec.offsets else "addrs"
            pl.block(spec.at("refCtrOffsets"), f"refCtrOffsets has {len(spec.ref_ctr_offsets)} entries and {what} "
                     f"{sites}: one per {what[:-1].replace('addr', 'address')}", "policy")
        else:
            ref_ctr = spec.ref_ctr_offsets[sym_i]
    pl.mechanism, pl.entry_prog = "uprobe", "vigil_uprobe"
    pl.attach = {"path": path, "symbol": symbol, "offset": offset, "ref_ctr": ref_ctr}
    if spec.binary_digests:
        _check_digests(pl, spec, path, facts)
    pl.target = f"{path}:{symbol or hex(offset)}"
    if spec.return_:
        pl.return_prog = "vigil_uretprobe"
        pl.ret = return_plan(spec)
    for slot, a in enumerate(spec.args):
        if a.index > 4:
            pl.block(a.at("index"), f"uprobe arguments are read from registers 0..4; index {a.index} is beyond",
                     "vigil")
            continue
        plan = plan_arg(pl, a, slot, L.SRC_REGS, a.index, user=True, facts=facts,
                        what=f"uprobe argument {a.index}", user_btf=(spec.btf_path, spec.at("btfPath")))
        if plan is not None:
            pl.args.append(plan)
    for j, a in enumerate(spec.data):
        plan = place_data(pl, a, len(spec.args) + j, facts)
        if plan is not None:
            plan.data_pos = j
            pl.args.append(plan)
    size_arg_slots(pl)
    return pl


def pt_reg(name: str) -> tuple[int, int] | None:
    """(byte offset in struct pt_regs, width) of a register named as Tetragon's `data` entries
    name them: rax/eax/ax/al, ..., rsi/esi/si/sil, r8/r8d/r8w/r8b, ..., rip/eip."""
    widths = {"r": 8, "e": 4}
    if name in ("rip", "eip"):
        return PT_REGS["rip"], widths[name[0]]
    m = re.fullmatch(r"r(8|9|1[0-5])([dwb]?)", name)
    if m:
        return PT_REGS[f"r{m.group(1)}"], {"": 8, "d": 4, "w": 2, "b": 1}[m.group(2)]
    if name in PT_REGS and name != "rip":
        return PT_REGS[name], 8
    full = _SUBREG.get(name)
    if full is None or name in ("ah", "bh", "ch", "dh"):
        return None
    width = 4 if name.startswith("e") else 1 if name.endswith("l") else 2
    return PT_REGS[full], width


def needs_pt_regs(spec: object) -> bool:
    """Does a hook's `data` read a register (source pt_regs)?"""
    return any(a.source == "pt_regs" for a in getattr(spec, "data", ()))


def place_kprobe_data(pl: Placement, spec: KProbeSpec, facts: KernelFacts) -> None:
    """The `data` entries of a kprobes/fentries hook, placed after its args (in the slots that
    follow them). source current_task reads the task wherever the hook runs; source pt_regs
    needs the registers of a kprobe, which only a hook that really runs as a kprobe has: a
    syscall hooked at its tracepoint, an fentry, fmod_ret, an LSM hook or a stand-in refuses it
    at data[j].source, saying where the hook runs and why."""
    if not spec.data or pl.skipped:
        return
    call = pl.event_function
    if pl.mechanism in ("fanotify", "cgroup_sock_addr"):  # enforced outside the generic program: nothing reads
        pl.block(spec.at("data"), f"data cannot be read where {call} is enforced by {pl.mechanism} (this kernel "
                 "cannot refuse it at an LSM hook, where data would be read)", "kernel")
        return
    for j, a in enumerate(spec.data):
        if a.source == "pt_regs" and pl.mechanism and pl.mechanism != "kprobe":
            where = (f"the stand-in {pl.substitute}" if pl.substitute
                     else f"{pl.mechanism}:{pl.attach.get('name') or call}")
            if pl.substitute:
                why, cause = "a stand-in runs where this kernel has no kprobe for the function", "kernel"
            elif pl.attach.get("syscall") and pl.mechanism in ("tracepoint", "raw_tracepoint"):
                why, cause = "Vigil hooks a syscall at its tracepoint, which has no kprobe registers", "vigil"
            elif pl.section == "fentries":
                why, cause = "an fentry is given the function's arguments, not pt_regs (use kprobes)", "vigil"
            else:
                why, cause = f"a {pl.mechanism} program is given the function's arguments, not pt_regs", "vigil"
            pl.block(a.at("source"), f"data[{j}] reads register {a.resolve} from pt_regs, which a hook has only "
                     f"where it runs as a kprobe; {call} runs here as {where}: {why}", cause)
            continue
        plan = place_data(pl, a, len(pl.args), facts, user=False)
        if plan is not None:
            plan.data_pos = j
            pl.args.append(plan)


def place_data(pl: Placement, a: KProbeArg, slot: int, facts: KernelFacts, *,
               user: bool = True) -> ArgPlan | None:
    """A `data` entry of a uprobe or kprobe: a value not among the function's arguments, read at
    the hook into argument slot `slot` (after the args; they share the record's slots) and
    reported in the event's data list. source pt_regs: `resolve` names a register of the hook's
    pt_regs, read at its width (`user`: a uprobe's, whose pointers are user memory); source
    current_task: `resolve` is a field path from the current task_struct (kernel BTF), followed
    as a kprobe argument's resolve is."""
    import dataclasses

    if slot >= L.MAX_ARGS:
        pl.block(a.loc, f"args and data share {L.MAX_ARGS} argument slots; this data entry is the "
                 f"{slot + 1}th", "vigil")
        return None
    if a.index > 4:  # unused for data, but bounded as Tetragon's loader bounds it
        pl.block(a.at("index"), f"index {a.index} is out of range (0..4)", "policy")
        return None
    if a.source == "pt_regs":
        reg = pt_reg(a.resolve)
        if reg is None:
            pl.block(a.at("resolve"), f'"{a.resolve}" is not a register name (rax, eax, ax, al, ..., r8, r8d, '
                     "r8w, r8b, ..., rip)", "policy")
            return None
        plan = plan_arg(pl, dataclasses.replace(a, resolve=""), slot, L.SRC_USDT, 0, user=user, facts=facts,
                        what=f"register {a.resolve}")
        if plan is None:
            return None
        plan.off, plan.size = reg
    elif a.source == "current_task":
        plan = plan_arg(pl, dataclasses.replace(a, btf_type="", btf_type_module=""), slot, L.SRC_TASK, 0,
                        user=False, facts=facts, ctype="struct task_struct *", what="the current task")
        if plan is None:
            return None
    else:  # validation refuses the policy first
        pl.block(a.at("source"), "a data entry needs source pt_regs or current_task", "policy")
        return None
    plan.data = True
    return plan


def digest_verdict(digests: tuple[str, ...] | list[str],
                   have: Any) -> tuple[str, int, str]:
    """binaryDigests tried as Tetragon tries them (verifyBinaryDigests), in order: the first
    that is the binary's digest ends the walk ("match"); one that is not goes on to the next;
    one that cannot be tried -- not "<algo>:<hex>", an algorithm other than sha1, sha256, sha384,
    sha512 and build-id, or a digest of the binary that cannot be computed (unreadable file, no
    build ID) -- ends it with "error", which refuses the policy even with
    ignore.digestVerificationFailure. An entry that is exactly "" counts as a match (Tetragon's
    reading). `have(algo)` gives (the binary's lower-case hex digest, "") or (None, why not);
    (None, "") means it cannot tell (ideal kernel): "unknown". Returns (verdict, the index of
    the entry that ended the walk, why)."""
    seen: dict[str, tuple[str | None, str]] = {}
    for i, dg in enumerate(digests):
        if dg == "":
            return "match", i, ""
        algo, sep, want = dg.strip().partition(":")
        algo, want = algo.strip().lower(), want.strip().lower()
        if not sep or not algo or not want:
            return "error", i, f'invalid digest "{dg}": expected "<algo>:<hex>"'
        if algo not in enums.DIGEST_ALGOS:
            return "error", i, (f'invalid digest "{dg}": unsupported algorithm "{algo}" (sha1, sha256, '
                                "sha384, sha512 or build-id)")
        if algo not in seen:
            seen[algo] = have(algo)
        got, err = seen[algo]
        if got is None:
            return ("error", i, f"cannot compute the {algo} digest of the binary: {err}") if err else ("unknown", i, "")
        if got == want:
            return "match", i, ""
    return "mismatch", len(digests), ""


def _check_digests(pl: Placement, spec: UProbeSpec, path: str, facts: KernelFacts) -> None:
    """binaryDigests: the uprobe attaches only when the walk of digest_verdict finds the
    binary's digest (each `<algo>:<hex>`, compared without case). None matching refuses the
    policy, or with ignore.digestVerificationFailure skips this uprobe and the rest of the policy
    loads. An entry the walk reaches and cannot try (malformed, or a digest that cannot be
    computed: unreadable file, no build ID) refuses the policy either way, at that entry. The
    agent walks them again on the binary it attaches to (GenericHook: the same open file)."""
    verdict, i, why = digest_verdict(spec.binary_digests, lambda algo: facts.file_digest(path, algo))
    if verdict == "error":
        pl.block(spec.at(f"binaryDigests[{i}]"), f"binaryDigests: {why} (the policy is refused, also with "
                 "ignore.digestVerificationFailure)", "target" if "compute" in why else "policy")
        return
    if verdict != "mismatch":  # match, or this kernel cannot tell: nothing to check
        pl.attach["digests"] = list(spec.binary_digests)
        return
    ignore = spec.ignore is not None and spec.ignore.digest_verification_failure
    algos = {d.strip().partition(':')[0].strip().lower() for d in spec.binary_digests} & set(enums.DIGEST_ALGOS)
    why = (f"{path} matches none of binaryDigests ({len(spec.binary_digests)} given; its "
           + ", ".join(sorted({f'{a}:{facts.file_digest(path, a)[0]}' for a in algos})) + ")")
    if ignore:
        pl.skipped = f"{why}; skipped (ignore.digestVerificationFailure), the rest of the policy loads"
    else:
        pl.block(spec.at("binaryDigests"), f"{why}: the policy is refused (set ignore.digestVerificationFailure "
                 "to skip only this uprobe)", "target")


def _binary_present(facts: KernelFacts, path: str) -> bool:
    info = facts.file_info(path)
    return info is None or "error" not in info or "not an ELF" in info["error"]


# x86_64 pt_regs byte offsets of the registers SDT argument strings name
PT_REGS = {
    "r15": 0, "r14": 8, "r13": 16, "r12": 24, "rbp": 32, "rbx": 40, "r11": 48, "r10": 56, "r9": 64, "r8": 72,
    "rax": 80, "rcx": 88, "rdx": 96, "rsi": 104, "rdi": 112, "rip": 128, "rsp": 152,
}
_SUBREG = {"eax": "rax", "ax": "rax", "al": "rax", "ebx": "rbx", "bx": "rbx", "bl": "rbx", "ecx": "rcx", "cx": "rcx",
           "cl": "rcx", "edx": "rdx", "dx": "rdx", "dl": "rdx", "esi": "rsi", "si": "rsi", "sil": "rsi",
           "edi": "rdi", "di": "rdi", "dil": "rdi", "ebp": "rbp", "bp": "rbp", "bpl": "rbp", "esp": "rsp",
           "sp": "rsp", "spl": "rsp"}
_SDT = re.compile(r"^(?P<size>-?\d+)@(?:\$(?P<imm>-?\d+)|%(?P<reg>\w+)|"
                  r"(?P<disp>-?\d*)\(%(?P<base>\w+)(?:,%(?P<index>\w+)(?:,(?P<scale>\d+))?)?\))$")


def _sdt_reg(name: str) -> int | None:
    name = _SUBREG.get(name, name)
    if name not in PT_REGS and re.fullmatch(r"r(8|9|1[0-5])[dwb]?", name):
        name = re.sub(r"[dwb]$", "", name)
    return PT_REGS.get(name)


SDT_SCALES = {1: 0, 2: 1, 4: 2, 8: 3}  # scale: its log2, as off2 holds it


def sdt_operand(spec: str) -> tuple[int, int, int, int, bool] | str:
    """(pt_regs offset or 0xffff, off2, constant/displacement, size, signed), or why not. off2
    (vp_arg's, VP_SRC_USDT): 0 a register or constant, bit 0 a memory operand, bits 1-5 the index
    register's pt_regs slot + 1 and bits 6-7 log2 of its scale (`disp(%base,%index,scale)`)."""
    m = _SDT.match(spec)
    if not m:
        return f'USDT argument "{spec}" is in a form Vigil does not decode'
    size = int(m.group("size"))
    signed, width = size < 0, abs(size)
    if width not in (1, 2, 4, 8):
        return f'USDT argument "{spec}": size {width} is not 1, 2, 4 or 8 bytes'
    if m.group("imm") is not None:
        return 0xFFFF, 0, int(m.group("imm")), width, signed
    regname = m.group("reg") or m.group("base")
    reg = _sdt_reg(regname)
    if reg is None:
        return f'USDT argument "{spec}": register %{regname} is not supported'
    if m.group("reg"):
        return reg, 0, 0, width, signed
    off2 = 1
    if m.group("index"):
        idx = _sdt_reg(m.group("index"))
        if idx is None or idx == PT_REGS["rip"]:
            return f'USDT argument "{spec}": index register %{m.group("index")} is not supported'
        scale = int(m.group("scale") or 1)
        if scale not in SDT_SCALES:
            return f'USDT argument "{spec}": scale {scale} is not 1, 2, 4 or 8'
        off2 |= (idx // 8 + 1) << 1 | SDT_SCALES[scale] << 6
    return reg, off2, int(m.group("disp") or 0), width, signed


def place_usdt(spec: UsdtSpec, index: int, facts: KernelFacts) -> list[Placement]:
    """One placement per probe site of provider:name in the binary."""
    path = target_path(spec.path, facts)
    base = Placement("usdts", index, spec.loc, f"{path}:{spec.provider}:{spec.name}", event_kind="process_usdt")
    ok, why = facts.has("uprobe")
    if not ok:
        base.block(spec.loc, f"usdts need uprobes, which are unavailable on this kernel: {why}", "kernel")
    notes, err = facts.usdt_notes(path)
    sites = [n for n in (notes or []) if n.provider == spec.provider and n.name == spec.name]
    if notes is None:
        base.block(spec.at("path"), f"usdt target: {err}", "target")
    elif not sites and not facts.ideal_kernel:
        have = sorted({f"{n.provider}:{n.name}" for n in notes})
        base.block(spec.at("name"), f"no USDT probe {spec.provider}:{spec.name} in {path} (it has: "
                   f"{', '.join(have[:12]) or 'none'}{' ...' if len(have) > 12 else ''})", "target")
    if not sites:
        sites = [None]  # type: ignore[list-item]
    out = []
    for site in sites:
        pl = Placement("usdts", index, spec.loc, base.target, event_kind="process_usdt",
                       blockers=list(base.blockers))
        pl.mechanism, pl.entry_prog = "usdt", "vigil_uprobe"
        pl.attach = {"path": path, "provider": spec.provider, "name": spec.name,
                     "offset": site.pc if site else 0, "ref_ctr": site.semaphore if site else 0}
        operands = site.args.split() if site else []
        for slot, a in enumerate(spec.args):
            if site is not None and a.index >= len(operands):
                pl.block(a.at("index"), f"USDT {spec.provider}:{spec.name} has {len(operands)} arguments; index "
                         f"{a.index} is out of range", "policy")
                continue
            plan = plan_arg(pl, a, slot, L.SRC_USDT, 0, user=True, facts=facts, what=f"USDT argument {a.index}")
            if plan is None:
                continue
            if site is not None:
                op = sdt_operand(operands[a.index])
                if isinstance(op, str):
                    pl.block(a.at("index"), op, "vigil")
                    continue
                reg, off2, k, width, signed = op
                plan.off, plan.off2, plan.konst, plan.size = reg, off2, k, width
                plan.is_signed = plan.is_signed or signed
            pl.args.append(plan)
        size_arg_slots(pl)
        out.append(pl)
    return out
