"""Guest-side tests: run by `python -m vigil.vmtier run` inside QEMU guests (make test-vm).

Every file here runs once per guest kernel (6.1, 6.12) in a single boot per kernel, as root, with
the host root shared read-only under a writable tmpfs overlay; bpffs, tracefs, debugfs, securityfs
and cgroup2 (/sys/fs/cgroup/unified) are mounted and build/bpf/*.o from `make all` are visible.
VIGIL_VM_KERNEL holds the guest's `uname -r`. Keep tests few and short: user space runs 15-25x
slower under TCG. Debug with `python -m vigil.vmtier shell-cmd --kernel 6.12 -- <cmd...>`.

On the host (plain `pytest` from the repo root) this folder is not collected: the host kernel has
no kprobes/trampolines, and the VM tier runs these tests where they mean something.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vmagent import Running

IN_GUEST = "VIGIL_VM_KERNEL" in os.environ
if not IN_GUEST:
    collect_ignore_glob = ["*"]
else:
    # Test files live on a guest tmpfs: when the checkout is under /tmp, the guest's /tmp is
    # the shared 9p+overlay root, whose inode numbers differ from what BPF programs see.
    import tempfile

    os.environ["TMPDIR"] = "/dev/shm"
    tempfile.tempdir = None

REPO_ROOT = Path(__file__).resolve().parents[2]
BPF_OBJ = Path(os.environ.get("VIGIL_VM_BPF_DIR", REPO_ROOT / "build" / "vm" / "bpf")) / "vmcheck.bpf.o"


@pytest.fixture(scope="session")
def vm_kernel() -> str:
    return os.environ["VIGIL_VM_KERNEL"]


@pytest.fixture
def vmcheck_path() -> str:
    if not BPF_OBJ.exists():
        pytest.fail(f"{BPF_OBJ} missing: the runner (python -m vigil.vmtier) compiles it before booting")
    return str(BPF_OBJ)


@pytest.fixture
def load_vmcheck(vmcheck_path: str) -> Iterator:
    """load_vmcheck(*prog_names) -> a loaded and attached BpfObject (the project's own libbpf
    binding) with the test's pid as target; always detached and closed at teardown."""
    import struct

    from vigil.kernel import BpfObject

    objs: list[BpfObject] = []

    def load(*progs: str) -> BpfObject:
        obj = BpfObject.open(vmcheck_path)
        objs.append(obj)
        for name, prog in obj.programs.items():
            prog.set_autoload(name in progs)
        obj.load()
        obj.map("target").update(struct.pack("<I", 0), struct.pack("<I", os.getpid()))
        for p in progs:
            obj.program(p).attach()
        return obj

    yield load
    for obj in objs:
        obj.close()


@pytest.fixture(scope="module")
def agent() -> Iterator[Running]:
    """One agent (vmagent.Running) for the test file, stopped and closed after its last test."""
    from vmagent import Running  # here: the host, which collects nothing here, need not import the agent

    r = Running()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def work() -> Iterator[Path]:
    """A folder of the test's own with target.txt and a symlink to it, `link` (a file opened
    through a link: the policies' path and follow-link hooks); removed after. A file whose
    tests need other files has its own `work`."""
    d = Path(tempfile.mkdtemp(prefix="vigil-vm-"))
    try:
        (d / "target.txt").write_text("t\n")
        os.symlink(d / "target.txt", d / "link")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
