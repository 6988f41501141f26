"""Host-side checks of the VM tier's pure helpers (no QEMU, no network)."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vigil.vmtier import Skip, TierError, initramfs, kernels, qemu, runner
from vigil.vmtier.cpio import NewcWriter, read_newc

MODULES_DEP = """\
kernel/fs/netfs/netfs.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio.ko.xz
"""


def test_module_order_puts_dependencies_first_and_skips_builtins() -> None:
    dep = kernels.parse_modules_dep(MODULES_DEP)
    order = kernels.module_load_order(dep, {"virtio_pci"}, initramfs.WANTED_MODULES)
    assert order == [
        "kernel/fs/netfs/netfs.ko.xz",
        "kernel/net/9p/9pnet.ko.xz",
        "kernel/net/9p/9pnet_virtio.ko.xz",
        "kernel/fs/9p/9p.ko.xz",
        "kernel/fs/overlayfs/overlay.ko.xz",
    ]


def test_module_missing_everywhere_is_an_error() -> None:
    with pytest.raises(TierError, match="9p"):
        kernels.module_load_order({}, set(), ["9p"])


PIN = kernels.KernelPin("6.12", "linux-image-6.12.95+deb12-amd64", "6.12.95-1~bpo12+1",
                        r"linux-image-6\.12\.\d+\+deb12-amd64")


def test_choose_prefers_the_pin() -> None:
    avail = [("linux-image-6.12.95+deb12-amd64", "6.12.95-1~bpo12+1", "bpo"),
             ("linux-image-6.12.117+deb12-amd64", "6.12.117-1~deb12u1", "sec")]
    assert kernels.choose(PIN, avail) == (PIN.package, PIN.version)


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg --compare-versions")
def test_choose_falls_back_to_newest_of_series() -> None:
    avail = [("linux-image-6.12.9+deb12-amd64", "6.12.9-1~bpo12+1", "bpo"),
             ("linux-image-6.12.117+deb12-amd64", "6.12.117-1~deb12u1", "sec"),
             ("linux-image-6.12.117+deb12-cloud-amd64", "6.12.117-1~deb12u1", "sec"),
             ("linux-image-6.12.100+deb12-amd64", "6.12.100-1~deb12u1", "sec")]
    assert kernels.choose(PIN, avail) == ("linux-image-6.12.117+deb12-amd64", "6.12.117-1~deb12u1")
    assert kernels.choose(PIN, []) is None


def test_cpio_round_trip() -> None:
    import io

    buf = io.BytesIO()
    w = NewcWriter(buf)
    w.dir("bin")
    w.file("bin/x", b"hello", 0o755)
    w.symlink("bin/sh", "busybox")
    w.close()
    data = buf.getvalue()
    assert len(data) % 512 == 0
    entries = read_newc(data)
    assert stat.S_ISDIR(entries["bin"][0])
    assert entries["bin/x"] == (stat.S_IFREG | 0o755, b"hello")
    assert entries["bin/sh"][1] == b"busybox"


_CPIO = ["cpio"] if shutil.which("cpio") else ["busybox", "cpio"] if shutil.which("busybox") else None


@pytest.mark.skipif(_CPIO is None, reason="needs cpio or busybox to cross-check the archive")
def test_cpio_readable_by_another_cpio(tmp_path: Path) -> None:
    out = tmp_path / "a.cpio"
    with open(out, "wb") as f:
        w = NewcWriter(f)
        w.file("init", b"#!/bin/sh\n", 0o755)
        w.close()
    listing = subprocess.run([*_CPIO, "-it"], stdin=open(out, "rb"), capture_output=True, text=True)
    assert listing.stdout.split() == ["init"]


def test_init_script_is_valid_sh(tmp_path: Path) -> None:
    script = tmp_path / "init"
    script.write_text(initramfs.INIT_SCRIPT)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    assert initramfs.EXIT_MARKER in initramfs.INIT_SCRIPT


def test_command_script_quotes_arguments() -> None:
    s = initramfs.command_script(["python", "-c", "print('a b')"], "/work/x y", {"VIGIL_VM_KERNEL": "6.1"})
    assert "export VIGIL_VM_KERNEL=6.1" in s
    assert "cd '/work/x y'" in s
    assert s.rstrip().endswith("""exec python -c 'print('"'"'a b'"'"')'""")


def test_accel_needs_hw_virt_flags_and_writable_kvm(tmp_path: Path) -> None:
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    cpu_pvm = tmp_path / "cpuinfo1"
    cpu_pvm.write_text("flags\t\t: fpu vme sse2 hypervisor\n")
    cpu_vmx = tmp_path / "cpuinfo2"
    cpu_vmx.write_text("flags\t\t: fpu vme vmx sse2\n")
    assert qemu.choose_accel(kvm, cpu_pvm) == "tcg"
    assert qemu.choose_accel(tmp_path / "nokvm", cpu_vmx) == "tcg"
    assert qemu.choose_accel(kvm, cpu_vmx) == "kvm"


def test_qemu_argv_is_readonly_and_bounded(tmp_path: Path) -> None:
    argv = qemu.qemu_argv(tmp_path / "vmlinuz", tmp_path / "initrd", tmp_path / "c", tmp_path / "o",
                          "tcg", qemu.kernel_cmdline())
    joined = " ".join(argv)
    assert "readonly=on" in joined and "-no-reboot" in argv and "panic=-1" in joined
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"


def test_non_x86_host_is_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.platform, "machine", lambda: "aarch64")
    with pytest.raises(Skip, match="x86_64"):
        runner.check_host()


def test_initramfs_build_from_fake_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lzma

    rel = "6.99.0-test-amd64"
    mods = tmp_path / "lib" / "modules" / rel
    for line in MODULES_DEP.splitlines():
        p = mods / line.split(":")[0]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(lzma.compress(b"ELF:" + p.name.encode()))
    (mods / "modules.dep").write_text(MODULES_DEP)
    (mods / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    fake_busybox = tmp_path / "busybox"
    fake_busybox.write_bytes(b"\x7fELF")
    monkeypatch.setattr(initramfs, "BUSYBOX", fake_busybox)
    k = kernels.Kernel("6.99", "linux-image-test", "1", rel, tmp_path)
    out = initramfs.build(k, initramfs.command_script(["true"], "/", {}), tmp_path / "i.cpio.gz")
    entries = read_newc(gzip.decompress(out.read_bytes()))
    assert entries["lib/modules/order"][1].decode().split() == [
        "netfs.ko", "9pnet.ko", "9pnet_virtio.ko", "9p.ko", "overlay.ko"]
    assert entries["lib/modules/9p.ko"][1] == b"ELF:9p.ko.xz"
    assert "init" in entries and "vmtier/cmd.sh" in entries
