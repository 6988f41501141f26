"""compile_rules: IPv4-mapped IPv6 networks are IPv4 rules, as the kernel looks them up (no kernel)."""
from __future__ import annotations

import ipaddress

import pytest

from vigil.enforce import netrules as N
from vigil.enforce.netrules import NetRule, NetRuleError, compile_rules


def _pad(a: str) -> bytes:
    return ipaddress.ip_address(a).packed.ljust(16, b"\0")


@pytest.mark.parametrize("cidr, v4, plen", [
    ("::ffff:127.0.0.7/128", "127.0.0.7", 32),
    ("::ffff:10.0.0.0/104", "10.0.0.0", 8),
    ("::ffff:0:0/96", "0.0.0.0", 0),
    ("::FFFF:192.0.2.9/120", "192.0.2.0", 24),
])
def test_v4_mapped_networks_become_ipv4(cidr: str, v4: str, plen: int) -> None:
    """The kernel looks ::ffff:a.b.c.d destinations up as IPv4: the rule must be stored as IPv4."""
    c = compile_rules([NetRule(1, cidrs=[cidr])])
    assert c.cidrs == {(N.AF_INET, _pad(v4), plen): 1}


def test_v4_mapped_merges_with_ipv4_rules() -> None:
    c = compile_rules([NetRule(1, cidrs=["10.0.0.0/8"]), NetRule(2, cidrs=["::ffff:10.1.2.3/128"])])
    assert c.cidrs == {(N.AF_INET, _pad("10.0.0.0"), 8): 0b01, (N.AF_INET, _pad("10.1.2.3"), 32): 0b11}


def test_shorter_than_96_stays_ipv6() -> None:
    c = compile_rules([NetRule(1, cidrs=["::ffff:0:0/95"])])
    assert list(c.cidrs) == [(N.AF_INET6, _pad("::fffe:0:0"), 95)]


def test_family_is_checked_on_the_written_address() -> None:
    compile_rules([NetRule(1, family="inet6", cidrs=["::ffff:10.0.0.1/128"])])
    with pytest.raises(NetRuleError, match="not an address of family inet"):
        compile_rules([NetRule(1, family="inet", cidrs=["::ffff:10.0.0.1/128"])])
