"""Policy hooks enforced without BPF LSM: fanotify permission events and cgroup-BPF socket hooks.

They have the same lifecycle as GenericHook (load, attach, detach, close, stats) so the
policy manager treats every hook alike. Selectors the back end cannot express are refused
at construction, before anything is loaded.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from typing import Any, Callable

from vigil.agent.api import PolicyError
from vigil.enforce.fanotify import Decision, PermEvent, PermissionGuard
from vigil.policy import layout as L
from vigil.policy.compile import CompiledHook
from vigil.policy.model import Selector
from vigil.policy.values import parse_family, parse_port

log = logging.getLogger("vigil.sensor.hostdeny")

ENFORCE = ("override", "sigkill")
STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")


def _action(sel: Selector) -> str:
    names = [a.action.lower() for a in sel.match_actions]
    for n in ("sigkill", "override"):
        if n in names:
            return n
    return "nopost" if "nopost" in names else "post"


def _string_match(op: str, values: tuple[str, ...], s: str) -> bool:
    if op == "Equal":
        return s in values
    if op == "NotEqual":
        return s not in values
    if op == "Prefix":
        return any(s.startswith(v) for v in values)
    if op == "NotPrefix":
        return not any(s.startswith(v) for v in values)
    if op == "Postfix":
        return any(s.endswith(v) for v in values)
    if op == "NotPostfix":
        return not any(s.endswith(v) for v in values)
    return False


class GuardRegistry:
    """One fanotify PermissionGuard per agent, shared by every fanotify hook."""

    def __init__(self, report: Callable[[PermEvent, Decision, "FanotifyHook"], None]) -> None:
        self._lock = threading.Lock()
        self._hooks: list[FanotifyHook] = []
        self._marks: dict[str, int] = {}
        self._report = report
        self.guard: PermissionGuard | None = None

    def _decide(self, ev: PermEvent) -> Decision:
        for hook in list(self._hooks):
            if hook.attached and hook.what == ev.kind:
                d = hook.decide(ev)
                if d is not None:
                    return d
        return Decision(True)

    def _on_event(self, ev: PermEvent, d: Decision) -> None:
        hook = next((h for h in self._hooks if h.hook_id == d.selector >> 8), None) if d.policy else None
        if hook is not None:
            self._report(ev, d, hook)

    def add(self, hook: "FanotifyHook") -> None:
        with self._lock:
            if self.guard is None:
                # fail-safe: a decision that does not come in time, or fails, allows
                self.guard = PermissionGuard(self._decide, timeout_s=1.0, default_allow=True, on_event=self._on_event)
                self.guard.start()
            for path in hook.mounts:
                if self._marks.get(path, 0) == 0:
                    self.guard.add_mark(path, exec=True, open=True, mount=True)
                self._marks[path] = self._marks.get(path, 0) + 1
            self._hooks.append(hook)

    def remove(self, hook: "FanotifyHook") -> None:
        with self._lock:
            if hook not in self._hooks:
                return
            self._hooks.remove(hook)
            for path in hook.mounts:
                self._marks[path] -= 1
                if self._marks[path] == 0 and self.guard is not None:
                    del self._marks[path]
                    self.guard.remove_mark(path)
            if not self._hooks and self.guard is not None:
                self.guard.stop()
                self.guard = None

    def close(self) -> None:
        with self._lock:
            self._hooks.clear()
            self._marks.clear()
            if self.guard is not None:
                self.guard.stop()
                self.guard = None


def mount_of(path: str) -> str:
    """Mount point holding `path` (longest mountinfo prefix of its existing ancestor)."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and p != "/":
        p = os.path.dirname(p)
    p = os.path.realpath(p)
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if (p == mp or p.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
                best = mp
    return best


class FanotifyHook:
    """exec/open Override on a host without BPF LSM, decided in user space per event."""

    def __init__(self, compiled: CompiledHook, registry: GuardRegistry, monitor: bool, cache: Any) -> None:
        self.compiled = compiled
        self.hook_id = compiled.hook_id
        self.registry = registry
        self.monitor = monitor
        self.cache = cache
        self.what = compiled.placement.attach["what"]
        self.attached = False
        self.denied = self.monitored = self.decisions = 0
        self._check(compiled)
        self.mounts = sorted(self._mounts(compiled))

    def _check(self, c: CompiledHook) -> None:
        for si, sel in enumerate(c.selectors):
            unsupported = [n for n in ("match_namespaces", "match_namespace_changes", "match_capability_changes",
                                       "match_capabilities", "match_return_args", "match_data")
                           if getattr(sel, n)]
            if unsupported:
                raise PolicyError(f"{sel.loc}: selector {si + 1}: {', '.join(unsupported)} cannot be evaluated by "
                                  "the fanotify back end that enforces this Override here")
            for e in sel.match_args:
                if e.operator not in STRING_OPS:
                    raise PolicyError(f"{e.at('operator')}: {e.operator} is not supported on paths")

    def _mounts(self, c: CompiledHook) -> set[str]:
        """Mounts to watch: those holding the paths the selectors name; the root mount when a
        selector can match anywhere (NotEqual/NotPrefix/Postfix or no path filter)."""
        out: set[str] = set()
        for sel in c.selectors or ():
            paths = [e for e in sel.match_args if e.operator in ("Equal", "Prefix")]
            if not paths:
                out.add("/")
            for e in paths:
                for v in e.values:
                    out.add(mount_of(v))
        return out or {"/"}

    def decide(self, ev: PermEvent) -> Decision | None:
        self.decisions += 1
        for si, sel in enumerate(self.compiled.selectors):
            if not self._selector_matches(sel, ev):
                continue
            act = _action(sel)
            if act not in ENFORCE:
                return Decision(True, f"selector {si + 1}: {act}", self.compiled.policy, (self.hook_id << 8) | si)
            if act == "sigkill" and not self.monitor:
                try:
                    os.kill(ev.pid, signal.SIGKILL)  # the requester named by the kernel event, nothing else
                except ProcessLookupError:
                    pass
            if self.monitor:
                self.monitored += 1
            else:
                self.denied += 1
            return Decision(False, f"selector {si + 1}: {act}", self.compiled.policy, (self.hook_id << 8) | si,
                            monitor=self.monitor)
        return None

    def _selector_matches(self, sel: Selector, ev: PermEvent) -> bool:
        for e in sel.match_args:
            if not _string_match(e.operator, e.values, ev.path):
                return False
        for b in sel.match_binaries:
            if not _string_match({"In": "Equal", "NotIn": "NotEqual"}.get(b.operator, b.operator), b.values,
                                 ev.binary or ""):
                return False
        for mp in sel.match_pids:
            pids = {ev.pid}
            if mp.follow_forks:
                p = self.cache.by_pid(ev.pid)
                while p is not None and len(pids) < 64:
                    pids.add(p.ppid)
                    p = self.cache.by_pid(p.ppid) if p.ppid != p.pid else None
            hit = bool(pids & set(mp.values))
            if hit != (mp.operator == "In"):
                return False
        return True

    def load(self) -> None:
        self.attach()

    def attach(self) -> None:
        if not self.attached:
            self.registry.add(self)
            self.attached = True

    def detach(self) -> None:
        if self.attached:
            self.registry.remove(self)
            self.attached = False

    def close(self) -> None:
        self.detach()

    def stats(self) -> dict[str, int]:
        return {"hits": self.decisions, "filtered": 0, "posted": self.denied + self.monitored, "ratelimited": 0,
                "signals": self.denied, "monitored": self.monitored, "pending_full": 0, "errors": 0}

    def program_ids(self) -> list[int]:
        return []

    def kernel_memory(self) -> int:
        return 0


class NetDenyHook:
    """connect/sendmsg/bind Override via cgroup-BPF sock_addr programs on the cgroup2 root."""

    def __init__(self, compiled: CompiledHook, shared: dict[str, Any], monitor: bool) -> None:
        from vigil.enforce.netrules import NetRule

        self.compiled = compiled
        self.hook_id = compiled.hook_id
        self.shared = shared
        self.monitor = monitor
        self.nd: Any = None
        what = compiled.placement.attach["what"]
        self.rules: list[NetRule] = []
        for si, sel in enumerate(compiled.selectors):
            self.rules += self._rules_for(si, sel, what)
        if not self.rules:
            raise PolicyError(f"{compiled.placement.loc}: an Override on {compiled.placement.target} needs a selector "
                              "with Override/Sigkill to become a socket rule")

    def _rules_for(self, si: int, sel: Selector, what: str) -> list:
        from vigil.enforce.netrules import NetRule

        act = _action(sel)
        if act not in ENFORCE:
            return []
        for n in ("match_namespaces", "match_namespace_changes", "match_capabilities", "match_capability_changes",
                  "match_return_args", "match_data"):
            if getattr(sel, n):
                raise PolicyError(f"{sel.loc}: {n} cannot be expressed as a cgroup socket rule")
        family = None
        cidrs: list[str] = []
        ports: list[tuple[int, int]] = []
        for e in sel.match_args:
            if e.operator == "Family":
                fam = parse_family(e.values[0])
                family = {2: "inet", 10: "inet6"}.get(fam)
                if family is None or len(e.values) > 1:
                    raise PolicyError(f"{e.at('values')}: Family must be one of AF_INET, AF_INET6 here")
            elif e.operator in ("SAddr", "DAddr"):
                cidrs += [str(ipaddress.ip_network(v, strict=False)) for v in e.values]
            elif e.operator in ("SPort", "DPort"):
                ports += [parse_port(v) for v in e.values]
            else:
                raise PolicyError(f"{e.at('operator')}: {e.operator} cannot be expressed as a cgroup socket rule "
                                  "(supported: Family, SAddr/DAddr, SPort/DPort)")
        binaries: list[str | None] = [None]
        for b in sel.match_binaries:
            if b.operator != "In":
                raise PolicyError(f"{b.at('operator')}: only matchBinaries In is supported for socket rules")
            binaries = list(b.values)
        pids: list[int] = []
        for mp in sel.match_pids:
            if mp.operator != "In" or mp.follow_forks or mp.is_namespace_pid:
                raise PolicyError(f"{mp.loc}: only plain matchPIDs In is supported for socket rules")
            pids += list(mp.values)
        return [NetRule(id=(self.hook_id << 8) | (si << 4) | k, action="deny", monitor=self.monitor, family=family,
                        cidrs=cidrs, ports=ports, binary=b, pids=pids, hooks=(what,))
                for k, b in enumerate(binaries)]

    def load(self) -> None:
        from vigil.enforce.netdeny import NetDeny

        nd = NetDeny(None, self.shared)
        try:
            nd.set_rules(self.rules)
            nd.attach()
        except BaseException:
            nd.close()
            raise
        self.nd = nd

    def attach(self) -> None:
        if self.nd is not None and not self.nd.attached:
            self.nd.attach()

    def detach(self) -> None:
        if self.nd is not None:
            self.nd.detach()

    @property
    def attached(self) -> bool:
        return self.nd is not None and self.nd.attached

    def close(self) -> None:
        if self.nd is not None:
            self.nd.close()
            self.nd = None

    def stats(self) -> dict[str, int]:
        st = self.nd.stats() if self.nd is not None else {}
        denied = sum(v["denied"] for v in st.values())
        mon = sum(v["monitored"] for v in st.values())
        return {"hits": denied + mon + sum(v["allowed"] for v in st.values()), "filtered": 0, "posted": denied + mon,
                "ratelimited": 0, "signals": denied, "monitored": mon, "pending_full": 0, "errors": 0}

    def program_ids(self) -> list[int]:
        from vigil.kernel.info import prog_info

        if self.nd is None:
            return []
        return [int(prog_info(p.fd)["id"]) for p in self.nd.obj.programs.values() if p.fd >= 0]

    def kernel_memory(self) -> int:
        return 64 * 1024


def netdeny_event(rec: dict[str, Any], hook: CompiledHook, node_body: dict[str, Any]) -> dict[str, Any]:
    """The process_kprobe body of a refused (or, in monitor mode, reported) socket operation."""
    fam = {"inet": "AF_INET", "inet6": "AF_INET6"}.get(rec["family"], rec["family"])
    body = dict(node_body)
    body["function_name"] = hook.placement.attach["syscall"]
    plans = hook.placement.args
    if plans:
        a: dict[str, Any] = {"sockaddr_arg": {"family": fam, "addr": rec["daddr"], "port": rec["dport"]}}
        if plans[0].label:
            a["label"] = plans[0].label
        body["args"] = [a]
    body["action"] = "KPROBE_ACTION_OVERRIDE"
    body["policy_name"] = hook.policy
    sel = ((rec["rule_id"] >> 4) & 0xF) + 1
    mode = "monitor mode: reported, not enforced" if rec["monitor"] else "enforced"
    msg = (f"[vigil: selector {sel} matched {rec['protocol']} {rec['daddr']}:{rec['dport']}; override {mode} via "
           f"cgroup/{rec['hook']}]")
    body["message"] = f"{hook.message} {msg}" if hook.message else msg
    if hook.tags:
        body["tags"] = list(hook.tags)
    return body


def fanotify_event(ev: PermEvent, d: Decision, hook: CompiledHook, node_body: dict[str, Any]) -> dict[str, Any]:
    body = dict(node_body)
    body["function_name"] = hook.placement.attach["syscall"]
    if hook.placement.args:
        p = hook.placement.args[0]
        a: dict[str, Any] = {"string_arg": ev.path}
        if p.label:
            a["label"] = p.label
        body["args"] = [a]
    act = "KPROBE_ACTION_SIGKILL" if d.reason.endswith("sigkill") else "KPROBE_ACTION_OVERRIDE"
    body["action"] = act if not d.allow or d.monitor else "KPROBE_ACTION_POST"
    body["policy_name"] = hook.policy
    kind = "FAN_OPEN_EXEC_PERM" if ev.kind == "exec" else "FAN_OPEN_PERM"
    mode = "monitor mode: reported, not enforced" if d.monitor else ("enforced" if not d.allow else "allowed")
    msg = f"[vigil: {d.reason} matched {ev.path}; {act.removeprefix('KPROBE_ACTION_').lower()} {mode} via fanotify {kind}]"
    body["message"] = f"{hook.message} {msg}" if hook.message else msg
    if hook.tags:
        body["tags"] = list(hook.tags)
    return body


__all__ = ["FanotifyHook", "GuardRegistry", "NetDenyHook", "fanotify_event", "netdeny_event", "L"]
