#!/usr/bin/env python3
"""exec_overhead: cost of the agent on a fork+exec-heavy workload.

N x fork+exec+wait of /bin/true from a tiny C loop compiled at bench time, wall
time without the agent vs with `vigil agent` running (separate process, export to
a temp file). Rounds are interleaved off/bpf/on/off/bpf/on.../off to spread machine noise;
the ratio is median(on) / median(off), and each round's ratio is its `on` over the mean
of the `off` runs before and after it (its own round's and the next one's). After every "on" round the export file
must hold exactly N process_exec and N process_exit of /bin/true whose parent is
the loop's pid: lost = expected - seen, plus the kernel drop counters the agent
logged. A third configuration, "bpf", loads only the kernel side (ProcessSensor in
this process, 64 MB ring buffer, not drained) to split kernel cost from the cost of
the user-space agent competing for the CPUs; the agent's CPU time per round is shown.

    .venv/bin/python bench/exec_overhead.py [--quick] [-n N] [--rounds R] [--mode fork|spawn]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import (
    BPFTOOL,
    AgentProc,
    assert_no_bpf_left,
    build_spawner,
    count_execs,
    emit_json,
    install_signal_handlers,
    median,
    require_root,
    run_spawner,
    tempdir,
    wait_quiet,
)

GOAL_RATIO = 1.03
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


def run_bpf_only(spawner: str, n: int, binary: str, mode: str,
                 stats: dict[str, float] | None = None) -> tuple[float, dict[str, int]]:
    """The loop with only the kernel side loaded (ProcessSensor in this process, ring
    buffer large enough to hold every record, never drained): isolates BPF cost."""
    from _common import OWN_PROG_IDS, vigil_bpf_progs

    from vigil.sensors.process import ProcessSensor

    before = set(vigil_bpf_progs())
    sensor = ProcessSensor(ringbuf_bytes=64 << 20)
    old_stats = None
    try:
        if stats is not None:  # kernel.bpf_stats_enabled: run_time_ns / run_cnt per program
            with open(STATS_SYSCTL) as f:
                old_stats = f.read().strip()
            with open(STATS_SYSCTL, "w") as f:
                f.write("1")
        sensor.start()
        mine = set(vigil_bpf_progs()) - before
        OWN_PROG_IDS.update(mine)
        secs, _ = run_spawner(spawner, n, binary, mode)
        drops = {k: v for k, v in sensor.drops().items() if v}
        if stats is not None:
            out = subprocess.run([BPFTOOL, "-j", "prog", "show"], capture_output=True, text=True).stdout
            for p in json.loads(out or "[]"):
                if p["id"] in mine and p.get("run_cnt"):
                    stats[p["name"]] = p["run_time_ns"] / p["run_cnt"] / 1000
    finally:
        sensor.stop()
        if old_stats is not None:
            with open(STATS_SYSCTL, "w") as f:
                f.write(old_stats)
    return secs, drops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=500, 1 round each (smoke test)")
    ap.add_argument("-n", type=int, default=None, help="execs per round (default 10000)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per configuration (default 3)")
    ap.add_argument("--mode", choices=("fork", "spawn"), default="fork",
                    help="fork+execve (default) or posix_spawn (vfork-like)")
    ap.add_argument("--binary", default="/bin/true")
    ap.add_argument("--no-bpf-only", action="store_true",
                    help="skip the third configuration (BPF programs loaded, no user-space agent)")
    ap.add_argument("--bpf-stats", action="store_true",
                    help="in the last BPF-only round, briefly set kernel.bpf_stats_enabled=1 (restored after) "
                         "and report each program's mean run time")
    a = ap.parse_args()
    install_signal_handlers()
    require_root()
    n = a.n or (500 if a.quick else 10_000)
    rounds = a.rounds or (1 if a.quick else 3)

    off: list[float] = []
    on: list[float] = []
    bpf: list[float] = []
    prog_us: dict[str, float] = {}
    per_round: list[dict] = []
    agent_cpu: list[float] = []
    total_lost_exec = total_lost_exit = 0
    drops_total: dict[str, int] = {}
    with tempdir() as tmp:
        spawner = build_spawner(tmp)
        run_spawner(spawner, min(n, 200), a.binary, a.mode)  # warm the page cache
        for r in range(rounds):
            # -- agent off
            secs, _ = run_spawner(spawner, n, a.binary, a.mode)
            off.append(secs)
            print(f"round {r + 1}/{rounds} off: {secs:7.3f} s  ({n / secs:8.0f} exec/s)", flush=True)
            # -- kernel side only
            if not a.no_bpf_only:
                last = r == rounds - 1 and a.bpf_stats
                secs, bdrops = run_bpf_only(spawner, n, a.binary, a.mode, prog_us if last else None)
                bpf.append(secs)
                print(f"round {r + 1}/{rounds} bpf: {secs:7.3f} s  ({n / secs:8.0f} exec/s)  "
                      f"(BPF programs only, no agent; ring buffer not drained; drops {bdrops or 0})", flush=True)
            # -- agent on
            export = tmp / f"events-{r}.json"
            agent = AgentProc(export)
            try:
                agent.start()
                time.sleep(0.3)  # let the procfs burst get written
                cpu0 = agent.cpu_seconds()
                secs, spid = run_spawner(spawner, n, a.binary, a.mode)
                cpu_during = agent.cpu_seconds() - cpu0
                wait_quiet(export, quiet_s=0.5)
                cpu_total = agent.cpu_seconds() - cpu0
            finally:
                rc = agent.stop()
            on.append(secs)
            agent_cpu.append(cpu_total)
            seen_exec, seen_exit = count_execs(export, a.binary, spid)
            drops = agent.kernel_drops()
            for k, v in drops.items():
                drops_total[k] = drops_total.get(k, 0) + v
            lost_exec, lost_exit = n - seen_exec, n - seen_exit
            total_lost_exec += lost_exec
            total_lost_exit += lost_exit
            per_round.append({"off_s": round(off[-1], 4), "on_s": round(secs, 4), "exec_seen": seen_exec,
                              "exit_seen": seen_exit, "kernel_drops": drops, "agent_rc": rc,
                              "agent_cpu_s": round(cpu_total, 3), "agent_cpu_during_loop_s": round(cpu_during, 3)})
            print(f"round {r + 1}/{rounds} on : {secs:7.3f} s  ({n / secs:8.0f} exec/s)  "
                  f"exec seen {seen_exec}/{n}, exit seen {seen_exit}/{n}, kernel drops {drops or 0}, "
                  f"agent CPU {cpu_total:.2f} s ({cpu_total / n * 1e6:.0f} us/exec)",
                  flush=True)
            export.unlink(missing_ok=True)
        # the `off` that closes the last round: each round's `on` is compared with the `off` runs
        # on both sides of it (its own round's and the next one's), as filter_overhead does
        secs, _ = run_spawner(spawner, n, a.binary, a.mode)
        off.append(secs)
        print(f"closing off: {secs:7.3f} s  ({n / secs:8.0f} exec/s)", flush=True)

    ratio = median(on) / median(off)
    ratios = [b / ((off[r] + off[r + 1]) / 2) for r, b in enumerate(on)]  # on / the offs around it
    clean = assert_no_bpf_left()
    print()
    print(f"exec_overhead: {n} x fork+exec of {a.binary} ({a.mode}), {rounds} interleaved rounds each")
    print(f"  without agent: median {median(off):.3f} s  ({n / median(off):.0f} exec/s, "
          f"{median(off) / n * 1e6:.1f} us/exec)")
    print(f"  with agent   : median {median(on):.3f} s  ({n / median(on):.0f} exec/s, "
          f"{median(on) / n * 1e6:.1f} us/exec)")
    if bpf:
        print(f"  BPF only     : median {median(bpf):.3f} s  (ratio {median(bpf) / median(off):.3f}: "
              f"kernel-side cost; the rest of 'with agent' is the user-space agent competing for CPU)")
    if prog_us:
        print("  BPF run time : " + ", ".join(f"{k} {v:.1f} us" for k, v in sorted(prog_us.items()))
              + f" per call = {sum(prog_us.values()):.1f} us per fork+exec+exit "
              f"({sum(prog_us.values()) / (median(off) / n * 1e6):.2%} of an exec)")
    print(f"  ratio on/off : {ratio:.3f}  (per round, to the offs around it: {', '.join(f'{x:.3f}' for x in ratios)}; "
          f"goal <= {GOAL_RATIO})  {'OK' if ratio <= GOAL_RATIO else 'OVER GOAL'}")
    print(f"  agent CPU    : median {median(agent_cpu):.2f} s per round = {median(agent_cpu) / n * 1e6:.0f} us "
          f"per exec (exec+exit events; user space, competes with the workload on 2 cores)")
    print(f"  events lost  : exec {total_lost_exec}, exit {total_lost_exit} "
          f"(of {n * rounds} each); kernel drops {drops_total or 'none'}")
    print(f"  BPF programs left loaded: {'none' if clean else 'YES (see above)'}")
    emit_json("exec_overhead", {
        "n": n, "rounds": rounds, "mode": a.mode, "binary": a.binary,
        "off_s": [round(x, 4) for x in off], "on_s": [round(x, 4) for x in on],
        "median_off_s": round(median(off), 4), "median_on_s": round(median(on), 4),
        "ratio": round(ratio, 4), "bpf_only_s": [round(x, 4) for x in bpf],
        "bpf_prog_us_per_call": {k: round(v, 2) for k, v in prog_us.items()},
        "ratio_bpf_only": round(median(bpf) / median(off), 4) if bpf else None,
        "round_ratios": [round(x, 4) for x in ratios], "goal_ratio": GOAL_RATIO,
        "agent_cpu_s": [round(x, 3) for x in agent_cpu],
        "agent_cpu_us_per_exec": round(median(agent_cpu) / n * 1e6, 1), "lost_exec": total_lost_exec,
        "lost_exit": total_lost_exit, "kernel_drops": drops_total,
        "rounds_detail": per_round, "bpf_clean": clean,
    })
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
