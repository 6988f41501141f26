"""Network rules for the cgroup sock_addr back end: the model, its validation
and the compiler to the kernel tables of bpf/netdeny.bpf.c (pure, no kernel).
Here, below the policy stage, so that explain compiles a policy's socket rules
with the very code that loads them (vigil.enforce.netrules re-exports it).

Tables (see bpf/include/vigil_netdeny.h): every rule owns one bit; the kernel
intersects the bitmasks found by address (LPM trie), pid, binary, protocol and
hook, then checks port ranges of the survivors. Allow rules win over deny
rules; an enforcing deny wins over the low class (monitor denies and post rules).
"""
from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vigil.kernel.layouts import Layout

MAX_RULES = 64
MAX_PORTS = 8
# nd_cidrs (8,192 entries) and nd_pids (1,024) hold both generations: a rule set may fill half,
# so the next one always fits beside it while it stays in force
MAX_PREFIXES = 8192 // 2
MAX_PIDS = 1024 // 2
BIN_LEN = 256
AF_INET, AF_INET6 = 2, 10
FAMILIES = {"inet": AF_INET, "inet6": AF_INET6, "ipv4": AF_INET, "ipv6": AF_INET6}
PROTOS = {"tcp": (0,), "udp": (1,), None: (0, 1, 2), "any": (0, 1, 2)}
HOOKS = {"connect": 0, "sendmsg": 1, "bind": 2}
DEFAULT_HOOKS = ("connect", "sendmsg")

# mirrors of bpf/include/vigil_netdeny.h, checked against the object's BTF when NetDeny loads
CIDR_KEY = Layout("nd_cidr_key", "prefixlen:I gen:B family:B pad:2x addr:16s")
PID_KEY = Layout("nd_pid_key", "gen:I tgid:I")
BIN_KEY = Layout("nd_bin_key", f"gen:I bin:{BIN_LEN}s")
GEN = Layout("nd_gen", "nopid:Q nobin:Q noport:Q allow:Q monitor:Q proto:3Q hooks:3Q post:Q")
RULE = Layout("nd_rule", f"id:I nports:I ports:{2 * MAX_PORTS}H")
COUNTERS = Layout("nd_counters", "denied:Q monitored:Q allowed:Q posted:Q")
COUNTER_NAMES = ("denied", "monitored", "allowed", "posted")


class NetRuleError(ValueError):
    """A rule set the kernel tables cannot express; the message names the rule."""


@dataclass(frozen=True)
class NetRule:
    """One network rule.

    cidrs: destination networks (bind: the local address); empty = any address of
    the rule's families. ports: ints or (lo, hi) ranges or "lo-hi"; empty = any.
    protocol: "tcp", "udp" or None (any). binary: exact path as the process sensor
    records it (execve_map bin); pids: thread-group ids. hooks: any of connect,
    sendmsg, bind. monitor: deny rules only; report, never refuse.
    action "post": let through and report, when no allow or enforcing deny rule of the set
    decides (a Post selector after the last enforcing one). post: an allow rule that also
    reports (a Post selector ahead of the enforcing ones).
    """
    id: int
    action: str = "deny"
    monitor: bool = False
    family: str | None = None
    cidrs: Sequence[str] = ()
    ports: Sequence[int | tuple[int, int] | str] = ()
    protocol: str | None = None
    binary: str | None = None
    pids: Sequence[int] = ()
    hooks: Sequence[str] = DEFAULT_HOOKS
    post: bool = False


@dataclass
class Compiled:
    """Kernel table contents for one generation (gen is filled in when written)."""
    rules: list[NetRule]
    gen: tuple[int, ...]                                   # nd_gen fields, in order
    slots: list[tuple[int, list[tuple[int, int]]]]         # per slot: id, port ranges
    cidrs: dict[tuple[int, bytes, int], int] = field(default_factory=dict)  # (family, addr16, plen) -> mask
    pids: dict[int, int] = field(default_factory=dict)     # tgid -> mask
    bins: dict[bytes, int] = field(default_factory=dict)   # binary -> mask

    def cidr_items(self, gen: int) -> Iterable[tuple[bytes, bytes]]:
        for (fam, addr, plen), mask in self.cidrs.items():
            yield CIDR_KEY.pack(32 + plen, gen, fam, addr), struct.pack("<Q", mask)

    def pid_items(self, gen: int) -> Iterable[tuple[bytes, bytes]]:
        for tgid, mask in self.pids.items():
            yield PID_KEY.pack(gen, tgid), struct.pack("<Q", mask)

    def bin_items(self, gen: int) -> Iterable[tuple[bytes, bytes]]:
        for b, mask in self.bins.items():
            yield BIN_KEY.pack(gen, b), struct.pack("<Q", mask)

    def rule_value(self, slot: int) -> bytes:
        if slot >= len(self.slots):
            return bytes(RULE.size)
        rid, ports = self.slots[slot]
        flat = [v for lo_hi in ports for v in lo_hi]
        return RULE.pack(rid, len(ports), *flat, *([0] * (2 * MAX_PORTS - len(flat))))


def _ports(rule: NetRule) -> list[tuple[int, int]]:
    out = []
    for p in rule.ports:
        if isinstance(p, bool):
            raise NetRuleError(f"rule {rule.id}: port {p!r} is not a port")
        if isinstance(p, int):
            lo = hi = p
        elif isinstance(p, str):
            a, _, b = p.partition("-")
            try:
                lo, hi = int(a), int(b or a)
            except ValueError:
                raise NetRuleError(f"rule {rule.id}: port {p!r} is not N or N-M") from None
        else:
            try:
                lo, hi = (int(v) for v in p)
            except (TypeError, ValueError):
                raise NetRuleError(f"rule {rule.id}: port {p!r} is not N, (lo, hi) or 'lo-hi'") from None
        if not (0 <= lo <= hi <= 65535):
            raise NetRuleError(f"rule {rule.id}: port range {lo}-{hi} outside 0-65535 or reversed")
        out.append((lo, hi))
    if len(out) > MAX_PORTS:
        raise NetRuleError(f"rule {rule.id}: {len(out)} port ranges, at most {MAX_PORTS}")
    return out


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _v4_mapped(n: ipaddress.IPv4Network | ipaddress.IPv6Network) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """::ffff:a.b.c.d/N (N >= 96) as a.b.c.d/(N-96): the programs look an IPv4-mapped destination
    up as IPv4 (it reaches an IPv4 peer), so a rule stored as IPv6 there would never match."""
    if isinstance(n, ipaddress.IPv6Network) and n.prefixlen >= 96 and n.subnet_of(_MAPPED):
        v4 = n.network_address.ipv4_mapped
        assert v4 is not None
        return ipaddress.IPv4Network((v4, n.prefixlen - 96))
    return n


def _networks(rule: NetRule) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if isinstance(rule.cidrs, str):
        raise NetRuleError(f"rule {rule.id}: cidrs must be a list, not the string {rule.cidrs!r}")
    fam = rule.family
    if fam is not None and fam not in FAMILIES:
        raise NetRuleError(f"rule {rule.id}: family {fam!r} is not one of inet, inet6")
    nets = []
    for c in rule.cidrs:
        try:
            n = ipaddress.ip_network(c, strict=False)
        except ValueError as e:
            raise NetRuleError(f"rule {rule.id}: {e}") from None
        if fam is not None and (n.version == 4) != (FAMILIES[fam] == AF_INET):
            raise NetRuleError(f"rule {rule.id}: {c} is not an address of family {fam}")
        nets.append(_v4_mapped(n))
    if not nets:  # any address of the rule's families
        want = [FAMILIES[fam]] if fam else [AF_INET, AF_INET6]
        nets = [ipaddress.ip_network("0.0.0.0/0" if f == AF_INET else "::/0") for f in want]
    return nets


def rule_networks(rule: NetRule) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks a rule is stored under (IPv4-mapped ones as IPv4, none = any address of its
    families); NetRuleError for a bad CIDR or family."""
    return _networks(rule)


def _validate(rule: NetRule) -> None:
    if isinstance(rule.id, bool) or not isinstance(rule.id, int) or not 0 <= rule.id < 2**32:
        raise NetRuleError(f"rule id {rule.id!r} must be an integer in 0..2^32-1")
    if rule.action not in ("deny", "allow", "post"):
        raise NetRuleError(f"rule {rule.id}: action {rule.action!r} is not 'deny', 'allow' or 'post'")
    if rule.monitor and rule.action != "deny":
        raise NetRuleError(f"rule {rule.id}: monitor applies to deny rules only")
    if rule.post and rule.action != "allow":
        raise NetRuleError(f"rule {rule.id}: post applies to allow rules only (action 'post' reports already)")
    if rule.protocol not in PROTOS:
        raise NetRuleError(f"rule {rule.id}: protocol {rule.protocol!r} is not tcp, udp or None")
    if isinstance(rule.hooks, str) or not rule.hooks or any(h not in HOOKS for h in rule.hooks):
        raise NetRuleError(f"rule {rule.id}: hooks {rule.hooks!r} must be a non-empty list of {sorted(HOOKS)}")
    for p in rule.pids:
        if isinstance(p, bool) or not isinstance(p, int) or p <= 0:
            raise NetRuleError(f"rule {rule.id}: pid {p!r} is not a positive integer")
    if rule.binary is not None:
        b = rule.binary.encode("utf-8", "surrogateescape")
        if not b.startswith(b"/") or len(b) >= BIN_LEN or b"\0" in b:
            raise NetRuleError(f"rule {rule.id}: binary must be an absolute path shorter than {BIN_LEN} bytes")


def _containment(nets_of: Sequence[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]]
                 ) -> dict[tuple[int, bytes, int], int]:
    """Each distinct prefix with the rules of every prefix that contains it (itself included):
    the LPM lookup returns only the longest stored prefix, so that one must carry them all.

    CIDRs nest or are disjoint, so one sweep in (address, length) order with a stack of the
    enclosing prefixes does it: O(n log n), where pairwise tests took seconds for a few
    thousand prefixes."""
    own: dict[tuple[int, int, int], int] = {}
    for n, bit in nets_of:
        k = (n.version, int(n.network_address), n.prefixlen)
        own[k] = own.get(k, 0) | bit
    out: dict[tuple[int, bytes, int], int] = {}
    stack: list[tuple[int, int, int, int]] = []  # version, first, last address, mask
    for version, addr, plen in sorted(own):
        bits = 32 if version == 4 else 128
        last = addr | ((1 << (bits - plen)) - 1)
        while stack and (stack[-1][0] != version or stack[-1][2] < addr):
            stack.pop()
        mask = own[(version, addr, plen)] | (stack[-1][3] if stack else 0)
        stack.append((version, addr, last, mask))
        fam = AF_INET if version == 4 else AF_INET6
        out[(fam, addr.to_bytes(bits // 8, "big").ljust(16, b"\0"), plen)] = mask
    return out


def compile_rules(rules: Sequence[NetRule], *, max_prefixes: int = MAX_PREFIXES,
                  max_pids: int = MAX_PIDS) -> Compiled:
    """Validate and compile; raises NetRuleError before anything is written.

    max_prefixes/max_pids: what one generation may use (half of each shared table)."""
    rules = list(rules)
    if len(rules) > MAX_RULES:
        raise NetRuleError(f"{len(rules)} rules, at most {MAX_RULES} per rule set")
    seen: set[int] = set()
    nopid = nobin = noport = allow = monitor = post = 0
    proto = [0, 0, 0]
    hooks = [0, 0, 0]
    nets_of: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]] = []
    out = Compiled(rules=rules, gen=(), slots=[])
    for slot, r in enumerate(rules):
        _validate(r)
        if r.id in seen:
            raise NetRuleError(f"rule {r.id}: duplicate rule id")
        seen.add(r.id)
        bit = 1 << slot
        ports = _ports(r)
        out.slots.append((r.id, ports))
        for n in _networks(r):
            nets_of.append((n, bit))
        if not r.pids:
            nopid |= bit
        for p in r.pids:
            out.pids[p] = out.pids.get(p, 0) | bit
        if r.binary is None:
            nobin |= bit
        else:
            b = r.binary.encode("utf-8", "surrogateescape")
            out.bins[b] = out.bins.get(b, 0) | bit
        if not ports:
            noport |= bit
        if r.action == "allow":
            allow |= bit
        if r.monitor or r.action == "post":
            monitor |= bit
        if r.post or r.action == "post":
            post |= bit
        for i in PROTOS[r.protocol]:
            proto[i] |= bit
        for h in r.hooks:
            hooks[HOOKS[h]] |= bit
    if len(out.pids) > max_pids:
        raise NetRuleError(f"{len(out.pids)} pids, at most {max_pids} per rule set (the pid table holds the rule "
                           "set in force and its replacement)")
    out.cidrs = _containment(nets_of)
    if len(out.cidrs) > max_prefixes:
        raise NetRuleError(f"{len(out.cidrs)} address prefixes, at most {max_prefixes} per rule set (the prefix "
                           "table holds the rule set in force and its replacement)")
    out.gen = (nopid, nobin, noport, allow, monitor, *proto, *hooks, post)
    return out
