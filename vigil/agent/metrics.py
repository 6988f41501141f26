"""Prometheus /metrics: values are read from the agent at scrape time.

Metric names follow Tetragon's where an equivalent exists; Vigil-only
metrics are prefixed `vigil_`.
"""
from __future__ import annotations

import calendar
import logging
import time
from collections import _count_elements  # type: ignore[attr-defined]
from collections.abc import Iterable, Iterator
from itertools import compress
from operator import attrgetter, itemgetter
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger("vigil.metrics")

# kernel drop causes (`vigil status` lost.kernel) -> tetragon_bpf_missed_events_total{msg_op, error}
# as Tetragon labels them: the record's opcode number (5 execve, 23 clone, 7 exit, 13 generic
# kprobe: policy records of every hook kind share one counter here) and the errno name of the
# failed output (a full BPF ring buffer: EAGAIN; the loader sensor's full perf rings: 26 loader,
# ENOSPC); an exec that found no scratch buffer: unknown; a policy hook's hit whose record was
# not made (pipeline._HOOK_DROPS): its CPU's buffers busy, EBUSY; no room to keep its entry for
# the return (a full hash map), E2BIG
_MISSED = {"ringbuf_full_exec": ("5", "EAGAIN"), "ringbuf_full_clone": ("23", "EAGAIN"),
           "ringbuf_full_exit": ("7", "EAGAIN"), "ringbuf_full_generic": ("13", "EAGAIN"),
           "heap": ("5", "unknown"), "perf_ring_full_loader": ("26", "ENOSPC"),
           "generic_busy": ("13", "EBUSY"), "generic_pending_full": ("13", "E2BIG")}
# causes Tetragon counts as a failed map update: tetragon_map_errors_update_total{map}
_MAP_UPDATE_ERRORS = {"execve_map_full": "execve_map"}
# and as a failed map delete: tetragon_map_errors_delete_total{map} (an exit's execve_map delete
# that failed: the entry went between its lookup and its delete, e.g. another thread of the
# group ended it first where the kernel does not say which thread ended the group, before 6.18;
# the agent's own deletes that failed other than ENOENT come from status' map_delete_errors)
_MAP_DELETE_ERRORS = {"execve_map_delete": "execve_map"}
_EVENT_TYPE = {"process_exec": "PROCESS_EXEC", "process_exit": "PROCESS_EXIT", "process_kprobe": "PROCESS_KPROBE",
               "process_tracepoint": "PROCESS_TRACEPOINT", "process_uprobe": "PROCESS_UPROBE",
               "process_lsm": "PROCESS_LSM", "rate_limit_info": "RATE_LIMIT_INFO"}


# Tetragon's process labels of tetragon_events_total, in its order; --metrics-label-filter
# says which carry values (the others are sent empty)
PROCESS_LABELS = ("namespace", "workload", "pod", "binary", "node_name")
DEFAULT_LABEL_FILTER = "namespace,workload,pod,binary"
POD_GONE_SECONDS = 60.0  # series of a deleted pod are dropped this long after it left (as Tetragon)


# policy event kind -> the body fields naming its policy and hook, and Tetragon's `hook` label of
# tetragon_policy_events_total made of them (its PolicyInfo of the event: kprobe:<function as the
# event names it, __x64_sys_openat for a syscall>, tracepoint:<subsys>/<event>, ...)
_POLICY_HOOKS: dict[str, tuple[tuple[str, ...], str]] = {
    "process_kprobe": (("policy_name", "function_name"), "kprobe:{}"),
    "process_lsm": (("policy_name", "function_name"), "lsm:{}"),
    "process_tracepoint": (("policy_name", "subsys", "event"), "tracepoint:{}/{}"),
    "process_uprobe": (("policy_name", "path", "symbol"), "uprobe:{}/{}"),
    "process_usdt": (("policy_name", "provider", "name"), "usdt:{}/{}"),
}
_POLICY_GETTERS = {k: itemgetter(*fields) for k, (fields, _) in _POLICY_HOOKS.items()}
_body = attrgetter("body")
# tetragon_syscalls_total: the raw_syscalls/sys_enter events, by their syscall_id argument
_RAW_SYSCALL = ("raw_syscalls", "sys_enter")
_subsys_event = itemgetter(1, 2)
_args, _first = itemgetter("args"), itemgetter(0)
_syscall_id, _id_abi = itemgetter("syscall_id"), itemgetter("id", "abi")


def _syscall_id_of(e: Any) -> tuple[int, str] | None:
    """(id, abi) of the first syscall_id argument of a raw_syscalls event, as Tetragon looks for it."""
    for a in getattr(e, "body", {}).get("args") or ():
        sid = a.get("syscall_id") if isinstance(a, dict) else None
        if isinstance(sid, dict):
            return int(sid.get("id", 0)), str(sid.get("abi", ""))
    return None


def _is_raw_syscall(e: Any) -> bool:
    body = getattr(e, "body", None) or {}
    return (body.get("subsys"), body.get("event")) == _RAW_SYSCALL


def _syscall_name(sid: tuple[int, str] | None) -> str:
    from vigil.export.syscall_table import SYSCALL_NAMES

    if sid is None:
        return ""
    names = SYSCALL_NAMES.get(sid[1], ())
    return names[sid[0]] if 0 <= sid[0] < len(names) else ""


def parse_label_filter(text: str) -> frozenset[str]:
    """--metrics-label-filter: comma-separated labels to fill; unknown ones are ignored."""
    return frozenset(x.strip() for x in text.split(",")) & frozenset(PROCESS_LABELS)


class EventMetrics:
    """tetragon_events_total{type,namespace,workload,pod,binary,node_name} and
    tetragon_policy_events_total{policy,hook,namespace,workload,pod,binary,node_name}: a sink of
    the event loop (Pipeline.sinks) that sees every event the loop emits. A batch is counted in C by
    (kind, binary, container id), only by the parts the label filter asks for: a handful of
    keys per batch, not one per process (counting by process cost 11% of the replay's CPU,
    with a Python step per process; by these keys 190-245 ns an event, by kind alone 45). A
    container's pod labels are read once from one of its events, and kept while the pod is
    known. Series of a pod that left the node go a minute later, so pod churn does not grow the
    metric forever. The policy events of a batch are counted the same way, one C pass per policy
    event kind the batch has, by those keys and the body's policy and hook fields."""

    def __init__(self, labels: Iterable[str], node_name: str = "", k8s: Any = None) -> None:
        self.labels = frozenset(labels)
        self.node_name = node_name if "node_name" in self.labels else ""
        self.k8s = k8s  # the agent's K8sStage (pods of this node), or a callable returning it
        self.counts: dict[tuple[str, ...], int] = {}
        # (policy, hook, namespace, workload, pod, binary, node_name) -> policy events
        self.policy_counts: dict[tuple[str, ...], int] = {}
        # (syscall, namespace, workload, pod, binary, node_name) -> raw_syscalls/sys_enter events
        self.syscall_counts: dict[tuple[str, ...], int] = {}
        self._gone: dict[tuple[str, str], float] = {}  # (namespace, pod) not on the node since
        self._next_prune = 0.0
        self._pods = bool(self.labels & {"namespace", "workload", "pod"})
        self._binary = "binary" in self.labels
        self._key_pods = attrgetter("kind", "process.binary", "process.docker")
        self._key_plain = attrgetter("kind", "process.binary")
        self._proc_pods = attrgetter("process.binary", "process.docker")
        self._proc_plain = attrgetter("process.binary")
        self._key_kind = attrgetter("kind")
        self._by_container: dict[str, tuple[str, str, str]] = {}  # container id -> its pod's labels
        self._podless: dict[str, float] = {}  # container ids whose events had no pod, when last looked

    def _k8s(self) -> Any:
        return self.k8s() if callable(self.k8s) else self.k8s

    def _pod_labels(self, cid: str, events: list[Any]) -> tuple[str, str, str]:
        """(namespace, workload, pod) of container `cid`, from one of the batch's events."""
        got = self._by_container.get(cid)
        if got is not None:
            return got
        now = time.monotonic()
        if now - self._podless.get(cid, -1.0) < 0.25:
            return ("", "", "")
        for e in events:
            p = getattr(e, "process", None)
            if p is not None and p.docker == cid and p.pod is not None:
                pod = p.pod
                got = (pod.get("namespace", ""), pod.get("workload", ""), pod.get("name", ""))
                if len(self._by_container) >= 16384:  # containers come and go: start again
                    self._by_container.clear()
                self._by_container[cid] = got
                self._podless.pop(cid, None)
                return got
        if len(self._podless) >= 16384:
            self._podless.clear()
        self._podless[cid] = now  # not known yet (events held, then sent without it), or never
        return ("", "", "")

    def __call__(self, events: list[Any]) -> None:
        pods = self._pods and self._k8s() is not None  # without Kubernetes no event has a pod
        counts, want = self.counts, self.labels
        if not pods and not self._binary:  # no process label: by kind only
            by_kind: dict[str, int] = {}
            _count_elements(by_kind, map(self._key_kind, events))
            for kind, n in by_kind.items():
                k = (_EVENT_TYPE.get(kind, kind.upper()), "", "", "", "", self.node_name)
                counts[k] = counts.get(k, 0) + n
            if not by_kind.keys().isdisjoint(_POLICY_HOOKS):
                self._count_policy(events, by_kind, False)
            return
        key = self._key_pods if pods else self._key_plain
        batch: dict[tuple[str, ...], int] = {}
        try:
            _count_elements(batch, map(key, events))
        except AttributeError:  # an event without a process (DictEvent): one by one
            batch = {}
            none = ("", "") if pods else ("",)
            _count_elements(batch, (key(e) if getattr(e, "process", None) is not None else (e.kind, *none)
                                    for e in events))
        for key_, n in batch.items():
            kind, binary = key_[0], key_[1] if self._binary else ""
            ns = wl = pod = ""
            if pods and key_[2]:
                ns, wl, pod = self._pod_labels(key_[2], events)
                ns, wl, pod = (ns if "namespace" in want else "", wl if "workload" in want else "",
                               pod if "pod" in want else "")
            k = (_EVENT_TYPE.get(kind, kind.upper()), ns, wl, pod, binary or "", self.node_name)
            counts[k] = counts.get(k, 0) + n
        kinds = {k[0] for k in batch}
        if not kinds.isdisjoint(_POLICY_HOOKS):
            self._count_policy(events, kinds, pods)
        if pods and "pod" in want:
            now = time.monotonic()
            if now >= self._next_prune:
                self._next_prune = now + 10.0
                self.prune(now)

    def _count_policy(self, events: list[Any], kinds: Iterable[str], pods: bool) -> None:
        """tetragon_policy_events_total of a batch: for each policy event kind in it, its events
        counted in C by (process key, policy and hook fields of the body)."""
        proc = self._proc_pods if pods else self._proc_plain if self._binary else None
        pc = self.policy_counts
        kinds = list(kinds)
        for kind in kinds:
            spec = _POLICY_HOOKS.get(kind)
            if spec is None:
                continue
            fields, fmt = spec
            # a batch of one kind (a busy hook's) is taken whole
            sel = events if len(kinds) == 1 else list(compress(events, map(kind.__eq__, map(self._key_kind, events))))
            batch: dict[tuple[Any, ...], int] = {}
            try:
                hooks: Iterable[Any] = list(map(_POLICY_GETTERS[kind], map(_body, sel)))
                _count_elements(batch, zip(map(proc, sel), hooks) if proc is not None else zip(hooks))
            except (KeyError, AttributeError):  # a body without a field (a uprobe at an offset): one by one
                none = ("", "") if pods else ""
                batch = {}
                _count_elements(batch, ((proc(e) if proc is not None and getattr(e, "process", None) is not None
                                         else none, tuple(getattr(e, "body", {}).get(f) or "" for f in fields))
                                        for e in sel))
            raw = False
            for key, n in batch.items():
                names = key[-1]
                raw = raw or (kind == "process_tracepoint" and names[1:] == _RAW_SYSCALL)
                if not names[0]:
                    continue  # Tetragon counts the events of a named policy
                k = (names[0], fmt.format(*names[1:]), *self._process_labels(key[0] if proc is not None else None,
                                                                            pods, sel))
                pc[k] = pc.get(k, 0) + n
            if raw:
                self._count_syscalls(sel, proc, pods)

    def _process_labels(self, pk: Any, pods: bool, events: list[Any]) -> tuple[str, str, str, str, str]:
        """(namespace, workload, pod, binary, node_name) of a process key (binary[, container id])."""
        want = self.labels
        ns = wl = pod = binary = ""
        if pk is not None:
            if pods:
                binary, cid = pk
                if cid:
                    ns, wl, pod = self._pod_labels(cid, events)
                    ns, wl, pod = (ns if "namespace" in want else "", wl if "workload" in want else "",
                                   pod if "pod" in want else "")
            else:
                binary = pk
            binary = (binary or "") if self._binary else ""
        return ns, wl, pod, binary, self.node_name

    def _count_syscalls(self, sel: list[Any], proc: Any, pods: bool) -> None:
        """tetragon_syscalls_total of a batch's tracepoint events: the raw_syscalls/sys_enter ones
        counted in C by (process key, syscall id and ABI), named per key."""
        batch: dict[tuple[Any, ...], int] = {}
        raw = sel
        try:
            raw = list(compress(sel, map(_RAW_SYSCALL.__eq__, map(_subsys_event, map(
                _POLICY_GETTERS["process_tracepoint"], map(_body, sel))))))
            ids: Iterable[Any] = list(map(_id_abi, map(_syscall_id, map(_first, map(_args, map(_body, raw))))))
            _count_elements(batch, zip(map(proc, raw), ids) if proc is not None else zip(ids))
        except (KeyError, IndexError, TypeError, AttributeError):  # the id not first, or none: one by one
            raw = [e for e in sel if _is_raw_syscall(e)]
            none = ("", "") if pods else ""
            batch = {}
            _count_elements(batch, ((proc(e) if proc is not None and getattr(e, "process", None) is not None
                                     else none, _syscall_id_of(e)) for e in raw))
        sc = self.syscall_counts
        for key, n in batch.items():
            name = _syscall_name(key[-1])
            if name:  # Tetragon counts the syscalls it can name
                k = (name, *self._process_labels(key[0] if proc is not None else None, pods, raw))
                sc[k] = sc.get(k, 0) + n

    def prune(self, now: float) -> None:
        """Drop the series of pods the node has not had for POD_GONE_SECONDS."""
        k8s = self._k8s()
        if k8s is None:
            return
        here = {(p.namespace, p.name) for p in k8s.store.pods()}
        seen = {(k[1], k[3]) for k in list(self.counts) if k[3]}
        seen |= {(k[2], k[4]) for k in list(self.policy_counts) if k[4]}
        seen |= {(k[1], k[3]) for k in list(self.syscall_counts) if k[3]}
        for pod in seen - here:
            since = self._gone.setdefault(pod, now)
            if now - since >= POD_GONE_SECONDS:
                self.counts = {k: v for k, v in self.counts.items() if (k[1], k[3]) != pod}
                self.policy_counts = {k: v for k, v in self.policy_counts.items() if (k[2], k[4]) != pod}
                self.syscall_counts = {k: v for k, v in self.syscall_counts.items() if (k[1], k[3]) != pod}
                del self._gone[pod]
        for pod in [p for p in self._gone if p in here or p not in seen]:
            del self._gone[pod]


def _unix_seconds(rfc3339: str) -> float:
    """Whole Unix seconds of an event's UTC time (2026-12-07T10:30:21.123456789Z); 0 when none."""
    try:
        return float(calendar.timegm(time.strptime(rfc3339[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return 0.0


class AgentCollector(Collector):
    def __init__(self, agent: Any, event_metrics: EventMetrics | None = None) -> None:
        self.agent = agent
        self.event_metrics = event_metrics

    def collect(self) -> Iterator[Any]:
        a = self.agent
        st = a.status()
        info = InfoMetricFamily("tetragon_build", "Build information")
        info.add_metric([], {"version": a.version, "commit": "", "go_version": "", "modified": "", "time": ""})
        yield info

        ev = CounterMetricFamily("tetragon_events", "Events observed, by type and process (--metrics-label-filter)",
                                 labels=["type", *PROCESS_LABELS])
        if self.event_metrics is not None:
            for key, n in list(self.event_metrics.counts.items()):
                ev.add_metric(list(key), n)
        else:
            for k, n in st["events"].items():
                ev.add_metric([_EVENT_TYPE.get(k, k.upper()), "", "", "", "", ""], n)
        yield ev

        # both from the policies' action counters (each action a selector took, counted where it
        # was taken; a posted event is one post), labelled as Tetragon does: hook = the hook as the
        # policy names it (kprobe:sys_openat), selector_index 0-based; an event no selector decided
        # has no selector counter
        by_hook: dict[tuple[str, str], int] = {}
        by_selector: dict[tuple[str, ...], int] = {}
        for pa in st.get("policy_actions", []):
            hk = (pa["policy"], pa["hook"])
            if pa["action"] == "post":
                by_hook[hk] = by_hook.get(hk, 0) + pa["count"]
            if pa["selector_index"] >= 0:
                sk = (pa["policy"], pa["namespace"], pa["hook"], str(pa["hook_index"]), str(pa["selector_index"]),
                      pa["selector_label"], pa["action"])
                by_selector[sk] = by_selector.get(sk, 0) + pa["count"]
        pol = CounterMetricFamily("tetragon_policy_events", "Policy events, by policy, hook and process "
                                  "(--metrics-label-filter)", labels=["policy", "hook", *PROCESS_LABELS])
        if self.event_metrics is not None:
            for key, n in list(self.event_metrics.policy_counts.items()):
                pol.add_metric(list(key), n)
        else:  # no event sink (a collector read directly): by the policies' counters
            for (policy, hook), n in by_hook.items():  # same-named policies of two namespaces: one series
                pol.add_metric([policy, hook, "", "", "", "", ""], n)
        yield pol

        sysc = CounterMetricFamily("tetragon_syscalls", "System calls observed (raw_syscalls/sys_enter events), "
                                   "by syscall and process (--metrics-label-filter)",
                                   labels=["syscall", *PROCESS_LABELS])
        if self.event_metrics is not None:
            for key, n in list(self.event_metrics.syscall_counts.items()):
                sysc.add_metric(list(key), n)
        yield sysc

        acts = CounterMetricFamily("tetragon_tracingpolicy_selector_actions",
                                   "Actions policy selectors took, by policy, hook, selector and action",
                                   labels=["policy", "policy_namespace", "hook", "hook_index", "selector_index",
                                           "selector_label", "action"])
        for labels, n in by_selector.items():
            acts.add_metric(list(labels), n)
        yield acts

        missed = CounterMetricFamily("tetragon_bpf_missed_events", "Records the kernel could not deliver",
                                     labels=["msg_op", "error"])
        map_errors = CounterMetricFamily("tetragon_map_errors_update", "Failed updates per BPF map", labels=["map"])
        delete_errors = CounterMetricFamily("tetragon_map_errors_delete", "Failed deletes per BPF map",
                                            labels=["map"])
        by_op: dict[tuple[str, str], int] = {}
        by_map: dict[str, int] = {}
        by_map_delete: dict[str, int] = dict.fromkeys(_MAP_DELETE_ERRORS.values(), 0)  # from 0, as Tetragon's
        for cause, n in st["lost"]["kernel"].items():
            if cause in _MAP_UPDATE_ERRORS:
                by_map[_MAP_UPDATE_ERRORS[cause]] = by_map.get(_MAP_UPDATE_ERRORS[cause], 0) + n
            elif cause in _MAP_DELETE_ERRORS:
                by_map_delete[_MAP_DELETE_ERRORS[cause]] += n
            else:
                key = _MISSED.get(cause, ("0", "unknown"))
                by_op[key] = by_op.get(key, 0) + n
        # and the deletes of the agent's own (policy filter, follow, netdeny maps) that failed
        for name, n in (st.get("map_delete_errors") or {}).items():
            by_map_delete[name] = by_map_delete.get(name, 0) + n
        for (op, err), n in by_op.items():
            missed.add_metric([op, err], n)
        for name, n in by_map.items():
            map_errors.add_metric([name], n)
        for name, n in by_map_delete.items():
            delete_errors.add_metric([name], n)
        yield missed
        yield map_errors
        yield delete_errors

        rb = st["ringbuf"]
        yield CounterMetricFamily("tetragon_observer_ringbuf_events_received", "Ring buffer records read",
                                  value=rb["records"])
        yield CounterMetricFamily("tetragon_observer_ringbuf_errors", "Discarded ring buffer records",
                                  value=rb["discarded"])
        yield GaugeMetricFamily("vigil_ringbuf_size_bytes", "Size of the kernel ring buffer", value=rb.get("size", 0))
        yield GaugeMetricFamily("vigil_ringbuf_peak_bytes", "Most bytes waiting in the ring buffer at one drain "
                                "(near the size: enlarge --rb-size)", value=rb.get("peak_bytes", 0))
        user = CounterMetricFamily("vigil_events_lost_userspace", "Events lost in user space, by cause",
                                   labels=["cause"])
        for cause, n in st["lost"]["user"].items():
            user.add_metric([cause], n)
        yield user

        exp = st["export"]
        yield CounterMetricFamily("tetragon_events_exported", "Events written to the export file",
                                  value=exp["events_written"])
        yield CounterMetricFamily("tetragon_events_exported_bytes", "Bytes written to the export file",
                                  value=exp["bytes_written"])
        failed = CounterMetricFamily("vigil_events_export_failed", "Events the export file could not take, by errno",
                                     labels=["error"])
        for err, n in exp.get("write_errors", {}).items():
            failed.add_metric([err], n)
        yield failed
        yield CounterMetricFamily("tetragon_export_ratelimit_events_dropped", "Events dropped by the export rate limit",
                                  value=exp["rate_limited"])
        yield GaugeMetricFamily("tetragon_events_last_exported_timestamp",
                                "Time (Unix seconds) of the most recent event written to the export file",
                                value=_unix_seconds(exp.get("last_event_time", "")))
        yield CounterMetricFamily("tetragon_events_missing_process_info",
                                  "Events sent without their process's info (not in the process cache)",
                                  value=st.get("events_missing_process_info", 0))
        handler = CounterMetricFamily("tetragon_handler_errors", "Kernel records the event handlers could not "
                                      "handle, by opcode and error", labels=["opcode", "error"])
        herr = {(str(op), "event_handler_failed"): 0 for op in st.get("handled_opcodes", ())}
        herr.update({("0", "unknown_opcode"): 0, ("0", "perf_empty_data"): 0})
        for h in st.get("handler_errors", ()):
            herr[(h["opcode"], h["error"])] = h["count"]
        for (op, err), n in herr.items():
            handler.add_metric([op, err], n)
        yield handler

        # kernel records by Tetragon's opcode (as tetragon_handler_errors_total's), every opcode
        # the agent handles from 0; the loader sensor's records (26) are its events received
        from vigil.agent.pipeline import LATENCY_BUCKETS_US

        msg_ops = CounterMetricFamily("tetragon_msg_op", "Kernel records received, by opcode", labels=["msg_op"])
        received = dict.fromkeys((str(op) for op in st.get("handled_opcodes", ())), 0)
        received.update(st.get("msg_ops") or {})
        received["26"] = received.get("26", 0) + (st.get("loader_stats") or {}).get("LoaderReceived", 0)
        for op, n in sorted(received.items(), key=lambda kv: int(kv[0])):
            msg_ops.add_metric([op], n)
        yield msg_ops
        # microseconds to handle a kernel record, by opcode, in Tetragon's buckets: each record
        # observed at its op's share of its batch's time per record (Pipeline._count_ops)
        latency = HistogramMetricFamily("tetragon_handling_latency", "Time to handle a kernel record (decode and "
                                        "hand to every consumer), in microseconds: its op's share of its batch's "
                                        "time (by sampled handler times), per record", labels=["op"])
        lat = st.get("handling_latency") or {}
        for op in sorted(set(lat) | {str(o) for o in st.get("handled_opcodes", ())}, key=int):
            h = lat.get(op) or {"buckets": [0] * (len(LATENCY_BUCKETS_US) + 1), "sum_us": 0.0}
            cum, buckets = 0, []
            for le, n in zip((*(f"{b:g}" for b in LATENCY_BUCKETS_US), "+Inf"), h["buckets"]):
                cum += n
                buckets.append((le, cum))
            latency.add_metric([op], buckets, h["sum_us"])
        yield latency

        grpc_st = st.get("grpc") or {}
        if "clients" in grpc_st:
            sent = CounterMetricFamily("vigil_grpc_events_sent", "Events sent to GetEvents clients, by client",
                                       labels=["peer"])
            dropped = CounterMetricFamily("vigil_grpc_events_dropped",
                                          "Events a GetEvents client lost (its queue full, skipped while every "
                                          "stream was full, overwritten in the ring before they were read), by "
                                          "client; counted before the stream's filters: for a filtered stream, "
                                          "an upper bound on the matching events it missed", labels=["peer"])
            for c in grpc_st["clients"]:
                sent.add_metric([c["peer"]], c["sent"])
                dropped.add_metric([c["peer"]], c["dropped"])
            yield sent
            yield dropped
            yield CounterMetricFamily("vigil_grpc_slow_client_drops",
                                      "Events dropped for slow GetEvents clients, ended streams included "
                                      "(counted before each stream's filters: see vigil_grpc_events_dropped)",
                                      value=grpc_st.get("events_dropped_slow_client", 0))
        # Tetragon's name for the same count (events a GetEvents listener's full buffer lost); 0
        # without a gRPC server, as Tetragon's
        yield CounterMetricFamily("tetragon_notify_overflowed_events",
                                  "Events dropped because a GetEvents listener's buffer was full",
                                  value=grpc_st.get("events_dropped_slow_client", 0))
        fw = grpc_st.get("forwarded_streams")
        if fw is not None:
            yield GaugeMetricFamily("vigil_grpc_forwarded_streams", "Streaming calls other than GetEvents (the health "
                                    "service's Watch) passed to the agent, open now", value=fw["active"])
            ended = CounterMetricFamily("vigil_grpc_forwarded_streams_ended",
                                        "Streaming calls other than GetEvents ended by a serving process with "
                                        "RESOURCE_EXHAUSTED, by reason (limit: too many open at once; slow_client: "
                                        "its client left more than the serving process holds unread)",
                                        labels=["reason"])
            ended.add_metric(["limit"], fw["refused"])
            ended.add_metric(["slow_client"], fw["ended_slow_client"])
            yield ended
        pc = st["process_cache"]
        yield GaugeMetricFamily("tetragon_process_cache_size", "Process cache entries", value=pc["size"])
        yield GaugeMetricFamily("tetragon_process_cache_capacity", "Process cache capacity", value=pc["capacity"])
        # as Tetragon's LRU counts them: every entry that left, removed by the GC or evicted for
        # space; the latter alone in _capacity_evictions
        yield CounterMetricFamily("tetragon_process_cache_evictions", "Entries that left the cache (removed by "
                                  "the GC, or evicted for space)", value=pc.get("removed", 0))
        yield CounterMetricFamily("tetragon_process_cache_capacity_evictions", "Entries evicted for space",
                                  value=pc["evictions"])
        # Tetragon's other operation, "remove" (the GC finds the entry gone), does not happen here:
        # an eviction takes the entry out of the GC's queue
        misses = CounterMetricFamily("tetragon_process_cache_misses", "Process cache misses: lookups of the "
                                     "process of an event that found none", labels=["operation"])
        misses.add_metric(["get"], pc["misses"])
        yield misses
        yield CounterMetricFamily("tetragon_process_cache_early_deletions",
                                  "Processes looked up after the GC had removed them (deleted too early)",
                                  value=pc.get("early_deletions", 0))

        # Tetragon's event cache holds events until their process's or pod's info is known; here
        # the Kubernetes stage's hold, for pods (entry_type pod_info): events it took in, holds
        # now, and let go without their pod once the wait was over
        # and the policy events held for their process's exec record (entry_type process_info) or
        # for their parent's (parent_info)
        held = (st.get("k8s") or {}).get("events") or {}
        ph = st.get("event_cache") or {}
        yield GaugeMetricFamily("tetragon_event_cache_entries", "Events waiting for their process's or pod's info",
                                value=held.get("held_now", 0) + ph.get("held_now", 0))
        yield CounterMetricFamily("tetragon_event_cache_inserts", "Events that waited for their process's or "
                                  "pod's info", value=held.get("held", 0) + ph.get("held", 0))
        failures = CounterMetricFamily("tetragon_event_cache_fetch_failures", "Events sent without the info "
                                       "they waited for (the wait was over)", labels=["entry_type"])
        failures.add_metric(["pod_info"], held.get("released_without_pod", 0))
        failures.add_metric(["process_info"], ph.get("given_up", 0))
        failures.add_metric(["parent_info"], ph.get("parent_given_up", 0))  # sent without the parent it named
        yield failures
        retries = CounterMetricFamily("tetragon_event_cache_fetch_retries", "Tries of a held event that did "
                                      "not find its process's info yet", labels=["entry_type"])
        retries.add_metric(["process_info"], ph.get("retries", 0))
        retries.add_metric(["parent_info"], ph.get("parent_retries", 0))
        yield retries
        # Tetragon's watcher metrics: pod info found for a process's container (at build, or once
        # its pod came), and containers no known pod has
        watched = CounterMetricFamily("tetragon_watcher_events", "Pod info found for a container's process",
                                      labels=["watcher"])
        watched.add_metric(["k8s"], held.get("enriched_at_build", 0) + held.get("released_enriched", 0))
        yield watched
        werr = CounterMetricFamily("tetragon_watcher_errors", "Processes of a container no known pod has",
                                   labels=["watcher", "error"])
        werr.add_metric(["k8s", "failed_to_get_pod"], held.get("container_without_pod", 0))
        yield werr

        # loader events by how their process was found; named as Tetragon's, a counter without
        # the _total suffix (the client here writes counters with it: sent untyped)
        loader = Metric("tetragon_process_loader_stats", "Process loader events (a counter): received, their "
                        "process found when first made, found after waiting for its exec record", "unknown")
        ls = st.get("loader_stats") or {}
        for what in ("LoaderReceived", "LoaderResolvedImm", "LoaderResolvedRetry"):
            loader.add_sample("tetragon_process_loader_stats", {"count": what}, ls.get(what, 0))
        yield loader

        # pods the policy filter handled (Tetragon's pod-handlers subsystem; Vigil has no OCI hook)
        pf_ops = CounterMetricFamily("tetragon_policyfilter_operations", "Pods the policy filter handled, by "
                                     "operation and error", labels=["subsys", "operation", "error"])
        ops = {(o, ""): 0 for o in ("add", "update", "delete")}
        for o in ((st.get("k8s") or {}).get("policy_filter") or {}).get("operations", ()):
            ops[(o["operation"], o["error"])] = o["count"]
        for (o, err), n in ops.items():
            pf_ops.add_metric(["pod-handlers", o, err], n)
        yield pf_ops

        dc = st.get("data_cache") or {}
        yield GaugeMetricFamily("tetragon_data_cache_size", "maxData chunks waiting for their events",
                                value=dc.get("size", 0))
        yield GaugeMetricFamily("tetragon_data_cache_capacity", "maxData chunks that can wait",
                                value=dc.get("capacity", 0))
        yield CounterMetricFamily("tetragon_data_cache_evictions", "maxData chunks dropped for room (their events "
                                  "never came)", value=dc.get("evictions", 0))
        dmiss = CounterMetricFamily("tetragon_data_cache_misses", "maxData lookups that found nothing: arguments "
                                    "whose chunks never came (dropped, or evicted)", labels=["operation"])
        dmiss.add_metric(["get"], dc.get("misses", 0))
        yield dmiss

        entries = GaugeMetricFamily("tetragon_map_entries", "BPF map entries in use", labels=["map"])
        capacity = GaugeMetricFamily("tetragon_map_capacity", "BPF map capacity", labels=["map"])
        for name, (used, cap) in st.get("maps", {}).items():
            entries.add_metric([name], used)
            capacity.add_metric([name], cap)
        yield entries
        yield capacity

        # every state Tetragon reports, 0 when no policy is in it (a policy is loaded whole or
        # refused here, but for uprobes skipped by binaryDigests: partially_enabled; error,
        # load_error and skipped stay 0)
        states = GaugeMetricFamily("tetragon_tracingpolicy_loaded", "Tracing policies by state", labels=["state"])
        counts: dict[str, int] = dict.fromkeys(("load_error", "error", "disabled", "enabled", "skipped",
                                                "partially_enabled"), 0)
        memory = GaugeMetricFamily("tetragon_tracingpolicy_kernel_memory_bytes",
                                   "Kernel memory (memlock) of the BPF maps of a policy's own sensors",
                                   labels=["policy", "policy_namespace"])
        for p in a.list_policies():
            s = str(p.get("state", "")).lower().removeprefix("tp_state_")
            counts[s] = counts.get(s, 0) + 1
            memory.add_metric([str(p.get("name", "")), str(p.get("namespace", ""))],
                              int(p.get("kernel_memory_bytes") or 0))
        for s, n in counts.items():
            states.add_metric([s], n)
        yield states
        yield memory

        # Tetragon's labels: policy_namespace, policy, sensor, attach, section (the program's ELF section)
        overhead = ["policy_namespace", "policy", "sensor", "attach", "section"]
        runs = CounterMetricFamily("tetragon_overhead_program_runs",
                                   "BPF program runs (needs kernel.bpf_stats_enabled)", labels=overhead)
        secs = CounterMetricFamily("tetragon_overhead_program_seconds",
                                   "BPF program run time (needs kernel.bpf_stats_enabled)", labels=overhead)
        # runs the kernel skipped because the program was already running on that CPU (its
        # recursion_misses), by policy and attach point as Tetragon's
        skipped: dict[tuple[str, str], int] = {}
        for p in st.get("programs", []):
            values = [p.get("namespace", ""), p["policy"], p["sensor"], p["attach"], p.get("section", "")]
            runs.add_metric(values, p["run_cnt"])
            secs.add_metric(values, p["run_time_ns"] / 1e9)
            key = (p["policy"], p["attach"])
            skipped[key] = skipped.get(key, 0) + int(p.get("recursion_misses", 0))
        yield runs
        yield secs
        prog_missed = CounterMetricFamily("tetragon_missed_prog_probes", "Program runs the kernel skipped (the "
                                          "program was already running on that CPU)", labels=["policy", "attach"])
        for (policy, attach), n in skipped.items():
            prog_missed.add_metric([policy, attach], n)
        yield prog_missed
        # probe hits whose program the kernel did not run (another kprobe was running on that
        # CPU), from each kprobe link's info, summed by policy and attach point as Tetragon's; no
        # series for links the kernel does not report it for (no such field in its BTF's struct
        # bpf_link_info: before 6.7 without a backport; tracepoints, trampolines)
        link_missed = CounterMetricFamily("tetragon_missed_link_probes", "Probe hits the kernel did not run the "
                                          "program for, by policy and attach point (kprobe links, kernel 6.7+ "
                                          "or a backport)",
                                          labels=["policy", "attach"])
        by_link: dict[tuple[str, str], int] = {}
        for ln in st.get("links", ()):
            key = (ln["policy"], ln["attach"])
            by_link[key] = by_link.get(key, 0) + int(ln["missed"])
        for (policy, attach), n in by_link.items():
            link_missed.add_metric([policy, attach], n)
        yield link_missed

        # the native exec/open permission helper (fanotify Override without BPF LSM), as `vigil
        # status` shows it (permission_helper); no series while it does not run
        ph = st.get("permission_helper") or {}
        if ph:
            answers = CounterMetricFamily("vigil_permission_helper_answers", "Exec/open permissions the native "
                                          "helper answered, by answer", labels=["answer"])
            answers.add_metric(["allowed"], ph.get("allowed", 0))
            answers.add_metric(["denied"], ph.get("denied", 0))
            yield answers
            by_default = CounterMetricFamily("vigil_permission_helper_default_answers", "Exec/open permissions "
                                             "answered by --permission-default, by why: not decided by the "
                                             "deadline (timeout), or read while a decision was stuck (rescued)",
                                             labels=["reason"])
            by_default.add_metric(["timeout"], ph.get("timeouts", 0))
            by_default.add_metric(["rescued"], ph.get("rescued", 0))
            yield by_default
            yield CounterMetricFamily("vigil_permission_helper_reports_dropped", "Reports of answered exec/open "
                                      "permissions the helper dropped because the agent was not reading them (the "
                                      "answers were given; their policy events are lost)",
                                      value=ph.get("reports_dropped", 0))
            yield CounterMetricFamily("vigil_permission_helper_restarts", "Times the agent restarted the "
                                      "permission helper after it died", value=ph.get("restarts", 0))


class MetricsFrontend:
    def __init__(self, agent: Any, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"--metrics-server {address!r}: expected [host]:port")
        self.host = host or "0.0.0.0"
        self.port = int(port)
        self.registry = CollectorRegistry(auto_describe=False)
        # the event counts by process: a sink of the event loop from now on (before the agent
        # starts: no event goes uncounted)
        a = getattr(agent, "agent", None)  # the Agent behind the AgentControl
        self.events: EventMetrics | None = None
        if a is not None:
            cfg = a.config
            self.events = EventMetrics(parse_label_filter(getattr(cfg, "metrics_label_filter", DEFAULT_LABEL_FILTER)),
                                       cfg.node_name, k8s=lambda: a.k8s)
            a.pipeline.sinks.append(self.events)
        self._agent = a
        self.registry.register(AgentCollector(agent, self.events))
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as e:  # ("[Errno 98] Address already in use" named neither the option nor the address)
            raise ValueError(f"--metrics-server {self.host}:{self.port}: cannot listen: {e.strerror or e}") from None
        self.port = self._server.server_port
        log.info("metrics at http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self.events is not None and self._agent is not None and self.events in self._agent.pipeline.sinks:
            self._agent.pipeline.sinks.remove(self.events)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __repr__(self) -> str:
        return f"<metrics {self.host}:{self.port}>"
