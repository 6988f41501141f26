"""The pod and policy watches survive an API server restart and a 410 Gone (item 2)."""
from __future__ import annotations

import pytest

from tests.k8s.conftest import Cluster, K8sAgent
from tests.k8s.test_policies import wait_for

pytestmark = pytest.mark.kernel


def test_watch_survives_api_server_restart_and_410(cluster: Cluster) -> None:
    kl = cluster.kubelet
    ns = cluster.namespace("watch")
    with K8sAgent(cluster) as a:
        pods = a.agent.k8s.informers[0]
        assert pods.name == "pods"
        first = kl.run_pod(ns, "before", [{"name": "c", "command": ["/bin/sleep", "3600"]}])
        wait_for(lambda: a.agent.k8s.store.lookup(first.containers["c"]), "pod seen by the watch")
        lists = pods.lists
        try:
            cluster.api.stop_api()
            wait_for(lambda: pods.errors > 0, "the watch noticed the API server is gone")
            # while it is away, etcd moves on and compacts: the watch's version no longer exists
            cluster.api.start_api()
        finally:
            if not cluster.api.api.running:
                cluster.api.start_api()
        second = kl.run_pod(ns, "after", [{"name": "c", "command": ["/bin/sleep", "3600"]}])
        wait_for(lambda: a.agent.k8s.store.lookup(second.containers["c"]), "pod created after the restart seen")
        # a 410: the watch's version is compacted away while the server is down (etcd moved on)
        rv_before = pods.resource_version
        cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "bump"}})
        gone = pods.gone
        cluster.api.stop_api()
        cluster.api.compact_etcd()
        cluster.api.start_api()
        kl.delete_pod(first)  # the watch may not be back yet: a fresh list must tell
        wait_for(lambda: pods.gone > gone, "the watch got 410 Gone")
        wait_for(lambda: first.uid not in a.agent.k8s.store.by_uid, "the deleted pod gone from the store")
        # (its containers are still found among the recently deleted, as Tetragon's)
        assert a.agent.k8s.store.lookup(first.containers["c"])[0].uid == first.uid
        assert pods.lists > lists, "a fresh list replaced the state"
        third = kl.run_pod(ns, "third", [{"name": "c", "command": ["/bin/sleep", "3600"]}])
        wait_for(lambda: a.agent.k8s.store.lookup(third.containers["c"]), "watching again after the re-list")
        assert pods.resource_version != rv_before
        st = a.agent.status()["k8s"]["watches"]["pods"]
        print("watch status:", st, "gone before:", gone)
        # the policy watches came back too
        for plural in ("tracingpolicies", "tracingpoliciesnamespaced"):
            w = a.agent.status()["k8s"]["watches"][plural]
            assert w["synced"] and w["watches"] >= 2, w
        for p in (second, third):
            kl.delete_pod(p)
