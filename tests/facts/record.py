"""Record this kernel's facts for the pure compiler tests: `python -m tests.facts.record OUT.json`
(root; the VM tier records its guests the same way). Asks everything the test corpus, the fuzz
vocabulary and the stand-in table need, and keeps only those answers (not the kernel's full
name lists), so the recording stays small and the tests compile exactly as on that kernel."""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from vigil.kernel.facts import KernelFacts
from vigil.policy import PolicyErrors, load_policies, standins
from vigil.policy.compile import compile_report
from vigil.policy.syscall_place import TRACEPOINT_NAME
from vigil.policy.syscalls import SYSCALL_NUMBERS

ROOT = Path(__file__).resolve().parents[2]
CORPUS = [ROOT / "tests" / "policies" / "good", ROOT / "tests" / "policies" / "kernel"]


def ask(facts: KernelFacts) -> None:
    from tests.policyfuzz import WORDS

    for n in SYSCALL_NUMBERS:
        tp = TRACEPOINT_NAME.get(n, n)
        for kind in ("enter", "exit"):
            if facts.has_tracepoint("syscalls", f"sys_{kind}_{tp}"):
                facts.tp_format("syscalls", f"sys_{kind}_{tp}")
    for name in list(standins.STANDINS) + WORDS["call"][0] + WORDS["call"][1]:
        facts.has_function(name)
        facts.kprobe_target(name)
        facts.error_injectable(name)
        facts.func_params(name)
    for hook in list(standins.LSM_STANDINS) + WORDS["hook"][0] + WORDS["hook"][1]:
        facts.has_function(f"bpf_lsm_{hook}")
        facts.func_params(f"bpf_lsm_{hook}")
    for sub, ev in itertools.product(WORDS["subsystem"][0], WORDS["event"][0]):
        facts.tp_format(sub, ev)
        facts.has_raw_tracepoint(ev)
        facts.tp_btf_params(ev)
    for s in standins.STANDINS.values():
        for site in s.sites:
            facts.has_raw_tracepoint(site.name)
            facts.tp_btf_params(site.name)
    for p in WORDS["path"][0] + WORDS["path"][1]:
        for sym in WORDS["symbols"][0] + WORDS["symbols"][1]:
            facts.file_symbol(p, sym)
    ids = itertools.count(1)
    import importlib

    from vigil.policy import parse_policies

    tests = importlib.import_module("tests.unit.test_policy_compile")
    for name in dir(tests):  # run the module's spec builders so SPECS is complete
        obj = getattr(tests, name)
        if name in ("PLACES",):
            for case in obj:
                tests.one(case[1])
    import inspect
    import re

    src = inspect.getsource(tests)
    for m in re.finditer(r'"""\n((?:kprobes|lsmhooks|uprobes|tracepoints|usdts|lists):.*?)"""', src, re.S):
        tests.SPECS.append(m.group(1))
    for spec in tests.SPECS:
        try:
            (p,) = parse_policies("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: t\n"
                                  "spec:\n" + "\n".join("  " + ln for ln in spec.strip("\n").splitlines()) + "\n",
                                  "p.yaml")
        except PolicyErrors:
            continue
        for sub in (False, True):
            compile_report(p, facts, lambda: next(ids), follow_bit=lambda op, v: 0, substitute=sub)
    for d in CORPUS:
        for f in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            try:
                policies = load_policies(f)
            except PolicyErrors:
                continue
            for p in policies:
                for sub in (False, True):
                    compile_report(p, facts, lambda: next(ids), follow_bit=lambda op, v: 0, substitute=sub)


def main(argv: list[str]) -> int:
    facts = KernelFacts.gather()
    ask(facts)
    data = json.dumps(facts.record(), indent=0, sort_keys=True)
    if len(argv) > 1 and argv[1] != "-":
        Path(argv[1]).write_text(data + "\n")
    else:
        print(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
