"""Syscall hooks: which syscall a `call` names, and the tracepoint it runs on.

`sys_openat`, `__x64_sys_openat`, `__arm64_sys_openat` and (with syscall: true) a bare
`openat` all name the 64-bit openat syscall, so one policy file serves every architecture;
`__ia32_sys_dup` / `__ia32_compat_sys_*` name the 32-bit one. A syscall runs on its
`syscalls:sys_enter_<name>` tracepoint (whose name may differ: fstat -> newfstat), or, when
the kernel has none for it, on `raw_syscalls` filtered by number; 32-bit syscalls never reach
`syscalls:*` tracepoints and always run on `raw_syscalls` (filtered by number and ABI).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vigil.kernel import policy_layout as L
from vigil.kernel.facts import KernelFacts

from .model import KProbeSpec
from .placement import Placement, plan_arg, return_plan, size_arg_slots
from .syscalls import SYSCALL_NUMBERS, SYSCALLS_I386

# syscall name -> its tracepoint's name, where they differ (x86_64)
TRACEPOINT_NAME = {
    "fstat": "newfstat", "stat": "newstat", "lstat": "newlstat", "uname": "newuname",
    "sendfile": "sendfile64", "umount2": "umount", "fstatat": "newfstatat",
}
ARCH_PREFIXES = ("__x64_sys_", "__arm64_sys_", "__riscv_sys_", "__s390x_sys_", "__se_sys_", "__do_sys_", "sys_")
I386_PREFIXES = ("__ia32_compat_sys_", "__ia32_sys_")


@dataclass(frozen=True)
class Syscall:
    name: str        # without prefix
    abi: str         # x64 | i386
    nr: int | None   # None: not a syscall of this ABI

    @property
    def symbol(self) -> str:
        """What Tetragon reports as function_name on x86_64."""
        return f"__ia32_sys_{self.name}" if self.abi == "i386" else f"__x64_sys_{self.name}"


def parse_syscall(call: str, syscall_flag: bool) -> Syscall | None:
    """The syscall `call` names, or None when it names a kernel function."""
    for p in I386_PREFIXES:
        if call.startswith(p):
            base = call[len(p):]
            return Syscall(base, "i386", SYSCALLS_I386.get(base))
    for p in ARCH_PREFIXES:
        if call.startswith(p):
            base = call[len(p):]
            if p in ("sys_", "__x64_sys_") or syscall_flag:
                return Syscall(base, "x64", SYSCALL_NUMBERS.get(base))
            return None
    if syscall_flag:
        return Syscall(call, "x64", SYSCALL_NUMBERS.get(call))
    return None


def list_syscall_numbers(lists: Mapping[str, Any], name: str) -> list[int]:
    """Syscall numbers of a spec.lists entry (for syscall64 InMap), as the kernel side reports
    them: 32-bit syscalls with bit 31 (the compiler and the evaluator both read lists here)."""
    lst = lists.get(name)
    if lst is None:
        raise ValueError(f"no list named {name!r} in spec.lists")
    if lst.type == "generated_syscalls":
        return sorted(SYSCALL_NUMBERS.values())
    if lst.type == "generated_ftrace":
        raise ValueError(f"list {name!r} is a generated_ftrace list: it names kernel functions, not syscalls")
    out = []
    for v in lst.values:
        sc = parse_syscall(v if v.startswith(("sys_", "__")) else f"sys_{v}", True)
        if sc is None or sc.nr is None:
            raise ValueError(f"list {name!r}: {v!r} is not an x86_64 or 32-bit syscall")
        out.append(sc.nr | (0x80000000 if sc.abi == "i386" else 0))
    return out


def place_syscall(spec: KProbeSpec, section: str, index: int, call: str, sc: Syscall,
                  facts: KernelFacts) -> Placement:
    pl = Placement(section, index, spec.loc, call, event_kind="process_kprobe")
    pl.attach = {"func": sc.symbol, "syscall": sc.symbol}
    if sc.nr is None:
        abi = "32-bit (ia32)" if sc.abi == "i386" else "x86_64"
        pl.block(spec.at("call"), f'"{sc.name}" is not an {abi} syscall', "policy")
        return pl
    if section == "fentries":
        ok, why = facts.has("fentry")
        if not ok:
            pl.block(spec.loc, f"fentries need BPF trampolines, which this kernel lacks ({why})", "kernel")
    tp = TRACEPOINT_NAME.get(sc.name, sc.name)
    if sc.abi == "x64" and (facts.ideal_kernel or facts.has_tracepoint("syscalls", f"sys_enter_{tp}")):
        ok, why = facts.has("tracepoint")
        if not ok:
            pl.block(spec.loc, f"syscall tracepoints are unavailable on this kernel: {why}", "kernel")
        pl.mechanism, pl.entry_prog = "tracepoint", f"vigil_sys_enter{facts.syscall_arity(tp)}"
        pl.attach.update({"category": "syscalls", "name": f"sys_enter_{tp}"})
        if spec.return_:
            pl.return_prog = "vigil_sys_exit"
            pl.attach["exit_name"] = f"sys_exit_{tp}"
        src = L.SRC_SYSCALL
        if tp != sc.name:
            pl.notes.append(f"the {sc.name} syscall's tracepoint is sys_enter_{tp}")
    else:
        ok, why = facts.has("raw_tracepoint")
        if not ok:
            pl.block(spec.loc, f"{sc.symbol} needs raw_syscalls (raw tracepoints), unavailable here: {why}",
                     "kernel")
        pl.mechanism, pl.entry_prog = "raw_tracepoint", "vigil_raw_sys_enter"
        pl.attach.update({"category": "raw_syscalls", "name": "sys_enter"})
        pl.guards = [(L.RAW_SYSNR, L.G_EQ, sc.nr), (L.RAW_COMPAT, L.G_EQ, 1 if sc.abi == "i386" else 0)]
        if spec.return_:
            pl.return_prog = "vigil_raw_sys_exit"
            pl.attach["exit_name"] = "sys_exit"
        src = L.SRC_RAW
        pl.notes.append(f"raw_syscalls/sys_enter filtered on {sc.abi} syscall number {sc.nr}"
                        + (" (32-bit syscalls never reach syscalls:* tracepoints)" if sc.abi == "i386"
                           else f" (this kernel has no syscalls/sys_enter_{tp})"))
    for slot, a in enumerate(spec.args):
        if a.index > 5:
            pl.block(a.at("index"), f"syscalls have 6 arguments; index {a.index} is out of range", "policy")
            continue
        plan = plan_arg(pl, a, slot, src, a.index, user=True, facts=facts,
                        what=f"argument {a.index} of the {sc.name} syscall")
        if plan is not None:
            pl.args.append(plan)
    size_arg_slots(pl)
    pl.ret = return_plan(spec)
    return pl
