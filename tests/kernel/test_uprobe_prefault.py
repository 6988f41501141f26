"""uprobe string arguments on pages the process has not faulted in yet (bpf/uprefault.bpf.c).

The hook's own program reads a user string without faulting (bpf_probe_read_user_str), so a
string on a page the process never touched read as `could not be read`. A sleepable companion
on the same uprobe now faults the string's pages in first. The test binary passes the hook a
string from a file it has just mmap'ed: touched first (faulted) or never touched (unfaulted),
at a page's start or crossing from a touched page into an untouched one, and a pointer to no
mapping (an error either way). Each row runs with the kfunc (bpf_copy_from_user_str, where the
kernel has it) and with the page walk (bpf_copy_from_user page by page, the path of kernels
without the kfunc, forced here by the stage's rodata).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import loaded, policy_yaml
from tests.sdt import SDT_MACROS
from vigil.sensors import generic

pytestmark = pytest.mark.kernel

PAGE = os.sysconf("SC_PAGE_SIZE")
HAS_KFUNC = b"\0bpf_copy_from_user_str\0" in Path("/sys/kernel/btf/vmlinux").read_bytes()

# take(s, t) is the hooked symbol: s, t are the strings the policy reads (registers 0 and 1).
# argv[1]: the file, argv[2]: the case. The file: pages 0-15 'A's, page 16 begins
# "page-one-string\0", page 20 "page-two-string\0". A fault maps the pages of the page cache
# around it (fault-around: the 16-page window, by default, aligned in the address space, so the
# file is mapped at a 64 KiB boundary): touching page 15 leaves page 16 unmapped, and
# MADV_RANDOM keeps readahead from reading past the faulting page.
PREFAULT_C = r"""
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
__attribute__((noinline, used)) int take(const char *s, const char *t)
{ __asm__ volatile("" ::: "memory"); return s != t; }
#ifdef USDT
""" + SDT_MACROS + r"""
/* the USDT site vigil:take: s in a register, t through a memory operand (a stack slot holding
 * it), s again through a base + index * scale operand (element 1 of an array on the stack) */
__attribute__((noinline)) static int take_usdt(const char *s, const char *t)
{
    const char *volatile tm = t;
    const char *volatile ptrs[2] = {t, s};
    long i = s != 0;
    SDT("vigil", "take", "8@%0 8@%1 8@(%2,%3,8)", "r"(s), "m"(tm), "r"(ptrs), "r"(i));
    return s != t;
}
#define take take_usdt
#endif
int main(int argc, char **argv)
{
    long pg = sysconf(_SC_PAGE_SIZE);
    int fd = open(argv[1], O_RDONLY);
    /* at a 64 KiB-aligned address: the fault-around window is aligned in the address space */
    char *r = mmap(0, 40 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *a = (char *)(((unsigned long)r + 16 * pg - 1) & ~(16 * pg - 1));
    char *p = mmap(a, 24 * pg, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
    char *one = p + 16 * pg, *two = p + 20 * pg;
    if (r == MAP_FAILED || p != a || madvise(p, 24 * pg, MADV_RANDOM))
        return 2;
    if (!strcmp(argv[2], "faulted")) {
        (void)*(volatile char *)one;
        (void)*(volatile char *)two;
        return take(one, two) ? 0 : 3;
    }
    if (!strcmp(argv[2], "unfaulted"))
        return take(one, two) ? 0 : 3;
    if (!strcmp(argv[2], "crossing")) {   /* "AAAA" at the end of touched page 15, the rest on 16 */
        (void)*(volatile char *)(one - 4);
        return take(one - 4, two) ? 0 : 3;
    }
    if (!strcmp(argv[2], "unmapped")) {   /* page 20 unmapped: no page to fault in */
        munmap(two, pg);
        return take(one, two) ? 0 : 3;
    }
    return 4;
}
"""

ERR = {"error_arg": {"Message": "could not be read"}}
ONE, TWO = {"string_arg": "page-one-string"}, {"string_arg": "page-two-string"}
CROSSING = {"string_arg": "AAAApage-one-string"}
CASES = [  # (case, the event's args with the stage, without it: the setup really is unfaulted)
    ("faulted", [ONE, TWO], [ONE, TWO]),
    ("unfaulted", [ONE, TWO], [ERR, ERR]),
    ("crossing", [CROSSING, TWO], [ERR, ERR]),
    ("unmapped", [ONE, ERR], [ERR, ERR]),
]


def _compile(workdir: Path, name: str, *defines: str) -> Path:
    cc = shutil.which("clang") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler: `make` installs clang")
    (workdir / "pf.c").write_text(PREFAULT_C)
    subprocess.run([cc, "-O1", *(f"-D{d}" for d in defines), "-o", str(workdir / name), str(workdir / "pf.c")],
                   check=True)
    return workdir / name


def _strings_file(workdir: Path) -> Path:
    data = workdir / "strings.bin"
    with open(data, "wb") as f:
        f.write(b"A" * 16 * PAGE + b"page-one-string\0".ljust(4 * PAGE, b"\0")
                + b"page-two-string\0".ljust(4 * PAGE, b"\0"))
        os.fsync(f.fileno())  # clean pages: the drop below can take them out of the page cache
    return data


@pytest.fixture
def prefault_bin(workdir: Path) -> tuple[Path, Path]:
    return _compile(workdir, "pf"), _strings_file(workdir)


@pytest.fixture
def usdt_prefault_bin(workdir: Path) -> tuple[Path, Path]:
    """The same program, its strings passed to the USDT site vigil:take instead."""
    return _compile(workdir, "pf-usdt", "USDT"), _strings_file(workdir)


def _drop_cache(path: Path) -> None:
    """Out of the page cache (its own file), so no other mapping of it is faulted in either."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _hooks(ra: RunningAgent, name: str) -> list[generic.GenericHook]:
    lp = ra.agent.policies.policies[name]
    return [h for h in lp.hooks if isinstance(h, generic.GenericHook)]


MODES = ["kfunc-or-walk", "page-walk", "off"]  # off: the stage refused, as where it cannot load


def _run_with_stage(ra: RunningAgent, monkeypatch: pytest.MonkeyPatch, mode: str, spec: str, name: str,
                    kind: str, cmd: list[str], data: Path) -> tuple[list[dict], dict[str, int]]:
    """Policy `spec` loaded as `name` with the stage in `mode` (kfunc-or-walk, page-walk, off),
    `cmd` run once with `data`'s pages dropped first: the policy's `kind` events, the stage's counts."""
    monkeypatch.setattr(generic, "UPREFAULT_PAGE_WALK", mode == "page-walk")
    if mode == "off":
        monkeypatch.setattr(generic, "_UPREFAULT_REFUSED", {False: "test", True: "test"})
    with loaded(ra, policy_yaml(name, spec)):
        (hook,) = _hooks(ra, name)
        assert (hook.uprefault is None) == (mode == "off"), "the stage did not load for the hook"
        _drop_cache(data)
        rcs: list[int] = []
        events = ra.collect(lambda: rcs.append(subprocess.run(cmd, check=False).returncode))
        stats = hook.uprefault_stats()
    assert rcs == [0]
    return [e[kind] for e in events if kind in e and e[kind]["policy_name"] == name], stats


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, want, without", CASES, ids=[c[0] for c in CASES])
def test_uprobe_string_on_a_page_not_faulted_in(running_agent: RunningAgent, prefault_bin: tuple[Path, Path],
                                                monkeypatch: pytest.MonkeyPatch, case: str, want: list[dict],
                                                without: list[dict], mode: str) -> None:
    binary, data = prefault_bin
    spec = f"""
uprobes:
- path: "{binary}"
  symbols: [take]
  args: [{{index: 0, type: string}}, {{index: 1, type: string}}]
"""
    got, stats = _run_with_stage(running_agent, monkeypatch, mode, spec, f"uprefault-{case}", "process_uprobe",
                                 [str(binary), str(data), case], data)
    assert [e["args"] for e in got] == [without if mode == "off" else want]
    if mode == "off":
        assert stats == {}
        return
    assert stats["runs"] == 1 and stats["read"] + stats["failed"] == 2, stats
    assert stats["failed"] == (1 if case == "unmapped" else 0), stats
    # the kfunc where the kernel has it (6.12+), the page walk where not (6.1) or forced
    assert stats["walked"] == (0 if mode == "kfunc-or-walk" and HAS_KFUNC else 2), stats
    # the walk's first read, which never faults, finds a string the process touched and ends there
    walks = not (mode == "kfunc-or-walk" and HAS_KFUNC)
    assert stats["resident"] == (2 if walks and case == "faulted" else 0), stats


# vigil:take's operands, as the compiler wrote them: a register, a memory operand, base + index * scale
USDT_FORMS = [r"8@%\w+", r"8@-?\d*\(%\w+\)", r"8@\(%\w+,%\w+,8\)"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, want, without", CASES, ids=[c[0] for c in CASES])
def test_usdt_string_on_a_page_not_faulted_in(running_agent: RunningAgent, usdt_prefault_bin: tuple[Path, Path],
                                              monkeypatch: pytest.MonkeyPatch, case: str, want: list[dict],
                                              without: list[dict], mode: str) -> None:
    """The rows above, the strings passed to a USDT site: its operands say where each pointer
    is (a register, a stack slot, an array element), and the stage reads them the way the
    hook's program does before faulting the strings in. The third argument is the first
    string again."""
    import re

    binary, data = usdt_prefault_bin
    notes, _err = running_agent.agent.policies.facts.usdt_notes(str(binary))
    (site,) = [n for n in notes or [] if (n.provider, n.name) == ("vigil", "take")]
    ops = site.args.split()
    assert len(ops) == 3 and all(re.fullmatch(f, op) for f, op in zip(USDT_FORMS, ops)), site.args
    spec = f"""
usdts:
- path: "{binary}"
  provider: vigil
  name: take
  args: [{{index: 0, type: string}}, {{index: 1, type: string}}, {{index: 2, type: string}}]
"""
    got, stats = _run_with_stage(running_agent, monkeypatch, mode, spec, f"uprefault-usdt-{case}", "process_usdt",
                                 [str(binary), str(data), case], data)
    args = without if mode == "off" else want
    assert [e["args"] for e in got] == [[*args, args[0]]]
    if mode == "off":
        assert stats == {}
        return
    assert stats["runs"] == 1 and stats["read"] + stats["failed"] == 3, stats
    assert stats["failed"] == (1 if case == "unmapped" else 0), stats
    assert stats["walked"] == (0 if mode == "kfunc-or-walk" and HAS_KFUNC else 3), stats
    # the walk's first read finds a touched string resident; the third argument is the first
    # string again, faulted in by then (the unmapped row's too: its first string is mapped)
    walks = not (mode == "kfunc-or-walk" and HAS_KFUNC)
    assert stats["resident"] == ((3 if case == "faulted" else 1) if walks else 0), stats


def test_uprefault_detaches_and_attaches_again_after_the_entry(running_agent: RunningAgent,
                                                               prefault_bin: tuple[Path, Path]) -> None:
    """A disabled policy leaves the stage detached with its hook; enabled again, the stage is
    attached after the entry again (so it runs first): an untouched string is read."""
    binary, data = prefault_bin
    spec = f'uprobes:\n- path: "{binary}"\n  symbols: [take]\n  args: [{{index: 0, type: string}}, {{index: 1, type: string}}]\n'
    name = "uprefault-reenabled"
    with loaded(running_agent, policy_yaml(name, spec)):
        (hook,) = _hooks(running_agent, name)
        assert hook.uprefault is not None and len(hook.uprefault.links) == 1
        running_agent.agent.policies.set_enabled(name, False)
        assert (hook.obj.links, hook.uprefault.links) == ([], [])  # type: ignore[union-attr]
        running_agent.agent.policies.set_enabled(name, True)
        assert len(hook.uprefault.links) == 1
        events = running_agent.collect(lambda: subprocess.run([str(binary), str(data), "unfaulted"], check=True))
        stats = hook.uprefault_stats()
    got = [e["process_uprobe"]["args"] for e in events
           if "process_uprobe" in e and e["process_uprobe"]["policy_name"] == name]
    assert got == [[ONE, TWO]] and (stats["runs"], stats["read"]) == (1, 2), (got, stats)


NO_STRING_CASES = [  # hooks the stage is not for: no string from pt_regs
    ("int-only", "[{index: 0, type: uint64}]"),
    ("no-args", "[]"),
]


@pytest.mark.parametrize("case, args", NO_STRING_CASES, ids=[c[0] for c in NO_STRING_CASES])
def test_uprefault_only_for_string_args_from_registers(running_agent: RunningAgent,
                                                      prefault_bin: tuple[Path, Path], case: str, args: str) -> None:
    binary, _data = prefault_bin
    spec = f'uprobes:\n- path: "{binary}"\n  symbols: [take]\n  args: {args}\n'
    name = f"uprefault-none-{case}"
    with loaded(running_agent, policy_yaml(name, spec)):
        (hook,) = _hooks(running_agent, name)
        assert hook.uprefault is None


def _bpftool(*args: str) -> Any:
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(out)


def _pinned_stage_stats(link: Path) -> dict[str, int]:
    """The counters of the stage program a pinned link holds (read with bpftool: no agent runs)."""
    prog = _bpftool("link", "show", "pinned", str(link))["prog_id"]
    for map_id in _bpftool("prog", "show", "id", str(prog))["map_ids"]:
        if _bpftool("map", "show", "id", str(map_id))["name"] == "uprefault_stats":
            rows = _bpftool("map", "dump", "id", str(map_id))
            vals = {int(r["key"][0], 16): sum(int.from_bytes(bytes(int(b, 16) for b in c["value"]), "little")
                                              for c in r["values"])  # per CPU
                    for r in rows}
            return {name: vals[i] for i, name in enumerate(generic.UPREFAULT_STATS)}
    raise AssertionError(f"the program of {link} has no uprefault_stats map")


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool reads the kept stage's counters")
def test_kept_sensors_keep_the_uprefault_stage(prefault_bin: tuple[Path, Path], bpffs: Path, tmp_path: Path) -> None:
    """--keep-sensors-on-exit: the stage's link is pinned beside the hook's uprobe, and stays
    attached (faulting strings in: a string never touched is read) while no agent runs; the
    next agent, not keeping its sensors, releases them and leaves no pin."""
    from tests.kernel.conftest import RunningAgent as Agent
    from vigil.agent.config import AgentConfig

    binary, data = prefault_bin
    pol = tmp_path / "uprefault.yaml"
    pol.write_text(policy_yaml("uprefault-kept", f"""
uprobes:
- path: "{binary}"
  symbols: [take]
  args: [{{index: 0, type: string}}, {{index: 1, type: string}}]
"""))

    def cfg(name: str, keep: bool) -> AgentConfig:
        return AgentConfig(export_filename=str(tmp_path / f"{name}.log"), server_address="", node_name="vigil-test",
                           keep_sensors_on_exit=keep, bpf_dir=str(bpffs / "vigil"), tracing_policy=[str(pol)])

    with Agent(cfg("first", keep=True)):
        pass
    (run,) = sorted((bpffs / "vigil").glob("run-*"))
    links = sorted(p.name for p in run.glob("link-*") if "uprobe_" in p.name and binary.name in p.name)
    assert len(links) == 2 and any("vigil_uprefault" in n for n in links) and any("vigil_uprobe-" in n for n in links), \
        sorted(p.name for p in run.iterdir())
    stage = next(p for p in run.glob("link-*") if "vigil_uprefault" in p.name)
    assert subprocess.run([str(binary), str(data), "unfaulted"], check=False).returncode == 0
    stats = _pinned_stage_stats(stage)
    assert (stats["runs"], stats["read"], stats["failed"]) == (1, 2, 0), stats
    with Agent(cfg("second", keep=False)):
        assert not run.exists(), "the previous run was not released"
    assert not sorted((bpffs / "vigil").glob("run-*"))

