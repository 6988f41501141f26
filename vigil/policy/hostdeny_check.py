"""Which selectors the host enforcement back ends can evaluate (pure; the compiler reports the
rest with their locations, so `explain` shows them before anything is loaded).

* fanotify (exec/open permission, decided by the native helper): matchArgs on the path with
  string operators, matchBinaries, plain matchPIDs.
* cgroup sock_addr (connect/sendmsg/bind): Family, SAddr/DAddr and SPort/DPort on the address,
  Protocol (and Family) on the socket, matchBinaries In, plain matchPIDs In. `socket_rules`
  builds the kernel rules (the agent loads exactly these) and says, with the field, what the
  kernel tables cannot hold. The first matching selector decides: a selector that lets the
  operation through (NoPost, Post) ahead of an enforcing one becomes an allow rule (one that
  reports, for Post). In the tables an allow wins over every deny, so such a selector may not
  come between enforcing ones (it would also let through what the earlier one refuses). A Post
  selector after the last enforcing one becomes a post rule, which reports only when no
  enforcing rule refuses; a NoPost there makes no rule.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import Loc
from .model import Selector
from .placement import Placement
from .values import parse_family, parse_port, parse_protocol

if TYPE_CHECKING:
    from vigil.kernel.netrules import NetRule

STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
BINARY_OPS = ("In", "NotIn", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
NET_ADDR_OPS = ("Family", "SAddr", "DAddr", "SPort", "DPort")
NET_SOCK_OPS = ("Protocol", "Family")
UNSUPPORTED = (("match_namespaces", "matchNamespaces"), ("match_namespace_changes", "matchNamespaceChanges"),
               ("match_capability_changes", "matchCapabilityChanges"), ("match_capabilities", "matchCapabilities"),
               ("match_return_args", "matchReturnArgs"), ("match_data", "matchData"))


def _enforcing(sel: Selector) -> bool:
    return any(a.action.lower() in ("override", "sigkill") for a in sel.match_actions)


def _posts(sel: Selector) -> bool:
    """Does a matching selector send an event (every selector does, unless NoPost)?"""
    return not any(a.action.lower() == "nopost" for a in sel.match_actions)


# what a Post action can ask for that the cgroup socket rules do not do (they report every
# matching operation, with no stack or hash)
_POST_PARAMS = (("rate_limit", "rateLimit"), ("kernel_stack_trace", "kernelStackTrace"),
                ("user_stack_trace", "userStackTrace"), ("ima_hash", "imaHash"))


# Rule ids of socket rules: hook id, selector index and the rule's index within its selector
# (one per matchBinaries value), so a record names its hook and selector. A hook has at most
# 64 rules (netrules.MAX_RULES) and 5 selectors.
_K_BITS, _SEL_BITS = 6, 3
_HOOK_SHIFT = _K_BITS + _SEL_BITS
MAX_HOOK_ID = (1 << (32 - _HOOK_SHIFT)) - 1


def socket_rule_id(hook_id: int, si: int, k: int) -> int:
    return (hook_id << _HOOK_SHIFT) | (si << _K_BITS) | k


def socket_rule_origin(rule_id: int) -> tuple[int, int]:
    """(hook id, 0-based selector index) of a socket rule id."""
    return rule_id >> _HOOK_SHIFT, (rule_id >> _K_BITS) & ((1 << _SEL_BITS) - 1)


@dataclass
class SocketRules:
    rules: list[NetRule] = field(default_factory=list)
    problems: list[tuple[Loc, str]] = field(default_factory=list)
    allows: list[int] = field(default_factory=list)  # 0-based selectors that became allow rules
    posts: list[int] = field(default_factory=list)   # 0-based selectors that became post rules


def socket_rules(pl: Placement, selectors: tuple[Selector, ...], hook_id: int = 0,
                 monitor: bool = False) -> SocketRules:
    """The cgroup socket rules of a hook's selectors, in selector order, and what the kernel
    tables cannot express (with the field). After the last enforcing selector, a posting one
    becomes a post rule (reports what it matches, lets it through) and a NoPost one makes no
    rule: whatever it matches proceeds anyway."""
    from vigil.kernel.netrules import (
        BIN_LEN,
        MAX_PIDS,
        MAX_PORTS,
        MAX_PREFIXES,
        MAX_RULES,
        NetRule,
        NetRuleError,
        compile_rules,
        rule_networks,
    )

    out = SocketRules()
    what = pl.attach.get("what", "connect")
    roles = pl.attach.get("roles") or {}
    enforcing = [si for si, s in enumerate(selectors) if _enforcing(s)]
    if not enforcing:
        out.problems.append((pl.loc, f"an Override on {pl.target} needs a selector with Override/Sigkill"))
        return out
    if hook_id > MAX_HOOK_ID:
        out.problems.append((pl.loc, f"hook id {hook_id} does not fit a socket rule id (at most {MAX_HOOK_ID}): "
                             "restart the agent"))
        return out
    first, last = enforcing[0], enforcing[-1]
    prefixes: set[object] = set()
    pids: set[int] = set()
    for si, sel in enumerate(selectors):
        enforce = si in enforcing
        trailing = si > last
        if trailing and not _posts(sel):
            continue
        if not enforce and si > first and not trailing:
            acts = ", ".join(a.action for a in sel.match_actions) or "Post"
            out.problems.append((sel.loc, f"selector {si + 1} ({acts}) lets operations through between enforcing "
                                 f"selectors {first + 1} and {last + 1}; in the cgroup socket rules an allow wins "
                                 "over every deny, so it would also let through what an earlier selector refuses "
                                 f"(first-match order cannot be kept): move it before selector {first + 1}"))
            continue
        if trailing:
            out.posts.append(si)
        elif not enforce:
            out.allows.append(si)
        family: str | None = None
        cidrs: list[str] = []
        ports: list[tuple[int, int]] = []
        port_loc: Loc | None = None
        addr_loc: Loc | None = None
        protocol: str | None = None
        bad = False
        for e in sel.match_args:
            try:
                if e.operator == "Protocol":
                    protos = {parse_protocol(v) for v in e.values}
                    if protos - {6, 17}:
                        bad = True  # reported by check_host_selectors
                        continue
                    if len(protos) != 1:
                        out.problems.append((e.at("values"), "Protocol: cgroup socket rules take one of "
                                             "IPPROTO_TCP, IPPROTO_UDP per selector (write two selectors)"))
                        bad = True
                        continue
                    protocol = "tcp" if protos == {6} else "udp"
                elif e.operator == "Family":
                    fams = {parse_family(v) for v in e.values}
                    if fams - {2, 10}:
                        bad = True  # reported by check_host_selectors
                        continue
                    family = None if fams == {2, 10} else {2: "inet", 10: "inet6"}[fams.pop()]
                elif e.operator in ("SAddr", "DAddr") and roles.get(e.index) != "socket":
                    cidrs += [str(ipaddress.ip_network(v, strict=False)) for v in e.values]
                    addr_loc = e.at("values")
                elif e.operator in ("SPort", "DPort") and roles.get(e.index) != "socket":
                    ports += [parse_port(v) for v in e.values]
                    port_loc = e.at("values")
                else:
                    bad = True  # reported by check_host_selectors
            except ValueError as err:
                out.problems.append((e.at("values"), str(err)))
                bad = True
        if len(ports) > MAX_PORTS:
            out.problems.append((port_loc or sel.loc, f"selector {si + 1}: {len(ports)} port ranges, at most "
                                 f"{MAX_PORTS} per selector in cgroup socket rules"))
            bad = True
        # several matchBinaries / matchPIDs entries of a selector are ANDed: a rule for each
        # value every entry lists (none: the selector can match nothing, no rule)
        anded: list[str] | None = None
        bin_loc = sel.at("matchBinaries")
        for b in sel.match_binaries:
            if b.operator != "In":
                bad = True  # reported by check_host_selectors
                continue
            anded = list(b.values) if anded is None else [v for v in anded if v in b.values]
            bin_loc = b.at("values")
            for v in b.values:
                raw = v.encode("utf-8", "surrogateescape")
                if not raw.startswith(b"/") or len(raw) >= BIN_LEN or b"\0" in raw:
                    out.problems.append((bin_loc, f'matchBinaries value "{v}": cgroup socket rules match the '
                                         f"absolute path of the executable (shorter than {BIN_LEN} bytes)"))
                    bad = True
        anded_pids: list[int] | None = None
        for mp in sel.match_pids:
            if mp.operator != "In" or mp.follow_forks or mp.is_namespace_pid:
                bad = True  # reported by check_host_selectors
                continue
            vals = [int(v) for v in mp.values]
            anded_pids = vals if anded_pids is None else [p for p in anded_pids if p in vals]
        if bad or anded == [] or anded_pids == []:
            continue
        binaries: list[str | None] = list(anded) if anded is not None else [None]
        sel_pids = anded_pids or []
        if len(out.rules) + len(binaries) > MAX_RULES:
            out.problems.append((sel.at("matchBinaries") if sel.match_binaries else sel.loc,
                                 f"selector {si + 1}: {len(out.rules) + len(binaries)} socket rules (one per "
                                 f"matchBinaries value of each selector), at most {MAX_RULES} per hook"))
            continue
        for k, path in enumerate(binaries):
            r = NetRule(id=socket_rule_id(hook_id, si, k),
                        action="deny" if enforce else "post" if trailing else "allow",
                        monitor=monitor and enforce, family=family, cidrs=cidrs, ports=ports, binary=path,
                        pids=sel_pids, hooks=(what,), protocol=protocol,
                        post=not enforce and not trailing and _posts(sel))
            out.rules.append(r)
        try:
            for n in rule_networks(out.rules[-1]):
                prefixes.add(n)
        except NetRuleError as err:
            out.problems.append((addr_loc or sel.loc, str(err).split(": ", 1)[-1]))
            continue
        if len(prefixes) > MAX_PREFIXES:
            out.problems.append((addr_loc or sel.loc, f"selector {si + 1}: {len(prefixes)} address prefixes so far, "
                                 f"at most {MAX_PREFIXES} per hook in cgroup socket rules"))
            return out
        pids.update(sel_pids)
        if len(pids) > MAX_PIDS:
            out.problems.append((sel.at("matchPIDs"), f"selector {si + 1}: {len(pids)} pids so far, at most "
                                 f"{MAX_PIDS} per hook in cgroup socket rules"))
            return out
    if not out.problems:
        try:
            compile_rules(out.rules)
        except NetRuleError as err:  # a limit not checked above: still before anything loads
            out.problems.append((pl.loc, f"cgroup socket rules: {err}"))
    return out


def check_host_selectors(pl: Placement, selectors: tuple[Selector, ...]) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    back = "fanotify" if pl.mechanism == "fanotify" else "cgroup socket rules"
    why = f"the {back} back end that enforces this Override here cannot evaluate it"
    roles = pl.attach.get("roles") or {}
    for si, sel in enumerate(selectors):
        for attr, yaml in UNSUPPORTED:
            if getattr(sel, attr):
                out.append((sel.at(yaml), f"selector {si + 1}: {yaml}: {why}"))
        for mp in sel.match_pids:
            if mp.is_namespace_pid:
                out.append((mp.at("isNamespacePID"), f"isNamespacePID: {why}"))
            if pl.mechanism != "fanotify" and (mp.operator != "In" or mp.follow_forks):
                out.append((mp.loc, f"matchPIDs {mp.operator}{' followForks' if mp.follow_forks else ''}: {why} "
                            "(plain In only)"))
        for b in sel.match_binaries:
            if pl.mechanism == "fanotify" and b.operator not in BINARY_OPS:
                out.append((b.at("operator"), f"matchBinaries {b.operator}: {why}"))
            elif pl.mechanism != "fanotify" and b.operator != "In":
                out.append((b.at("operator"), f"matchBinaries {b.operator}: {why} (In only)"))
        for e in sel.match_args:
            role = roles.get(e.index)
            if pl.mechanism == "fanotify":
                if e.operator not in STRING_OPS:
                    out.append((e.at("operator"), f"{e.operator} is not supported on paths by {back}"))
            elif role == "socket":
                if e.operator not in NET_SOCK_OPS:
                    out.append((e.at("operator"), f"{e.operator} on the socket: {why} (Protocol, Family)"))
                elif e.operator == "Protocol" and any(v not in ("IPPROTO_TCP", "IPPROTO_UDP", "6", "17")
                                                      for v in e.values):
                    out.append((e.at("values"), f"Protocol: {back} tell TCP and UDP apart only"))
            elif e.operator not in NET_ADDR_OPS:
                out.append((e.at("operator"), f"{e.operator} cannot be expressed as a cgroup socket rule "
                            "(supported: Family, SAddr/DAddr, SPort/DPort, Protocol on the socket)"))
            if pl.mechanism != "fanotify" and e.operator == "Family" and any(
                    v not in ("AF_INET", "AF_INET6", "2", "10") for v in e.values):
                out.append((e.at("values"), f"Family: {back} see AF_INET and AF_INET6 only"))
    if pl.mechanism != "fanotify":
        sr = socket_rules(pl, selectors)
        out += sr.problems
        what = pl.attach.get("what", "connect")
        for si in sr.allows:
            pl.notes.append(f"selector {si + 1} lets matching {what} operations through "
                            "(an allow rule ahead of the Override, as the first matching selector decides"
                            f"{'; each one is reported' if _posts(selectors[si]) else ''})")
        for si in sr.posts:
            pl.notes.append(f"selector {si + 1} reports matching {what} operations that no earlier selector "
                            "refuses (a post rule after the Override)")
        for si in sr.allows + sr.posts:
            for a in selectors[si].match_actions:
                for attr, yaml in _POST_PARAMS:
                    if a.action.lower() == "post" and getattr(a, attr, None):
                        out.append((a.at(yaml), f"selector {si + 1}: Post {yaml}: the cgroup socket rules that "
                                    "enforce this hook's Override here report every matching operation, "
                                    f"without {yaml}"))
    return out
