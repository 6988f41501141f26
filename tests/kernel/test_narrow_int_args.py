"""8- and 16-bit integer argument types (int8, uint8, int16, uint16, and their s-spellings) of
syscall hooks on this kernel: the value is the argument's low 8 or 16 bits, sign-extended for
the signed types, as Tetragon reads them; matchArgs compares that value too."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import Run, loaded, policy_events, policy_yaml, run_py

pytestmark = pytest.mark.kernel


@pytest.fixture
def pywork(workdir: Path) -> Path:
    shutil.copy2(os.path.realpath(sys.executable), workdir / "vpy")
    return workdir


# (type, the value passed as lseek's whence, the event's argument)
CASES = [
    ("uint8", 0x1FF, {"uint_arg": 0xFF}),
    ("int8", 0x1FF, {"int_arg": -1}),
    ("sint8", 0x17F, {"int_arg": 127}),
    ("uint16", 0x12345, {"uint_arg": 0x2345}),
    ("int16", 0x1FFFE, {"int_arg": -2}),
    ("uint32", 0x1FFFE, {"uint_arg": 0x1FFFE}),
]


def test_narrow_integer_types(running_agent: RunningAgent, pywork: Path) -> None:
    kprobes = "".join(f"""
- call: sys_lseek
  syscall: true
  args: [{{index: 0, type: int}}, {{index: 2, type: {t}, label: {t}}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{900 + i}"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
""" for i, (t, _v, _want) in enumerate(CASES))
    # lseek on fds 900.. (not open: EBADF) with whence values wider than the types
    code = "import ctypes\nlseek = ctypes.CDLL(None).lseek\n" + "".join(
        f"lseek({900 + i}, 0, {v})\n" for i, (_t, v, _w) in enumerate(CASES))
    r = Run()
    with loaded(running_agent, policy_yaml("narrow-ints", "kprobes:" + kprobes)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    got = {b["args"][0]["int_arg"]: b["args"][1] for _k, b in policy_events(events, r.pid, "narrow-ints")}
    assert got == {900 + i: {**want, "label": t} for i, (t, _v, want) in enumerate(CASES)}


def test_matchargs_compare_the_narrowed_value(running_agent: RunningAgent, pywork: Path) -> None:
    spec = f"""
kprobes:
- call: sys_lseek
  syscall: true
  args: [{{index: 0, type: int}}, {{index: 2, type: uint8}}]
  selectors:
  - matchArgs: [{{index: 2, operator: Equal, values: ["7"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
"""
    code = "import ctypes\nlseek = ctypes.CDLL(None).lseek\nlseek(901, 0, 0x107)\nlseek(902, 0, 0x108)\n"
    r = Run()
    with loaded(running_agent, policy_yaml("narrow-match", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    got = [b["args"] for _k, b in policy_events(events, r.pid, "narrow-match")]
    assert got == [[{"int_arg": 901}, {"uint_arg": 7}]]


def test_narrow_types_of_tracepoint_fields(running_agent: RunningAgent, pywork: Path) -> None:
    """The same types naming a wider field of a classic tracepoint (whence: 8 bytes)."""
    spec = f"""
tracepoints:
- subsystem: syscalls
  event: sys_enter_lseek
  args: [{{index: 5, type: int}}, {{index: 7, type: int8}}, {{index: 7, type: uint16}}, {{index: 7}}]
  selectors:
  - matchArgs: [{{index: 5, operator: Equal, values: ["903"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
"""
    code = "import ctypes\nctypes.CDLL(None).lseek(903, 0, 0x1FFFE)\n"
    r = Run()
    with loaded(running_agent, policy_yaml("narrow-tp", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    got = [b["args"] for _k, b in policy_events(events, r.pid, "narrow-tp")]
    assert got == [[{"int_arg": 903}, {"int_arg": -2}, {"uint_arg": 0xFFFE}, {"size_arg": str(0x1FFFE)}]]


# A 32-bit returnArg type is the low 32 bits of the return register, sign-extended for int, as
# Tetragon stores it; matchReturnArgs compares that value. (lseek returns the offset it was given:
# offsets past 4 GiB make returns whose upper half is not part of an int's value.)
# (returnArg type, the offset lseek returns, the event's return)
RET_CASES = [
    ("int", 0x100000005, {"int_arg": 5}),
    ("int", 0x2FFFFFFFE, {"int_arg": -2}),
    ("int32", 0x3FFFFFFF3, {"int_arg": -13}),
    ("uint32", 0x4FFFFFFFE, {"uint_arg": 0xFFFFFFFE}),
    ("int64", 0x5FFFFFFFE, {"long_arg": str(0x5FFFFFFFE)}),
]


def _lseeks(pywork: Path, offsets: list[int]) -> str:
    (pywork / "seek.dat").write_bytes(b"x")
    return ("import os\nfd = os.open('seek.dat', os.O_RDONLY)\n"
            + "".join(f"os.lseek(fd, {off}, os.SEEK_SET)\n" for off in offsets))


def test_narrow_return_types(running_agent: RunningAgent, pywork: Path) -> None:
    kprobes = "".join(f"""
- call: sys_lseek
  syscall: true
  return: true
  args: [{{index: 1, type: int64}}]
  returnArg: {{index: 0, type: {t}}}
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: ["{off}"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
""" for t, off, _want in RET_CASES)
    r = Run()
    with loaded(running_agent, policy_yaml("narrow-ret", "kprobes:" + kprobes)):
        events = running_agent.collect(lambda: run_py(pywork, _lseeks(pywork, [o for _t, o, _w in RET_CASES]), out=r))
    got = {int(b["args"][0]["long_arg"]): b["return"] for _k, b in policy_events(events, r.pid, "narrow-ret")}
    assert got == {off: want for _t, off, want in RET_CASES}


def test_matchreturnargs_compare_the_narrowed_return(running_agent: RunningAgent, pywork: Path) -> None:
    """An int return of -2 (0x2FFFFFFFE's low half) is below 0; one of 5 is not."""
    spec = f"""
kprobes:
- call: sys_lseek
  syscall: true
  return: true
  args: [{{index: 1, type: int64}}]
  returnArg: {{index: 0, type: int}}
  selectors:
  - matchReturnArgs: [{{index: 0, operator: LT, values: ["0"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
"""
    r = Run()
    with loaded(running_agent, policy_yaml("narrow-ret-match", spec)):
        events = running_agent.collect(lambda: run_py(pywork, _lseeks(pywork, [0x100000005, 0x2FFFFFFFE]), out=r))
    got = [(b["args"], b["return"]) for _k, b in policy_events(events, r.pid, "narrow-ret-match")]
    assert got == [([{"long_arg": str(0x2FFFFFFFE)}], {"int_arg": -2})]
