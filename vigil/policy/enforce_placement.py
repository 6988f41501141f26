"""Placement of syscall policies whose Override must refuse the operation before it happens.

Best: the BPF LSM hook guarding the operation. Without BPF LSM: fanotify permission
events (exec, open of existing files) or cgroup-BPF socket hooks (connect, sendmsg,
bind). Anything else is refused with the reason (or degraded on the user's request).
"""
from __future__ import annotations

from vigil.kernel import policy_layout as L
from .model import KProbeSpec
from .placement import ArgPlan, Placement, Probe
from .values import syscall_base


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
    "linkat": ("path_link", {3: (1, "path_child", 2)}),
    "link": ("path_link", {1: (1, "path_child", 2)}),
    "unlinkat": ("path_unlink", {1: (0, "path_child", 1)}),
    "unlink": ("path_unlink", {0: (0, "path_child", 1)}),
    "truncate": ("path_truncate", {0: (0, "path", 0)}),
}


def place_syscall_on_lsm(spec: KProbeSpec, section: str, index: int, call: str, has: Probe) -> Placement | None:
    """A syscall policy with Override: enforce it at the LSM hook guarding the operation.

    Returns None when the syscall has no guarding LSM hook (the caller reports why)."""
    base = syscall_base(call) or call
    if base not in LSM_FOR_SYSCALL:
        return None
    hook, argmap = LSM_FOR_SYSCALL[base]
    pl = Placement(section, index, spec.loc, call, event_kind="process_kprobe")
    ok, why = has("lsm")
    if not ok:
        pl.reason = f"Override of {call} needs the BPF LSM hook {hook}: {why}"
        return pl
    pl.mechanism, pl.entry_prog = "lsm", "vigil_lsm"
    pl.attach = {"func": hook, "syscall": f"__x64_sys_{base}"}
    pl.notes.append(f"Override of {call} enforced at LSM {hook}")
    if spec.return_:
        pl.reason = f"return: true cannot be combined with Override enforced at LSM {hook} (no syscall return there)"
        pl.reason_loc = spec.at("return")
        return pl
    for slot, a in enumerate(spec.args):
        m = argmap.get(a.index)
        if m is None:
            pl.reason = (f"argument index {a.index} of {call} is not available at LSM {hook}, where its "
                         f"Override is enforced (available: {sorted(argmap)})")
            pl.reason_loc = a.at("index")
            return pl
        hook_idx, reader, extra = m
        plan = ArgPlan(slot, a.type, L.T[reader], L.SRC_RAW, hook_idx, label=a.label, index=a.index)
        if reader == "path_child":
            plan.size_arg = extra + 1  # raw argument holding the child dentry (1-based)
        if a.type in ("string", "filename") and reader in ("file", "path", "path_child", "linux_binprm", "kstring"):
            plan.render = "string"
        elif a.type == "sockaddr" and reader == "ksockaddr":
            plan.render = ""
        elif a.type == "fd" and reader == "socket":
            plan.render = ""
        elif a.type not in ("string", "filename", "sockaddr", "fd", "file", "path"):
            pl.reason = f'argument type "{a.type}" cannot be read at LSM {hook}'
            pl.reason_loc = a.at("type")
            return pl
        pl.args.append(plan)
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


def place_syscall_on_host(spec: KProbeSpec, section: str, index: int, call: str, has: Probe,
                          lsm_reason: str) -> Placement:
    """Override without BPF LSM: refuse the operation before it happens by other means, or say why not."""
    base = syscall_base(call) or call
    pl = Placement(section, index, spec.loc, call, event_kind="process_kprobe")
    if base not in HOST_DENY:
        pl.reason = (f"this kernel cannot refuse {call} before it takes effect ({lsm_reason}); "
                     "use Sigkill, or set the policy option `vigil-enforce-fallback: sigkill` to kill "
                     "the caller after the fact")
        return pl
    mech, what, arg_index = HOST_DENY[base]
    feature = "fanotify_perm" if mech == "fanotify" else f"cgroup_{'connect4' if what == 'connect' else what + '4'}"
    ok, why = has(feature)
    if not ok:
        pl.reason = f"Override of {call} needs BPF LSM ({lsm_reason}) or {feature} ({why})"
        return pl
    if spec.return_:
        pl.reason, pl.reason_loc = f"return: true cannot be combined with Override enforced by {mech}", spec.at("return")
        return pl
    pl.mechanism = mech
    pl.attach = {"func": what, "syscall": f"__x64_sys_{base}", "what": what}
    if mech == "fanotify":
        pl.notes.append(f"Override of {call} enforced by fanotify {'FAN_OPEN_EXEC_PERM' if what == 'exec' else 'FAN_OPEN_PERM'}"
                        " through the native permission helper (only the paths the selectors name are marked)"
                        + (" (opens of existing files; creating a file is not prevented)" if what == "open" else ""))
        if what == "exec":
            pl.notes.append("a Sigkill action instead of Override is decided in the kernel with no user-space "
                            "round trip (the new image never runs its first instruction), at the cost of a "
                            "killed caller instead of EPERM")
    else:
        pl.notes.append(f"Override of {call} enforced by cgroup/{what}4+6 (all cgroups)")
    for slot, a in enumerate(spec.args):
        if a.index != arg_index:
            pl.reason = (f"argument index {a.index} of {call} is not available to {mech}, which enforces its "
                         f"Override (only index {arg_index})")
            pl.reason_loc = a.at("index")
            return pl
        want = "sockaddr" if mech == "cgroup_sock_addr" else "string"
        if a.type not in (want, "filename" if want == "string" else want):
            pl.reason, pl.reason_loc = f'argument {a.index} of {call} must be type "{want}" here', a.at("type")
            return pl
        plan = ArgPlan(slot, a.type, L.T["ksockaddr" if want == "sockaddr" else "string"], 0, a.index,
                       label=a.label, index=a.index)
        if want == "string":
            plan.render = "string"
        pl.args.append(plan)
    return pl
