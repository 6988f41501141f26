#!/usr/bin/env python3
"""agent_footprint: memory, start-up time and event latency of the agent.

(a) RSS with 30,000 live processes in the process cache (goal <= 150 MB): a fresh
    child interpreter builds an Agent on the replay seam and feeds it 30,000 exec
    records without exits (generated on the fly, so the records themselves are not
    counted; ~110-byte argv, cwd, cgroup, namespaces, half root with full
    capabilities); VmRSS before / after.
(b) start-to-ready with 1,000 extra processes (goal <= 1 s): 1,000 `sleep 600`
    children in their own process group, then `vigil agent` is started and timed
    until "vigil agent ready" on stderr (and its own "ready in N ms" log line);
    baseline = the same without the extra processes, same run.
(c) exec-to-JSON-line latency (goal p99 <= 10 ms): `/bin/true <unique arg>` spawned
    at a modest rate with CLOCK_REALTIME taken just before the spawn; a thread tails
    the export file (1 ms poll) and notes when each line appears. Also reported:
    event `start_time` (kernel exec time) -> line seen.
(d) stop time with 40 policies (a syscall tracepoint each, for a binary that never runs):
    SIGINT -> exit of `vigil agent`, against the same with one policy (alternated, median of
    3 each); the ratio is the figure (closing a tracepoint's link waits for kernel grace
    periods: the policies' links are closed at once, vigil.kernel.objects.detach_objects).

    .venv/bin/python bench/agent_footprint.py [--quick] [--skip a,b,c,d]
"""
from __future__ import annotations

import argparse
import calendar
import json
import os
import signal
import subprocess
import sys
import threading
import time

from _common import (
    SHELL_KTIME,
    SHELL_PID,
    AgentProc,
    assert_no_bpf_left,
    emit_json,
    exec_record,
    install_signal_handlers,
    median,
    pct,
    require_root,
    rss_kb,
    shell_record,
    tempdir,
)

from tests.stoppolicies import SYSCALLS, write_policies  # after _common: it puts the project on sys.path
from vigil.events.synth import HOST_NS

GOAL_RSS_MB = 150
GOAL_READY_S = 1.0
GOAL_P99_MS = 10.0

# ---------------------------------------------------------------- (a) RSS


class _GenSource:
    """Generates exec records batch by batch (keeps the records out of the RSS)."""

    def __init__(self, n: int, batch: int = 4096) -> None:
        self.n, self.i, self.batch, self.first = n, 0, batch, True

    @property
    def exhausted(self) -> bool:
        return self.i >= self.n

    def wait(self, timeout: float) -> bool:
        return not self.exhausted

    def drain(self) -> list[bytes]:
        out = []
        if self.first:
            out.append(shell_record())
            self.first = False
        binaries = ("/usr/bin/python3.11", "/usr/sbin/nginx", "/usr/bin/node", "/usr/lib/systemd/systemd-journald",
                    "/usr/bin/containerd-shim-runc-v2", "/usr/bin/sleep", "/usr/bin/bash", "/opt/app/bin/worker")
        while self.i < self.n and len(out) < self.batch:
            i = self.i
            pid = 100_000 + i
            binary = binaries[i % len(binaries)]
            args = (binary.encode() + b"\0--config\0/etc/app/worker-%05d.yaml\0--listen\0" % i
                    + b"127.0.0.1:%d\0--log-level\0info\0--data-dir\0/var/lib/app/%d\0" % (8000 + i % 1000, i))
            root = i % 2 == 0
            ns = HOST_NS if i % 4 else tuple(v + 1000 + i % 50 for v in HOST_NS)  # a quarter in containers
            out.append(exec_record(pid, 5_000_000_000 + i * 1_000_003, SHELL_PID, SHELL_KTIME, binary=binary,
                                   args=args, cwd=f"/srv/app/instance-{i % 500}", uid=0 if root else 1000,
                                   caps=(1 << 41) - 1 if root else 0, ns=ns,
                                   cgroup=f"docker-{i % 50:064x}.scope" if i % 4 == 0 else "app.service"))
            self.i += 1
        return out

    def close(self) -> None:
        self.i = self.n


def rss_child(n: int) -> None:
    """Runs in a fresh interpreter; prints one JSON line."""
    import gc

    from vigil.agent.agent import Agent
    from vigil.agent.config import AgentConfig

    export = os.environ["VIGIL_BENCH_EXPORT"]
    gc.collect()
    r0 = rss_kb()
    agent = Agent(AgentConfig(export_filename=export, server_address="", export_file_max_size_mb=100_000,
                              node_name="bench-node"), source=_GenSource(n))
    agent.start()
    r1 = rss_kb()
    t0 = time.perf_counter()
    agent.run()
    dt = time.perf_counter() - t0
    gc.collect()
    r2 = rss_kb()
    st = agent.status()
    agent.close()
    from vigil.export.codec import process_json

    sample = process_json(next(iter(agent.cache)).msg) if len(agent.cache) else b"{}"
    print(json.dumps({"rss_imports_kb": r0, "rss_started_kb": r1, "rss_filled_kb": r2,
                      "cache_size": st["process_cache"]["size"], "evictions": st["process_cache"]["evictions"],
                      "fill_s": dt, "sample_json_bytes": len(sample)}))


def measure_rss(n: int) -> dict:
    with tempdir() as tmp:
        env = dict(os.environ, VIGIL_BENCH_EXPORT=str(tmp / "rss.json"))
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(n)], env=env, capture_output=True,
                             text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"rss child failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- (b) ready time


def start_sleepers(n: int) -> list[subprocess.Popen]:
    procs: list[subprocess.Popen] = []
    pgid = 0
    for _ in range(n):
        p = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, process_group=pgid)
        if not pgid:
            pgid = p.pid
        procs.append(p)
    return procs


def kill_sleepers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in procs:
        p.wait()


def ready_runs(runs: int) -> list[dict]:
    out = []
    with tempdir() as tmp:
        for i in range(runs):
            agent = AgentProc(tmp / f"ready-{i}.json")
            try:
                agent.start()
                time.sleep(0.3)
                rss = rss_kb(agent.pid)
            finally:
                agent.stop()
            out.append({"wall_s": agent.ready_wall_s, "logged_ms": agent.ready_ms_logged,
                        "procs_known": agent.procs_known, "idle_rss_kb": rss})
    return out


# ---------------------------------------------------------------- (d) stop time

def stop_runs(n: int, runs: int) -> dict:
    """Seconds from SIGINT to the exit of an agent with one policy and with n, alternated."""
    times: dict[int, list[float]] = {1: [], n: []}
    with tempdir() as tmp:
        for k in times:
            write_policies(tmp / f"policies-{k}", k, "bench-stop")
        for i in range(runs):
            for k in times:
                agent = AgentProc(tmp / f"stop-{k}-{i}.json", ["--tracing-policy-dir", str(tmp / f"policies-{k}")])
                try:
                    agent.start(timeout=300)
                    t0 = time.monotonic()
                    rc = agent.stop(timeout=120)
                    times[k].append(time.monotonic() - t0)
                finally:
                    agent.stop()
                if rc != 0:
                    raise RuntimeError(f"agent with {k} policies exited {rc}:\n" + "\n".join(agent.stderr_lines[-20:]))
    one, many = median(times[1]), median(times[n])
    return {"policies": n, "one_policy_s": one, "policies_s": many, "ratio": many / one,
            "one_policy_runs_s": times[1], "policies_runs_s": times[n]}


# ---------------------------------------------------------------- (c) latency


def _rfc3339_ns(s: str) -> int:
    sec, frac = s.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(sec, "%Y-%m-%dT%H:%M:%S")) * 1_000_000_000 + int(frac.ljust(9, "0"))


def latency(n: int, rate: float) -> dict:
    import orjson

    token = f"vigil-lat-{os.getpid()}-{time.time_ns()}"
    with tempdir() as tmp:
        export = tmp / "lat.json"
        seen: dict[int, tuple[int, int]] = {}  # i -> (seen wall ns, event start_time ns)
        stop = threading.Event()
        agent = AgentProc(export)
        try:
            agent.start()

            def tail() -> None:
                tok = token.encode()
                with open(export, "rb") as f:
                    buf = b""
                    while not stop.is_set() or len(seen) < n:
                        chunk = f.read()
                        if not chunk:
                            if stop.is_set():
                                return
                            time.sleep(0.001)
                            continue
                        now = time.time_ns()
                        buf += chunk
                        *lines, buf = buf.split(b"\n")
                        for ln in lines:
                            if tok in ln and ln.startswith(b'{"process_exec"'):
                                p = orjson.loads(ln)["process_exec"]["process"]
                                i = int(p["arguments"].rsplit("-", 1)[1])
                                seen[i] = (now, _rfc3339_ns(p["start_time"]))

            th = threading.Thread(target=tail, daemon=True)
            th.start()
            for _ in range(20):  # warm-up, not counted (first events pay imports/allocations)
                os.waitpid(os.posix_spawn("/bin/true", ["/bin/true", "vigil-lat-warmup"], {}), 0)
            time.sleep(0.2)
            sent: dict[int, int] = {}
            period = 1.0 / rate
            nxt = time.monotonic()
            for i in range(n):
                t = time.time_ns()
                pid = os.posix_spawn("/bin/true", ["/bin/true", f"{token}-{i}"], {})
                sent[i] = t
                os.waitpid(pid, 0)
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))
            deadline = time.monotonic() + 5
            while len(seen) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            th.join(5)
        finally:
            agent.stop()
    lat = [(seen[i][0] - sent[i]) / 1e6 for i in sent if i in seen]
    k2j = [(seen[i][0] - seen[i][1]) / 1e6 for i in sent if i in seen]
    return {"n": n, "rate": rate, "seen": len(lat), "lost": n - len(lat),
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else float("nan"),
            "kernel_to_line_p50_ms": pct(k2j, 50), "kernel_to_line_p99_ms": pct(k2j, 99)}


# ---------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-child":
        rss_child(int(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3k cache entries, 100 sleepers, 1 run, 50 execs")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c,d")
    a = ap.parse_args()
    install_signal_handlers()
    skip = set(filter(None, a.skip.split(",")))
    if not {"b", "c", "d"} <= skip:
        require_root()
    n_cache = 3_000 if a.quick else 30_000
    n_sleep = 100 if a.quick else 1_000
    runs = 1 if a.quick else 3
    n_lat, rate = (50, 100.0) if a.quick else (1000, 100.0)
    res: dict = {}

    if "a" not in skip:
        r = measure_rss(n_cache)
        res["rss"] = r
        print(f"(a) RSS with {r['cache_size']} processes cached: {r['rss_filled_kb'] / 1024:.1f} MB "
              f"(after imports {r['rss_imports_kb'] / 1024:.1f} MB, agent started {r['rss_started_kb'] / 1024:.1f} MB, "
              f"+{(r['rss_filled_kb'] - r['rss_started_kb']) / max(1, r['cache_size']):.2f} kB/process; "
              f"{r['sample_json_bytes']} B process json; filled in {r['fill_s']:.2f} s)  goal <= {GOAL_RSS_MB} MB: "
              f"{'OK' if r['rss_filled_kb'] / 1024 <= GOAL_RSS_MB else 'OVER'}", flush=True)

    if "b" not in skip:
        base = ready_runs(runs)
        sleepers: list[subprocess.Popen] = []
        try:
            sleepers = start_sleepers(n_sleep)
            time.sleep(0.2)
            loaded = ready_runs(runs)
        finally:
            kill_sleepers(sleepers)
        bw, lw = median([x["wall_s"] for x in base]), median([x["wall_s"] for x in loaded])
        bl, ll = median([x["logged_ms"] for x in base]), median([x["logged_ms"] for x in loaded])
        res["ready"] = {"baseline": base, "with_procs": loaded, "extra_procs": n_sleep,
                        "baseline_wall_s": bw, "with_procs_wall_s": lw, "ratio": lw / bw,
                        "baseline_logged_ms": bl, "with_procs_logged_ms": ll}
        print(f"(b) start-to-ready (spawn -> 'vigil agent ready'), median of {runs}: "
              f"baseline {bw:.3f} s ({base[0]['procs_known']} procs known, agent log {bl:.0f} ms); "
              f"with {n_sleep} extra processes {lw:.3f} s ({loaded[0]['procs_known']} known, agent log {ll:.0f} ms); "
              f"ratio {lw / bw:.2f}; idle agent RSS {loaded[0]['idle_rss_kb'] / 1024:.1f} MB  "
              f"goal <= {GOAL_READY_S} s: "
              f"{'OK' if lw <= GOAL_READY_S else 'OVER'}", flush=True)

    if "c" not in skip:
        r = latency(n_lat, rate)
        res["latency"] = r
        print(f"(c) exec -> JSON line ({r['seen']}/{r['n']} seen at {r['rate']:.0f} exec/s): "
              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms "
              f"(kernel start_time -> line p50 {r['kernel_to_line_p50_ms']:.2f} / p99 "
              f"{r['kernel_to_line_p99_ms']:.2f} ms)  goal p99 <= {GOAL_P99_MS} ms: "
              f"{'OK' if r['p99_ms'] <= GOAL_P99_MS else 'OVER'}", flush=True)

    if "d" not in skip:
        n_pol = 10 if a.quick else len(SYSCALLS)
        r = stop_runs(n_pol, runs)
        res["stop"] = r
        print(f"(d) stop (SIGINT -> exit), median of {runs}: {r['policies']} policies {r['policies_s']:.2f} s, "
              f"one policy {r['one_policy_s']:.2f} s: ratio {r['ratio']:.2f} "
              f"({(r['policies_s'] - r['one_policy_s']) / (r['policies'] - 1) * 1000:.0f} ms a policy more)",
              flush=True)

    clean = assert_no_bpf_left()
    res["bpf_clean"] = clean
    emit_json("agent_footprint", res)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
