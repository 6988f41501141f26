"""Policies scoped to pods, filtered in the kernel, and policies from custom resources (item 3)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import Cluster, K8sAgent, metrics_of

pytestmark = pytest.mark.kernel


def policy(kind: str, name: str, path: str, namespace: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    spec: dict[str, Any] = {"kprobes": [{"call": "sys_openat", "syscall": True,
                                         "args": [{"index": 1, "type": "string"}],
                                         "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal",
                                                                       "values": [path]}]}]}]}
    spec.update(extra or {})
    return {"apiVersion": "cilium.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def hits(events: list[dict[str, Any]], name: str, docker: str = "") -> list[dict[str, Any]]:
    out = []
    for e in events:
        body = e.get("process_kprobe")
        if body and body.get("policy_name") == name and (not docker or body["process"].get("docker") == docker[:31]):
            out.append(body)
    return out


def stats(agent: K8sAgent, name: str, namespace: str = "") -> dict[str, int]:
    for p in agent.agent.list_policies():
        if p["name"] == name and (p["namespace"] or "") == namespace:
            return p["kernel_stats"]
    raise AssertionError(f"policy {namespace}/{name} is not loaded: {[p['name'] for p in agent.agent.list_policies()]}")


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 60, why: object = "") -> Any:
    """Poll until cond() is true; `timeout` only bounds a hang (no test measures time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:.0f} s {why}")


def test_namespaced_policy_fires_only_in_its_namespace(cluster: Cluster, k8s_agent: K8sAgent) -> None:
    kl = cluster.kubelet
    ns_in, ns_out = cluster.namespace("tpn-in"), cluster.namespace("tpn-out")
    inside = kl.run_pod(ns_in, "inside", [{"name": "c", "command": ["/bin/sleep", "3600"]}])
    outside = kl.run_pod(ns_out, "outside", [{"name": "c", "command": ["/bin/sleep", "3600"]}])
    try:
        doc = policy("TracingPolicyNamespaced", "etc-group", "/etc/group", namespace=ns_in)
        k8s_agent.agent.policies.add_text(yaml.safe_dump(doc), "test.yaml")
        wait_for(lambda: stats(k8s_agent, "etc-group", ns_in) is not None, "policy loaded")
        pf = k8s_agent.agent.status()["k8s"]["policy_filter"]["filters"]
        wait_for(lambda: any(f["cgroups"] >= 1 for f in k8s_agent.agent.status()["k8s"]["policy_filter"]
                             ["filters"].values()), f"the inside pod's cgroup in the kernel map ({pf})")
        before = stats(k8s_agent, "etc-group", ns_in)
        with metrics_of(k8s_agent) as scrape:
            events = k8s_agent.collect(lambda: [kl.exec(p, "c", ["/bin/cat", "/etc/group"])
                                                for p in (inside, outside)])
            k8s_agent.collect(lambda: None)  # the loop hands a batch to its sinks before it emits the next
            got = scrape()
        after = stats(k8s_agent, "etc-group", ns_in)
        got_in = hits(events, "etc-group", inside.containers["c"])
        assert got_in and got_in[0]["process"]["pod"]["namespace"] == ns_in
        assert hits(events, "etc-group", outside.containers["c"]) == []
        # tetragon_policy_events_total by the pod's labels (the default --metrics-label-filter)
        series = [(dict(k), v) for (n, k), v in got.items()
                  if n == "tetragon_policy_events_total" and dict(k)["policy"] == "etc-group"]
        assert [(lb["namespace"], lb["pod"], lb["binary"], lb["workload"], v) for lb, v in series] == [
            (ns_in, "inside", "/bin/cat", got_in[0]["process"]["pod"].get("workload", ""), len(got_in))], series
        # the outside pod and the host were turned away in the kernel, before any argument was read
        assert after["not_workload"] > before["not_workload"]
        assert after["posted"] - before["posted"] == len(hits(events, "etc-group"))
    finally:
        try:
            k8s_agent.agent.policies.delete("etc-group", ns_in)
        finally:
            kl.delete_pod(inside)
            kl.delete_pod(outside)


def test_pod_selector_follows_label_changes_in_the_kernel(cluster: Cluster, k8s_agent: K8sAgent) -> None:
    kl = cluster.kubelet
    ns = cluster.namespace("podsel")
    pod = kl.run_pod(ns, "target", [{"name": "c", "command": ["/bin/sleep", "3600"]}], labels={"audit": "off"})
    agent = k8s_agent.agent
    try:
        doc = policy("TracingPolicy", "audited-passwd", "/etc/passwd",
                     # the namespace under its k8s: key, as Tetragon's pod labels hold it
                     extra={"podSelector": {"matchLabels": {"audit": "on", "k8s:io.kubernetes.pod.namespace": ns}}})
        agent.policies.add_text(yaml.safe_dump(doc), "test.yaml")
        cg = kl.cgroup_id(pod, "c")

        def posted_after_exec() -> int:
            before = stats(k8s_agent, "audited-passwd")["posted"]
            k8s_agent.collect(lambda: kl.exec(pod, "c", ["/bin/cat", "/etc/passwd"]))
            return stats(k8s_agent, "audited-passwd")["posted"] - before

        def in_map() -> bool:
            lp = next(p for p in agent.policies.policies.values() if p.name == "audited-passwd")
            return cg in agent.k8s.filter.scopes[lp.filter_id].cgroups

        assert not in_map()
        assert posted_after_exec() == 0
        with metrics_of(k8s_agent) as scrape:
            key = ("tetragon_policyfilter_operations_total",
                   (("error", ""), ("operation", "update"), ("subsys", "pod-handlers")))
            updates = scrape()[key]
            kl.label(pod, {"audit": "on"})
            wait_for(in_map, "label on: the pod's cgroup id in the kernel map")
            # the pod's change went through the policy filter's pod handler (Tetragon's metric)
            assert scrape()[key] > updates
        assert posted_after_exec() >= 1
        kl.label(pod, {"audit": None})
        wait_for(lambda: not in_map(), "label removed: the cgroup id out of the kernel map")
        assert posted_after_exec() == 0
    finally:
        try:
            agent.policies.delete("audited-passwd")
        finally:
            kl.delete_pod(pod)


def _loaded(agent: K8sAgent, name: str, namespace: str = "") -> dict[str, Any] | None:
    return next((p for p in agent.agent.list_policies() if p["name"] == name and p["namespace"] == namespace), None)


def test_custom_resource_created_changed_deleted_live(cluster: Cluster, k8s_agent: K8sAgent) -> None:
    kl = cluster.kubelet
    ns = cluster.namespace("crd")
    pod = kl.run_pod(ns, "reader", [{"name": "c", "command": ["/bin/sleep", "3600"]}])
    co = cluster.custom
    plural = "tracingpoliciesnamespaced"
    try:
        co.create_namespaced_custom_object("cilium.io", "v1alpha1", ns, plural,
                                           policy("TracingPolicyNamespaced", "live", "/etc/group"))
        first = wait_for(lambda: _loaded(k8s_agent, "live", ns), "the resource loaded")
        assert first["domain"] == "k8s" and first["info"] == "k8s"
        wait_for(lambda: any(f["cgroups"] for f in k8s_agent.agent.status()["k8s"]["policy_filter"]["filters"].values()),
                 "the pod in the policy's scope")
        events = k8s_agent.collect(lambda: kl.exec(pod, "c", ["/bin/cat", "/etc/group", "/etc/passwd"]))
        got = hits(events, "live", pod.containers["c"])
        assert [h["args"][0]["string_arg"] for h in got] == ["/etc/group"]

        co.patch_namespaced_custom_object("cilium.io", "v1alpha1", ns, plural, "live", {
            "spec": policy("TracingPolicyNamespaced", "live", "/etc/passwd")["spec"]})
        wait_for(lambda: (_loaded(k8s_agent, "live", ns) or {}).get("id") not in (None, first["id"]),
                 "the changed resource reloaded")
        events = k8s_agent.collect(lambda: kl.exec(pod, "c", ["/bin/cat", "/etc/group", "/etc/passwd"]))
        assert [h["args"][0]["string_arg"] for h in hits(events, "live", pod.containers["c"])] == ["/etc/passwd"]

        co.delete_namespaced_custom_object("cilium.io", "v1alpha1", ns, plural, "live")
        wait_for(lambda: _loaded(k8s_agent, "live", ns) is None, "the deleted resource unloaded")
        events = k8s_agent.collect(lambda: kl.exec(pod, "c", ["/bin/cat", "/etc/passwd"]))
        assert hits(events, "live") == []
    finally:
        try:
            co.delete_namespaced_custom_object("cilium.io", "v1alpha1", ns, plural, "live")
        except Exception:  # noqa: BLE001 - deleted by the test
            pass
        kl.delete_pod(pod)


def test_rejected_resource_is_reported_by_name_and_never_loaded(cluster: Cluster, k8s_agent: K8sAgent) -> None:
    co = cluster.custom
    bad = policy("TracingPolicy", f"bad-{cluster.run_id}", "/etc/group")
    bad["spec"]["kprobes"][0]["selectors"][0]["matchArgs"][0]["operator"] = "Equl"
    bad["spec"]["kprobes"].append({"call": "sys_close", "syscall": True})   # a good part must not load alone
    name = bad["metadata"]["name"]
    co.create_cluster_custom_object("cilium.io", "v1alpha1", "tracingpolicies", bad)
    try:
        rej = wait_for(lambda: k8s_agent.agent.status()["k8s"]["policies"]["rejected"].get(f"TracingPolicy/{name}"),
                       "the rejection reported")
        assert f"TracingPolicy/{name}:" in rej
        assert "spec.kprobes[0].selectors[0].matchArgs[0].operator" in rej and "Equl" in rej
        assert _loaded(k8s_agent, name) is None
        # fixing the resource loads it
        good = policy("TracingPolicy", name, "/etc/group")
        co.patch_cluster_custom_object("cilium.io", "v1alpha1", "tracingpolicies", name, {"spec": good["spec"]})
        wait_for(lambda: _loaded(k8s_agent, name), "the fixed resource loaded")
        assert f"TracingPolicy/{name}" not in k8s_agent.agent.status()["k8s"]["policies"]["rejected"]
    finally:
        co.delete_cluster_custom_object("cilium.io", "v1alpha1", "tracingpolicies", name)
        wait_for(lambda: _loaded(k8s_agent, name) is None, "unloaded")


def test_container_selector_picks_containers_of_a_pod(cluster: Cluster, k8s_agent: K8sAgent) -> None:
    kl = cluster.kubelet
    ns = cluster.namespace("contsel")
    pod = kl.run_pod(ns, "two", [{"name": "main", "command": ["/bin/sleep", "3600"]},
                                 {"name": "sidecar", "command": ["/bin/sleep", "3600"]}], labels={"app": "two"})
    agent = k8s_agent.agent
    try:
        doc = policy("TracingPolicyNamespaced", "sidecar-only", "/etc/group", namespace=ns,
                     extra={"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["two"]}]},
                            "containerSelector": {"matchLabels": {"name": "sidecar"}}})
        agent.policies.add_text(yaml.safe_dump(doc), "test.yaml")
        lp = next(p for p in agent.policies.policies.values() if p.name == "sidecar-only")
        wait_for(lambda: agent.k8s.filter.scopes[lp.filter_id].cgroups == {kl.cgroup_id(pod, "sidecar")},
                 "only the sidecar's cgroup in the kernel map")
        events = k8s_agent.collect(lambda: [kl.exec(pod, c, ["/bin/cat", "/etc/group"]) for c in ("main", "sidecar")])
        assert hits(events, "sidecar-only", pod.containers["main"]) == []
        (hit,) = hits(events, "sidecar-only", pod.containers["sidecar"])
        assert hit["process"]["pod"]["container"]["name"] == "sidecar"
    finally:
        try:
            agent.policies.delete("sidecar-only", ns)
        finally:
            kl.delete_pod(pod)


def test_pod_scoped_policy_needs_kubernetes(tmp_path: Any) -> None:
    """Without --enable-k8s-api a namespaced or pod-scoped policy is refused with the reason."""
    from vigil.kernel.facts import KernelFacts
    from vigil.policy import parse_policies
    from vigil.policy.compile import compile_policy
    from vigil.policy.errors import PolicyErrors

    for doc in (policy("TracingPolicyNamespaced", "ns-only", "/etc/group", namespace="shop"),
                policy("TracingPolicy", "sel", "/etc/group", extra={"podSelector": {"matchLabels": {"a": "b"}}})):
        (p,) = parse_policies(yaml.safe_dump(doc), "p.yaml")
        with pytest.raises(PolicyErrors) as e:
            compile_policy(p, KernelFacts.ideal(), lambda: 1)
        assert "--enable-k8s-api" in str(e.value) and "p.yaml:" in str(e.value)
