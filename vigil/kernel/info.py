"""bpf_prog_info of a loaded program (ids, run statistics)."""
from __future__ import annotations

import ctypes
import functools
import struct
from typing import Any

from vigil.kernel import _libbpf as L

_INFO_LEN = 256
# offsets in struct bpf_prog_info (uapi/linux/bpf.h)
_OFF_ID = 4
_OFF_NAME = 64
_OFF_RUN_TIME_NS = 192
_OFF_RUN_CNT = 200
_OFF_RECURSION_MISSES = 208  # runs the kernel skipped: the program was already running on that CPU (5.12+)
_OFF_VERIFIED_INSNS = 216

L.lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
L.lib.bpf_obj_get_info_by_fd.restype = ctypes.c_int


def prog_info(fd: int) -> dict[str, int | str]:
    buf = ctypes.create_string_buffer(_INFO_LEN)
    n = ctypes.c_uint32(_INFO_LEN)
    if L.lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(n)):
        return {"id": 0, "name": "", "run_time_ns": 0, "run_cnt": 0, "recursion_misses": 0, "verified_insns": 0}
    raw = buf.raw
    return {
        "id": struct.unpack_from("<I", raw, _OFF_ID)[0],
        "name": raw[_OFF_NAME:_OFF_NAME + 16].split(b"\0", 1)[0].decode(),
        "run_time_ns": struct.unpack_from("<Q", raw, _OFF_RUN_TIME_NS)[0],
        "run_cnt": struct.unpack_from("<Q", raw, _OFF_RUN_CNT)[0],
        "recursion_misses": struct.unpack_from("<Q", raw, _OFF_RECURSION_MISSES)[0],
        "verified_insns": struct.unpack_from("<I", raw, _OFF_VERIFIED_INSNS)[0],
    }


_MAP_INFO_LEN = 96


def map_info(fd: int) -> dict[str, int | str]:
    """struct bpf_map_info: type, id, key_size, value_size, max_entries, name."""
    buf = ctypes.create_string_buffer(_MAP_INFO_LEN)
    n = ctypes.c_uint32(_MAP_INFO_LEN)
    if L.lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(n)):
        raise OSError(L.errno(), f"bpf_obj_get_info_by_fd({fd})")
    typ, mid, ks, vs, me = struct.unpack_from("<5I", buf.raw, 0)
    name = buf.raw[24:40].split(b"\0", 1)[0].decode()
    return {"type": typ, "id": mid, "key_size": ks, "value_size": vs, "max_entries": me, "name": name}


# struct bpf_link_info (uapi/linux/bpf.h): type, id, prog_id, then the union at 16
_LINK_INFO_LEN = 96
_LINK_TYPE_PERF_EVENT, _LINK_TYPE_KPROBE_MULTI = 7, 8
_PERF_EVENT_KPROBE, _PERF_EVENT_KRETPROBE = 3, 4   # enum bpf_perf_event_type
_OFF_PERF_EVENT_TYPE = 16
_OFF_PERF_KPROBE_MISSED = 48   # perf_event.kprobe.missed (func_name 24, name_len 32, offset 36, addr 40)
_OFF_KPROBE_MULTI_MISSED = 32  # kprobe_multi.missed (addrs 16, count 24, flags 28)
_LINK_MISSED_SINCE = (6, 7)    # both missed fields came in 6.7 upstream (used only without BTF)


def _release() -> tuple[int, int]:
    import os
    import re

    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def missed_offsets(b: Any) -> tuple[int | None, int | None]:
    """Where a kernel with BTF `b` (vigil.kernel.btf.Btf) puts a link's missed count in struct
    bpf_link_info: (perf_event.kprobe.missed, kprobe_multi.missed) byte offsets, None for a field
    its struct does not have (it leaves no count there: a kernel before 6.7 upstream, or one
    that backported only one of them)."""
    from vigil.kernel import btf

    sid = b.find(btf.STRUCT, "bpf_link_info")
    if sid is None:
        return None, None
    out = []
    for path in ("perf_event.kprobe.missed", "kprobe_multi.missed"):
        off = b.offset_of(sid, path)
        out.append(off if off is not None and off + 8 <= _LINK_INFO_LEN else None)
    return out[0], out[1]


def _btf() -> Any:
    from vigil.kernel import btf

    return btf.load()


@functools.lru_cache(maxsize=1)
def _kernel_missed_offsets() -> tuple[int | None, int | None]:
    """missed_offsets() of the running kernel, asked of its BTF once (backports and odd
    kernels are what their struct says); a kernel without BTF: by its release."""
    b = _btf()
    if b is not None:
        return missed_offsets(b)
    if _release() >= _LINK_MISSED_SINCE:
        return _OFF_PERF_KPROBE_MISSED, _OFF_KPROBE_MULTI_MISSED
    return None, None


def link_missed(fd: int) -> int | None:
    """Hits of a kprobe link's probe the kernel did not run its program for (another kprobe was
    running on that CPU: the probe's nmissed; for a kprobe_multi link, its fprobe's and the
    program's recursion misses), from bpf_link_info: a perf-event kprobe/kretprobe link or a
    kprobe_multi link, on a kernel whose struct bpf_link_info has that link's missed field (its
    BTF says: 6.7 upstream, or a backport). None for any other link (tracepoints, trampolines,
    uprobes), a kernel that does not report it, or an fd that is not a BPF link (a kprobe
    attached the legacy way)."""
    perf_off, multi_off = _kernel_missed_offsets()
    if fd < 0 or (perf_off is None and multi_off is None):
        return None
    buf = ctypes.create_string_buffer(_LINK_INFO_LEN)  # name and address buffers left NULL: not asked
    n = ctypes.c_uint32(_LINK_INFO_LEN)
    if L.lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(n)):
        return None
    raw = buf.raw
    typ = struct.unpack_from("<I", raw, 0)[0]
    if typ == _LINK_TYPE_PERF_EVENT and perf_off is not None and struct.unpack_from(
            "<I", raw, _OFF_PERF_EVENT_TYPE)[0] in (_PERF_EVENT_KPROBE, _PERF_EVENT_KRETPROBE):
        return int(struct.unpack_from("<Q", raw, perf_off)[0])
    if typ == _LINK_TYPE_KPROBE_MULTI and multi_off is not None:
        return int(struct.unpack_from("<Q", raw, multi_off)[0])
    return None
