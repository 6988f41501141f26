"""The agent's public gRPC front, in a process of its own: GetEvents streams are fed from
the shared-memory ring of already encoded events (vigil.api.shm), every other call is
passed through to the agent's private socket unchanged. No client, however slow or
however many, runs on the agent's interpreter: the agent only encodes each event once
and copies it into the ring.

Per client: a bounded queue filled by one dispatcher thread; a client that does not keep
up loses the overflow, counted for that client and shown (with what it was sent) in the
stats block of the ring, which the agent reports in `vigil status` and its metrics.

    python -m vigil.api.fanout --ring-fd N --wake-fd N --index I --listen ADDR --upstream unix:///... \\
        [--info-file F] [--allow-remote] [--tls-cert F --tls-key F [--tls-client-ca F,...] [--require-client-cert]]
"""
from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import struct
import sys
import threading
from typing import Any

import grpc

from vigil.api import shm
from vigil.api.server import ApiServer, TlsConfig
from vigil.api.servicer import FineGuidanceSensors
from vigil.core.bus import EventBus, Subscription

log = logging.getLogger("vigil.api.fanout")

GET_EVENTS = "/tetragon.FineGuidanceSensors/GetEvents"
STREAMING = {"/grpc.health.v1.Health/Watch"}  # the other server-streaming methods passed through
MAX_PROCESSES = 4
MAX_CLIENTS = 13           # per process in the stats block
_SUMMARY = struct.Struct("<IIQQQQ")       # pid, streams, sent, dropped, filtered, lost (ring laps)
_CLIENT = struct.Struct("<40sQQ")         # peer, sent, dropped
REGION = _SUMMARY.size + MAX_CLIENTS * _CLIENT.size


def read_stats(view: memoryview) -> list[dict[str, Any]]:
    """The serving processes' counters, as the agent reports them."""
    out = []
    for i in range(MAX_PROCESSES):
        base = i * REGION
        pid, streams, sent, dropped, filtered, lost = _SUMMARY.unpack_from(view, base)
        if not pid:
            continue
        clients = []
        for k in range(MAX_CLIENTS):
            peer, csent, cdropped = _CLIENT.unpack_from(view, base + _SUMMARY.size + k * _CLIENT.size)
            if peer.strip(b"\0"):
                clients.append({"peer": peer.rstrip(b"\0").decode(errors="replace"), "sent": csent,
                                "dropped": cdropped})
        out.append({"pid": pid, "streams_active": streams, "events_sent": sent, "events_dropped": dropped,
                    "events_filtered": filtered, "ring_lost": lost, "clients": clients})
    return out


class RingAgent:
    """What FineGuidanceSensors.GetEvents needs of an agent, served from the ring: a
    dispatcher thread copies each batch of encoded events into every client's queue."""

    def __init__(self, reader: shm.RingReader, wake_fd: int, queue_size: int) -> None:
        self.reader = reader
        self.wake_fd = wake_fd
        self.queue_size = queue_size
        self.bus = EventBus()
        self.redaction = None   # the agent redacts before it writes the ring
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name="vigil-fanout-dispatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def subscribe(self, maxsize: int = 10000) -> Subscription:
        sub = self.bus.subscribe(min(maxsize, self.queue_size))
        self.reader.set_wanted(self.bus.subscriber_count)
        return sub

    def _dispatch(self) -> None:
        poller = select.poll()
        poller.register(self.wake_fd, select.POLLIN)
        while not self._stop.is_set():
            if poller.poll(250):  # the agent wrote a batch (or went away: POLLHUP)
                try:
                    if not os.read(self.wake_fd, 4096):
                        log.warning("the agent went away; serving what the ring holds")
                        poller.unregister(self.wake_fd)
                except BlockingIOError:
                    pass
            self.reader.set_wanted(self.bus.subscriber_count)
            while True:
                batch = self.reader.read()
                if not batch:
                    break
                self.bus.publish(batch)


class StatsWriter(threading.Thread):
    """Writes this process's counters into its region of the ring's stats block."""

    def __init__(self, view: memoryview, index: int, servicer: FineGuidanceSensors, reader: shm.RingReader) -> None:
        super().__init__(name="vigil-fanout-stats", daemon=True)
        self.view, self.base = view, index * REGION
        self.servicer, self.reader = servicer, reader
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.write()

    def write(self) -> None:
        st = self.servicer.stream_stats
        snap = st.snapshot()
        _SUMMARY.pack_into(self.view, self.base, os.getpid(), snap["streams_active"], snap["events_sent"],
                           snap["events_dropped_slow_client"], snap["events_filtered"], self.reader.lost)
        clients = st.clients()[:MAX_CLIENTS]
        for k in range(MAX_CLIENTS):
            off = self.base + _SUMMARY.size + k * _CLIENT.size
            if k < len(clients):
                peer, sent, dropped = clients[k]
                _CLIENT.pack_into(self.view, off, peer.encode()[:40], sent, dropped)
            else:
                _CLIENT.pack_into(self.view, off, b"", 0, 0)


class Passthrough(grpc.GenericRpcHandler):
    """Every method but GetEvents goes to the agent's private socket, bytes for bytes."""

    def __init__(self, upstream: str) -> None:
        self.channel = grpc.insecure_channel(upstream, options=[("grpc.max_receive_message_length", 64 << 20),
                                                                ("grpc.max_send_message_length", 64 << 20)])

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        if method == GET_EVENTS:
            return None
        if method in STREAMING:
            scall = self.channel.unary_stream(method, request_serializer=None, response_deserializer=None)

            def forward_stream(request: bytes, context: grpc.ServicerContext) -> Any:
                try:
                    yield from scall(request, timeout=context.time_remaining())
                except grpc.RpcError as e:
                    context.abort(e.code(), e.details() or "")

            return grpc.unary_stream_rpc_method_handler(forward_stream, request_deserializer=None,
                                                        response_serializer=None)
        call = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return call(request, timeout=context.time_remaining())
            except grpc.RpcError as e:
                context.abort(e.code(), e.details() or "")
                raise  # not reached

        return grpc.unary_unary_rpc_method_handler(forward, request_deserializer=None, response_serializer=None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vigil.api.fanout")
    ap.add_argument("--ring-fd", type=int, required=True)
    ap.add_argument("--wake-fd", type=int, required=True)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--info-file", action="append", default=[])
    ap.add_argument("--queue-size", type=int, default=10000)
    ap.add_argument("--allow-remote", action="store_true")
    ap.add_argument("--tls-cert", default="")
    ap.add_argument("--tls-key", default="")
    ap.add_argument("--tls-client-ca", default="")
    ap.add_argument("--require-client-cert", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 <= a.index < MAX_PROCESSES:
        ap.error(f"--index must be 0..{MAX_PROCESSES - 1}")
    reader = shm.RingReader(a.ring_fd)
    os.set_blocking(a.wake_fd, False)
    ring_agent = RingAgent(reader, a.wake_fd, a.queue_size)
    tls = (TlsConfig(a.tls_cert, a.tls_key, tuple(f for f in a.tls_client_ca.split(",") if f),
                     a.require_client_cert) if a.tls_cert else None)
    server = ApiServer(ring_agent, a.listen, info_files=a.info_file, tls=tls, allow_remote=a.allow_remote,
                       health=False, stream_queue_size=a.queue_size,
                       generic_handlers=[Passthrough(a.upstream)], events_only=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    ring_agent.start()
    try:
        address = server.start()
    except Exception as e:  # noqa: BLE001 - one line for the agent's log, then exit
        print(f"vigil-fanout: {e}", file=sys.stderr, flush=True)
        return 1
    stats = StatsWriter(reader.stats_view(), a.index, server.servicer, reader)
    stats.start()
    print(f"vigil-fanout listening on {address}", file=sys.stderr, flush=True)
    parent = os.getppid()
    while not stopping.wait(0.5):
        if os.getppid() != parent:  # the agent is gone (we were reparented): stop too
            break
    stats.stopping.set()
    stats.write()
    server.stop(grace=1.0)
    ring_agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
