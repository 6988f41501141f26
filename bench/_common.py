"""Shared helpers for the Vigil benchmarks (not a test module).

Everything here is careful to clean up after itself: agent subprocesses are
stopped with SIGINT (SIGKILL after a timeout) in ``finally`` blocks, children
are killed by pid only, temp dirs are removed, and ``assert_no_bpf_left``
checks that no vigil BPF program survived the run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VIGIL = str(ROOT / ".venv" / "bin" / "vigil")
BPFTOOL = "/usr/sbin/bpftool"

# ---------------------------------------------------------------- reporting


def emit_json(name: str, payload: dict[str, Any]) -> None:
    """The machine-readable last line of every benchmark."""
    print(json.dumps({"bench": name, **payload}, sort_keys=True), flush=True)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """SIGINT/SIGTERM unwind through the finally blocks (agent stop, child kill, temp
    dir removal) even when the benchmark was started in the background with SIGINT
    ignored."""
    signal.signal(signal.SIGINT, _raise_exit)
    signal.signal(signal.SIGTERM, _raise_exit)


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark loads BPF programs: run it as root")


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def vigil_bpf_progs() -> dict[int, str]:
    """id -> name of every loaded BPF program whose name contains 'vigil'."""
    try:
        out = subprocess.run([BPFTOOL, "-j", "prog", "show"], capture_output=True, text=True, timeout=10).stdout
        progs = json.loads(out or "[]")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    return {p["id"]: p.get("name", "") for p in progs if "vigil" in p.get("name", "")}


def bpf_prog_stats() -> dict[int, dict[str, Any]]:
    """id -> bpftool's record (name, run_time_ns, run_cnt while stats are on) of every program."""
    try:
        out = subprocess.run([BPFTOOL, "-j", "prog", "show"], capture_output=True, text=True, timeout=10).stdout
        return {p["id"]: p for p in json.loads(out or "[]")}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}


@contextmanager
def bpf_run_stats() -> Iterator[None]:
    """Programs count run_time_ns / run_cnt while this holds a BPF_ENABLE_STATS descriptor (the
    kernel counts holders: kernel.bpf_stats_enabled, which other users may have set, is left alone)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(16)  # union bpf_attr.enable_stats.type = BPF_STATS_RUN_TIME (0)
    fd = libc.syscall(321, 32, attr, len(attr))  # __NR_bpf, BPF_ENABLE_STATS (x86_64)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
    try:
        yield
    finally:
        os.close(fd)


# BPF program ids that appeared while one of our agents started (bpftool here cannot
# show owning pids, so attribution is by id: ids are never reused).
OWN_PROG_IDS: set[int] = set()


def assert_no_bpf_left(wait_s: float = 3.0) -> bool:
    """True when none of the programs our agents loaded is still loaded. Programs of
    other users of this machine (other agents, kernel tests) are only mentioned."""
    deadline = time.monotonic() + wait_s
    while True:
        loaded = vigil_bpf_progs()
        ours = {i: n for i, n in loaded.items() if i in OWN_PROG_IDS}
        if not ours or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if ours:
        print("WARNING: BPF programs loaded by our agents are still loaded: "
              + ", ".join(f"{i}:{n}" for i, n in sorted(ours.items())), file=sys.stderr)
    others = sorted(set(loaded) - set(ours))
    if others:
        print(f"note: {len(others)} vigil BPF program(s) loaded by other processes on this machine "
              f"(ids {others[:6]}), not by this benchmark", file=sys.stderr)
    return not ours


@contextmanager
def tempdir(prefix: str = "vigil-bench-", memory: bool = False) -> Iterator[Path]:
    """A temp dir, removed afterwards. `memory`: on tmpfs (/dev/shm) when there is one, for
    replays' exports: on a disk, the writeback of earlier runs' 400 MB files throttles later
    runs' writes (system time of the bench process that depends on the run order, not on what
    the agent does: grpc_throughput's later rounds took 2x the CPU of its first)."""
    shm = "/dev/shm" if memory and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix=prefix, dir=shm)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- exec helper (C)

SPAWNER_C = r"""
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
extern char **environ;
/* spawner N BINARY MODE [ARG]: N x (fork+exec | posix_spawn) + waitpid,
 * prints the elapsed CLOCK_MONOTONIC ns of the loop on stdout, then the CPU ns
 * (user + system) the loop and its children used during it: what runs in the
 * loop's own tasks (fork, exec, exit, and the BPF programs on those hooks), not
 * the time it waited for a CPU that another process had. */
static long long cpu_ns(void) {
    struct rusage s, c;
    getrusage(RUSAGE_SELF, &s);
    getrusage(RUSAGE_CHILDREN, &c);
    long long us = (long long)(s.ru_utime.tv_sec + s.ru_stime.tv_sec + c.ru_utime.tv_sec + c.ru_stime.tv_sec)
                   * 1000000LL + s.ru_utime.tv_usec + s.ru_stime.tv_usec + c.ru_utime.tv_usec + c.ru_stime.tv_usec;
    return us * 1000LL;
}
int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: spawner N BINARY fork|spawn [ARG]\n"); return 2; }
    long n = atol(argv[1]);
    char *bin = argv[2];
    int use_fork = strcmp(argv[3], "fork") == 0;
    prctl(PR_SET_PDEATHSIG, SIGKILL);  /* never outlive the benchmark */
    char *args[] = {bin, argc > 4 ? argv[4] : NULL, NULL};
    struct timespec a, b;
    long long cpu0 = cpu_ns();
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        pid_t p;
        if (use_fork) {
            p = fork();
            if (p < 0) { perror("fork"); return 1; }
            if (p == 0) { execve(bin, args, environ); _exit(127); }
        } else if (posix_spawn(&p, bin, NULL, NULL, args, environ) != 0) {
            perror("posix_spawn"); return 1;
        }
        int st;
        if (waitpid(p, &st, 0) < 0) { perror("waitpid"); return 1; }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { fprintf(stderr, "child failed: %d\n", st); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%lld %lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec),
           cpu_ns() - cpu0);
    return 0;
}
"""


def build_spawner(tmp: Path) -> str:
    src = tmp / "spawner.c"
    exe = tmp / "spawner"
    src.write_text(SPAWNER_C)
    for cc in ("cc", "gcc", "clang"):
        if shutil.which(cc):
            subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
            return str(exe)
    raise RuntimeError("no C compiler found (run `make all` first)")


def run_spawner(spawner: str, n: int, binary: str = "/bin/true", mode: str = "fork",
                arg: str | None = None) -> tuple[float, int]:
    """Run the loop; returns (seconds, spawner pid)."""
    secs, _cpu, pid = run_spawner_times(spawner, n, binary, mode, arg)
    return secs, pid


def run_spawner_times(spawner: str, n: int, binary: str = "/bin/true", mode: str = "fork",
                      arg: str | None = None) -> tuple[float, float, int]:
    """Run the loop; returns (wall seconds, CPU seconds of the loop and its children, spawner pid)."""
    cmd = [spawner, str(n), binary, mode] + ([arg] if arg else [])
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0:
        raise RuntimeError(f"spawner failed ({p.returncode}): {err.strip()}")
    wall_ns, cpu_ns = out.split()
    return int(wall_ns) / 1e9, int(cpu_ns) / 1e9, p.pid


# ---------------------------------------------------------------- agent subprocess

_READY_MS = re.compile(r"ready in (\d+) ms .*?(\d+) processes known")
_DROPS = re.compile(r"kernel could not deliver \d+ records \((\w+)\); (\d+) in total")


class AgentProc:
    """`vigil agent` as a child process, exporting to `export` (no rotation)."""

    def __init__(self, export: Path, extra: list[str] | None = None) -> None:
        self.export = export
        self.extra = extra or []
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []
        self.ready = threading.Event()
        self.ready_wall_s = float("nan")   # spawn -> "vigil agent ready" on stderr
        self.ready_ms_logged = float("nan")  # the agent's own "ready in N ms"
        self.procs_known = 0
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> AgentProc:
        cmd = [VIGIL, "agent", "--export-filename", str(self.export), "--server-address", "",
               "--export-file-max-size-mb", "100000", "--info-file", str(self.export) + ".info",
               *self.extra]
        before = set(vigil_bpf_progs())
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     bufsize=1)

        def reader() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr_lines.append(line.rstrip("\n"))
                if line.startswith("vigil agent ready"):
                    self.ready_wall_s = time.monotonic() - t0
                    self.ready.set()
                m = _READY_MS.search(line)
                if m:
                    self.ready_ms_logged = float(m.group(1))
                    self.procs_known = int(m.group(2))

        self._reader = threading.Thread(target=reader, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.01):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("agent did not become ready:\n" + "\n".join(self.stderr_lines[-20:]))
        OWN_PROG_IDS.update(set(vigil_bpf_progs()) - before)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGINT)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._reader is not None:
            self._reader.join(5)
        return p.returncode

    def cpu_seconds(self) -> float:
        """user+system CPU time the agent process has used so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")

    def kernel_drops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ln in self.stderr_lines:
            m = _DROPS.search(ln)
            if m:
                out[m.group(1)] = max(out.get(m.group(1), 0), int(m.group(2)))
        return out

    def __enter__(self) -> AgentProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_quiet(path: Path, quiet_s: float = 0.5, timeout: float = 30.0) -> None:
    """Wait until `path` stops growing for `quiet_s` (the agent has drained)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)


def count_execs(export: Path, binary: str, parent_pid: int) -> tuple[int, int]:
    """(process_exec, process_exit) events of `binary` whose parent is `parent_pid`."""
    import orjson

    n_exec = n_exit = 0
    needle = binary.encode()
    with open(export, "rb") as f:
        for line in f:
            if needle not in line:
                continue
            e = orjson.loads(line)
            for key in ("process_exec", "process_exit"):
                body = e.get(key)
                if body is None:
                    continue
                if body["process"].get("binary") != binary or body.get("parent", {}).get("pid") != parent_pid:
                    continue
                if key == "process_exec":
                    n_exec += 1
                else:
                    n_exit += 1
    return n_exec, n_exit


# ---------------------------------------------------------------- synthetic kernel records


def exec_record(pid: int, ktime: int, ppid: int, pktime: int, *, binary: str = "/usr/bin/curl",
                args: bytes | None = None, cwd: str = "/home/user/src/project",
                cgroup: str = "session-3.scope", uid: int = 1000, caps: int = 0,
                ns: tuple[int, ...] | None = None, op: int = 1) -> bytes:
    """An exec of a user's command line (arguments varied by pid), made 1 us after its ktime."""
    from vigil.events import synth

    if args is None:
        args = (binary.encode() + b"\0-sS\0--retry\0" + b"3\0-o\0/tmp/out-%d.json\0" % pid
                + b"https://api.example.com/v1/items?page=17&limit=100\0")
    return synth.process_record(op=op, pid=pid, ktime=ktime, ppid=ppid, pktime=pktime, binary=binary,
                                raw_args=args, cwd=cwd, cgroup_name=cgroup, uid=uid, auid=uid, caps=caps,
                                ns=ns, cgroup_id=12345, ino=2_000_000 + (pid & 0xFFFF),
                                sent_ktime=ktime + 1000)


def exit_record(pid: int, exec_ktime: int, ktime: int, code: int = 0) -> bytes:
    from vigil.events import synth

    return synth.exit_record(pid=pid, ktime=ktime, exec_ktime=exec_ktime, code=code)


SHELL_PID = 4242
SHELL_KTIME = 1_000_000_000


def shell_record() -> bytes:
    """A parent shell every synthetic process descends from (its json is in every event)."""
    return exec_record(SHELL_PID, SHELL_KTIME, 1, 0, binary="/usr/bin/bash", args=b"/usr/bin/bash\0-l\0",
                       cwd="/home/user")


BINARIES = ("/usr/bin/curl", "/usr/bin/git", "/usr/bin/grep", "/usr/bin/python3.11", "/usr/bin/ls",
            "/usr/bin/sed", "/usr/local/bin/node", "/usr/bin/cat")


def synth_exec_exit(n_events: int, *, lag: int = 32, first_pid: int = 10_000,
                    start_ktime: int = 2_000_000_000) -> list[bytes]:
    """`n_events` records: n/2 execs and their exits (each exit `lag` execs later),
    varied pids, ktimes and binaries, all children of the synthetic shell."""
    n_exec = n_events // 2
    out: list[bytes] = []
    pending: list[tuple[int, int]] = []
    k = start_ktime
    for i in range(n_exec):
        pid = first_pid + i % 4_000_000
        k += 37_000 + (i * 7919) % 20_000
        out.append(exec_record(pid, k, SHELL_PID, SHELL_KTIME, binary=BINARIES[i % len(BINARIES)]))
        pending.append((pid, k))
        if len(pending) > lag:
            p, pk = pending.pop(0)
            out.append(exit_record(p, pk, k + 500, code=(i % 3 == 0) << 8))
    for p, pk in pending:
        k += 1000
        out.append(exit_record(p, pk, k))
    return out
