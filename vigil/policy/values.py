"""Parsers for the values that selectors, actions and options carry. Each raises ValueError with a
message fit to show the user."""
from __future__ import annotations

import ipaddress
import re

from . import enums

# characters of the longest 64-bit integer in any notation (a sign and 23 octal digits), with room
MAX_INT_CHARS = 40
_INT_RE = re.compile(r"^[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")


def parse_int(text: str) -> int:
    """Decimal, 0x hex or leading-0 octal (C/strconv base-0 style)."""
    s = text.strip()
    if not _INT_RE.match(s):
        raise ValueError(f'"{text}" is not an integer (decimal, 0x hex or 0 octal)')
    if len(s) > MAX_INT_CHARS:  # Python's own error here told the user to call sys.set_int_max_str_digits()
        raise ValueError(f'"{s[:MAX_INT_CHARS]}..." ({len(s)} characters) is out of range for a 64-bit integer')
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    if s[:2].lower() == "0x":
        return sign * int(s[2:], 16)
    if len(s) > 1 and s[0] == "0":
        return sign * int(s[1:], 8)
    return sign * int(s)


def parse_range(text: str) -> tuple[int, int]:
    """`min:max`, inclusive."""
    lo_s, sep, hi_s = text.partition(":")
    if not sep:
        raise ValueError(f'"{text}" is not a range (expected min:max)')
    lo, hi = parse_int(lo_s), parse_int(hi_s)
    if lo > hi:
        raise ValueError(f'range "{text}" has min > max')
    return lo, hi


def parse_int_or_range(text: str) -> tuple[int, int]:
    if ":" in text:
        return parse_range(text)
    v = parse_int(text)
    return v, v


def parse_port(text: str) -> tuple[int, int]:
    """A port or a `min:max` port range."""
    try:
        lo, hi = parse_int_or_range(text)
    except ValueError:
        raise ValueError(f'"{text}" is not a port or port range (e.g. 443 or 8000:8080)') from None
    if lo < 0 or hi > 65535:
        raise ValueError(f'port "{text}" is out of range 0..65535')
    return lo, hi


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPv4/IPv6 address or CIDR; host bits may be set (they are masked off)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f'"{text}" is not an IP address or CIDR') from None


def _symbolic(text: str, table: dict[str, int], prefix: str, what: str, hi: int) -> int:
    if text.startswith(prefix):
        if text not in table:
            raise ValueError(f'unknown {what} "{text}"')
        return table[text]
    try:
        v = parse_int(text)
    except ValueError:
        raise ValueError(f'"{text}" is not a {what} (a number or {prefix}*)') from None
    if not 0 <= v <= hi:
        raise ValueError(f'{what} {v} is out of range 0..{hi}')
    return v


def parse_protocol(text: str) -> int:
    return _symbolic(text, enums.IPPROTO, "IPPROTO_", "protocol", 65535)


def parse_family(text: str) -> int:
    return _symbolic(text, enums.AF, "AF_", "address family", 65535)


def parse_tcp_state(text: str) -> int:
    return _symbolic(text, enums.TCP_STATES, "TCP_", "TCP state", 255)


def parse_capability(text: str) -> int:
    if text not in enums.CAPABILITIES:
        raise ValueError(f'unknown capability "{text}" (expected CAP_* such as CAP_SYS_ADMIN)')
    return enums.CAPABILITIES[text]


def parse_namespace_value(text: str) -> int | str:
    """A namespace inode number or `host_ns`."""
    if text == "host_ns":
        return text
    try:
        v = parse_int(text)
    except ValueError:
        raise ValueError(f'"{text}" is not a namespace inode number or host_ns') from None
    if not 0 <= v <= 2**32 - 1:
        raise ValueError(f"namespace inode {v} is out of range")
    return v


def parse_signal(v: int) -> int:
    if not 1 <= v <= 64:
        raise ValueError(f"signal {v} is out of range 1..64")
    return v


_DURATION = re.compile(r"^([0-9]+)([smh]?)$")


def parse_duration(text: str) -> int:
    """rateLimit: "30" (seconds), "30s", "5m", "1h" -> seconds."""
    m = _DURATION.match(text.strip())
    if not m or len(m.group(1)) > MAX_INT_CHARS:
        raise ValueError(f'invalid rateLimit "{text}" (expected e.g. "30", "30s", "5m", "1h")')
    n = int(m.group(1))
    if n == 0:
        raise ValueError(f'rateLimit "{text}" must be greater than zero')
    seconds = n * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds > MAX_DURATION_S:
        raise ValueError(f'rateLimit "{text}" is longer than {MAX_DURATION_S} seconds (the kernel counts it '
                         "in nanoseconds, in 64 bits)")
    return seconds


MAX_DURATION_S = (2**64 - 1) // 10**9


def parse_bool_string(text: str) -> bool:
    if text not in enums.BOOL_STRINGS:
        raise ValueError(f'"{text}" is not a boolean (true or false)')
    return enums.BOOL_STRINGS[text]


# an arch's syscall wrapper names the same syscall (one policy file serves every architecture)
_SYSCALL_PREFIXES = ("__x64_sys_", "__arm64_sys_", "__riscv_sys_", "__s390x_sys_", "sys_")
_I386_PREFIXES = ("__ia32_compat_sys_", "__ia32_sys_")


def syscall_base(name: str) -> str | None:
    """`sys_write`, `__x64_sys_write` -> `write`; None when the name has no syscall prefix."""
    for p in _SYSCALL_PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return None


def is_syscall(name: str, *, bare_ok: bool = True) -> bool:
    """A known x86_64 syscall (`sys_X`, `__x64_sys_X`, bare `X` when bare_ok) or a known 32-bit
    one spelled `__ia32_sys_X` / `__ia32_compat_sys_X`."""
    from .syscalls import I386_SYSCALL_NAMES, SYSCALL_NAMES

    for p in _I386_PREFIXES:
        if name.startswith(p):
            return name[len(p):] in I386_SYSCALL_NAMES
    base = syscall_base(name)
    if base is None:
        return bare_ok and name in SYSCALL_NAMES
    return base in SYSCALL_NAMES
