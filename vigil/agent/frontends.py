"""Optional front ends started with the agent (gRPC server, metrics).

Each is an object with start() and stop(); the agent starts them once it is
ready and stops them first on shutdown.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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

        self.agent = agent
        self.cfg = cfg
        self.rundir = tempfile.mkdtemp(prefix="vigil-agent-", dir=_run_root())
        # room for every call the serving processes forward at once (unary and streaming: a
        # streaming call the agent serves holds one of its calls as long as it lasts), so that
        # no number of forwarded streams can make the agent refuse the others
        workers = cfg.server_processes * (passthrough.WORKERS + passthrough.MAX_STREAMS) + 8
        self.internal = ApiServer(agent.control, f"unix://{self.rundir}/agent.sock", info_files=[],
                                  max_workers=workers)
        self.ring = RingWriter(cfg.server_ring_mb << 20)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.wakes: list[int] = []
        self.restarts = 0
        self._restarting: set[int] = set()   # serving processes being started again (on a thread)
        self._retired: list[int] = []        # wake fds of replaced processes, closed by tick()
        # counters of serving processes that ended, kept in the totals (a new process starts at 0)
        self._carried = {"events_sent": 0, "events_dropped": 0, "events_filtered": 0, "ring_lost": 0,
                         "forwarded_refused": 0, "forwarded_ended_slow": 0}
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
        if not self.ring.takes(len(events)):
            return
        self.ring.populate()
        from vigil.api.wire import encode_event_batch
        from vigil.core.events import DictEvent
        from vigil.export.dicts import event_dict

        red = self.redaction
        if red is not None:  # gRPC clients never see what the export redacts
            events = [e if (d := red.apply(event_dict(e))) is event_dict(e) else DictEvent(d) for e in events]
        self.ring.write_batch(encode_event_batch(events))
        for w in self.wakes:
            try:
                os.write(w, b"x")
            except (BlockingIOError, BrokenPipeError):
                pass  # a wakeup is pending already, or the process is gone (tick restarts it)

    def tick(self) -> None:
        """Pipeline thread, every second: a serving process that ended is started again on a
        thread of its own (the event loop never waits for one to start)."""
        while self._retired:
            os.close(self._retired.pop())
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None and i not in self._restarting:
                self.restarts += 1
                log.error("gRPC serving process %d exited (%s); starting another", proc.pid, proc.returncode)
                self._carry_over(i, proc.pid)
                self._restarting.add(i)
                threading.Thread(target=self._restart, args=(i,), name="vigil-fanout-restart", daemon=True).start()

    def _restart(self, i: int) -> None:
        try:
            self._spawn(i)
        except (ValueError, OSError) as e:
            log.error("gRPC serving process could not start again: %s", e)
            time.sleep(1.0)   # tick tries again after that
        finally:
            self._restarting.discard(i)

    def _carry_over(self, i: int, pid: int) -> None:
        """An ended process's counters stay in the totals; its region and its streams' room go."""
        from vigil.api.fanout import clear_region, read_stats

        for p in read_stats(self.ring.stats_view()):
            if p["index"] == i and p["pid"] == pid:
                for k in ("events_sent", "events_dropped", "events_filtered", "ring_lost"):
                    self._carried[k] += p[k]
                for k in ("refused", "ended_slow"):
                    self._carried[f"forwarded_{k}"] += p["forwarded"][k]
        clear_region(self.ring.stats_view(), i)
        self.ring.clear_reader(i)

    def stats(self) -> dict[str, Any]:
        from vigil.api.fanout import read_stats

        procs = read_stats(self.ring.stats_view())
        live = {proc.pid for proc in self.procs if proc.poll() is None}
        procs = [p for p in procs if p["pid"] in live]   # (an ended one's counters are carried)
        c = self._carried
        return {
            "serving_processes": len(self.procs), "restarts": self.restarts,
            "streams_active": sum(p["streams_active"] for p in procs),
            "events_sent": c["events_sent"] + sum(p["events_sent"] for p in procs),
            "events_dropped_slow_client": c["events_dropped"] + sum(p["events_dropped"] for p in procs),
            "events_filtered": c["events_filtered"] + sum(p["events_filtered"] for p in procs),
            "ring": {"records": self.ring.records, "bytes": self.ring.bytes, "capacity": self.ring.capacity,
                     "skipped_no_room": self.ring.skipped,
                     "lost": c["ring_lost"] + sum(p["ring_lost"] for p in procs)},
            "clients": [c for p in procs for c in p["clients"]],
            # calls other than GetEvents that stream (the health service's Watch), passed to the agent
            "forwarded_streams": {
                "active": sum(p["forwarded"]["streams_active"] for p in procs),
                "refused": c["forwarded_refused"] + sum(p["forwarded"]["refused"] for p in procs),
                "ended_slow_client": c["forwarded_ended_slow"] + sum(p["forwarded"]["ended_slow"] for p in procs),
                "held_bytes": sum(p["forwarded"]["held_bytes"] for p in procs),
            },
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
