"""raw_syscalls sys_enter's `unsigned long args[6]` on this kernel: Tetragon's const_buf, one
size_arg per element (the syscall's six argument registers), unsigned 64-bit values as decimal
strings; in the JSON export and over gRPC alike."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import Run, loaded, policy_events, policy_yaml, run_py
from vigil.api import wire

pytestmark = pytest.mark.kernel


@pytest.fixture
def pywork(workdir: Path) -> Path:
    shutil.copy2(os.path.realpath(sys.executable), workdir / "vpy")
    return workdir


def test_raw_syscalls_args_array(running_agent: RunningAgent, pywork: Path) -> None:
    spec = f"""
lists:
- {{name: getppid, type: syscalls, values: ["sys_getppid"]}}
tracepoints:
- subsystem: raw_syscalls
  event: sys_enter
  args: [{{index: 4, type: syscall64}}, {{index: 5}}]
  selectors:
  - matchArgs: [{{index: 4, operator: InMap, values: ["list:getppid"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
"""
    # getppid ignores its arguments: the six registers are whatever the caller put there
    code = ("import ctypes\nctypes.CDLL(None).syscall(ctypes.c_long(110), ctypes.c_ulong(11), ctypes.c_ulong(22), "
            "ctypes.c_ulong(2**64 - 1), ctypes.c_ulong(0), ctypes.c_ulong(2**32), ctypes.c_ulong(66))\n")
    r = Run()
    with loaded(running_agent, policy_yaml("tp-args-array", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    want = [{"syscall_id": {"id": 110, "abi": "x64"}},
            *({"size_arg": str(v)} for v in (11, 22, 2**64 - 1, 0, 2**32, 66))]
    got = [b for _k, b in policy_events(events, r.pid, "tp-args-array")]
    assert r.returncode == 0
    assert want in [b.get("args") for b in got], got
    # the gRPC message has the same arguments: six size_arg members of the oneof
    (ev,) = [e for e in events if e.get("process_tracepoint", {}).get("args") == want][:1]
    back = wire.decode_response(wire.reference_bytes(ev))
    assert back["process_tracepoint"]["args"] == want
