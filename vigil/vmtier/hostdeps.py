"""Host packages the tier needs, installed with apt only when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from . import Skip
from .log import log

QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")

# package -> how to tell it is already there
_NEEDED: dict[str, Callable[[], bool]] = {
    "qemu-system-x86": lambda: shutil.which(QEMU) is not None,
    "busybox-static": lambda: BUSYBOX.is_file() and _is_static(BUSYBOX),
    "kmod": lambda: shutil.which("depmod") is not None or Path("/usr/sbin/depmod").exists(),
}


def _is_static(path: Path) -> bool:
    # A dynamic busybox (package "busybox") would not run inside the initramfs.
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return b"/lib64/ld-linux" not in head and b"ld-linux-x86-64" not in head


def missing_packages() -> list[str]:
    return [pkg for pkg, present in _NEEDED.items() if not present()]


def ensure_host_packages() -> None:
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise Skip(f"need root to apt-get install {' '.join(missing)}")
    if shutil.which("apt-get") is None:
        raise Skip(f"no apt-get to install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    log(f"apt-get install {' '.join(missing)}")
    if subprocess.run(cmd, env=env).returncode != 0:
        # Stale package lists on a fresh box: refresh once, then retry.
        subprocess.run(["apt-get", "update", "-qq"], env=env)
        if subprocess.run(cmd, env=env).returncode != 0:
            raise Skip(f"apt-get install {' '.join(missing)} failed")
    still = missing_packages()
    if still:
        raise Skip(f"packages still missing after install: {' '.join(still)}")
