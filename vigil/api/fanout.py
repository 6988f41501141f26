"""The agent's public gRPC front, in a process of its own: an HTTP/2 server
(vigil.api.h2front) that writes GetEvents streams straight from the shared-memory ring of
already encoded events (vigil.api.shm) and forwards every other call to the agent's
private socket unchanged (vigil.api.passthrough). No client, however slow or however
many, runs on the agent's interpreter: the agent only encodes each event once and copies
it into the ring.

Per client: a bounded queue, filled on the one event loop that reads the ring; a client
that does not keep up loses the overflow, counted for that client in its slot of the
ring's stats block (vigil.api.streamtable), written as it changes, which the agent reports
in `vigil status` and its metrics, and which outlives this process.

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
import sys
from pathlib import Path

from vigil.api import listen, shm
from vigil.api.h2front import FORWARD_BUFFER, Front
from vigil.api.passthrough import MAX_STREAMS as MAX_FORWARDED_STREAMS, Upstream
from vigil.api.server import ServerError, TlsConfig, remove_info_files, unix_path, write_info_files
from vigil.api.streamtable import MAX_SLOTS, StreamTable
from vigil.export.filters import FilterOptions

log = logging.getLogger("vigil.api.fanout")

BATCH = 1024              # records read from the ring at a time
MAX_PROCESSES = shm.READERS
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
        self.front.write_summary()


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
    # what the agent's events carry, for the GetEvents filters that need it
    ap.add_argument("--ancestor-kinds", default=None)  # event kinds with ancestors (absent: all; "": none)
    ap.add_argument("--no-process-cred", action="store_true")
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
    a.max_streams = min(a.max_streams, MAX_SLOTS // 2)   # room for the slots of streams that ended
    os.set_blocking(a.wake_fd, False)
    return asyncio.run(serve(a, reader, socks, address, ssl_context))


async def serve(a: argparse.Namespace, reader: shm.RingReader, socks: list[socket.socket], address: str,
                ssl_context: ssl.SSLContext | None) -> int:
    loop = asyncio.get_running_loop()
    upstream = Upstream(a.upstream, max_streams=a.max_forwarded_streams)
    table = StreamTable(reader.stats_view(), a.index)
    table.start(os.getpid())
    front = Front(upstream, queue_size=a.queue_size, max_streams=a.max_streams, on_streams_changed=reader.set_wanted,
                  forward_buffer=a.forward_buffer, reader=reader, table=table,
                  filter_options=FilterOptions(process_cred=not a.no_process_cred, **(
                      {} if a.ancestor_kinds is None else
                      {"ancestors": frozenset(k for k in a.ancestor_kinds.split(",") if k)})))
    feed = RingFeed(reader, a.wake_fd, front)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await front.serve(socks, ssl_context)
    info_files = [Path(f) for f in a.info_file]
    write_info_files(info_files, address)
    feed.start()
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
    front.write_summary()
    await loop.run_in_executor(None, upstream.close)
    return 0

if __name__ == "__main__":
    sys.exit(main())
