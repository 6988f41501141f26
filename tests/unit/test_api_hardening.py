"""The gRPC API under hostile or careless clients: addresses beyond loopback refused,
TLS with client certificates (real certificates made here), oversized requests,
pathological and malformed filters, and 200 clients connecting and dropping without
leaving threads, file descriptors or memory behind."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.api.fake_agent import FakeAgent
from tests.api.harness import ROOT, marker, read_result, running_server, spawn_client, wait_for
from tests.api.pki import pki_fixture
from tests.procstatus import status_kb
from vigil.api.client import AgentUnreachable, Client, ClientTls
from vigil.api.pb import sensors_pb2
from vigil.api.server import MAX_REQUEST, ApiServer, ServerError, TlsConfig, is_loopback


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("127.0.0.1", True), ("127.8.9.10", True), ("[::1]", True), ("::1", True),
    ("", False), ("0.0.0.0", False), ("[::]", False), ("10.1.2.3", False), ("192.0.2.1", False),
    ("no-such-host.invalid", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("address", ["0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0"])
def test_non_loopback_listener_refused_without_the_option(address: str) -> None:
    srv = ApiServer(FakeAgent(), address, info_files=[])
    with pytest.raises(ServerError, match="--server-allow-remote"):
        srv.start()


def test_tls_on_a_unix_socket_is_refused(tmp_path: Path) -> None:
    srv = ApiServer(FakeAgent(), f"unix://{tmp_path}/s.sock", info_files=[],
                    tls=TlsConfig(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")))
    with pytest.raises(ServerError, match="unix socket"):
        srv.start()


# ---------------------------------------------------------------- TLS with real certificates
pki = pki_fixture


@pytest.fixture
def tls_server(pki: dict[str, str]) -> Iterator[ApiServer]:
    tls = TlsConfig(pki["server.pem"], pki["server.key"], (pki["ca.pem"],), require_client_cert=True)
    with running_server("127.0.0.1:0", tls=tls) as (srv, _agent):
        yield srv


def test_mutual_tls_accepts_only_certificates_of_the_client_ca(tls_server: ApiServer, pki: dict[str, str]) -> None:
    good = ClientTls(pki["ca.pem"], pki["ca-client.pem"], pki["ca-client.key"])
    with Client(tls_server.address, timeout=5, tls=good) as c:
        assert c.health()[0]["status"] == "HEALTH_STATUS_RUNNING"
    refused = [
        None,                                                              # plaintext
        ClientTls(pki["ca.pem"]),                                          # no client certificate
        ClientTls(pki["ca.pem"], pki["rogue-client.pem"], pki["rogue-client.key"]),  # another CA's
        ClientTls(pki["rogue.pem"], pki["ca-client.pem"], pki["ca-client.key"]),     # server not trusted
    ]
    for tls in refused:
        with pytest.raises(AgentUnreachable), Client(tls_server.address, timeout=2, tls=tls) as c:
            c.health()


def test_cli_speaks_tls(tls_server: ApiServer, pki: dict[str, str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "vigil.cli.main", "status", "-o", "json", "--server-address", tls_server.address,
            "--timeout", "5"]
    ok = subprocess.run(base + ["--tls-ca-file", pki["ca.pem"], "--tls-cert-file", pki["ca-client.pem"],
                                "--tls-key-file", pki["ca-client.key"]], capture_output=True, text=True, env=env,
                        timeout=60)
    assert ok.returncode == 0 and "HEALTH_STATUS_RUNNING" in ok.stdout, ok.stderr
    bad = subprocess.run(base + ["--tls-ca-file", pki["ca.pem"]], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "cannot reach the agent" in bad.stderr and "Traceback" not in bad.stderr


def test_tls_files_missing_is_a_clear_error(tmp_path: Path) -> None:
    srv = ApiServer(FakeAgent(), "127.0.0.1:0", info_files=[],
                    tls=TlsConfig(str(tmp_path / "none.pem"), str(tmp_path / "none.key")))
    with pytest.raises(ServerError, match=r"--server-tls-cert-file .*none.pem"):
        srv.start()


# ---------------------------------------------------------------- requests
def test_oversized_request_is_resource_exhausted() -> None:
    with running_server() as (srv, agent), Client(srv.address, timeout=5) as c:
        big = "#" * (MAX_REQUEST + 1)
        with pytest.raises(grpc.RpcError) as e:
            c.stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=big), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not [x for x in agent.calls if x[0] == "add"]
        assert c.health()  # the server is fine


@pytest.mark.parametrize("allow, message", [
    ([{"binary_regex": ["(unclosed"]}], "invalid regex"),
    ([{"binary_regex": ["x" * 5000]}], "limit"),
    ([{"event_set": ["NOT_AN_EVENT"]}], "NOT_AN_EVENT"),
    ([{"no_such_field": 1}], "no_such_field"),
])
def test_malformed_filters_are_invalid_argument(allow: list[dict], message: str) -> None:
    from vigil.api import convert

    with running_server() as (srv, _agent), Client(srv.address, timeout=5) as c:
        try:
            req = convert.events_request(allow, [], [])
        except ValueError as e:  # refused already while building the request
            assert message in str(e)
            return
        call = c.stub.GetEvents(req, timeout=10)
        with pytest.raises(grpc.RpcError) as e:
            next(iter(call))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()


def test_pathological_regex_filter_does_not_stall_the_stream() -> None:
    """(a+)+$ against long binaries: exponential for a backtracking engine, linear for RE2."""
    with running_server() as (srv, agent):
        proc = spawn_client(srv.address, "--allow", '[{"binary_regex": ["(a+)+$"]}]', "--quiet")
        try:
            wait_for(lambda: srv.stats()["streams_active"] == 1, what="the stream")
            ev = {"process_exec": {"process": {"pid": 1, "binary": "/" + "a" * 4000 + "b"}}, "node_name": "n"}
            hit = {"process_exec": {"process": {"pid": 2, "binary": "/" + "a" * 4000}}, "node_name": "n"}
            end = marker()
            end["process_exec"]["process"]["binary"] = "/a"  # the stop marker must pass the filter too
            agent.publish([ev] * 50 + [hit] * 3 + [end])
            _events, summary = read_result(proc, timeout=120)
            assert summary["count"] == 3
        finally:
            if proc.poll() is None:
                proc.kill()


# ---------------------------------------------------------------- connection churn
def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _pool_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("grpc"))


def _other_threads() -> int:
    return threading.active_count() - _pool_threads()


CHURN = r"""
import sys, grpc
from vigil.api.client import Client
from vigil.api.pb import events_pb2
for i in range(int(sys.argv[2])):
    c = Client(sys.argv[1], timeout=10)
    c.health()
    call = c.stub.GetEvents(events_pb2.GetEventsRequest(), timeout=10)
    next(call)             # the stream is live on the server ...
    call.cancel()          # ... and dropped
    c.close()
print("done")
"""


def test_200_clients_connecting_and_dropping_leave_nothing_behind() -> None:
    with running_server() as (srv, agent):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        stop = threading.Event()

        def publish() -> None:  # something for every stream to receive
            ev = {"process_exec": {"process": {"pid": 7, "binary": "/bin/x"}}, "node_name": "n"}
            while not stop.wait(0.002):
                agent.publish([ev])
        pub = threading.Thread(target=publish, daemon=True)
        pub.start()

        def churn(n: int) -> None:
            out = subprocess.run([sys.executable, "-c", CHURN, srv.address, str(n)], capture_output=True, text=True,
                                 env=env, timeout=300)
            assert out.stdout.strip() == "done", out.stderr

        def settled() -> bool:
            return srv.stats()["streams_active"] == 0

        try:
            _churn_and_measure(srv, churn, settled)
        finally:
            stop.set()
            pub.join()


def _churn_and_measure(srv: ApiServer, churn, settled) -> None:  # type: ignore[no-untyped-def]
    churn(40)  # warm up: gRPC's worker pool and allocator reach their working size
    wait_for(settled, what="streams to close")
    gc.collect()
    threads, fds, rss = _other_threads(), _fds(), status_kb()
    churn(200)
    wait_for(settled, what="streams to close")
    gc.collect()
    wait_for(lambda: _fds() <= fds, what=f"fds back to {fds} (now {_fds()})")
    assert _other_threads() <= threads
    assert _pool_threads() <= srv.max_workers  # the server's worker pool grows to its bound, no further
    grown = status_kb() - rss
    assert grown < 8 * 1024, f"RSS grew {grown} KiB over 200 connections"
    assert srv.stats()["streams_started"] == 240
