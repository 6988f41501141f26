"""BPF file system pins for --keep-sensors-on-exit: attachments that outlive the agent.

While a `PinDir` is active, every link the agent creates is pinned under
`<bpf-dir>/<run>/` at once (so a SIGKILLed agent leaves its enforcement attached too), and
the process sensor pins its ring buffer and drop counters beside them. `keep()` at a clean
exit leaves them attached; a link closed normally (policy deleted) takes its pin with it.

The next agent finds such runs with `previous_runs()`: it reads what the old ring buffer
collected while no agent ran, then `release()`s the run (unpinning detaches the old
programs), after its own sensors are attached, so enforcement has no gap.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

from vigil.kernel import objects
from vigil.kernel.objects import Link, Map
from vigil.kernel.sys import mount, mounts

log = logging.getLogger("vigil.kernel.pins")

BPF_FS = "/sys/fs/bpf"
RUN_RE = re.compile(r"run-\d+-\d+")


def _is_bpffs(path: str) -> bool:
    """Whether `path` lies on a BPF file system (the mount holding it, from /proc/mounts)."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    for _src, mp, fs in mounts():
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
            best, fstype = mp, fs
    return fstype == "bpf"


def resolve_dir(bpf_dir: str) -> Path:
    """`--bpf-dir`: an absolute path on a BPF file system, or a name under /sys/fs/bpf
    (mounted there when nothing is)."""
    if os.path.isabs(bpf_dir):
        parent = os.path.dirname(bpf_dir.rstrip("/")) or "/"
        if not _is_bpffs(bpf_dir if os.path.isdir(bpf_dir) else parent):
            raise ValueError(f"--bpf-dir {bpf_dir}: not on a BPF file system (mount -t bpf bpf DIR)")
        return Path(bpf_dir)
    if not _is_bpffs(BPF_FS):
        os.makedirs(BPF_FS, exist_ok=True)
        mount("bpf", BPF_FS, "bpf")
        log.info("mounted the BPF file system at %s", BPF_FS)
    return Path(BPF_FS) / bpf_dir


class PinDir:
    """This run's pins; active (every new link pinned) between start() and keep()/stop()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / f"run-{os.getpid()}-{time.time_ns()}"
        self._links: list[Link] = []
        self._n = 0

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        objects.pin_links = self._pin

    def _pin(self, link: Link) -> None:
        self._n += 1
        # no '.': the bpf file system refuses a name with one (EPERM), e.g. a uprobe on libc.so.6
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", link.desc)[:200]
        link.pin(str(self.dir / f"link-{self._n}-{name}"))
        self._links = [k for k in self._links if k.fd >= 0] + [link]

    def pin_map(self, m: Map, name: str) -> None:
        m.pin(str(self.dir / f"map-{name}"))

    def keep(self) -> None:
        """Clean exit with --keep-sensors-on-exit: every pinned link stays attached."""
        objects.pin_links = None
        for link in self._links:
            if link.fd >= 0:
                link.keep()
        log.info("keeping %d attachments pinned in %s for the next start", len(self._links), self.dir)

    def stop(self) -> None:
        """Clean exit without keeping: the links unpin as they close; remove the rest."""
        objects.pin_links = None
        shutil.rmtree(self.dir, ignore_errors=True)


class PreviousRun:
    """What an agent that was killed or kept its sensors left in the BPF file system."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def links(self) -> list[Path]:
        return sorted(self.path.glob("link-*"))

    def open_map(self, name: str) -> Map | None:
        p = self.path / f"map-{name}"
        return Map.open_pinned(str(p)) if p.exists() else None

    def release(self) -> None:
        """Unpin everything: the old programs detach once nothing else holds them."""
        shutil.rmtree(self.path, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<previous run {self.path.name}: {len(self.links())} links>"


def previous_runs(root: Path, exclude: Path | None = None) -> list[PreviousRun]:
    if not root.is_dir():
        return []
    return [PreviousRun(p) for p in sorted(root.iterdir()) if RUN_RE.fullmatch(p.name) and p != exclude]
