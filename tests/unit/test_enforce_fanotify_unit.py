"""PermissionGuard answering logic without the kernel: a fake event stream through
the parser, responses captured from a pipe standing in for the fanotify fd."""
from __future__ import annotations

import os
import time
from typing import Iterator

import pytest

from vigil.enforce.fanotify import Decision, PermEvent, PermissionGuard
from vigil.kernel import sys as ksys


class FakeGuard:
    """A guard whose 'fanotify fd' is the write end of a pipe: responses land in `resp`."""

    def __init__(self, g: PermissionGuard) -> None:
        self.g = g
        self.resp_r, w = os.pipe()
        g._fd = w
        g._self_pid = os.getpid()
        for _ in range(g.min_workers):
            g._spawn_worker()

    def event(self, pid: int, mask: int = ksys.FAN_OPEN_EXEC_PERM) -> int:
        efd = os.open("/dev/null", os.O_RDONLY)
        self.g._parse(ksys.FANOTIFY_METADATA.pack(ksys.FANOTIFY_METADATA.size, 3, 0, 24, mask, efd, pid))
        return efd

    def responses(self, n: int, timeout: float = 3.0) -> list[tuple[int, int]]:
        out, buf = [], b""
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            self.g._expire()
            os.set_blocking(self.resp_r, False)
            try:
                buf += os.read(self.resp_r, 4096)
            except BlockingIOError:
                time.sleep(0.01)
            while len(buf) >= 8:
                out.append(ksys.FANOTIFY_RESPONSE.unpack(buf[:8]))
                buf = buf[8:]
        return out

    def close(self) -> None:
        for _ in self.g._workers:
            self.g._work.put(None)
        os.close(self.g._fd)
        self.g._fd = -1
        os.close(self.resp_r)


@pytest.fixture
def fake() -> Iterator[list[FakeGuard]]:
    made: list[FakeGuard] = []
    yield made
    for f in made:
        f.close()


def mk(fake: list[FakeGuard], decide, **kw) -> FakeGuard:  # type: ignore[no-untyped-def]
    f = FakeGuard(PermissionGuard(decide, **kw))
    fake.append(f)
    return f


def test_every_event_answered_once(fake: list[FakeGuard]) -> None:
    f = mk(fake, lambda ev: Decision(ev.pid % 2 == 0))
    fds = [f.event(pid) for pid in (100, 101, 102, 103)]
    got = dict(f.responses(4))
    assert got == {fds[0]: ksys.FAN_ALLOW, fds[1]: ksys.FAN_DENY, fds[2]: ksys.FAN_ALLOW, fds[3]: ksys.FAN_DENY}
    assert f.responses(1, timeout=0.3) == []  # nothing twice
    assert not f.g._pending


def test_own_pid_allowed_without_decision(fake: list[FakeGuard]) -> None:
    called: list[PermEvent] = []
    f = mk(fake, lambda ev: called.append(ev) or Decision(False))  # type: ignore[func-returns-value]
    efd = f.event(os.getpid())
    assert f.responses(1) == [(efd, ksys.FAN_ALLOW)] and not called


def test_late_decision_after_timeout_is_dropped(fake: list[FakeGuard]) -> None:
    def slow(ev: PermEvent) -> Decision:
        time.sleep(0.5)
        return Decision(False)
    f = mk(fake, slow, timeout_s=0.1, default_allow=True)
    efd = f.event(4242)
    assert f.responses(1) == [(efd, ksys.FAN_ALLOW)]
    time.sleep(0.6)
    assert f.responses(1, timeout=0.2) == []
    assert f.g.stats.timeouts == 1 and f.g.stats.denied == 0


def test_expired_deadline_of_answered_event_spares_fd_reuser(fake: list[FakeGuard]) -> None:
    """Regression: A is answered and its fd number reused by B; A's old deadline must not
    take B out of the pending table (B would then never be answered)."""
    def decide(ev: PermEvent) -> Decision:
        if ev.pid == 2:
            time.sleep(0.25)  # B decides after A's deadline, before its own
            return Decision(False)
        return Decision(True)
    f = mk(fake, decide, timeout_s=0.3, min_workers=1)
    a = f.event(1)
    assert f.responses(1) == [(a, ksys.FAN_ALLOW)]
    time.sleep(0.1)
    b = f.event(2)
    assert b == a  # the fd number was reused
    assert f.responses(1) == [(b, ksys.FAN_DENY)]  # B's own decision, not lost, not a timeout
    assert f.g.stats.timeouts == 0


def test_monitor_decision_answers_allow(fake: list[FakeGuard]) -> None:
    f = mk(fake, lambda ev: Decision(False, monitor=True))
    efd = f.event(4242)
    assert f.responses(1) == [(efd, ksys.FAN_ALLOW)]


def test_open_event_kind() -> None:
    assert PermEvent(1, "/x", ksys.FAN_OPEN_PERM).kind == "open"
    assert PermEvent(1, "/x", ksys.FAN_OPEN_EXEC_PERM).kind == "exec"


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PermissionGuard(lambda ev: Decision(True), timeout_s=0)
