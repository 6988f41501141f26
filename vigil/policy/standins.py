"""Hook substitution: documented stand-ins for kernel functions and LSM hooks a kernel cannot
hook (no kprobes, no BPF trampolines, no BPF LSM) or does not have (a function renamed or
inlined). Off unless the policy opts in (option `vigil-hook-substitution: "true"`) or the agent
runs with `--hook-substitution`; `vigil policy explain` always says what would be substituted,
and every event of a stand-in carries the tag `vigil:stand-in=<where it ran>`.

Each stand-in names where it runs (a raw tracepoint with typed arguments from BTF, a syscall's
tracepoints, or, for Override, the fanotify permission helper or cgroup socket hooks), where
each argument comes from, and pre-conditions (guards) that pick the right events. An argument
the stand-in does not carry is left out of the event (explain says so); a selector on such an
argument refuses the policy.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vigil.kernel import policy_layout as L
from vigil.kernel.facts import KernelFacts

from . import enums
from .model import KProbeArg, KProbeSpec, LsmHookSpec
from .placement import ArgPlan, Placement, plan_arg, size_arg_slots
from .syscall_place import TRACEPOINT_NAME
from .syscalls import SYSCALL_NUMBERS

OPTION = "vigil-hook-substitution"

TCP = {name.removeprefix("TCP_"): n for name, n in enums.TCP_STATES.items()}
CLONE_NEWUSER = 0x10000000
BPF_MAP_CREATE, BPF_PROG_LOAD = enums.BPF_CMDS["BPF_MAP_CREATE"], enums.BPF_CMDS["BPF_PROG_LOAD"]
MAY_WRITE, MAY_READ = 2, 4


def _bits(*vals: int) -> int:
    out = 0
    for v in vals:
        out |= 1 << v
    return out


@dataclass(frozen=True)
class Src:
    """Where a stand-in takes one argument from."""
    kind: str          # raw | rawtype | sys | ret | const | fdfile | fdsock | resolve | task | capset | userattr
    index: int = 0     # raw/sys argument index
    ctype: str = ""    # raw: its C type when BTF cannot say; rawtype: the C type to look for; resolve: start
    path: str = ""     # resolve/task: field path
    value: int = 0     # const value, capset field (0 effective, 1 permitted, 2 inheritable)
    types: tuple[str, ...] = ()  # policy types this source can give (empty: any)
    reader: str = ""   # read it as this type whatever the policy type says (load_info -> module)


@dataclass(frozen=True)
class Site:
    how: str           # raw_tracepoint | syscall | sys_exit
    name: str          # raw tracepoint, or syscall name
    args: dict[int, Src] = field(default_factory=dict)
    guards: tuple[tuple[int, int, int], ...] = ()
    user_guard: tuple[int, int, int] | None = None  # (sys arg, offset, mask) on a user struct
    ret: Src | None = None   # where the tracepoint carries the function's return value


@dataclass(frozen=True)
class StandIn:
    sites: tuple[Site, ...]
    note: str
    exact: bool = False


FILE_TYPES = ("file", "path", "fd", "string", "filename")


def _fdfile(i: int) -> Src:
    return Src("fdfile", i, types=FILE_TYPES)


_READS = ("read", "readv", "pread64", "preadv", "preadv2")
_WRITES = ("write", "writev", "pwrite64", "pwritev", "pwritev2")
_OPENS = ("open", "openat", "openat2", "creat")
_NONNEG = ((0, L.G_NOMASK, 1 << 63),)  # a syscall return value that is not an error

STATE = "inet_sock_set_state"
STANDINS: dict[str, StandIn] = {
    # ---- sockets
    "tcp_connect": StandIn((Site("raw_tracepoint", STATE, {0: Src("raw", 0)},
                                 ((1, L.G_EQ, TCP["CLOSE"]), (2, L.G_EQ, TCP["SYN_SENT"]))),),
                           "the TCP_CLOSE -> TCP_SYN_SENT transition tcp_v4/v6_connect makes just before it "
                           "calls tcp_connect, in the connecting task"),
    "tcp_close": StandIn((Site("raw_tracepoint", STATE, {0: Src("raw", 0)},
                               ((2, L.G_BIT, _bits(TCP["FIN_WAIT1"], TCP["LAST_ACK"], TCP["CLOSE"])),
                                (1, L.G_BIT, _bits(TCP["ESTABLISHED"], TCP["CLOSE_WAIT"], TCP["LISTEN"],
                                                   TCP["SYN_SENT"], TCP["SYN_RECV"])))),),
                         "the state change closing a socket makes (ESTABLISHED -> FIN_WAIT1, CLOSE_WAIT -> "
                         "LAST_ACK, LISTEN/SYN_SENT -> CLOSE); approximate: shutdown(2) and resets make them too"),
    "tcp_set_state": StandIn((Site("raw_tracepoint", STATE, {0: Src("raw", 0), 1: Src("raw", 2)}),),
                             "every TCP state change (the tracepoint tcp_set_state fires)", exact=True),
    "inet_csk_listen_start": StandIn((Site("raw_tracepoint", STATE, {0: Src("raw", 0)},
                                           ((2, L.G_EQ, TCP["LISTEN"]),)),),
                                     "the transition to TCP_LISTEN inet_csk_listen_start makes"),
    "tcp_sendmsg": StandIn((Site("raw_tracepoint", "tcp_sendmsg_locked",
                                 {0: Src("raw", 0), 1: Src("raw", 1),
                                  2: Src("resolve", 1, "struct msghdr *", "msg_iter.count")}),),
                           "tcp_sendmsg_locked, which tcp_sendmsg calls with the socket locked; size is the "
                           "bytes the message holds"),
    "dev_queue_xmit": StandIn((Site("raw_tracepoint", "net_dev_queue", {0: Src("raw", 0)}),),
                              "the net_dev_queue tracepoint at the start of __dev_queue_xmit", exact=True),
    "__dev_queue_xmit": StandIn((Site("raw_tracepoint", "net_dev_queue", {0: Src("raw", 0)}),),
                                "the net_dev_queue tracepoint at the start of __dev_queue_xmit", exact=True),
    "dev_hard_start_xmit": StandIn((Site("raw_tracepoint", "net_dev_start_xmit", {0: Src("raw", 0),
                                                                                   1: Src("raw", 1)}),),
                                   "net_dev_start_xmit, fired for each packet dev_hard_start_xmit hands to the "
                                   "driver"),
    "kfree_skb_reason": StandIn((Site("raw_tracepoint", "kfree_skb",
                                      {0: Src("rawtype", ctype="struct sk_buff *"),
                                       1: Src("rawtype", ctype="enum skb_drop_reason")}),),
                                "the skb:kfree_skb tracepoint every dropped packet fires", exact=True),
    "sk_skb_reason_drop": StandIn((Site("raw_tracepoint", "kfree_skb",
                                        {1: Src("rawtype", ctype="struct sk_buff *"),
                                         2: Src("rawtype", ctype="enum skb_drop_reason")}),),
                                  "the skb:kfree_skb tracepoint every dropped packet fires", exact=True),
    "security_socket_connect": StandIn((Site("syscall", "connect", {0: Src("fdsock", 0, types=("socket", "sock")),
                                                                   1: Src("sys", 1), 2: Src("sys", 2)}),),
                                       "the connect(2) syscall (arguments as the caller passed them)"),
    "security_socket_bind": StandIn((Site("syscall", "bind", {0: Src("fdsock", 0, types=("socket", "sock")),
                                                             1: Src("sys", 1), 2: Src("sys", 2)}),),
                                    "the bind(2) syscall"),
    # ---- processes, credentials, capabilities
    "create_user_ns": StandIn((Site("syscall", "unshare", {0: Src("task", path="cred", types=("cred",))},
                                    guards=((0, L.G_MASK, CLONE_NEWUSER),)),
                               Site("syscall", "clone", {0: Src("task", path="cred", types=("cred",))},
                                    guards=((0, L.G_MASK, CLONE_NEWUSER),)),
                               Site("syscall", "clone3", {0: Src("task", path="cred", types=("cred",))},
                                    user_guard=(0, 0, CLONE_NEWUSER))),
                              "unshare/clone/clone3 with CLONE_NEWUSER, at syscall entry (before the namespace "
                              "exists); cred is the caller's"),
    "security_bprm_check": StandIn((Site("raw_tracepoint", "sched_prepare_exec", {0: Src("raw", 1)}),),
                                   "sched_prepare_exec, after the exec's point of no return (Sigkill kills the task "
                                   "before the new image runs)"),
    "security_bprm_creds_for_exec": StandIn((Site("raw_tracepoint", "sched_prepare_exec", {0: Src("raw", 1)}),),
                                            "sched_prepare_exec, after the exec's point of no return"),
    "security_bprm_creds_from_file": StandIn((Site("raw_tracepoint", "sched_prepare_exec",
                                                   {0: Src("raw", 1),
                                                    1: Src("resolve", 1, "struct linux_binprm *", "file",
                                                           types=("file",))}),),
                                             "sched_prepare_exec, after the exec's point of no return"),
    "cap_capable": StandIn((Site("raw_tracepoint", "cap_capable",
                                 {0: Src("rawtype", ctype="struct cred *"),
                                  1: Src("rawtype", ctype="struct user_namespace *"),
                                  2: Src("rawtype", ctype="int")},
                                 ret=Src("rawtype", value=1, ctype="int")),),
                           "the capability:cap_capable tracepoint (after the check, with its result; opts not "
                           "carried)"),
    "security_capset": StandIn((Site("syscall", "capset",
                                     {1: Src("task", path="cred", types=("cred",)),
                                      2: Src("capset", 1, value=0, types=("cap_effective", "kernel_cap_t")),
                                      3: Src("capset", 1, value=2, types=("cap_inheritable", "kernel_cap_t")),
                                      4: Src("capset", 1, value=1, types=("cap_permitted", "kernel_cap_t"))}),),
                               "the capset(2) syscall: the sets it asks for, the caller's credentials as old"),
    "security_task_prctl": StandIn((Site("syscall", "prctl", {i: Src("sys", i) for i in range(5)}),),
                                   "the prctl(2) syscall", exact=True),
    # ---- files
    "fd_install": StandIn(tuple(Site("sys_exit", s, {0: Src("ret"), 1: _fdfile(0)}, _NONNEG) for s in _OPENS),
                          "the exit of open/openat/openat2/creat (fd = the returned fd); fds made otherwise "
                          "(socket, pipe, dup, accept, memfd) are not seen"),
    "security_file_open": StandIn(tuple(Site("sys_exit", s, {0: _fdfile(0)}, _NONNEG) for s in _OPENS),
                                  "the exit of a successful open/openat/openat2/creat"),
    "security_file_permission": StandIn(
        tuple(Site("syscall", s, {0: _fdfile(0), 1: Src("const", value=MAY_READ)}) for s in _READS)
        + tuple(Site("syscall", s, {0: _fdfile(0), 1: Src("const", value=MAY_WRITE)}) for s in _WRITES),
        "the read/write family of syscalls (mask MAY_READ or MAY_WRITE); sendfile, splice, io_uring and "
        "mapped memory are not seen"),
    "security_mmap_file": StandIn((Site("syscall", "mmap", {0: _fdfile(4), 1: Src("sys", 2), 2: Src("sys", 3)}),),
                                  "the mmap(2) syscall (file from its fd; anonymous mappings have none)"),
    "security_path_truncate": StandIn((Site("syscall", "truncate", {0: Src("sys", 0, types=("path", "string"))}),
                                       Site("syscall", "ftruncate", {0: _fdfile(0)})),
                                      "truncate(2) (the path as the caller wrote it) and ftruncate(2)"),
    "security_file_truncate": StandIn((Site("syscall", "ftruncate", {0: _fdfile(0)}),), "ftruncate(2)"),
    # ---- BPF and perf
    "bpf_check": StandIn((Site("syscall", "bpf", {1: Src("userattr", 1, types=("bpf_attr",))},
                               ((0, L.G_EQ, BPF_PROG_LOAD),)),),
                         "bpf(BPF_PROG_LOAD), reading the caller's bpf_attr"),
    "security_bpf_map_alloc": StandIn((Site("syscall", "bpf", {0: Src("userattr", 1, types=("bpf_map",))},
                                            ((0, L.G_EQ, BPF_MAP_CREATE),)),),
                                      "bpf(BPF_MAP_CREATE), reading the caller's bpf_attr"),
    "security_bpf_map_create": StandIn((Site("syscall", "bpf", {0: Src("userattr", 1, types=("bpf_map",))},
                                             ((0, L.G_EQ, BPF_MAP_CREATE),)),),
                                       "bpf(BPF_MAP_CREATE), reading the caller's bpf_attr"),
    "security_perf_event_alloc": StandIn((Site("syscall", "perf_event_open",
                                               {0: Src("userattr", 0, types=("perf_event",))}),),
                                         "perf_event_open(2), reading the caller's perf_event_attr"),
    # ---- modules
    "security_kernel_module_request": StandIn((Site("tracepoint", "module/module_request",
                                                    {0: Src("raw", path="name", types=("string",))}),),
                                              "the module:module_request tracepoint"),
    "do_init_module": StandIn((Site("raw_tracepoint", "module_load", {0: Src("raw", 0)}),),
                              "the module:module_load tracepoint"),
    "free_module": StandIn((Site("raw_tracepoint", "module_free", {0: Src("raw", 0)}),),
                           "the module:module_free tracepoint"),
    "find_module_sections": StandIn((Site("raw_tracepoint", "module_load",
                                          {1: Src("raw", 0, types=("load_info", "module"), reader="module")}),),
                                    "the module:module_load tracepoint, after the module's sections are laid out "
                                    "(load_info is read from the module: name, signature, taints)"),
}
# credential syscalls: the kernel's __sys_* helpers take the syscall's arguments
for _n in ("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid"):
    STANDINS[f"__sys_{_n}"] = StandIn((Site("syscall", _n, {i: Src("sys", i) for i in range(3)}),),
                                      f"the {_n}(2) syscall, whose arguments __sys_{_n} takes", exact=True)
# LSM hooks, by hook name
LSM_STANDINS: dict[str, StandIn] = {
    "bprm_check_security": STANDINS["security_bprm_check"],
    "bprm_creds_for_exec": STANDINS["security_bprm_creds_for_exec"],
    "bprm_creds_from_file": STANDINS["security_bprm_creds_from_file"],
    "file_open": STANDINS["security_file_open"],
    "socket_connect": STANDINS["security_socket_connect"],
    "socket_bind": STANDINS["security_socket_bind"],
    "file_permission": STANDINS["security_file_permission"],
    "mmap_file": STANDINS["security_mmap_file"],
    "path_truncate": STANDINS["security_path_truncate"],
    "capset": STANDINS["security_capset"],
    "kernel_module_request": STANDINS["security_kernel_module_request"],
}
# Override of these is enforced by a back end that refuses the operation before it happens
ENFORCE_STANDINS: dict[str, tuple[str, str, dict[int, str]]] = {
    # target: (mechanism, what, {argument index: role})
    "security_bprm_check": ("fanotify", "exec", {0: "path"}),
    "security_bprm_creds_for_exec": ("fanotify", "exec", {0: "path"}),
    "lsm:bprm_check_security": ("fanotify", "exec", {0: "path"}),
    "lsm:bprm_creds_for_exec": ("fanotify", "exec", {0: "path"}),
    "security_file_open": ("fanotify", "open", {0: "path"}),
    "lsm:file_open": ("fanotify", "open", {0: "path"}),
    "security_socket_connect": ("cgroup_sock_addr", "connect", {0: "socket", 1: "sockaddr"}),
    "lsm:socket_connect": ("cgroup_sock_addr", "connect", {0: "socket", 1: "sockaddr"}),
    "security_socket_bind": ("cgroup_sock_addr", "bind", {0: "socket", 1: "sockaddr"}),
    "lsm:socket_bind": ("cgroup_sock_addr", "bind", {0: "socket", 1: "sockaddr"}),
}


# Functions renamed or inlined by newer kernels: the function that does the same job, with
# the argument it has at each index of the old one.
RENAMED: dict[str, StandIn] = {
    "dev_queue_xmit": StandIn((Site("function", "__dev_queue_xmit", {0: Src("raw", 0)}),),
                              "__dev_queue_xmit (dev_queue_xmit is an inline wrapper of it since 5.18)", exact=True),
    "kfree_skb_reason": StandIn((Site("function", "sk_skb_reason_drop", {0: Src("raw", 1), 1: Src("raw", 2)}),),
                                "sk_skb_reason_drop (kfree_skb_reason is an inline wrapper of it since 6.10)",
                                exact=True),
    "security_bpf_map_alloc": StandIn((Site("function", "security_bpf_map_create", {0: Src("raw", 0)}),),
                                      "security_bpf_map_create (security_bpf_map_alloc was renamed in 6.9)",
                                      exact=True),
}


# Stand-ins preferred to the STANDINS one where the kernel offers their site (each is tried
# first; the STANDINS one is the fallback)
PREFERRED: dict[str, StandIn] = {
    # inet_hash_connect binds the source port after the SYN_SENT state change: the state
    # tracepoint's sock has sport 0. tcp_connect's own sock_ops callback comes after it.
    "tcp_connect": StandIn((Site("sock_ops", "BPF_SOCK_OPS_TCP_CONNECT_CB",
                                 {0: Src("raw", 0, ctype="struct sock *")}),),
                           "the BPF_SOCK_OPS_TCP_CONNECT_CB callback tcp_connect makes first, in the "
                           "connecting task, with the source port bound; sock_ops on the root cgroup2, so "
                           "sockets outside cgroup2 (kernel sockets) are not seen; no stack traces"),
}


def candidates(target: str) -> list[StandIn]:
    out = [RENAMED[target]] if target in RENAMED else []
    if target in PREFERRED:
        out.append(PREFERRED[target])
    hit = lookup(target)
    return out + ([hit] if hit is not None else [])


def lookup(target: str) -> StandIn | None:
    """`target`: a kernel function, or lsm:<hook>."""
    if target.startswith("lsm:"):
        return LSM_STANDINS.get(target[4:])
    hit = STANDINS.get(target)
    if hit is None:
        for p in ("__do_sys_", "__se_sys_"):
            if target.startswith(p) and target[len(p):] in SYSCALL_NUMBERS:
                n = target[len(p):]
                return StandIn((Site("syscall", n, {i: Src("sys", i) for i in range(6)}),),
                               f"the {n}(2) syscall, whose arguments {target} takes", exact=True)
    return hit


def describe(target: str) -> str:
    """One line for explain: what the stand-in of `target` is (empty: none)."""
    parts = []
    for s in candidates(target):
        where = ", ".join(sorted({_site_where(x) for x in s.sites}))
        parts.append(f"{where} ({s.note})")
    e = ENFORCE_STANDINS.get(target)
    if e is not None:
        parts.append(f"Override by {e[0]} {e[1]}")
    return "; ".join(parts)


def _site_where(site: Site) -> str:
    if site.how == "sock_ops":
        return f"sock_ops:{site.name}"
    if site.how == "function":
        return f"function:{site.name}"
    if site.how == "raw_tracepoint":
        return f"raw_tracepoint:{site.name}"
    if site.how == "tracepoint":
        return f"tracepoint:{site.name}"
    tp = TRACEPOINT_NAME.get(site.name, site.name)
    return f"tracepoint:syscalls/sys_{'exit' if site.how == 'sys_exit' else 'enter'}_{tp}"


FALLBACK_NOTE = "not on its preferred stand-in"


def place(spec: KProbeSpec | LsmHookSpec, section: str, index: int, target: str, facts: KernelFacts,
          stand: StandIn) -> list[Placement]:
    """The placements of a stand-in (one per site), each with blockers if it cannot run. The
    fallback of a PREFERRED stand-in the kernel cannot run says why in a note (FALLBACK_NOTE:
    explain shows it, the load logs it)."""
    out = []
    label = target[4:] if target.startswith("lsm:") else target
    pref = PREFERRED.get(target)
    fallback_why = ""
    if pref is not None and stand is not pref:
        why = sorted({b.message for c in place(spec, section, index, target, facts, pref) for b in c.blockers
                      if b.cause == "kernel"})
        if why:
            fallback_why = f"{FALLBACK_NOTE}: {'; '.join(why)}"
    for site in stand.sites:
        pl = Placement(section, index, spec.loc, label,
                       event_kind="process_lsm" if target.startswith("lsm:") else "process_kprobe")
        pl.attach = {"event_func": label}
        pl.substitute = _site_where(site)
        pl.notes.append(f"stand-in for {label}: {pl.substitute} ({stand.note})")
        pl.guards = list(site.guards)
        if fallback_why:
            pl.notes.append(f"{label} runs on {pl.substitute}, {fallback_why}")
        _site_mechanism(pl, spec, site, facts)
        lacking: list[int] = []
        params = (facts.tp_btf_params(site.name) if site.how == "raw_tracepoint" else
                  facts.func_params(site.name) if site.how == "function" else None)
        for slot, a in enumerate(spec.args):
            src = site.args.get(a.index)
            if src is None:
                lacking.append(a.index)
                continue
            plan = _plan(pl, a, slot, src, site, params, facts)
            if plan is not None:
                pl.args.append(plan)
        if lacking:
            pl.notes.append(f"argument{'s' if len(lacking) > 1 else ''} {', '.join(map(str, lacking))} of {label} "
                            f"{'are' if len(lacking) > 1 else 'is'} not carried by the stand-in: left out of events")
        pl.attach["lacking"] = lacking
        # slots must be dense: renumber after leaving arguments out
        for k, p in enumerate(pl.args):
            p.slot = k
        size_arg_slots(pl)
        if getattr(spec, "return_", False):
            if site.how == "function":
                from .placement import return_plan

                pl.return_prog = "vigil_fexit" if pl.mechanism == "fentry" else "vigil_kretprobe"
                if pl.mechanism == "fentry" and not facts.has("fexit")[0]:
                    pl.block(spec.at("return"), f"return: true on {pl.substitute} needs fexit", "kernel")
                pl.ret = return_plan(spec)  # type: ignore[arg-type]
            elif site.ret is not None and params is not None:
                idx = [i for i, (_n, t) in enumerate(params) if t == site.ret.ctype]
                if len(idx) > site.ret.value:
                    from .placement import return_plan

                    pl.ret_raw = idx[site.ret.value] + 1
                    pl.ret = return_plan(spec)  # type: ignore[arg-type]
                    pl.notes.append(f"the return value is the tracepoint's {site.ret.ctype} argument "
                                    f"{idx[site.ret.value]}")
                else:
                    pl.block(spec.at("return"), f"return: true: the stand-in {pl.substitute} has no return "
                             "value on this kernel", "kernel")
            elif site.how == "syscall":
                tp = TRACEPOINT_NAME.get(site.name, site.name)
                pl.return_prog = "vigil_sys_exit"
                pl.attach["exit_name"] = f"sys_exit_{tp}"
                from .placement import return_plan

                pl.ret = return_plan(spec)  # type: ignore[arg-type]
                if label.startswith("security_") or target.startswith("lsm:"):
                    # an LSM hook returns 0 or -errno, not what the syscall returns (bytes, an fd,
                    # an address): the syscall's success reads as the hook's 0
                    pl.attach["ret_errno"] = True
                    pl.notes.append(f"the return value is 0 where the {site.name} syscall succeeds, its error "
                                    f"otherwise ({label} returns 0 or -errno)")
                else:
                    pl.notes.append(f"the return value is the {site.name} syscall's")
            else:
                pl.block(spec.at("return"), f"return: true: the stand-in {pl.substitute} has no return value",
                         "kernel")
        out.append(pl)
    return out


def _site_mechanism(pl: Placement, spec: KProbeSpec | LsmHookSpec, site: Site, facts: KernelFacts) -> None:
    if site.how == "sock_ops":
        ok, why = facts.has("cgroup_sock_ops")
        if not ok:
            pl.block(spec.loc, f"stand-in {pl.substitute} needs sock_ops programs with tracing helpers that see "
                     f"every socket from the root cgroup2 (probe cgroup_sock_ops): {why}", "kernel")
        for sel in spec.selectors:
            for act in sel.match_actions:
                if act.kernel_stack_trace or act.user_stack_trace:
                    pl.block(act.at("action"), f"stand-in {pl.substitute}: sock_ops programs cannot read stack "
                             "traces (kernelStackTrace/userStackTrace)", "kernel")
        pl.mechanism, pl.entry_prog = "sock_ops", "vigil_sockops"
        pl.attach.update({"func": site.name})
        return
    if site.how == "function":
        if facts.has_function(site.name) is False:
            pl.block(spec.loc, f"stand-in {pl.substitute}: no such function on this kernel", "kernel")
        ok_f, why_f = facts.has("fentry")
        ok_k, why_k = facts.has("kprobe")
        if ok_f:
            pl.mechanism, pl.entry_prog = "fentry", "vigil_fentry"
        elif ok_k:
            pl.mechanism, pl.entry_prog = "kprobe", "vigil_kprobe"
        else:
            pl.block(spec.loc, f"stand-in {pl.substitute} needs kprobes or fentry (kprobe: {why_k}; fentry: "
                     f"{why_f})", "kernel")
        pl.attach.update({"func": site.name})
        return
    if site.how == "raw_tracepoint":
        ok, why = facts.has("raw_tracepoint")
        if not ok:
            pl.block(spec.loc, f"stand-in {pl.substitute} needs raw tracepoints: {why}", "kernel")
        if facts.has_raw_tracepoint(site.name) is False:
            pl.block(spec.loc, f"stand-in {pl.substitute}: no such tracepoint on this kernel", "kernel")
        pl.mechanism, pl.entry_prog = "raw_tracepoint", "vigil_raw_tp"
        pl.attach.update({"name": site.name, "category": ""})
        return
    if site.how == "tracepoint":
        cat, _, name = site.name.partition("/")
        if not (facts.ideal_kernel or facts.has_tracepoint(cat, name)):
            pl.block(spec.loc, f"stand-in {pl.substitute}: no such tracepoint on this kernel", "kernel")
        pl.mechanism, pl.entry_prog = "tracepoint", "vigil_tp"
        pl.attach.update({"category": cat, "name": name})
        return
    tp = TRACEPOINT_NAME.get(site.name, site.name)
    kind = "exit" if site.how == "sys_exit" else "enter"
    if not (facts.ideal_kernel or facts.has_tracepoint("syscalls", f"sys_{kind}_{tp}")):
        pl.block(spec.loc, f"stand-in {pl.substitute}: no such tracepoint on this kernel", "kernel")
    pl.mechanism = "tracepoint"
    pl.entry_prog = ("vigil_sys_exit_entry" if site.how == "sys_exit"
                    else f"vigil_sys_enter{facts.syscall_arity(tp)}")
    pl.attach.update({"category": "syscalls", "name": f"sys_{kind}_{tp}"})
    if site.user_guard is not None:
        pl.guards.append((site.user_guard[0], L.G_UMASK, site.user_guard[2]))


def _plan(pl: Placement, a: KProbeArg, slot: int, src: Src, site: Site, params: list | None,
          facts: KernelFacts) -> ArgPlan | None:
    if src.types and a.type not in src.types and a.type != "nop":
        pl.block(a.at("type"), f"the stand-in {pl.substitute} gives argument {a.index} as "
                 f"{'/'.join(src.types)}, not {a.type}", "policy")
        return None
    syscall_src = L.SRC_SYSCALL if site.how == "syscall" else L.SRC_RAW
    if src.kind in ("raw", "rawtype"):
        idx = src.index
        ctype = src.ctype or None
        if params is not None:
            if src.kind == "rawtype":
                idx = next((i for i, (_n, t) in enumerate(params) if t == src.ctype), -1)
                if idx < 0:
                    pl.block(a.at("index"), f"the stand-in {pl.substitute} has no {src.ctype} argument on this "
                             "kernel", "kernel")
                    return None
            ctype = params[idx][1] if idx < len(params) else ctype
        elif src.kind == "rawtype" and not facts.ideal_kernel:
            pl.block(a.at("index"), f"the stand-in {pl.substitute} needs the kernel's BTF to find its "
                     f"{src.ctype} argument", "kernel")
            return None
        if site.how == "tracepoint":
            return _tp_field(pl, a, slot, src, facts)
        raw_src = L.SRC_REGS if pl.mechanism == "kprobe" else L.SRC_RAW
        if src.reader:
            return ArgPlan(slot, a.type, L.T[src.reader], raw_src, idx, label=a.label, index=a.index)
        return plan_arg(pl, a, slot, raw_src, idx, user=False, facts=facts, ctype=ctype,
                        what=f"argument {a.index}")
    if src.kind == "sys":
        if a.type in ("path", "file"):  # a path the caller passed as a string
            p = ArgPlan(slot, a.type, L.T["string"], syscall_src, src.index, label=a.label, index=a.index)
            p.render = a.type
            return p
        return plan_arg(pl, a, slot, syscall_src, src.index, user=True, facts=facts, what=f"argument {a.index}")
    if src.kind == "ret":
        return plan_arg(pl, a, slot, L.SRC_RAW, 0, user=True, facts=facts, what="the returned value")
    if src.kind == "const":
        p = plan_arg(pl, dataclasses.replace(a, type=a.type if a.type in ("int", "uint32", "int32") else "int"),
                     slot, L.SRC_CONST, 0, user=True, facts=facts)
        if p is not None:
            p.konst = src.value
            p.policy_type = a.type
        return p
    if src.kind == "fdfile":
        raw_src = L.SRC_RAW if site.how == "sys_exit" else syscall_src
        p = ArgPlan(slot, a.type, L.T["fd"], raw_src, src.index, label=a.label, index=a.index)
        p.render = {"path": "path", "string": "string", "filename": "string"}.get(a.type, "file")
        return p
    if src.kind == "fdsock":
        return ArgPlan(slot, a.type, L.T["fd_sock"], syscall_src, src.index, label=a.label, index=a.index)
    if src.kind == "capset":
        p = ArgPlan(slot, a.type, L.T["capset"], syscall_src, src.index, label=a.label, index=a.index)
        p.off2 = src.value
        return p
    if src.kind == "userattr":
        p = ArgPlan(slot, a.type, L.T[{"bpf_attr": "bpf_attr", "bpf_map": "bpf_map",
                                         "perf_event": "perf_event"}[a.type]], syscall_src, src.index,
                    label=a.label, index=a.index)
        p.user = True
        return p
    if src.kind in ("resolve", "task"):
        a2 = dataclasses.replace(a, resolve=src.path) if not a.resolve else a
        if src.kind == "task":
            p = plan_arg(pl, a2, slot, L.SRC_TASK, 0, user=False, facts=facts, ctype="struct task_struct *")
        else:
            ctype = params[src.index][1] if params and src.index < len(params) else src.ctype
            p = plan_arg(pl, a2, slot, L.SRC_RAW, src.index, user=False, facts=facts, ctype=ctype)
        return p
    raise ValueError(src.kind)


def _tp_field(pl: Placement, a: KProbeArg, slot: int, src: Src, facts: KernelFacts) -> ArgPlan | None:
    fields = facts.tp_format(pl.attach["category"], pl.attach["name"]) or []
    f = next((x for x in fields if x.name == src.path), None)
    if f is None:
        if not facts.ideal_kernel:
            pl.block(a.at("index"), f"the stand-in {pl.substitute} has no field {src.path} here", "kernel")
        return None
    p = ArgPlan(slot, a.type, L.T["data_loc"] if f.type.startswith("__data_loc") else L.T["size"], L.SRC_CTX,
                f.offset, size=4 if f.type.startswith("__data_loc") else min(f.size, 8), label=a.label,
                index=a.index)
    return p


def enforce_placement(spec: KProbeSpec | LsmHookSpec, section: str, index: int, target: str,
                      facts: KernelFacts) -> Placement | None:
    """Override of an LSM/security function by the host back ends (fanotify, cgroup sock_addr)."""
    e = ENFORCE_STANDINS.get(target)
    if e is None:
        return None
    mech, what, roles = e
    label = target[4:] if target.startswith("lsm:") else target
    pl = Placement(section, index, spec.loc, label,
                   event_kind="process_lsm" if target.startswith("lsm:") else "process_kprobe")
    pl.substitute = f"{mech}:{what}"
    feature = "fanotify_perm" if mech == "fanotify" else f"cgroup_{'connect4' if what == 'connect' else what + '4'}"
    ok, why = facts.has(feature)
    if not ok:
        pl.block(spec.loc, f"Override of {label} by {mech} needs {feature}: {why}", "kernel")
    if getattr(spec, "return_", False):
        pl.block(spec.at("return"), f"return: true cannot be combined with Override enforced by {mech}", "policy")
    pl.mechanism = mech
    pl.attach = {"func": what, "syscall": label, "event_func": label, "what": what}
    pl.override = (f"fanotify {'FAN_OPEN_EXEC_PERM' if what == 'exec' else 'FAN_OPEN_PERM'} through the native "
                   "permission helper" if mech == "fanotify" else f"cgroup/{what}4+6 (all cgroups)")
    pl.notes.append(f"stand-in for {label}: Override enforced by {pl.override}"
                    + (" (opens of existing files)" if what == "open" else ""))
    lacking = []
    for a in spec.args:
        role = roles.get(a.index)
        if role is None:
            lacking.append(a.index)
            continue
        vt = {"path": "string", "socket": "socket", "sockaddr": "ksockaddr"}[role]
        p = ArgPlan(len(pl.args), a.type, L.T[vt], 0, a.index, label=a.label, index=a.index)
        if role == "path":
            p.render = {"linux_binprm": "linux_binprm", "file": "file", "path": "path"}.get(a.type, "string")
        pl.args.append(p)
    pl.attach["lacking"] = lacking
    pl.attach["roles"] = {a.index: roles.get(a.index) for a in spec.args}
    if lacking:
        pl.notes.append(f"arguments {lacking} are not carried by {mech}: left out of events")
    return pl
