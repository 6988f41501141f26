#!/usr/bin/env python3
"""process_churn: a million short-lived processes under a running agent.

A C loop forks N (1,000,000) children one after another; every 10th execs /bin/true, the
others exit at once (a clone and an exit record each, an exec too for every 10th). The
agent (`vigil agent`, a child process, export to /dev/null) is sampled every 2 s: VmRSS,
process cache size against its capacity, the kernel process map against its size, records
and losses. After the loop, 40 s idle (past the cache's 30 s grace period) show whether
RSS and the cache return to their plateau. Printed: the curve, then a summary and one JSON
line. Baseline: the agent's RSS when ready, before the churn, in the same run.

    sudo .venv/bin/python bench/process_churn.py [--quick] [-n N] [--every K] [--idle S]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

from _common import AgentProc, assert_no_bpf_left, emit_json, install_signal_handlers, require_root, rss_kb, tempdir

CHURN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]), every = atol(argv[2]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) { perror("fork"); return 1; }
        if (p == 0) {
            if (every && i % every == 0) { char *a[] = {"/bin/true", NULL}; execv(a[0], a); }
            _exit(0);
        }
        waitpid(p, NULL, 0);
        if (i % 10000 == 0) { printf("%ld\n", i); fflush(stdout); }
    }
    printf("%ld\n", n);
    return 0;
}
"""


def status(sock: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "vigil.cli.main", "status", "-o", "json", "--server-address", sock,
                          "--timeout", "10"], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)["status"] if out.returncode == 0 else {}


def sample(agent: AgentProc, sock: str, done: int, t0: float) -> dict:
    st = status(sock)
    pc = st.get("process_cache", {})
    em = st.get("maps", {}).get("execve_map", [0, 0])
    rec = st.get("records", {})
    lost = sum(st.get("lost", {}).get("kernel", {}).values()) if st else 0
    return {"t": round(time.monotonic() - t0, 1), "processes": done, "rss_mb": round(rss_kb(agent.pid) / 1024, 1),
            "cache": pc.get("size", 0), "cache_cap": pc.get("capacity", 0), "evictions": pc.get("evictions", 0),
            "execve_map": em[0], "execve_map_cap": em[1], "clones": rec.get("clone", 0), "execs": rec.get("exec", 0),
            "exits": rec.get("exit", 0), "kernel_lost": lost}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=20000, 5 s idle (smoke test)")
    ap.add_argument("-n", type=int, default=None, help="processes (default 1,000,000)")
    ap.add_argument("--every", type=int, default=10, help="every K-th child execs /bin/true")
    ap.add_argument("--idle", type=float, default=None, help="seconds sampled after the churn (default 40)")
    a = ap.parse_args()
    install_signal_handlers()
    require_root()
    n = a.n or (20000 if a.quick else 1_000_000)
    idle = a.idle if a.idle is not None else (5 if a.quick else 40)
    curve: list[dict] = []
    with tempdir("vigil-bench-churn-") as tmp:
        (tmp / "churn.c").write_text(CHURN_C)
        subprocess.run(["cc", "-O2", "-o", str(tmp / "churn"), str(tmp / "churn.c")], check=True)
        sock = f"unix://{tmp}/vigil.sock"
        agent = AgentProc(tmp / "events.log", ["--export-filename", "/dev/null", "--server-address", sock]).start()
        try:
            t0 = time.monotonic()
            base = sample(agent, sock, 0, t0)
            curve.append(base)
            print(f"churn: {n:,} processes, every {a.every}th execs /bin/true; agent pid {agent.pid}")
            print(f"{'t s':>6} {'processes':>10} {'RSS MB':>7} {'cache':>7} {'evicted':>8} {'execve_map':>10} "
                  f"{'lost':>6}")

            def show(s: dict) -> None:
                print(f"{s['t']:6.1f} {s['processes']:10,} {s['rss_mb']:7.1f} {s['cache']:7,} {s['evictions']:8,} "
                      f"{s['execve_map']:10,} {s['kernel_lost']:6,}", flush=True)
            show(base)
            p = subprocess.Popen([str(tmp / "churn"), str(n), str(a.every)], stdout=subprocess.PIPE, text=True)
            progress = [0]

            def follow() -> None:  # the loop prints its count every 10,000 children
                for line in p.stdout:  # type: ignore[union-attr]
                    progress[0] = int(line)
            threading.Thread(target=follow, daemon=True).start()
            next_at = time.monotonic() + 2
            while p.poll() is None:
                time.sleep(0.2)
                if time.monotonic() >= next_at:
                    curve.append(sample(agent, sock, progress[0], t0))
                    show(curve[-1])
                    next_at = time.monotonic() + 2
            if p.returncode != 0:
                raise RuntimeError(f"churn loop failed ({p.returncode})")
            churn_s = time.monotonic() - t0
            end = sample(agent, sock, n, t0)
            curve.append(end)
            show(end)
            idle_end = time.monotonic() + idle
            while time.monotonic() < idle_end:
                time.sleep(min(5, max(0.0, idle_end - time.monotonic())))
                curve.append(sample(agent, sock, n, t0))
                show(curve[-1])
            after = curve[-1]
        finally:
            agent.stop()
    assert_no_bpf_left()
    peak = max(curve, key=lambda s: s["rss_mb"])
    mid = curve[len(curve) // 2]
    print()
    print(f"{n:,} processes in {churn_s:.0f} s ({n / churn_s:,.0f}/s)")
    print(f"RSS: ready {base['rss_mb']} MB, mid-churn {mid['rss_mb']} MB, peak {peak['rss_mb']} MB, "
          f"end {end['rss_mb']} MB, after {idle:.0f} s idle {after['rss_mb']} MB "
          f"(ratio to ready: peak {peak['rss_mb'] / base['rss_mb']:.2f}, after {after['rss_mb'] / base['rss_mb']:.2f})")
    print(f"process cache: max {max(s['cache'] for s in curve):,} of {base['cache_cap']:,}, "
          f"{after['evictions']:,} evicted, {after['cache']:,} after idle ({base['cache']:,} when ready)")
    print(f"execve_map: max {max(s['execve_map'] for s in curve):,} of {base['execve_map_cap']:,}, "
          f"{after['execve_map']:,} after idle; kernel losses {after['kernel_lost']:,}")
    print(f"records: {after['clones']:,} clones, {after['execs']:,} execs, {after['exits']:,} exits")
    emit_json("process_churn", {"n": n, "seconds": round(churn_s, 1), "rss_ready_mb": base["rss_mb"],
                                "rss_peak_mb": peak["rss_mb"], "rss_end_mb": end["rss_mb"],
                                "rss_after_idle_mb": after["rss_mb"],
                                "cache_max": max(s["cache"] for s in curve), "cache_capacity": base["cache_cap"],
                                "cache_after_idle": after["cache"], "evictions": after["evictions"],
                                "execve_map_max": max(s["execve_map"] for s in curve),
                                "execve_map_capacity": base["execve_map_cap"], "kernel_lost": after["kernel_lost"],
                                "curve": curve})
    return 0


if __name__ == "__main__":
    sys.exit(main())
