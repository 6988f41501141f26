"""Policies enforced by cgroup socket rules: the rules built from selectors (first-match order,
rule ids), and what explain/validate refuses with file, line and field before anything loads."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vigil.cli.policy_cmd import policy as policy_cli
from vigil.core.errors import PolicyError
from vigil.enforce import netrules as N
from vigil.enforce.netrules import compile_rules
from vigil.kernel.facts import KernelFacts
from vigil.policy import parse_policies
from vigil.policy.compile import CompiledHook, compile_report
from vigil.policy.hostdeny_check import socket_rule_origin
from vigil.sensors.hostdeny import NetDenyHook, netdeny_event

FACTS_FILE = Path(__file__).parents[1] / "data" / "facts" / "host-6.18.json"
FACTS = KernelFacts.load(str(FACTS_FILE))


def policy(selectors: str, call: str = "sys_connect", index: int = 1) -> str:
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: nd
spec:
  kprobes:
  - call: {call}
    syscall: true
    args: [{{index: {index}, type: sockaddr}}]
    selectors:
{selectors}
"""


def compiled(text: str, hook_id: int = 5) -> tuple[CompiledHook | None, list[str]]:
    (p,) = parse_policies(text, "p.yaml")
    ids = itertools.count(hook_id)
    cp, errs = compile_report(p, FACTS, lambda: next(ids))
    return (cp.hooks[0] if cp.hooks else None), [str(e) for e in errs.errors]


def rules(text: str, hook_id: int = 5) -> list[N.NetRule]:
    ch, errors = compiled(text, hook_id)
    assert not errors and ch is not None and ch.placement.mechanism == "cgroup_sock_addr"
    return NetDenyHook(ch, {}, False).rules


def _bins(n: int, prefix: str = "/usr/bin/b") -> str:
    return ", ".join(f'"{prefix}{i}"' for i in range(n))


def test_seventeen_binaries_keep_their_selector() -> None:
    sels = f"""    - matchBinaries: [{{operator: In, values: [{_bins(17)}]}}]
      matchActions: [{{action: Override, argError: -1}}]
    - matchArgs: [{{index: 1, operator: SPort, values: ["9"]}}]
      matchActions: [{{action: Override, argError: -1}}]"""
    rs = rules(policy(sels), hook_id=77)
    assert len(rs) == 18 and len({r.id for r in rs}) == 18
    assert [socket_rule_origin(r.id) for r in rs] == [(77, 0)] * 17 + [(77, 1)]
    compile_rules(rs)


def test_event_names_the_selector_of_the_seventeenth_binary() -> None:
    sels = f"""    - matchBinaries: [{{operator: In, values: [{_bins(17)}]}}]
      matchActions: [{{action: Override, argError: -1}}]"""
    ch, _ = compiled(policy(sels))
    assert ch is not None
    r17 = NetDenyHook(ch, {}, False).rules[16]
    rec: dict[str, Any] = {"family": "inet", "daddr": "127.0.0.1", "dport": 9, "protocol": "tcp", "rule_id": r17.id,
                           "action": "deny", "monitor": False, "hook": "connect4"}
    assert "selector 1 matched" in netdeny_event(rec, ch)["message"]


# (the selector's matchActions, the record's action: deny or allow; the event's action, as a
# kernel record of that selector reports: the last action of the list)
STAND_IN_ACTIONS = [
    ("[{action: Override, argError: -1}]", "deny", "KPROBE_ACTION_OVERRIDE"),
    ("[{action: Override, argError: -1}, {action: Post}]", "deny", "KPROBE_ACTION_POST"),
    ("[{action: Override, argError: -1}, {action: GetUrl, argUrl: 'http://127.0.0.1:9/x'}]", "deny",
     "KPROBE_ACTION_GETURL"),
    ("[{action: Override, argError: -1}, {action: DnsLookup, argFqdn: vigil.invalid}]", "deny",
     "KPROBE_ACTION_DNSLOOKUP"),
    ("[{action: Post}]", "allow", "KPROBE_ACTION_POST"),
]


@pytest.mark.parametrize("actions, verdict, want", STAND_IN_ACTIONS, ids=[c[0] for c in STAND_IN_ACTIONS])
def test_stand_in_events_report_the_selectors_last_action(actions: str, verdict: str, want: str) -> None:
    """The events the cgroup socket rules and the fanotify helper make report the selector's last
    action, as the kernel hooks' do: [Override, GetUrl] reported Override before."""
    from vigil.enforce.permd_proto import REP_ALLOWED, Report
    from vigil.sensors.hostdeny import fanotify_event

    sels = f"""    - matchArgs: [{{index: 1, operator: SPort, values: ["10"]}}]
      matchActions: [{{action: Override, argError: -1}}]
    - matchArgs: [{{index: 1, operator: SPort, values: ["9"]}}]
      matchActions: {actions}"""   # (selector 2, under test: a lone Post needs no socket rules)
    ch, errors = compiled(policy(sels))
    assert not errors and ch is not None
    (rule,) = [r for r in NetDenyHook(ch, {}, False).rules if socket_rule_origin(r.id)[1] == 1]
    rec: dict[str, Any] = {"family": "inet", "daddr": "127.0.0.1", "dport": 9, "protocol": "tcp",
                           "rule_id": rule.id, "action": verdict, "monitor": False, "hook": "connect4"}
    assert netdeny_event(rec, ch)["action"] == want
    rep = Report(0, 1, ch.hook_id, 1, "open", "override" if verdict == "deny" else "post",
                 0 if verdict == "deny" else REP_ALLOWED, 0, "/etc/x", "/bin/cat")
    assert fanotify_event(rep, ch)["action"] == want


@pytest.mark.parametrize("sels, where, what", [
    (f"""    - matchBinaries: [{{operator: In, values: [{_bins(65)}]}}]
      matchActions: [{{action: Override, argError: -1}}]""",
     "p.yaml:11:22: spec.kprobes[0].selectors[0].matchBinaries:", "65 socket rules"),
    ("""    - matchBinaries: [{operator: In, values: ["curl"]}]
      matchActions: [{action: Override, argError: -1}]""",
     "p.yaml:11:", 'matchBinaries value "curl"'),
    ("""    - matchArgs: [{index: 1, operator: SPort, values: ["1", "2", "3", "4", "5", "6", "7", "8", "9"]}]
      matchActions: [{action: Override, argError: -1}]""",
     "p.yaml:11:", "9 port ranges"),
])
def test_kernel_table_limits_are_refused_by_explain(sels: str, where: str, what: str) -> None:
    ch, errors = compiled(policy(sels))
    assert ch is None or errors
    assert len(errors) == 1, errors
    assert errors[0].startswith(where) and what in errors[0], errors[0]


def test_too_many_prefixes_refused_at_the_values_that_overflow() -> None:
    many = ", ".join(f'"10.{i >> 8}.{i & 255}.0/24"' for i in range(N.MAX_PREFIXES + 1))
    sels = f"""    - matchArgs: [{{index: 1, operator: SAddr, values: ["127.0.0.1"]}}]
      matchActions: [{{action: Override, argError: -1}}]
    - matchArgs: [{{index: 1, operator: SAddr, values: [{many}]}}]
      matchActions: [{{action: Override, argError: -1}}]"""
    _, errors = compiled(policy(sels))
    assert len(errors) == 1, errors[:3]
    assert errors[0].startswith("p.yaml:13:") and "spec.kprobes[0].selectors[1].matchArgs[0].values" in errors[0]
    assert f"at most {N.MAX_PREFIXES}" in errors[0]


def test_explain_cli_reports_the_field_for_65_binaries(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(policy(f"""    - matchBinaries: [{{operator: In, values: [{_bins(65)}]}}]
      matchActions: [{{action: Override, argError: -1}}]"""))
    r = CliRunner().invoke(policy_cli, ["explain", "--facts", str(FACTS_FILE), str(f)])
    assert r.exit_code == 1 and "NOT loadable" in r.output, r.output
    assert "matchBinaries" in r.output and "65" in r.output


def test_hook_refuses_what_explain_refuses() -> None:
    """The agent builds its rules with the same code as explain: a refused hook names the field,
    not a bare NetRuleError at load."""
    ch, errors = compiled(policy("""    - matchBinaries: [{operator: In, values: ["curl"]}]
      matchActions: [{action: Override, argError: -1}]"""))
    assert errors and ch is not None
    with pytest.raises(PolicyError, match=r'p\.yaml:11:.*matchBinaries value "curl"'):
        NetDenyHook(ch, {}, False)


@pytest.mark.parametrize("blocks, pid_blocks, want_bins, want_pids", [
    # several matchPIDs entries of a selector are ANDed (as in Tetragon and the evaluator): the
    # pids every entry lists (validation allows one matchBinaries entry per selector)
    ([], [[1, 2, 3], [2, 3, 4]], [None], [2, 3]),
    ([["/usr/bin/a", "/usr/bin/b"]], [[7, 8], [8]], ["/usr/bin/a", "/usr/bin/b"], [8]),
    # nothing in common: the selector matches nothing, so it makes no rule (before, the lists
    # were merged and every pid of either was refused)
    ([], [[1], [2]], None, None),
], ids=["pids", "binaries-and-pids", "disjoint-pids"])
def test_several_pid_entries_of_a_selector_are_anded(blocks, pid_blocks, want_bins, want_pids) -> None:
    lines = "".join(f"      - {{operator: In, values: [{', '.join(chr(34) + b + chr(34) for b in vals)}]}}\n"
                    for vals in blocks)
    plines = "".join(f"      - {{operator: In, values: [{', '.join(map(str, vals))}]}}\n" for vals in pid_blocks)
    sel = "    - matchArgs: [{index: 1, operator: SAddr, values: [\"10.0.0.0/8\"]}]\n"
    if blocks:
        sel += "      matchBinaries:\n" + lines
    if pid_blocks:
        sel += "      matchPIDs:\n" + plines
    sel += "      matchActions: [{action: Override, argError: -1}]\n"
    got = rules(policy(sel))
    if want_bins is None:
        assert got == []
        return
    assert [r.binary for r in got] == want_bins
    assert all(list(r.pids) == want_pids for r in got)


def _sel(action: str, cidr: str) -> str:
    return (f"    - matchArgs: [{{index: 1, operator: SAddr, values: ['{cidr}']}}]\n"
            f"      matchActions: [{{action: {action}}}]\n")


OVR = "Override, argError: -1"


# selectors -> (action, post) of each rule built, in selector order (first match decides)
@pytest.mark.parametrize("sels, want", [
    ([("Post", "127.0.0.2/32"), (OVR, "127.0.0.0/8")], [("allow", True), ("deny", False)]),
    ([("NoPost", "127.0.0.2/32"), (OVR, "127.0.0.0/8")], [("allow", False), ("deny", False)]),
    ([(OVR, "127.0.0.0/8"), ("Post", "0.0.0.0/0")], [("deny", False), ("post", False)]),
    ([(OVR, "127.0.0.0/8"), ("NoPost", "0.0.0.0/0")], [("deny", False)]),
    ([("Post", "127.0.0.2/32"), (OVR, "127.0.0.0/8"), ("NoPost", "10.0.0.0/8"), ("Post", "0.0.0.0/0")],
     [("allow", True), ("deny", False), ("post", False)]),
], ids=["post-first", "nopost-first", "post-last", "nopost-last", "both-sides"])
def test_post_selectors_become_reporting_rules(sels: list[tuple[str, str]], want: list[tuple[str, bool]]) -> None:
    built = rules(policy("".join(_sel(a, c) for a, c in sels)))
    assert [(r.action, r.post) for r in built] == want
    compile_rules(built)  # the kernel tables take them


@pytest.mark.parametrize("param", ["rateLimit: 1m", "kernelStackTrace: true", "userStackTrace: true"])
def test_post_parameters_the_socket_rules_cannot_honour_are_refused(param: str) -> None:
    sels = _sel(OVR, "127.0.0.0/8") + _sel(f"Post, {param}", "0.0.0.0/0")
    _, errors = compiled(policy(sels))
    assert len(errors) == 1 and f"Post {param.split(':')[0]}" in errors[0], errors
    assert errors[0].startswith("p.yaml:14:"), errors[0]
