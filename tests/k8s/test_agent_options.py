"""Agent options of the Kubernetes stage: bad values give a clear error, never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

VIGIL = [sys.executable, "-m", "vigil.cli.main", "agent", "--server-address", "", "--info-file", ""]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIGIL, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.kernel
def test_bad_kubeconfig_is_named(tmp_path: Path) -> None:
    from tests.kernel.bpfstate import require_root

    require_root()
    kc = tmp_path / "broken.kubeconfig"
    kc.write_text("apiVersion: v1\nkind: Config\nclusters: [\n")
    r = run("--enable-k8s-api", "true", "--k8s-kubeconfig-path", str(kc))
    assert r.returncode != 0
    assert str(kc) in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args,needle", [
    (("--k8s-pod-wait", "100"), "--k8s-pod-wait must be 0..60"),
    (("--k8s-pod-wait", "soon"), "--k8s-pod-wait"),
    (("--enable-k8s-api", "maybe"), "--enable-k8s-api"),
    (("--enable-k8s-api", "true", "--k8s-kubeconfig-path", "/nonexistent/kubeconfig"), "/nonexistent/kubeconfig"),
])
def test_bad_option_values(args: tuple[str, ...], needle: str) -> None:
    r = run(*args)
    assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bad_value_in_config_dir_is_named(tmp_path: Path) -> None:
    (tmp_path / "enable-k8s-api").write_text("maybe\n")
    r = run("--config-dir", str(tmp_path))
    assert r.returncode != 0 and "--enable-k8s-api" in r.stderr and "'maybe'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
