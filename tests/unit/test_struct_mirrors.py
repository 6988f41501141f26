"""Every Python mirror of a C struct is checked against the compiled object's BTF by the
product itself when the object loads (vigil.kernel.layouts); here the same checks run for
every mirror, and a wrong mirror is shown to be refused with the struct and field named."""
from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest

from vigil.enforce import netdeny, netrules
from vigil.events import records as R
from vigil.kernel import BpfObject, policy_layout as PL
from vigil.kernel.layouts import Layout, LayoutError, check_ctypes
from vigil.kernel.paths import bpf_object
from vigil.sensors import process


def _open(name: str) -> Iterator[BpfObject]:
    path = bpf_object(name)
    if not path.exists():
        pytest.fail(f"{path} not built: run `make`")
    obj = BpfObject.open(path)  # opened, not loaded: BTF is read from the file
    try:
        yield obj
    finally:
        obj.close()


@pytest.fixture(scope="module")
def process_obj() -> Iterator[BpfObject]:
    yield from _open("process")


@pytest.fixture(scope="module")
def generic_obj() -> Iterator[BpfObject]:
    yield from _open("generic")


@pytest.fixture(scope="module")
def netdeny_obj() -> Iterator[BpfObject]:
    yield from _open("netdeny")


@pytest.mark.parametrize("mirror", [R.HEADER, R.PROCESS, R.EXIT, process.ENTRY], ids=lambda m: m.c_name)
def test_process_object_mirrors(process_obj: BpfObject, mirror: Layout) -> None:
    mirror.check(process_obj)


@pytest.mark.parametrize("mirror", [netdeny.MSG, netrules.CIDR_KEY, netrules.PID_KEY, netrules.BIN_KEY, netrules.GEN,
                                    netrules.RULE, netrules.COUNTERS], ids=lambda m: m.c_name)
def test_netdeny_object_mirrors(netdeny_obj: BpfObject, mirror: Layout) -> None:
    mirror.check(netdeny_obj)


@pytest.mark.parametrize("cname, ctype", PL.MIRRORS, ids=[c for c, _ in PL.MIRRORS])
def test_generic_object_mirrors(generic_obj: BpfObject, cname: str, ctype: type[ctypes.Structure]) -> None:
    check_ctypes(generic_obj, cname, ctype)


def test_a_short_mirror_is_refused(process_obj: BpfObject) -> None:
    """The bug this guards against: an execve_entry mirror 8 bytes short (no `follow`)."""
    short = Layout("execve_entry", "key.pid:I key.pad:I key.ktime:Q pkey.pid:I pkey.pad:I pkey.ktime:Q bin_len:I "
                   "flags:I bin:256s caps:3Q ns:10I")
    with pytest.raises(LayoutError, match="struct execve_entry is 368 bytes in the object, 360"):
        short.check(process_obj)


def test_a_moved_field_is_refused(process_obj: BpfObject) -> None:
    swapped = Layout("msg_exit", "hdr.op:B hdr.pad:B hdr.flags:H hdr.size:I hdr.ktime:Q key.pid:I key.pad:I "
                     "key.ktime:Q code:I tid:I")
    with pytest.raises(LayoutError, match="field code at offset 36, the Python mirror has it at 32"):
        swapped.check(process_obj)


def test_msg_data_header(generic_obj: BpfObject) -> None:
    from vigil.kernel.layouts import btf_struct

    size, offsets = btf_struct(generic_obj, "msg_data")
    assert size == ctypes.sizeof(PL.MsgDataHdr) + 4096
    for name in ("ev_ktime", "tid", "slot", "offset", "len"):
        assert offsets[name] == getattr(PL.MsgDataHdr, name).offset, name
