"""The string the syscall entry's pre-filter read (bpf/generic.bpf.c pre_filter) is handed on to
the hook's record by 8-byte words, not whole stack copies: from the entry's copy when several
values are named, from the one value itself when all the Equals name one. Whatever the string's
length modulo 8, the record reports it whole and nothing after it."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import Run, loaded, open_file, policy_events, policy_yaml, run_py

pytestmark = pytest.mark.kernel


@pytest.fixture
def pywork(workdir: Path) -> Path:
    py = os.path.realpath(sys.executable)
    shutil.copy2(py, workdir / "vpy")
    (workdir / "data").mkdir()
    os.chmod(workdir / "data", 0o777)
    return workdir


def padded(d: Path, stem: str, residue: int) -> Path:
    """d/<stem + n...>: the path read with its NUL is `residue` bytes past a multiple of 8."""
    k = (residue - (len(str(d)) + 1 + len(stem) + 1)) % 8
    return d / (stem + "n" * k)


@pytest.mark.parametrize("residue", [0, 1, 7])
@pytest.mark.parametrize("values", ["one", "two"])  # one value: copied from it; two: from the entry's copy
@pytest.mark.parametrize("stem", ["p", "l" * 90])
def test_a_string_the_entry_read_is_reported_whole(running_agent: RunningAgent, pywork: Path, residue: int,
                                                   values: str, stem: str) -> None:
    d = pywork / "data"
    value = padded(d, stem, residue)
    other = d / ("o" * 40)  # the second value: another length, so the entry cannot compare with one
    for f in (value, other):
        f.write_text("x")
    vals = f'"{value}"' + (f', "{other}"' if values == "two" else "")
    name = f"entry-words-{values}-{residue}-{len(stem)}"
    spec = f"""
kprobes:
- call: sys_openat
  args: [{{index: 1, type: string}}, {{index: 2, type: int}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: [{vals}]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
"""
    r = Run()
    with loaded(running_agent, policy_yaml(name, spec)):
        events = running_agent.collect(lambda: run_py(pywork, open_file(str(value)) * 2, out=r))
    got = [(b["args"][0]["string_arg"], b["args"][1]["int_arg"]) for _k, b in policy_events(events, r.pid, name)]
    assert got == [(str(value), os.O_RDONLY | os.O_CLOEXEC)] * 2


def _stats(ra: RunningAgent, name: str) -> dict:
    return next(p for p in ra.agent.list_policies() if p["name"] == name)["kernel_stats"]


@pytest.mark.parametrize("values", ["one", "two"])  # two: the second 2 bytes longer, the read set by it
@pytest.mark.parametrize("stem", ["p", "l" * 90])
def test_the_entry_reads_the_longest_value_and_two_bytes(running_agent: RunningAgent, pywork: Path, values: str,
                                                         stem: str) -> None:
    """The entry's pre-filter reads no more than the longest value, its NUL and one byte, in
    whole words (pre_read): strings 1 to 9 bytes longer than the longest value (read whole with
    their NUL, the NUL the read's last byte, or cut by the read, wherever the read's last word
    ends), and one longer than the entry's stack copy match none and are filtered in the entry;
    so is one a byte shorter, and (two values) one between them, read whole. The values match,
    reported whole."""
    v = str(pywork / "data" / stem)
    vals = [v] + ([v + "yy"] if values == "two" else [])
    longest = vals[-1]
    rejected = [*(longest + "x" * k for k in range(1, 10)), longest + "x" * 130, v[:-1], v + "x"]
    name = f"entry-read-{values}-{len(stem)}"
    spec = f"""
kprobes:
- call: sys_openat
  args: [{{index: 1, type: string}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: [{", ".join(f'"{x}"' for x in vals)}]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
"""
    r = Run()
    code = "".join(open_file(p) for p in [*rejected, *vals, v])
    with loaded(running_agent, policy_yaml(name, spec)):
        before = _stats(running_agent, name)
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
        after = _stats(running_agent, name)
    got = [b["args"][0]["string_arg"] for _k, b in policy_events(events, r.pid, name)]
    assert got == [*vals, v]
    assert after["filtered"] - before["filtered"] >= len(rejected)
