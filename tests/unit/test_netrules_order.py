"""The first matching selector decides, also for cgroup socket rules: a selector that lets the
operation through ahead of an enforcing one is an allow rule; one between enforcing selectors
cannot be kept in order and is refused by explain (no kernel)."""
from __future__ import annotations

import pytest

from tests.unit.test_netrules_policy import compiled, policy, rules
from vigil.kernel.netrules import compile_rules
from vigil.policy.hostdeny_check import socket_rule_origin
from vigil.sensors.hostdeny import NetDenyHook

NOPOST_FIRST = """    - matchArgs: [{index: 1, operator: SAddr, values: ["127.0.0.7/32"]}]
      matchActions: [{action: NoPost}]
    - matchArgs: [{index: 1, operator: SAddr, values: ["127.0.0.0/8"]}]
      matchActions: [{action: Override, argError: -1}]"""


@pytest.mark.parametrize("action", ["NoPost", "Post"])
def test_earlier_non_enforcing_selector_becomes_an_allow_rule(action: str) -> None:
    rs = rules(policy(NOPOST_FIRST.replace("NoPost", action)))
    assert [(r.action, list(r.cidrs), r.hooks) for r in rs] == [
        ("allow", ["127.0.0.7/32"], ("connect",)), ("deny", ["127.0.0.0/8"], ("connect",))]
    assert [socket_rule_origin(r.id) for r in rs] == [(5, 0), (5, 1)]
    assert not rs[0].monitor and not rs[1].monitor


def test_allow_rules_never_monitor() -> None:
    ch, _ = compiled(policy(NOPOST_FIRST))
    assert ch is not None
    rs = NetDenyHook(ch, {}, True).rules
    assert [(r.action, r.monitor) for r in rs] == [("allow", False), ("deny", True)]


def test_explain_says_what_the_allow_rule_does() -> None:
    ch, errors = compiled(policy(NOPOST_FIRST))
    assert not errors and ch is not None
    assert any("selector 1 lets matching connect operations through" in n for n in ch.placement.notes)


def test_selectors_after_the_last_enforcing_one_make_no_rules() -> None:
    sels = """    - matchArgs: [{index: 1, operator: SAddr, values: ["127.0.0.0/8"]}]
      matchActions: [{action: Override, argError: -1}]
    - matchArgs: [{index: 1, operator: SAddr, values: ["127.0.0.7/32"]}]
      matchActions: [{action: NoPost}]"""
    assert [r.action for r in rules(policy(sels))] == ["deny"]


def test_non_enforcing_selector_between_enforcing_ones_is_refused() -> None:
    """An allow wins over every deny in the kernel tables: selector 2 would let 10.1.0.0/16
    through although selector 1 (first match) refuses it."""
    sels = """    - matchArgs: [{index: 1, operator: SAddr, values: ["10.0.0.0/8"]}]
      matchActions: [{action: Override, argError: -1}]
    - matchArgs: [{index: 1, operator: SAddr, values: ["10.1.0.0/16"]}]
      matchActions: [{action: NoPost}]
    - matchArgs: [{index: 1, operator: SPort, values: ["443"]}]
      matchActions: [{action: Override, argError: -1}]"""
    ch, errors = compiled(policy(sels))
    assert len(errors) == 1
    assert errors[0].startswith("p.yaml:13:7: spec.kprobes[0].selectors[1]")
    assert "selector 2" in errors[0] and "between enforcing selectors 1 and 3" in errors[0]


def test_agent_and_explain_agree_on_ordering() -> None:
    """The hook builds exactly the rules explain checked (no selector silently dropped)."""
    ch, errors = compiled(policy(NOPOST_FIRST))
    assert ch is not None and not errors
    compile_rules(NetDenyHook(ch, {}, False).rules)
