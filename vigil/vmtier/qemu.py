"""Running one guest under QEMU: accelerator choice, command line, hard timeout, output capture."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .hostdeps import QEMU
from .initramfs import EXIT_MARKER, MOUNT_TAG

MEMORY = "2G"
CPUS = 2


def choose_accel(kvm_dev: Path = Path("/dev/kvm"), cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """KVM only with real hardware virtualisation: a kvm-pvm /dev/kvm (no vmx/svm) hangs stock
    kernels, so that case, like no /dev/kvm at all, uses TCG."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        flags = ""
    hw = re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M) is not None
    return "kvm" if hw and os.access(kvm_dev, os.R_OK | os.W_OK) else "tcg"


def kernel_cmdline(extra: str = "") -> str:
    # panic=-1 + -no-reboot: a panic ends QEMU at once instead of hanging until the timeout.
    # mitigations=off: speculative-execution mitigations only slow down emulation.
    # loglevel=5 keeps kernel warnings (WARN splats, BPF oddities) in console.log for diagnosis.
    base = "console=ttyS0 panic=-1 rdinit=/init quiet loglevel=5 mitigations=off random.trust_cpu=on"
    return f"{base} {extra}".strip()


def qemu_argv(vmlinuz: Path, initrd: Path, console_log: Path, output_log: Path,
              accel: str, append: str) -> list[str]:
    # Single-threaded TCG: with one host thread per vCPU (MTTCG), the kernel's live code
    # patching (static keys flipped when tracepoints/perf events are enabled) raced and
    # oopsed the guest with int3 in __schedule now and then.
    cpu = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg,thread=single", "-cpu", "max"]
    return [
        QEMU, *cpu, "-smp", str(CPUS), "-m", MEMORY,
        "-nodefaults", "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", append,
        # QEMU itself refuses writes (readonly=on); the guest writes into a tmpfs overlay.
        "-virtfs", f"local,path=/,mount_tag={MOUNT_TAG},security_model=none,readonly=on,multidevs=remap",
        "-serial", f"file:{console_log}",  # ttyS0: kernel console + init diagnostics + exit marker
        "-serial", f"file:{output_log}",  # ttyS1: the command's stdout/stderr
    ]


@dataclass
class GuestResult:
    exit_code: int | None  # None: the guest never reported one (crash, panic, timeout)
    timed_out: bool
    seconds: float
    boot_seconds: float | None  # until init started the command
    console: str
    output: str
    qemu_stderr: str


def run_guest(argv: list[str], workdir: Path, timeout: float,
              on_output: Callable[[str], None]) -> GuestResult:
    """Run QEMU; stream the guest command's output lines to on_output; kill at the timeout."""
    console_log = workdir / "console.log"
    output_log = workdir / "output.log"
    for f in (console_log, output_log):
        f.write_bytes(b"")
    qemu_err = workdir / "qemu.stderr"
    t0 = time.monotonic()
    boot_s: float | None = None
    timed_out = False
    pending = b""
    with open(qemu_err, "wb") as err, open(output_log, "rb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            while True:
                rc = proc.poll()
                chunk = out.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        on_output(line.decode(errors="replace").rstrip("\r"))
                if boot_s is None and b"starting command" in console_log.read_bytes():
                    boot_s = time.monotonic() - t0
                if rc is not None:
                    break
                if time.monotonic() - t0 > timeout:
                    timed_out = True
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(0.2)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        rest = pending + out.read()
        if rest:
            for line in rest.decode(errors="replace").split("\n"):
                if line.strip("\r"):
                    on_output(line.rstrip("\r"))
    console = console_log.read_text(errors="replace")
    m = re.search(re.escape(EXIT_MARKER) + r"(\d+)", console)
    return GuestResult(
        exit_code=int(m.group(1)) if m else None,
        timed_out=timed_out,
        seconds=time.monotonic() - t0,
        boot_seconds=boot_s,
        console=console,
        output=output_log.read_text(errors="replace"),
        qemu_stderr=qemu_err.read_text(errors="replace"),
    )


def qemu_usable() -> str | None:
    """Why QEMU cannot run here, or None."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found"
    r = subprocess.run([QEMU, "-version"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"{QEMU} -version failed: {r.stderr.strip()[:200]}"
    return None

