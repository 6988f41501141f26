"""Enum values no name belongs to, sent by a real grpcio client: INVALID_ARGUMENT naming the
field. Before, ConfigureTracingPolicy's mode and SetDebug's level answered "Enum
TracingPolicyMode has no name defined for value 77" (protobuf's Name() raising), which
names no field."""
from __future__ import annotations

import grpc
import pytest

from tests.api.harness import running_server
from vigil.api.client import Client
from vigil.api.pb import sensors_pb2 as S

CASES = [
    ("ConfigureTracingPolicy", S.ConfigureTracingPolicyRequest(name="p", mode=77),
     "mode must be TP_MODE_ENFORCE or TP_MODE_MONITOR, got 77 (no TracingPolicyMode value)"),
    ("ConfigureTracingPolicy", S.ConfigureTracingPolicyRequest(name="p", mode=-1),
     "mode must be TP_MODE_ENFORCE or TP_MODE_MONITOR, got -1 (no TracingPolicyMode value)"),
    ("ConfigureTracingPolicy", S.ConfigureTracingPolicyRequest(name="p", mode=S.TP_MODE_UNKNOWN),
     "mode must be TP_MODE_ENFORCE or TP_MODE_MONITOR, got TP_MODE_UNKNOWN"),
    ("SetDebug", S.SetDebugRequest(flag=S.CONFIG_FLAG_LOG_LEVEL, level=77),
     "SetDebug: level must be a LogLevel, got 77 (no LogLevel value)"),
    ("SetDebug", S.SetDebugRequest(flag=S.CONFIG_FLAG_LOG_LEVEL, level=-3),
     "SetDebug: level must be a LogLevel, got -3 (no LogLevel value)"),
]


@pytest.mark.parametrize("method,request_,message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_unknown_enum_value_is_invalid_argument_naming_the_field(method, request_, message) -> None:
    with running_server() as (server, agent), Client(server.address, timeout=5) as c:
        with pytest.raises(grpc.RpcError) as e:
            getattr(c.stub, method)(request_, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == message
        assert c.version()   # still serving
