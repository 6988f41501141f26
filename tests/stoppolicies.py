"""Policies whose cost is the agent's stop: N syscall tracepoints, a policy each, for a binary
that never runs (closing a tracepoint's perf-event link waits for kernel grace periods). Used
by tests/kernel/test_agent_stop.py and bench/agent_footprint.py (d)."""
from __future__ import annotations

from pathlib import Path

# tracepoints that exist on every kernel the project supports
SYSCALLS = ["read", "write", "openat", "close", "getpid", "getppid", "getuid", "geteuid", "getgid", "getegid",
            "dup", "dup3", "pipe2", "fcntl", "ioctl", "lseek", "pread64", "pwrite64", "readv", "writev",
            "faccessat", "nanosleep", "clock_nanosleep", "socket", "connect", "accept4", "sendto", "recvfrom",
            "bind", "listen", "getsockname", "getpeername", "mmap", "munmap", "mprotect", "brk", "getcwd",
            "kill", "chdir", "umask"]


def write_policies(d: Path, n: int, prefix: str = "stop-test", one_file: bool = False) -> None:
    """n policies `<prefix>-NN` (NN from 00), a file each, or all in one file (YAML documents);
    policy i hooks sys_enter of SYSCALLS[i] for the binary /nonexistent/<prefix>-i."""
    d.mkdir()
    docs = []
    for i, sc in enumerate(SYSCALLS[:n]):
        docs.append(f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {prefix}-{i:02d}}}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_{sc}
    args: [{{index: 0}}]
    selectors:
    - matchBinaries: [{{operator: In, values: ["/nonexistent/{prefix}-{i}"]}}]
""")
        if not one_file:
            (d / f"p{i:02d}.yaml").write_text(docs[-1])
    if one_file:
        (d / "all.yaml").write_text("---\n".join(docs))
