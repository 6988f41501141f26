"""Policy records -> events.

The event loop hands over the records of policy hooks (generic, net-deny, maxData
chunks); the fanotify helper and the loader sensor report from their own threads and
have their events injected into the loop. Policy control (vigil.agent.policies) owns
the hook table and the LoadedPolicy counters: this side only reads the table and counts
into the policies it finds there.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vigil.core.events import Event, PolicyEvent, ProcessMsg, missing_process
from vigil.events import generic as G
from vigil.events.generic import decode_generic
from vigil.kernel import policy_layout as L
from vigil.sensors import generic_events

if TYPE_CHECKING:
    from vigil.agent.policies import LoadedPolicy
    from vigil.policy.compile import CompiledHook
    from vigil.process.build import EventBuilder
    from vigil.process.model import Process
    from vigil.sensors.user_actions import UserActions


DATA_CAPACITY = 4096  # maxData chunks waiting for their events (Tetragon's data cache); the oldest go first
_LOADER_TRIES = 16  # loop steps x2 a loader event waits for its process's exec record
_GONE_SCAN = 4096   # the newest ended processes a loader event looks for its process among


class PolicyEvents:
    def __init__(self, builder: EventBuilder, inject: Callable[[Event | Callable[[], Event | None]], None],
                 hooks: dict[int, tuple[CompiledHook, LoadedPolicy]], user_actions: UserActions) -> None:
        self.builder = builder
        self.inject = inject                # events made off the pipeline thread go through the loop
        self.hooks = hooks                  # PolicyManager's table: hook id -> (hook, its policy)
        self.user_actions = user_actions    # GetUrl / DnsLookup actions run here, owned by PolicyManager
        # maxData chunks wait here for their event: (event ktime, tid, slot) -> [(offset, bytes)]
        self._data: dict[tuple[int, int, int], list[tuple[int, bytes]]] = {}
        self.data_orphans = 0
        # arguments whose maxData chunks were not there when their event came (dropped, or
        # evicted): Tetragon's tetragon_data_cache_misses_total{operation="get"}
        self.data_misses: dict[str, int] = {"get": 0}
        # loader events by how their process was found (Tetragon's tetragon_process_loader_stats):
        # reported by the sensor, found when first made, found after waiting for its exec record
        self.loader_stats = dict.fromkeys(("LoaderReceived", "LoaderResolvedImm", "LoaderResolvedRetry"), 0)
        # pid -> its execve_map key (pid, ktime) in the kernel now; set by the agent
        self.exec_key: Callable[[int], tuple[int, int] | None] | None = None

    def processes(self, pid: int, exec_ktime: int = 0, *, kernel: bool = True,
                  unknown: bool = False, keyed: bool = False) -> tuple[ProcessMsg, ProcessMsg | None]:
        """(see _processes) The messages of the process and of its parent."""
        process, parent = self._processes(pid, exec_ktime, kernel, unknown, keyed)
        return process, parent.msg if parent is not None else None

    def lineage(self, kind: str, pid: int, exec_ktime: int = 0, *, kernel: bool = True, unknown: bool = False,
                keyed: bool = False) -> tuple[ProcessMsg, ProcessMsg | None, tuple[ProcessMsg, ...]]:
        """processes(), and the ancestors beyond the parent an event of `kind` lists (when
        --enable-ancestors names its type; a held event gets them when released)."""
        process, parent = self._processes(pid, exec_ktime, kernel, unknown, keyed)
        if parent is None:
            return process, None, ()
        return process, parent.msg, self.builder.policy_ancestors(kind, parent)

    def _processes(self, pid: int, exec_ktime: int, kernel: bool, unknown: bool,
                   keyed: bool) -> tuple[ProcessMsg, Process | None]:
        """The message of the process a record names (by the kernel's key when `kernel`: a
        record of a kernel hook; `unknown`: the kernel had no entry for it), and its parent's.
        A kernel hook's exec key (a ktime, not `unknown`) names one image: that one or none (its
        exec record may be behind: the event is held), never another image of the pid, as
        Tetragon looks its exec_id up; so does a report's key read from execve_map (`keyed`: a
        loader event's; not held). By pid: no key (reports of other threads, a loader event whose
        key was not read), or `unknown` (its ktime is the thread group leader's start, not an
        exec's: the cache knows it by its exec, if at all)."""
        cache = self.builder.cache
        by_key = cache._by_key  # by (pid, ktime) key: an exec_id string would be encoded and decoded
        p = by_key.get((pid, exec_ktime)) if exec_ktime else None
        if p is None and not ((kernel or keyed) and exec_ktime and not unknown):
            # `unknown`: not an image older than the leader's start (an earlier process's)
            p = cache.by_pid_since(pid, exec_ktime) if unknown else cache.by_pid(pid)
        if p is None:
            return self.missing(pid, exec_ktime, kernel, unknown), None
        parent = by_key.get(p.parent_key) if p.parent_key else None
        if parent is None:
            if p.parent_key is not None and kernel:  # named, not cached (yet): the event waits for it
                hold = getattr(self.builder, "hold", None)
                if hold is not None:
                    hold.parent_missing(p.msg, p.parent_key)
            return p.msg, None
        return p.msg, parent

    def missing(self, pid: int, exec_ktime: int, kernel: bool = True, unknown: bool = False) -> ProcessMsg:
        """The stand-in of a process the cache does not have, for an event about to be sent
        with it, as Tetragon's getProcessParent makes it: the pid and the start time of the
        kernel's key, and flags "unknown" when the kernel had no entry for it either (`unknown`:
        the record's VP_EV_NO_PROC, its key's ktime then the thread group leader's start; or a
        kernel hook's record whose key has no ktime); no exec_id, tid or parent. Counted as a
        cache miss; a kernel hook's event is held until its process comes (vigil.process.hold),
        counted as missing its process info if it is sent with this. (The compiled handler
        calls it.)"""
        # `unknown`: the ktime is the leader's start, no exec key: the process is looked for by
        # pid (an early deletion when the GC removed that pid's newest image), and held so
        exec_key = 0 if unknown else exec_ktime
        self.builder.cache.missed(pid, exec_key)
        msg = missing_process(pid, self.builder.ktime_rfc3339(exec_ktime) if exec_ktime else "",
                              "unknown" if unknown or (kernel and not exec_ktime) else "")
        hold = getattr(self.builder, "hold", None)
        if kernel and hold is not None:  # its event waits for the exec record (vigil.process.hold)
            hold.standin(msg, pid, exec_key, exec_ktime if unknown else 0)
        else:
            self.builder.missing_info += 1
        return msg

    # -- reported from other threads
    def loader_event(self, pid: int, tid: int, path: str, build_id: bytes, time_ns: int) -> None:
        """Runs on the loader sensor's thread. Perf reports a mapping at once; the process it
        names comes through the ring buffer, maybe later, and may be gone from the cache's pids
        by then (exited). The kernel's execve_map names the process that maps (the exec, or
        while it still execs the clone, as Tetragon's loader reads it); the event is made on the
        loop's thread once that process's record is handled."""
        self.loader_stats["LoaderReceived"] += 1
        key = self.exec_key(pid) if self.exec_key is not None else None
        ktime = key[1] if key is not None and key[0] == pid else 0
        self.inject(lambda: self._loader_event(pid, tid, ktime, path, build_id, time_ns, _LOADER_TRIES))

    def _loader_event(self, pid: int, tid: int, ktime: int, path: str, build_id: bytes, time_ns: int,
                      tries: int) -> Event | None:
        import base64

        from vigil.core.events import DictEvent
        from vigil.export.dicts import process_dict

        cache = self.builder.cache
        known = cache._by_key.get((pid, ktime)) if ktime else cache.by_pid(pid)
        if known is None and not ktime:
            # exited before the sensor read the mapping: the newest image of pid that ended
            known = next((p for p in itertools.islice(reversed(cache._pending), _GONE_SCAN) if p.pid == pid), None)
            ktime = known.key[1] if known is not None else 0
        if known is None and tries > 1:  # its record not handled yet: a few loop steps on
            self.inject(lambda: self._loader_event(pid, tid, ktime, path, build_id, time_ns, tries - 1))
            return None
        if known is not None:
            self.loader_stats["LoaderResolvedImm" if tries == _LOADER_TRIES else "LoaderResolvedRetry"] += 1
        # its key (the image that mapped) names that image or none, never an older one of the pid
        process, parent, ancestors = self.lineage("process_loader", pid, ktime, kernel=False, keyed=True)
        # ProcessLoader: process (1), path (2), buildid (3), parent (4), ancestors (5), as a dict event
        body: dict[str, Any] = {"process": process_dict(process), "path": path}
        if build_id:
            body["buildid"] = base64.b64encode(build_id).decode()
        if parent is not None:
            body["parent"] = process_dict(parent)
        if ancestors:
            body["ancestors"] = [process_dict(a) for a in ancestors]
        return DictEvent({"process_loader": body, "node_name": self.builder.node,
                          "time": self.builder.clock.ktime_rfc3339(time_ns)})

    def report_fanotify(self, rep: Any, hook: Any) -> None:
        """Runs on the helper's report thread, after the helper wrote its answer. A report often
        overtakes the requester's exec (or clone) record: the event then named a stand-in of the
        pid alone (no exec_id, binary, parent nor ancestors). Such an event is now made on the
        loop's thread once the records the kernel had committed by now are handled (inject: a
        few loop steps later), that record among them; one whose requester is cached is made
        at once, as before."""
        from vigil.sensors.hostdeny import event_kind, fanotify_event

        kind = event_kind(hook.compiled)
        body = fanotify_event(rep, hook.compiled)
        if hook.compiled.actions:  # the selector's last action, GetUrl or DnsLookup, as from a kernel record
            from vigil.sensors.user_actions import requested

            for what, target in requested(hook.compiled, rep.selector + 1):
                self.user_actions.submit(what, target)
        # when the helper read the request (ktime): the requester's image exec'd before it; an
        # image of the pid exec'd since is the one an allowed exec made. The pid's image now
        # too: that exec's record may be handled by the time the event is made
        asked = rep.time_ns - self.builder.clock.offset - rep.latency_ns
        now = self.builder.cache.by_pid(rep.pid)
        if now is not None and now.key[1] <= asked:
            self.inject(self._fanotify_event(kind, rep, body, asked, now))
        else:
            self.inject(lambda: self._fanotify_event(kind, rep, body, asked, now))

    def _fanotify_event(self, kind: str, rep: Any, body: dict[str, Any], asked: int,
                        seen: Process | None) -> Event:
        cache = self.builder.cache
        # the requester: its image (live, or ended meanwhile: the requester exits at once when
        # refused) exec'd before the request
        ktime = next((p.key[1] for p in (seen, cache.by_pid(rep.pid), cache.ended_by_pid(rep.pid))
                      if p is not None and p.key[1] <= asked), 0)
        process, parent, ancestors = self.lineage(kind, rep.pid, ktime, kernel=False, keyed=True)
        return PolicyEvent(kind, process, parent, body, self.builder.clock.rfc3339(rep.time_ns), self.builder.node,
                           ancestors)

    def fast_plan(self, hook_id: int) -> tuple[Any, ...] | None:
        """The plan of the compiled handler for a hook's records (Builder.on_generic,
        native/fastpath.c; this class's handle() is its reference), or None: handle() takes
        them all (a policy that correlates events, a hook build_body alone renders)."""
        entry = self.hooks.get(hook_id)
        if entry is None or entry[1] is None or entry[1].correlator is not None:
            return None
        ch, lp = entry
        if ch.placement.event_kind in self.builder.opts.policy_ancestors:
            return None  # its events list the ancestors (--enable-ancestors): handle() adds them
        return generic_events.fast_plan(ch, entry, lp.events, _USER_ACTIONS, self.action_key)

    @staticmethod
    def action_key(ch: CompiledHook, selector: int, action: str) -> tuple[str, int, int, str, str]:
        """The policy's counter key for events of `ch` decided by `selector` with `action`."""
        return _action_key(ch, selector, action)[0]

    @staticmethod
    def message(ch: CompiledHook, selector: int, action: int, ret_action: int, monitor: int) -> str:
        """The message of events of `ch` with this selector, actions and mode (an enforcement's
        explains it; monitor: L.enforcement_state)."""
        return generic_events.body_message(ch, selector, action, ret_action, monitor)

    def compiled_handler(self) -> Callable[[bytes, int], PolicyEvent | None]:
        """The handler of generic records for the event loop: the compiled one when the
        process stage is compiled (it falls back on handle() record by record), else handle()."""
        fast = getattr(self.builder, "_fast", None)
        if fast is None:
            return self.handle
        fast.set_generic((self.hooks, {}, self.fast_plan, self.handle, self._data, self.message, self.missing,
                          self.data_misses, []))
        return fast.on_generic  # type: ignore[no-any-return]

    # -- record handlers (the event loop's table, by record op)
    def handle_netdeny(self, buf: bytes, now_ns: int) -> PolicyEvent | None:
        from vigil.enforce.netdeny import NetDeny
        from vigil.sensors.hostdeny import event_kind, netdeny_event, netdeny_hook_id

        rec = NetDeny.decode(buf)
        entry = self.hooks.get(netdeny_hook_id(rec["rule_id"]))
        if entry is None:  # a rule of a policy deleted meanwhile: lost, a handler error as Tetragon's
            raise ValueError(f"netdeny rule {rec['rule_id']}: no loaded policy has it")
        ch, lp = entry
        kind = event_kind(ch)
        process, parent, ancestors = self.lineage(kind, rec["pid"], rec["exec_ktime"])
        body = netdeny_event(rec, ch)
        if lp is not None:
            lp.events[kind] = lp.events.get(kind, 0) + 1
        return PolicyEvent(kind, process, parent, body,
                           self.builder.clock.ktime_rfc3339(rec["ktime"]), self.builder.node, ancestors)

    def handle_data(self, buf: bytes, now_ns: int) -> None:
        h, chunk = G.decode_data(buf)
        if len(self._data) >= DATA_CAPACITY:  # events that never came (dropped): forget the oldest
            self._data.pop(next(iter(self._data)))
            self.data_orphans += 1
        self._data.setdefault((h.ev_ktime, h.tid, h.slot), []).append((h.offset, chunk))
        return None

    def _more_data(self, m: Any) -> dict[int, bytes] | None:
        more: dict[int, bytes] | None = None
        for slot, ah in enumerate(m.args):
            if ah.flags & _ARGF_DATA:
                chunks = self._data.pop((m.ktime, m.tid, slot), None)
                if chunks is None:  # they never came
                    self.data_misses["get"] += 1
                    continue
                chunks.sort()
                more = more or {}
                more[slot] = b"".join(c for _, c in chunks)
        return more

    def handle(self, buf: bytes, now_ns: int) -> PolicyEvent | None:
        m, data = decode_generic(buf)
        entry = self.hooks.get(m.hook_id)
        if entry is None:  # a record of a policy deleted meanwhile: lost, a handler error as Tetragon's
            raise ValueError(f"hook {m.hook_id}: no loaded policy has it")
        ch, lp = entry
        b = self.builder
        kind = ch.placement.event_kind
        process, parent, ancestors = self.lineage(kind, m.pid, m.exec_ktime, unknown=bool(m.flags & L.EV_NO_PROC))
        action = m.action
        if ch.actions and action in _USER_ACTIONS:  # in monitor mode too, as Tetragon
            from vigil.sensors.user_actions import requested

            for what, target in requested(ch, m.selector):
                self.user_actions.submit(what, target)
        more = self._more_data(m)
        event = PolicyEvent(kind, process, parent, generic_events.build_body(ch, m, data, more),
                            b.ktime_rfc3339(m.ktime), b.node, ancestors)
        if lp is not None:
            lp.events[kind] = lp.events.get(kind, 0) + 1
            if lp.correlator is not None:  # (the actions were counted where taken: selector_stats)
                label = _action_key(ch, m.selector, _ACTION_NAMES.get(action, "KPROBE_ACTION_POST"))[1]
                return lp.correlator.feed(event, label)  # type: ignore[no-any-return]
        return event


_ARGF_DATA = L.ARGF_DATA
_USER_ACTIONS = frozenset((L.ACT["GetUrl"], L.ACT["DnsLookup"]))
_ACTION_NAMES = generic_events.ACTION_NAMES


# (hook id, selector, action) -> (the counter key, the selector's label): the key names the
# hook's placement, a string built once per hook rather than once per event
_ACTION_KEYS: dict[tuple[int, int, str], tuple[tuple[str, int, int, str, str], str]] = {}


def _action_key(ch: CompiledHook, selector: int, action: str) -> tuple[tuple[str, int, int, str, str], str]:
    """(the counter key, the selector's label) of events of `ch` decided by `selector`
    (1-based, 0 = none) with `action`. The key is Tetragon's selector action counter: the hook
    as the policy names it (kprobe:<call>, ...: Placement.stats_hook), its index in its list,
    the selector's 0-based index (-1: no selector decided) and label, the action."""
    ck = (ch.hook_id, selector, action)
    hit = _ACTION_KEYS.get(ck)
    if hit is None:
        label = ch.selectors[selector - 1].label if 0 < selector <= len(ch.selectors) else ""
        key = (ch.placement.stats_hook or ch.placement.describe().split(";")[0], ch.placement.index,
               selector - 1 if selector > 0 else -1, label, action.removeprefix("KPROBE_ACTION_").lower())
        if len(_ACTION_KEYS) >= 65536:
            _ACTION_KEYS.clear()
        hit = _ACTION_KEYS[ck] = (key, label)
    return hit

