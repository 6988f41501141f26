"""`vigil getevents --namespace/--pod` filter on the pod data of real containers (item 6)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import Cluster, K8sAgent

pytestmark = pytest.mark.kernel


def getevents(export: str, *args: str) -> list[dict[str, Any]]:
    r = subprocess.run([sys.executable, "-m", "vigil.cli.main", "getevents", "--file", export, "-o", "json", *args],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def proc(e: dict[str, Any]) -> dict[str, Any]:
    return next(iter(v for k, v in e.items() if k.startswith("process_")))["process"]


def test_getevents_filters_on_pod_namespace_and_name(cluster: Cluster, k8s_agent: K8sAgent) -> None:
    kl = cluster.kubelet
    ns_a, ns_b = cluster.namespace("ge-a"), cluster.namespace("ge-b")
    a = kl.run_pod(ns_a, "frontend-1", [{"name": "c", "command": ["/bin/sleep", "3600"]}])
    b = kl.run_pod(ns_b, "backend-1", [{"name": "c", "command": ["/bin/sleep", "3600"]}])
    try:
        k8s_agent.collect(lambda: [kl.exec(p, "c", ["/bin/echo", f"from-{p.name}"]) for p in (a, b)])
        export = k8s_agent.agent.config.export_filename
        assert Path(export).stat().st_size > 0

        only_a = getevents(export, "--namespace", ns_a)
        assert only_a and all(proc(e)["pod"]["namespace"] == ns_a for e in only_a)
        assert any(proc(e).get("arguments") == "from-frontend-1" for e in only_a)

        by_pod = getevents(export, "--pod", "^backend-")
        assert by_pod and {proc(e)["pod"]["name"] for e in by_pod} == {"backend-1"}
        assert any(proc(e).get("arguments") == "from-backend-1" for e in by_pod)

        both = getevents(export, "--namespace", ns_a, "--namespace", ns_b)
        assert {proc(e)["pod"]["namespace"] for e in both} == {ns_a, ns_b}

        with_host = getevents(export, "--namespace", ns_a, "--host")
        assert any("pod" not in proc(e) for e in with_host) and any("pod" in proc(e) for e in with_host)
        assert getevents(export, "--namespace", f"nothing-{cluster.run_id}") == []
    finally:
        kl.delete_pod(a)
        kl.delete_pod(b)
