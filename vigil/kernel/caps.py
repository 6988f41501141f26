"""Capability and securebits names, spelled as in Tetragon's enums."""
from __future__ import annotations

from functools import lru_cache

CAP_NAMES = (
    "CAP_CHOWN", "DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAP_BY_NAME = {n: i for i, n in enumerate(CAP_NAMES)}
CAP_BY_NAME["CAP_DAC_OVERRIDE"] = 1  # accept the regular spelling on input

SECUREBITS = (
    (1, "SecBitNoRoot"), (2, "SecBitNoRootLocked"), (4, "SecBitNoSetUidFixup"),
    (8, "SecBitNoSetUidFixupLocked"), (16, "SecBitKeepCaps"), (32, "SecBitKeepCapsLocked"),
    (64, "SecBitNoCapAmbientRaise"), (128, "SecBitNoCapAmbientRaiseLocked"),
)


@lru_cache(maxsize=4096)
def cap_list(mask: int) -> tuple[str, ...]:
    return tuple(CAP_NAMES[i] for i in range(len(CAP_NAMES)) if mask >> i & 1)


@lru_cache(maxsize=256)
def securebits_list(bits: int) -> tuple[str, ...]:
    return tuple(name for bit, name in SECUREBITS if bits & bit)
