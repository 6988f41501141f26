"""Enabling a policy attaches all of its hooks or none: a hook that cannot attach any more
(here a uprobe whose binary was removed while the policy was disabled) leaves the policy
disabled with nothing attached, its error listed, and the client gets a clear refusal."""
from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.kernel.conftest import RunningAgent, agent_api
from vigil.api.pb import sensors_pb2, sensors_pb2_grpc

pytestmark = pytest.mark.kernel
NAME = "enable-all-or-none"


def _libc() -> str:
    out = subprocess.run(["ldd", "/bin/true"], capture_output=True, text=True, check=True).stdout
    path = next((ln.split("=>")[1].split()[0] for ln in out.splitlines() if "libc.so" in ln), "")
    return path or str(ctypes.util.find_library("c"))


@pytest.fixture
def api(running_agent: RunningAgent) -> Iterator[tuple[RunningAgent, sensors_pb2_grpc.FineGuidanceSensorsStub, Path]]:
    work = Path(tempfile.mkdtemp(prefix="vigil-enable-"))
    try:
        with agent_api(running_agent, work) as stub:
            yield running_agent, stub, work
    finally:
        if NAME in running_agent.agent.policies.policies:
            running_agent.agent.policies.delete(NAME)
        shutil.rmtree(work, ignore_errors=True)


def _opens(ra: RunningAgent, path: Path) -> list[dict]:
    """Policy events (openat) of a `cat` that opens `path`."""
    pid: list[int] = []

    def run() -> None:
        p = subprocess.Popen(["/bin/cat", str(path)], stdout=subprocess.DEVNULL)
        pid.append(p.pid)
        p.wait()
    events = ra.collect(run)
    return [b for e in events for b in e.values() if isinstance(b, dict) and b.get("policy_name") == NAME
            and b.get("process", {}).get("pid") == pid[0]]


def test_enable_that_cannot_attach_every_hook_attaches_none(api):
    ra, stub, work = api
    lib = work / "libcopy.so"
    shutil.copy2(_libc(), lib)
    probe = work / "probe.txt"
    probe.write_text("x\n")
    yaml = f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {NAME}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
  uprobes:
  - path: {lib}
    symbols: [getpid]
"""
    stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=yaml), timeout=60)
    assert _opens(ra, probe)
    stub.ConfigureTracingPolicy(sensors_pb2.ConfigureTracingPolicyRequest(name=NAME, enable=False), timeout=60)
    os.unlink(lib)

    with pytest.raises(grpc.RpcError) as e:
        stub.ConfigureTracingPolicy(sensors_pb2.ConfigureTracingPolicyRequest(name=NAME, enable=True), timeout=60)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, e.value.details()
    msg = e.value.details() or ""
    assert "\n" not in msg and "libbpf" not in msg and str(lib) in msg, msg  # one clear line
    [st] = [p for p in stub.ListTracingPolicies(sensors_pb2.ListTracingPoliciesRequest(), timeout=60).policies
            if p.name == NAME]
    assert st.state == sensors_pb2.TP_STATE_DISABLED and not st.enabled
    assert str(lib) in st.error
    lp = ra.agent.policies.policies[NAME]
    assert not [gh.compiled.placement.describe() for gh in lp.hooks if gh.attached]
    assert not _opens(ra, probe)  # the tracepoint of a disabled policy stays quiet

    # the binary is back: enabling works, the error goes
    shutil.copy2(_libc(), lib)
    stub.EnableTracingPolicy(sensors_pb2.EnableTracingPolicyRequest(name=NAME), timeout=60)
    [st] = [p for p in stub.ListTracingPolicies(sensors_pb2.ListTracingPoliciesRequest(), timeout=60).policies
            if p.name == NAME]
    assert st.state == sensors_pb2.TP_STATE_ENABLED and st.error == ""
    assert _opens(ra, probe)
