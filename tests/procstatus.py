"""This test process's memory as the kernel counts it (/proc/self/status)."""
from __future__ import annotations


def status_kb(field: str = "VmRSS") -> int:
    """One `kB` line of /proc/self/status: VmRSS, RssShmem, ..."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))
