"""The agent: kernel records in, Tetragon-shaped events out.

Agent owns the lifecycle: start the sensors, recover what a previous agent left,
load the start-up policies, start the front ends, and close it all in order. It
composes the parts that do the work:

- Pipeline (vigil.agent.pipeline): the event loop, on one thread;
- PolicyManager (vigil.agent.policies): policy control; its PolicyEvents turn
  policy records into events for the loop;
- AgentControl (vigil.agent.control): the AgentAPI the front ends (gRPC,
  metrics) call from their own threads.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil import __version__
from vigil.agent.config import AgentConfig, ancestor_kinds
from vigil.agent.control import AgentControl
from vigil.agent.pipeline import Pipeline
from vigil.agent.policies import PolicyManager
from vigil.core.bus import Subscription
from vigil.core.events import Event
from vigil.events import records as R
from vigil.events.source import EventSource, RecordingSource
from vigil.process.build import BuildOptions, EventBuilder
from vigil.process.cache import ProcessCache
from vigil.process.clock import CLK_TCK, WallClock
from vigil.process.procfs import alive, scan, still_running

if TYPE_CHECKING:
    from vigil.sensors.process import ProcessSensor

log = logging.getLogger("vigil.agent")


class StartInterrupted(Exception):
    """request_stop() (SIGINT/SIGTERM) came while start() ran: start() stopped at its next
    step and closed everything it had made."""

    def __init__(self, step: str) -> None:
        super().__init__(f"stop requested while starting ({step})")
        self.step = step


class Agent:
    def __init__(self, config: AgentConfig, source: EventSource | None = None) -> None:
        config.validate()
        self.config = config
        self.node_name = config.node_name
        from vigil.kernel import procroot

        if source is None:  # live: the host's processes are read under --procfs from here on
            procroot.set_proc(config.procfs)
        self.version = __version__
        self.clock = WallClock()
        self.cache = ProcessCache(config.process_cache_size, int(config.process_cache_gc_interval * 1e9))
        self.builder = EventBuilder(
            self.cache, self.clock,
            BuildOptions(config.node_name, config.enable_process_cred, config.enable_process_ns,
                         "base" in config.enable_ancestors,
                         policy_ancestors=ancestor_kinds(config.enable_ancestors) - {"process_exec", "process_exit"}),
        )
        self.builder.hold.configure(config.event_cache_retries, config.event_cache_retry_delay)
        self.source = source
        self.live = source is None           # False: a replay (tests, dry runs, benchmarks)
        self.sensor: ProcessSensor | None = None
        self._stop = threading.Event()
        self.started_at = 0.0
        self.ready_at = 0.0
        self.frontends: list[Any] = []
        self.pipeline = Pipeline(self)
        self.policies = PolicyManager(self)
        self.control = AgentControl(self)
        self.pipeline.handlers.update(self.builder.record_handlers())
        pe = self.policies.events
        self.pipeline.handlers.update({R.OP_GENERIC: pe.compiled_handler(), R.OP_NETDENY: pe.handle_netdeny,
                                       R.OP_DATA: pe.handle_data})
        self.pins: Any = None                # PinDir while --keep-sensors-on-exit is on
        self._previous: list[Any] = []       # runs a killed or keeping agent left pinned
        self.restart: dict[str, int] = {}    # what start recovered from / lost by those runs, and fixed up
        self.k8s: Any = None  # vigil.k8s.stage.K8sStage with --enable-k8s-api
        self._started = False  # start() completed: only then may close() leave sensors pinned

    # -- lifecycle
    def checkpoint(self, step: str) -> None:
        """Between the steps of start(): a stop requested meanwhile ends the start here
        (start() closes what it made), not after every policy of a large directory loaded."""
        if self._stop.is_set():
            raise StartInterrupted(step)

    def start(self) -> None:
        """Everything up, or StartInterrupted if request_stop() came first, or the error that
        refused the start; either way nothing of it is left (close())."""
        self.started_at = time.monotonic()
        c = self.config
        self.pipeline.open_outputs(c)
        try:
            self.checkpoint("opening the outputs")
            if self.live and c.enable_k8s_api:
                self._start_k8s()
                self.checkpoint("listing the node's pods")
            if self.live:
                self._start_kernel()
                self.checkpoint("attaching the process sensor")
                if self.k8s is not None:
                    from vigil.kernel.cgroups import tracking

                    assert self.sensor is not None and self.sensor.obj is not None  # _start_kernel made it
                    self.k8s.start_policy_filter(self.sensor.obj.map("policy_cgroups"),
                                                 c.k8s_cgroup_root or tracking().mount)
                self._load_start_policies()
                if self.k8s is not None and c.enable_tracing_policy_crd:
                    self.k8s.start_policies(self.policies)
                    self.checkpoint("loading the cluster's policies")
                self._release_previous()  # our programs and policies are in: no enforcement gap
            # what exists now (modules, the procfs snapshot) lives as long as the agent:
            # keep it out of every cyclic collection; cycles are rare on the hot path,
            # so collect the young generation less often too
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 20, 50)
            self.ready_at = time.monotonic()
            for fe in self.frontends:
                self.checkpoint("starting the servers")
                fe.start()
            self.checkpoint("starting the servers")
            self._started = True
        except BaseException:
            self.close()
            raise
        log.info("vigil agent ready in %.0f ms (node %s, %d processes known)",
                 (self.ready_at - self.started_at) * 1000, self.node_name, len(self.cache))

    def _load_start_policies(self) -> None:
        """--tracing-policy files and --tracing-policy-dir: all loaded, or PolicyError (the
        agent does not start) unless --tracing-policy-on-error warn asked to go on without
        the refused ones."""
        from vigil.core.errors import PolicyError

        c = self.config

        def step(what: str) -> None:  # between files and between the policies of a file
            self.checkpoint(f"loading {what}")

        jobs: list[tuple[Callable[..., list[str]], str]] = [(self.policies.add_file, f) for f in c.tracing_policy]
        if c.tracing_policy_dir:
            jobs.append((self.policies.add_dir, c.tracing_policy_dir))
        for add, path in jobs:
            self.checkpoint(f"loading {path}")
            try:
                add(path, checkpoint=step)
            except PolicyError as e:
                if c.tracing_policy_on_error != "warn":
                    raise
                log.warning("policy not loaded, starting without it: %s", e)

    def _start_k8s(self) -> None:
        from vigil.k8s.stage import K8sStage

        c = self.config
        self.k8s = K8sStage(node=c.node_name, kubeconfig=c.k8s_kubeconfig_path, hold_seconds=c.k8s_pod_wait,
                            cache=self.cache, inject=self.pipeline.inject, annotations=c.enable_pod_annotations,
                            stop=self._stop)
        self.k8s.start_pods()  # before the procfs scan: processes found at start get their pods too
        self.builder.pods = self.k8s.resolver

    def _start_pins(self) -> None:
        """--keep-sensors-on-exit: pin every attachment from now on. Either way, find what a
        previous agent left pinned (killed, or kept its sensors)."""
        from vigil.kernel import pins

        c = self.config
        if c.keep_sensors_on_exit:
            root = pins.resolve_dir(c.bpf_dir)
            self.pins = pins.PinDir(root)
            self.pins.start()
        else:
            root = Path(c.bpf_dir) if c.bpf_dir.startswith("/") else Path(pins.BPF_FS) / c.bpf_dir
        self._previous = pins.previous_runs(root, exclude=self.pins.dir if self.pins else None)
        if self._previous:
            log.info("found %s pinned by a previous agent", ", ".join(map(repr, self._previous)))

    def _recover_previous(self, attached_ktime: int) -> list[bytes]:
        """Process records a previous agent's sensors wrote while no agent ran (older than our
        own sensors); its kernel drop counters say what the kernel could not deliver then."""
        from vigil.kernel import RingBuffer
        from vigil.sensors.process import DROP_CAUSES

        recovered: list[bytes] = []
        for run in self._previous:
            events = run.open_map("events")
            if events is not None:
                rb = RingBuffer(events.fd, events.max_entries)
                # the old programs still write: read until a record is as new as our sensors
                # (a record still being written stops a drain; give it a moment, bounded)
                for _ in range(200):
                    batch = rb.drain()
                    for buf in batch:
                        op, ktime = buf[0], R.HEADER.unpack_from(buf)[4]
                        if ktime >= attached_ktime:
                            continue  # our own sensors saw it too
                        if op in (R.OP_EXEC, R.OP_CLONE, R.OP_EXIT):
                            recovered.append(buf)
                        else:  # a policy record: its hook ids died with that agent
                            self.restart["policy_records_unreadable"] = \
                                self.restart.get("policy_records_unreadable", 0) + 1
                    if (batch and R.HEADER.unpack_from(batch[-1])[4] >= attached_ktime) or not rb.pending():
                        break
                    time.sleep(0.001)
                rb.close()
                events.close_fd()
            drops = run.open_map("vigil_drops")
            if drops is not None:
                for i, cause in enumerate(DROP_CAUSES):
                    n = drops.sum_percpu_u64(i.to_bytes(4, "little"))
                    if n and not cause.startswith("cause"):
                        self.restart[f"lost_{cause}"] = self.restart.get(f"lost_{cause}", 0) + n
                drops.close_fd()
        self.restart["records_recovered"] = len(recovered)
        self.restart["previous_runs"] = len(self._previous)
        return recovered

    def _release_previous(self) -> None:
        for run in self._previous:
            run.release()
        if self._previous:
            log.info("released %d previous run(s); recovered %s", len(self._previous), self.restart)
        self._previous = []

    def _start_kernel(self) -> None:
        from vigil.kernel import RingBuffer
        from vigil.kernel.ringbuf import PairedRings
        from vigil.sensors.process import ProcessSensor

        c = self.config
        self._start_pins()
        self.sensor = sensor = ProcessSensor(args_max=c.args_max, ringbuf_bytes=c.rb_size,
                                             execve_map_entries=c.execve_map_entries)
        sensor.start()
        self.policies.events.exec_key = sensor.exec_key  # the loader sensor's events name their process by it
        attached_ktime = time.monotonic_ns()
        if self.pins is not None:
            self.pins.pin_map(sensor.events_map, "events")
            self.pins.pin_map(sensor.drops_map, "vigil_drops")
            self.pins.pin_map(sensor.execve_map, "execve_map")  # the keys the next start adopts
        recovered = self._recover_previous(attached_ktime) if self._previous else []
        events = sensor.events_map
        src: EventSource = PairedRings(RingBuffer(events.fd, events.max_entries),
                                       reader_state=sensor.reader_map)
        if c.record_file:
            src = RecordingSource(src, c.record_file)
        self.source = src
        self.checkpoint("attaching the process sensor")
        # attach first, then scan: anything missed by the scan is seen live
        from vigil.kernel.procroot import host_pid_ns_mismatch

        warn, why = host_pid_ns_mismatch()
        if why:
            log.log(logging.WARNING if warn else logging.INFO, "%s", why)
        snaps = scan(self.clock)
        self.checkpoint("reading /proc")
        # the <kernel> process first (the parent of init and kthreadd), as Tetragon sends it
        self.pipeline.emit([self.builder.kernel_exec(time.monotonic_ns())])
        if recovered:
            self.pipeline.handle(recovered)  # execs and exits while no agent ran, in their order
        if self._previous:
            self._adopt_keys(snaps, self._previous_keys())
        known = sensor.seed(
            (s.pid, s.exec_ktime, s.ppid, s.pktime, s.filename,
             (s.cap_effective, s.cap_inheritable, s.cap_permitted), s.ns) for s in snaps)
        # forked between attach and seed: the kernel gave them an empty entry (no parent one yet)
        self.restart["execve_map_repaired"] = sensor.repair(
            {s.pid: (s.filename, (s.cap_effective, s.cap_inheritable, s.cap_permitted), s.ns) for s in snaps},
            {s.pid for s in snaps if s.pid not in known}, alive)
        # exited between the scan and the seed: the kernel reported the exit before the entry
        # was there, so nothing would ever remove it, nor end its procfs event
        gone = {s.pid for s in snaps if s.pid not in known and not still_running(s)
                and sensor.forget(s.pid, s.exec_ktime) != "absent"}  # absent: its exit record follows
        self.restart["procfs_gone"] = len(gone)
        now = time.monotonic_ns()
        batch: list[Event] = [ev for s in snaps
                              if s.pid not in known and s.pid not in gone and self.cache.by_pid(s.pid) is None
                              # kernel threads are cached (parents, exits) but, as in Tetragon, not exported
                              if (ev := self.builder.on_procfs(s, now)) is not None and not s.kthread]
        self.pipeline.emit(batch)

    def _previous_keys(self) -> dict[int, int]:
        """pid -> exec key (ktime) in the execve_map a previous run left pinned, which its
        programs kept up to date while no agent ran: the keys its records name processes by,
        and its exported exec_ids were made from."""
        from vigil.sensors.process import ENTRY

        keys: dict[int, int] = {}
        for run in self._previous:
            m = run.open_map("execve_map")
            if m is None:
                continue
            try:
                for _, v in m.items():
                    f = ENTRY.unpack_from(v)
                    if f[2]:
                        keys[f[0]] = max(keys.get(f[0], 0), f[2])
            finally:
                m.close_fd()
        return keys

    def _adopt_keys(self, snaps: list[Any], previous: dict[int, int]) -> None:
        """A process a previous agent knew keeps the key it had: the one of the record of its
        exec (or fork) that agent's sensors made while no agent ran, else the one in that
        agent's execve_map (for a process older than both agents, its /proc start time as that
        agent converted it: the conversion of another start differs by the clock's jitter).
        It is seeded with that key, and its children found by the scan with it as their
        parent's: the records still in the rings, and their exec_ids, name the same process."""
        tick = 1_000_000_000 // CLK_TCK  # /proc start times are whole ticks
        adopted: dict[int, int] = {}
        for s in snaps:
            p = self.cache.by_pid(s.pid)
            k = p.key[1] if p is not None else previous.get(s.pid)
            # the same process: its recorded image is not older than its start (a reused pid's is)
            if k is not None and k + tick >= s.ktime:
                adopted[s.pid] = s.exec_ktime = k
        for s in snaps:
            pk = adopted.get(s.ppid)
            if pk is not None and pk <= s.ktime + tick:  # the parent's image this one was forked from
                s.pktime = pk
        self.restart["procfs_keys_recovered"] = len(adopted)

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """The event loop, on the calling thread, until request_stop()."""
        assert self.source is not None, "start() first"
        self.pipeline.run(self.source, self._stop, self.live)

    def close(self) -> None:
        if self.k8s is not None:
            self.k8s.close()  # no cluster policy changes while tearing down
        for fe in reversed(self.frontends):
            try:
                fe.stop()
            except Exception:  # keep tearing down
                log.exception("stopping %s", fe)
        if self.pins is not None:
            if self.config.keep_sensors_on_exit and self._started and not self._previous:
                # pinned attachments stay; the next start adopts them. Never after a failed
                # start: what loaded before the refused policy would enforce with no agent
                self.pins.keep()
            else:
                self.pins.stop()
            self.pins = None
        self.policies.close()
        if self.source is not None:
            self.source.close()
        if self.sensor is not None:
            self.sensor.stop()
            self.sensor = None
        self.pipeline.close_outputs()
        # start() froze the agent's own objects (they live as long as it does): a frozen cycle is
        # never collected, so without this every agent closed in a process that goes on (tests,
        # benches, an embedding tool) would keep its whole process cache: 2.4 KB per exec measured
        gc.unfreeze()

    # -- shortcuts to the control surface, for the many tests and tools that drive an Agent
    def status(self) -> dict[str, Any]:
        return self.control.status()

    def subscribe(self, maxsize: int = 10000) -> Subscription:
        return self.control.subscribe(maxsize)

    def add_policy(self, yaml_text: str, *, mode: str | None = None, source: str = "grpc") -> str:
        return self.control.add_policy(yaml_text, mode=mode, source=source)

    def delete_policy(self, name: str, namespace: str = "") -> None:
        self.control.delete_policy(name, namespace)

    def list_policies(self) -> list[dict[str, Any]]:
        return self.control.list_policies()
