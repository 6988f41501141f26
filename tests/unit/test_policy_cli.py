"""`vigil policy validate`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vigil.cli.main import cli
from vigil.cli.policy_cmd import policy

GOOD = Path(__file__).parents[1] / "policies" / "good"
BAD = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: bad\nspec:\n"
       "  kprobes:\n  - call: sys_openat\n    args: [{index: 1, type: string}]\n"
       "    selectors:\n    - matchArgs: [{index: 1, operator: Equals, values: [/etc]}]\n"
       "      matchActions: [{action: Sigkil}]\n")


def test_policy_is_a_group_with_validate() -> None:
    import click

    assert isinstance(policy, click.Group) and "validate" in policy.commands


def test_validate_ok() -> None:
    f = GOOD / "14-macros.yaml"
    r = CliRunner().invoke(cli, ["policy", "validate", str(f)])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"{f}: OK (1 policies)"


def test_validate_finds_what_vigil_cannot_do_offline() -> None:
    """A valid TracingPolicy using features Vigil does not implement fails validation, each
    feature named with its location (before: "OK" for a file that could never load)."""
    f = GOOD / "15-multi-doc-usdt-fentry.yaml"
    r = CliRunner().invoke(cli, ["policy", "validate", str(f)])
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert lines == [  # (its kprobe's data and matchData are read and filtered: not findings)
        f"{f}:55:19: spec.kprobes[0].selectors[0].matchArgs[0].operator: operator CelExpr is not supported "
        "by Vigil",
        f"{f}: FAILED (1 error)"]


def test_validate_errors_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    good = GOOD / "01-file-monitoring-openat.yaml"
    r = CliRunner().invoke(policy, ["validate", str(good), str(bad)])
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0] == f"{good}: OK (1 policies)"
    assert lines[1].startswith(f"{bad}:10:40: spec.kprobes[0].selectors[0].matchArgs[0].operator: "
                               'unknown operator "Equals" (expected one of Equal, NotEqual,')
    assert lines[2].startswith(f"{bad}:11:31: spec.kprobes[0].selectors[0].matchActions[0]"
                               '.action: unknown action "Sigkil"')
    assert lines[3] == f"{bad}: FAILED (2 errors)"


def test_validate_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    r = CliRunner().invoke(policy, ["validate", "-o", "json", str(GOOD), str(bad)])
    assert r.exit_code == 1
    out = json.loads(r.output)
    assert out["ok"] is False
    files = {Path(f["file"]).name: f for f in out["files"]}
    assert len(files) == len(list(GOOD.glob("*.yaml"))) + 1
    assert files["bad.yaml"]["policies"] == []
    err = files["bad.yaml"]["errors"][0]
    assert (err["line"], err["column"], err["severity"]) == (10, 40, "error")
    assert err["path"] == "spec.kprobes[0].selectors[0].matchArgs[0].operator"
    ok = files["14-macros.yaml"]
    assert ok["ok"] and ok["policies"][0]["name"]
    unsupported = files["13-policy-mode-monitor.yaml"]  # SubString: not in Vigil
    assert not unsupported["ok"] and "SubString" in unsupported["errors"][0]["message"]


def test_validate_prints_warnings(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text(BAD.replace("Equals", "Equal").replace("Sigkil", "FollowFD"))
    r = CliRunner().invoke(policy, ["validate", str(f)])
    assert r.exit_code == 0
    assert "warning: action FollowFD is deprecated" in r.output
    r = CliRunner().invoke(policy, ["validate", "-q", str(f)])
    assert "warning:" not in r.output and r.output.strip().endswith("OK (1 policies)")


def test_validate_missing_file() -> None:
    r = CliRunner().invoke(policy, ["validate", "/nonexistent/x.yaml"])
    assert r.exit_code == 2


# ---- input that once gave a traceback or passed unnoticed: a clear error, nothing half done
BAD_EVENT_LINES = [
    ('{"process_exec":5}', "process_exec is a number, not an object"),
    ('{"process_exec":{"process":"x"}}', "process_exec.process is a string, not an object"),
    ('{"process_exec":{"process":{"binary":5}}}', "process_exec.process.binary is a number, not a string"),
    ('{"process_exec":{"process":{"binary":"/x"}},"time":5}', "time is a number, not a string"),
    ('{"process_kprobe":{"process":{"binary":"/x"},"args":[1]}}', "process_kprobe.args[0] is a number"),
]


def test_dry_run_and_getevents_skip_lines_that_are_not_events_of_the_export(tmp_path: Path) -> None:
    good = '{"process_kprobe":{"process":{"binary":"/x","pid":1},"function_name":"__x64_sys_write",' \
           '"args":[{"size_arg":"abc"}]}}'
    ev = tmp_path / "ev.json"
    ev.write_text("\n".join([good] + [line for line, _ in BAD_EVENT_LINES]) + "\n")
    pol = tmp_path / "p.yaml"
    pol.write_text("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: w}\nspec:\n"
                   "  kprobes: [{call: sys_write, syscall: true, args: [{index: 2, type: size_t}],\n"
                   "             selectors: [{matchArgs: [{index: 2, operator: GT, values: ['10']}]}]}]\n")
    r = CliRunner().invoke(cli, ["policy", "dry-run", str(pol), "--events", str(ev)])
    assert r.exit_code == 0, r.output
    for n, (_line, why) in enumerate(BAD_EVENT_LINES, start=2):
        assert f"ev.json:{n}: skipping malformed line: {why}" in r.output
    assert "undecidable" in r.output   # the good line's size "abc" cannot be compared, and says so
    for output in ("json", "compact"):
        r = CliRunner().invoke(cli, ["getevents", "-o", output, "--timestamps", "--process", "x",
                                     "--file", str(ev)])
        assert r.exit_code == 0, r.output
        assert r.output.count("skipping malformed line") == len(BAD_EVENT_LINES)


def test_explain_with_a_facts_file_that_is_not_one(tmp_path: Path) -> None:
    for text in ("not json", "[1, 2]"):
        f = tmp_path / "facts.json"
        f.write_text(text)
        r = CliRunner().invoke(cli, ["policy", "explain", "--facts", str(f), str(GOOD / "14-macros.yaml")])
        assert r.exit_code == 2 and "not a facts file recorded by --record-facts" in r.output, r.output
    facts = Path(__file__).parents[1] / "data" / "facts" / "host-6.18.json"
    r = CliRunner().invoke(cli, ["policy", "explain", "--facts", str(facts), "--record-facts", str(tmp_path),
                                 str(GOOD / "14-macros.yaml")])
    assert r.exit_code == 2 and "Is a directory" in r.output, r.output


UNRECORDED_POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: unrecorded}
spec:
  kprobes:
  - call: vigil_never_recorded_fn
    syscall: false
"""


def test_explain_names_what_a_partial_facts_file_never_recorded(tmp_path: Path) -> None:
    """A recording holds only what its policies asked about: a function it never saw is not
    absent from that kernel, only unknown, and explain says so (exit 1) instead of refusing the
    hook 'on this kernel' as if it were a fact. A complete recording (--full) is believed."""
    facts = json.loads((Path(__file__).parents[1] / "data" / "facts" / "host-6.18.json").read_text())
    pol = tmp_path / "p.yaml"
    pol.write_text(UNRECORDED_POLICY)
    for full in (False, True):
        f = tmp_path / f"facts-{full}.json"
        f.write_text(json.dumps({**facts, "full": full}))
        r = CliRunner().invoke(cli, ["policy", "explain", "--facts", str(f), str(pol)])
        assert r.exit_code == 1, r.output  # not loadable either way: the hook needs kprobes here
        note = f"{f}: does not record kernel function (BTF) vigil_never_recorded_fn"
        assert (note in r.output) is not full, r.output
        r = CliRunner().invoke(cli, ["policy", "explain", "-o", "json", "--facts", str(f), str(pol)])
        got = json.loads(r.output[r.output.index("{"):r.output.rindex("}") + 1])["unrecorded"]
        assert ("kernel function (BTF) vigil_never_recorded_fn" in got) is not full, got


def test_validate_a_directory_without_policies(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["policy", "validate", str(tmp_path)])
    assert r.exit_code == 2 and "no .yaml, .yml or .json file" in r.output
    (tmp_path / "P.YAML").write_text((GOOD / "14-macros.yaml").read_text())
    r = CliRunner().invoke(cli, ["policy", "validate", str(tmp_path)])
    assert r.exit_code == 0 and "P.YAML: OK" in r.output, r.output


def test_a_mode_given_on_the_command_line_hides_nothing_from_the_strict_reading(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: d}\nspec:\n"
                 "  kprobes: [{call: sys_write, syscall: true, selectors: [{matchBinaries: [], matchBinaries: []}]}]\n")
    r = CliRunner().invoke(cli, ["tracingpolicy", "add", "-m", "monitor", str(f), "--server-address",
                                 "unix:///nonexistent/vigil.sock"])
    assert r.exit_code == 1 and f"{f}:5:" in r.output and 'duplicate field "matchBinaries"' in r.output, r.output


def test_aliases_that_multiply_values_and_deep_nesting_are_refused_quickly() -> None:
    from vigil.policy import check_text

    n = 30   # each level a list of aliases to the one below: n**4 values from a few kilobytes
    vals = "[" + ",".join(f'"/a{i}"' for i in range(n)) + "]"
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: bomb}\nspec:\n  kprobes:\n"
            "  - &K\n    call: sys_openat\n    syscall: true\n    args: [{index: 1, type: string}]\n"
            "    selectors:\n    - &S\n      matchArgs:\n"
            f"      - &A {{index: 1, operator: Equal, values: {vals}}}\n"
            + "      - *A\n" * (n - 1) + "    - *S\n" * (n - 1) + "  - *K\n" * (n - 1))
    r = check_text(text, "bomb.yaml")
    assert not r.ok and any("more than 200000 values" in e.message for e in r.errors)
    deep = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: d}\nstatus: "
            + "[" * 900 + "]" * 900 + "\nspec: {tracepoints: [{subsystem: syscalls, event: sys_enter_getppid}]}\n")
    r = check_text(deep, "deep.yaml")
    assert not r.ok and "nested too deeply" in r.errors[0].message


@pytest.mark.parametrize("ref, error", [
    ("missing.yaml", "missing.yaml: no such file or directory"),
    ("empty-dir", "no .yaml, .yml or .json file in this directory"),
    ("library:no-such-policy", "no library policy named 'no-such-policy'"),
    ("n" * 300, "n" * 300 + ": File name too long"),       # an OSError traceback from Path.exists before
    ("d/" + "n" * 5000, ": File name too long"),
])
def test_explain_reports_a_file_it_cannot_read_before_probing_the_kernel(tmp_path: Path, monkeypatch,
                                                                          ref: str, error: str) -> None:
    """`policy explain missing.yaml` ran the kernel feature probe first (root; seconds, and a log
    line) and only then said the file does not exist."""
    from vigil.kernel.facts import KernelFacts

    probed: list[bool] = []
    monkeypatch.setattr(KernelFacts, "gather", classmethod(lambda cls, *a, **k: probed.append(True)))
    (tmp_path / "empty-dir").mkdir()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["policy", "explain", ref])
    assert res.exit_code in (1, 2) and error in res.output, res.output
    assert probed == []


def test_explain_says_a_user_action_before_the_last_will_not_run(tmp_path: Path) -> None:
    pol = tmp_path / "ua.yaml"
    pol.write_text("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: ua}\nspec:\n"
                   "  kprobes:\n  - call: sys_openat\n    syscall: true\n    args: [{index: 1, type: string}]\n"
                   "    selectors:\n    - matchActions: [{action: GetUrl, argUrl: 'http://127.0.0.1/x'}, "
                   "{action: Post}]\n")
    facts = Path(__file__).parents[1] / "data" / "facts" / "host-6.18.json"
    r = CliRunner().invoke(cli, ["policy", "explain", "-o", "json", "--facts", str(facts), str(pol)])
    assert r.exit_code == 0, r.output
    (entry,) = json.loads(r.output)["policies"]
    assert entry["loadable"] and [w for w in entry["warnings"] if "GetUrl will not run" in w] == [
        f"{pol}:10:31: spec.kprobes[0].selectors[0].matchActions[0].action: warning: GetUrl will not run: it is "
        "not the selector's last action (matchActions[0] of 2); the agent runs GetUrl and DnsLookup only when the "
        "selector's last action is one, as Tetragon does"]


@pytest.mark.parametrize("policy, error", [
    ("missing.yaml", "missing.yaml: no such file"),
    ("n" * 300, "n" * 300 + ": File name too long"),       # an OSError traceback from Path.exists before
])
def test_dry_run_names_a_policy_file_it_cannot_read(tmp_path: Path, monkeypatch, policy: str, error: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.json").write_text("")
    res = CliRunner().invoke(cli, ["policy", "dry-run", policy, "--events", "events.json"])
    assert res.exit_code == 1 and error in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
