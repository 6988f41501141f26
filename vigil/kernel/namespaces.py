"""Namespaces as the kernel records them: the order of the ten inode numbers in a process
record (bpf/include/vigil_events.h), and the host's own namespaces."""
from __future__ import annotations

import os

from vigil.kernel.procroot import proc

NS_NAMES = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user")


def host_namespaces() -> tuple[int, ...]:
    """Namespaces of pid 1 (under --procfs); the agent's own where pid 1 is not readable (sandboxes)."""
    out = []
    for name in NS_NAMES:
        inum = 0
        for where in (f"{proc()}/1", "/proc/self"):
            try:
                link = os.readlink(f"{where}/ns/{name}")
                inum = int(link[link.index("[") + 1 : -1])
                break
            except (OSError, ValueError):
                continue
        out.append(inum)
    return tuple(out)
