"""An Override on sys_sendto/sys_sendmsg also covers TCP Fast Open sends, which the kernel
checks at the cgroup connect hook: explain says so (no kernel; the refusal itself is in
tests/kernel/test_enforce_netdeny.py)."""
from __future__ import annotations

import pytest

from tests.unit.test_netrules_policy import compiled, policy
from vigil.sensors.hostdeny import NetDenyHook


@pytest.mark.parametrize("call, index", [("sys_sendto", 4), ("sys_sendmsg", 1)])
def test_explain_says_tcp_fast_open_is_checked_at_connect(call: str, index: int) -> None:
    ch, errors = compiled(policy(f"""    - matchArgs: [{{index: {index}, operator: SAddr, values: ["10.0.0.0/8"]}}]
      matchActions: [{{action: Override, argError: -1}}]""", call=call, index=index))
    assert not errors and ch is not None
    assert any("TCP Fast Open sends (MSG_FASTOPEN) are refused at cgroup/connect4+6" in n
               for n in ch.placement.notes)
    # the rules stay sendmsg rules: the connect program applies them to a Fast Open send only
    assert [r.hooks for r in NetDenyHook(ch, {}, False).rules] == [("sendmsg",)]


def test_connect_policy_has_no_fast_open_note() -> None:
    ch, errors = compiled(policy("""    - matchArgs: [{index: 1, operator: SAddr, values: ["10.0.0.0/8"]}]
      matchActions: [{action: Override, argError: -1}]"""))
    assert not errors and ch is not None
    assert not any("Fast Open" in n for n in ch.placement.notes)
