"""Process lifecycle sensor: loads bpf/process.bpf.c and owns its maps.

It creates the shared `events` ring buffer, the `vigil_drops` counters and the
`vigil_reader` state that every other sensor reuses. Each hook exists as tp_btf and raw_tp; the BTF
flavour is tried first and the raw one used where the kernel refuses it.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from vigil.events import records as R
from vigil.kernel import BpfError, BpfObject, Map, _libbpf as L, possible_cpus
from vigil.kernel.cgroups import tracking as cgroup_tracking
from vigil.kernel.layouts import Layout
from vigil.kernel.objects import close_links
from vigil.kernel.paths import bpf_object

log = logging.getLogger("vigil.sensor.process")

HOOKS = ("exec", "fork", "exit")
EXEC_ENTRY = ("vigil_execve_enter", "vigil_execveat_enter")  # the credentials before an exec
DROP_CAUSES = ("ringbuf_full_exec", "ringbuf_full_clone", "ringbuf_full_exit", "ringbuf_full_generic",
               "execve_map_full", "heap", "execve_map_delete", "cause7")
# struct execve_entry (bpf/lib/process_map.bpf.h): caps are effective, inheritable, permitted
ENTRY = Layout("execve_entry", "key.pid:I key.pad:I key.ktime:Q pkey.pid:I pkey.pad:I pkey.ktime:Q bin_len:I "
               "flags:I bin:256s caps:3Q ns:10I follow:Q")
BINARY_LEN = 256
BPF_NOEXIST = 1
ARGS_CAP = 32767
REPAIR_ROUNDS = 16  # fixed-point passes of repair() (one per generation forked in the window)

# take an entry out atomically (kernels >= 5.14 for hash maps): repair() writes only where it
# took an entry that was still empty, so an exec's entry written meanwhile is never replaced
_take: Any = None
if hasattr(L.lib, "bpf_map_lookup_and_delete_elem"):
    _take = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, use_errno=True)(
        ("bpf_map_lookup_and_delete_elem", L.lib))


class ProcessSensor:
    name = "process"
    take_supported = _take is not None  # lookup-and-delete on execve_map (see repair())

    def __init__(self, *, args_max: int = 4096, ringbuf_bytes: int = 8 << 20, execve_map_entries: int = 32768):
        if not 0 < args_max <= ARGS_CAP:
            raise ValueError(f"args size limit must be 1..{ARGS_CAP} bytes, got {args_max}")
        if ringbuf_bytes < 4096 or ringbuf_bytes & (ringbuf_bytes - 1):
            raise ValueError(f"ring buffer size must be a power of two >= 4096, got {ringbuf_bytes}")
        self.args_max = args_max
        self.ringbuf_bytes = ringbuf_bytes
        self.execve_map_entries = execve_map_entries
        self.obj: BpfObject | None = None
        self.flavour = ""
        self.follow = None  # followChildren rules (vigil.sensors.follow), created on first use
        self.exec_creds = False  # the execve entry programs are attached (see _attach_exec_creds)

    def _open(self, flavour: str) -> BpfObject:
        obj = BpfObject.open(bpf_object("process"))
        try:
            for mirror in (ENTRY, R.HEADER, R.PROCESS, R.EXIT):
                mirror.check(obj)
            other = "raw" if flavour == "btf" else "btf"
            for hook in HOOKS:
                obj.program(f"vigil_{hook}_{other}").set_autoload(False)
            obj.map("exec_heap").set_max_entries(possible_cpus())
            obj.map("events").set_max_entries(self.ringbuf_bytes)
            obj.map("execve_map").set_max_entries(self.execve_map_entries)
            obj.set_rodata(args_max=self.args_max, cgrp_subsys_idx=cgroup_tracking().subsys_idx)
            obj.load()
            for hook in HOOKS:
                obj.program(f"vigil_{hook}_{flavour}").attach()
            self.exec_creds = self._attach_exec_creds(obj)
        except BaseException:
            obj.close()
            raise
        return obj

    @staticmethod
    def _attach_exec_creds(obj: BpfObject) -> bool:
        """The execve/execveat entry programs, which keep the credentials before an exec for
        binary_properties (exec_creds in process.bpf.c). A kernel without syscall trace events
        (CONFIG_FTRACE_SYSCALLS off) has nowhere to attach them: the exec program then judges a
        privileged exec without them, as before."""
        try:
            for prog in EXEC_ENTRY:
                obj.program(prog).attach()
        except BpfError as e:
            log.info("no syscall trace events for execve (%s): privileged execs judged without the "
                     "credentials before the exec", e.what)
            return False
        return True

    def start(self) -> None:
        try:
            self.obj = self._open("btf")
            self.flavour = "tp_btf"
        except BpfError as e:
            log.info("tp_btf process hooks unavailable (%s); using raw tracepoints", e.what)
            self.obj = self._open("raw")
            self.flavour = "raw_tp"
        log.info("process sensor attached (%s: sched_process_exec/fork/exit)", self.flavour)

    @property
    def events_map(self):  # type: ignore[no-untyped-def]
        assert self.obj is not None
        return self.obj.map("events")

    @property
    def execve_map(self):  # type: ignore[no-untyped-def]
        assert self.obj is not None
        return self.obj.map("execve_map")

    @property
    def reader_map(self):  # type: ignore[no-untyped-def]
        """`vigil_reader`: whether the agent sleeps on the rings (see kernel.ringbuf.PairedRings)."""
        assert self.obj is not None
        return self.obj.map("vigil_reader")

    @property
    def drops_map(self):  # type: ignore[no-untyped-def]
        assert self.obj is not None
        return self.obj.map("vigil_drops")

    def seed(self, entries: Iterable[tuple[Any, ...]]) -> set[int]:
        """Write (pid, ktime, ppid, pktime, binary, caps(eff, inh, prm), ns) of pre-existing
        processes into execve_map.

        Never overwrites what the kernel already recorded; returns the pids
        the kernel had already seen (those arrive as live records instead).
        """
        assert self.obj is not None
        m = self.obj.map("execve_map")
        known: set[int] = set()
        for pid, ktime, ppid, pktime, binary, caps, ns in entries:
            key = struct.pack("<I", pid)
            b = binary.encode("utf-8", "surrogateescape")[: BINARY_LEN - 1]
            try:
                m.update(key, ENTRY.pack(pid, 0, ktime, ppid, 0, pktime, len(b), 0, b, *caps, *ns, 0), BPF_NOEXIST)
            except BpfError as e:
                if e.errno == 17:  # EEXIST: created by a live exec/fork
                    known.add(pid)
                else:
                    raise
        return known

    def repair(self, snaps: Mapping[int, tuple[str, tuple[int, int, int], tuple[int, ...]]],
               seeded: set[int], alive: Callable[[int], bool]) -> int:
        """Fill the entries of processes forked between attach and seed; returns how many.

        Such a fork copied its parent's entry before the seed wrote it: its entry has no
        binary, caps or namespaces (and its own forks copy that). Each entry without a binary
        that seed() did not write gets snaps[pid] (binary, caps, namespaces) if the scan saw
        the process, else the entry of the process it was forked from if that is filled and
        older than the fork: its parent's, or with CLONE_PARENT the caller's (pkey.pad);
        its key stays the kernel's (the one its records carry). Repeated until nothing
        changes, for forks of forks. Kernel threads stay empty: the scan saw no binary, or
        their parent (kthreadd) has none.
        """
        assert self.obj is not None
        m = self.obj.map("execve_map")
        total = 0
        for _ in range(REPAIR_ROUNDS):
            n = 0
            for k, v in m.items():
                f = ENTRY.unpack_from(v)
                if f[6] or f[0] in seeded:
                    continue
                new = self._filled(m, f, snaps.get(f[0]))
                if new is not None and self._replace_empty(m, k, f, new):
                    n += 1
                    if not alive(f[0]):  # it exited while its entry was out: nothing removes it now
                        self.forget(f[0], f[2])
            total += n
            if not n:
                break
        return total

    @staticmethod
    def _filled(m: Map, f: tuple[Any, ...], snap: tuple[str, tuple[int, int, int], tuple[int, ...]] | None
                ) -> bytes | None:
        pid, ktime, ppid, caller, pktime = f[0], f[2], f[3], f[4], f[5]

        def older(p: int) -> tuple[Any, ...] | None:
            """p's entry, if its image is not newer than the fork (else not what the fork copied)."""
            raw = m.lookup(struct.pack("<I", p))
            e = ENTRY.unpack_from(raw) if raw is not None else None
            return e if e is not None and e[2] <= ktime else None

        parent = older(ppid)
        if parent is not None and not pktime:  # the parent had no entry at the fork: its key now
            pktime = parent[2]
        # the image it runs: its parent's, or (CLONE_PARENT, pkey.pad) the caller's
        image = older(caller) if caller else parent
        if snap is not None:
            binary, caps, ns = snap
            b = binary.encode("utf-8", "surrogateescape")[: BINARY_LEN - 1]
            if not b:
                return None
            follow = image[22] if image is not None and image[6] else 0
            return ENTRY.pack(pid, 0, ktime, ppid, 0, pktime, len(b), 0, b, *caps, *ns, follow)
        if image is None or not image[6]:
            return None
        # the image's binary, caps, namespaces and follow marks; its own flags stay (the fork's
        # "clone" mark: its first exec carries the flag word, as after any fork)
        return ENTRY.pack(pid, 0, ktime, ppid, 0, pktime, image[6], f[7], *image[8:])

    @staticmethod
    def _replace_empty(m: Map, key: bytes, was: tuple[Any, ...], new: bytes) -> bool:
        """Write new where the entry `was` still is (race-safe against the programs: an
        exec's or a new process's entry written meanwhile stays)."""
        if not ProcessSensor.take_supported:  # libbpf or kernel without it: check, then write
            cur = m.lookup(key)
            if cur is None or ENTRY.unpack_from(cur)[:7] != was[:7]:
                return False
            try:
                m.update(key, new, 2)  # BPF_EXIST
            except BpfError:
                return False
            return True
        buf = ctypes.create_string_buffer(m.value_size)
        if _take(m.fd, key, buf):
            err = ctypes.get_errno()
            if err == errno.ENOENT:  # exited meanwhile
                return False
            if err in (errno.EINVAL, errno.EOPNOTSUPP, 524):  # an older kernel (524: ENOTSUPP)
                ProcessSensor.take_supported = False
                return ProcessSensor._replace_empty(m, key, was, new)
            raise BpfError("map execve_map: lookup and delete", err)
        took = ENTRY.unpack_from(buf.raw)
        put = new if took[:7] == was[:7] else buf.raw  # an exec (or a new process) meanwhile: back
        try:
            m.update(key, put, BPF_NOEXIST)
        except BpfError as e:
            if e.errno != errno.EEXIST:  # the kernel wrote a newer one in between: it stays
                raise
            return False
        return put is new

    def entry(self, pid: int) -> tuple[Any, ...] | None:
        """pid's execve_map entry, as ENTRY's fields."""
        assert self.obj is not None
        raw = self.obj.map("execve_map").lookup(struct.pack("<I", pid))
        return ENTRY.unpack_from(raw) if raw is not None else None

    def exec_key(self, pid: int) -> tuple[int, int] | None:
        """The (pid, ktime) key of pid's execve_map entry: the process the kernel has for it now."""
        if self.obj is None:
            return None
        try:
            e = self.entry(pid)
        except (OSError, BpfError):
            return None
        return (e[0], e[2]) if e is not None and e[2] else None

    def forget(self, pid: int, ktime: int) -> str:
        """Remove the entry seed() wrote for a process that turned out gone: "deleted"; "absent"
        when the kernel's exit program removed it already (its exit record carries that key);
        "replaced" when the pid holds another process's entry (left alone)."""
        assert self.obj is not None
        e = self.entry(pid)
        if e is None:
            return "absent"
        if (e[0], e[2]) != (pid, ktime):
            return "replaced"
        return "deleted" if self.obj.map("execve_map").delete(struct.pack("<I", pid)) else "absent"

    def drops(self) -> dict[str, int]:
        m = self.drops_map
        return {cause: m.sum_percpu_u64(struct.pack("<I", i)) for i, cause in enumerate(DROP_CAUSES)
                if not cause.startswith("cause")}

    def map_usage(self) -> dict[str, tuple[int, int]]:
        assert self.obj is not None
        m = self.obj.map("execve_map")
        return {"execve_map": (m.count(), m.max_entries)}

    def stop(self) -> None:
        """Detach and unload. The execve/execveat entry links are syscall tracepoints (perf
        events): closing one waits for kernel grace periods (vigil.kernel.objects), so they close
        at once, first (as newest first would), then the exec/fork/exit hooks with the object."""
        if self.obj is not None:
            entry = tuple(f"{p}->" for p in EXEC_ENTRY)  # Link.desc: "<program>-><target>"
            close_links([k for k in self.obj.links if k.desc.startswith(entry)])
            self.obj.close()
            self.obj = None
