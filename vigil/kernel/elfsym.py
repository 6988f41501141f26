"""Find a function's file offset in an ELF binary (for uprobes), without pyelftools.

Only what uprobes need: 64-bit little-endian ELF, .symtab and .dynsym, and the
PT_LOAD segment that turns a symbol's virtual address into a file offset.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator

SHT_SYMTAB = 2
SHT_DYNSYM = 11
STT_FUNC = 2
PT_LOAD = 1


class ElfError(ValueError):
    pass


def _header(data: bytes) -> tuple[int, int, int, int, int, int, int]:
    if data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("only 64-bit little-endian ELF is supported")
    # e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
    return phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx


def _sections(data: bytes) -> tuple[list[tuple[int, ...]], int]:
    """The section headers of the ELF `data`, and where the section names' strings start."""
    _, shoff, _, _, shentsize, shnum, shstrndx = _header(data)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    return sections, (sections[shstrndx][4] if sections else 0)


def _notes(data: bytes, sh: tuple[int, ...]) -> Iterator[tuple[bytes, int, bytes]]:
    """The (name, type, descriptor) of each note of the SHT_NOTE section `sh`."""
    p, end = sh[4], min(sh[4] + sh[5], len(data))
    while p + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, p)
        p += 12
        name = data[p:p + namesz].rstrip(b"\0")
        p += (namesz + 3) & ~3
        desc = data[p:p + descsz]
        p += (descsz + 3) & ~3
        yield name, ntype, desc


def _cstr(data: bytes, off: int) -> bytes:
    end = data.find(b"\0", off)
    return data[off:end if end >= 0 else len(data)]


def symbol_value(data: bytes, name: str) -> int:
    """Virtual address of the defined function symbol `name` (.symtab first, then .dynsym)."""
    return _symbol(data, name)[0]


def _symbol(data: bytes, name: str) -> tuple[int, int]:
    """(virtual address, size) of the defined function symbol `name`."""
    _, shoff, _, _, shentsize, shnum, _ = _header(data)
    want = name.encode()
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for kind in (SHT_SYMTAB, SHT_DYNSYM):
        for sh in sections:
            if sh[1] != kind:
                continue
            off, size, link, entsize = sh[4], sh[5], sh[6], sh[9] or 24
            stroff = sections[link][4]
            for p in range(off, off + size, entsize):
                st_name, st_info, _other, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, p)
                if st_info & 0xF == STT_FUNC and st_shndx != 0 and st_value and _cstr(data, stroff + st_name) == want:
                    return st_value, st_size
    raise ElfError(f"no defined function symbol {name!r}")


def vaddr_to_offset(data: bytes, vaddr: int) -> int:
    phoff, _, phentsize, phnum, _, _, _ = _header(data)
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD and p_vaddr <= vaddr < p_vaddr + p_filesz:
            return vaddr - p_vaddr + p_offset
    raise ElfError(f"address {vaddr:#x} is in no loadable segment")


PF_X = 1


def exec_addr_offset(path: str, addr: int) -> int:
    """File offset of virtual address `addr` in an executable loadable segment of the ELF at
    `path`, as Tetragon turns a uprobe's addrs into offsets."""
    with open(path, "rb") as f:
        data = f.read()
    phoff, _, phentsize, phnum, _, _, _ = _header(data)
    for i in range(phnum):
        p_type, flags, p_offset, p_vaddr, _paddr, _filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD and flags & PF_X and p_vaddr <= addr < p_vaddr + memsz:
            return addr - p_vaddr + p_offset
    raise ElfError(f"address {addr:#x} is in no executable segment of {path}")


def split_symbol(name: str) -> tuple[str, int]:
    """A uprobe symbol as Tetragon takes it: "func" or "func+OFFSET" (OFFSET decimal, 0x hex,
    0o octal or 0b binary): (func, offset)."""
    parts = name.split("+")
    if len(parts) == 1:
        return name, 0
    if len(parts) != 2 or not parts[0]:
        raise ElfError(f"wrong symbol {name!r}: a function name, or one and +OFFSET")
    try:
        off = int(parts[1].strip(), 0)
    except ValueError:
        off = -1
    if off < 0:
        raise ElfError(f"wrong offset {parts[1]!r} in symbol {name!r}")
    return parts[0], off


def func_offset(path: str, name: str) -> int:
    """File offset of function `name` ("func" or "func+OFFSET") in the ELF at `path`, as
    uprobes want it."""
    func, off = split_symbol(name)
    with open(path, "rb") as f:
        data = f.read()
    value, size = _symbol(data, func)
    if off and off >= size:
        raise ElfError(f"offset {off:#x} is out of range of function {func!r} ({size} bytes)")
    return vaddr_to_offset(data, value + off)


SHT_NOTE = 7


def usdt_notes(path: str) -> list:
    """The SDT probes (.note.stapsdt) of the ELF at `path`: provider, name, the file offset
    of the probe site and of its semaphore (0: none), and the argument spec string."""
    from vigil.kernel.facts import UsdtNote

    with open(path, "rb") as f:
        data = f.read()
    sections, names_off = _sections(data)
    if not sections:
        return []
    by_name = {_cstr(data, names_off + sh[0]).decode(errors="replace"): sh for sh in sections}
    base_sec = by_name.get(".stapsdt.base")
    out = []
    for sh in sections:
        if sh[1] != SHT_NOTE or _cstr(data, names_off + sh[0]) != b".note.stapsdt":
            continue
        for name, ntype, desc in _notes(data, sh):
            if name != b"stapsdt" or ntype != 3 or len(desc) < 24:
                continue
            pc, base, sem = struct.unpack_from("<QQQ", desc, 0)
            strs = desc[24:].split(b"\0")
            if len(strs) < 3:
                continue
            if base_sec is not None and base:
                pc += base_sec[3] - base
                if sem:
                    sem += base_sec[3] - base
            out.append(UsdtNote(strs[0].decode(errors="replace"), strs[1].decode(errors="replace"),
                                vaddr_to_offset(data, pc), vaddr_to_offset(data, sem) if sem else 0,
                                strs[2].decode(errors="replace")))
    return out


def section(data: bytes, name: str) -> bytes:
    """The bytes of the ELF section called `name`; ElfError when there is none."""
    sections, names_off = _sections(data)
    for sh in sections:
        if _cstr(data, names_off + sh[0]) == name.encode():
            return data[sh[4]:sh[4] + sh[5]]
    raise ElfError(f"no {name} section")


NT_GNU_BUILD_ID = 3


def build_id(data: bytes) -> str:
    """The GNU build ID (hex) of the ELF `data`: the NT_GNU_BUILD_ID note, from the
    .note.gnu.build-id section first, else any note section; ElfError when there is none."""
    sections, names_off = _sections(data)
    notes = [sh for sh in sections if sh[1] == SHT_NOTE]
    notes.sort(key=lambda sh: _cstr(data, names_off + sh[0]) != b".note.gnu.build-id")
    for sh in notes:
        for name, ntype, desc in _notes(data, sh):
            if name == b"GNU" and ntype == NT_GNU_BUILD_ID and desc:
                return desc.hex()
    raise ElfError("no GNU build ID note")


def function_ranges(data: bytes) -> list[tuple[int, int, str]]:
    """The defined function symbols of an ELF (.symtab and .dynsym) as sorted (file offset of
    the start, of the end, name): which function a file offset is in (user stack traces)."""
    sections, _ = _sections(data)
    out = set()
    for sh in sections:
        if sh[1] not in (SHT_SYMTAB, SHT_DYNSYM):
            continue
        off, size, link, entsize = sh[4], sh[5], sh[6], sh[9] or 24
        stroff = sections[link][4]
        for p in range(off, min(off + size, len(data) - 23), entsize):
            st_name, st_info, _other, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, p)
            if st_info & 0xF != STT_FUNC or not st_size or not 0 < st_shndx < len(sections):
                continue
            sec = sections[st_shndx]  # the symbol's section turns its address into a file offset
            start = st_value - sec[3] + sec[4]
            out.add((start, start + st_size, _cstr(data, stroff + st_name).decode(errors="replace")))
    return sorted(out)


def function_at(ranges: list[tuple[int, int, str]], offset: int) -> str:
    """The name of the function of `ranges` (function_ranges) holding file offset `offset`, or ""."""
    import bisect

    i = bisect.bisect_right(ranges, (offset, 1 << 64, "")) - 1
    return ranges[i][2] if i >= 0 and offset < ranges[i][1] else ""
