"""vigil-permd on the real kernel: exec and open refused before they happen, marks only
where the rules point, and every permission answered within the deadline whatever the
Python side (this process) or the helper's own decision does.

Everything is confined to test-created directories and binaries (and a test-mounted
tmpfs); the one rule that can match anywhere matches only a test-unique file name.
Execs run in threads with a bound, so a missing answer fails the test instead of
hanging it (stopping the helper closes its group: the kernel then allows).
"""
from __future__ import annotations

import ctypes
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.bpfstate import require_root
from tests.kernel.testbins import LAUNCH_C, MARKER_C, build, is_eperm, launch
from tests.overlaymount import overlay_mount
from vigil.enforce.permd import PermdError, PermissionHelper
from vigil.enforce.permd_proto import Report
from vigil.enforce.permtable import Cond, Mark, Rule, Table, plan_marks
from vigil.kernel import sys as ksys

pytestmark = pytest.mark.kernel

EXEC = frozenset({"exec"})
OPEN = frozenset({"open"})


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require_root()  # fanotify permission events need CAP_SYS_ADMIN
    d = tmp_path_factory.mktemp("test-bins")
    return build(d, "m", MARKER_C), build(d, "launch", LAUNCH_C)


@pytest.fixture(scope="module")
def marker_bin(bins: tuple[Path, Path]) -> Path:
    return bins[0]


@pytest.fixture(scope="module", autouse=True)
def _launcher(bins: tuple[Path, Path]) -> None:
    global LAUNCHER
    LAUNCHER = str(bins[1])


LAUNCHER = ""


def _populate(d: Path, marker_bin: Path) -> None:
    for sub in ("blocked", "allowed"):
        (d / sub).mkdir()
        shutil.copy2(marker_bin, d / sub / "tool")
    (d / "secret.txt").write_text("secret\n")
    (d / "public.txt").write_text("public\n")


@pytest.fixture
def gdir(request: pytest.FixtureRequest, marker_bin: Path) -> Iterator[Path]:
    """The test's directory: a plain one, or (parametrized "overlayfs") the root of an overlay
    mount whose files are in its lower layer, as in a container's root file system (all on a
    test-mounted tmpfs; both mounts are removed)."""
    if getattr(request, "param", "dir") == "overlayfs":
        with overlay_mount(lambda lower: _populate(lower, marker_bin), prefix="vigil-fan-test-") as root:
            yield root
        return
    d = Path(tempfile.mkdtemp(prefix="vigil-fan-test-"))
    try:
        _populate(d, marker_bin)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


OVERLAYFS_SUPER_MAGIC = 0x794C7630


def on_overlayfs(path: Path) -> bool:
    """statfs's f_type (the mount table cannot tell: inside a chroot it lists no "/")."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs, f_type first
    if libc.statfs(str(path).encode(), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return ctypes.c_long.from_buffer(buf).value == OVERLAYFS_SUPER_MAGIC


def handles_that_name_files() -> bool:
    """The kernel gives a handle that names (not opens) a file (name_to_handle_at
    AT_HANDLE_FID, Linux 6.5; EINVAL before): what the helper remembers an overlayfs file by.
    Without it such files are asked about at every exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8 + 128)
    ctypes.c_uint32.from_buffer(buf).value = 128
    mount_id = ctypes.c_int()
    return libc.name_to_handle_at(-100, b"/", buf, ctypes.byref(mount_id), 0x200) == 0


def rememberable(path: Path) -> bool:
    return not on_overlayfs(path) or handles_that_name_files()


NO_FID_HANDLES = "this kernel cannot remember overlayfs files (no AT_HANDLE_FID: Linux < 6.5)"
OVERLAYFS_REMEMBERED = pytest.param(
    "overlayfs", marks=pytest.mark.skipif(not handles_that_name_files(), reason=NO_FID_HANDLES))
# where the helper remembers files: a plain directory, and overlayfs where this kernel allows
FILE_SYSTEMS = pytest.mark.parametrize("gdir", ["dir", OVERLAYFS_REMEMBERED], indirect=True)


class Helper:
    """A started helper that is always stopped, collecting its reports."""

    def __init__(self) -> None:
        self.reports: list[Report] = []
        self.h = PermissionHelper(self.reports.append, test_hooks=True)

    def push(self, rules: list[Rule], marks: list[Mark] | None = None, **kw: object) -> None:
        kw.setdefault("exempt", (os.getpid(),))
        self.h.push(Table(rules, plan_marks(rules) if marks is None else marks, **kw))  # type: ignore[arg-type]

    def wait_reports(self, n: int, timeout: float = 10.0) -> list[Report]:
        deadline = time.monotonic() + timeout
        while len(self.reports) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.reports


@pytest.fixture
def helper(monkeypatch: pytest.MonkeyPatch) -> Iterator[Helper]:
    # no quiet period after a new group (test_a_new_group_is_followed_by_a_quiet_period has one)
    monkeypatch.setenv("VIGIL_PERMD_REGROUP_QUIET_MS", "0")
    w = Helper()
    w.h.start()
    try:
        yield w
    finally:
        w.h.stop()
        assert not w.h.running


def run(argv: list[str], timeout: float = 30.0) -> int | OSError:
    return launch(LAUNCHER, argv, timeout)


def deny_exec_under(d: Path, action: str = "override", monitor: bool = False) -> Rule:
    return Rule(1, 0, EXEC, action, monitor, (Cond("path", "Prefix", (f"{d}/blocked/",)),))


def test_exec_denied_before_first_instruction(gdir: Path, helper: Helper) -> None:
    helper.push([deny_exec_under(gdir)])
    res = run([str(gdir / "blocked" / "tool"), str(gdir / "ran-blocked")])
    assert is_eperm(res), res
    assert not (gdir / "ran-blocked").exists(), "the denied binary ran"
    assert run([str(gdir / "allowed" / "tool"), str(gdir / "ran-allowed")]) == 0
    assert (gdir / "ran-allowed").exists()
    (rep,) = helper.wait_reports(1)
    assert (rep.hook_id, rep.selector, rep.kind, rep.action) == (1, 0, "exec", "override")
    assert rep.path == f"{gdir}/blocked/tool" and not rep.allowed and not rep.timeout
    st = helper.h.stats()
    assert st["denied"] == 1 and st["timeouts"] == 0


def test_open_of_existing_file_denied(gdir: Path, helper: Helper) -> None:
    helper.push([Rule(3, 0, OPEN, "override", conds=(Cond("path", "Equal", (f"{gdir}/secret.txt",)),))])
    probe = ("import sys\nfor p in sys.argv[1:]:\n try:\n  open(p).read(); print('ok')\n"
             " except OSError as e: print(e.errno)")
    out = subprocess.run(["python3", "-S", "-c", probe, str(gdir / "secret.txt"), str(gdir / "public.txt")],
                         capture_output=True, text=True, timeout=30).stdout
    secret, public = out.split()
    assert int(secret) == 1 and public == "ok"  # EPERM is fanotify's refusal
    # the rule names one file: only that file is marked
    assert helper.h.stats()["marks"] == 1


def test_exempt_pid_is_never_denied(gdir: Path, helper: Helper) -> None:
    helper.push([Rule(3, 0, OPEN, "override", conds=(Cond("path", "Equal", (f"{gdir}/secret.txt",)),))])
    assert (gdir / "secret.txt").read_text() == "secret\n"  # this process is exempt
    st = helper.h.stats()
    assert st["exempt"] >= 1 and st["denied"] == 0 and not helper.reports


def test_monitor_mode_reports_but_allows(gdir: Path, helper: Helper) -> None:
    helper.push([deny_exec_under(gdir, monitor=True)])
    assert run([str(gdir / "blocked" / "tool"), str(gdir / "ran")]) == 0
    assert (gdir / "ran").exists()
    (rep,) = helper.wait_reports(1)
    assert rep.monitor and rep.allowed and rep.action == "override"


def test_sigkill_kills_the_requester(gdir: Path, helper: Helper) -> None:
    helper.push([deny_exec_under(gdir, action="sigkill")])
    res = run([str(gdir / "blocked" / "tool"), str(gdir / "ran")])
    assert res == -9 and not (gdir / "ran").exists()  # the forked child died in execve
    assert helper.h.stats()["killed"] == 1


def test_matchbinaries_and_pids(gdir: Path, helper: Helper) -> None:
    """matchBinaries names the requester's binary (the process calling execve); matchPIDs
    with followForks covers the named process's descendants."""
    tool = f"{gdir}/blocked/tool"
    in_blocked = Cond("path", "Prefix", (f"{gdir}/blocked/",))
    dash = os.path.realpath("/bin/sh")
    helper.push([Rule(1, 0, EXEC, "override", conds=(in_blocked, Cond("binary", "Equal", (dash,))))])
    assert subprocess.run(["/bin/sh", "-c", tool], timeout=30).returncode == 126  # sh's exec refused
    assert run([tool]) == 0  # the requester is the launcher, not sh
    helper.push([Rule(1, 0, EXEC, "override", conds=(in_blocked, Cond("pid", "In", (os.getpid(),), True)))])
    assert is_eperm(run([tool]))  # a child of this process
    assert subprocess.run(["/bin/sh", "-c", f"{tool}; exit $?"], timeout=30).returncode == 126  # a grandchild
    helper.push([Rule(1, 0, EXEC, "override", conds=(in_blocked, Cond("pid", "NotIn", (os.getpid(),), True)))])
    assert run([tool]) == 0


def guard_tree_deny_blocked(gdir: Path, requester: Cond | None = None) -> list[Rule]:
    """Rules that mark the whole test tree and deny only blocked/: an exec under allowed/
    reaches the helper and no rule matches it. `requester` adds a condition on who asks to
    the never-matching rule (its other condition fails first, so it never matches)."""
    never = (Cond("path", "Prefix", (f"{gdir}/",)), Cond("path", "Postfix", ("/vigil-never",)))
    return [Rule(1, 0, EXEC, "override", conds=never + ((requester,) if requester else ())),
            Rule(2, 0, EXEC, "override", conds=(Cond("path", "Prefix", (f"{gdir}/blocked/",)),))]


def exec_events(helper: Helper, argv: list[str], times: int) -> tuple[int, int]:
    """(permission events, remembered allows) the helper counted while argv ran `times` times.
    The helper answers first and remembers the file after (the requester does not wait for
    that): a stats round trip after each run, answered by the helper's main loop once it is
    done with the event before, lets the next run find the file remembered. Without it a run
    on a busy machine came before the mark and was asked about again."""
    st0 = st = helper.h.stats()
    for _ in range(times):
        assert run(argv) == 0
        st = helper.h.stats()
    return st["events"] - st0["events"], st["cached"] - st0["cached"]


@FILE_SYSTEMS
@pytest.mark.parametrize(("case", "events", "remembered"), [
    ("path rules only", 1, 1),                      # asked once, then the file is remembered
    ("a rule reads the requester's binary", 3, 0),  # the answer may differ by who asks
    ("a rule reads the requester's pid", 3, 0),
    ("the file has a second hard link", 3, 0),      # a rule may name the other path
])
def test_silent_allows_are_remembered_only_when_the_file_decides(
        gdir: Path, helper: Helper, case: str, events: int, remembered: int) -> None:
    requester = {"a rule reads the requester's binary": Cond("binary", "Equal", ("/vigil-never",)),
                 "a rule reads the requester's pid": Cond("pid", "In", (1,))}.get(case)
    helper.push(guard_tree_deny_blocked(gdir, requester))
    tool = gdir / "allowed" / "tool"
    if case == "the file has a second hard link":
        os.link(tool, gdir / "allowed" / "tool-link")
    if remembered and not rememberable(tool):
        events, remembered = 3, 0
    assert exec_events(helper, [str(tool)], 3) == (events, remembered)
    for _ in range(2):  # the deny stands whatever was remembered
        assert is_eperm(run([str(gdir / "blocked" / "tool")]))
    assert [r.path for r in helper.wait_reports(2)] == [f"{gdir}/blocked/tool"] * 2


@FILE_SYSTEMS
def test_a_remembered_file_is_asked_about_again_once_written_or_under_new_rules(gdir: Path, helper: Helper) -> None:
    helper.push(guard_tree_deny_blocked(gdir))
    tool = gdir / "allowed" / "tool"
    assert exec_events(helper, [str(tool)], 2) == (1, 1)
    with open(tool, "ab") as f:   # a write: the kernel drops what the group remembered
        f.write(b"\0")
    wait_forgotten(helper, 1)     # and so does the helper: no stale entry piles up
    assert helper.h.stats()["regroups"] == 0  # on overlayfs too: nothing is left to clear
    assert exec_events(helper, [str(tool)], 2) == (1, 1)
    # new rules, new group: nothing remembered under the old ones lets the file through
    helper.push([Rule(3, 0, EXEC, "override", conds=(Cond("path", "Prefix", (f"{gdir}/allowed/",)),))])
    assert is_eperm(run([str(tool)])) and is_eperm(run([str(tool)]))
    assert helper.h.stats()["denied"] == 2


def wait_forgotten(helper: Helper, n: int) -> None:
    """Until the helper has read the notification that made it forget n remembered files."""
    deadline = time.monotonic() + 10
    while helper.h.stats()["forgotten"] < n and time.monotonic() < deadline:
        time.sleep(0.005)
    assert helper.h.stats()["forgotten"] == n


@FILE_SYSTEMS
@pytest.mark.parametrize("change", ["renamed", "linked", "chmod", "deleted"])
def test_a_remembered_file_under_a_new_name_is_asked_about_again(gdir: Path, helper: Helper, change: str) -> None:
    """A file remembered as allowed and then renamed or hard-linked into the denied directory
    is denied there: the helper forgets it when the kernel reports the change. On overlayfs
    (no way back to the file from its handle) by replacing its group: everything remembered
    is forgotten and asked about again."""
    tool, moved = gdir / "allowed" / "tool", gdir / "blocked" / "moved"
    fid_only = on_overlayfs(tool)
    helper.push(guard_tree_deny_blocked(gdir))
    other = gdir / "other"
    shutil.copy2(tool, other)
    assert exec_events(helper, [str(tool)], 2) == (1, 1)
    assert exec_events(helper, [str(other)], 2) == (1, 1)
    if change == "renamed":
        os.rename(tool, moved)
    elif change == "linked":
        os.link(tool, moved)
    elif change == "chmod":
        os.chmod(tool, 0o755)
    else:
        tool.unlink()
    wait_forgotten(helper, 1)
    if change in ("renamed", "linked"):
        assert is_eperm(run([str(moved)]))
        assert [r.path for r in helper.wait_reports(1)] == [str(moved)]
    if change in ("linked", "chmod"):  # asked again; remembered again only with one name
        assert exec_events(helper, [str(tool)], 2) == ((2, 0) if change == "linked" else (1, 1))
    assert helper.h.stats()["denied"] == (1 if change in ("renamed", "linked") else 0)
    # the unchanged file: still remembered, or forgotten with the group and remembered again.
    # A deleted file needs no new group (nothing can reach it by a name any more); the unlink
    # reports the link count first, and a helper that reads that before the deletion
    # replaces the group all the same
    regroups = helper.h.stats()["regroups"]
    assert regroups == (1 if fid_only and change != "deleted" else 0) or (fid_only and regroups == 1)
    assert exec_events(helper, [str(other)], 2) == ((1, 1) if regroups else (0, 0))


@pytest.mark.parametrize("gdir", [OVERLAYFS_REMEMBERED], indirect=True)
def test_a_new_group_is_followed_by_a_quiet_period(gdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However often overlayfs files change, the helper replaces its group at most once per
    quiet period (each new group marks everything again): until the period is over, no such
    file is remembered, so no change can ask for another one. (An hour here; 1 s by default.)"""
    tool = gdir / "allowed" / "tool"
    monkeypatch.setenv("VIGIL_PERMD_REGROUP_QUIET_MS", "3600000")
    w = Helper()
    w.h.start()
    try:
        w.push(guard_tree_deny_blocked(gdir))
        assert exec_events(w, [str(tool)], 2) == (1, 1)
        os.chmod(tool, 0o755)
        wait_forgotten(w, 1)
        assert w.h.stats()["regroups"] == 1
        assert exec_events(w, [str(tool)], 3) == (3, 0)   # asked each time, not remembered
        os.chmod(tool, 0o700)
        assert exec_events(w, [str(tool)], 1) == (1, 0) and w.h.stats()["regroups"] == 1
        assert is_eperm(run([str(gdir / "blocked" / "tool")]))  # the rules stand throughout
    finally:
        w.h.stop()


def wait_stalled(pid: int) -> None:
    """Until the helper's main thread sleeps in the stalled decision."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/task/{pid}/syscall") as f:
            if f.read().split()[0] in ("35", "230"):  # x86-64 nanosleep, clock_nanosleep
                return
        time.sleep(0.005)
    pytest.fail("the helper never entered the stalled decision")


def test_new_directories_in_a_tree_are_guarded(gdir: Path, helper: Helper) -> None:
    helper.push([deny_exec_under(gdir)])
    before = helper.h.stats()["dirs"]
    (gdir / "blocked" / "new" / "deeper").mkdir(parents=True)
    deadline = time.monotonic() + 10
    while helper.h.stats()["dirs"] < before + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert helper.h.stats()["dirs"] == before + 2
    shutil.copy2(gdir / "allowed" / "tool", gdir / "blocked" / "new" / "deeper" / "tool")
    assert is_eperm(run([str(gdir / "blocked" / "new" / "deeper" / "tool")]))


def test_deleted_directories_of_a_tree_are_let_go(gdir: Path, helper: Helper) -> None:
    """Each directory of a guarded tree is watched through a descriptor of it; a deleted one's
    descriptor is closed, so directories made and removed over time neither use up the
    helper's descriptors nor its count of directories (after which new ones went unguarded)."""
    helper.push([deny_exec_under(gdir)])
    pid = helper.h.helper_pid
    st0 = helper.h.stats()
    fds0 = len(os.listdir(f"/proc/{pid}/fd"))

    def marked(st: dict[str, int]) -> int:   # directories marked since, gone or not
        return st["dirs"] - st0["dirs"] + st["dirs_gone"] - st0["dirs_gone"]
    n = 200
    for i in range(n):
        d = gdir / "blocked" / f"d{i}"
        d.mkdir()
        deadline = time.monotonic() + 10
        while marked(helper.h.stats()) < i + 1 and time.monotonic() < deadline:
            time.sleep(0.001)   # marked (its watch holds a descriptor of it) before it goes
        d.rmdir()
    deadline = time.monotonic() + 10
    while helper.h.stats()["dirs_gone"] < st0["dirs_gone"] + n and time.monotonic() < deadline:
        time.sleep(0.05)
    st = helper.h.stats()
    assert st["dirs_gone"] - st0["dirs_gone"] == n and st["dirs"] == st0["dirs"]
    assert len(os.listdir(f"/proc/{pid}/fd")) <= fds0 + 2  # (a report in flight may hold one)
    (gdir / "blocked" / "later").mkdir()   # still guarded afterwards
    shutil.copy2(gdir / "allowed" / "tool", gdir / "blocked" / "later" / "tool")
    deadline = time.monotonic() + 10
    while helper.h.stats()["dirs"] < st0["dirs"] + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_eperm(run([str(gdir / "blocked" / "later" / "tool")]))


@FILE_SYSTEMS
def test_a_remembered_file_whose_directory_is_renamed_is_asked_about_again(gdir: Path, helper: Helper) -> None:
    """The file keeps its name; a directory above it moves into the denied tree. Nothing is said
    to the file's own watch, so the helper also watches the directories above each file it
    remembers, and forgets what it remembered when one of them moves."""
    (gdir / "allowed" / "sub").mkdir()
    shutil.copy2(gdir / "allowed" / "tool", gdir / "allowed" / "sub" / "tool")
    helper.push(guard_tree_deny_blocked(gdir))
    tool = gdir / "allowed" / "sub" / "tool"
    assert exec_events(helper, [str(tool)], 2) == (1, 1)
    forgotten = helper.h.stats()["forgotten"]
    os.rename(gdir / "allowed" / "sub", gdir / "blocked" / "sub")
    deadline = time.monotonic() + 10
    while helper.h.stats()["forgotten"] == forgotten and time.monotonic() < deadline:
        time.sleep(0.005)
    assert is_eperm(run([str(gdir / "blocked" / "sub" / "tool")]))
    assert [r.path for r in helper.wait_reports(1)] == [f"{gdir}/blocked/sub/tool"]


def test_a_file_renamed_while_its_answer_was_decided_is_not_remembered(gdir: Path, helper: Helper) -> None:
    """Allowed under its old name, renamed into the denied directory before the helper put its
    watch on it: the helper finds the new name when it checks after the watch, and does not
    remember the answer it gave the old one."""
    helper.push(guard_tree_deny_blocked(gdir), deadline_ms=20000)
    tool, moved = gdir / "allowed" / "tool", gdir / "blocked" / "moved"
    helper.h.stall_next_decision(1500)
    outs: list[int | OSError] = []
    t = threading.Thread(target=lambda: outs.append(run([str(tool)])), daemon=True)
    t.start()
    wait_stalled(helper.h.helper_pid)
    os.rename(tool, moved)          # decided for allowed/tool; the file is blocked/moved now
    t.join(30)
    assert outs == [0]
    assert helper.h.stats()["cached"] == 0
    assert is_eperm(run([str(moved)]))


def test_replaced_file_is_guarded_again(gdir: Path, helper: Helper) -> None:
    target = gdir / "allowed" / "tool"
    helper.push([Rule(1, 0, EXEC, "override", conds=(Cond("path", "Equal", (str(target),)),))])
    assert is_eperm(run([str(target)]))
    marks = helper.h.stats()["marks"]
    shutil.copy2(target, gdir / "tool.new")
    os.rename(gdir / "tool.new", target)  # a new inode under the same name
    deadline = time.monotonic() + 10
    while helper.h.stats()["marks"] == marks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_eperm(run([str(target)]))


def test_exec_outside_the_marks_never_waits(gdir: Path, marker_bin: Path, helper: Helper) -> None:
    """While the helper sits in a slow decision for a guarded exec, execs elsewhere (a sibling
    directory, /bin/true) complete: no mark covers them, so they never reach the helper."""
    helper.push([deny_exec_under(gdir)], deadline_ms=20000)
    assert helper.h.stats()["marks"] == helper.h.stats()["dirs"] == 1  # one directory, no mount mark
    helper.h.stall_next_decision(3000)
    guarded: list[int | OSError] = []
    t = threading.Thread(target=lambda: guarded.append(run([str(gdir / "blocked" / "tool")])), daemon=True)
    t.start()
    wait_stalled(helper.h.helper_pid)
    assert run([str(gdir / "allowed" / "tool")]) == 0
    assert run(["/bin/true"]) == 0
    assert t.is_alive(), "the guarded exec should still be waiting for its (stalled) decision"
    t.join(30)
    assert is_eperm(guarded[0])  # decided by the rule once the stall ended


@pytest.mark.parametrize("default_allow", [True, False])
def test_deadline_answers_a_stuck_decision_by_the_default(gdir: Path, helper: Helper, default_allow: bool) -> None:
    helper.push([deny_exec_under(gdir)], deadline_ms=300, default_allow=default_allow)
    helper.h.stall_next_decision(5000)
    res = run([str(gdir / "blocked" / "tool"), str(gdir / "ran")])  # the rule would deny it
    assert (res == 0) is default_allow and (gdir / "ran").exists() is default_allow
    if not default_allow:
        assert is_eperm(res)
    (rep,) = helper.wait_reports(1)
    assert rep.timeout and rep.hook_id == 0 and rep.allowed is default_allow
    assert rep.latency_ns >= 300_000_000  # answered at the deadline, not before
    st = helper.h.stats()  # answered once the stalled decision returned: it must not answer again
    assert st["timeouts"] == 1 and st["write_errors"] == 0


def test_events_arriving_during_a_stuck_decision_are_rescued(gdir: Path, helper: Helper) -> None:
    helper.push([deny_exec_under(gdir)], deadline_ms=300)
    helper.h.stall_next_decision(4000)
    outs: list[int | OSError] = []
    ts = [threading.Thread(target=lambda: outs.append(run([str(gdir / "blocked" / "tool")])), daemon=True)
          for _ in range(3)]
    for t in ts:
        t.start()
        time.sleep(0.05)
    for t in ts:
        t.join(30)
    assert outs == [0, 0, 0]
    st = helper.h.stats()
    assert st["timeouts"] + st["rescued"] == 3


def test_vfork_with_the_gil_held_during_a_guarded_exec(gdir: Path, helper: Helper) -> None:
    """gh-104372: Debian 12's Python keeps the GIL across the vfork in subprocess. Here a
    thread of this (the agent's) process calls posix_spawn (a vfork) through PyDLL, which
    holds the GIL for the whole call: no Python code of this process can run until the
    child's exec is answered. The native helper answers anyway."""
    helper.push([deny_exec_under(gdir)])
    libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held during the call
    libc.posix_spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
    results: dict[str, int] = {}

    def spawn(name: str, path: Path) -> None:
        pid = ctypes.c_int(0)
        argv = (ctypes.c_char_p * 2)(str(path).encode(), None)
        envp = (ctypes.c_char_p * 1)(None)
        rc = libc.posix_spawn(ctypes.byref(pid), str(path).encode(), None, None, argv, envp)
        if rc == 0:
            _, status = os.waitpid(pid.value, 0)
            rc = -os.waitstatus_to_exitcode(status) if os.WIFSIGNALED(status) else 0
        results[name] = rc

    for name, path in [("blocked", gdir / "blocked" / "tool"), ("allowed", gdir / "allowed" / "tool")]:
        t = threading.Thread(target=spawn, args=(name, path), daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), f"posix_spawn of {path} never returned"
    assert results == {"blocked": 1, "allowed": 0}  # EPERM from the exec, reported through posix_spawn


def test_helper_exit_allows_what_is_in_flight(gdir: Path, helper: Helper) -> None:
    """The helper going away (here: asked to stop while a decision is stuck) answers nothing
    itself: closing the group makes the kernel allow the waiting exec."""
    helper.push([deny_exec_under(gdir)], deadline_ms=60000)
    helper.h.stall_next_decision(60000)
    out: list[int | OSError] = []
    t = threading.Thread(target=lambda: out.append(run([str(gdir / "blocked" / "tool")], timeout=60)), daemon=True)
    t.start()
    wait_stalled(helper.h.helper_pid)
    helper.h.stop()
    t.join(30)
    assert out == [0]


def test_killed_helper_is_restarted_with_its_table(gdir: Path, helper: Helper) -> None:
    helper.push([deny_exec_under(gdir)])
    old = helper.h.helper_pid
    os.kill(old, 9)
    deadline = time.monotonic() + 20
    while helper.h.restarts < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert helper.h.restarts == 1 and helper.h.helper_pid != old
    deadline = time.monotonic() + 20
    while helper.h.stats()["generation"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert is_eperm(run([str(gdir / "blocked" / "tool")]))


def test_new_table_replaces_the_old_one_without_a_gap(gdir: Path, helper: Helper) -> None:
    helper.push([deny_exec_under(gdir)])
    assert is_eperm(run([str(gdir / "blocked" / "tool")]))
    helper.push([Rule(2, 0, EXEC, "override", conds=(Cond("path", "Prefix", (f"{gdir}/allowed/",)),))])
    assert run([str(gdir / "blocked" / "tool")]) == 0
    assert is_eperm(run([str(gdir / "allowed" / "tool")]))
    assert helper.h.stats()["generation"] == 2


def test_refused_table_keeps_the_one_in_force(gdir: Path, helper: Helper) -> None:
    helper.push([deny_exec_under(gdir)])
    with pytest.raises(PermdError, match="must be absolute"):
        helper.push([deny_exec_under(gdir)], marks=[Mark("tree", "relative/dir", EXEC)])
    with pytest.raises(PermdError, match="No such file"):
        helper.push([deny_exec_under(gdir)], marks=[Mark("tree", f"{gdir}/nonexistent", EXEC)])
    assert is_eperm(run([str(gdir / "blocked" / "tool")]))
    assert helper.h.stats()["generation"] == 1


@pytest.mark.parametrize("kind", ["mount", "filesystem"])
def test_mount_and_filesystem_marks(marker_bin: Path, helper: Helper, kind: str) -> None:
    """A whole (test-mounted tmpfs) file system, files in nested directories included."""
    mnt = Path(tempfile.mkdtemp(prefix="vigil-fan-mnt-"))
    mounted = False
    try:
        ksys.mount("tmpfs", str(mnt), "tmpfs")
        mounted = True
        (mnt / "a" / "b").mkdir(parents=True)
        for name in ("denied", "allowed"):
            shutil.copy2(marker_bin, mnt / "a" / "b" / name)
        rule = Rule(1, 0, EXEC, "override", conds=(Cond("path", "Postfix", ("/denied",)),))
        helper.push([rule], marks=[Mark(kind, str(mnt), EXEC)])
        assert is_eperm(run([str(mnt / "a" / "b" / "denied")]))
        assert run([str(mnt / "a" / "b" / "allowed")]) == 0
        # remembered under this kind of mark too: the kernel no longer asks, the deny stands
        assert exec_events(helper, [str(mnt / "a" / "b" / "allowed")], 2) == (0, 0)
        assert is_eperm(run([str(mnt / "a" / "b" / "denied")]))
        if kind == "mount":  # a prefix that is a mount point gets a mount mark from the planner
            assert plan_marks([Rule(1, 0, EXEC, "override", conds=(Cond("path", "Prefix", (f"{mnt}/",)),))]) == \
                [Mark("mount", str(mnt), EXEC)]
        helper.push([])  # no marks left on the tmpfs before it goes
    finally:
        if mounted:
            ksys.umount(str(mnt))
        os.rmdir(mnt)


@pytest.mark.parametrize("fs", ["tmpfs", "overlayfs"])
def test_a_file_system_with_remembered_files_can_be_unmounted(marker_bin: Path, helper: Helper, fs: str) -> None:
    """Remembering holds nothing open on the file's file system: it unmounts with the table
    still in force, and the helper goes on answering (overlayfs: a container's root file
    system, unmounted when the container goes)."""
    def check(mnt: Path) -> None:
        helper.push([Rule(1, 0, EXEC, "override", conds=(Cond("path", "Postfix", ("/vigil-never",)),))],
                    marks=[Mark("filesystem", str(mnt), EXEC)])
        assert exec_events(helper, [str(mnt / "tool")], 2) == ((1, 1) if rememberable(mnt / "tool") else (2, 0))

    if fs == "overlayfs":
        with overlay_mount(lambda lower: shutil.copy2(marker_bin, lower / "tool"), prefix="vigil-fan-umount-",
                           strict_unmount=True) as mnt:  # EBUSY if anything holds them
            check(mnt)
    else:
        mnt = Path(tempfile.mkdtemp(prefix="vigil-fan-umount-"))
        mounted = False
        try:
            ksys.mount("tmpfs", str(mnt), "tmpfs")
            mounted = True
            shutil.copy2(marker_bin, mnt / "tool")
            check(mnt)
            ksys.umount(str(mnt), 0)  # not lazily: EBUSY if anything holds the file system
            mounted = False
        finally:
            if mounted:
                ksys.umount(str(mnt))
            os.rmdir(mnt)
    assert helper.h.stats()["generation"] == 1 and helper.h.running


def test_a_full_table_drops_files_of_unmounted_file_systems(
        gdir: Path, marker_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel says nothing when a remembered file's file system goes away: once the table
    is full (two files here, a test hook), those entries make room for new ones."""
    monkeypatch.setenv("VIGIL_PERMD_MAX_REMEMBERED", "2")
    w = Helper()
    w.h.start()
    mnt = Path(tempfile.mkdtemp(prefix="vigil-fan-prune-"))
    mounted = False
    try:
        ksys.mount("tmpfs", str(mnt), "tmpfs")
        mounted = True
        for name in ("a", "b"):
            shutil.copy2(marker_bin, mnt / name)
        w.push([Rule(1, 0, EXEC, "override", conds=(Cond("path", "Postfix", ("/vigil-never",)),))],
               marks=[Mark("filesystem", str(mnt), EXEC), Mark("tree", str(gdir), EXEC)])
        for name in ("a", "b"):
            assert exec_events(w, [str(mnt / name)], 2) == (1, 1)
        tool = gdir / "allowed" / "tool"
        assert exec_events(w, [str(tool)], 2) == (2, 0)  # full
        ksys.umount(str(mnt), 0)
        mounted = False
        assert exec_events(w, [str(tool)], 2) == (1, 1)  # room made: remembered
    finally:
        w.h.stop()
        if mounted:
            ksys.umount(str(mnt))
        os.rmdir(mnt)


def test_rule_that_can_match_anywhere_marks_every_file_system(marker_bin: Path, helper: Helper) -> None:
    """A Postfix-only rule concerns every exec: every real file system is marked, and a file
    system mounted later too. The rule matches only a test-unique name."""
    suffix = f".vigil-deny-{uuid.uuid4().hex[:8]}"
    mnt = Path(tempfile.mkdtemp(prefix="vigil-fan-all-"))
    mounted = False
    try:
        helper.push([Rule(1, 0, EXEC, "override", conds=(Cond("path", "Postfix", (suffix,)),))])
        assert helper.h.stats()["marks"] >= 1
        ksys.mount("tmpfs", str(mnt), "tmpfs")  # after the table: found through mountinfo
        mounted = True
        shutil.copy2(marker_bin, mnt / f"x{suffix}")
        deadline = time.monotonic() + 10
        while helper.h.stats()["mount_rescans"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert is_eperm(run([str(mnt / f"x{suffix}")]))
        assert run(["/bin/true"]) == 0
        helper.push([])
    finally:
        if mounted:
            ksys.umount(str(mnt))
        os.rmdir(mnt)


def test_kernel_allows_pending_events_when_fd_closes(gdir: Path) -> None:
    """The premise of default-allow when the helper goes: closing the group answers FAN_ALLOW."""
    fd = ksys.fanotify_init(ksys.FAN_CLASS_CONTENT | ksys.FAN_CLOEXEC)
    out: list[int] = []
    t = None
    try:
        ksys.fanotify_mark(fd, ksys.FAN_MARK_ADD, ksys.FAN_OPEN_EXEC_PERM | ksys.FAN_EVENT_ON_CHILD,
                           str(gdir / "allowed"))
        t = threading.Thread(target=lambda: out.append(subprocess.run(  # the launcher: no vfork of ours waits
            [LAUNCHER, str(gdir / "allowed" / "tool")], timeout=30).returncode), daemon=True)
        t.start()
        assert select.select([fd], [], [], 10)[0], "no permission event"
        buf = os.read(fd, 4096)  # the exec now waits for an answer we never give
        efd = ksys.FANOTIFY_METADATA.unpack_from(buf, 0)[5]
        os.close(efd)
    finally:
        os.close(fd)
    assert t is not None
    t.join(10)
    assert out == [0]
