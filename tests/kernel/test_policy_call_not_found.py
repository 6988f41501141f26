"""kprobes[].ignore.callNotFound on this kernel: a call it does not have is left out and the rest of
the policy loads, partially enabled, the left-out hook CALL_NOT_FOUND (as Tetragon reports it:
ListTracingPolicies' TP_STATE_PARTIALLY_ENABLED and STATUS_CALL_NOT_FOUND); without the flag the
policy is refused and nothing of it stays loaded."""
from __future__ import annotations

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import loaded, policy_yaml
from vigil.api.pb import sensors_pb2
from vigil.api.policies import policy_status
from vigil.core.errors import PolicyError

pytestmark = pytest.mark.kernel

CASES = [  # (case, ignore.callNotFound, the policy's state, (index, state) of its hooks)
    ("ignored", "true", "partially_enabled", [(0, "call_not_found"), (1, "loaded")]),
    ("not-ignored", "false", "refused", []),
]


@pytest.mark.parametrize("case, flag, state, hooks", CASES, ids=[c[0] for c in CASES])
def test_a_missing_call_with_ignore_call_not_found_is_left_out(running_agent: RunningAgent, case: str, flag: str,
                                                                state: str, hooks: list[tuple[int, str]]) -> None:
    name = f"call-not-found-{case}"
    text = policy_yaml(name, f"""
kprobes:
- call: vigil_no_such_kernel_function
  syscall: false
  ignore: {{callNotFound: {flag}}}
- call: sys_getppid
""")
    agent = running_agent.agent
    if state == "refused":
        with pytest.raises(PolicyError, match="no kernel function vigil_no_such_kernel_function"):
            agent.policies.add_text(text, "<t>")
        assert name not in [p["name"] for p in agent.list_policies()]
        return
    with loaded(running_agent, text) as listed:
        assert listed["state"] == state
        assert sorted((h["index"], h["state"]) for h in listed["hooks"]) == hooks
        st = policy_status(listed)
        assert sensors_pb2.TracingPolicyState.Name(st.state) == "TP_STATE_PARTIALLY_ENABLED"
        assert sorted((h.hook_idx, sensors_pb2.HookState.Name(h.state)) for h in st.hook_statuses) == [
            (0, "STATUS_CALL_NOT_FOUND"), (1, "STATUS_LOADED")]
