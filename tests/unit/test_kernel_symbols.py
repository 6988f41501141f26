"""The kernel symbols behind kernel stack traces: read again once a program that takes stacks
is loaded (GenericHook.load calls invalidate(); tests/kernel/test_policy_features.py holds the
agent to it on the real kernel)."""
from __future__ import annotations

import array
import struct
from pathlib import Path

import pytest

from vigil.sensors import generic_events as G

NEIGHBOUR = "bpf_prog_6deef7357e7b4530"  # an unnamed program loaded by someone else
OURS = "bpf_prog_0123456789abcdef_vigil_raw_tp"
BEFORE = ["ffffffffc0001000 t " + NEIGHBOUR + "\t[bpf]", "ffffffff81005000 T kfree_skb_reason",
          "ffffffff81006000 T udp_sendmsg"]
AFTER = [*BEFORE, "ffffffffc0002000 t " + OURS + "\t[bpf]"]


def _table_lookup(syms: G.KernelSymbols, addr: int) -> tuple[str, int]:
    """The compiled handler's view: the sorted addresses and names table() gives."""
    raw, names = syms.table()
    addrs = array.array("Q", raw)
    i = max(i for i, a in enumerate(addrs) if a <= addr)
    return names[i], addr - addrs[i]


@pytest.mark.parametrize("view", ["lookup", "table"])
@pytest.mark.parametrize("invalidated, want", [(True, (OURS, 0x10)), (False, (NEIGHBOUR, 0x1010))])
def test_symbols_are_read_again_after_invalidate(tmp_path: Path, view: str, invalidated: bool,
                                                 want: tuple[str, int]) -> None:
    f = tmp_path / "kallsyms"
    f.write_text("\n".join(BEFORE) + "\n")
    syms = G.KernelSymbols(str(f))
    look = syms.lookup if view == "lookup" else (lambda a: _table_lookup(syms, a))
    assert look(0xffffffffc0002010) == (NEIGHBOUR, 0x1010)  # read: our program is not loaded yet
    f.write_text("\n".join(AFTER) + "\n")  # ... now it is
    if invalidated:
        syms.invalidate()
    assert look(0xffffffffc0002010) == want
    assert look(0xffffffff81005008) == ("kfree_skb_reason", 8)


def test_a_stack_starts_below_a_program_loaded_after_the_first_read(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Our program's frame named as ours is left out; named after the neighbour below it, it was
    the stack's first frame."""
    f = tmp_path / "kallsyms"
    f.write_text("\n".join(BEFORE) + "\n")
    syms = G.KernelSymbols(str(f))
    monkeypatch.setattr(G, "KSYMS", syms)
    stack = struct.pack("<3Q", 0xffffffffc0002010, 0xffffffff81005008, 0xffffffff81006020)
    assert G._stack(stack, 0, len(stack))[0]["symbol"] == NEIGHBOUR
    f.write_text("\n".join(AFTER) + "\n")
    syms.invalidate()
    assert [e["symbol"] for e in G._stack(stack, 0, len(stack))] == ["kfree_skb_reason", "udp_sendmsg"]
