"""etcd + kube-apiserver on loopback for the Kubernetes tier (the binary built by `make k8s-env`).

Everything lives in one temporary directory (etcd data, serving certs, keys, the token file);
both servers are children of the test and stop with it. The API server authenticates static
tokens (an admin in system:masters) and service-account tokens (TokenRequest works without a
controller manager), authorizes with RBAC, and runs without the ServiceAccount admission plugin
(no token controller runs).
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.k8s.env.procs import Server, free_port

CACHE = Path(os.environ.get("VIGIL_K8S_CACHE", "/var/cache/vigil-k8s"))
APISERVER = CACHE / "bin" / "kube-apiserver"
ETCD = "/usr/bin/etcd"


class ApiServer:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.token = uuid.uuid4().hex
        self.etcd_port = free_port()
        self.etcd_peer = free_port()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self.etcd = Server("etcd", [
            ETCD, "--name", "vigil-test", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
            "--initial-cluster", f"vigil-test=http://127.0.0.1:{self.etcd_peer}",
            "--log-level", "warn", "--logger", "zap"], self.dir / "etcd.log")
        self.api = Server("kube-apiserver", self._api_argv(), self.dir / "apiserver.log")

    def _api_argv(self) -> list[str]:
        d = self.dir
        return [
            str(APISERVER), "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}", "--insecure-port=0", f"--cert-dir={d / 'certs'}",
            f"--etcd-servers={self.etcd_url}", f"--token-auth-file={d / 'tokens.csv'}",
            "--authorization-mode=RBAC", f"--service-account-key-file={d / 'sa.key'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/24", "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none", "--enable-priority-and-fairness=false", "--allow-privileged=true",
            "--profiling=false", "--logtostderr=true", "--v=0",
        ]

    def start(self) -> None:
        if not APISERVER.exists():
            raise RuntimeError(f"{APISERVER} missing: `make k8s-env` builds it")
        (self.dir / "tokens.csv").write_text(f"{self.token},vigil-admin,vigil-admin-uid,system:masters\n")
        if not (self.dir / "sa.key").exists():
            subprocess.run(["openssl", "genrsa", "-out", str(self.dir / "sa.key"), "2048"], check=True,
                           capture_output=True)
        self.etcd.start()
        self.etcd.wait_until(lambda: _http_ok(self.etcd_url + "/health"), 30, "etcd /health")
        self.start_api()

    def start_api(self) -> None:
        self.api.start()
        self.api.wait_until(lambda: self.get("/readyz") == "ok", 90, "kube-apiserver /readyz")

    def stop_api(self) -> None:
        self.api.stop()

    def stop(self) -> None:
        self.api.stop()
        self.etcd.stop()

    # -- plain HTTP access (the tests use the kubernetes client; this is for readiness)
    def _ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def get(self, path: str) -> str:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, context=self._ctx(), timeout=5) as r:
            return r.read().decode()

    def ca_pem(self) -> str:
        """The API server's self-signed serving certificate (the CA clients trust)."""
        return (self.dir / "certs" / "apiserver.crt").read_text()

    def kubeconfig(self, path: Path, token: str | None = None, user: str = "vigil-admin") -> Path:
        ca = self.dir / "certs" / "apiserver.crt"
        cfg: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Config", "current-context": "vigil-test",
            "clusters": [{"name": "vigil-test", "cluster": {"server": self.url, "certificate-authority": str(ca)}}],
            "users": [{"name": user, "user": {"token": token or self.token}}],
            "contexts": [{"name": "vigil-test", "context": {"cluster": "vigil-test", "user": user}}],
        }
        path.write_text(json.dumps(cfg))
        return path

    def compact_etcd(self) -> int:
        """Compact etcd up to its current revision: older watch versions answer 410 Gone."""
        rev = int(json.loads(_http_post(self.etcd_url + "/v3/kv/range", {"key": "AA=="}))["header"]["revision"])
        _http_post(self.etcd_url + "/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as r:
        return r.status == 200


def _http_post(url: str, body: dict[str, Any]) -> str:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()
