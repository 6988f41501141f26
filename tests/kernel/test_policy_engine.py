"""TracingPolicy engine against the real kernel: table-driven (policy + action -> events).

Every trigger is a test-created process (a copy of the Python interpreter in a
test directory) acting on test-created files and loopback sockets; selectors
always scope to it, so Sigkill/Signal can hit nothing else.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.bpfstate import loaded_prog_ids, prog_ids_held, still_loaded
from tests.kernel.conftest import RunningAgent
from tests.policydoc import policy as policy_yaml

pytestmark = pytest.mark.kernel


@pytest.fixture
def pywork(workdir: Path) -> Path:
    py = os.path.realpath(sys.executable)
    shutil.copy2(py, workdir / "vpy")
    (workdir / "data").mkdir()
    (workdir / "data" / "present.txt").write_text("hello\n")
    os.chmod(workdir / "data", 0o777)
    return workdir


@contextmanager
def loaded(ra: RunningAgent, yaml_text: str, mode: str | None = None) -> Iterator[dict[str, Any]]:
    name = ra.agent.policies.add_text(yaml_text, "<test>", mode=mode)[0]
    try:
        yield next(p for p in ra.agent.list_policies() if p["name"] == name)
    finally:
        ra.agent.delete_policy(name)


def kernel_stats(ra: RunningAgent, name: str) -> dict[str, int]:
    """Policy `name`'s kernel counters (its list_policies() kernel_stats)."""
    return next(p for p in ra.agent.list_policies() if p["name"] == name)["kernel_stats"]


def collect_with_stats(ra: RunningAgent, name: str,
                       action: Callable[[], object]) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, int]]:
    """ra.collect(action)'s events, and policy `name`'s kernel_stats before and after it."""
    before = kernel_stats(ra, name)
    events = ra.collect(action)
    return events, before, kernel_stats(ra, name)


class Run:
    def __init__(self) -> None:
        self.pid = 0
        self.returncode: int | None = None


PY_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}


def run_py(work: Path, code: str, *, user: int | None = None, out: Run | None = None) -> Run:
    r = out or Run()
    p = subprocess.Popen([str(work / "vpy"), "-S", "-c", code], cwd=work, user=user,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=PY_ENV)
    r.pid = p.pid
    r.returncode = p.wait(60)
    return r


@contextmanager
def py_started(work: Path, code: str, *, stdout: int = subprocess.DEVNULL) -> Iterator[subprocess.Popen[bytes]]:
    """The test's copy of the interpreter running `code` in `work`, started (its stdin a pipe,
    which the code may read to wait for the test's go): killed and reaped on leaving if it
    still runs."""
    p = subprocess.Popen([str(work / "vpy"), "-S", "-c", code], cwd=work, stdin=subprocess.PIPE,
                         stdout=stdout, stderr=subprocess.DEVNULL, env=PY_ENV)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def policy_events(events: list[dict], pid: int, policy: str) -> list[tuple[str, dict]]:
    out = []
    for e in events:
        kind = next(iter(e))
        body = e[kind]
        if body.get("policy_name") == policy and body["process"].get("pid") == pid:
            out.append((kind, body))
    return out


def open_file(path: str) -> str:
    return f"import os\ntry:\n    os.close(os.open({path!r}, os.O_RDONLY))\nexcept OSError:\n    pass\n"


def openat_spec(*selectors: Sequence[str]) -> str:
    """The spec of a policy of one hook, the sys_openat syscall with its path (index 1, a
    string) as its one argument, and `selectors`, each given as its lines (path_is, scoped,
    `matchActions: [...]`, ...)."""
    return ("kprobes:\n- call: sys_openat\n  syscall: true\n  args: [{index: 1, type: string}]\n  selectors:\n"
            + "".join("  - " + "\n    ".join(lines) + "\n" for lines in selectors))


def path_is(*values: str, op: str = "Equal") -> str:
    """A selector's line: sys_openat's path (argument index 1) `op` one of `values`."""
    quoted = ", ".join(f'"{v}"' for v in values)
    return f"matchArgs: [{{index: 1, operator: {op}, values: [{quoted}]}}]"


def scoped(pywork: Path) -> str:
    """A selector's line: only the test's own copy of the interpreter."""
    return f'matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]'


OPENAT = """
kprobes:
- call: sys_openat
  syscall: true
  args:
  - {{index: 1, type: string}}
  - {{index: 2, type: int}}
  selectors:
  - matchArgs:
    - {{index: {index}, operator: {op}, values: {values}}}
"""

# (case id, matchArgs index, operator, values, path opened, flags expected to match?)
STRING_CASES = [
    ("equal-hit", 1, "Equal", '["{d}/present.txt"]', "present.txt", True),
    ("equal-miss", 1, "Equal", '["{d}/other.txt"]', "present.txt", False),
    ("notequal-hit", 1, "NotEqual", '["{d}/other.txt"]', "present.txt", True),
    ("notequal-miss", 1, "NotEqual", '["{d}/present.txt"]', "present.txt", False),
    ("prefix-hit", 1, "Prefix", '["{d}/pre"]', "present.txt", True),
    ("prefix-miss", 1, "Prefix", '["{d}/x"]', "present.txt", False),
    ("notprefix-hit", 1, "NotPrefix", '["/nonexistent-vigil"]', "present.txt", True),
    ("notprefix-miss", 1, "NotPrefix", '["{d}/"]', "present.txt", False),
    ("postfix-hit", 1, "Postfix", '["ent.txt"]', "present.txt", True),
    ("postfix-miss", 1, "Postfix", '[".log"]', "present.txt", False),
    ("notpostfix-hit", 1, "NotPostfix", '[".log"]', "present.txt", True),
    ("notpostfix-miss", 1, "NotPostfix", '["sent.txt"]', "present.txt", False),
]
INT_CASES = [  # on the open flags (O_RDONLY|O_CLOEXEC from os.open = 0x80000)
    ("int-equal-hit", 2, "Equal", '["0x80000"]', True),
    ("int-equal-miss", 2, "Equal", '["1"]', False),
    ("int-notequal-hit", 2, "NotEqual", '["1", "2"]', True),
    ("int-notequal-miss", 2, "NotEqual", '["524288"]', False),
    ("gt-hit", 2, "GT", '["100"]', True),
    ("gt-miss", 2, "GT", '["0x80000"]', False),
    ("lt-hit", 2, "LT", '["0x100000"]', True),
    ("lt-miss", 2, "LT", '["5"]', False),
    ("mask-hit", 2, "Mask", '["0x80000"]', True),
    ("mask-miss", 2, "Mask", '["0x40"]', False),
    ("inrange-hit", 2, "InRange", '["0x70000:0x90000"]', True),
    ("inrange-miss", 2, "InRange", '["0:10"]', False),
    ("notinrange-hit", 2, "NotInRange", '["0:10"]', True),
    ("notinrange-miss", 2, "NotInRange", '["0x70000:0x90000"]', False),
    ("inmap-hit", 2, "InMap", '["1", "0x80000"]', True),
    ("inmap-miss", 2, "InMap", '["1", "2"]', False),
    ("notinmap-hit", 2, "NotInMap", '["1", "2"]', True),
    ("notinmap-miss", 2, "NotInMap", '["0x80000"]', False),
]


@pytest.mark.parametrize("case, index, op, values, opened, hit", STRING_CASES, ids=[c[0] for c in STRING_CASES])
def test_string_operators(running_agent: RunningAgent, pywork: Path, case, index, op, values, opened, hit):
    d = str(pywork / "data")
    spec = OPENAT.format(index=index, op=op, values=values.format(d=d))
    # keep the hook scoped to this test's binary so other processes never match
    spec = spec.replace("  - matchArgs:", f"  - matchBinaries:\n    - {{operator: In, values: [\"{pywork}/vpy\"]}}\n    matchArgs:")
    r = Run()
    with loaded(running_agent, policy_yaml(f"str-{case}", spec)):
        events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/{opened}"), out=r))
    got = [b for k, b in policy_events(events, r.pid, f"str-{case}")
           if b["args"][0]["string_arg"] == f"{d}/{opened}"]
    assert bool(got) == hit, got
    if hit:
        body = got[0]
        assert body["function_name"] == "__x64_sys_openat"
        assert body["action"] == "KPROBE_ACTION_POST"
        assert body["args"][1]["int_arg"] & 0x80000
        assert body["parent"]["pid"] == os.getpid()


@pytest.mark.parametrize("case, index, op, values, hit", INT_CASES, ids=[c[0] for c in INT_CASES])
def test_integer_operators(running_agent: RunningAgent, pywork: Path, case, index, op, values, hit):
    d = str(pywork / "data")
    spec = OPENAT.format(index=index, op=op, values=values)
    spec = spec.replace("    - {index: 2", f"    - {{index: 1, operator: Prefix, values: [\"{d}/\"]}}\n    - {{index: 2")
    r = Run()
    with loaded(running_agent, policy_yaml(f"int-{case}", spec)):
        events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), out=r))
    got = policy_events(events, r.pid, f"int-{case}")
    assert bool(got) == hit, got


# lseek offsets the test passes (as u64; the syscall gets them as the same 64 bits), on either
# side of 2^63: where signed and unsigned order part
U64 = (0, 1, 2**63 - 1, 2**63, 2**63 + 1, 0xFFFFFFFF81000000, 2**64 - 2, 2**64 - 1)
HIGH = {2**63, 2**63 + 1, 0xFFFFFFFF81000000, 2**64 - 2, 2**64 - 1}   # negative as s64
ORDER_CASES = [
    # (id, argument type, operator, values, the offsets (u64) that match)
    ("u64-gt-top-of-s64", "uint64", "GT", '["9223372036854775807"]', HIGH),
    ("u64-gt-max-minus-1", "uint64", "GT", '["18446744073709551614"]', {2**64 - 1}),
    ("u64-lt-2p63", "uint64", "LT", '["9223372036854775808"]', {0, 1, 2**63 - 1}),
    ("u64-lt-max", "uint64", "LessThan", '["18446744073709551615"]', set(U64) - {2**64 - 1}),
    ("ulong-gt-kernel-base", "ulong", "GT", '["0xffffffff80000000"]', {0xFFFFFFFF81000000, 2**64 - 2, 2**64 - 1}),
    ("ulong-inrange-across-2p63", "ulong", "InRange", '["0x7fffffffffffffff:0xffffffff81000000"]',
     {2**63 - 1, 2**63, 2**63 + 1, 0xFFFFFFFF81000000}),
    ("sizet-inrange-across-2p63", "size_t", "InRange", '["9223372036854775807:9223372036854775809"]',
     {2**63 - 1, 2**63, 2**63 + 1}),
    ("u64-notinrange-inner", "uint64", "NotInRange", '["1:0xfffffffffffffffe"]', {0, 2**64 - 1}),
    ("s64-lt-zero", "int64", "LT", '["0"]', HIGH),
    ("s64-gt-minus-2", "int64", "GreaterThan", '["-2"]', {0, 1, 2**63 - 1, 2**64 - 1}),
    ("s64-inrange-around-zero", "int64", "InRange", '["-2:1"]', {2**64 - 2, 2**64 - 1, 0, 1}),
    ("long-notinrange-negatives", "long", "NotInRange", '["-9223372036854775808:-1"]', {0, 1, 2**63 - 1}),
]
ODD_WHENCE = 77  # no lseek whence: the call fails with EINVAL before it looks at the offset


@pytest.mark.parametrize("case, atype, op, values, hits", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_integer_order_follows_the_arguments_signedness(running_agent: RunningAgent, pywork: Path,
                                                        case, atype, op, values, hits):
    """GT, LT and the ranges on a 64-bit argument: unsigned types order values of 2^63 and
    above above 2^63 - 1 (kernel addresses, 2^64 - 1), signed types order them below 0; the
    reference evaluator decides each call the same."""
    from vigil.policy.evaluate import Call, HookRules, Process, decide
    from vigil.policy.loader import parse_policies

    spec = f"""
kprobes:
- call: sys_lseek
  syscall: true
  args: [{{index: 1, type: {atype}}}, {{index: 2, type: int}}]
  selectors:
  - matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
    matchArgs:
    - {{index: 2, operator: Equal, values: ["{ODD_WHENCE}"]}}
    - {{index: 1, operator: {op}, values: {values}}}
"""
    name = f"order-{case}"
    text = policy_yaml(name, spec)
    kp = parse_policies(text)[0].spec.kprobes[0]
    rules = HookRules(kp.args, kp.selectors)
    proc = Process(binary=f"{pywork}/vpy")
    assert {v for v in U64 if decide(rules, proc, Call((v, ODD_WHENCE))).matched} == hits
    offsets = [v - 2**64 if v >= 2**63 else v for v in U64]  # os.lseek takes a signed off_t
    code = ("import os\nfd = os.open('/dev/null', os.O_RDONLY)\n"
            f"for off in {offsets!r}:\n    try: os.lseek(fd, off, {ODD_WHENCE})\n    except OSError: pass\n")
    r = Run()
    with loaded(running_agent, text):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    got = [b["args"][0] for _, b in policy_events(events, r.pid, name)]
    key = "long_arg" if atype in ("int64", "long") else "size_arg"
    assert all(set(a) <= {key} for a in got), got
    assert sorted(int(a[key]) & (2**64 - 1) for a in got) == sorted(hits)


def test_non_matching_events_cost_no_record(running_agent: RunningAgent, pywork: Path):
    d = str(pywork / "data")
    spec = OPENAT.format(index=1, op="Equal", values=f'["{d}/never-opened"]')
    r = Run()
    code = (f"import os\nfor i in range(500):\n    try: os.close(os.open('{d}/present.txt', os.O_RDONLY))\n"
            "    except OSError: pass\n")
    with loaded(running_agent, policy_yaml("never-matches", spec)):
        rb_before = running_agent.agent.status()["ringbuf"]["rings"][1]["records"]  # the policy ring
        events, before, after = collect_with_stats(running_agent, "never-matches", lambda: run_py(pywork, code, out=r))
    assert policy_events(events, r.pid, "never-matches") == []
    assert after["hits"] - before["hits"] >= 500
    assert after["filtered"] - before["filtered"] >= 500
    # nothing else happened to them: no record made, none rate-limited or failed (hits and
    # filtered themselves are read one after the other while other processes' opens go on)
    assert after["posted"] == before["posted"] == 0
    assert all(after[k] == before[k] for k in ("ratelimited", "errors", "pending_full"))
    # and the policy ring saw no record at all
    assert running_agent.agent.status()["ringbuf"]["rings"][1]["records"] == rb_before


SELECTOR_CASES = [
    # (id, selector yaml (uses {d}, {bin}, {pid}), run as user, expected hit)
    ("binaries-in", 'matchBinaries: [{{operator: In, values: ["{bin}"]}}]', None, True),
    ("binaries-notin", 'matchBinaries: [{{operator: NotIn, values: ["{bin}"]}}]', None, False),
    ("binaries-prefix", 'matchBinaries: [{{operator: Prefix, values: ["{work}/"]}}]', None, True),
    ("binaries-notprefix", 'matchBinaries: [{{operator: NotPrefix, values: ["{work}/"]}}]', None, False),
    ("binaries-postfix", 'matchBinaries: [{{operator: Postfix, values: ["/vpy"]}}]', None, True),
    ("binaries-notpostfix", 'matchBinaries: [{{operator: NotPostfix, values: ["/vpy"]}}]', None, False),
    ("pids-follow", 'matchPIDs: [{{operator: In, followForks: true, values: [{pid}]}}]', None, True),
    ("pids-nofollow", 'matchPIDs: [{{operator: In, values: [{pid}]}}]', None, False),
    ("pids-notin", 'matchPIDs: [{{operator: NotIn, values: [{pid}]}}]', None, True),
    ("ns-mnt-host", 'matchNamespaces: [{{namespace: Mnt, operator: In, values: ["host_ns"]}}]', None, True),
    ("ns-mnt-nothost", 'matchNamespaces: [{{namespace: Mnt, operator: NotIn, values: ["host_ns"]}}]', None, False),
    ("caps-admin-root", 'matchCapabilities: [{{type: Effective, operator: In, values: ["CAP_SYS_ADMIN"]}}]', None, True),
    ("caps-admin-nobody", 'matchCapabilities: [{{type: Effective, operator: In, values: ["CAP_SYS_ADMIN"]}}]', 65534, False),
    ("caps-notin-nobody", 'matchCapabilities: [{{type: Effective, operator: NotIn, values: ["CAP_SYS_ADMIN"]}}]', 65534, True),
]


@pytest.mark.parametrize("case, sel, user, hit", SELECTOR_CASES, ids=[c[0] for c in SELECTOR_CASES])
def test_process_selectors(running_agent: RunningAgent, pywork: Path, case, sel, user, hit,  # type: ignore[no-untyped-def]
                           others_can_resolve_paths: None):
    d = str(pywork / "data")
    sel = sel.format(d=d, bin=pywork / "vpy", work=pywork, pid=os.getpid())
    spec = openat_spec([path_is(f"{d}/present.txt"), sel])
    r = Run()
    with loaded(running_agent, policy_yaml(f"sel-{case}", spec)):
        events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), user=user, out=r))
    assert bool(policy_events(events, r.pid, f"sel-{case}")) == hit


def test_selectors_or_first_match_wins(running_agent: RunningAgent, pywork: Path):
    d = str(pywork / "data")
    spec = openat_spec([path_is(f"{d}/nothing"), "matchActions: [{action: Sigkill}]"],
                       [path_is(f"{d}/present.txt"), scoped(pywork), "matchActions: [{action: Post}]"])
    r = Run()
    with loaded(running_agent, policy_yaml("or-selectors", spec)):
        events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), out=r))
    assert r.returncode == 0
    (ev,) = [b for _, b in policy_events(events, r.pid, "or-selectors")]
    assert ev["action"] == "KPROBE_ACTION_POST"


def test_change_selectors(running_agent: RunningAgent, pywork: Path):
    d = str(pywork / "data")
    spec = openat_spec([path_is(f"{d}/present.txt"), "matchNamespaceChanges: [{operator: In, values: [Uts]}]"],
                       [path_is(f"{d}/present.txt"),
                        'matchCapabilityChanges: [{type: Effective, operator: In, values: ["CAP_SYS_ADMIN"]}]'])
    unshare = ("import ctypes, os\nctypes.CDLL(None).unshare(0x04000000)\n" + open_file(f"{d}/present.txt"))
    dropcaps = ("import os\nos.setgid(65534); os.setuid(65534)\n" + open_file(f"{d}/present.txt"))
    plain = open_file(f"{d}/present.txt")
    runs = {k: Run() for k in ("unshare", "dropcaps", "plain")}
    with loaded(running_agent, policy_yaml("changes", spec)):
        events = running_agent.collect(lambda: (run_py(pywork, unshare, out=runs["unshare"]),
                                                run_py(pywork, dropcaps, out=runs["dropcaps"]),
                                                run_py(pywork, plain, out=runs["plain"])))
    assert policy_events(events, runs["unshare"].pid, "changes")
    assert policy_events(events, runs["dropcaps"].pid, "changes")
    assert not policy_events(events, runs["plain"].pid, "changes")


def test_notin_change_selectors_need_another_change(running_agent: RunningAgent, pywork: Path):
    """NotIn of matchNamespaceChanges / matchCapabilityChanges: a change outside the list (as
    Tetragon); a process where nothing changed, or only a listed one, is no match."""
    d = str(pywork / "data")
    spec = openat_spec([path_is(f"{d}/present.txt"), "matchNamespaceChanges: [{operator: NotIn, values: [Uts]}]"],
                       [path_is(f"{d}/present.txt"),
                        'matchCapabilityChanges: [{type: Effective, operator: NotIn, values: ["CAP_SYS_ADMIN"]}]'])
    code = {
        "plain": open_file(f"{d}/present.txt"),
        "uts": "import ctypes\nctypes.CDLL(None).unshare(0x04000000)\n" + open_file(f"{d}/present.txt"),
        "ipc": "import ctypes\nctypes.CDLL(None).unshare(0x08000000)\n" + open_file(f"{d}/present.txt"),
        # every capability but CAP_SYS_ADMIN dropped from the effective set (capset, v3)
        "caps": ("import ctypes\nhdr = (ctypes.c_uint32 * 2)(0x20080522, 0)\n"
                 "data = (ctypes.c_uint32 * 6)()\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 "assert libc.capget(hdr, data) == 0\ndata[0] &= 1 << 21; data[3] = 0\n"
                 "assert libc.capset(hdr, data) == 0, ctypes.get_errno()\n" + open_file(f"{d}/present.txt")),
    }
    runs = {k: Run() for k in code}
    with loaded(running_agent, policy_yaml("notin-changes", spec)):
        events = running_agent.collect(lambda: [run_py(pywork, c, out=runs[k]) for k, c in code.items()])
    got = {k: bool(policy_events(events, r.pid, "notin-changes")) for k, r in runs.items()}
    assert got == {"plain": False, "uts": False, "ipc": True, "caps": True}, got


def test_namespace_pid_is_the_processs_from_any_of_its_threads(running_agent: RunningAgent, pywork: Path):
    """isNamespacePID compares the process's pid in its pid namespace, also when another of its
    threads makes the call; followForks takes its children too."""
    d = str(pywork / "data")
    spec = openat_spec([path_is(f"{d}/present.txt"),
                        "matchPIDs: [{operator: In, values: [1], isNamespacePID: true, followForks: true}]"])
    code = ("import ctypes, os, sys, threading\n"
            "assert ctypes.CDLL(None).unshare(0x20000000) == 0\n"   # CLONE_NEWPID: the next child is pid 1
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    " + open_file(f"{d}/present.txt").replace("\n", "\n    ") + "\n"
            "    t = threading.Thread(target=lambda: open('" + d + "/present.txt').close()); t.start(); t.join()\n"
            "    c = os.fork()\n"
            "    if c == 0:\n"
            "        open('" + d + "/present.txt').close(); os._exit(0)\n"
            "    os.waitpid(c, 0); os._exit(0)\n"
            "os.waitpid(pid, 0)\n"
            "print(pid, file=sys.stderr)\n")
    r = Run()
    with loaded(running_agent, policy_yaml("nspid", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    hits = [b for e in events for k, b in e.items() if k == "process_kprobe" and b.get("policy_name") == "nspid"]
    # pid 1's own open, its second thread's, and its child's (followForks)
    assert len(hits) == 3, hits


def test_return_value_and_matchreturnargs(running_agent: RunningAgent, pywork: Path):
    d = str(pywork / "data")
    spec = f"""
kprobes:
- call: sys_openat
  syscall: true
  return: true
  args: [{{index: 1, type: string}}]
  returnArg: {{index: 0, type: int}}
  selectors:
  - matchArgs: [{{index: 1, operator: Prefix, values: ["{d}/"]}}]
    matchReturnArgs: [{{index: 0, operator: LT, values: ["0"]}}]
"""
    r = Run()
    code = open_file(f"{d}/missing.txt") + open_file(f"{d}/present.txt")
    with loaded(running_agent, policy_yaml("ret-lt0", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    got = [b for _, b in policy_events(events, r.pid, "ret-lt0")]
    assert [b["args"][0]["string_arg"] for b in got] == [f"{d}/missing.txt"]
    assert got[0]["return"] == {"int_arg": -2}  # ENOENT


def test_argument_types_fd_charbuf_sockaddr(running_agent: RunningAgent, pywork: Path):
    d = str(pywork / "data")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    spec = f"""
kprobes:
- call: sys_write
  syscall: true
  args:
  - {{index: 0, type: fd, label: target}}
  - {{index: 1, type: char_buf, sizeArgIndex: 3}}
  - {{index: 2, type: size_t}}
  selectors:
  - matchArgs: [{{index: 0, operator: Prefix, values: ["{d}/"]}}]
- call: sys_connect
  syscall: true
  args: [{{index: 1, type: sockaddr}}]
  selectors:
  - matchArgs:
    - {{index: 1, operator: Family, values: [AF_INET]}}
    - {{index: 1, operator: SAddr, values: ["127.0.0.0/8"]}}
    - {{index: 1, operator: SPort, values: ["{port}"]}}
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
"""
    code = (f"import os, socket\nfd = os.open('{d}/out.txt', os.O_WRONLY|os.O_CREAT, 0o644)\n"
            f"os.write(fd, b'vigil-payload')\nos.close(fd)\n"
            f"s = socket.socket(); s.connect(('127.0.0.1', {port})); s.close()\n")
    r = Run()
    try:
        with loaded(running_agent, policy_yaml("types", spec)):
            events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    finally:
        srv.close()
    got = {b["function_name"]: b for _, b in policy_events(events, r.pid, "types")}
    w = got["__x64_sys_write"]
    mode = stat.filemode(os.stat(f"{d}/out.txt").st_mode)  # the written file's, as `ls -l` shows it
    assert w["args"][0] == {"file_arg": {"path": f"{d}/out.txt", "permission": mode}, "label": "target"}
    assert w["args"][1] == {"bytes_arg": "dmlnaWwtcGF5bG9hZA=="}
    assert w["args"][2] == {"size_arg": "13"}
    c = got["__x64_sys_connect"]
    assert c["args"][0] == {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": port}}


def test_tracepoint_and_raw_syscalls_inmap_list(running_agent: RunningAgent, pywork: Path):
    spec = f"""
lists:
- name: dups
  type: syscalls
  values: ["sys_dup", "sys_dup2", "sys_dup3"]
tracepoints:
- subsystem: raw_syscalls
  event: sys_enter
  args: [{{index: 4, type: syscall64}}]
  selectors:
  - matchArgs: [{{index: 4, operator: InMap, values: ["list:dups"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
"""
    r = Run()
    with loaded(running_agent, policy_yaml("tp-dups", spec)):
        events = running_agent.collect(lambda: run_py(pywork, "import os\nos.dup2(1, 57)\n", out=r))
    got = [b for k, b in policy_events(events, r.pid, "tp-dups")]
    assert got and all(k for k in got)
    assert got[0]["subsys"] == "raw_syscalls" and got[0]["event"] == "sys_enter"
    assert got[0]["args"][0] == {"syscall_id": {"id": 33, "abi": "x64"}}


def uprobe_target(pywork: Path) -> str:
    """A test binary with a function to probe, and the uprobe policy spec on it."""
    cc = shutil.which("clang") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler: `make` installs clang")
    src = pywork / "target.c"
    src.write_text("int __attribute__((noinline)) vigil_target(int a, int b) { return a + b; }\n"
                   "int main(int c, char **v) { return vigil_target(c, 41) == 42 ? 0 : 1; }\n")
    subprocess.run([cc, "-O1", "-g", "-o", str(pywork / "target"), str(src)], check=True)
    return f"""
uprobes:
- path: "{pywork}/target"
  symbols: [vigil_target]
  args: [{{index: 0, type: int}}, {{index: 1, type: int}}]
"""


def run_target(pywork: Path, r: Run) -> None:
    p = subprocess.Popen([str(pywork / "target")])
    r.pid = p.pid
    r.returncode = p.wait()


def test_uprobe_on_test_binary(running_agent: RunningAgent, pywork: Path):
    spec = uprobe_target(pywork)
    r = Run()
    with loaded(running_agent, policy_yaml("uprobe-target", spec)):
        events = running_agent.collect(lambda: run_target(pywork, r))
    (ev,) = [b for k, b in policy_events(events, r.pid, "uprobe-target") if k == "process_uprobe"]
    assert ev["path"] == f"{pywork}/target" and ev["symbol"] == "vigil_target"
    assert ev["args"] == [{"int_arg": 1}, {"int_arg": 41}]
    assert "offset" not in ev  # Tetragon's offset is the policy's: 0 for a symbol


def test_uprobe_at_an_offset_reports_the_offset(running_agent: RunningAgent, pywork: Path):
    """offsets: the event names no symbol and carries the policy's offset (a uint64: a string)."""
    from vigil.kernel.elfsym import func_offset

    uprobe_target(pywork)
    off = func_offset(str(pywork / "target"), "vigil_target")
    spec = f'uprobes:\n- path: "{pywork}/target"\n  offsets: [{off:#x}]\n  args: [{{index: 1, type: int}}]\n'
    r = Run()
    with loaded(running_agent, policy_yaml("uprobe-offset", spec)):
        events = running_agent.collect(lambda: run_target(pywork, r))
    (ev,) = [b for k, b in policy_events(events, r.pid, "uprobe-offset") if k == "process_uprobe"]
    assert "symbol" not in ev and ev["offset"] == str(off) and ev["args"] == [{"int_arg": 41}]


@pytest.mark.parametrize("ret, want", [
    ("", [{"int_arg": 1}, {"int_arg": 41}]),
    ("return: true\nreturnArg: {index: 0, type: int}", [{"int_arg": 1}, {"int_arg": 41}, {"int_arg": 42}]),
    ("return: true\nreturnArg: {index: 0, type: uint64, label: sum}",
     [{"int_arg": 1}, {"int_arg": 41}, {"size_arg": "42", "label": "sum"}]),
], ids=["entry", "return-int", "return-labelled"])
def test_uprobe_return_value_follows_the_arguments(running_agent: RunningAgent, pywork: Path, ret: str,
                                                   want: list[dict]):
    """return: true with returnArg: one event, at the return, with the function's return value
    after the entry's arguments, as Tetragon merges its uretprobe into the uprobe event."""
    spec = uprobe_target(pywork) + textwrap.indent(ret, "  ") + "\n"
    r = Run()
    with loaded(running_agent, policy_yaml("uprobe-ret", spec)):
        events = running_agent.collect(lambda: run_target(pywork, r))
    (ev,) = [b for k, b in policy_events(events, r.pid, "uprobe-ret") if k == "process_uprobe"]
    assert ev["args"] == want



# a function whose second instruction is at +1 (after a one-byte nop), still with both arguments in registers
ASM_TARGET_C = r"""
__asm__(".text\n.globl vigil_asm\n.type vigil_asm,@function\nvigil_asm:\n nop\n lea (%rdi,%rsi),%eax\n ret\n"
        ".size vigil_asm, .-vigil_asm\n");
int vigil_asm(int a, int b);
int main(int c, char **v) { return vigil_asm(c, 41) == 42 ? 0 : 1; }
"""


@pytest.mark.parametrize("symbol, error", [
    ("vigil_asm+1", None),
    ("vigil_asm+0x1", None),
    ("vigil_asm+64", r"symbols\[0\].*offset 0x40 is out of range of function 'vigil_asm'"),
    ("vigil_asm+1+2", r"symbols\[0\].*wrong symbol 'vigil_asm\+1\+2'"),
    ("vigil_asm+x", r"symbols\[0\].*wrong offset 'x'"),
], ids=["decimal", "hex", "out-of-range", "two-offsets", "bad-offset"])
def test_uprobe_symbol_plus_offset(running_agent: RunningAgent, pywork: Path, symbol: str, error: str | None):
    """symbols: ["func+OFFSET"] probes OFFSET bytes into func, as Tetragon's; the event names
    the symbol as written (and no offset). A bad one is refused naming the symbol's field."""
    from vigil.core.errors import PolicyError

    cc = shutil.which("clang") or shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler: `make` installs clang")
    (pywork / "asm.c").write_text(ASM_TARGET_C)
    subprocess.run([cc, "-O1", "-o", str(pywork / "target"), str(pywork / "asm.c")], check=True)
    spec = f'uprobes:\n- path: "{pywork}/target"\n  symbols: ["{symbol}"]\n  args: [{{index: 1, type: int}}]\n'
    if error is not None:
        with pytest.raises(PolicyError, match=error):
            running_agent.agent.policies.add_text(policy_yaml("uprobe-symoff", spec), "<t>")
        assert "uprobe-symoff" not in running_agent.agent.policies.policies
        return
    r = Run()
    with loaded(running_agent, policy_yaml("uprobe-symoff", spec)):
        events = running_agent.collect(lambda: run_target(pywork, r))
    assert r.returncode == 0
    (ev,) = [b for k, b in policy_events(events, r.pid, "uprobe-symoff") if k == "process_uprobe"]
    assert ev["symbol"] == symbol and "offset" not in ev and ev["args"] == [{"int_arg": 41}]

def test_a_uprobe_run_never_uses_buffers_another_run_holds(running_agent: RunningAgent, pywork: Path):
    """Uprobe programs run preemptibly: a run that finds this CPU's buffers held by another
    (preempted) run does nothing and is counted `busy`, instead of writing over them. Here the
    flag is held on every CPU from user space, as a preempted run would hold it on one."""
    import struct

    spec = uprobe_target(pywork)
    held, free = Run(), Run()
    with loaded(running_agent, policy_yaml("uprobe-busy", spec)):
        (gh,) = running_agent.agent.policies.policies["uprobe-busy"].hooks
        busy = gh.obj.map("gen_busy")
        key = struct.pack("<I", 0)
        n = len(busy.lookup_percpu(key))
        try:
            busy.update(key, struct.pack("<Q", 1) * n)
            events = running_agent.collect(lambda: run_target(pywork, held))
        finally:
            busy.update(key, struct.pack("<Q", 0) * n)
        assert held.returncode == 0 and not policy_events(events, held.pid, "uprobe-busy")
        assert gh.stats()["busy"] == 1 and gh.stats()["hits"] == 0, gh.stats()
        events = running_agent.collect(lambda: run_target(pywork, free))
    assert [k for k, _ in policy_events(events, free.pid, "uprobe-busy")] == ["process_uprobe"]


ACTION_CASES = [
    # (id, actions yaml, expected returncode, expected events for 3 opens, expected action name)
    ("post", "[{action: Post}]", 0, 3, "KPROBE_ACTION_POST"),
    ("nopost", "[{action: NoPost}]", 0, 0, None),
    ("sigkill", "[{action: Sigkill}]", -9, 1, "KPROBE_ACTION_SIGKILL"),
    ("signal", "[{action: Signal, argSig: 10}]", -10, 1, "KPROBE_ACTION_SIGNAL"),
    ("sigkill-nopost", "[{action: Sigkill}, {action: NoPost}]", -9, 0, None),
    # a Post does not undo a NoPost of the same list, before or after it (Tetragon's rule)
    ("nopost-post", "[{action: NoPost}, {action: Post}]", 0, 0, None),
    ("post-nopost", "[{action: Post}, {action: NoPost}]", 0, 0, None),
    ("signal-nopost-post", "[{action: Signal, argSig: 10}, {action: NoPost}, {action: Post}]", -10, 0, None),
    ("ratelimit", '[{action: Post, rateLimit: "1m"}]', 0, 1, "KPROBE_ACTION_POST"),
    ("followfd", "[{action: FollowFD, argFd: 0, argName: 1}]", 0, 3, "KPROBE_ACTION_FOLLOWFD"),
    # the event names the last action run, as Tetragon's (its BPF sets it at every action,
    # Post included): the enforcement still happens
    ("sigkill-post", "[{action: Sigkill}, {action: Post}]", -9, 1, "KPROBE_ACTION_POST"),
    ("post-sigkill", "[{action: Post}, {action: Sigkill}]", -9, 1, "KPROBE_ACTION_SIGKILL"),
    ("signal-post", "[{action: Signal, argSig: 10}, {action: Post}]", -10, 1, "KPROBE_ACTION_POST"),
]


@pytest.mark.parametrize("case, actions, rc, nevents, action", ACTION_CASES, ids=[c[0] for c in ACTION_CASES])
def test_actions(running_agent: RunningAgent, pywork: Path, case, actions, rc, nevents, action):
    d = str(pywork / "data")
    spec = openat_spec([path_is(f"{d}/present.txt"), scoped(pywork), f"matchActions: {actions}"])
    bystander = Run()
    r = Run()
    code = open_file(f"{d}/present.txt") * 3  # three identical opens: rate limit keeps one
    with loaded(running_agent, policy_yaml(f"act-{case}", spec)):
        events = running_agent.collect(lambda: (
            run_py(pywork, code, out=r),
            # a process outside the policy's scope (other binary) doing the same open is untouched
            setattr(bystander, "returncode", subprocess.run(["cat", f"{d}/present.txt"],
                                                            stdout=subprocess.DEVNULL).returncode)))
    assert r.returncode == rc
    assert bystander.returncode == 0
    got = [b for _, b in policy_events(events, r.pid, f"act-{case}")]
    assert len(got) == nevents, got
    if action:
        assert got[0]["action"] == action
        assert got[0]["return_action"] == "KPROBE_ACTION_POST"  # always there, as Tetragon's
    if action in ("KPROBE_ACTION_SIGKILL", "KPROBE_ACTION_SIGNAL"):
        # enforcement explains itself: selector, matched values, mechanism, action
        msg = got[0]["message"]
        assert "selector 1" in msg and "present.txt" in msg
        assert "enforced via tracepoint:syscalls/sys_enter_openat" in msg


def test_imahash_outside_lsmhooks_is_ignored(running_agent: RunningAgent, pywork: Path):
    """Post's imaHash adds the file's hash to ProcessLsm events; Tetragon loads it on any other
    hook too, where it has nothing to add it to. Vigil refused such a policy ('imaHash is only
    supported on lsmhooks'); it is now loaded with a warning and its events are sent."""
    d = str(pywork / "data")
    spec = openat_spec([path_is(f"{d}/present.txt"), scoped(pywork), "matchActions: [{action: Post, imaHash: true}]"])
    r = Run()
    with loaded(running_agent, policy_yaml("imahash-kprobe", spec)):
        events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), out=r))
    (ev,) = [b for _, b in policy_events(events, r.pid, "imahash-kprobe")]
    assert ev["action"] == "KPROBE_ACTION_POST" and "ima_hash" not in ev


def test_monitor_mode_reports_without_killing(running_agent: RunningAgent, pywork: Path):
    d = str(pywork / "data")
    spec = openat_spec([path_is(f"{d}/present.txt"), scoped(pywork), "matchActions: [{action: Sigkill}]"])
    r = Run()
    with loaded(running_agent, policy_yaml("monitor-kill", spec), mode="monitor") as st:
        assert st["mode"] == "monitor"
        events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), out=r))
    assert r.returncode == 0
    (ev,) = [b for _, b in policy_events(events, r.pid, "monitor-kill")]
    assert ev["action"] == "KPROBE_ACTION_SIGKILL"
    assert "monitor mode: reported, not enforced" in ev["message"]


UDP_SENDER = """import socket, sys
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.bind(("127.0.0.1", 0))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sys.stdin.buffer.read(1)
for _ in range(20):
    s.sendto(b"x", r.getsockname())
    r.recv(16)
"""


def action_counters(ra: RunningAgent, name: str) -> dict[str, int]:
    """Policy `name`'s action counters (ListTracingPolicies' stats.action_counters), the taken ones."""
    listed = next(p for p in ra.agent.list_policies() if p["name"] == name)
    return {k: n for k, n in listed["stats"]["action_counters"].items() if n}


USER_SPINNER = """import sys, time
sys.stdin.buffer.read(1)
end = time.monotonic() + 1.0
while time.monotonic() < end:  # in user mode (vDSO clock) while the ticks come
    pass
"""


# (id, the child, the hook: subsystem/event with its args, actions, the counter they count in)
INTERRUPT_CASES = [
    # net/netif_receive_skb fires while the kernel serves the NET_RX softirq; a loopback send
    # serves it on the sender's way out of the send (local_bh_enable), on the softirq stack
    ("send-softirq-sigkill", UDP_SENDER, "net/netif_receive_skb", "{index: 5, type: uint32}",
     "[{action: Sigkill}]", "signal"),
    ("send-softirq-signal", UDP_SENDER, "net/netif_receive_skb", "{index: 5, type: uint32}",
     "[{action: Signal, argSig: 10}]", "signal"),
    # no note for the sender's sendto either
    ("send-softirq-notify-enforcer", UDP_SENDER, "net/netif_receive_skb", "{index: 5, type: uint32}",
     "[{action: NotifyEnforcer, argSig: 9}]", "notify_enforcer"),
    # an interrupt that arrives while the CPU runs user code is served on the interrupted task's
    # own (empty) kernel stack on x86-64, and so are the softirqs served on its way out (the
    # tick's TIMER softirq here; under load also a NET_RX a busy net_rx_action left pending)
    ("tick-of-user-mode", USER_SPINNER, "irq_vectors/local_timer_entry", "{index: 0, type: int}",
     "[{action: Signal, argSig: 10}]", "signal"),
    ("timer-softirq-of-user-mode", USER_SPINNER, "irq/softirq_entry", "{index: 0, type: int}",
     "[{action: Signal, argSig: 10}]", "signal"),
]


@pytest.mark.parametrize("child, hook, arg, actions, counter", [c[1:] for c in INTERRUPT_CASES],
                         ids=[c[0] for c in INTERRUPT_CASES])
def test_enforcement_in_interrupt_context_spares_the_interrupted_task(running_agent: RunningAgent, pywork: Path,
                                                                       child: str, hook: str, arg: str,
                                                                       actions: str, counter: str):
    """In interrupt context `current` is whichever task was interrupted, without the event
    being any act of it. Sigkill/Signal acted on it: the sender died; telling interrupt context
    by the stack a run's frame lies on took what interrupts user mode for the task's (the
    spinning task was signalled for its ticks). They are now not done, told by the preempt
    count (counted as not_task); the event is still sent. The action counters count each as
    taken, as Tetragon's (which count every enforce-mode match): they left such a skipped
    action out."""
    subsystem, event = hook.split("/")
    enforcers = "enforcers:\n- calls: [sys_sendto]\n" if counter == "notify_enforcer" else ""
    with py_started(pywork, child) as p:
        spec = f"""{enforcers}
tracepoints:
- subsystem: {subsystem}
  event: {event}
  args: [{arg}]
  selectors:
  - matchPIDs: [{{operator: In, values: [{p.pid}]}}]
    matchActions: {actions}
"""
        with loaded(running_agent, policy_yaml("irq-kill", spec)) as st:
            def go() -> None:
                assert p.stdin is not None
                p.stdin.write(b"g")
                p.stdin.close()
                p.wait(60)
            events = running_agent.collect(go)
            kstats = kernel_stats(running_agent, st["name"])
            counted = action_counters(running_agent, st["name"])
    got = [b for _, b in policy_events(events, p.pid, "irq-kill")]
    assert got, f"no {hook} in the child's context"
    assert p.returncode == 0, (p.returncode, kstats)
    assert kstats["not_task"] >= len(got) and kstats["signals"] == 0, kstats
    # each match took its action (and posted its event), though none was done
    assert counted == {"post": counted["post"], counter: counted["post"]} and counted["post"] >= len(got), counted


TRACKED_SOCK_SHARER = """import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
sys.stdin.buffer.read(1)
s.sendto(b"a", s.getsockname())
s.sendto(b"b", s.getsockname())
c = os.fork()
if c == 0:
    s.recv(16)
    os._exit(0)
_, st = os.waitpid(c, 0)
sys.stdout.write(f"{c} {st}\\n")
sys.stdout.flush()
s.recv(16)
"""


@pytest.mark.skipif(not Path("/sys/kernel/tracing/events/sock/sock_recv_length").exists(),
                    reason="no sock:sock_send_length/sock_recv_length tracepoints (kernel < 6.4)")
@pytest.mark.parametrize("actions, sig", [("[{action: Sigkill}]", 9), ("[{action: Signal, argSig: 10}]", 10)])
def test_enforcement_on_a_tracked_socket_spares_another_process(running_agent: RunningAgent, pywork: Path,
                                                                actions: str, sig: int):
    """TrackSock makes a socket's events its owner's (Tetragon's rule): the event names the owner
    whichever process handles the socket. Sigkill/Signal then acted on `current`: a child handling
    its parent's tracked socket was killed for an event reported as the parent's. They are now
    done only when `current` is the event's process: the child lives (counted as not_owner, the
    event says it was not enforced), the owner handling its own socket is killed."""
    with py_started(pywork, TRACKED_SOCK_SHARER, stdout=subprocess.PIPE) as p:
        spec = f"""
tracepoints:
- subsystem: sock
  event: sock_send_length
  raw: true
  args: [{{index: 0, type: sock}}]
  selectors:
  - matchPIDs: [{{operator: In, values: [{p.pid}]}}]
    matchActions: [{{action: TrackSock, argSock: 0}}, {{action: NoPost}}]
- subsystem: sock
  event: sock_recv_length
  raw: true
  args: [{{index: 0, type: sock}}]
  selectors:
  - matchPIDs: [{{operator: In, values: [{p.pid}]}}]
    matchActions: {actions}
"""
        out = b""
        with loaded(running_agent, policy_yaml("tracksock-kill", spec)) as st:
            def go() -> None:
                nonlocal out
                out, _ = p.communicate(b"g", 60)
            events = running_agent.collect(go)
            kstats = kernel_stats(running_agent, st["name"])
            counted = action_counters(running_agent, st["name"])
    child, status = (int(x) for x in out.split())
    assert status == 0, f"the child handling the tracked socket ended with wait status {status}"
    assert p.returncode == -sig, (kstats, [b.get("message") for _, b in policy_events(events, p.pid, "tracksock-kill")])
    got = [b for k, b in policy_events(events, p.pid, "tracksock-kill") if b["event"] == "sock_recv_length"]
    assert len(got) == 2, got  # both receives are the owner's events: the child's first
    assert child != p.pid and all(b["process"]["pid"] == p.pid for b in got)
    assert "not enforced: the event is a tracked socket's owner's" in got[0]["message"]
    assert "enforced via" in got[1]["message"] and "not enforced" not in got[1]["message"]
    assert kstats["not_owner"] == 1 and kstats["signals"] == 1, kstats
    # both receives took the action (the child's not done), as Tetragon counts; the sends' NoPost
    assert counted == {"post": 2, "signal": 2, "nopost": counted["nopost"]} and counted["nopost"] >= 2, counted


TRACKED_THEN_EXEC = """import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.set_inheritable(True)
sys.stdin.buffer.read(1)
s.sendto(b"a", s.getsockname())
os.execv(sys.executable, [sys.executable, "-S", "-c",
         f"import socket; socket.socket(fileno={s.fileno()}).recv(16)  # {'after-' + 'exec'}"])
"""


@pytest.mark.skipif(not Path("/sys/kernel/tracing/events/sock/sock_recv_length").exists(),
                    reason="no sock:sock_send_length/sock_recv_length tracepoints (kernel < 6.4)")
def test_a_tracked_socket_is_not_its_ended_owners(running_agent: RunningAgent, pywork: Path):
    """A tracked socket's owner is the process (pid and exec) that tracked it while that process
    lives. Its entry outlived it: after the owner's exec (or its exit, when a new socket took the
    freed one's address) the socket's events were still the ended process's, and matched or
    missed selectors as that process. Now an entry whose owner is gone is dropped: the receive
    after the exec is the new program's."""
    with py_started(pywork, TRACKED_THEN_EXEC) as p:
        spec = f"""
tracepoints:
- subsystem: sock
  event: sock_send_length
  raw: true
  args: [{{index: 0, type: sock}}]
  selectors:
  - matchPIDs: [{{operator: In, values: [{p.pid}]}}]
    matchActions: [{{action: TrackSock, argSock: 0}}]
- subsystem: sock
  event: sock_recv_length
  raw: true
  args: [{{index: 0, type: sock}}]
  selectors:
  - matchPIDs: [{{operator: In, values: [{p.pid}]}}]
"""
        with loaded(running_agent, policy_yaml("tracksock-exec", spec)):
            events = running_agent.collect(lambda: p.communicate(b"g", 60))
    assert p.returncode == 0
    got = {b["event"]: b for _, b in policy_events(events, p.pid, "tracksock-exec")}
    assert set(got) == {"sock_send_length", "sock_recv_length"}, got
    sent, received = got["sock_send_length"]["process"], got["sock_recv_length"]["process"]
    assert "after-exec" not in sent["arguments"] and "after-exec" in received["arguments"]
    assert received["exec_id"] != sent["exec_id"]


ACCEPTING_SERVER = """import os, socket, sys
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(1)
r, w = os.pipe()
c = os.fork()
if c == 0:
    os.read(r, 1)
    k = socket.create_connection(l.getsockname())
    k.sendall(b"x")
    k.recv(1)
    os._exit(0)
sys.stdout.write(f"{c}\\n")
sys.stdout.flush()
sys.stdin.buffer.read(1)
os.write(w, b"g")
a, _ = l.accept()
a.recv(16)
a.sendall(b"y")
os.waitpid(c, 0)
"""


@pytest.mark.skipif(not Path("/sys/kernel/tracing/events/sock/sock_recv_length").exists(),
                    reason="no sock:sock_recv_length tracepoint (kernel < 6.4)")
def test_tracksock_in_interrupt_context_tracks_nothing(running_agent: RunningAgent, pywork: Path):
    """On loopback the server's side of a connection becomes ESTABLISHED in the NET_RX softirq
    served on the client's way out of its send: `current` is the client, only interrupted
    (which lives on until the server has received).
    TrackSock there made the client the owner of the server's socket, and the server's own
    receive on it was reported as the client's. TrackSock is now not done in interrupt context
    (counted as not_task): the receive is the server's."""
    with py_started(pywork, ACCEPTING_SERVER, stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        client = int(p.stdout.readline())
        spec = f"""
tracepoints:
- subsystem: sock
  event: inet_sock_set_state
  raw: true
  args: [{{index: 0, type: sock}}, {{index: 2, type: int}}]
  selectors:
  - matchArgs: [{{index: 2, operator: Equal, values: ["1"]}}]
    matchPIDs: [{{operator: In, values: [{client}]}}]
    matchActions: [{{action: TrackSock, argSock: 0}}, {{action: NoPost}}]
- subsystem: sock
  event: sock_recv_length
  raw: true
  args: [{{index: 0, type: sock}}]
  selectors:
  - matchPIDs: [{{operator: In, values: [{p.pid}, {client}]}}]
"""
        with loaded(running_agent, policy_yaml("tracksock-irq", spec)) as st:
            events = running_agent.collect(lambda: p.communicate(b"g", 60))
            kstats = kernel_stats(running_agent, st["name"])
    assert p.returncode == 0
    got = [b["process"]["pid"] for b in (e[next(iter(e))] for e in events)
           if isinstance(b, dict) and b.get("policy_name") == "tracksock-irq" and b.get("event") == "sock_recv_length"]
    # the server's receive (on the socket the softirq made) and the client's (its own socket)
    assert sorted(got) == sorted([p.pid, client]), (got, p.pid, client)
    assert kstats["not_task"] >= 1, kstats


def test_kernel_stack_trace(running_agent: RunningAgent, pywork: Path):
    d = str(pywork / "data")
    spec = openat_spec([path_is(f"{d}/present.txt"), scoped(pywork), "matchActions: [{action: Post, kernelStackTrace: true}]"])
    r = Run()
    with loaded(running_agent, policy_yaml("kstack", spec)):
        events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), out=r))
    (ev,) = [b for _, b in policy_events(events, r.pid, "kstack")]
    syms = [f.get("symbol", "") for f in ev["kernel_stack_trace"]]
    assert syms and any(s for s in syms)


def test_delete_frees_kernel_objects_and_stops_events(running_agent: RunningAgent, pywork: Path):
    d = str(pywork / "data")
    spec = OPENAT.format(index=1, op="Equal", values=f'["{d}/present.txt"]')
    name = running_agent.agent.policies.add_text(policy_yaml("to-delete", spec), "<t>")[0]
    st = next(p for p in running_agent.agent.list_policies() if p["name"] == name)
    ids = set(st["program_ids"])
    assert ids and ids <= loaded_prog_ids()
    # disable: no events; enable: events again
    running_agent.agent.control.set_policy_enabled(name, False)
    r1 = Run()
    events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), out=r1))
    assert not policy_events(events, r1.pid, name)
    running_agent.agent.control.set_policy_enabled(name, True)
    r2 = Run()
    events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), out=r2))
    assert policy_events(events, r2.pid, name)
    running_agent.agent.delete_policy(name)
    r3 = Run()
    events = running_agent.collect(lambda: run_py(pywork, open_file(f"{d}/present.txt"), out=r3))
    assert not policy_events(events, r3.pid, name)
    assert not still_loaded(ids)


def test_refused_policy_leaves_nothing_loaded(running_agent: RunningAgent):
    from vigil.core.errors import PolicyError

    bad = policy_yaml("half-good", """
kprobes:
- call: sys_openat
  syscall: true
  args: [{index: 1, type: string}]
- call: tcp_connect
  syscall: false
  args: [{index: 0, type: sock}]
""")
    before = prog_ids_held()
    with pytest.raises(PolicyError, match=r"<test>:\d+:\d+: spec.kprobes\[1\].*tcp_connect"):
        running_agent.agent.policies.add_text(bad, "<test>")
    assert "half-good" not in [p["name"] for p in running_agent.agent.list_policies()]
    assert prog_ids_held() == before  # nothing of the refused policy was loaded
    assert not running_agent.agent.policies.hooks


def test_returncopy_iovec_and_user_stack(running_agent: RunningAgent, pywork: Path):
    d = str(pywork / "data")
    spec = f"""
kprobes:
- call: sys_read
  syscall: true
  return: true
  args:
  - {{index: 0, type: fd}}
  - {{index: 1, type: char_buf, returnCopy: true}}
  - {{index: 2, type: size_t}}
  returnArg: {{index: 0, type: int}}
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{d}/present.txt"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
- call: sys_writev
  syscall: true
  args:
  - {{index: 0, type: fd}}
  - {{index: 1, type: char_iovec, sizeArgIndex: 3}}
  - {{index: 2, type: int}}
  selectors:
  - matchArgs: [{{index: 0, operator: Prefix, values: ["{d}/"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
    matchActions: [{{action: Post, userStackTrace: true}}]
"""
    code = (f"import os\nfd = os.open('{d}/present.txt', os.O_RDONLY)\nos.read(fd, 100)\nos.close(fd)\n"
            f"fd = os.open('{d}/iov.txt', os.O_WRONLY|os.O_CREAT, 0o644)\nos.writev(fd, [b'ab', b'cd'])\nos.close(fd)\n"
            # user stacks are symbolized (module + offset) from /proc/<pid>/maps while the process lives
            "import time\ntime.sleep(1)\n")
    r = Run()
    with loaded(running_agent, policy_yaml("copy-iov", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    got = {b["function_name"]: b for _, b in policy_events(events, r.pid, "copy-iov")}
    rd = got["__x64_sys_read"]
    assert rd["args"][1] == {"bytes_arg": "aGVsbG8K"}  # "hello\n", read at return with the returned size
    assert rd["return"] == {"int_arg": 6}
    wv = got["__x64_sys_writev"]
    assert wv["args"][1] == {"bytes_arg": "YWJjZA=="}  # "abcd" from two iovecs
    assert wv["args"][2] == {"int_arg": 2}
    assert wv["user_stack_trace"] and any(f.get("module") for f in wv["user_stack_trace"])


def test_matchbinaries_follow_children(running_agent: RunningAgent, pywork: Path):
    d = str(pywork / "data")
    shutil.copy2(os.path.realpath("/bin/sh"), pywork / "launcher")
    spec = openat_spec([path_is(f"{d}/present.txt"),
                        f'matchBinaries: [{{operator: In, followChildren: true, values: ["{pywork}/launcher"]}}]'])
    launched, direct = Run(), Run()
    with loaded(running_agent, policy_yaml("follow-children", spec)):
        def act() -> None:
            # a grandchild of the launcher (launcher -> vpy) matches; the same binary started directly does not
            p = subprocess.Popen([str(pywork / "launcher"), "-c", f"exec {pywork}/vpy -S -c \"{open_file(d + '/present.txt')}\" & wait"],
                                 cwd=pywork)
            p.wait(60)
            launched.pid = p.pid
            run_py(pywork, open_file(f"{d}/present.txt"), out=direct)
        events = running_agent.collect(act)
    got = [b for k, b in ((next(iter(e)), e[next(iter(e))]) for e in events) if b.get("policy_name") == "follow-children"]
    assert got and all(b["process"]["binary"] == f"{pywork}/vpy" for b in got)
    assert all(b["process"]["pid"] != direct.pid for b in got)
    assert all(b["parent"]["binary"] == f"{pywork}/launcher" for b in got)


def maxdata_writes(pywork: Path, prefix: str) -> str:
    """Writes by the test's python to files under data/<prefix>, their whole buffers (maxData)."""
    return f"""
kprobes:
- call: sys_write
  syscall: true
  args:
  - {{index: 0, type: fd}}
  - {{index: 1, type: char_buf, sizeArgIndex: 3, maxData: true}}
  - {{index: 2, type: size_t}}
  selectors:
  - matchArgs: [{{index: 0, operator: Prefix, values: ["{pywork / 'data' / prefix}"]}}]
    matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
"""


def test_maxdata_captures_large_buffers(running_agent: RunningAgent, pywork: Path):
    import base64

    d = str(pywork / "data")
    spec = maxdata_writes(pywork, "big")
    code = (f"import os\nfd = os.open('{d}/big.bin', os.O_WRONLY|os.O_CREAT, 0o644)\n"
            "os.write(fd, bytes(range(256)) * 80)\n"         # 20480 bytes: fully captured
            "os.write(fd, b'z' * 400000)\nos.close(fd)\n")   # beyond 327360: truncated
    r = Run()
    with loaded(running_agent, policy_yaml("maxdata", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    got = [b for _, b in policy_events(events, r.pid, "maxdata")]
    assert len(got) == 2
    assert base64.b64decode(got[0]["args"][1]["bytes_arg"]) == bytes(range(256)) * 80
    t = got[1]["args"][1]["truncated_bytes_arg"]
    assert t["orig_size"] == "400000"
    assert base64.b64decode(t["bytes_arg"]) == b"z" * 327360


def test_maxdata_bytes_not_in_memory_are_marked_cut_and_counted(running_agent: RunningAgent, pywork: Path):
    """A buffer whose later pages were never touched (the kernel program cannot fault them in):
    the bytes it could read come, marked as cut short of the size, and the hook counts it."""
    import base64

    d = str(pywork / "data")
    spec = maxdata_writes(pywork, "sparse")
    code = (f"import mmap, os\nfd = os.open('{d}/sparse.bin', os.O_WRONLY|os.O_CREAT, 0o644)\n"
            "m = mmap.mmap(-1, 65536)\nm[:8192] = b'a' * 8192\n"   # pages 3.. never touched
            "os.write(fd, m)\nos.close(fd)\n")
    r = Run()
    with loaded(running_agent, policy_yaml("sparse", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
        stats = next(x for x in running_agent.agent.list_policies() if x["name"] == "sparse")
    (ev,) = [b for _, b in policy_events(events, r.pid, "sparse")]
    t = ev["args"][1]["truncated_bytes_arg"]
    assert t["orig_size"] == "65536"
    got = base64.b64decode(t["bytes_arg"])
    assert 4095 <= len(got) < 65536 and got[:4095] == b"a" * 4095
    assert stats["kernel_stats"]["errors"] >= 1, stats


@pytest.mark.parametrize("shape", ["4 char_buf", "5 string"])
def test_arguments_and_stacks_share_the_records_room_and_never_wrap(
        running_agent: RunningAgent, pywork: Path, shape: str):
    """Argument bytes and stacks share one record buffer: the stack goes after the arguments,
    never over them; a stack with no room left after them is not sent, and counted in the
    hook's errors (it once wrapped round over the first arguments)."""
    if shape == "4 char_buf":
        args = ["{index: 2, type: size_t}"] + ["{index: 1, type: char_buf, sizeArgIndex: 3}"] * 4
    else:
        args = ["{index: 1, type: string}"] * 5
    arg_lines = "\n".join("  - " + a for a in args)
    spec = f"""
kprobes:
- call: sys_write
  syscall: true
  args:
{arg_lines}
  selectors:
  - matchBinaries: [{{operator: In, values: ["{pywork}/vpy"]}}]
    matchActions: [{{action: Post, kernelStackTrace: true}}]
"""
    payload = (bytes(range(32, 127)) * 44)[:4096]   # printable, no NUL: a string argument keeps it too
    code = f"import os\nfd = os.open('/dev/null', os.O_WRONLY)\nos.write(fd, {payload!r})\n"
    r = Run()
    with loaded(running_agent, policy_yaml("room", spec)):
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
        stats = next(x for x in running_agent.agent.list_policies() if x["name"] == "room")
    (_, ev), *_ = policy_events(events, r.pid, "room")
    import base64

    def value(a: dict) -> bytes:
        if "string_arg" in a:
            return a["string_arg"].encode("latin-1", "replace")
        return base64.b64decode(a.get("bytes_arg") or a["truncated_bytes_arg"]["bytes_arg"])
    got = [value(a) for a in ev["args"] if "size_arg" not in a]
    kept = len(got[0])   # (a string keeps one byte less: its NUL)
    assert kept >= 4094 and got == [payload[:kept]] * (len(args) - (shape == "4 char_buf")), \
        [len(g) for g in got]
    if shape == "4 char_buf":
        assert ev.get("kernel_stack_trace"), "the stack goes after the arguments"
    else:   # 5 x 4,095 bytes: no room left for a stack
        assert not ev.get("kernel_stack_trace")
        assert stats["kernel_stats"]["errors"] >= 1, stats
