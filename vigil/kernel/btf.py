"""The running kernel's BTF (/sys/kernel/btf/vmlinux), read once, for the facts the policy
compiler needs: which functions exist (fentry/kprobe targets, `bpf_lsm_*` LSM hooks), their
parameters, the typed arguments of BTF tracepoints (`btf_trace_<name>`), and struct layouts
for `resolve` paths (`mm.owner.real_parent.comm` -> offsets to read and pointers to follow).

A small reader of the BTF format (linux/btf.h); no libbpf needed, no root (the file is 0444).
"""
from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass

VMLINUX = "/sys/kernel/btf/vmlinux"
_TRACE = re.compile(rb"\0btf_trace_([A-Za-z0-9_]+)(?=\0)")

# BTF kinds
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, \
    DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BtfError(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    """One step of a resolve path: read at `offset` from the current address; if `deref`,
    the value there is a pointer the next step starts from."""
    offset: int
    deref: bool


@dataclass(frozen=True)
class Resolved:
    steps: tuple[Step, ...]   # the last step's offset is the final field's
    ctype: str                # C type of the final field, e.g. "char[16]", "struct file *"
    size: int                 # bytes of the final field
    kind: str                 # int | ptr | array | struct | enum | other
    signed: bool = False


class Btf:
    """Parsed type section. Types are decoded on demand from the raw bytes."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF too short")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != 0xEB9F:
            raise BtfError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._types = hdr_len + type_off
        self._strs = hdr_len + str_off
        self._str_end = self._strs + str_len
        # offsets of each type record (id 1..n) in data
        offs = [0]
        pos, end = self._types, self._types + type_len
        extra = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
        per = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
        unpack = struct.Struct("<III").unpack_from
        while pos < end:
            offs.append(pos)
            _name, info, _st = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            pos += 12 + extra.get(kind, 0) + per.get(kind, 0) * vlen
        self._offs = offs
        self._by_name: dict[tuple[int, str], int] | None = None

    # ---- raw access
    def _str(self, off: int) -> str:
        start = self._strs + off
        end = self._data.index(b"\0", start, self._str_end)
        return self._data[start:end].decode("utf-8", "replace")

    def _hdr(self, tid: int) -> tuple[str, int, int, int, int]:
        """(name, kind, vlen, kind_flag, size_or_type)"""
        if not 0 < tid < len(self._offs):
            raise BtfError(f"type id {tid} out of range")
        name_off, info, st = struct.unpack_from("<III", self._data, self._offs[tid])
        return self._str(name_off), (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, st

    def _names(self) -> dict[tuple[int, str], int]:
        if self._by_name is None:
            out: dict[tuple[int, str], int] = {}
            unpack = struct.Struct("<II").unpack_from
            for tid in range(1, len(self._offs)):
                name_off, info = unpack(self._data, self._offs[tid])
                if name_off:
                    kind = (info >> 24) & 0x1F
                    out.setdefault((kind, self._str(name_off)), tid)
            self._by_name = out
        return self._by_name

    def find(self, kind: int, name: str) -> int | None:
        return self._names().get((kind, name))

    def names_of_kind(self, kind: int) -> frozenset[str]:
        return frozenset(n for (k, n) in self._names() if k == kind)

    def _strip(self, tid: int) -> int:
        for _ in range(32):
            _n, kind, _v, _kf, st = self._hdr(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = st
        raise BtfError("modifier loop")

    def size_of(self, tid: int) -> int:
        tid = self._strip(tid)
        _n, kind, _v, _kf, st = self._hdr(tid)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return st
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _idx, n = struct.unpack_from("<III", self._data, self._offs[tid] + 12)
            return self.size_of(elem) * n
        return 0

    def section_offset(self, section: str, var: str) -> int | None:
        """Offset of variable `var` in data section `section` (e.g. ".data..percpu", where the
        kernel's per-CPU variables are); None if BTF does not list it there."""
        sec = self.find(DATASEC, section)
        if sec is None:
            return None
        _n, _k, vlen, _kf, _size = self._hdr(sec)
        for i in range(vlen):
            vtid, off, _sz = struct.unpack_from("<III", self._data, self._offs[sec] + 12 + 12 * i)
            if self._hdr(vtid)[0] == var:
                return off
        return None

    def type_str(self, tid: int) -> str:
        if tid == 0:
            return "void"
        name, kind, _v, _kf, st = self._hdr(tid)
        if kind == PTR:
            return self.type_str(st) + " *"
        if kind == ARRAY:
            elem, _idx, n = struct.unpack_from("<III", self._data, self._offs[tid] + 12)
            return f"{self.type_str(elem)}[{n}]"
        if kind in (CONST, VOLATILE, RESTRICT, TYPE_TAG):
            return self.type_str(st)
        prefix = {STRUCT: "struct ", UNION: "union ", ENUM: "enum ", ENUM64: "enum ", FWD: "struct "}.get(kind, "")
        return prefix + (name or "(anon)")

    def _members(self, tid: int) -> list[tuple[str, int, int]]:
        """(name, type, bit offset) of a struct/union."""
        _n, _kind, vlen, kflag, _st = self._hdr(tid)
        out = []
        base = self._offs[tid] + 12
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", self._data, base + 12 * i)
            out.append((self._str(name_off), mtype, (moff & 0xFFFFFF) if kflag else moff))
        return out

    def _member(self, tid: int, name: str) -> tuple[int, int] | None:
        """(type, byte offset) of `name` in struct/union `tid`, looking into anonymous members."""
        for mname, mtype, bits in self._members(tid):
            if mname == name:
                return mtype, bits // 8
            if not mname:
                inner = self._strip(mtype)
                if self._hdr(inner)[1] in (STRUCT, UNION):
                    hit = self._member(inner, name)
                    if hit is not None:
                        return hit[0], bits // 8 + hit[1]
        return None

    def offset_of(self, tid: int, path: str) -> int | None:
        """Byte offset of the field at `path` (names separated by '.', inside the value: no
        pointers followed) in struct/union `tid`, anonymous members looked into; None when
        this BTF's type lacks one of them."""
        cur, off = self._strip(tid), 0
        for name in path.split("."):
            if self._hdr(cur)[1] not in (STRUCT, UNION):
                return None
            hit = self._member(cur, name)
            if hit is None:
                return None
            off += hit[1]
            cur = self._strip(hit[0])
        return off

    # ---- queries the compiler's facts need
    def func_params(self, name: str) -> list[tuple[str, str, int]] | None:
        """[(param name, C type, type id)] of FUNC `name`; None if no such function."""
        tid = self.find(FUNC, name)
        if tid is None:
            return None
        proto = self._hdr(tid)[4]
        return self._proto_params(proto)

    def _proto_params(self, proto: int) -> list[tuple[str, str, int]]:
        _n, kind, vlen, _kf, _st = self._hdr(proto)
        if kind != FUNC_PROTO:
            raise BtfError(f"type {proto} is not a function prototype")
        base = self._offs[proto] + 12
        out = []
        for i in range(vlen):
            name_off, ptype = struct.unpack_from("<II", self._data, base + 8 * i)
            if ptype == 0:  # ... (varargs)
                continue
            out.append((self._str(name_off), self.type_str(ptype), ptype))
        return out

    def tracepoint_params(self, name: str) -> list[tuple[str, str, int]] | None:
        """Arguments of BTF tracepoint `name` (TP_PROTO, without the leading void *)."""
        tid = self.find(TYPEDEF, f"btf_trace_{name}")
        if tid is None:
            return None
        ptr = self._hdr(tid)[4]
        proto = self._hdr(ptr)[4]
        return self._proto_params(proto)[1:]

    def type_by_name(self, ctype: str) -> int | None:
        """'struct sock' / 'struct sock *' / 'int' -> type id (pointers as their pointee's PTR)."""
        ctype = ctype.strip()
        if ctype.endswith("*"):
            inner = self.type_by_name(ctype[:-1])
            if inner is None:
                return None
            for tid in range(1, len(self._offs)):  # rare: only for btfType overrides
                _n, kind, _v, _kf, st = self._hdr(tid)
                if kind == PTR and st == inner:
                    return tid
            return None
        for prefix, kinds in (("struct ", (STRUCT,)), ("union ", (UNION,)), ("enum ", (ENUM, ENUM64))):
            if ctype.startswith(prefix):
                for k in kinds:
                    hit = self.find(k, ctype[len(prefix):])
                    if hit is not None:
                        return hit
                return None
        for k in (INT, TYPEDEF, STRUCT):
            hit = self.find(k, ctype)
            if hit is not None:
                return hit
        return None

    def resolve(self, start: int, path: str) -> Resolved:
        """Follow `path` (fields separated by '.', optional [n]) from a value of type `start`
        (usually a pointer). Pointers met on the way are dereferenced."""
        tid = self._strip(start)
        # the starting value: a pointer to the struct the first field is in
        _n, kind, _v, _kf, st = self._hdr(tid)
        if kind != PTR:
            raise BtfError(f"resolve starts from a {self.type_str(start)}, not a pointer")
        return self.resolve_from(self._strip(st), path)

    def resolve_from(self, struct_tid: int, path: str) -> Resolved:
        """resolve() from a pointer to the struct or union `struct_tid` (btfType's start)."""
        cur = self._strip(struct_tid)
        steps: list[Step] = []
        offset = 0
        pending_deref = True  # the start value is a pointer: read through it
        for part in path.split("."):
            m = re.fullmatch(r"([A-Za-z_]\w*)((?:\[\d+\])*)", part)
            if not m:
                raise BtfError(f"bad path element {part!r}")
            fname, idx = m.group(1), [int(x) for x in re.findall(r"\d+", m.group(2))]
            _n, kind, _v, _kf, st = self._hdr(cur)
            if kind == PTR:
                steps.append(Step(offset, pending_deref))
                pending_deref, offset = True, 0
                cur = self._strip(st)
                _n, kind, _v, _kf, st = self._hdr(cur)
            if kind not in (STRUCT, UNION):
                raise BtfError(f"{self.type_str(cur)} has no field {fname!r}")
            hit = self._member(cur, fname)
            if hit is None:
                raise BtfError(f"{self.type_str(cur)} has no field {fname!r}")
            mtype, moff = hit
            offset += moff
            cur = self._strip(mtype)
            for i in idx:
                _n, kind, _v, _kf, st = self._hdr(cur)
                if kind == ARRAY:
                    elem, _it, n = struct.unpack_from("<III", self._data, self._offs[cur] + 12)
                    if i >= n:
                        raise BtfError(f"index [{i}] out of range for {self.type_str(cur)}")
                    offset += i * self.size_of(elem)
                    cur = self._strip(elem)
                elif kind == PTR:
                    steps.append(Step(offset, pending_deref))
                    pending_deref = True
                    offset = i * self.size_of(st)
                    cur = self._strip(st)
                else:
                    raise BtfError(f"{fname}[{i}]: {self.type_str(cur)} is not an array or pointer")
        steps.append(Step(offset, pending_deref))
        _n, kind, _v, _kf, st = self._hdr(cur)
        kname = {INT: "int", PTR: "ptr", ARRAY: "array", STRUCT: "struct", UNION: "struct", ENUM: "enum",
                 ENUM64: "enum"}.get(kind, "other")
        signed = False
        if kind == INT:
            enc = struct.unpack_from("<I", self._data, self._offs[cur] + 12)[0]
            signed = bool((enc >> 24) & 1)
        return Resolved(tuple(steps), self.type_str(cur), self.size_of(cur), kname, signed)


def load_file(path: str) -> Btf:
    """The BTF of file `path`: raw BTF (as /sys/kernel/btf/vmlinux or `bpftool btf dump ...
    format raw` write) or an ELF file's .BTF section (a BPF object, a binary pahole -J
    encoded). Raises OSError or BtfError."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == b"\x7fELF":
        from vigil.kernel import elfsym

        try:
            data = elfsym.section(data, ".BTF")
        except (elfsym.ElfError, struct.error, IndexError) as e:
            raise BtfError(f"{path}: {e}") from None
    try:
        return Btf(data)
    except (struct.error, IndexError) as e:
        raise BtfError(f"{path}: not valid BTF ({e})") from None


@functools.lru_cache(maxsize=2)
def load(path: str = VMLINUX) -> Btf | None:
    """The parsed BTF at `path`; None when the kernel has none (or it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return Btf(f.read())
    except (OSError, BtfError):
        return None


@functools.lru_cache(maxsize=1)
def preempt_count_from_rq(path: str = VMLINUX) -> int | None:
    """Where this CPU's preempt count lies from this CPU's run queue (struct rq, the per-CPU
    `runqueues`), in bytes: both are per-CPU variables of one static area, so they lie the same
    distance apart on every CPU. x86-64 keeps the count in `__preempt_count` (up to 6.1 and from
    6.15) or in `pcpu_hot.preempt_count` (6.2-6.14). BPF cannot take their address itself:
    typed ksyms of data need CONFIG_KALLSYMS_ALL, which kernels may lack. None when BTF does not
    say (no per-CPU variables encoded, another architecture)."""
    b = load(path)
    if b is None:
        return None
    rq = b.section_offset(".data..percpu", "runqueues")
    pc = b.section_offset(".data..percpu", "__preempt_count")
    if pc is None:
        hot, tid = b.section_offset(".data..percpu", "pcpu_hot"), b.find(STRUCT, "pcpu_hot")
        field = b.offset_of(tid, "preempt_count") if tid is not None else None
        pc = hot + field if hot is not None and field is not None else None
    return pc - rq if rq is not None and pc is not None else None


@functools.lru_cache(maxsize=1)
def raw_tracepoint_names(path: str = VMLINUX) -> frozenset[str] | None:
    """Names a raw tracepoint can attach to; None when the kernel has no BTF to tell."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return frozenset(m.decode() for m in _TRACE.findall(data))
