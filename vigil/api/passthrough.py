"""Calls the serving process does not answer itself (all but GetEvents), forwarded to the
agent's gRPC server on its private unix socket, bytes for bytes, with grpcio.

The HTTP/2 front end hands over a method path, the request message, the deadline and
the client's custom metadata; the call runs on a worker thread and its outcome comes
back through callbacks the front end schedules on its own loop. Server-streaming
methods (the health service's Watch) stream their messages back the same way.
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


class Upstream:
    def __init__(self, address: str, workers: int = 16) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                               ("grpc.max_send_message_length", 64 << 20)])
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vigil-passthrough")
        # streaming calls hold their thread for as long as they last: never the unary calls' ones
        self.stream_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vigil-passthrough-stream")
        self._lock = threading.Lock()
        self._calls: set[Any] = set()  # streaming calls in flight (cancelled on close)

    def call(self, method: str, request: bytes, timeout: float | None, metadata: list[tuple[str, str]],
             on_message: OnMessage, on_done: OnDone) -> Callable[[], None]:
        """Start forwarding; returns a function that cancels the call."""
        cancelled = threading.Event()
        holder: list[Any] = []
        md: tuple[tuple[str, str | bytes], ...] | None = tuple(metadata) or None

        def run() -> None:
            if cancelled.is_set():
                return
            try:
                if method in STREAMING:
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

        (self.stream_pool if method in STREAMING else self.pool).submit(run)
        return cancel

    def close(self) -> None:
        with self._lock:
            calls = list(self._calls)
        for c in calls:
            c.cancel()
        self.stream_pool.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.channel.close()
