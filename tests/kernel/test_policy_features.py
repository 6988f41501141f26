"""Policy features of issue 11 against this host's kernel (tracepoints, raw tracepoints,
uprobes, fanotify and cgroup-BPF; no kprobes, trampolines or BPF LSM): table-driven, each case
a policy, an action by a test-created process, and the events it must (or must not) give.

Selectors scope every case to the test's own copy of the interpreter (or its pid), so
Sigkill/Override act on nothing else. Hooks this kernel lacks run on their documented stand-ins
(option vigil-hook-substitution); the VM tier runs the same features on kprobe/fentry/LSM.
"""
from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.bpfstate import still_loaded
from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import (
    Run,
    collect_with_stats,
    loaded,
    open_file,
    policy_events,
    policy_yaml,
    run_py,
    scoped,
)
from tests.sdt import SDT_MACROS
from vigil.core.errors import PolicyError

pytestmark = pytest.mark.kernel
SUB = '\noptions:\n- {name: vigil-hook-substitution, value: "true"}\n'


@pytest.fixture
def pywork(workdir: Path) -> Path:
    py = os.path.realpath(sys.executable)
    shutil.copy2(py, workdir / "vpy")
    (workdir / "data").mkdir()
    (workdir / "data" / "present.txt").write_text("hello\n")
    (workdir / "data" / "sub").mkdir()
    os.chmod(workdir / "data", 0o777)
    return workdir


def mine(events: list[dict], r: Run, name: str) -> list[dict]:
    return [b for _k, b in policy_events(events, r.pid, name)]


def standin_tag(body: dict) -> str:
    return next((t for t in body.get("tags", ()) if t.startswith("vigil:stand-in=")), "")


# ---------------------------------------------------------------- selectors

def test_several_matchpids_entries_are_anded(running_agent: RunningAgent, pywork: Path) -> None:
    """Two matchPIDs entries: In (this test's pid, followForks) AND NotIn (a pid that is not the
    trigger's): the trigger matches; with the second entry NotIn [its own pid] nothing would."""
    d = pywork / "data"
    spec = f"""
kprobes:
- call: sys_openat
  args: [{{index: 1, type: string}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: ["{d}/present.txt"]}}]
    matchPIDs:
    - {{operator: In, followForks: true, values: [{os.getpid()}]}}
    - {{operator: NotIn, values: [1]}}
  - matchArgs: [{{index: 1, operator: Equal, values: ["{d}/present.txt"]}}]
    matchPIDs:
    - {{operator: In, followForks: true, values: [{os.getpid()}]}}
    - {{operator: NotIn, followForks: true, values: [{os.getpid()}]}}
    matchActions: [{{action: Sigkill}}]
"""
    r = Run()
    with loaded(running_agent, policy_yaml("pids-and", spec)):
        events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), out=r))
    got = mine(events, r, "pids-and")
    assert r.returncode == 0  # the second selector (contradictory entries) never matched
    assert len(got) == 1 and got[0]["action"] == "KPROBE_ACTION_POST"


# A chrooted caller may not create a user namespace (EPERM; the fresh-box check runs the suite
# in a chroot): the child then climbs to the mount namespace's root (a chroot into a scratch
# directory leaves its working directory outside the new root, so ".." goes all the way up),
# makes the namespace there (in it the child holds CAP_SYS_CHROOT) and returns to its old root,
# so the paths it opens stay the test's.
USERNS_CHILD = """
import ctypes, os, tempfile
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:
    old = os.open("/", os.O_RDONLY)
    scratch = tempfile.mkdtemp()
    os.chdir("/")
    os.chroot(scratch)
    for _ in range(256):
        os.chdir("..")
    os.chroot(".")
    assert libc.unshare(0x10000000) == 0, os.strerror(ctypes.get_errno())
    os.fchdir(old)
    os.chroot(".")
    os.chdir("/")
    os.rmdir(scratch)
"""


def test_several_matchcapabilities_entries_and_isnamespacecapability(running_agent: RunningAgent,
                                                                     pywork: Path) -> None:
    """isNamespaceCapability: the capability counts only in a user namespace other than the
    host's: a root process in the host namespace does not match, the same program after
    unshare(CLONE_NEWUSER) (all capabilities in its new namespace) does."""
    d = pywork / "data"
    spec = f"""
kprobes:
- call: sys_openat
  args: [{{index: 1, type: string}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: ["{d}/present.txt"]}}]
    {scoped(pywork)}
    matchCapabilities:
    - {{type: Effective, operator: In, isNamespaceCapability: true, values: [CAP_SYS_ADMIN]}}
    - {{type: Permitted, operator: In, values: [CAP_SYS_ADMIN]}}
"""
    userns = USERNS_CHILD + open_file(f"{d}/present.txt")
    host, inns = Run(), Run()
    with loaded(running_agent, policy_yaml("ns-caps", spec)):
        events = running_agent.collect(lambda: (run_py(pywork, open_file(f"{d}/present.txt"), out=host),
                                                run_py(pywork, userns, out=inns)))
    assert not mine(events, host, "ns-caps")
    assert len(mine(events, inns, "ns-caps")) == 1


VALUE_LISTS = [
    # (id, args yaml, selector yaml ({d}), code opening/connecting, expected hit)
    ("prefix-12-values", "[{index: 1, type: string}]",
     "{{index: 1, operator: Prefix, values: [{vals}]}}", "prefix", True),
    ("equal-20-ints", "[{index: 1, type: string}, {index: 2, type: int}]",
     "{{index: 2, operator: Equal, values: [{ints}]}}", "flags", True),
    ("notequal-20-ints", "[{index: 1, type: string}, {index: 2, type: int}]",
     "{{index: 2, operator: NotEqual, values: [{ints}]}}", "flags", False),
]


@pytest.mark.parametrize("case, args, sel, kind, hit", VALUE_LISTS, ids=[c[0] for c in VALUE_LISTS])
def test_value_lists_of_any_length(running_agent: RunningAgent, pywork: Path, case: str, args: str, sel: str,
                                   kind: str, hit: bool) -> None:
    d = pywork / "data"
    vals = ", ".join(f'"/nonexistent-{i}/"' for i in range(11)) + f', "{d}/pre"'
    ints = ", ".join(f'"{i}"' for i in range(1, 20)) + ', "0x80000"'  # O_RDONLY|O_CLOEXEC is 0x80000
    spec = f"""
kprobes:
- call: sys_openat
  args: {args}
  selectors:
  - matchArgs:
    - {{index: 1, operator: Prefix, values: ["{d}/"]}}
    - {sel.format(vals=vals, ints=ints)}
    {scoped(pywork)}
"""
    r = Run()
    with loaded(running_agent, policy_yaml(case, spec)):
        events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), out=r))
    assert bool(mine(events, r, case)) is hit


def test_string_equal_decided_in_the_syscall_entry(running_agent: RunningAgent, pywork: Path) -> None:
    """Every selector holds a string Equal: the syscall entry decides by the string's length
    before any map is touched (bpf/generic.bpf.c pre_filter) and hands the string it read to the
    hook. A match reports the whole string, shorter or longer than the entry's stack copy; a
    string of a value's length that is another string, and one of no value's length, give none."""
    d = pywork / "data"
    short, long = d / "present.txt", d / ("l" * 150)
    same_len, other = d / "presenx.txt", d / "of-another-length.txt"
    for f in (long, same_len, other):
        f.write_text("x")
    spec = f"""
kprobes:
- call: sys_openat
  args: [{{index: 1, type: string}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: ["{short}", "{long}"]}}]
    {scoped(pywork)}
"""
    code = "".join(open_file(str(f)) for f in (short, long, same_len, other, short))
    r = Run()
    with loaded(running_agent, policy_yaml("entry-equal", spec)):
        events, before, after = collect_with_stats(running_agent, "entry-equal", lambda: run_py(pywork, code, out=r))
    got = [b["args"][0]["string_arg"] for b in mine(events, r, "entry-equal")]
    assert got == [str(short), str(long), str(short)]
    assert after["filtered"] - before["filtered"] >= 2
    # a hit the entry filtered is still a hit (counted once in the kernel, as both here)
    assert after["hits"] - before["hits"] >= after["filtered"] - before["filtered"] + len(got)


@pytest.mark.parametrize("name", ["present.txt", "l" * 90])  # both read through the stack
def test_string_equal_to_one_value_compared_in_the_syscall_entry(running_agent: RunningAgent, pywork: Path,
                                                                   name: str) -> None:
    """All the Equals on the string name one value (in two selectors here): the syscall entry
    compares the string with it, and the selectors hold without a map lookup. The value matches
    (each time); a string of its length that differs in its first or last byte, and one of
    another length, are filtered in the entry and counted as hits."""
    d = pywork / "data"
    value = d / name
    first, last, other = d / ("X" + name[1:]), d / (name[:-1] + "X"), d / (name + "x")
    for f in (value, first, last, other):
        f.write_text("x")
    spec = f"""
kprobes:
- call: sys_openat
  args: [{{index: 1, type: string}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: ["{value}"]}}]
    {scoped(pywork)}
  - matchArgs: [{{index: 1, operator: Equal, values: ["{value}", "{value}"]}}]
    {scoped(pywork)}
"""
    code = "".join(open_file(str(f)) for f in (value, first, last, other, value))
    r = Run()
    with loaded(running_agent, policy_yaml("entry-one-value", spec)):
        events, before, after = collect_with_stats(running_agent, "entry-one-value", lambda: run_py(pywork, code, out=r))
    got = [b["args"][0]["string_arg"] for b in mine(events, r, "entry-one-value")]
    assert got == [str(value), str(value)]
    assert after["filtered"] - before["filtered"] >= 3
    assert after["hits"] - before["hits"] >= after["filtered"] - before["filtered"] + len(got)


def test_port_lists_of_any_length(running_agent: RunningAgent, pywork: Path) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    ports = ", ".join(f'"{p}"' for p in range(1, 11)) + f', "{port - 1}:{port}"'
    spec = f"""
kprobes:
- call: sys_connect
  args: [{{index: 1, type: sockaddr}}]
  selectors:
  - matchArgs: [{{index: 1, operator: SPort, values: [{ports}]}}]
    {scoped(pywork)}
"""
    r = Run()
    try:
        with loaded(running_agent, policy_yaml("ports-11", spec)):
            events = running_agent.collect(lambda: run_py(
                pywork, f"import socket\ns = socket.socket(); s.connect(('127.0.0.1', {port})); s.close()\n", out=r))
    finally:
        srv.close()
    (ev,) = mine(events, r, "ports-11")
    assert ev["args"][0]["sockaddr_arg"]["port"] == port


def test_filetype_and_file_permission(running_agent: RunningAgent, pywork: Path) -> None:
    """FileType on a file: a regular file matches reg, a directory does not; the event's
    file_arg carries the path and its permission string (fd_install runs on its stand-in)."""
    d = pywork / "data"
    spec = f"""
kprobes:
- call: fd_install
  syscall: false
  args: [{{index: 0, type: int}}, {{index: 1, type: file}}]
  selectors:
  - matchArgs:
    - {{index: 1, operator: Prefix, values: ["{d}/"]}}
    - {{index: 1, operator: FileType, values: [reg]}}
    {scoped(pywork)}
""" + SUB
    code = (f"import os\nfor p in ('{d}/present.txt', '{d}/sub'):\n"
            "    os.close(os.open(p, os.O_RDONLY))\n")
    r = Run()
    with loaded(running_agent, policy_yaml("filetype", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    got = mine(events, r, "filetype")
    assert [e["args"][1]["file_arg"]["path"] for e in got] == [f"{d}/present.txt"]
    assert got[0]["args"][1]["file_arg"]["permission"] == stat.filemode(os.stat(d / "present.txt").st_mode)


# ---------------------------------------------------------------- syscall names

SYSCALL_NAMES = [
    # (id, call, syscall flag, code, function_name expected)
    ("arm64-prefix", "__arm64_sys_openat", "true", "open", "__x64_sys_openat"),
    ("x64-prefix", "__x64_sys_openat", "true", "open", "__x64_sys_openat"),
    ("fstat-newfstat", "sys_fstat", "true", "fstat", "__x64_sys_fstat"),
    ("uname-newuname", "sys_uname", "true", "uname", "__x64_sys_uname"),
    ("no-tracepoint", "sys_get_thread_area", "true", "get_thread_area", "__x64_sys_get_thread_area"),
]
CODES = {
    "open": "import os\nos.close(os.open('{d}/present.txt', os.O_RDONLY))\n",
    "fstat": ("import ctypes, os\nfd = os.open('{d}/present.txt', os.O_RDONLY)\n"
              "ctypes.CDLL(None).syscall(5, fd, ctypes.create_string_buffer(256))\nos.close(fd)\n"),
    "uname": "import os\nos.uname()\n",
    "get_thread_area": "import ctypes\nctypes.CDLL(None).syscall(211, 0)\n",
}


@pytest.mark.parametrize("case, call, flag, code, fname", SYSCALL_NAMES, ids=[c[0] for c in SYSCALL_NAMES])
def test_syscall_names(running_agent: RunningAgent, pywork: Path, case: str, call: str, flag: str, code: str,
                       fname: str) -> None:
    """One policy file for every architecture (arch prefixes name the same syscall), syscalls
    whose tracepoint has another name, and syscalls with no tracepoint (raw_syscalls)."""
    spec = f"""
kprobes:
- call: {call}
  syscall: {flag}
  selectors:
  - {scoped(pywork)}
"""
    r = Run()
    with loaded(running_agent, policy_yaml(f"name-{case}", spec)):
        events = running_agent.collect(lambda: run_py(pywork, CODES[code].format(d=pywork / "data"), out=r))
    got = mine(events, r, f"name-{case}")
    assert got and all(e["function_name"] == fname for e in got)


INT80_DUP = (  # mov eax, 41 (i386 dup); mov ebx, 1; int 0x80; ret
    "import ctypes, mmap\n"
    "code = bytes([0xb8, 41, 0, 0, 0, 0xbb, 1, 0, 0, 0, 0xcd, 0x80, 0xc3])\n"
    "m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
    "m.write(code)\n"
    "addr = ctypes.addressof(ctypes.c_char.from_buffer(m))\n"
    "fd = ctypes.CFUNCTYPE(ctypes.c_int)(addr)()\n"
    "import os\nos.close(fd)\nos.close(ctypes.CDLL(None).dup(1))\n"
)


def test_32bit_syscalls_in_lists_and_hooks(running_agent: RunningAgent, pywork: Path) -> None:
    """__ia32_sys_dup names the 32-bit dup (an int 0x80 from a 64-bit process here): as a hook
    it fires for the 32-bit call only; in a syscall64 InMap list it matches with abi i386."""
    spec = f"""
lists:
- name: dups
  type: syscalls
  values: [sys_dup, __ia32_sys_dup]
kprobes:
- call: __ia32_sys_dup
  syscall: true
  args: [{{index: 0, type: int}}]
  selectors:
  - {scoped(pywork)}
tracepoints:
- subsystem: raw_syscalls
  event: sys_enter
  args: [{{index: 4, type: syscall64}}]
  selectors:
  - matchArgs: [{{index: 4, operator: InMap, values: ["list:dups"]}}]
    {scoped(pywork)}
"""
    r = Run()
    with loaded(running_agent, policy_yaml("ia32", spec)):
        events = running_agent.collect(lambda: run_py(pywork, INT80_DUP, out=r))
    got = mine(events, r, "ia32")
    assert r.returncode == 0
    kp = [e for e in got if e.get("function_name")]
    assert [e["function_name"] for e in kp] == ["__ia32_sys_dup"] and kp[0]["args"] == [{"int_arg": 1}]
    ids = [e["args"][0]["syscall_id"] for e in got if "subsys" in e]
    assert {"id": 41, "abi": "i386"} in ids and {"id": 32, "abi": "x64"} in ids


# ---------------------------------------------------------------- resolve, raw tracepoint types

def _within_mount(p: Path) -> str | None:
    """p's path from the root of the file system it is on, as a bare dentry gives it: the
    mount's root within its file system (mountinfo's 4th field) + p past the mount point. None
    when no mount this process sees holds p (in a chroot whose file system's root lies outside
    it: then only the path's end is known here)."""
    real, dev = os.path.realpath(p), p.stat().st_dev
    best: tuple[str, str] | None = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        major, minor = map(int, f[2].split(":"))
        root, point = (x.encode().decode("unicode_escape") for x in (f[3], f[4]))
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if os.makedev(major, minor) == dev and inside and (best is None or len(point) > len(best[1])):
            best = (root, point)
    if best is None:
        return None
    rel = os.path.relpath(real, best[1])
    return "/" + "/".join(x for x in (best[0].strip("/"), "" if rel == "." else rel) if x)


def test_resolve_paths_on_a_raw_tracepoint(running_agent: RunningAgent, pywork: Path) -> None:
    """resolve follows BTF fields from an argument: sched_process_exec(task, pid, bprm) ->
    bprm.file (a file), bprm.file.f_path.dentry (a dentry), task.comm (a string)."""
    spec = f"""
tracepoints:
- subsystem: sched
  event: sched_process_exec
  raw: true
  args:
  - {{index: 2, type: file, resolve: "file"}}
  - {{index: 2, type: dentry, resolve: "file.f_path.dentry"}}
  - {{index: 0, type: string, resolve: "comm"}}
  - {{index: 2, type: int, resolve: "argc"}}
  selectors:
  - {scoped(pywork)}
"""
    r = Run()
    with loaded(running_agent, policy_yaml("resolve-exec", spec)):
        events = running_agent.collect(lambda: run_py(pywork, "pass\n", out=r))
    (ev,) = mine(events, r, "resolve-exec")
    f, dn, comm, argc = ev["args"]
    assert f["file_arg"]["path"] == f"{pywork}/vpy"
    want = _within_mount(pywork / "vpy")  # a dentry: no mount known
    got = dn["path_arg"]["path"]
    if want is not None:
        assert got == want
    else:  # its file system's root is not under this (chroot) root: one leading slash, the file's end
        assert not got.startswith("//") and got.endswith(f"{pywork}/vpy"), got
    assert comm == {"string_arg": "vpy"}
    assert argc == {"int_arg": 4}  # vpy -S -c pass


# ---------------------------------------------------------------- hook substitution

TCP = "import socket\ns = socket.socket(); s.connect(('127.0.0.1', {port})); s.sendall(b'x' * 100); s.close()\n"


def _server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    return srv, srv.getsockname()[1]


STANDINS: list[tuple[str, str, str, Callable[[list[dict], Path, int], None]]] = []


def standin(case: str, spec: str, code: str) -> Callable[[Callable[[list[dict], Path, int], None]], None]:
    def deco(check: Callable[[list[dict], Path, int], None]) -> None:
        STANDINS.append((case, spec, code, check))
    return deco


@standin("tcp", """
kprobes:
- call: tcp_connect
  syscall: false
  args: [{{index: 0, type: sock}}]
  selectors: [{{matchArgs: [{{index: 0, operator: DPort, values: ["{port}"]}}], {scope}}}]
- call: tcp_sendmsg
  syscall: false
  args: [{{index: 0, type: sock}}, {{index: 2, type: int}}]
  selectors: [{{matchArgs: [{{index: 0, operator: DPort, values: ["{port}"]}}], {scope}}}]
- call: tcp_close
  syscall: false
  args: [{{index: 0, type: sock}}]
  selectors: [{{matchArgs: [{{index: 0, operator: DPort, values: ["{port}"]}}], {scope}}}]
- call: tcp_set_state
  syscall: false
  args: [{{index: 0, type: sock}}, {{index: 1, type: int}}]
  selectors: [{{matchArgs: [{{index: 0, operator: DPort, values: ["{port}"]}}], {scope}}}]
""", TCP)
def _tcp(got: list[dict], work: Path, port: int) -> None:
    by = {}
    for e in got:
        by.setdefault(e["function_name"], []).append(e)
    c = by["tcp_connect"][0]["args"][0]["sock_arg"]
    assert (c["daddr"], c["dport"], c["protocol"], c["family"]) == ("127.0.0.1", port, "IPPROTO_TCP", "AF_INET")
    assert standin_tag(by["tcp_connect"][0]) == "vigil:stand-in=sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB"
    assert by["tcp_sendmsg"][0]["args"][1] == {"int_arg": 100}
    assert standin_tag(by["tcp_sendmsg"][0]) == "vigil:stand-in=raw_tracepoint:tcp_sendmsg_locked"
    assert by["tcp_close"][0]["args"][0]["sock_arg"]["dport"] == port
    states = [e["args"][1]["int_arg"] for e in by["tcp_set_state"]]
    assert 2 in states and 4 in states  # SYN_SENT at connect, FIN_WAIT1 at close


@standin("setuid", """
kprobes:
- call: __sys_setuid
  syscall: false
  args: [{{index: 0, type: int}}]
  selectors: [{{matchArgs: [{{index: 0, operator: Equal, values: ["65534"]}}], {scope}}}]
""", "import os\nos.setuid(65534)\n")
def _setuid(got: list[dict], work: Path, port: int) -> None:
    (e,) = got
    assert e["function_name"] == "__sys_setuid" and e["args"] == [{"int_arg": 65534}]
    assert standin_tag(e) == "vigil:stand-in=tracepoint:syscalls/sys_enter_setuid"


@standin("userns-sigkill", """
kprobes:
- call: create_user_ns
  syscall: false
  args: [{{index: 0, type: cred}}]
  selectors: [{{{scope}, matchActions: [{{action: Sigkill}}]}}]
""", "import ctypes\nctypes.CDLL(None).unshare(0x10000000)\nopen('{work}/data/survived', 'w').close()\n")
def _userns(got: list[dict], work: Path, port: int) -> None:
    (e,) = got
    assert e["action"] == "KPROBE_ACTION_SIGKILL"
    assert e["args"][0]["process_credentials_arg"]["uid"] == 0
    assert not (work / "data" / "survived").exists()  # killed before the namespace existed


@standin("bprm-sigkill", """
kprobes:
- call: security_bprm_check
  syscall: false
  args: [{{index: 0, type: linux_binprm}}]
  selectors: [{{matchArgs: [{{index: 0, operator: Equal, values: ["{work}/truebin"]}}], {scope},
               matchActions: [{{action: Sigkill}}]}}]
""", "import os\nos.execv('{work}/truebin', ['truebin'])\n")
def _bprm(got: list[dict], work: Path, port: int) -> None:
    (e,) = got
    assert e["args"][0]["linux_binprm_arg"]["path"] == f"{work}/truebin"
    assert e["args"][0]["linux_binprm_arg"]["permission"].startswith("-rwx")
    assert e["action"] == "KPROBE_ACTION_SIGKILL"


@standin("fd-install-caps", """
kprobes:
- call: fd_install
  syscall: false
  args: [{{index: 0, type: int}}, {{index: 1, type: file}}]
  selectors: [{{matchArgs: [{{index: 1, operator: Equal, values: ["{work}/data/present.txt"]}}], {scope},
               matchCapabilities: [{{type: Effective, operator: In, values: [CAP_SYS_ADMIN]}}]}}]
""", "import os\nfd = os.open('{work}/data/present.txt', os.O_RDONLY)\nos.write(1, b'')\n")
def _fd_install(got: list[dict], work: Path, port: int) -> None:
    (e,) = got
    assert e["args"][0]["int_arg"] >= 3 and e["args"][1]["file_arg"]["path"] == f"{work}/data/present.txt"


@standin("file-permission-mmap-truncate", """
kprobes:
- call: security_file_permission
  syscall: false
  args: [{{index: 0, type: file}}, {{index: 1, type: int}}]
  selectors: [{{matchArgs: [{{index: 0, operator: Prefix, values: ["{work}/data/"]}}], {scope}}}]
- call: security_mmap_file
  syscall: false
  args: [{{index: 0, type: file}}, {{index: 1, type: uint32}}]
  selectors: [{{matchArgs: [{{index: 0, operator: Prefix, values: ["{work}/data/"]}}], {scope}}}]
- call: security_path_truncate
  syscall: false
  args: [{{index: 0, type: path}}]
  selectors: [{{matchArgs: [{{index: 0, operator: Prefix, values: ["{work}/data/"]}}], {scope}}}]
""", ("import os, mmap\nf = open('{work}/data/present.txt', 'r+b')\nf.read(3)\nf.write(b'x')\nf.flush()\n"
      "mmap.mmap(f.fileno(), 1, prot=mmap.PROT_READ).close()\nos.truncate('{work}/data/present.txt', 2)\n"))
def _file_ops(got: list[dict], work: Path, port: int) -> None:
    masks = sorted(e["args"][1]["int_arg"] for e in got if e["function_name"] == "security_file_permission")
    assert masks[:1] == [2] and 4 in masks  # MAY_WRITE, MAY_READ
    (m,) = [e for e in got if e["function_name"] == "security_mmap_file"]
    assert m["args"][0]["file_arg"]["path"] == f"{work}/data/present.txt" and m["args"][1]["uint_arg"] == 1
    (t,) = [e for e in got if e["function_name"] == "security_path_truncate"]
    assert t["args"][0]["path_arg"]["path"] == f"{work}/data/present.txt"


@standin("lsm-hook-returns", """
kprobes:
- call: security_file_permission
  syscall: false
  return: true
  args: [{{index: 0, type: file}}, {{index: 1, type: int}}]
  returnArg: {{index: 0, type: int}}
  selectors: [{{matchArgs: [{{index: 0, operator: Prefix, values: ["{work}/data/"]}}],
               matchReturnArgs: [{{index: 0, operator: Equal, values: ["0"]}}], {scope}}}]
- call: security_mmap_file
  syscall: false
  return: true
  args: [{{index: 0, type: file}}, {{index: 1, type: uint32}}]
  returnArg: {{index: 0, type: int}}
  selectors: [{{matchArgs: [{{index: 0, operator: Prefix, values: ["{work}/data/"]}}], {scope}}}]
""", ("import os, mmap\nfd = os.open('{work}/data/present.txt', os.O_RDONLY)\nos.read(fd, 3)\n"
      "mmap.mmap(fd, 1, prot=mmap.PROT_READ).close()\n"))
def _lsm_hook_returns(got: list[dict], work: Path, port: int) -> None:
    """An LSM hook returns 0 or -errno: where its stand-in syscall succeeded, the return is 0 (it
    was the syscall's: the 3 bytes read, which matchReturnArgs Equal 0 refused, and the address
    mmap returned)."""
    assert sorted((e["function_name"], e["return"]) for e in got) == [
        ("security_file_permission", {"int_arg": 0}), ("security_mmap_file", {"int_arg": 0})]


BPF_CODE = textwrap.dedent("""
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    def bpf(cmd, attr):
        buf = ctypes.create_string_buffer(attr, 128)
        return libc.syscall(321, cmd, buf, 128)
    # BPF_MAP_CREATE: array, key 4, value 8, 3 entries, name vigil_t_map
    fd = bpf(0, struct.pack("<IIIIIII16s", 2, 4, 8, 3, 0, 0, 0, b"vigil_t_map"))
    # BPF_PROG_LOAD: socket filter "r0 = 0; exit", GPL, name vigil_t_prog
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQII16s", 1, 2, ctypes.addressof(insns), ctypes.addressof(lic), 0, 0, 0, 0, 0,
                       b"vigil_t_prog")
    pfd = bpf(5, attr)
    # perf_event_open: a software dummy event of this process
    pattr = ctypes.create_string_buffer(struct.pack("<IIQ", 1, 128, 9), 128)
    libc.syscall(298, pattr, 0, -1, -1, 0)
""")


@standin("bpf-and-perf", """
kprobes:
- call: bpf_check
  syscall: false
  args: [{{index: 1, type: bpf_attr}}]
  selectors: [{{{scope}}}]
- call: security_bpf_map_create
  syscall: false
  args: [{{index: 0, type: bpf_map}}]
  selectors: [{{{scope}}}]
- call: security_perf_event_alloc
  syscall: false
  args: [{{index: 0, type: perf_event}}]
  selectors: [{{{scope}}}]
""", BPF_CODE)
def _bpf(got: list[dict], work: Path, port: int) -> None:
    by = {e["function_name"]: e["args"][0] for e in got}
    assert by["bpf_check"]["bpf_attr_arg"] == {"ProgType": "BPF_PROG_TYPE_SOCKET_FILTER", "InsnCnt": 2,
                                               "ProgName": "vigil_t_prog"}
    assert by["security_bpf_map_create"]["bpf_map_arg"] == {"MapType": "BPF_MAP_TYPE_ARRAY", "KeySize": 4,
                                                            "ValueSize": 8, "MaxEntries": 3,
                                                            "MapName": "vigil_t_map"}
    assert by["security_perf_event_alloc"]["perf_event_arg"] == {"Type": "PERF_TYPE_SOFTWARE", "Config": "9"}


@standin("capset-capable", """
kprobes:
- call: security_capset
  syscall: false
  args: [{{index: 1, type: cred}}, {{index: 2, type: cap_effective}}, {{index: 4, type: cap_permitted}}]
  selectors: [{{matchArgs: [{{index: 2, operator: NotEqual, values: ["0"]}}], {scope}}}]
- call: cap_capable
  syscall: false
  return: true
  args: [{{index: 1, type: user_namespace}}, {{index: 2, type: capability}}]
  returnArg: {{index: 0, type: int}}
  selectors: [{{matchArgs: [{{index: 2, operator: Equal, values: ["0"]}}], {scope}}}]
""", ("import ctypes, os, struct\nlibc = ctypes.CDLL(None)\n"
      "hdr = ctypes.create_string_buffer(struct.pack('<Ii', 0x20080522, 0), 8)\n"
      "data = ctypes.create_string_buffer(24)\nlibc.syscall(125, hdr, data)\nlibc.syscall(126, hdr, data)\n"
      "os.chown('{work}/data/present.txt', 65534, 65534)\n"))
def _caps(got: list[dict], work: Path, port: int) -> None:
    (cs,) = [e for e in got if e["function_name"] == "security_capset"]
    full = open("/proc/self/status").read().split("CapEff:")[1].split()[0]
    assert cs["args"][1] == {"cap_effective_arg": full} and "cap_permitted_arg" in cs["args"][2]
    cc = [e for e in got if e["function_name"] == "cap_capable"]
    assert cc and cc[0]["args"][1]["capability_arg"]["name"] == "CAP_CHOWN"
    assert cc[0]["args"][0]["user_ns_arg"]["ns"]["is_host"] is True
    assert cc[0]["return"] == {"int_arg": 0}


@standin("skb-netdev-drop", """
kprobes:
- call: dev_queue_xmit
  syscall: false
  args: [{{index: 0, type: skb}}]
  selectors: [{{matchArgs: [{{index: 0, operator: DPort, values: ["{udp}"]}}], {scope}}}]
- call: dev_hard_start_xmit
  syscall: false
  args: [{{index: 0, type: skb}}, {{index: 1, type: net_device}}]
  selectors: [{{matchArgs: [{{index: 0, operator: DPort, values: ["{udp}"]}}], {scope}}}]
- call: kfree_skb_reason
  syscall: false
  args: [{{index: 0, type: skb}}, {{index: 1, type: int}}]
  selectors: [{{matchArgs: [{{index: 0, operator: DPort, values: ["{udp}"]}}], {scope}}}]
""", "import socket\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nu.sendto(b'abc', ('127.0.0.1', {udp}))\n")
def _skb(got: list[dict], work: Path, port: int) -> None:
    by = {}
    for e in got:
        by.setdefault(e["function_name"], []).append(e)
    q = by["dev_queue_xmit"][0]["args"][0]["skb_arg"]
    assert (q["daddr"], q["protocol"], q["family"]) == ("127.0.0.1", "IPPROTO_UDP", "AF_INET")
    assert by["dev_hard_start_xmit"][0]["args"][1] == {"net_dev_arg": {"name": "lo"}}
    assert by["kfree_skb_reason"] and by["kfree_skb_reason"][0]["args"][0]["skb_arg"]["proto"] == 17


@standin("stack-trace", """
kprobes:
- call: kfree_skb_reason
  syscall: false
  args: [{{index: 0, type: skb}}]
  selectors: [{{matchArgs: [{{index: 0, operator: DPort, values: ["{udp}"]}}], {scope},
               matchActions: [{{action: Post, kernelStackTrace: true}}]}}]
""", "import socket\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nu.sendto(b'abc', ('127.0.0.1', {udp}))\n")
def _stack_trace(got: list[dict], work: Path, port: int) -> None:
    """A stand-in's kernel stack starts where its tracepoint fired, as a kprobe's starts at the
    function: not with Vigil's BPF program and the tracing code that ran it (bpf_prog_..._vigil_raw_tp,
    bpf_trace_run4 were its first frames)."""
    (e,) = got
    syms = [f["symbol"] for f in e["kernel_stack_trace"]]
    assert syms and not syms[0].startswith(("bpf_", "__bpf_", "trace_call_bpf", "perf_")), syms[:4]
    assert "udp_sendmsg" in syms


@pytest.mark.parametrize("case, spec, code, check", STANDINS, ids=[c[0] for c in STANDINS])
def test_hook_substitution(running_agent: RunningAgent, pywork: Path, case: str, spec: str, code: str,
                           check: Callable[[list[dict], Path, int], None]) -> None:
    """Kernel functions this kernel cannot hook run on their stand-ins when the policy opts in;
    events keep the function's name and say where they ran."""
    srv, port = _server()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp_port = udp.getsockname()[1]
    udp.close()  # nothing listens there: the datagram is dropped (kfree_skb)
    body = spec.format(port=port, udp=udp_port, work=pywork, scope=scoped(pywork)) + SUB
    r = Run()
    try:
        with loaded(running_agent, policy_yaml(f"sub-{case}", body)):
            events = running_agent.collect(lambda: run_py(pywork, code.format(port=port, udp=udp_port, work=pywork),
                                                          out=r))
    finally:
        srv.close()
    got = mine(events, r, f"sub-{case}")
    assert got, f"no events for {case}"
    assert all(standin_tag(e) for e in got)
    check(got, pywork, port)


def _jited_symbols(prog_id: int) -> dict[int, str]:
    """The kernel's own addresses of program `prog_id`'s functions (bpf_prog_info.jited_ksyms),
    each with its name as /proc/kallsyms says it now."""
    import ctypes
    import struct

    from vigil.kernel import _libbpf as lb

    fd = lb.lib.bpf_prog_get_fd_by_id(prog_id)
    assert fd >= 0, f"program {prog_id}: {os.strerror(ctypes.get_errno())}"
    try:
        addrs = (ctypes.c_uint64 * 64)()
        info = ctypes.create_string_buffer(256)
        # struct bpf_prog_info: nr_jited_ksyms at 104, jited_ksyms (a u64 pointer) at 112
        struct.pack_into("<IIQ", info, 104, 64, 0, ctypes.addressof(addrs))
        n = ctypes.c_uint32(256)
        assert lb.lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(n)) == 0
        count = min(struct.unpack_from("<I", info.raw, 104)[0], 64)
    finally:
        os.close(fd)
    want = set(addrs[:count])
    assert want and all(want), f"program {prog_id}: no kernel addresses (kptr_restrict?)"
    names = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            a, _t, name = line.split()[:3]
            if int(a, 16) in want and name.startswith("bpf_prog_"):
                names[int(a, 16)] = name
    assert set(names) == want, f"program {prog_id}: {sorted(map(hex, want - set(names)))} not in /proc/kallsyms"
    return names


@pytest.mark.parametrize("case, spec", [
    ("stand-in", """
kprobes:
- call: kfree_skb_reason
  syscall: false
  args: [{index: 0, type: skb}]
  selectors: [{matchActions: [{action: Post, kernelStackTrace: true}]}]
""" + SUB),
    ("syscall", """
kprobes:
- call: sys_getppid
  syscall: true
  selectors: [{matchActions: [{action: Post, kernelStackTrace: true}]}]
"""),
])
def test_stack_symbols_know_the_programs_loaded_after_they_were_read(running_agent: RunningAgent, case: str,
                                                                     spec: str) -> None:
    """The agent's kernel symbols were read before this policy's programs existed (an earlier
    stack); loading a hook that takes kernel stacks has them read again, so its own program
    frames are named as its programs (and left out) rather than after whatever symbol was below
    them then: seen as a neighbour's unnamed program (bpf_prog_<tag>) atop a stand-in's stack.
    Only this policy's programs are looked at (by id), wherever others load theirs."""
    from vigil.sensors.generic_events import KSYMS

    KSYMS.lookup(0)  # read now, before the policy's programs are loaded
    name = f"ksyms-{case}"
    with loaded(running_agent, policy_yaml(name, spec)):
        ids = [p["id"] for p in running_agent.agent.status()["programs"] if p["policy"] == name]
        assert ids
        for prog_id in ids:
            syms = _jited_symbols(prog_id)
            assert {a: KSYMS.lookup(a) for a in syms} == {a: (sym, 0) for a, sym in syms.items()}


def test_substitution_is_off_unless_the_policy_opts_in(running_agent: RunningAgent) -> None:
    spec = policy_yaml("no-opt-in", """
kprobes:
- call: tcp_connect
  syscall: false
  args: [{index: 0, type: sock}]
""")
    with pytest.raises(PolicyError, match=r"tcp_connect.*stand-in available: sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB.*"
                                          r"vigil-hook-substitution"):
        running_agent.agent.policies.add_text(spec, "<t>")


# ---------------------------------------------------------------- LSM forms enforced on this host

def test_lsm_forms_enforced_by_host_back_ends(running_agent: RunningAgent, pywork: Path, launcher: Path) -> None:
    """lsmhooks bprm_check_security / file_open / socket_connect with Override, written as
    Tetragon users write them, are enforced here by fanotify and cgroup-BPF."""
    d = pywork / "data"
    srv, port = _server()
    spec = f"""
lsmhooks:
- hook: bprm_check_security
  args: [{{index: 0, type: linux_binprm}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{pywork}/truebin"]}}]
    matchActions: [{{action: Override, argError: -1}}]
- hook: file_open
  args: [{{index: 0, type: file}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{d}/present.txt"]}}]
    {scoped(pywork)}
    matchActions: [{{action: Override, argError: -1}}]
- hook: socket_connect
  args: [{{index: 0, type: socket}}, {{index: 1, type: sockaddr}}]
  selectors:
  - matchArgs:
    - {{index: 0, operator: Protocol, values: [IPPROTO_TCP]}}
    - {{index: 1, operator: SPort, values: ["{port}"]}}
    {scoped(pywork)}
    matchActions: [{{action: Override, argError: -1}}]
""" + SUB
    code = (f"import errno, os, socket\nout = []\n"
            f"try:\n    open('{d}/present.txt').close(); out.append('open')\nexcept OSError as e: out.append(e.errno)\n"
            f"s = socket.socket()\ntry:\n    s.connect(('127.0.0.1', {port})); out.append('connect')\n"
            f"except OSError as e: out.append(e.errno)\n"
            f"open('{d}/result', 'w').write(repr(out))\n")
    r = Run()
    try:
        with loaded(running_agent, policy_yaml("lsm-forms", spec)):
            from tests.kernel.testbins import launch

            denied = launch(launcher, [str(pywork / "truebin")])
            events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    finally:
        srv.close()
    assert isinstance(denied, OSError) and denied.errno == 1  # EPERM: the exec never happened
    assert (d / "result").read_text() == "[1, 1]"              # open and connect refused
    got = [b for k, b in policy_events(events, r.pid, "lsm-forms")]
    kinds = {e["function_name"]: e for e in got}
    assert kinds["file_open"]["args"][0] == {"file_arg": {"path": f"{d}/present.txt"}}
    assert kinds["socket_connect"]["action"] == "KPROBE_ACTION_OVERRIDE"


# ---------------------------------------------------------------- user-space actions, loader

@contextlib.contextmanager
def url_server() -> Iterator[tuple[int, list[str]]]:
    """A loopback HTTP server for GetUrl actions: its port, and the paths fetched from it so far;
    shut down on leaving."""
    import http.server
    import threading

    hits: list[str] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_port, hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_geturl_and_dnslookup(running_agent: RunningAgent, pywork: Path) -> None:
    d = pywork / "data"
    r = Run()
    with url_server() as (port, hits):
        spec = f"""
kprobes:
- call: sys_openat
  args: [{{index: 1, type: string}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: ["{d}/present.txt"]}}]
    {scoped(pywork)}
    matchActions: [{{action: GetUrl, argUrl: "http://127.0.0.1:{port}/vigil-hit"}}]
  - matchArgs: [{{index: 1, operator: Equal, values: ["{d}/sub"]}}]
    {scoped(pywork)}
    matchActions: [{{action: DnsLookup, argFqdn: "localhost"}}]
  - matchArgs: [{{index: 1, operator: Equal, values: ["{d}/./present.txt"]}}]
    {scoped(pywork)}
    matchActions: [{{action: GetUrl, argUrl: "http://127.0.0.1:{port}/not-last"}}, {{action: Post}}]
"""
        with loaded(running_agent, policy_yaml("user-actions", spec)):
            before = dict(running_agent.agent.policies.user_actions.stats)
            events = running_agent.collect(lambda: run_py(
                # a GetUrl before another action never runs (as Tetragon's): opened first, it would be
                # fetched before /vigil-hit (one worker, in order)
                pywork, open_file(f"{d}/./present.txt") + open_file(f"{d}/present.txt") + open_file(f"{d}/sub"),
                out=r))
            import time

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (not hits or running_agent.agent.policies.user_actions.stats[
                    "dnslookup"] == before["dnslookup"]):
                time.sleep(0.05)
            after = dict(running_agent.agent.policies.user_actions.stats)
    assert hits == ["/vigil-hit"]
    assert after["dnslookup"] == before["dnslookup"] + 1
    actions = sorted(e["action"] for e in mine(events, r, "user-actions"))
    assert actions == ["KPROBE_ACTION_DNSLOOKUP", "KPROBE_ACTION_GETURL", "KPROBE_ACTION_POST"]


def test_loader_events(running_agent: RunningAgent, pywork: Path) -> None:
    """loader: true: a process_loader event for each executable file mapped into a process,
    with the build id the kernel read from it."""
    import time

    spec = "loader: true\n"
    r = Run()
    got: list[dict] = []
    with loaded(running_agent, policy_yaml("loader", spec)):
        # perf's ring and the BPF ring are separate streams: keep collecting until this
        # process's mappings arrived (or the deadline says they never will)
        action: Callable[[], object] = lambda: run_py(pywork, "import _json\n", out=r)  # noqa: E731
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e["path"].endswith("/libc.so.6") for e in got):
            events = running_agent.collect(action)
            action = lambda: None  # noqa: E731
            got += [e["process_loader"] for e in events if "process_loader" in e
                    and e["process_loader"]["process"].get("pid") == r.pid]
    paths = {e["path"] for e in got}
    assert any(p.endswith("/libc.so.6") for p in paths), paths
    lib = next(e for e in got if e["path"].endswith("/libc.so.6"))
    assert base64.b64decode(lib["buildid"]) == _build_id(lib["path"])
    # perf reports the mapping before the ring buffer brings the exec: the event still names
    # the process fully (not a stand-in of pid and start time), and its parent
    for e in got:
        assert e["process"].get("binary") == str(pywork / "vpy") and e["process"].get("exec_id"), e
        assert e["parent"].get("exec_id"), e


def _build_id(path: str) -> bytes:
    import struct

    data = Path(path).read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    for i in range(shnum):
        _n, typ, _f, _a, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        if typ == 7:  # SHT_NOTE
            p = off
            while p < off + size:
                namesz, descsz, ntype = struct.unpack_from("<III", data, p)
                name = data[p + 12:p + 12 + namesz]
                desc_at = p + 12 + ((namesz + 3) & ~3)
                if ntype == 3 and name.startswith(b"GNU"):
                    return data[desc_at:desc_at + descsz]
                p = desc_at + ((descsz + 3) & ~3)
    raise AssertionError(f"{path} has no build id")


@pytest.fixture
def launcher(workdir: Path) -> Path:
    from tests.kernel.testbins import LAUNCH_C, build

    return build(workdir, "launch", LAUNCH_C)



# ---------------------------------------------------------------- usdt, enforcers

USDT_C = r"""
#include <stdio.h>
#include <stdlib.h>
""" + SDT_MACROS + r"""
/* a semaphore: the kernel counts it up while a uprobe with ref_ctr_offset is attached */
unsigned short vigil_guarded_semaphore __attribute__((section(".probes"), used));
static int iarr[6] = {10, -20, 30, -40, 50, 60};
static long larr[3] = {1, 1099511627776L, 3};
int main(int argc, char **argv) {
    volatile int ret = 0;
    int a = argc > 1 ? atoi(argv[1]) : 0, b = argc > 2 ? atoi(argv[2]) : 0;
    long i = b & 1;
    SDT("vigil", "probe3", "-4@%0 -4@%1 -4@%2", "m"(ret), "r"(a), "r"(b));
    /* base + index * scale (+ displacement) operands: element i of iarr and larr, i + 2 of iarr */
    SDT("vigil", "sib", "-4@(%0,%2,4) -4@8(%0,%2,4) 8@(%1,%2,8)", "r"(iarr), "r"(larr), "r"(i));
    if (vigil_guarded_semaphore)  /* only when someone listens, as <sys/sdt.h> semaphores go */
        SDT_SEM("vigil_guarded_semaphore", "vigil", "guarded", "-4@%0", "r"(a));
    return ret;
}
"""


@pytest.fixture
def usdt_bin(workdir: Path) -> Path:
    cc = shutil.which("clang") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler: `make` installs clang")
    (workdir / "usdt.c").write_text(USDT_C)
    subprocess.run([cc, "-O1", "-o", str(workdir / "usdt"), str(workdir / "usdt.c")], check=True)
    return workdir / "usdt"


def test_usdt_arguments(running_agent: RunningAgent, usdt_bin: Path) -> None:
    """usdts: the probe site from the binary's SDT notes, its arguments decoded from the
    operand strings (a memory operand and two registers here), filtered in the kernel."""
    spec = f"""
usdts:
- path: "{usdt_bin}"
  provider: vigil
  name: probe3
  args: [{{index: 0, type: int32}}, {{index: 1, type: int32}}, {{index: 2, type: int32}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: ["5"]}}]
"""
    pids: list[int] = []

    def act() -> None:
        for a in ("5", "6"):
            p = subprocess.Popen([str(usdt_bin), a, "7"])
            pids.append(p.pid)
            p.wait()
    with loaded(running_agent, policy_yaml("usdt-args", spec)):
        events = running_agent.collect(act)
    got = [e["process_usdt"] for e in events if "process_usdt" in e and e["process_usdt"]["policy_name"] == "usdt-args"]
    assert [e["process"]["pid"] for e in got] == [pids[0]]
    assert got[0]["args"] == [{"int_arg": 0}, {"int_arg": 5}, {"int_arg": 7}]
    assert (got[0]["provider"], got[0]["name"], got[0]["path"]) == ("vigil", "probe3", str(usdt_bin))


def test_usdt_base_index_scale_operands(running_agent: RunningAgent, usdt_bin: Path) -> None:
    """Memory operands of the form base + index * scale (+ displacement), `-4@(%rax,%rdx,4)`
    (libbpf's ARG_SIB): the element the site names, read from the process's memory; i = 1 and
    i = 0 give different elements, so the index register counts."""
    notes, _err = running_agent.agent.policies.facts.usdt_notes(str(usdt_bin))
    site = next(n for n in notes or [] if n.name == "sib")
    assert all("," in op for op in site.args.split()), site.args  # the compiler wrote SIB operands
    spec = f"""
usdts:
- path: "{usdt_bin}"
  provider: vigil
  name: sib
  args: [{{index: 0, type: int32}}, {{index: 1, type: int32}}, {{index: 2, type: int64}}]
"""
    with loaded(running_agent, policy_yaml("usdt-sib", spec)):
        events = running_agent.collect(lambda: [subprocess.run([str(usdt_bin), "0", i]) for i in ("1", "0")])
    got = [e["process_usdt"]["args"] for e in events
           if "process_usdt" in e and e["process_usdt"]["policy_name"] == "usdt-sib"]
    assert got == [[{"int_arg": -20}, {"int_arg": -40}, {"long_arg": "1099511627776"}],
                   [{"int_arg": 10}, {"int_arg": 30}, {"long_arg": "1"}]]


def test_usdt_set_refuses_a_base_index_scale_operand(running_agent: RunningAgent, usdt_bin: Path) -> None:
    """Set writes through a register + displacement operand only: on a base + index * scale one it
    would write elsewhere, so the policy is refused at argIndex."""
    spec = policy_yaml("usdt-sib-set", f"""
usdts:
- path: "{usdt_bin}"
  provider: vigil
  name: sib
  args: [{{index: 0, type: int32}}]
  selectors:
  - matchActions: [{{action: Set, argIndex: 0, argValue: 32}}]
""")
    with pytest.raises(PolicyError, match=r"spec.usdts\[0\].selectors\[0\].matchActions\[0\].argIndex: .*"
                                          r"base \+ index \* scale"):
        running_agent.agent.policies.add_text(spec, "<t>")
    assert "usdt-sib-set" not in [p["name"] for p in running_agent.agent.list_policies()]


REL_PATH_CASES = [  # (case, the hook with {path} for its path, the event kind; None: refused at path)
    ("uprobe-symbols", "uprobes:\n- path: \"{path}\"\n  symbols: [main]\n", "process_uprobe"),
    ("uprobe-offsets", "uprobes:\n- path: \"{path}\"\n  offsets: [{pc}]\n", "process_uprobe"),
    ("usdt", "usdts:\n- path: \"{path}\"\n  provider: vigil\n  name: probe3\n", "process_usdt"),
    ("uprobe-missing", "uprobes:\n- path: \"{path}-gone\"\n  symbols: [main]\n", None),
    ("usdt-missing", "usdts:\n- path: \"{path}-gone\"\n  provider: vigil\n  name: probe3\n", None),
]


@pytest.mark.parametrize("case, hook, kind", REL_PATH_CASES, ids=[c[0] for c in REL_PATH_CASES])
def test_relative_uprobe_path_is_taken_from_the_agents_cwd(running_agent: RunningAgent, usdt_bin: Path,
                                                            case: str, hook: str, kind: str | None) -> None:
    """A relative `path` (uprobes, usdts) names a file from the agent's working directory, as
    Tetragon makes it absolute (filepath.Abs) before attaching: the probe attaches and the event
    names the absolute path. A relative path to no file is refused at the field, nothing loaded."""
    notes, _err = running_agent.agent.policies.facts.usdt_notes(str(usdt_bin))
    pc = next(n.pc for n in notes or [] if n.name == "probe3")
    rel = os.path.relpath(usdt_bin)  # the agent runs in this process: its cwd is ours
    assert not os.path.isabs(rel)
    spec = policy_yaml("rel-path", hook.format(path=rel, pc=pc))
    if kind is None:
        with pytest.raises(PolicyError, match=r"<t>:\d+:\d+: spec.(uprobes|usdts)\[0\].path: .*"
                                              + re.escape(f"{usdt_bin}-gone")):
            running_agent.agent.policies.add_text(spec, "<t>")
        assert "rel-path" not in [p["name"] for p in running_agent.agent.list_policies()]
        return
    pids: list[int] = []
    with loaded(running_agent, spec):
        events = running_agent.collect(lambda: pids.append(subprocess.run([str(usdt_bin), "1", "2"]).returncode))
    got = [e[kind] for e in events if kind in e and e[kind]["policy_name"] == "rel-path"]
    assert [e["path"] for e in got] == [str(usdt_bin)]


def test_usdt_semaphore(running_agent: RunningAgent, usdt_bin: Path) -> None:
    """A probe guarded by a semaphore fires only while someone listens: attaching counts the
    semaphore up (ref_ctr_offset), so the program takes the probe's path."""
    spec = f"""
usdts:
- path: "{usdt_bin}"
  provider: vigil
  name: guarded
  args: [{{index: 0, type: int32}}]
"""
    pids: list[int] = []
    with loaded(running_agent, policy_yaml("usdt-sema", spec)):
        events = running_agent.collect(lambda: pids.append(subprocess.run([str(usdt_bin), "42"]).returncode))
    got = [e["process_usdt"] for e in events if "process_usdt" in e and e["process_usdt"]["policy_name"] == "usdt-sema"]
    assert [e["args"] for e in got] == [[{"int_arg": 42}]]


def test_uprobe_ref_ctr_offset_counts_the_semaphore(running_agent: RunningAgent, usdt_bin: Path) -> None:
    """refCtrOffsets: a uprobe at an offset with the semaphore guarding that site; the kernel
    counts it up while attached, so the guarded code runs and the probe fires; the event carries
    offset and ref_ctr_offset (uint64: strings in JSON), as Tetragon's."""
    from vigil.kernel.facts import KernelFacts

    notes, err = KernelFacts.gather().usdt_notes(str(usdt_bin))
    site = next(n for n in notes or [] if n.name == "guarded")
    assert site.semaphore, err
    spec = f"""
uprobes:
- path: "{usdt_bin}"
  offsets: [{site.pc}]
  refCtrOffsets: [{site.semaphore}]
"""
    with loaded(running_agent, policy_yaml("uprobe-refctr", spec)):
        events = running_agent.collect(lambda: subprocess.run([str(usdt_bin), "42"], check=False))
    got = [e["process_uprobe"] for e in events
           if "process_uprobe" in e and e["process_uprobe"]["policy_name"] == "uprobe-refctr"]
    assert len(got) == 1, got
    assert (got[0]["offset"], got[0]["ref_ctr_offset"]) == (str(site.pc), str(site.semaphore))


def _vaddr_of(path: Path, offset: int) -> int:
    """The virtual address (st_value form) of file offset `offset` in the ELF at `path`."""
    import struct

    data = path.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        typ, flags, off, vaddr, _pa, filesz, _ms, _al = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if typ == 1 and flags & 1 and off <= offset < off + filesz:
            return vaddr + offset - off
    raise AssertionError(f"offset {offset:#x} is in no executable segment of {path}")


def test_uprobe_addrs_attach_at_the_address_and_report_its_file_offset(running_agent: RunningAgent,
                                                                       usdt_bin: Path) -> None:
    """addrs: virtual addresses in the binary (as nm prints them), turned into file offsets in
    its executable segments, as Tetragon's; the event's offset is the file offset. An address in
    no executable segment is refused at the field; refCtrOffsets go one per address."""
    notes, _err = running_agent.agent.policies.facts.usdt_notes(str(usdt_bin))
    site = next(n for n in notes or [] if n.name == "guarded")
    addr = _vaddr_of(usdt_bin, site.pc)
    spec = f"""
uprobes:
- path: "{usdt_bin}"
  addrs: [{addr:#x}]
  refCtrOffsets: [{site.semaphore}]
"""
    with loaded(running_agent, policy_yaml("uprobe-addrs", spec)):
        events = running_agent.collect(lambda: subprocess.run([str(usdt_bin), "42"], check=False))
    got = [e["process_uprobe"] for e in events
           if "process_uprobe" in e and e["process_uprobe"]["policy_name"] == "uprobe-addrs"]
    assert [(e["offset"], e["ref_ctr_offset"], "symbol" in e) for e in got] == [
        (str(site.pc), str(site.semaphore), False)]
    bad = f'uprobes:\n- path: "{usdt_bin}"\n  addrs: [{addr:#x}, 0x10]\n'
    with pytest.raises(PolicyError, match=r"spec.uprobes\[0\].addrs\[1\]: .*address 0x10 is in no executable "
                                          r"segment"):
        running_agent.agent.policies.add_text(policy_yaml("uprobe-addrs-bad", bad), "<t>")
    assert "uprobe-addrs-bad" not in [p["name"] for p in running_agent.agent.list_policies()]


@pytest.fixture
def digest_bin(workdir: Path) -> Path:
    """The usdt program linked with a GNU build ID note (and a copy without one)."""
    cc = shutil.which("clang") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler: `make` installs clang")
    (workdir / "usdt.c").write_text(USDT_C)
    for name, flag in (("with-id", "-Wl,--build-id=sha1"), ("no-id", "-Wl,--build-id=none")):
        subprocess.run([cc, "-O1", flag, "-o", str(workdir / name), str(workdir / "usdt.c")], check=True)
    return workdir / "with-id"


def _digest_of(path: Path, algo: str) -> str:
    import hashlib

    if algo == "build-id":
        out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
        return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)  # type: ignore[union-attr]
    return hashlib.new(algo, path.read_bytes()).hexdigest()


DIGEST_CASES = [  # (case, binary, the digests ({algo} = that digest of the binary), ignore, outcome)
    # outcome: "events" (attached), "skipped" (loaded, this uprobe not attached), or the error's regex
    ("sha256", "with-id", ["{sha256}"], False, "events"),
    ("sha1-upper-case", "with-id", ["{SHA1}"], False, "events"),
    ("sha384", "with-id", ["{sha384}"], False, "events"),
    ("sha512", "with-id", ["{sha512}"], False, "events"),
    ("build-id", "with-id", ["{build-id}"], False, "events"),
    ("second-matches", "with-id", ["sha256:" + "1" * 64, "{sha512}"], False, "events"),
    ("mismatch", "with-id", ["sha256:" + "1" * 64], False,
     r"spec.uprobes\[0\].binaryDigests: .*matches none of binaryDigests .*ignore.digestVerificationFailure"),
    ("mismatch-ignored", "with-id", ["sha256:" + "1" * 64, "build-id:" + "2" * 40], True, "skipped"),
    ("no-build-id", "no-id", ["build-id:" + "2" * 40], True,
     r"spec.uprobes\[0\].binaryDigests\[0\]: .*cannot compute the build-id digest .*no GNU build ID"),
    # tried in order, as Tetragon does: an entry after the match is never read; one reached that
    # cannot be read refuses (also with ignore); a well-formed one that can never match is a mismatch
    ("malformed-after-match", "with-id", ["{sha256}", "md5:00"], False, "events"),
    ("malformed-before-match", "with-id", ["sha256:" + "1" * 64, "md5:00", "{sha256}"], True,
     r'spec.uprobes\[0\].binaryDigests\[1\]: .*invalid digest "md5:00": unsupported algorithm "md5".*also with '
     r"ignore.digestVerificationFailure"),
    ("no-colon-before-match", "with-id", ["sha256:" + "1" * 64, "deadbeef", "{sha256}"], False,
     r'spec.uprobes\[0\].binaryDigests\[1\]: .*invalid digest "deadbeef": expected "<algo>:<hex>"'),
    ("short-digest-mismatch", "with-id", ["sha256:abcd"], False,
     r"spec.uprobes\[0\].binaryDigests: .*matches none of binaryDigests"),
    ("short-digest-mismatch-ignored", "with-id", ["sha256:abcd"], True, "skipped"),
    ("empty-matches", "with-id", [""], False, "events"),
]


@pytest.mark.parametrize("case,binary,digests,ignore,outcome", DIGEST_CASES, ids=[c[0] for c in DIGEST_CASES])
def test_uprobe_binary_digests(running_agent: RunningAgent, digest_bin: Path, case: str, binary: str,
                               digests: list[str], ignore: bool, outcome: str) -> None:
    """binaryDigests: the uprobe attaches when one of the digests (sha1/256/384/512 of the file,
    or its build ID note; any case) is the binary's. None matching refuses the policy at
    binaryDigests, unless ignore.digestVerificationFailure: then only this uprobe is left out
    (explain says why) and the policy's other uprobe still reports."""
    from vigil.policy import parse_policies
    from vigil.policy.explain import explain_policy

    path = digest_bin.parent / binary
    values = {a: f"{a}:{_digest_of(path, a)}" for a in ("sha1", "sha256", "sha384", "sha512")}
    values["SHA1"] = values["sha1"].upper()
    if binary == "with-id":
        values["build-id"] = f"build-id:{_digest_of(path, 'build-id')}"
    listed = ", ".join(f'"{d.format(**values)}"' if "{" in d else f'"{d}"' for d in digests)
    spec = f"""
uprobes:
- path: "{path}"
  symbols: [main]
  message: checked
  binaryDigests: [{listed}]
  ignore: {{digestVerificationFailure: {str(ignore).lower()}}}
- path: "{path}"
  symbols: [main]
  message: unchecked
"""
    text = policy_yaml(f"digest-{case}", spec)
    agent = running_agent.agent
    if outcome not in ("events", "skipped"):
        with pytest.raises(PolicyError, match=r"<t>:\d+:\d+: " + outcome):
            agent.policies.add_text(text, "<t>")
        assert f"digest-{case}" not in [p["name"] for p in agent.list_policies()]
        return
    with loaded(running_agent, text):
        events = running_agent.collect(lambda: subprocess.run([str(path)]))
        (listed,) = [p for p in agent.list_policies() if p["name"] == f"digest-{case}"]
    got = sorted(e["process_uprobe"].get("message", "") for e in events
                 if "process_uprobe" in e and e["process_uprobe"]["policy_name"] == f"digest-{case}")
    assert got == (["checked", "unchecked"] if outcome == "events" else ["unchecked"])
    report = explain_policy(parse_policies(text, "<t>")[0], agent.policies.facts)
    first = report["hooks"][0]
    assert report["loadable"]
    # the policy's status (ListTracingPolicies): partially enabled, the skipped hook DIGEST_REJECTED
    states = sorted((h["index"], h["state"]) for h in listed["hooks"])
    if outcome == "skipped":
        assert listed["state"] == "partially_enabled" and states == [(0, "digest_rejected"), (1, "loaded")]
        assert first["runs_on"].startswith("not attached: ") and "ignore.digestVerificationFailure" in first["runs_on"]
        assert any("uprobes[0]" in w and "not attached" in w for w in report["warnings"])
    else:
        assert listed["state"] == "enabled" and states == [(0, "loaded"), (1, "loaded")]
        assert first["runs_on"].startswith("uprobe:") and not [w for w in report["warnings"] if "not attached" in w]


SWAP_CASES = [  # (case, when another binary is renamed over the checked one, the error's regex or None)
    ("unchanged", "never", None),
    ("replaced-between-check-and-attach", "before-attach", r"binaryDigests: .*matches none of them now"),
    ("replaced-while-disabled", "while-disabled", None),
    # Tetragon refuses to disable a policy with binaryDigests (it closes the checked file after the
    # load, so a re-enable could not attach to it again); Vigil keeps that file open and walks the
    # digests on it again at each enable: a binary changed in place while disabled is not attached to
    ("modified-in-place-while-disabled", "modified-while-disabled",
     r"enabling failed, attaching uprobe.*binaryDigests: the binary matches none of them now"),
]


@pytest.mark.parametrize("case,when,error", SWAP_CASES, ids=[c[0] for c in SWAP_CASES])
def test_uprobe_binary_digests_hold_for_the_file_attached_to(running_agent: RunningAgent, digest_bin: Path,
                                                             monkeypatch: pytest.MonkeyPatch, case: str, when: str,
                                                             error: str | None) -> None:
    """binaryDigests are checked on the very file the uprobe attaches to: the agent opens the
    binary once, walks the digests on that open file and attaches through /proc/self/fd/N. A
    binary put at the path after the policy's check (before the attach, or while the policy is
    disabled) is never attached to unchecked: the load is refused, or the uprobe stays on the
    checked file (a hard link to it still reports; the new file at the path does not). The
    checked file changed in place while the policy is disabled: enabling it again is refused
    (the digests are walked again on the open file) and the policy stays disabled, with the error."""
    from vigil.sensors.generic import GenericHook

    path, kept = digest_bin, digest_bin.parent / "checked-link"
    os.link(path, kept)  # the checked inode, runnable after the path names another file
    digest = f"sha256:{_digest_of(path, 'sha256')}"

    def replace() -> None:
        other = path.parent / "other"
        shutil.copy(path.parent / "no-id", other)
        os.rename(other, path)

    if when == "before-attach":
        load = GenericHook.load

        def replace_then_load(self: GenericHook) -> None:
            if self.compiled.placement.attach.get("digests"):
                replace()
            load(self)
        monkeypatch.setattr(GenericHook, "load", replace_then_load)
    name = f"digest-swap-{case}"
    text = policy_yaml(name, f'uprobes:\n- path: "{path}"\n  symbols: [main]\n  binaryDigests: ["{digest}"]\n')
    agent = running_agent.agent
    if when == "modified-while-disabled":
        with loaded(running_agent, text):
            agent.policies.set_enabled(name, False)
            with open(path, "ab") as f:  # the same inode, other bytes: still runs, other digests
                f.write(b"\0" * 16)
            with pytest.raises(PolicyError, match=error):
                agent.policies.set_enabled(name, True)
            (listed,) = [p for p in agent.list_policies() if p["name"] == name]
            events = running_agent.collect(lambda: (subprocess.run([str(path)]), subprocess.run([str(kept)])))
        assert listed["state"] == "disabled" and re.search(error or "", listed["error"])
        assert not [e for e in events if e.get("process_uprobe", {}).get("policy_name") == name]
        return
    if error is not None:
        with pytest.raises(PolicyError, match=error):
            agent.policies.add_text(text, "<t>")
        assert name not in [p["name"] for p in agent.list_policies()]
        events = running_agent.collect(lambda: (subprocess.run([str(path)]), subprocess.run([str(kept)])))
        assert not [e for e in events if e.get("process_uprobe", {}).get("policy_name") == name]
        return
    with loaded(running_agent, text):
        if when == "while-disabled":
            agent.policies.set_enabled(name, False)
            replace()
            agent.policies.set_enabled(name, True)
        events = running_agent.collect(lambda: (subprocess.run([str(path)]), subprocess.run([str(kept)])))
    got = [Path(e["process_uprobe"]["process"]["binary"]).name for e in events
           if e.get("process_uprobe", {}).get("policy_name") == name]
    assert got == (["with-id", "checked-link"] if when == "never" else ["checked-link"])


def _run_with_policy(ra: RunningAgent, text: str, binary: Path) -> tuple[list[dict], list[int]]:
    """The events collected while `text` is loaded and `binary 1 2` runs once, and its pid."""
    pids: list[int] = []

    def act() -> None:
        p = subprocess.Popen([str(binary), "1", "2"])
        pids.append(p.pid)
        p.wait()
    with loaded(ra, text):
        events = ra.collect(act)
    return events, pids


DATA_CASES = [  # (case, the data list, what the event's data list holds; a str: the error's regex)
    ("regs-widths", "[{index: 0, type: int32, source: pt_regs, resolve: edi, label: argc},"
     " {index: 0, type: uint64, source: pt_regs, resolve: rdi}, {index: 0, type: uint8, source: pt_regs,"
     " resolve: dil}]", [{"int_arg": 3, "label": "argc"}, {"size_arg": "3"}, {"uint_arg": 3}]),
    ("current-task", "[{index: 0, type: int32, source: current_task, resolve: pid},"
     " {index: 0, type: string, source: current_task, resolve: comm},"
     " {index: 0, type: int32, source: current_task, resolve: real_parent.tgid}]",
     [{"int_arg": "{pid}"}, {"string_arg": "with-id"}, {"int_arg": "{ppid}"}]),
    ("no-source", "[{index: 0, type: int32, resolve: edi}]", r"spec.uprobes\[0\].data\[0\].source: .*needs a source"),
    ("no-resolve", "[{index: 0, type: int32, source: pt_regs}]",
     r"spec.uprobes\[0\].data\[0\].resolve: .*needs resolve"),
    ("not-a-register", "[{index: 0, type: int32, source: pt_regs, resolve: xmm0}]",
     r"spec.uprobes\[0\].data\[0\].resolve: .*not a register name"),
    ("no-such-field", "[{index: 0, type: int32, source: current_task, resolve: no_such_field}]",
     r"spec.uprobes\[0\].data\[0\].resolve: .*no_such_field"),
    ("index", "[{index: 5, type: int32, source: pt_regs, resolve: edi}]",
     r"spec.uprobes\[0\].data\[0\].index: .*out of range"),
    ("slots", "[{index: 0, type: int32, source: pt_regs, resolve: edi}, {index: 0, type: int32, source: pt_regs,"
     " resolve: esi}, {index: 0, type: int32, source: pt_regs, resolve: edx}, {index: 0, type: int32,"
     " source: pt_regs, resolve: ecx}, {index: 0, type: int32, source: pt_regs, resolve: eax}]",
     r"spec.uprobes\[0\].data\[4\]: .*share 5 argument slots"),
]


@pytest.mark.parametrize("case,data,want", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_uprobe_data(running_agent: RunningAgent, digest_bin: Path, case: str, data: str, want: Any) -> None:
    """A uprobe's `data`: values that are not the function's arguments, read at the hook and
    reported in the event's `data` list (the args stay in `args`): source pt_regs reads the
    register `resolve` names at its width (edi: 4 bytes, dil: 1), source current_task follows a
    task_struct field path by kernel BTF. Wrong entries are refused at their field."""
    spec = f'uprobes:\n- path: "{digest_bin}"\n  symbols: [main]\n  args: [{{index: 0, type: int32}}]\n  data: {data}\n'
    text = policy_yaml(f"uprobe-data-{case}", spec)
    agent = running_agent.agent
    if isinstance(want, str):
        with pytest.raises(PolicyError, match=r"<t>:\d+:\d+: " + want):
            agent.policies.add_text(text, "<t>")
        assert f"uprobe-data-{case}" not in [p["name"] for p in agent.list_policies()]
        return
    events, pids = _run_with_policy(running_agent, text, digest_bin)
    got = [e["process_uprobe"] for e in events
           if "process_uprobe" in e and e["process_uprobe"]["policy_name"] == f"uprobe-data-{case}"]
    assert [e["process"]["pid"] for e in got] == pids
    expect = [{k: (int(v.format(pid=pids[0], ppid=os.getpid())) if isinstance(v, str) and "{" in v else v)
               for k, v in d.items()} for d in want]
    assert got[0]["args"] == [{"int_arg": 3}]
    assert got[0]["data"] == expect
    assert list(got[0]).index("data") == len(got[0]) - 1  # after action, as Tetragon's field 13


MATCH_DATA_CASES = [  # (case, the data list, the selector, events expected (argc is 3), or the error's regex)
    ("regs-equal", "[{index: 0, type: int32, source: pt_regs, resolve: edi}]",
     "{matchData: [{index: 0, operator: Equal, values: ['3']}]}", 1),
    ("regs-not-equal", "[{index: 0, type: int32, source: pt_regs, resolve: edi}]",
     "{matchData: [{index: 0, operator: Equal, values: ['4']}]}", 0),
    ("task-comm-equal", "[{index: 0, type: string, source: current_task, resolve: comm}]",
     "{matchData: [{index: 0, operator: Equal, values: [with-id]}]}", 1),
    ("task-comm-prefix-miss", "[{index: 0, type: string, source: current_task, resolve: comm}]",
     "{matchData: [{index: 0, operator: Prefix, values: [other]}]}", 0),
    # the second data entry: its slot follows the arg's and the first data entry's
    ("second-entry", "[{index: 0, type: int32, source: current_task, resolve: pid},"
     " {index: 0, type: int32, source: pt_regs, resolve: edi}]",
     "{matchData: [{index: 1, operator: Equal, values: ['3']}]}", 1),
    ("with-match-args", "[{index: 0, type: int32, source: pt_regs, resolve: edi}]",
     "{matchArgs: [{index: 0, operator: Equal, values: ['3']}], matchData: [{index: 0, operator: NotEqual,"
     " values: ['3']}]}", 0),
    ("index-out-of-range", "[{index: 0, type: int32, source: pt_regs, resolve: edi}]",
     "{matchData: [{index: 1, operator: Equal, values: ['3']}]}", r"matchData\[0\].index: .*out of range"),
]


@pytest.mark.parametrize("case,data,selector,want", MATCH_DATA_CASES, ids=[c[0] for c in MATCH_DATA_CASES])
def test_uprobe_match_data(running_agent: RunningAgent, digest_bin: Path, case: str, data: str, selector: str,
                           want: int | str) -> None:
    """matchData on a uprobe filters in the kernel on its `data` entries as matchArgs does on
    its args: `index` is the position in `data` (Tetragon's reading); with matchArgs in the same
    selector both must hold."""
    spec = (f'uprobes:\n- path: "{digest_bin}"\n  symbols: [main]\n  args: [{{index: 0, type: int32}}]\n'
            f"  data: {data}\n  selectors: [{selector}]\n")
    name = f"uprobe-match-data-{case}"
    text = policy_yaml(name, spec)
    agent = running_agent.agent
    if isinstance(want, str):
        with pytest.raises(PolicyError, match=want):
            agent.policies.add_text(text, "<t>")
        assert name not in [p["name"] for p in agent.list_policies()]
        return
    events, pids = _run_with_policy(running_agent, text, digest_bin)
    got = [e["process_uprobe"]["process"]["pid"] for e in events
           if "process_uprobe" in e and e["process_uprobe"]["policy_name"] == name]
    assert got == pids[:want]


# (case, the kprobe's data, its matchData (comm: "mkdir", the children's), which children's events
# pass: their pids' positions -- or the error's regex)
KPROBE_DATA_CASES = [
    ("task-comm-equal", "[{index: 0, type: string, source: current_task, resolve: comm}]",
     "[{index: 0, operator: Equal, values: [mkdir]}]", [0, 1]),
    ("task-comm-other", "[{index: 0, type: string, source: current_task, resolve: comm}]",
     "[{index: 0, operator: Equal, values: [other]}]", []),
    # the second data entry's slot follows the arg's and the first's: the child's own pid
    ("second-entry-pid", "[{index: 0, type: string, source: current_task, resolve: comm},"
     " {index: 0, type: int32, source: current_task, resolve: tgid}]",
     "[{index: 1, operator: Equal, values: ['{pid1}']}]", [1]),
    # this host has no kprobes: the syscall runs on its tracepoint, which has no kprobe registers
    ("regs-on-a-tracepoint", "[{index: 0, type: int32, source: pt_regs, resolve: edx}]", "[]",
     r"spec.kprobes\[0\].data\[0\].source: .*reads register edx from pt_regs, which a hook has only where it runs "
     r"as a kprobe; __x64_sys_mkdir runs here as tracepoint:sys_enter_mkdir"),
]


@pytest.mark.parametrize("case,data,match,want", KPROBE_DATA_CASES, ids=[c[0] for c in KPROBE_DATA_CASES])
def test_kprobe_data_and_match_data(running_agent: RunningAgent, tmp_path: Path, case: str, data: str, match: str,
                                    want: list[int] | str) -> None:
    """A syscall kprobe's `data` from the current task, read on this host's syscall tracepoint
    (mkdir(1) calls mkdir(2)):
    reported in the event's data list (last, Tetragon's ProcessKprobe field 14) and filtered in
    the kernel by matchData (only the matching children's mkdirs come). pt_regs data is refused
    here, at its field, saying why."""
    mkdir = shutil.which("mkdir")
    assert mkdir
    kids = [subprocess.Popen(["sh", "-c", f'read x; exec {mkdir} "$0"', str(tmp_path / f"d{k}")],
                             stdin=subprocess.PIPE) for k in range(2)]  # pids known before the policy
    name = f"kprobe-data-{case}"
    spec = (f"kprobes:\n- call: sys_mkdir\n  args: [{{index: 0, type: string}}]\n  data: {data}\n"
            f"  selectors: [{{matchData: {match.replace('{pid1}', str(kids[1].pid))}}}]\n")
    text = policy_yaml(name, spec.replace("  selectors: [{matchData: []}]\n", ""))
    agent = running_agent.agent
    try:
        if isinstance(want, str):
            with pytest.raises(PolicyError, match=r"<t>:\d+:\d+: " + want):
                agent.policies.add_text(text, "<t>")
            assert name not in [p["name"] for p in agent.list_policies()]
            return

        def act() -> None:
            for k in kids:
                k.communicate(b"\n")
        with loaded(running_agent, text):
            events = running_agent.collect(act)
    finally:
        for k in kids:
            if k.poll() is None:
                k.kill()
                k.wait()
    got = [e["process_kprobe"] for e in events
           if "process_kprobe" in e and e["process_kprobe"]["policy_name"] == name
           and e["process_kprobe"]["args"][0].get("string_arg", "").startswith(str(tmp_path))]
    assert [e["process"]["pid"] for e in got] == [kids[i].pid for i in want]
    for e, i in zip(got, want):
        assert e["data"][0] == {"string_arg": "mkdir"}
        assert e["data"][1:] in ([], [{"int_arg": kids[i].pid}])
        assert list(e).index("data") == len(e) - 1


RESOLVE_C = r"""
struct inner { int code; char name[16]; };
struct req { long id; struct inner *in; const char *path; };
__attribute__((noinline, used)) int handle(struct req *r) { __asm__ volatile("" ::: "memory"); return r->in->code; }
int main(int argc, char **argv) {
    struct inner in = {argc * 7, "inner-name"};
    struct req r = {40 + argc, &in, "/some/path"};
    return handle(&r) & 0;
}
"""
# the same types as the BTF of a BPF object (what clang -g writes; variables of each struct, or
# clang writes a struct only met through a pointer as a forward declaration), for btfPath
RESOLVE_TYPES_C = RESOLVE_C.split("__attribute__")[0] + "struct req keep_req;\nstruct inner keep_inner;\n"


@pytest.fixture
def resolve_bin(workdir: Path) -> Path:
    """A program calling handle(struct req *), and its types' BTF: types.o (ELF, .BTF) and
    types.btf (raw)."""
    cc = shutil.which("clang")
    if cc is None:
        pytest.fail("no clang: `make` installs it")
    (workdir / "r.c").write_text(RESOLVE_C)
    (workdir / "types.c").write_text(RESOLVE_TYPES_C)
    subprocess.run([cc, "-O1", "-o", str(workdir / "r"), str(workdir / "r.c")], check=True)
    subprocess.run([cc, "-g", "-O2", "-target", "bpf", "-c", "-o", str(workdir / "types.o"), str(workdir / "types.c")],
                   check=True)
    subprocess.run(["llvm-objcopy", "--dump-section", f".BTF={workdir / 'types.btf'}", str(workdir / "types.o")],
                   check=True)
    return workdir / "r"


RESOLVE_ARGS = ("[{index: 0, type: int64, btfType: req, resolve: id}, {index: 0, type: int32, btfType: req, "
                "resolve: in.code}, {index: 0, type: string, btfType: req, resolve: in.name}, {index: 0, type: "
                "string, btfType: req, resolve: path, label: p}]")
RESOLVE_WANT = [{"long_arg": "43"}, {"int_arg": 21}, {"string_arg": "inner-name"}, {"string_arg": "/some/path",
                                                                                     "label": "p"}]
RESOLVE_CASES = [  # (case, btfPath (in the work dir; None: not set), args, the event's args or the error's regex)
    ("elf-btf", "types.o", RESOLVE_ARGS, RESOLVE_WANT),
    ("raw-btf", "types.btf", RESOLVE_ARGS, RESOLVE_WANT),
    ("unreadable", "gone.btf", RESOLVE_ARGS, r"spec.uprobes\[0\].btfPath: .*cannot read btfPath .*gone.btf"),
    ("not-btf", "r.c", RESOLVE_ARGS, r"spec.uprobes\[0\].btfPath: .*cannot read btfPath .*r.c: bad BTF magic"),
    ("no-btf-path", None, RESOLVE_ARGS, r"spec.uprobes\[0\].btfPath: .*btfPath, which is not set"),
    ("no-btf-type", "types.o", "[{index: 0, type: int64, resolve: id}]",
     r"spec.uprobes\[0\].args\[0\].btfType: .*needs btfType"),
    ("btf-type-alone", "types.o", "[{index: 0, type: uint64, btfType: req}]", "nonzero"),  # unused, as Tetragon's
    ("no-such-struct", "types.o", "[{index: 0, type: int64, btfType: nosuch, resolve: id}]",
     r"spec.uprobes\[0\].args\[0\].resolve: .*no struct 'nosuch'"),
    ("no-such-field", "types.o", "[{index: 0, type: int64, btfType: req, resolve: in.nosuch}]",
     r"spec.uprobes\[0\].args\[0\].resolve: .*has no field 'nosuch'"),
]


@pytest.mark.parametrize("case,btf,args,want", RESOLVE_CASES, ids=[c[0] for c in RESOLVE_CASES])
def test_uprobe_arg_resolve_by_btf_path(running_agent: RunningAgent, resolve_bin: Path, case: str, btf: str | None,
                                        args: str, want: Any) -> None:
    """resolve on a uprobe argument: the argument points to struct btfType of the binary's BTF
    (btfPath: an ELF with .BTF or raw BTF), and the field path is followed in the process's
    memory (pointers on the way too). A btfPath that cannot be read, or no btfPath/btfType,
    refuses the policy at that field."""
    btf_line = f'  btfPath: "{resolve_bin.parent / btf}"\n' if btf else ""
    spec = f'uprobes:\n- path: "{resolve_bin}"\n{btf_line}  symbols: [handle]\n  args: {args}\n'
    text = policy_yaml(f"uprobe-resolve-{case}", spec)
    agent = running_agent.agent
    if isinstance(want, str) and want != "nonzero":
        with pytest.raises(PolicyError, match=r"<t>:\d+:\d+: " + want):
            agent.policies.add_text(text, "<t>")
        assert f"uprobe-resolve-{case}" not in [p["name"] for p in agent.list_policies()]
        return
    with loaded(running_agent, text):
        events = running_agent.collect(lambda: subprocess.run([str(resolve_bin), "x", "y"]))
    got = [e["process_uprobe"]["args"] for e in events
           if "process_uprobe" in e and e["process_uprobe"]["policy_name"] == f"uprobe-resolve-{case}"]
    if want == "nonzero":  # the argument itself (the struct's address)
        assert len(got) == 1 and int(got[0][0]["size_arg"]) > 0
        return
    assert got == [want]


REPLACED_CASES = [  # (case, what is replaced between two loads of the policy, the second load's args or error regex)
    ("btf-without-the-struct", "btfPath", r"spec.uprobes\[0\].args\[0\].resolve: .*no struct 'req'"),
    ("btf-removed", "btfPath-gone", r"spec.uprobes\[0\].btfPath: .*cannot read btfPath .*types.o"),
    ("binary-rebuilt", "binary", [{"long_arg": "43"}]),
]


@pytest.mark.parametrize("case,what,second", REPLACED_CASES, ids=[c[0] for c in REPLACED_CASES])
def test_uprobe_files_are_read_again_when_replaced(running_agent: RunningAgent, resolve_bin: Path, case: str,
                                                   what: str, second: Any) -> None:
    """The agent keeps what it read from a uprobe's files (btfPath's types, the binary's
    symbols) only while the file stays the same (device, inode, size, mtime): a policy loaded
    again after the file was replaced, removed or rebuilt is compiled against the file as it is."""
    work = resolve_bin.parent
    btf = work / "types.o"
    spec = (f'uprobes:\n- path: "{resolve_bin}"\n  btfPath: "{btf}"\n  symbols: [handle]\n'
            "  args: [{index: 0, type: int64, btfType: req, resolve: id}]\n")
    name = f"uprobe-replaced-{case}"
    text = policy_yaml(name, spec)
    agent = running_agent.agent

    def args_reported() -> list[Any]:
        with loaded(running_agent, text):
            events = running_agent.collect(lambda: subprocess.run([str(resolve_bin), "x", "y"]))
        return [e["process_uprobe"]["args"] for e in events
                if "process_uprobe" in e and e["process_uprobe"]["policy_name"] == name]

    assert args_reported() == [[{"long_arg": "43"}]]
    if what == "btfPath":  # another object at the path, whose BTF has no struct req
        (work / "other.c").write_text("struct other { int x; };\nstruct other keep_other;\n")
        subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-c", "-o", str(work / "other.o"),
                        str(work / "other.c")], check=True)
        os.replace(work / "other.o", btf)
    elif what == "btfPath-gone":
        btf.unlink()
    else:  # handle() moves: a function put before it in the program's text
        (work / "r2.c").write_text("__attribute__((noinline, used)) int pad(int x) { int s = 0; "
                                   "for (int i = 0; i < x; i++) s += i * x; return s; }\n" + RESOLVE_C)
        subprocess.run(["clang", "-O1", "-o", str(work / "r2"), str(work / "r2.c")], check=True)
        os.replace(work / "r2", resolve_bin)
    if isinstance(second, str):
        with pytest.raises(PolicyError, match=r"<t>:\d+:\d+: " + second):
            agent.policies.add_text(text, "<t>")
        assert name not in [p["name"] for p in agent.list_policies()]
    else:
        assert args_reported() == [second]


def _uprobe_users(binary: Path, prog_ids: set[int]) -> tuple[list[dict], list[str]]:
    """The BPF links of programs `prog_ids` (bpftool link: perf_event, uprobe_multi) and the
    tracefs uprobe_events lines naming `binary` (libbpf's legacy attach)."""
    import json

    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    links = [lk for lk in json.loads(out) if lk.get("prog_id") in prog_ids]
    ev = Path("/sys/kernel/tracing/uprobe_events")
    lines = [ln for ln in (ev.read_text().splitlines() if ev.exists() else []) if str(binary) in ln]
    return links, lines


def test_uprobes_and_usdts_leave_nothing_behind_on_delete(running_agent: RunningAgent, usdt_bin: Path) -> None:
    """Deleting a policy with a uprobe (entry and return), a usdt and a semaphore-counted uprobe
    removes every program, link and tracefs probe of it: the binary runs without events of it."""
    notes, _err = running_agent.agent.policies.facts.usdt_notes(str(usdt_bin))
    site = next(n for n in notes or [] if n.name == "guarded")
    spec = f"""
uprobes:
- path: "{usdt_bin}"
  symbols: [main]
  return: true
  returnArg: {{index: 0, type: int}}
- path: "{usdt_bin}"
  offsets: [{site.pc}]
  refCtrOffsets: [{site.semaphore}]
usdts:
- path: "{usdt_bin}"
  provider: vigil
  name: probe3
"""
    a = running_agent.agent
    name = a.policies.add_text(policy_yaml("uprobe-cleanup", spec), "<t>")[0]
    try:
        prog_ids = set(next(p for p in a.list_policies() if p["name"] == name)["program_ids"])
        links, lines = _uprobe_users(usdt_bin, prog_ids)
        assert len(links) + len(lines) >= 4, (links, lines)  # uprobe, uretprobe, offset, usdt
        on = running_agent.collect(lambda: subprocess.run([str(usdt_bin), "1"], check=False))
    finally:
        a.delete_policy(name)
    assert {e["process_uprobe"].get("offset") for e in on if "process_uprobe" in e} >= {str(site.pc)}
    assert _uprobe_users(usdt_bin, prog_ids) == ([], [])
    assert not still_loaded(prog_ids)
    off = running_agent.collect(lambda: subprocess.run([str(usdt_bin), "1"], check=False))
    assert not [e for e in off for k in ("process_uprobe", "process_usdt")
                if k in e and e[k]["policy_name"] == "uprobe-cleanup"]


def test_uprobe_several_symbols_each_fire_under_their_name(running_agent: RunningAgent, usdt_bin: Path) -> None:
    """symbols: [a, b]: one probe per symbol, each event naming its symbol as written (here main
    and main+OFFSET of the probe3 site inside it), in the order they run."""
    from vigil.kernel.elfsym import func_offset

    notes, _err = running_agent.agent.policies.facts.usdt_notes(str(usdt_bin))
    site = next(n for n in notes or [] if n.name == "probe3")
    inner = f"main+{site.pc - func_offset(str(usdt_bin), 'main'):#x}"
    spec = f"""
uprobes:
- path: "{usdt_bin}"
  symbols: [main, "{inner}"]
"""
    with loaded(running_agent, policy_yaml("uprobe-syms", spec)):
        events = running_agent.collect(lambda: subprocess.run([str(usdt_bin), "1"], check=False))
    got = [e["process_uprobe"] for e in events
           if "process_uprobe" in e and e["process_uprobe"]["policy_name"] == "uprobe-syms"]
    assert [(e["symbol"], "offset" in e) for e in got] == [("main", False), (inner, False)]


@pytest.mark.parametrize("operator, fires", [("In", True), ("NotIn", False)])
def test_uprobe_match_binaries(running_agent: RunningAgent, usdt_bin: Path, operator: str, fires: bool) -> None:
    """matchBinaries on a uprobe filters by the executing binary, as Tetragon's uprobe selectors
    do: In the probed binary gives its event, NotIn none."""
    spec = f"""
uprobes:
- path: "{usdt_bin}"
  symbols: [main]
  selectors:
  - matchBinaries: [{{operator: {operator}, values: ["{usdt_bin}"]}}]
"""
    with loaded(running_agent, policy_yaml("uprobe-mb", spec)):
        events = running_agent.collect(lambda: subprocess.run([str(usdt_bin), "1"], check=False))
    got = [e["process_uprobe"] for e in events
           if "process_uprobe" in e and e["process_uprobe"]["policy_name"] == "uprobe-mb"]
    assert [e["process"]["binary"] for e in got] == ([str(usdt_bin)] if fires else [])


def test_uprobe_ref_ctr_offsets_need_one_per_site(running_agent: RunningAgent, usdt_bin: Path) -> None:
    spec = f"""
uprobes:
- path: "{usdt_bin}"
  symbols: [main]
  refCtrOffsets: [1, 2]
"""
    with pytest.raises(PolicyError, match=r"spec.uprobes\[0\].refCtrOffsets: .*refCtrOffsets has 2 entries and symbols 1"):
        running_agent.agent.policies.add_text(policy_yaml("uprobe-refctr-bad", spec), "<t>")
    assert "uprobe-refctr-bad" not in [p["name"] for p in running_agent.agent.list_policies()]


def test_usdt_set_refused_with_the_reason_where_the_kernel_forbids_it(running_agent: RunningAgent,
                                                                      usdt_bin: Path) -> None:
    """Set writes the process's memory (bpf_probe_write_user): refused, naming the kernel's
    reason, on a kernel that forbids it (lockdown); the VM tier runs it."""
    ok, why = running_agent.agent.policies.has("probe_write_user")
    spec = policy_yaml("usdt-set", f"""
usdts:
- path: "{usdt_bin}"
  provider: vigil
  name: probe3
  args: [{{index: 0, type: int32}}]
  selectors:
  - matchActions: [{{action: Set, argIndex: 0, argValue: 32}}]
""")
    if ok:
        with loaded(running_agent, spec):
            p = subprocess.run([str(usdt_bin), "1", "2"])
        assert p.returncode == 32
    else:
        with pytest.raises(PolicyError, match=r"action Set .*bpf_probe_write_user.*refuses"):
            running_agent.agent.policies.add_text(spec, "<t>")


def test_notify_enforcer(running_agent: RunningAgent, pywork: Path) -> None:
    """NotifyEnforcer: the raw_syscalls hook leaves a note for the thread, the enforcer at the
    listed syscall acts on it. With argSig only, the enforcer kills at the syscall's exit (any
    kernel); argError needs fmod_ret or bpf_override_return on the syscall, else the policy is
    refused with the reason."""
    spec = f"""
lists:
- {{name: dups, type: syscalls, values: [sys_dup]}}
enforcers:
- calls: ["list:dups"]
tracepoints:
- subsystem: raw_syscalls
  event: sys_enter
  args: [{{index: 4, type: syscall64}}]
  selectors:
  - matchArgs: [{{index: 4, operator: InMap, values: ["list:dups"]}}]
    {scoped(pywork)}
    matchActions: [{{action: NotifyEnforcer, argSig: 9}}]
"""
    r = Run()
    code = ("import ctypes\nopen('{d}/before', 'w').close()\nctypes.CDLL(None).dup(1)\n"
            "open('{d}/after', 'w').close()\n").format(d=pywork / "data")
    with loaded(running_agent, policy_yaml("notify", spec)) as st:
        assert any(h["hook"].startswith("tracepoint:syscalls/sys_exit_dup") for h in st["hooks"]) or st["program_ids"]
        running_agent.collect(lambda: run_py(pywork, code, out=r))
    assert r.returncode == -9
    assert (pywork / "data" / "before").exists() and not (pywork / "data" / "after").exists()
    facts = running_agent.agent.policies.facts
    if not (facts.has("fmod_ret")[0] and facts.error_injectable("__x64_sys_dup")):
        with pytest.raises(PolicyError, match=r"enforcer that overrides __x64_sys_dup's return value"):
            running_agent.agent.policies.add_text(policy_yaml("notify-err", spec.replace(
                "argSig: 9", "argError: -1")), "<t>")


def notifying_policy(name: str, pywork: Path, hook_call: str, enforced: str, sig: int) -> str:
    return policy_yaml(name, f"""
lists:
- {{name: hooked, type: syscalls, values: [{hook_call}]}}
enforcers:
- calls: [{enforced}]
tracepoints:
- subsystem: raw_syscalls
  event: sys_enter
  args: [{{index: 4, type: syscall64}}]
  selectors:
  - matchArgs: [{{index: 4, operator: InMap, values: ["list:hooked"]}}]
    {scoped(pywork)}
    matchActions: [{{action: NotifyEnforcer, argSig: {sig}}}]
""")


def test_a_policys_notes_are_acted_on_by_its_own_enforcers_only(running_agent: RunningAgent, pywork: Path) -> None:
    """Policy A leaves a note at getppid for its enforcer at dup; policy B enforces at getpgid.
    Every policy shared one notes map, so B's enforcer took A's note at the getpgid that came
    first (Tetragon keeps an enforcer_data map per policy). SIGUSR1 is blocked in the process:
    sigpending() says after which syscall it was sent."""
    d = pywork / "data"
    code = ("import ctypes, signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
            "libc = ctypes.CDLL(None)\nlibc.getppid()\nlibc.getpgid(0)\n"
            "a = signal.SIGUSR1 in signal.sigpending()\nlibc.dup(1)\n"
            "b = signal.SIGUSR1 in signal.sigpending()\n"
            f"open('{d}/result', 'w').write(f'{{a}} {{b}}')\n")
    with loaded(running_agent, notifying_policy("notes-a", pywork, "sys_getppid", "sys_dup", 10)), \
            loaded(running_agent, notifying_policy("notes-b", pywork, "sys_getsid", "sys_getpgid", 12)):
        r = run_py(pywork, code)
    assert r.returncode == 0
    assert (d / "result").read_text() == "False True"  # not at B's getpgid; at A's dup
