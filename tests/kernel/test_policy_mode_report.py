"""A policy's MODE as `tetra tp list` shows it: one with nothing to enforce is monitor_only
(Tetragon's TP_MODE_MONITOR_ONLY) whatever its policy-mode option, and its mode cannot be set;
one with an enforcing action is enforce or monitor and switches."""
from __future__ import annotations

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import loaded, policy_yaml
from vigil.core.errors import PolicyError

pytestmark = pytest.mark.kernel

SPEC = """
tracepoints:
- subsystem: syscalls
  event: sys_enter_getppid
  selectors:
  - matchBinaries:
    - operator: In
      values: ["/nonexistent/vigil-mode-test"]
{actions}
"""


@pytest.mark.parametrize("action, load_mode, listed, can_switch", [
    ("", None, "monitor_only", False),                     # Post only: was listed "enforce"
    ("", "monitor", "monitor_only", False),
    ("    matchActions:\n    - action: Post", "enforce", "monitor_only", False),
    ("    matchActions:\n    - action: Sigkill", None, "enforce", True),
    ("    matchActions:\n    - action: Sigkill", "monitor", "monitor", True),
    ("    matchActions:\n    - action: Signal\n      argSig: 10", None, "enforce", True),
])
def test_listed_mode_is_tetragons(running_agent: RunningAgent, action: str, load_mode: str | None,
                                  listed: str, can_switch: bool):
    name = f"mode-{listed.replace('_', '-')}-{len(action)}-{load_mode or 'default'}"
    with loaded(running_agent, policy_yaml(name, SPEC.format(actions=action)), mode=load_mode) as st:
        assert st["mode"] == listed
        assert running_agent.agent.status()["policies"][name]["mode"] == listed  # `vigil status` says the same
        other = "enforce" if listed == "monitor" else "monitor"
        if can_switch:
            running_agent.agent.policies.set_mode(name, other)
            now = next(p for p in running_agent.agent.list_policies() if p["name"] == name)
            assert now["mode"] == other
        else:
            with pytest.raises(PolicyError, match="monitor only"):
                running_agent.agent.policies.set_mode(name, other)
            now = next(p for p in running_agent.agent.list_policies() if p["name"] == name)
            assert now["mode"] == "monitor_only"
