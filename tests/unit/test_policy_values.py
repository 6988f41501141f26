"""Value parsers and the generated syscall table."""
from __future__ import annotations

import ipaddress

import pytest

from vigil.kernel.syscalls import x86_64
from vigil.policy import limits, values
from vigil.policy.syscalls import SYSCALL_NAMES, SYSCALL_NUMBERS


@pytest.mark.parametrize("text,want", [("0", 0), ("42", 42), ("-7", -7), ("0x1F", 31),
                                       ("0X10", 16), ("010", 8), ("+3", 3), (" 5 ", 5)])
def test_parse_int(text: str, want: int) -> None:
    assert values.parse_int(text) == want


@pytest.mark.parametrize("text", ["", "x", "0x", "08", "1.0", "1e3", "--1", "0b101"])
def test_parse_int_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        values.parse_int(text)


def test_ranges_ports_addresses() -> None:
    assert values.parse_range("0x10:0x20") == (16, 32)
    assert values.parse_int_or_range("7") == (7, 7)
    assert values.parse_port("443") == (443, 443)
    assert values.parse_port("1024:65535") == (1024, 65535)
    assert values.parse_cidr("10.1.2.3/8") == ipaddress.ip_network("10.0.0.0/8")
    assert values.parse_cidr("2001:db8::1").prefixlen == 128
    with pytest.raises(ValueError):
        values.parse_port("65536")


def test_symbolic_names() -> None:
    assert values.parse_protocol("IPPROTO_TCP") == 6
    assert values.parse_protocol("132") == 132
    assert values.parse_family("AF_INET6") == 10
    assert values.parse_family("AF_UNIX") == values.parse_family("AF_LOCAL") == 1
    assert values.parse_tcp_state("TCP_LISTEN") == 10
    assert values.parse_capability("CAP_SYS_ADMIN") == 21
    assert values.parse_capability("CAP_CHECKPOINT_RESTORE") == 40
    assert values.parse_namespace_value("host_ns") == "host_ns"
    assert values.parse_namespace_value("4026531836") == 4026531836
    assert values.parse_signal(9) == 9
    with pytest.raises(ValueError):
        values.parse_signal(0)


@pytest.mark.parametrize("text,secs", [("30", 30), ("30s", 30), ("5m", 300), ("1h", 3600)])
def test_parse_duration(text: str, secs: int) -> None:
    assert values.parse_duration(text) == secs


def test_bool_strings() -> None:
    assert values.parse_bool_string("true") is True
    assert values.parse_bool_string("0") is False
    with pytest.raises(ValueError):
        values.parse_bool_string("yes")


def test_syscall_table() -> None:
    assert x86_64.NUMBERS["read"] == 0 and x86_64.NUMBERS["openat"] == 257
    assert x86_64.NUMBERS["execve"] == 59 and len(x86_64.NUMBERS) > 350
    assert SYSCALL_NUMBERS["mseal"] == 462  # newer than the generating header
    assert "waitpid" not in SYSCALL_NAMES  # i386 only
    assert values.is_syscall("sys_openat") and values.is_syscall("__x64_sys_openat")
    assert values.is_syscall("openat") and not values.is_syscall("openat", bare_ok=False)
    assert not values.is_syscall("sys_frobnicate")


def test_named_limits() -> None:
    assert limits.MAX_SELECTORS == 5 and limits.MAX_MATCH_ARGS == 5
    assert limits.MAX_ACTIONS == 3 and limits.MAX_TAGS == 16
    assert limits.MAX_MATCH_VALUES == 8 and limits.MAX_PID_VALUES == 8
