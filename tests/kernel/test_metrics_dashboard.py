"""The Grafana dashboard (install/grafana/vigil-dashboard.json) against a real Prometheus (Debian's,
unpacked by `make`) scraping a running agent: every panel's query is valid PromQL over metrics the
agent really exports, and the panels of the issue's list (events per type, losses per cause,
policy hits, enforcement actions, per-policy hook CPU) show data after a known workload.

The test starts and stops its own Prometheus on a loopback port with its own storage. Program run
times are counted while the test holds a BPF_ENABLE_STATS descriptor (the kernel stops counting
when it is closed)."""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.bpfstate import require_root
from tests.kernel.policytext import openat_policy, openat_selector
from tests.kernel.test_agent_cli import AgentProcess, free_port

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "install" / "grafana" / "vigil-dashboard.json"
PROMETHEUS = REPO / "build" / "prometheus" / "usr" / "bin" / "prometheus"
# panels that must show data after the workload (title -> at least one series)
MUST_SHOW = ("Events per type", "Export", "Kernel losses per cause", "Policy hits", "Enforcement actions",
             "Actions per selector", "Per-policy hook CPU", "Process cache", "BPF map usage", "Agents up",
             "Policies enabled", "Events lost (5m)")


def targets(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_is_a_grafana_dashboard():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "vigil-agent" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dash["templating"]["list"]}
    assert names == {"datasource", "instance", "policy"}
    for p in dash["panels"]:
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and p["targets"]
            assert all(t["refId"] and t["expr"] for t in p["targets"])
    titles = {p["title"] for p in dash["panels"]}
    assert set(MUST_SHOW) <= titles


@pytest.fixture
def bpf_stats() -> Iterator[None]:
    """Program run-time statistics on while the fd is held (BPF_ENABLE_STATS, BPF_STATS_RUN_TIME)."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(16)  # union bpf_attr { enable_stats.type = 0 }
    fd = libc.syscall(321, 32, attr, 16)
    if fd < 0:
        pytest.fail(f"BPF_ENABLE_STATS failed: {os.strerror(ctypes.get_errno())}")
    try:
        yield
    finally:
        os.close(fd)


class Prometheus:
    def __init__(self, tmp: Path, scrape: str) -> None:
        if not PROMETHEUS.exists():
            pytest.fail(f"{PROMETHEUS} missing: `make prometheus` (make test unpacks Debian's package)")
        self.port = free_port()
        cfg = tmp / "prometheus.yml"
        cfg.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                       f"- job_name: vigil\n  static_configs:\n  - targets: ['{scrape}']\n")
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen([str(PROMETHEUS), f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited: " + Path(self.log.name).read_text())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus not ready within 60s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def query(prom: Prometheus, expr: str) -> list[Any]:
    expr = expr.replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$policy", ".*")
    r = prom.api("query", query=expr)
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


def test_dashboard_queries_against_prometheus_scraping_the_agent(tmp_path: Path, bpf_stats: None):
    require_root()
    work = tmp_path / "w"
    work.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(work, 0o755)
    shutil.copy2(os.path.realpath(sys.executable), work / "vpy")
    (work / "secret.txt").write_text("s")
    policy = tmp_path / "deny.yaml"
    policy.write_text(openat_policy("dashboard-deny-open", openat_selector(work / "secret.txt", work / "vpy", "test-secret",
                                                                           "action: Override, argError: -1")))
    ap = AgentProcess(tmp_path, ["--tracing-policy", "library:mining-pool-ports", "--tracing-policy", str(policy)])
    try:
        prom = Prometheus(tmp_path, f"127.0.0.1:{ap.metrics_port}")
    except BaseException:  # no Prometheus: the agent must not outlive the test
        ap.stop()
        raise
    try:
        prom.wait_ready()
        # the workload: execs, a mining-pool connection (refused: nothing listens on loopback 3333),
        # an open the enforcement policy refuses
        for i in range(10):
            subprocess.run(["/bin/true", f"dash-{i}"], check=True)
        with socket.socket() as s:
            s.settimeout(2)
            s.connect_ex(("127.0.0.1", 3333))
        r = subprocess.run([str(work / "vpy"), "-S", "-c", f"open({str(work / 'secret.txt')!r})"], capture_output=True)
        assert r.returncode == 1 and b"PermissionError" in r.stderr
        # until a scrape after the workload holds every panel's data
        deadline = time.monotonic() + 90
        dash = json.loads(DASHBOARD.read_text())
        missing: list[str] = []
        while time.monotonic() < deadline:
            missing = [t for t, e in targets(dash) if t in MUST_SHOW and not query(prom, e)]
            if not missing:
                break
            time.sleep(1)
        assert not missing, f"panels without data: {missing}"
        # every query is valid, and every metric it names is one the agent exports
        exported = set(prom.api("label/__name__/values")["data"])
        for title, expr in targets(dash):
            query(prom, expr)
            for name in re.findall(r"\b((?:tetragon|vigil)_[a-z_]+)\b", expr):
                assert name in exported, f"{title}: {name} is not exported by the agent"
        for v in dash["templating"]["list"]:
            m = re.match(r"label_values\((\w+), (\w+)\)", v.get("definition", ""))
            if m:
                assert m.group(1) in exported
                assert prom.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)})["data"], v["name"]
        # what the panels show is what happened
        acts = query(prom, 'sum by (policy, action, selector_label) (tetragon_tracingpolicy_selector_actions_total)')
        assert {(a["metric"]["policy"], a["metric"]["action"], a["metric"].get("selector_label", "")) for a in acts} >= {
            ("dashboard-deny-open", "override", "test-secret")}
        hits = query(prom, 'tetragon_policy_events_total{policy="mining-pool-ports"}')
        assert hits and float(hits[0]["value"][1]) >= 1
        cpu = query(prom, 'tetragon_overhead_program_runs_total{policy="mining-pool-ports"}')
        assert cpu and max(float(c["value"][1]) for c in cpu) >= 1
    finally:
        prom.stop()
        assert ap.stop() == 0
