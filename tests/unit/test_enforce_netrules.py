"""NetRule validation, the table compiler, and the Python mirrors of vigil_netdeny.h (no kernel)."""
from __future__ import annotations

import ipaddress
import json
import shutil
import struct
import subprocess

import pytest

from vigil.enforce import netrules as N
from vigil.enforce.netdeny import MSG, NetDeny
from vigil.enforce.netrules import NetRule, NetRuleError, compile_rules
from vigil.kernel.paths import bpf_object


@pytest.mark.parametrize("rules, message", [
    ([NetRule(1, action="drop")], "rule 1: action 'drop'"),
    ([NetRule(1, action="allow", monitor=True)], "monitor applies to deny rules only"),
    ([NetRule(1, cidrs=["10.0.0.300/8"])], "rule 1: .*10.0.0.300"),
    ([NetRule(1, cidrs="10.0.0.0/8")], "must be a list"),
    ([NetRule(1, family="inet6", cidrs=["10.0.0.0/8"])], "not an address of family inet6"),
    ([NetRule(1, family="ax25")], "family 'ax25'"),
    ([NetRule(1, ports=[70000])], "outside 0-65535"),
    ([NetRule(1, ports=[(90, 80)])], "reversed"),
    ([NetRule(1, ports=["http"])], "not N or N-M"),
    ([NetRule(1, ports=list(range(9)))], "at most 8"),
    ([NetRule(1, protocol="sctp")], "protocol 'sctp'"),
    ([NetRule(1, hooks=["recvmsg"])], "hooks"),
    ([NetRule(1, hooks=[])], "hooks"),
    ([NetRule(1, pids=[0])], "pid 0"),
    ([NetRule(1, binary="bin/sh")], "absolute path"),
    ([NetRule(1), NetRule(1)], "duplicate rule id"),
    ([NetRule(-1)], "rule id"),
    ([NetRule(i) for i in range(65)], "at most 64"),
])
def test_invalid_rules_name_the_problem(rules: list[NetRule], message: str) -> None:
    with pytest.raises(NetRuleError, match=message):
        compile_rules(rules)


def test_masks_and_containment() -> None:
    c = compile_rules([
        NetRule(10, cidrs=["10.0.0.0/8"], protocol="tcp", ports=[443, "8000-8080"]),
        NetRule(11, action="allow", cidrs=["10.1.0.0/16"], pids=[77]),
        NetRule(12, monitor=True, binary="/usr/bin/curl", hooks=["connect", "bind"]),
    ])
    nopid, nobin, noport, allow, monitor, tcp, udp, other, conn, send, bind, post = c.gen
    assert (nopid, nobin, noport, allow, monitor) == (0b101, 0b011, 0b110, 0b010, 0b100)
    assert (tcp, udp, other) == (0b111, 0b110, 0b110)
    assert (conn, send, bind) == (0b111, 0b011, 0b100)
    assert post == 0
    pad = lambda a: ipaddress.ip_address(a).packed.ljust(16, b"\0")  # noqa: E731
    # the longest prefix carries every rule whose CIDR contains it (rule 12: any address)
    assert c.cidrs[(N.AF_INET, pad("10.1.0.0"), 16)] == 0b111
    assert c.cidrs[(N.AF_INET, pad("10.0.0.0"), 8)] == 0b101
    assert c.cidrs[(N.AF_INET, pad("0.0.0.0"), 0)] == 0b100
    assert c.cidrs[(N.AF_INET6, pad("::"), 0)] == 0b100
    assert c.pids == {77: 0b010} and c.bins == {b"/usr/bin/curl": 0b100}
    rid, nports, *ports = N.RULE.unpack(c.rule_value(0))
    assert (rid, nports, ports[:4]) == (10, 2, [443, 443, 8000, 8080])
    assert c.rule_value(5) == bytes(N.RULE.size)
    key, val = next(iter(c.cidr_items(gen=1)))
    assert N.CIDR_KEY.unpack(key)[1] == 1 and len(val) == 8


def test_post_rules_masks() -> None:
    """A posting allow rule is in allow and post; a post rule is in the low class (monitor) and post."""
    c = compile_rules([NetRule(1, action="allow", post=True), NetRule(2), NetRule(3, action="post"),
                       NetRule(4, action="allow")])
    nopid, nobin, noport, allow, monitor, *_, post = c.gen
    assert (allow, monitor, post) == (0b1001, 0b0100, 0b0101)


@pytest.mark.parametrize("rule, why", [
    (NetRule(1, action="post", monitor=True), "monitor applies to deny rules only"),
    (NetRule(1, action="deny", post=True), "post applies to allow rules only"),
    (NetRule(1, action="post", post=True), "post applies to allow rules only"),
    (NetRule(1, action="log"), "is not 'deny', 'allow' or 'post'"),
])
def test_post_rule_validation(rule: NetRule, why: str) -> None:
    with pytest.raises(NetRuleError, match=why):
        compile_rules([rule])


def test_family_without_cidrs_is_that_family_only() -> None:
    c = compile_rules([NetRule(1, family="inet6")])
    assert list(c.cidrs) == [(N.AF_INET6, bytes(16), 0)]


def test_decode_round_trip() -> None:
    raw = MSG.pack(11, 0, 0, MSG.size, 99, 1234, 0, 555, 1235, 7, 4242, 10, 17, 4, 1, 1, 0, 53,
                   ipaddress.IPv6Address("::ffff:10.0.0.1").packed, b"curl\0".ljust(16, b"\0"))
    d = NetDeny.decode(raw)
    assert d == {"op": "netdeny", "ktime": 99, "pid": 1234, "exec_ktime": 555, "tid": 1235, "rule_id": 7,
                 "cgroup_id": 4242, "family": "inet6", "protocol": "udp", "hook": "sendmsg6", "action": "deny",
                 "monitor": True, "daddr": "10.0.0.1", "dport": 53, "comm": "curl"}
    with pytest.raises(ValueError):
        NetDeny.decode(raw[:10])
    with pytest.raises(ValueError):
        NetDeny.decode(b"\x01" + raw[1:])


@pytest.fixture(scope="module")
def btf() -> dict[str, dict]:
    obj = bpf_object("netdeny")
    if not obj.exists():
        pytest.fail(f"{obj} not built: run `make`")
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run([bpftool, "-j", "btf", "dump", "file", str(obj)], capture_output=True, text=True)
    if out.returncode:
        pytest.fail(f"bpftool cannot dump the BTF of {obj}: {out.stderr.strip()}")
    return {t["name"]: t for t in json.loads(out.stdout)["types"] if t.get("kind") == "STRUCT" and t.get("name")}


@pytest.mark.parametrize("name, mirror", [
    ("nd_cidr_key", N.CIDR_KEY), ("nd_pid_key", N.PID_KEY), ("nd_bin_key", N.BIN_KEY), ("nd_gen", N.GEN),
    ("nd_rule", N.RULE), ("nd_counters", N.COUNTERS), ("msg_netdeny", MSG),
])
def test_layouts_match_btf(btf: dict[str, dict], name: str, mirror: struct.Struct) -> None:
    assert btf[name]["size"] == mirror.size


def test_msg_netdeny_field_offsets(btf: dict[str, dict]) -> None:
    offs = {m["name"]: m["bits_offset"] // 8 for m in btf["msg_netdeny"]["members"]}
    assert offs == {"hdr": 0, "key": 16, "tid": 32, "rule_id": 36, "cgroup_id": 40, "family": 48, "protocol": 49,
                    "hook": 50, "action": 51, "monitor": 52, "pad": 53, "dport": 54, "daddr": 56, "comm": 72}
