"""Errors that echo what the client sent (a long policy name, a long value in a policy, a
filter's regex, hundreds of policy errors) reach real grpcio clients as their message, cut
to what clients take, never as RESOURCE_EXHAUSTED "received metadata size exceeds hard
limit": from the agent's server (vigil.api.servicer) and from a serving process
(h2front, grpcframe.trailers). Before vigil.api.statusmsg every LONG row failed so."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.api.fake_agent import FakeAgent
from tests.api.harness import running_server
from tests.api.serving import serving_process
from vigil.api import convert
from vigil.api.client import Client
from vigil.api.pb import sensors_pb2
from vigil.api.statusmsg import MAX_ENCODED, bounded, encoded_len
from vigil.core.errors import PolicyError
from vigil.policy import PolicyErrors, parse_policies

_S = sensors_pb2
LONG, WIDE = "a" * 100_000, "\u00e9" * 6000   # ASCII; two UTF-8 bytes, six encoded, each
POLICY = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: %s}\nspec: %s\n"
MANY_BAD_KPROBES = "{kprobes: [" + ", ".join(["{call: 7, bogus: 1}"] * 400) + "]}"


class ParsingAgent(FakeAgent):
    """Reads policies as the agent does (vigil.agent.policies.add_text)."""

    def add_policy(self, yaml_text: str, *, mode: str | None = None, source: str = "grpc") -> str:
        try:
            parse_policies(yaml_text, "<grpc>")
        except PolicyErrors as e:
            raise PolicyError(str(e)) from None
        return super().add_policy(yaml_text, mode=mode, source=source)


# call, request, code, what the message starts with, what it ends with
UNARY = [
    ("DeleteTracingPolicy", _S.DeleteTracingPolicyRequest(name=LONG), "NOT_FOUND", "tracing policy 'aaa", "not found"),
    ("DeleteTracingPolicy", _S.DeleteTracingPolicyRequest(name=WIDE), "NOT_FOUND", "tracing policy '\u00e9", "not found"),
    ("EnableTracingPolicy", _S.EnableTracingPolicyRequest(name=LONG, namespace=LONG), "NOT_FOUND",
     "tracing policy 'aaa", "not found"),
    ("DisableTracingPolicy", _S.DisableTracingPolicyRequest(name=WIDE), "NOT_FOUND", "tracing policy", "not found"),
    ("AddTracingPolicy", _S.AddTracingPolicyRequest(yaml="x: 1", domain=LONG), "INVALID_ARGUMENT",
     "AddTracingPolicy: domain 'aaa", "(leave domain empty)"),
    ("AddTracingPolicy", _S.AddTracingPolicyRequest(yaml=POLICY % ("a", "{kprobes: [{call: " + LONG + "}]}")),
     "INVALID_ARGUMENT", "<grpc>:4:25: spec.kprobes[0].call: \"aaa", "to hook a kernel function)"),
    ("AddTracingPolicy", _S.AddTracingPolicyRequest(yaml=POLICY % ("a", MANY_BAD_KPROBES)), "INVALID_ARGUMENT",
     "<grpc>:4:", "more lines"),
    ("DeleteTracingPolicy", _S.DeleteTracingPolicyRequest(name="short"), "NOT_FOUND", "tracing policy 'short'",
     "not found"),
]


def _check(e: grpc.RpcError, code: str, starts: str, ends: str) -> None:
    details = e.details() or ""
    assert e.code().name == code, (e.code(), details[:300])
    assert details.startswith(starts) and ends in details, details[:300]
    assert encoded_len(details) <= MAX_ENCODED


@pytest.mark.parametrize("method,request_,code,starts,ends", UNARY, ids=[f"{u[0]}-{i}" for i, u in enumerate(UNARY)])
def test_agent_server_error_messages_reach_the_client(method, request_, code, starts, ends) -> None:
    with running_server(agent=ParsingAgent()) as (server, _), Client(server.address, timeout=10) as c:
        with pytest.raises(grpc.RpcError) as e:
            getattr(c.stub, method)(request_, timeout=10)
        _check(e.value, code, starts, ends)
        assert c.list_policies() == []


FILTERS = [
    # the reason before the pattern: kept when a long pattern is cut out of the message
    ({"binary_regex": ["(" + WIDE[:3000]]}, "invalid GetEvents filter: binary_regex: invalid regex: missing ) in '(",
     "'"),
    ({"binary_regex": ["("] * 3000}, "invalid GetEvents filter: binary_regex: invalid regex: missing ) in '('", "'("),
    ({"labels": ["app in (" + WIDE]}, "invalid GetEvents filter: labels:", "'"),
]


@pytest.mark.parametrize("spec,starts,ends", FILTERS, ids=[f"filter-{i}" for i in range(len(FILTERS))])
def test_serving_process_filter_errors_reach_the_client(tmp_path: Path, spec, starts, ends) -> None:
    with serving_process(tmp_path) as s, Client(s.address, timeout=10) as c:
        with pytest.raises(grpc.RpcError) as e:
            next(iter(c.stub.GetEvents(convert.events_request([spec]), timeout=10)))
        _check(e.value, "INVALID_ARGUMENT", starts, ends)


@pytest.mark.parametrize("spec,starts,ends", FILTERS, ids=[f"filter-{i}" for i in range(len(FILTERS))])
def test_agent_server_filter_errors_reach_the_client(spec, starts, ends) -> None:
    with running_server() as (server, _), Client(server.address, timeout=10) as c:
        with pytest.raises(grpc.RpcError) as e:
            next(iter(c.stub.GetEvents(convert.events_request([spec]), timeout=10)))
        _check(e.value, "INVALID_ARGUMENT", starts, ends)


@pytest.mark.parametrize("message,kept", [
    ("short", "short"),
    ("x.yaml:1:2: spec: " + "z" * 5000 + " (reason)", None),
    ("\n".join(f"x.yaml:{i}:1: spec.kprobes[{i}]: bad" for i in range(2000)), None),
    ("\U0001f600" * 5000, None),
    ("%" * 5000, None),
])
def test_bounded(message: str, kept: str | None) -> None:
    out = bounded(message)
    assert encoded_len(out) <= MAX_ENCODED
    assert out == kept if kept is not None else out.split("\n")[0][:10] == message[:10]
