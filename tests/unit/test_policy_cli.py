"""`vigil policy validate`."""
from __future__ import annotations

import json
from pathlib import Path

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
    assert lines == [
        f"{f}:58:7: spec.kprobes[0].selectors[0].matchData: matchData is not supported by Vigil yet",
        f"{f}:55:19: spec.kprobes[0].selectors[0].matchArgs[0].operator: operator CelExpr is not supported "
        "by Vigil",
        f"{f}: FAILED (2 errors)"]


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
