"""Bounds under process churn, at a scale that fits the suite (bench/process_churn.py runs
a million): an agent with a small process cache and kernel process map sees thousands of
short-lived processes; the cache never passes its capacity (older entries are evicted and
counted), the kernel map never passes its size, and once the processes are gone and their
grace period is over, the cache is back to what it held before."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel.bpfstate import require_root
from tests.kernel.conftest import RunningAgent
from tests.kernel.testbins import build
from vigil.agent.config import AgentConfig

pytestmark = pytest.mark.kernel

CHURN_C = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
/* churn N EVERY: N short-lived children; every EVERY-th execs /bin/true, the others exit at once */
int main(int argc, char **argv) {
    long n = atol(argv[1]), every = atol(argv[2]);
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) return 1;
        if (p == 0) {
            if (i % every == 0) { char *a[] = {"/bin/true", NULL}; execv(a[0], a); }
            _exit(0);
        }
        waitpid(p, NULL, 0);
    }
    return 0;
}
"""
CACHE, KMAP, N = 512, 1024, 6000


def test_process_churn_stays_within_bounds_and_returns(tmp_path: Path) -> None:
    require_root()
    churn = build(tmp_path, "churn", CHURN_C)
    cfg = AgentConfig(export_filename=str(tmp_path / "events.log"), server_address="", node_name="bounds",
                      process_cache_size=CACHE, process_cache_gc_interval=2.0, execve_map_entries=KMAP)
    with RunningAgent(cfg) as ra:
        a = ra.agent
        before = len(a.cache)
        peak_cache = peak_map = 0
        p = subprocess.Popen([str(churn), str(N), "10"])
        while p.poll() is None:
            peak_cache = max(peak_cache, len(a.cache))
            peak_map = max(peak_map, a.sensor.map_usage()["execve_map"][0])
            time.sleep(0.01)
        assert p.returncode == 0
        ra.collect(lambda: None)  # every record of the churn handled (end marker seen)
        assert peak_cache <= CACHE and peak_map <= KMAP
        assert a.cache.evictions > 0, "the churn never filled the cache: the bound was not exercised"
        assert a.status()["records"]["clone"] + a.status()["records"]["exec"] >= N
        deadline = time.monotonic() + 60
        while len(a.cache) > before + 16 and time.monotonic() < deadline:  # grace 2 s, gc every tick
            time.sleep(0.1)
        assert len(a.cache) <= before + 16, f"cache {len(a.cache)} entries after the churn, {before} before"
        assert a.sensor.map_usage()["execve_map"][0] <= KMAP
        st = a.status()
        assert st["lost"]["kernel"].get("execve_map_full", 0) == 0 or peak_map == KMAP
