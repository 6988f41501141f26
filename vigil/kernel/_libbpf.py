"""ctypes declarations for the system libbpf (>= 1.0: NULL + errno on error).

Only the functions Vigil uses are declared; each gets its argtypes/restype so
a wrong call fails in Python, not inside libbpf.
"""
from __future__ import annotations

import collections
import ctypes
import ctypes.util
import logging

log = logging.getLogger("vigil.libbpf")

c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p
c_int = ctypes.c_int
c_uint = ctypes.c_uint
c_size_t = ctypes.c_size_t
c_bool = ctypes.c_bool
c_u32 = ctypes.c_uint32
c_u64 = ctypes.c_uint64


def _open() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf") or "libbpf.so"):
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise OSError("libbpf shared library not found (install libbpf1 / libbpf-dev)")


lib = _open()
libc = ctypes.CDLL(None, use_errno=True)

_SIGS: dict[str, tuple[object, list[object]]] = {
    # objects
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    # programs
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
    "bpf_program__autoload": (c_bool, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__type": (c_int, [c_void_p]),
    "bpf_program__set_type": (c_int, [c_void_p, c_int]),
    "bpf_program__set_expected_attach_type": (c_int, [c_void_p, c_int]),
    "bpf_program__set_attach_target": (c_int, [c_void_p, c_int, c_char_p]),
    "bpf_program__set_log_buf": (c_int, [c_void_p, c_char_p, c_size_t]),
    "bpf_program__set_log_level": (c_int, [c_void_p, c_u32]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_tracepoint": (c_void_p, [c_void_p, c_char_p, c_char_p]),
    "bpf_program__attach_raw_tracepoint": (c_void_p, [c_void_p, c_char_p]),
    "bpf_program__attach_trace": (c_void_p, [c_void_p]),
    "bpf_program__attach_lsm": (c_void_p, [c_void_p]),
    "bpf_program__attach_kprobe": (c_void_p, [c_void_p, c_bool, c_char_p]),
    "bpf_program__attach_uprobe": (c_void_p, [c_void_p, c_bool, c_int, c_char_p, c_size_t]),
    "bpf_program__attach_uprobe_opts": (c_void_p, [c_void_p, c_int, c_char_p, c_size_t, c_void_p]),
    "bpf_program__attach_cgroup": (c_void_p, [c_void_p, c_int]),
    "bpf_program__attach_iter": (c_void_p, [c_void_p, c_void_p]),
    # links
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_link__fd": (c_int, [c_void_p]),
    "bpf_link__pin": (c_int, [c_void_p, c_char_p]),
    "bpf_link__unpin": (c_int, [c_void_p]),
    "bpf_link__disconnect": (None, [c_void_p]),
    # maps (object side)
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__key_size": (c_u32, [c_void_p]),
    "bpf_map__value_size": (c_u32, [c_void_p]),
    "bpf_map__max_entries": (c_u32, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_u32]),
    "bpf_map__set_key_size": (c_int, [c_void_p, c_u32]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, ctypes.POINTER(c_size_t)]),
    "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
    "bpf_map__set_autocreate": (c_int, [c_void_p, c_bool]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    # maps (fd side)
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_u64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    # (fd, in_batch, out_batch, keys, values, *count, opts): libbpf >= 0.0.8
    "bpf_map_lookup_batch": (c_int, [c_int, c_void_p, c_void_p, c_void_p, c_void_p, ctypes.POINTER(c_u32), c_void_p]),
    "bpf_map_create": (c_int, [c_int, c_char_p, c_u32, c_u32, c_u32, c_void_p]),
    "bpf_prog_get_fd_by_id": (c_int, [c_u32]),
    "bpf_iter_create": (c_int, [c_int]),
    # btf
    "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_u32]),
    "btf__type_by_id": (c_void_p, [c_void_p, c_u32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_u32]),
    # misc
    "libbpf_num_possible_cpus": (c_int, []),
    "libbpf_probe_bpf_helper": (c_int, [c_int, c_int, c_void_p]),
    "libbpf_probe_bpf_prog_type": (c_int, [c_int, c_void_p]),
    "libbpf_probe_bpf_map_type": (c_int, [c_int, c_void_p]),
}

for _name, (_res, _args) in _SIGS.items():
    try:
        _fn = getattr(lib, _name)
    except AttributeError:  # older libbpf: leave it out, callers check hasattr
        continue
    _fn.restype = _res
    _fn.argtypes = _args

libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
libc.vsnprintf.restype = c_int

# libbpf's log goes to Python logging (verifier logs are captured per program).
_PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
# Recent libbpf messages: errors raised by the loader quote the relevant ones.
recent: collections.deque[str] = collections.deque(maxlen=64)


@_PRINT_FN
def _print_cb(level: int, fmt: bytes, va: int) -> int:
    buf = ctypes.create_string_buffer(2048)
    libc.vsnprintf(buf, len(buf), fmt, va)
    msg = buf.value.decode(errors="replace").rstrip()
    recent.append(msg)
    # failures are raised (with these lines) by the caller; probes expect many
    log.debug("%s", msg)
    return 0


lib.libbpf_set_print.restype = c_void_p
lib.libbpf_set_print.argtypes = [_PRINT_FN]
lib.libbpf_set_print(_print_cb)


def errno() -> int:
    return ctypes.get_errno()
