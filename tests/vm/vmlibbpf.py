"""Just enough libbpf (ctypes, libbpf.so.1) for the guest self-checks.

bpftool 7.1 (Debian 12) cannot attach kprobe/fentry/LSM programs (no `autoattach`), and the
project's own binding (vigil.kernel) is still being written; switch to it once it lands.
Links are owned by this process, so the kernel detaches them even if a test crashes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass, field
from typing import Any

_lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
_libc = ctypes.CDLL(None)

_vp = ctypes.c_void_p
for name, res, args in [
    ("bpf_object__open_file", _vp, [ctypes.c_char_p, _vp]),
    ("bpf_object__load", ctypes.c_int, [_vp]),
    ("bpf_object__close", None, [_vp]),
    ("bpf_object__find_program_by_name", _vp, [_vp, ctypes.c_char_p]),
    ("bpf_object__find_map_by_name", _vp, [_vp, ctypes.c_char_p]),
    ("bpf_object__next_program", _vp, [_vp, _vp]),
    ("bpf_program__name", ctypes.c_char_p, [_vp]),
    ("bpf_program__set_autoload", ctypes.c_int, [_vp, ctypes.c_bool]),
    ("bpf_program__attach", _vp, [_vp]),
    ("bpf_link__destroy", ctypes.c_int, [_vp]),
    ("bpf_map__fd", ctypes.c_int, [_vp]),
    ("bpf_map_update_elem", ctypes.c_int, [ctypes.c_int, _vp, _vp, ctypes.c_uint64]),
    ("bpf_map_lookup_elem", ctypes.c_int, [ctypes.c_int, _vp, _vp]),
    ("bpf_map_delete_elem", ctypes.c_int, [ctypes.c_int, _vp]),
]:
    fn = getattr(_lib, name)
    fn.restype, fn.argtypes = res, args

# Collect libbpf's messages (verifier log, CO-RE failures) so a failing test can show them.
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
LOG: list[str] = []


@_PRINT_FN
def _print(level: int, fmt: bytes, ap: int) -> int:
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, ap)  # x86-64 va_list is passed as a pointer
    LOG.append(buf.value.decode(errors="replace"))
    return 0


_lib.libbpf_set_print.restype = _vp
_lib.libbpf_set_print.argtypes = [_PRINT_FN]
_lib.libbpf_set_print(_print)


class BpfError(OSError):
    pass


def _err(what: str, rc: int | None = None) -> BpfError:
    e = -rc if rc and rc < 0 else ctypes.get_errno()
    tail = "\n".join(LOG[-30:])
    return BpfError(e, f"{what}: {os.strerror(e)}\n--- libbpf log ---\n{tail}")


@dataclass
class Obj:
    ptr: int
    links: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, path: str, only: set[str]) -> "Obj":
        """Open `path` and load only the programs named in `only` (others get autoload off)."""
        LOG.clear()
        ptr = _lib.bpf_object__open_file(path.encode(), None)
        if not ptr:
            raise _err(f"open {path}")
        obj = cls(ptr)
        prog = _lib.bpf_object__next_program(ptr, None)
        while prog:
            _lib.bpf_program__set_autoload(prog, _lib.bpf_program__name(prog).decode() in only)
            prog = _lib.bpf_object__next_program(ptr, prog)
        rc = _lib.bpf_object__load(ptr)
        if rc:
            obj.close()
            raise _err(f"load {path} ({', '.join(sorted(only))})", rc)
        return obj

    def attach(self, prog_name: str) -> None:
        prog = _lib.bpf_object__find_program_by_name(self.ptr, prog_name.encode())
        if not prog:
            raise BpfError(2, f"no program {prog_name}")
        link = _lib.bpf_program__attach(prog)
        if not link:
            raise _err(f"attach {prog_name}")
        self.links.append(link)

    def map_fd(self, name: str) -> int:
        m = _lib.bpf_object__find_map_by_name(self.ptr, name.encode())
        if not m:
            raise BpfError(2, f"no map {name}")
        return _lib.bpf_map__fd(m)

    def update(self, map_name: str, key: Any, value: Any) -> None:
        if _lib.bpf_map_update_elem(self.map_fd(map_name), ctypes.byref(key), ctypes.byref(value), 0):
            raise _err(f"update {map_name}")

    def lookup(self, map_name: str, key: Any, value: Any) -> Any:
        if _lib.bpf_map_lookup_elem(self.map_fd(map_name), ctypes.byref(key), ctypes.byref(value)):
            raise _err(f"lookup {map_name}")
        return value.value

    def delete(self, map_name: str, key: Any) -> None:
        _lib.bpf_map_delete_elem(self.map_fd(map_name), ctypes.byref(key))

    def close(self) -> None:
        for link in self.links:
            _lib.bpf_link__destroy(link)
        self.links.clear()
        if self.ptr:
            _lib.bpf_object__close(self.ptr)
            self.ptr = 0
