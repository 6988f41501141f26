"""The pure compiler: `compile_policy(policy, facts)` with facts recorded on this host and in
the VM tier's 6.12 guest (tests/facts/record.py). Byte for byte against hand-built kernel
configuration, without root and without any I/O; every blocker of a hook reported at once
with its cause; explain and validate on the same path."""
from __future__ import annotations

import ctypes
import itertools
import struct
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.policyfuzz import facts
from vigil.cli.policy_cmd import policy as policy_cli
from vigil.kernel import policy_layout as L
from vigil.kernel.facts import KernelFacts
from vigil.policy import PolicyErrors, parse_policies, standins
from vigil.policy.compile import compile_policy, entry_prefilter, str_key_size, unsupported
from vigil.policy.explain import explain_policy
from vigil.policy.syscalls import SYSCALL_NUMBERS

HOST, VM = facts("host-6.18"), facts("vm-6.12")
SPECS: list[str] = []  # every spec compiled here; tests/facts/record.py asks what they need


def one(spec: str, name: str = "t") -> object:
    if spec not in SPECS:
        SPECS.append(spec)
    text = (f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")
    (p,) = parse_policies(text, "p.yaml")
    return p


def comp(spec: str, kernel: KernelFacts, substitute: bool = False):  # type: ignore[no-untyped-def]
    ids = itertools.count(1)
    return compile_policy(one(spec), kernel, lambda: next(ids), follow_bit=lambda op, v: 0, substitute=substitute)


def errors(spec: str, kernel: KernelFacts, substitute: bool = False) -> list[str]:
    with pytest.raises(PolicyErrors) as e:
        comp(spec, kernel, substitute)
    return [str(x) for x in e.value.errors]


@pytest.fixture
def no_io() -> Iterator[list[str]]:
    """Records every file the interpreter opens or lists while the test body runs."""
    seen: list[str] = []
    state = {"on": True}

    def hook(event: str, args: tuple) -> None:
        if state["on"] and event in ("open", "os.listdir", "os.scandir", "subprocess.Popen", "socket.connect"):
            seen.append(f"{event} {args[0]!r}")
    sys.addaudithook(hook)
    yield seen
    state["on"] = False


# ---------------------------------------------------------------- byte for byte

def test_syscall_prefix_filter_byte_for_byte(no_io: list[str]) -> None:
    p = one("""
kprobes:
- call: sys_openat
  args: [{index: 1, type: string, label: path}]
  selectors:
  - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/", "/root/"]}]
    matchActions: [{action: Sigkill}]
""")
    ids = itertools.count(7)
    cp = compile_policy(p, HOST, lambda: next(ids))
    assert no_io == [], "the compiler read files"
    (ch,) = cp.hooks
    want = L.Hook()
    want.hook_id, want.nargs, want.nselectors = 7, 1, 1
    a = want.args[0]
    a.type, a.src, a.off, a.size, a.max_len = L.T["string"], L.SRC_SYSCALL, 1, 8, L.ARG_DATA - 1
    s = want.sel[0]
    s.nfilters, s.nactions = 1, 1
    s.args[0].op, s.args[0].slot, s.args[0].map_id = L.OP["Prefix"], 0, 0
    s.actions[0].type = L.ACT["Sigkill"]
    assert bytes(ch.config) == bytes(want)
    assert ch.prefix_keys == [struct.pack("<II", 32 + 8 * len(v), 0) + v.ljust(L.LPM_STR, b"\0")
                              for v in (b"/etc/", b"/root/")]
    assert (ch.placement.mechanism, ch.placement.attach["name"]) == ("tracepoint", "sys_enter_openat")


def test_32bit_syscall_guards_byte_for_byte() -> None:
    cp = comp("""
kprobes:
- call: __ia32_sys_dup
  args: [{index: 0, type: int}]
""", HOST)
    (ch,) = cp.hooks
    g = ch.config.guards
    assert ch.config.nguards == 2
    assert [(g[i].idx, g[i].op, g[i].val) for i in range(2)] == [(L.RAW_SYSNR, L.G_EQ, 41), (L.RAW_COMPAT, L.G_EQ, 1)]
    assert ch.placement.entry_prog == "vigil_raw_sys_enter" and ch.placement.attach["name"] == "sys_enter"


def _prefilter(selectors: str, args: str = "[{index: 1, type: string}]", call: str = "sys_openat") -> dict:
    (ch,) = comp(f"""
kprobes:
- call: {call}
  args: {args}
  selectors:
{textwrap.indent(textwrap.dedent(selectors).strip(chr(10)), "  ")}
""", HOST).hooks
    return entry_prefilter(ch)


def _lengths(pf: dict) -> list[int]:
    mask = int.from_bytes(pf["pre_lenmask"], "little")
    return [n for n in range(256) if mask >> n & 1]


def test_entry_prefilter_lengths_of_the_equal_values() -> None:
    """Every selector holds an Equal on the string: its lengths decide in the syscall entry."""
    pf = _prefilter("""
- matchArgs: [{index: 1, operator: Equal, values: ["/etc/passwd", "/x"]}]
  matchBinaries: [{operator: In, values: ["/usr/bin/cat"]}]
- matchArgs: [{index: 1, operator: Equal, values: ["/etc/shadow2"]}, {index: 2, operator: Equal, values: ["0"]}]
""", "[{index: 1, type: string}, {index: 2, type: int}]")
    assert (pf["pre_arg"], pf["pre_slot"]) == (2, 0)  # syscall argument 1, the hook's first slot
    assert _lengths(pf) == [2, 11, 12]
    # a selector's Equal filters on the string all hold: the lengths they share
    pf = _prefilter("""
- matchArgs: [{index: 1, operator: Equal, values: ["/ab", "/abcd"]}, {index: 1, operator: Equal, values: ["/abcd"]}]
""")
    assert _lengths(pf) == [5]
    long = "/" + "x" * 199
    assert _lengths(_prefilter(f"- matchArgs: [{{index: 1, operator: Equal, values: [\"{long}\"]}}]")) == [200]


@pytest.mark.parametrize("selectors, read", [
    ('- matchArgs: [{index: 1, operator: Equal, values: ["/etc/passwd", "/x"]}]', 16),  # the longest, 11: 13
    ('- matchArgs: [{index: 1, operator: Equal, values: ["/ab"]}]\n'
     '- matchArgs: [{index: 1, operator: Equal, values: ["/abcdef"]}]', 16),  # over the selectors: 9
    ('- matchArgs: [{index: 1, operator: Equal, values: ["/ab", "/abcdefgh"]}, '
     '{index: 1, operator: Equal, values: ["/ab"]}]', 8),  # the lengths a selector can match: 3, 5
    ('- matchArgs: [{index: 1, operator: Equal, values: [""]}]', 8),  # 2
    ('- matchArgs: [{index: 1, operator: Equal, values: ["/abcde"]}]', 8),  # 6 + 2: a word already
    ('- matchArgs: [{index: 1, operator: Equal, values: ["/abcdef"]}]', 16),  # 7 + 2
    ('- matchArgs: [{index: 1, operator: Equal, values: ["/nonexistent/vigil"]}]', 24),  # 18 + 2
    (f'- matchArgs: [{{index: 1, operator: Equal, values: ["/{"x" * 118}"]}}]', 128),  # 119 + 2: STR_FAST
    (f'- matchArgs: [{{index: 1, operator: Equal, values: ["/{"x" * 125}"]}}]', 128),  # 126 + 2: STR_FAST
    (f'- matchArgs: [{{index: 1, operator: Equal, values: ["/{"x" * 126}"]}}]', 128),  # longer: at most that
    (f'- matchArgs: [{{index: 1, operator: Equal, values: ["/x", "/{"x" * 199}"]}}]', 128),
], ids=["two-values", "two-selectors", "a-selectors-lengths", "empty", "a-word", "a-word-and-a-byte", "18-bytes",
        "longest-below-a-word", "longest-below", "at-the-stack-copy", "past-the-stack-copy"])
def test_entry_prefilter_reads_the_longest_length_and_two_bytes_in_words(selectors: str, read: int) -> None:
    """The entry reads the longest length the Equals can match, its NUL and one byte more (a
    string the read cuts is longer than all of them), rounded up to a whole word (the read helper
    copies by the word, and a read size past the last whole word byte by byte, each byte a user
    access: ~4 ns a hit), at most STR_FAST."""
    assert _prefilter(selectors)["pre_read"] == read


@pytest.mark.parametrize("selectors, value", [
    ('- matchArgs: [{index: 1, operator: Equal, values: ["/etc/passwd"]}]', b"/etc/passwd"),
    ('- matchArgs: [{index: 1, operator: Equal, values: ["/etc/passwd", "/etc/passwd"]}]\n'
     '- matchArgs: [{index: 1, operator: Equal, values: ["/etc/passwd"]}]\n'
     '  matchBinaries: [{operator: In, values: ["/usr/bin/cat"]}]', b"/etc/passwd"),  # one value, twice
    ('- matchArgs: [{index: 1, operator: Equal, values: [""]}]', b""),
    ('- matchArgs: [{index: 1, operator: Equal, values: ["/etc/passwd", "/etc/shadow"]}]', None),
    ('- matchArgs: [{index: 1, operator: Equal, values: ["/etc/passwd"]}]\n'
     '- matchArgs: [{index: 1, operator: Equal, values: ["/etc/shadow"]}]', None),  # one each
    (f'- matchArgs: [{{index: 1, operator: Equal, values: ["/{"x" * 125}"]}}]', b"/" + b"x" * 125),
    (f'- matchArgs: [{{index: 1, operator: Equal, values: ["/{"x" * 126}"]}}]', None),  # read as 128: cut
], ids=["one", "one-in-every-selector", "empty", "two", "two-selectors", "longest", "too-long"])
def test_entry_prefilter_compares_a_single_value(selectors: str, value: bytes | None) -> None:
    """All the Equals name one value: the entry compares the string with it (its bytes and read
    length with the NUL); with more values, or one the entry's read would cut, only lengths."""
    pf = _prefilter(selectors)
    assert pf["pre_arg"] == 2
    if value is None:
        assert "pre_val" not in pf and "pre_val_r" not in pf
    else:
        assert (pf["pre_val"], pf["pre_val_r"]) == (value.ljust(128, b"\0"), len(value) + 1)


@pytest.mark.parametrize("selectors, args, call", [
    ("- matchArgs: [{index: 1, operator: NotEqual, values: [\"/etc/passwd\"]}]", "", ""),
    ("- matchArgs: [{index: 1, operator: Prefix, values: [\"/etc/\"]}]", "", ""),
    ("- matchArgs: [{index: 1, operator: Equal, values: [\"/etc/passwd\"]}]\n- matchPIDs: "
     "[{operator: In, values: [1]}]", "", ""),  # the second selector may match any string
    ("- matchArgs: [{index: 0, operator: Equal, values: [\"3\"]}]", "[{index: 0, type: int}, {index: 1, type: string}]",
     ""),
    ("- matchArgs: [{index: 0, operator: Equal, values: [\"/x\"]}]", "[{index: 0, type: fd}]", "sys_close"),
], ids=["notequal", "prefix", "a-selector-without", "int-argument", "fd-argument"])
def test_entry_prefilter_only_where_it_decides(selectors: str, args: str, call: str) -> None:
    assert _prefilter(selectors, args or "[{index: 1, type: string}]", call or "sys_openat") == {}


def test_entry_prefilter_not_before_guards_or_a_workload_filter() -> None:
    """Guards and the workload filter come first in the kernel (and count otherwise)."""
    (ch,) = comp("""
kprobes:
- call: __ia32_sys_open
  args: [{index: 0, type: string}]
  selectors:
  - matchArgs: [{index: 0, operator: Equal, values: ["/etc/passwd"]}]
""", HOST).hooks
    assert ch.config.nguards and entry_prefilter(ch) == {}
    (ch,) = comp("""
kprobes:
- call: sys_openat
  args: [{index: 1, type: string}]
  selectors:
  - matchArgs: [{index: 1, operator: Equal, values: ["/etc/passwd"]}]
""", HOST).hooks
    assert entry_prefilter(ch)
    ch.config.filter_id = 3
    assert entry_prefilter(ch) == {}


def test_str_map_keys_hold_the_longest_value_and_its_nul() -> None:
    """str_map's key size is cut to the map id and the longest exact string with its NUL (whole
    words): a longer string differs from every value at that NUL, within the key."""
    (ch,) = comp("""
kprobes:
- call: sys_openat
  args: [{index: 1, type: string}]
  selectors:
  - matchArgs: [{index: 1, operator: Equal, values: ["/etc/passwd", "/x"]}]
    matchBinaries: [{operator: In, values: ["/usr/bin/cat"]}]
""", HOST).hooks
    assert str_key_size(ch.str_keys) == 4 + 16  # "/usr/bin/cat" and its NUL: 13 bytes
    assert all(k[str_key_size(ch.str_keys):] == bytes(len(k) - str_key_size(ch.str_keys)) for k in ch.str_keys)
    assert str_key_size([]) == 4 + 8
    assert str_key_size([struct.pack("<I", 0) + b"x" * 255]) == 4 + L.STR_KEY


def test_long_value_lists_go_to_the_value_map() -> None:
    cp = comp("""
kprobes:
- call: sys_connect
  args: [{index: 1, type: sockaddr}]
  selectors:
  - matchArgs: [{index: 1, operator: SPort, values: ["1", "2", "3", "4", "5", "6", "7", "8", "100:102"]}]
""", HOST)
    (ch,) = cp.hooks
    f = ch.config.sel[0].args[0]
    assert f.flags == L.FF_MAP and f.nvals == 0
    ports = sorted(struct.unpack("<IIq", k)[2] for k in ch.val_keys)
    assert ports == [1, 2, 3, 4, 5, 6, 7, 8, 100, 101, 102]


# (policy type of lseek's offset, do GT, LT and the ranges compare unsigned?)
ORDER_TYPES = [("uint64", True), ("ulong", True), ("size_t", True), ("uint32", True), ("uint16", True),
               ("uint8", True), ("int64", False), ("long", False), ("sint64", False), ("int", False),
               ("int32", False), ("int16", False), ("int8", False)]


def lseek_offset_policy(atype: str, match_args: str) -> str:
    """A policy on lseek's offset (argument 1) typed `atype`, with these matchArgs entries."""
    return f"""
kprobes:
- call: sys_lseek
  syscall: true
  args: [{{index: 1, type: {atype}}}]
  selectors:
  - matchArgs:{match_args}
"""


@pytest.mark.parametrize("atype, unsigned", ORDER_TYPES, ids=[t for t, _ in ORDER_TYPES])
def test_integer_filters_say_how_the_arguments_type_orders(atype: str, unsigned: bool) -> None:
    """The kernel compares GT, LT and the ranges unsigned on unsigned types (FF_UNSIGNED), signed
    on the others; the evaluator reads the same from the type's name."""
    from vigil.policy.validate_args import compares_unsigned

    cp = comp(lseek_offset_policy(atype, """
    - {index: 1, operator: GT, values: ["1"]}
    - {index: 1, operator: LessThan, values: ["100"]}
    - {index: 1, operator: InRange, values: ["2:3"]}
    - {index: 1, operator: NotInRange, values: ["5:7"]}"""), HOST)
    (ch,) = cp.hooks
    flags = [ch.config.sel[0].args[j].flags for j in range(4)]
    assert flags == [L.FF_UNSIGNED if unsigned else 0] * 4
    assert compares_unsigned(atype) is unsigned


# (type, operator, values, (lo, hi) of each value as the kernel holds them: 64-bit patterns)
EXTREME_VALUES = [
    ("uint64", "GT", '["18446744073709551615"]', [(-1, -1)]),
    ("uint64", "LT", '["9223372036854775808"]', [(-2**63, -2**63)]),
    ("ulong", "InRange", '["0xffffffff80000000:0xffffffffffffffff"]', [(-2**31, -1)]),
    ("size_t", "NotInRange", '["0:18446744073709551614", "18446744073709551615:18446744073709551615"]',
     [(0, -2), (-1, -1)]),
    ("int64", "InRange", '["-9223372036854775808:9223372036854775807"]', [(-2**63, 2**63 - 1)]),
    ("long", "LT", '["-1"]', [(-1, -1)]),
]


@pytest.mark.parametrize("atype, op, values, lohi", EXTREME_VALUES, ids=[f"{c[0]}-{c[1]}" for c in EXTREME_VALUES])
def test_the_whole_range_of_the_type_reaches_the_kernel(atype: str, op: str, values: str, lohi: list) -> None:
    cp = comp(lseek_offset_policy(atype, f"""
    - {{index: 1, operator: {op}, values: {values}}}"""), HOST)
    (ch,) = cp.hooks
    f = ch.config.sel[0].args[0]
    assert [(f.lo[k], f.hi[k]) for k in range(f.nvals)] == lohi
    assert bool(f.flags & L.FF_UNSIGNED) == (atype not in ("int64", "long"))


@pytest.mark.parametrize("atype, value", [("uint64", "-1"), ("uint64", "18446744073709551616"),
                                          ("ulong", "0x10000000000000000"), ("int64", "9223372036854775808"),
                                          ("long", "-9223372036854775809"), ("uint32", "4294967296")])
def test_values_outside_the_types_range_are_refused(atype: str, value: str) -> None:
    (msg,) = errors(f"""
kprobes:
- call: sys_lseek
  syscall: true
  args: [{{index: 1, type: {atype}}}]
  selectors:
  - matchArgs: [{{index: 1, operator: GT, values: ["{value}"]}}]
""", HOST)
    assert f"does not fit argument type {atype}" in msg


def test_auto_arguments_and_return_values_order_by_their_type() -> None:
    """type auto: the tracepoint field's signedness (syscall fields are all unsigned longs);
    matchReturnArgs: the returnArg's type."""
    cp = comp("""
tracepoints:
- subsystem: syscalls
  event: sys_enter_read
  args: [{index: 7}]
  selectors:
  - matchArgs: [{index: 7, operator: GT, values: ["4096"]}]
""", HOST)
    assert cp.hooks[0].config.sel[0].args[0].flags == L.FF_UNSIGNED
    for ret_type, flag in (("size_t", L.FF_UNSIGNED), ("uint64", L.FF_UNSIGNED), ("int", 0), ("long", 0)):
        cp = comp(f"""
kprobes:
- call: sys_read
  syscall: true
  return: true
  returnArg: {{index: 0, type: {ret_type}}}
  selectors:
  - matchReturnArgs: [{{index: 0, operator: GT, values: ["100"]}}]
""", HOST)
        assert cp.hooks[0].config.sel[0].ret[0].flags == flag, ret_type


def test_resolve_steps_come_from_btf() -> None:
    """resolve on an LSM hook argument (VM facts: BTF of the 6.12 guest)."""
    cp = comp("""
lsmhooks:
- hook: bprm_check_security
  args: [{index: 0, type: string, resolve: "mm.owner.real_parent.comm"}]
""", VM)
    (ch,) = cp.hooks
    a = ch.config.args[0]
    assert a.nsteps == 4 and a.final_size == 0 and a.type == L.T["kstring"]  # char[16]: its address
    assert all(a.steps[i] > 0 for i in range(4))


# ---------------------------------------------------------------- placement per kernel

PLACES = [
    # (id, spec, kernel, substitute, mechanism, where contains)
    ("syscall-host", "kprobes: [{call: sys_openat}]", "host", False, "tracepoint", "sys_enter_openat"),
    ("fstat-tracepoint-name", "kprobes: [{call: sys_fstat}]", "host", False, "tracepoint", "sys_enter_newfstat"),
    ("no-tracepoint", "kprobes: [{call: sys_get_thread_area}]", "host", False, "raw_tracepoint", "sys_enter"),
    ("arm64-name", "kprobes: [{call: __arm64_sys_openat, syscall: true}]", "host", False, "tracepoint",
     "sys_enter_openat"),
    ("kfunc-vm", "kprobes: [{call: tcp_connect, syscall: false, args: [{index: 0, type: sock}]}]", "vm", False,
     "fentry", "fentry:tcp_connect"),
    # tcp_connect's own sock_ops callback (the source port bound), where the kernel has sock_ops
    ("kfunc-host-standin", "kprobes: [{call: tcp_connect, syscall: false, args: [{index: 0, type: sock}]}]",
     "host", True, "sock_ops", "sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB"),
    # sock_ops programs cannot read stacks: the state tracepoint stand-in takes the hook
    ("kfunc-host-standin-stack", """kprobes: [{call: tcp_connect, syscall: false, args: [{index: 0, type: sock}],
       selectors: [{matchActions: [{action: Post, kernelStackTrace: true}]}]}]""",
     "host", True, "raw_tracepoint", "inet_sock_set_state"),
    ("override-fmod-ret-vm", """kprobes: [{call: security_inode_mkdir, syscall: false,
       selectors: [{matchActions: [{action: Override, argError: -1}]}]}]""", "vm", False, "fmod_ret",
     "fmod_ret:security_inode_mkdir"),
    ("syscall-override-lsm-vm", """kprobes: [{call: sys_linkat, args: [{index: 0, type: int}, {index: 1, type: string}],
       selectors: [{matchArgs: [{index: 1, operator: Equal, values: [/etc/passwd]}],
                    matchActions: [{action: Override, argError: -1}]}]}]""", "vm", False, "lsm", "lsm:path_link"),
    ("lsm-exec-deny-host", """lsmhooks: [{hook: bprm_check_security, args: [{index: 0, type: linux_binprm}],
       selectors: [{matchArgs: [{index: 0, operator: Equal, values: [/x]}],
                    matchActions: [{action: Override, argError: -1}]}]}]""", "host", True, "fanotify", ""),
]


@pytest.mark.parametrize("case, spec, kernel, sub, mech, where", PLACES, ids=[c[0] for c in PLACES])
def test_placement(case: str, spec: str, kernel: str, sub: bool, mech: str, where: str) -> None:
    cp = comp(spec, HOST if kernel == "host" else VM, sub)
    pl = cp.hooks[0].placement
    assert pl.mechanism == mech and where in pl.where(), pl.describe()


def test_syscall_override_at_lsm_reads_the_other_arguments_from_the_syscall() -> None:
    """sys_linkat Override at LSM path_link: the filtered path as the hook sees it (a dentry),
    the fd argument from the syscall's registers, the hook limited to the linkat syscall."""
    cp = comp("""
kprobes:
- call: sys_linkat
  args: [{index: 0, type: int}, {index: 1, type: string}]
  selectors:
  - matchArgs: [{index: 1, operator: Equal, values: [/etc/passwd]}]
    matchActions: [{action: Override, argError: -1}]
""", VM)
    pl = cp.hooks[0].placement
    fd, path = pl.args
    assert (fd.src, fd.off) == (L.SRC_SYSREGS, 0) and (path.vtype, path.src) == (L.T["dentry_path"], L.SRC_RAW)
    assert (L.RAW_SYSNR, L.G_EQ, SYSCALL_NUMBERS["linkat"]) in pl.guards


def test_generated_syscall_lists_attach_every_syscall() -> None:
    cp = comp("""
lists: [{name: all, type: generated_syscalls}]
kprobes: [{call: "list:all"}]
""", HOST)
    assert len(cp.hooks) == len(SYSCALL_NUMBERS)  # none skipped: raw_syscalls for the rest
    raw = {h.placement.target for h in cp.hooks if h.placement.mechanism == "raw_tracepoint"}
    assert "sys_get_thread_area" in raw and "sys_fstat" not in raw


# ---------------------------------------------------------------- every blocker, with its cause

def test_every_blocker_of_a_hook_at_once() -> None:
    errs = errors("""
kprobes:
- call: tty_write
  syscall: false
  args: [{index: 0, type: kiocb}, {index: 1, type: sockaddr_un}]
  selectors:
  - matchArgs: [{index: 0, operator: SubString, values: [x]}]
""", HOST)
    text = "\n".join(errs)
    assert "needs kprobes or BPF trampolines" in text            # this kernel
    assert 'argument type "sockaddr_un" is not supported by Vigil' in text  # Vigil, not the kernel
    assert "operator SubString is not supported by Vigil" in text
    assert all(e.startswith("p.yaml:") for e in errs)


def test_absent_targets_name_their_field() -> None:
    errs = errors("""
kprobes:
- {call: no_such_kernel_function, syscall: false}
uprobes:
- {path: /nonexistent/bin, symbols: [main]}
""", VM)
    assert any("spec.kprobes[0].call" in e and "no kernel function no_such_kernel_function" in e for e in errs)
    assert any("spec.uprobes[0].path" in e and "/nonexistent/bin" in e for e in errs)


IGNORE_CALL_NOT_FOUND = [
    # (id, kprobes, kernel, substitute, compiled hooks' targets, skipped targets, refused with)
    ("renamed-function-vm", """
- {call: security_bpf_map_alloc, syscall: false, args: [{index: 0, type: bpf_map}], ignore: {callNotFound: true}}
- {call: security_bpf_map_create, syscall: false, args: [{index: 0, type: bpf_map}], ignore: {callNotFound: true}}
""", "vm", False, ["security_bpf_map_create"], ["security_bpf_map_alloc"], ""),
    ("only-call-missing-vm", "- {call: no_such_kernel_function, syscall: false, ignore: {callNotFound: true}}",
     "vm", False, [], ["no_such_kernel_function"], ""),
    ("ignore-false-still-refused", "- {call: no_such_kernel_function, syscall: false, ignore: {callNotFound: false}}",
     "vm", False, [], [], "no kernel function no_such_kernel_function"),
    ("present-function-other-errors-kept", """
- {call: tty_write, syscall: false, args: [{index: 5, type: int}], ignore: {callNotFound: true}}
""", "vm", False, [], [], "arguments 0..4 of a kernel function can be read; index 5 is beyond"),
    ("skipped-before-a-stand-in-host", """
- {call: security_bpf_map_alloc, syscall: false, args: [{index: 0, type: bpf_map}], ignore: {callNotFound: true}}
- {call: sys_openat}
""", "host", True, ["sys_openat"], ["security_bpf_map_alloc"], ""),
]


@pytest.mark.parametrize("case, kprobes, kernel, sub, hooks, skipped, refused", IGNORE_CALL_NOT_FOUND,
                         ids=[c[0] for c in IGNORE_CALL_NOT_FOUND])
def test_ignore_call_not_found_leaves_out_only_a_missing_call(case: str, kprobes: str, kernel: str, sub: bool,
                                                               hooks: list[str], skipped: list[str],
                                                               refused: str) -> None:
    """kprobes[].ignore.callNotFound: a call this kernel does not have is left out (hook status
    CALL_NOT_FOUND, a warning), the rest loads; any other problem still refuses the policy."""
    spec = "kprobes:\n" + textwrap.dedent(kprobes).strip("\n")
    k = HOST if kernel == "host" else VM
    if refused:
        assert any(refused in e for e in errors(spec, k, sub)), errors(spec, k, sub)
        return
    cp = comp(spec, k, sub)
    assert [h.placement.target for h in cp.hooks] == hooks
    left_out = [p for p in cp.placements if p.ok and p.skipped]
    assert [(p.target, p.skip_state) for p in left_out] == [(t, "call_not_found") for t in skipped]
    assert all("ignore.callNotFound" in p.describe() for p in left_out)
    report = explain_policy(one(spec), k, substitute=sub)
    assert report["loadable"], report
    assert [w for w in report["warnings"] if "not attached" in w and "callNotFound" in w]


def _vm_with(functions: list[str], traceable: list[str]) -> KernelFacts:
    """The recorded 6.12 guest, with `functions` added to its BTF and `traceable` to its
    available_filter_functions (6.1's dev_queue_xmit: in BTF, not traceable)."""
    import json

    d = json.loads((Path(__file__).parents[1] / "data" / "facts" / "vm-6.12.json").read_text())
    d["functions"] = [*d["functions"], *functions]
    d["kprobe_functions"] = [*d["kprobe_functions"], *traceable]
    return KernelFacts.from_dict(d)


TRACEABLE = [
    # (id, BTF + available_filter_functions additions, substitute, mechanism or the refusal's words)
    ("in-btf-not-traceable-refused", ["dev_queue_xmit"], [], False,
     "dev_queue_xmit is in the kernel but kprobes may not attach to it"),
    ("in-btf-not-traceable-stand-in", ["dev_queue_xmit"], [], True, "fentry:__dev_queue_xmit"),
    ("in-btf-and-traceable-fentry", ["dev_queue_xmit"], ["dev_queue_xmit"], False, "fentry:dev_queue_xmit"),
]


@pytest.mark.parametrize("case, btf, traceable, sub, want", TRACEABLE, ids=[c[0] for c in TRACEABLE])
def test_fentry_only_on_a_function_ftrace_can_patch(case: str, btf: list[str], traceable: list[str], sub: bool,
                                                    want: str) -> None:
    """A BPF trampoline attaches at the function's ftrace call site: a BTF function missing from
    available_filter_functions is not an fentry target (its attach failed with EBUSY on 6.1)."""
    spec = "kprobes: [{call: dev_queue_xmit, syscall: false, args: [{index: 0, type: skb}]}]"
    k = _vm_with(btf, traceable)
    if " " in want:
        assert any(want in e for e in errors(spec, k, sub)), errors(spec, k, sub)
        return
    (ch,) = comp(spec, k, sub).hooks
    assert ch.placement.where().startswith(want), ch.placement.describe()


PAST_PROTOTYPE = [
    # (id, section, args, mechanism or the refusal's words, note expected)
    ("in-range-fentry", "kprobes", "[{index: 0, type: file}, {index: 1, type: int}]", "fentry:tty_write", False),
    ("past-the-prototype-kprobe", "kprobes", "[{index: 0, type: file}, {index: 2, type: size_t}]",
     "kprobe:tty_write", True),
    ("past-the-prototype-fentries-refused", "fentries", "[{index: 2, type: size_t}]",
     "tty_write has 2 parameters; index 2 is out of range (only a kprobe reads past them; this hook runs as fentry)",
     False),
]


@pytest.mark.parametrize("case, section, args, want, note", PAST_PROTOTYPE, ids=[c[0] for c in PAST_PROTOTYPE])
def test_an_index_past_the_prototype_reads_the_register(case: str, section: str, args: str, want: str,
                                                        note: bool) -> None:
    """Tetragon checks kprobe args against BTF and loads anyway when an index is past the
    function's parameters (a policy for an older signature, e.g. tty_write(file, buf, count, ppos)
    before 5.11): the argument register is read. A kprobe has the registers, an fentry not; this
    was refused on every kernel ("index 2 is out of range")."""
    spec = f"{section}: [{{call: tty_write, syscall: false, args: {args}}}]"
    if " " in want:
        assert any(want in e for e in errors(spec, VM)), errors(spec, VM)
        return
    cp = comp(spec, VM)
    (ch,) = cp.hooks
    assert ch.placement.where() == want, ch.placement.describe()
    assert [len(ch.placement.args), ch.placement.args[-1].index] == [2, 2 if note else 1]
    assert bool([n for n in ch.placement.notes if "index 2 reads whatever its argument register holds" in n]) == note
    # and a warning at the index's line, as Tetragon warns ("invalid or old kprobe spec")
    assert [str(w) for w in cp.warnings] == ([
        "p.yaml:6:86: spec.kprobes[0].args[1].index: warning: kprobes[0] (tty_write): tty_write has 2 parameters "
        "on this kernel; index 2 reads whatever its argument register holds (as Tetragon: a policy for another "
        "signature of the function)"] if note else [])
    assert explain_policy(one(spec), VM)["loadable"]


def test_stand_ins_are_off_unless_asked_and_explain_says_so() -> None:
    p = one("kprobes: [{call: tcp_connect, syscall: false, args: [{index: 0, type: sock}]}]")
    off = explain_policy(p, HOST)
    assert not off["loadable"]
    causes = {e["cause"] for e in off["hooks"][0]["errors"]}
    assert causes == {"kernel", "option"}
    assert "sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB" in off["hooks"][0]["stand_in"]
    assert "raw_tracepoint:inet_sock_set_state" in off["hooks"][0]["stand_in"]
    on = explain_policy(p, HOST, substitute=True)
    assert on["loadable"] and on["substituted"] and on["hooks"][0]["substituted"] == [
        "sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB"]


def _without(k: KernelFacts, feature: str, why: str = "") -> KernelFacts:
    import copy

    out = copy.copy(k)
    out.features = {**k.features, feature: (False, why or f"{feature}: refused (test)")}
    return out


UNTRACKED = ("sockets share their cgroup2 pointer with the net_cls/net_prio data (struct sock_cgroup_data.val, "
             "before 5.15): ...")

# (case, the kernel's sock_ops probe result (None: supported; else its refusal), where tcp_connect
# runs, explain's words for it, the fallback's note and log line: why it is not on sock_ops)
TCP_CONNECT_PLACES = [
    ("sock-ops", None, "sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB", "with the source port bound", ""),
    ("no-sock-ops", "cgroup_sock_ops: refused (test)", "raw_tracepoint:inet_sock_set_state",
     "just before it calls tcp_connect", "cgroup_sock_ops: refused (test)"),
    # a kernel where net_cls/net_prio can turn sockets' cgroup2 association off (the probe says so)
    ("sockets-cgroup2-untracked", UNTRACKED, "raw_tracepoint:inet_sock_set_state",
     "just before it calls tcp_connect", UNTRACKED),
]


@pytest.mark.parametrize("case, refused, where, words, why", TCP_CONNECT_PLACES, ids=[c[0] for c in TCP_CONNECT_PLACES])
def test_tcp_connect_stand_in_prefers_sock_ops_where_the_kernel_has_it(case: str, refused: str | None, where: str,
                                                                      words: str, why: str) -> None:
    """tcp_connect's stand-in is its sock_ops callback (the source port bound) where the probe
    found sock_ops with the helpers the hook needs, seeing every socket; else the SYN_SENT state
    change (sport 0), whose placement notes why (the load logs that note). explain names the
    one used."""
    p = one("kprobes: [{call: tcp_connect, syscall: false, args: [{index: 0, type: sock}]}]")
    k = HOST if refused is None else _without(HOST, "cgroup_sock_ops", refused)
    ex = explain_policy(p, k, substitute=True)
    (h,) = ex["hooks"]
    assert ex["loadable"] and h["substituted"] == [where]
    assert h["runs_on"].startswith(where), h["runs_on"]
    (pl,) = h["placements"]
    assert pl["substitute"] == where and words in pl["runs_on"], pl["runs_on"]
    noted = [n for n in pl["notes"] if standins.FALLBACK_NOTE in n]
    if not why:
        assert not noted
        return
    (note,) = noted
    assert why in note and "sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB" in note, note
    assert note.startswith("tcp_connect runs on raw_tracepoint:inet_sock_set_state, "), note


def test_templates_are_called_templates() -> None:
    from vigil.policy import check_text

    text = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: t}
spec:
  kprobes:
  - call: sys_connect
    args: [{index: 1, type: sockaddr}]
    selectors: [{matchArgs: [{index: 1, operator: SAddr, values: ["${PODCIDR}"]}]}]
"""
    r = check_text(text, "t.yaml")
    assert [str(e) for e in r.errors] == [
        't.yaml:8:67: spec.kprobes[0].selectors[0].matchArgs[0].values[0]: "${PODCIDR}" looks like an unexpanded '
        "template (${PODCIDR}): fill it in before applying the policy"]


NOT_ENFORCEABLE = [
    # (id, spec, field of the error, its words): loading these would report an Override that
    # never happens, so they are refused where they are written
    ("return-action-fmod-ret", """
kprobes:
- call: security_file_open
  syscall: false
  return: true
  returnArg: {index: 0, type: int}
  selectors:
  - matchReturnArgs: [{index: 0, operator: Equal, values: ["0"]}]
    matchReturnActions: [{action: Override, argError: -1}]
""", "spec.kprobes[0].selectors[0].matchReturnActions[0].action", "Override in matchReturnActions cannot change"),
    ("return-action-beside-entry-override", """
kprobes:
- call: security_inode_mkdir
  syscall: false
  return: true
  returnArg: {index: 0, type: int}
  selectors:
  - matchActions: [{action: Override, argError: -1}]
    matchReturnActions: [{action: Override, argError: -13}]
""", "spec.kprobes[0].selectors[0].matchReturnActions[0].action", "return actions run after it has returned"),
    ("lsm-errno-out-of-range", """
lsmhooks:
- hook: file_open
  selectors: [{matchActions: [{action: Override, argError: -4096}]}]
""", "spec.lsmhooks[0].selectors[0].matchActions[0].argError", "only return 0 or a negative errno (-1..-4095)"),
    ("lsm-positive-errno", """
lsmhooks:
- hook: file_open
  selectors: [{matchActions: [{action: Override, argError: 1}]}]
""", "spec.lsmhooks[0].selectors[0].matchActions[0].argError", "only return 0 or a negative errno"),
    ("syscall-at-lsm-errno-out-of-range", """
kprobes:
- call: sys_linkat
  args: [{index: 1, type: string}]
  selectors: [{matchActions: [{action: Override, argError: -100000}]}]
""", "spec.kprobes[0].selectors[0].matchActions[0].argError", "only return 0 or a negative errno"),
]


@pytest.mark.parametrize("case, spec, field, words", NOT_ENFORCEABLE, ids=[c[0] for c in NOT_ENFORCEABLE])
def test_an_override_that_cannot_act_is_refused_at_its_field(case: str, spec: str, field: str, words: str) -> None:
    """On the 6.12 guest (fmod_ret, BPF LSM): Override in matchReturnActions ran at the fexit,
    after the function had returned, and an LSM verdict below -4095 was turned into 0 (allowed);
    both loaded and reported KPROBE_ACTION_OVERRIDE while nothing was refused."""
    errs = errors(spec, VM)
    assert any(f"{field}:" in e and words in e for e in errs), errs


def test_override_in_match_actions_still_loads_beside_return_actions() -> None:
    cp = comp("""
kprobes:
- call: security_inode_mkdir
  syscall: false
  return: true
  returnArg: {index: 0, type: int}
  selectors:
  - matchActions: [{action: Override, argError: -4095}]
    matchReturnActions: [{action: Post}]
""", VM)
    pl = cp.hooks[0].placement
    assert pl.mechanism == "fmod_ret" and pl.return_prog == "vigil_fexit"
    act = cp.hooks[0].config.sel[0].actions[0]
    assert (act.type, act.arg) == (L.ACT["Override"], -4095)


def test_validate_unsupported_offline_ignores_the_kernel() -> None:
    p = one("""
kprobes:
- call: tcp_connect
  syscall: false
  args: [{index: 0, type: sock}]
  data: [{index: 0, type: int, source: current_task, resolve: pid}]
  selectors: [{matchData: [{index: 0, operator: Equal, values: ["1"]}]}]
""")
    assert [e.message for e in unsupported(p)] == []  # (this host has no kprobes: not a finding offline)


@pytest.mark.parametrize("section, hook, errors", [
    ("uprobes", "path: /bin/true\n  symbols: [main]\n  data: [{index: 0, type: int32, source: pt_regs, resolve: edi}]",
     []),
    ("kprobes", "call: tcp_connect\n  syscall: false\n  data: [{index: 0, type: int, source: current_task, "
     "resolve: pid}]", []),
])
def test_match_data_offline_where_data_is_read(section: str, hook: str, errors: list[str]) -> None:
    """matchData is compiled where `data` is read (uprobes, kprobes): validation finds nothing
    Vigil cannot do there."""
    p = one(f"""
{section}:
- {hook}
  selectors: [{{matchData: [{{index: 0, operator: Equal, values: ["1"]}}]}}]
""")
    assert [e.message for e in unsupported(p)] == errors


def test_return_arg_action_post_is_accepted_with_a_warning() -> None:
    from vigil.policy import check_text

    r = check_text("""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: t}
spec:
  kprobes:
  - {call: sys_openat, return: true, returnArg: {index: 0, type: int}, returnArgAction: Post}
""", "t.yaml")
    assert r.ok and "returnArgAction Post has no effect" in str(r.warnings[0])


def test_other_kubernetes_objects_in_a_file_are_skipped() -> None:
    from vigil.policy import check_text

    r = check_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n---\n"
                   "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: t}\nspec:\n"
                   "  kprobes: [{call: sys_openat}]\n", "m.yaml")
    assert r.ok and [p.name for p in r.policies] == ["t"]
    assert "document 1 is a v1/Pod, not a TracingPolicy: skipped" in str(r.warnings[0])


# ---------------------------------------------------------------- explain CLI

def test_explain_compact_and_details(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: two}\nspec:\n"
                 "  kprobes:\n  - {call: sys_openat}\n"
                 "  - {call: tcp_connect, syscall: false, args: [{index: 0, type: sock}]}\n")
    facts_file = Path(__file__).parents[1] / "data" / "facts" / "host-6.18.json"
    r = CliRunner().invoke(policy_cli, ["explain", "--facts", str(facts_file), str(f)])
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0] == f"two ({f}, mode enforce): NOT loadable on this kernel"
    assert lines[1] == "  kprobes[0] sys_openat: tracepoint:syscalls/sys_enter_openat"
    assert lines[2].startswith("  kprobes[1] tcp_connect: REFUSED [this kernel, option] ") and len(lines) == 3
    r = CliRunner().invoke(policy_cli, ["explain", "-v", "--hook-substitution", "--facts", str(facts_file), str(f)])
    assert r.exit_code == 0, r.output
    assert "two" in r.output and "loadable with stand-ins" in r.output
    assert "note: stand-in for tcp_connect: sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB" in r.output


def test_ctypes_mirror_sizes_are_what_the_compiler_fills() -> None:
    assert ctypes.sizeof(L.Hook) == ctypes.sizeof(L.Hook())


# USDT operand strings (the SDT note's argument list) -> (pt_regs offset, off2, displacement,
# size, signed) or the reason they are refused; off2 bit 0 memory, bits 1-5 index slot + 1,
# bits 6-7 log2 scale (libbpf's ARG_CONST, ARG_REG, ARG_REG_DEREF, ARG_SIB)
SDT_OPERANDS = [
    ("-4@$5", (0xFFFF, 0, 5, 4, True)),
    ("8@%rdi", (112, 0, 0, 8, False)),
    ("-4@%eax", (80, 0, 0, 4, True)),
    ("4@-20(%rbp)", (32, 1, -20, 4, False)),
    ("8@(%rax)", (80, 1, 0, 8, False)),
    ("-4@(%rcx,%rax,4)", (88, 1 | (80 // 8 + 1) << 1 | 2 << 6, 0, 4, True)),
    ("-4@8(%rcx,%rax,4)", (88, 1 | 11 << 1 | 2 << 6, 8, 4, True)),
    ("8@-16(%rdx,%r15,8)", (96, 1 | 1 << 1 | 3 << 6, -16, 8, False)),
    ("2@(%rsi,%rdi)", (104, 1 | 15 << 1, 0, 2, False)),
    ("1@(%rsi,%r9,1)", (104, 1 | 9 << 1, 0, 1, False)),
    ("8@(%rax,%rdx,3)", "scale 3 is not 1, 2, 4 or 8"),
    ("8@(%rax,%rip,1)", "index register %rip is not supported"),
    ("8@(%rax,%xmm0,1)", "index register %xmm0 is not supported"),
    ("8@(%xmm0)", "register %xmm0 is not supported"),
    ("3@%rax", "size 3 is not 1, 2, 4 or 8 bytes"),
    ("8@sym(,%rax,8)", "in a form Vigil does not decode"),
]


@pytest.mark.parametrize("spec, want", SDT_OPERANDS, ids=[c[0] for c in SDT_OPERANDS])
def test_sdt_operand_decodes_the_forms_libbpf_reads(spec: str, want: object) -> None:
    from vigil.policy.placement import sdt_operand

    got = sdt_operand(spec)
    if isinstance(want, str):
        assert isinstance(got, str) and want in got and spec in got
    else:
        assert got == want
