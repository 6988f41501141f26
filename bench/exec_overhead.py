#!/usr/bin/env python3
"""exec_overhead: cost of the agent on a fork+exec-heavy workload.

N x fork+exec+wait of /bin/true from a tiny C loop compiled at bench time, without
the agent ("off") vs with `vigil agent` running ("on": separate process, export to a
temp file), plus "bpf": only the kernel side (ProcessSensor in this process, 64 MB ring
buffer, not drained) to split kernel cost from the cost of the user-space agent.

Each round runs N execs per configuration as B short blocks of N/B (--blocks, default 4),
interleaved: block i of round r runs off, bpf, on when r + i is even and on, bpf, off when
it is odd (ABBA...), so each configuration gets the same number of blocks in every round
and a drift of the machine (other users' load coming and going) falls on both sides alike
instead of on whichever ran later. A round's ratio is the sum of its on blocks over the
sum of its off blocks, for wall time and for the loop's CPU time (user+system of the loop
and its children, which holds the BPF programs and the wakeups they make, not the time the
loop waited for a CPU someone else had). Every round's ratio is printed, with the spread
of its block pairs; nothing is dropped. After every "on" block the export file must hold
exactly its execs' process_exec and process_exit of /bin/true whose parent is the loop's
pid: lost = expected - seen, plus the kernel drop counters the agent logged; the agent's
CPU time per block is shown.

    .venv/bin/python bench/exec_overhead.py [--quick] [-n N] [--rounds R] [--blocks B] [--mode fork|spawn]
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
    run_spawner_times,
    tempdir,
    wait_quiet,
)

GOAL_RATIO = 1.03
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


def run_bpf_only(spawner: str, n: int, binary: str, mode: str,
                 stats: dict[str, float] | None = None) -> tuple[float, float, dict[str, int]]:
    """The loop with only the kernel side loaded (ProcessSensor in this process, ring
    buffer large enough to hold every record, never drained): isolates BPF cost.
    Returns (wall s, loop CPU s, drops)."""
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
        secs, cpu, _ = run_spawner_times(spawner, n, binary, mode)
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
    return secs, cpu, drops


class Block:
    """One block's figures: wall and loop CPU seconds."""

    def __init__(self, wall: float, cpu: float) -> None:
        self.wall, self.cpu = wall, cpu


def block_order(configs: list[str], r: int, i: int) -> list[str]:
    """The configurations of block i of round r: in order when r + i is even, reversed when odd
    (off bpf on | on bpf off | off bpf on ...), the same count each side in every round."""
    return list(configs) if (r + i) % 2 == 0 else list(reversed(configs))


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def loadavg() -> list[float]:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=500, 1 round of 2 blocks (smoke test)")
    ap.add_argument("-n", type=int, default=None, help="execs per configuration per round (default 10000)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    ap.add_argument("--blocks", type=int, default=None,
                    help="interleaved blocks per configuration per round, N/B execs each (default 4)")
    ap.add_argument("--mode", choices=("fork", "spawn"), default="fork",
                    help="fork+execve (default) or posix_spawn (vfork-like)")
    ap.add_argument("--binary", default="/bin/true")
    ap.add_argument("--no-bpf-only", action="store_true",
                    help="skip the third configuration (BPF programs loaded, no user-space agent)")
    ap.add_argument("--bpf-stats", action="store_true",
                    help="in the last BPF-only block, briefly set kernel.bpf_stats_enabled=1 (restored after) "
                         "and report each program's mean run time")
    a = ap.parse_args()
    install_signal_handlers()
    require_root()
    n = a.n or (500 if a.quick else 10_000)
    rounds = a.rounds or (1 if a.quick else 3)
    blocks = a.blocks or (2 if a.quick else 4)
    if rounds < 1 or blocks < 1 or n < blocks:
        ap.error("--rounds and --blocks must be >= 1 and -n >= --blocks")
    per_block = n // blocks
    n = per_block * blocks  # every block the same size
    configs = ["off"] + ([] if a.no_bpf_only else ["bpf"]) + ["on"]

    # per round: the blocks of each configuration, in the order they ran
    runs: list[dict[str, list[Block]]] = []
    prog_us: dict[str, float] = {}
    per_round: list[dict] = []
    agent_cpu: list[float] = []  # per round, summed over its on blocks
    total_lost_exec = total_lost_exit = 0
    drops_total: dict[str, int] = {}
    load_before = loadavg()
    with tempdir() as tmp:
        spawner = build_spawner(tmp)
        run_spawner(spawner, min(n, 200), a.binary, a.mode)  # warm the page cache
        for r in range(rounds):
            got: dict[str, list[Block]] = {c: [] for c in configs}
            seen = [0, 0]
            cpu_round = cpu_round_during = 0.0
            drops_round: dict[str, int] = {}
            rcs: list[int | None] = []
            for i in range(blocks):
                for cfg in block_order(configs, r, i):
                    tag = f"round {r + 1}/{rounds} block {i + 1}/{blocks} {cfg:<3}"
                    if cfg == "off":
                        secs, cpu, _ = run_spawner_times(spawner, per_block, a.binary, a.mode)
                        got["off"].append(Block(secs, cpu))
                        print(f"{tag}: {secs:7.3f} s  ({per_block / secs:8.0f} exec/s)  loop CPU {cpu:.3f} s",
                              flush=True)
                    elif cfg == "bpf":
                        last = r == rounds - 1 and i == blocks - 1 and a.bpf_stats
                        secs, cpu, bdrops = run_bpf_only(spawner, per_block, a.binary, a.mode,
                                                         prog_us if last else None)
                        got["bpf"].append(Block(secs, cpu))
                        print(f"{tag}: {secs:7.3f} s  ({per_block / secs:8.0f} exec/s)  loop CPU {cpu:.3f} s  "
                              f"(BPF programs only, no agent; ring buffer not drained; drops {bdrops or 0})",
                              flush=True)
                    else:
                        export = tmp / f"events-{r}-{i}.json"
                        agent = AgentProc(export)
                        try:
                            agent.start()
                            time.sleep(0.3)  # let the procfs burst get written
                            cpu0 = agent.cpu_seconds()
                            secs, cpu, spid = run_spawner_times(spawner, per_block, a.binary, a.mode)
                            cpu_during = agent.cpu_seconds() - cpu0
                            wait_quiet(export, quiet_s=0.5)
                            cpu_total = agent.cpu_seconds() - cpu0
                        finally:
                            rcs.append(agent.stop())
                        got["on"].append(Block(secs, cpu))
                        cpu_round += cpu_total
                        cpu_round_during += cpu_during
                        seen_exec, seen_exit = count_execs(export, a.binary, spid)
                        seen[0] += seen_exec
                        seen[1] += seen_exit
                        for k, v in agent.kernel_drops().items():
                            drops_round[k] = drops_round.get(k, 0) + v
                        print(f"{tag}: {secs:7.3f} s  ({per_block / secs:8.0f} exec/s)  loop CPU {cpu:.3f} s  "
                              f"exec seen {seen_exec}/{per_block}, exit seen {seen_exit}/{per_block}, "
                              f"agent CPU {cpu_total:.2f} s ({cpu_total / per_block * 1e6:.0f} us/exec)",
                              flush=True)
                        export.unlink(missing_ok=True)
            runs.append(got)
            agent_cpu.append(cpu_round)
            for k, v in drops_round.items():
                drops_total[k] = drops_total.get(k, 0) + v
            lost_exec, lost_exit = n - seen[0], n - seen[1]
            total_lost_exec += lost_exec
            total_lost_exit += lost_exit
            off_w, on_w = sum(b.wall for b in got["off"]), sum(b.wall for b in got["on"])
            off_c, on_c = sum(b.cpu for b in got["off"]), sum(b.cpu for b in got["on"])
            pairs = [b.wall / o.wall for b, o in zip(got["on"], got["off"], strict=True)]
            detail = {"off_s": round(off_w, 4), "on_s": round(on_w, 4), "ratio": round(on_w / off_w, 4),
                      "cpu_ratio": round(on_c / off_c, 4), "block_ratios": [round(x, 4) for x in pairs],
                      "off_blocks_s": [round(b.wall, 4) for b in got["off"]],
                      "on_blocks_s": [round(b.wall, 4) for b in got["on"]],
                      "exec_seen": seen[0], "exit_seen": seen[1], "kernel_drops": drops_round, "agent_rc": rcs,
                      "agent_cpu_s": round(cpu_round, 3), "agent_cpu_during_loop_s": round(cpu_round_during, 3)}
            if "bpf" in got:
                bpf_w = sum(b.wall for b in got["bpf"])
                detail.update(bpf_s=round(bpf_w, 4), bpf_ratio=round(bpf_w / off_w, 4),
                              bpf_cpu_ratio=round(sum(b.cpu for b in got["bpf"]) / off_c, 4))
            per_round.append(detail)
            print(f"round {r + 1}/{rounds}: on/off {on_w / off_w:.3f} (block pairs {spread(pairs)}), "
                  f"loop CPU on/off {on_c / off_c:.3f}"
                  + (f", bpf/off {detail['bpf_ratio']:.3f} (CPU {detail['bpf_cpu_ratio']:.3f})" if "bpf" in got
                     else "")
                  + f"; exec seen {seen[0]}/{n}, exit seen {seen[1]}/{n}, kernel drops {drops_round or 0}, "
                  f"agent CPU {cpu_round:.2f} s ({cpu_round / n * 1e6:.0f} us/exec)", flush=True)
    load_after = loadavg()

    def totals(cfg: str, attr: str) -> list[float]:
        return [sum(getattr(b, attr) for b in got[cfg]) for got in runs]

    off, on = totals("off", "wall"), totals("on", "wall")
    off_cpu, on_cpu = totals("off", "cpu"), totals("on", "cpu")
    bpf = totals("bpf", "wall") if "bpf" in configs else []
    bpf_cpu = totals("bpf", "cpu") if "bpf" in configs else []
    ratios = [x["ratio"] for x in per_round]
    cpu_ratios = [x["cpu_ratio"] for x in per_round]
    bpf_ratios = [x["bpf_ratio"] for x in per_round] if bpf else []
    ratio = median(on) / median(off)
    cpu_ratio = median(on_cpu) / median(off_cpu)
    # machine noise: how far apart the off blocks of one round were (max / min)
    off_spread = [max(b.wall for b in got["off"]) / min(b.wall for b in got["off"]) for got in runs]
    clean = assert_no_bpf_left()
    print()
    print(f"exec_overhead: {n} x fork+exec of {a.binary} ({a.mode}) per configuration and round, {rounds} rounds "
          f"of {blocks} interleaved blocks of {per_block}; load average {load_before} -> {load_after}")
    print(f"  without agent: median {median(off):.3f} s  ({n / median(off):.0f} exec/s, "
          f"{median(off) / n * 1e6:.1f} us/exec; loop CPU {median(off_cpu) / n * 1e6:.1f} us/exec); "
          f"off blocks within a round max/min {spread(off_spread)} (machine noise)")
    print(f"  with agent   : median {median(on):.3f} s  ({n / median(on):.0f} exec/s, "
          f"{median(on) / n * 1e6:.1f} us/exec; loop CPU {median(on_cpu) / n * 1e6:.1f} us/exec)")
    if bpf:
        print(f"  BPF only     : median {median(bpf):.3f} s  (ratio {median(bpf) / median(off):.3f}, per round "
              f"{', '.join(f'{x:.3f}' for x in bpf_ratios)}; loop CPU ratio {median(bpf_cpu) / median(off_cpu):.3f}: "
              f"kernel-side cost; the rest of 'with agent' is the user-space agent competing for CPU)")
    if prog_us:
        print("  BPF run time : " + ", ".join(f"{k} {v:.1f} us" for k, v in sorted(prog_us.items()))
              + f" per call = {sum(prog_us.values()):.1f} us per fork+exec+exit "
              f"({sum(prog_us.values()) / (median(off) / n * 1e6):.2%} of an exec)")
    print(f"  ratio on/off : {ratio:.3f}  (per round, its on blocks over its off blocks: "
          f"{', '.join(f'{x:.3f}' for x in ratios)}; spread {spread(ratios)}; goal <= {GOAL_RATIO} every round)  "
          f"{'OK' if max(ratios) <= GOAL_RATIO else 'OVER GOAL'}")
    print(f"  loop CPU     : on/off {cpu_ratio:.3f}  (per round {', '.join(f'{x:.3f}' for x in cpu_ratios)}; "
          f"CPU time of the loop and its children: kernel-side cost, not waits for a CPU)")
    print(f"  agent CPU    : median {median(agent_cpu):.2f} s per round = {median(agent_cpu) / n * 1e6:.0f} us "
          f"per exec (exec+exit events; user space, competes with the workload on 2 cores)")
    print(f"  events lost  : exec {total_lost_exec}, exit {total_lost_exit} "
          f"(of {n * rounds} each); kernel drops {drops_total or 'none'}")
    print(f"  BPF programs left loaded: {'none' if clean else 'YES (see above)'}")
    emit_json("exec_overhead", {
        "n": n, "rounds": rounds, "blocks": blocks, "mode": a.mode, "binary": a.binary,
        "off_s": [round(x, 4) for x in off], "on_s": [round(x, 4) for x in on],
        "median_off_s": round(median(off), 4), "median_on_s": round(median(on), 4),
        "ratio": round(ratio, 4), "bpf_only_s": [round(x, 4) for x in bpf],
        "bpf_prog_us_per_call": {k: round(v, 2) for k, v in prog_us.items()},
        "ratio_bpf_only": round(median(bpf) / median(off), 4) if bpf else None,
        "round_ratios": ratios, "round_ratios_bpf_only": bpf_ratios, "goal_ratio": GOAL_RATIO,
        "off_cpu_s": [round(x, 4) for x in off_cpu], "on_cpu_s": [round(x, 4) for x in on_cpu],
        "bpf_only_cpu_s": [round(x, 4) for x in bpf_cpu], "cpu_ratio": round(cpu_ratio, 4),
        "round_cpu_ratios": cpu_ratios, "off_block_spread": [round(x, 4) for x in off_spread],
        "loadavg_before": load_before, "loadavg_after": load_after,
        "agent_cpu_s": [round(x, 3) for x in agent_cpu],
        "agent_cpu_us_per_exec": round(median(agent_cpu) / n * 1e6, 1), "lost_exec": total_lost_exec,
        "lost_exit": total_lost_exit, "kernel_drops": drops_total,
        "rounds_detail": per_round, "bpf_clean": clean,
    })
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
