"""A bare HTTP/2 client (the `h2` library, client side) for what grpcio clients do not
let a test control: pings, resets, GOAWAY, reading frame by frame or not at all."""
from __future__ import annotations

import socket
import time
from typing import Any

import h2.config
import h2.connection
import h2.events

from vigil.api import grpcframe
from vigil.api.pb import events_pb2


class RawClient:
    def __init__(self, address: str, window: int | None = None) -> None:
        path = address.removeprefix("unix://")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if window is not None:  # a small window: the server may send only this much
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.events: list[Any] = []
        self.data: dict[int, bytearray] = {}

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def request(self, method: str, message: bytes, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", method),
                                     (":authority", "localhost"), ("content-type", "application/grpc"),
                                     ("te", "trailers")])
        self.conn.send_data(sid, grpcframe.frame(message), end_stream=end)
        self.flush()
        self.data[sid] = bytearray()
        return sid

    def get_events(self) -> int:
        return self.request("/tetragon.FineGuidanceSensors/GetEvents", events_pb2.GetEventsRequest().SerializeToString())

    def pump(self, until: Any, timeout: float = 10.0, ack: bool = True) -> list[Any]:
        """Read until `until(event)` holds for a received event; `ack`: give received data back
        (window updates), as a reading client does. Only the wait for data is bounded by what
        remains of `timeout`: left at that (down to 10 ms), the socket's timeout made a send in
        flush() time out whenever the server read nothing for that long (a loaded machine)."""
        deadline = time.monotonic() + timeout
        send_timeout = self.sock.gettimeout()
        while True:
            for ev in self.events:
                if until(ev):
                    return self.events
            if time.monotonic() > deadline:
                raise TimeoutError(f"no such event within {timeout}s: {self.events[-5:]}")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            finally:
                self.sock.settimeout(send_timeout)
            if not chunk:
                raise ConnectionError("server closed the connection")
            for ev in self.conn.receive_data(chunk):
                self.events.append(ev)
                if isinstance(ev, h2.events.DataReceived):
                    self.data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    if ack:
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self.flush()

    def messages(self, sid: int) -> list[bytes]:
        return grpcframe.split_messages(bytes(self.data.get(sid, b"")))

    def close(self) -> None:
        self.sock.close()


def trailers_of(events: list[Any], sid: int) -> dict[str, str]:
    for ev in events:
        if isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
            return dict(ev.headers)
        if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid and ev.stream_ended is not None:
            return dict(ev.headers)
    return {}
