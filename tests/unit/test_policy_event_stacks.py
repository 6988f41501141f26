"""User stack traces of policy events, as Tetragon writes them: each frame's offset in the
file mapped at its address, the file's full path (module) and the ELF function holding that
offset (symbol); frames in no mapping are left out. Built from this test process's own maps."""
from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import sys
import textwrap
from typing import Any

from tests.policyfuzz import facts
from vigil.events.generic import py_decode_generic
from vigil.events.synth import generic_record
from vigil.kernel import elfsym
from vigil.policy import parse_policies
from vigil.policy.compile import compile_policy
from vigil.sensors.generic_events import build_body

SPEC = """
kprobes:
- call: sys_getpid
  syscall: true
  selectors:
  - matchActions: [{action: Post, userStackTrace: true}]
"""


def _hook() -> Any:
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: ustack\nspec:\n"
            + textwrap.indent(textwrap.dedent(SPEC).strip("\n"), "  ") + "\n")
    (policy,) = parse_policies(text, "ustack.yaml")
    ids = itertools.count(1)
    (hook,) = compile_policy(policy, facts("host-6.18"), lambda: next(ids), follow_bit=lambda op, v: 0).hooks
    return hook


def _body(addrs: list[int]) -> dict[str, Any]:
    """build_body of a record of this process whose user stack is `addrs`."""
    hook = _hook()
    stack = b"".join(a.to_bytes(8, "little") for a in addrs)
    # the stack is written where a kernel stack would be, then declared a user stack
    m, data = py_decode_generic(generic_record(hook_id=hook.hook_id, pid=os.getpid(), ktime=1, exec_ktime=1,
                                               kstack=stack))
    m.kstack_len, m.ustack_len = 0, len(stack)
    return build_body(hook, m, data)


def _mapping(addr: int) -> tuple[int, int, str]:
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.rstrip("\n").split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return lo, int(parts[2], 16), parts[5] if len(parts) > 5 else ""
    raise AssertionError(f"{addr:#x} is not mapped")


def test_user_stack_frames_name_the_file_and_function() -> None:
    libc = ctypes.CDLL(None)
    getpid = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    assert getpid
    lo, foff, path = _mapping(getpid + 1)
    anon = mmap.mmap(-1, 4096)
    anon_addr = ctypes.addressof(ctypes.c_char.from_buffer(anon))
    try:
        body = _body([getpid + 1, 0x10, anon_addr + 8])
        frames = body["user_stack_trace"]
        a_lo, a_foff, a_path = _mapping(anon_addr)
    finally:
        anon.close()
    assert path.startswith("/") and os.path.basename(path).startswith("libc")
    # an unmapped address (0x10) is left out, as Tetragon leaves out frames it cannot place
    assert len(frames) == 2
    libc_frame, anon_frame = frames
    assert libc_frame["module"] == path  # the whole path, not its base name
    assert libc_frame["offset"] == str(getpid + 1 - lo + foff)
    assert libc_frame["symbol"] in ("getpid", "__getpid")
    assert anon_frame == {"offset": str(anon_addr + 8 - a_lo + a_foff), **({"module": a_path} if a_path else {})}


def test_function_ranges_of_the_interpreter() -> None:
    """Functions of the interpreter's ELF found by file offsets: the first and last byte of a
    function that shares its bytes with no other, and an offset before every function."""
    with open(os.path.realpath(sys.executable), "rb") as f:
        data = f.read()
    ranges = elfsym.function_ranges(data)
    assert ranges and all(start < end for start, end, _ in ranges)
    alone = [r for i, r in enumerate(ranges)
             if (i == 0 or ranges[i - 1][1] <= r[0]) and (i + 1 == len(ranges) or r[1] <= ranges[i + 1][0])]
    start, end, name = alone[len(alone) // 2]
    assert elfsym.function_at(ranges, start) == name and elfsym.function_at(ranges, end - 1) == name
    assert elfsym.function_at(ranges, ranges[0][0] - 1) == ""
