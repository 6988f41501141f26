"""Syscall numbers and names, one generated table per architecture (see generate.py), plus
the x86_64 syscalls added to kernels newer than the headers the tables come from."""
from __future__ import annotations

import functools

from vigil.kernel.syscalls import arm64, i386, x86_64

# From arch/x86/entry/syscalls/syscall_64.tbl of kernels newer than the build host's headers,
# so policies naming them are not refused.
NEWER_X86_64: dict[str, int] = {
    "cachestat": 451, "fchmodat2": 452, "map_shadow_stack": 453, "futex_wake": 454,
    "futex_wait": 455, "futex_requeue": 456, "statmount": 457, "listmount": 458,
    "lsm_get_self_attr": 459, "lsm_set_self_attr": 460, "lsm_list_modules": 461, "mseal": 462,
    "setxattrat": 463, "getxattrat": 464, "listxattrat": 465, "removexattrat": 466,
    "open_tree_attr": 467, "file_getattr": 468, "file_setattr": 469,
    "uretprobe": 335, "uprobe": 336,
}
NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {**NEWER_X86_64, **x86_64.NUMBERS},
    "i386": dict(i386.NUMBERS),
    "arm64": dict(arm64.NUMBERS),
}


@functools.cache
def names(arch: str) -> tuple[str, ...]:
    """Names by number ("-" for an unused number)."""
    table = NUMBERS[arch]
    out = ["-"] * (max(table.values()) + 1)
    for name, nr in sorted(table.items(), key=lambda kv: kv[1], reverse=True):
        out[nr] = name  # the first name of a number wins (aliases sort after)
    return tuple(out)
