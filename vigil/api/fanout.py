"""The agent's public gRPC front, in a process of its own: an HTTP/2 server
(vigil.api.h2front) that writes GetEvents streams straight from the shared-memory ring of
already encoded events (vigil.api.shm) and forwards every other call to the agent's
private socket unchanged (vigil.api.passthrough). No client, however slow or however
many, runs on the agent's interpreter: the agent only encodes each event once and copies
it into the ring.

Per client: a bounded queue, filled on the one event loop that reads the ring; a client
that does not keep up loses the overflow, counted for that client and shown (with what
it was sent) in the stats block of the ring, which the agent reports in `vigil status`
and its metrics.

    python -m vigil.api.fanout --ring-fd N --wake-fd N --index I --listen ADDR --upstream unix:///... \\
        [--info-file F] [--queue-size N] [--max-streams N] [--max-forwarded-streams N]
        [--forward-buffer BYTES] [--allow-remote]
        [--tls-cert F --tls-key F [--tls-client-ca F,...] [--require-client-cert]]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import ssl
import struct
import sys
import threading
from pathlib import Path
from typing import Any

from vigil.api import listen, shm
from vigil.api.h2front import FORWARD_BUFFER, Front
from vigil.api.passthrough import MAX_STREAMS as MAX_FORWARDED_STREAMS, Upstream
from vigil.api.server import ServerError, TlsConfig, remove_info_files, unix_path, write_info_files
from vigil.api.streams import StreamStats
from vigil.core import sharedmem

log = logging.getLogger("vigil.api.fanout")

BATCH = 1024              # records read from the ring at a time
MAX_PROCESSES = shm.READERS
MAX_CLIENTS = 13           # per process in the stats block
# pid, streams, sent, dropped, filtered, lost (ring laps); forwarded streaming calls: open, refused
# (the limit reached), ended for a slow client, bytes held for their clients now and at most
_SUMMARY = struct.Struct("<IIQQQQQQQQQ")
_CLIENT = struct.Struct("<40sQQ")         # peer, sent, dropped
REGION = _SUMMARY.size + MAX_CLIENTS * _CLIENT.size
FORWARDED = ("streams_active", "refused", "ended_slow", "held_bytes", "held_bytes_max")


def read_stats(view: memoryview) -> list[dict[str, Any]]:
    """The serving processes' counters, as the agent reports them."""
    out = []
    for i in range(MAX_PROCESSES):
        base = i * REGION
        pid, streams, sent, dropped, filtered, lost, *fwd = _SUMMARY.unpack_from(view, base)
        if not pid:
            continue
        clients = []
        for k in range(MAX_CLIENTS):
            peer, csent, cdropped = _CLIENT.unpack_from(view, base + _SUMMARY.size + k * _CLIENT.size)
            if peer.strip(b"\0"):
                clients.append({"peer": peer.rstrip(b"\0").decode(errors="replace"), "sent": csent,
                                "dropped": cdropped})
        out.append({"index": i, "pid": pid, "streams_active": streams, "events_sent": sent, "events_dropped": dropped,
                    "events_filtered": filtered, "ring_lost": lost, "clients": clients,
                    "forwarded": dict(zip(FORWARDED, fwd, strict=True))})
    return out


def clear_region(view: memoryview, index: int) -> None:
    """An ended serving process's region: no pid, no counters, no clients (the agent carried
    its counters over)."""
    view[index * REGION:(index + 1) * REGION] = bytes(REGION)


class RingFeed:
    """Reads the ring when the agent says it wrote (a byte on the wake pipe, or every
    POLL seconds) and hands each batch to the front end, on its event loop.

    After a read it stops listening to the pipe for COALESCE seconds: at high rates the
    agent's batches are read together, and neither the agent's writes nor ours to the
    clients wake another CPU for every batch (each wakeup costs the agent's core an
    interrupt, and in a VM an exit); an idle ring is read at once."""

    POLL = 0.25
    COALESCE = 0.002

    def __init__(self, reader: shm.RingReader, wake_fd: int, front: Front) -> None:
        self.reader, self.wake_fd, self.front = reader, wake_fd, front
        self._timer: asyncio.TimerHandle | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._listening = False
        self._agent_gone = False

    def start(self) -> None:
        self._listen()
        self._tick()

    def stop(self) -> None:
        self._unlisten()
        for t in (self._timer, self._resume):
            if t is not None:
                t.cancel()

    def _listen(self) -> None:
        self._resume = None
        if not self._listening and not self._agent_gone:
            asyncio.get_running_loop().add_reader(self.wake_fd, self._woken)
            self._listening = True

    def _unlisten(self) -> None:
        if self._listening:
            asyncio.get_running_loop().remove_reader(self.wake_fd)
            self._listening = False

    def _woken(self) -> None:
        try:
            if not os.read(self.wake_fd, 4096):
                log.warning("the agent went away; serving what the ring holds")
                self._agent_gone = True
        except BlockingIOError:
            pass
        self.drain()
        self._unlisten()  # what the agent writes meanwhile waits in the pipe
        self._resume = asyncio.get_running_loop().call_later(self.COALESCE, self._listen)

    def _tick(self) -> None:
        self.drain()
        self.front.update_progress()
        self._timer = asyncio.get_running_loop().call_later(self.POLL, self._tick)

    def drain(self) -> None:
        read, publish = self.reader.read, self.front.publish
        self.front.account_skipped()
        while True:
            batch = read(BATCH, framed=True)
            if not batch:
                break
            publish(batch)
        self.front.account_skipped()  # a lap found by these reads: dropped for the streams open now


class StatsWriter(threading.Thread):
    """Writes this process's counters into its region of the ring's stats block."""

    def __init__(self, view: memoryview, index: int, stats: StreamStats, reader: shm.RingReader,
                 front: Front | None = None) -> None:
        super().__init__(name="vigil-fanout-stats", daemon=True)
        self.view, self.base = view, index * REGION
        self.stats, self.reader, self.front = stats, reader, front
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.write()

    def write(self) -> None:
        st = self.stats
        snap = st.snapshot()
        fr = self.front
        up = fr.upstream if fr is not None else None
        fwd = ((up.streams if up is not None else 0), (up.refused if up is not None else 0), fr.forward_ended_slow,
               fr.forward_held, fr.forward_held_max) if fr is not None else (0, 0, 0, 0, 0)
        # written while the agent reads it: never through 0 (a counter read as 0 would look reset)
        sharedmem.write(self.view, self.base, _SUMMARY, os.getpid(), snap["streams_active"], snap["events_sent"],
                        snap["events_dropped_slow_client"], snap["events_filtered"], self.reader.lost, *fwd)
        clients = st.clients()[:MAX_CLIENTS]
        for k in range(MAX_CLIENTS):
            off = self.base + _SUMMARY.size + k * _CLIENT.size
            if k < len(clients):
                peer, sent, dropped = clients[k]
                sharedmem.write(self.view, off, _CLIENT, peer.encode()[:40], sent, dropped)
            else:
                sharedmem.write(self.view, off, _CLIENT, b"", 0, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vigil.api.fanout")
    ap.add_argument("--ring-fd", type=int, required=True)
    ap.add_argument("--wake-fd", type=int, required=True)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--info-file", action="append", default=[])
    ap.add_argument("--queue-size", type=int, default=10000)
    ap.add_argument("--max-streams", type=int, default=24)
    ap.add_argument("--max-forwarded-streams", type=int, default=MAX_FORWARDED_STREAMS)
    ap.add_argument("--forward-buffer", type=int, default=FORWARD_BUFFER)
    ap.add_argument("--allow-remote", action="store_true")
    ap.add_argument("--tls-cert", default="")
    ap.add_argument("--tls-key", default="")
    ap.add_argument("--tls-client-ca", default="")
    ap.add_argument("--require-client-cert", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 <= a.index < MAX_PROCESSES:
        ap.error(f"--index must be 0..{MAX_PROCESSES - 1}")
    tls = (TlsConfig(a.tls_cert, a.tls_key, tuple(f for f in a.tls_client_ca.split(",") if f),
                     a.require_client_cert) if a.tls_cert else None)
    try:
        ssl_context = tls.ssl_context() if tls is not None else None
        socks, address = listen.bind(a.listen, tls=tls is not None, allow_remote=a.allow_remote)
    except (ServerError, OSError) as e:
        print(f"vigil-fanout: {e}", file=sys.stderr, flush=True)
        return 1
    reader = shm.RingReader(a.ring_fd, a.index)
    os.set_blocking(a.wake_fd, False)
    return asyncio.run(serve(a, reader, socks, address, ssl_context))


async def serve(a: argparse.Namespace, reader: shm.RingReader, socks: list[socket.socket], address: str,
                ssl_context: ssl.SSLContext | None) -> int:
    loop = asyncio.get_running_loop()
    upstream = Upstream(a.upstream, max_streams=a.max_forwarded_streams)
    front = Front(upstream, queue_size=a.queue_size, max_streams=a.max_streams, on_streams_changed=reader.set_wanted,
                  read_skipped=reader.missed, forward_buffer=a.forward_buffer)
    feed = RingFeed(reader, a.wake_fd, front)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await front.serve(socks, ssl_context)
    info_files = [Path(f) for f in a.info_file]
    write_info_files(info_files, address)
    feed.start()
    stats = StatsWriter(reader.stats_view(), a.index, front.stats, reader, front)
    stats.start()
    print(f"vigil-fanout listening on {address}", file=sys.stderr, flush=True)
    parent = os.getppid()
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), 0.5)
        except TimeoutError:
            pass
        if os.getppid() != parent:  # the agent is gone (we were reparented): stop too
            break
    feed.stop()
    await front.stop(grace=1.0)
    remove_info_files(info_files, address)
    path = unix_path(address)
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    stats.stopping.set()
    stats.write()
    await loop.run_in_executor(None, upstream.close)
    return 0

if __name__ == "__main__":
    sys.exit(main())
