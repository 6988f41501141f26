"""A classic tracepoint's array of longs (raw_syscalls sys_enter's `unsigned long args[6]`), as
Tetragon's const_buf: planned as the whole array (its bytes copied as they are), rendered one
size_arg per element; other arrays and explicit types are planned as before."""
from __future__ import annotations

import pytest

from tests.unit.test_policy_compile import HOST, comp, errors
from vigil.kernel import policy_layout as L

SYS_ENTER = """
tracepoints:
- subsystem: raw_syscalls
  event: sys_enter
  args: [{index: 4, type: syscall64}, %s]
"""


@pytest.mark.parametrize("arg, vtype, size", [
    ("{index: 5}", "const_buf", 48),             # auto: the whole array, one size_arg per element
    ("{index: 5, type: auto}", "const_buf", 48),
    ("{index: 5, type: int64}", "long", 8),      # a named type reads the first element, as Tetragon's
    ("{index: 4}", "long", 8),                   # `long id`: not an array
])
def test_array_of_longs_is_a_const_buf(arg: str, vtype: str, size: int) -> None:
    (hook,) = comp(SYS_ENTER % arg, HOST).hooks
    plan = hook.placement.args[1]
    assert (plan.vtype, plan.size, plan.off) == (L.T[vtype], size, 16 if "5" in arg else 8)


def test_matchargs_on_an_array_is_refused() -> None:
    spec = SYS_ENTER % "{index: 5}" + """  selectors:
  - matchArgs: [{index: 5, operator: Equal, values: ["1"]}]
"""
    assert any("matchArgs on an array field (const_buf)" in e for e in errors(spec, HOST))
