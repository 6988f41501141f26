"""Live TracingPolicy management: add, delete, enable, disable, set mode, list.

All changes go through one lock, so the kernel state of a policy is always
all-or-nothing: a policy whose hooks cannot all be loaded is rolled back
and reported, never half-attached. Deleting a policy closes every program,
link and map it created.
"""
from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil.core.errors import PolicyError, PolicyExists, PolicyNotFound
from vigil.kernel import policy_layout as L
from vigil.policy import PolicyErrors, load_policies, parse_policies
from vigil.policy.compile import CompiledHook, CompiledPolicy, compile_policy
from vigil.policy.loader import policy_dir_files
from vigil.policy.model import Policy

log = logging.getLogger("vigil.policies")


@dataclass
class LoadedPolicy:
    id: int
    compiled: CompiledPolicy
    hooks: list[Any]                  # GenericHook
    source: str
    mode: str
    enabled: bool = True
    error: str = ""
    events: dict[str, int] = field(default_factory=dict)
    correlator: Any = None            # policy option vigil-finding (vigil.policy.findings)
    filter_id: int = 0                # workload scope in the kernel (vigil.k8s.policyfilter); 0: none

    @property
    def name(self) -> str:
        return self.compiled.name


_ENFORCING_ACTIONS = frozenset(L.ACT[a] for a in ("Sigkill", "Signal", "Override", "NotifyEnforcer", "Set"))


def _enforcing(lp: LoadedPolicy) -> bool:
    """Whether the policy has an action that monitor mode would hold back. Tetragon reports a
    policy without one as TP_MODE_MONITOR_ONLY (`tetra tp list`: monitor_only), whatever its
    policy-mode option, and refuses to switch its mode."""
    return any(a.type in _ENFORCING_ACTIONS
               for ch in lp.compiled.hooks for i in range(ch.config.nselectors)
               for a in list(ch.config.sel[i].actions) + list(ch.config.sel[i].ret_actions))


def listed_mode(lp: LoadedPolicy) -> str:
    """The mode to show: enforce, monitor, or monitor_only (nothing to enforce)."""
    return lp.mode if _enforcing(lp) else "monitor_only"


def _notes_map() -> Any:
    """A map for NotifyEnforcer notes: per thread, what the enforcer does at its next listed syscall."""
    from vigil.kernel import _libbpf as LB
    from vigil.kernel.objects import Map

    fd = LB.lib.bpf_map_create(1, b"enforcer_notes", 8, 16, 32768, None)  # BPF_MAP_TYPE_HASH
    if fd < 0:
        raise PolicyError(f"creating the enforcer notes map failed: errno {LB.errno()}")
    return Map(None, fd=fd, key_size=8, value_size=16, map_type=1, name="enforcer_notes", max_entries=32768)


def _detach_links(hooks: list[Any]) -> None:
    """Close the links of the hooks' BPF objects (`hooks` of one or more policies, in load
    order), many at once (vigil.kernel.objects.detach_objects): closing a link waits for the
    kernel's grace periods, ~65 ms a tracepoint, so one link after the other an agent with 40
    policies took 2.8 s to stop. Order kept: each hook's links newest first (its entry before
    its return side), and the policies' hooks before their enforcers (a note a hook leaves
    finds its enforcer attached)."""
    from vigil.kernel.objects import BpfObject, detach_objects

    for enforcers in (False, True):
        detach_objects([obj for gh in hooks if (not gh.compiled.hook_id) == enforcers
                        and isinstance(obj := getattr(gh, "obj", None), BpfObject)])


def _detach_hooks(hooks: list[Any]) -> None:
    """Detach the hooks (in load order): the BPF links as _detach_links, then the rest
    (fanotify rules, cgroup socket programs), last loaded first."""
    _detach_links(hooks)
    for gh in reversed(hooks):
        gh.detach()


def _close_hooks(hooks: list[Any]) -> None:
    """Close the hooks (in load order): every BPF link first, as _detach_links, then each hook
    with its programs and maps, last loaded first."""
    _detach_links(hooks)
    for gh in reversed(hooks):
        gh.close()


class _EnforcerEntry:
    """An enforcer program in the list of a policy's hooks (it sends no events)."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        pl = hook.placement
        self.compiled = type("C", (), {"hook_id": 0, "placement": pl})()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hook, name)


def _key(name: str, namespace: str | None = "") -> str:
    """Policies are unique per namespace (cluster-scoped ones have none)."""
    return f"{namespace}/{name}" if namespace else name


def _workload_scope(policy: Policy) -> tuple[str | None, Any, Any] | None:
    """(namespace, podSelector, containerSelector) of a pod-scoped policy; None: applies everywhere."""
    spec = policy.spec
    pod = spec.pod_selector if spec.pod_selector is not None and not spec.pod_selector.empty else None
    cont = (spec.container_selector if spec.container_selector is not None and not spec.container_selector.empty
            else None)
    if not policy.namespaced and pod is None and cont is None:
        return None
    return policy.namespace if policy.namespaced else None, pod, cont


def _scope_refusal(key: str, compiled: CompiledPolicy) -> str:
    """Why a pod-scoped policy cannot be loaded as compiled ("" when it can): enforcement
    outside BPF hooks (fanotify, cgroup socket programs) has no pod filter."""
    odd = [ch.placement.describe() for ch in compiled.hooks
           if ch.placement.mechanism in ("fanotify", "cgroup_sock_addr")]
    if not odd:
        return ""
    return (f"policy {key!r}: a policy scoped to pods cannot use {', '.join(odd)} (enforcement outside BPF "
            "hooks has no pod filter); use a hook with BPF LSM or kprobes, or a cluster-wide policy")


class PolicyManager:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self._lock = threading.RLock()
        self.policies: dict[str, LoadedPolicy] = {}
        self.hooks: dict[int, tuple[CompiledHook, LoadedPolicy]] = {}
        self._ids = itertools.count(1)
        self._hook_ids = itertools.count(1)
        self._facts: Any = None
        self._notes: Any = None
        self._ring: Any = None
        self._loader: Any = None
        from vigil.agent.policy_events import PolicyEvents
        from vigil.sensors.hostdeny import GuardRegistry
        from vigil.sensors.user_actions import UserActions

        self.user_actions = UserActions()
        # records of our hooks become events there; the table and the counters stay ours
        self.events = PolicyEvents(agent.builder, agent.pipeline.inject, self.hooks, self.user_actions)
        cfg = getattr(agent, "config", None)
        self.guards = GuardRegistry(self.events.report_fanotify,
                                    deadline_ms=getattr(cfg, "permission_deadline_ms", 1000),
                                    default_allow=getattr(cfg, "permission_default", "allow") == "allow",
                                    test_hooks=os.environ.get("VIGIL_TEST_HOOKS") == "1")

    # -- kernel facts, gathered once on first use (the probe loads programs: keep it off the start path)
    @property
    def facts(self) -> Any:
        if self._facts is None:
            from vigil.kernel.facts import KernelFacts

            self._facts = KernelFacts.gather()
        return self._facts

    def has(self, name: str) -> tuple[bool, str]:
        return self.facts.has(name)

    def _loader_sensor(self) -> Any:
        if self._loader is None:
            from vigil.sensors.loader import LoaderSensor

            self._loader = LoaderSensor(self.events.loader_event)
        return self._loader

    def _follow_rules(self) -> Any:
        from vigil.sensors.follow import FollowRules

        sensor = self.agent.sensor
        if sensor is None or sensor.obj is None:
            raise PolicyError("the process sensor is not running; policies need the live kernel")
        if getattr(sensor, "follow", None) is None:
            sensor.follow = FollowRules(sensor.obj)
        return sensor.follow

    def _shared_maps(self) -> dict[str, Any]:
        sensor = self.agent.sensor
        if sensor is None or sensor.obj is None:
            raise PolicyError("the process sensor is not running; policies need the live kernel")
        shared = {n: sensor.obj.map(n) for n in ("vigil_drops", "vigil_reader", "execve_map", "socktrack",
                                               "policy_cgroups")}
        shared["events"] = self._policy_ring()
        shared["enforcer_notes"] = self._enforcer_notes()
        return shared

    def _policy_ring(self) -> Any:
        """The ring buffer every policy hook writes to (one per agent, made with the first
        policy): not the process ring, so a flood of policy records never costs an exec or
        exit. The event loop reads both (vigil.kernel.ringbuf.PairedRings)."""
        if self._ring is None:
            from vigil.kernel import RingBuffer, _libbpf as LB
            from vigil.kernel.objects import Map

            size = self.agent.config.rb_size
            fd = LB.lib.bpf_map_create(27, b"policy_events", 0, 0, size, None)  # BPF_MAP_TYPE_RINGBUF
            if fd < 0:
                raise PolicyError(f"creating the policy ring buffer ({size} bytes) failed: errno {LB.errno()}")
            ring = Map(None, fd=fd, key_size=0, value_size=0, map_type=27, name="policy_events", max_entries=size)
            src = self.agent.source
            paired = getattr(src, "inner", src)  # a --record-file recorder wraps the rings
            if hasattr(paired, "add_policy_ring"):
                paired.add_policy_ring(RingBuffer(ring.fd, size))
            self._ring = ring
        return self._ring

    def _enforcer_notes(self) -> Any:
        """The NotifyEnforcer notes map the hook objects of policies without enforcers share (one
        per agent: every object has the map, and a map of its own each would cost its memory)."""
        if self._notes is None:
            self._notes = _notes_map()
        return self._notes

    # -- adding
    def add_text(self, text: str, filename: str = "<grpc>", *, mode: str | None = None,
                 source: str = "grpc") -> list[str]:
        try:
            policies = parse_policies(text, filename)
        except PolicyErrors as e:
            raise PolicyError(str(e)) from None
        return self._add_all(policies, mode=mode, source=source)

    def add_file(self, path: str, *, source: str = "static",
                 checkpoint: Callable[[str], None] | None = None) -> list[str]:
        """Every policy of the file, or none. checkpoint(step) before each may raise to stop
        there (the agent's start interrupted): the file's policies loaded before are unloaded."""
        try:
            policies = load_policies(path)
        except PolicyErrors as e:
            raise PolicyError(str(e)) from None
        return self._add_all(policies, source=source,
                             checkpoint=None if checkpoint is None else lambda p: checkpoint(f"{path}: {p.name}"))

    def _add_all(self, policies: list[Policy], *, mode: str | None = None, source: str,
                 checkpoint: Callable[[Policy], None] | None = None) -> list[str]:
        """Every policy of one file or text, or none: a refused document unloads the ones
        before it."""
        with self._lock:
            names: list[str] = []
            added: list[Policy] = []
            try:
                for p in policies:
                    if checkpoint is not None:
                        checkpoint(p)
                    names.append(self.add(p, mode=mode, source=source))
                    added.append(p)
            except BaseException:  # by name and namespace: a namespaced one is keyed by both
                self._delete([self._get(p.name, p.namespace or "") for p in reversed(added)])
                raise
            return names

    def add_dir(self, path: str, *, checkpoint: Callable[[str], None] | None = None) -> list[str]:
        """Every policy file of the directory; checkpoint(step) before each file and each
        policy may raise to stop there (the agent's start interrupted: what loaded before is
        unloaded by its close)."""
        d = Path(path)
        if not d.is_dir():
            raise PolicyError(f"--tracing-policy-dir {path}: not a directory")
        names: list[str] = []
        refused: list[str] = []
        for f in policy_dir_files(d):  # and one level of subdirectories, as Tetragon's
            if checkpoint is not None:
                checkpoint(str(f))
            try:  # each file all or nothing; one refused file does not keep the others out
                names += self.add_file(str(f), checkpoint=checkpoint)
            except PolicyError as e:
                refused.append(str(e))
        if refused:
            raise PolicyError("\n".join(refused))
        return names

    def add(self, policy: Policy, *, mode: str | None = None, source: str = "grpc") -> str:
        key = _key(policy.name, policy.namespace)
        k8s = getattr(self.agent, "k8s", None)
        with self._lock:
            if key in self.policies:
                raise PolicyExists(f"{policy.metadata.at('name')}: metadata.name: policy {key!r} already "
                                   "exists")
            follow = self._follow_rules()
            bits: list[int] = []

            def follow_bit(op: str, values: tuple[str, ...]) -> int:
                try:
                    bit = follow.acquire(op, values)
                except PolicyError as e:
                    raise ValueError(str(e)) from None
                bits.append(bit)
                return bit
            try:
                compiled = compile_policy(policy, self.facts, lambda: next(self._hook_ids), follow_bit=follow_bit,
                                          substitute=bool(getattr(getattr(self.agent, "config", None),
                                                                  "hook_substitution", False)),
                                          workloads=k8s is not None)
            except PolicyErrors as e:
                for b in bits:
                    follow.release(b)
                raise PolicyError(str(e)) from None
            scope = _workload_scope(policy)
            filter_id = 0
            if scope is not None:
                refusal = _scope_refusal(key, compiled)
                if refusal:
                    for b in bits:
                        follow.release(b)
                    raise PolicyError(refusal)
                filter_id = k8s.add_scope(key, *scope)
                for ch in compiled.hooks:
                    ch.config.filter_id = filter_id
            mode = mode or compiled.mode
            if mode == "monitor":
                for ch in compiled.hooks:
                    ch.config.flags |= L.HOOK_MONITOR
            try:
                loaded = self._load_hooks(policy.name, compiled, mode)
            except BaseException:
                for b in bits:
                    follow.release(b)
                if filter_id:
                    k8s.remove_scope(filter_id)
                raise
            if policy.spec.loader:
                try:
                    self._loader_sensor().acquire()
                except OSError as e:
                    _close_hooks(loaded)
                    for b in bits:
                        follow.release(b)
                    if filter_id:
                        k8s.remove_scope(filter_id)
                    raise PolicyError(f"{policy.spec.at('loader')}: spec.loader: process_loader events need "
                                      f"perf mmap records: {e}") from None
            lp = LoadedPolicy(next(self._ids), compiled, loaded, source, mode, filter_id=filter_id)
            lp.correlator = _correlator(policy)
            for ch in compiled.hooks:
                self.hooks[ch.hook_id] = (ch, lp)
            self.policies[key] = lp
            for w in compiled.warnings:
                log.warning("%s", w)
            log.info("policy %s loaded (%s): %s", policy.name, mode,
                     "; ".join(ch.placement.describe() for ch in compiled.hooks))
            return policy.name

    def _load_hooks(self, name: str, compiled: CompiledPolicy, mode: str) -> list[Any]:
        """Every hook of a compiled policy loaded and attached, or none: on any failure the
        hooks loaded so far are closed and PolicyError names the hook that failed."""
        shared = self._shared_maps()
        notes = None
        if compiled.enforcers:
            # the policy's notes are its own (Tetragon: an enforcer_data map per policy): another
            # policy's enforcers never act on them, and they go when the policy goes. Its objects
            # hold the map; this descriptor is closed once they are loaded.
            notes = _notes_map()
            shared = {**shared, "enforcer_notes": notes}
        try:
            return self._load_hook_objects(name, compiled, mode, shared)
        finally:
            if notes is not None:
                notes.close_fd()

    def _load_hook_objects(self, name: str, compiled: CompiledPolicy, mode: str,
                           shared: dict[str, Any]) -> list[Any]:
        from vigil.sensors.generic import EnforcerHook, GenericHook
        from vigil.sensors.hostdeny import FanotifyHook, NetDenyHook

        # build every hook object first: refusals happen before anything is loaded
        hooks: list[Any] = []
        # enforcers first: a note left by a hook must find its enforcer attached
        for pl in compiled.enforcers:
            hooks.append(_EnforcerEntry(EnforcerHook(pl, shared)))
        for ch in compiled.hooks:
            mech = ch.placement.mechanism
            if mech == "fanotify":
                hooks.append(FanotifyHook(ch, self.guards, mode == "monitor"))
            elif mech == "cgroup_sock_addr":
                hooks.append(NetDenyHook(ch, shared, mode == "monitor"))
            else:
                hooks.append(GenericHook(ch, shared))
        loaded: list[Any] = []
        try:
            for gh in hooks:
                # register first: records may arrive as soon as it attaches
                if gh.compiled.hook_id:
                    self.hooks[gh.compiled.hook_id] = (gh.compiled, None)  # type: ignore[assignment]
                try:
                    gh.load()
                except PolicyError:
                    gh.close()
                    raise
                except Exception as e:
                    gh.close()
                    first, _, detail = str(e).partition("\n")  # the kernel/libbpf log goes to the debug log
                    if detail:
                        log.debug("loading %s: %s", gh.compiled.placement.describe(), detail)
                    raise PolicyError(f"{gh.compiled.placement.loc}: policy {name!r}: loading "
                                      f"{gh.compiled.placement.describe()} failed: {first}") from e
                loaded.append(gh)
        except BaseException:
            _close_hooks(loaded)
            for ch in compiled.hooks:
                self.hooks.pop(ch.hook_id, None)
            raise
        return loaded

    # -- changing
    def _get(self, name: str, namespace: str = "") -> LoadedPolicy:
        lp = self.policies.get(_key(name, namespace))
        if lp is None:
            raise PolicyNotFound(f"no policy named {_key(name, namespace)!r}")
        return lp

    def delete(self, name: str, namespace: str = "") -> None:
        with self._lock:
            self._delete([self._get(name, namespace)])

    def _delete(self, lps: list[LoadedPolicy]) -> None:
        """Unload the policies: the links of all of them at once (as _close_hooks), then the rest."""
        hooks = [gh for lp in lps for gh in lp.hooks]
        _detach_links(hooks)
        # no hit now: what the hooks' drop counters counted since the last stats tick is final
        closing = getattr(getattr(self.agent, "pipeline", None), "policy_hooks_closing", None)
        if closing is not None:
            for lp in lps:
                closing(lp.name, lp.hooks)
        for gh in reversed(hooks):
            gh.close()
        for lp in lps:
            for ch in lp.compiled.hooks:
                self.hooks.pop(ch.hook_id, None)
                for b in ch.follow_bits:
                    self._follow_rules().release(b)
            if lp.compiled.policy.spec.loader and lp.enabled:
                self._loader_sensor().release()
            if lp.filter_id:
                k8s = getattr(self.agent, "k8s", None)
                if k8s is not None:
                    k8s.remove_scope(lp.filter_id)
            key = _key(lp.compiled.policy.name, lp.compiled.policy.namespace)
            del self.policies[key]
            log.info("policy %s deleted", key)

    def check_text(self, text: str, filename: str) -> None:
        """Parse, validate and compile without loading (raises PolicyError with the reasons):
        every refusal `add` makes before it touches the kernel."""
        try:
            policies = parse_policies(text, filename)
            k8s = getattr(self.agent, "k8s", None)
            for p in policies:
                compiled = compile_policy(p, self.facts, lambda: 0, workloads=k8s is not None)
                refusal = _scope_refusal(_key(p.name, p.namespace), compiled) if _workload_scope(p) else ""
                if refusal:
                    raise PolicyError(refusal)
        except PolicyErrors as e:
            raise PolicyError(str(e)) from None

    def set_enabled(self, name: str, enabled: bool, namespace: str = "") -> None:
        with self._lock:
            lp = self._get(name, namespace)
            if enabled:
                self._attach_all(lp)
            else:
                _detach_hooks(lp.hooks)
            if lp.compiled.policy.spec.loader and enabled != lp.enabled:
                (self._loader_sensor().acquire if enabled else self._loader_sensor().release)()
            lp.enabled = enabled
            lp.error = ""

    def _attach_all(self, lp: LoadedPolicy) -> None:
        """Every hook of the policy attached, or none of those this call attached: a hook that
        cannot attach (e.g. a uprobe whose binary is gone) leaves the policy as it was, and
        PolicyError names the hook (its `error` in the policy list too)."""
        attached: list[Any] = []
        for gh in lp.hooks:
            if gh.attached:
                continue
            try:
                gh.attach()
            except Exception as e:
                for g in [gh, *reversed(attached)]:  # gh too: a hook may have attached its return side
                    try:
                        g.detach()
                    except Exception as undo:  # noqa: BLE001 - report, keep detaching the others
                        log.error("policy %s: detaching %s failed: %s", lp.name,
                                  g.compiled.placement.describe(), undo)
                first, _, detail = str(e).partition("\n")  # the libbpf log goes to the debug log
                if detail:
                    log.debug("attaching %s: %s", gh.compiled.placement.describe(), detail)
                lp.error = (f"policy {lp.name!r}: enabling failed, attaching {gh.compiled.placement.describe()} "
                            f"failed: {first}")
                raise PolicyError(lp.error) from e
            attached.append(gh)

    def set_mode(self, name: str, mode: str, namespace: str = "") -> None:
        """Switch every hook of the policy, or none: what can be refused (socket rules that do not
        compile) is checked for all hooks first; a hook that fails while switching puts the hooks
        switched before it back, and the policy keeps its mode."""
        if mode not in ("enforce", "monitor"):
            raise PolicyError(f"mode must be enforce or monitor, not {mode!r}")
        monitor = mode == "monitor"
        with self._lock:
            lp = self._get(name, namespace)
            if not _enforcing(lp):  # as Tetragon: a policy with nothing to enforce has no mode to set
                raise PolicyError(f"policy {name!r}: cannot set policy mode on a policy that is monitor only "
                                  "(it has no Sigkill, Signal, Override, NotifyEnforcer or Set action)")
            # enforcers (hook id 0) act on notes, which monitor mode never leaves
            hooks = [gh for gh in lp.hooks if gh.compiled.hook_id]
            prepared = {id(gh): gh.prepare_monitor(monitor) for gh in hooks if hasattr(gh, "prepare_monitor")}
            done: list[tuple[Any, int, bool | None]] = []
            try:
                for gh in hooks:
                    cfg = gh.compiled.config
                    state = (gh, cfg.flags, getattr(gh, "monitor", None))
                    try:
                        self._switch_hook(gh, monitor, prepared.get(id(gh)))
                    except BaseException:
                        # a failed switch replaced nothing in the kernel (each back end keeps
                        # its rules, table or config in force): only the Python side goes back
                        cfg.flags = state[1]
                        if state[2] is not None:
                            gh.monitor = state[2]
                        raise
                    done.append(state)
            except BaseException as e:
                for gh, flags, was in reversed(done):
                    try:
                        self._switch_hook(gh, bool(was) if was is not None else not monitor, None, flags)
                    except Exception as undo:  # noqa: BLE001 - report, keep restoring the others
                        log.error("policy %s: restoring the mode of %s failed: %s", name,
                                  gh.compiled.placement.describe(), undo)
                if isinstance(e, Exception):
                    raise PolicyError(f"policy {name!r}: switching to {mode} mode failed, the policy stays in "
                                      f"{lp.mode} mode: {e}") from e
                raise
            lp.mode = mode

    @staticmethod
    def _switch_hook(gh: Any, monitor: bool, rules: Any, flags: int | None = None) -> None:
        """One hook to a mode (`flags`: the config flags to restore instead of deriving them)."""
        cfg = gh.compiled.config
        new = flags if flags is not None else \
            (cfg.flags & ~L.HOOK_MONITOR) | (L.HOOK_MONITOR if monitor else 0)
        if hasattr(gh, "prepare_monitor"):  # the cgroup socket back end: a new rule set
            gh.set_monitor(monitor, rules)
        elif hasattr(gh, "set_monitor"):  # the fanotify back end: a new helper table
            gh.set_monitor(monitor)
        elif gh.obj is not None:
            old, cfg.flags = cfg.flags, new
            try:
                gh.obj.map("hook_config").update(struct.pack("<I", 0), bytes(cfg))
            except BaseException:
                cfg.flags = old
                raise
        cfg.flags = new

    def close(self) -> None:
        with self._lock:
            self._delete(list(self.policies.values()))
            self.guards.close()
            if self._notes is not None:
                self._notes.close_fd()
                self._notes = None
            if self._ring is not None:  # the event loop's reader holds its own descriptor
                self._ring.close_fd()
                self._ring = None
            self.user_actions.close()
            if self._loader is not None:
                self._loader.close()

    # -- reporting
    def status(self, lp: LoadedPolicy) -> dict[str, Any]:
        stats = [gh.stats() for gh in lp.hooks]
        total = {k: sum(s[k] for s in stats) for k in (stats[0] if stats else {})}
        mode = listed_mode(lp)
        # hooks left out without refusing the policy (a uprobe whose binaryDigests do not match,
        # with ignore.digestVerificationFailure; a kprobe call missing, with ignore.callNotFound):
        # the policy is partially enabled, as Tetragon's
        skipped = [p for p in lp.compiled.placements if p.ok and p.skipped]
        counters, per_selector = action_counters(lp)
        return {
            "id": lp.id,
            "name": lp.name,
            "namespace": lp.compiled.policy.namespace or "",
            "info": lp.source,
            "domain": lp.source,
            "filter_id": lp.filter_id,
            "sensors": ["generic"],
            "state": ("partially_enabled" if lp.enabled and skipped else "enabled") if lp.enabled else "disabled",
            "error": lp.error,
            "mode": mode,
            "kernel_memory_bytes": sum(gh.kernel_memory() for gh in lp.hooks),
            "stats": {"action_counters": counters, "selector_action_counters": per_selector},
            "hooks": [{"section": ch.placement.section, "index": ch.placement.index,
                       "hook": ch.placement.describe(), "state": "loaded" if lp.enabled else "disabled",
                       "target": ch.placement.target}
                      for ch in lp.compiled.hooks] +
                     [{"section": p.section, "index": p.index, "hook": p.describe(), "state": p.skip_state,
                       "target": p.target} for p in skipped],
            "kernel_stats": total,
            "user_actions": dict(self.user_actions.stats),
            "program_ids": [i for gh in lp.hooks for i in gh.program_ids()],
        }

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.status(lp) for lp in self.policies.values()]


def action_counters(lp: LoadedPolicy, unselected: bool = False) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Tetragon's TracingPolicyStats of a policy: every action its selectors took, counted
    where it was taken (the generic hooks' kernel counters, the stand-ins' decisions), as
    (the policy's totals, one entry per selector that took any: hook as the policy names it,
    hook_index, 0-based selector_index, selector_label, action_counters). The totals hold
    every counter (0 too) and the records of hooks without selectors (`unselected`: those are
    entries too, selector_index -1, for the agent's own metrics)."""
    from vigil.kernel.errors import BpfError
    from vigil.sensors.generic import ACTION_COUNTERS

    total = dict.fromkeys(ACTION_COUNTERS, 0)
    per_selector: list[dict[str, Any]] = []
    for gh in lp.hooks:
        ch = getattr(gh, "compiled", None)
        sel_stats = getattr(gh, "selector_stats", None)
        if ch is None or sel_stats is None:
            continue
        try:
            rows = sel_stats()
        except (BpfError, OSError):  # a hook closed meanwhile (the policy deleted while read)
            continue
        hook = ch.placement.stats_hook or ch.placement.describe().split(";")[0]
        for sel, row in sorted(rows.items()):
            for name, n in row.items():
                total[name] = total.get(name, 0) + n
            if 0 < sel <= len(ch.selectors) or (unselected and sel == 0):
                per_selector.append({"hook": hook, "hook_index": ch.placement.index, "selector_index": sel - 1,
                                     "selector_label": (ch.selectors[sel - 1].label or "") if sel else "",
                                     "action_counters": row})
    return total, per_selector


def _correlator(policy: Policy) -> Any:
    """The finding correlator of a policy with the vigil-finding option (None without)."""
    from vigil.policy.findings import Correlator, finding_sequence

    seq = finding_sequence(policy)
    return Correlator(policy.name, seq) if seq is not None else None

