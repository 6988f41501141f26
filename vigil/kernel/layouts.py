"""Python mirrors of the C structs user space reads or writes, checked against the BTF of
the compiled object when it is loaded: a mirror out of step with the C (a field added,
a type widened) fails the load with the struct and field named, instead of decoding
garbage or writing short map values.

    ENTRY = Layout("execve_entry", "key.pid:I key.pad:I key.ktime:Q ... follow:Q")
    ENTRY.check(obj)            # after BpfObject.open(): size and every field's offset
    ENTRY.pack(...)             # it is a struct.Struct (little endian, no implicit padding)

ctypes mirrors (vigil.kernel.policy_layout) are checked with check_ctypes().
"""
from __future__ import annotations

import ctypes
import struct
from typing import Any

from vigil.kernel import _libbpf as L
from vigil.kernel.errors import BpfError

BTF_KIND_INT, BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_UNION = 1, 3, 4, 5
_QUALIFIERS = {8, 9, 10, 11, 18}  # typedef, volatile, const, restrict, type_tag
_TYPE = struct.Struct("<III")     # struct btf_type: name_off, info, size/type
_MEMBER = struct.Struct("<III")   # struct btf_member: name_off, type, offset


class LayoutError(BpfError):
    pass


def _btf(obj: Any) -> int:
    btf = L.lib.bpf_object__btf(obj._ptr)
    if not btf:
        raise LayoutError(f"{obj.path}: no BTF to check the struct mirrors against", 0)
    return int(btf)


def _type(btf: int, tid: int) -> tuple[int, int, int, int]:
    """(kind, vlen, size_or_type, address) of a BTF type, qualifiers and typedefs skipped."""
    while True:
        addr = L.lib.btf__type_by_id(btf, tid)
        _name, info, size = _TYPE.unpack(ctypes.string_at(addr, _TYPE.size))
        kind = (info >> 24) & 0x1F
        if kind not in _QUALIFIERS:
            return kind, info & 0xFFFF, size, addr
        tid = size


def _members(btf: int, addr: int, vlen: int, kflag: bool) -> dict[str, tuple[int, int]]:
    out = {}
    for i in range(vlen):
        name_off, tid, off = _MEMBER.unpack(ctypes.string_at(addr + _TYPE.size + _MEMBER.size * i, _MEMBER.size))
        name = L.lib.btf__name_by_offset(btf, name_off).decode()
        out[name] = (off & 0xFFFFFF if kflag else off) // 8, tid
    return out


def btf_struct(obj: Any, name: str) -> tuple[int, dict[str, int]]:
    """(size, {dotted field path: byte offset}) of a struct in the object's BTF; nested
    structs are flattened (`key.pid`)."""
    btf = _btf(obj)
    tid = L.lib.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)
    if tid < 0:
        raise LayoutError(f"{obj.path}: no struct {name} in its BTF", 2)
    _kind, vlen, size, addr = _type(btf, tid)
    info = _TYPE.unpack(ctypes.string_at(addr, _TYPE.size))[1]
    offsets: dict[str, int] = {}

    def walk(prefix: str, base: int, addr: int, vlen: int, kflag: bool) -> None:
        for mname, (off, mtid) in _members(btf, addr, vlen, kflag).items():
            path = f"{prefix}{mname}"
            offsets[path] = base + off
            k, v, _s, a = _type(btf, mtid)
            if k in (BTF_KIND_STRUCT, BTF_KIND_UNION):
                walk(path + ".", base + off, a, v, bool(_TYPE.unpack(ctypes.string_at(a, _TYPE.size))[1] >> 31))

    walk("", 0, addr, vlen, bool(info >> 31))
    return size, offsets


class Layout(struct.Struct):
    """A struct.Struct (little endian, no implicit padding) that knows its C struct's name
    and the name and offset of each field, so it can be checked against BTF."""

    def __init__(self, c_name: str, fields: str) -> None:
        names: list[tuple[str, int]] = []
        fmt = "<"
        for token in fields.split():
            name, _, code = token.partition(":")
            if name != "_":  # `_:4x`: padding the C struct has but does not name
                names.append((name, struct.calcsize(fmt)))
            fmt += code
        super().__init__(fmt)
        self.c_name = c_name
        self.fields = names

    def check(self, obj: Any) -> None:
        size, btf_offsets = btf_struct(obj, self.c_name)
        where = f"{obj.path}: struct {self.c_name}"
        if size != self.size:
            raise LayoutError(f"{where} is {size} bytes in the object, {self.size} in its Python mirror", 22)
        for name, off in self.fields:
            if name not in btf_offsets:
                raise LayoutError(f"{where} has no field {name} (the Python mirror names it)", 22)
            if btf_offsets[name] != off:
                raise LayoutError(f"{where}: field {name} at offset {btf_offsets[name]}, the Python mirror "
                                  f"has it at {off}", 22)


def check_ctypes(obj: Any, c_name: str, ctype: type[ctypes.Structure]) -> None:
    """A ctypes.Structure mirror: its size and the offset of each of its fields."""
    size, btf_offsets = btf_struct(obj, c_name)
    where = f"{obj.path}: struct {c_name}"
    if size != ctypes.sizeof(ctype):
        raise LayoutError(f"{where} is {size} bytes in the object, {ctypes.sizeof(ctype)} in its Python mirror", 22)
    for fname, *_ in ctype._fields_:
        off = getattr(ctype, fname).offset
        if fname in btf_offsets and btf_offsets[fname] != off:
            raise LayoutError(f"{where}: field {fname} at offset {btf_offsets[fname]}, the Python mirror has it "
                              f"at {off}", 22)
