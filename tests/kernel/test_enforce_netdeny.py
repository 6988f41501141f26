"""NetDeny on the real kernel, confined to a test-created cgroup2 child.

Only processes the tests start are moved into the cgroup (from a preexec
function), only loopback addresses and a test-created network namespace are
used, and every test checks that a process outside the cgroup is untouched.
The cgroup, programs and netns are removed even on failure.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.cgroupdir import made_cgroup
from tests.kernel.bpfstate import require_root
from vigil.enforce.netdeny import NetDeny, cgroup2_root
from vigil.enforce.netrules import NetRule, NetRuleError
from vigil.kernel import RingBuffer
from vigil.kernel.paths import bpf_object
from vigil.sensors.process import ENTRY

pytestmark = pytest.mark.kernel
BPFTOOL = shutil.which("bpftool") or "/usr/sbin/bpftool"
_seq = itertools.count()

CHILD = r"""
import errno, json, os, socket, sys
ops = json.loads(sys.argv[1])
print(os.getpid(), flush=True)
sys.stdin.readline()  # the test sets rules that name this pid, then lets us go
res = []
for kind, fam, host, port in ops:
    f = socket.AF_INET if fam == 4 else socket.AF_INET6
    try:
        if kind in ("tcp", "mptcp"):  # MPTCP: a TCP connection to a peer without MPTCP
            with socket.socket(f, socket.SOCK_STREAM, 262 if kind == "mptcp" else 0) as s:
                s.settimeout(5); s.connect((host, port))
        elif kind == "udp":
            with socket.socket(f, socket.SOCK_DGRAM) as s:
                s.sendto(b"x", (host, port))
        elif kind == "bind":
            with socket.socket(f, socket.SOCK_STREAM) as s:
                s.bind((host, port))
        elif kind in ("self", "mself"):  # connect to a listener of our own (network namespace tests)
            with socket.socket(f) as l, socket.socket(f, socket.SOCK_STREAM, 262 if kind == "mself" else 0) as s:
                l.bind((host, 0)); l.listen(); s.settimeout(5); s.connect(l.getsockname()[:2])
        elif kind in ("tfo", "mtfo"):  # TCP Fast Open to a listener of our own: sendto(MSG_FASTOPEN), no connect()
            with socket.socket(f) as l, socket.socket(f, socket.SOCK_STREAM, 262 if kind == "mtfo" else 0) as s:
                l.bind((host, 0)); l.listen()  # blocking: the send waits for the handshake
                s.sendto(b"x", socket.MSG_FASTOPEN, l.getsockname()[:2])
        res.append("ok")
    except OSError as e:
        res.append(errno.errorcode.get(e.errno, str(e.errno)))
print(json.dumps(res), flush=True)
"""


def _require() -> None:
    require_root()
    if not bpf_object("netdeny").exists():
        pytest.fail(f"{bpf_object('netdeny')} missing: run `make bpf`")


def _cgroup_progs(path: str) -> str:
    return subprocess.run([BPFTOOL, "cgroup", "show", path], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def cgroup() -> Iterator[str]:
    _require()
    with made_cgroup(os.path.join(cgroup2_root(), f"vigil-nd-test-{os.getpid()}-{next(_seq)}")) as path:
        yield path


@pytest.fixture
def nd(cgroup: str) -> Iterator[NetDeny]:
    n = NetDeny(cgroup, exempt_self=False)
    try:
        n.attach()
        yield n
    finally:
        n.close()
        assert _cgroup_progs(cgroup).strip() == "", "programs left attached"


@dataclass
class Listeners:
    tcp4: list[int] = field(default_factory=list)
    tcp6: int = 0
    udp4: int = 0
    socks: list[socket.socket] = field(default_factory=list)

    def sub(self, ops: list[list[Any]]) -> list[list[Any]]:
        names = {"P1": self.tcp4[0], "P2": self.tcp4[1], "P6": self.tcp6, "U1": self.udp4,
                 "FREE": max(self.tcp4) + 1}
        return [[k, f, h, names.get(p, p)] for k, f, h, p in ops]


@pytest.fixture(scope="module")
def listeners() -> Iterator[Listeners]:
    """Loopback listeners in this (unconfined) process."""
    ls = Listeners()
    try:
        for _ in range(2):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(512)
            ls.socks.append(s)
            ls.tcp4.append(s.getsockname()[1])
        s6 = socket.socket(socket.AF_INET6)
        s6.bind(("::1", 0))
        s6.listen(512)
        ls.socks.append(s6)
        ls.tcp6 = s6.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        ls.socks.append(u)
        ls.udp4 = u.getsockname()[1]
        yield ls
    finally:
        for s in ls.socks:
            s.close()


def run_child(ops: list[list[Any]], cgroup: str | None, *, before: Callable[[int], None] | None = None,
              prefix: list[str] | None = None) -> list[str]:
    """Run the ops in a fresh child (in `cgroup` when given); `before(pid)` runs
    once the child is in place and before it acts."""
    # no preexec_fn: a fork with hooks in a process that runs gRPC threads can die before exec
    p = subprocess.Popen([*(prefix or []), sys.executable, "-c", CHILD, json.dumps(ops)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        pid = int(p.stdout.readline())
        if cgroup:  # moved in before it makes any socket (it waits for our line)
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        if before:
            before(pid)
        out, _ = p.communicate("\n", timeout=30)
        return json.loads(out)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def R(id: int, **kw: Any) -> NetRule:  # noqa: N802 - table shorthand
    return NetRule(id, **kw)


LO4 = ["127.0.0.0/8"]
# name, rules, ops (kind, family, host, port symbol), expected results in the cgroup, expected record rule ids
CASES: list[tuple[str, list[NetRule], list[list[Any]], list[str], list[int]]] = [
    ("no rules", [], [["tcp", 4, "127.0.0.1", "P1"]], ["ok"], []),
    ("cidr deny", [R(1, cidrs=LO4)], [["tcp", 4, "127.0.0.1", "P1"], ["tcp", 6, "::1", "P6"]],
     ["EPERM", "ok"], [1]),
    ("exact port", [R(2, cidrs=LO4, ports=["P1"])], [["tcp", 4, "127.0.0.1", "P1"], ["tcp", 4, "127.0.0.1", "P2"]],
     ["EPERM", "ok"], [2]),
    ("port range", [R(3, ports=[("LO", "HI")])],
     [["tcp", 4, "127.0.0.1", "P1"], ["tcp", 4, "127.0.0.1", "P2"], ["tcp", 4, "127.0.0.1", "FREE"]],
     ["EPERM", "EPERM", "ECONNREFUSED"], [3, 3]),
    ("several rules with ports, lowest matching slot decides",
     [R(20, cidrs=LO4, ports=["P2"]), R(21, ports=[1]), R(22, cidrs=["192.0.2.0/24"]),
      R(23, cidrs=LO4, ports=[("LO", "HI")])],
     [["tcp", 4, "127.0.0.1", "P1"], ["tcp", 4, "127.0.0.1", "P2"]], ["EPERM", "EPERM"], [23, 20]),
    ("allow wins", [R(4, cidrs=LO4), R(5, action="allow", cidrs=["127.0.0.1/32"], ports=["P2"])],
     [["tcp", 4, "127.0.0.1", "P1"], ["tcp", 4, "127.0.0.1", "P2"]], ["EPERM", "ok"], [4]),
    ("udp sendmsg", [R(6, protocol="udp", hooks=["sendmsg"])],
     [["udp", 4, "127.0.0.1", "U1"], ["tcp", 4, "127.0.0.1", "P1"]], ["EPERM", "ok"], [6]),
    ("tcp only", [R(7, protocol="tcp", cidrs=LO4)], [["udp", 4, "127.0.0.1", "U1"], ["tcp", 4, "127.0.0.1", "P1"]],
     ["ok", "EPERM"], [7]),
    ("bind", [R(8, cidrs=["127.0.0.2/32"], hooks=["bind"])],
     [["bind", 4, "127.0.0.2", 0], ["bind", 4, "127.0.0.1", 0], ["tcp", 4, "127.0.0.2", "P1"]],
     ["EPERM", "ok", "ECONNREFUSED"], [8]),
    ("ipv6 loopback", [R(9, cidrs=["::1/128"])], [["tcp", 6, "::1", "P6"], ["tcp", 4, "127.0.0.1", "P1"]],
     ["EPERM", "ok"], [9]),
    ("v4-mapped v6 hits v4 rule", [R(10, cidrs=["127.0.0.1/32"], ports=["P1"])],
     [["tcp", 6, "::ffff:127.0.0.1", "P1"]], ["EPERM"], [10]),
    ("v4-mapped cidr is an IPv4 rule", [R(16, cidrs=["::ffff:127.0.0.1/128"], ports=["P1"])],
     [["tcp", 4, "127.0.0.1", "P1"], ["tcp", 6, "::ffff:127.0.0.1", "P1"], ["tcp", 4, "127.0.0.2", "P1"]],
     ["EPERM", "EPERM", "ECONNREFUSED"], [16, 16]),
    ("v6 prefix over the mapped range hits v4-mapped", [R(18, cidrs=["::/64"], ports=["P1"])],
     [["tcp", 6, "::ffff:127.0.0.1", "P1"], ["tcp", 4, "127.0.0.1", "P1"]], ["EPERM", "ok"], [18]),
    ("v6 prefix beside the mapped range misses it", [R(19, cidrs=["fe80::/10", "::1/128"], ports=["P1"])],
     [["tcp", 6, "::ffff:127.0.0.1", "P1"]], ["ok"], []),
    ("v4 and v6 rules both seen for v4-mapped, lowest slot names", [R(20, cidrs=["::/0"]), R(21, cidrs=LO4)],
     [["tcp", 6, "::ffff:127.0.0.1", "P1"]], ["EPERM"], [20]),
    ("mptcp is tcp", [R(17, protocol="tcp", cidrs=LO4, ports=["P1"])],
     [["mptcp", 4, "127.0.0.1", "P1"], ["mptcp", 6, "::ffff:127.0.0.1", "P1"], ["mptcp", 4, "127.0.0.1", "P2"]],
     ["EPERM", "EPERM", "ok"], [17, 17]),
    ("monitor allows, records", [R(11, cidrs=LO4, monitor=True)], [["tcp", 4, "127.0.0.1", "P1"]], ["ok"], [11]),
    ("enforcing deny beats monitor", [R(12, cidrs=LO4, monitor=True), R(13, cidrs=["127.0.0.1/32"])],
     [["tcp", 4, "127.0.0.1", "P1"]], ["EPERM"], [13]),
    ("other pid not matched", [R(14, cidrs=LO4, pids=[1])], [["tcp", 4, "127.0.0.1", "P1"]], ["ok"], []),
    ("other binary not matched", [R(15, cidrs=LO4, binary="/usr/bin/not-this")],
     [["tcp", 4, "127.0.0.1", "P1"]], ["ok"], []),
]


def _resolve(rules: list[NetRule], ls: Listeners) -> list[NetRule]:
    names = {"P1": ls.tcp4[0], "P2": ls.tcp4[1], "LO": min(ls.tcp4), "HI": max(ls.tcp4)}
    out = []
    for r in rules:
        ports = [tuple(names.get(x, x) for x in p) if isinstance(p, tuple) else names.get(p, p)  # type: ignore[arg-type]
                 for p in r.ports]
        out.append(NetRule(**{**r.__dict__, "ports": ports}))
    return out


@pytest.mark.parametrize("name, rules, ops, expect, record_ids", CASES, ids=[c[0] for c in CASES])
def test_rules(nd: NetDeny, cgroup: str, listeners: Listeners, name: str, rules: list[NetRule],
               ops: list[list[Any]], expect: list[str], record_ids: list[int]) -> None:
    nd.set_rules(_resolve(rules, listeners))
    rb = RingBuffer(nd.events.fd, nd.events.max_entries)
    try:
        rb.drain()
        ops = listeners.sub(ops)
        pids: list[int] = []
        assert run_child(ops, cgroup, before=pids.append) == expect
        recs = [NetDeny.decode(r) for r in rb.drain()]
        assert [r["rule_id"] for r in recs] == record_ids
        for r in recs:
            assert r["pid"] == pids[0] and r["comm"].startswith("python")
            assert r["monitor"] is any(x.monitor and x.id == r["rule_id"] for x in rules)
        # the same operations from outside the cgroup: never refused
        assert "EPERM" not in run_child(ops, None)
    finally:
        rb.close()
    stats = nd.stats()
    for rid in set(record_ids):
        s = stats[rid]
        assert s["denied"] + s["monitored"] == record_ids.count(rid)


def test_record_fields(nd: NetDeny, cgroup: str, listeners: Listeners) -> None:
    nd.set_rules([NetRule(42, cidrs=["127.0.0.1/32"], ports=[listeners.tcp4[0]], protocol="tcp")])
    rb = RingBuffer(nd.events.fd, nd.events.max_entries)
    try:
        pids: list[int] = []
        assert run_child([["tcp", 4, "127.0.0.1", listeners.tcp4[0]]], cgroup, before=pids.append) == ["EPERM"]
        (rec,) = [NetDeny.decode(r) for r in rb.drain()]
    finally:
        rb.close()
    cg_id = os.stat(cgroup).st_ino
    assert rec == {**rec, "op": "netdeny", "pid": pids[0], "tid": pids[0], "rule_id": 42, "cgroup_id": cg_id,
                   "family": "inet", "protocol": "tcp", "hook": "connect4", "action": "deny", "monitor": False,
                   "daddr": "127.0.0.1", "dport": listeners.tcp4[0], "exec_ktime": 0}


def test_pid_and_binary_scope(nd: NetDeny, cgroup: str, listeners: Listeners) -> None:
    """Rules naming the child's pid, and its binary as execve_map records it."""
    port = listeners.tcp4[0]
    op = [["tcp", 4, "127.0.0.1", port]]

    def by_pid(pid: int) -> None:
        nd.set_rules([NetRule(1, cidrs=LO4, pids=[pid])])
    assert run_child(op, cgroup, before=by_pid) == ["EPERM"]

    binary = "/opt/vigil-test/fake-binary"
    em = nd.obj.map("execve_map")

    def by_binary(pid: int) -> None:
        b = binary.encode()
        em.update(struct.pack("<I", pid), ENTRY.pack(pid, 0, 12345, 1, 0, 0, len(b), 0, b, 0, 0, 0, *[0] * 10, 0))
        nd.set_rules([NetRule(2, cidrs=LO4, binary=binary)])
    rb = RingBuffer(nd.events.fd, nd.events.max_entries)
    try:
        rb.drain()
        assert run_child(op, cgroup, before=by_binary) == ["EPERM"]
        (rec,) = [NetDeny.decode(r) for r in rb.drain()]
        assert rec["rule_id"] == 2 and rec["exec_ktime"] == 12345  # exec key from execve_map
    finally:
        rb.close()
        em.clear()


def test_replace_is_atomic_and_validated(nd: NetDeny, cgroup: str, listeners: Listeners) -> None:
    op = [["tcp", 4, "127.0.0.1", listeners.tcp4[0]], ["tcp", 4, "127.0.0.1", listeners.tcp4[1]]]
    nd.set_rules([NetRule(1, ports=[listeners.tcp4[0]])])
    assert run_child(op, cgroup) == ["EPERM", "ok"]
    with pytest.raises(NetRuleError, match="rule 9"):
        nd.set_rules([NetRule(2, ports=[listeners.tcp4[1]]), NetRule(9, action="drop")])
    assert run_child(op, cgroup) == ["EPERM", "ok"]  # the bad set changed nothing
    nd.set_rules([NetRule(2, ports=[listeners.tcp4[1]])])
    assert run_child(op, cgroup) == ["ok", "EPERM"]
    nd.set_rules([NetRule(1, ports=[listeners.tcp4[0]])])
    assert run_child(op, cgroup) == ["EPERM", "ok"]
    assert nd.stats()[1]["denied"] == 3 and nd.stats()[2]["denied"] == 1  # counts survive replacement
    # the retired generation's tables are emptied when it is reused
    nd.set_rules([])
    nd.set_rules([])
    assert nd.obj.map("nd_cidrs").count() == 0
    assert run_child(op, cgroup) == ["ok", "ok"]


def test_close_detaches_everything(cgroup: str, listeners: Listeners) -> None:
    n = NetDeny(cgroup, exempt_self=False)
    try:
        n.set_rules([NetRule(1, cidrs=LO4)])
        n.attach()
        assert len(_cgroup_progs(cgroup).strip().splitlines()) == 7  # header + six programs
        assert run_child([["tcp", 4, "127.0.0.1", listeners.tcp4[0]]], cgroup) == ["EPERM"]
    finally:
        n.close()
    assert _cgroup_progs(cgroup).strip() == ""
    assert run_child([["tcp", 4, "127.0.0.1", listeners.tcp4[0]]], cgroup) == ["ok"]


def in_netns(name: str) -> list[str]:
    """Run a command in a named network namespace. nsenter, not `ip -n`/`ip netns exec`:
    those also remount / (--make-rslave), which fails where / is not a mount point (a chroot)."""
    return [shutil.which("nsenter") or "/usr/bin/nsenter", f"--net=/run/netns/{name}"]


@pytest.fixture
def netns() -> Iterator[str]:
    """A test-owned network namespace with 10.99.0.1/24 and 10.99.1.1/24 on its loopback
    (no dummy/veth module needed)."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    name = f"vigil-nd-{os.getpid()}-{next(_seq)}"
    subprocess.run([ip, "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", "10.99.0.1/24", "dev", "lo"],
                    ["addr", "add", "10.99.1.1/24", "dev", "lo"]):
            subprocess.run([*in_netns(name), ip, *cmd], check=True)
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=True)


def test_cidr_in_own_network_namespace(nd: NetDeny, cgroup: str, netns: str) -> None:
    nd.set_rules([NetRule(1, cidrs=["10.99.0.0/24"], protocol="tcp")])
    ops = [["self", 4, "10.99.0.1", 0], ["self", 4, "10.99.1.1", 0]]
    assert run_child(ops, cgroup, prefix=in_netns(netns)) == ["EPERM", "ok"]
    assert run_child(ops, None, prefix=in_netns(netns)) == ["ok", "ok"]


def test_prefix_table_holds_two_generations(cgroup: str, listeners: Listeners) -> None:
    """A rule set may fill half of the prefix table: replacing it (a mode switch, a new set of the
    same size) always fits beside it. A bigger set is refused up front and the old one stays."""
    port = listeners.tcp4[0]
    op = [["tcp", 4, "127.0.0.1", port], ["tcp", 4, "127.0.0.2", port]]
    cidrs = ["127.0.0.1/32"] + [f"192.0.2.{i}/32" for i in range(7)]
    n = NetDeny(cgroup, exempt_self=False, max_cidrs=16)
    try:
        n.attach()
        n.set_rules([NetRule(1, cidrs=cidrs)])
        n.set_rules([NetRule(1, cidrs=cidrs, monitor=True)])
        n.set_rules([NetRule(1, cidrs=cidrs)])
        assert run_child(op, cgroup) == ["EPERM", "ECONNREFUSED"]
        with pytest.raises(NetRuleError, match="9 address prefixes, at most 8"):
            n.set_rules([NetRule(2, cidrs=[*cidrs, "127.0.0.2/32"])])
        assert run_child(op, cgroup) == ["EPERM", "ECONNREFUSED"]
        n.set_rules([NetRule(3, cidrs=["127.0.0.2/32", *cidrs[1:]])])
        assert run_child(op, cgroup) == ["ok", "EPERM"]
        assert n.obj.map("nd_cidrs").count() == 16
    finally:
        n.close()


def _policy_rules(selectors: str, call: str = "sys_connect", index: int = 1) -> list[NetRule]:
    """The socket rules the agent builds for a policy's hook (host facts: cgroup placement)."""
    from vigil.sensors.hostdeny import NetDenyHook

    return NetDenyHook(_policy_hook(selectors, call, index), {}, False).rules


def _policy_hook(selectors: str, call: str = "sys_connect", index: int = 1) -> Any:
    """A policy's compiled hook on the cgroup placement (host facts)."""
    from pathlib import Path

    from vigil.kernel.facts import KernelFacts
    from vigil.policy import parse_policies
    from vigil.policy.compile import compile_policy

    facts = KernelFacts.load(str(Path(__file__).parents[1] / "data" / "facts" / "host-6.18.json"))
    text = (f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: nd}}\nspec:\n  kprobes:\n"
            f"  - call: {call}\n    syscall: true\n    args: [{{index: {index}, type: sockaddr}}]\n    selectors:\n"
            f"{selectors}")
    (p,) = parse_policies(text, "p.yaml")
    (ch,) = compile_policy(p, facts, lambda: 3).hooks
    assert ch.placement.mechanism == "cgroup_sock_addr"
    return ch


@pytest.mark.parametrize("action", ["NoPost", "Post"])
def test_earlier_non_enforcing_selector_lets_its_traffic_through(nd: NetDeny, cgroup: str, listeners: Listeners,
                                                                 action: str) -> None:
    """The first matching selector decides: 127.0.0.1:P1 matches selector 1 (NoPost/Post) first and
    goes through (reported for Post); selector 2's Override refuses the rest of 127.0.0.0/8."""
    p1, p2 = listeners.tcp4
    nd.set_rules(_policy_rules(
        f"    - matchArgs: [{{index: 1, operator: SAddr, values: ['127.0.0.1/32']}},"
        f" {{index: 1, operator: SPort, values: ['{p1}']}}]\n"
        f"      matchActions: [{{action: {action}}}]\n"
        "    - matchArgs: [{index: 1, operator: SAddr, values: ['127.0.0.0/8']}]\n"
        "      matchActions: [{action: Override, argError: -1}]\n"))
    rb = RingBuffer(nd.events.fd, nd.events.max_entries)
    try:
        rb.drain()
        assert run_child([["tcp", 4, "127.0.0.1", p1], ["tcp", 4, "127.0.0.1", p2]], cgroup) == ["ok", "EPERM"]
        recs = [NetDeny.decode(r) for r in rb.drain()]
    finally:
        rb.close()
    from vigil.sensors.hostdeny import netdeny_hook_id, netdeny_selector

    posted = [(3, 1, p1, "allow")] if action == "Post" else []
    assert [(netdeny_hook_id(r["rule_id"]), netdeny_selector(r["rule_id"]), r["dport"], r["action"])
            for r in recs] == [*posted, (3, 2, p2, "deny")]


# selectors (Post/NoPost around an Override on 127.0.0.0/8, one address each) -> per operation:
# the result and the selector reported (None: no record), in enforce and in monitor mode
POST_CASES = [
    ("post after override", "O8 P*", {"a1": ("EPERM", 1), "o": ("ok", 2)}),
    ("nopost after override", "O8 N*", {"a1": ("EPERM", 1), "o": ("ok", None)}),
    ("post before and after", "P1 O8 P*", {"a1": ("ok", 1), "a2": ("EPERM", 2), "o": ("ok", 3)}),
    ("post after two overrides", "O1 O8 P*", {"a1": ("EPERM", 1), "a2": ("EPERM", 2), "o": ("ok", 3)}),
]


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
@pytest.mark.parametrize("name, sels, expect", POST_CASES, ids=[c[0] for c in POST_CASES])
def test_post_selectors_report_what_they_let_through(nd: NetDeny, cgroup: str, netns: str, name: str, sels: str,
                                                     expect: dict[str, tuple[str, int | None]], mode: str) -> None:
    """A Post selector on the cgroup path sends its event (KPROBE_ACTION_POST) for what it lets
    through; one after the Override only when the Override did not refuse (first match
    decides), a NoPost none. Operations (own listeners in a test netns): a1 127.0.0.1 (in O1,
    P1 and O8), a2 127.0.0.2 (O8 only), o 10.99.0.1 (no Override: P* matches anything)."""
    addr = {"1": "127.0.0.1/32", "8": "127.0.0.0/8", "*": "0.0.0.0/0"}
    act = {"O": "Override, argError: -1", "P": "Post", "N": "NoPost"}
    text = "".join(f"    - matchArgs: [{{index: 1, operator: SAddr, values: ['{addr[s[1]]}']}}]\n"
                   f"      matchActions: [{{action: {act[s[0]]}}}]\n" for s in sels.split())
    monitor = mode == "monitor"
    ch = _policy_hook(text)
    from vigil.sensors.hostdeny import NetDenyHook, netdeny_event, netdeny_selector

    nd.set_rules(NetDenyHook(ch, {}, monitor).rules)
    rb = RingBuffer(nd.events.fd, nd.events.max_entries)
    try:
        ops = {"a1": ["self", 4, "127.0.0.1", 0], "a2": ["self", 4, "127.0.0.2", 0], "o": ["self", 4, "10.99.0.1", 0]}
        for op, (res, sel) in expect.items():
            rb.drain()
            assert run_child([ops[op]], cgroup, prefix=in_netns(netns)) == ["ok" if monitor else res], (op, mode)
            recs = [NetDeny.decode(r) for r in rb.drain()]
            assert [netdeny_selector(r["rule_id"]) for r in recs] == ([sel] if sel else []), (op, mode)
            for r in recs:
                enforcing = res == "EPERM"
                assert netdeny_event(r, ch)["action"] == ("KPROBE_ACTION_OVERRIDE" if enforcing
                                                          else "KPROBE_ACTION_POST"), (op, mode)
                assert r["monitor"] is (monitor and enforcing), (op, mode)
    finally:
        rb.close()
    posted = sum(1 for res, sel in expect.values() if sel and res == "ok")
    assert sum(v["posted"] for v in nd.stats().values()) == posted


@pytest.fixture
def tfo_netns(netns: str) -> str:
    """The test namespace with TCP Fast Open enabled for clients (bit 1; only in this netns)."""
    subprocess.run([*in_netns(netns), "sh", "-c", "echo 1 > /proc/sys/net/ipv4/tcp_fastopen"], check=True)
    return netns


TFO_OPS = [["tfo", 4, "10.99.0.1", 0], ["self", 4, "10.99.0.1", 0], ["tfo", 4, "10.99.1.1", 0],
           ["tfo", 6, "::1", 0], ["self", 6, "::1", 0],
           # the same from MPTCP sockets (m*): their first subflow is a TCP socket
           ["mtfo", 4, "10.99.0.1", 0], ["mself", 4, "10.99.0.1", 0], ["mtfo", 6, "::1", 0]]


@pytest.mark.parametrize("call, index", [("sys_sendto", 4), ("sys_sendmsg", 1)])
def test_sendto_override_refuses_tcp_fast_open(nd: NetDeny, cgroup: str, tfo_netns: str, call: str,
                                               index: int) -> None:
    """sendto(MSG_FASTOPEN) on TCP connects from the sendmsg path, and the kernel runs the cgroup
    connect hook for it, not sendmsg: an Override on sys_sendto/sys_sendmsg must refuse it there,
    while a plain connect() to the same address (no sendto) still goes through."""
    nd.set_rules(_policy_rules(
        f"    - matchArgs: [{{index: {index}, operator: SAddr, values: ['10.99.0.1/32', '::1/128']}}]\n"
        f"      matchActions: [{{action: Override, argError: -1}}]\n", call=call, index=index))
    assert run_child(TFO_OPS, cgroup, prefix=in_netns(tfo_netns)) == ["EPERM", "ok", "ok", "EPERM", "ok",
                                                                         "EPERM", "ok", "EPERM"]
    assert run_child(TFO_OPS, None, prefix=in_netns(tfo_netns)) == ["ok"] * len(TFO_OPS)


def test_connect_override_still_refuses_tcp_fast_open(nd: NetDeny, cgroup: str, tfo_netns: str) -> None:
    nd.set_rules(_policy_rules(
        "    - matchArgs: [{index: 1, operator: SAddr, values: ['10.99.0.1/32', '::1/128']}]\n"
        "      matchActions: [{action: Override, argError: -1}]\n"))
    assert run_child(TFO_OPS, cgroup, prefix=in_netns(tfo_netns)) == ["EPERM", "EPERM", "ok", "EPERM", "EPERM",
                                                                         "EPERM", "EPERM", "EPERM"]
