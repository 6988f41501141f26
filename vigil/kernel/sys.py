"""Small raw syscalls the libbpf binding does not cover: perf_event_open, fanotify,
mount/umount and a bare BPF map create. Errors come back as OSError with errno."""
from __future__ import annotations

import ctypes
import os
import struct

from vigil.kernel import _libbpf as L

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_libc.fanotify_mark.restype = ctypes.c_int
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

SYS_perf_event_open = 298  # x86_64
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_FLAG_FD_CLOEXEC = 8
PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_CONTENT = 0x4
FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100
FAN_EVENT_ON_CHILD = 0x08000000
FAN_NOFD = -1
FAN_OPEN_PERM = 0x10000
FAN_OPEN_EXEC_PERM = 0x40000
FAN_ALLOW = 0x1
FAN_DENY = 0x2
AT_FDCWD = -100
FANOTIFY_METADATA = struct.Struct("<IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
FANOTIFY_RESPONSE = struct.Struct("<iI")       # fd, response

MNT_DETACH = 2
BPF_MAP_TYPE_RINGBUF = 27


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def perf_event_open_sw(pid: int = 0, cpu: int = -1, sample_period: int = 1 << 40) -> int:
    """A software cpu-clock perf event (sampling, enabled) for perf_event programs."""
    attr = bytearray(PERF_ATTR_SIZE)
    struct.pack_into("<IIQQ", attr, 0, PERF_TYPE_SOFTWARE, PERF_ATTR_SIZE, PERF_COUNT_SW_CPU_CLOCK, sample_period)
    buf = ctypes.create_string_buffer(bytes(attr), PERF_ATTR_SIZE)
    fd = _libc.syscall(SYS_perf_event_open, buf, ctypes.c_int(pid), ctypes.c_int(cpu),
                       ctypes.c_int(-1), ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        _raise("perf_event_open")
    return int(fd)


def fanotify_init(flags: int, event_f_flags: int = os.O_RDONLY) -> int:
    fd = _libc.fanotify_init(flags, event_f_flags)
    if fd < 0:
        _raise("fanotify_init")
    return fd


def fanotify_mark(fd: int, flags: int, mask: int, path: str, dirfd: int = AT_FDCWD) -> None:
    if _libc.fanotify_mark(fd, flags, mask, dirfd, path.encode()) < 0:
        _raise("fanotify_mark")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str | None = None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() if data else None) < 0:
        _raise(f"mount {fstype} on {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    if _libc.umount2(target.encode(), flags) < 0:
        _raise(f"umount {target}")


def ringbuf_map_create(size: int = 4096) -> int:
    fd = L.lib.bpf_map_create(BPF_MAP_TYPE_RINGBUF, b"vigil_probe_rb", 0, 0, size, None)
    if fd < 0:
        err = -fd if fd < -1 else ctypes.get_errno()
        raise OSError(err, f"ringbuf map create: {os.strerror(err)}")
    return fd


def iter_create(link_fd: int) -> int:
    fd = L.lib.bpf_iter_create(link_fd)
    if fd < 0:
        err = -fd if fd < -1 else ctypes.get_errno()
        raise OSError(err, f"bpf_iter_create: {os.strerror(err)}")
    return fd


def mounts() -> list[tuple[str, str, str]]:
    """(source, mountpoint, fstype) for every line of /proc/mounts."""
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out.append((parts[0], parts[1].replace("\\040", " "), parts[2]))
    return out
