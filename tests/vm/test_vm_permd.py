"""vigil-permd on the guest kernels: a file of overlayfs (the root file system of every
container) is remembered where the kernel names files by a handle that cannot open them
(AT_HANDLE_FID, Linux 6.5: the 6.12 guest), and asked about at every exec where it cannot
(6.1); the rules stand either way. The overlay's layers are on a tmpfs mounted here."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.overlaymount import overlay_mount
from vigil.enforce.permd import PermissionHelper
from vigil.enforce.permtable import Cond, Rule, Table, plan_marks

EXEC = frozenset({"exec"})


def release(kernel: str) -> tuple[int, int]:
    major, minor = kernel.split(".")[:2]
    return int(major), int(minor.split("-")[0].split("+")[0])


def _tools(lower: Path) -> None:
    for sub in ("allowed", "blocked"):
        (lower / sub).mkdir()
        shutil.copy2(os.path.realpath("/bin/true"), lower / sub / "tool")


@pytest.fixture
def overlay() -> Iterator[Path]:
    with overlay_mount(_tools, prefix="vigil-vm-ovl-") as root:
        yield root


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
