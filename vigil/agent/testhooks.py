"""Test-only hooks, installed only when VIGIL_TEST_HOOKS=1 (the failure-mode tests of the
exec/open permission helper use them on a real agent process):

- SIGUSR2: the main thread holds the GIL for VIGIL_TEST_HOLD_GIL_S seconds (default 10)
  inside one C call, as a long call into C that keeps the GIL would; it writes
  $VIGIL_TEST_HOOK_DIR/gil-held before and gil-released after.
- SIGUSR1: the permission helper's next decision takes VIGIL_TEST_STALL_MS (default
  60000) ms; it writes $VIGIL_TEST_HOOK_DIR/stall-armed once the helper confirmed.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
from pathlib import Path
from typing import Any


def enabled() -> bool:
    return os.environ.get("VIGIL_TEST_HOOKS") == "1"


def install(agent: Any) -> None:
    if not enabled():
        return
    hook_dir = Path(os.environ.get("VIGIL_TEST_HOOK_DIR", "/tmp"))
    # PyDLL: the GIL stays held for the whole call (ctypes.CDLL would release it)
    libc = ctypes.PyDLL(None)
    libc.sleep.argtypes = [ctypes.c_uint]

    def hold_gil(_sig: int, _frame: object) -> None:
        (hook_dir / "gil-held").write_text(str(os.getpid()))
        libc.sleep(int(os.environ.get("VIGIL_TEST_HOLD_GIL_S", "10")))
        (hook_dir / "gil-released").write_text(str(os.getpid()))

    def arm_stall(_sig: int, _frame: object) -> None:
        def arm() -> None:
            helper = agent.policies.guards.helper
            helper.stall_next_decision(int(os.environ.get("VIGIL_TEST_STALL_MS", "60000")))
            (hook_dir / "stall-armed").write_text(str(helper.helper_pid))
        threading.Thread(target=arm, daemon=True).start()

    signal.signal(signal.SIGUSR2, hold_gil)
    signal.signal(signal.SIGUSR1, arm_stall)
