"""A tiny initramfs: static busybox, the modules for 9p + overlay, and an /init that mounts the
host root read-only with a tmpfs overlay, prepares the kernel filesystems BPF needs, runs one
command in a chroot and powers off."""

from __future__ import annotations

import gzip
import io
import lzma
import shlex
import subprocess
from pathlib import Path

from . import TierError
from .cpio import NewcWriter
from .hostdeps import BUSYBOX
from .kernels import Kernel, module_load_order, parse_modules_dep, read_builtin

# What the guest must load; dependencies (netfs, fscache, virtio, ...) come from modules.dep.
WANTED_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]

EXIT_MARKER = "VIGIL-VMTIER-EXIT="
MOUNT_TAG = "hostroot"

# Runs as PID 1 under busybox sh. Diagnostics go to ttyS0 (console), the command's output to ttyS1.
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "vmtier-init: $*" > /dev/ttyS0; }
die() {
    say "FATAL: $*"
    echo "@MARKER@255" > /dev/ttyS0
    poweroff -f; echo o > /proc/sysrq-trigger; sleep 5
}
while read -r m; do
    insmod "/lib/modules/$m" || die "insmod $m failed"
done < /lib/modules/order
# The host root, read-only (QEMU enforces it too); cache=loose because nothing changes under us.
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose @TAG@ /lower \
    || die "mounting the host root over 9p failed"
mount -t tmpfs -o mode=0755,size=1G tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || die "overlay mount failed"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
# A checkout under /tmp (some CI runners) must stay visible, so then /tmp stays on the overlay.
[ -e /vmtier/keep-tmp ] || mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mount -t tmpfs -o mode=0755 tmpfs $R/run
mount -t bpf bpf $R/sys/fs/bpf || die "bpffs mount failed"
mount -t tracefs tracefs $R/sys/kernel/tracing || die "tracefs mount failed"
mount -t debugfs debugfs $R/sys/kernel/debug || die "debugfs mount failed"
mount -t securityfs securityfs $R/sys/kernel/security || die "securityfs mount failed"
# Same layout as the host: /sys/fs/cgroup a tmpfs, cgroup2 at /sys/fs/cgroup/unified.
mount -t tmpfs -o mode=0755 cgroup $R/sys/fs/cgroup || die "/sys/fs/cgroup missing"
mkdir -p $R/sys/fs/cgroup/unified
mount -t cgroup2 -o nsdelegate cgroup2 $R/sys/fs/cgroup/unified || die "cgroup2 mount failed"
ip link set lo up
hostname vigil-vm
mkdir -p $R/run/vmtier
cp /vmtier/cmd.sh $R/run/vmtier/cmd.sh
stty -F /dev/ttyS1 115200 raw -echo 2>/dev/null
say "starting command"
chroot $R /bin/sh /run/vmtier/cmd.sh > /dev/ttyS1 2>&1 < /dev/null
rc=$?
echo "@MARKER@$rc" > /dev/ttyS0
poweroff -f
echo o > /proc/sysrq-trigger
sleep 5
""".replace("@MARKER@", EXIT_MARKER).replace("@TAG@", MOUNT_TAG)


def command_script(argv: list[str], cwd: str, env: dict[str, str]) -> str:
    """The guest-side script: environment, working directory, then exec the command."""
    lines = ["#!/bin/sh"]
    base = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for k, v in {**base, **env}.items():
        lines.append(f"export {k}={shlex.quote(v)}")
    lines.append(f"cd {shlex.quote(cwd)} || exit 254")
    lines.append(f"exec {shlex.join(argv)}")
    return "\n".join(lines) + "\n"


def _module_bytes(path: Path) -> bytes:
    # busybox insmod cannot be relied on to decompress; do it here.
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return path.read_bytes()


def build(kernel: Kernel, script: str, out: Path, keep_paths: tuple[str, ...] = ()) -> Path:
    """keep_paths: host paths the command needs; a tmpfs is not mounted over /tmp if one is under it."""
    dep_file = kernel.modules_dir / "modules.dep"
    if not dep_file.exists():
        raise TierError(f"{dep_file} missing (depmod did not run?)")
    order = module_load_order(parse_modules_dep(dep_file.read_text()),
                              read_builtin(kernel.modules_dir), WANTED_MODULES)
    buf = io.BytesIO()
    w = NewcWriter(buf)
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "vmtier"):
        w.dir(d)
    w.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    w.file("init", INIT_SCRIPT.encode(), 0o755)
    names = []
    for rel in order:
        src = kernel.modules_dir / rel
        name = src.name.split(".ko")[0] + ".ko"
        w.file(f"lib/modules/{name}", _module_bytes(src))
        names.append(name)
    w.file("lib/modules/order", ("\n".join(names) + "\n").encode())
    w.file("vmtier/cmd.sh", script.encode(), 0o755)
    if any(p == "/tmp" or p.startswith("/tmp/") for p in keep_paths):
        w.file("vmtier/keep-tmp", b"")
    w.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1))
    return out
