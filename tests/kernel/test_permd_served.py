"""vigil-permd and file systems served by a process (FUSE here; NFS, CIFS, 9p... alike): the
kernel opens each event's file for the helper inside read(), and on such a file system that
open waits on the server. A server that hangs must hold only the events of its own file
system (whose processes wait on that server for their own open anyway), never an exec on
local disk.

The FUSE server is the test's own (tests/kernel/fusefs.py), on a test-made mount point; the
local files are in a test-made directory. Outcomes and the helper's counters are asserted,
never times: the deadlines are long only so that a failure cannot hang the suite.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kernel.bpfstate import require_root
from tests.kernel.fusefs import FuseMount, fuse_mount
from tests.kernel.testbins import LAUNCH_C, MARKER_C, build, is_eperm, launch
from vigil.enforce.permd import PermissionHelper
from vigil.enforce.permd_proto import Report
from vigil.enforce.permtable import Cond, Mark, Rule, Table

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="kernel without FUSE (CONFIG_FUSE_FS: no /dev/fuse)")]

EXEC = frozenset({"exec"})


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require_root()  # fanotify permission events, mounting FUSE
    d = tmp_path_factory.mktemp("served-bins")
    return build(d, "m", MARKER_C), build(d, "launch", LAUNCH_C)


@pytest.fixture
def local(bins: tuple[Path, Path]) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vigil-served-local-"))
    try:
        for sub in ("blocked", "allowed"):
            (d / sub).mkdir()
            shutil.copy2(bins[0], d / sub / "tool")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fs(bins: tuple[Path, Path]) -> Iterator[FuseMount]:
    data = bins[0].read_bytes()
    with fuse_mount({"denied": data, "other": data}, prefix="vigil-served-fuse-") as m:
        yield m


@pytest.fixture
def helper(fs: FuseMount) -> Iterator[tuple[PermissionHelper, list[Report]]]:
    reports: list[Report] = []
    h = PermissionHelper(reports.append, test_hooks=True)
    h.start()
    try:
        yield h, reports
    finally:
        fs.release()   # first: a helper thread held by the server would outlast the stop
        h.stop()
        assert not h.running


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until cond holds (the bound only keeps a failure from hanging the suite)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "not reached"
        time.sleep(0.01)


def rules_and_marks(fs: FuseMount, local: Path) -> Table:
    """A deny rule naming a file on the FUSE mount, one on a local tree; the FUSE mount's other
    file is marked too (no rule matches it: allowed)."""
    rules = [Rule(1, 0, EXEC, "override", conds=(Cond("path", "Equal", (f"{fs.root}/denied",)),)),
             Rule(2, 0, EXEC, "override", conds=(Cond("path", "Prefix", (f"{local}/blocked/",)),))]
    marks = [Mark("file", f"{fs.root}/denied", EXEC), Mark("file", f"{fs.root}/other", EXEC),
             Mark("tree", str(local), EXEC)]
    return Table(rules, marks, exempt=(os.getpid(),), deadline_ms=60000)


def test_a_hung_file_server_holds_only_its_own_file_systems_events(
        bins: tuple[Path, Path], local: Path, fs: FuseMount,
        helper: tuple[PermissionHelper, list[Report]]) -> None:
    h, reports = helper
    launcher = bins[1]

    def run(path: Path | str, marker: Path | None = None) -> int | OSError:
        return launch(launcher, [str(path)] + ([str(marker)] if marker else []), timeout=120)

    h.push(rules_and_marks(fs, local))
    st = h.stats()
    assert st["served_groups"] == 1   # the FUSE file system's marks are in a group of their own
    # the rules hold on both file systems while the server answers
    assert is_eperm(run(fs.root / "denied"))
    assert run(fs.root / "other") == 0
    assert is_eperm(run(local / "blocked" / "tool"))
    st0 = h.stats()
    assert st0["served"] == 2 and st0["denied"] == 2 and st0["timeouts"] == st0["rescued"] == 0

    # the server hangs: the helper's open of the next FUSE event's file waits on it
    fs.stall()
    fuse_exec: list[int | OSError] = []
    t = threading.Thread(target=lambda: fuse_exec.append(run(fs.root / "denied", local / "ran-fuse")), daemon=True)
    t.start()
    try:
        tid = fs.wait_entered()
        # held in a thread of the helper that reads only the FUSE file system's group
        assert tid != h.helper_pid and os.path.exists(f"/proc/{h.helper_pid}/task/{tid}")
        # meanwhile execs on local disk get the rules' answers, not the deadline's default
        assert is_eperm(run(local / "blocked" / "tool", local / "ran-blocked"))
        assert run(local / "allowed" / "tool", local / "ran-allowed") == 0
        assert not (local / "ran-blocked").exists() and (local / "ran-allowed").exists()
        st = h.stats()
        assert st["denied"] - st0["denied"] == 1 and st["timeouts"] == st["rescued"] == 0
        assert t.is_alive() and not fuse_exec, "the FUSE exec was answered while its server hung"
        # and the agent's requests are answered too (the main thread is free)
        assert h.evaluate("exec", 1, f"{fs.root}/denied", "/bin/sh").allow is False
    finally:
        fs.release()
        t.join(120)
    # the server answers again: the exec it held is decided by the rule naming the FUSE file
    assert len(fuse_exec) == 1 and is_eperm(fuse_exec[0]), fuse_exec
    assert not (local / "ran-fuse").exists()
    assert is_eperm(run(fs.root / "denied"))
    assert run(fs.root / "other", local / "ran-other") == 0 and (local / "ran-other").exists()
    st = h.stats()
    assert st["served"] - st0["served"] == 3 and st["denied"] - st0["denied"] == 3
    assert st["timeouts"] == st["rescued"] == st["write_errors"] == 0
    wait_for(lambda: len(reports) >= 5)
    denied_paths = sorted(r.path for r in reports if not r.allowed)
    assert denied_paths == sorted([f"{fs.root}/denied"] * 3 + [f"{local}/blocked/tool"] * 2)


def test_a_new_table_while_a_file_server_hangs(
        bins: tuple[Path, Path], local: Path, fs: FuseMount,
        helper: tuple[PermissionHelper, list[Report]]) -> None:
    """A table that no longer names the FUSE mount goes in while the server hangs with an event
    of the old one's served group in the helper's read: the commit does not wait on it, the new
    rules hold on local disk, and once the server answers the held exec is decided by the table
    then in force (no rule on the FUSE file: allowed); the old group is let go."""
    h, _reports = helper
    launcher = bins[1]

    def run(path: Path | str, marker: Path | None = None) -> int | OSError:
        return launch(launcher, [str(path)] + ([str(marker)] if marker else []), timeout=120)

    h.push(rules_and_marks(fs, local))
    fs.stall()
    fuse_exec: list[int | OSError] = []
    t = threading.Thread(target=lambda: fuse_exec.append(run(fs.root / "denied", local / "ran-fuse")), daemon=True)
    t.start()
    try:
        fs.wait_entered()
        h.push(Table([Rule(3, 0, EXEC, "override", conds=(Cond("path", "Prefix", (f"{local}/allowed/",)),))],
                     [Mark("tree", str(local), EXEC)], exempt=(os.getpid(),), deadline_ms=60000))
        st = h.stats()
        assert st["generation"] == 2 and st["served_groups"] == 0
        assert is_eperm(run(local / "allowed" / "tool"))
        assert run(local / "blocked" / "tool") == 0
        assert t.is_alive() and not fuse_exec
    finally:
        fs.release()
        t.join(120)
    assert fuse_exec == [0] and (local / "ran-fuse").exists()
    assert run(fs.root / "denied") == 0   # nothing marks the FUSE mount any more
    st = h.stats()
    assert st["timeouts"] == st["rescued"] == st["write_errors"] == 0
    # the retired group's thread ends and closes its group: no fanotify group but the main one
    # (and the remembered-files one) is left open in the helper, once the replaced main group's
    # grace (it is read a while after the swap) is over
    wait_for(lambda: len(os.listdir(f"/proc/{h.helper_pid}/task")) == 2)   # main and watchdog

    def fanotify_fds() -> list[str]:
        return [os.readlink(f"/proc/{h.helper_pid}/fd/{fd}") for fd in os.listdir(f"/proc/{h.helper_pid}/fd")]

    wait_for(lambda: fanotify_fds().count("anon_inode:[fanotify]") <= 2)


def test_no_fuse_mount_is_left_behind() -> None:
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if "vigil-served-fuse-" in line]


def test_the_helper_stopped_while_a_file_server_hangs_holds_nothing_else(
        bins: tuple[Path, Path], local: Path, fs: FuseMount,
        helper: tuple[PermissionHelper, list[Report]]) -> None:
    """A FUSE request the server has read is waited out even by a killed thread, so the helper's
    thread held in it outlives the helper's exit, and with it the process's descriptors. The
    helper closes them itself before it exits: its main group goes, and the execs it guarded on
    local disk are allowed (the agent gone); the stop returns (reaped later). The FUSE exec it
    held goes on once the server answers."""
    h, _reports = helper
    launcher = bins[1]
    h.push(rules_and_marks(fs, local))
    pid = h.helper_pid
    fs.stall()
    fuse_exec: list[int | OSError] = []
    t = threading.Thread(target=lambda: fuse_exec.append(
        launch(launcher, [str(fs.root / "denied"), str(local / "ran-fuse")], timeout=120)), daemon=True)
    t.start()
    try:
        fs.wait_entered()
        h.stop(timeout=1)
        assert not h.running
        # the helper's main group is closed although one of its threads is still held
        assert os.path.exists(f"/proc/{pid}/task") and len(os.listdir(f"/proc/{pid}/task")) >= 1
        assert launch(launcher, [str(local / "blocked" / "tool"), str(local / "ran-blocked")], timeout=120) == 0
        assert (local / "ran-blocked").exists()
        assert t.is_alive() and not fuse_exec
    finally:
        fs.release()
        t.join(120)
    assert fuse_exec == [0] and (local / "ran-fuse").exists()
    wait_for(lambda: _reaped(pid))   # the held thread let go: the helper ends


def _reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True
