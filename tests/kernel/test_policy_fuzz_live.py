"""Fuzzed policies loaded into the real agent on this kernel (always in monitor mode, so no
generated Sigkill/Override ever acts on the host): each is loaded completely and then
deleted, or refused with file:line:col; after either, the agent holds exactly the BPF
programs it held before and no hook of it remains registered. VIGIL_FUZZ_LIVE (default 300)
policies; `make fuzz` tries more."""
from __future__ import annotations

import collections
import os
import random

import pytest

from tests.kernel.bpfstate import prog_ids_held, still_loaded
from tests.kernel.conftest import RunningAgent
from tests.policyfuzz import LOCATED, rtext
from vigil.core.errors import PolicyError
from vigil.policy import PolicyErrors, parse_policies

pytestmark = pytest.mark.kernel
LIVE = int(os.environ.get("VIGIL_FUZZ_LIVE", "300"))


def test_fuzzed_policies_load_completely_or_not_at_all(running_agent: RunningAgent) -> None:
    a = running_agent.agent
    rng = random.Random(int(os.environ.get("VIGIL_FUZZ_SEED", "8")))
    tally: collections.Counter[str] = collections.Counter()
    base_progs = prog_ids_held()
    base_policies = set(a.policies.policies)
    tried = 0
    while tried < LIVE:
        text = rtext(rng)
        try:
            parse_policies(text, "fuzz.yaml")
        except PolicyErrors:
            tally["rejected offline"] += 1  # the pure fuzz test covers these; load the others
            continue
        tried += 1
        hooks_before = set(a.policies.hooks)
        try:
            names = a.policies.add_text(text, "fuzz.yaml", mode="monitor", source="fuzz")
        except PolicyError as e:
            for line in str(e).splitlines():
                assert LOCATED.match(line), f"unlocated refusal: {line!r}\n--- policy:\n{text}"
            assert set(a.policies.hooks) == hooks_before, f"hooks left by a refused policy:\n{text}"
            assert set(a.policies.policies) == base_policies
            assert prog_ids_held() == base_progs, f"programs left by a refused policy:\n{text}"
            tally["refused"] += 1
            continue
        loaded = prog_ids_held() - base_progs
        listed = {p["name"]: p for p in a.list_policies()}
        for n in names:
            assert listed[n]["state"] == "enabled" and listed[n]["error"] == ""
            a.delete_policy(n)
        assert set(a.policies.policies) == base_policies and set(a.policies.hooks) == hooks_before
        assert prog_ids_held() == base_progs
        assert not still_loaded(loaded), f"programs still loaded after delete:\n{text}"
        tally["loaded"] += len(names)
    print(f"\nlive policy fuzz: {dict(tally)}")
    assert tally["loaded"] and tally["refused"], tally
