"""Selector checks: per-selector limits, the non-argument filters, and actions."""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import enums, limits, values
from .errors import Diagnostics
from .model import (
    ActionSelector,
    BinarySelector,
    CapabilitiesSelector,
    Hook,
    KProbeArg,
    LabelSelector,
    Node,
    Selector,
    TracingPolicySpec,
)
from .util import enum_message
from .validate_args import ArgChecker


@dataclass
class HookCtx:
    """What selector checks need to know about the hook. section is the spec key (kprobes,
    fentries, tracepoints, uprobes, lsmhooks, usdts) or "macro" (no hook known)."""

    section: str
    hook: Hook | None

    @property
    def is_return(self) -> bool:
        return bool(getattr(self.hook, "return_", False))

    def args(self) -> tuple[KProbeArg, ...] | None:
        return None if self.hook is None else self.hook.args

    def data(self) -> tuple[KProbeArg, ...] | None:
        return None if self.hook is None else getattr(self.hook, "data", ())

    def return_args(self) -> tuple[KProbeArg, ...] | None:
        if self.hook is None:
            return None
        ra = getattr(self.hook, "return_arg", None)
        return (ra,) if ra is not None else ()


# action -> (parameters it may take, parameters it needs)
ACTION_PARAMS: dict[str, tuple[set[str], set[str]]] = {
    "Post": ({"rateLimit", "rateLimitScope", "kernelStackTrace", "userStackTrace", "imaHash"},
             set()),
    "NoPost": (set(), set()),
    "Sigkill": (set(), set()),
    "Signal": ({"argSig"}, {"argSig"}),
    "Override": ({"argError", "argRegs", "argNewSymbol", "argNewAddr", "argNewOffset"}, set()),
    "GetUrl": ({"argUrl"}, {"argUrl"}),
    "DnsLookup": ({"argFqdn"}, {"argFqdn"}),
    "TrackSock": ({"argSock"}, set()),  # argSock defaults to 0 (upstream examples omit it)
    "UntrackSock": ({"argSock"}, set()),
    "NotifyEnforcer": ({"argError", "argSig"}, set()),
    "CleanupEnforcerNotification": (set(), set()),
    "Set": ({"argIndex", "argValue"}, {"argIndex", "argValue"}),
    "FollowFD": ({"argFd", "argName"}, set()),
    "UnfollowFD": ({"argFd", "argName"}, set()),
    "CopyFD": ({"argFd", "argName"}, set()),
}
ACTION_PARAM_KEYS = ("argFd argName argUrl argFqdn argError argSig argSock rateLimit "
                     "rateLimitScope kernelStackTrace userStackTrace imaHash argIndex argValue "
                     "argRegs argNewSymbol argNewAddr argNewOffset").split()
_REG_ASSIGN = re.compile(r"^[a-z][a-z0-9]*=\S.*$")
_FQDN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                   r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?$")


class SelectorChecker:
    def __init__(self, diag: Diagnostics, spec: TracingPolicySpec) -> None:
        self.diag = diag
        self.spec = spec
        self.args = ArgChecker(diag, spec)
        self.follow_children = 0

    def check_hook_selectors(self, ctx: HookCtx) -> None:
        hook = ctx.hook
        assert hook is not None
        if len(hook.selectors) > limits.MAX_SELECTORS:
            self.diag.error(hook.at(f"selectors[{limits.MAX_SELECTORS}]"),
                            f"too many selectors: {len(hook.selectors)} (max "
                            f"{limits.MAX_SELECTORS} per hook)")
        for sel in hook.selectors:
            self.check(sel, ctx)

    def check(self, sel: Selector, ctx: HookCtx) -> None:
        d = self.diag
        self.args.section = ctx.section
        # argument filters
        n_args = len(sel.match_args) + len(sel.match_data)
        if n_args > limits.MAX_MATCH_ARGS:
            extra = [*sel.match_args, *sel.match_data][limits.MAX_MATCH_ARGS]
            d.error(extra.loc, f"too many argument filters: {n_args} matchArgs+matchData entries "
                    f"(max {limits.MAX_MATCH_ARGS} per selector)")
        for field, entries, targets in (("matchArgs", sel.match_args, ctx.args()),
                                        ("matchData", sel.match_data, ctx.data())):
            # Several entries may filter the same argument (e.g. DAddr and DPort on one sock).
            for m in entries:
                self.args.check(m, field, targets)
        if sel.match_return_args or sel.match_return_actions:
            if ctx.hook is not None and not ctx.is_return:
                key = "matchReturnArgs" if sel.match_return_args else "matchReturnActions"
                what = ("the hook has no return probe" if ctx.section in
                        ("tracepoints", "lsmhooks", "usdts") else "the hook needs return: true")
                d.error(sel.at(key), f"{key} is only valid on return probes: {what}")
            else:
                for m in sel.match_return_args:
                    self.args.check(m, "matchReturnArgs", ctx.return_args(), is_return=True)
        self._pids(sel)
        self._binaries(sel, "matchBinaries", sel.match_binaries, limits.MAX_MATCH_BINARIES)
        self._binaries(sel, "matchParentBinaries", sel.match_parent_binaries,
                       limits.MAX_MATCH_PARENT_BINARIES)
        self._namespaces(sel)
        self._capabilities(sel.match_capabilities)
        self._capabilities(sel.match_capability_changes)
        for w in sel.match_workloads:
            for key in ("podSelector", "containerSelector", "hostSelector"):
                ls = getattr(w, {"podSelector": "pod_selector", "containerSelector":
                                 "container_selector", "hostSelector": "host_selector"}[key])
                if ls is not None:
                    check_label_selector(d, ls)
        for key, acts in (("matchActions", sel.match_actions),
                          ("matchReturnActions", sel.match_return_actions)):
            if len(acts) > limits.MAX_ACTIONS:
                d.error(acts[limits.MAX_ACTIONS].loc, f"too many actions: {len(acts)} in {key} "
                        f"(max {limits.MAX_ACTIONS} per selector)")
            for a in acts:
                self.action(a, ctx)
            if key == "matchActions":
                self._user_actions_last(acts)
                self._user_actions_supported(acts, ctx.section)

    def _pids(self, sel: Selector) -> None:
        for p in sel.match_pids:
            self._operator(p, enums.PID_OPERATORS)
            if not p.values:
                self.diag.error(p.at("values"), "matchPIDs needs at least one PID")
            elif len(p.values) > limits.MAX_PID_VALUES:
                self.diag.error(p.at(f"values[{limits.MAX_PID_VALUES}]"), "too many PIDs: "
                                f"{len(p.values)} (max {limits.MAX_PID_VALUES} per entry, "
                                "Vigil's kernel limit MAX_PID_VALUES)")

    def _binaries(self, sel: Selector, key: str, entries: tuple[BinarySelector, ...],
                  cap: int) -> None:
        if len(entries) > cap:
            self.diag.error(entries[cap].loc, f"only {cap} {key} entry is allowed per selector "
                            f"(got {len(entries)})")
        for b in entries:
            if not self._operator(b, enums.BINARY_OPERATORS):
                continue
            if not b.values:
                self.diag.error(b.at("values"), f"{key} needs at least one value")
            lim = {"Prefix": limits.MAX_PREFIX_LEN, "NotPrefix": limits.MAX_PREFIX_LEN,
                   "Postfix": limits.MAX_POSTFIX_LEN, "NotPostfix": limits.MAX_POSTFIX_LEN
                   }.get(b.operator, limits.MAX_STRING_LEN)
            for i, v in enumerate(b.values):
                if len(v) > lim:
                    self.diag.error(b.at(f"values[{i}]"), f"value is {len(v)} characters long "
                                    f"(max {lim} for {b.operator})")
                elif b.operator in ("In", "NotIn") and not v.startswith("/"):
                    self.diag.warn(b.at(f"values[{i}]"), f'"{v}" is not an absolute path; '
                                   f"{b.operator} compares full binary paths")
            if b.follow_children:
                self.follow_children += 1
                if self.follow_children > limits.MAX_FOLLOW_CHILDREN:
                    self.diag.error(b.at("followChildren"), "too many followChildren entries in "
                                    f"this policy (max {limits.MAX_FOLLOW_CHILDREN})")

    def _namespaces(self, sel: Selector) -> None:
        d = self.diag
        if len(sel.match_namespaces) > limits.MAX_MATCH_NAMESPACES:
            d.error(sel.match_namespaces[limits.MAX_MATCH_NAMESPACES].loc, "too many "
                    f"matchNamespaces entries: {len(sel.match_namespaces)} (max "
                    f"{limits.MAX_MATCH_NAMESPACES})")
        for ns in sel.match_namespaces:
            if ns.namespace not in enums.NAMESPACES:
                d.error(ns.at("namespace"), enum_message("namespace", ns.namespace,
                                                         enums.NAMESPACES))
            self._operator(ns, enums.NAMESPACE_OPERATORS)
            if not ns.values:
                d.error(ns.at("values"), "matchNamespaces needs at least one value")
            if len(ns.values) > limits.MAX_NAMESPACE_VALUES:
                d.error(ns.at(f"values[{limits.MAX_NAMESPACE_VALUES}]"), "too many values: "
                        f"{len(ns.values)} (max {limits.MAX_NAMESPACE_VALUES} per namespace)")
            for i, v in enumerate(ns.values):
                try:
                    values.parse_namespace_value(v)
                except ValueError as e:
                    d.error(ns.at(f"values[{i}]"), str(e))
        if len(sel.match_namespace_changes) > limits.MAX_MATCH_NAMESPACE_CHANGES:
            d.error(sel.match_namespace_changes[limits.MAX_MATCH_NAMESPACE_CHANGES].loc,
                    f"only {limits.MAX_MATCH_NAMESPACE_CHANGES} matchNamespaceChanges entry is "
                    "allowed per selector")
        for nc in sel.match_namespace_changes:
            self._operator(nc, enums.NAMESPACE_OPERATORS)
            if not nc.values:
                d.error(nc.at("values"), "matchNamespaceChanges needs at least one namespace")
            for i, v in enumerate(nc.values):
                if v not in enums.NAMESPACES:
                    d.error(nc.at(f"values[{i}]"), enum_message("namespace", v, enums.NAMESPACES))

    def _capabilities(self, entries: tuple[CapabilitiesSelector, ...]) -> None:
        for c in entries:
            if c.type not in enums.CAPABILITY_TYPES:
                self.diag.error(c.at("type"), enum_message("capability set", c.type,
                                                           enums.CAPABILITY_TYPES))
            self._operator(c, enums.CAPABILITY_OPERATORS)
            if not c.values:
                self.diag.error(c.at("values"), "needs at least one capability")
            for i, v in enumerate(c.values):
                try:
                    values.parse_capability(v)
                except ValueError as e:
                    self.diag.error(c.at(f"values[{i}]"), str(e))

    def _operator(self, n: Node, allowed: tuple[str, ...]) -> bool:
        op = n.operator
        if op not in allowed:
            self.diag.error(n.at("operator"), enum_message("operator", op, allowed))
            return False
        return True

    # ---- actions ------------------------------------------------------------------------------

    def action(self, a: ActionSelector, ctx: HookCtx) -> None:
        d, name = self.diag, a.action
        if name in enums.DEPRECATED_ACTIONS:
            d.warn(a.at("action"), f"action {name} is deprecated (removed upstream); Vigil accepts "
                   "it and ignores it")
        elif name not in enums.ACTIONS:
            d.error(a.at("action"), enum_message("action", name, enums.ACTIONS))
            return
        allowed, needed = ACTION_PARAMS[name]
        if a.has("rateLimit") and name != "Post":
            # the one misplaced parameter Tetragon refuses rather than ignores
            d.error(a.at("rateLimit"), f"rateLimit applies only to action Post, not {name}")
        for key in ACTION_PARAM_KEYS:
            if a.has(key) and key not in allowed and key != "rateLimit":
                # Tetragon ignores such parameters and upstream examples carry some
                # (e.g. Sigkill with argError), so this cannot reject the policy.
                d.warn(a.at(key), f"{key} is not a parameter of action {name}; it is ignored")
        for key in sorted(needed):
            if not a.has(key):
                d.error(a.loc.child(key), f"action {name} needs {key}")
        section, hook = ctx.section, ctx.hook
        if a.has("argSig") and "argSig" in allowed:
            try:
                values.parse_signal(a.arg_sig)
            except ValueError as e:
                d.error(a.at("argSig"), str(e))
        if a.has("argError") and "argError" in allowed and not -limits.MAX_ERRNO <= a.arg_error < 0:
            # A non-errno return is legitimate for some hooks (upstream overrides LSM hooks with 1).
            d.warn(a.at("argError"), f"argError {a.arg_error} is not a negative errno "
                   f"(-1..-{limits.MAX_ERRNO}); the hook will return {a.arg_error}")
        if name == "Post":
            self._post(a, section)
        elif name == "Override":
            self._override(a, ctx)
        elif name == "NotifyEnforcer":
            if not a.has("argError") and not a.has("argSig"):
                d.error(a.at("action"), "NotifyEnforcer needs argError and/or argSig")
            if not self.spec.enforcers:
                d.error(a.at("action"), "NotifyEnforcer needs an enforcer in spec.enforcers")
        elif name == "GetUrl" and a.has("argUrl"):
            if not re.match(r"^https?://[^\s/]+", a.arg_url):
                d.error(a.at("argUrl"), f'argUrl "{a.arg_url}" is not an http:// or https:// URL')
        elif name == "DnsLookup" and a.has("argFqdn"):
            if not _FQDN.match(a.arg_fqdn):
                d.error(a.at("argFqdn"), f'argFqdn "{a.arg_fqdn}" is not a domain name')
        elif name in ("TrackSock", "UntrackSock") and hook is not None:
            if not any(x.index == a.arg_sock for x in hook.args) and a.arg_sock >= len(hook.args):
                d.error(a.at("argSock"), f"argSock {a.arg_sock} does not refer to an argument of "
                        "the hook")
        elif name == "Set":
            if section not in ("usdts", "macro"):
                d.error(a.at("action"), "action Set is only supported on usdts")
            elif hook is not None and a.has("argIndex") and a.arg_index >= len(hook.args):
                d.error(a.at("argIndex"), f"argIndex {a.arg_index} is out of range: the hook has "
                        f"{len(hook.args)} args")

    def _user_actions_last(self, acts: tuple[ActionSelector, ...]) -> None:
        """GetUrl and DnsLookup run only as the selector's last action: the agent runs the one
        the event's action names, and the event's action is the last action run (Tetragon's
        handleMsgGenericKprobe; vigil.sensors.user_actions.requested)."""
        for i, a in enumerate(acts[:-1]):
            name = a.action.lower()
            if name in ("geturl", "dnslookup"):
                canon = "GetUrl" if name == "geturl" else "DnsLookup"
                self.diag.warn(a.at("action"), f"{canon} will not run: it is not the selector's last action "
                               f"(matchActions[{i}] of {len(acts)}); the agent runs GetUrl and DnsLookup only "
                               "when the selector's last action is one, as Tetragon does")

    def _user_actions_supported(self, acts: tuple[ActionSelector, ...], section: str) -> None:
        """GetUrl and DnsLookup are refused on uprobes and usdts, as Tetragon refuses such a
        hook (HasGetUrlOrDnsLookup over its selectors' matchActions): their records carry no
        action argument for the agent to run."""
        if section not in ("uprobes", "usdts"):
            return
        for a in acts:
            name = a.action.lower()
            if name in ("geturl", "dnslookup"):
                canon = "GetUrl" if name == "geturl" else "DnsLookup"
                self.diag.error(a.at("action"), f"action {canon} is not supported on {section}, "
                                "as in Tetragon")

    def _post(self, a: ActionSelector, section: str) -> None:
        d = self.diag
        if a.has("rateLimit"):
            try:
                values.parse_duration(a.rate_limit)
            except ValueError as e:
                d.error(a.at("rateLimit"), str(e))
        if a.has("rateLimitScope"):
            if a.rate_limit_scope not in enums.RATE_LIMIT_SCOPES:
                d.error(a.at("rateLimitScope"), enum_message("rateLimitScope", a.rate_limit_scope,
                                                             enums.RATE_LIMIT_SCOPES))
            elif not a.has("rateLimit"):
                d.error(a.at("rateLimitScope"), "rateLimitScope needs rateLimit")
        if a.ima_hash and section not in ("lsmhooks", "macro"):
            # Tetragon loads it and has nothing to add it to (only ProcessLsm has ima_hash)
            d.warn(a.at("imaHash"), "imaHash has an effect only on lsmhooks (ProcessLsm's ima_hash); it is "
                   "ignored here")

    def _override(self, a: ActionSelector, ctx: HookCtx) -> None:
        d, section = self.diag, ctx.section
        if section in ("tracepoints", "usdts"):
            d.error(a.at("action"), f"Override is not supported on {section}")
            return
        new = [k for k in ("argNewSymbol", "argNewAddr", "argNewOffset") if a.has(k)]
        uprobe_only = [k for k in ("argRegs", *new) if a.has(k)]
        if uprobe_only and section not in ("uprobes", "macro"):
            d.error(a.at(uprobe_only[0]), f"{uprobe_only[0]} is only supported on uprobes")
        if len(new) > 1:
            d.error(a.at(new[1]), f"use at most one of argNewSymbol, argNewAddr, argNewOffset "
                    f"(got {', '.join(new)})")
        for i, r in enumerate(a.arg_regs):
            if not _REG_ASSIGN.match(r):
                d.error(a.at(f"argRegs[{i}]"), f'argRegs entry "{r}" is not "reg=expression"')
        # Whether the kprobe target allows error injection is a kernel property (load time).
        if not a.has("argError") and not uprobe_only:
            d.error(a.loc.child("argError"), "action Override needs argError (a negative errno)")


_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def label_key_error(key: str) -> str:
    """Why `key` is no Kubernetes label key ("" when it is one): [prefix/]name, the name at most
    63 characters of [A-Za-z0-9-_.] starting and ending alphanumeric, the prefix a DNS subdomain."""
    prefix, _, name = key.removeprefix("k8s:").rpartition("/")   # (k8s:io.kubernetes.pod.namespace)
    if not _LABEL_NAME.fullmatch(name):
        return f"label key {key!r}: the name must be 1-63 characters of [A-Za-z0-9-_.], starting and ending " \
               "with a letter or digit"
    if "/" in key.removeprefix("k8s:") and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return f"label key {key!r}: the prefix must be a DNS subdomain"
    return ""


def label_value_error(value: str) -> str:
    if value and not _LABEL_NAME.fullmatch(value):
        return f"label value {value!r}: at most 63 characters of [A-Za-z0-9-_.], starting and ending with a " \
               "letter or digit"
    return ""


def check_label_selector(d: Diagnostics, ls: LabelSelector) -> None:
    for k, v in ls.match_labels.items():
        why = label_key_error(k) or label_value_error(v)
        if why:
            d.error(ls.at("matchLabels"), why)
    for r in ls.match_expressions:
        why = label_key_error(r.key)
        if why:
            d.error(r.at("key"), why)
        elif r.operator not in enums.LABEL_OPERATORS:
            d.error(r.at("operator"), enum_message("operator", r.operator, enums.LABEL_OPERATORS))
        elif r.operator in ("In", "NotIn") and not r.values:
            d.error(r.at("values"), f"operator {r.operator} needs at least one value")
        elif r.operator in ("Exists", "DoesNotExist") and r.values:
            d.error(r.at("values"), f"operator {r.operator} takes no values")
