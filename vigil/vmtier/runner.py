"""Orchestration: check the host, fetch kernels, build the guest BPF object, boot, report."""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import BUILD_DIR, REPO_ROOT, Skip, TierError, hostdeps, initramfs, kernels, qemu
from .log import log

DEFAULT_TIMEOUT = 480.0  # per boot; two boots must fit the 20 min budget on 2 cores under TCG
GUEST_BPF_SRC = REPO_ROOT / "tests" / "vm" / "bpf" / "vmcheck.bpf.c"
GUEST_BPF_DIR = BUILD_DIR / "bpf"
VMLINUX_H = REPO_ROOT / "build" / "vmlinux.h"


def check_host() -> None:
    """Raise Skip for environments that cannot run the tier at all."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise Skip(f"needs an x86_64 Linux host (this is {platform.system()} {platform.machine()})")
    if os.geteuid() != 0:
        raise Skip("needs root (QEMU must read the whole host root that the guest mounts)")
    avail_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail_kb = int(line.split()[1])
    except OSError:
        pass
    if avail_kb and avail_kb < 3 * 1024 * 1024:
        raise Skip(f"needs ~3 GiB free memory for a {qemu.MEMORY} guest ({avail_kb // 1024} MiB available)")
    hostdeps.ensure_host_packages()
    why = qemu.qemu_usable()
    if why:
        raise Skip(why)


@contextmanager
def _build_lock() -> Iterator[None]:
    # Several engineers/CI jobs may share a checkout: serialise apt, unpacking and compiling.
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def prepare(series: list[str]) -> list[kernels.Kernel]:
    check_host()
    out = []
    with _build_lock():
        for s in series:
            k = kernels.fetch(s)
            log(f"kernel {s}: {k.package}={k.version} ({k.release})")
            out.append(k)
        build_guest_bpf()
    return out


def build_guest_bpf() -> Path:
    """Compile tests/vm/bpf/vmcheck.bpf.c on the host against build/vmlinux.h (CO-RE relocates
    it to the guest kernel at load time)."""
    if not VMLINUX_H.exists():
        bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
        log(f"generating {VMLINUX_H} from the host BTF")
        VMLINUX_H.parent.mkdir(parents=True, exist_ok=True)
        with open(VMLINUX_H.with_suffix(".h.tmp"), "wb") as f:
            subprocess.run([bpftool, "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
                           stdout=f, check=True)
        VMLINUX_H.with_suffix(".h.tmp").rename(VMLINUX_H)
    GUEST_BPF_DIR.mkdir(parents=True, exist_ok=True)
    obj = GUEST_BPF_DIR / "vmcheck.bpf.o"
    if obj.exists() and obj.stat().st_mtime > max(GUEST_BPF_SRC.stat().st_mtime, VMLINUX_H.stat().st_mtime):
        return obj
    cmd = ["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall",
           "-I", str(REPO_ROOT / "build"), "-I", "/usr/include/x86_64-linux-gnu",
           "-c", str(GUEST_BPF_SRC), "-o", str(obj)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise TierError(f"compiling {GUEST_BPF_SRC.name} failed:\n{r.stderr}")
    return obj


def guest_python() -> str:
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def boot(kernel: kernels.Kernel, argv: list[str], cwd: str, timeout: float,
         prefix: str | None) -> qemu.GuestResult:
    # A fresh directory per boot so concurrent runs never share serial logs; kept on failure
    # (for a day) so the console log can be read.
    (BUILD_DIR / "runs").mkdir(parents=True, exist_ok=True)
    for old in (BUILD_DIR / "runs").iterdir():
        try:
            if time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # another run removed it first
    workdir = Path(tempfile.mkdtemp(prefix=f"{kernel.release}-", dir=BUILD_DIR / "runs"))
    env = {
        "VIGIL_VM_KERNEL": kernel.release,
        "VIGIL_VM_BPF_DIR": str(GUEST_BPF_DIR),
    }
    keep = (str(REPO_ROOT), cwd, os.path.realpath(argv[0]) if argv and argv[0].startswith("/") else "")
    initrd = initramfs.build(kernel, initramfs.command_script(argv, cwd, env), workdir / "initramfs.cpio.gz",
                             keep_paths=tuple(p for p in keep if p))
    accel = qemu.choose_accel()
    log(f"booting {kernel.release} ({accel}, timeout {timeout:.0f}s)")

    def show(line: str) -> None:
        print(f"{prefix}{line}" if prefix is not None else line, flush=True)

    argv_q = qemu.qemu_argv(kernel.vmlinuz, initrd, workdir / "console.log", workdir / "output.log",
                            accel, qemu.kernel_cmdline())
    res = qemu.run_guest(argv_q, workdir, timeout, show)
    if res.exit_code is None or res.timed_out:
        log(f"guest logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return res


def _explain(kernel: kernels.Kernel, res: qemu.GuestResult) -> str:
    if res.timed_out:
        return f"TIMEOUT after {res.seconds:.0f}s (guest killed)"
    if res.exit_code is None:
        return "guest died without reporting an exit code (panic or crash)"
    return f"exit code {res.exit_code}"


def _dump_console(kernel: kernels.Kernel, res: qemu.GuestResult, lines: int = 40) -> None:
    tag = f"[{kernel.series} console] "
    for line in res.console.splitlines()[-lines:]:
        print(tag + line.rstrip("\r"), file=sys.stderr)
    for line in res.qemu_stderr.splitlines()[-10:]:
        print(f"[{kernel.series} qemu] {line}", file=sys.stderr)


def run_tests(series: list[str], timeout: float, pytest_args: list[str]) -> int:
    ks = prepare(series)
    argv = [guest_python(), "-m", "pytest", "tests/vm", "-x", "-q", *pytest_args]
    summary: list[str] = []
    failed: list[str] = []
    t_all = time.monotonic()
    for k in ks:
        res = boot(k, argv, str(REPO_ROOT), timeout, prefix=f"[{k.series}] ")
        if res.boot_seconds is not None:
            timing = f"boot {res.boot_seconds:.1f}s + tests {res.seconds - res.boot_seconds:.1f}s"
        else:
            timing = "command never started"
        ok = res.exit_code == 0 and not res.timed_out
        line = (f"{k.series} ({k.package}={k.version}): {'PASS' if ok else 'FAIL'}: {_explain(k, res)}; "
                f"{timing}, total {res.seconds:.1f}s")
        summary.append(line)
        if not ok:
            failed.append(k.series)
            _dump_console(k, res)
        log(line)
    print("\nVM tier summary:")
    for line in summary:
        print("  " + line)
    print(f"  wall time {time.monotonic() - t_all:.1f}s")
    if failed:
        print(f"VM tier FAILED on kernel(s): {', '.join(failed)}")
        return 1
    return 0


def shell_cmd(series: str, argv: list[str], timeout: float) -> int:
    (k,) = prepare([series])
    res = boot(k, argv, os.getcwd(), timeout, prefix=None)
    if res.exit_code is None or res.timed_out:
        print(f"vmtier: {k.release}: {_explain(k, res)}", file=sys.stderr)
        _dump_console(k, res)
        return 125
    return res.exit_code


def fetch_only(series: list[str]) -> int:
    ks = prepare(series)
    for k in ks:
        # Build an initramfs once too, so module resolution problems show up here.
        with tempfile.TemporaryDirectory(dir=BUILD_DIR) as d:
            initramfs.build(k, initramfs.command_script(["true"], "/", {}), Path(d) / "initramfs.cpio.gz")
        print(f"{k.series}: {k.package}={k.version} release {k.release} at {k.root}")
    return 0
