"""Records of generic policy hooks (op VIGIL_OP_GENERIC) and their maxData chunks
(op VIGIL_OP_DATA): decoded into the ctypes mirrors of bpf/include/vigil_policy.h.
What they mean as events (which argument is what) is the compiled hook's business:
vigil/sensors/generic_events.py."""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from vigil.core import native
from vigil.events.records import DecodeError
from vigil.kernel import policy_layout as L

HDR_SIZE = ctypes.sizeof(L.MsgGeneric)


DATA_HDR_SIZE = ctypes.sizeof(L.MsgDataHdr)


def decode_data(buf: bytes) -> tuple[L.MsgDataHdr, bytes]:
    if len(buf) < DATA_HDR_SIZE:
        raise DecodeError(f"data record of {len(buf)} bytes, need {DATA_HDR_SIZE}")
    h = L.MsgDataHdr.from_buffer_copy(buf, 0)
    return h, buf[DATA_HDR_SIZE:DATA_HDR_SIZE + h.len]


def py_decode_generic(buf: bytes) -> tuple[L.MsgGeneric, bytes]:
    if len(buf) < HDR_SIZE:
        raise DecodeError(f"generic record of {len(buf)} bytes, need {HDR_SIZE}")
    return L.MsgGeneric.from_buffer_copy(buf, 0), buf[HDR_SIZE:]


# the compiled twin when built (native/fastpath.c): the same fields, read from the C header
decode_generic: Callable[[bytes], tuple[Any, bytes]] = py_decode_generic
if native.fast is not None:
    decode_generic = native.fast.decode_generic
