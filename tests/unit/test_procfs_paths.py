"""/proc paths of a chrooted process, made relative to its root as the kernel's walk makes them."""
from __future__ import annotations

import pytest

from vigil.process.procfs import _under_root


@pytest.mark.parametrize("path, root, want", [
    ("/srv/jail/bin/sh", "/srv/jail", "/bin/sh"),
    ("/srv/jail", "/srv/jail", "/"),
    ("/srv/jail2/bin/sh", "/srv/jail", "/srv/jail2/bin/sh"),  # a sibling, not under the root
    ("/usr/bin/python3", "/srv/jail", "/usr/bin/python3"),    # outside the root: kept, nothing invented
    ("", "/srv/jail", ""),                                    # unreadable: stays unknown
])
def test_under_root(path: str, root: str, want: str) -> None:
    assert _under_root(path, root) == want


@pytest.mark.parametrize("cwd_readable, flags, cwd", [
    (True, "procFS", "/tmp"),
    (False, "procFS rootcwd errorCWD", None),
])
def test_procfs_process_whose_cwd_cannot_be_read(monkeypatch: pytest.MonkeyPatch, cwd_readable: bool,
                                                 flags: str, cwd: str | None) -> None:
    """A process found in /proc whose cwd link cannot be read (it is exiting, or the link is
    refused): Tetragon's /proc reader flags it rootcwd errorCWD and sends no cwd; Vigil said
    nocwd, the word of a kernel exec event that had no cwd support."""
    import os
    import subprocess
    import sys
    import time

    from vigil.process import procfs
    from vigil.process.build import BuildOptions, EventBuilder
    from vigil.process.cache import ProcessCache
    from vigil.process.clock import WallClock

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd="/tmp")
    try:
        real = os.readlink

        def readlink(path: str) -> str:
            if not cwd_readable and path == f"/proc/{child.pid}/cwd":
                raise PermissionError(13, "Permission denied", path)
            return real(path)

        monkeypatch.setattr(procfs.os, "readlink", readlink)
        clock = WallClock()
        s = procfs.snapshot(child.pid, clock, "/sys/fs/cgroup", {})
        assert s is not None
        ev = EventBuilder(ProcessCache(), clock, BuildOptions("n", host_ns=(0,) * 10)).on_procfs(s, time.monotonic_ns())
        assert ev.process.flags == flags
        assert (ev.process.cwd or None) == cwd
    finally:
        child.kill()
        child.wait()
