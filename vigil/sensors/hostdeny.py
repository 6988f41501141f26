"""Policy hooks enforced without BPF LSM: fanotify permission events and cgroup-BPF socket hooks.

They have the same lifecycle as GenericHook (load, attach, detach, close, stats) so the
policy manager treats every hook alike. Selectors the back end cannot express are refused
at construction, before anything is loaded.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vigil.core.errors import PolicyError
from vigil.enforce.permd import PermdError, PermissionHelper
from vigil.enforce.permd_proto import Report
from vigil.enforce.permtable import PID_OPS, STRING_OPS, Cond, Rule, Table, plan_marks
from vigil.kernel import policy_layout as L
from vigil.policy.compile import CompiledHook
from vigil.policy.hostdeny_check import socket_rule_origin, socket_rules
from vigil.policy.model import Selector
from vigil.sensors.generic_events import selector_action

if TYPE_CHECKING:
    from vigil.enforce.netrules import NetRule

log = logging.getLogger("vigil.sensor.hostdeny")

ENFORCE = ("override", "sigkill")
BINARY_OPS = {"In": "Equal", "NotIn": "NotEqual", "Prefix": "Prefix", "NotPrefix": "NotPrefix",
              "Postfix": "Postfix", "NotPostfix": "NotPostfix"}


def _action(sel: Selector) -> str:
    names = [a.action.lower() for a in sel.match_actions]
    for n in ("sigkill", "override"):
        if n in names:
            return n
    return "nopost" if "nopost" in names else "post"


class GuardRegistry:
    """One native permission helper (vigil-permd) per agent, shared by every fanotify hook.

    The table in force is the rules of every attached hook; each change pushes a new one
    (the helper marks it completely before swapping). Decisions never run here: this side
    only compiles rules and turns the helper's reports into events."""

    def __init__(self, report: Callable[[Report, FanotifyHook], None], *, deadline_ms: int = 1000,
                 default_allow: bool = True, test_hooks: bool = False) -> None:
        self._lock = threading.Lock()
        self._hooks: list[FanotifyHook] = []
        self._report = report
        self.deadline_ms = deadline_ms
        self.default_allow = default_allow
        self.test_hooks = test_hooks
        self.helper: PermissionHelper | None = None
        self.timeouts = 0

    def _apply(self, hooks: list[FanotifyHook]) -> None:
        """Make the rules of `hooks` the table in force, or raise PolicyError and keep the old one."""
        rules = [r for h in hooks for r in h.rules()]
        if not rules:
            if self.helper is not None:
                self.helper.stop()
                self.helper = None
            return
        try:
            marks = plan_marks(rules)
        except ValueError as e:
            raise PolicyError(str(e)) from None
        table = Table(rules, marks, exempt=(os.getpid(),), default_allow=self.default_allow,
                      deadline_ms=self.deadline_ms)
        try:
            if self.helper is None:
                helper = PermissionHelper(self._on_report, test_hooks=self.test_hooks)
                helper.start()
                self.helper = helper
            self.helper.push(table)
        except PermdError as e:
            if not self._hooks and self.helper is not None:
                self.helper.stop()
                self.helper = None
            raise PolicyError(f"fanotify permission helper: {e}") from None

    def add(self, hook: FanotifyHook) -> None:
        with self._lock:
            self._apply(self._hooks + [hook])
            self._hooks.append(hook)

    def remove(self, hook: FanotifyHook) -> None:
        with self._lock:
            if hook not in self._hooks:
                return
            rest = [h for h in self._hooks if h is not hook]
            try:
                self._apply(rest)
            finally:
                self._hooks = rest

    def refresh(self) -> None:
        """Push the table again (a hook's mode changed)."""
        with self._lock:
            self._apply(self._hooks)

    def close(self) -> None:
        with self._lock:
            self._hooks.clear()
            if self.helper is not None:
                self.helper.stop()
                self.helper = None

    def stats(self) -> dict[str, int]:
        helper = self.helper
        if helper is None:
            return {}
        try:
            return helper.stats()
        except PermdError:
            return {}

    def nopost_counts(self, hook_id: int) -> dict[int, int]:
        """The NoPost decisions the helper made for hook `hook_id`, per 0-based selector (no
        report tells of them: the helper counts them, read with its other counters)."""
        helper = self.helper
        if helper is None:
            return {}
        try:
            _st, counts = helper.stats_and_counts()
        except PermdError:
            return {}
        return {sel: n for (hid, sel), n in counts.items() if hid == hook_id}

    def _on_report(self, rep: Report) -> None:
        if rep.hook_id == 0:
            self.timeouts += 1
            log.warning("permission for %s %s (pid %d) not decided within %d ms: answered %s by default",
                        rep.kind, rep.path, rep.pid, self.deadline_ms, "allow" if rep.allowed else "deny")
            return
        hook = next((h for h in self._hooks if h.hook_id == rep.hook_id), None)
        if hook is not None:
            hook.count(rep)
            if hook.posts(rep):   # [Override, NoPost]: enforced and counted, no event
                self._report(rep, hook)


class FanotifyHook:
    """exec/open Override on a host without BPF LSM: its selectors become rules of the native
    permission helper's table, decided there for every guarded exec or open."""

    def __init__(self, compiled: CompiledHook, registry: GuardRegistry, monitor: bool) -> None:
        self.compiled = compiled
        self.hook_id = compiled.hook_id
        self.registry = registry
        self.monitor = monitor
        self.what = compiled.placement.attach["what"]
        self.attached = False
        self.reported = self.denied = self.monitored = 0
        self.actions: dict[int, dict[str, int]] = {}  # per 1-based selector: its action counters
        self._nopost_before: dict[int, int] = {}  # per 0-based selector: NoPost decisions of earlier attachments
        # 0-based selectors with NoPost: an enforcing one's decision is reported by the helper (its
        # rule's action is the enforcement) but makes no event, and counts nopost, not post
        self._nopost_selectors = {si for si, sel in enumerate(compiled.selectors)
                                  if any(a.action.lower() == "nopost" for a in sel.match_actions)}
        self.nopost_reported = 0
        self._check(compiled)

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
            for b in sel.match_binaries:
                if b.operator not in BINARY_OPS:
                    raise PolicyError(f"{b.at('operator')}: matchBinaries {b.operator} is not supported by the "
                                      "fanotify back end")
            for mp in sel.match_pids:
                if mp.is_namespace_pid:
                    raise PolicyError(f"{mp.loc}: isNamespacePID is not supported by the fanotify back end")
                if mp.operator not in PID_OPS:
                    raise PolicyError(f"{mp.at('operator')}: matchPIDs {mp.operator} is not supported by the "
                                      "fanotify back end (In, NotIn)")

    def rules(self) -> list[Rule]:
        """One helper rule per selector, in selector order (the first match decides for this hook)."""
        if not self.attached:
            return []
        out = []
        for si, sel in enumerate(self.compiled.selectors):
            conds = [Cond("path", e.operator, tuple(e.values)) for e in sel.match_args]
            conds += [Cond("binary", BINARY_OPS[b.operator], tuple(b.values)) for b in sel.match_binaries]
            conds += [Cond("pid", mp.operator, tuple(int(v) for v in mp.values), mp.follow_forks)
                      for mp in sel.match_pids]
            out.append(Rule(self.hook_id, si, frozenset({self.what}), _action(sel), self.monitor, tuple(conds)))
        return out

    def count(self, rep: Report) -> None:
        """A decision the helper reported: the actions its selector took (the report becomes
        the event: post; the enforcement done, or in monitor mode reported only)."""
        self.reported += 1
        took = ["post"] if self.posts(rep) else ["nopost"]
        if took == ["nopost"]:
            self.nopost_reported += 1
        act = "signal" if rep.action == "sigkill" else "override"
        if rep.monitor:
            self.monitored += 1
            if rep.action in ENFORCE:
                took.append(f"monitor_{act}")
        elif not rep.allowed and rep.action in ENFORCE:
            self.denied += 1
            took.append(act)
        row = self.actions.setdefault(rep.selector + 1, {})
        for name in took:
            row[name] = row.get(name, 0) + 1

    def posts(self, rep: Report) -> bool:
        """Whether the selector that decided makes an event (one with NoPost does not)."""
        return rep.selector not in self._nopost_selectors

    def selector_stats(self) -> dict[int, dict[str, int]]:
        out = {sel: dict(row) for sel, row in list(self.actions.items())}
        # a NoPost selector's decisions send no report: the helper counts them (the counts of
        # the times the hook was attached before kept here: a table without its rules drops them)
        now = self.registry.nopost_counts(self.hook_id) if self.attached else {}
        for sel in set(now) | set(self._nopost_before):
            out.setdefault(sel + 1, {})["nopost"] = now.get(sel, 0) + self._nopost_before.get(sel, 0)
        return out

    def load(self) -> None:
        self.attach()

    def attach(self) -> None:
        if not self.attached:
            self.attached = True
            try:
                self.registry.add(self)
            except BaseException:
                self.attached = False
                raise

    def detach(self) -> None:
        if self.attached:
            for sel, n in self.registry.nopost_counts(self.hook_id).items():
                self._nopost_before[sel] = self._nopost_before.get(sel, 0) + n
            self.attached = False
            self.registry.remove(self)

    def set_monitor(self, monitor: bool) -> None:
        self.monitor = monitor
        if self.attached:
            self.registry.refresh()

    def close(self) -> None:
        self.detach()

    def stats(self) -> dict[str, int]:
        return {"hits": self.reported, "filtered": 0, "posted": self.reported - self.nopost_reported, "ratelimited": 0,
                "signals": self.denied, "monitored": self.monitored, "pending_full": 0, "errors": 0}

    def program_ids(self) -> list[int]:
        return []

    def kernel_memory(self) -> int:
        return 0


class NetDenyHook:
    """connect/sendmsg/bind Override via cgroup-BPF sock_addr programs on the cgroup2 root."""

    def __init__(self, compiled: CompiledHook, shared: dict[str, Any], monitor: bool) -> None:

        self.compiled = compiled
        self.hook_id = compiled.hook_id
        self.shared = shared
        self.monitor = monitor
        self.nd: Any = None
        self.rules: list[NetRule] = self._build(monitor)

    def _build(self, monitor: bool) -> list[NetRule]:
        """The rules of this hook's selectors in this mode: what explain checked (check_host_selectors
        runs the same socket_rules), refused with the field when the tables cannot hold them."""
        sr = socket_rules(self.compiled.placement, self.compiled.selectors, self.hook_id, monitor)
        if sr.problems:
            loc, msg = sr.problems[0]
            raise PolicyError(f"{loc}: {loc.path + ': ' if loc.path else ''}{msg}")
        return sr.rules

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

    def prepare_monitor(self, monitor: bool) -> list[NetRule]:
        """The rules of this hook in that mode, compiled (nothing in the kernel changes):
        PolicyError when they cannot be loaded."""
        from vigil.enforce.netrules import NetRuleError, compile_rules

        rules = self._build(monitor)
        if self.nd is not None:
            try:
                compile_rules(rules, max_prefixes=self.nd.max_cidrs // 2)
            except NetRuleError as e:
                raise PolicyError(f"{self.compiled.placement.loc}: socket rules of {self.compiled.placement.target}: "
                                  f"{e}") from None
        return rules

    def set_monitor(self, monitor: bool, rules: list[NetRule] | None = None) -> None:
        """Switch mode: the new rule set replaces the old one atomically in the kernel, or
        PolicyError and this hook stays as it was."""
        from vigil.enforce.netrules import NetRuleError

        if rules is None:
            rules = self.prepare_monitor(monitor)
        if self.nd is not None:
            try:
                self.nd.set_rules(rules)
            except NetRuleError as e:
                raise PolicyError(f"{self.compiled.placement.loc}: socket rules of {self.compiled.placement.target}: "
                                  f"{e}") from None
        self.monitor, self.rules = monitor, rules

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
        posts = sum(v["posted"] for v in st.values())
        return {"hits": denied + mon + posts + sum(v["allowed"] for v in st.values()), "filtered": 0,
                "posted": denied + mon + posts,
                "ratelimited": 0, "signals": denied, "monitored": mon, "pending_full": 0, "errors": 0}

    def selector_stats(self) -> dict[int, dict[str, int]]:
        """The actions each selector's socket rule took, from the rules' kernel counters:
        a refusal (override) or, in monitor mode, its report (monitor_override), each with
        its record (post); a post rule's record (post); an allow rule's pass (nopost)."""
        from vigil.policy.hostdeny_check import socket_rule_origin

        out: dict[int, dict[str, int]] = {}
        for rid, c in (self.nd.stats() if self.nd is not None else {}).items():
            row = out.setdefault(socket_rule_origin(rid)[1] + 1, {})
            for name, n in (("override", c["denied"]), ("monitor_override", c["monitored"]), ("nopost", c["allowed"]),
                            ("post", c["denied"] + c["monitored"] + c["posted"])):
                if n:
                    row[name] = row.get(name, 0) + n
        return {sel: row for sel, row in out.items() if row}

    def program_ids(self) -> list[int]:
        from vigil.kernel.info import prog_info

        if self.nd is None:
            return []
        return [int(prog_info(p.fd)["id"]) for p in self.nd.obj.programs.values() if p.fd >= 0]

    def kernel_memory(self) -> int:
        return 64 * 1024


def netdeny_hook_id(rule_id: int) -> int:
    """The hook whose rule refused (or reported) a socket operation."""
    return socket_rule_origin(rule_id)[0]


def netdeny_selector(rule_id: int) -> int:
    """The 1-based selector a socket rule was built from."""
    return socket_rule_origin(rule_id)[1] + 1


def netdeny_event(rec: dict[str, Any], hook: CompiledHook) -> dict[str, Any]:
    """The process_kprobe body (after process and parent) of a refused (or, in monitor mode,
    reported) socket operation, or of one a Post selector let through."""
    fam = {"inet": "AF_INET", "inet6": "AF_INET6"}.get(rec["family"], rec["family"])
    body: dict[str, Any] = {}
    body["function_name"] = hook.placement.event_function
    args = []
    for p in hook.placement.args:
        if p.vtype == L.T["ksockaddr"]:
            a: dict[str, Any] = {"sockaddr_arg": {"family": fam, "addr": rec["daddr"], "port": rec["dport"]}}
        elif p.vtype == L.T["socket"]:
            a = {"sock_arg": {"family": fam, "protocol": {"tcp": "IPPROTO_TCP", "udp": "IPPROTO_UDP"}.get(
                rec.get("protocol", ""), str(rec.get("protocol", "")))}}
        else:
            continue
        if p.label:
            a["label"] = p.label
        args.append(a)
    if args:
        body["args"] = args
    posted = rec["action"] == "allow"   # a Post selector's rule: let through, reported
    sel = netdeny_selector(rec["rule_id"])
    # as the kernel hooks' events: the selector's last action ([Override, Post]: Post), and a
    # return_action (Post: no return actions run here)
    body["action"] = selector_action(hook, sel)
    body["policy_name"] = hook.policy
    body["return_action"] = "KPROBE_ACTION_POST"
    what = ("post: allowed" if posted else
            "override monitor mode: reported, not enforced" if rec["monitor"] else "override enforced")
    msg = (f"[vigil: selector {sel} matched {rec['protocol']} {rec['daddr']}:{rec['dport']}; {what} via "
           f"cgroup/{rec['hook']}]")
    body["message"] = f"{hook.message} {msg}" if hook.message else msg
    if hook.tags:
        body["tags"] = list(hook.tags)
    return body


def fanotify_event(rep: Report, hook: CompiledHook) -> dict[str, Any]:
    """The process_kprobe body (after process and parent) of an exec/open the helper decided
    (refused, reported in monitor mode, or posted)."""
    body: dict[str, Any] = {}
    body["function_name"] = hook.placement.event_function
    if hook.placement.args:
        p = hook.placement.args[0]
        r = p.render if p.render in ("file", "path", "linux_binprm") else "string"
        a: dict[str, Any] = {"string_arg": rep.path} if r == "string" else {f"{r}_arg": {"path": rep.path}}
        if p.label:
            a["label"] = p.label
        body["args"] = [a]
    enforcing = rep.action in ENFORCE
    act = "KPROBE_ACTION_SIGKILL" if rep.action == "sigkill" else "KPROBE_ACTION_OVERRIDE"
    # as the kernel hooks' events: the selector's last action ([Sigkill, Post]: Post), and a
    # return_action (Post: no return actions run here)
    body["action"] = selector_action(hook, rep.selector + 1)
    body["policy_name"] = hook.policy
    body["return_action"] = "KPROBE_ACTION_POST"
    kind = "FAN_OPEN_EXEC_PERM" if rep.kind == "exec" else "FAN_OPEN_PERM"
    if not enforcing:
        what = "allowed"
    else:
        mode = ("monitor mode: reported, not enforced" if rep.monitor
                else "enforced" if not rep.allowed else "allowed")
        what = f"{act.removeprefix('KPROBE_ACTION_').lower()} {mode}"
    msg = f"[vigil: selector {rep.selector + 1}: {rep.action} matched {rep.path}; {what} via fanotify {kind}]"
    body["message"] = f"{hook.message} {msg}" if hook.message else msg
    if hook.tags:
        body["tags"] = list(hook.tags)
    return body


def event_kind(hook: CompiledHook) -> str:
    return hook.placement.event_kind or "process_kprobe"


__all__ = ["FanotifyHook", "GuardRegistry", "NetDenyHook", "fanotify_event", "netdeny_event", "netdeny_hook_id",
           "netdeny_selector", "L"]
