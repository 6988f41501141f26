"""The agent: kernel records in, Tetragon-shaped events out.

One thread runs the pipeline (drain ring buffer -> decode -> process cache
-> events -> export filter -> JSON file / printer, and the live bus for
gRPC streams). Front ends (gRPC, metrics) run in their own threads and talk
to the agent only through the AgentAPI methods.
"""
from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil import __version__
from vigil.agent.config import AgentConfig
from vigil.core.bus import EventBus, Subscription
from vigil.core.events import Event
from vigil.events import records as R
from vigil.events.source import EventSource, RecordingSource
from vigil.process.build import BuildOptions, EventBuilder
from vigil.process.cache import ProcessCache
from vigil.process.clock import WallClock
from vigil.process.procfs import scan

if TYPE_CHECKING:
    from vigil.export.event_filter import EventFilter
    from vigil.export.jsonl import JsonlWriter
    from vigil.sensors.process import ProcessSensor

log = logging.getLogger("vigil.agent")

Handler = Callable[[bytes, int], "Event | None"]


class Agent:
    def __init__(self, config: AgentConfig, source: EventSource | None = None) -> None:
        config.validate()
        self.config = config
        self.node_name = config.node_name
        self.version = __version__
        self.clock = WallClock()
        self.cache = ProcessCache(config.process_cache_size, int(config.process_cache_gc_interval * 1e9))
        self.builder = EventBuilder(
            self.cache, self.clock,
            BuildOptions(config.node_name, config.enable_process_cred, config.enable_process_ns,
                         config.enable_ancestors),
        )
        self.bus = EventBus()
        self.handlers: dict[int, Handler] = {}
        self._source = source
        self._live = source is None
        self.sensor: ProcessSensor | None = None
        self.writer: JsonlWriter | None = None
        self.export_filter: EventFilter | None = None
        self._printer: Callable[[list[Event]], None] | None = None
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self.started_at = 0.0
        self.ready_at = 0.0
        self.events_by_type: dict[str, int] = {}
        self.decode_errors = 0
        self.kernel_drops: dict[str, int] = {}
        self.user_drops: dict[str, int] = {}
        self.frontends: list[Any] = []
        self.sinks: list[Callable[[list[Event]], None]] = []  # more consumers of every batch (gRPC ring)
        self.log_level = "info"
        from vigil.agent.policies import PolicyManager

        self.policies = PolicyManager(self)
        b = self.builder
        self.handlers.update(b.record_handlers())
        self.handlers[R.OP_GENERIC] = self.policies.events.handle
        self.handlers[R.OP_NETDENY] = self.policies.events.handle_netdeny
        self.handlers[R.OP_DATA] = self.policies.events.handle_data
        self._injected: deque[Event] = deque()
        self.pins: Any = None                # PinDir while --keep-sensors-on-exit is on
        self._previous: list[Any] = []       # runs a killed or keeping agent left pinned
        self.restart: dict[str, int] = {}    # what was recovered from / lost by those runs
        self.k8s: Any = None  # vigil.k8s.stage.K8sStage with --enable-k8s-api

    # -- lifecycle
    def start(self) -> None:
        self.started_at = time.monotonic()
        from vigil.export.event_filter import EventFilter

        c = self.config
        self.export_filter = EventFilter.from_config(
            allowlist=c.export_allowlist, denylist=c.export_denylist, field_filters=c.field_filters,
            redaction_filters=c.redaction_filters, rate_limit=c.export_rate_limit, node_name=c.node_name,
        )
        # gRPC streams apply the same redaction as the export
        self.redaction = self.export_filter.redaction
        if c.export_filename:
            from vigil.export.jsonl import JsonlWriter

            self.writer = JsonlWriter(
                c.export_filename, max_size_mb=c.export_file_max_size_mb,
                max_backups=c.export_file_max_backups, compress=c.export_file_compress,
                perm=c.export_file_perm,
            )
        if c.print_events:
            self._printer = _make_printer(c.print_events)
        try:
            if self._live and c.enable_k8s_api:
                self._start_k8s()
            if self._live:
                self._start_kernel()
                if self.k8s is not None:
                    from vigil.kernel.cgroups import tracking

                    assert self.sensor is not None and self.sensor.obj is not None  # _start_kernel made it
                    self.k8s.start_policy_filter(self.sensor.obj.map("policy_cgroups"),
                                                 c.k8s_cgroup_root or tracking().mount)
                self._load_start_policies()
                if self.k8s is not None and c.enable_tracing_policy_crd:
                    self.k8s.start_policies(self.policies)
                self._release_previous()  # our programs and policies are in: no enforcement gap
            # what exists now (modules, the procfs snapshot) lives as long as the agent:
            # keep it out of every cyclic collection; cycles are rare on the hot path,
            # so collect the young generation less often too
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 20, 50)
            self.ready_at = time.monotonic()
            for fe in self.frontends:
                fe.start()
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
        jobs: list[tuple[Callable[[str], list[str]], str]] = [(self.policies.add_file, f) for f in c.tracing_policy]
        if c.tracing_policy_dir:
            jobs.append((self.policies.add_dir, c.tracing_policy_dir))
        for add, path in jobs:
            try:
                add(path)
            except PolicyError as e:
                if c.tracing_policy_on_error != "warn":
                    raise
                log.warning("policy not loaded, starting without it: %s", e)

    def _start_k8s(self) -> None:
        from vigil.k8s.stage import K8sStage

        c = self.config
        self.k8s = K8sStage(node=c.node_name, kubeconfig=c.k8s_kubeconfig_path, hold_seconds=c.k8s_pod_wait,
                            cache=self.cache, inject=self.inject, annotations=c.enable_pod_annotations)
        self.k8s.start_pods()  # before the procfs scan: processes found at start get their pods too
        self.builder.pods = self.k8s.resolver
        self.handlers.update(self.builder.record_handlers())  # exec handlers that add pod data
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
        from vigil.sensors.process import ProcessSensor

        c = self.config
        self._start_pins()
        self.sensor = sensor = ProcessSensor(args_max=c.args_max, ringbuf_bytes=c.rb_size,
                                             execve_map_entries=c.execve_map_entries)
        sensor.start()
        attached_ktime = time.monotonic_ns()
        if self.pins is not None:
            self.pins.pin_map(sensor.events_map, "events")
            self.pins.pin_map(sensor.drops_map, "vigil_drops")
        recovered = self._recover_previous(attached_ktime) if self._previous else []
        events = sensor.events_map
        src: EventSource = RingBuffer(events.fd, events.max_entries)
        if c.record_file:
            src = RecordingSource(src, c.record_file)
        self._source = src
        # attach first, then scan: anything missed by the scan is seen live
        snaps = scan(self.clock)
        known = sensor.seed(
            (s.pid, s.exec_ktime, s.ppid, s.pktime, s.exe,
             (s.cap_effective, s.cap_inheritable, s.cap_permitted), s.ns) for s in snaps)
        if recovered:
            self.handle(recovered)  # execs and exits while no agent ran, in their order
        now = time.monotonic_ns()
        batch: list[Event] = [self.builder.on_procfs(s, now) for s in snaps
                 if s.pid not in known and self.cache.by_pid(s.pid) is None]
        self._emit(batch)

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Pipeline loop until request_stop()."""
        src = self._source
        assert src is not None, "start() first"
        next_tick = 0.0
        coalesce = self.config.batch_delay
        while not self._stop.is_set():
            if self._injected:
                self._emit_injected()
            if src.wait(0.1):
                recs = src.drain()
                if recs:
                    self.handle(recs)
                    # a small batch means we woke for nearly every record: let records
                    # accumulate a moment instead (bounded added latency, far fewer wakeups)
                    if coalesce and self._live and len(recs) < 256:
                        time.sleep(coalesce)
            elif not self._live and getattr(src, "exhausted", False):
                break  # a replay is over
            now = time.monotonic()
            if now >= next_tick:
                self.tick()
                next_tick = now + self.config.stats_interval
        # last drain so records committed before the stop are not lost
        recs = src.drain()
        if recs:
            self.handle(recs)
        if self.k8s is not None:
            self._emit(self.k8s.hold.flush(), hold=False)
        self.tick()

    def inject(self, event: Event) -> None:
        """Queue an event made outside the pipeline thread (fanotify decisions)."""
        self._injected.append(event)

    def _emit_injected(self) -> None:
        batch = []
        while self._injected:
            batch.append(self._injected.popleft())
        self._emit(batch, hold=False)

    def close(self) -> None:
        if self.k8s is not None:
            self.k8s.close()  # no cluster policy changes while tearing down
        for fe in reversed(self.frontends):
            try:
                fe.stop()
            except Exception:  # keep tearing down
                log.exception("stopping %s", fe)
        if self.pins is not None:
            if self.config.keep_sensors_on_exit and not self._previous:
                self.pins.keep()  # pinned attachments stay; the next start adopts them
            else:
                self.pins.stop()
            self.pins = None
        self.policies.close()
        if self._source is not None:
            self._source.close()
        if self.sensor is not None:
            self.sensor.stop()
            self.sensor = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # -- pipeline
    def handle(self, recs: list[bytes]) -> None:
        """Records -> events: one table lookup per record (decoders registered by record op)."""
        now = time.monotonic_ns()
        handlers = self.handlers
        out: list[Event] = []
        append = out.append
        for buf in recs:
            op = buf[0]
            try:
                e = handlers[op](buf, now)
            except KeyError:
                e = None
                self.decode_errors += 1
                if self.decode_errors <= 10:
                    log.warning("bad kernel record (op %s, %d bytes): no handler", op, len(buf))
            except (R.DecodeError, ValueError, IndexError) as ex:
                e = None
                self.decode_errors += 1
                if self.decode_errors <= 10:
                    log.warning("bad kernel record (op %s, %d bytes): %s", op, len(buf), ex)
            if e is not None:
                append(e)
            if len(out) >= 256:  # small batches: ~30% faster (CPU caches, fewer GC promotions)
                self._emit(out)
                out = []
                append = out.append
        if out:
            self._emit(out)

    def _emit(self, events: list[Event], hold: bool = True) -> None:
        if hold and self.k8s is not None:
            events = self.k8s.filter_events(events)  # events waiting for their pod stay behind
        counts = self.events_by_type
        for e in events:
            k = e.kind
            counts[k] = counts.get(k, 0) + 1
        self.bus.publish(events)
        exported = self.export_filter.apply_batch(events) if self.export_filter else events
        if self.writer is not None and exported:
            self.writer.write_batch(exported)
        if self._printer is not None and exported:
            self._printer(exported)
        for sink in self.sinks:
            sink(events)

    def tick(self) -> None:
        now = time.monotonic_ns()
        self.cache.gc(now)
        if self.k8s is not None:
            self.k8s.tick()
        if self.export_filter is not None:
            rep = self.export_filter.poll_report()
            if rep is not None and self.writer is not None:
                self.writer.write_batch([rep])
        if self.sensor is not None:
            drops = self.sensor.drops()
            for cause, n in drops.items():
                prev = self.kernel_drops.get(cause, 0)
                if n > prev:
                    log.warning("kernel could not deliver %d records (%s); %d in total", n - prev, cause, n)
            self.kernel_drops = drops
        for fe in self.frontends:
            fe_tick = getattr(fe, "tick", None)
            if fe_tick is not None:
                fe_tick()
        lost = self.bus.dropped_total
        if lost and lost != self.user_drops.get("slow_subscriber"):
            self.user_drops["slow_subscriber"] = lost

    # -- AgentAPI
    def subscribe(self, maxsize: int = 10000) -> Subscription:
        return self.bus.subscribe(maxsize)

    def health(self) -> dict[str, Any]:
        if self._stop.is_set():
            return {"status": "stopped", "details": "agent is stopping"}
        if not self.ready_at:
            return {"status": "stopped", "details": "agent is starting"}
        return {"status": "running", "details": "running"}

    def status(self) -> dict[str, Any]:
        b = self.builder
        grpc = [fe for fe in self.frontends if hasattr(fe, "ring")]  # the gRPC server, when one runs
        return {
            "node_name": self.node_name,
            "version": self.version,
            "uptime_seconds": round(time.monotonic() - self.started_at, 3) if self.started_at else 0,
            "ready_ms": round((self.ready_at - self.started_at) * 1000, 1) if self.ready_at else None,
            "hook_flavour": getattr(self.sensor, "flavour", ""),
            "events": dict(self.events_by_type),
            "lost": {
                "kernel": dict(self.kernel_drops),
                "user": {**self.user_drops, "decode_errors": self.decode_errors},
            },
            "ringbuf": self._ringbuf_stats(),
            "process_cache": {"size": len(self.cache), "capacity": self.cache.capacity,
                              "evictions": self.cache.evictions, "misses": self.cache.misses,
                              "removed": self.cache.removed},
            "records": {"exec": b.exec_count, "exit": b.exit_count, "clone": b.clone_count,
                        "parent_misses": b.miss_count},
            "export": self._export_stats(),
            "subscribers": self.bus.subscriber_count,
            "maps": self.sensor.map_usage() if self.sensor is not None else {},
            "programs": self._program_stats(),
            "policy_events": [{"policy": lp.name, "hook": kind, "count": n}
                              for lp in list(self.policies.policies.values()) for kind, n in lp.events.items()],
            "policy_actions": [{"policy": lp.name, "namespace": lp.compiled.policy.namespace or "", "hook": k[0],
                                "hook_index": k[1], "selector_index": k[2], "selector_label": k[3],
                                "action": k[4], "count": n}
                               for lp in list(self.policies.policies.values())
                               for k, n in list(lp.actions.items())],
            "policies": {lp.name: {"state": "enabled" if lp.enabled else "disabled", "mode": lp.mode}
                         for lp in list(self.policies.policies.values())},
            "restart": dict(self.restart),
            **({"grpc": grpc[-1].stats()} if grpc else {}),
            "permission_helper": self.policies.guards.stats(),
            **({"k8s": self.k8s.status()} if self.k8s is not None else {}),
        }

    def _program_stats(self) -> list[dict[str, Any]]:
        """Per-program run counts (non-zero only with kernel.bpf_stats_enabled=1)."""
        if self.sensor is None or self.sensor.obj is None:
            return []
        from vigil.kernel.info import prog_info

        out = []
        for prog in self.sensor.obj.programs.values():
            if prog.fd >= 0:
                info = prog_info(prog.fd)
                out.append({"policy": "", "attach": prog.section, "sensor": "process", **info})
        for lp in list(self.policies.policies.values()):
            for gh in lp.hooks:
                if getattr(gh, "obj", None) is None:
                    continue
                for prog in gh.obj.programs.values():
                    if prog.fd >= 0:
                        info = prog_info(prog.fd)
                        out.append({"policy": lp.name, "attach": gh.compiled.placement.describe(),
                                    "sensor": "generic", **info})
        return out

    def _ringbuf_stats(self) -> dict[str, int]:
        src = self._source
        inner = getattr(src, "inner", src)
        return {"records": getattr(inner, "records", 0), "bytes": getattr(inner, "bytes", 0),
                "discarded": getattr(inner, "discarded", 0), "size": getattr(inner, "size", 0),
                "peak_bytes": getattr(inner, "peak", 0)}

    def _export_stats(self) -> dict[str, Any]:
        w, f = self.writer, self.export_filter
        return {
            "file": self.config.export_filename,
            "events_written": w.events_written if w else 0,
            "bytes_written": w.bytes_written if w else 0,
            "events_failed": w.events_failed if w else 0,
            "bytes_failed": w.bytes_failed if w else 0,
            "write_errors": dict(w.errors) if w else {},
            "last_error": w.last_error if w else "",
            "filtered": f.events_filtered if f else 0,
            "rate_limited": f.events_rate_limited if f else 0,
        }

    def process_cache_dump(self) -> list[dict[str, Any]]:
        from vigil.export.dicts import process_dict

        return [{"process": process_dict(p.msg), "refcnt": p.refcnt, "exited": p.exited} for p in self.cache]

    def list_sensors(self) -> list[dict[str, Any]]:
        return [{"name": "process", "enabled": self.sensor is not None or not self._live,
                 "collection": "base"}]

    def set_log_level(self, level: str) -> None:
        logging.getLogger().setLevel(level.upper())
        self.log_level = level.lower()

    def get_log_level(self) -> str:
        return self.log_level

    # -- export file rotation at run time (EventLogService)
    def event_log_params(self) -> dict[str, Any]:
        w = self.writer
        if w is None:
            raise LookupError("no export file is configured (--export-filename)")
        return {"max_size": w.max_size_mb, "rotation_interval": _go_duration(w.rotation_interval),
                "max_backups": w.max_backups}

    def set_event_log_params(self, *, max_size_mb: float | None = None, rotation_interval: str | None = None,
                             max_backups: int | None = None) -> None:
        w = self.writer
        if w is None:
            raise LookupError("no export file is configured (--export-filename)")
        if max_size_mb is not None and max_size_mb < 0:
            raise ValueError("max_size must be >= 0 (MiB)")
        if max_backups is not None and max_backups < 0:
            raise ValueError("max_backups must be >= 0")
        interval = _parse_go_duration(rotation_interval) if rotation_interval is not None else None
        w.set_params(max_size_mb=max_size_mb, max_backups=max_backups, rotation_interval=interval)

    # -- policies
    def add_policy(self, yaml_text: str, *, mode: str | None = None, source: str = "grpc") -> str:
        names = self.policies.add_text(yaml_text, f"<{source}>", mode=mode, source=source)
        return names[0] if names else ""

    def delete_policy(self, name: str, namespace: str = "") -> None:
        self.policies.delete(name, namespace)

    def set_policy_enabled(self, name: str, enabled: bool, namespace: str = "") -> None:
        self.policies.set_enabled(name, enabled, namespace)

    def set_policy_mode(self, name: str, mode: str, namespace: str = "") -> None:
        self.policies.set_mode(name, mode, namespace)

    def list_policies(self) -> list[dict[str, Any]]:
        return self.policies.list()


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_go_duration(text: str) -> float:
    """Go time.Duration strings ("90s", "1h30m", "0") -> seconds."""
    import re

    t = text.strip()
    if t in ("", "0"):
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise ValueError(f"rotation_interval {text!r} is not a duration like 90s, 15m or 1h30m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _go_duration(seconds: float) -> str:
    s = int(seconds)
    if s == 0:
        return "0s"
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{sec}s" if sec else "")


def _make_printer(kind: str) -> Callable[[list[Any]], None]:
    out = sys.stdout
    if kind == "json":
        from vigil.export.codec import encode_events

        def print_json(events: list[Any]) -> None:
            out.buffer.write(b"".join(encode_events(events)))
            out.flush()
        return print_json

    from vigil.export.compact import format_compact
    from vigil.export.dicts import event_dict

    color = out.isatty()

    def print_compact(events: list[Any]) -> None:
        lines = [format_compact(event_dict(e), color=color, timestamps=False) for e in events]
        out.write("".join(ln + "\n" for ln in lines if ln))
        out.flush()
    return print_compact
