"""Buffers of syscall hooks on this kernel, as Tetragon reports them: a returnCopy buffer holds
what the call filled (readv's iovecs too), and a buffer cut at 4095 bytes is a
truncated_bytes_arg whose orig_size is its real size: what a returnCopy call returned, or the
bytes an iovec array holds (never the iovec count)."""
from __future__ import annotations

import base64
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
    (workdir / "data").mkdir()
    (workdir / "data" / "small.txt").write_bytes(b"hello\n")
    (workdir / "data" / "big.bin").write_bytes(bytes(range(256)) * 20)  # 5120 bytes
    return workdir


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def test_return_copy_and_cut_buffers(running_agent: RunningAgent, pywork: Path) -> None:
    d = pywork / "data"
    scope = f'matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]'
    spec = f"""
kprobes:
- call: sys_readv
  syscall: true
  return: true
  returnArg: {{index: 0, type: int}}
  args:
  - {{index: 0, type: fd}}
  - {{index: 1, type: char_iovec, returnCopy: true, sizeArgIndex: 3}}
  - {{index: 2, type: int}}
  selectors:
  - matchArgs: [{{index: 0, operator: Prefix, values: ["{d}/"]}}]
    {scope}
- call: sys_read
  syscall: true
  return: true
  returnArg: {{index: 0, type: int}}
  args:
  - {{index: 0, type: fd}}
  - {{index: 1, type: char_buf, returnCopy: true, sizeArgIndex: 3}}
  - {{index: 2, type: size_t}}
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{d}/big.bin"]}}]
    {scope}
- call: sys_writev
  syscall: true
  args:
  - {{index: 0, type: fd}}
  - {{index: 1, type: char_iovec, sizeArgIndex: 3}}
  - {{index: 2, type: int}}
  selectors:
  - matchArgs: [{{index: 0, operator: Prefix, values: ["{d}/"]}}]
    {scope}
"""
    code = (
        "import os\n"
        # readv into buffers that hold X's before the call: the event has what the call read
        f"fd = os.open('{d}/small.txt', os.O_RDONLY)\n"
        "a, b = bytearray(b'XXX'), bytearray(b'XXXXX')\n"
        "os.readv(fd, [a, b])\nos.close(fd)\n"
        # a read asking for 65536 bytes of a 5120-byte file: 5120 come back, 4095 are kept
        f"fd = os.open('{d}/big.bin', os.O_RDONLY)\nos.read(fd, 65536)\nos.close(fd)\n"
        # two 3000-byte iovecs written: 6000 bytes, 4095 kept
        f"fd = os.open('{d}/out.bin', os.O_WRONLY | os.O_CREAT, 0o644)\n"
        "os.writev(fd, [b'a' * 3000, b'b' * 3000])\nos.close(fd)\n")
    r = Run()
    with loaded(running_agent, policy_yaml("buffers", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    assert r.returncode == 0
    got = {b["function_name"]: b for _k, b in policy_events(events, r.pid, "buffers")}
    rv = got["__x64_sys_readv"]
    assert rv["args"][1] == {"bytes_arg": b64(b"hello\n")} and rv["return"] == {"int_arg": 6}
    rd = got["__x64_sys_read"]
    assert rd["return"] == {"int_arg": 5120} and rd["args"][2] == {"size_arg": "65536"}
    assert rd["args"][1] == {"truncated_bytes_arg": {"bytes_arg": b64((bytes(range(256)) * 20)[:4095]),
                                                     "orig_size": "5120"}}
    wv = got["__x64_sys_writev"]
    assert wv["args"][1] == {"truncated_bytes_arg": {"bytes_arg": b64((b"a" * 3000 + b"b" * 3000)[:4095]),
                                                     "orig_size": "6000"}}


def test_char_buf_without_a_size_holds_nothing(running_agent: RunningAgent, pywork: Path) -> None:
    """A char_buf naming no sizeArgIndex (nor returnCopy) has no bytes, as Tetragon's: not the
    4095 bytes of the writer's memory from the buffer on."""
    spec = f"""
kprobes:
- call: sys_write
  syscall: true
  args: [{{index: 0, type: fd}}, {{index: 1, type: char_buf}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{pywork}/data/out.txt"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
"""
    code = (f"import os\nsecret = b'S3CRET' * 1000\nbuf = bytearray(b'hi' + secret)\n"
            f"fd = os.open('{pywork}/data/out.txt', os.O_WRONLY | os.O_CREAT, 0o644)\n"
            "os.write(fd, memoryview(buf)[:2])\nos.close(fd)\n")
    r = Run()
    with loaded(running_agent, policy_yaml("no-size", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    got = [b["args"][1] for _k, b in policy_events(events, r.pid, "no-size")]
    assert got == [{"bytes_arg": ""}], [str(g)[:80] for g in got]
