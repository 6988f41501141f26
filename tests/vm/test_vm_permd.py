"""vigil-permd on the guest kernels: a file of overlayfs (the root file system of every
container) is remembered where the kernel names files by a handle that cannot open them
(AT_HANDLE_FID, Linux 6.5: the 6.12 guest), and asked about at every exec where it cannot
(6.1); the rules stand either way. The overlay's layers are on a tmpfs mounted here."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vigil.enforce.permd import PermissionHelper
from vigil.enforce.permtable import Cond, Rule, Table, plan_marks
from vigil.kernel import sys as ksys

EXEC = frozenset({"exec"})


def release(kernel: str) -> tuple[int, int]:
    major, minor = kernel.split(".")[:2]
    return int(major), int(minor.split("-")[0].split("+")[0])


@pytest.fixture
def overlay() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="vigil-vm-ovl-"))
    mounted: list[str] = []
    try:
        ksys.mount("tmpfs", str(base), "tmpfs")
        mounted.append(str(base))
        for sub in ("lower/allowed", "lower/blocked", "upper", "work", "root"):
            (base / sub).mkdir(parents=True)
        for sub in ("allowed", "blocked"):
            shutil.copy2(os.path.realpath("/bin/true"), base / "lower" / sub / "tool")
        root = base / "root"
        ksys.mount("overlay", str(root), "overlay",
                   data=f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work")
        mounted.append(str(root))
        yield root
    finally:
        for m in reversed(mounted):
            ksys.umount(m)
        os.rmdir(base)


def run(path: Path) -> int | str:
    try:
        return subprocess.run([str(path)], timeout=60).returncode
    except PermissionError:
        return "EPERM"


def test_overlayfs_files_are_remembered_where_the_kernel_can_name_them(overlay: Path, vm_kernel: str) -> None:
    never = (Cond("path", "Prefix", (f"{overlay}/",)), Cond("path", "Postfix", ("/vigil-never",)))
    rules = [Rule(1, 0, EXEC, "override", conds=never),
             Rule(2, 0, EXEC, "override", conds=(Cond("path", "Prefix", (f"{overlay}/blocked/",)),))]
    with PermissionHelper() as h:
        h.push(Table(rules, plan_marks(rules), exempt=(os.getpid(),)))
        st0 = h.stats()
        assert [run(overlay / "allowed" / "tool") for _ in range(3)] == [0, 0, 0]
        st = h.stats()
        assert run(overlay / "blocked" / "tool") == "EPERM"
    seen = (st["events"] - st0["events"], st["cached"] - st0["cached"])
    assert seen == ((1, 1) if release(vm_kernel) >= (6, 5) else (3, 0)), vm_kernel
