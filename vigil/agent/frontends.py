"""Optional front ends started with the agent (gRPC server, metrics).

Each is an object with start() and stop(); the agent starts them once it is
ready and stops them first on shutdown.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("vigil.agent")
SPAWN_TIMEOUT_S = 10.0   # a serving process that has not said it listens by then is ended


class GrpcFrontend:
    """The gRPC API: the agent serves every call on a private unix socket; serving
    processes (vigil.api.fanout) own the public address, feed GetEvents streams from a
    shared-memory ring the agent writes each event into once, and pass every other call
    through. Clients never run on the agent's interpreter."""

    def __init__(self, agent: Any, cfg: Any) -> None:
        from vigil.api import passthrough
        from vigil.api.server import ApiServer, TlsConfig
        from vigil.api.shm import RingWriter
        from vigil.api.streamtable import Tally

        self.agent = agent
        self.cfg = cfg
        root = _run_root()
        _remove_stale_rundirs(root)
        self.rundir = tempfile.mkdtemp(prefix="vigil-agent-", dir=root)
        # room for every call the serving processes forward at once (unary and streaming: a
        # streaming call the agent serves holds one of its calls as long as it lasts), so that
        # no number of forwarded streams can make the agent refuse the others
        workers = cfg.server_processes * (passthrough.WORKERS + passthrough.MAX_STREAMS) + 8
        self.internal = ApiServer(agent.control, f"unix://{self.rundir}/agent.sock", info_files=[],
                                  max_workers=workers)
        self.ring = RingWriter(cfg.server_ring_mb << 20)
        # every stream's counters, from the serving processes' tables in the ring; those of
        # streams that ended and of processes that died, in its totals (a new process starts at 0)
        self.tally = Tally(self.ring.stats_view())
        self._carried: set[int] = set()      # pids of dead serving processes already accounted
        self.procs: list[subprocess.Popen[bytes]] = []
        self.wakes: list[int] = []
        self.restarts = 0
        self._restarting: set[int] = set()   # serving processes being started again (on a thread)
        self._retired: list[int] = []        # wake fds of replaced processes, closed by tick()
        self.info_files = [f for f in (cfg.info_file, "/var/run/vigil/vigil-info.json") if f]
        self.tls = None
        if cfg.server_tls_cert_file or cfg.server_tls_key_file:
            self.tls = TlsConfig(cfg.server_tls_cert_file, cfg.server_tls_key_file,
                                 tuple(f for f in cfg.server_tls_client_ca_files.split(",") if f),
                                 cfg.server_tls_require_client_cert)
        self.address = cfg.server_address
        self.redaction = None

    # -- serving processes
    def _spawn(self, index: int) -> None:
        from vigil.export.filters import FilterOptions

        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(w, False)
        # -P: the agent's own vigil package, never one in the directory it was started from
        # (`-m` would put the working directory first on the path: a root agent started in
        # /tmp would run /tmp/vigil/api/fanout.py)
        argv = [sys.executable, "-P", "-m", "vigil.api.fanout", "--ring-fd", str(self.ring.fd), "--wake-fd", str(r),
                "--index", str(index), "--listen", self.address, "--upstream", self.internal.address or "",
                "--queue-size", str(self.cfg.server_client_queue)]
        for f in self.info_files:
            argv += ["--info-file", f]
        if self.cfg.server_allow_remote:
            argv.append("--allow-remote")
        argv += FilterOptions.of(self.cfg).fanout_args()  # what events carry, for GetEvents filters
        if self.tls is not None:
            argv += ["--tls-cert", self.tls.cert_file, "--tls-key", self.tls.key_file,
                     "--tls-client-ca", ",".join(self.tls.client_ca_files)]
            if self.tls.require_client_cert:
                argv.append("--require-client-cert")
        # own session: the terminal's Ctrl-C reaches the agent, which stops it in order
        proc = subprocess.Popen(argv, pass_fds=(self.ring.fd, r), stdin=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        os.close(r)
        assert proc.stderr is not None
        # one that never says it listens is ended (then reported as exited before listening)
        deadline = threading.Timer(SPAWN_TIMEOUT_S, proc.kill)
        deadline.daemon = True
        deadline.start()
        for line in proc.stderr:  # until it says where it listens, or fails
            line = line.rstrip()
            if line.startswith("vigil-fanout listening on "):
                self.address = line.removeprefix("vigil-fanout listening on ")
                break
            if line.startswith("vigil-fanout: "):
                deadline.cancel()
                proc.wait()
                os.close(w)
                raise ValueError(line.removeprefix("vigil-fanout: "))
            log.info("%s", line)
        else:
            deadline.cancel()
            proc.wait()
            os.close(w)
            raise ValueError(f"the gRPC serving process exited ({proc.returncode}) before listening")
        deadline.cancel()
        threading.Thread(target=_drain_log, args=(proc,), daemon=True).start()
        if index < len(self.procs):
            # (publish, on the pipeline thread, may be writing to the old wake fd: tick closes it)
            self._retired.append(self.wakes[index])
            self.procs[index], self.wakes[index] = proc, w
        else:
            self.procs.append(proc)
            self.wakes.append(w)

    def start(self) -> None:
        from vigil.api.listen import refuse_if_taken

        refuse_if_taken(self.address)  # before anything starts: another agent's clients stay its own
        self.internal.start()
        ef = self.agent.pipeline.export_filter
        self.redaction = ef.redaction if ef is not None and ef.redaction else None
        for i in range(self.cfg.server_processes):
            self._spawn(i)
        log.info("gRPC API on %s (%d serving process%s)", self.address, len(self.procs),
                 "es" if len(self.procs) > 1 else "")
        self.agent.pipeline.sinks.append(self.publish)

    def publish(self, events: list[Any]) -> None:
        """Encode each event once into the ring, if a stream has room to take it (when every
        stream's queue is full, the events are counted as dropped for each, never encoded)."""
        skipped = self.ring.skipped
        if not self.ring.takes(len(events)):
            if self.ring.skipped != skipped:   # counted for each open stream: not for those of a process gone
                for i, proc in enumerate(self.procs):
                    if proc.poll() is not None:
                        self._gone(i)
            return
        self.ring.populate()
        from vigil.api.wire import encode_event_batch
        from vigil.core.events import DictEvent
        from vigil.export.dicts import event_dict

        red = self.redaction
        if red is not None:  # gRPC clients never see what the export redacts
            events = [e if (d := red.apply(event_dict(e))) is event_dict(e) else DictEvent(d) for e in events]
        self.ring.write_batch(encode_event_batch(events))
        for i, w in enumerate(self.wakes):
            try:
                os.write(w, b"x")
            except BlockingIOError:
                pass  # a wakeup is pending already
            except BrokenPipeError:   # the process is gone (tick starts another)
                self._gone(i)

    def _gone(self, i: int) -> None:
        """Pipeline thread: serving process `i` has died (its end of the wake pipe closed: it
        writes nothing more): what its open streams had not sent is counted as dropped now,
        before more events are written or skipped for them."""
        if i in self._restarting or i >= len(self.procs):
            return   # (its replacement is starting: that wake fd was the old one's)
        pid = self.procs[i].pid
        if pid in self._carried:
            return
        self._carried.add(pid)
        for st in self.tally.carry_over(i, self.ring.seq, self.ring.skipped):
            log.warning("gRPC serving process %d died: its stream %s is accounted: %d offered, %d sent, "
                        "%d filtered, %d dropped", pid, st["peer"], st["offered"], st["sent"], st["filtered"],
                        st["dropped"])
        self.ring.clear_reader(i)   # its streams no longer ask for records

    def tick(self) -> None:
        """Pipeline thread, every second: a serving process that ended is started again on a
        thread of its own (the event loop never waits for one to start)."""
        while self._retired:
            os.close(self._retired.pop())
        self.tally.harvest()   # the slots of streams that ended, free for new ones
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None and i not in self._restarting:
                self.restarts += 1
                log.error("gRPC serving process %d exited (%s); starting another", proc.pid, proc.returncode)
                self._gone(i)
                self._restarting.add(i)
                threading.Thread(target=self._restart, args=(i,), name="vigil-fanout-restart", daemon=True).start()

    def _restart(self, i: int) -> None:
        from vigil.agent.pipeline import unboost_this_thread

        unboost_this_thread()   # (started by the event loop: the new process runs at the agent's nice)
        try:
            self._spawn(i)
        except (ValueError, OSError) as e:
            log.error("gRPC serving process could not start again: %s", e)
            time.sleep(1.0)   # tick tries again after that
        finally:
            self._restarting.discard(i)

    def stats(self) -> dict[str, Any]:
        t = self.tally.stats()
        fw = t["forwarded"]
        return {
            "serving_processes": len(self.procs), "restarts": self.restarts,
            "streams_active": t["streams_active"],
            "events_sent": t["events_sent"],
            "events_dropped_slow_client": t["events_dropped"],
            "events_filtered": t["events_filtered"],
            "conversion_errors": t["conversion_errors"],
            "ring": {"records": self.ring.records, "bytes": self.ring.bytes, "capacity": self.ring.capacity,
                     "skipped_no_room": self.ring.skipped, "lost": t["ring_lost"]},
            "clients": t["clients"],
            # calls other than GetEvents that stream (the health service's Watch), passed to the agent
            "forwarded_streams": {"active": fw["streams_active"], "refused": fw["refused"],
                                  "ended_slow_client": fw["ended_slow"], "held_bytes": fw["held_bytes"]},
        }

    def stop(self) -> None:
        if self.publish in self.agent.pipeline.sinks:
            self.agent.pipeline.sinks.remove(self.publish)
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for w in self.wakes:
            os.close(w)
        self.procs, self.wakes = [], []
        self.internal.stop(grace=1.0)
        self.tally.release()
        self.ring.close()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<gRPC {self.cfg.server_address}>"


def _run_root() -> str:
    for d in ("/run/vigil", "/var/run/vigil"):
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            return d
        except OSError:
            continue
    return tempfile.gettempdir()


STALE_AFTER_S = 60.0   # a run directory this old with no agent listening in it was left by a killed one


def _remove_stale_rundirs(root: str, now: float | None = None) -> int:
    """Remove the private directories of agents that were killed (SIGKILL, OOM) and never
    cleaned up: nothing listens on their socket. A young one may belong to an agent that is
    starting right now (its socket not bound yet), so those are left alone."""
    now = time.time() if now is None else now
    removed = 0
    for d in Path(root).glob("vigil-agent-*"):
        try:
            if not d.is_dir() or d.is_symlink() or now - d.stat().st_mtime < STALE_AFTER_S:
                continue
        except OSError:
            continue
        sock = d / "agent.sock"
        if sock.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                try:
                    s.connect(str(sock))
                    continue  # an agent serves here
                except OSError:
                    pass
        shutil.rmtree(d, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed %d run directories of agents that did not stop cleanly", removed)
    return removed


def _drain_log(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        log.info("fanout[%d]: %s", proc.pid, line.rstrip())


def attach_frontends(agent: Any) -> None:
    cfg = agent.config
    if cfg.server_address:
        agent.frontends.append(GrpcFrontend(agent, cfg))
    if cfg.metrics_server:
        from vigil.agent.metrics import MetricsFrontend

        agent.frontends.append(MetricsFrontend(agent.control, cfg.metrics_server))
