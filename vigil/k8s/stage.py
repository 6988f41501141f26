"""The Kubernetes stage of the agent (--enable-k8s-api): pods, pod data on events, policy scope.

Built and driven by the agent (which imports this module only when the option is on):
`start_pods()` before the kernel sensors, so processes found at start get pod data too;
`start_policy_filter()` once the process sensor has created the shared kernel maps;
`start_policies()` after that, to load TracingPolicy/TracingPolicyNamespaced resources; then
`filter_events()` on every batch, `tick()` every second, `close()` at stop. Watches run on their
own threads; nothing here blocks the pipeline.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from vigil.core.events import Event
from vigil.k8s.enrich import HoldStage, PodResolver
from vigil.k8s.pods import PodStore
from vigil.k8s.policyfilter import CgroupLocator, PolicyFilter, Scope
from vigil.k8s.watch import Informer

log = logging.getLogger("vigil.k8s")


def api_client(kubeconfig: str = "") -> Any:
    """A client of the official library: in-cluster (service account) unless a kubeconfig is given.
    Raises ValueError with the reason (the agent reports it and does not start)."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise ValueError("--enable-k8s-api needs the `kubernetes` Python package (pip install 'vigil[k8s]')") from None

    cfg = client.Configuration()
    if kubeconfig:
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        except Exception as e:  # noqa: BLE001 - ConfigException, YAML errors, missing keys
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"--k8s-kubeconfig-path {kubeconfig}: {msg}") from None
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as e:
            raise ValueError(f"--enable-k8s-api: no --k8s-kubeconfig-path and not in a pod: {e}") from None
    cfg.retries = 0  # the watches retry themselves, with backoff
    return client.ApiClient(cfg)


class K8sStage:
    def __init__(self, *, node: str, kubeconfig: str = "", hold_seconds: float = 3.0,
                 cache: Any = None, inject: Callable[[Event], None] | None = None,
                 sync_timeout: float = 15.0, annotations: bool = False,
                 stop: threading.Event | None = None) -> None:
        self.node = node
        self.stop = stop  # set: the agent stops; waiting for a first listing ends at once
        self.kubeconfig = kubeconfig
        self.sync_timeout = sync_timeout
        self.store = PodStore()
        self.resolver = PodResolver(self.store, annotations=annotations)
        emit = (lambda evs: [inject(e) for e in evs]) if inject is not None else None
        self.hold = HoldStage(self.resolver, hold_seconds=hold_seconds, cache=cache, emit=emit)
        self.store.listen(self.hold.on_pod)
        self.filter: PolicyFilter | None = None
        self.policies: Any = None
        self.informers: list[Informer] = []
        self._api: Any = None

    # -- lifecycle
    def _client(self) -> Any:
        if self._api is None:
            self._api = api_client(self.kubeconfig)
        return self._api

    def start_pods(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self._client())
        inf = Informer("pods", core.list_pod_for_all_namespaces, self._on_pod, self.store.replace_all,
                       list_kwargs={"field_selector": f"spec.nodeName={self.node}"})
        self.informers.append(inf)
        inf.start()
        if not self._wait_synced(inf):
            if self.stop is not None and self.stop.is_set():
                return
            log.warning("pods of node %s not listed within %.0f s (%s); events wait for pod data as usual",
                        self.node, self.sync_timeout, inf.last_error or "no answer")
        else:
            log.info("watching %d pods of node %s", len(self.store), self.node)

    def _wait_synced(self, inf: Informer) -> bool:
        """Listed within sync_timeout; False at once when the agent stops meanwhile (an API
        server that does not answer kept a Ctrl-C waiting for the whole timeout)."""
        if self.stop is None:
            return inf.wait_synced(self.sync_timeout)
        deadline = time.monotonic() + self.sync_timeout
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if inf.wait_synced(min(0.05, max(left, 0))):
                return True
            if left <= 0:
                return False
        return False

    def _on_pod(self, typ: str, obj: dict[str, Any]) -> None:
        if typ == "DELETED":
            self.store.delete(obj)
        else:
            self.store.upsert(obj)

    def start_policy_filter(self, writer: Any, cgroup_root: str) -> None:
        self.filter = PolicyFilter(self.store, writer, CgroupLocator(cgroup_root))
        self.store.listen(self.filter.on_pod)

    def start_policies(self, control: Any) -> None:
        from kubernetes import client

        from vigil.k8s.crd import GROUP, PLURALS, VERSION, PolicyResources

        self.policies = PolicyResources(control)
        api = client.CustomObjectsApi(self._client())
        for kind, plural in PLURALS.items():
            def lister(*a: Any, _plural: str = plural, **kw: Any) -> Any:
                return api.list_cluster_custom_object(GROUP, VERSION, _plural, *a, **kw)

            inf = Informer(plural, lister, self.policies.on_event,
                           lambda items, _k=kind: self.policies.on_sync(_k, items))
            self.informers.append(inf)
            inf.start()
        for inf in self.informers[-2:]:
            if not self._wait_synced(inf):
                if self.stop is not None and self.stop.is_set():
                    return
                log.warning("%s not listed within %.0f s (%s); loading them when the API server answers",
                            inf.name, self.sync_timeout, inf.last_error or "no answer")

    def close(self) -> None:
        for inf in self.informers:
            inf.stop()
        self.informers.clear()
        if self._api is not None:
            try:
                self._api.close()
            except Exception:  # noqa: BLE001
                pass
            self._api = None

    # -- policy scope (called by the policy manager)
    def add_scope(self, name: str, namespace: str | None, pod_selector: Any, container_selector: Any) -> int:
        if self.filter is None:
            raise ValueError("the Kubernetes policy filter is not running")
        return self.filter.add(Scope(namespace, pod_selector, container_selector, name=name))

    def remove_scope(self, fid: int) -> None:
        if self.filter is not None:
            self.filter.remove(fid)

    # -- pipeline
    def filter_events(self, events: list[Event]) -> list[Event]:
        return self.hold.filter(events)

    def tick(self) -> None:
        self.hold.tick()
        if self.filter is not None:
            self.filter.retry_pending()

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node, "pods": len(self.store), "containers": len(self.store.by_container),
            "events": self.hold.stats(),
            "watches": {i.name: {"synced": i.synced.is_set(), "lists": i.lists, "watches": i.watches,
                                 "events": i.events, "gone_410": i.gone, "errors": i.errors,
                                 "last_error": i.last_error, "resource_version": i.resource_version}
                        for i in self.informers},
            "policy_filter": self.filter.stats() if self.filter is not None else {},
            "policies": self.policies.stats() if self.policies is not None else {},
        }
