"""Enforcement policies shared by the host tests and the VM tier: the same file must give
the same outcome (operation refused with the policy's error, event emitted) whatever
mechanism the kernel offers (BPF LSM in the VM, fanotify / cgroup-BPF on the host)."""
from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.policydoc import policy


def exec_control(d: Path) -> str:
    return policy("deny-exec-from-dir", f"""
kprobes:
- call: sys_execve
  syscall: true
  args: [{{index: 0, type: string}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Prefix, values: ["{d}/blocked/"]}}]
    matchActions: [{{action: Override, argError: -1}}]
""")


def open_deny(d: Path) -> str:
    return policy("deny-open-secret", f"""
kprobes:
- call: sys_openat
  syscall: true
  args: [{{index: 1, type: string}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: ["{d}/secret.txt"]}}]
    matchActions: [{{action: Override, argError: -1}}]
""")


def connect_deny(port: int) -> str:
    return policy("deny-connect-port", f"""
kprobes:
- call: sys_connect
  syscall: true
  args: [{{index: 1, type: sockaddr}}]
  selectors:
  - matchArgs:
    - {{index: 1, operator: SAddr, values: ["127.0.0.1/32"]}}
    - {{index: 1, operator: SPort, values: ["{port}"]}}
    matchActions: [{{action: Override, argError: -1}}]
""")


def prepare(d: Path) -> None:
    for sub in ("blocked", "allowed"):
        (d / sub).mkdir(exist_ok=True)
        shutil.copy2(os.path.realpath("/usr/bin/touch"), d / sub / "tool")
    (d / "secret.txt").write_text("secret\n")
    (d / "public.txt").write_text("public\n")
    os.chmod(d, 0o755)


def run_exec_case(d: Path) -> dict[str, Any]:
    """The blocked tool must not run at all (it would create its marker as first act)."""
    out: dict[str, Any] = {}
    try:
        subprocess.run([str(d / "blocked" / "tool"), str(d / "marker-blocked")], check=True)
        out["blocked_errno"] = 0
    except OSError as e:
        out["blocked_errno"] = e.errno
    subprocess.run([str(d / "allowed" / "tool"), str(d / "marker-allowed")], check=True)
    out["blocked_ran"] = (d / "marker-blocked").exists()
    out["allowed_ran"] = (d / "marker-allowed").exists()
    return out


# The acting process is a child: the agent (in-process in tests) never denies itself.
_TRY = ("import sys, errno\ntry:\n{body}\n    print(0)\nexcept OSError as e:\n    print(e.errno)\n")


def _child(body: str) -> int:
    code = _TRY.format(body=textwrap.indent(body, "    "))
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def run_open_case(d: Path) -> dict[str, Any]:
    return {"secret_errno": _child(f"open({str(d / 'secret.txt')!r}).close()"),
            "public_ok": _child(f"open({str(d / 'public.txt')!r}).close()") == 0}


def run_connect_case(srv: socket.socket) -> dict[str, Any]:
    port = srv.getsockname()[1]
    out: dict[str, Any] = {}
    out["connect_errno"] = _child(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()")
    srv.settimeout(0.3)
    try:
        srv.accept()[0].close()
        out["accepted"] = True
    except OSError:
        out["accepted"] = False
    return out


EXPECT = {
    "exec": {"blocked_errno": errno.EPERM, "blocked_ran": False, "allowed_ran": True},
    "open": {"secret_errno": errno.EPERM, "public_ok": True},
    "connect": {"connect_errno": errno.EPERM, "accepted": False},
}


def enforcement_events(events: list[dict], name: str) -> list[dict]:
    return [e["process_kprobe"] for e in events
            if "process_kprobe" in e and e["process_kprobe"].get("policy_name") == name]


def check_event(ev: dict, mechanism_word: str) -> None:
    assert ev["action"] in ("KPROBE_ACTION_OVERRIDE", "KPROBE_ACTION_SIGKILL")
    assert "enforced via" in ev["message"] and mechanism_word in ev["message"], ev["message"]


Runner = Callable[..., dict[str, Any]]
