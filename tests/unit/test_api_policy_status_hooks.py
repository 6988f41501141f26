"""The agent's policy status -> ListTracingPolicies' TracingPolicyStatus: a uprobe left out by
binaryDigests (ignore.digestVerificationFailure) makes the policy TP_STATE_PARTIALLY_ENABLED and
its hook STATUS_DIGEST_REJECTED, as Tetragon reports them."""
from __future__ import annotations

import pytest

from vigil.api.pb import sensors_pb2
from vigil.api.policies import policy_status

CASES = [  # (case, the agent's state, its hooks' states, the status's state, its hook states)
    ("digest-rejected", "partially_enabled", ["digest_rejected", "loaded"], "TP_STATE_PARTIALLY_ENABLED",
     ["STATUS_DIGEST_REJECTED", "STATUS_LOADED"]),
    ("all-loaded", "enabled", ["loaded", "loaded"], "TP_STATE_ENABLED", ["STATUS_LOADED", "STATUS_LOADED"]),
]


@pytest.mark.parametrize("case,state,hooks,want_state,want_hooks", CASES, ids=[c[0] for c in CASES])
def test_policy_status_hook_states(case: str, state: str, hooks: list[str], want_state: str,
                                   want_hooks: list[str]) -> None:
    d = {"name": "p", "state": state,
         "hooks": [{"section": "uprobes", "index": i, "hook": f"uprobe:/bin/x:main ({h})", "state": h}
                   for i, h in enumerate(hooks)]}
    st = policy_status(d)
    assert sensors_pb2.TracingPolicyState.Name(st.state) == want_state
    assert [sensors_pb2.HookState.Name(h.state) for h in st.hook_statuses] == want_hooks
    assert [h.hook_idx for h in st.hook_statuses] == list(range(len(hooks)))
    assert st.enabled == (want_state == "TP_STATE_ENABLED")
