"""Where each hook of a policy runs on this kernel, and how its arguments are fetched.

Order of preference per hook kind (from the feature probe, never the
version): LSM > fentry > kprobe > tracepoint. Syscall kprobes run on the
syscall enter/exit tracepoints, which every kernel with syscall tracing
has. A hook that cannot run here gets a `reason` instead of a mechanism;
the compiler refuses the policy with it (never drops the hook silently).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

from vigil.kernel.btf import raw_tracepoint_names

from vigil.kernel import policy_layout as L
from .errors import Loc
from .model import KProbeArg, KProbeSpec, LsmHookSpec, TracepointSpec, UProbeSpec, UsdtSpec
from .values import syscall_base

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

INT_TYPES = {
    "int": "int", "int32": "int", "sint32": "int", "int16": "int", "sint16": "int", "int8": "int",
    "sint8": "int", "uint32": "uint", "uint16": "uint", "uint8": "uint", "int64": "long",
    "sint64": "long", "long": "long", "uint64": "size", "ulong": "size", "size_t": "size",
    "unsigned long": "size", "capability": "capability", "bpf_cmd": "bpf_cmd", "syscall64": "syscall64",
}
KERNEL_POINTER_TYPES = ("file", "path", "sock", "socket", "skb", "cred", "dentry", "linux_binprm",
                        "kiocb", "iov_iter", "net_device", "bpf_attr", "perf_event", "bpf_map",
                        "bpf_prog", "user_namespace", "load_info", "module", "kernel_cap_t",
                        "cap_inheritable", "cap_permitted", "cap_effective")
# kernel pointer types whose readers exist in bpf/generic.bpf.c
SUPPORTED_KERNEL_TYPES = {"file": "file", "path": "path", "sock": "sock", "socket": "socket", "cred": "cred",
                          "linux_binprm": "linux_binprm"}


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
    render: str = ""      # JSON variant override (e.g. "string" for a path read at an LSM hook)
    max_data: bool = False  # maxData: capture up to 327360 bytes (data records past the first 4 KiB)


@dataclass
class Placement:
    section: str
    index: int
    loc: Loc
    target: str                   # what the user asked for: sys_openat, sched/sched_process_exec, ...
    mechanism: str = ""           # tracepoint | raw_tracepoint | uprobe | kprobe | lsm | fentry
    attach: dict = field(default_factory=dict)
    entry_prog: str = ""
    return_prog: str = ""
    event_kind: str = ""          # process_kprobe | process_tracepoint | process_uprobe | process_lsm
    args: list[ArgPlan] = field(default_factory=list)
    ret: ArgPlan | None = None
    reason: str = ""              # why it cannot run here (empty: it can)
    reason_loc: Loc | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reason

    def describe(self) -> str:
        if not self.ok:
            return f"not loaded: {self.reason}"
        a = self.attach
        if self.mechanism == "tracepoint":
            d = f"tracepoint:{a['category']}/{a['name']}"
            if a.get("exit_name"):
                d += f" + tracepoint:{a['category']}/{a['exit_name']} (return value)"
        elif self.mechanism == "raw_tracepoint":
            d = f"raw_tracepoint:{a['name']}"
        elif self.mechanism == "uprobe":
            d = f"uprobe:{a['path']}:{a.get('symbol') or hex(a['offset'])}+{a['offset']:#x}"
            if self.return_prog:
                d += " + uretprobe"
        elif self.mechanism == "kprobe":
            d = f"kprobe:{a['func']}" + (" + kretprobe" if self.return_prog else "")
        elif self.mechanism in ("lsm", "fentry", "fmod_ret"):
            d = f"{self.mechanism}:{a['func']}"
        else:
            d = f"{self.mechanism}:{a.get('func', '')}"
        return d + "".join(f"; {n}" for n in self.notes)


def tracefs_root() -> str | None:
    for root in TRACEFS:
        if os.path.isdir(os.path.join(root, "events")):
            return root
    try:  # mount it where the kernel expects it
        os.makedirs(TRACEFS[0], exist_ok=True)
        if os.system(f"mount -t tracefs nodev {TRACEFS[0]} 2>/dev/null") == 0:
            return TRACEFS[0]
    except OSError:
        pass
    return None


@dataclass
class TpField:
    type: str
    name: str
    offset: int
    size: int
    signed: bool


_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);")


def tracepoint_fields(category: str, name: str) -> list[TpField] | None:
    root = tracefs_root()
    if root is None:
        return None
    try:
        text = open(os.path.join(root, "events", category, name, "format")).read()
    except OSError:
        return None
    out = []
    for m in _FIELD.finditer(text):
        decl = m.group("decl").strip()
        arr = ""
        if decl.endswith("]"):
            decl, _, arr = decl.partition("[")
            arr = "[" + arr
        typ, _, fname = decl.rpartition(" ")
        fname = fname.lstrip("*")
        if "*" in decl.rpartition(" ")[2]:
            typ += " *"
        out.append(TpField(typ.strip() + arr, fname, int(m.group("off")), int(m.group("size")),
                           m.group("signed") == "1"))
    return out


def syscall_arity(base: str) -> int:
    """How many arguments syscalls/sys_enter_<base> records (its fields after __syscall_nr)."""
    fields = tracepoint_fields("syscalls", f"sys_enter_{base}") or []
    return min(6, sum(1 for f in fields if not f.name.startswith("common_") and f.name != "__syscall_nr"))


def tracepoint_exists(category: str, name: str) -> bool:
    root = tracefs_root()
    return root is not None and os.path.isdir(os.path.join(root, "events", category, name))


def _int_vtype(kind: str) -> int:
    return L.T[{"capability": "capability", "bpf_cmd": "bpf_cmd", "syscall64": "size"}.get(kind, kind)]


def _value_arg(a: KProbeArg, slot: int, src: int, off: int, *, user: bool,
               kernel_types_ok: bool, why_no_kernel: str) -> tuple[ArgPlan | None, str]:
    """Plan for one argument whose raw value is a 64-bit word (syscall arg, register, raw tp arg)."""
    t = a.type
    plan = ArgPlan(slot, t, 0, src, off, label=a.label, index=a.index)
    if t in INT_TYPES:
        plan.vtype = _int_vtype(INT_TYPES[t])
        plan.is_signed = INT_TYPES[t] in ("int", "long")
    elif t in ("string", "filename"):
        plan.vtype = L.T["string" if user else "kstring"]
    elif t == "char_buf":
        plan.vtype = L.T["char_buf"]
        plan.size_arg = a.size_arg_index
        plan.return_copy = a.return_copy
    elif t == "char_iovec":
        plan.vtype = L.T["char_iovec"]
        plan.size_arg = a.size_arg_index
    elif t == "fd":
        plan.vtype = L.T["fd"]
    elif t == "sockaddr":
        plan.vtype = L.T["sockaddr"]
    elif t == "nop":
        plan.vtype = 0
    elif t in SUPPORTED_KERNEL_TYPES:
        if not kernel_types_ok:
            return None, f'argument type "{t}" is a kernel pointer; {why_no_kernel}'
        plan.vtype = L.T[SUPPORTED_KERNEL_TYPES[t]]
    elif t in KERNEL_POINTER_TYPES:
        return None, f'argument type "{t}" is not supported by this Vigil build yet'
    else:
        return None, f'argument type "{t}" is not supported by this Vigil build yet'
    if a.max_data:
        if t != "char_buf":
            return None, "maxData applies to char_buf arguments"
        plan.max_data = True
    if t == "char_buf" and a.size_arg_index and a.size_arg_index > L.MAX_ARGS:
        return None, f"sizeArgIndex {a.size_arg_index} is beyond the {L.MAX_ARGS} argument slots"
    return plan, ""


def _size_arg_slots(args: tuple[KProbeArg, ...], plans: list[ArgPlan]) -> str:
    """sizeArgIndex names the n-th *function* argument; point it at the slot holding it."""
    by_index = {p.index: p.slot for p in plans}
    for p in plans:
        if p.vtype in (L.T["char_buf"], L.T["char_iovec"]) and p.size_arg:
            slot = by_index.get(p.size_arg - 1)
            if slot is None:
                return (f"sizeArgIndex {p.size_arg} refers to argument index {p.size_arg - 1}, "
                        "which is not captured in args; add it (e.g. as size_t)")
            p.size_arg = slot + 1
    return ""


Probe = Callable[[str], tuple[bool, str]]  # feature name -> (supported, reason)


def place_kprobe(spec: KProbeSpec, section: str, index: int, call: str, has: Probe) -> Placement:
    pl = Placement(section, index, spec.loc, call, event_kind="process_kprobe")
    base = syscall_base(call) if spec.syscall or call.startswith(("sys_", "__x64_sys_")) else None
    if section == "fentries":
        ok, why = has("fentry")
        if not ok:
            pl.reason = f"fentry hooks need BPF trampolines: {why}"
            return pl
    if base is not None:
        # syscall: the per-syscall tracepoints carry the arguments and the return value
        if not tracepoint_exists("syscalls", f"sys_enter_{base}"):
            pl.reason = f"no tracepoint syscalls/sys_enter_{base} on this kernel"
            return pl
        pl.mechanism = "tracepoint"
        pl.entry_prog = f"vigil_sys_enter{syscall_arity(base)}"
        pl.attach = {"category": "syscalls", "name": f"sys_enter_{base}", "func": f"__x64_sys_{base}"}
        if spec.return_:
            pl.return_prog = "vigil_sys_exit"
            pl.attach["exit_name"] = f"sys_exit_{base}"
        why_kernel = "syscall arguments are user-space values (use string, fd, sockaddr, char_buf, ...)"
        for slot, a in enumerate(spec.args):
            if a.index > 5:
                pl.reason, pl.reason_loc = f"syscalls have 6 arguments; index {a.index} is out of range", a.at("index")
                return pl
            plan, why = _value_arg(a, slot, L.SRC_SYSCALL, a.index, user=True, kernel_types_ok=False,
                                   why_no_kernel=why_kernel)
            if plan is None:
                pl.reason, pl.reason_loc = why, a.at("type")
                return pl
            pl.args.append(plan)
    else:
        ok_k, why_k = has("kprobe")
        ok_f, why_f = has("fentry")
        if section == "fentries" or (ok_f and not spec.return_):
            if not ok_f:
                pl.reason = f"fentry needs BPF trampolines: {why_f}"
                return pl
            pl.mechanism, pl.entry_prog = "fentry", "vigil_fentry"
            src = L.SRC_RAW
        elif ok_k:
            pl.mechanism, pl.entry_prog = "kprobe", "vigil_kprobe"
            src = L.SRC_REGS
            if spec.return_:
                pl.return_prog = "vigil_kretprobe"
        else:
            pl.reason = (f"{call} is a kernel function: it needs a kprobe or fentry hook, and this kernel "
                         f"has neither (kprobe: {why_k}; fentry: {why_f})")
            return pl
        pl.attach = {"func": call}
        for slot, a in enumerate(spec.args):
            if a.index > 4:
                pl.reason, pl.reason_loc = f"kprobe arguments are read from registers 0..4; index {a.index}", a.at("index")
                return pl
            plan, why = _value_arg(a, slot, src, a.index, user=False, kernel_types_ok=True, why_no_kernel="")
            if plan is None:
                pl.reason, pl.reason_loc = why, a.at("type")
                return pl
            pl.args.append(plan)
    err = _size_arg_slots(spec.args, pl.args)
    if err:
        pl.reason = err
    if spec.return_ and spec.return_arg is not None:
        pl.ret = ArgPlan(0, spec.return_arg.type, _int_vtype(INT_TYPES.get(spec.return_arg.type, "long")),
                         L.SRC_RETVAL, 0, label=spec.return_arg.label)
    return pl


def place_tracepoint(spec: TracepointSpec, index: int, has: Probe) -> Placement:
    target = f"{spec.subsystem}/{spec.event}"
    pl = Placement("tracepoints", index, spec.loc, target, event_kind="process_tracepoint")
    if spec.raw:
        ok, why = has("raw_tracepoint")
        if not ok:
            pl.reason = f"raw tracepoints unavailable: {why}"
            return pl
        names = raw_tracepoint_names()
        if names is not None and spec.event not in names:
            hint = (" (syscalls:* events are made from the raw tracepoints sys_enter/sys_exit: use "
                    "raw_syscalls with raw: true, or raw: false)" if spec.subsystem == "syscalls" else "")
            pl.reason = f"no raw tracepoint {spec.event} on this kernel{hint}"
            pl.reason_loc = spec.at("event")
            return pl
        pl.mechanism, pl.entry_prog = "raw_tracepoint", "vigil_raw_tp"
        pl.attach = {"name": spec.event, "category": spec.subsystem}
        for slot, a in enumerate(spec.args):
            plan, why = _value_arg(a, slot, L.SRC_RAW, a.index, user=False, kernel_types_ok=True, why_no_kernel="")
            if plan is None:
                pl.reason, pl.reason_loc = why, a.at("type")
                return pl
            pl.args.append(plan)
        return pl
    fields = tracepoint_fields(spec.subsystem, spec.event)
    if fields is None:
        pl.reason = f"no tracepoint {target} on this kernel (or tracefs cannot be mounted)"
        return pl
    pl.mechanism, pl.entry_prog = "tracepoint", "vigil_tp"
    pl.attach = {"category": spec.subsystem, "name": spec.event}
    user_ptrs = spec.subsystem == "syscalls"
    for slot, a in enumerate(spec.args):
        if a.index >= len(fields):
            pl.reason = f"{target} has {len(fields)} fields (common_* included); index {a.index} is out of range"
            pl.reason_loc = a.at("index")
            return pl
        f = fields[a.index]
        plan = ArgPlan(slot, a.type, 0, L.SRC_CTX, f.offset, size=min(f.size, 8), is_signed=f.signed,
                       label=a.label, index=a.index)
        t = a.type
        if f.type.startswith("__data_loc"):
            plan.vtype = L.T["data_loc"]
            plan.size = 4
        elif "[" in f.type and f.type.startswith("char"):
            plan.vtype = L.T["char_array"]
            plan.size = min(f.size, 255)
        elif t == "auto" or t in INT_TYPES:
            kind = INT_TYPES.get(t) or (
                ("long" if f.signed else "size") if f.size == 8 else ("int" if f.signed else "uint"))
            plan.vtype = _int_vtype(kind)
            if t == "syscall64":
                plan.policy_type = "syscall64"
        elif t in ("string", "filename"):
            plan.vtype = L.T["string" if user_ptrs else "kstring"]
        elif t in ("char_buf", "char_iovec", "fd", "sockaddr") and user_ptrs:
            p2, why = _value_arg(a, slot, L.SRC_CTX, f.offset, user=True, kernel_types_ok=False,
                                 why_no_kernel="")
            if p2 is None:
                pl.reason, pl.reason_loc = why, a.at("type")
                return pl
            p2.size = 8
            plan = p2
        elif t in SUPPORTED_KERNEL_TYPES and not user_ptrs:
            plan.vtype = L.T[SUPPORTED_KERNEL_TYPES[t]]
        else:
            pl.reason = f'type "{t}" cannot be read from field "{f.name}" ({f.type}) of {target}'
            pl.reason_loc = a.at("type")
            return pl
        if plan.policy_type == "auto":
            plan.policy_type = {L.T["data_loc"]: "string", L.T["char_array"]: "string"}.get(plan.vtype, "auto")
        pl.args.append(plan)
    err = _size_arg_slots(spec.args, pl.args)
    if err:
        pl.reason = err
    return pl


def place_uprobe(spec: UProbeSpec, index: int, sym_i: int, has: Probe) -> Placement:
    from vigil.kernel.elfsym import func_offset as symbol_offset

    pl = Placement("uprobes", index, spec.loc, spec.path, event_kind="process_uprobe")
    ok, why = has("uprobe")
    if not ok:
        pl.reason = f"uprobes unavailable: {why}"
        return pl
    symbol = ""
    if spec.symbols:
        symbol = spec.symbols[sym_i]
        try:
            offset = symbol_offset(spec.path, symbol)
        except (OSError, ValueError) as e:
            pl.reason, pl.reason_loc = str(e), spec.at("symbols")
            return pl
    elif spec.offsets:
        offset = spec.offsets[sym_i]
    else:
        pl.reason = "uprobe addrs (absolute addresses) are not supported; use symbols or offsets"
        pl.reason_loc = spec.at("addrs")
        return pl
    pl.mechanism, pl.entry_prog = "uprobe", "vigil_uprobe"
    pl.attach = {"path": spec.path, "symbol": symbol, "offset": offset}
    pl.target = f"{spec.path}:{symbol or hex(offset)}"
    if spec.return_:
        pl.return_prog = "vigil_uretprobe"
        if spec.return_arg is not None:
            pl.ret = ArgPlan(0, spec.return_arg.type, _int_vtype(INT_TYPES.get(spec.return_arg.type, "long")),
                             L.SRC_RETVAL, 0, label=spec.return_arg.label)
    for slot, a in enumerate(spec.args):
        if a.index > 4:
            pl.reason, pl.reason_loc = f"uprobe arguments are read from registers 0..4; index {a.index}", a.at("index")
            return pl
        plan, why = _value_arg(a, slot, L.SRC_REGS, a.index, user=True, kernel_types_ok=False,
                               why_no_kernel="uprobe arguments are user-space values")
        if plan is None:
            pl.reason, pl.reason_loc = why, a.at("type")
            return pl
        pl.args.append(plan)
    return pl


def place_lsm(spec: LsmHookSpec, index: int, has: Probe) -> Placement:
    pl = Placement("lsmhooks", index, spec.loc, spec.hook, event_kind="process_lsm")
    ok, why = has("lsm")
    if not ok:
        pl.reason = f"BPF LSM hooks unavailable on this kernel: {why}"
        return pl
    pl.mechanism, pl.entry_prog = "lsm", "vigil_lsm"
    pl.attach = {"func": spec.hook}
    for slot, a in enumerate(spec.args):
        if a.index > 4:
            pl.reason, pl.reason_loc = f"LSM hook arguments 0..4 can be read; index {a.index}", a.at("index")
            return pl
        plan, why = _value_arg(a, slot, L.SRC_RAW, a.index, user=False, kernel_types_ok=True, why_no_kernel="")
        if plan is None:
            pl.reason, pl.reason_loc = why, a.at("type")
            return pl
        if a.type == "sockaddr":
            plan.vtype = L.T["ksockaddr"]
        pl.args.append(plan)
    return pl


def place_usdt(spec: UsdtSpec, index: int) -> Placement:
    pl = Placement("usdts", index, spec.loc, f"{spec.path}:{spec.provider}:{spec.name}")
    pl.reason = "usdts are not supported by this Vigil build yet"
    return pl
