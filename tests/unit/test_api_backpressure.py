"""While every GetEvents stream's queue is full, the agent encodes nothing for gRPC, and what
it skipped is dropped and counted for each stream open then (vigil.api.shm `takes`,
ClientQueue `full`, Front `account_skipped`): every event offered to a stream is still
sent, dropped or filtered, and no stream pays for events from before it opened."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.api import samples
from tests.api.h2client import RawClient
from tests.api.harness import wait_for
from tests.api.serving import serving_process
from vigil.api import shm, wire
from vigil.api.clientqueue import ClientQueue
from vigil.api.h2front import Front

# (steps on a queue of limit 10, expected (queued, dropped, full) after each, and how many
# times it told the front it had room again); "offer N" offers N one-byte messages as one
# batch (the queue holds each batch as one run, and an event counts as sent once its run is),
# "take N" takes N bytes, "skip N" counts N events the agent skipped
QUEUE_CASES = {
    "fills without overflow: not full": (["offer 10"], [(10, 0, False)], 0),
    "overflow: full, the rest dropped": (["offer 8", "offer 5"], [(8, 0, False), (10, 3, True)], 0),
    "full until half sent": (["offer 4", "offer 4", "offer 4", "take 4", "take 1", "take 3"],
                             [(4, 0, False), (8, 0, False), (10, 2, True), (6, 2, True), (6, 2, True),
                              (2, 2, False)], 1),
    "room again, then full again": (["offer 5", "offer 6", "take 5", "offer 7"],
                                    [(5, 0, False), (10, 1, True), (5, 1, False), (10, 3, True)], 1),
    "skipped events are dropped": (["offer 3", "skip 40"], [(3, 0, False), (3, 40, False)], 0),
}


@pytest.mark.parametrize("case", list(QUEUE_CASES))
def test_a_queue_is_full_from_overflow_until_half_sent(case: str) -> None:
    steps, expected, rooms = QUEUE_CASES[case]
    q = ClientQueue(10)
    told: list[int] = []
    q.on_room = lambda: told.append(1)
    for step, want in zip(steps, expected, strict=True):
        verb, n = step.split()
        if verb == "offer":
            msgs = [b"x"] * int(n)
            q.offer(msgs, b"".join(msgs))
        elif verb == "take":
            assert len(q.take(int(n))) == int(n)
        else:
            q.skip(int(n))
        assert (q.queued, q.dropped, q.full) == want, step
    assert len(told) == rooms


class _Conn:
    peer = "test"

    def pump(self) -> None:
        pass


def test_front_tells_room_and_counts_what_the_agent_skipped_for_the_streams_open_then() -> None:
    skipped = [7]    # the agent skipped 7 before this front started: nobody's loss
    told: list[tuple[int, int]] = []
    front = Front(None, queue_size=4, on_streams_changed=lambda room, n: told.append((room, n)),
                  read_skipped=lambda: skipped[0])
    a, b = ClientQueue(4), ClientQueue(4)
    front.open_events(a, _Conn())  # type: ignore[arg-type]
    assert told[-1] == (1, 1)
    front.publish([b"m"] * 5)      # a overflows
    assert (told[-1], a.dropped) == ((0, 1), 1)
    skipped[0] += 100             # the agent sees no room: skips 100
    front.open_events(b, _Conn())  # type: ignore[arg-type]
    assert told[-1] == (1, 2) and a.dropped == 101 and b.dropped == 0  # b came after them
    front.publish([b"m"] * 4)      # b fills exactly, a drops all 4
    assert told[-1] == (1, 2) and a.dropped == 105
    skipped[0] += 10
    front.account_skipped()
    assert (a.dropped, b.dropped) == (115, 10)
    a.take(4)                      # sent everything: room again
    assert told[-1] == (2, 2)
    skipped[0] += 3                # skipped before a closed: counted on it, then it is gone
    front.close_events(a)
    assert told[-1] == (1, 1) and a.dropped == 118
    assert a.sent + a.dropped == 5 + 100 + 4 + 10 + 3   # every event offered while open


def test_the_agent_skips_encoding_only_while_every_open_stream_is_full(tmp_path: Path) -> None:
    """A real serving process: a client that never reads fills its queue; the ring then says
    no stream has room, the writer skips (takes() is False) and the serving process counts
    those events as that client's drops; sent + dropped is every event once it is gone."""
    w = shm.RingWriter(4096)
    try:
        assert not w.takes(5) and w.skipped == 0  # no stream open: nothing to count
    finally:
        w.close()
    queue, n = 500, 5000  # 45-byte events: the client's 64 KiB window takes ~1,400 before it is stuck
    payloads = [wire.reference_bytes(samples.numbered_exec(i)) for i in range(n)]
    with serving_process(tmp_path, queue_size=queue) as front:
        stuck = RawClient(front.address, window=65535)
        try:
            stuck.get_events()
            wait_for(lambda: front.ring.demand() == (1, 1), what="the stream, with room")
            assert front.ring.takes(n)
            front.publish_encoded(payloads)
            wait_for(lambda: front.ring.demand() == (0, 1), what="the stuck stream full")
            assert not front.ring.takes(300) and front.ring.skipped == 300
            front.poke()

            def entry() -> dict[str, Any] | None:
                c = front.stats()["clients"]
                return c[0] if c and c[0]["sent"] + c[0]["dropped"] >= n + 300 - queue else None
            e = wait_for(entry, what="the skipped events counted")
            assert e["dropped"] >= 300 + n - queue - e["sent"]
        finally:
            stuck.close()
        st = wait_for(lambda: (s := front.stats())["streams_active"] == 0 and s, what="the stream to end")
        assert st["events_sent"] + st["events_dropped"] == n + 300
        assert front.ring.demand() == (0, 0)


def test_events_the_ring_lapped_before_the_serving_process_read_them_are_each_streams_drops(tmp_path: Path) -> None:
    """A serving process that cannot run for a while (here: stopped) is lapped by the agent's
    writes: the events it never read are dropped for every stream open then, counted per
    client, so sent + dropped is still every event."""
    import os
    import signal

    n = 3000  # ~1,400 bytes each: more than the 1 MiB ring holds
    events = [samples.numbered_exec(i) for i in range(n)]
    for e in events:
        e["process_exec"]["process"]["arguments"] = "x" * 1300
    payloads = [wire.reference_bytes(e) for e in events]
    with serving_process(tmp_path, ring_mb=1) as front:
        client = RawClient(front.address, window=1 << 30)
        try:
            sid = client.get_events()
            wait_for(lambda: front.ring.demand() == (1, 1), what="the stream, with room")
            os.kill(front.proc.pid, signal.SIGSTOP)
            try:
                assert front.ring.takes(n)
                front.publish_encoded(payloads)
            finally:
                os.kill(front.proc.pid, signal.SIGCONT)
            front.poke()

            def counted() -> dict[str, Any] | None:
                try:
                    client.pump(lambda _ev: False, timeout=0.2)  # reads (and acknowledges) what came
                except TimeoutError:
                    pass
                c = front.stats()["clients"]
                return c[0] if c and c[0]["sent"] + c[0]["dropped"] >= n else None
            e = wait_for(counted, what="every event sent or counted as dropped")
            assert e["dropped"] > 0 and e["sent"] + e["dropped"] == n, e
            assert e["sent"] == len(client.messages(sid))
            assert front.stats()["ring_lost"] == e["dropped"]
        finally:
            client.close()


def test_a_killed_serving_process_leaves_every_streams_events_accounted(tmp_path: Path) -> None:
    """Each stream's counters are in shared memory as they change, and where it starts in the
    ring: when its serving process is killed, the agent (Tally.carry_over) counts for each open
    stream every event offered to it that it had not sent or filtered as dropped: what sat in its
    queue, what the process had not read. A client that got every event shows it all sent, at
    once (no report interval to wait for)."""
    import os
    import signal

    from tests.api.h2client import RawClient

    queue, n = 2000, 5000   # the stuck client: ~1,400 sent (its window), 2,000 queued, the rest dropped
    payloads = [wire.reference_bytes(samples.numbered_exec(i)) for i in range(n)]
    with serving_process(tmp_path, queue_size=queue) as front:
        reading = RawClient(front.address, window=1 << 30)
        stuck = RawClient(front.address, window=65535)
        try:
            rsid = reading.get_events()
            stuck.get_events()
            wait_for(lambda: front.ring.demand() == (2, 2), what="both streams")
            for i in range(0, n, 500):   # as fast as the reading client takes them
                front.publish_encoded(payloads[i:i + 500])
                size = sum(len(p) + 5 for p in payloads[:i + 500])
                reading.pump(lambda _ev, size=size: len(reading.data.get(rsid, b"")) >= size, timeout=30)
            assert len(reading.messages(rsid)) == n
            more = payloads[:700]          # written before the kill, not all read by then
            front.ring.write_batch(more)   # (no wakeup: the process reads them within 0.25 s, or not)
            os.kill(front.proc.pid, signal.SIGKILL)
            front.proc.wait()
            streams = front.tally.carry_over(0, front.ring.seq, front.ring.skipped)
        finally:
            reading.close()
            stuck.close()
        assert len(streams) == 2, streams
        for s in streams:   # every event offered: sent, or counted dropped
            assert s["offered"] == n + len(more), s
            assert s["sent"] + s["dropped"] + s["filtered"] + s["errors"] == s["offered"], s
        fast = next(s for s in streams if s["sent"] >= n)
        slow = next(s for s in streams if s is not fast)
        assert fast["sent"] <= n + len(more) and fast["dropped"] == n + len(more) - fast["sent"], fast
        assert 0 < slow["sent"] < n and slow["dropped"] >= n - queue - slow["sent"], slow
        st = front.stats()
        assert st["streams_active"] == 0 and st["clients"] == []
        assert st["events_sent"] + st["events_dropped"] == 2 * (n + len(more)), st


def test_a_filtered_streams_drops_are_counted_before_its_filter(tmp_path: Path) -> None:
    """What a stream loses before its filter sees it is dropped whatever the filter would have
    said: a stream that allows one binary only, lapped by the ring while its process was stopped,
    counts the lost events (none of them that binary) as dropped, not filtered. The records are
    overwritten: nobody can tell which would have passed. Its client entry says it is a filtered
    stream (its drops: an upper bound on the matching events it missed); sent + filtered + dropped
    is still every event."""
    import os
    import signal

    from tests.api.h2client import RawClient
    from vigil.api.pb import events_pb2

    n = 3000  # ~1,400 bytes each: more than the 1 MiB ring holds
    events = [samples.numbered_exec(i) for i in range(n)]
    for e in events:
        e["process_exec"]["process"]["arguments"] = "x" * 1300
    payloads = [wire.reference_bytes(e) for e in events]
    request = events_pb2.GetEventsRequest(allow_list=[events_pb2.Filter(binary_regex=["^/never/this$"])])
    with serving_process(tmp_path, ring_mb=1) as front:
        client = RawClient(front.address, window=1 << 30)
        try:
            client.request("/tetragon.FineGuidanceSensors/GetEvents", request.SerializeToString())
            wait_for(lambda: front.ring.demand() == (1, 1), what="the stream, with room")
            os.kill(front.proc.pid, signal.SIGSTOP)
            try:
                front.publish_encoded(payloads)
            finally:
                os.kill(front.proc.pid, signal.SIGCONT)
            front.poke()
            # the lap handled first: published before it, the 10 would be part of what it skips
            wait_for(lambda: front.stats()["events_dropped"] + front.stats()["events_filtered"] >= n or None,
                     what="the lap accounted")
            front.publish_encoded(payloads[:10])   # read after the lap: filtered out, counted filtered

            def counted() -> dict[str, Any] | None:
                st = front.stats()
                return st if st["events_dropped"] + st["events_filtered"] >= n + 10 else None
            st = wait_for(counted, what="every event dropped or filtered")
            (c,) = st["clients"]
            assert c["filtered_stream"] and c["sent"] == 0, c
            assert st["events_filtered"] >= 10 and c["dropped"] == st["events_dropped"] > 0, st
            assert st["events_dropped"] + st["events_filtered"] == n + 10, st
        finally:
            client.close()
