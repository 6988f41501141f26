"""The serving process's HTTP/2 server (the `h2` state machine on asyncio): GetEvents
streams written straight from already encoded events, every other call forwarded to the
agent (vigil.api.passthrough).

grpcio costs about 100 us of Python per streamed message; here a GetEvents stream costs
a few microseconds per event: each batch is read from the ring already framed
(length-prefixed GetEventsResponse messages) and joined into one run of bytes that every
unfiltered client queues as it is (vigil.api.clientqueue), and a client is sent as much
of its queue as its HTTP/2 flow-control windows allow, many messages per DATA frame.

A client that does not read closes its own flow-control window: nothing more is sent to
it, its queue fills and the overflow is dropped and counted for it alone. The event loop
never waits for a client, so neither the ring's reader nor the other clients slow down.

A forwarded streaming call (the health service's Watch) is read from the agent as its
messages come; what its client has not taken is held up to `forward_buffer` bytes
(FORWARD_BUFFER): a client that lets more than that pile up has its stream ended with
RESOURCE_EXHAUSTED (counted, `forward_ended_slow`), and its call to the agent cancelled.
Its messages are never dropped from the middle of a stream (a Watch's last message is the
status now), and the agent never waits for a client that does not read.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream

from vigil.api import grpcframe
from vigil.api.clientqueue import ClientQueue
from vigil.api.passthrough import STREAMING, Upstream
from vigil.api.pb import events_pb2
from vigil.api.shm import RingReader
from vigil.api.streams import request_filter
from vigil.api.streamtable import StreamTable
from vigil.api.wire import EventEncoder

log = logging.getLogger(__name__)

GET_EVENTS = "/tetragon.FineGuidanceSensors/GetEvents"
MAX_REQUEST = 4 * 1024 * 1024  # as the agent's own server (vigil.api.server.MAX_REQUEST)
# request bytes held for requests not yet complete, over every connection and stream: a client
# may not make this process hold MAX_REQUEST for each of its streams
MAX_BUFFERED = 4 * MAX_REQUEST
SEND_BUDGET = 1 << 20          # bytes written per connection per turn of the loop
FILTER_BUDGET = 256            # events a filtered stream filters per turn
WRITE_HIGH_WATER = 256 << 10   # transport buffer above which a connection is not written to
# past the high water only h2's own answers (PING and SETTINGS acks, resets) are written; a client
# that sends those asks without reading their answers is cut off once this much waits for it
MAX_UNREAD = 16 << 20
# bytes held for the client of one forwarded streaming call before it is ended (RESOURCE_EXHAUSTED)
FORWARD_BUFFER = 1 << 20
# request headers that are HTTP/2 or gRPC transport, not call metadata (grpc-* are all reserved)
_NOT_METADATA = frozenset({b"content-type", b"te", b"user-agent", b"accept-encoding", b"host"})
_H2_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None)
_CAN_SEND = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE)  # states DATA may be sent in


class Stream:
    """One HTTP/2 stream: the request while it arrives, then its response."""

    __slots__ = ("sid", "method", "headers", "body", "queue", "end", "started", "cancel", "events", "request_ended",
                 "held")

    def __init__(self, sid: int, method: str, headers: dict[bytes, bytes]) -> None:
        self.sid = sid
        self.method = method
        self.headers = headers
        self.body = bytearray()
        self.queue: ClientQueue | None = None  # the response, framed, while it is being sent
        self.end: list[tuple[bytes, bytes]] | None = None  # trailers, once the response is complete
        self.started = False       # response headers sent
        self.cancel: Callable[[], None] | None = None  # a forwarded call in flight
        self.events = False        # a GetEvents stream
        self.request_ended = False
        self.held: int | None = None  # a forwarded streaming call: bytes queued for its client


def removes_events(event_filter: Any) -> bool:
    """Whether a stream's filters can leave events out (an allow or a deny list), not only
    rewrite them (field filters, redaction): its drops are then an upper bound on what it missed."""
    return event_filter is not None and bool(event_filter.allow or event_filter.deny)


class Front:
    """Every connection and GetEvents stream of a serving process (one event loop)."""

    def __init__(self, upstream: Upstream | None, *, queue_size: int = 10000, max_streams: int = 24,
                 max_request: int = MAX_REQUEST, on_streams_changed: Callable[[int, int], None] | None = None,
                 read_skipped: Callable[[], int] | None = None, forward_buffer: int = FORWARD_BUFFER,
                 reader: RingReader | None = None, table: StreamTable | None = None,
                 filter_options: Any = None) -> None:
        self.upstream = upstream
        self.filter_options = filter_options  # what the agent's events carry (FilterOptions)
        self.queue_size = queue_size
        self.max_streams = max_streams
        self.max_request = max_request
        self.max_buffered = max(MAX_BUFFERED, max_request)
        self.buffered = 0   # request bytes held now (Connection._data)
        self.forward_buffer = forward_buffer
        self.forward_held = 0        # bytes held for the clients of forwarded streaming calls, now
        self.forward_held_max = 0    # ... at most, ever
        self.forward_ended_slow = 0  # forwarded streaming calls ended: their client let too much pile up
        self.on_streams_changed = on_streams_changed  # told (streams with room, streams open)
        # events no stream got, ever (skipped while none had room, lapped)
        self.read_skipped = read_skipped if read_skipped is not None or reader is None else reader.missed
        self._skipped_seen = self.read_skipped() if self.read_skipped is not None else 0
        self.reader = reader  # where each stream starts in the ring, what it has not read at a stream's end
        self.table = table    # each stream's counters, in shared memory (vigil.api.streamtable)
        self._wanting = (-1, -1)
        self.encoder = EventEncoder()  # re-encodes what field filters rewrite
        self.connections: set[Connection] = set()
        self.event_streams: dict[ClientQueue, Connection] = {}
        self.servers: list[asyncio.base_events.Server] = []
        self.stopping = False

    # -- events from the ring
    def publish(self, framed: list[bytes]) -> None:
        """A batch of encoded events, each framed as a gRPC message, for every GetEvents
        stream (joined once)."""
        if not self.event_streams or not framed:
            return
        joined = b"".join(framed)
        for q in self.event_streams:
            q.offer(framed, joined)
        self._changed()  # a queue may have filled
        for conn in set(self.event_streams.values()):
            conn.pump()

    def account_skipped(self) -> None:
        """What no stream got since the last look is dropped for every stream open now: the
        events the agent skipped (each stream was full: had one had room, the agent would have
        encoded them) and those the ring's writer went over before this process read them.
        Neither can be put through a stream's filters (never encoded; overwritten), so a
        filtered stream counts them all, those it would have filtered out too."""
        if self.read_skipped is None:
            return
        now = self.read_skipped()
        if now != self._skipped_seen:
            n, self._skipped_seen = now - self._skipped_seen, now
            for q in self.event_streams:
                q.skip(n)

    def open_events(self, q: ClientQueue, conn: Connection) -> bool:
        """Stream `q` is offered every event from now on; False (not opened) when the table of
        streams has no free slot."""
        self.account_skipped()  # skipped before it came: not its loss
        if self.table is not None:
            first, lost = self.reader.position() if self.reader is not None else (0, 0)
            # (what account_skipped has counted: the agent's skips then, and the laps it found)
            if not self.table.open(q, conn.peer, first, self._skipped_seen - lost, removes_events(q.event_filter)):
                return False
        self.event_streams[q] = conn
        q.on_room = self._changed
        self._changed()
        return True

    def close_events(self, q: ClientQueue) -> None:
        """The stream ended: what it was offered and did not send is dropped: its queue, and
        the records written before now that this process has not read yet."""
        if q not in self.event_streams:
            return
        self.account_skipped()
        if self.reader is not None:
            q.skip(self.reader.unread())
        del self.event_streams[q]
        q.on_room = None
        q.close()
        if self.table is not None:
            self.table.close(q)
        if q.dropped:
            log.warning("GetEvents stream lost %d events (client too slow)", q.dropped)
        self._changed()

    def update_progress(self) -> None:
        if self.table is not None:
            for q in self.event_streams:
                self.table.update(q)
        self.write_summary()

    def write_summary(self) -> None:
        """This process's own counters (ring laps, forwarded streaming calls) in its table."""
        if self.table is None:
            return
        up = self.upstream
        self.table.summary(self.reader.lost if self.reader is not None else 0,
                           (up.streams if up is not None else 0, up.refused if up is not None else 0,
                            self.forward_ended_slow, self.forward_held, self.forward_held_max))

    def _changed(self) -> None:
        """Tell the agent how many streams have room, and are open (when either changes)."""
        n = (sum(1 for q in self.event_streams if not q.full), len(self.event_streams))
        if n != self._wanting and self.on_streams_changed is not None:
            self._wanting = n
            self.on_streams_changed(*n)

    # -- lifecycle
    async def serve(self, socks: list[socket.socket], ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        for s in socks:
            if s.family == socket.AF_UNIX:
                srv = await loop.create_unix_server(lambda: Connection(self), sock=s, backlog=128)
            else:
                srv = await loop.create_server(lambda: Connection(self), sock=s, ssl=ssl_context, backlog=128)
            self.servers.append(srv)

    async def stop(self, grace: float = 1.0) -> None:
        """Stop listening; end GetEvents streams (UNAVAILABLE: clients reconnect), let
        forwarded calls finish for up to `grace` s, then close every connection."""
        self.stopping = True
        for srv in self.servers:
            srv.close()
        for conn in list(self.connections):
            conn.shut_down()
        deadline = asyncio.get_running_loop().time() + grace
        while any(c.streams for c in self.connections) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.close()
        for srv in self.servers:
            await srv.wait_closed()


class Connection(asyncio.Protocol):
    def __init__(self, front: Front) -> None:
        self.front = front
        self.h2 = h2.connection.H2Connection(config=_H2_CONFIG)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.peer = ""
        self.paused = False
        self.closed = False
        self._again = False  # a pump is scheduled (filtered streams with more to filter)
        self._out: list[bytes | memoryview] = []  # this turn's bytes, not yet written (_flush)

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.peer = _peer_name(transport)
        self.front.connections.add(self)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 128,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16 << 10,
        })
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(1 << 20)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.debug("HTTP/2 protocol error from %s: %s", self.peer, e)
            self._flush()  # h2's GOAWAY saying why
            self.closed = True
            self.close()
            return
        for ev in events:
            t = type(ev)
            if t is h2.events.DataReceived:
                self._data(ev)
            elif t is h2.events.RequestReceived:
                self._request(ev)
            elif isinstance(ev, h2.events.StreamEnded):
                self._request_ended(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self._reset(ev.stream_id)
            elif t is h2.events.ConnectionTerminated:  # the client's GOAWAY
                self._flush()
                self.closed = True
                self.close()
                return
        if self.paused:
            self._flush()   # h2's own answers (PING, SETTINGS acks): counted against MAX_UNREAD
        self.pump()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.front.connections.discard(self)
        for sid in list(self.streams):
            self._forget(sid)

    # -- requests
    def _request(self, ev: Any) -> None:
        headers = dict(ev.headers)
        sid = ev.stream_id
        path = headers.get(b":path", b"").decode("latin-1")
        st = self.streams[sid] = Stream(sid, path, headers)
        if headers.get(b":method") != b"POST" or not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self._send_headers(st, [(b":status", b"415")], end=True)
            return
        if self.front.stopping:
            self._finish(st, grpc.StatusCode.UNAVAILABLE, "agent is shutting down")

    def _data(self, ev: Any) -> None:
        st = self.streams.get(ev.stream_id)
        if st is None or st.end is not None or st.queue is not None:
            self._ack(ev)
            return
        front = self.front
        st.body += ev.data
        front.buffered += len(ev.data)
        self._ack(ev)
        if len(st.body) > front.max_request + grpcframe.PREFIX.size:
            self._drop_body(st)
            self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED, f"request larger than {front.max_request} bytes")
        elif front.buffered > front.max_buffered:
            self._drop_body(st)
            self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"more than {front.max_buffered} bytes of unfinished requests held; try again")

    def _drop_body(self, st: Stream) -> None:
        self.front.buffered -= len(st.body)
        st.body = bytearray()

    def _ack(self, ev: Any) -> None:
        try:
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def _request_ended(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        st.request_ended = True
        if st.end is not None or st.started:
            return  # answered already (refused, too large)
        body = bytes(st.body)
        self._drop_body(st)
        try:
            msgs = grpcframe.split_messages(body)
        except ValueError as e:
            self._finish(st, grpc.StatusCode.INTERNAL, str(e))
            return
        if len(msgs) != 1:
            self._finish(st, grpc.StatusCode.UNIMPLEMENTED, f"{st.method}: expected one request message, "
                         f"got {len(msgs)}")
            return
        if st.method == GET_EVENTS:
            self._get_events(st, msgs[0])
        else:
            self._forward(st, msgs[0])

    def _get_events(self, st: Stream, request: bytes) -> None:
        front = self.front
        try:
            event_filter = request_filter(events_pb2.GetEventsRequest.FromString(request),
                                          options=front.filter_options)
        except Exception as e:  # noqa: BLE001 - DecodeError, FilterError, ConversionError: the client's mistake
            self._finish(st, grpc.StatusCode.INVALID_ARGUMENT, f"invalid GetEvents filter: {e}")
            return
        # aggregation_options: honoured as by the agent's own server (no event type aggregates)
        if len(front.event_streams) >= front.max_streams:
            self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"too many GetEvents streams (limit {front.max_streams})")
            return
        q = ClientQueue(front.queue_size, event_filter, front.encoder)
        if not front.open_events(q, self):
            self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         "too many GetEvents streams ended in the last moment, not yet counted by the agent; "
                         "try again")
            return
        st.events = True
        st.queue = q
        self._send_headers(st, grpcframe.RESPONSE_HEADERS)

    def _forward(self, st: Stream, request: bytes) -> None:
        upstream = self.front.upstream
        if upstream is None:
            self._finish(st, grpc.StatusCode.UNIMPLEMENTED, f"{st.method}: not served here")
            return
        metadata = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in st.headers.items()
                    if not k.startswith((b":", b"grpc-")) and not k.endswith(b"-bin") and k not in _NOT_METADATA]
        loop = asyncio.get_running_loop()
        st.queue = ClientQueue(1 << 62)   # one message for a unary call; bounded by `held` for a streaming one
        if st.method in STREAMING:
            st.held = 0
        sid = st.sid

        def on_message(msg: bytes) -> None:
            loop.call_soon_threadsafe(self._forwarded_message, sid, msg)

        def on_done(code: grpc.StatusCode, details: str) -> None:
            loop.call_soon_threadsafe(self._forwarded_done, sid, code, details)

        st.cancel = upstream.call(st.method, request, grpcframe.parse_timeout(st.headers.get(b"grpc-timeout")),
                                  metadata, on_message, on_done)
        if st.held is not None:
            self.front.write_summary()   # a streaming call forwarded, or refused

    def _forwarded_message(self, sid: int, msg: bytes) -> None:
        st = self.streams.get(sid)
        if st is None or st.queue is None:
            return
        framed = grpcframe.frame(msg)
        if st.held is not None:
            front = self.front
            if st.held + len(framed) > front.forward_buffer:
                self._end_slow_forward(st, len(framed))
                return
            st.held += len(framed)
            front.forward_held += len(framed)
            front.forward_held_max = max(front.forward_held_max, front.forward_held)
        st.queue.offer([framed], framed)
        self.pump()

    def _end_slow_forward(self, st: Stream, more: int) -> None:
        """A forwarded stream whose client has not taken `forward_buffer` bytes (and `more` came):
        ended now, what it holds let go, its call to the agent cancelled."""
        front = self.front
        front.forward_ended_slow += 1
        log.warning("%s from %s: the client read nothing of %d bytes (and %d more came): stream ended", st.method,
                    self.peer, st.held, more)
        self._release_held(st)
        assert st.queue is not None
        st.queue.close()
        if st.cancel is not None:
            st.cancel()
            st.cancel = None
        self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED,
                     f"client too slow: more than {front.forward_buffer} bytes of this stream unread; "
                     "stream ended (call again)")
        front.write_summary()

    def _release_held(self, st: Stream) -> None:
        if st.held:
            self.front.forward_held -= st.held
            st.held = 0

    def _forwarded_done(self, sid: int, code: grpc.StatusCode, details: str) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        st.cancel = None
        self._finish(st, code, details)

    # -- responses
    def _finish(self, st: Stream, code: grpc.StatusCode, details: str = "") -> None:
        """End `st` with a status once what is queued is sent (GetEvents: at once)."""
        if st.end is not None:
            return
        if st.events and st.queue is not None:
            self.front.close_events(st.queue)  # what is still queued is not sent
        if not st.started and (st.queue is None or not st.queue.has_data()):
            st.end = grpcframe.trailers_only(code, details)
        else:
            st.end = grpcframe.trailers(code, details)
        self.pump()

    def _send_headers(self, st: Stream, headers: list[tuple[bytes, bytes]], end: bool = False) -> None:
        try:
            self.h2.send_headers(st.sid, headers, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._forget(st.sid)
            return
        st.started = True
        if end:
            self._ended(st)

    def _ended(self, st: Stream) -> None:
        """Our side is done: forget the stream (and reset it if the client still sends)."""
        if not st.request_ended:
            try:
                self.h2.reset_stream(st.sid, h2.errors.ErrorCodes.NO_ERROR)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
        self._forget(st.sid)

    def pump(self) -> None:
        """Send every stream what its windows allow, end finished ones, write it all out."""
        if self.closed or self.transport is None:
            return
        if self.paused:
            return  # resume_writing pumps again
        conn = self.h2
        budget = SEND_BUDGET
        again = False
        maxf = conn.max_outbound_frame_size
        for st in list(self.streams.values()):
            q = st.queue
            if q is not None:
                if q.event_filter is not None and not q.runs and q.pending:
                    again |= q.refill(FILTER_BUDGET)
                if q.has_data() and budget > 0:
                    budget = self._send(st, q, budget, maxf)
                    if st.events and self.front.table is not None:
                        self.front.table.update(q)   # after the write: what it shows sent, was
                    if st.sid not in self.streams:
                        continue
                    again |= q.event_filter is not None and bool(q.pending) and not q.runs
                if q.has_data():
                    continue
            if st.end is not None:
                if not st.started and st.end[0][0] != b":status":
                    self._send_headers(st, grpcframe.RESPONSE_HEADERS)
                self._send_headers(st, st.end, end=True)
        self._flush()
        if budget <= 0:
            again = True  # more to send than one turn's share: after the others' turns
        if again and not self._again:
            self._again = True
            asyncio.get_running_loop().call_soon(self._pump_again)

    def _send(self, st: Stream, q: ClientQueue, budget: int, maxf: int) -> int:
        """As much of `q` as the stream's and the connection's windows allow, in DATA
        frames of the peer's largest size; returns the budget left.

        The frames are written here, not by h2 (whose send_data copies the data four times
        over: into a frame, a bytes, its buffer, then out of it): h2 checks the stream can
        still send and its windows are charged exactly as send_data would."""
        conn = self.h2
        if not st.started:
            self._send_headers(st, grpcframe.RESPONSE_HEADERS)
            if st.sid not in self.streams:
                return budget
        try:
            window = min(conn.local_flow_control_window(st.sid), budget)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._forget(st.sid)
            return budget
        stream = conn.streams.get(st.sid)
        if window <= 0 or stream is None or stream.state_machine.state not in _CAN_SEND:
            return budget
        pieces = q.take_pieces(window)
        if not pieces:
            return budget
        out: list[bytes | memoryview] = []
        sid = st.sid.to_bytes(4, "big")
        size = 0
        for piece in pieces:
            for off in range(0, len(piece), maxf):
                chunk = piece[off:off + maxf]
                out.append(len(chunk).to_bytes(3, "big") + b"\x00\x00" + sid)  # DATA, no flags
                out.append(chunk)
                size += len(chunk)
        stream.outbound_flow_control_window -= size
        conn.outbound_flow_control_window -= size
        if st.held is not None:
            st.held -= size
            self.front.forward_held -= size
        self._take_h2()  # what h2 has queued (this stream's HEADERS, a PING's ack) goes first
        self._out += out   # written with the rest of this turn (pump's _flush)
        return budget - size

    def _pump_again(self) -> None:
        self._again = False
        self.pump()

    def _take_h2(self) -> None:
        """What h2 has queued (HEADERS, trailers, its answers), next in this turn's write."""
        data = self.h2.data_to_send()
        if data:
            self._out.append(data)

    def _flush(self) -> None:
        """Everything of this turn in one write: h2's frames and the DATA frames of every
        stream, in the order they were made (one syscall, and one wakeup of the client,
        where a PING's ack, each stream's data and the trailers were a write each)."""
        self._take_h2()
        out, self._out = self._out, []
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            if self.transport.get_write_buffer_size() > MAX_UNREAD:
                log.warning("HTTP/2 client %s reads nothing of what it asks for (%d bytes waiting): "
                            "connection closed", self.peer, self.transport.get_write_buffer_size())
                self.closed = True
                self.transport.abort()

    # -- ends
    def _reset(self, sid: int) -> None:
        self._forget(sid)  # the client cancelled

    def _forget(self, sid: int) -> None:
        st = self.streams.pop(sid, None)
        if st is None:
            return
        self._drop_body(st)
        self._release_held(st)
        if st.events and st.queue is not None:
            self.front.close_events(st.queue)
        if st.cancel is not None:
            st.cancel()
            st.cancel = None

    def shut_down(self) -> None:
        """Server stopping: end GetEvents streams (new streams are refused UNAVAILABLE);
        forwarded calls may finish before close()."""
        for st in list(self.streams.values()):
            if st.events:
                self._finish(st, grpc.StatusCode.UNAVAILABLE, "agent is shutting down")

    def close(self) -> None:
        """GOAWAY, then close once what is buffered is written."""
        if not self.closed:
            try:
                self.h2.close_connection(h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.ProtocolError:
                pass
            self._flush()
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        for sid in list(self.streams):
            self._forget(sid)


def _peer_name(transport: asyncio.BaseTransport) -> str:
    """As grpcio names peers: ipv4:HOST:PORT, ipv6:[HOST]:PORT, unix:."""
    sock = transport.get_extra_info("socket")
    name = transport.get_extra_info("peername")
    if sock is not None and sock.family == socket.AF_INET6 and name:
        return f"ipv6:[{name[0]}]:{name[1]}"
    if sock is not None and sock.family == socket.AF_INET and name:
        return f"ipv4:{name[0]}:{name[1]}"
    return "unix:"
