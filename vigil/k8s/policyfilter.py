"""Which containers a pod-scoped policy applies to, kept in the kernel as tracking-cgroup ids.

A policy with a workload scope (TracingPolicyNamespaced, podSelector, containerSelector) gets a
filter id; its hooks carry it (vp_hook.filter_id) and the generic BPF program looks the current
task's tracking cgroup up in `policy_cgroups` under that id (bpf/lib/policy_filter.bpf.h), so a
process outside the scope is turned away in the kernel before anything is read or sent. This
module keeps that map equal to the matching containers' cgroup ids as pods come, go and change
labels (called on the watcher thread; one lock).
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from vigil.k8s.pods import PodInfo, PodStore
from vigil.k8s.selectors import container_labels, matches, pod_labels
from vigil.process.cgroups import parse

log = logging.getLogger("vigil.k8s")
KEY = struct.Struct("<IIQ")
PENDING_FIRST_S, PENDING_MAX_S = 1.0, 60.0
ONE = b"\x01"


class MapWriter(Protocol):
    def update(self, key: bytes, value: bytes, flags: int = 0) -> None: ...
    def delete(self, key: bytes) -> None: ...


@dataclass
class Scope:
    namespace: str | None           # TracingPolicyNamespaced: only its namespace
    pod_selector: Any = None        # LabelSelector-like or None
    container_selector: Any = None
    name: str = ""
    cgroups: set[int] = field(default_factory=set)              # in the kernel map now
    by_pod: dict[str, set[int]] = field(default_factory=dict)   # pod uid -> its matching cgroups

    def pod_matches(self, pod: PodInfo) -> bool:
        if self.namespace is not None and pod.namespace != self.namespace:
            return False
        return matches(self.pod_selector, pod_labels(pod.namespace, pod.labels))

    def container_matches(self, name: str, image_id: str) -> bool:
        return matches(self.container_selector, container_labels(name, image_id))


class CgroupLocator:
    """Container id -> tracking cgroup id, found on the tracking hierarchy's mount.

    The kubelet puts each container's cgroup under its pod's (`.../pod<uid>/<id>`,
    `...-pod<uid_>.slice/cri-containerd-<id>.scope`); pod directories are found by one walk of the
    hierarchy and remembered."""

    def __init__(self, root: str, max_depth: int = 7) -> None:
        self.root = root.rstrip("/")
        self.max_depth = max_depth
        self._pod_dirs: dict[str, str] = {}
        self._last_walk = 0.0
        self.walks = 0

    def _walk(self) -> None:
        self.walks += 1
        self._last_walk = time.monotonic()
        found: dict[str, str] = {}
        stack = [(self.root, 0)]
        while stack:
            d, depth = stack.pop()
            try:
                it = os.scandir(d)
            except OSError:
                continue
            with it:
                for e in it:
                    if not e.is_dir(follow_symlinks=False):
                        continue
                    ref = parse(e.name + "/" + "0" * 64)  # a pod directory names its uid
                    if ref.pod_uid:
                        found[ref.pod_uid] = e.path
                    elif depth < self.max_depth:
                        stack.append((e.path, depth + 1))
        self._pod_dirs = found

    def pod_dir(self, uid: str) -> str | None:
        d = self._pod_dirs.get(uid)
        if d is not None and os.path.isdir(d):
            return d
        if time.monotonic() - self._last_walk > 0.05:
            self._walk()
        return self._pod_dirs.get(uid)

    def container_cgroups(self, pod: PodInfo) -> dict[str, int]:
        """container id -> cgroup id, for the pod's containers that have a cgroup here."""
        d = self.pod_dir(pod.cgroup_uid or pod.uid)
        if d is None:
            return {}
        want = {c.id for c in pod.containers}
        out: dict[str, int] = {}
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        cid = parse(e.name).container_id
                        if cid in want:
                            out[cid] = e.inode()
        except OSError:
            pass
        return out


class PolicyFilter:
    def __init__(self, store: PodStore, writer: MapWriter, locator: CgroupLocator) -> None:
        self.store = store
        self.writer = writer
        self.locator = locator
        self._lock = threading.RLock()
        self.scopes: dict[int, Scope] = {}
        self._next = 1
        # pod uids with running containers whose cgroup was not found yet -> (next try, wait):
        # tried again with a wait that doubles up to PENDING_MAX_S (each try may walk the
        # hierarchy), and at once when the pod changes
        self._pending: dict[str, tuple[float, float]] = {}
        self.map_updates = 0
        self.map_deletes = 0
        # pods handled, by operation (add, update, delete) and error ("" or generic-error):
        # Tetragon's tetragon_policyfilter_operations_total{subsys="pod-handlers"}
        self.operations: dict[tuple[str, str], int] = {}
        self.last_update_ns = 0

    # -- policies
    def add(self, scope: Scope) -> int:
        with self._lock:
            fid = self._next
            self._next += 1
            self.scopes[fid] = scope
            for pod in self.store.pods():
                self._apply(fid, scope, pod, None)
            return fid

    def remove(self, fid: int) -> None:
        with self._lock:
            scope = self.scopes.pop(fid, None)
            if scope is None:
                return
            for cg in scope.cgroups:
                self._delete(fid, cg)
            scope.cgroups.clear()
            scope.by_pod.clear()

    # -- pods (watcher thread)
    def on_pod(self, old: PodInfo | None, new: PodInfo | None) -> None:
        op = "add" if old is None else "delete" if new is None else "update"
        err = "generic-error"
        try:
            with self._lock:
                either = new or old
                uid = either.uid if either is not None else ""
                waited = self._pending.pop(uid, None)
                for fid, scope in self.scopes.items():
                    self._apply(fid, scope, new, old)
                if waited is not None and uid in self._pending:
                    self._pending[uid] = (self._pending[uid][0], waited[1])  # still waiting: keep its pace
            err = ""
        finally:
            self.operations[(op, err)] = self.operations.get((op, err), 0) + 1

    def retry_pending(self, now: float | None = None) -> None:
        """Running containers whose cgroup did not exist yet when their pod was seen."""
        if not self._pending:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            for uid, (when, wait) in list(self._pending.items()):
                if when > now:
                    continue
                del self._pending[uid]
                pod = self.store.by_uid.get(uid)
                if pod is not None:
                    for fid, scope in self.scopes.items():
                        self._apply(fid, scope, pod, None)
                if uid in self._pending:  # still not there: wait longer before the next walk
                    wait = min(wait * 2, PENDING_MAX_S)
                    self._pending[uid] = (now + wait, wait)

    def _wanted(self, scope: Scope, pod: PodInfo | None) -> set[int]:
        if pod is None or not pod.containers or not scope.pod_matches(pod):
            return set()
        cgs = self.locator.container_cgroups(pod)
        out = set()
        for c in pod.containers:
            if not scope.container_matches(c.name, c.image_id):
                continue
            cg = cgs.get(c.id)
            if cg:
                out.add(cg)
            elif c.running and pod.uid not in self._pending:  # (an exited one has no cgroup to wait for)
                self._pending[pod.uid] = (time.monotonic() + PENDING_FIRST_S, PENDING_FIRST_S)
        return out

    def _apply(self, fid: int, scope: Scope, new: PodInfo | None, old: PodInfo | None) -> None:
        pod = new or old
        if pod is None:
            return
        scope_pod = scope.by_pod
        before = scope_pod.get(pod.uid, set())
        after = self._wanted(scope, new)
        for cg in after - before:
            self.writer.update(KEY.pack(fid, 0, cg), ONE)
            self.map_updates += 1
        for cg in before - after:
            self._delete(fid, cg)
        if after:
            scope_pod[pod.uid] = after
        else:
            scope_pod.pop(pod.uid, None)
        scope.cgroups = set().union(*scope_pod.values()) if scope_pod else set()
        if after != before:
            self.last_update_ns = time.monotonic_ns()

    def _delete(self, fid: int, cg: int) -> None:
        try:
            self.writer.delete(KEY.pack(fid, 0, cg))
            self.map_deletes += 1
        except Exception:  # noqa: BLE001 - already gone
            pass

    def stats(self) -> dict[str, Any]:
        return {"filters": {fid: {"policy": s.name, "cgroups": len(s.cgroups)} for fid, s in self.scopes.items()},
                "map_updates": self.map_updates, "map_deletes": self.map_deletes,
                "operations": [{"operation": op, "error": err, "count": n}
                               for (op, err), n in list(self.operations.items())],
                "cgroup_walks": self.locator.walks}
