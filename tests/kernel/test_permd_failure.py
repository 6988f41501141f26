"""vigil-permd when the agent's side fails: the agent stops reading its socket, sends it
something malformed, or changes the rules during a storm of guarded execs. Whatever the agent
does, every guarded exec or open is answered by the rules (or by the default at the deadline),
and the agent's requests are still answered.

Everything happens on a tmpfs this module mounts (binaries copied there); rules name only paths
on it, and the test process is not exempt, so its own opens are the guarded ones."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vigil.enforce.permd as permd_mod
from tests.kernel.bpfstate import require_root
from tests.kernel.testbins import LAUNCH_C, MARKER_C, build, launch
from vigil.enforce.permd import PermdError, PermissionHelper
from vigil.enforce.permd_proto import Report
from vigil.enforce.permtable import Cond, Rule, Table, plan_marks
from vigil.kernel import sys as ksys

pytestmark = pytest.mark.kernel

EXEC = frozenset({"exec"})
OPEN = frozenset({"open"})


@pytest.fixture(scope="module")
def tmpfs() -> Iterator[Path]:
    """A test-mounted tmpfs holding a launcher, a marker binary under blocked/ and allowed/,
    and two files to open; unmounted at the end."""
    require_root()  # fanotify permission events need CAP_SYS_ADMIN
    mnt = Path(tempfile.mkdtemp(prefix="vigil-permd-fail-"))
    ksys.mount("tmpfs", str(mnt), "tmpfs")
    try:
        bins = mnt / "bins"
        bins.mkdir()
        build(bins, "launch", LAUNCH_C)
        marker = build(bins, "m", MARKER_C)
        for sub in ("blocked", "allowed"):
            (mnt / sub).mkdir()
            shutil.copy2(marker, mnt / sub / "tool")
        (mnt / "secret.txt").write_text("secret\n")
        (mnt / "public.txt").write_text("public\n")
        yield mnt
    finally:
        ksys.umount(str(mnt))
        os.rmdir(mnt)


class Held:
    """A helper whose reports are read by a reader that can be held (an agent that does not
    read its socket): `hold()` until `release()`."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.reports: list[Report] = []
        self.h = PermissionHelper(self._on_report, test_hooks=True)

    def _on_report(self, rep: Report) -> None:
        self.gate.wait()
        self.reports.append(rep)

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def held(tmpfs: Path) -> Iterator[Held]:
    w = Held()
    w.h.start()
    try:
        yield w
    finally:
        w.release()
        w.h.stop()
        assert not w.h.running


def run(tmpfs: Path, argv: list[str]) -> int | OSError:
    return launch(tmpfs / "bins" / "launch", argv)


def opens(path: Path, n: int) -> tuple[int, int]:
    """(opened, refused) of n opens of path."""
    ok = refused = 0
    for _ in range(n):
        try:
            os.close(os.open(path, os.O_RDONLY))
            ok += 1
        except PermissionError:
            refused += 1
    return ok, refused


def deny_rules(tmpfs: Path) -> list[Rule]:
    """exec under blocked/ and open of secret.txt refused; open of public.txt reported (post)."""
    return [Rule(1, 0, EXEC, "override", conds=(Cond("path", "Prefix", (f"{tmpfs}/blocked/",)),)),
            Rule(2, 0, OPEN, "override", conds=(Cond("path", "Equal", (f"{tmpfs}/secret.txt",)),)),
            Rule(3, 0, OPEN, "post", conds=(Cond("path", "Equal", (f"{tmpfs}/public.txt",)),))]


def push(h: PermissionHelper, rules: list[Rule], **kw: object) -> None:
    h.push(Table(rules, plan_marks(rules), **kw))  # type: ignore[arg-type]


# each request the agent makes of the helper, and what its reply must show
REQUESTS: list[tuple[str, Callable[[PermissionHelper, Path], object]]] = [
    ("stats", lambda h, d: h.stats()["events"] > 0),
    ("evaluate", lambda h, d: h.evaluate("open", 1, f"{d}/secret.txt", "").allow is False),
    ("push", lambda h, d: push(h, deny_rules(d)) is None and h.stats()["generation"] == 2),
]


@pytest.mark.parametrize("request_name", [name for name, _ in REQUESTS])
def test_replies_get_through_while_reports_fill_the_socket(
        tmpfs: Path, held: Held, monkeypatch: pytest.MonkeyPatch, request_name: str) -> None:
    """An agent that stops reading (its reader held) while opens are reported: the reports that
    do not fit are dropped and counted, every open is answered, and a request made meanwhile
    (stats, an evaluation, a new table) still gets its reply once the agent reads again."""
    monkeypatch.setattr(permd_mod, "REPLY_TIMEOUT_S", 20.0)
    request = dict(REQUESTS)[request_name]
    push(held.h, deny_rules(tmpfs))
    held.hold()
    # far more reports than the socket holds (each report is one packet of ~100 bytes)
    assert opens(tmpfs / "public.txt", 30000) == (30000, 0)
    assert opens(tmpfs / "secret.txt", 10) == (0, 10)
    out: list[object] = []

    def call() -> None:
        try:
            out.append(request(held.h, tmpfs))
        except PermdError as e:
            out.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(0.5)   # (the request is sent while the reader is still held)
    held.release()
    t.join(30)
    assert out == [True], "the reply to the request was lost behind the reports"
    st = held.h.stats()
    assert st["reports_dropped"] > 0 and st["reports"] + st["reports_dropped"] >= 30010
    assert st["reports"] == held.h.reports_received
