"""Hostile policies through the whole front end (parse, validate, compile for a kernel like
this host's and one like the VM tier's): every one is accepted, or rejected with
file:line:col and the field; never a traceback. Half start from the project's example
policies, half are generated from the policy model; both are mutated (tests/policyfuzz.py).
`make test` tries VIGIL_FUZZ_EXAMPLES (10,000, seeded); `make fuzz` many more, unseeded.
The tally is printed with -s; the kernel side (real loads, nothing left behind) is in
tests/kernel/test_policy_fuzz_live.py."""
from __future__ import annotations

import collections
import os
import random

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.policyfuzz import HOST_FEATURES, VM_FEATURES, facts, outcome, rtext

EXAMPLES = int(os.environ.get("VIGIL_FUZZ_EXAMPLES", "10000"))
TALLY: collections.Counter[str] = collections.Counter()
HOST, VM = facts(HOST_FEATURES), facts(VM_FEATURES)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("VIGIL_FUZZ_RANDOM") != "1",
          suppress_health_check=list(HealthCheck), database=None)
@given(seed=st.integers(0, 2**64 - 1))
def test_every_policy_is_accepted_or_rejected_with_its_location(seed: int) -> None:
    # hypothesis picks the seed (and reports it on a failure: rtext(random.Random(seed))
    # rebuilds the policy); the generator itself is random.Random, 10x faster than drawing
    # every choice through hypothesis, which is what makes 10,000 fit in `make test`
    text = rtext(random.Random(seed))
    TALLY["host " + outcome(text, HOST, substitute=seed & 1 == 1)] += 1
    TALLY["vm " + outcome(text, VM)] += 1


def test_tally() -> None:
    """Runs after the fuzz test: it really tried that many, and every outcome occurred."""
    total = sum(v for k, v in TALLY.items() if k.startswith("host "))
    print(f"\npolicy fuzz: {total} policies: {dict(sorted(TALLY.items()))}")
    assert total >= EXAMPLES
    assert all(TALLY[f"{k} {o}"] for k in ("host", "vm") for o in ("accepted", "refused", "rejected")), TALLY
