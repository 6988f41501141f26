"""One loaded hook of a policy: a copy of bpf/generic.bpf.c configured by data.

The object shares `events`, `vigil_drops`, `vigil_reader` and `execve_map` with the process
sensor, so its records join the same ordered stream and its selectors see
the binaries the process sensor recorded. Load rolls back on any failure.
"""
from __future__ import annotations

import ctypes
import logging
import os
import struct

from vigil.kernel import BpfObject, Map, policy_layout as L
from vigil.kernel.btf import preempt_count_from_rq
from vigil.kernel.cgroups import tracking as cgroup_tracking
from vigil.kernel.layouts import check_ctypes
from vigil.kernel.paths import bpf_object
from vigil.policy.compile import CompiledHook, entry_prefilter, str_key_size
from vigil.policy.placement import PT_REGS
from vigil.sensors.generic_events import KSYMS

log = logging.getLogger("vigil.sensor.generic")

STATS = ("hits", "filtered", "posted", "ratelimited", "signals", "monitored", "pending_full", "errors",
         "not_workload", "busy", "not_task", "not_owner")
# Tetragon's policy action counters (TracingPolicyActionCounters), in generic.bpf.c's enum
# policy_act order; the kernel's action_stats map holds a row of PA_ROW per selector
ACTION_COUNTERS = ("post", "signal", "monitor_signal", "override", "monitor_override", "notify_enforcer",
                   "monitor_notify_enforcer", "set", "monitor_set", "nopost")
PA_ROW = 16
ENTRY_PROGS = (*(f"vigil_sys_enter{n}" for n in range(7)), "vigil_sys_exit", "vigil_tp", "vigil_raw_tp", "vigil_uprobe",
               "vigil_uretprobe", "vigil_kprobe", "vigil_kretprobe", "vigil_lsm", "vigil_fentry",
               "vigil_fexit", "vigil_fmod_ret", "vigil_kprobe_override", "vigil_raw_sys_enter",
               "vigil_raw_sys_exit", "vigil_sys_exit_entry", "vigil_enforcer_fmod_ret", "vigil_enforcer_kprobe",
               "vigil_enforcer_sys_exit", "vigil_ima_bprm", "vigil_ima_file", "vigil_sockops")
TRAMPOLINES = ("vigil_lsm", "vigil_fentry", "vigil_fexit", "vigil_fmod_ret", "vigil_enforcer_fmod_ret",
               "vigil_ima_bprm", "vigil_ima_file")


# Tests: the uprefault stage walks pages with bpf_copy_from_user even where the kfunc exists
UPREFAULT_PAGE_WALK = False
UPREFAULT_STATS = ("runs", "read", "failed", "walked", "resident")  # bpf/uprefault.bpf.c enum upf_stat
# its upf_args[]: one entry per string argument slot
_UPREFAULT_ARGS = L.MAX_ARGS
# a uprobe entry's parameters 1-5 (generic.bpf.c from_regs): rdi, rsi, rdx, rcx, r8 of pt_regs
_PARAM_REGS = tuple(PT_REGS[r] for r in ("rdi", "rsi", "rdx", "rcx", "r8"))

_NOFILE_RAISED = False


def _raise_nofile() -> None:
    """Each hook is an object with its own maps and links: a policy with hundreds of hooks
    (generated syscall lists) needs more descriptors than the default soft limit."""
    global _NOFILE_RAISED
    if _NOFILE_RAISED:
        return
    _NOFILE_RAISED = True
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20
    try:
        with open("/proc/sys/fs/nr_open") as f:
            want = min(want, int(f.read()))
    except (OSError, ValueError):
        pass
    for limit in ((want, want), (hard, hard)):
        if limit[0] <= soft:
            return
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
            log.debug("RLIMIT_NOFILE raised from %d to %d", soft, limit[0])
            return
        except (ValueError, OSError):
            continue


def uprefault_args(c: CompiledHook) -> list[tuple[int, int, int, int, int]]:
    """upf_args of bpf/uprefault.bpf.c for a uprobe or USDT hook: per string argument read
    from the process's memory without a resolve path (a resolved one is read through other
    memory), (bytes the hook's program reads of it with its NUL, pt_regs offset of its
    (base) register, off2, konst, size) as read_arg finds its pointer: a uprobe parameter's
    register; a USDT operand (register, constant or memory operand) or a `data` register as
    vp_arg holds it. The same place read twice is one entry, with the larger limit. Empty:
    no stage."""
    if c.placement.mechanism not in ("uprobe", "usdt") or c.placement.entry_prog != "vigil_uprobe":
        return []
    got: dict[tuple[int, int, int, int], int] = {}
    for i in range(min(c.config.nargs, L.MAX_ARGS)):
        a = c.config.args[i]
        if a.type != L.T["string"] or a.nsteps:
            continue
        if a.src == L.SRC_REGS and a.off < len(_PARAM_REGS):
            where = (_PARAM_REGS[a.off], 0, 0, 8)
        elif a.src == L.SRC_USDT:
            where = (a.off, a.off2, a.konst, a.size if a.off2 & 1 else 8)
        else:
            continue
        size = a.max_len if 0 < a.max_len < L.ARG_DATA - 1 else L.ARG_DATA - 1  # read_arg's max
        got[where] = max(got.get(where, 0), size + 1)
    return [(n, *where) for where, n in got.items()][:_UPREFAULT_ARGS]


def _upf_args_rodata(args: list[tuple[int, int, int, int, int]]) -> bytes:
    """struct upf_arg[UPF_ARGS] (bpf/uprefault.bpf.c)"""
    return b"".join(struct.pack("<IHHqII", n, reg, off2, konst, size, 0) for n, reg, off2, konst, size in args)


# why the stage cannot load on this kernel (found once), by UPREFAULT_PAGE_WALK
_UPREFAULT_REFUSED: dict[bool, str] = {}


def _uprefault_object(args: list[tuple[int, int, int, int, int]]) -> BpfObject | None:
    """The stage's object for one hook, loaded; None where sleepable uprobes (or the program's
    helpers) do not load on this kernel: found by loading it the first time (never by kernel
    version), logged once, and the stage stays off for this process (strings on pages not
    faulted in read as errors, as without it)."""
    from vigil.kernel.errors import BpfError

    walk = bool(UPREFAULT_PAGE_WALK)
    if walk in _UPREFAULT_REFUSED:
        return None
    obj = BpfObject.open(bpf_object("uprefault"))
    try:
        obj.set_rodata(upf_args=_upf_args_rodata(args), cfg_page_walk=int(walk))
        obj.load()
    except BpfError as e:
        obj.close()
        why = _UPREFAULT_REFUSED[walk] = str(e).splitlines()[0] if str(e) else repr(e)
        log.warning("uprobe string arguments on pages not faulted in yet will read as errors: the "
                    "sleepable uprobe stage does not load on this kernel (%s)", why)
        return None
    except BaseException:
        obj.close()
        raise
    return obj


def takes_kernel_stacks(c: CompiledHook) -> bool:
    """Whether a Post action of the hook asks for the kernel stack (kernelStackTrace)."""
    return any(c.config.sel[i].actions[k].flags & L.AF_KSTACK for i in range(c.config.nselectors)
               for k in range(c.config.sel[i].nactions))


def _possible_cpus() -> int:
    """The CPUs a per-CPU map holds a value for (kernel_memory's; a test sets it)."""
    from vigil.kernel.objects import possible_cpus

    return possible_cpus()


class GenericHook:
    def __init__(self, compiled: CompiledHook, shared: dict[str, Map]) -> None:
        self.compiled = compiled
        self.shared = shared
        self.obj: BpfObject | None = None
        self._binary_fd = -1  # a uprobe with binaryDigests: the binary checked and attached to
        # a uprobe or USDT hook with string arguments: its sleepable stage (bpf/uprefault.bpf.c)
        self.uprefault: BpfObject | None = None

    @property
    def hook_id(self) -> int:
        return self.compiled.hook_id

    def load(self) -> None:
        _raise_nofile()
        c, pl = self.compiled, self.compiled.placement
        pre = entry_prefilter(c)
        obj = BpfObject.open(bpf_object("generic"))
        try:
            for cname, mirror in L.MIRRORS:
                check_ctypes(obj, cname, mirror)
            wanted = {pl.entry_prog, pl.return_prog, pl.attach.get("ima_prog", "")} - {""}
            for name in ENTRY_PROGS:
                obj.program(name).set_autoload(name in wanted)
            for prog in wanted:
                if prog in TRAMPOLINES:
                    obj.program(prog).set_attach_target(pl.attach["func"])
            for name, m in self.shared.items():
                if name in obj.maps:
                    obj.map(name).reuse_fd(m.fd)
            for name, keys in (("str_map", c.str_keys), ("prefix_map", c.prefix_keys),
                               ("postfix_map", c.postfix_keys), ("addr_map", c.addr_keys),
                               ("val_map", c.val_keys)):
                obj.map(name).set_max_entries(max(1, len(keys)))
            str_key = str_key_size(c.str_keys)
            obj.map("str_map").set_key_size(str_key)
            if any(c.config.sel[i].actions[k].type == L.ACT["Set"] for i in range(c.config.nselectors)
                   for k in range(c.config.sel[i].nactions)):
                obj.set_rodata(cfg_write_user=1)  # USDT Set writes user memory
            if pl.entry_prog == "vigil_sockops":
                obj.set_rodata(cfg_no_stack=1)  # sock_ops programs have no bpf_get_stack
            pc_from_rq = preempt_count_from_rq()
            if pc_from_rq is not None:  # interrupt context told by the preempt count
                obj.set_rodata(cfg_pc_known=1, cfg_pc_from_rq=pc_from_rq)
            obj.set_rodata(cgrp_subsys_idx=cgroup_tracking().subsys_idx, str_key_words=(str_key - 4) // 8, **pre)
            obj.load()
            if takes_kernel_stacks(c):  # its programs' symbols are newer than a table read before
                KSYMS.invalidate()
            obj.map("hook_config").update(struct.pack("<I", 0), bytes(c.config))
            one = b"\x01"
            for name, keys in (("str_map", c.str_keys), ("prefix_map", c.prefix_keys),
                               ("postfix_map", c.postfix_keys), ("addr_map", c.addr_keys),
                               ("val_map", c.val_keys)):
                m = obj.map(name)
                for k in keys:
                    m.update(k[:str_key] if name == "str_map" else k, one)
            upf = uprefault_args(c)
            if upf:
                self.uprefault = _uprefault_object(upf)
            self._attach(obj)
        except BaseException:
            self._close_uprefault()
            obj.close()
            raise
        self.obj = obj

    def _attach(self, obj: BpfObject) -> None:
        pl = self.compiled.placement
        a = pl.attach
        entry = obj.program(pl.entry_prog)
        if pl.mechanism == "tracepoint":
            # the return side first: an entry without its exit would leave pending records
            if pl.return_prog:
                obj.program(pl.return_prog).attach_tracepoint(a["category"], a["exit_name"])
            entry.attach_tracepoint(a["category"], a["name"])
        elif pl.mechanism == "raw_tracepoint":
            if pl.return_prog:
                obj.program(pl.return_prog).attach_raw_tracepoint(a["exit_name"])
            entry.attach_raw_tracepoint(a["name"])
        elif pl.mechanism in ("uprobe", "usdt"):
            path = self._checked_binary(a["path"], a["digests"]) if a.get("digests") else a["path"]
            if pl.return_prog:
                obj.program(pl.return_prog).attach_uprobe(path, a["offset"], retprobe=True)
            entry.attach_uprobe(path, a["offset"], ref_ctr_offset=a.get("ref_ctr", 0))
            if self.uprefault is not None:
                # after the entry: a uprobe's newest consumer runs first, so the strings' pages
                # are faulted in before the entry reads them. Pinned as every link is
                # (--keep-sensors-on-exit): a kept hook keeps its stage
                self.uprefault.program("vigil_uprefault").attach_uprobe(
                    path, a["offset"], ref_ctr_offset=a.get("ref_ctr", 0))
        elif pl.mechanism == "lsm":
            entry.attach_lsm()
            if pl.attach.get("ima_prog"):  # last: the newest program on a trampoline runs first
                obj.program(pl.attach["ima_prog"]).attach_lsm()
        elif pl.mechanism in ("fentry", "fmod_ret"):
            if pl.return_prog:
                obj.program(pl.return_prog).attach_trace()
            entry.attach_trace()
        elif pl.mechanism == "kprobe":
            if pl.return_prog:
                obj.program(pl.return_prog).attach_kprobe(a["func"], retprobe=True)
            entry.attach_kprobe(a["func"])
        elif pl.mechanism == "sock_ops":
            from vigil.enforce.netdeny import cgroup2_root

            entry.attach_cgroup(cgroup2_root())  # the root: every cgroup's sockets
        else:
            raise ValueError(f"cannot attach mechanism {pl.mechanism!r}")

    def _checked_binary(self, path: str, digests: list[str]) -> str:
        """binaryDigests, checked on the file the uprobe attaches to (as Tetragon does): the
        binary is opened once (kept open while the hook lives), its digests are walked on that
        open file, and the uprobe attaches through /proc/self/fd/N, the same inode, so a file
        put at `path` after the check is never attached to. The walk is digest_verdict's;
        anything but a match raises (the compile-time check passed on what `path` was then).
        Called again at each enable: the walk is redone on the same open file (Tetragon closes
        it after the load and so refuses to disable the policy; see README, binaryDigests)."""
        from vigil.kernel.facts import digest_now
        from vigil.policy.placement import digest_verdict

        if self._binary_fd < 0:
            self._binary_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        fd_path = f"/proc/self/fd/{self._binary_fd}"
        verdict, i, why = digest_verdict(digests, lambda algo: digest_now(fd_path, algo))
        if verdict != "match":
            raise RuntimeError(f"{path}: binaryDigests" + (f"[{i}]: {why}" if verdict == "error" else
                               ": the binary matches none of them now (it changed after the policy's check); "
                               "not attached"))
        return fd_path

    def detach(self) -> None:
        if self.uprefault is not None:
            self.uprefault.detach_all()
        if self.obj is not None:
            self.obj.detach_all()

    def attach(self) -> None:
        if self.obj is not None and not self.obj.links:
            if self.uprefault is not None:
                self.uprefault.detach_all()  # a half-done attach before: attached again after the entry
            self._attach(self.obj)

    def uprefault_stats(self) -> dict[str, int]:
        """The uprefault stage's counters (UPREFAULT_STATS); empty without the stage."""
        if self.uprefault is None:
            return {}
        got = self.uprefault.map("uprefault_stats").sum_percpu_u64_first(len(UPREFAULT_STATS))
        return dict(zip(UPREFAULT_STATS, got))

    def _close_uprefault(self) -> None:
        if self.uprefault is not None:
            self.uprefault.close()
            self.uprefault = None

    @property
    def attached(self) -> bool:
        return self.obj is not None and bool(self.obj.links)

    def stats(self) -> dict[str, int]:
        if self.obj is None:
            return dict.fromkeys(STATS, 0)
        # one read of the whole row (not a system call per counter)
        got = self.obj.map("hook_stats").sum_percpu_u64_first(len(STATS) + 1)
        out = dict(zip(STATS, got))
        # hits the syscall entry's pre-filter filtered are counted once, in the slot after STATS
        pre = got[len(STATS)]
        out["hits"] += pre
        out["filtered"] += pre
        return out

    def selector_stats(self) -> dict[int, dict[str, int]]:
        """The actions the hook's selectors took, counted in the kernel where each was taken:
        per selector (1-based; 0: records of a hook without selectors), its non-zero counters
        (ACTION_COUNTERS names); a selector that took none is left out."""
        if self.obj is None:
            return {}
        # the rows of the hook's selectors in one read (a scrape or List reads every hook's)
        nrows = min(self.compiled.config.nselectors, L.MAX_SELECTORS) + 1
        got = self.obj.map("action_stats").sum_percpu_u64_first(
            nrows * PA_ROW, used=lambda k: k % PA_ROW < len(ACTION_COUNTERS))
        out: dict[int, dict[str, int]] = {}
        for sel in range(nrows):
            row = {name: n for i, name in enumerate(ACTION_COUNTERS) if (n := got[sel * PA_ROW + i])}
            if row:
                out[sel] = row
        return out

    def program_ids(self) -> list[int]:
        from vigil.kernel.info import prog_info

        if self.obj is None:
            return []
        objs = [self.obj] + ([self.uprefault] if self.uprefault is not None else [])
        return [int(prog_info(p.fd)["id"]) for o in objs for p in o.programs.values() if p.fd >= 0]

    def kernel_memory(self) -> int:
        """Rough bytes of kernel memory the hook's own maps use: its config and lookup maps, and
        its per-CPU counters, a u64 per possible CPU each: hook_stats (HS_MAX) and the selectors'
        action counters (action_stats, (VP_MAX_SELECTORS + 1) x PA_ROW)."""
        c = self.compiled
        counters = (len(STATS) + 1 + (L.MAX_SELECTORS + 1) * PA_ROW) * 8 * _possible_cpus()
        return (ctypes.sizeof(c.config) + 20648 * 2 + str_key_size(c.str_keys) * len(c.str_keys)
                + 264 * (len(c.prefix_keys) + len(c.postfix_keys)) + 32 * len(c.addr_keys) + 24 * len(c.val_keys)
                + counters)

    def close(self) -> None:
        self._close_uprefault()  # its links first: the stage never runs without the entry
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        if self._binary_fd >= 0:
            os.close(self._binary_fd)
            self._binary_fd = -1


class EnforcerHook:
    """The program of spec.enforcers at one syscall: it acts on the notes NotifyEnforcer
    actions leave for a thread (override the return value, send a signal)."""

    def __init__(self, placement, shared: dict[str, Map]) -> None:  # type: ignore[no-untyped-def]
        self.placement = placement
        self.shared = shared
        self.obj: BpfObject | None = None

    def load(self) -> None:
        pl = self.placement
        obj = BpfObject.open(bpf_object("generic"))
        try:
            for name in ENTRY_PROGS:
                obj.program(name).set_autoload(name == pl.entry_prog)
            if pl.entry_prog in TRAMPOLINES:
                obj.program(pl.entry_prog).set_attach_target(pl.attach["func"])
            for name, m in self.shared.items():
                if name in obj.maps:
                    obj.map(name).reuse_fd(m.fd)
            obj.load()
            self.obj = obj
            self.attach()
        except BaseException:
            obj.close()
            self.obj = None
            raise

    def attach(self) -> None:
        if self.obj is None or self.obj.links:
            return
        pl, prog = self.placement, self.obj.program(self.placement.entry_prog)
        if pl.mechanism == "fmod_ret":
            prog.attach_trace()
        elif pl.mechanism == "kprobe":
            prog.attach_kprobe(pl.attach["func"])
        else:
            prog.attach_tracepoint(pl.attach["category"], pl.attach["name"])

    def detach(self) -> None:
        if self.obj is not None:
            self.obj.detach_all()

    @property
    def attached(self) -> bool:
        return self.obj is not None and bool(self.obj.links)

    def stats(self) -> dict[str, int]:
        return dict.fromkeys(STATS, 0)

    def selector_stats(self) -> dict[int, dict[str, int]]:
        return {}  # the enforcer acts on the notes; the NotifyEnforcer that left one counted it

    def program_ids(self) -> list[int]:
        from vigil.kernel.info import prog_info

        if self.obj is None:
            return []
        return [int(prog_info(p.fd)["id"]) for p in self.obj.programs.values() if p.fd >= 0]

    def kernel_memory(self) -> int:
        return 0

    def close(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None
