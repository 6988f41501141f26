#!/usr/bin/env python3
"""event_throughput: process events/s decoded and exported to JSON on one core.

1. Replay (no kernel): N synthetic exec/exit records (realistic sizes: ~130-byte
   argv, cwd, full namespaces, credentials, a parent shell whose json goes into
   every event) replayed through ``Agent(cfg, source=ReplaySource(...))`` exporting
   to a temp file, pinned to one CPU. Reports events/s of wall time and of the
   process's own CPU time (user+sys: steady on a busy machine), and checks every
   record came out as an event (zero loss).
   Baseline in the same run: the same replay with VIGIL_PURE_PYTHON=1 (the pure-Python
   reference path) in a child process; the ratio compiled / pure is printed.
2. Breakdown: each stage timed on its own (CPU time) over the same records --
   decode+build (the record handlers: compiled, one call per record), JSON encode
   (the exporter's encode_pieces: lines in pieces), file write (writev) -- plus the top functions from cProfile
   of a full replay.
3. Live: a burst of fork+execs (two C loops in parallel) while `vigil agent`
   drains; checks that every exec/exit reached the export file.

    .venv/bin/python bench/event_throughput.py [--quick] [-n N] [--no-live]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import threading
import time

from _common import (
    AgentProc,
    assert_no_bpf_left,
    build_spawner,
    count_execs,
    emit_json,
    install_signal_handlers,
    median,
    run_spawner,
    shell_record,
    synth_exec_exit,
    tempdir,
    wait_quiet,
)

from vigil.core import native  # after _common: it puts the project on sys.path

GOAL_EPS = 250_000
IOV_MAX = os.sysconf("SC_IOV_MAX")
STAGES = ("decode+build", "encode", "write")


def make_records(n: int) -> list[bytes]:
    return [shell_record()] + synth_exec_exit(n)


def replay_once(records: list[bytes], export: str, profile: cProfile.Profile | None = None) -> dict:
    from vigil.agent.agent import Agent
    from vigil.agent.config import AgentConfig
    from vigil.events.source import ReplaySource

    if os.path.exists(export):
        os.unlink(export)
    cfg = AgentConfig(export_filename=export, server_address="", export_file_max_size_mb=100_000,
                      node_name="bench-node")
    agent = Agent(cfg, source=ReplaySource(records))
    agent.start()
    t0 = time.perf_counter()
    c0 = time.process_time()
    if profile is not None:
        profile.enable()
    try:
        agent.run()
    finally:
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - c0
        dt = time.perf_counter() - t0
        st = agent.status()
        agent.close()
    return {"seconds": dt, "cpu_seconds": cpu, "status": st, "bytes": os.path.getsize(export)}


def stage_breakdown(records: list[bytes], export: str) -> dict[str, float]:
    """Seconds spent in each stage, each run alone over the same records."""
    from vigil.export.jsonl import encode_pieces
    from vigil.process.build import BuildOptions, EventBuilder
    from vigil.process.cache import ProcessCache
    from vigil.process.clock import WallClock

    t = time.process_time
    out: dict[str, float] = {}

    builder = EventBuilder(ProcessCache(), WallClock(), BuildOptions("bench-node"))
    handlers = builder.record_handlers()
    now = time.monotonic_ns()
    t0 = t()
    events = [e for e in (handlers[b[0]](b, now) for b in records) if e is not None]
    out["decode+build"] = t() - t0

    t0 = t()
    # the agent's batches, as the export writer encodes them: lines in pieces (the cached
    # process messages by reference)
    batches = [encode_pieces(events[i : i + 256])[0] for i in range(0, len(events), 256)]
    out["encode"] = t() - t0

    fd = os.open(export, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    t0 = t()
    for pieces in batches:
        for i in range(0, len(pieces), IOV_MAX):
            os.writev(fd, pieces[i : i + IOV_MAX])  # as the export writer does
    out["write"] = t() - t0
    os.close(fd)
    os.unlink(export)
    out["bytes"] = sum(len(x) for pieces in batches for x in pieces)
    out["events"] = len(events)
    return out


def profile_top(prof: cProfile.Profile, n: int = 14) -> list[dict]:
    st = pstats.Stats(prof)
    rows = []
    for (fn, line, name), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        short = fn.split("/vigil/")[-1] if "/vigil/" in fn else os.path.basename(fn)
        rows.append({"func": f"{short}:{line}({name})", "calls": nc, "tottime": tt, "cumtime": ct})
    rows.sort(key=lambda r: r["tottime"], reverse=True)
    return rows[:n]


def pure_baseline(n: int, repeats: int) -> dict:
    """The same replay on the pure-Python reference path, in a child process."""
    env = dict(os.environ, VIGIL_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--replay-only", "--no-live", "-n", str(n),
                          "--repeats", str(repeats)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def live_burst(n_per_loop: int, loops: int = 2) -> dict:
    """`loops` C exec loops in parallel while the agent drains; zero loss expected."""
    with tempdir() as tmp:
        spawner = build_spawner(tmp)
        export = tmp / "live.json"
        agent = AgentProc(export)
        results: list[tuple[float, int]] = []
        errors: list[BaseException] = []
        try:
            agent.start()
            time.sleep(0.3)

            def one() -> None:
                try:
                    results.append(run_spawner(spawner, n_per_loop, "/bin/true", "fork"))
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            th = [threading.Thread(target=one) for _ in range(loops)]
            t0 = time.perf_counter()
            for x in th:
                x.start()
            for x in th:
                x.join()
            wall = time.perf_counter() - t0
            wait_quiet(export, quiet_s=0.5)
        finally:
            agent.stop()
        if errors:
            raise errors[0]
        seen_exec = seen_exit = 0
        for _secs, pid in results:
            e, x = count_execs(export, "/bin/true", pid)
            seen_exec += e
            seen_exit += x
        total = n_per_loop * loops
        return {"execs": total, "seconds": wall, "exec_per_s": total / wall,
                "events_per_s": 2 * total / wall, "lost_exec": total - seen_exec,
                "lost_exit": total - seen_exit, "kernel_drops": agent.kernel_drops()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=5000, 1 repeat, small live burst")
    ap.add_argument("-n", type=int, default=None, help="records to replay (default 200000)")
    ap.add_argument("--repeats", type=int, default=None, help="replays (default 3, median reported)")
    ap.add_argument("--no-live", action="store_true", help="skip the live burst (no root needed)")
    ap.add_argument("--live-n", type=int, default=None, help="execs per loop in the live burst (2 loops)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the pure-Python baseline replay")
    ap.add_argument("--replay-only", action="store_true", help=argparse.SUPPRESS)  # the baseline child
    a = ap.parse_args()
    install_signal_handlers()
    n = a.n or (5_000 if a.quick else 200_000)
    repeats = a.repeats or (1 if a.quick else 3)
    live = not a.no_live
    if live and os.geteuid() != 0:
        print("not root: skipping the live burst (--no-live)", file=sys.stderr)
        live = False
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core for the replay
        pinned = True
    except OSError:
        pinned = False

    t0 = time.perf_counter()
    records = make_records(n)
    synth_s = time.perf_counter() - t0
    rec_bytes = sum(map(len, records))
    expected = len(records)  # every exec and every exit becomes exactly one event

    runs = []
    with tempdir() as tmp:
        export = str(tmp / "replay.json")
        replay_once(records[: min(len(records), 5000)], export)  # warm-up (imports, caches)
        for _ in range(repeats):
            runs.append(replay_once(records, export))
        if a.replay_only:
            print(json.dumps({"seconds": [r["seconds"] for r in runs], "cpu_seconds": [r["cpu_seconds"] for r in runs],
                              "written": runs[-1]["status"]["export"]["events_written"]}))
            return 0
        baseline = None if a.no_baseline else pure_baseline(n, repeats)
        stages = stage_breakdown(records, str(tmp / "stages.json"))
        prof = cProfile.Profile()
        prof_run = replay_once(records, export, prof)
        top = profile_top(prof)
    secs = [r["seconds"] for r in runs]
    cpus = [r["cpu_seconds"] for r in runs]
    st = runs[-1]["status"]
    written = st["export"]["events_written"]
    lost = expected - written
    eps = expected / median(secs)
    eps_cpu = expected / median(cpus)

    live_res = None
    if live:
        live_res = live_burst(a.live_n or (150 if a.quick else 2500))
    if pinned:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))

    stage_total = sum(stages[k] for k in STAGES)
    print(f"event_throughput: replay of {expected} records ({rec_bytes / expected:.0f} B avg, "
          f"{expected // 2} exec + {expected // 2} exit) through Agent + JSON export"
          f"{' pinned to one CPU' if pinned else ''}")
    print(f"  path: {native.describe()}")
    print(f"  runs: {', '.join(f'{s:.3f} s' for s in secs)}  -> median {median(secs):.3f} s wall, "
          f"{median(cpus):.3f} s CPU")
    print(f"  throughput : {eps:,.0f} events/s wall, {eps_cpu:,.0f} events per CPU-second  (goal >= {GOAL_EPS:,}/s: "
          f"{'OK' if eps_cpu >= GOAL_EPS else f'{eps_cpu / GOAL_EPS:.0%} of goal'})")
    if baseline:
        b_eps = expected / median(baseline["cpu_seconds"])
        b_wall = expected / median(baseline["seconds"])
        print(f"  baseline   : pure Python (VIGIL_PURE_PYTHON=1) {b_wall:,.0f} events/s wall, {b_eps:,.0f} per "
              f"CPU-second, lost {expected - baseline['written']} -> compiled/pure = {eps_cpu / b_eps:.2f}x CPU, "
              f"{eps / b_wall:.2f}x wall")
    print(f"  output     : {written} events, {runs[-1]['bytes'] / written:.0f} B/line avg; lost {lost}; "
          f"cache size {st['process_cache']['size']}, evictions {st['process_cache']['evictions']}")
    print(f"  stage breakdown (each stage alone, {stages['events']} events; sum {stage_total:.3f} s = "
          f"{stages['events'] / stage_total:,.0f} events/s):")
    for k in STAGES:
        print(f"    {k:7s} {stages[k]:7.3f} s  {stages[k] / stage_total:6.1%}  "
              f"{stages[k] / stages['events'] * 1e6:6.2f} us/event")
    print(f"  cProfile of one replay ({prof_run['seconds']:.2f} s under the profiler), top by own time:")
    for r in top:
        print(f"    {r['tottime']:7.3f} s {r['calls']:>9}  {r['func']}")
    if live_res:
        print(f"  live burst : {live_res['execs']} fork+exec by 2 loops in {live_res['seconds']:.2f} s "
              f"({live_res['exec_per_s']:.0f} exec/s = {live_res['events_per_s']:.0f} events/s); "
              f"lost exec {live_res['lost_exec']}, exit {live_res['lost_exit']}, "
              f"kernel drops {live_res['kernel_drops'] or 'none'}")
    clean = assert_no_bpf_left() if live else True
    emit_json("event_throughput", {
        "records": expected, "avg_record_bytes": round(rec_bytes / expected, 1), "synth_s": round(synth_s, 3),
        "replay_s": [round(s, 4) for s in secs], "replay_cpu_s": [round(s, 4) for s in cpus],
        "events_per_s": round(eps), "events_per_cpu_s": round(eps_cpu), "goal_events_per_s": GOAL_EPS,
        "path": native.describe(),
        "baseline_pure": baseline and {"events_per_cpu_s": round(expected / median(baseline["cpu_seconds"])),
                                       "events_per_s": round(expected / median(baseline["seconds"])),
                                       "lost": expected - baseline["written"]},
        "ratio_compiled_vs_pure_cpu": baseline and round(eps_cpu / (expected / median(baseline["cpu_seconds"])), 3),
        "lost": lost, "avg_line_bytes": round(runs[-1]["bytes"] / written, 1), "pinned_one_cpu": pinned,
        "cache_evictions": st["process_cache"]["evictions"],
        "stages_s": {k: round(stages[k], 4) for k in STAGES},
        "stages_us_per_event": {k: round(stages[k] / stages["events"] * 1e6, 3)
                                for k in STAGES},
        "profile_top": [{**r, "tottime": round(r["tottime"], 4), "cumtime": round(r["cumtime"], 4)}
                        for r in top],
        "live": live_res and {k: (round(v, 3) if isinstance(v, float) else v) for k, v in live_res.items()},
        "bpf_clean": clean,
    })
    return 0 if lost == 0 and clean and (not live_res or live_res["lost_exec"] + live_res["lost_exit"] == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
