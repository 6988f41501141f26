"""Which cgroup hierarchy tracks processes, as Tetragon picks it, and cgroup ids from user space.

cgroup v2 (unified): the default hierarchy. v1 or hybrid: the hierarchy of the memory controller,
else pids, else cpuset (the first that is enabled and mounted). The BPF side reads the same
hierarchy (bpf/lib/cgroup.bpf.h: `cgrp_subsys_idx`, the controller's line in /proc/cgroups,
which is the kernel's enum cgroup_subsys_id order). A cgroup's id is its kernfs node id, the
inode number of its directory on that hierarchy's mount.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from vigil.kernel.procroot import proc

DFL = 0xFFFFFFFF  # VIGIL_CGRP_DFL: the default (v2) hierarchy
TRACKING_CONTROLLERS = ("memory", "pids", "cpuset")


@dataclass(frozen=True)
class Tracking:
    subsys_idx: int     # rodata cgrp_subsys_idx; DFL for the default hierarchy
    controller: str     # "memory", "pids", "cpuset"; "" for the default hierarchy
    hierarchy: int      # v1 hierarchy number (first field of /proc/<pid>/cgroup); 0 for v2
    mount: str          # where that hierarchy is mounted ("" when it is not mounted here)

    @property
    def unified(self) -> bool:
        return self.subsys_idx == DFL

    def describe(self) -> str:
        if self.unified:
            return f"cgroup v2 default hierarchy at {self.mount or '(not mounted)'}"
        return f"cgroup v1 {self.controller} hierarchy at {self.mount}"

    def path_of(self, proc_pid_cgroup: str) -> str | None:
        """This hierarchy's line of a /proc/<pid>/cgroup text (None: not in it)."""
        for line in proc_pid_cgroup.splitlines():
            hier, _, rest = line.partition(":")
            ctrls, _, path = rest.partition(":")
            if self.unified:
                if hier == "0" and ctrls == "":
                    return path
            elif hier == str(self.hierarchy) or self.controller in ctrls.split(","):
                return path
        return None

    def cgroup_id(self, path: str) -> int:
        """Id of the cgroup at `path` (0 when it does not exist, or nothing is mounted)."""
        if not self.mount:
            return 0
        try:
            return os.stat(self.mount + path).st_ino
        except OSError:
            return 0


def _mounts(text: str) -> list[tuple[str, str, set[str]]]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            out.append((parts[1].replace("\\040", " "), parts[2], set(parts[3].split(","))))
    return out


def choose(proc_cgroups: str, mounts: str) -> Tracking:
    """Pure: the tracking hierarchy from the texts of /proc/cgroups and /proc/self/mounts."""
    mnts = _mounts(mounts)
    found: dict[str, Tracking] = {}
    idx = 0
    for line in proc_cgroups.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        name, hier, enabled = parts[0], int(parts[1]), parts[3] == "1"
        if name in TRACKING_CONTROLLERS and enabled and hier:
            mount = next((m for m, t, o in mnts if t == "cgroup" and name in o), "")
            if mount:
                found[name] = Tracking(idx, name, hier, mount)
        idx += 1
    for name in TRACKING_CONTROLLERS:
        if name in found:
            return found[name]
    v2 = next((m for m, t, _o in mnts if t == "cgroup2"), "")
    return Tracking(DFL, "", 0, v2)


@lru_cache(maxsize=1)
def tracking() -> Tracking:
    """This host's tracking hierarchy (read once)."""
    def read(p: str) -> str:
        try:
            with open(p) as f:
                return f.read()
        except OSError:
            return ""
    return choose(read("/proc/cgroups"), read("/proc/self/mounts"))


def pid_cgroup(pid: int | str, t: Tracking | None = None) -> tuple[str, int]:
    """(path on the tracking hierarchy, cgroup id) of a process; ("", 0) when it is gone."""
    t = t or tracking()
    try:
        with open(f"{proc()}/{pid}/cgroup") as f:
            path = t.path_of(f.read())
    except OSError:
        return "", 0
    if path is None:
        return "", 0
    return path, t.cgroup_id(path)
