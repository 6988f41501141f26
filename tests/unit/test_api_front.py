"""The serving process's HTTP/2 front end (vigil.api.fanout + h2front) as clients reach it:
real grpcio clients and the generated stubs, and a bare HTTP/2 client for pings, resets
and clients that never read. This test process plays the agent: it writes the ring and
answers the forwarded calls from a FakeAgent."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import h2.events
import pytest

from tests.api import samples
from tests.api.h2client import RawClient, trailers_of
from tests.api.harness import POLICY, ROOT, marker, read_result, spawn_client, wait_for
from tests.api.pki import pki_fixture
from tests.api.serving import Serving, serving_process
from vigil.api import wire
from vigil.api.client import AgentUnreachable, Client, ClientTls
from vigil.api.pb import events_pb2, sensors_pb2
from vigil.api.server import MAX_REQUEST

pki = pki_fixture

GET_EVENTS = "/tetragon.FineGuidanceSensors/GetEvents"


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Serving]:
    with serving_process(tmp_path, queue_size=50_000) as s:
        yield s


def _burst(n: int) -> list[bytes]:
    """n distinct encoded events of every kind (the reference encoding, as the agent writes)."""
    kinds = list(samples.ALL.values())
    out = []
    for i in range(n):
        ev = kinds[i % len(kinds)]() if i % 4 == 0 else samples.numbered_exec(i)
        out.append(wire.reference_bytes(ev))
    return out


def test_grpcio_client_gets_a_large_burst_exactly(front: Serving) -> None:
    n = 30_000
    payloads = _burst(n)
    with grpc.insecure_channel(front.address) as ch:
        call = ch.unary_stream(GET_EVENTS, request_serializer=events_pb2.GetEventsRequest.SerializeToString,
                               response_deserializer=None)(events_pb2.GetEventsRequest())
        wait_for(lambda: front.stats()["streams_active"] == 1, what="the stream")
        for i in range(0, n, 1000):  # the agent's batches
            front.publish_encoded(payloads[i:i + 1000])
        got = []
        for msg in call:
            got.append(msg)
            if len(got) == n:
                break
        call.cancel()
    assert got == payloads  # every event, in order, byte for byte
    st = wait_for(lambda: (s := front.stats())["streams_active"] == 0 and s, what="the stream to end")
    assert st["events_sent"] == n and st["events_dropped"] == 0 and st["ring_lost"] == 0


def test_generated_stubs_and_cli_client_read_events(front: Serving) -> None:
    events = [samples.ALL[k]() for k in samples.ALL] + [samples.numbered_exec(i) for i in range(50)]
    proc = spawn_client(front.address, "--until-pid", "999999")
    try:
        wait_for(lambda: front.stats()["streams_active"] == 1 or proc.poll() is not None, what="client")
        front.publish(events + [marker()])
        got, summary = read_result(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert summary["count"] == len(events)
    assert got == [wire.decode_response(wire.reference_bytes(e)) for e in events]


def test_filters_apply_on_the_serving_path(front: Serving) -> None:
    allow = json.dumps([{"binary_regex": ["b1$"]}, {"event_set": ["PROCESS_EXIT"]}])
    deny = json.dumps([{"pid": [4]}])
    fields = json.dumps([{"event_set": ["PROCESS_EXEC"], "fields": "process.exec_id,process.pid",
                          "action": "INCLUDE"}])
    proc = spawn_client(front.address, "--allow", allow, "--deny", deny, "--fields", fields)
    try:
        wait_for(lambda: front.stats()["streams_active"] == 1 or proc.poll() is not None, what="client")
        end = marker()
        end["process_exec"]["process"]["binary"] = "/bin/b1"  # must pass the allow list
        front.publish([samples.numbered_exec(i) for i in range(10)] + [samples.exit_event(), end])
        got, _summary = read_result(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pids = [e["process_exec"]["process"]["pid"] for e in got if "process_exec" in e]
    assert pids == [1, 7]  # b1 binaries (1, 4, 7) minus denied pid 4
    assert got[0]["process_exec"] == {"process": {"exec_id": "id-1", "pid": 1}}  # INCLUDE trimmed the rest
    assert sum("process_exit" in e for e in got) == 1
    assert wait_for(lambda: front.stats()["events_filtered"] >= 8, what="filtered count")


def test_malformed_filter_is_invalid_argument(front: Serving) -> None:
    with Client(front.address, timeout=5) as c:
        with pytest.raises(grpc.RpcError) as e:
            next(c.events([{"binary_regex": ["(unclosed"]}]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "invalid GetEvents filter" in (e.value.details() or "")


def test_unknown_request_field_is_refused(front: Serving) -> None:
    """A serving process refuses a GetEventsRequest field it does not define, as the agent's
    own server does (tests/unit/test_api_server.py::test_request_fields_are_honoured_or_refused),
    naming where it is, instead of ignoring it."""
    raw = b"\x0a\x06\x0a\x01x\xa0\x01\x01"  # allow_list[0] {binary_regex: ["x"], field 20: 1}
    with Client(front.address, timeout=5) as c:
        with pytest.raises(grpc.RpcError) as e:
            next(iter(c.stub.GetEvents(events_pb2.GetEventsRequest.FromString(raw), timeout=5)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "allow_list[0]: field number 20" in (e.value.details() or "")


def test_stuck_client_loses_only_its_own_events(tmp_path: Path) -> None:
    """A client that never reads: the other client gets every event, the stuck one's
    overflow is dropped and counted for it alone."""
    n = 20_000
    payloads = _burst(n)
    queue = 5000
    with serving_process(tmp_path, queue_size=queue) as front:
        stuck = RawClient(front.address, window=65535)
        stuck.get_events()  # then never reads
        fast = subprocess.Popen([sys.executable, "-c", _COUNTING_CLIENT, front.address, str(n)], cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: front.stats()["streams_active"] == 2, what="two streams")

            def fast_sent() -> int:
                return next((c["sent"] for c in front.stats()["clients"] if c["peer"].endswith("#2")), 0)

            for i in range(0, n, 1000):
                # paced by the fast client (whatever this machine's speed), never by the stuck one
                wait_for(lambda: fast_sent() >= i - 1000, timeout=60, what="the fast client")  # noqa: B023
                front.publish_encoded(payloads[i:i + 1000])
            out, _ = fast.communicate(timeout=120)
            assert json.loads(out)["count"] == n  # every event: the fast client lost none
            st = wait_for(lambda: (s := front.stats())["streams_active"] == 1 and s["clients"][0]["dropped"] and s,
                          what="the stuck client's drops")
            (entry,) = st["clients"]  # the stuck client, still connected
            assert entry["peer"].endswith("#1") and entry["dropped"] > 0
            assert n - queue <= entry["sent"] + entry["dropped"] <= n  # the rest waits in its queue
            assert st["events_dropped"] == entry["dropped"]  # all of them its own
            assert st["events_sent"] == n + entry["sent"] and st["ring_lost"] == 0
            stuck.close()  # what was still queued for it is dropped too: every event accounted
            st = wait_for(lambda: (s := front.stats())["streams_active"] == 0 and s, what="the stuck stream to end")
            assert st["events_sent"] + st["events_dropped"] == 2 * n
        finally:
            stuck.close()
            if fast.poll() is None:
                fast.kill()
                fast.wait()


_COUNTING_CLIENT = r"""
import json, sys, grpc
from vigil.api.pb import events_pb2
address, n = sys.argv[1], int(sys.argv[2])
count = 0
with grpc.insecure_channel(address) as ch:
    call = ch.unary_stream("/tetragon.FineGuidanceSensors/GetEvents",
                           request_serializer=events_pb2.GetEventsRequest.SerializeToString,
                           response_deserializer=events_pb2.GetEventsResponse.FromString)(events_pb2.GetEventsRequest())
    for _msg in call:
        count += 1
        if count == n:
            break
    call.cancel()
print(json.dumps({"count": count}))
"""


def test_unary_calls_through_the_same_address(front: Serving) -> None:
    with Client(front.address, timeout=5) as c:
        assert c.version() == "9.9.9-test"
        assert c.health()[0]["status"] == "HEALTH_STATUS_RUNNING"
        c.stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=POLICY % "p1"), timeout=10)
        names = [p.name for p in c.stub.ListTracingPolicies(sensors_pb2.ListTracingPoliciesRequest(),
                                                             timeout=10).policies]
        assert names == ["p1"]
        with pytest.raises(grpc.RpcError) as e:
            c.stub.DeleteTracingPolicy(sensors_pb2.DeleteTracingPolicyRequest(name="nope"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in (e.value.details() or "")
        with pytest.raises(grpc.RpcError) as e:
            c.stub.RemoveSensor(sensors_pb2.RemoveSensorRequest(name="x"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        info = c.stub.GetInfo(sensors_pb2.GetInfoRequest(), timeout=10)
        assert info.version == "9.9.9-test"
    assert ("add", POLICY % "p1", None, "grpc") in front.agent.calls


def test_health_service_check_and_watch_are_forwarded(front: Serving) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(front.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        res = stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        assert res.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="liveness"), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # a server-streaming call
        watch.cancel()


def test_oversized_request_is_resource_exhausted(front: Serving) -> None:
    with Client(front.address, timeout=5) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.stub.AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml="#" * (MAX_REQUEST + 1)), timeout=20)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.version() == "9.9.9-test"  # the connection and the server are fine
    assert not [x for x in front.agent.calls if x[0] == "add"]


def test_unfinished_requests_cannot_make_the_serving_process_hold_without_bound(front: Serving) -> None:
    """Streams whose requests never end hold their bytes; past the process's budget for those
    the stream that asks for more is refused (RESOURCE_EXHAUSTED) and its bytes are let go."""
    from vigil.api.h2front import MAX_BUFFERED

    def rss_mb() -> float:
        with open(f"/proc/{front.proc.pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024

    before = rss_mb()
    raw = RawClient(front.address)
    try:
        def send(sid: int, n: int) -> None:   # as flow control lets it (the server acks as it reads)
            while n > 0 and trailers_of(raw.events, sid) == {}:
                k = min(n, raw.conn.local_flow_control_window(sid), raw.conn.max_outbound_frame_size)
                if k > 0:
                    raw.conn.send_data(sid, b"\0" * k)
                    raw.flush()
                    n -= k
                    continue
                try:
                    raw.pump(lambda _ev: False, timeout=0.05)
                except TimeoutError:
                    pass

        sids = []
        for _ in range(40):   # 40 streams x 3 MiB each, none ending: 120 MiB asked to be held
            sid = raw.request(GET_EVENTS, b"", end=False)
            send(sid, 3 << 20)
            sids.append(sid)
        refused = [sid for sid in sids if trailers_of(raw.events, sid).get("grpc-status") == "8"]
        assert refused, "no stream was refused"
        assert "unfinished requests" in trailers_of(raw.events, refused[0]).get("grpc-message", "")
        assert rss_mb() - before < (MAX_BUFFERED >> 20) + 40   # the budget, not 120 MiB
    finally:
        raw.close()
    with Client(front.address, timeout=5) as c:   # and it serves as before
        assert c.version() == "9.9.9-test"


def test_cancel_mid_stream_frees_the_stream(front: Serving) -> None:
    raw = RawClient(front.address)
    try:
        sid = raw.get_events()
        wait_for(lambda: front.stats()["streams_active"] == 1, what="the stream")
        front.publish_encoded(_burst(100))
        raw.pump(lambda ev: isinstance(ev, h2.events.DataReceived))
        raw.conn.reset_stream(sid)  # the client cancels
        raw.flush()
        wait_for(lambda: front.stats()["streams_active"] == 0, what="the stream to be freed")
        front.publish_encoded(_burst(100))  # nothing is sent on the cancelled stream
        sid2 = raw.get_events()  # and the connection serves another
        wait_for(lambda: front.stats()["streams_active"] == 1, what="the second stream")
        front.publish_encoded(_burst(10))
        raw.pump(lambda ev: len(raw.messages(sid2)) >= 10 if isinstance(ev, h2.events.DataReceived) else False)
        assert len(raw.messages(sid2)) == 10
    finally:
        raw.close()
    wait_for(lambda: front.stats()["streams_active"] == 0, what="the connection's streams to end")
    # a grpcio client cancelling mid-stream, too
    with grpc.insecure_channel(front.address) as ch:
        call = ch.unary_stream(GET_EVENTS, request_serializer=events_pb2.GetEventsRequest.SerializeToString,
                               response_deserializer=None)(events_pb2.GetEventsRequest())
        wait_for(lambda: front.stats()["streams_active"] == 1, what="the grpcio stream")
        front.publish_encoded(_burst(50))
        next(call)
        call.cancel()
        wait_for(lambda: front.stats()["streams_active"] == 0, what="the grpcio stream to be freed")


def test_pings_are_answered_and_goaway_closes(front: Serving) -> None:
    raw = RawClient(front.address)
    try:
        raw.conn.ping(b"vigil-12")
        raw.flush()
        raw.pump(lambda ev: isinstance(ev, h2.events.PingAckReceived) and ev.ping_data == b"vigil-12")
        sid = raw.get_events()
        wait_for(lambda: front.stats()["streams_active"] == 1, what="the stream")
        raw.conn.close_connection()  # GOAWAY: the client goes away
        raw.flush()
        raw.close()
        wait_for(lambda: front.stats()["streams_active"] == 0, what="the stream to end with the connection")
        assert sid == 1
    finally:
        raw.close()


def test_stop_ends_streams_with_unavailable(tmp_path: Path) -> None:
    with serving_process(tmp_path) as front:
        raw = RawClient(front.address)
        try:
            sid = raw.get_events()
            wait_for(lambda: front.stats()["streams_active"] == 1, what="the stream")
            front.proc.send_signal(signal.SIGTERM)
            evs = raw.pump(lambda ev: isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid)
            assert trailers_of(evs, sid)["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0])
            assert any(isinstance(ev, h2.events.ConnectionTerminated) for ev in
                       raw.pump(lambda ev: isinstance(ev, h2.events.ConnectionTerminated)))
            assert front.proc.wait(10) == 0
        finally:
            raw.close()
        assert not os.path.exists(front.address.removeprefix("unix://"))


def test_unix_socket_is_0600_and_info_files(tmp_path: Path) -> None:
    info = tmp_path / "run" / "tetragon-info.json"
    with serving_process(tmp_path, extra=["--info-file", str(info)]) as front:
        path = front.address.removeprefix("unix://")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert json.loads(info.read_text()) == {"server_address": front.address}
    assert not info.exists()


def test_tcp_loopback_only_without_the_option(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="--server-allow-remote"), serving_process(tmp_path, "0.0.0.0:0"):
        pass
    with serving_process(tmp_path, "127.0.0.1:0") as front, Client(front.address, timeout=5) as c:
        assert front.address.startswith("127.0.0.1:") and not front.address.endswith(":0")
        assert c.version() == "9.9.9-test"


def test_mutual_tls_with_alpn_h2(tmp_path: Path, pki: dict[str, str]) -> None:
    extra = ["--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"], "--tls-client-ca", pki["ca.pem"],
             "--require-client-cert"]
    with serving_process(tmp_path, "127.0.0.1:0", extra=extra) as front:
        good = ClientTls(pki["ca.pem"], pki["ca-client.pem"], pki["ca-client.key"])
        with Client(front.address, timeout=5, tls=good) as c:
            assert c.health()[0]["status"] == "HEALTH_STATUS_RUNNING"  # forwarded
            stop = threading.Event()

            def keep_publishing() -> None:  # the stream starts on the first read: publish until it has
                while not stop.wait(0.05):
                    front.publish([samples.exec_event()])

            t = threading.Thread(target=keep_publishing)
            t.start()
            try:
                ev = next(c.events())  # GetEvents over TLS
            finally:
                stop.set()
                t.join()
            assert "process_exec" in ev
        for tls in (None, ClientTls(pki["ca.pem"]),
                    ClientTls(pki["ca.pem"], pki["rogue-client.pem"], pki["rogue-client.key"])):
            with pytest.raises(AgentUnreachable), Client(front.address, timeout=2, tls=tls) as c:
                c.health()


def test_tls_on_a_unix_socket_is_refused(tmp_path: Path, pki: dict[str, str]) -> None:
    with pytest.raises(RuntimeError, match="unix socket"), serving_process(
            tmp_path, extra=["--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"]]):
        pass



def test_serving_processes_can_share_a_tcp_port() -> None:
    from vigil.api import listen

    first, address = listen.bind("127.0.0.1:0")
    try:
        second, again = listen.bind(address)  # --server-processes > 1: the kernel spreads connections
        assert again == address
        for s in second:
            s.close()
    finally:
        for s in first:
            s.close()


def test_a_client_that_asks_without_reading_the_answers_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """PINGs (and SETTINGS) are answered by h2 itself, also while the connection is not written
    to because the client reads nothing: past MAX_UNREAD waiting the connection is closed."""
    import asyncio

    import h2.config
    import h2.connection

    from vigil.api import h2front

    class Transport(asyncio.Transport):   # a client that reads nothing: everything written stays buffered
        def __init__(self) -> None:
            super().__init__()
            self.buffered, self.aborted = 0, False

        def write(self, data: bytes) -> None:
            self.buffered += len(data)

        def get_write_buffer_size(self) -> int:
            return self.buffered

        def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
            pass

        def get_extra_info(self, name: str, default: object = None) -> object:
            return default  # (no peer name)

        def abort(self) -> None:
            self.aborted = True
            conn.connection_lost(None)

    monkeypatch.setattr(h2front, "MAX_UNREAD", 1 << 20)   # (16 MiB of PINGs take seconds to parse)
    front = h2front.Front(None)
    conn = h2front.Connection(front)
    t = Transport()
    conn.connection_made(t)  # type: ignore[arg-type]
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    conn.data_received(client.data_to_send())
    conn.pause_writing()
    client.ping(b"12345678")
    ping = client.data_to_send()
    sent = 0
    while not t.aborted and sent < 2 * h2front.MAX_UNREAD:
        conn.data_received(ping * 1000)
        sent += len(ping) * 1000
    assert t.aborted and h2front.MAX_UNREAD < t.buffered < h2front.MAX_UNREAD + len(ping) * 1000
    assert conn not in front.connections


@pytest.mark.parametrize("config,spec,named", [
    ({"enable_ancestors": False}, {"ancestor_binary_regex": ["init"]},
     "ancestor_binary_regex: events carry no ancestors"),
    ({"enable_process_cred": False}, {"capabilities": {"effective": {"any": ["CAP_BPF"]}}},
     "capabilities: events carry no capabilities"),
])
def test_filter_on_what_events_never_carry_is_refused(tmp_path: Path, config, spec, named) -> None:
    """A serving process started as the agent starts it (vigil.agent.frontends) without
    --enable-ancestors (or with --enable-process-cred=false) refuses the filter that could
    never work, like the agent's server."""
    from vigil.agent.config import AgentConfig
    from vigil.export.filters import FilterOptions

    extra = FilterOptions.of(AgentConfig(**config)).fanout_args()
    assert extra  # (the defaults: Vigil's --enable-process-cred is on, --enable-ancestors off)
    with serving_process(tmp_path, extra=extra) as s, Client(s.address, timeout=5) as c:
        with pytest.raises(grpc.RpcError) as e:
            next(c.events([spec]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert named in (e.value.details() or "")
