"""PermissionGuard on the real kernel: exec and open refused before they happen,
and the fail-safe (every permission event answered, whatever the callback does).

Everything is confined to test-created directories (and a test-mounted tmpfs
for the mount/filesystem marks). Execs are started from a helper thread with a
bound: if an answer never came, the test stops the guard (which answers) and
fails instead of hanging.
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.kernel.bpfstate import require_root

from vigil.enforce.fanotify import Decision, PermEvent, PermissionGuard
from vigil.kernel import sys as ksys

pytestmark = pytest.mark.kernel

MARKER_C = r"""
#include <fcntl.h>
#include <unistd.h>
/* first action: leave a marker (argv[1]) so a test can tell whether we ever ran */
int main(int argc, char **argv) {
    if (argc > 1) { int fd = open(argv[1], O_CREAT | O_WRONLY, 0644); if (fd >= 0) close(fd); }
    return 0;
}
"""


@pytest.fixture(scope="module")
def marker_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_root()  # fanotify permission events need CAP_SYS_ADMIN
    d = tmp_path_factory.mktemp("marker-src")
    (d / "m.c").write_text(MARKER_C)
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.fail("no C compiler: `make` installs clang")
    # static: no dynamic loader runs before main, the marker is the first thing it does
    r = subprocess.run([cc, "-O1", "-static", "-o", str(d / "m"), str(d / "m.c")], capture_output=True)
    if r.returncode:
        subprocess.run([cc, "-O1", "-o", str(d / "m"), str(d / "m.c")], check=True)
    return d / "m"


@pytest.fixture
def guarded_dir(marker_bin: Path) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vigil-fan-test-"))
    try:
        for name in ("denied", "allowed"):
            shutil.copy2(marker_bin, d / name)
        (d / "secret.txt").write_text("secret\n")
        (d / "public.txt").write_text("public\n")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Guard:
    """A started guard that is always stopped, with a bounded exec helper."""

    def __init__(self, g: PermissionGuard) -> None:
        self.g = g
        self.reports: list[tuple[PermEvent, Decision]] = []

    def run(self, argv: list[str], timeout: float = 20.0) -> int | OSError:
        """Exit code, or the OSError execve raised; fails (after answering) if stuck."""
        out: list[int | OSError] = []

        def target() -> None:
            try:
                out.append(subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          timeout=timeout).returncode)
            except OSError as e:
                out.append(e)

        t = threading.Thread(target=target, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            self.g.stop()  # answers whatever is pending
            t.join(10)
            pytest.fail(f"{argv[0]} was not answered within {timeout}s")
        return out[0]


@pytest.fixture
def make_guard() -> Iterator[Callable[..., Guard]]:
    made: list[Guard] = []

    def make(decide: Callable[[PermEvent], Decision], marks: list[tuple[str, dict]], **kw: object) -> Guard:
        holder: list[Guard] = []
        g = PermissionGuard(decide, on_event=lambda e, d: holder[0].reports.append((e, d)), **kw)  # type: ignore[arg-type]
        w = Guard(g)
        holder.append(w)
        for path, opts in marks:
            g.add_mark(path, **opts)
        made.append(w)
        g.start()
        return w

    try:
        yield make
    finally:
        for w in made:
            w.g.stop()
            assert not w.g.running


def deny_named(*names: str) -> Callable[[PermEvent], Decision]:
    def decide(ev: PermEvent) -> Decision:
        deny = os.path.basename(ev.path) in names
        return Decision(not deny, "named" if deny else "", "test-policy", 0)
    return decide


def wait_reports(w: Guard, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(w.reports) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def test_exec_denied_before_first_instruction(guarded_dir: Path, make_guard) -> None:  # type: ignore[no-untyped-def]
    w = make_guard(deny_named("denied"), [(str(guarded_dir), {"exec": True, "open": False})])
    m_denied, m_allowed = guarded_dir / "ran-denied", guarded_dir / "ran-allowed"
    res = w.run([str(guarded_dir / "denied"), str(m_denied)])
    assert isinstance(res, PermissionError), res
    assert not m_denied.exists(), "the denied binary ran"
    assert w.run([str(guarded_dir / "allowed"), str(m_allowed)]) == 0
    assert m_allowed.exists()
    wait_reports(w, 2)
    by_name = {os.path.basename(e.path): (e, d) for e, d in w.reports}
    ev, d = by_name["denied"]
    assert ev.kind == "exec" and ev.answered_allow is False and d.policy == "test-policy"
    assert by_name["allowed"][0].answered_allow is True
    assert w.g.stats.denied == 1


def test_open_of_existing_file_denied(guarded_dir: Path, make_guard) -> None:  # type: ignore[no-untyped-def]
    make_guard(deny_named("secret.txt"), [(str(guarded_dir), {"exec": False, "open": True})])
    probe = ("import sys\nfor p in sys.argv[1:]:\n try:\n  open(p).read(); print('ok')\n"
             " except OSError as e: print(e.errno)")
    # from a child: the guard never refuses its own process
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(subprocess.run(
        [sys.executable, "-c", probe, str(guarded_dir / "secret.txt"), str(guarded_dir / "public.txt")],
        capture_output=True, text=True, timeout=20).stdout))
    t.start()
    t.join(25)
    assert not t.is_alive()
    secret, public = out[0].split()
    assert int(secret) in (1, 13)  # EPERM (fanotify's answer) / EACCES
    assert public == "ok"


def test_own_process_is_never_denied(guarded_dir: Path, make_guard) -> None:  # type: ignore[no-untyped-def]
    called: list[str] = []

    def deny_all(ev: PermEvent) -> Decision:
        called.append(ev.path)
        return Decision(False, "deny all")

    w = make_guard(deny_all, [(str(guarded_dir), {"exec": False, "open": True})])
    assert (guarded_dir / "secret.txt").read_text() == "secret\n"
    assert w.g.stats.self_allowed >= 1 and not called


def test_monitor_mode_reports_deny_but_allows(guarded_dir: Path, make_guard) -> None:  # type: ignore[no-untyped-def]
    w = make_guard(deny_named("denied"), [(str(guarded_dir), {"exec": True, "open": False})], monitor=True)
    marker = guarded_dir / "ran"
    assert w.run([str(guarded_dir / "denied"), str(marker)]) == 0
    assert marker.exists()
    wait_reports(w, 1)
    ev, d = w.reports[0]
    assert d.allow is False and ev.answered_allow is True


@pytest.mark.parametrize("behaviour, default_allow, expect_ran, outcome", [
    ("hang", True, True, "timeout"),
    ("hang", False, False, "timeout"),
    ("raise", True, True, "error"),
    ("raise", False, False, "error"),
    ("not-a-decision", True, True, "error"),
])
def test_fail_safe_callback(guarded_dir: Path, make_guard, behaviour: str, default_allow: bool,  # type: ignore[no-untyped-def]
                            expect_ran: bool, outcome: str) -> None:
    release = threading.Event()

    def decide(ev: PermEvent) -> Decision:
        if behaviour == "hang":
            release.wait(60)
        elif behaviour == "raise":
            raise RuntimeError("policy engine bug")
        return "yes"  # type: ignore[return-value]

    try:
        w = make_guard(decide, [(str(guarded_dir), {"exec": True, "open": False})],
                       timeout_s=0.3, default_allow=default_allow)
        marker = guarded_dir / "ran"
        t0 = time.monotonic()
        res = w.run([str(guarded_dir / "allowed"), str(marker)])
        took = time.monotonic() - t0
        assert (res == 0) is expect_ran and marker.exists() is expect_ran, res
        if not expect_ran:
            assert isinstance(res, PermissionError)
        assert took < 5
        wait_reports(w, 1)
        ev, d = w.reports[0]
        assert ev.outcome == outcome and d.allow is default_allow
        if behaviour == "hang":
            assert took >= 0.25  # answered by the deadline, not before
    finally:
        release.set()


def test_hung_callback_does_not_stall_later_events(guarded_dir: Path, make_guard) -> None:  # type: ignore[no-untyped-def]
    """Each event gets its own deadline; a stuck worker is replaced."""
    release = threading.Event()

    def decide(ev: PermEvent) -> Decision:
        if os.path.basename(ev.path) == "denied":
            release.wait(60)
        return Decision(True)

    try:
        w = make_guard(decide, [(str(guarded_dir), {"exec": True, "open": False})], timeout_s=2.0, min_workers=1)
        hung = threading.Thread(target=w.run, args=([str(guarded_dir / "denied")],), daemon=True)
        hung.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        assert w.run([str(guarded_dir / "allowed")]) == 0
        assert time.monotonic() - t0 < 1.0
        hung.join(10)
        assert not hung.is_alive()
    finally:
        release.set()


def test_stop_answers_pending_event(guarded_dir: Path, make_guard) -> None:  # type: ignore[no-untyped-def]
    entered, release = threading.Event(), threading.Event()

    def decide(ev: PermEvent) -> Decision:
        entered.set()
        release.wait(60)
        return Decision(False)  # too late: stop() answered already

    try:
        w = make_guard(decide, [(str(guarded_dir), {"exec": True, "open": False})], timeout_s=60)
        out: list[int | OSError] = []
        t = threading.Thread(target=lambda: out.append(w.run([str(guarded_dir / "allowed")], timeout=30)),
                             daemon=True)
        t.start()
        assert entered.wait(10)
        t0 = time.monotonic()
        w.g.stop()
        t.join(10)
        assert not t.is_alive() and out == [0]
        assert time.monotonic() - t0 < 5
        assert w.g.stats.stopped == 1
    finally:
        release.set()


def test_kernel_allows_pending_events_when_fd_closes(guarded_dir: Path) -> None:
    """The premise of the last line of defence: closing the fanotify fd answers FAN_ALLOW."""
    fd = ksys.fanotify_init(ksys.FAN_CLASS_CONTENT | ksys.FAN_CLOEXEC)
    out: list[int] = []
    t = None
    try:
        ksys.fanotify_mark(fd, ksys.FAN_MARK_ADD, ksys.FAN_OPEN_EXEC_PERM | ksys.FAN_EVENT_ON_CHILD,
                           str(guarded_dir))
        t = threading.Thread(target=lambda: out.append(subprocess.run(
            [str(guarded_dir / "allowed")], timeout=30).returncode), daemon=True)
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


def test_process_outside_marked_dir_untouched(guarded_dir: Path, marker_bin: Path, make_guard) -> None:  # type: ignore[no-untyped-def]
    called: list[str] = []

    def deny_all(ev: PermEvent) -> Decision:
        called.append(ev.path)
        return Decision(False)

    elsewhere = Path(tempfile.mkdtemp(prefix="vigil-fan-outside-"))
    try:
        shutil.copy2(marker_bin, elsewhere / "denied")
        w = make_guard(deny_all, [(str(guarded_dir), {"exec": True, "open": True})])
        assert w.run([str(elsewhere / "denied"), str(elsewhere / "ran")]) == 0
        assert (elsewhere / "ran").exists()
        assert not [p for p in called if p.startswith(str(elsewhere))]
        assert isinstance(w.run([str(guarded_dir / "denied")]), PermissionError)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_remove_mark_stops_guarding(guarded_dir: Path, make_guard) -> None:  # type: ignore[no-untyped-def]
    w = make_guard(deny_named("denied"), [(str(guarded_dir), {"exec": True, "open": False})])
    assert isinstance(w.run([str(guarded_dir / "denied")]), PermissionError)
    w.g.remove_mark(str(guarded_dir))
    assert w.run([str(guarded_dir / "denied")]) == 0


@pytest.mark.parametrize("kind", ["mount", "filesystem"])
def test_mount_and_filesystem_marks(marker_bin: Path, make_guard, kind: str) -> None:  # type: ignore[no-untyped-def]
    """A whole (test-mounted tmpfs) file system, files in nested directories included."""
    mnt = Path(tempfile.mkdtemp(prefix="vigil-fan-mnt-"))
    mounted = False
    try:
        ksys.mount("tmpfs", str(mnt), "tmpfs")
        mounted = True
        (mnt / "a" / "b").mkdir(parents=True)
        for name in ("denied", "allowed"):
            shutil.copy2(marker_bin, mnt / "a" / "b" / name)
        w = make_guard(deny_named("denied"), [(str(mnt), {"exec": True, "open": False, kind: True})])
        assert isinstance(w.run([str(mnt / "a" / "b" / "denied")]), PermissionError)
        assert w.run([str(mnt / "a" / "b" / "allowed")]) == 0
        w.g.stop()  # before the unmount: a mark pins nothing, but be tidy
    finally:
        if mounted:
            ksys.umount(str(mnt))
        os.rmdir(mnt)


def test_bad_mark_arguments() -> None:
    g = PermissionGuard(lambda ev: Decision(True))
    with pytest.raises(ValueError):
        g.add_mark("/tmp", exec=False, open=False)
    with pytest.raises(KeyError):
        g.remove_mark("/nonexistent")
