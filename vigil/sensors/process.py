"""Process lifecycle sensor: loads bpf/process.bpf.c and owns its maps.

It creates the shared `events` ring buffer, the `vigil_drops` counters and the
`vigil_reader` state that every other sensor reuses. Each hook exists as tp_btf and raw_tp; the BTF
flavour is tried first and the raw one used where the kernel refuses it.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from typing import Any

from vigil.events import records as R
from vigil.kernel import BpfError, BpfObject, possible_cpus
from vigil.kernel.cgroups import tracking as cgroup_tracking
from vigil.kernel.layouts import Layout
from vigil.kernel.paths import bpf_object

log = logging.getLogger("vigil.sensor.process")

HOOKS = ("exec", "fork", "exit")
DROP_CAUSES = ("ringbuf_full_exec", "ringbuf_full_clone", "ringbuf_full_exit", "ringbuf_full_generic",
               "execve_map_full", "heap", "cause6", "cause7")
# struct execve_entry (bpf/lib/process_map.bpf.h): caps are effective, inheritable, permitted
ENTRY = Layout("execve_entry", "key.pid:I key.pad:I key.ktime:Q pkey.pid:I pkey.pad:I pkey.ktime:Q bin_len:I "
               "flags:I bin:256s caps:3Q ns:10I follow:Q")
BINARY_LEN = 256
BPF_NOEXIST = 1
ARGS_CAP = 32767


class ProcessSensor:
    name = "process"

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
        except BaseException:
            obj.close()
            raise
        return obj

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

    def entry(self, pid: int) -> tuple[Any, ...] | None:
        """pid's execve_map entry, as ENTRY's fields."""
        assert self.obj is not None
        raw = self.obj.map("execve_map").lookup(struct.pack("<I", pid))
        return ENTRY.unpack_from(raw) if raw is not None else None

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
        if self.obj is not None:
            self.obj.close()
            self.obj = None
