"""A serving process (vigil.api.fanout) as the agent runs it, without a kernel: this test
process writes the shared-memory ring and serves the other calls from a FakeAgent on a
private unix socket; the serving process owns the public address."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.api.fake_agent import FakeAgent
from tests.api.harness import ROOT, stop_process, wait_for
from vigil.api import shm, wire
from vigil.api.server import ApiServer
from vigil.api.streamtable import Tally


@dataclass
class Serving:
    address: str
    ring: shm.RingWriter
    agent: FakeAgent
    proc: subprocess.Popen[str]
    wake: int
    internal: ApiServer   # the agent's private server (its health service: internal._health)
    tally: Tally          # the serving process's counters, as the agent reads and keeps them

    def publish(self, events: list[dict[str, Any]]) -> None:
        """Encode and write events the way the agent does (GrpcFrontend.publish)."""
        self.ring.write_batch([wire.encode(e) for e in events])
        self.poke()

    def publish_encoded(self, payloads: list[bytes]) -> None:
        self.ring.write_batch(payloads)
        self.poke()

    def poke(self) -> None:
        try:
            os.write(self.wake, b"x")
        except BlockingIOError:
            pass

    def stats(self) -> dict[str, Any]:
        """As the agent reports them (streams that ended, in the totals)."""
        return self.tally.stats()


@contextmanager
def serving_process(tmp_path: Path, address: str = "", *, queue_size: int = 10000, ring_mb: int = 16,
                    extra: list[str] | None = None, agent: FakeAgent | None = None,
                    handlers: list[Any] | None = None) -> Iterator[Serving]:
    """`handlers`: generic handlers the agent serves instead of its health service."""
    agent = agent or FakeAgent()
    internal = ApiServer(agent, f"unix://{tmp_path}/agent.sock", info_files=[], health=handlers is None,
                         generic_handlers=handlers or ())
    internal.start()
    ring = shm.RingWriter(ring_mb << 20)
    r, w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(w, False)
    address = address or f"unix://{tmp_path}/vigil.sock"
    argv = [sys.executable, "-m", "vigil.api.fanout", "--ring-fd", str(ring.fd), "--wake-fd", str(r),
            "--listen", address, "--upstream", internal.address or "", "--queue-size", str(queue_size),
            *(extra or [])]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    tally: Tally | None = None
    proc = subprocess.Popen(argv, pass_fds=(ring.fd, r), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env)
    os.close(r)
    try:
        assert proc.stderr is not None
        bound = ""
        for line in proc.stderr:
            if line.startswith("vigil-fanout listening on "):
                bound = line.strip().removeprefix("vigil-fanout listening on ")
                break
            if line.startswith("vigil-fanout: "):
                raise RuntimeError(line.strip())
        if not bound:
            raise RuntimeError(f"serving process exited ({proc.wait()}) before listening")
        tally = Tally(ring.stats_view())
        srv = Serving(bound, ring, agent, proc, w, internal, tally)
        wait_for(lambda: tally.pid(0) == proc.pid, what="the serving process's stream table")
        yield srv
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()
        os.close(w)
        internal.stop(grace=0.5)
        if tally is not None:
            tally.release()
        ring.close()
