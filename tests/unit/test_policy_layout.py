"""ctypes mirrors in vigil/kernel/policy_layout.py against the BTF of build/bpf/generic.bpf.o."""
from __future__ import annotations

import ctypes

import pytest

from tests.unit.test_record_layout import btf_structs
from vigil.kernel.paths import bpf_object
from vigil.kernel import policy_layout as L

PAIRS = [("vp_arg", L.Arg), ("vp_filter", L.Filter), ("vp_action_cfg", L.ActionCfg), ("vp_ns_filter", L.NsFilter),
         ("vp_selector", L.Selector), ("vp_hook", L.Hook), ("vp_arg_hdr", L.ArgHdr)]


@pytest.fixture(scope="module")
def structs() -> dict:
    obj = bpf_object("generic")
    if not obj.exists():
        pytest.fail(f"{obj} not built: run `make`")
    return btf_structs(str(obj))


@pytest.mark.parametrize("cname, ctype", PAIRS, ids=[p[0] for p in PAIRS])
def test_struct_matches_btf(structs, cname, ctype):
    st = structs[cname]
    assert st["size"] == ctypes.sizeof(ctype)
    ours = {name: getattr(ctype, name).offset for name, *_ in ctype._fields_}
    for m in st["members"]:
        if m["name"] in ours:
            assert ours[m["name"]] == m["bits_offset"] // 8, (cname, m["name"])


def test_event_headers_match_btf(structs):
    assert structs["msg_generic"]["size"] == ctypes.sizeof(L.MsgGeneric)
    assert structs["msg_data"]["size"] == ctypes.sizeof(L.MsgDataHdr) + 4096
