"""Placement of syscall policies whose Override must refuse the operation before it happens.

Best: the BPF LSM hook guarding the operation; the syscall arguments the hook sees in another
form (a path instead of the user's string) are read in that form, the others from the
syscall's saved registers, so the event still carries every argument. Without BPF LSM:
fanotify permission events (exec, open of existing files) or cgroup-BPF socket hooks
(connect, sendmsg, bind). Anything else is refused with the reason (or degraded on the user's
request).
"""
from __future__ import annotations

from vigil.kernel import policy_layout as L
from vigil.kernel.facts import KernelFacts

from .model import KProbeSpec
from .placement import ArgPlan, Placement, plan_arg
from .syscall_place import Syscall

# Syscalls whose Override is enforced at the LSM hook guarding the same operation:
# syscall -> (hook, {syscall arg index: (hook arg index, reader, extra)}). `extra` is the
# hook argument holding the child dentry for path_child readers.
LSM_FOR_SYSCALL: dict[str, tuple[str, dict[int, tuple[int, str, int]]]] = {
    "openat": ("file_open", {1: (0, "file", 0)}),
    "openat2": ("file_open", {1: (0, "file", 0)}),
    "open": ("file_open", {0: (0, "file", 0)}),
    "creat": ("file_open", {0: (0, "file", 0)}),
    "execve": ("bprm_check_security", {0: (0, "linux_binprm", 0)}),
    "execveat": ("bprm_check_security", {1: (0, "linux_binprm", 0)}),
    "connect": ("socket_connect", {0: (0, "socket", 0), 1: (1, "ksockaddr", 0)}),
    "bind": ("socket_bind", {0: (0, "socket", 0), 1: (1, "ksockaddr", 0)}),
    "mkdirat": ("path_mkdir", {1: (0, "path_child", 1)}),
    "mkdir": ("path_mkdir", {0: (0, "path_child", 1)}),
    "symlinkat": ("path_symlink", {2: (0, "path_child", 1), 0: (2, "kstring", 0)}),
    "symlink": ("path_symlink", {1: (0, "path_child", 1), 0: (2, "kstring", 0)}),
    "linkat": ("path_link", {1: (0, "dentry_path", 0), 3: (1, "path_child", 2)}),
    "link": ("path_link", {0: (0, "dentry_path", 0), 1: (1, "path_child", 2)}),
    "unlinkat": ("path_unlink", {1: (0, "path_child", 1)}),
    "unlink": ("path_unlink", {0: (0, "path_child", 1)}),
    "rmdir": ("path_rmdir", {0: (0, "path_child", 1)}),
    "truncate": ("path_truncate", {0: (0, "path", 0)}),
    "renameat2": ("path_rename", {1: (0, "path_child", 1), 3: (2, "path_child", 3)}),
    "renameat": ("path_rename", {1: (0, "path_child", 1), 3: (2, "path_child", 3)}),
    "rename": ("path_rename", {0: (0, "path_child", 1), 1: (2, "path_child", 3)}),
    "chmod": ("path_chmod", {0: (0, "path", 0)}),
    "fchmodat": ("path_chmod", {1: (0, "path", 0)}),
    "chown": ("path_chown", {0: (0, "path", 0)}),
    "fchownat": ("path_chown", {1: (0, "path", 0)}),
    "kill": ("task_kill", {}),
    "setuid": ("task_fix_setuid", {}),
    "setgid": ("task_fix_setgid", {}),
    "mount": ("sb_mount", {}),
    "umount2": ("sb_umount", {}),
    "pivot_root": ("sb_pivotroot", {}),
    "bpf": ("bpf", {}),
    "perf_event_open": ("perf_event_open", {}),
}


def place_syscall_on_lsm(spec: KProbeSpec, section: str, index: int, sc: Syscall,
                         facts: KernelFacts, call: str = "") -> Placement | None:
    """A syscall policy with Override: enforce it at the LSM hook guarding the operation.
    None when no LSM hook guards the syscall."""
    if sc.abi != "x64" or sc.name not in LSM_FOR_SYSCALL:
        return None
    hook, argmap = LSM_FOR_SYSCALL[sc.name]
    call = call or spec.call
    pl = Placement(section, index, spec.loc, call, event_kind="process_kprobe")
    ok, why = facts.has("lsm")
    if not ok:
        pl.block(spec.loc, f"Override of {call} needs the BPF LSM hook {hook}: {why}", "kernel")
        return pl
    if facts.has_function(f"bpf_lsm_{hook}") is False:
        pl.block(spec.loc, f"Override of {call}: this kernel has no LSM hook {hook}", "kernel")
        return pl
    pl.mechanism, pl.entry_prog = "lsm", "vigil_lsm"
    pl.attach = {"func": hook, "syscall": sc.symbol}
    # the hook guards other operations too: act only inside this syscall
    pl.guards = [(L.RAW_SYSNR, L.G_EQ, sc.nr or 0), (L.RAW_COMPAT, L.G_EQ, 0)]
    pl.override = f"BPF LSM hook {hook}, which guards {sc.name}"
    pl.notes.append(f"Override of {sc.symbol} enforced at LSM {hook}")
    if spec.return_:
        pl.block(spec.at("return"), f"return: true cannot be combined with Override enforced at LSM {hook} "
                 "(no syscall return there)", "policy")
    from_regs = []
    for slot, a in enumerate(spec.args):
        m = argmap.get(a.index)
        if m is None:
            # not in the hook's arguments: the syscall's own argument, from its saved registers
            if a.index > 5:
                pl.block(a.at("index"), f"syscalls have 6 arguments; index {a.index} is out of range", "policy")
                continue
            plan = plan_arg(pl, a, slot, L.SRC_SYSREGS, a.index, user=True, facts=facts,
                            what=f"argument {a.index} of the {sc.name} syscall")
            if plan is not None:
                pl.args.append(plan)
                from_regs.append(a.index)
            continue
        hook_idx, reader, extra = m
        plan = ArgPlan(slot, a.type, L.T[reader], L.SRC_RAW, hook_idx, label=a.label, index=a.index)
        if reader == "path_child":
            plan.size_arg = extra + 1  # raw argument holding the child dentry (1-based)
        if a.type in ("string", "filename") and reader in ("file", "path", "path_child", "linux_binprm", "kstring",
                                                           "dentry_path"):
            plan.render = "string"
        elif (a.type == "sockaddr" and reader == "ksockaddr") or (a.type == "fd" and reader == "socket"):
            plan.render = ""
        elif a.type not in ("string", "filename", "sockaddr", "fd", "file", "path"):
            pl.block(a.at("type"), f'argument type "{a.type}" cannot be read at LSM {hook} (where the Override of '
                     f"{sc.symbol} is enforced, argument {a.index} is a {reader})", "vigil")
            continue
        if reader == "dentry_path":
            pl.notes.append(f"argument {a.index} is the path within its file system (the LSM hook has no mount)")
        pl.args.append(plan)
    if from_regs:
        pl.notes.append(f"argument{'s' if len(from_regs) > 1 else ''} {', '.join(map(str, from_regs))} read from "
                        "the syscall's registers")
    return pl


# Syscalls this host can refuse without BPF LSM: exec and open of existing files through
# fanotify permission events, socket operations through cgroup-BPF sock_addr hooks.
HOST_DENY: dict[str, tuple[str, str, int]] = {
    # syscall: (mechanism, what, index of the path / sockaddr argument)
    "execve": ("fanotify", "exec", 0),
    "execveat": ("fanotify", "exec", 1),
    "openat": ("fanotify", "open", 1),
    "openat2": ("fanotify", "open", 1),
    "open": ("fanotify", "open", 0),
    "connect": ("cgroup_sock_addr", "connect", 1),
    "sendto": ("cgroup_sock_addr", "sendmsg", 4),
    "sendmsg": ("cgroup_sock_addr", "sendmsg", 1),
    "bind": ("cgroup_sock_addr", "bind", 1),
}


def place_syscall_on_host(spec: KProbeSpec, section: str, index: int, sc: Syscall, facts: KernelFacts,
                          lsm_reason: str, call: str = "") -> Placement:
    """Override without BPF LSM: refuse the operation before it happens by other means, or say why not."""
    call = call or spec.call
    pl = Placement(section, index, spec.loc, call, event_kind="process_kprobe")
    if sc.abi != "x64" or sc.name not in HOST_DENY:
        pl.block(spec.at("call"), f"this kernel cannot refuse {call} before it takes effect ({lsm_reason}); "
                 "use Sigkill, or set the policy option `vigil-enforce-fallback: sigkill` to kill the caller "
                 "after the fact", "kernel")
        return pl
    mech, what, arg_index = HOST_DENY[sc.name]
    feature = "fanotify_perm" if mech == "fanotify" else f"cgroup_{'connect4' if what == 'connect' else what + '4'}"
    ok, why = facts.has(feature)
    if not ok:
        pl.block(spec.loc, f"Override of {call} needs BPF LSM ({lsm_reason}) or {feature} ({why})", "kernel")
        return pl
    if spec.return_:
        pl.block(spec.at("return"), f"return: true cannot be combined with Override enforced by {mech}", "policy")
    pl.mechanism = mech
    pl.attach = {"func": what, "syscall": sc.symbol, "what": what}
    if mech == "fanotify":
        pl.override = ("fanotify " + ("FAN_OPEN_EXEC_PERM" if what == "exec" else "FAN_OPEN_PERM")
                       + " through the native permission helper")
        pl.notes.append(f"Override of {call} enforced by {pl.override} (only the paths the selectors name "
                        "are marked)" + (" (opens of existing files; creating a file is not prevented)"
                                         if what == "open" else ""))
        pl.notes.append(f"a file no selector matches is answered once, then the kernel stops asking about it "
                        f"until it is written to, renamed, linked or changed; not while any loaded {what} rule "
                        "reads the caller (matchBinaries, matchPIDs), whose answer depends on who asks")
        if what == "exec":
            pl.notes.append("a Sigkill action instead of Override is decided in the kernel with no user-space "
                            "round trip (the new image never runs its first instruction), at the cost of a "
                            "killed caller instead of EPERM")
    else:
        pl.override = f"cgroup/{what}4+6 (all cgroups)"
        pl.notes.append(f"Override of {call} enforced by {pl.override}")
        if what == "sendmsg":
            # sendto/sendmsg(MSG_FASTOPEN) on TCP connects, and the kernel checks it at the connect hook
            ok, why = facts.has("cgroup_connect4")
            if not ok:
                pl.block(spec.loc, f"Override of {call} also needs cgroup_connect4 ({why}): TCP Fast Open "
                         "(MSG_FASTOPEN) sends are checked only at the cgroup connect hook", "kernel")
            pl.notes.append("TCP Fast Open sends (MSG_FASTOPEN) are refused at cgroup/connect4+6, where the kernel "
                            "checks them; a connect() to the same address is not")
    for slot, a in enumerate(spec.args):
        if a.index != arg_index:
            pl.block(a.at("index"), f"argument index {a.index} of {call} is not available to {mech}, which "
                     f"enforces its Override here (only index {arg_index})", "kernel")
            continue
        want = "sockaddr" if mech == "cgroup_sock_addr" else "string"
        if a.type not in (want, "filename" if want == "string" else want):
            pl.block(a.at("type"), f'argument {a.index} of {call} must be type "{want}" here', "policy")
            continue
        plan = ArgPlan(slot, a.type, L.T["ksockaddr" if want == "sockaddr" else "string"], 0, a.index,
                       label=a.label, index=a.index)
        if want == "string":
            plan.render = "string"
        pl.args.append(plan)
    return pl
