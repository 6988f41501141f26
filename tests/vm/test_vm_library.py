"""Library policies on the VM tier's kernels (kprobes, fentry, BPF LSM, loadable modules).

The guest is a throwaway VM that runs nothing but the tests, so policies load unscoped, exactly
as the library ships them: the module-load policy (the host kernel has no module support), the
exec deny on BPF LSM (the host enforces it with fanotify), and what `explain` says about the
policy that needs more than this Vigil build has.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmagent import Running

from vigil.policy.library import find


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vigil-vm-lib-"))
    try:
        os.chmod(d, 0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def load(agent: Running, name: str) -> str:
    return agent.agent.add_policy(find(name).path.read_text())


def bodies(events: list[dict], name: str, pid: int) -> list[dict]:
    out = []
    for e in events:
        body = e[next(iter(e))]
        if isinstance(body, dict) and body.get("policy_name") == name and body["process"].get("pid") == pid:
            out.append(body)
    return out


def test_kernel_module_load(agent: Running, work: Path):
    bogus = work / "not-a-module.ko"
    bogus.write_bytes(b"not an ELF module")
    code = (f"import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = os.open({str(bogus)!r}, os.O_RDONLY)\n"
            "os.read(fd, 4)\nassert libc.syscall(313, fd, b'', 0) == -1\nos.close(fd)\n"
            "assert libc.syscall(176, b'vigil_no_such_module', 0) == -1\n")
    name = load(agent, "kernel-module-load")
    procs: list[subprocess.Popen] = []

    def act() -> None:
        p = subprocess.Popen([sys.executable, "-S", "-c", code])
        procs.append(p)
        assert p.wait(120) == 0
    try:
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
    got = [(b["function_name"], b.get("args")) for b in bodies(events, name, procs[0].pid)]
    assert got == [
        ("__x64_sys_finit_module", [{"file_arg": {"path": str(bogus), "permission": stat.filemode(os.stat(bogus).st_mode)},
                                     "label": "module"},
                                    {"string_arg": "", "label": "params"}]),
        ("__x64_sys_delete_module", [{"string_arg": "vigil_no_such_module", "label": "name"}]),
    ]


def test_deny_exec_writable_dirs_on_bpf_lsm(agent: Running):
    d = Path(tempfile.mkdtemp(prefix="vigil-vm-lib-", dir="/dev/shm"))
    ok = Path(tempfile.mkdtemp(prefix="vigil-vm-lib-", dir="/run"))
    try:
        for x in (d, ok):
            os.chmod(x, 0o755)
            shutil.copy2(os.path.realpath("/usr/bin/touch"), x / "tool")
        name = load(agent, "deny-exec-writable-dirs")
        res: dict = {}

        def act() -> None:
            try:
                subprocess.run([str(d / "tool"), str(d / "ran")], check=True)
                res["denied"] = 0
            except OSError as e:
                res["denied"] = e.errno
            subprocess.run([str(ok / "tool"), str(ok / "ran")], check=True)
        try:
            hook = agent.hook(name)
            events = agent.collect(act)
        finally:
            agent.agent.delete_policy(name)
        assert hook.startswith("lsm:bprm_check_security")
        assert res == {"denied": errno.EPERM} and not (d / "ran").exists() and (ok / "ran").exists()
        evs = [e["process_kprobe"] for e in events if "process_kprobe" in e
               and e["process_kprobe"].get("policy_name") == name]
        assert len(evs) == 1 and evs[0]["action"] == "KPROBE_ACTION_OVERRIDE"
        assert evs[0]["args"] == [{"string_arg": str(d / "tool")}]
        assert "via lsm:bprm_check_security" in evs[0]["message"]
    finally:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(ok, ignore_errors=True)


CAPSET_CODE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
class Hdr(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
h, d = Hdr(0x20080522, 0), (Data * 2)()
assert libc.capget(ctypes.byref(h), d) == 0
d[0].effective &= ~(1 << 21)                  # drop CAP_SYS_ADMIN from the effective set: silent
assert libc.capset(ctypes.byref(h), d) == 0
d[0].effective |= 1 << 21                     # and raise it again from the permitted set: reported
assert libc.capset(ctypes.byref(h), d) == 0
"""


def test_capset_raise(agent: Running):
    """On a kernel-function hook (kprobe or fentry on security_capset) with the requested
    sets as kernel_cap_t: a raise of CAP_SYS_ADMIN by a caller without it effective is
    reported; the drop before it (the caller still holds it) is not."""
    name = load(agent, "capset-raise")
    procs: list[subprocess.Popen] = []

    def act() -> None:
        p = subprocess.Popen([sys.executable, "-S", "-c", CAPSET_CODE])
        procs.append(p)
        assert p.wait(120) == 0
    try:
        hook = agent.hook(name)
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
    assert hook.startswith(("kprobe:security_capset", "fentry:security_capset")), hook
    (b,) = bodies(events, name, procs[0].pid)
    assert b["function_name"] == "security_capset" and b["message"] == "capability raised by capset"
    assert [a.get("label") for a in b["args"]] == ["effective", "permitted"]
    eff, perm = (int(a["kernel_cap_t_arg"], 16) for a in b["args"])
    assert eff & 1 << 21 and perm & 1 << 21 and eff == perm   # the whole permitted set asked back
