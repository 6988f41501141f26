"""The Kubernetes tier: a real API server and containerd CRI for the whole session.

`cluster`: etcd + kube-apiserver (built by `make k8s-env`, cached outside the repository) on
loopback, containerd + runc on a private root, the policy CRDs from the Helm chart, and a
`Kubelet` that runs real pods of a test node. `k8s_agent`: the agent in this process with
--enable-k8s-api against that cluster. Everything is torn down at the end, also on failure.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.env.apiserver import ApiServer
from tests.k8s.env.containerd import Containerd
from tests.k8s.env.kubelet import Kubelet

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "install" / "kubernetes" / "vigil"


@dataclass
class Cluster:
    api: ApiServer
    cri: Containerd
    kubelet: Kubelet
    client: Any                 # kubernetes.client.ApiClient as admin
    core: Any                   # CoreV1Api
    custom: Any                 # CustomObjectsApi
    node: str
    run_id: str
    kubeconfig: Path
    workdir: Path

    def namespace(self, base: str) -> str:
        ns = f"{base}-{self.run_id}"
        try:
            self.core.create_namespace({"metadata": {"name": ns}})
        except Exception as e:  # created by an earlier test of this run
            if getattr(e, "status", 0) != 409:
                raise
        return ns


def _client(kubeconfig: Path) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


def install_crds(api_client: Any) -> None:
    from kubernetes import client, utils

    ext = client.ApiextensionsV1Api(api_client)
    for f in sorted((CHART / "crds").glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        try:
            utils.create_from_dict(api_client, doc)
        except utils.FailToCreateError as e:
            if not all(getattr(x, "status", 0) == 409 for x in e.api_exceptions):
                raise
        name = doc["metadata"]["name"]
        for _ in range(100):
            crd = ext.read_custom_resource_definition(name)
            if any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
                break
            threading.Event().wait(0.1)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    from tests.kernel.bpfstate import require_root

    require_root()
    from kubernetes import client

    run_id = uuid.uuid4().hex[:6]
    work = Path(tempfile.mkdtemp(prefix=f"vigil-k8s-{run_id}-", dir="/var/tmp"))
    api = ApiServer(work / "api")
    cri = Containerd(work / "containerd")
    kubelet = None
    try:
        api.start()
        cri.start()
        kc = api.kubeconfig(work / "admin.kubeconfig")
        ac = _client(kc)
        install_crds(ac)
        core = client.CoreV1Api(ac)
        node = f"vigil-node-{run_id}"
        core.create_node({"metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}})
        kubelet = Kubelet(core, cri, node, f"/vigil-k8s-{run_id}")
        yield Cluster(api, cri, kubelet, ac, core, client.CustomObjectsApi(ac), node, run_id, kc, work)
    finally:
        if kubelet is not None:
            kubelet.close()
        cri.stop()
        api.stop()
        shutil.rmtree(work, ignore_errors=True)


class K8sAgent:
    """The agent in this process, against the test cluster (see tests/kernel/conftest.py)."""

    def __init__(self, cluster: Cluster, **cfg: Any) -> None:
        from tests.kernel.conftest import RunningAgent
        from vigil.agent.config import AgentConfig

        c = AgentConfig(server_address="", node_name=cluster.node, enable_k8s_api=True,
                        k8s_kubeconfig_path=str(cluster.kubeconfig), **cfg)
        self.ra = RunningAgent(c)
        self.agent = self.ra.agent
        self.collect = self.ra.collect

    def __enter__(self) -> K8sAgent:
        self.ra.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ra.__exit__(*exc)


@contextmanager
def metrics_of(agent: K8sAgent) -> Iterator[Callable[[], dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
    """The agent's /metrics served on a loopback port: a function reading it ((sample name,
    sorted labels) -> value)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from vigil.agent.metrics import MetricsFrontend

    fe = MetricsFrontend(agent.agent.control, "127.0.0.1:0")
    fe.start()

    def read() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{fe.port}/metrics", timeout=10) as r:
            return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
                    for fam in text_string_to_metric_families(r.read().decode()) for smp in fam.samples}
    try:
        yield read
    finally:
        fe.stop()


@pytest.fixture(scope="module")
def k8s_agent(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sAgent]:
    export = tmp_path_factory.mktemp("k8s-export") / "events.log"
    with K8sAgent(cluster, export_filename=str(export)) as a:
        yield a
