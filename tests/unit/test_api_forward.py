"""Streaming calls the serving process forwards to the agent (the health service's Watch):
at most MAX_STREAMS at once, one more refused with RESOURCE_EXHAUSTED (never left waiting
for a thread), unary calls answered however many are open; what a client does not read
is held up to the forward buffer, then its stream is ended (RESOURCE_EXHAUSTED, counted)
and its call to the agent cancelled. Real grpcio clients, and a bare HTTP/2 client that
reads nothing."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import h2.events
import pytest

from tests.api.h2client import RawClient, trailers_of
from tests.api.harness import wait_for
from tests.api.serving import Serving, serving_process
from vigil.api.client import Client
from vigil.api.passthrough import MAX_STREAMS
from vigil.api.pb import sensors_pb2

health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")

WATCH = "/grpc.health.v1.Health/Watch"


def forwarded(front: Serving) -> dict[str, int]:
    return front.stats()["forwarded"]


def watchers(front: Serving) -> int:
    """Watch calls the agent serves now (its health servicer's callbacks for "liveness")."""
    h = front.internal._health
    with h._lock:
        return len(h._send_response_callbacks.get("liveness", ()))


@pytest.fixture
def channels() -> Iterator[list[grpc.Channel]]:
    chans: list[grpc.Channel] = []
    yield chans
    for ch in chans:
        ch.close()


def _watch(front: Serving, channels: list[grpc.Channel]) -> Any:
    ch = grpc.insecure_channel(front.address)
    channels.append(ch)
    return health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="liveness"), timeout=60)


def test_streams_beyond_the_limit_are_refused_and_unary_calls_are_still_answered(
        tmp_path: Path, channels: list[grpc.Channel]) -> None:
    with serving_process(tmp_path) as front:
        open_ = [_watch(front, channels) for _ in range(MAX_STREAMS)]
        for w in open_:   # each forwarded, then left unread
            assert next(w).status == health_pb2.HealthCheckResponse.SERVING
        wait_for(lambda: forwarded(front)["streams_active"] == MAX_STREAMS, what="every Watch counted")
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as e:
                next(_watch(front, channels))
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
            assert f"limit {MAX_STREAMS}" in (e.value.details() or "")
        with Client(front.address, timeout=10) as c:   # unary calls: never behind the streams
            assert c.health()[0]["status"] == "HEALTH_STATUS_RUNNING"
            c.stub.ListTracingPolicies(sensors_pb2.ListTracingPoliciesRequest(), timeout=10)
            check = health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(service="liveness"),
                                                                timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        wait_for(lambda: forwarded(front)["refused"] == 3, what="the refused streams counted")
        assert watchers(front) == MAX_STREAMS
        for w in open_:
            w.cancel()
        wait_for(lambda: forwarded(front)["streams_active"] == 0 and watchers(front) == 0,
                 what="the cancelled streams to end, here and at the agent")
        again = _watch(front, channels)   # room again
        assert next(again).status == health_pb2.HealthCheckResponse.SERVING
        again.cancel()


def whole_messages(body: bytes) -> list[bytes]:
    """The complete messages of a response body (the window may have ended it in the middle of one)."""
    out, off = [], 0
    while off + 5 <= len(body) and off + 5 + (n := int.from_bytes(body[off + 1:off + 5], "big")) <= len(body):
        out.append(body[off + 5:off + 5 + n])
        off += 5 + n
    return out


class Watches:
    """The agent's health Watch, as a test double: each call streams `n` status messages
    (SERVING, NOT_SERVING, ... as fast as they are taken), then waits until cancelled. (The real
    health service cannot be driven this hard: its set() holds a lock while each message goes
    out, and the close callback of a cancelled Watch needs that lock on the server's own thread.)"""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lock = threading.Lock()
        self.active = 0
        self.yielded = 0

    def handler(self) -> Any:
        def watch(_request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            done = threading.Event()
            with self.lock:
                self.active += 1

            def ended() -> None:
                with self.lock:
                    self.active -= 1
                done.set()
            context.add_callback(ended)
            for i in range(self.n):
                yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING if i % 2
                                                     else health_pb2.HealthCheckResponse.SERVING)
                with self.lock:
                    self.yielded += 1
            done.wait()

        method = grpc.unary_stream_rpc_method_handler(watch, health_pb2.HealthCheckRequest.FromString,
                                                      health_pb2.HealthCheckResponse.SerializeToString)
        return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Watch": method})


def test_a_forwarded_stream_whose_client_reads_nothing_is_ended_and_what_it_holds_stays_bounded(
        tmp_path: Path, channels: list[grpc.Channel]) -> None:
    """Three Watch streams whose client never reads (a 1 KiB window, never given back) while the
    agent sends each 3,000 messages (21 KB): the serving process holds at most the forward buffer
    for each, then ends them RESOURCE_EXHAUSTED and cancels their calls to the agent, which never
    waits for them."""
    buffer, streams = 4096, 3
    agent = Watches(3000)
    with serving_process(tmp_path, extra=["--forward-buffer", str(buffer)], handlers=[agent.handler()]) as front, \
            ExitStack() as stack:
        raw = RawClient(front.address, window=1024)
        stack.callback(raw.close)
        request = health_pb2.HealthCheckRequest(service="liveness").SerializeToString()
        sids = [raw.request(WATCH, request) for _ in range(streams)]
        fw = wait_for(lambda: (f := forwarded(front))["ended_slow"] == streams and f, timeout=60,
                      what="the unread streams ended")
        assert 0 < fw["held_bytes_max"] <= streams * buffer, fw
        wait_for(lambda: agent.active == 0 and (f := forwarded(front))["streams_active"] == 0
                 and f["held_bytes"] == 0, what="their calls to the agent cancelled, nothing held")
        assert agent.yielded < streams * agent.n   # the agent was not made to send them all
        raw.pump(lambda _ev: all(trailers_of(raw.events, s) for s in sids), ack=False, timeout=30)
        for s in sids:
            t = trailers_of(raw.events, s)
            assert t["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]), t
            assert "client too slow" in t.get("grpc-message", ""), t
            # what it was sent is the stream's first messages, in order: nothing left out
            got = [health_pb2.HealthCheckResponse.FromString(m).status for m in whole_messages(bytes(raw.data[s]))]
            assert got and got == [health_pb2.HealthCheckResponse.NOT_SERVING if i % 2
                                   else health_pb2.HealthCheckResponse.SERVING for i in range(len(got))]
        assert not any(isinstance(ev, h2.events.ConnectionTerminated) for ev in raw.events)
        reading = _watch(front, channels)   # a client that reads gets the whole stream
        assert sum(1 for _ in zip(range(agent.n), reading, strict=False)) == agent.n
        reading.cancel()
        assert forwarded(front)["ended_slow"] == streams
