"""JSON Lines event export with size-based rotation (Tetragon's --export-filename).

Every event becomes one compact JSON line (vigil.export.codec). A batch is joined and
handed to the OS in one ``write`` call, so a batch is also the flush unit: nothing stays
buffered in user space after ``write_batch`` returns.

Rotation (lumberjack-like, but with numbered names instead of timestamps):

* before a batch would push the live file past ``max_size_mb`` the file is rotated;
  a batch that is larger than the limit by itself is split on event boundaries;
* ``vigil.log`` -> ``vigil.log.1`` (newest backup) ... ``vigil.log.<max_backups>``
  (oldest); anything older is deleted. ``max_backups=0`` keeps every backup;
* with ``compress`` the freshly rotated file becomes ``vigil.log.1.gz``
  (done synchronously by the writing thread, which keeps naming race-free);
* ``rotation_interval`` (seconds, 0 = off) additionally rotates by age;
* ``max_size_mb=0`` disables size-based rotation.

Writing to ``-`` sends the lines to stdout and never rotates.

A full disk, a read-only or vanished file system, or the export file deleted never stops
the agent: a chunk that cannot be written is counted (``events_failed``, by errno in
``errors``), the file is cut back to its last complete line, and the next batch tries
again (reopening the file when it was deleted or replaced), so export resumes by itself
when space returns.
"""
from __future__ import annotations

import errno
import gzip
import logging
import os
import select
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from vigil.core import native
from vigil.export.codec import encode_events, encode_pieces

log = logging.getLogger("vigil.export")
WARN_EVERY_S = 60.0   # a persisting write error is logged again at most this often
PATH_CHECK_S = 1.0    # the export path is looked up again at most this often (a rename under us)

_IOV_MAX = os.sysconf("SC_IOV_MAX")


class JsonlWriter:
    """Thread-safe JSON Lines writer with rotation; see the module docstring."""

    def __init__(
        self,
        path: str,
        *,
        max_size_mb: float = 10,
        max_backups: int = 5,
        compress: bool = False,
        perm: int = 0o600,
        rotation_interval: float = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.max_size_mb = max_size_mb
        self.max_backups = max_backups
        self.compress = compress
        self.perm = perm
        self.rotation_interval = rotation_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._stream: BinaryIO | None = None
        self._owns_stream = False  # a non-regular file we opened (closed with the writer)
        self._size = 0
        self._opened_at = 0.0
        self._path_checked_at = 0.0
        self.closed = False
        # Counters for metrics (tetragon_events_exported_total / _bytes_total).
        self.events_written = 0
        self.bytes_written = 0
        self.rotations = 0
        self.last_write_time = 0.0  # wall clock of the last successful write
        self.last_event_time = ""  # `time` of the last event written (tetragon_events_last_exported_timestamp)
        # what could not be written (disk full, file system gone, ...), by errno name
        self.events_failed = 0
        self.bytes_failed = 0
        self.errors: dict[str, int] = {}
        self.last_error = ""
        self.reopens = 0
        self._warned_at = -WARN_EVERY_S
        if path == "-":
            self._stream = sys.stdout.buffer
        else:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, mode=0o755, exist_ok=True)
            self._open()

    # -- public API -------------------------------------------------------------

    @property
    def max_bytes(self) -> int:
        return int(self.max_size_mb * 1024 * 1024)

    def write(self, event: Any) -> None:
        """Write one event (and flush it): a batch of one."""
        self.write_batch([event])

    def write_batch(self, events: list[Any]) -> None:
        """Encode `events` (typed events or GetEventsResponse-shaped dicts) and write them
        with as few system calls as possible."""
        if not events:
            return
        pieces, total = encode_pieces(events)
        with self._lock:
            if self.closed:
                raise ValueError(f"write to closed JsonlWriter({self.path})")
            if self._stream is not None:
                blob = b"".join(pieces)
                try:
                    _write_fully(self._stream, blob)
                    self._stream.flush()
                except OSError as e:
                    self._failed(len(events), len(blob), e)
                    return
                self._account(len(events), len(blob), events[-1])
                return
            limit = self.max_bytes
            chunks = ([(pieces, len(events), total)] if limit <= 0 or total <= limit
                      else self._chunks(encode_events(events)))  # a batch alone over the size limit: by line
            done = 0
            for parts, count, nbytes in chunks:
                done += count
                try:
                    self._ensure_open()
                    self._maybe_rotate(nbytes)
                    self._write_chunk(parts, nbytes)
                except OSError as e:
                    self._failed(count, nbytes, e)
                    continue
                self._account(count, nbytes, events[done - 1])

    def set_params(
        self,
        *,
        max_size_mb: float | None = None,
        max_backups: int | None = None,
        rotation_interval: float | None = None,
    ) -> None:
        """Change rotation settings at run time (EventLogService.SetEventLogParams)."""
        with self._lock:
            if max_size_mb is not None:
                self.max_size_mb = max_size_mb
            if max_backups is not None:
                self.max_backups = max_backups
            if rotation_interval is not None:
                self.rotation_interval = rotation_interval

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            elif self._stream is not None:
                try:
                    self._stream.flush()
                    if self._owns_stream:
                        self._stream.close()
                except (BrokenPipeError, ValueError):
                    pass

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def backup_path(self, index: int) -> str:
        """Name of backup number `index` (1 = newest), without a .gz suffix."""
        return f"{self.path}.{index}"

    # -- internals (called with the lock held) ----------------------------------

    def _account(self, events: int, nbytes: int, last: Any = None) -> None:
        self.events_written += events
        self.bytes_written += nbytes
        self.last_write_time = time.time()
        if last is not None:
            t = last.get("time") if isinstance(last, dict) else getattr(last, "time", None)
            if t:
                self.last_event_time = str(t)

    def _failed(self, events: int, nbytes: int, e: OSError) -> None:
        name = errno.errorcode.get(e.errno or 0, "EIO")
        self.events_failed += events
        self.bytes_failed += nbytes
        self.errors[name] = self.errors.get(name, 0) + events
        self.last_error = f"{name}: {e.strerror or e}"
        now = self._clock()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("export to %s failed (%s); %d events not written so far, retrying with every batch",
                        self.path, self.last_error, self.events_failed)

    def _ensure_open(self) -> None:
        """(Re)open the export file when it is closed, deleted or replaced under us. A deletion
        is seen at the next write (the open file has no link left: one fstat); a rename by an
        outside rotation within PATH_CHECK_S, as the path is looked up again at most that often
        (the lookup was a sixth of the CPU of writing a small batch, measured on a live exec
        loop), and the lines written meanwhile are in the renamed file: none is lost."""
        if self._fd is not None:
            try:
                # the link count alone (compiled: no os.stat_result made per write)
                fast = native.fast
                linked = fast.file_links(self._fd) if fast is not None else os.fstat(self._fd).st_nlink
                if linked:
                    now = time.monotonic()
                    if now - self._path_checked_at < PATH_CHECK_S:
                        return
                    cur = os.fstat(self._fd)
                    st = os.stat(self.path)
                    if (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino):
                        self._path_checked_at = now
                        return
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
            self.reopens += 1
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o755, exist_ok=True)
        self._open()

    def _write_chunk(self, parts: list[bytes], nbytes: int) -> None:
        """All of the lines, or nothing: a partial write (disk full midway) is cut off again
        so the file never holds half a line."""
        before = self._size
        try:
            self._write_all(parts, nbytes)
        except OSError:
            if self._fd is not None:
                try:
                    os.ftruncate(self._fd, before)
                except OSError:
                    pass
            raise
        self._size = before + nbytes

    def _chunks(self, lines: list[bytes]) -> Iterable[tuple[list[bytes], int, int]]:
        """(lines, count, bytes) of a batch that alone exceeds the size limit, in parts that
        each fit (a line longer than the limit goes alone)."""
        limit = self.max_bytes
        start, size = 0, 0
        for i, line in enumerate(lines):
            if size and size + len(line) > limit:
                yield lines[start:i], i - start, size
                start, size = i, 0
            size += len(line)
        yield lines[start:], len(lines) - start, size

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, self.perm)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            # a device, FIFO or socket (/dev/null, a pipe to a log shipper): written as a stream,
            # never chmod'ed, rotated or renamed (rotating /dev/null would move the device node)
            self._stream = os.fdopen(fd, "wb", buffering=0)
            self._owns_stream = True
            return
        os.fchmod(fd, self.perm)  # the umask must not widen or narrow the requested mode
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self._opened_at = self._clock()
        self._path_checked_at = time.monotonic()

    def _write_all(self, parts: list[bytes], nbytes: int) -> None:
        assert self._fd is not None
        if native.fast is not None:
            native.fast.write_pieces(self._fd, parts)  # the compiled twin of py_write_all
        else:
            py_write_all(self._fd, parts, nbytes)

    def _maybe_rotate(self, incoming: int) -> None:
        if self._size == 0:
            return
        limit = self.max_bytes
        too_big = limit > 0 and self._size + incoming > limit
        too_old = (
            self.rotation_interval > 0
            and self._clock() - self._opened_at >= self.rotation_interval
        )
        if too_big or too_old:
            self._rotate()

    def _existing_backup(self, index: int) -> str | None:
        for name in (self.backup_path(index), self.backup_path(index) + ".gz"):
            if os.path.exists(name):
                return name
        return None

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        keep = self.max_backups
        if keep > 0:
            # Drop the oldest (and anything beyond the limit, e.g. after set_params).
            index = keep
            while (old := self._existing_backup(index)) is not None:
                os.unlink(old)
                index += 1
            top = keep - 1
        else:
            top = 1
            while self._existing_backup(top) is not None:
                top += 1
        for index in range(top, 0, -1):
            src = self._existing_backup(index)
            if src is not None:
                suffix = ".gz" if src.endswith(".gz") else ""
                os.replace(src, self.backup_path(index + 1) + suffix)
        if os.path.exists(self.path):
            first = self.backup_path(1)
            os.replace(self.path, first)
            if self.compress:
                _gzip_file(first, self.perm)
        self.rotations += 1
        self._open()


def _gzip_file(path: str, perm: int) -> None:
    """Replace `path` by `path.gz` (written to a temp name first, so a crash leaves no
    half-written .gz behind)."""
    tmp = path + ".gz.tmp"
    try:
        with open(path, "rb") as src:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, perm)
            os.fchmod(fd, perm)
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)
    except OSError:
        try:
            os.unlink(tmp)  # e.g. no space for it: the uncompressed backup stays
        except OSError:
            pass
        raise
    os.replace(tmp, path + ".gz")
    os.unlink(path)


def py_write_all(fd: int, parts: list[bytes], nbytes: int) -> None:
    """writev of the pieces as they are (no joined copy of the batch: that copy cost ~7% of
    the agent's time per event), IOV_MAX at a time; a short write (only disk full or a
    signal) finishes the rest with plain writes. The reference of the compiled
    write_pieces."""
    for i in range(0, len(parts), _IOV_MAX):
        group = parts[i : i + _IOV_MAX]
        want = nbytes if len(group) == len(parts) else sum(map(len, group))
        written = os.writev(fd, group)
        if written < want:
            view = memoryview(b"".join(group))[written:]
            while view:
                view = view[os.write(fd, view):]


def _write_fully(stream: Any, blob: bytes) -> None:
    """All of `blob` to a stream: an unbuffered one (a FIFO, a device) may take part of it (a
    signal handled while a pipe write waits), and the rest must follow, not be lost mid-line."""
    view = memoryview(blob)
    while view:
        n = stream.write(view)
        if n is None:   # (a non-blocking stream that takes nothing now)
            select.select([], [stream], [])
            continue
        view = view[n:]
