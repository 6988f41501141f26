"""What the front ends (gRPC, metrics, CLI) see of a running agent: the AgentAPI.

Status and introspection read the agent's parts (pipeline counters, process cache,
sensor, policies, front ends) at call time; the few controls (policies, log level,
export rotation) hand over to the part that owns the state. Called from front-end
threads: nothing here touches the pipeline's hot path.
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from vigil.core.bus import Subscription

if TYPE_CHECKING:
    from vigil.agent.agent import Agent


class AgentControl:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._rotation_text: tuple[str, float | None] | None = None  # the last interval set, as sent

    # identity, read by GetVersion / GetInfo / the metrics
    @property
    def node_name(self) -> str:
        return self.agent.node_name

    @property
    def version(self) -> str:
        return self.agent.version

    @property
    def k8s(self) -> Any:
        return self.agent.k8s

    @property
    def redaction(self) -> Any:
        """gRPC streams apply the same redaction as the export (None before start)."""
        ef = self.agent.pipeline.export_filter
        return ef.redaction if ef is not None else None

    @property
    def filter_options(self) -> Any:
        """What the events carry, for GetEvents filters that need it (FilterOptions)."""
        from vigil.export.filters import FilterOptions

        return FilterOptions.of(self.agent.config)

    def subscribe(self, maxsize: int = 10000) -> Subscription:
        return self.agent.pipeline.bus.subscribe(maxsize)

    def health(self) -> dict[str, Any]:
        if self.agent.stopping:
            return {"status": "stopped", "details": "agent is stopping"}
        if not self.agent.ready_at:
            return {"status": "stopped", "details": "agent is starting"}
        return {"status": "running", "details": "running"}

    # -- `vigil status`, GetInfo and the metrics: keys and their order are an interface
    def status(self) -> dict[str, Any]:
        from vigil.agent.pipeline import TETRAGON_OPCODE
        from vigil.agent.policies import action_counters, listed_mode
        from vigil.kernel.objects import delete_errors

        a, p = self.agent, self.agent.pipeline
        b = a.builder
        pols = list(a.policies.policies.values())
        grpc = [fe for fe in a.frontends if hasattr(fe, "ring")]  # the gRPC server, when one runs
        return {
            "node_name": a.node_name,
            "version": a.version,
            "uptime_seconds": round(time.monotonic() - a.started_at, 3) if a.started_at else 0,
            "ready_ms": round((a.ready_at - a.started_at) * 1000, 1) if a.ready_at else None,
            "hook_flavour": getattr(a.sensor, "flavour", ""),
            "events": dict(p.events_by_type),
            "lost": {
                "kernel": {**p.kernel_drops, **self._loader_drops()},
                "user": {**p.user_drops, "decode_errors": p.decode_errors},
            },
            "ringbuf": self._ringbuf_stats(),
            "process_cache": {"size": len(a.cache), "capacity": a.cache.capacity,
                              "evictions": a.cache.evictions,
                              # lookups that found nothing: an event's process, an exit's, an exec's or a clone's parent
                              "misses": a.cache.misses + b.miss_count - b.exit_misses,
                              "early_deletions": a.cache.early_deletions,
                              "removed": a.cache.removed, "heap_trims": p.heap_trims},
            "records": {"exec": b.exec_count, "exit": b.exit_count, "clone": b.clone_count,
                        "parent_misses": b.miss_count},
            "export": self._export_stats(),
            "subscribers": p.bus.subscriber_count,
            "maps": a.sensor.map_usage() if a.sensor is not None else {},
            "map_delete_errors": delete_errors(),  # failed user-space deletes (not ENOENT), by map
            "programs": self._program_stats(),
            "links": self._link_stats(),
            "policy_events": [{"policy": lp.name, "hook": kind, "count": n}
                              for lp in pols for kind, n in list(lp.events.items())],
            # every action each selector took (Tetragon's selector action counters; selector_index -1:
            # the records of a hook without selectors)
            "policy_actions": [{"policy": lp.name, "namespace": lp.compiled.policy.namespace or "",
                                "hook": e["hook"], "hook_index": e["hook_index"], "selector_index": e["selector_index"],
                                "selector_label": e["selector_label"], "action": action, "count": n}
                               for lp in pols for e in action_counters(lp, unselected=True)[1]
                               for action, n in e["action_counters"].items()],
            "policies": {lp.name: {"state": "enabled" if lp.enabled else "disabled", "mode": listed_mode(lp)}
                         for lp in pols},
            "handler_errors": [{"opcode": op, "error": err, "count": n}
                               for (op, err), n in list(p.handler_errors.items())],
            "handled_opcodes": sorted({TETRAGON_OPCODE.get(op, str(op)) for op in list(p.handlers)}, key=int),
            **self._msg_ops(),
            "events_missing_process_info": b.missing_info,
            # policy events held for their process's exec record (vigil.process.hold)
            "event_cache": b.hold.status(),
            "data_cache": self._data_cache(),
            "loader_stats": dict(getattr(getattr(a.policies, "events", None), "loader_stats", {})),
            "restart": dict(a.restart),
            **({"grpc": grpc[-1].stats()} if grpc else {}),
            "permission_helper": a.policies.guards.stats(),
            **({"k8s": a.k8s.status()} if a.k8s is not None else {}),
        }

    def _msg_ops(self) -> dict[str, Any]:
        """Kernel records handled, by Tetragon's opcode of their op (an op it has no opcode for:
        its number; an empty record: 0), and the handling-time histogram of each (bucket counts
        of pipeline.LATENCY_BUCKETS_US then +Inf, not cumulative; sum in microseconds)."""
        from vigil.agent.pipeline import TETRAGON_OPCODE

        p = self.agent.pipeline
        ops: dict[str, int] = {}
        for op, n in list(p.msg_ops.items()):
            k = TETRAGON_OPCODE.get(op, str(max(op, 0)))
            ops[k] = ops.get(k, 0) + n
        lat: dict[str, dict[str, Any]] = {}
        for op, (buckets, total) in list(p.latency.items()):
            k = TETRAGON_OPCODE.get(op, str(max(op, 0)))
            h = lat.setdefault(k, {"buckets": [0] * len(buckets), "sum_us": 0.0})
            h["buckets"] = [a + b for a, b in zip(h["buckets"], buckets)]
            h["sum_us"] += total[0]
        return {"msg_ops": ops, "handling_latency": lat}

    def _data_cache(self) -> dict[str, int]:
        """maxData chunks waiting for their events (Tetragon's data cache)."""
        from vigil.agent.policy_events import DATA_CAPACITY

        pe = getattr(self.agent.policies, "events", None)
        return {"size": len(pe._data) if pe is not None else 0, "capacity": DATA_CAPACITY,
                "evictions": pe.data_orphans if pe is not None else 0,
                "misses": pe.data_misses["get"] if pe is not None else 0}

    def _loader_drops(self) -> dict[str, int]:
        """Mappings the kernel could not report to the loader sensor (its perf rings were full:
        PERF_RECORD_LOST): process_loader events that never came. Once the sensor ran."""
        loader = getattr(self.agent.policies, "_loader", None)
        return {"perf_ring_full_loader": loader.lost} if loader is not None else {}

    def _program_stats(self) -> list[dict[str, Any]]:
        """Per-program run counts (non-zero only with kernel.bpf_stats_enabled=1)."""
        sensor = self.agent.sensor
        if sensor is None or sensor.obj is None:
            return []
        from vigil.kernel.info import prog_info

        out = []
        for prog in sensor.obj.programs.values():
            if prog.fd >= 0:
                info = prog_info(prog.fd)
                out.append({"policy": "", "namespace": "", "attach": prog.section, "sensor": "process",
                            "section": prog.section, **info})
        for lp in list(self.agent.policies.policies.values()):
            for gh in list(lp.hooks):
                obj, what = getattr(gh, "obj", None), "generic"
                nd = getattr(gh, "nd", None)
                if obj is None and nd is not None:  # socket rules: the cgroup sock_addr object
                    obj, what = getattr(nd, "_obj", None), "netdeny"
                if obj is None:
                    continue
                try:
                    for prog in list(obj.programs.values()):
                        if prog.fd >= 0:
                            info = prog_info(prog.fd)
                            out.append({"policy": lp.name, "namespace": lp.compiled.policy.namespace or "",
                                        "attach": gh.compiled.placement.describe(), "sensor": what,
                                        "section": prog.section, **info})
                except OSError:  # the policy was deleted meanwhile (status takes no policy lock)
                    continue
        return out

    def _link_stats(self) -> list[dict[str, Any]]:
        """Per policy hook attachment: probe hits the kernel did not run the program for
        (kernel.info.link_missed), for the links the kernel reports that of (kprobes; its BTF says)."""
        from vigil.kernel.info import link_missed

        out = []
        for lp in list(self.agent.policies.policies.values()):
            for gh in list(lp.hooks):
                obj = getattr(gh, "obj", None)
                if obj is None:
                    continue
                for link in obj.links:
                    missed = link_missed(link.fd)
                    if missed is not None:
                        out.append({"policy": lp.name, "namespace": lp.compiled.policy.namespace or "",
                                    "attach": gh.compiled.placement.describe(), "link": link.desc,
                                    "missed": missed})
        return out

    def _ringbuf_stats(self) -> dict[str, Any]:
        src = self.agent.source
        inner = getattr(src, "inner", src)  # a --record-file recorder wraps the ring buffers
        rings: list[Any] = getattr(inner, "rings", lambda: [inner])()
        each = [{"name": name, "records": getattr(rb, "records", 0), "bytes": getattr(rb, "bytes", 0),
                 "discarded": getattr(rb, "discarded", 0), "size": getattr(rb, "size", 0),
                 "peak_bytes": getattr(rb, "peak", 0)} for name, rb in zip(("process", "policy"), rings)]
        total: dict[str, Any] = {k: sum(r[k] for r in each) for k in ("records", "bytes", "discarded", "size",
                                                                      "peak_bytes")}
        total["rings"] = each
        return total

    def _export_stats(self) -> dict[str, Any]:
        w, f = self.agent.pipeline.writer, self.agent.pipeline.export_filter
        return {
            "file": self.agent.config.export_filename,
            "events_written": w.events_written if w else 0,
            "bytes_written": w.bytes_written if w else 0,
            "events_failed": w.events_failed if w else 0,
            "bytes_failed": w.bytes_failed if w else 0,
            "write_errors": dict(w.errors) if w else {},
            "last_error": w.last_error if w else "",
            "last_event_time": w.last_event_time if w else "",
            "filtered": f.events_filtered if f else 0,
            "rate_limited": f.events_rate_limited if f else 0,
        }

    def kernel_probes(self) -> dict[str, bool]:
        """GetInfo's probes (tetra info's "Probes"): each kernel feature the agent's probe tried
        (`vigil probe`'s order; named as Tetragon names the same probe, TETRAGON_PROBE_NAMES,
        else as `vigil probe` does) -> whether it works here (inconclusive: false)."""
        from vigil.kernel.features import TETRAGON_PROBE_NAMES

        return {TETRAGON_PROBE_NAMES.get(name, name): found is True
                for name, (found, _) in self.agent.policies.facts.features.items()}

    def process_cache_dump(self) -> list[dict[str, Any]]:
        from vigil.export.dicts import process_dict

        return [{"process": process_dict(p.msg), "refcnt": p.refcnt, "exited": p.exited} for p in self.agent.cache]

    def list_sensors(self) -> list[dict[str, Any]]:
        return [{"name": "process", "enabled": self.agent.sensor is not None or not self.agent.live,
                 "collection": "base"}]

    def set_log_level(self, level: str) -> None:
        """Tetragon's levels (SetDebug, `tetra loglevel set`): trace, debug, info, warn, error,
        fatal, panic. Python logging has no trace or panic: trace logs as debug does, panic
        only above critical."""
        number = _LOG_LEVELS.get(level.strip().lower())
        if number is None:
            raise ValueError(f"unknown log level {level!r} (one of {', '.join(_LOG_LEVEL_NAMES)})")
        logging.getLogger().setLevel(number)

    def get_log_level(self) -> str:
        """The level the agent logs at now (also when set at start, `vigil -d agent`)."""
        number = logging.getLogger().getEffectiveLevel()
        return next((name for name in _LOG_LEVEL_NAMES if number <= _LOG_LEVELS[name]), "panic")

    # -- export file rotation at run time (EventLogService)
    def event_log_params(self) -> dict[str, Any]:
        w = self.agent.pipeline.writer
        if w is None:
            raise LookupError("no export file is configured (--export-filename)")
        sent = self._rotation_text
        text = sent[0] if sent is not None and sent[1] == w.rotation_interval else _go_duration(w.rotation_interval)
        return {"max_size": w.max_size_mb, "rotation_interval": text, "max_backups": w.max_backups}

    def set_event_log_params(self, *, max_size_mb: float | None = None, rotation_interval: str | None = None,
                             max_backups: int | None = None) -> None:
        w = self.agent.pipeline.writer
        if w is None:
            raise LookupError("no export file is configured (--export-filename)")
        # as the agent's start options refuse them (vigil.cli.agent_cmd): "not >= 0" also refuses
        # NaN (NaN < 0 is false); each checked before anything is changed
        if max_size_mb is not None and not (0 <= max_size_mb and math.isfinite(max_size_mb)):
            raise ValueError(f"max_size must be a finite number >= 0 (MiB), not {max_size_mb}")
        if max_backups is not None and max_backups < 0:
            raise ValueError("max_backups must be >= 0")
        interval = parse_go_duration(rotation_interval) if rotation_interval is not None else None
        if interval is not None and not interval <= MAX_GO_DURATION_S:  # inf (400 digits) broke reporting it
            raise ValueError(f"rotation_interval {str(rotation_interval)[:40]!r} is longer than the longest duration, "
                             "2562047h")
        w.set_params(max_size_mb=max_size_mb, max_backups=max_backups, rotation_interval=interval)
        if rotation_interval is not None:
            self._rotation_text = (rotation_interval, interval)  # reported as sent, as Tetragon does

    # -- policies (PolicyManager does the work)
    def add_policy(self, yaml_text: str, *, mode: str | None = None, source: str = "grpc") -> str:
        names = self.agent.policies.add_text(yaml_text, f"<{source}>", mode=mode, source=source)
        return names[0] if names else ""

    def delete_policy(self, name: str, namespace: str = "") -> None:
        self.agent.policies.delete(name, namespace)

    def set_policy_enabled(self, name: str, enabled: bool, namespace: str = "") -> None:
        self.agent.policies.set_enabled(name, enabled, namespace)

    def set_policy_mode(self, name: str, mode: str, namespace: str = "") -> None:
        self.agent.policies.set_mode(name, mode, namespace)

    def list_policies(self) -> list[dict[str, Any]]:
        return self.agent.policies.list()


_LOG_LEVEL_NAMES = ("trace", "debug", "info", "warn", "error", "fatal", "panic")  # from most to least verbose
_LOG_LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
               "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL,
               "critical": logging.CRITICAL, "panic": logging.CRITICAL + 10}

# the longest Go time.Duration, 2^63-1 ns (about 2562047h): Go's ParseDuration refuses a longer one
MAX_GO_DURATION_S = (2**63 - 1) / 1e9

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
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
    """Go's time.Duration.String(), as Tetragon reports its rotation interval: 0s, 500ms,
    1.5s, 1m30s, 1h0m0s, 24h0m0s."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000_000_000:  # under a second: the largest unit that keeps an integer part
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _frac(ns, size) + unit
    h, rest = divmod(ns, 3_600_000_000_000)
    m, rest = divmod(rest, 60_000_000_000)
    text = _frac(rest, 1_000_000_000) + "s"
    if h:
        return f"{sign}{h}h{m}m{text}"
    return f"{sign}{m}m{text}" if m else sign + text


def _frac(value: int, unit: int) -> str:
    whole, part = divmod(value, unit)
    digits = str(part).rjust(len(str(unit)) - 1, "0").rstrip("0") if unit > 1 else ""
    return f"{whole}.{digits}" if digits else str(whole)
