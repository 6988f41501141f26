#!/usr/bin/env python3
"""filter_overhead: cost of an in-kernel policy filter on a hot syscall.

An `openat` + `close` loop (a small C program, so the loop itself is steady)
runs N times in three configurations, interleaved over several rounds:

  off        no agent
  nomatch    agent with a policy on sys_openat whose selector never matches
  match      agent with a policy whose selector matches every open (Post)

Prints nomatch/off and match/off wall-time ratios (goal for nomatch: <= 1.05),
events/s exported in `match` and events lost (expected - exported, plus the
kernel's drop counters). Run as root after `make`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import AgentProc, assert_no_bpf_left, emit_json, install_signal_handlers, median, require_root, \
    tempdir, wait_quiet

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


def run_loop(exe: str, n: int, target: str) -> float:
    out = subprocess.run([exe, str(n), target], capture_output=True, text=True, check=True).stdout
    return int(out) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="opens per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small N, one round")
    a = ap.parse_args()
    if a.quick:
        a.n, a.rounds = 20_000, 1
    require_root()
    install_signal_handlers()
    with tempdir() as tmp:
        src = tmp / "openloop.c"
        src.write_text(OPENLOOP_C)
        exe = str(tmp / "openloop")
        for cc in ("cc", "gcc", "clang"):
            if subprocess.run(["which", cc], capture_output=True).returncode == 0:
                subprocess.run([cc, "-O2", "-o", exe, str(src)], check=True)
                break
        target = tmp / "target.txt"
        target.write_text("x")
        (tmp / "nomatch.yaml").write_text(POLICY.format(name="bench-nomatch", path="/nonexistent/vigil"))
        (tmp / "match.yaml").write_text(POLICY.format(name="bench-match", path=str(target)))
        times: dict[str, list[float]] = {"off": [], "nomatch": [], "match": []}
        exported: list[int] = []
        drops: dict[str, int] = {}
        for rnd in range(a.rounds):
            for cfg in ("off", "nomatch", "match"):
                if cfg == "off":
                    times[cfg].append(run_loop(exe, a.n, str(target)))
                    continue
                export = tmp / f"{cfg}-{rnd}.log"
                with AgentProc(export, ["--tracing-policy", str(tmp / f"{cfg}.yaml")]) as agent:
                    times[cfg].append(run_loop(exe, a.n, str(target)))
                    wait_quiet(export, 1.0, 120)
                    if cfg == "match":
                        with open(export, "rb") as f:
                            exported.append(sum(1 for ln in f if b'"process_kprobe"' in ln and b"bench-match" in ln))
                        for k, v in agent.kernel_drops().items():
                            drops[k] = drops.get(k, 0) + v
                export.unlink(missing_ok=True)
        off = median(times["off"])
        res = {
            "n": a.n,
            "rounds": a.rounds,
            "off_s": round(off, 4),
            "nomatch_s": round(median(times["nomatch"]), 4),
            "match_s": round(median(times["match"]), 4),
            "ratio_nomatch": round(median(times["nomatch"]) / off, 3),
            "ratio_match": round(median(times["match"]) / off, 3),
            "ns_per_open_off": round(off / a.n * 1e9),
            "ns_added_nomatch": round((median(times["nomatch"]) - off) / a.n * 1e9),
            "match_events_per_s": round(a.n / median(times["match"])),
            "match_events_expected": a.n * a.rounds,
            "match_events_exported": sum(exported),
            "events_lost": a.n * a.rounds - sum(exported),
            "kernel_drops": drops,
        }
        print(f"openat+close x{a.n}, {a.rounds} round(s), medians:")
        print(f"  off      {res['off_s']:.3f}s ({res['ns_per_open_off']} ns/open)")
        print(f"  nomatch  {res['nomatch_s']:.3f}s  ratio {res['ratio_nomatch']} (goal <= 1.05; "
              f"+{res['ns_added_nomatch']} ns/open)")
        print(f"  match    {res['match_s']:.3f}s  ratio {res['ratio_match']}; "
              f"{res['match_events_per_s']} events/s, exported {res['match_events_exported']}/"
              f"{res['match_events_expected']}, lost {res['events_lost']}, kernel drops {drops or 0}")
    ok = assert_no_bpf_left()
    res["bpf_left"] = not ok
    emit_json("filter_overhead", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
