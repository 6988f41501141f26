"""How the serving process's HTTP/2 connection writes (vigil.api.h2front.Connection): what one
turn makes (h2's own frames, a PING's ack, HEADERS, each stream's DATA, trailers) goes out in
one write, in the order it was made. Each write is a syscall of the serving process and a
wakeup of the client's reader: a grpc-go client pings with its window updates (its BDP
estimate), and its ack and the data the new window lets through were two writes.

The connection runs in this process over a transport that records its writes; an h2 client
connection (the library's client side) makes the requests and reads the bytes back."""
from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from vigil.api import grpcframe
from vigil.api.h2front import GET_EVENTS, Connection, Front
from vigil.api.pb import events_pb2


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class _Client:
    """The client's end: an h2 client connection fed with what the server wrote."""

    def __init__(self, conn: Connection, transport: _Transport, window: int) -> None:
        self.conn, self.transport = conn, transport
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.data: dict[int, bytearray] = {}
        self.given: dict[int, int] = {}   # bytes of each stream given back (window)
        self.events: list[Any] = []
        self.send()
        self.read()

    def send(self) -> None:
        self.conn.data_received(self.h2.data_to_send())

    def read(self) -> list[bytes]:
        """The server's writes since the last read (each parsed, its events kept)."""
        writes, self.transport.writes = self.transport.writes, []
        for w in writes:
            for ev in self.h2.receive_data(w):
                self.events.append(ev)
                if isinstance(ev, h2.events.DataReceived):
                    self.data[ev.stream_id] += ev.data
        return writes

    def get_events(self) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", GET_EVENTS.encode()),
                                   (b":authority", b"localhost"), (b"content-type", b"application/grpc"),
                                   (b"te", b"trailers")])
        self.h2.send_data(sid, grpcframe.frame(events_pb2.GetEventsRequest().SerializeToString()),
                          end_stream=True)
        self.data[sid] = bytearray()
        self.given[sid] = 0
        self.send()
        return sid

    def give_back(self, sid: int) -> None:
        """The window back for what was received, as a reading client does (no send yet)."""
        n = len(self.data[sid]) - self.given[sid]
        if not n:
            return
        self.given[sid] += n
        self.h2.increment_flow_control_window(n)
        self.h2.increment_flow_control_window(n, sid)


def _messages(n: int, first: int = 0) -> list[bytes]:
    return [grpcframe.frame(events_pb2.GetEventsResponse(node_name=f"node-{i}").SerializeToString())
            for i in range(first, first + n)]


# what the client does while the server holds data it could not send (each stream's window
# full), and what it then sends back in one go: ("ping"), ("window": every stream's window back)
CASES = {
    "a PING with the window back: its ack and the data": (1, ["ping", "window"]),
    "the window back alone: the data": (1, ["window"]),
    "two streams' windows back: both streams' data": (2, ["window"]),
    "a PING and two streams' windows back": (2, ["ping", "window"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_turn_is_one_write(case: str) -> None:
    n_streams, steps = CASES[case]

    async def run() -> None:
        front = Front(None, queue_size=10_000)
        conn = Connection(front)
        transport = _Transport()
        conn.connection_made(transport)
        window = 1000
        client = _Client(conn, transport, window)
        sids = [client.get_events() for _ in range(n_streams)]
        client.read()
        msgs = _messages(200)
        front.publish(msgs)   # each stream is sent its window's worth, the rest waits
        client.read()
        assert all(len(client.data[s]) == window for s in sids)
        if "ping" in steps:
            client.h2.ping(b"12345678")
        for s in sids:
            client.give_back(s)
        client.send()
        writes = client.read()
        assert len(writes) == 1, [len(w) for w in writes]
        acks = [ev for ev in client.events if isinstance(ev, h2.events.PingAckReceived)]
        assert len(acks) == ("ping" in steps)
        joined = b"".join(msgs)
        for s in sids:  # every stream: the messages' bytes, in order, as far as its window let
            assert bytes(client.data[s]) == joined[:2 * window]
        await asyncio.sleep(0)

    asyncio.run(run())


def test_the_bytes_of_a_whole_stream_are_the_messages_in_order() -> None:
    """However the turns fall, a stream carries every message's bytes, in order, once."""

    async def run() -> None:
        front = Front(None, queue_size=10_000)
        conn = Connection(front)
        transport = _Transport()
        conn.connection_made(transport)
        client = _Client(conn, transport, 4096)
        sid = client.get_events()
        client.read()
        msgs = _messages(300)
        for i in range(0, 300, 37):
            front.publish(msgs[i:i + 37])
            client.read()
            client.give_back(sid)
            client.h2.ping(i.to_bytes(8, "big"))
            client.send()
            client.read()
        for _ in range(100):
            if len(client.data[sid]) == len(b"".join(msgs)):
                break
            client.give_back(sid)
            client.send()
            client.read()
        assert bytes(client.data[sid]) == b"".join(msgs)
        await asyncio.sleep(0)

    asyncio.run(run())
