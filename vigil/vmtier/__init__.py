"""VM kernel test tier: boot stock Debian kernels under QEMU and run tests/vm in them.

The host kernel lacks kprobes, BPF trampolines (fentry/LSM) and more, so the tests that need those
hooks run in a guest that shares the host root read-only over 9p (see
/work/shared/research/kernel-and-vm-tier.md for what was measured).
"""

from __future__ import annotations

from pathlib import Path

# The checkout this code lives in (CI clones elsewhere, so never hard-code /work/main).
REPO_ROOT: Path = Path(__file__).resolve().parents[2]
BUILD_DIR: Path = REPO_ROOT / "build" / "vm"


class Skip(Exception):
    """The environment cannot run the VM tier at all (not a test failure)."""


class TierError(Exception):
    """Preparing or running the tier failed in a way that must fail the build."""
