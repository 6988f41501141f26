"""Loading good policies: model shape, CRD defaults, locations, macros, warnings, all-or-nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vigil.policy import KProbeSpec, PolicyErrors, check_text, load_policies, loader as loader_mod, parse_policies

GOOD = Path(__file__).parents[1] / "policies" / "good"
GOOD_FILES = sorted(GOOD.glob("*.yaml"))
HEAD = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n"


def doc(body: str, name: str = "t") -> str:
    return HEAD.format(name=name) + "".join("  " + ln + "\n" for ln in body.splitlines())


def test_good_policy_count() -> None:
    assert len(GOOD_FILES) >= 15


@pytest.mark.parametrize("path", GOOD_FILES, ids=[p.name for p in GOOD_FILES])
def test_good_policies_load_clean(path: Path) -> None:
    warnings: list = []
    policies = load_policies(path, warnings)
    assert policies
    assert warnings == []
    for p in policies:
        assert p.api_version == "cilium.io/v1alpha1"
        assert p.spec.hooks()


def test_load_directory() -> None:
    policies = load_policies(GOOD)
    names = [p.name for p in policies]
    assert len(names) == len(set(names)) >= 17


def test_crd_defaults_and_shape() -> None:
    (p,) = load_policies(GOOD / "02-write-fd.yaml")
    k = p.spec.kprobes[0]
    assert isinstance(k, KProbeSpec)
    assert k.syscall is True and k.return_ is False and k.return_arg is None
    assert [a.type for a in k.args] == ["fd", "char_buf", "size_t"]
    assert k.args[1].size_arg_index == 3 and k.args[0].size_arg_index == 0
    act = k.selectors[0].match_actions[0]
    assert act.action == "Post" and act.rate_limit_seconds == 30
    (p,) = load_policies(GOOD / "10-capabilities.yaml")
    caps = p.spec.kprobes[0].selectors[0].match_capabilities
    assert [c.type for c in caps] == ["Effective", "Effective"]
    assert caps[1].is_namespace_capability is True
    (p,) = parse_policies(doc("tracepoints:\n- subsystem: s\n  event: e\n  args: [{index: 4}]"))
    assert p.spec.tracepoints[0].args[0].type == "auto"
    assert p.mode == "enforce"
    (p,) = load_policies(GOOD / "13-policy-mode-monitor.yaml")
    assert p.mode == "monitor" and p.namespaced and p.namespace == "payments"


def test_locations() -> None:
    path = GOOD / "01-file-monitoring-openat.yaml"
    (p,) = load_policies(path)
    m = p.spec.kprobes[0].selectors[0].match_args[0]
    assert m.loc.path == "spec.kprobes[0].selectors[0].matchArgs[0]"
    assert (m.loc.file, m.loc.line, m.loc.col) == (str(path), 19, 9)
    op = m.at("operator")
    assert (op.line, op.path) == (20, "spec.kprobes[0].selectors[0].matchArgs[0].operator")
    assert m.at("values[2]").line == 24
    assert not m.has("args") and m.at("args").line == m.loc.line  # absent: parent's line


def test_macros_are_merged_with_macro_locations() -> None:
    (p,) = load_policies(GOOD / "14-macros.yaml")
    sel = p.spec.kprobes[0].selectors[0]
    assert sel.macros == ("notPackageManagers", "postOnce")
    assert sel.match_binaries[0].values == ("/usr/bin/dpkg", "/usr/bin/rpm")
    assert sel.match_binaries[0].loc.path.startswith("spec.selectorsMacros.notPackageManagers")
    assert sel.match_actions[0].rate_limit_seconds == 3600
    assert sel.at("matchActions").path == "spec.selectorsMacros.postOnce.matchActions"


def test_all_errors_collected_and_sorted() -> None:
    text = doc(
        "kprobes:\n"
        "- call: sys_write\n"
        "  args: [{index: 0, type: fd}]\n"
        "  selectors:\n"
        "  - matchArgs: [{index: 0, operator: Equals, values: [a]}]\n"
        "    matchActions: [{action: Signal, argSig: 99}]\n"
        "- call: sys_nosuch\n"
        "tracepoints:\n"
        "- subsystem: a\n"
        "  event: b\n"
        "  unknownField: 1\n"
    )
    with pytest.raises(PolicyErrors) as exc:
        parse_policies(text, "multi.yaml")
    errs = exc.value.errors
    assert [e.line for e in errs] == sorted(e.line for e in errs)
    paths = {e.path for e in errs}
    assert paths == {
        "spec.kprobes[0].selectors[0].matchArgs[0].operator",
        "spec.kprobes[0].selectors[0].matchActions[0].argSig",
        "spec.kprobes[1].call",
        "spec.tracepoints[0].unknownField",
    }
    assert str(exc.value).count("multi.yaml:") == 4


def test_follow_on_noise_is_suppressed_within_a_hook() -> None:
    # `syscal` is unknown, so syscall stays true; the "not a syscall" follow-on is not reported.
    text = doc("kprobes:\n- call: security_file_open\n  syscal: false\n")
    result = check_text(text)
    assert [e.path for e in result.errors] == ["spec.kprobes[0].syscal"]


def test_file_is_all_or_nothing() -> None:
    good = doc("kprobes:\n- call: sys_write", name="good")
    bad = doc("kprobes:\n- call: sys_wrte", name="bad")
    result = check_text(good + "---\n" + bad, "f.yaml")
    assert not result.ok and result.policies == []
    assert result.errors[0].line == 15  # line numbers run across documents
    with pytest.raises(PolicyErrors):
        parse_policies(good + "---\n" + bad)


def test_multi_document_and_empty_documents() -> None:
    text = "---\n" + doc("kprobes:\n- call: sys_write", "a") + "---\n" + doc(
        "kprobes:\n- call: sys_read", "b") + "---\n"
    assert [p.name for p in parse_policies(text)] == ["a", "b"]


def test_namespaced_defaults_and_cluster_namespace_warning() -> None:
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicyNamespaced\nmetadata:\n"
            "  name: n\nspec:\n  kprobes:\n  - call: sys_write\n---\n"
            "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n"
            "  name: n\n  namespace: x\nspec:\n  kprobes:\n  - call: sys_write\n")
    warnings: list = []
    ns, cluster = parse_policies(text, "w.yaml", warnings)
    assert ns.namespace == "default" and ns.metadata.namespace == "default"
    assert cluster.namespace is None  # same name is fine: different scope
    msgs = [w.message for w in warnings]
    assert any('placed in namespace "default"' in m for m in msgs)
    assert any("cluster-scoped" in m for m in msgs)
    assert all(w.severity == "warning" for w in warnings)


def test_deprecated_actions_warn_but_load() -> None:
    text = doc("kprobes:\n- call: fd_install\n  syscall: false\n  args:\n"
               "  - {index: 0, type: int}\n  - {index: 1, type: file}\n  selectors:\n"
               "  - matchActions:\n    - {action: FollowFD, argFd: 0, argName: 1}\n"
               "    - {action: CopyFD, argFd: 0}\n    - {action: UnfollowFD}\n")
    result = check_text(text, "d.yaml")
    assert result.ok, result.errors
    assert len(result.warnings) == 3
    assert "deprecated" in str(result.warnings[0])
    assert str(result.warnings[0]).startswith(
        "d.yaml:14:18: spec.kprobes[0].selectors[0].matchActions[0].action: warning: ")


def test_other_warnings() -> None:
    text = doc("selectorsMacros:\n  unused: {matchActions: [{action: Post}]}\n"
               "kprobes:\n- call: sys_openat\n  syscall: false\n  return: false\n"
               "  returnArg: {index: 0, type: int}\n  args:\n  - {index: 1, type: string,"
               " maxData: true}\n  selectors:\n  - matchBinaries: [{operator: In, values: [sh]}]\n")
    result = check_text(text)
    assert result.ok, result.errors
    msgs = " | ".join(w.message for w in result.warnings)
    for needle in ('macro "unused" is not used', "returnArg is ignored", "maxData only applies",
                   "not an absolute path", "__x64_sys_openat"):
        assert needle in msgs


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    for f in ("a.yaml", "b.yaml"):
        (tmp_path / f).write_text(doc("kprobes:\n- call: sys_write", name="same"))
    with pytest.raises(PolicyErrors) as exc:
        load_policies(tmp_path)
    (err,) = exc.value.errors
    assert err.file.endswith("b.yaml") and err.path == "metadata.name"
    assert "a.yaml:4" in err.message


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("")
    with pytest.raises(PolicyErrors, match="no TracingPolicy document"):
        load_policies(f)
    g = tmp_path / "bin.yaml"
    g.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyErrors, match="cannot read file"):
        load_policies(g)


def test_anchors_and_aliases() -> None:
    text = doc("kprobes:\n- call: sys_openat\n  args: [{index: 1, type: string}]\n  selectors:\n"
               "  - matchArgs: [{index: 1, operator: Prefix, values: &p [/etc, /root]}]\n"
               "  - matchArgs: [{index: 1, operator: Postfix, values: *p}]\n")
    (p,) = parse_policies(text)
    assert p.spec.kprobes[0].selectors[1].match_args[0].values == ("/etc", "/root")


def test_pure_python_loader_gives_same_diagnostics(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (GOOD / "07-network-connect.yaml").read_text().replace("DPort", "DPrt")
    fast = check_text(text, "x.yaml").errors
    monkeypatch.setattr(loader_mod, "_LOADER", yaml.SafeLoader)
    slow = check_text(text, "x.yaml").errors
    assert fast == slow and len(fast) == 1


# A policy directory is read as Tetragon reads --tracing-policy-dir: its files and those of its
# subdirectories one level down (examples/tracingpolicy/cves/*.yaml), not deeper; a symlink to a
# directory is not entered (fs.WalkDir does not follow it), nor is a hidden directory (a
# Kubernetes ConfigMap's ..2026_... data directory, whose files the top level links to).
POLICY_DIR_LAYOUT = [
    ("top.yaml", True),
    ("sub/one.yml", True),
    ("sub/deeper/three.yaml", False),
    (".hidden/four.yaml", False),
    ("linked/five.yaml", False),  # linked is a symlink to a directory outside
    ("sub/notes.txt", False),
]


def test_policy_dir_reads_one_level_of_subdirectories(tmp_path: Path) -> None:
    d, outside = tmp_path / "d", tmp_path / "outside"
    outside.mkdir()
    (outside / "five.yaml").write_text(doc("kprobes:\n- call: sys_write", name="five"))
    d.mkdir()
    (d / "linked").symlink_to(outside, target_is_directory=True)
    for rel, _ in POLICY_DIR_LAYOUT:
        if rel.startswith("linked/"):
            continue
        f = d / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(doc("kprobes:\n- call: sys_write", name=f.stem))
    names = sorted(p.name for p in load_policies(d))
    assert names == sorted(Path(rel).stem for rel, loaded in POLICY_DIR_LAYOUT if loaded)
    assert [str(f.relative_to(d)) for f in loader_mod.policy_dir_files(d)] == ["sub/one.yml", "top.yaml"]


_URL, _FQDN = "{action: GetUrl, argUrl: 'http://127.0.0.1/x'}", "{action: DnsLookup, argFqdn: localhost}"


@pytest.mark.parametrize("actions, not_run", [
    (f"[{_URL}]", []),
    (f"[{{action: Post}}, {_URL}]", []),
    (f"[{_URL}, {{action: Post}}]", [0]),
    (f"[{_FQDN}, {{action: NoPost}}]", [0]),
    (f"[{_URL}, {_FQDN}]", [0]),
    (f"[{_URL}, {_FQDN}, {{action: Sigkill}}]", [0, 1]),
])
def test_user_actions_before_the_last_action_warn_that_they_will_not_run(actions: str, not_run: list[int]) -> None:
    """GetUrl and DnsLookup run only as the selector's last action (as Tetragon's agent runs
    them): one before another action is a warning naming it, and the policy loads."""
    text = doc("kprobes:\n- call: sys_openat\n  syscall: true\n  args: [{index: 1, type: string}]\n"
               f"  selectors:\n  - matchActions: {actions}\n")
    result = check_text(text, "u.yaml")
    assert result.ok, result.errors
    got = [w for w in result.warnings if "will not run" in w.message]
    assert [w.path for w in got] == [f"spec.kprobes[0].selectors[0].matchActions[{i}].action" for i in not_run]
    assert all(w.severity == "warning" and "not the selector's last action" in w.message for w in got)
