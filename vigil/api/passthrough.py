"""Calls the serving process does not answer itself (all but GetEvents), forwarded to the
agent's gRPC server on its private unix socket, bytes for bytes, with grpcio.

The HTTP/2 front end hands over a method path, the request message, the deadline and
the client's custom metadata; the call runs on a worker thread and its outcome comes
back through callbacks the front end schedules on its own loop. Server-streaming
methods (the health service's Watch) stream their messages back the same way.

Unary calls and streaming calls never share threads: a unary call runs on one of WORKERS
threads for as long as it takes; a streaming call holds a thread of its own for as long as
it lasts, and at most `max_streams` (MAX_STREAMS by default) are forwarded at once: one
more is refused at once with RESOURCE_EXHAUSTED (counted, `refused`), never queued behind
the others (a Watch lasts as long as its client wants). The messages of a forwarded stream
are read from the agent as they come (the agent never waits for a slow client: grpcio's
server would hold the thread that sends, e.g. the health service's set()); the front end
bounds what it holds for each client (vigil.api.h2front, `forward_buffer`).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from vigil.api.pb import sensors_pb2

log = logging.getLogger(__name__)

OnMessage = Callable[[bytes], None]
OnDone = Callable[[grpc.StatusCode, str], None]


def _server_streaming() -> frozenset[str]:
    """Server-streaming methods of the services the agent serves (GetEvents is served here)."""
    out = {f"/{m.containing_service.full_name}/{m.name}"
           for s in sensors_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods if m.server_streaming}
    try:
        from grpc_health.v1 import health_pb2

        out |= {f"/{m.containing_service.full_name}/{m.name}"
                for s in health_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods if m.server_streaming}
    except ImportError:  # grpcio-health-checking is optional
        pass
    return frozenset(out)


STREAMING = _server_streaming()
WORKERS = 16         # unary calls forwarded at once
MAX_STREAMS = 16     # streaming calls forwarded at once (each holds a thread while it lasts)


class Upstream:
    def __init__(self, address: str, workers: int = WORKERS, max_streams: int = MAX_STREAMS) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                               ("grpc.max_send_message_length", 64 << 20)])
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vigil-passthrough")
        # streaming calls hold their thread for as long as they last: never the unary calls' ones,
        # and one each (no more are admitted than it has threads: none waits in its queue)
        self.max_streams = max_streams
        self.stream_pool = ThreadPoolExecutor(max_workers=max_streams, thread_name_prefix="vigil-passthrough-stream")
        self._lock = threading.Lock()
        self._calls: set[Any] = set()  # streaming calls in flight (cancelled on close)
        self.streams = 0     # streaming calls admitted and not finished
        self.refused = 0     # streaming calls refused (max_streams were running)

    def call(self, method: str, request: bytes, timeout: float | None, metadata: list[tuple[str, str]],
             on_message: OnMessage, on_done: OnDone) -> Callable[[], None]:
        """Start forwarding; returns a function that cancels the call."""
        cancelled = threading.Event()
        holder: list[Any] = []
        md: tuple[tuple[str, str | bytes], ...] | None = tuple(metadata) or None
        streaming = method in STREAMING
        if streaming:
            with self._lock:
                admitted = self.streams < self.max_streams
                if admitted:
                    self.streams += 1
                else:
                    self.refused += 1
            if not admitted:
                on_done(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"too many forwarded streaming calls (limit {self.max_streams} per serving process)")
                return lambda: None

        def run() -> None:
            try:
                if not cancelled.is_set():
                    forward()
            finally:
                if streaming:
                    with self._lock:
                        self.streams -= 1

        def forward() -> None:
            try:
                if streaming:
                    call = self.channel.unary_stream(method, None, None)(request, timeout=timeout, metadata=md)
                    holder.append(call)
                    with self._lock:
                        self._calls.add(call)
                    try:
                        if cancelled.is_set():
                            call.cancel()  # type: ignore[no-untyped-call]
                        for msg in call:
                            on_message(msg)
                    finally:
                        with self._lock:
                            self._calls.discard(call)
                else:
                    on_message(self.channel.unary_unary(method, None, None)(request, timeout=timeout, metadata=md))
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                on_done(code or grpc.StatusCode.UNKNOWN, (e.details() if hasattr(e, "details") else "") or "")
                return
            except Exception as e:  # any failure is the client's INTERNAL status, never UNKNOWN
                log.exception("forwarding %s failed", method)
                on_done(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
                return
            on_done(grpc.StatusCode.OK, "")

        def cancel() -> None:
            cancelled.set()
            for c in holder:
                c.cancel()

        (self.stream_pool if streaming else self.pool).submit(run)
        return cancel

    def close(self) -> None:
        with self._lock:
            calls = list(self._calls)
        for c in calls:
            c.cancel()
        self.stream_pool.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.channel.close()
