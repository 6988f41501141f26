"""Kernel threads found by the /proc scan at start: cached as Tetragon names them ("[kthreadd]",
no arguments), so a process they start has a parent, but no process_exec of theirs is exported
(Tetragon caches them without an event). `make run` printed one "🚀 process NODE" line with an
empty binary per kernel thread, and the export file had their events."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from tests.kernel.conftest import RunningAgent
from vigil.agent.config import AgentConfig
from vigil.sensors.process import ENTRY

pytestmark = pytest.mark.kernel
PF_KTHREAD = 0x00200000


def kernel_threads() -> dict[int, str]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_bytes()
            comm = Path(f"/proc/{d}/comm").read_text().rstrip("\n")
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2:].split()[6]) & PF_KTHREAD:
            out[int(d)] = comm
    return out


@pytest.mark.skipif(not kernel_threads(), reason="no kernel thread (PF_KTHREAD task) visible: a pid namespace "
                    "other than the host's")
def test_kernel_threads_are_cached_not_exported(tmp_path: Path):
    kthreads = kernel_threads()
    export = tmp_path / "events.log"
    cfg = AgentConfig(export_filename=str(export), server_address="", node_name="vigil-test")
    with RunningAgent(cfg) as ra:
        ra.collect(lambda: None)  # the start's events are written before the marker's
        cached = {pid: p for pid in kthreads if (p := ra.agent.cache.by_pid(pid)) is not None}
        assert cached, "no kernel thread cached"
        for pid, p in cached.items():
            # a kworker's comm names its current work: only its own part is stable
            stable = kthreads[pid].split("-")[0]
            assert p.msg.binary.startswith(f"[{stable}") and p.msg.binary.endswith("]"), (pid, p.msg.binary)
            assert p.msg.arguments == ""
        if kthreads.get(2) == "kthreadd" and 2 in cached:
            assert cached[2].msg.binary == "[kthreadd]"
        assert ra.agent.sensor is not None and ra.agent.sensor.obj is not None
        m = ra.agent.sensor.obj.map("execve_map")
        raw = m.lookup(struct.pack("<I", next(iter(cached))))
        assert raw is None or ENTRY.unpack_from(raw)[6] == 0  # the kernel's entry keeps no binary
    procfs = {}
    for line in export.read_text().splitlines():
        e = json.loads(line)
        if "process_exec" in e and "procFS" in e["process_exec"]["process"]["flags"]:
            procfs[e["process_exec"]["process"]["pid"]] = e["process_exec"]["process"].get("binary", "")
    assert os.getpid() in procfs  # user processes found at start still have their event
    assert not set(procfs) & set(cached), {p: procfs[p] for p in set(procfs) & set(cached)}
