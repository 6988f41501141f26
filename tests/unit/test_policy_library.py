"""The policy library as shipped: every policy valid, documented and reachable by name."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.policy.library import LibraryError, entries, find, resolve, root
from vigil.policy.loader import check_file

VIGIL = [sys.executable, "-m", "vigil.cli.main"]
ENTRIES = entries()
USE_CASES = {"binary-execution-control", "namespace-and-privilege", "kubernetes-exfiltration", "file-integrity",
             "network", "host-tampering", "container-shells"}
README_SECTIONS = ("## What it catches", "## Event", "## False positives", "## Tuning", "## Kernel")


def test_every_use_case_of_the_issue_has_policies():
    assert {e.use_case for e in ENTRIES} == USE_CASES
    assert len(ENTRIES) >= 20
    assert len({e.name for e in ENTRIES}) == len(ENTRIES)


@pytest.mark.parametrize("e", ENTRIES, ids=[e.name for e in ENTRIES])
def test_policy_is_valid_and_documented(e):
    r = check_file(e.path)
    assert r.ok, [str(x) for x in r.errors]
    assert list(r.warnings) == []
    (p,) = r.policies
    assert p.name == e.path.parent.name == e.name
    assert p.metadata.annotations["vigil.io/use-case"] == e.use_case
    assert e.summary
    readme = e.readme.read_text()
    assert readme.startswith(f"# {e.name}\n")
    for section in README_SECTIONS:
        assert section in readme, f"{e.readme}: no {section!r}"
    assert "```json" in readme  # an example event


def test_use_case_folders_have_a_readme_listing_their_policies():
    index = (root() / "README.md").read_text()
    for e in ENTRIES:
        assert f"[{e.name}]({e.use_case}/{e.name}/README.md)" in index


def test_find_and_resolve():
    assert find("mount").use_case == "host-tampering"
    assert find("host-tampering/mount").name == "mount"
    assert resolve("library:raw-sockets") == find("raw-sockets").path
    assert resolve("some/file.yaml") == Path("some/file.yaml")
    with pytest.raises(LibraryError, match="did you mean mount"):
        find("mout")
    with pytest.raises(LibraryError, match="expected library:NAME"):
        resolve("library:")


def test_library_root_from_the_environment(tmp_path, monkeypatch):
    d = tmp_path / "lib" / "uc" / "p1"
    d.mkdir(parents=True)
    (d / "policy.yaml").write_text("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: p1\n"
                                   "  annotations: {vigil.io/summary: one}\nspec: {}\n")
    monkeypatch.setenv("VIGIL_POLICY_LIBRARY", str(tmp_path / "lib"))
    (e,) = entries()
    assert (e.name, e.use_case, e.summary) == ("p1", "uc", "one")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VIGIL, *args], capture_output=True, text=True, timeout=120)


def test_list_and_show():
    r = cli("policy", "library", "list")
    assert r.returncode == 0
    assert re.search(r"^  deny-exec-writable-dirs +deny +Deny exec", r.stdout, re.M)
    assert re.search(r"^  userns-unprivileged-kill +kill ", r.stdout, re.M)
    assert re.search(r"^  mount +observe ", r.stdout, re.M)
    doc = json.loads(cli("policy", "library", "list", "-o", "json").stdout)
    assert {p["name"] for p in doc["policies"]} == {e.name for e in ENTRIES}
    r = cli("policy", "library", "show", "critical-files")
    assert r.returncode == 0 and "## False positives" in r.stdout
    assert "load it: vigil agent --tracing-policy library:critical-files" in r.stdout
    r = cli("policy", "library", "show", "capset-raise")
    assert "needs: a kernel-function hook" in r.stdout
    assert cli("policy", "library", "show", "mount", "--yaml").stdout == find("mount").path.read_text()
    r = cli("policy", "library", "show", "nope")
    assert r.returncode == 1 and "no library policy named 'nope'" in r.stderr


def test_library_refs_where_policy_files_are_accepted():
    r = cli("policy", "validate", "library:mount", "library:raw-sockets")
    assert r.returncode == 0 and r.stdout.count(": OK (1 policies)") == 2
    r = cli("policy", "validate", "library:nope")
    assert r.returncode == 1 and "no library policy named 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = cli("agent", "--tracing-policy", "library:nope")
    assert r.returncode == 2 and "--tracing-policy" in r.stderr and "no library policy named 'nope'" in r.stderr
    r = cli("tracingpolicy", "add", "library:nope", "--server-address", "unix:///nonexistent.sock")
    assert r.returncode == 1 and "no library policy named 'nope'" in r.stderr
