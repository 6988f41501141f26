"""compile_rules: prefix containment at scale and the capacity of the double-buffered tables (no kernel)."""
from __future__ import annotations

import ipaddress
import random

import pytest

from vigil.enforce import netrules as N
from vigil.enforce.netrules import NetRule, NetRuleError, compile_rules


def _pad(a: str) -> bytes:
    return ipaddress.ip_address(a).packed.ljust(16, b"\0")


def _reference(rules: list[NetRule]) -> dict[tuple[int, bytes, int], int]:
    """The containment masks by the definition (quadratic)."""
    nets = []
    for slot, r in enumerate(rules):
        for c in r.cidrs:
            nets.append((ipaddress.ip_network(c, strict=False), 1 << slot))
    out = {}
    for net, _ in nets:
        mask = 0
        for n, bit in nets:
            if n.version == net.version and net.subnet_of(n):  # type: ignore[arg-type]
                mask |= bit
        out[(N.AF_INET if net.version == 4 else N.AF_INET6, net.network_address.packed.ljust(16, b"\0"),
             net.prefixlen)] = mask
    return out


def test_containment_matches_the_definition() -> None:
    rnd = random.Random(7)
    rules = []
    for i in range(40):
        cidrs = []
        for _ in range(rnd.randrange(0, 6)):
            if rnd.random() < 0.7:
                plen = rnd.choice([0, 8, 12, 16, 24, 30, 32])
                cidrs.append(str(ipaddress.ip_network((rnd.choice([0x0a000000, 0x0a010000, 0x7f000000])
                                                       | rnd.getrandbits(16), plen), strict=False)))
            else:
                plen = rnd.choice([0, 16, 64, 100, 128])
                cidrs.append(str(ipaddress.ip_network((0x20010db8 << 96 | rnd.getrandbits(40), plen), strict=False)))
        rules.append(NetRule(i, cidrs=cidrs or ["10.0.0.0/8"]))
    assert compile_rules(rules).cidrs == _reference(rules)


def test_many_prefixes_compile_in_near_linear_time() -> None:
    """4,096 /32s and a covering /8: no pairwise containment (that took seconds under the policy lock).
    Checked by counting subnet tests, not by timing."""
    cidrs = [str(ipaddress.IPv4Address(0x0a000000 + i)) + "/32" for i in range(N.MAX_PREFIXES - 1)]
    calls = 0
    orig = ipaddress.IPv4Network.subnet_of

    def counting(self: ipaddress.IPv4Network, other: ipaddress.IPv4Network) -> bool:
        nonlocal calls
        calls += 1
        return orig(self, other)
    ipaddress.IPv4Network.subnet_of = counting  # type: ignore[method-assign]
    try:
        c = compile_rules([NetRule(1, cidrs=cidrs), NetRule(2, cidrs=["10.0.0.0/8"])])
    finally:
        ipaddress.IPv4Network.subnet_of = orig  # type: ignore[method-assign]
    assert calls == 0
    assert len(c.cidrs) == N.MAX_PREFIXES
    assert c.cidrs[(N.AF_INET, _pad("10.0.0.5"), 32)] == 0b11
    assert c.cidrs[(N.AF_INET, _pad("10.0.0.0"), 8)] == 0b10


def test_prefix_count_is_capped_at_half_the_table() -> None:
    """Both generations live in one LPM map: a set over half of it could load once and then never
    be replaced (ENOSPC). Refused before anything is written."""
    cidrs = [str(ipaddress.IPv4Address(0x0a000000 + i)) + "/32" for i in range(N.MAX_PREFIXES + 1)]
    with pytest.raises(NetRuleError, match=f"{N.MAX_PREFIXES + 1} address prefixes, at most {N.MAX_PREFIXES}"):
        compile_rules([NetRule(1, cidrs=cidrs)])
    compile_rules([NetRule(1, cidrs=cidrs[:N.MAX_PREFIXES])])
    with pytest.raises(NetRuleError, match="at most 8"):
        compile_rules([NetRule(1, cidrs=cidrs[:9])], max_prefixes=8)


def test_pid_count_is_capped_at_half_the_table() -> None:
    with pytest.raises(NetRuleError, match=f"at most {N.MAX_PIDS}"):
        compile_rules([NetRule(1, pids=list(range(1, N.MAX_PIDS + 2)))])
    compile_rules([NetRule(1, pids=list(range(1, N.MAX_PIDS + 1)))])
