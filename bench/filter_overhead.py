#!/usr/bin/env python3
"""filter_overhead: cost of an in-kernel policy filter on a hot syscall.

An `openat` + `close` loop (a small C program, so the loop itself is steady)
runs N times in these configurations, over several rounds; each configuration is
measured (the least of --reps runs) between two measurements of `off`:

  off        no agent (the baseline)
  floor      an empty BPF program on the same tracepoint (syscalls:sys_enter_openat): what
             enabling the hook costs by itself (a syscall tracepoint moves the task onto the
             slow syscall path), which no filter on this hook can avoid
  raw-floor  the floor of the other placement a syscall hook could have here (no kprobes):
             a raw_syscalls:sys_enter program that returns at once unless the syscall is
             openat. It runs on every syscall of the machine, so it is also measured on a
             getppid loop beside `floor`: what every other syscall would pay for it
  disp-floor the floor of one raw_syscalls:sys_enter dispatcher for all syscall hooks: it
             tail-calls through a program array indexed by the syscall number (an empty
             program at openat's index; a missing index falls through), also on getppid
  nomatch    agent with a policy on sys_openat whose selector never matches
  match      agent with a policy whose selector matches every open (Post)
  bt-nomatch bpftrace (Debian's) on the same tracepoint, filtering on the same
             path in the kernel and printing nothing
  bt-match   bpftrace printing every open of the target (to a file)

Prints each configuration's ratio to `off` of the same round (the loop's CPU time,
user + system: the hooks run in its syscalls; time waiting for a CPU is left out), the
events exported in `match` (and printed by bpftrace in `bt-match`) and what was
lost: expected - exported, and the kernel's drop counters. Then, in one more run of
each BPF configuration with the kernel's run-time statistics on (BPF_ENABLE_STATS, so
the timed rounds are not slowed by them), each program's own time per hit
(run_time_ns / run_cnt). Run as root after `make`; bpftrace is installed from Debian if
it is missing.
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import (
    OWN_PROG_IDS,
    AgentProc,
    assert_no_bpf_left,
    bpf_prog_stats,
    bpf_run_stats,
    emit_json,
    install_signal_handlers,
    median,
    require_root,
    tempdir,
    wait_quiet,
)

OPENLOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[2], O_RDONLY);
        if (fd >= 0) close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
    return 0;
}
"""

FLOOR_C = r"""
#include <linux/bpf.h>
#include <asm/unistd.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
SEC("tracepoint/syscalls/sys_enter_openat")
int vigil_bench_floor(void *ctx) { return 0; }
SEC("raw_tp/sys_enter")
int vigil_bench_raw_floor(struct bpf_raw_tracepoint_args *ctx) { return ctx->args[1] == __NR_openat; }
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(max_entries, 512);
    __type(key, __u32);
    __type(value, __u32);
} vigil_bench_calls SEC(".maps");
SEC("raw_tp/sys_enter")
int vigil_bench_disp_floor(struct bpf_raw_tracepoint_args *ctx) {
    bpf_tail_call(ctx, &vigil_bench_calls, (__u32)ctx->args[1]);
    return 0;
}
SEC("raw_tp/sys_enter")
int vigil_bench_disp_leaf(struct bpf_raw_tracepoint_args *ctx) { return 1; }
"""

PPID_C = r"""
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid);
    return 0;
}
"""

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {name}}}
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args: [{{index: 1, type: string}}]
    selectors:
    - matchArgs: [{{index: 1, operator: Equal, values: ["{path}"]}}]
"""


BPFTRACE = ("""tracepoint:syscalls:sys_enter_openat /str(args->filename) == "{path}"/ """
            """{{ printf("%s\\n", str(args->filename)); }}""")


class Bpftrace:
    """bpftrace with one program, until stopped; ready once its probe is attached."""

    def __init__(self, program: str, out: Path) -> None:
        self.out = out
        self.f = open(out, "w")
        self.proc = subprocess.Popen(["bpftrace", "-B", "full", "-e", program], stdout=self.f,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while "Attaching" not in out.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                self.stop()
                raise RuntimeError(f"bpftrace did not attach: {err}")
            time.sleep(0.05)

    def lines(self, needle: str) -> int:
        return sum(1 for ln in self.out.read_text().splitlines() if ln == needle)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.f.close()

    def __enter__(self) -> Bpftrace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


FLOOR_PROGS = {"floor": ("vigil_bench_floor",), "raw-floor": ("vigil_bench_raw_floor",),
               "disp-floor": ("vigil_bench_disp_floor", "vigil_bench_disp_leaf")}


class Floor:
    """The empty program(s) of FLOOR_C (built at bench time) of configuration `cfg` attached: on
    the hook's tracepoint (floor), on raw_syscalls:sys_enter (raw-floor), or a raw_syscalls:sys_enter
    dispatcher with the empty program at openat's index of its program array (disp-floor)."""

    def __init__(self, obj_path: Path, cfg: str) -> None:
        import struct

        from vigil.kernel import BpfObject
        from vigil.kernel.info import prog_info

        self.obj = BpfObject.open(obj_path)
        try:
            names = FLOOR_PROGS[cfg]
            for other in {n for ns in FLOOR_PROGS.values() for n in ns} - set(names):
                self.obj.program(other).set_autoload(False)
            self.obj.load()
            prog = self.obj.program(names[0])
            if cfg == "disp-floor":
                leaf = self.obj.program(names[1])
                self.obj.map("vigil_bench_calls").update(struct.pack("I", OPENAT_NR), struct.pack("I", leaf.fd))
                OWN_PROG_IDS.add(int(prog_info(leaf.fd)["id"]))
            if cfg == "floor":
                prog.attach_tracepoint("syscalls", "sys_enter_openat")
            else:
                prog.attach_raw_tracepoint("sys_enter")
            OWN_PROG_IDS.add(int(prog_info(prog.fd)["id"]))
        except BaseException:
            self.obj.close()
            raise

    def __enter__(self) -> Floor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.obj.close()


OPENAT_NR = 257  # x86_64 (asm/unistd.h), the index of the dispatcher's program array


def build_floor(tmp: Path) -> Path:
    src, obj = tmp / "floor.bpf.c", tmp / "floor.bpf.o"
    src.write_text(FLOOR_C)
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", str(src),
                    "-o", str(obj)], check=True)
    return obj


def ns_per_hit(new_ids: set[int], a0: dict[int, dict], a1: dict[int, dict], n: int) -> tuple[float, float]:
    """Own run time per run, between snapshots a0 and a1, of the program among `new_ids` (those
    of the configuration) that ran at least once per open: the one on the hook; and its runs per
    open (1 on the openat tracepoint; on raw_syscalls:sys_enter every syscall of the machine
    runs it: the loop's open and close, and others'). A program it tail-calls counts in its
    time (the kernel keeps no statistics of its own for that one)."""
    best = (0, 0)
    for pid in new_ids & set(a0) & set(a1):
        cnt = a1[pid].get("run_cnt", 0) - a0[pid].get("run_cnt", 0)
        if cnt >= n and cnt > best[1]:
            best = (a1[pid].get("run_time_ns", 0) - a0[pid].get("run_time_ns", 0), cnt)
    return (best[0] / best[1], best[1] / n) if best[1] else (float("nan"), 0.0)


def ensure_bpftrace() -> None:
    if shutil.which("bpftrace"):
        return
    print(">> apt-get install bpftrace (the peer this benchmark compares with)", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "bpftrace"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def run_loop(exe: str, n: int, *args: str) -> float:
    """CPU seconds (user + system) of one loop run. Hook programs run in the looping
    process's own syscalls, so their cost is in its system time, while time spent
    waiting for a CPU on a busy machine is not."""
    proc = subprocess.Popen([exe, str(n), *args], stdout=subprocess.DEVNULL)
    _pid, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{exe} exited with {proc.returncode}")
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="opens per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small N, one round")
    ap.add_argument("--no-bpftrace", action="store_true", help="skip the bpftrace peer")
    ap.add_argument("--reps", type=int, default=3, help="loop runs per measurement (the least counts)")
    ap.add_argument("--rb-size", default="", help="the agent's --rb-size (default: the agent's own)")
    ap.add_argument("--configs", default="", help="only these configurations (comma-separated; `off` always)")
    a = ap.parse_args()
    if a.quick:
        a.n, a.rounds, a.reps = 20_000, 1, 1
    require_root()
    install_signal_handlers()
    if not a.no_bpftrace:
        ensure_bpftrace()
    with tempdir() as tmp:
        cc = next(c for c in ("cc", "gcc", "clang") if shutil.which(c))
        exe, ppid_exe = str(tmp / "openloop"), str(tmp / "ppidloop")
        for code, out in ((OPENLOOP_C, exe), (PPID_C, ppid_exe)):
            (tmp / "loop.c").write_text(code)
            subprocess.run([cc, "-O2", "-o", out, str(tmp / "loop.c")], check=True)
        floor_obj = build_floor(tmp)
        target = tmp / "target.txt"
        target.write_text("x")
        (tmp / "nomatch.yaml").write_text(POLICY.format(name="bench-nomatch", path="/nonexistent/vigil"))
        (tmp / "match.yaml").write_text(POLICY.format(name="bench-match", path=str(target)))
        configs = ["off", "floor", "raw-floor", "disp-floor", "nomatch", "match"] + ([] if a.no_bpftrace else
                                                                        ["bt-nomatch", "bt-match"])
        if a.configs:
            want = {c.strip() for c in a.configs.split(",") if c.strip()}
            if want - set(configs):
                ap.error(f"--configs: unknown {sorted(want - set(configs))}; known: {', '.join(configs)}")
            configs = ["off"] + [c for c in configs[1:] if c in want]
        ratios: dict[str, list[float]] = {c: [] for c in configs if c != "off"}
        times: dict[str, list[float]] = {c: [] for c in configs}
        exported: list[int] = []
        printed: list[int] = []
        drops: dict[str, int] = {}
        agent_args = ["--rb-size", a.rb_size] if a.rb_size else []
        def loop(reps: int = a.reps) -> float:  # the least of a few runs: interference only ever adds
            return min(run_loop(exe, a.n, str(target)) for _ in range(reps))

        def measured(cfg: str, rnd: object, body: Callable[[], float]) -> float:
            """body() run with configuration cfg in place; its after-work (loss counts) done."""
            if cfg in FLOOR_PROGS:
                with Floor(floor_obj, cfg):
                    return body()
            if cfg.startswith("bt-"):
                path = "/nonexistent/vigil" if cfg == "bt-nomatch" else str(target)
                with Bpftrace(BPFTRACE.format(path=path), tmp / f"{cfg}-{rnd}.out") as bt:
                    t = body()
                    time.sleep(0.5)
                if cfg == "bt-match" and rnd != "stats":
                    printed.append(bt.lines(str(target)))
                return t
            export = tmp / f"{cfg}-{rnd}.log"
            with AgentProc(export, ["--tracing-policy", str(tmp / f"{cfg}.yaml"), *agent_args]) as agent:
                t = body()
                wait_quiet(export, 1.0, 300)
                if cfg == "match" and rnd != "stats":
                    with open(export, "rb") as f:
                        exported.append(sum(1 for ln in f if b'"process_kprobe"' in ln and b"bench-match" in ln))
                    for k, v in agent.kernel_drops().items():
                        drops[k] = drops.get(k, 0) + v
            export.unlink(missing_ok=True)
            return t

        for rnd in range(a.rounds):
            for cfg in configs[1:]:
                before = loop()  # each configuration against `off` measured right beside it
                t = measured(cfg, rnd, loop)
                base = (before + loop()) / 2
                times["off"].append(base)
                times[cfg].append(t)
                ratios[cfg].append(t / base)
        # what another syscall pays for each floor (getppid: the cheapest syscall there is)
        ppid_n = a.n * 10
        ppid: dict[str, list[float]] = {c: [] for c in FLOOR_PROGS if c in configs}
        ppid_off: list[float] = []
        for rnd in range(a.rounds if ppid else 0):
            for cfg in ppid:
                def ploop() -> float:
                    return min(run_loop(ppid_exe, ppid_n) for _ in range(a.reps))
                before = ploop()
                t = measured(cfg, rnd, ploop)
                base = (before + ploop()) / 2
                ppid_off.append(base)
                ppid[cfg].append(t / base)

        # the programs' own time per hit, one more run each with the kernel's statistics on
        def snapped(snap: list[dict[int, dict]]) -> float:
            snap.append(bpf_prog_stats())
            t = loop(1)
            snap.append(bpf_prog_stats())
            return t

        per_hit: dict[str, float] = {}
        runs: dict[str, float] = {}
        for cfg in [c for c in configs[1:] if c != "bt-match"]:
            pre, snap = set(bpf_prog_stats()), []
            with bpf_run_stats():
                measured(cfg, "stats", functools.partial(snapped, snap))
            per_hit[cfg], runs[cfg] = ns_per_hit(set(snap[1]) - pre, snap[0], snap[1], a.n)
        off = median(times["off"])
        med = {c: median(r) for c, r in ratios.items()}
        added = {c: round((median(times[c]) - off) / a.n * 1e9) for c in configs[1:]}
        expected = a.n * a.rounds * a.reps
        res = {
            "n": a.n,
            "rounds": a.rounds,
            "off_s": round(off, 4),
            "ns_per_open_off": round(off / a.n * 1e9),
            **{f"ratio_{c.replace('-', '_')}": round(v, 3) for c, v in med.items()},
            **{f"ratios_{c.replace('-', '_')}": [round(x, 3) for x in r] for c, r in ratios.items()},
            **{f"ns_added_{c.replace('-', '_')}": v for c, v in added.items()},
            **{f"prog_ns_per_hit_{c.replace('-', '_')}": round(v, 1) for c, v in per_hit.items()},
            **{f"prog_runs_per_open_{c.replace('-', '_')}": round(runs[c], 2) for c in FLOOR_PROGS if c in runs},
            **{f"ppid_ratio_{c.replace('-', '_')}": round(median(r), 3) for c, r in ppid.items()},
        }
        if ppid:
            res["ppid_ns_per_syscall_off"] = round(median(ppid_off) / ppid_n * 1e9)
        if "match" in configs:
            res.update({"match_events_per_s": round(a.n / median(times["match"])), "match_events_expected": expected,
                        "match_events_exported": sum(exported), "events_lost": expected - sum(exported),
                        "kernel_drops": drops})
        if printed:
            res["bt_match_printed"] = sum(printed)
            res["bt_match_lost"] = expected - sum(printed)

        def hit(c: str) -> str:
            if c in ("raw-floor", "disp-floor") and c in per_hit:
                return f"; program {per_hit[c]:.0f} ns/run, {runs[c]:.2f} runs/open"
            return f"; program {per_hit[c]:.0f} ns/hit" if c in per_hit else ""

        def above_floor(c: str) -> str:
            return f", {added[c] - added['floor']} above the floor" if "floor" in added else ""

        def rounds(c: str) -> str:
            return f"rounds {res['ratios_' + c.replace('-', '_')]}"

        def line(c: str) -> str:
            if c == "floor":
                return f"(+{added[c]} ns/open: an empty program on the tracepoint{hit(c)})"
            if c == "raw-floor":
                return f"(+{added[c]} ns/open: an empty raw_syscalls:sys_enter program that returns unless the " \
                       f"syscall is openat{hit(c)})"
            if c == "disp-floor":
                return f"(+{added[c]} ns/open: a raw_syscalls:sys_enter dispatcher tail-calling an empty program " \
                       f"at openat's index{hit(c)})"
            if c == "nomatch":
                return f"(+{added[c]} ns/open{above_floor(c)}{hit(c)}; goal <= 1.10 and below bpftrace's)"
            if c == "bt-nomatch":
                return f"(+{added[c]} ns/open{above_floor(c)}{hit(c)})"
            if c == "match":
                return (f"(goal <= 1.5, zero loss{hit(c)}); exported {sum(exported)}/{expected}, lost "
                        f"{expected - sum(exported)}, kernel drops {drops or 0}")
            return f"; printed {sum(printed)}/{expected}, lost {expected - sum(printed)}"

        print(f"openat+close x{a.n}, {a.rounds} round(s); ratios to `off` of the same round, medians:")
        print(f"  off        {res['off_s']:.3f}s CPU ({res['ns_per_open_off']} ns/open)")
        floors = [f for f in FLOOR_PROGS if f in configs]
        for c in configs[1:]:
            print(f"  {c:<10} ratio {med[c]:.3f} {line(c)}  {rounds(c)}")
            if floors and c == floors[-1] and ppid:
                p_off = res["ppid_ns_per_syscall_off"]
                print(f"             and every other syscall pays for a floor: a getppid loop ({p_off} ns/syscall) "
                      + ", ".join(f"with {k} {median(v):.3f} (+{round((median(v) - 1) * p_off)} ns)"
                                  for k, v in ppid.items()))
    ok = assert_no_bpf_left()
    res["bpf_left"] = not ok
    emit_json("filter_overhead", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
