"""Permission enforcement before the action: fanotify FAN_OPEN_EXEC_PERM /
FAN_OPEN_PERM for exec and open of existing files.

Usage::

    guard = PermissionGuard(decide, timeout_s=1.0, default_allow=True, on_event=report)
    guard.add_mark("/opt/untrusted", exec=True, open=False)
    guard.start()
    ...
    guard.stop()

Fail-safe: every permission event gets exactly one answer.
- The reader thread only reads, answers our own process at once, and hands the
  event to decision workers; it never runs the decision itself.
- `decide` runs in a worker with a deadline: the reader answers `default_allow`
  for every event still unanswered `timeout_s` after it was read, whether the
  callback hangs, is slow or is still queued. A callback that raises, or returns
  something other than a Decision, is answered `default_allow` too.
- `_answer` is the only place that writes a response; it takes the event out of
  the pending table under a lock first, so a late decision after a timeout (or
  after stop) is dropped, and the fanotify fd is only closed under that lock.
- stop(), and any crash of the reader, answer every pending and queued event
  with `default_allow` and then close the fd; the kernel allows whatever is
  still in flight when the fd closes (fanotify_release).
- Reporting (`on_event`) runs on its own thread after the answer is written.
Limits: a callback that holds the GIL without releasing it stalls the reader
too (Python switches threads every 5 ms, so pure-Python loops are fine).
"""
from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from vigil.kernel import sys as ksys

log = logging.getLogger("vigil.enforce.fanotify")

READ_BUF = 64 * 1024
PERM_MASK = ksys.FAN_OPEN_PERM | ksys.FAN_OPEN_EXEC_PERM
_META = ksys.FANOTIFY_METADATA
_RESP = ksys.FANOTIFY_RESPONSE


@dataclass(slots=True, eq=False)
class PermEvent:
    """One permission request. `binary` is /proc/<pid>/exe of the requester (for an
    exec: the image that calls execve, the new one is `path`)."""
    pid: int
    path: str
    mask: int
    binary: str | None = None
    received: float = 0.0           # time.monotonic() when read
    fd: int = -1                    # event fd, valid until answered
    answered_allow: bool | None = None
    outcome: str = ""               # decided | timeout | error | self | stopped
    latency_us: float = 0.0         # read -> answer written

    @property
    def kind(self) -> str:
        return "exec" if self.mask & ksys.FAN_OPEN_EXEC_PERM else "open"


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    reason: str = ""
    policy: str = ""
    selector: int = -1
    monitor: bool = False           # report this decision, answer allow


@dataclass
class _Mark:
    flags: int                      # FAN_MARK_MOUNT / FAN_MARK_FILESYSTEM or 0
    mask: int


@dataclass
class GuardStats:
    events: int = 0
    allowed: int = 0
    denied: int = 0
    timeouts: int = 0
    errors: int = 0
    self_allowed: int = 0
    stopped: int = 0
    write_errors: int = 0
    reports_dropped: int = 0
    max_latency_us: float = 0.0
    latency_us_total: float = field(default=0.0, repr=False)


class PermissionGuard:
    def __init__(self, decide: Callable[[PermEvent], Decision], *, timeout_s: float = 1.0,
                 default_allow: bool = True, on_event: Callable[[PermEvent, Decision], None] | None = None,
                 monitor: bool = False, min_workers: int = 2, max_workers: int = 16) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.decide = decide
        self.timeout_s = timeout_s
        self.default_allow = default_allow
        self.on_event = on_event
        self.monitor = monitor  # every deny is reported but answered allow
        self.min_workers, self.max_workers = max(1, min_workers), max(1, max_workers, min_workers)
        self.stats = GuardStats()
        self.error: BaseException | None = None  # why the reader stopped, if it crashed
        self._marks: dict[str, _Mark] = {}
        self._fd = -1
        self._lock = threading.Lock()
        self._pending: dict[int, PermEvent] = {}
        self._deadlines: deque[tuple[float, PermEvent]] = deque()
        self._work: queue.SimpleQueue[PermEvent | None] = queue.SimpleQueue()
        self._reports: queue.Queue[tuple[PermEvent, Decision] | None] = queue.Queue(maxsize=65536)
        self._workers: list[threading.Thread] = []
        self._idle = 0                  # workers waiting for work (guarded by _idle_lock)
        self._idle_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._notifier: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._stopping = False
        self._self_pid = os.getpid()

    # ------------------------------------------------------------------ marks
    def add_mark(self, path: str, *, exec: bool, open: bool, mount: bool = False,
                 filesystem: bool = False) -> None:
        """Guard exec and/or open under `path`: the directory and its direct children,
        or with mount=True the whole mount, with filesystem=True the whole file system."""
        mask = (ksys.FAN_OPEN_EXEC_PERM if exec else 0) | (ksys.FAN_OPEN_PERM if open else 0)
        if not mask:
            raise ValueError("add_mark: nothing to guard (exec=False, open=False)")
        flags = ksys.FAN_MARK_MOUNT if mount else ksys.FAN_MARK_FILESYSTEM if filesystem else 0
        if not flags and os.path.isdir(path):
            mask |= ksys.FAN_EVENT_ON_CHILD
        path = os.path.abspath(path)
        old = self._marks.get(path)
        if old is not None and old.flags != flags:
            self.remove_mark(path)
        self._marks[path] = _Mark(flags, mask)
        if self._fd >= 0:
            ksys.fanotify_mark(self._fd, ksys.FAN_MARK_ADD | flags, mask, path)

    def remove_mark(self, path: str) -> None:
        path = os.path.abspath(path)
        m = self._marks.pop(path, None)
        if m is None:
            raise KeyError(f"no mark on {path}")
        if self._fd >= 0:
            try:
                ksys.fanotify_mark(self._fd, ksys.FAN_MARK_REMOVE | m.flags, m.mask, path)
            except FileNotFoundError:
                pass  # the path (and with it the mark) is gone

    @property
    def marks(self) -> dict[str, int]:
        return {p: m.mask for p, m in self._marks.items()}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._reader is not None:
            raise RuntimeError("PermissionGuard already started")
        fd = ksys.fanotify_init(ksys.FAN_CLASS_CONTENT | ksys.FAN_CLOEXEC | ksys.FAN_NONBLOCK,
                                os.O_RDONLY | getattr(os, "O_LARGEFILE", 0) | os.O_CLOEXEC)
        try:
            for path, m in self._marks.items():
                ksys.fanotify_mark(fd, ksys.FAN_MARK_ADD | m.flags, m.mask, path)
        except BaseException:
            os.close(fd)  # nothing can be pending yet for a half-marked fd
            raise
        self._fd = fd
        self._stopping = False
        self._self_pid = os.getpid()
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._notifier = threading.Thread(target=self._notify_loop, name="vigil-fan-report", daemon=True)
        self._notifier.start()
        for _ in range(self.min_workers):
            self._spawn_worker()
        self._reader = threading.Thread(target=self._read_loop, name="vigil-fan-reader", daemon=True)
        self._reader.start()

    def stop(self, join_timeout: float = 5.0) -> None:
        """Answer everything pending (default_allow), close the fd, stop the threads.
        Hung decision callbacks are abandoned (daemon threads), never waited for."""
        reader = self._reader
        if reader is None:
            return
        self._stopping = True
        if self._wake:
            try:
                os.write(self._wake[1], b"x")
            except OSError:
                pass
        reader.join(join_timeout)
        if reader.is_alive():  # should not happen; never leave the fd unanswered
            self._shutdown_fd()
        self._reader = None
        for _ in self._workers:
            self._work.put(None)
        for w in list(self._workers):
            w.join(0.2)
        self._workers = [w for w in self._workers if w.is_alive()]  # hung callbacks
        try:
            self._reports.put_nowait(None)
        except queue.Full:
            pass
        if self._notifier is not None:
            self._notifier.join(join_timeout)
            self._notifier = None
        if self._wake:
            for f in self._wake:
                os.close(f)
            self._wake = None

    def __enter__(self) -> "PermissionGuard":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._reader is not None and self._fd >= 0

    # ------------------------------------------------------------------ answering
    def _answer(self, ev: PermEvent, allow: bool, outcome: str) -> bool:
        """Write the one response for ev; False when it was answered already."""
        with self._lock:
            # identity, not fd number: once answered, ev.fd may already name a newer event
            if self._pending.get(ev.fd) is not ev:
                return False
            del self._pending[ev.fd]
            st = self.stats
            try:
                if self._fd >= 0:
                    os.write(self._fd, _RESP.pack(ev.fd, ksys.FAN_ALLOW if allow else ksys.FAN_DENY))
            except OSError:
                st.write_errors += 1  # the kernel allows it when the fd closes
            finally:
                os.close(ev.fd)
            lat = (time.monotonic() - ev.received) * 1e6
            ev.answered_allow, ev.outcome, ev.latency_us = allow, outcome, lat
            if allow:
                st.allowed += 1
            else:
                st.denied += 1
            st.latency_us_total += lat
            if lat > st.max_latency_us:
                st.max_latency_us = lat
            return True

    def _respond_now(self, efd: int, allow: bool) -> None:
        """Answer an event that never entered the pending table."""
        with self._lock:
            try:
                if self._fd >= 0:
                    os.write(self._fd, _RESP.pack(efd, ksys.FAN_ALLOW if allow else ksys.FAN_DENY))
            except OSError:
                self.stats.write_errors += 1
            finally:
                os.close(efd)

    def _report(self, ev: PermEvent, d: Decision) -> None:
        if self.on_event is None:
            return
        try:
            self._reports.put_nowait((ev, d))
        except queue.Full:
            self.stats.reports_dropped += 1

    def _fallback(self, reason: str) -> Decision:
        return Decision(self.default_allow, reason)

    # ------------------------------------------------------------------ reader
    def _read_loop(self) -> None:
        fd = self._fd
        assert self._wake is not None
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake[0], select.POLLIN)
        try:
            while not self._stopping:
                timeout_ms = None
                if self._deadlines:
                    timeout_ms = max(0, int((self._deadlines[0][0] - time.monotonic()) * 1000) + 1)
                poller.poll(timeout_ms)
                self._read_batch(fd)
                self._expire()
        except BaseException as e:  # noqa: BLE001 - the finally answers everything
            self.error = e
            log.error("fanotify reader failed, answering pending events and closing: %r", e)
        finally:
            self._shutdown_fd()

    def _read_batch(self, fd: int) -> None:
        while True:
            try:
                buf = os.read(fd, READ_BUF)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not buf:
                return
            self._parse(buf)

    def _parse(self, buf: bytes) -> None:
        pos, n, now = 0, len(buf), time.monotonic()
        while pos + _META.size <= n:
            ev_len, _vers, _res, _mlen, mask, efd, pid = _META.unpack_from(buf, pos)
            pos += ev_len if ev_len >= _META.size else n  # a corrupt length ends the batch
            if efd < 0:
                continue  # FAN_NOFD: queue overflow notice, no permission involved
            self.stats.events += 1
            try:
                if pid == self._self_pid or not mask & PERM_MASK:
                    self.stats.self_allowed += pid == self._self_pid
                    self._respond_now(efd, True)  # never block ourselves
                    continue
                try:
                    path = os.readlink(f"/proc/self/fd/{efd}")
                except OSError:
                    path = ""
                ev = PermEvent(pid=pid, path=path, mask=mask, received=now, fd=efd)
                with self._lock:
                    self._pending[efd] = ev
                self._deadlines.append((now + self.timeout_s, ev))
                if self._idle == 0 and len(self._workers) < self.max_workers:
                    self._spawn_worker()
                self._work.put(ev)
            except BaseException:
                with self._lock:
                    registered = self._pending.get(efd)
                if registered is None:
                    self._respond_now(efd, self.default_allow)
                raise

    def _expire(self) -> None:
        now = time.monotonic()
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            _, ev = dl.popleft()
            if ev.answered_allow is None and self._answer(ev, self.default_allow, "timeout"):
                self.stats.timeouts += 1
                self._report(ev, self._fallback(f"decision timed out after {self.timeout_s:g}s"))

    def _shutdown_fd(self) -> None:
        """Answer queued and pending events, then close the fd (under the lock, so no
        answer can be written to a reused fd number)."""
        fd = self._fd
        if fd < 0:
            return
        try:
            self._read_batch(fd)
        except Exception:  # noqa: BLE001 - closing the fd below allows the rest
            pass
        with self._lock:
            pending = list(self._pending.values())
        for ev in pending:
            if self._answer(ev, self.default_allow, "stopped"):
                self.stats.stopped += 1
                self._report(ev, self._fallback("guard stopped"))
        self._deadlines.clear()
        with self._lock:
            for efd in list(self._pending):
                os.close(efd)  # raced in after the sweep; the kernel allows on close
            self._pending.clear()
            self._fd = -1
            os.close(fd)

    # ------------------------------------------------------------------ workers
    def _spawn_worker(self) -> None:
        t = threading.Thread(target=self._work_loop, name=f"vigil-fan-decide-{len(self._workers)}", daemon=True)
        self._workers.append(t)
        t.start()

    def _work_loop(self) -> None:
        while True:
            with self._idle_lock:
                self._idle += 1
            ev = self._work.get()
            with self._idle_lock:
                self._idle -= 1
            if ev is None:
                return
            if ev.answered_allow is not None:
                continue  # timed out or stopped while queued
            try:
                ev.binary = os.readlink(f"/proc/{ev.pid}/exe")
            except OSError:
                ev.binary = None
            try:
                d = self.decide(ev)
                if not isinstance(d, Decision):
                    raise TypeError(f"decide returned {type(d).__name__}, not Decision")
                outcome = "decided"
            except Exception as e:  # noqa: BLE001 - fail-safe: answer the default
                d, outcome = self._fallback(f"decision error: {e!r}"), "error"
                self.stats.errors += 1
            allow = d.allow or d.monitor or self.monitor
            if self._answer(ev, allow, outcome):
                self._report(ev, d)
            if self._stopping:
                return

    # ------------------------------------------------------------------ reports
    def _notify_loop(self) -> None:
        while True:
            item = self._reports.get()
            if item is None:
                return
            try:
                self.on_event(*item)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a reporting bug must not stop reporting
                log.exception("on_event callback failed")


__all__ = ["Decision", "GuardStats", "PermEvent", "PermissionGuard"]
