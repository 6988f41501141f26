"""The Helm chart (item 4): rendered and linted by the real Helm engine, validated against the
Kubernetes schemas, created on the real API server; its RBAC allows the agent's reads only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import CHART, Cluster

ROOT = Path(__file__).resolve().parents[2]
K8S_SCHEMA_VERSION = "1.30.0"


def render(values: dict[str, Any] | None = None, namespace: str = "kube-system") -> list[dict[str, Any]]:
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values or {}, name="vigil", namespace=namespace, is_install=True)
    finally:
        chart.close()
    docs = []
    for path, text in sorted(out.items()):
        if not path.endswith(".yaml"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def test_chart_lints_clean() -> None:
    import helm_python

    res = helm_python.lint(str(CHART), strict=True)
    assert res["errors"] == [], res
    assert [m for m in res["messages"] if m["severity"] > 1] == [], res["messages"]


@pytest.mark.parametrize("values", [
    {},
    {"metrics": {"enabled": False}, "grpc": {"enabled": False}, "serviceAccount": {"name": "custom"},
     "extraOptions": {"process-cache-size": "131072"}, "nodeSelector": {"disk": "ssd"},
     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "sec", "effect": "NoSchedule"}],
     "hostProcPath": "/run/host/proc"},
], ids=["defaults", "customised"])
def test_rendered_objects_are_valid_kubernetes(values: dict[str, Any]) -> None:
    import kubernetes_validate

    docs = render(values)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"]
    for d in docs:
        kubernetes_validate.validate(d, K8S_SCHEMA_VERSION, strict=True)
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["hostPID"] and c["securityContext"]["privileged"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"]
    assert c["args"] == ["--config-dir", "/etc/vigil/config"]
    # the host's bpffs, where --keep-sensors-on-exit pins outlive the container (one mounted inside
    # it would die with it); Bidirectional: a bpffs the agent mounts there reaches the host
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    assert vols[mounts["/sys/fs/bpf"]["name"]]["hostPath"]["path"] == "/sys/fs/bpf"
    cm = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    # the node's proc at /procRoot, the agent's --procfs, as Tetragon's chart: the processes found
    # at start, and uprobe paths /procRoot/<pid>/root/... resolve in the container
    proc_vol = vols[mounts["/procRoot"]["name"]]
    assert proc_vol["hostPath"] == {"path": values.get("hostProcPath", "/proc"), "type": "Directory"}
    assert cm["procfs"] == "/procRoot"
    assert cm["enable-k8s-api"] == "true"
    if values:
        assert "readinessProbe" not in c and "metrics-server" not in cm and cm["server-address"] == ""
        assert cm["process-cache-size"] == "131072"
        assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "disk": "ssd"} and pod["serviceAccountName"] == "custom"
    else:
        assert c["readinessProbe"]["exec"]["command"][:2] == ["vigil", "health"]
        assert cm["metrics-label-filter"] == "namespace,workload,pod,binary"


def test_config_map_holds_only_options_the_agent_knows() -> None:
    from vigil.cli.agent_cmd import OPTIONS

    known = {f.lstrip("-") for f, _ in OPTIONS}
    for values in ({}, {"extraOptions": {"rb-size": "16M"}}):
        cm = next(d for d in render(values) if d["kind"] == "ConfigMap")["data"]
        assert set(cm) <= known, set(cm) - known


def test_crds_are_valid_and_accept_the_policy_library() -> None:
    import jsonschema
    import kubernetes_validate

    crds = {}
    for f in sorted((CHART / "crds").glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        kubernetes_validate.validate(crd, K8S_SCHEMA_VERSION, strict=True)
        crds[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert set(crds) == {"TracingPolicy", "TracingPolicyNamespaced"}
    n = 0
    for f in sorted((ROOT / "tests" / "policies" / "good").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            jsonschema.validate(doc, crds[doc["kind"]])
            n += 1
    assert n >= 16
    bad = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "x"},
           "spec": {"kprobes": [{"syscall": True}], "podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}}
    errs = sorted(e.message for e in jsonschema.Draft7Validator(crds["TracingPolicy"]).iter_errors(bad))
    assert any("'call' is a required property" in e for e in errs) and any("'Is' is not one of" in e for e in errs)


def test_chart_created_on_the_api_server_with_read_only_rbac(cluster: Cluster) -> None:
    from kubernetes import client, utils

    ns = cluster.namespace("vigil-system")
    docs = render({}, namespace=ns)
    created = []
    for d in docs:
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):  # cluster-wide names: one per run
            d["metadata"]["name"] += f"-{cluster.run_id}"
            if d["kind"] == "ClusterRoleBinding":
                d["roleRef"]["name"] += f"-{cluster.run_id}"
        utils.create_from_dict(cluster.client, d, namespace=ns)
        created.append(d)
    try:
        apps = client.AppsV1Api(cluster.client)
        ds = apps.read_namespaced_daemon_set("vigil", ns)
        assert ds.spec.template.spec.host_pid and ds.spec.template.spec.service_account_name == "vigil"
        token = sa_token(cluster, ns, "vigil")
        as_agent = client.ApiClient(agent_configuration(cluster, token))
        core = client.CoreV1Api(as_agent)
        core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={cluster.node}")
        core.list_node()
        core.list_namespace()
        co = client.CustomObjectsApi(as_agent)
        co.list_cluster_custom_object("cilium.io", "v1alpha1", "tracingpolicies")
        co.list_cluster_custom_object("cilium.io", "v1alpha1", "tracingpoliciesnamespaced")
        for forbidden in (lambda: core.list_secret_for_all_namespaces(),
                          lambda: core.create_namespaced_config_map(ns, {"metadata": {"name": "nope"}}),
                          lambda: core.delete_namespaced_pod("any", ns),
                          lambda: co.create_cluster_custom_object("cilium.io", "v1alpha1", "tracingpolicies", {
                              "apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy",
                              "metadata": {"name": "nope"}, "spec": {}})):
            with pytest.raises(client.ApiException) as e:
                forbidden()
            assert e.value.status == 403
    finally:
        rbac = client.RbacAuthorizationV1Api(cluster.client)
        for d in created:
            if d["kind"] == "ClusterRole":
                rbac.delete_cluster_role(d["metadata"]["name"])
            elif d["kind"] == "ClusterRoleBinding":
                rbac.delete_cluster_role_binding(d["metadata"]["name"])


def sa_token(cluster: Cluster, namespace: str, name: str) -> str:
    """A token of the service account (TokenRequest: the API server signs it; no controller needed)."""
    from kubernetes import client

    tr = client.CoreV1Api(cluster.client).create_namespaced_service_account_token(
        name, namespace, {"spec": {"audiences": ["https://kubernetes.default.svc.cluster.local"],
                                   "expirationSeconds": 3600}})
    return tr.status.token


def agent_configuration(cluster: Cluster, token: str) -> Any:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = cluster.api.url
    cfg.ssl_ca_cert = str(cluster.api.dir / "certs" / "apiserver.crt")
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return cfg
