"""The generated protobuf/gRPC modules, (re)generated on first import if needed.

`from vigil.api.pb import events_pb2, sensors_pb2_grpc` is the one way the rest of
Vigil reaches the stubs, so a clean checkout works without a separate build step.
"""
from __future__ import annotations

from vigil.api import genproto

genproto.ensure()

from vigil.api.gen.tetragon import (  # noqa: E402  (must follow ensure())
    bpf_pb2,
    capabilities_pb2,
    eventlogservice_pb2,
    eventlogservice_pb2_grpc,
    events_pb2,
    sensors_pb2,
    sensors_pb2_grpc,
    stack_pb2,
    tetragon_pb2,
)

__all__ = [
    "bpf_pb2", "capabilities_pb2", "eventlogservice_pb2", "eventlogservice_pb2_grpc",
    "events_pb2", "sensors_pb2", "sensors_pb2_grpc", "stack_pb2", "tetragon_pb2",
]
