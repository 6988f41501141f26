"""Guest kernels: fetch Debian kernel packages with a private apt config, unpack, index modules.

Kernels are only downloaded and unpacked (`dpkg-deb -x`), never installed on the host. The apt
state (sources, lists, cache) lives under build/vm/apt so the host's apt config is not touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

from . import BUILD_DIR, Skip, TierError
from .log import log


@dataclass(frozen=True)
class KernelPin:
    series: str  # what --kernel accepts
    package: str  # exact binary package CI uses
    version: str  # exact Debian version of that package
    name_re: str  # packages of the same series/flavour, for the fallback


# The one place kernel versions are pinned. Standard flavour only: the cloud flavour has no 9p
# and the 6.12 cloud kernel crashed at random under TCG. Bump these when the archive drops them
# (the runner falls back to the newest of the series with a warning meanwhile).
PINS: dict[str, KernelPin] = {
    "6.1": KernelPin(
        series="6.1",
        package="linux-image-6.1.0-56-amd64",
        version="6.1.192-2",
        name_re=r"linux-image-6\.1\.0-\d+-amd64",
    ),
    "6.12": KernelPin(
        series="6.12",
        package="linux-image-6.12.95+deb12-amd64",
        version="6.12.95-1~bpo12+1",
        name_re=r"linux-image-6\.12\.\d+\+deb12-amd64",
    ),
}

_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_MIRROR = "http://deb.debian.org/debian"
_SOURCES = (
    f"deb [signed-by={_KEYRING}] {_MIRROR} bookworm main\n"
    f"deb [signed-by={_KEYRING}] {_MIRROR} bookworm-updates main\n"
    f"deb [signed-by={_KEYRING}] {_MIRROR}-security bookworm-security main\n"
    f"deb [signed-by={_KEYRING}] {_MIRROR} bookworm-backports main\n"
)


@dataclass(frozen=True)
class Kernel:
    series: str
    package: str
    version: str  # Debian package version
    release: str  # `uname -r` in the guest, e.g. 6.12.95+deb12-amd64
    root: Path  # unpacked package tree

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release


class PrivateApt:
    """apt-get/apt-cache pointed at our own sources, lists and cache directories."""

    def __init__(self, base: Path) -> None:
        self.base = base
        for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        sources = base / "sources.list"
        if not sources.exists() or sources.read_text() != _SOURCES:
            sources.write_text(_SOURCES)

    def opts(self) -> list[str]:
        b = self.base
        return [
            "-o", f"Dir::Etc::sourcelist={b / 'sources.list'}",
            "-o", f"Dir::Etc::sourceparts={b / 'sources.list.d'}",
            "-o", f"Dir::Etc::preferences={b / 'preferences'}",
            "-o", f"Dir::Etc::preferencesparts={b / 'preferences.d'}",
            "-o", f"Dir::State::Lists={b / 'lists'}",
            "-o", f"Dir::Cache={b / 'cache'}",
            # Some images disable the binary cache; keep it off here too so nothing lands elsewhere.
            "-o", "Dir::Cache::pkgcache=",
            "-o", "Dir::Cache::srcpkgcache=",
            "-o", "Acquire::Languages=none",
            # We download into a root-owned build dir; the _apt sandbox user could not write there.
            "-o", "APT::Sandbox::User=root",
        ]

    def has_lists(self) -> bool:
        return any((self.base / "lists").glob("*_Packages*"))

    def update(self) -> None:
        log("apt-get update (private lists for bookworm, -security, -backports)")
        r = subprocess.run(["apt-get", *self.opts(), "-qq", "update"], capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip(f"apt-get update of the private kernel sources failed: {r.stderr.strip()[-400:]}")

    def cache(self, *args: str) -> str:
        r = subprocess.run(["apt-cache", *self.opts(), *args], capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else ""

    def versions(self, packages: list[str]) -> list[tuple[str, str, str]]:
        """(package, version, origin line) for every archive entry of the packages."""
        out: list[tuple[str, str, str]] = []
        if not packages:
            return out
        for line in self.cache("madison", *packages).splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3:
                out.append((parts[0], parts[1], parts[2]))
        return out

    def download(self, package: str, version: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["apt-get", *self.opts(), "-qq", "download", f"{package}={version}"],
            cwd=dest, capture_output=True, text=True,
        )
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if r.returncode != 0 or not debs:
            raise Skip(f"apt-get download {package}={version} failed: {r.stderr.strip()[-400:]}")
        return debs[-1]


def debian_version_cmp(a: str, b: str) -> int:
    """Compare Debian versions with dpkg itself (its rules for ~ and + are subtle)."""
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    return -1 if lt else 1


def choose(pin: KernelPin, available: list[tuple[str, str, str]]) -> tuple[str, str] | None:
    """The pinned (package, version) if the archive has it, else the newest of the series."""
    if any(p == pin.package and v == pin.version for p, v, _ in available):
        return pin.package, pin.version
    series = [(p, v) for p, v, _ in available if re.fullmatch(pin.name_re, p)]
    if not series:
        return None
    return max(series, key=cmp_to_key(lambda x, y: debian_version_cmp(x[1], y[1])))


def _resolve(apt: PrivateApt, pin: KernelPin) -> tuple[str, str] | None:
    prefix = pin.package.split("-amd64")[0].rsplit(".", 1)[0]  # e.g. linux-image-6.12
    names = [n for n in apt.cache("pkgnames", prefix).split() if re.fullmatch(pin.name_re, n)]
    if pin.package not in names:
        names.append(pin.package)
    return choose(pin, apt.versions(names))


def fetch(series: str) -> Kernel:
    """Download (cached) and unpack the kernel of a series; build its modules.dep."""
    pin = PINS[series]
    kdir = BUILD_DIR / "kernels"
    done = kdir / f"{pin.package}_{pin.version}.done"
    if done.exists():
        # Fast path: the pinned kernel is already unpacked; no apt at all.
        return _kernel_from(pin.series, pin.package, pin.version, Path(done.read_text().strip()))

    apt = PrivateApt(BUILD_DIR / "apt")
    fresh = not apt.has_lists()
    if fresh:
        apt.update()
    picked = _resolve(apt, pin)
    if not fresh and picked != (pin.package, pin.version):
        apt.update()  # the lists may just be old
        picked = _resolve(apt, pin)
    if picked is None:
        raise Skip(f"no {series} kernel package matching {pin.name_re} in the archive")
    package, version = picked
    if (package, version) != (pin.package, pin.version):
        log(f"WARNING: pinned {pin.package}={pin.version} is gone from the archive; "
            f"using {package}={version}. Update PINS in vigil/vmtier/kernels.py.")
        alt_done = kdir / f"{package}_{version}.done"
        if alt_done.exists():
            return _kernel_from(series, package, version, Path(alt_done.read_text().strip()))
        done = alt_done

    log(f"downloading {package}={version}")
    deb = apt.download(package, version, kdir / "debs")
    root = kdir / f"{package}_{version}"
    if root.exists():
        shutil.rmtree(root)
    log(f"unpacking {deb.name}")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    kernel = _kernel_from(series, package, version, root)
    # Debian ships no modules.dep; depmod (kmod) builds it for the unpacked tree.
    depmod = shutil.which("depmod") or "/usr/sbin/depmod"
    subprocess.run([depmod, "-b", str(root), kernel.release], check=True)
    deb.unlink()  # the unpacked tree is the cache; the .deb is 70-110 MB
    done.write_text(str(root) + "\n")
    return kernel


def _kernel_from(series: str, package: str, version: str, root: Path) -> Kernel:
    mods = sorted((root / "lib" / "modules").iterdir()) if (root / "lib" / "modules").is_dir() else []
    if len(mods) != 1:
        raise TierError(f"{root}: expected one lib/modules/<release> directory, found {len(mods)}")
    k = Kernel(series=series, package=package, version=version, release=mods[0].name, root=root)
    if not k.vmlinuz.is_file():
        raise TierError(f"{package}: no {k.vmlinuz}")
    return k


# --- modules -------------------------------------------------------------------------------------

def _modname(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base).replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """module name -> (relative path, dependency paths) from a modules.dep file."""
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, deps = line.split(":", 1)
        out[_modname(path)] = (path.strip(), deps.split())
    return out


def module_load_order(dep: dict[str, tuple[str, list[str]]], builtin: set[str],
                      wanted: list[str], optional: frozenset[str] = frozenset()) -> list[str]:
    """Relative module paths to insmod, dependencies first; built-in modules are skipped."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in dep:
            if name in optional:
                return
            raise TierError(f"module {name} is neither built in nor in modules.dep")
        path, deps = dep[name]
        for d in deps:
            visit(_modname(d))
        order.append(path)

    for w in wanted:
        visit(w)
    return order


def read_builtin(modules_dir: Path) -> set[str]:
    f = modules_dir / "modules.builtin"
    return {_modname(line.strip()) for line in f.read_text().splitlines()} if f.exists() else set()
