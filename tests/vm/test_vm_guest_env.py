"""The guest environment the VM tier promises (see vigil/vmtier/initramfs.py)."""

from __future__ import annotations

import os
from pathlib import Path


def _mounts() -> dict[str, str]:
    out = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mnt, fstype, *_ = line.split()
        out[mnt] = fstype
    return out


def test_kernel_is_the_requested_one(vm_kernel: str) -> None:
    assert os.uname().release == vm_kernel


def test_kernel_filesystems_mounted() -> None:
    m = _mounts()
    want = {
        "/sys/fs/bpf": "bpf",
        "/sys/kernel/tracing": "tracefs",
        "/sys/kernel/debug": "debugfs",
        "/sys/kernel/security": "securityfs",
        "/sys/fs/cgroup/unified": "cgroup2",
        "/dev/shm": "tmpfs",
        "/dev/pts": "devpts",
    }
    if not str(Path(__file__).resolve()).startswith("/tmp/"):  # else /tmp stays on the overlay
        want["/tmp"] = "tmpfs"
    assert {k: m.get(k) for k in want} == want
    assert Path("/sys/fs/cgroup").is_dir()


def test_btf_present() -> None:
    btf = Path("/sys/kernel/btf/vmlinux")
    assert btf.exists() and btf.stat().st_size > 1 << 20


def test_bpf_lsm_active() -> None:
    assert "bpf" in Path("/sys/kernel/security/lsm").read_text().split(",")


def test_root_is_writable_overlay_and_loopback_up() -> None:
    assert _mounts()["/"] == "overlay"
    probe = Path(__file__).with_name(".vmtier-write-probe")
    probe.write_text("guest writes land in the tmpfs overlay\n")  # never reaches the host
    probe.unlink()
    assert int(Path("/sys/class/net/lo/flags").read_text(), 16) & 0x1  # IFF_UP
