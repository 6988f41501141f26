"""Agent side of vigil-permd, the native helper that answers fanotify permission events.

The helper is a separate process (native/permd.c) that owns the fanotify group and
decides from a table pushed here; no permission answer ever waits on this Python
process. This module starts it, pushes tables (`push`), receives reports of the
selectors that matched (`on_report`, on a reader thread), and restarts it with the
last table if it dies.

    helper = PermissionHelper(on_report)
    helper.push(Table(rules, plan_marks(rules)))
    ...
    helper.stop()
"""
from __future__ import annotations

import logging
import os
import queue
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vigil.enforce import permd_proto as P
from vigil.enforce.permtable import Table, encode

log = logging.getLogger("vigil.enforce.permd")

REPLY_TIMEOUT_S = 30.0   # a commit walks directory trees; it answers events meanwhile
RESTART_LIMIT = 5        # restarts within RESTART_WINDOW_S before giving up
RESTART_WINDOW_S = 60.0
WATCH_INTERVAL_S = 0.1   # how often a started helper is looked at (stopped by a signal: continued)


class PermdError(Exception):
    """The helper refused a table or could not be started."""


class PermdTimeout(PermdError):
    """The helper did not answer within REPLY_TIMEOUT_S (it may still do what was asked)."""


def reap(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
    """The helper's exit status, killing it after `timeout`; None when it still cannot be reaped
    then: a thread of it is held in a file server's open that the kernel waits out even for a
    killed process (FUSE, once its server has read the request). The helper closed its groups
    before exiting, so nothing on the host waits on it; it is reaped once that server answers."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.error("vigil-permd (pid %d) does not exit: a thread of it waits on a file server that does not "
                  "answer; it is reaped once that server answers (or its connection is aborted)", proc.pid)
        return None


def helper_path() -> str:
    """The vigil-permd binary: $VIGIL_PERMD, the checkout's build/, or an installed copy."""
    env = os.environ.get("VIGIL_PERMD")
    candidates = [env] if env else []
    candidates += [str(Path(__file__).resolve().parents[2] / "build" / "native" / "vigil-permd"),
                   "/usr/libexec/vigil/vigil-permd", "/usr/lib/vigil/vigil-permd"]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise PermdError("the permission helper vigil-permd is not built (run `make`, or set VIGIL_PERMD)")


class PermissionHelper:
    def __init__(self, on_report: Callable[[P.Report], None] | None = None, *, exe: str | None = None,
                 test_hooks: bool = False) -> None:
        self.on_report = on_report
        self.exe = exe
        self.test_hooks = test_hooks
        self.proc: subprocess.Popen[bytes] | None = None
        self.helper_pid = 0
        self.restarts = 0
        # NoPost counts (stats_and_counts): those of helpers before this one, the last read of this one
        self._counts_lock = threading.Lock()
        self._counts_base: dict[tuple[int, int], int] = {}
        self._counts_last: dict[tuple[int, int], int] = {}
        self._counts_run = 0
        self.continued = 0
        self.reports_received = 0
        self.report_errors = 0
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._replies: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._req = threading.Lock()      # one request/reply exchange at a time
        self._table: Table | None = None
        self._generation = 0
        self._stopping = False
        self._restart_times: list[float] = []
        # generations of tables whose push gave up waiting: their late ACKs are not replies to
        # anything asked now (see _late_ack); _ack_lock orders them with the reader's queueing
        self._abandoned: set[int] = set()
        self._ack_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("vigil-permd already started")
        exe = self.exe or helper_path()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            argv = [exe, "--control-fd", str(theirs.fileno())] + (["--test-hooks"] if self.test_hooks else [])
            # own session: a Ctrl-C meant for the agent reaches the helper as a SHUTDOWN instead
            self.proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError as e:
            ours.close()
            raise PermdError(f"cannot start {exe}: {e}") from None
        finally:
            theirs.close()
        self._sock = ours
        self._stopping = False
        ours.settimeout(10)
        try:
            hello = ours.recv(P.MAX_MSG)
        except OSError as e:
            self._kill()
            raise PermdError(f"{exe} did not start: {e}") from None
        ours.settimeout(None)
        if len(hello) < P.HELLO_S.size or P.HDR.unpack_from(hello)[0] != P.HELLO:
            self._kill()
            raise PermdError(f"{exe} did not say hello (exit status {self.proc.poll() if self.proc else None})")
        _t, _l, version, pid = P.HELLO_S.unpack_from(hello)
        if version != P.VERSION:
            self._kill()
            raise PermdError(f"{exe} speaks protocol {version}, this agent {P.VERSION}: rebuild with `make`")
        self.helper_pid = pid
        self._replies = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read_loop, args=(ours,), name="vigil-permd-reader", daemon=True)
        self._reader.start()
        threading.Thread(target=self._watch, args=(self.proc,), name="vigil-permd-watch", daemon=True).start()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """A helper stopped by a signal (SIGSTOP, SIGTSTP, ...) answers nothing, its watchdog
        stopped with it: every guarded exec would wait for as long. It is continued at once
        (counted: `continued`). (A helper stopped by a tracer is left to it.)"""
        while self.proc is proc and not self._stopping and proc.poll() is None:
            time.sleep(WATCH_INTERVAL_S)
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                if state == "T":
                    os.kill(proc.pid, signal.SIGCONT)
                    self.continued += 1
                    log.error("vigil-permd (pid %d) was stopped by a signal: continued", proc.pid)
            except (OSError, IndexError):
                pass   # (it ended: the reader restarts it)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the helper to exit (the kernel allows whatever is in flight) and reap it."""
        self._stopping = True
        sock, proc = self._sock, self.proc
        if sock is not None:
            try:   # (not waiting for room: a helper that does not read is killed by reap)
                sock.send(P.HDR.pack(P.SHUTDOWN, P.HDR.size), socket.MSG_DONTWAIT)
            except OSError:
                pass
        if proc is not None:
            reap(proc, timeout)
        if sock is not None:
            sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout)
        self._sock, self.proc, self._reader, self._table = None, None, None, None

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            reap(self.proc)
        if self._sock is not None:
            self._sock.close()
        self.proc, self._sock = None, None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> PermissionHelper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ requests
    def _exchange(self, packets: list[bytes], want: int) -> bytes:
        """Send packets, return the reply of type `want` (ACKs refusing a staged packet
        come before it and turn into PermdError)."""
        if self._sock is None:
            raise PermdError("vigil-permd is not running")
        with self._req:
            while True:   # replies of an earlier exchange that timed out
                try:
                    self._replies.get_nowait()
                except queue.Empty:
                    break
            deadline = time.monotonic() + REPLY_TIMEOUT_S
            self._send(self._sock, packets, deadline)
            refused: list[str] = []
            while True:
                try:
                    buf = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise PermdTimeout("vigil-permd did not answer") from None
                if buf is None:
                    raise PermdError("vigil-permd exited")
                mtype = P.HDR.unpack_from(buf)[0]
                if mtype == P.ACK:
                    ack = P.Ack.decode(buf)
                    if ack.reply_to != want:
                        refused.append(ack.text)
                        continue
                    if ack.error:
                        raise PermdError("; ".join(refused + [ack.text]) or os.strerror(ack.error))
                if mtype == want or mtype == P.ACK:
                    return buf

    @staticmethod
    def _send(sock: socket.socket, packets: list[bytes], deadline: float) -> None:
        """Send packets by the deadline: a helper whose main thread is held up reads nothing,
        and a blocking send would hold the agent (and every request after it) without end."""
        for pkt in packets:
            while True:
                try:
                    sock.send(pkt, socket.MSG_DONTWAIT)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([], [sock], [], left)[1]:
                        raise PermdTimeout("vigil-permd did not read its socket") from None
                except OSError as e:
                    raise PermdError(f"vigil-permd: {e}") from None

    def push(self, table: Table) -> P.Ack:
        """Make `table` the one in force: marks first, then the swap; raises PermdError
        (and keeps the previous table) when the helper refuses it."""
        self._generation += 1
        gen = self._generation
        try:
            ack = P.Ack.decode(self._exchange(encode(table, gen), P.COMMIT))
        except PermdTimeout:
            self._abandon(gen)
            raise
        self._table = table
        if ack.text:
            log.warning("vigil-permd: %s", ack.text)
        return ack

    def stats(self) -> dict[str, int]:
        return self.stats_and_counts()[0]

    def stats_and_counts(self) -> tuple[dict[str, int], dict[tuple[int, int], int]]:
        """The helper's counters, and per rule (hook_id, 0-based selector) the NoPost decisions
        it made (no report tells of them), since this agent started it: a helper started again
        counts from 0, so the counts the one before it last gave are added."""
        buf = self._exchange([P.HDR.pack(P.STATS_REQ, P.HDR.size)], P.STATS)
        st = P.decode_stats(buf)
        st.update(restarts=self.restarts, continued=self.continued, reports_received=self.reports_received)
        counts = P.decode_rule_counts(buf)
        with self._counts_lock:
            if self._counts_run != self.restarts:   # another helper since the last read
                for k, n in self._counts_last.items():
                    self._counts_base[k] = self._counts_base.get(k, 0) + n
                self._counts_run = self.restarts
            self._counts_last = counts
            total = dict(self._counts_base)
        for k, n in counts.items():
            total[k] = total.get(k, 0) + n
        return st, total

    def evaluate(self, kind: str, pid: int, path: str, binary: str) -> P.EvalResult:
        """The helper's decision for a synthetic request against the table in force."""
        p, b = os.fsencode(path), os.fsencode(binary)
        pkt = P.pack(P.EVAL_S, P.EVAL, P.KIND[kind], pid, len(p), len(b), tail=p + b)
        return P.EvalResult.decode(self._exchange([pkt], P.EVAL_RESULT))

    def stall_next_decision(self, ms: int) -> None:
        """Test hook (helper started with test_hooks): the next decision sleeps `ms`."""
        self._exchange([P.pack(P.STALL_S, P.STALL, ms)], P.STALL)

    # ------------------------------------------------------------------ late answers
    def _abandon(self, gen: int) -> None:
        """The push of table `gen` gave up waiting, but the helper may still take it (a commit
        held up, e.g. marking a path whose file server hangs). Its ACKs come later, in front of
        the replies to whatever is asked next: they are taken out of the way (the next push
        would otherwise read its success as its own), and a table that did go in is replaced by
        the one the agent has in force."""
        with self._ack_lock:
            self._abandoned.add(gen)
            kept: list[bytes | None] = []
            while True:   # an ACK queued before it was abandoned
                try:
                    buf = self._replies.get_nowait()
                except queue.Empty:
                    break
                if buf is None or not self._late_ack(buf):
                    kept.append(buf)
            for buf in kept:
                self._replies.put(buf)

    def _late_ack(self, buf: bytes) -> bool:
        """True when buf is an ACK for an abandoned table (handled here). Under _ack_lock."""
        if P.HDR.unpack_from(buf)[0] != P.ACK:
            return False
        ack = P.Ack.decode(buf)
        if ack.generation not in self._abandoned:
            return False
        if ack.reply_to == P.COMMIT:
            self._abandoned.discard(ack.generation)
            if not ack.error:
                log.error("vigil-permd took table %d after its push gave up; the table in force is pushed again",
                          ack.generation)
                threading.Thread(target=self._repush, name="vigil-permd-repush", daemon=True).start()
        return True

    def _repush(self) -> None:
        try:
            self.push(self._table if self._table is not None else Table())
        except PermdError as e:
            log.error("vigil-permd: pushing the table in force again failed: %s", e)

    # ------------------------------------------------------------------ reader
    def _read_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                buf = sock.recv(P.MAX_MSG)
            except OSError:
                buf = b""
            if len(buf) < P.HDR.size:
                break
            mtype = P.HDR.unpack_from(buf)[0]
            if mtype == P.REPORT:
                self.reports_received += 1
                if self.on_report is not None:
                    try:
                        self.on_report(P.Report.decode(buf))
                    except Exception:  # a reporting bug must not stop reading
                        self.report_errors += 1
                        log.exception("permission report handler failed")
            else:
                with self._ack_lock:
                    if not self._late_ack(buf):
                        self._replies.put(buf)
        self._replies.put(None)
        if not self._stopping and sock is self._sock:
            self._on_helper_exit()

    def _on_helper_exit(self) -> None:
        """The helper died: the kernel allowed what was in flight. Start a new one with
        the table in force, unless it keeps dying."""
        proc = self.proc
        status = reap(proc) if proc is not None else None
        log.error("vigil-permd exited unexpectedly (status %s); exec/open enforcement is off until it restarts",
                  status)
        now = time.monotonic()
        self._restart_times = [t for t in self._restart_times if now - t < RESTART_WINDOW_S] + [now]
        table = self._table
        if self._sock is not None:
            self._sock.close()
        self._sock, self.proc = None, None
        if len(self._restart_times) > RESTART_LIMIT:
            log.error("vigil-permd died %d times in %.0fs; not restarting", len(self._restart_times),
                      RESTART_WINDOW_S)
            return
        try:
            self.start()
            self.restarts += 1
            if table is not None:
                self.push(table)
            log.warning("vigil-permd restarted (pid %d)", self.helper_pid)
        except PermdError as e:
            log.error("vigil-permd restart failed: %s", e)


__all__ = ["PermdError", "PermdTimeout", "PermissionHelper", "helper_path", "reap"]
