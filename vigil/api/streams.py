"""GetEvents: one bus subscription per stream, filtered per stream, encoded once.

Each stream gets its own bounded Subscription. Publishing never blocks, so when a
client reads slowly, gRPC flow control stalls only that stream's thread, its queue
fills up and the bus drops (and counts) the overflow for that subscriber alone, before
its filters (as the serving processes count: vigil.api.clientqueue).

Streams yield wire bytes (the GetEvents handler is registered with an identity
serializer, see servicer.add_to_server): every stream shares one `wire.EventEncoder`,
so an event is converted once however many streams send it. A stream whose filters
produce a different dict (field filters, redaction) encodes its own copy.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from vigil.api import convert, wire
from vigil.export.event_types import FilterError

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25  # how often an idle stream notices cancellation or server stop


class StreamStats:
    """Counters over all GetEvents streams (thread-safe; read by `stats()`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[Any] = set()  # subscriptions of open streams
        self._peers: dict[Any, list[Any]] = {}  # subscription -> [peer, events sent]
        self.started = 0
        self.events_sent = 0
        self.events_filtered = 0
        self.conversion_errors = 0
        self.dropped_closed = 0  # drops of streams that have ended

    def open(self, sub: Any, peer: str = "") -> None:
        with self._lock:
            self._live.add(sub)
            self.started += 1
            self._peers[sub] = [f"{peer or 'client'}#{self.started}", 0]  # unix peers all read "unix:"

    def progress(self, sub: Any, sent: int) -> None:
        entry = self._peers.get(sub)
        if entry is not None:
            entry[1] = sent

    def clients(self) -> list[tuple[str, int, int]]:
        """(peer, events sent, events dropped) of every open stream."""
        with self._lock:
            return [(p, n, sub.dropped) for sub, (p, n) in self._peers.items()]

    def close(self, sub: Any) -> None:
        """Idempotent: called by the RPC-done callback and by the stream itself."""
        with self._lock:
            if sub in self._live:
                self._live.discard(sub)
                self._peers.pop(sub, None)
                self.dropped_closed += sub.dropped

    def add(self, sent: int, filtered: int, errors: int) -> None:
        with self._lock:
            self.events_sent += sent
            self.events_filtered += filtered
            self.conversion_errors += errors

    @property
    def active(self) -> int:
        return len(self._live)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            live_dropped = sum(s.dropped for s in self._live)
            live_sent = sum(n for _p, n in self._peers.values())
            return {
                "streams_active": len(self._live),
                "streams_started": self.started,
                "events_sent": self.events_sent + live_sent,
                "events_filtered": self.events_filtered,
                "events_dropped_slow_client": self.dropped_closed + live_dropped,
                "conversion_errors": self.conversion_errors,
            }


def unknown_request_fields(msg: Any, path: str = "") -> list[str]:
    """Where `msg` (a GetEventsRequest) carries fields this agent's API does not define, as
    "allow_list[0].capabilities: field number 7": a newer client's field, which would
    otherwise be parsed into the unknown-field set and silently ignored."""
    unknown = UnknownFieldSet(msg)
    out = [f"{path or msg.DESCRIPTOR.name}: field number {unknown[i].field_number}"
           for i in range(len(unknown))]
    for fd, value in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            continue
        where = f"{path}.{fd.name}" if path else fd.name
        if fd.is_repeated:
            for i, item in enumerate(value):
                out += unknown_request_fields(item, f"{where}[{i}]")
        else:
            out += unknown_request_fields(value, where)
    return out


def request_filter(request: Any, redaction: Any = None, options: Any = None) -> Any | None:
    """The EventFilter of a GetEventsRequest (None when it asks for everything, unredacted).
    Raises ValueError (FilterError, ConversionError) for a malformed filter, and for a
    request with fields this agent does not know (refused, never ignored).

    aggregation_options is honoured as Tetragon does: it aggregates only the legacy
    connect/accept events, which no longer exist, so every event is sent as it is.
    `options` (vigil.export.filters.FilterOptions) says what the agent's events carry: a
    filter on what they never carry (ancestors, capabilities) is refused."""
    if unknown := unknown_request_fields(request):
        raise FilterError(f"fields unknown to this agent (not ignored, refused): {'; '.join(unknown)}")
    allow, deny, fields = convert.request_filters(request)
    if not (allow or deny or fields or redaction):
        return None
    from vigil.export import EventFilter  # lazy: only streams with filters need it
    from vigil.export.filters import ANY_EVENTS

    return EventFilter.from_request(allow, deny, fields, redaction, options or ANY_EVENTS)


def filter_message(msg: bytes, event_filter: Any, derived: Callable[[Any], bytes]) -> bytes | None:
    """An encoded GetEventsResponse through a stream's filters: `msg` itself when it passes
    unchanged, the encoding of the rewritten event (field filters, redaction), or None
    when filtered out. Raises convert.ConversionError for an event that cannot be encoded."""
    d = wire.decode_response(msg)
    out = event_filter.apply(d)
    if out is None:
        return None
    return msg if out is d else derived(out)


def filter_messages(msgs: list[bytes], event_filter: Any, encoder: wire.EventEncoder) -> tuple[list[bytes], int, int]:
    """filter_message over a batch: (messages to send, filtered out, unconvertible)."""
    out: list[bytes] = []
    filtered = errors = 0
    derived = encoder.encode_derived
    for m in msgs:
        try:
            r = filter_message(m, event_filter, derived)
        except (convert.ConversionError, DecodeError) as e:  # (a record that is not protobuf: never sent)
            errors += 1
            if errors <= 3:
                log.warning("GetEvents: dropping unconvertible event: %s", e)
            continue
        if r is None:
            filtered += 1
        else:
            out.append(r)
    return out, filtered, errors


def stream_events(
    sub: Any,
    event_filter: Any | None,
    context: Any,
    stopping: threading.Event,
    stats: StreamStats,
    encoder: wire.EventEncoder | None = None,
) -> Iterator[bytes]:
    """Yield serialised GetEventsResponse messages from `sub` until the client goes
    away, the subscription closes or the server stops."""
    sent = filtered = errors = 0  # `sub` was registered with stats.open() by the caller
    if encoder is None:
        encoder = wire.EventEncoder()
    shared = encoder.encode_shared
    derived = encoder.encode_derived
    try:
        while not stopping.is_set() and context.is_active():
            batch = sub.get_batch(timeout=POLL_INTERVAL)
            if not batch:
                if sub.closed:
                    break
                continue
            # the whole batch per wakeup: one lock round trip for up to 1024 events
            for ev in batch:
                try:
                    if type(ev) is bytes:  # encoded already (a serving process, fed by the ring)
                        msg = ev if event_filter is None else filter_message(ev, event_filter, derived)
                        if msg is None:
                            filtered += 1
                            continue
                    elif event_filter is None:
                        msg = shared(ev)
                    else:
                        out = event_filter.apply(ev)
                        if out is None:
                            filtered += 1
                            continue
                        msg = shared(ev) if out is ev else derived(out)
                except convert.ConversionError as e:
                    errors += 1
                    if errors <= 3:  # a broken producer would flood the log otherwise
                        log.warning("GetEvents: dropping unconvertible event: %s", e)
                    continue
                sent += 1
                yield msg  # blocks while the client's flow-control window is full
            stats.progress(sub, sent)
        if stopping.is_set():  # tell the client to reconnect rather than end "OK"
            context.abort(grpc.StatusCode.UNAVAILABLE, "agent is shutting down")
    finally:
        sub.close()
        if sub.dropped:
            log.warning("GetEvents stream lost %d events (client too slow)", sub.dropped)
        stats.close(sub)
        stats.add(sent, filtered, errors)
