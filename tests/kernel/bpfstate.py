"""What BPF programs a process holds and the kernel still has: the tests' cleanup checks."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path


def prog_ids_held(pid: int | str = "self") -> set[int]:
    """IDs of the BPF programs process `pid` holds fds for (from /proc/<pid>/fdinfo)."""
    ids = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for fd in os.listdir(fdinfo):
        try:
            text = (fdinfo / fd).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def loaded_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out)}


def still_loaded(ids: set[int], timeout: float = 10.0) -> set[int]:
    """Which of `ids` are loaded once the kernel's deferred frees (RCU) had up to `timeout`."""
    deadline = time.monotonic() + timeout
    left = ids & loaded_prog_ids()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = ids & loaded_prog_ids()
    return left


def require_root() -> None:
    """These tests exist to exercise the real kernel: without root they fail, never skip."""
    import pytest

    if os.geteuid() != 0:
        pytest.fail("needs root: these tests load and attach BPF programs (run `make test` as root)")
