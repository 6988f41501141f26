"""Syscall names known to the validator: the generated x86_64 table, plus syscalls added to
kernels newer than the header it was generated from (so valid policies are not rejected)."""
from __future__ import annotations

from .syscalls_i386 import SYSCALLS_I386
from .syscalls_x86_64 import SYSCALLS_X86_64

# From newer arch/x86/entry/syscalls/syscall_64.tbl than the build host's UAPI header.
NEWER_SYSCALLS_X86_64: dict[str, int] = {
    "cachestat": 451, "fchmodat2": 452, "map_shadow_stack": 453, "futex_wake": 454,
    "futex_wait": 455, "futex_requeue": 456, "statmount": 457, "listmount": 458,
    "lsm_get_self_attr": 459, "lsm_set_self_attr": 460, "lsm_list_modules": 461, "mseal": 462,
    "setxattrat": 463, "getxattrat": 464, "listxattrat": 465, "removexattrat": 466,
    "open_tree_attr": 467,
}
SYSCALL_NUMBERS: dict[str, int] = {**NEWER_SYSCALLS_X86_64, **SYSCALLS_X86_64}
SYSCALL_NAMES: frozenset[str] = frozenset(SYSCALL_NUMBERS)
# 32-bit (compat) syscalls, named __ia32_sys_NAME / __ia32_compat_sys_NAME in policies.
I386_SYSCALL_NAMES: frozenset[str] = frozenset(SYSCALLS_I386)
