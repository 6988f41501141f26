"""The status code and message each policy RPC gives a client, on the real agent through
the real gRPC server: what a missing, duplicate or malformed policy gives."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.kernel.conftest import RunningAgent, agent_api
from vigil.api.pb import sensors_pb2 as S, sensors_pb2_grpc

pytestmark = pytest.mark.kernel
C = grpc.StatusCode
NAME = "codes-present"
YAML = f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {NAME}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_getppid
"""


@pytest.fixture(scope="module")
def stub(running_agent: RunningAgent) -> Iterator[sensors_pb2_grpc.FineGuidanceSensorsStub]:
    work = Path(tempfile.mkdtemp(prefix="vigil-codes-"))
    try:
        with agent_api(running_agent, work) as st:
            st.AddTracingPolicy(S.AddTracingPolicyRequest(yaml=YAML), timeout=60)
            yield st
    finally:
        if NAME in running_agent.agent.policies.policies:
            running_agent.agent.policies.delete(NAME)
        shutil.rmtree(work, ignore_errors=True)


CASES = [
    ("add-duplicate", "AddTracingPolicy", S.AddTracingPolicyRequest(yaml=YAML), C.ALREADY_EXISTS, "already exists"),
    ("add-empty", "AddTracingPolicy", S.AddTracingPolicyRequest(yaml=""), C.INVALID_ARGUMENT, "empty"),
    ("add-bad-yaml", "AddTracingPolicy", S.AddTracingPolicyRequest(yaml="a: [b"), C.INVALID_ARGUMENT, "YAML"),
    ("delete-missing", "DeleteTracingPolicy", S.DeleteTracingPolicyRequest(name="codes-missing"),
     C.NOT_FOUND, "codes-missing"),
    ("delete-no-name", "DeleteTracingPolicy", S.DeleteTracingPolicyRequest(), C.INVALID_ARGUMENT, "name"),
    ("disable-missing", "DisableTracingPolicy", S.DisableTracingPolicyRequest(name="codes-missing"),
     C.NOT_FOUND, "codes-missing"),
    ("configure-enable-missing", "ConfigureTracingPolicy",
     S.ConfigureTracingPolicyRequest(name="codes-missing", enable=True), C.NOT_FOUND, "codes-missing"),
    ("configure-nothing-missing", "ConfigureTracingPolicy", S.ConfigureTracingPolicyRequest(name="codes-missing"),
     C.NOT_FOUND, "codes-missing"),
    ("configure-mode-monitor-only", "ConfigureTracingPolicy",
     S.ConfigureTracingPolicyRequest(name=NAME, mode=S.TP_MODE_MONITOR_ONLY), C.INVALID_ARGUMENT, "mode"),
]


@pytest.mark.parametrize("method, request_, code, says", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_policy_rpc_status_codes(stub, method, request_, code, says):
    with pytest.raises(grpc.RpcError) as e:
        getattr(stub, method)(request_, timeout=60)
    assert e.value.code() == code, e.value.details()
    assert says in (e.value.details() or ""), e.value.details()
    # the policy that is there is untouched by a refused call
    [p] = [p for p in stub.ListTracingPolicies(S.ListTracingPoliciesRequest(), timeout=60).policies if p.name == NAME]
    assert p.state == S.TP_STATE_ENABLED
