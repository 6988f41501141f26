"""The tcp_connect stand-in's sock_ops program (bpf/generic.bpf.c vigil_sockops) is attached to
the root cgroup2, so it runs for every sock_ops callback the kernel makes for every TCP socket
of the host without BPF_SOCK_OPS_*_CB_FLAGS set (none are set by it): TIMEOUT_INIT, RWND_INIT,
TCP_CONNECT_CB, ACTIVE_/PASSIVE_ESTABLISHED_CB, NEEDS_ECN, TCP_LISTEN_CB (BASE_RTT under TCP-NV
only) - a few per connection, none per packet (RTO/RETRANS/STATE/RTT/header-option callbacks
need flags). Every callback but TCP_CONNECT_CB must return at once: the program's first
branch tests ctx->op, before any helper call or map lookup. Read from the built object."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from vigil.kernel.paths import bpf_object

OBJDUMP = shutil.which("llvm-objdump")
BPF_SOCK_OPS_TCP_CONNECT_CB = 3  # include/uapi/linux/bpf.h


def _program(obj: str, section: str) -> list[str]:
    out = subprocess.run([str(OBJDUMP), "-d", "--no-show-raw-insn", "-j", section, obj], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return [m.group(1).strip() for ln in out.splitlines() if (m := re.match(r"\s*\d+:\s+(.*)$", ln))]


def _until_first_branch(insns: list[str]) -> tuple[list[str], str]:
    for i, ins in enumerate(insns):
        if ins.startswith(("if ", "goto")) or ins == "exit":
            return insns[:i], ins
    raise AssertionError("no branch")


# (case, instructions, whether they test ctx->op for TCP_CONNECT_CB before any call or map load)
SHAPES = [
    ("op-first", ["r6 = r1", "r1 = 0", "*(u64 *)(r10 - 8) = r1", "r1 = *(u32 *)(r6 + 0)",
                  "if r1 != 3 goto +20 <x>", "call 113"], True),
    ("call-first", ["r6 = r1", "call 14", "r1 = *(u32 *)(r6 + 0)", "if r1 != 3 goto +20 <x>"], False),
    ("map-first", ["r6 = r1", "r1 = 0 ll", "r1 = *(u32 *)(r6 + 0)", "if r1 != 3 goto +20 <x>"], False),
    ("other-op", ["r6 = r1", "r1 = *(u32 *)(r6 + 0)", "if r1 != 4 goto +20 <x>", "call 113"], False),
    ("other-field", ["r6 = r1", "r1 = *(u32 *)(r6 + 4)", "if r1 != 3 goto +20 <x>", "call 113"], False),
]


def _op_tested_first(insns: list[str]) -> bool:
    before, branch = _until_first_branch(insns)
    if any(i.startswith("call") or i.endswith(" ll") for i in before):  # a helper, a map (ld_imm64)
        return False
    ctx = {"r1"}
    op_regs: set[str] = set()
    for ins in before:
        dst, _, src = ins.partition(" = ")
        if src in ctx:
            ctx.add(dst)
        elif (m := re.fullmatch(r"\*\(u32 \*\)\((r\d+) \+ 0\)", src)) and m.group(1) in ctx:
            op_regs.add(dst)  # struct bpf_sock_ops: op is the first member
        else:
            ctx.discard(dst)
            op_regs.discard(dst)
    m = re.match(r"if (r\d+) != (\d+) goto", branch)
    return bool(m and m.group(1) in op_regs and int(m.group(2)) == BPF_SOCK_OPS_TCP_CONNECT_CB)


@pytest.mark.parametrize("case, insns, ok", SHAPES, ids=[s[0] for s in SHAPES])
def test_the_op_check_is_recognised(case: str, insns: list[str], ok: bool) -> None:
    assert _op_tested_first(insns) is ok


@pytest.mark.skipif(OBJDUMP is None or not bpf_object("generic").exists(), reason="needs llvm-objdump and make bpf")
def test_vigil_sockops_returns_before_any_call_but_on_tcp_connect() -> None:
    insns = _program(str(bpf_object("generic")), "sockops")
    assert _op_tested_first(insns), insns[:20]
