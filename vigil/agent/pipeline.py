"""The event loop: kernel records -> events -> every consumer, on one thread.

Records are decoded through a table keyed by record op; events go to the live bus
(gRPC streams), the export filter, the JSON file, the printer and the extra sinks.
Events made on other threads (fanotify decisions, loader events, pods that arrived)
are queued with inject() and emitted by the loop, so consumers only ever see one
thread. The parts the agent starts later (sensor, k8s stage, front ends) are read
through the agent when used.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from array import array
from bisect import bisect_left
from collections import _count_elements, deque  # type: ignore[attr-defined]
from collections.abc import Callable
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

from vigil.core import native
from vigil.core.bus import EventBus
from vigil.core.events import Event
from vigil.core.heap import release_free_heap
from vigil.events import records as R
from vigil.events.source import EventSource
from vigil.kernel.errors import BpfError

if TYPE_CHECKING:
    from vigil.agent.agent import Agent
    from vigil.agent.config import AgentConfig
    from vigil.export.event_filter import EventFilter
    from vigil.export.jsonl import JsonlWriter

log = logging.getLogger("vigil.agent")

Handler = Callable[[bytes, int], "Event | None"]
_kind = attrgetter("kind")
_BAD_RECORD = (R.DecodeError, ValueError, IndexError)  # a record the loop skips, counted
# record op -> Tetragon's opcode of the same record (tetragon_handler_errors_total's label;
# policy records of every hook kind are its generic kprobe's, as in tetragon_bpf_missed_events)
TETRAGON_OPCODE = {R.OP_EXEC: "5", R.OP_CLONE: "23", R.OP_EXIT: "7", R.OP_GENERIC: "13", R.OP_NETDENY: "13",
                   R.OP_DATA: "24"}
# tetragon_handling_latency's buckets (microseconds), as Tetragon's: 50us, 100us, 500us, 1ms, 10ms, 100ms
LATENCY_BUCKETS_US = (50.0, 100.0, 500.0, 1000.0, 10000.0, 100000.0)
# one handler call in about this many records is timed (Pipeline.samples), for each op's share of
# its batch's handling time (_count_ops); slots of the samples array, as native/fastpath.c's
SAMPLE_EVERY = 64
_S_EVERY, _S_LEFT, _S_RNG, _S_SLOTS = 512, 513, 514, 515
_SAMPLES_KEPT = 4096  # an op's samples past this many are halved: its estimate follows a change
_op_of = itemgetter(0)  # a record's op: its first byte
# a policy hook's kernel counters (vigil.sensors.generic.STATS) of hits whose record was not
# made -> their cause in `vigil status` lost.kernel (tetragon_bpf_missed_events, msg_op 13):
# busy, a run that found its CPU's buffers in use by a run it preempted (nothing done);
# pending_full, an entry the hook could not keep for its return (the pending map was full)
_HOOK_DROPS = {"busy": "generic_busy", "pending_full": "generic_pending_full"}
_TRIM_MIN_DROP = 4096  # cached processes gone before the heap is trimmed (5 ms per 250 MB heap)


class Pipeline:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.bus = EventBus()
        self.handlers: dict[int, Handler] = {}
        self.sinks: list[Callable[[list[Event]], None]] = []  # more consumers of every batch (gRPC ring)
        self.export_filter: EventFilter | None = None
        self.writer: JsonlWriter | None = None
        self.printer: Callable[[list[Event]], None] | None = None
        self._injected: deque[Event] = deque()
        # events made later, on this thread: (loop step when queued, the function making it)
        self._later: deque[tuple[int, Callable[[], Event | None]]] = deque()
        self.steps = 0  # loop iterations done (each waited for or drained the kernel's records)
        # what `vigil status` and the metrics report
        self.events_by_type: dict[str, int] = {}
        self.decode_errors = 0
        self.handler_errors: dict[tuple[str, str], int] = {}  # (opcode, error) -> records skipped
        self.kernel_drops: dict[str, int] = {}
        # tetragon_msg_op_total: kernel records read, by record op (-1: an empty record)
        self.msg_ops: dict[int, int] = {}
        # tetragon_handling_latency: record op -> [count per bucket of LATENCY_BUCKETS_US, then
        # +Inf], and the sum of the observations in microseconds (see _count_ops)
        self.latency: dict[int, tuple[list[int], list[float]]] = {}
        # handler calls timed, by record op: [op] ns, [256 + op] calls, then the sampling state
        # (every, records left to the next, xorshift state), as native/fastpath.c reads it
        self.samples = array("q", bytes(8 * _S_SLOTS))
        self.samples[_S_EVERY], self.samples[_S_LEFT], self.samples[_S_RNG] = SAMPLE_EVERY, 1, 0x9E3779B97F4A7C15 >> 1
        self.user_drops: dict[str, int] = {}
        # hits of the policies' hooks whose records the kernel could not make, by cause (the
        # hooks' busy and pending_full counters: see _policy_drops), summed over every hook
        # the agent has had (a deleted policy's stay counted); the last seen of each hook
        self.policy_kernel_drops: dict[str, int] = dict.fromkeys(_HOOK_DROPS.values(), 0)
        self._hook_seen: dict[int, tuple[Any, dict[str, int]]] = {}  # id(hook) -> (hook, its counters)
        self._drops_lock = threading.Lock()  # the stats tick and a policy's deletion (another thread)
        self.cache_peak = 0  # the cache's largest size since the heap was last trimmed
        self.heap_trims = 0
        # policy events of a process the cache does not have yet (vigil.process.hold)
        self.hold = getattr(getattr(agent, "builder", None), "hold", None)
        self.sched = LoopScheduling(0, batch=False)  # run() sets the loop's own

    # -- outputs, opened by Agent.start
    def open_outputs(self, c: AgentConfig) -> None:
        from vigil.export.event_filter import EventFilter
        from vigil.export.filters import FilterOptions

        self.export_filter = EventFilter.from_config(
            allowlist=c.export_allowlist, denylist=c.export_denylist, field_filters=c.field_filters,
            redaction_filters=c.redaction_filters, rate_limit=c.export_rate_limit, node_name=c.node_name,
            options=FilterOptions.of(c, export=True),
        )
        if c.export_filename:
            from vigil.export.jsonl import JsonlWriter

            self.writer = JsonlWriter(
                c.export_filename, max_size_mb=c.export_file_max_size_mb,
                max_backups=c.export_file_max_backups, compress=c.export_file_compress,
                perm=c.export_file_perm, rotation_interval=c.export_file_rotation_interval,
            )
        if c.print_events:
            self.printer = _make_printer(c.print_events)

    def close_outputs(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # -- the loop
    def run(self, src: EventSource, stop: threading.Event, live: bool) -> None:
        """Drain, decode and emit until stop is set (or a replay is over)."""
        self.sched = LoopScheduling(self.agent.config.event_loop_priority_boost, batch=live)
        self.sched.start()
        try:
            self._loop(src, stop, live)
        finally:
            self.sched.stop()

    def _loop(self, src: EventSource, stop: threading.Event, live: bool) -> None:
        a = self.agent
        next_tick = 0.0
        coalesce = a.config.batch_delay
        waited = False  # records accumulated during a pause: drain without asking epoll first
        while not stop.is_set():
            if self._injected or self._later:
                self._emit_injected()
            if self.hold is not None and self.hold.held and (done := self.hold.retry(time.monotonic_ns(), self.steps)):
                self.emit(done)
            if waited or src.wait(0.1):
                waited = False
                recs = src.drain()
                self.sched.drained(len(recs))
                if recs:
                    self.handle(recs)
                    # a small batch means we woke for nearly every record: let records
                    # accumulate a moment instead (bounded added latency, far fewer wakeups)
                    if coalesce and live and len(recs) < 256:
                        time.sleep(coalesce)
                        waited = True
            elif not live and getattr(src, "exhausted", False):
                break  # a replay is over
            self.steps += 1
            now = time.monotonic()
            if now >= next_tick:
                self.tick()
                next_tick = now + a.config.stats_interval
        # last drain so records committed before the stop are not lost
        recs = src.drain()
        if recs:
            self.handle(recs)
        self.steps += 2
        self._emit_injected()
        if self.hold is not None and self.hold.held:  # what still waits for its process: sent as it is
            self.emit(self.hold.retry(time.monotonic_ns(), self.steps, final=True))
        if a.k8s is not None:
            self.emit(a.k8s.hold.flush(), hold=False)
        self.tick()

    def _trim_heap_after_shrink(self, size: int) -> None:
        """Once the cache has lost half of its peak (and thousands of processes), hand the
        freed heap back: once per shrink, never while a churn at capacity reuses it."""
        if size > self.cache_peak:
            self.cache_peak = size
        elif self.cache_peak - size >= _TRIM_MIN_DROP and size <= self.cache_peak // 2:
            if release_free_heap():
                self.heap_trims += 1
            self.cache_peak = size

    def inject(self, event: Event | Callable[[], Event | None]) -> None:
        """Queue an event made outside the pipeline thread (fanotify decisions). A function
        instead makes its event on this thread once the records the kernel had committed when
        it was queued are handled: an event seen elsewhere first (a library mapped, reported by
        perf) names a process whose exec record may still wait in the ring."""
        if callable(event):
            self._later.append((self.steps, event))
        else:
            self._injected.append(event)

    def _emit_injected(self) -> None:
        batch = []
        while self._injected:
            batch.append(self._injected.popleft())
        # queued during step n (whose drain may have begun before): step n + 1 drained after it
        later, done = self._later, self.steps - 2
        while later and later[0][0] <= done:
            try:
                e = later.popleft()[1]()
            except Exception:  # one bad event must not stop the loop: lost, counted
                log.exception("making an injected event")
                self.user_drops["injected_failed"] = self.user_drops.get("injected_failed", 0) + 1
                continue
            if e is not None:
                batch.append(e)
        if batch:
            self.emit(batch, hold=False)

    def handle(self, recs: list[bytes]) -> None:
        """Records -> events: one table lookup per record (decoders registered by record op),
        events emitted in batches of 256 (CPU caches, fewer GC promotions)."""
        now = time.monotonic_ns()
        errors: list[tuple[int, int, str | None]] = []
        if native.fast is not None and type(recs) is list:
            native.fast.handle_records(recs, self.handlers, now, self.emit, errors, _BAD_RECORD, self.samples)
        else:
            self.py_handle(recs, now, errors, self.samples)
        self._count_ops(recs, time.monotonic_ns() - now)
        for op, n, msg in errors:
            self.decode_errors += 1
            # tetragon_handler_errors_total{opcode, error}: Tetragon's opcode of the record
            # (an unknown one: its number) and error
            key = (("0", "perf_empty_data") if op < 0 else (str(op), "unknown_opcode") if msg is None
                   else (TETRAGON_OPCODE.get(op, str(op)), "event_handler_failed"))
            self.handler_errors[key] = self.handler_errors.get(key, 0) + 1
            if self.decode_errors <= 10:
                log.warning("bad kernel record (op %s, %d bytes): %s", op, n, msg or "no handler")

    def _count_ops(self, recs: list[bytes], elapsed_ns: int) -> None:
        """tetragon_msg_op_total and tetragon_handling_latency of a handled batch. Tetragon counts
        each record by its op and times each one's handling (decode and hand-off to the
        listeners) alone. Here a batch is handled at once (decode, emit to every consumer), and
        timing each record would add two clock reads per record to the loop's hot path.
        Instead the batch is timed once, and one handler call in about SAMPLE_EVERY records
        is timed by the loop (self.samples, by op): the batch's time is shared among its ops
        in proportion to their records and their mean sampled handler time, and each record
        is one observation of its op's share per record. A batch is records of the rings
        merged in kernel-time order (clone, exec, exit, policy records interleaved), so ops
        are not timed in runs. An op with no sample yet is given the mean of the batch's
        sampled ops; with none, every op the batch's mean time per record. So a histogram's
        count is the records of its op, as msg_op_total's, the sums of a batch's ops its
        measured time, and a costly op's records are in its own buckets, not the batch's mean.
        Compiled (native/fastpath.c count_ops): a few C calls per pass instead of ~17 us of
        bytecode on a live exec loop; py_count_ops is its reference (the same values)."""
        if native.fast is not None and type(recs) is list:
            native.fast.count_ops(recs, elapsed_ns, getattr(self, "samples", None), self.msg_ops, self.latency,
                                  LATENCY_BUCKETS_US, _SAMPLES_KEPT)
        else:
            self.py_count_ops(recs, elapsed_ns)

    def py_count_ops(self, recs: list[bytes], elapsed_ns: int) -> None:
        """The reference of the compiled count_ops (see _count_ops)."""
        n = len(recs)
        if not n:
            return
        batch: dict[int, int] = {}
        try:
            _count_elements(batch, map(_op_of, recs))
        except IndexError:  # an empty record (no op): one by one
            batch = {}
            _count_elements(batch, (r[0] if len(r) else -1 for r in recs))
        elapsed_us = elapsed_ns / 1000.0
        unit = _unit_costs(getattr(self, "samples", None), batch)
        weight = sum(unit[op] * k for op, k in batch.items())
        ops, lat = self.msg_ops, self.latency
        for op, k in batch.items():
            ops[op] = ops.get(op, 0) + k
            h = lat.get(op)
            if h is None:
                h = lat[op] = ([0] * (len(LATENCY_BUCKETS_US) + 1), [0.0])
            per_us = elapsed_us * unit[op] / weight if weight > 0 else elapsed_us / n
            h[0][bisect_left(LATENCY_BUCKETS_US, per_us)] += k  # the first bucket whose bound (le) holds it
            h[1][0] += per_us * k

    def py_handle(self, recs: list[bytes], now: int, errors: list[tuple[int, int, str | None]],
                  samples: array[int] | None = None) -> None:
        """The reference of the compiled loop (native/fastpath.c, handle_records)."""
        handlers = self.handlers
        out: list[Event] = []
        append = out.append
        for buf in recs:
            op = buf[0] if buf else -1
            h = handlers.get(op)
            if h is None:
                errors.append((op, len(buf), None))
                continue
            timed = 0
            if samples is not None:
                samples[_S_LEFT] -= 1
                if samples[_S_LEFT] <= 0:
                    samples[_S_LEFT] = _sample_gap(samples)
                    timed = time.monotonic_ns()
            try:
                e = h(buf, now)
            except _BAD_RECORD as ex:
                errors.append((op, len(buf), str(ex)))
                continue
            finally:
                if timed:
                    samples[op] += time.monotonic_ns() - timed  # type: ignore[index]
                    samples[256 + op] += 1  # type: ignore[index]
            if e is not None:
                append(e)
            if len(out) >= 256:
                self.emit(out)
                out = []
                append = out.append
        if out:
            self.emit(out)

    def emit(self, events: list[Event], hold: bool = True) -> None:
        if hold and self.hold is not None and (self.hold.pending or self.hold.pending_parents or self.hold.waiting):
            events = self.hold.take(events, time.monotonic_ns(), self.steps)
        k8s = self.agent.k8s
        if hold and k8s is not None:
            events = k8s.filter_events(events)  # events waiting for their pod stay behind
        _count_elements(self.events_by_type, map(_kind, events))  # Counter's C loop, no per-event bytecode
        self.bus.publish(events)
        exported = self.export_filter.apply_batch(events) if self.export_filter else events
        if self.writer is not None and exported:
            self.writer.write_batch(exported)
        if self.printer is not None and exported:
            self.printer(exported)
        for sink in self.sinks:
            sink(events)

    def _policy_drops(self) -> None:
        """Fold the policies' hooks' busy and pending_full counters into policy_kernel_drops:
        what each hook counted since it was last read (a hook read before keeps its count
        when its policy goes)."""
        pols = getattr(getattr(self.agent, "policies", None), "policies", None)
        if pols is None:
            return
        with self._drops_lock:  # not while a deletion reads its hooks (policy_hooks_closing)
            seen_now = {}
            for lp in list(pols.values()):
                for gh in list(lp.hooks):
                    now = self._hook_drops(lp.name, gh)
                    if now is not None:
                        seen_now[id(gh)] = (gh, now)
            self._hook_seen = seen_now

    def policy_hooks_closing(self, name: str, hooks: list[Any]) -> None:
        """A policy's hooks, detached (no more hits), are about to be closed (PolicyManager
        delete): fold what they counted since the last stats tick, which would be lost with
        them, and list it as lost.kernel at once."""
        with self._drops_lock:
            for gh in hooks:  # (still seen: a tick before they close reads the same counts)
                self._hook_drops(name, gh)
            self.kernel_drops = {**self.kernel_drops, **{k: n for k, n in self.policy_kernel_drops.items() if n}}

    def _hook_drops(self, name: str, gh: Any) -> dict[str, int] | None:
        """Fold a hook's busy and pending_full counts since it was last read; its counts now
        (None: it cannot be read, its policy deleted meanwhile)."""
        try:
            st = gh.stats()
        except (OSError, BpfError):
            return None
        totals = self.policy_kernel_drops
        now = {k: int(st.get(k, 0)) for k in _HOOK_DROPS}
        seen = self._hook_seen.get(id(gh))
        last = seen[1] if seen is not None and seen[0] is gh else dict.fromkeys(_HOOK_DROPS, 0)
        for k, cause in _HOOK_DROPS.items():
            if now[k] > last[k]:
                n = now[k] - last[k]
                totals[cause] += n
                log.warning("policy %s: the kernel could not make %d records (%s); %d in total",
                            name, n, cause, totals[cause])
        self._hook_seen[id(gh)] = (gh, now)
        return now

    def tick(self) -> None:
        """Every --stats-interval: cache GC, k8s hold, export rate report, drop counters."""
        a = self.agent
        now = time.monotonic_ns()
        a.cache.gc(now)
        self._trim_heap_after_shrink(len(a.cache))
        if a.k8s is not None:
            a.k8s.tick()
        if self.export_filter is not None:
            rep = self.export_filter.poll_report()
            if rep is not None and self.writer is not None:
                self.writer.write_batch([rep])
        if a.sensor is not None:
            drops = a.sensor.drops()
            for cause, n in drops.items():
                prev = self.kernel_drops.get(cause, 0)
                if n > prev and cause != "execve_map_delete":  # a failed delete loses no record
                    log.warning("kernel could not deliver %d records (%s); %d in total", n - prev, cause, n)
            self.kernel_drops = drops
        self._policy_drops()
        self.kernel_drops = {**self.kernel_drops, **{k: n for k, n in self.policy_kernel_drops.items() if n}}
        for fe in a.frontends:
            fe_tick = getattr(fe, "tick", None)
            if fe_tick is not None:
                fe_tick()
        lost = self.bus.dropped_total
        if lost and lost != self.user_drops.get("slow_subscriber"):
            self.user_drops["slow_subscriber"] = lost


def _unit_costs(s: array[int] | None, batch: dict[int, int]) -> dict[int, float]:
    """Mean sampled handler ns of each op of a batch (Pipeline._count_ops); an op without a
    sample: the mean of the others; 1.0 each when none has one."""
    out: dict[int, float] = {}
    for op in batch:
        if s is not None and 0 <= op < 256 and s[256 + op] > 0:
            if s[256 + op] > _SAMPLES_KEPT:
                s[op] //= 2
                s[256 + op] //= 2
            out[op] = max(s[op], 1) / s[256 + op]
    if len(out) < len(batch):
        mean = sum(out.values()) / len(out) if out else 1.0
        for op in batch:
            out.setdefault(op, mean)
    return out


def _sample_gap(s: array[int]) -> int:
    """Records to the next timed handler call: SAMPLE_EVERY/2 .. 3*SAMPLE_EVERY/2 by a xorshift
    (native/fastpath.c's sample_gap), so ops interleaved with a period are all sampled."""
    m = (1 << 64) - 1
    x = (s[_S_RNG] & m) | 1
    x ^= (x << 13) & m
    x ^= x >> 7
    x ^= (x << 17) & m
    s[_S_RNG] = x - (1 << 64) if x >= 1 << 63 else x
    every = s[_S_EVERY] if s[_S_EVERY] > 0 else 1
    return every // 2 + x % every + 1


def batch_scheduling() -> bool:
    """Put the calling thread (the event loop) in SCHED_BATCH: it keeps its CPU share, but
    its wakeups never preempt the task running on that CPU (the fair class skips wakeup
    preemption for non-SCHED_NORMAL tasks), so the agent waking for a batch of records does
    not cut into the workload it observes. Records wait in the ring meanwhile; the permission
    helper and the API process are other processes and keep SCHED_NORMAL."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # 0: this thread (Linux)
    except (OSError, AttributeError) as e:
        log.debug("SCHED_BATCH not set for the event loop: %s", e)
        return False
    return True


def boost_priority(steps: int) -> int | None:
    """Raise the calling thread's (the event loop's) priority `steps` nice levels above the
    nice it has, as auditd's priority_boost does (default 4 there and here): on a host where
    other processes want every CPU -- gRPC clients decoding what the agent streams, a build --
    the loop keeps the CPU share that keeps the kernel rings from filling. It adds no work, only
    decides who waits when the CPUs are all taken: the agent's CPU per event is the same.
    Measured (bench/grpc_throughput.py, 2 CPUs, one Go client decoding every event it is sent):
    the export kept 0.82 of its rate alone without the boost, 0.87 with it. Returns the nice
    before, for restore_priority(); None when nothing changed (0 steps, or not permitted: needs
    CAP_SYS_NICE)."""
    global _unboosted
    if steps <= 0:
        return None
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)  # a thread id: this thread only (Linux)
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, before - steps))
    except OSError as e:
        log.info("the event loop's priority is not raised (--event-loop-priority-boost): %s", e)
        return None
    _unboosted = before
    return before


_unboosted: int | None = None   # the nice the event loop had before boost_priority


def restore_priority(nice: int) -> None:
    """The calling thread back to `nice` (a replay's loop runs on its caller's thread)."""
    global _unboosted
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as e:
        log.debug("the event loop's priority is not restored: %s", e)
    _unboosted = None


def unboost_this_thread() -> None:
    """A thread the event loop started inherits its raised nice, and so would every process it
    starts: those that are not the loop's work (a gRPC serving process started again) call
    this first, to run at the agent's own."""
    nice = _unboosted
    if nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as e:
            log.debug("priority not restored for %s: %s", threading.current_thread().name, e)


# A drain of at least BACKLOG_RECORDS records: they piled up while the loop worked (it is
# behind). One of fewer than CAUGHT_UP_RECORDS: it keeps up (the loop pauses after such a
# drain to let records accumulate, see _loop). In between: as it was.
BACKLOG_RECORDS = 1024
CAUGHT_UP_RECORDS = 256
BACKLOG_BOOST = 10   # nice levels above the agent's own while behind (at least the configured boost)


class LoopScheduling:
    """The event loop's scheduling, by how far behind the kernel it is (one comparison per
    drain; a system call only when that changes).

    Keeping up (small drains: low rates), the live loop runs SCHED_BATCH, `boost` nice levels
    up (batch_scheduling, boost_priority): its wakeups do not cut into the workload it observes.
    Behind (a large drain), it runs SCHED_NORMAL, BACKLOG_BOOST nice levels up: by then it does
    not sleep between drains, and its CPU share, not its wakeups, is what keeps the rings from
    filling. At 4 levels its weight (2501) is half that of 5 busy nice-0 tasks (4 GetEvents
    clients and the serving process, 5 x 1024): on 2 CPUs that bounds it to ~0.66 of a CPU.
    bench/grpc_throughput.py lost the export's rate to waiting for a CPU alone (its CPU time
    the same as alone); at 10 levels (weight 9548) the loop waited 0.03-0.15 s instead of
    0.2-0.8 s with one Go client, 0.06-0.6 s instead of 0.37-0.63 s with four, and the clients'
    share of the CPUs while it waited halved (perf sched). Both back once a drain is small
    again: an exec loop (bench/exec_overhead.py) never leaves SCHED_BATCH. A replay (`batch`
    False) only changes its nice; a boost of 0, or
    none permitted, leaves the nice alone."""

    __slots__ = ("boost", "batch", "base", "behind")

    def __init__(self, boost: int, batch: bool) -> None:
        self.boost, self.batch = boost, batch
        self.base: int | None = None  # the thread's nice before start(); None: not raised
        self.behind = False

    def start(self) -> None:
        """On the loop's thread, before its first drain."""
        if self.batch:
            self.batch = batch_scheduling()
        self.base = boost_priority(self.boost)

    def drained(self, n: int) -> None:
        """A drain took `n` records."""
        if n >= BACKLOG_RECORDS:
            if not self.behind:
                self._set(True)
        elif n < CAUGHT_UP_RECORDS and self.behind:
            self._set(False)

    def _set(self, behind: bool) -> None:
        self.behind = behind
        try:
            if self.batch:
                os.sched_setscheduler(0, os.SCHED_OTHER if behind else os.SCHED_BATCH, os.sched_param(0))
            if self.base is not None:
                steps = max(self.boost, BACKLOG_BOOST) if behind else self.boost
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), max(-20, self.base - steps))
        except OSError as e:
            log.debug("the event loop's scheduling is not changed: %s", e)

    def stop(self) -> None:
        """The thread's nice back (a replay's loop runs on its caller's thread)."""
        if self.base is not None:
            restore_priority(self.base)
            self.base = None
        self.behind = False


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
