"""Which selectors the host enforcement back ends can evaluate (pure; the compiler reports the
rest with their locations, so `explain` shows them before anything is loaded).

* fanotify (exec/open permission, decided by the native helper): matchArgs on the path with
  string operators, matchBinaries, plain matchPIDs.
* cgroup sock_addr (connect/sendmsg/bind): Family, SAddr/DAddr and SPort/DPort on the address,
  Protocol (and Family) on the socket, matchBinaries In, plain matchPIDs In. Rules are not
  ordered like selectors (a deny applies whatever the selectors before it said), so a selector
  that only posts may not come before an enforcing one.
"""
from __future__ import annotations

from .errors import Loc
from .model import Selector
from .placement import Placement

STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
BINARY_OPS = ("In", "NotIn", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
NET_ADDR_OPS = ("Family", "SAddr", "DAddr", "SPort", "DPort")
NET_SOCK_OPS = ("Protocol", "Family")
UNSUPPORTED = (("match_namespaces", "matchNamespaces"), ("match_namespace_changes", "matchNamespaceChanges"),
               ("match_capability_changes", "matchCapabilityChanges"), ("match_capabilities", "matchCapabilities"),
               ("match_return_args", "matchReturnArgs"), ("match_data", "matchData"))


def _enforcing(sel: Selector) -> bool:
    return any(a.action.lower() in ("override", "sigkill") for a in sel.match_actions)


def check_host_selectors(pl: Placement, selectors: tuple[Selector, ...]) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    back = "fanotify" if pl.mechanism == "fanotify" else "cgroup socket rules"
    why = f"the {back} back end that enforces this Override here cannot evaluate it"
    roles = pl.attach.get("roles") or {}
    seen_post = False
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
            if _enforcing(sel):
                if seen_post:
                    out.append((sel.loc, f"selector {si + 1} enforces after a selector that only posts; {back} "
                                "apply denies whatever earlier selectors matched, so first-match order cannot "
                                "be kept"))
            elif any(a.action.lower() != "nopost" for a in sel.match_actions) or not sel.match_actions:
                seen_post = True
    if pl.mechanism != "fanotify" and not any(_enforcing(s) for s in selectors):
        out.append((pl.loc, f"an Override on {pl.target} needs a selector with Override/Sigkill"))
    return out
