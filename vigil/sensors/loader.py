"""`spec.loader: true`: process_loader events for executable files mapped into processes (the
binary, its interpreter, shared libraries, dlopen'ed objects), with the build id.

The kernel reports every executable mapping to perf as a PERF_RECORD_MMAP2 (with the build id
since 5.12): one software "dummy" perf event per CPU, system-wide, with mmap2 and build_id set,
read from its ring in user space. This needs no kprobe, so it works on every kernel Vigil runs
on. One sensor serves every policy with loader: true (reference counted).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import select
import struct
import threading
from collections.abc import Callable

from vigil.core.sharedmem import Words
from vigil.kernel.objects import possible_cpus

log = logging.getLogger("vigil.sensor.loader")

NR_perf_event_open = 298
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_DUMMY = 1, 9
PERF_SAMPLE_TID, PERF_SAMPLE_TIME = 1 << 1, 1 << 2
PERF_RECORD_LOST, PERF_RECORD_MMAP2 = 2, 10
MISC_MMAP_BUILD_ID = 1 << 14
PROT_EXEC = 4
CLOCK_MONOTONIC = 1
PERF_EVENT_IOC_ENABLE = 0x2400
PAGES = 8   # ring data pages per CPU
# attr.flags bits
F_DISABLED, F_MMAP, F_WATERMARK, F_SAMPLE_ID_ALL, F_MMAP2, F_USE_CLOCKID, F_BUILD_ID = 0, 8, 14, 18, 23, 25, 34

_libc = ctypes.CDLL(None, use_errno=True)


def _attr() -> bytes:
    flags = (1 << F_DISABLED) | (1 << F_MMAP) | (1 << F_SAMPLE_ID_ALL) | (1 << F_MMAP2) | (1 << F_USE_CLOCKID) \
        | (1 << F_BUILD_ID)
    a = bytearray(128)
    struct.pack_into("<IIQQQQQ", a, 0, PERF_TYPE_SOFTWARE, 128, PERF_COUNT_SW_DUMMY, 0,
                     PERF_SAMPLE_TID | PERF_SAMPLE_TIME, 0, flags)
    struct.pack_into("<I", a, 48, 1)                 # wakeup_events: every record
    struct.pack_into("<i", a, 92, CLOCK_MONOTONIC)   # the clock BPF's ktime uses
    return bytes(a)


def perf_open(cpu: int) -> int:
    attr = ctypes.create_string_buffer(_attr(), 128)
    fd = _libc.syscall(NR_perf_event_open, attr, -1, cpu, -1, 8)  # PERF_FLAG_FD_CLOEXEC
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"perf_event_open(dummy, mmap2, build_id) on cpu {cpu}: {os.strerror(e)}")
    return fd


def parse_mmap2(rec: bytes) -> tuple[int, int, int, bytes, str, int] | None:
    """(pid, tid, prot, build id, path, time) of a PERF_RECORD_MMAP2 (header included)."""
    rtype, misc, size = struct.unpack_from("<IHH", rec, 0)
    if rtype != PERF_RECORD_MMAP2:
        return None
    pid, tid = struct.unpack_from("<II", rec, 8)
    build_id = b""
    if misc & MISC_MMAP_BUILD_ID:
        n = rec[40]
        build_id = bytes(rec[44:44 + min(n, 20)])
    prot, _flags = struct.unpack_from("<II", rec, 64)
    end = rec.index(b"\0", 72)
    path = rec[72:end].decode("utf-8", "surrogateescape")
    # sample_id trailer: pid, tid, time
    time_ns = struct.unpack_from("<Q", rec, size - 8)[0]
    return pid, tid, prot, build_id, path, time_ns


class LoaderSensor:
    def __init__(self, emit: Callable[[int, int, str, bytes, int], None]) -> None:
        self.emit = emit
        self.refs = 0
        self.lost = 0
        self.seen = 0
        self._rings: list[tuple[int, mmap.mmap]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self.refs == 0:
                self._start()
            self.refs += 1

    def release(self) -> None:
        with self._lock:
            self.refs -= 1
            if self.refs == 0:
                self._stop_all()

    def _start(self) -> None:
        import fcntl

        size = (PAGES + 1) * mmap.PAGESIZE
        try:
            for cpu in range(possible_cpus()):
                try:
                    fd = perf_open(cpu)
                except OSError as e:
                    if e.errno == errno.ENODEV:  # a possible but offline CPU
                        continue
                    raise
                try:
                    ring = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                except BaseException:
                    os.close(fd)
                    raise
                self._rings.append((fd, ring))
                fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
        except BaseException:
            self._close_rings()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vigil-loader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ep = select.epoll()  # not select(): the agent's fds are past FD_SETSIZE
        try:
            for fd, _ring in self._rings:
                ep.register(fd, select.EPOLLIN)
            while not self._stop.is_set():
                ep.poll(0.2)
                for _fd, ring in self._rings:
                    self._drain(ring)
        finally:
            ep.close()

    def _drain(self, ring: mmap.mmap) -> None:
        head = struct.unpack_from("<Q", ring, 1024)[0]
        tail = struct.unpack_from("<Q", ring, 1032)[0]
        data_off = struct.unpack_from("<Q", ring, 1040)[0] or mmap.PAGESIZE
        data_size = struct.unpack_from("<Q", ring, 1048)[0] or PAGES * mmap.PAGESIZE
        while tail < head:
            at = tail % data_size
            hdr = self._bytes(ring, data_off, data_size, at, 8)
            rtype, _misc, size = struct.unpack("<IHH", hdr)
            if size < 8:
                break
            rec = self._bytes(ring, data_off, data_size, at, size)
            tail += size
            if rtype == PERF_RECORD_LOST:
                self.lost += struct.unpack_from("<Q", rec, 16)[0]
                continue
            hit = parse_mmap2(rec)
            if hit is None:
                continue
            pid, tid, prot, build_id, path, time_ns = hit
            if not prot & PROT_EXEC or not path.startswith("/"):
                continue  # [vdso], anonymous JIT mappings: no file
            self.seen += 1
            try:
                self.emit(pid, tid, path, build_id, time_ns)
            except Exception:  # one bad event must not stop the sensor
                log.exception("loader event for %s", path)
        tail_word = Words(ring)  # the kernel reads data_tail while we write it: one store
        try:
            tail_word.store(1032, tail)
        finally:
            tail_word.release()

    @staticmethod
    def _bytes(ring: mmap.mmap, base: int, size: int, at: int, n: int) -> bytes:
        if at + n <= size:
            return ring[base + at: base + at + n]
        first = size - at
        return ring[base + at: base + size] + ring[base: base + n - first]

    def _stop_all(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._close_rings()

    def _close_rings(self) -> None:
        for fd, ring in self._rings:
            ring.close()
            os.close(fd)
        self._rings = []

    def close(self) -> None:
        with self._lock:
            if self.refs:
                self.refs = 0
                self._stop_all()
