"""--keep-sensors-on-exit pins each link under a name made from what it attaches to
(vigil/kernel/pins.py PinDir). The bpf file system refuses a name with a dot (EPERM): a
uprobe on a shared library (libc.so.6) failed to attach while pins were on, and the feature
probe's own uprobe on libc, run after the pins started, made the agent report no uprobes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel


def _libc() -> str:
    return next(ln.split()[-1] for ln in Path("/proc/self/maps").read_text().splitlines() if "/libc.so" in ln)


CASES = [  # (case, the file the uprobe attaches to, a symbol in it; "": a fixed offset, never hit)
    ("no-dot", lambda: os.path.realpath("/bin/true"), ""),
    ("dotted-path", _libc, "getpid"),  # /usr/lib/x86_64-linux-gnu/libc.so.6
]


@pytest.mark.parametrize("case, target, symbol", CASES, ids=[c[0] for c in CASES])
def test_links_pin_under_names_the_bpf_fs_takes(bpffs: Path, case: str, target, symbol: str) -> None:  # type: ignore[no-untyped-def]
    from vigil.kernel import BpfObject, pins
    from vigil.kernel.elfsym import func_offset
    from vigil.kernel.paths import bpf_object

    path = target()
    assert "." not in path or case == "dotted-path", path
    offset = func_offset(path, symbol) if symbol else 0x1000  # the probe counts nothing unarmed
    pd = pins.PinDir(bpffs / "vigil")
    pd.start()
    obj = BpfObject.open(bpf_object("probe"))
    try:
        for name, prog in obj.programs.items():
            prog.set_autoload(name == "probe_uprobe")
        obj.load()
        obj.program("probe_uprobe").attach_uprobe(path, offset)
        (pinned,) = pd.dir.glob("link-*")
        assert "." not in pinned.name
    finally:
        pd.stop()
        obj.close()
