"""An overlay mount a test (or bench) made, as a container's root file system is: its layers
on a tmpfs mounted for it, both mounts removed once the block is over (also on failure)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vigil.kernel import sys as ksys


@contextmanager
def overlay_mount(fill_lower: Callable[[Path], None], prefix: str = "vigil-ovl-",
                  strict_unmount: bool = False) -> Iterator[Path]:
    """Yields the overlay's root; `fill_lower(lower)` writes its files first (they sit in the
    lower layer, as an image's do). strict_unmount: a block that ends normally unmounts both
    not lazily, so anything still holding them fails it (EBUSY)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    mounted: list[str] = []
    try:
        ksys.mount("tmpfs", str(base), "tmpfs")
        mounted.append(str(base))
        for sub in ("lower", "upper", "work", "root"):
            (base / sub).mkdir()
        fill_lower(base / "lower")
        root = base / "root"
        ksys.mount("overlay", str(root), "overlay",
                   data=f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work")
        mounted.append(str(root))
        yield root
        while strict_unmount and mounted:
            ksys.umount(mounted[-1], 0)
            mounted.pop()
    finally:
        for m in reversed(mounted):
            ksys.umount(m)
        os.rmdir(base)
