"""Pod data for process events: the resolver the event builder calls, and the hold stage.

`PodResolver.pod_json()` is called by the event builder for a process in a container (one dict
lookup per exec once the container is known). An event of a kubelet-managed container (its cgroup
names a pod) whose pod is not known yet is held by `HoldStage` until the watcher delivers that pod
(then it leaves enriched) or until its deadline (then it leaves without pod data); both are
counted, nothing is dropped, and the queue is bounded (past the bound events leave at once,
counted). Events leave in the order they came.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from vigil.core.events import Event, Pod, PodShared
from vigil.k8s.pods import ContainerInfo, PodInfo, PodStore, maybe_exec_probe
from vigil.process.cgroups import ContainerRef, parse
from vigil.process.model import Key, Process

_REF_CACHE_MAX = 16384
_PODLESS_MIN = 4096   # entries of the pod-less index before it is first pruned


class PodResolver:
    def __init__(self, store: PodStore, annotations: bool = False) -> None:
        self.store = store
        self.annotations = annotations  # --enable-pod-annotations
        self.by_docker: dict[str, ContainerRef] = {}      # docker field (31) -> ref of kubelet containers
        # container id -> (the store's (pod, container) entry, its shared pod part): made when the
        # pod arrives or changes (watcher thread), so a container's first process builds nothing
        self._shared: dict[str, tuple[tuple[PodInfo, ContainerInfo], PodShared]] = {}
        # cgroup name -> the container's shared pod part (which carries its exec probes'
        # argument strings, their longest length and the container: PodShared): dropped when
        # the store changes that container. One object per hit, no tuple around it: the
        # compiled exec path reads it for every process of a container, and each object it
        # goes through is one more cache miss with thousands of containers
        self._by_cg: dict[str, PodShared] = {}
        self._cgroups_of: dict[str, list[str]] = {}      # container id -> its cgroup names in _by_cg
        # what the compiled exec path reads (native/fastpath.c, pod_from_table): a process of a
        # container in the table that runs none of its exec probes gets its pod there, counted
        # in [1] (one native u64, which that code increments in place: no int object per exec);
        # anything else calls pod_json. [2]: the table's generation (one native u64), bumped
        # once it lost entries: that code keeps what it found in it, by cgroup name, while the
        # generation is the one it was found in (bumped after, not before: what it finds while
        # they go is dropped too)
        self.fast: list[Any] = [self._by_cg, bytearray(8), bytearray(8)]
        self._enriched = 0
        self.unknown = 0
        # the process cache (vigil.process.cache.ProcessCache; the hold stage gives it) and, by
        # docker field, the keys of its processes of kubelet containers built without their pod
        # (the builders tell podless()): when the pod comes, adopt() gives it to each of them
        self.cache: Any = None
        self._podless: dict[str, dict[Key, None]] = {}
        self._podless_n = 0
        self._podless_lock = threading.Lock()
        self.adopted = 0
        store.listen(self._changed)

    @property
    def enriched(self) -> int:
        return self._enriched + int.from_bytes(self.fast[1], sys.byteorder)

    def _dropped(self) -> None:
        """The table lost entries: what the compiled exec path kept of it goes."""
        g = self.fast[2]
        g[:] = ((int.from_bytes(g, sys.byteorder) + 1) & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, sys.byteorder)

    def _changed(self, old: PodInfo | None, new: PodInfo | None) -> None:
        """The store changed a pod (watcher thread, after its update): its containers' entries
        go, and the new pod's shared parts are made."""
        for p in (old, new):
            for c in p.containers if p is not None else ():
                for cg in self._cgroups_of.pop(c.id, ()):
                    self._by_cg.pop(cg, None)
                self._shared.pop(c.id, None)
        self._dropped()
        if new is None and old is not None:  # deleted: its containers are no longer waited for
            for c in old.containers:
                self.by_docker.pop(c.id[:31], None)
        for c in new.containers if new is not None else ():
            entry = self.store.lookup(c.id)
            if entry is not None and entry[0] is new:
                self._shared[c.id] = (entry, self._base(new, c))

    def ref(self, cgroup_name: str) -> ContainerRef:
        r = parse(cgroup_name)
        if r.pod_uid:
            if len(self.by_docker) >= _REF_CACHE_MAX and r.docker not in self.by_docker:
                self.by_docker.clear()   # (containers whose pods went while we were away)
            self.by_docker[r.docker] = r
        return r

    def _base(self, pod: PodInfo, c: ContainerInfo) -> PodShared:
        """What every process of this container shares, built once: the pod object with its
        container's part (no pid), in Tetragon's field order; shared, never mutated."""
        # as Tetragon's: image always (its empty fields left out), start_time while the
        # container runs, security_context always ({} unless privileged); the process's pid
        # and maybe_exec_probe go between start_time and security_context
        cont: dict[str, Any] = {"id": c.runtime_id, "name": c.name,
                                "image": {k: v for k, v in (("id", c.image_id), ("name", c.image)) if v}}
        if c.started_at and c.running:
            cont["start_time"] = c.started_at
        cont["security_context"] = {"privileged": True} if c.privileged else {}
        d = PodShared(namespace=pod.namespace, name=pod.name, uid=pod.uid, container=cont)
        if pod.labels:
            d["pod_labels"] = pod.labels
        if pod.workload:
            d["workload"] = pod.workload
        if pod.workload_kind:
            d["workload_kind"] = pod.workload_kind
        if self.annotations and pod.annotations:
            d["pod_annotations"] = pod.annotations
        d.probes = c.probe_args or None
        d.probes_longest = max(map(len, c.probe_args), default=0)
        d.container_info = c
        return d

    def pod_json(self, cgroup_name: str, pid: int, binary: str, arguments: str) -> Pod | None:
        """Tetragon's `pod` object for a process in this cgroup (None: no pod known)."""
        hit = self._by_cg.get(cgroup_name)
        if hit is None:
            r = self.ref(cgroup_name)
            if not r.container_id:
                return None
            seen = self.store.updates
            entry = self.store.lookup(r.container_id)
            if entry is None:
                self.unknown += 1
                return None
            if len(self._by_cg) >= _REF_CACHE_MAX:
                self._by_cg.clear()
                self._cgroups_of.clear()
                self._dropped()
            made = self._shared.get(r.container_id)
            # made for this very entry, or the watcher has not got to it yet
            hit = made[1] if made is not None and made[0] is entry else self._base(*entry)
            self._by_cg[cgroup_name] = hit
            self._cgroups_of.setdefault(entry[1].id, []).append(cgroup_name)
            if self.store.updates != seen:  # the store changed meanwhile: maybe after _changed ran
                self._by_cg.pop(cgroup_name, None)
                self._dropped()
        return self._with_process(hit, hit.container_info, pid, binary, arguments)

    def _with_process(self, base: dict[str, Any], c: ContainerInfo, pid: int, binary: str,
                      arguments: str) -> Pod:
        self._enriched += 1
        probe = bool(c.probe_args and arguments in c.probe_args and maybe_exec_probe(c, binary, arguments))
        return Pod(base, pid, probe)

    def with_pid(self, pod: Pod, pid: int) -> Pod:
        """The same pod object for a forked child (its own pid inside the container): as
        Tetragon's copy of the parent's, it keeps the parent's maybe_exec_probe (a probe's
        forked children are part of the probe)."""
        return Pod(pod.shared, pid, pod.probe)

    def for_clone(self, docker: str, pid: int, binary: str, arguments: str) -> Pod | None:
        """The pod of a process forked from one built without it (its pod came later): looked
        up again by the container, as Tetragon does at fork; the child's own pid, the exec probe
        guess from the image it runs. None: still none known (or no kubelet container)."""
        r = self.by_docker.get(docker)
        entry = self.store.lookup(r.container_id) if r is not None else None
        if r is None or entry is None:
            return None
        made = self._shared.get(r.container_id)
        shared = made[1] if made is not None and made[0] is entry else self._base(*entry)
        return self._with_process(shared, entry[1], pid, binary, arguments)

    def _pod_for(self, entry: tuple[PodInfo, ContainerInfo], pid: int, binary: str, arguments: str) -> Pod:
        """The pod object of a process of this (pod, container) entry: the container's shared
        part (made when the pod came), its own pid inside the container, the exec probe guess."""
        made = self._shared.get(entry[1].id)
        shared = made[1] if made is not None and made[0] is entry else self._base(*entry)
        c = entry[1]
        probe = bool(c.probe_args and arguments in c.probe_args and maybe_exec_probe(c, binary, arguments))
        return Pod(shared, pid, probe)

    def _give(self, p: Process, entry: tuple[PodInfo, ContainerInfo]) -> bool:
        """The cached process gets its pod: a new message (its encodings made again at its next
        event), which its later events, its children's `parent` and ancestors lists carry."""
        m = p.msg
        if m.pod is not None:
            return False
        new = m.derive(pod=self._pod_for(entry, p.nspid, m.binary, m.arguments))
        if p.msg is not m:   # (replaced meanwhile: the hold stage gave it its pod)
            return False
        p.msg = new
        self.adopted += 1
        return True

    def podless(self, p: Process) -> None:
        """Pipeline thread, from the builders: the cached process `p` of a container was built
        without its pod. One of a kubelet container (its cgroup named a pod) is kept by its
        container, to get the pod when it comes (adopt); one whose pod came meanwhile gets it now."""
        r = self.by_docker.get(p.docker)
        if r is None:
            return   # no kubelet container: no pod will come
        if self.cache is not None:
            self._keep_podless(p)
        entry = self.store.lookup(r.container_id)
        if entry is not None:  # the pod came after its build, and adopt() may be over
            with self._podless_lock:
                keys = self._podless.get(p.docker)
                if keys is not None and keys.pop(p.key, 0) is None:
                    self._podless_n -= 1
                    if not keys:
                        del self._podless[p.docker]
            self._give(p, entry)

    def _keep_podless(self, p: Process) -> None:
        with self._podless_lock:
            keys = self._podless.get(p.docker)
            if keys is None:
                keys = self._podless[p.docker] = {}
            if p.key not in keys:
                keys[p.key] = None
                self._podless_n += 1
            if self._podless_n > max(_PODLESS_MIN, 2 * len(self.cache)):
                self._prune()

    def _prune(self) -> None:
        """(under the lock) Only processes still cached and still without pod stay."""
        cache = self.cache
        n = 0
        for docker, keys in list(self._podless.items()):
            live = {k: None for k in keys if (q := cache.get(k)) is not None and q.msg.pod is None}
            if live:
                self._podless[docker] = live
                n += len(live)
            else:
                del self._podless[docker]
        self._podless_n = n

    def adopt(self, pod: PodInfo) -> int:
        """Watcher thread: a pod came (or its container statuses did): every cached process of
        its containers built without it gets it now, with its own pid inside the container, so
        every later event carries it; one pass over the processes of each such container (the
        pod-less index), nothing per event. A process keeps a pod it has (a pod deleted or
        changed later leaves it as it was, as Tetragon's cached processes keep theirs)."""
        cache = self.cache
        if cache is None or not self._podless:
            return 0
        n = 0
        for c in pod.containers:
            docker = c.id[:31]
            with self._podless_lock:
                keys = self._podless.pop(docker, None)
                if keys:
                    self._podless_n -= len(keys)
            if not keys:
                continue
            entry = self.store.lookup(c.id)
            if entry is None:   # gone again meanwhile: kept for its next arrival
                with self._podless_lock:
                    self._podless.setdefault(docker, {}).update(keys)
                    self._podless_n += len(keys)
                continue
            for key in keys:
                p = cache.get(key)
                if p is not None and p.docker == docker and self._give(p, entry):
                    n += 1
        return n

    def podless_now(self) -> int:
        """Processes waiting in the pod-less index (status)."""
        return self._podless_n

    def for_docker(self, docker: str) -> tuple[PodInfo, ContainerInfo] | None:
        r = self.by_docker.get(docker)
        return self.store.lookup(r.container_id) if r is not None else None

    def waits_for_pod(self, docker: str) -> bool:
        """The container is kubelet-managed (its cgroup names a pod) but its pod is unknown."""
        r = self.by_docker.get(docker)
        return r is not None and self.store.lookup(r.container_id) is None


class HoldStage:
    """Holds events of containers whose pod is not known yet (bounded, counted)."""

    def __init__(self, resolver: PodResolver, *, hold_seconds: float = 3.0, max_events: int = 8192,
                 cache: Any = None, emit: Callable[[list[Event]], None] | None = None) -> None:
        self.resolver = resolver
        self.hold_ns = int(hold_seconds * 1e9)
        self.max_events = max_events
        self.cache = cache        # vigil.process.cache.ProcessCache: enriched messages replace the cached ones
        self.emit = emit          # hands released events back to the pipeline (Pipeline.inject)
        if cache is not None and resolver.cache is None:
            resolver.cache = cache   # its processes built without their pod get it when it comes
        self._lock = threading.Lock()
        self._held: deque[tuple[int, str, Event]] = deque()   # (deadline, docker, event)
        self._waiting: dict[str, int] = {}                             # docker -> events held
        self._gave_up: OrderedDict[str, None] = OrderedDict()          # containers whose wait ran out
        self._unknown_seen = 0   # resolver.unknown when filter() last looked at every event
        self.held = 0
        self.released_enriched = 0
        self.released_without_pod = 0
        self.overflow = 0

    def filter(self, events: list[Event], now_ns: int | None = None) -> list[Event]:
        """The events that may leave now; the others are held."""
        res = self.resolver
        if not events or (not self._waiting and res.unknown == self._unknown_seen):
            return events  # no container waits and none was found without its pod since last time
        self._unknown_seen = res.unknown
        out = []
        now_ns = now_ns if now_ns is not None else time.monotonic_ns()
        with self._lock:
            for e in events:
                proc = getattr(e, "process", None)  # events of a process (not DictEvent)
                docker = proc.docker if proc is not None else None
                if not docker or proc.pod is not None:
                    out.append(e)
                    continue
                waiting = docker in self._waiting
                if not waiting and (docker in self._gave_up or not res.waits_for_pod(docker)):
                    if res.for_docker(docker) is not None:
                        self._enrich(e)   # the pod came between build and now
                    out.append(e)
                    continue
                if len(self._held) >= self.max_events:
                    self.overflow += 1
                    out.append(e)
                    continue
                self._held.append((now_ns + self.hold_ns, docker, e))
                self._waiting[docker] = self._waiting.get(docker, 0) + 1
                self.held += 1
        return out

    def _enrich(self, e: Event) -> bool:
        """Pod data on the event's process and parent messages (derived copies: a message
        is never changed once it left the process stage); the cache keeps the new one."""
        res = self.resolver
        done = False
        for key in ("process", "parent"):
            proc = getattr(e, key, None)
            if proc is None or proc.pod is not None or not proc.docker:
                continue
            hit = res.for_docker(proc.docker)
            if hit is None:
                continue
            p = self.cache.get(proc.exec_id) if self.cache is not None and proc.exec_id else None
            # an exec event's own message (binary_properties, which the cached one never has)
            # keeps them: the cached message is never the event's, nor the event's the cache's
            bp = proc.binary_properties
            if p is not None and p.msg.pod is not None and p.msg.exec_id == proc.exec_id:
                new = p.msg   # the cached process got it when the pod came (PodResolver.adopt)
                if bp:
                    new = new.derive(binary_properties=bp)
            else:
                pod, c = hit
                pj = res._with_process(res._base(pod, c), c, getattr(p, "nspid", 0), proc.binary, proc.arguments)
                new = proc.derive(pod=pj)
                if p is not None and p.msg.pod is None:
                    # later events of this process (and its children's parent) carry it
                    p.msg = new if not bp else p.msg.derive(pod=pj)
            setattr(e, key, new)
            done = done or key == "process"
        return done

    def on_pod(self, _old: PodInfo | None, new: PodInfo | None) -> None:
        """Watcher thread: a pod arrived or changed; release what waited for its containers."""
        if new is None:
            return   # deleted: its processes keep the pod they have, as Tetragon's
        if self.resolver.adopt(new):
            # its cached processes have it now; events built before (still on their way to
            # filter()) are looked at once more there
            self._unknown_seen = -1
        ids = {c.id[:31] for c in new.containers}
        with self._lock:  # (filter() decides to hold under it: either it sees the pod, or this its wait)
            if not ids & self._waiting.keys():
                return
        self._release(lambda docker: docker in ids)

    def tick(self, now_ns: int | None = None) -> None:
        """Pipeline thread: release events whose wait ran out."""
        now_ns = now_ns if now_ns is not None else time.monotonic_ns()
        if self._held and self._held[0][0] <= now_ns:
            expired = {d for t, d, _e in self._held if t <= now_ns}
            self._release(lambda docker: docker in expired, give_up=True)

    def _release(self, which: Callable[[str], bool], give_up: bool = False) -> None:
        out = []
        with self._lock:
            keep: deque[tuple[int, str, Event]] = deque()
            for item in self._held:
                docker = item[1]
                if not which(docker):
                    keep.append(item)
                    continue
                e = item[2]
                if self._enrich(e):
                    self.released_enriched += 1
                else:
                    self.released_without_pod += 1
                    if give_up:
                        self._gave_up[docker] = None
                        if len(self._gave_up) > 4096:
                            self._gave_up.popitem(last=False)
                n = self._waiting.get(docker, 0) - 1
                if n > 0:
                    self._waiting[docker] = n
                else:
                    self._waiting.pop(docker, None)
                out.append(e)
            self._held = keep
        if out and self.emit is not None:
            self.emit(out)

    def flush(self) -> list[Event]:
        """Everything still held (at stop): leaves now, enriched where possible."""
        out: list[Event] = []
        self.emit, saved = out.extend, self.emit
        try:
            self._release(lambda _d: True)
        finally:
            self.emit = saved
        return out

    def stats(self) -> dict[str, int]:
        return {"held_now": len(self._held), "held": self.held, "released_enriched": self.released_enriched,
                "released_without_pod": self.released_without_pod, "hold_overflow": self.overflow,
                "enriched_at_build": self.resolver.enriched, "container_without_pod": self.resolver.unknown,
                "processes_given_pod_late": self.resolver.adopted,
                "processes_awaiting_pod": self.resolver.podless_now()}
