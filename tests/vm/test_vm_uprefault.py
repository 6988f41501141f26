"""uprobe string arguments on pages not faulted in yet, on the guest kernels: 6.1 has sleepable
uprobes but not the bpf_copy_from_user_str kfunc (the stage walks the pages with
bpf_copy_from_user), 6.12 has the kfunc. The rows of tests/kernel/test_uprobe_prefault.py: a
string from a freshly mmap'ed file page touched first (faulted) or never (unfaulted), one that
crosses from a touched page into an untouched one, a pointer to no mapping; each with the stage
as the kernel takes it, with the page walk forced, and with the stage off (the rows' premise:
without it the untouched strings read as errors). The same rows through a USDT site whose
operands are a register, a memory operand and a base + index * scale one."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from vmagent import Running, policy

from tests.kernel.test_uprobe_prefault import CASES, HAS_KFUNC, MODES, PAGE, PREFAULT_C, USDT_FORMS
from vigil.sensors import generic


@pytest.fixture(scope="module")
def prefault_bin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("uprefault")
    cc = shutil.which("clang")
    assert cc, "no clang"
    (d / "pf.c").write_text(PREFAULT_C)
    subprocess.run([cc, "-O1", "-o", str(d / "pf"), str(d / "pf.c")], check=True)
    subprocess.run([cc, "-O1", "-DUSDT", "-o", str(d / "pf-usdt"), str(d / "pf.c")], check=True)
    data = d / "strings.bin"
    data.write_bytes(b"A" * 16 * PAGE + b"page-one-string\0".ljust(4 * PAGE, b"\0")
                     + b"page-two-string\0".ljust(4 * PAGE, b"\0"))
    return d / "pf", data


def _run_with_stage(agent: Running, monkeypatch: pytest.MonkeyPatch, mode: str, spec: str, name: str,
                    kind: str, cmd: list[str]) -> tuple[list[list[dict]], dict[str, int]]:
    """Policy `spec` added as `name` with the stage in `mode` (kfunc-or-walk, page-walk, off),
    `cmd` run once: the args of the policy's `kind` events, the stage's counts."""
    monkeypatch.setattr(generic, "UPREFAULT_PAGE_WALK", mode == "page-walk")
    if mode == "off":
        monkeypatch.setattr(generic, "_UPREFAULT_REFUSED", {False: "test", True: "test"})
    name = agent.agent.add_policy(policy(name, spec))
    try:
        (hook,) = [h for h in agent.agent.policies.policies[name].hooks if isinstance(h, generic.GenericHook)]
        assert (hook.uprefault is None) == (mode == "off"), "the stage did not load on this kernel"
        rcs: list[int] = []
        events = agent.collect(lambda: rcs.append(subprocess.run(cmd).returncode))
        stats = hook.uprefault_stats()
    finally:
        agent.agent.delete_policy(name)
    assert rcs == [0]
    return [e[kind]["args"] for e in events if kind in e and e[kind]["policy_name"] == name], stats


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, want, without", CASES, ids=[c[0] for c in CASES])
def test_vm_uprobe_string_on_a_page_not_faulted_in(agent: Running, prefault_bin: tuple[Path, Path],
                                                   monkeypatch: pytest.MonkeyPatch, case: str, want: list[dict],
                                                   without: list[dict], mode: str) -> None:
    binary, data = prefault_bin
    spec = f"""
uprobes:
- path: "{binary}"
  symbols: [take]
  args: [{{index: 0, type: string}}, {{index: 1, type: string}}]
"""
    got, stats = _run_with_stage(agent, monkeypatch, mode, spec, f"vm-uprefault-{case}", "process_uprobe",
                                 [str(binary), str(data), case])
    assert got == [without if mode == "off" else want]
    if mode != "off":
        assert stats["runs"] == 1 and stats["failed"] == (1 if case == "unmapped" else 0), stats
        assert stats["walked"] == (0 if mode == "kfunc-or-walk" and HAS_KFUNC else 2), (HAS_KFUNC, stats)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, want, without", CASES, ids=[c[0] for c in CASES])
def test_vm_usdt_string_on_a_page_not_faulted_in(agent: Running, prefault_bin: tuple[Path, Path],
                                                 monkeypatch: pytest.MonkeyPatch, case: str, want: list[dict],
                                                 without: list[dict], mode: str) -> None:
    import re

    binary, data = prefault_bin[0].with_name("pf-usdt"), prefault_bin[1]
    notes, _err = agent.agent.policies.facts.usdt_notes(str(binary))
    (site,) = [n for n in notes or [] if (n.provider, n.name) == ("vigil", "take")]
    assert all(re.fullmatch(f, op) for f, op in zip(USDT_FORMS, site.args.split())), site.args
    spec = f"""
usdts:
- path: "{binary}"
  provider: vigil
  name: take
  args: [{{index: 0, type: string}}, {{index: 1, type: string}}, {{index: 2, type: string}}]
"""
    got, stats = _run_with_stage(agent, monkeypatch, mode, spec, f"vm-uprefault-usdt-{case}", "process_usdt",
                                 [str(binary), str(data), case])
    args = without if mode == "off" else want
    assert got == [[*args, args[0]]]
    if mode != "off":
        assert stats["runs"] == 1 and stats["failed"] == (1 if case == "unmapped" else 0), stats
        assert stats["walked"] == (0 if mode == "kfunc-or-walk" and HAS_KFUNC else 3), (HAS_KFUNC, stats)
