"""Whether a kernel reports a link's missed probe hits goes by its BTF's struct bpf_link_info
(vigil.kernel.info.missed_offsets), not by its release: a backport has the fields on an older
release, an odd kernel may lack one on a newer. Synthetic BTF blobs of the struct with and
without each field, and the running kernel's."""
from __future__ import annotations

import os
import re
import struct

import pytest

from vigil.kernel import btf
from vigil.kernel.info import missed_offsets

U32, U64 = 1, 2  # type ids of the blob's integers


def link_info_btf(perf_missed: bool, multi_missed: bool, struct_name: str = "bpf_link_info") -> btf.Btf:
    """A BTF blob holding struct bpf_link_info as uapi/linux/bpf.h lays it out (type, id, prog_id,
    then a union of kprobe_multi and perf_event{type, union{kprobe}}), with or without each
    missed field."""
    strs = bytearray(b"\0")

    def name(s: str) -> int:
        if not s:
            return 0
        strs.extend(s.encode() + b"\0")
        return len(strs) - len(s) - 1

    types: list[bytes] = []

    def add(raw: bytes) -> int:
        types.append(raw)
        return len(types)

    def integer(n: str, size: int) -> int:
        return add(struct.pack("<III", name(n), btf.INT << 24, size) + struct.pack("<I", size * 8))

    def compound(kind: int, n: str, size: int, members: list[tuple[str, int, int]]) -> int:
        raw = struct.pack("<III", name(n), kind << 24 | len(members), size)
        for mname, mtype, byte_off in members:
            raw += struct.pack("<III", name(mname), mtype, byte_off * 8)
        return add(raw)

    assert integer("__u32", 4) == U32 and integer("__u64", 8) == U64
    kprobe = [("func_name", U64, 0), ("name_len", U32, 8), ("offset", U32, 12), ("addr", U64, 16)]
    kprobe += [("missed", U64, 24), ("cookie", U64, 32)] if perf_missed else [("cookie", U64, 24)]
    kp = compound(btf.STRUCT, "", 40, kprobe)
    inner = compound(btf.UNION, "", 40, [("kprobe", kp, 0)])
    perf = compound(btf.STRUCT, "", 48, [("type", U32, 0), ("", inner, 8)])
    multi = [("addrs", U64, 0), ("count", U32, 8), ("flags", U32, 12)]
    multi += [("missed", U64, 16), ("cookies", U64, 24)] if multi_missed else []
    km = compound(btf.STRUCT, "", 32, multi)
    union = compound(btf.UNION, "", 48, [("kprobe_multi", km, 0), ("perf_event", perf, 0)])
    compound(btf.STRUCT, struct_name, 64, [("type", U32, 0), ("id", U32, 4), ("prog_id", U32, 8), ("", union, 16)])
    tdata = b"".join(types)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(tdata), len(tdata), len(strs))
    return btf.Btf(hdr + tdata + bytes(strs))


# the struct's fields -> (perf_event.kprobe.missed, kprobe_multi.missed) offsets: the uapi's
# where the field is, None where it is not (the kernel leaves no count there)
@pytest.mark.parametrize("perf_missed, multi_missed, struct_name, want", [
    (True, True, "bpf_link_info", (48, 32)),       # 6.7+, or a backport of both
    (False, False, "bpf_link_info", (None, None)),  # before 6.7
    (False, True, "bpf_link_info", (None, 32)),     # only kprobe_multi's backported
    (True, False, "bpf_link_info", (48, None)),     # only the perf link's
    (True, True, "other_info", (None, None)),       # no struct bpf_link_info in the BTF
], ids=["both", "neither", "multi-only", "perf-only", "no-struct"])
def test_missed_offsets_follow_the_btf(perf_missed: bool, multi_missed: bool, struct_name: str,
                                       want: tuple[int | None, int | None]):
    assert missed_offsets(link_info_btf(perf_missed, multi_missed, struct_name)) == want


def _release() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@pytest.mark.skipif(btf.load() is None or _release() < (6, 7), reason="needs an upstream 6.7+ kernel with BTF")
def test_the_running_kernels_btf_has_both_fields_at_the_uapi_offsets():
    assert missed_offsets(btf.load()) == (48, 32)
