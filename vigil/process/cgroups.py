"""Container identity from a cgroup path, for every layout the runtimes and kubelets make.

Input is a full cgroup path (`/proc/<pid>/cgroup`) or its tail as the kernel records it (the
tracking cgroup's parent and leaf names, "parent/leaf"). The container id comes from the leaf
the way Tetragon takes it: after the last ':' (the `slice:prefix:id` form), then after the last
'-' (drops `cri-containerd-`, `docker-`, `crio-`, `crio-conmon-`, `libpod-`), without `.scope`.
Podman puts the container's processes one level deeper (`libpod-<id>.scope/container`), so a
leaf that names no container falls back to its parent. The pod UID is the kubelet's pod
directory (`pod<uid>` with the cgroupfs driver, `...-pod<uid_with_underscores>.slice` with the
systemd driver; a static pod's is the 32-digit hash the API shows as its mirror pod's
`kubernetes.io/config.mirror` annotation). Nested layouts (a kubelet inside a Docker container) resolve to the innermost
container, as the kernel sees it.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# Container ids of docker, containerd, CRI-O and podman are 64 hex digits; Tetragon shows the
# first 31. Shorter names (session-3.scope, user-1000.slice) are not containers.
MIN_ID_LEN = 31
DOCKER_FIELD_LEN = 31
_HEX = re.compile(r"[0-9a-f]+")
# a pod's uid, or for a static pod (a manifest on the node) the kubelet's 32-digit hash of it
_POD_UID = re.compile(r"(?:^|-)pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
                      r"|[0-9a-f]{32})(?:\.slice)?$")
_RUNTIMES = (("cri-containerd", "containerd"), ("crio-conmon", "cri-o"), ("crio", "cri-o"),
             ("docker", "docker"), ("libpod", "podman"))


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """Where a cgroup sits: the container (full id as in the name) and the kubelet pod."""
    container_id: str = ""
    pod_uid: str = ""
    runtime: str = ""       # from the name prefix: containerd, cri-o, docker, podman ("" unknown)
    conmon: bool = False    # CRI-O's monitor process cgroup, not the container itself

    @property
    def docker(self) -> str:
        """The `docker` field of a Tetragon process."""
        return self.container_id[:DOCKER_FIELD_LEN]


NONE = ContainerRef()


def _component_id(name: str) -> tuple[str, str, bool]:
    """(id, runtime, conmon) of one cgroup directory name; id "" when it names no container."""
    base = name
    for suffix in (".scope", ".slice"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    prefix = ""
    if ":" in base:  # slice:prefix:id
        parts = base.split(":")
        prefix, base = (parts[-2] if len(parts) > 2 else ""), parts[-1]
    i = base.rfind("-")
    if i >= 0:
        prefix, base = base[:i], base[i + 1 :]
    if len(base) < MIN_ID_LEN or not _HEX.fullmatch(base):
        return "", "", False
    runtime = next((rt for p, rt in _RUNTIMES if prefix == p or prefix.endswith("-" + p)), "")
    return base, runtime, prefix.endswith("conmon")


def _pod_uid(name: str) -> str:
    m = _POD_UID.search(name)
    return m.group(1).replace("_", "-") if m else ""


@functools.lru_cache(maxsize=16384)
def parse(path: str) -> ContainerRef:
    """The container and pod a cgroup path (or its parent/leaf tail) belongs to. Cached: the
    event builder (the `docker` field) and the pod resolver ask about the same cgroup names,
    once per new name each."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return NONE
    cid, runtime, conmon = _component_id(parts[-1])
    at = len(parts) - 1
    if not cid and len(parts) > 1:
        # podman: libpod-<id>.scope/container (and any leaf a runtime nests below its scope)
        cid, runtime, conmon = _component_id(parts[-2])
        at = len(parts) - 2
    if not cid:
        return NONE
    uid = _pod_uid(parts[at - 1]) if at > 0 else ""
    if not uid and parts[at].count(":") >= 2:  # kubepods-...-pod<uid>.slice:cri-containerd:<id>
        uid = _pod_uid(parts[at].split(":")[0])
    return ContainerRef(cid, uid, runtime, conmon)


def container_id(path: str) -> str:
    """The `docker` field for a cgroup path or name ("" when it is no container)."""
    return parse(path).docker
