"""The reference selector evaluator (vigil.policy.evaluate): operators with the kernel's limits,
selector order, actions, and undecidable filters named instead of guessed."""
from __future__ import annotations

import textwrap

import pytest

from vigil.policy import parse_policies
from vigil.policy.evaluate import (
    Call,
    HookRules,
    Process,
    Sock,
    Unknown,
    decide,
    int_match,
    kernel_string_match,
    pod_selector_match,
    sock_match,
    string_match,
)
from vigil.policy.model import LabelSelector

ROOT_CAPS = {"effective": (1 << 41) - 1, "permitted": (1 << 41) - 1, "inheritable": 0}
HOST_NS = {k: (4026531830 + i, True) for i, k in enumerate(
    ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user"))}


def rules(spec: str) -> HookRules:
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: t}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")
    (p,) = parse_policies(text)
    h = p.spec.kprobes[0] if p.spec.kprobes else p.spec.tracepoints[0]
    ret = getattr(h, "return_arg", None)
    return HookRules(h.args, h.selectors, tracepoint=not p.spec.kprobes, lists={ls.name: ls for ls in p.spec.lists},
                     ret_type=ret.type if ret is not None else "")


def proc(**kw) -> Process:
    base = dict(binary="/usr/bin/curl", pid=100, ancestors=(10, 1), ancestor_binaries=("/bin/sh", "/sbin/init"),
                namespaces=HOST_NS, caps=ROOT_CAPS, pod={})
    base.update(kw)
    return Process(**base)


@pytest.mark.parametrize("op, values, s, want", [
    ("Equal", ["/a"], "/a", True), ("Equal", ["/a"], "/ab", False), ("NotEqual", ["/a", "/b"], "/c", True),
    ("NotEqual", ["/a", "/b"], "/b", False), ("Prefix", ["/tmp/"], "/tmp/x", True),
    ("Prefix", ["/tmp/"], "/tmpx", False), ("NotPrefix", ["/tmp/"], "/usr", True),
    ("Postfix", [".sh"], "/a/b.sh", True), ("NotPostfix", [".sh"], "/a/b.sh", False),
])
def test_string_operators(op, values, s, want):
    assert string_match(op, values, s) is want
    assert kernel_string_match(op, values, s) is want
    assert kernel_string_match(op, values, s.encode()) is want


def test_kernel_string_limits():
    long = "/x" * 200                                     # 400 bytes
    assert not kernel_string_match("Equal", [long], long)  # compared up to 255 bytes: equals nothing
    assert kernel_string_match("NotEqual", [long], long)
    assert kernel_string_match("Prefix", ["/x/x"], long)
    assert kernel_string_match("Postfix", ["x/x"], long)


def test_integer_operators_on_the_kernels_signed_64_bit_value():
    assert int_match("Equal", [(5, 5)], 5) and not int_match("NotEqual", [(5, 5)], 5)
    assert int_match("GT", [(10, 10), (0, 0)], 11) and not int_match("GT", [(10, 10), (0, 0)], 5)  # first value only
    assert not int_match("GT", [(10, 10)], 10) and int_match("LT", [(10, 10)], -3) and not int_match("LT", [(10, 10)], 10)
    assert int_match("Mask", [(0x4, 0x4), (0x10, 0x10)], 0x14) and not int_match("Mask", [(0x8, 0x8)], 0x7)
    assert int_match("InRange", [(1, 3)], 3) and int_match("NotInRange", [(1, 3)], 4)
    assert int_match("InMap", [(7, 7)], 7) and int_match("NotInMap", [(7, 7)], 8)
    # to a signed type (the default) 2^63 and above are negative
    assert int_match("LT", [(0, 0)], 2 ** 64 - 1)


# (operator, values, value, signed result, unsigned result): 2^63 and above are negative to a
# signed type and above 2^63 - 1 to an unsigned one
ORDER = [
    ("GT", [(2**63 - 1, 2**63 - 1)], 2**64 - 1, False, True),
    ("GT", [(0xFFFFFFFF80000000, 0xFFFFFFFF80000000)], 0xFFFFFFFF81000000, True, True),
    ("GT", [(0, 0)], 0xFFFFFFFF81000000, False, True),
    ("LT", [(0, 0)], -1, True, False),
    ("LT", [(2**64 - 1, 2**64 - 1)], 2**64 - 2, True, True),
    ("LT", [(-1, -1)], 5, False, True),            # -1 of an unsigned type is 2^64 - 1
    ("LessThan", [(2**63, 2**63)], 2**63 - 1, False, True),
    ("InRange", [(2**63 - 1, 2**63 + 1)], 2**63, False, True),
    ("InRange", [(-2, 1)], 2**64 - 1, True, False),
    ("NotInRange", [(1, 2**64 - 2)], 5, True, False),     # signed: an empty range
    ("NotInRange", [(0, 2**63 - 1)], 2**63, True, True),
    ("Equal", [(2**64 - 1, 2**64 - 1)], -1, True, True),  # the same 64 bits either way
    ("Mask", [(2**63, 2**63)], -1, True, True),
]


@pytest.mark.parametrize("op, values, v, signed, unsigned", ORDER)
def test_integer_order_is_the_arguments_types(op, values, v, signed, unsigned):
    assert int_match(op, values, v) is signed
    assert int_match(op, values, v, unsigned=True) is unsigned


def test_unsigned_argument_types_compare_unsigned_through_the_rules():
    for atype, hit in (("uint64", True), ("size_t", True), ("ulong", True), ("int64", False), ("long", False)):
        r = rules(f"""
        kprobes:
        - call: sys_lseek
          syscall: true
          args: [{{index: 1, type: {atype}}}]
          selectors:
          - matchArgs: [{{index: 1, operator: GT, values: ["0"]}}]
        """)
        assert decide(r, proc(), Call((0xFFFFFFFF81000000,))).matched is hit, atype
    # auto (the kernel's field type decides): known only where both orders agree
    r = rules("""
    tracepoints:
    - subsystem: syscalls
      event: sys_enter_lseek
      args: [{index: 6}]
      selectors:
      - matchArgs: [{index: 6, operator: GT, values: ["0"]}]
    """)
    assert decide(r, proc(), Call((5,))).matched
    assert not decide(r, proc(), Call((0,))).matched
    assert "whether it is signed is not known" in decide(r, proc(), Call((2**64 - 1,))).unknown


def test_return_values_order_by_the_return_args_type():
    for ret_type, hit in (("size_t", True), ("uint64", True), ("long", False), ("int", False)):
        r = rules(f"""
        kprobes:
        - call: sys_read
          syscall: true
          return: true
          returnArg: {{index: 0, type: {ret_type}}}
          selectors:
          - matchReturnArgs: [{{index: 0, operator: GT, values: ["100"]}}]
        """)
        assert decide(r, proc(), Call((), -14)).matched is hit, ret_type


def test_socket_operators():
    sa = Sock.sockaddr(2, "203.0.113.10", 443)
    assert sock_match("SAddr", ["203.0.113.0/24"], sa) and sock_match("DAddr", ["203.0.113.10"], sa)
    assert sock_match("NotSAddr", ["10.0.0.0/8"], sa) and not sock_match("SAddr", ["::/0"], sa)
    assert sock_match("SPort", ["400:500"], sa) and sock_match("DPortPriv", [], sa)
    assert sock_match("Family", ["AF_INET", "AF_INET6"], sa) and not sock_match("Family", ["AF_UNIX"], sa)
    unix = Sock.sockaddr(1, None, 0)
    assert sock_match("NotSAddr", ["0.0.0.0/0"], unix) and not sock_match("SAddr", ["0.0.0.0/0"], unix)
    tcp = Sock(2, None, None, 1000, 22, 6, 1)
    assert sock_match("Protocol", ["IPPROTO_TCP"], tcp) and sock_match("State", ["TCP_ESTABLISHED"], tcp)
    assert sock_match("NotDPort", ["80"], tcp)


OPEN = """
kprobes:
- call: sys_openat
  args: [{index: 1, type: string}, {index: 2, type: int}]
  selectors:
  - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/"]}]
    matchActions: [{action: Sigkill}]
  - matchArgs: [{index: 2, operator: Mask, values: ["1"]}]
    matchActions: [{action: NoPost}]
  - matchBinaries: [{operator: In, values: ["/usr/bin/curl"]}]
"""


def test_first_matching_selector_decides_and_its_actions_run():
    r = rules(OPEN)
    d = decide(r, proc(), Call(("/etc/passwd", 1)))
    assert (d.matched, d.selector, d.enforce, d.action, d.post) == (True, 0, "Sigkill", "Sigkill", True)
    d = decide(r, proc(), Call(("/tmp/x", 1)))
    assert (d.selector, d.post, d.action) == (1, False, "Post")
    d = decide(r, proc(), Call(("/tmp/x", 0)))
    assert (d.selector, d.post) == (2, True)
    d = decide(r, proc(binary="/bin/cat"), Call(("/tmp/x", 0)))
    assert not d.matched and d.decided
    d = decide(r, proc(), Call(("/etc/passwd", 1)), monitor=True)
    assert d.enforce == "Sigkill" and d.monitor


def test_no_selectors_posts_every_call():
    d = decide(rules("kprobes:\n- call: sys_openat"), Process(), Call())
    assert d.matched and d.post and d.selector is None


def test_process_filters():
    r = rules("""
    kprobes:
    - call: sys_openat
      selectors:
      - matchPIDs: [{operator: In, values: [10], followForks: true}]
        matchNamespaces: [{namespace: Mnt, operator: In, values: [host_ns]}]
        matchCapabilities: [{type: Effective, operator: In, values: [CAP_SYS_ADMIN]}]
        matchBinaries: [{operator: Prefix, values: ["/usr/"]}]
    """)
    assert decide(r, proc(), Call()).matched
    assert not decide(r, proc(ancestors=(11, 1)), Call()).matched
    assert not decide(r, proc(namespaces={**HOST_NS, "mnt": (1, False)}), Call()).matched
    assert not decide(r, proc(caps={"effective": 0, "permitted": 0, "inheritable": 0}), Call()).matched
    assert not decide(r, proc(binary="/bin/x"), Call()).matched
    assert not decide(r, proc(ancestors=tuple(range(20, 40)) + (10,)), Call()).matched  # 8 ancestors at most


def test_missing_facts_are_undecidable_with_the_reason():
    r = rules("""
    kprobes:
    - call: sys_openat
      selectors:
      - matchCapabilities: [{type: Effective, operator: NotIn, values: [CAP_SYS_ADMIN]}]
      - matchBinaries: [{operator: In, values: ["/x"]}]
    """)
    d = decide(r, proc(caps=None), Call())
    assert not d.decided and "effective capabilities are not known" in d.unknown and d.selector == 0
    # a selector that already fails on known facts is not undecidable
    r2 = rules("""
    kprobes:
    - call: sys_openat
      selectors:
      - matchBinaries: [{operator: In, values: ["/x"]}]
        matchCapabilities: [{type: Effective, operator: NotIn, values: [CAP_SYS_ADMIN]}]
    """)
    d = decide(r2, proc(caps=None), Call())
    assert d.decided and not d.matched
    r3 = rules("""
    kprobes:
    - call: sys_openat
      selectors:
      - matchNamespaceChanges: [{operator: In, values: [Mnt]}]
    """)
    assert "matchNamespaceChanges needs" in decide(r3, proc(), Call()).unknown


def test_return_args_decide_at_return():
    r = rules("""
    kprobes:
    - call: sys_openat
      return: true
      args: [{index: 1, type: string}]
      returnArg: {index: 0, type: int}
      selectors:
      - matchReturnArgs: [{index: 0, operator: LT, values: ["0"]}]
        matchReturnActions: [{action: Sigkill}]
    """)
    assert decide(r, proc(), Call(("/x",), -2)).enforce == "Sigkill"
    assert not decide(r, proc(), Call(("/x",), 3)).matched
    assert isinstance(Unknown(decide(r, proc(), Call(("/x",), None)).unknown), str)


POD = {"namespace": "prod", "name": "web-1", "pod_labels": {"app": "web"},
       "container": {"name": "main", "image": {"id": "registry.example/shop/web@sha256:ab", "name": "web:1"}}}


@pytest.mark.parametrize("pod_sel, container_sel, namespace, pod, want", [
    ({"app": "web"}, None, None, POD, True),
    ({"app": "db"}, None, None, POD, False),
    ({"k8s:io.kubernetes.pod.namespace": "prod"}, None, None, POD, True),
    ({"k8s:app": "web"}, None, None, POD, False),          # keys as written, as the agent's
    ({"io.kubernetes.pod.namespace": "prod"}, None, None, POD, False),
    (None, None, "dev", POD, False),
    (None, None, "prod", POD, True),
    (None, {"name": "main"}, None, POD, True),
    (None, {"name": "sidecar"}, None, POD, False),
    (None, {"repo": "registry.example/shop/web"}, None, POD, True),
    (None, {"repo": "web"}, None, POD, False),
    ({"app": "web"}, {"name": "sidecar"}, None, POD, False),
    ({"app": "web"}, None, None, {}, False),               # a host process
    (None, {"name": "main"}, None, {}, False),
    ({"app": "web"}, None, None, None, Unknown),           # pod not known
])
def test_pod_and_container_selectors(pod_sel, container_sel, namespace, pod, want):
    """The dry run scopes with the agent's own selector evaluator (vigil.k8s.selectors)."""
    sels = [None if m is None else LabelSelector(match_labels=m) for m in (pod_sel, container_sel)]
    got = pod_selector_match(sels[0], proc(pod=pod), namespace, sels[1])
    assert isinstance(got, Unknown) if want is Unknown else got is want


# an event is sent unless the list holds a NoPost: a Post before or after it does not undo it
# (Tetragon: post starts true, NoPost and a rate-limited Post clear it, Post never sets it)
POST_CASES = [
    ("[{action: Post}]", "", True),
    ("[{action: NoPost}]", "", False),
    ("[{action: NoPost}, {action: Post}]", "", False),
    ("[{action: Post}, {action: NoPost}]", "", False),
    ("[{action: Sigkill}, {action: NoPost}, {action: Post}]", "", False),
    ("[{action: NoPost}]", "[{action: Post}]", False),   # a return Post does not undo the entry's NoPost
    ("[{action: Post}]", "[{action: NoPost}]", False),
]


@pytest.mark.parametrize("actions, ret_actions, post", POST_CASES)
def test_nopost_holds_whatever_post_is_listed(actions, ret_actions, post):
    ret = (f"\n    matchReturnArgs: [{{index: 0, operator: Equal, values: ['0']}}]"
           f"\n    matchReturnActions: {ret_actions}") if ret_actions else ""
    r = rules(f"""
kprobes:
- call: sys_openat
  return: true
  returnArg: {{index: 0, type: int}}
  selectors:
  - matchActions: {actions}{ret}
""")
    assert decide(r, proc(), Call((), 0)).post is post
