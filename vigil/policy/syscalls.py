"""Syscall names known to the validator: the kernel's x86_64 table (with the syscalls of
newer kernels) and the 32-bit one (policies name those __ia32_sys_NAME)."""
from __future__ import annotations

from vigil.kernel.syscalls import NUMBERS

SYSCALL_NUMBERS: dict[str, int] = NUMBERS["x86_64"]
SYSCALL_NAMES: frozenset[str] = frozenset(SYSCALL_NUMBERS)
SYSCALLS_I386: dict[str, int] = NUMBERS["i386"]
I386_SYSCALL_NAMES: frozenset[str] = frozenset(SYSCALLS_I386)
