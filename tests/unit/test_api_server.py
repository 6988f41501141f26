"""The gRPC server over a fake agent, called with the real generated stubs."""
from __future__ import annotations

import json
import os
import stat
import threading

import grpc
import pytest

from tests.api.fake_agent import FakeAgent
from tests.api.harness import POLICY, running_server, wait_for
from vigil.api.client import AgentUnreachable, Client, resolve_address
from vigil.api.pb import eventlogservice_pb2, eventlogservice_pb2_grpc, events_pb2, sensors_pb2, tetragon_pb2
from vigil.export.filters import FilterOptions


@pytest.fixture
def srv():
    with running_server() as (server, agent), Client(server.address, timeout=5) as c:
        yield server, agent, c


def code_of(fn, *a, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        fn(*a, **kw)
    return e.value.code()


def test_health_version_info(srv):
    server, agent, c = srv
    assert c.health() == [{"event": "HEALTH_STATUS_TYPE_STATUS", "status": "HEALTH_STATUS_RUNNING",
                           "details": "all sensors loaded"}]
    assert c.version() == "9.9.9-test"
    st = c.status()
    assert st["events"] == {"process_exec": 10, "process_exit": 9}
    assert st["process_cache"]["size"] == 42
    assert st["grpc"]["streams_active"] == 0
    assert c.info().name == "vigil"


def test_policy_lifecycle_reaches_agent(srv):
    _, agent, c = srv
    c.add_policy(POLICY % "p1")
    assert agent.calls[-1] == ("add", POLICY % "p1", None, "grpc")
    [p] = c.list_policies()
    assert p["name"] == "p1" and p["state"] == "TP_STATE_ENABLED" and p["mode"] == "TP_MODE_ENFORCE"
    assert p["stats"]["action_counters"] == {"post": "3", "signal": "1", "monitor_signal": "2"}
    assert p["hook_statuses"][0]["hook_description"] == "kprobe:security_file_open"
    c.disable_policy("p1")
    assert agent.calls[-1] == ("enabled", "p1", False, "")
    assert c.list_policies()[0]["state"] == "TP_STATE_DISABLED"
    c.enable_policy("p1")
    assert agent.calls[-1] == ("enabled", "p1", True, "")
    c.set_policy_mode("p1", "monitor")
    assert agent.calls[-1] == ("mode", "p1", "monitor", "")
    assert c.list_policies()[0]["mode"] == "TP_MODE_MONITOR"
    c.delete_policy("p1")
    assert agent.calls[-1] == ("delete", "p1", "")
    assert c.list_policies() == []


def test_deprecated_enable_disable_rpcs(srv):
    _, agent, c = srv
    c.add_policy(POLICY % "p2")
    c.stub.DisableTracingPolicy(sensors_pb2.DisableTracingPolicyRequest(name="p2"), timeout=5)
    c.stub.EnableTracingPolicy(sensors_pb2.EnableTracingPolicyRequest(name="p2"), timeout=5)
    assert [x[:3] for x in agent.calls[-2:]] == [("enabled", "p2", False), ("enabled", "p2", True)]


def test_policy_errors(srv):
    _, agent, c = srv
    assert code_of(c.add_policy, "metadata: [") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(c.add_policy, "") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(c.add_policy, "metadata: {name: r}\nspec: {refuse: true}") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(c.delete_policy, "missing") == grpc.StatusCode.NOT_FOUND
    assert code_of(c.enable_policy, "missing") == grpc.StatusCode.NOT_FOUND
    assert code_of(c.set_policy_mode, "missing", "enforce") == grpc.StatusCode.NOT_FOUND
    assert code_of(c.delete_policy, "") == grpc.StatusCode.INVALID_ARGUMENT
    c.add_policy(POLICY % "p3")
    assert code_of(c.enable_policy, "p3") == grpc.StatusCode.FAILED_PRECONDITION  # already enabled
    req = sensors_pb2.ConfigureTracingPolicyRequest(name="p3", mode=sensors_pb2.TP_MODE_MONITOR_ONLY)
    assert code_of(c.stub.ConfigureTracingPolicy, req, timeout=5) == grpc.StatusCode.INVALID_ARGUMENT


def test_agent_bug_is_internal_with_message(srv):
    _, agent, c = srv
    agent.list_policies = lambda: [{"id": "not-a-number"}]
    with pytest.raises(grpc.RpcError) as e:
        c.list_policies()
    assert e.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
    agent.health = lambda: 1 / 0
    with pytest.raises(grpc.RpcError) as e:
        c.health()
    assert e.value.code() == grpc.StatusCode.INTERNAL and "ZeroDivisionError" in e.value.details()


@pytest.mark.parametrize("call", [
    lambda s: s.RuntimeHook(tetragon_pb2.RuntimeHookRequest(), timeout=3),
    lambda s: s.EnableSensor(sensors_pb2.EnableSensorRequest(name="x"), timeout=3),
    lambda s: s.DisableSensor(sensors_pb2.DisableSensorRequest(name="x"), timeout=3),
    lambda s: s.RemoveSensor(sensors_pb2.RemoveSensorRequest(name="x"), timeout=3),
])
def test_unimplemented_is_prompt(srv, call):
    _, _, c = srv
    with pytest.raises(grpc.RpcError) as e:
        call(c.stub)  # answered before the call's 3 s deadline, or it would be DEADLINE_EXCEEDED
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and e.value.details()


def test_event_log_service_unimplemented(srv):
    server, _, c = srv
    stub = eventlogservice_pb2_grpc.EventLogServiceStub(c.channel)
    assert code_of(stub.GetEventLogParams, eventlogservice_pb2.GetEventLogParamsRequest(), timeout=3) \
        == grpc.StatusCode.UNIMPLEMENTED


def test_sensors_domains_debug(srv):
    _, agent, c = srv
    assert c.list_sensors() == [{"name": "exec", "enabled": True, "collection": "base"}]
    assert list(c.stub.ListDomains(sensors_pb2.ListDomainsRequest(), timeout=5).domains) == ["static", "grpc"]
    res = c.stub.GetDebug(sensors_pb2.GetDebugRequest(flag=sensors_pb2.CONFIG_FLAG_LOG_LEVEL), timeout=5)
    assert res.level == sensors_pb2.LOG_LEVEL_INFO
    c.stub.SetDebug(sensors_pb2.SetDebugRequest(flag=sensors_pb2.CONFIG_FLAG_LOG_LEVEL,
                                                level=sensors_pb2.LOG_LEVEL_DEBUG), timeout=5)
    assert agent.log_level == "debug"
    res = c.stub.GetDebug(sensors_pb2.GetDebugRequest(flag=sensors_pb2.CONFIG_FLAG_DUMP_PROCESS_CACHE), timeout=5)
    [p] = res.processes.processes
    assert p.process.binary == "/sbin/init" and p.refcnt.value == 2


def test_bad_filter_is_invalid_argument(srv):
    from vigil.api import convert

    server, _, c = srv
    bad = [
        convert.events_request([{"binary_regex": ["("]}]),
        convert.events_request([{"cel_expression": ["true"]}]),
        convert.events_request(field_filters=[{"fields": "process..pid"}]),
    ]
    for req in bad:
        with pytest.raises(grpc.RpcError) as e:
            next(iter(c.stub.GetEvents(req, timeout=5)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
        assert e.value.details()
    assert server.stats()["streams_active"] == 0


def test_stream_limit_and_stop_ends_streams():
    with running_server(max_workers=4, max_streams=2) as (server, agent):
        c = Client(server.address, 5)
        calls = [c.stub.GetEvents(events_pb2.GetEventsRequest()) for _ in range(2)]
        wait_for(lambda: agent.bus.subscriber_count == 2, what="2 subscriptions")
        with pytest.raises(grpc.RpcError) as e:
            next(iter(c.stub.GetEvents(events_pb2.GetEventsRequest(), timeout=5)))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.version() == "9.9.9-test"  # unary calls still have a worker
        calls[0].cancel()
        wait_for(lambda: agent.bus.subscriber_count == 1, what="cancel to release the subscription")
        server.stop(grace=0.5)  # returns although a stream is still open
        with pytest.raises(grpc.RpcError) as e:
            for _ in calls[1]:
                pass
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert agent.bus.subscriber_count == 0
        c.close()


def test_info_files_written_and_removed(tmp_path):
    files = [tmp_path / "tetragon" / "tetragon-info.json", tmp_path / "vigil" / "vigil-info.json"]
    with running_server(info_files=files) as (server, _):
        for f in files:
            assert json.loads(f.read_text()) == {"server_address": server.address}
        assert resolve_address(None, info_files=tuple(map(str, files))) == server.address
        assert resolve_address("unix:///x.sock", info_files=tuple(map(str, files))) == "unix:///x.sock"
    assert not any(f.exists() for f in files)
    assert resolve_address(None, info_files=(str(files[0]),)) == "localhost:54321"


def test_unix_socket_mode_0600(tmp_path):
    sock = tmp_path / "run" / "vigil.sock"
    with running_server(f"unix://{sock}") as (server, agent):
        assert server.address == f"unix://{sock}"
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        with Client(server.address, 5) as c:
            assert c.version() == "9.9.9-test"
    assert not sock.exists()


def test_unreachable_names_address():
    with pytest.raises(AgentUnreachable) as e:
        Client("localhost:1", timeout=0.5)
    assert "localhost:1" in str(e.value)


def test_health_service():
    pytest.importorskip("grpc_health")
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with running_server() as (server, _):
        ch = grpc.insecure_channel(server.address)
        stub = health_pb2_grpc.HealthStub(ch)
        res = stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        assert res.status == health_pb2.HealthCheckResponse.SERVING
        ch.close()


def test_concurrent_unary_calls(srv):
    _, agent, c = srv
    errors = []

    def worker(i):
        try:
            c.add_policy(POLICY % f"c{i}")
            c.list_policies()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(agent.policies) == 20


@pytest.mark.parametrize("dump, binaries", [
    (None, ["/live", "/exited", "/bare"]),
    (sensors_pb2.DumpProcessCacheReqArgs(), ["/live", "/exited", "/bare"]),
    (sensors_pb2.DumpProcessCacheReqArgs(skip_zero_refcnt=True), ["/live"]),
], ids=["no-args", "defaults", "skip-zero-refcnt"])
def test_process_cache_dump_honours_skip_zero_refcnt(srv, dump, binaries):
    """`tetra debug dump processcache --skip-zero-refcnt`: entries nobody refers to any more are left
    out (a bare Process entry has no reference count: 0)."""
    _, agent, c = srv
    agent.process_cache_dump = lambda: [  # type: ignore[method-assign]
        {"process": {"exec_id": "a", "pid": 10, "binary": "/live"}, "refcnt": 1},
        {"process": {"exec_id": "b", "pid": 11, "binary": "/exited"}, "refcnt": 0},
        {"exec_id": "c", "pid": 12, "binary": "/bare"},
    ]
    req = sensors_pb2.GetDebugRequest(flag=sensors_pb2.CONFIG_FLAG_DUMP_PROCESS_CACHE)
    if dump is not None:
        req.dump.CopyFrom(dump)
    res = c.stub.GetDebug(req, timeout=5)
    assert [p.process.binary for p in res.processes.processes] == binaries
    assert all(p.HasField("refcnt") for p in res.processes.processes)  # as Tetragon: set, also when 0


def test_process_cache_dump_refuses_exclude_execve_map_processes(srv):
    """`tetra debug dump processcache --exclude-execve-map-processes`: Vigil cannot tell which
    entries the kernel's execve_map holds, so the flag is refused by name, never ignored."""
    _, _, c = srv
    req = sensors_pb2.GetDebugRequest(flag=sensors_pb2.CONFIG_FLAG_DUMP_PROCESS_CACHE,
                                      dump=sensors_pb2.DumpProcessCacheReqArgs(exclude_execve_map_processes=True))
    with pytest.raises(grpc.RpcError) as e:
        c.stub.GetDebug(req, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exclude_execve_map_processes" in e.value.details()


def _varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _msg(number: int, payload: bytes) -> bytes:  # a length-delimited field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _extra(number: int) -> bytes:  # a varint field the schema does not define
    return _varint(number << 3) + b"\x01"


_REGEX = _msg(1, b"x")  # Filter.binary_regex: ["x"]
_CAPS = _msg(11, _msg(2, _msg(1, b"\x0d")))  # Filter.capabilities.effective.any: [CAP_NET_RAW] (packed)

# (GetEventsRequest wire bytes, the place the refusal names); None: served
REQUEST_FIELD_CASES = [
    (_extra(5), "GetEventsRequest: field number 5"),
    (_msg(1, _REGEX + _extra(20)), "allow_list[0]: field number 20"),
    (_msg(2, _REGEX) + _msg(2, _extra(99)), "deny_list[1]: field number 99"),
    (_msg(1, _msg(11, _msg(2, _extra(5)))), "allow_list[0].capabilities.effective: field number 5"),
    (_msg(1, _msg(11, _extra(4))), "allow_list[0].capabilities: field number 4"),
    (_msg(4, _msg(2, _msg(1, b"process")) + _extra(5)), "field_filters[0]: field number 5"),
    (_msg(3, _extra(3)), "aggregation_options: field number 3"),
    (_msg(3, _msg(1, _extra(3))), "aggregation_options.window_size: field number 3"),
    (_msg(3, _msg(1, _varint(1 << 3) + b"\x01") + _varint(2 << 3) + b"\x10"), None),  # {window 1s, buffer 16}
    (_msg(1, _REGEX + _CAPS), None),
]


@pytest.mark.parametrize("raw,named", REQUEST_FIELD_CASES, ids=[str(c[1]) for c in REQUEST_FIELD_CASES])
def test_request_fields_are_honoured_or_refused(srv, raw, named):
    """A field of GetEventsRequest (or of a message in it) this agent does not define is refused
    with INVALID_ARGUMENT naming where it is, never parsed into the unknown-field set and ignored;
    aggregation_options is honoured (as Tetragon's: no event type aggregates, all are sent)."""
    server, agent, c = srv
    req = events_pb2.GetEventsRequest.FromString(raw)  # the client sends the unknown fields on
    assert req.SerializeToString() == raw
    if named is not None:
        with pytest.raises(grpc.RpcError) as e:
            next(iter(c.stub.GetEvents(req, timeout=5)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert named in e.value.details(), e.value.details()
        assert server.stats()["streams_active"] == 0
        return
    stream = c.stub.GetEvents(req, timeout=10)
    event = {"process_exec": {"process": {"pid": 5, "binary": "/x",
                                          "cap": {"effective": ["CAP_NET_RAW"]}}}}
    wait_for(lambda: server.stats()["streams_active"] == 1, what="stream open")
    agent.publish([event])
    got = next(iter(stream))
    stream.cancel()
    assert got.process_exec.process.pid.value == 5


class _NoAncestorsAgent(FakeAgent):
    """An agent whose events carry neither ancestors nor capabilities."""

    filter_options = FilterOptions(ancestors=False, process_cred=False)


# (allow filter, the refusal's field, or None: served)
OPTION_REQUEST_CASES = [
    ({"ancestor_binary_regex": ["init"]}, "ancestor_binary_regex: events carry no ancestors"),
    ({"capabilities": {"permitted": {"none": ["CAP_SYS_ADMIN"]}}}, "capabilities: events carry no capabilities"),
    ({"binary_regex": ["/x"]}, None),
]


@pytest.mark.parametrize("spec,named", OPTION_REQUEST_CASES, ids=[str(c[0]) for c in OPTION_REQUEST_CASES])
def test_filter_on_what_events_never_carry_is_invalid_argument(spec, named):
    """Through the gRPC server (AgentControl.filter_options) and a serving process (whose
    --no-ancestors / --no-process-cred the agent passes from its config)."""
    from vigil.api import convert

    req = convert.events_request([spec])
    with running_server(agent=_NoAncestorsAgent()) as (server, agent), Client(server.address, timeout=5) as c:
        if named is None:
            stream = c.stub.GetEvents(req, timeout=10)
            wait_for(lambda: server.stats()["streams_active"] == 1, what="stream open")
            agent.publish([{"process_exec": {"process": {"pid": 5, "binary": "/x"}}}])
            assert next(iter(stream)).process_exec.process.pid.value == 5
            stream.cancel()
        else:
            with pytest.raises(grpc.RpcError) as e:
                next(iter(c.stub.GetEvents(req, timeout=5)))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert named in e.value.details(), e.value.details()


_S = sensors_pb2
# (call, its request with a domain, the domain the loaded policy is in, status; None: done)
DOMAIN_CASES = [
    ("DeleteTracingPolicy", _S.DeleteTracingPolicyRequest(name="p1", domain="static"), "static", None),
    ("DeleteTracingPolicy", _S.DeleteTracingPolicyRequest(name="p1", domain="grpc"), "static",
     grpc.StatusCode.NOT_FOUND),
    # no domain is 'grpc', as Tetragon's server reads it: a file's or a CRD's policy is not found
    ("DeleteTracingPolicy", _S.DeleteTracingPolicyRequest(name="p1"), "static", grpc.StatusCode.NOT_FOUND),
    ("DeleteTracingPolicy", _S.DeleteTracingPolicyRequest(name="p1"), "k8s", grpc.StatusCode.NOT_FOUND),
    ("DeleteTracingPolicy", _S.DeleteTracingPolicyRequest(name="p1"), "grpc", None),
    ("DisableTracingPolicy", _S.DisableTracingPolicyRequest(name="p1"), "static", grpc.StatusCode.NOT_FOUND),
    ("EnableTracingPolicy", _S.EnableTracingPolicyRequest(name="p1"), "k8s", grpc.StatusCode.NOT_FOUND),
    ("ConfigureTracingPolicy", _S.ConfigureTracingPolicyRequest(name="p1", enable=False), "static",
     grpc.StatusCode.NOT_FOUND),
    ("ConfigureTracingPolicy", _S.ConfigureTracingPolicyRequest(name="p1", enable=False), "grpc", None),
    ("DisableTracingPolicy", _S.DisableTracingPolicyRequest(name="p1", domain="k8s"), "grpc",
     grpc.StatusCode.NOT_FOUND),
    ("DisableTracingPolicy", _S.DisableTracingPolicyRequest(name="p1", domain="grpc"), "grpc", None),
    ("EnableTracingPolicy", _S.EnableTracingPolicyRequest(name="p1", domain="static"), "grpc",
     grpc.StatusCode.NOT_FOUND),
    ("ConfigureTracingPolicy", _S.ConfigureTracingPolicyRequest(name="p1", domain="static", enable=False),
     "grpc", grpc.StatusCode.NOT_FOUND),
    ("ConfigureTracingPolicy", _S.ConfigureTracingPolicyRequest(name="p1", domain="static", enable=False),
     "static", None),
    ("AddTracingPolicy", _S.AddTracingPolicyRequest(yaml=POLICY % "p2", domain="static"), None,
     grpc.StatusCode.INVALID_ARGUMENT),
    ("AddTracingPolicy", _S.AddTracingPolicyRequest(yaml=POLICY % "p2", domain="grpc"), None, None),
]


@pytest.mark.parametrize("call,req,loaded_in,code", DOMAIN_CASES,
                         ids=[f"{c[0]}-{c[1].domain or 'none'}-{c[2]}" for c in DOMAIN_CASES])
def test_policy_calls_honour_or_refuse_domain(srv, call, req, loaded_in, code):
    """The domain of a policy call is honoured (a policy of another domain is not found, as in
    Tetragon, whose policies are keyed by name, namespace and domain) or refused (a policy is
    added to another domain than grpc), never ignored."""
    _, agent, c = srv
    if loaded_in is not None:
        agent.add_policy("metadata: {name: p1}\nspec: {}\n", source=loaded_in)
    before = agent.list_policies()
    if code is None:
        getattr(c.stub, call)(req, timeout=5)
        return
    with pytest.raises(grpc.RpcError) as e:
        getattr(c.stub, call)(req, timeout=5)
    assert e.value.code() == code
    assert repr(req.domain or "grpc") in e.value.details()
    if loaded_in is not None:  # says where the policy is
        assert f"--domain {loaded_in}" in e.value.details(), e.value.details()
    assert agent.list_policies() == before  # nothing changed
