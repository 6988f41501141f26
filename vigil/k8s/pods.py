"""Pods of this node, indexed by container id, and Tetragon's `pod` object for events.

Input is the API server's JSON (camelCase, as a watch or list returns it); nothing here talks to
the API server. `PodStore` is written by one thread (the watcher) and read by the pipeline: every
update replaces whole objects, so a reader sees either the old or the new pod, never half of one.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vigil.process.build import join_arguments

log = logging.getLogger("vigil.k8s")
_CRONJOB_JOB = re.compile(r"^(?P<name>.+)-\d{8,10}$")
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str                  # bare id (what the cgroup name holds)
    runtime_id: str          # as the kubelet reports it: "containerd://<id>"
    name: str
    image: str               # image name, registry/repo:tag
    image_id: str            # registry/repo@sha256:...
    started_at: str          # RFC 3339
    exec_probes: tuple[tuple[str, ...], ...] = ()
    privileged: bool = False
    probe_args: frozenset[str] = frozenset()   # the probes' `arguments` strings: a quick first check
    running: bool = True     # has a cgroup now (an exited container's is gone)


@dataclass(frozen=True, slots=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    workload: str
    workload_kind: str
    containers: tuple[ContainerInfo, ...]
    container_names: tuple[str, ...]    # from the spec, started or not
    images: dict[str, str] = field(default_factory=dict)  # container name -> spec image
    cgroup_uid: str = ""     # what its cgroup directory is named by: the uid, or a static pod's hash

    def container(self, cid: str) -> ContainerInfo | None:
        for c in self.containers:
            if c.id == cid:
                return c
        return None


def workload_of(meta: dict[str, Any]) -> tuple[str, str]:
    """(workload, workload_kind) from owner references, as Tetragon reports them: only a pod
    whose name was generated (metadata.generateName) is looked into, and then only its
    controller reference (never another owner); anything else is the pod itself, kind Pod."""
    name, kind = meta.get("name", ""), "Pod"
    ref = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if meta.get("generateName") and ref is not None:
        kind, name = ref.get("kind", ""), ref.get("name", "")
        labels = meta.get("labels") or {}
        h = labels.get("pod-template-hash", "")
        if kind == "ReplicaSet" and h and name.endswith(h):
            # a Deployment's ReplicaSet is named <deployment>-<pod-template-hash>
            name, kind = name.removesuffix("-" + h), "Deployment"
        elif kind == "ReplicationController" and labels.get("deploymentconfig"):
            name, kind = labels["deploymentconfig"], "DeploymentConfig"   # OpenShift
        elif kind == "Job":
            m = _CRONJOB_JOB.match(name)
            if m:
                name, kind = m.group("name"), "CronJob"
    return name or meta.get("name", ""), kind


def _split_runtime_id(cid: str) -> str:
    return cid.split("://", 1)[1] if "://" in cid else cid


def _probes(spec_container: dict[str, Any]) -> tuple[tuple[str, ...], ...]:
    """The exec commands of a container's liveness and readiness probes (Tetragon's guess
    looks at these two only: a startup probe's command is not flagged)."""
    out = []
    for key in ("livenessProbe", "readinessProbe"):
        cmd = ((spec_container.get(key) or {}).get("exec") or {}).get("command")
        if cmd:
            out.append(tuple(str(a) for a in cmd))
    return tuple(out)


def pod_info(obj: dict[str, Any]) -> PodInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    spec_cs = {c.get("name"): c for key in ("initContainers", "containers", "ephemeralContainers")
               for c in spec.get(key) or []}
    containers = []
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            rid = cs.get("containerID") or ""
            if not rid:
                continue
            sc = spec_cs.get(cs.get("name"), {})
            # probes are read from spec.containers only (a native sidecar's, an init container
            # with restartPolicy Always, is not flagged by Tetragon either)
            probes = _probes(sc) if key == "containerStatuses" else ()
            state = cs.get("state") or {}
            started = ((state.get("running") or {}).get("startedAt")
                       or (state.get("terminated") or {}).get("startedAt") or "")
            containers.append(ContainerInfo(
                id=_split_runtime_id(rid), runtime_id=rid, name=cs.get("name", ""),
                image=cs.get("image", "") or sc.get("image", ""), image_id=cs.get("imageID", ""),
                started_at=started, exec_probes=probes,
                probe_args=frozenset(a for cmd in probes for a in _probe_arg_forms(cmd)),
                privileged=bool((sc.get("securityContext") or {}).get("privileged")),
                running="running" in state))
    workload, kind = workload_of(meta)
    annotations = meta.get("annotations") or {}
    return PodInfo(
        uid=meta.get("uid", ""), namespace=meta.get("namespace", ""), name=meta.get("name", ""),
        labels=dict(meta.get("labels") or {}), annotations=dict(meta.get("annotations") or {}),
        workload=workload, workload_kind=kind, containers=tuple(containers),
        container_names=tuple(spec_cs), images={n: c.get("image", "") for n, c in spec_cs.items()},
        # a static pod's API object is its mirror: the kubelet names the cgroup by the hash
        cgroup_uid=annotations.get(MIRROR_ANNOTATION) or meta.get("uid", ""))


def _probe_args(cmd: tuple[str, ...]) -> str:
    return join_arguments(cmd[1:])


def _probe_arg_forms(cmd: tuple[str, ...]) -> tuple[str, ...]:
    """The `arguments` strings a process running this probe command can have: its arguments,
    and for a script run through its #! line (the kernel passes the script's path again) the
    path and its arguments."""
    return (_probe_args(cmd), join_arguments(cmd)) if cmd[0].startswith("/") else (_probe_args(cmd),)


def _go_base(p: str) -> str:
    """path.Base of Go: the last element, trailing slashes ignored ("." for "", "/" for slashes)."""
    if not p:
        return "."
    p = p.rstrip("/")
    return p.rsplit("/", 1)[-1] if p else "/"


def maybe_exec_probe(c: ContainerInfo, binary: str, arguments: str) -> bool:
    """The process runs one of the container's exec probe commands (Tetragon's heuristic): an
    absolute command path must be the binary, a relative one only names its last element; the
    arguments are the probe's, or (a script run through its #! line, the probe naming the
    binary itself) the binary's path followed by the probe's."""
    for cmd in c.exec_probes:
        head = cmd[0]
        if head.startswith("/"):
            if head != binary:
                continue
        elif _go_base(head) != _go_base(binary):
            continue
        if arguments == _probe_args(cmd) or (head == binary and arguments == join_arguments(cmd)):
            return True
    return False


Listener = Callable[[PodInfo | None, PodInfo | None], None]  # (old, new): added, changed or deleted


DELETED_CONTAINERS_MAX = 1024   # Tetragon's --deleted-pod-cache-size default


class PodStore:
    """Pods of this node by uid, and (pod, container) by container id. As Tetragon's, the
    containers of recently deleted pods are still found (the last `DELETED_CONTAINERS_MAX`):
    a pod deleted while its processes run (a forced deletion, a watch that saw the deletion
    before the last events were read) still gives them its pod data."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_uid: dict[str, PodInfo] = {}
        self.by_container: dict[str, tuple[PodInfo, ContainerInfo]] = {}
        self.deleted: OrderedDict[str, tuple[PodInfo, ContainerInfo]] = OrderedDict()
        self._listeners: list[Listener] = []
        self.updates = 0
        # changes a listener failed on (uid -> (old, new)), told again at the pod's next sight
        # even unchanged (the watch replaying it after the error, a re-list)
        self._unheard: dict[str, tuple[PodInfo | None, PodInfo | None]] = {}
        self.listener_errors = 0

    def listen(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def __len__(self) -> int:
        return len(self.by_uid)

    def lookup(self, container_id: str) -> tuple[PodInfo, ContainerInfo] | None:
        hit = self.by_container.get(container_id)
        if hit is None and self.deleted:
            hit = self.deleted.get(container_id)
        return hit

    def pods(self) -> list[PodInfo]:
        return list(self.by_uid.values())

    def upsert(self, obj: dict[str, Any]) -> None:
        self._set(pod_info(obj))

    def delete(self, obj: dict[str, Any]) -> None:
        uid = (obj.get("metadata") or {}).get("uid", "")
        with self._lock:
            old = self.by_uid.pop(uid, None)
            retell = self._unheard.get(uid) if old is None else None
            if old is not None:
                for c in old.containers:
                    if self.by_container.get(c.id, (None,))[0] is old:
                        del self.by_container[c.id]
                        self.deleted[c.id] = (old, c)
                        self.deleted.move_to_end(c.id)
                while len(self.deleted) > DELETED_CONTAINERS_MAX:
                    self.deleted.popitem(last=False)
                self.updates += 1
        if old is not None:
            self._notify(old, None)
        elif retell is not None and retell[1] is None:
            self._notify(*retell)   # a deletion a listener missed

    def replace_all(self, objs: Iterable[dict[str, Any]]) -> None:
        """A fresh list: pods missing from it are deleted."""
        new = [pod_info(o) for o in objs]
        keep = {p.uid for p in new}
        for uid in [u for u in list(self.by_uid) if u not in keep]:
            self.delete({"metadata": {"uid": uid}})
        for uid in [u for u, (_o, n) in list(self._unheard.items()) if n is None and u not in keep]:
            self.delete({"metadata": {"uid": uid}})   # deletions a listener missed
        for p in new:
            self._set(p)

    def _set(self, pod: PodInfo) -> None:
        with self._lock:
            old = self.by_uid.get(pod.uid)
            same = old == pod
            retell = self._unheard.get(pod.uid) if same else None
            if not same:
                self.by_uid[pod.uid] = pod
                if old is not None:
                    for c in old.containers:
                        if self.by_container.get(c.id, (None,))[0] is old:
                            del self.by_container[c.id]
                for c in pod.containers:
                    self.by_container[c.id] = (pod, c)
                    self.deleted.pop(c.id, None)   # (listed again after all)
                self.updates += 1
        if not same:
            self._notify(old, pod)
        elif retell is not None:
            self._notify(*retell)   # unchanged, but a listener missed its last change

    def _notify(self, old: PodInfo | None, new: PodInfo | None) -> None:
        """Every listener hears of the change; one that fails (a full kernel map, ...) keeps it
        from no other, and the change is told again at the pod's next sight."""
        either = new or old
        uid = either.uid if either is not None else ""
        failed = False
        for fn in self._listeners:
            try:
                fn(old, new)
            except Exception as e:  # noqa: BLE001 - logged and told again, never lost
                failed = True
                self.listener_errors += 1
                if self.listener_errors <= 10:
                    log.warning("pod %s: %s failed: %s (told again at its next update or re-list)",
                                uid, getattr(fn, "__qualname__", fn), e)
        if failed:
            self._unheard[uid] = (old, new)
        else:
            self._unheard.pop(uid, None)
