"""gRPC GetEvents delivery rate next to the JSON export, as a ratio to export alone.

Phases in one run, same synthetic records (a shell and N exec/exit events of its
children, ``_common.synth_exec_exit``) replayed through ``Agent(cfg,
source=ReplaySource(...))`` exporting JSON to a file (replay: the rate is not limited
by process creation):

  alone    export only, no gRPC server
  1 client the gRPC front end and one GetEvents client
  4        four concurrent clients
  paced    one client while the records arrive at a set rate (--paced-rate, default 60,000
           events/s, in 1 ms steps, as a live source at that rate would deliver them):
           whether a client receives every exported event when the export runs at that
           rate, rather than as fast as one core can replay

`alone` and the client phases run back to back in each of --rounds rounds (3), each
client phase's export rate as a ratio to the `alone` of its own round; the median of
those ratios is reported (this machine's speed changes within seconds, by up to 3x: a
single baseline made every other phase's ratio a matter of luck). The paced phases run
once, after the rounds.

Clients are real gRPC clients in separate processes, of two kinds (--client-impl, both by
default, each after the same export-alone baseline):

  go      built like `tetra getevents`: grpc-go and the Go protobuf runtime (Debian's
          packages, installed when missing), every GetEventsResponse decoded into the
          generated types (--go-output json: also written as a protojson line to /dev/null,
          as `tetra getevents -o json` prints it; about 5x the CPU per message of decoding)
          (bench/goclient; built here into the temp dir, nothing generated is committed)
  python  grpcio (this script with --client), parsing every GetEventsResponse (--raw-clients:
          counts bytes only)

Each reports its count, the time of its last message and its CPU time. They consume the stream
on their own thread (grpcio's SingleThreadedUnaryStream channel option, about 8 us of
client CPU per message); --threaded-clients uses grpcio's default consumer, which hands
each message over from its polling thread (about 40 us per message: such a client cannot
take more than about 20k messages/s on one core, whatever the server does).

Before each client phase's replay, the ring is faulted in (what the agent does once, when the
first stream wants records), so the phases compare steady states. The agent writes each event
once, encoded, into the shared-memory ring; its serving
process (vigil.api.fanout, an HTTP/2 server of its own) writes the streams from it.
While every stream's queue is full the agent encodes nothing (counted as each stream's
drops, shown as `skipped`). The
replay starts once all clients are subscribed. Per phase: export events/s, delivered
events/s per client (received / (last message - replay start)), both as ratios to the
export-alone rate, per-client losses (counted by the serving process per client; a
client that cannot keep up loses events, it never slows the export), the CPU time
of the agent, the serving process and each client, and what the agent's event loop lost to
them: the time it was runnable but waited for a CPU, and how often it was preempted
(/proc/thread-self/schedstat and status; the same for export alone, beside it; the paced
phase too). A replay's loop runs on this script's thread, SCHED_NORMAL (the live loop's
SCHED_BATCH is for a loop that keeps up: vigil.agent.pipeline.LoopScheduling), raised by
the boost while it drains 1,024 records or more at a time, as every replay drain here does.

--peer go (off by default): is a Go client's cost per event (about 15 us of CPU) caused by how
Vigil frames the stream? The same Go client against Vigil and against a grpc-go server
(bench/goclient -serve: real grpc-go, one DATA frame per message as grpc-go writes them),
alternated --rounds times, both paced at --peer-rate (20,000 events/s): the grpc-go server
streams the very GetEventsResponse bytes the client got from Vigil first (-dump). Per run:
the client's CPU per event (its getrusage), the HTTP/2 frames it read per event (DATA, their
size, the read calls) and the WINDOW_UPDATE and PING frames it sent per event (-frames), and
as a floor the same client decoding those messages with no gRPC around them (-decode).

    .venv/bin/python bench/grpc_throughput.py [--quick] [-n N] [--rounds 3] [--clients 1,4] [--client-impl go,python]
                                              [--go-output none|json] [--raw-clients] [--threaded-clients]
                                              [--peer go [--peer-rate 20000]]

The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit_json, install_signal_handlers, median, shell_record, synth_exec_exit, tempdir

GET_EVENTS = "/tetragon.FineGuidanceSensors/GetEvents"


# ---------------------------------------------------------------- client process

def client_main(address: str, raw: bool, threaded: bool) -> int:
    import grpc
    import grpc.experimental

    from vigil.api.pb import events_pb2

    deser = None if raw else events_pb2.GetEventsResponse.FromString
    n = nbytes = 0
    first = last = 0.0
    status = "ok"
    # grpcio's default consumer hands every message from its polling thread to this one
    # (about 40 us of CPU per message here, whatever the server): --threaded-clients
    # measures that; by default the stream is consumed on this thread (grpcio's option)
    options = [] if threaded else [(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]
    with grpc.insecure_channel(address, options=options) as ch:
        call = ch.unary_stream(GET_EVENTS, request_serializer=events_pb2.GetEventsRequest.SerializeToString,
                               response_deserializer=deser)(events_pb2.GetEventsRequest())
        try:
            for msg in call:
                last = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
                if not n:
                    first = last
                n += 1
                if raw:
                    nbytes += len(msg)
        except grpc.RpcError as e:  # the agent stopping ends the stream with UNAVAILABLE
            status = e.code().name
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"count": n, "first": first, "last": last, "bytes": nbytes, "status": status,
                      "cpu_s": ru.ru_utime + ru.ru_stime}), flush=True)
    return 0


GO_DEBS = ("golang-go", "golang-google-grpc-dev", "golang-google-protobuf-dev", "golang-golang-x-sys-dev",
           "protobuf-compiler", "protoc-gen-go", "protoc-gen-go-grpc")
GO_TETRAGON = "github.com/cilium/tetragon/api/v1"  # the protos' go_package, as tetra imports it


def build_go_client(tmp: Path) -> str:
    """bench/goclient built against stubs generated from proto/tetragon (GOPATH mode over
    Debian's Go packages: no module download)."""
    if not all(shutil.which(t) for t in ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")) or \
            not Path("/usr/share/gocode/src/google.golang.org/grpc").is_dir():
        print(">> apt-get install " + " ".join(GO_DEBS) + " (the Go client)", file=sys.stderr, flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *GO_DEBS], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
    gopath = tmp / "gopath"
    gen = gopath / "src" / GO_TETRAGON
    gen.mkdir(parents=True)
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "tetragon").glob("*.proto"))
    subprocess.run(["protoc", "-I", "proto", "-I", "/usr/include", f"--go_out=paths=source_relative:{gen}",
                    f"--go-grpc_out=paths=source_relative:{gen}", *protos], cwd=ROOT, check=True)
    src = gopath / "src" / "vigilbench" / "goclient"
    src.mkdir(parents=True)
    for f in (Path(__file__).parent / "goclient").glob("*.go"):
        shutil.copy(f, src / f.name)
    exe = tmp / "vigil-getevents-go"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{gopath}:/usr/share/gocode",
           "GOCACHE": str(tmp / "gocache"), "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(exe), "."], cwd=src, env=env, check=True)
    return str(exe)


GO_OUTPUT = "none"  # --go-output
GO_ARGS: list[str] = []  # more arguments for the Go clients (--peer go: -frames)


def spawn_client(address: str, impl: str, raw: bool, threaded: bool) -> subprocess.Popen[str]:
    if impl != "python":  # the Go client's path
        return subprocess.Popen([impl, "--server-address", address, "-o", GO_OUTPUT, *GO_ARGS], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ([sys.executable, __file__, "--client", address] + (["--raw-clients"] if raw else [])
            + (["--threaded-clients"] if threaded else []))
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_go_server(exe: str, tmp: Path, messages: Path, rate: float) -> dict:
    """One Go client (GO_ARGS) against the grpc-go comparison server streaming `messages`
    (bench/goclient -serve) at `rate` per second (0: as fast as it goes): the client's line."""
    sock = tmp / "go-peer.sock"
    srv = subprocess.Popen([exe, "-serve", str(sock), "-messages", str(messages), "-rate", str(rate)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client: subprocess.Popen[str] | None = None
    try:
        _wait(lambda: sock.exists() or srv.poll() is not None, 60, "the grpc-go server to listen")
        if srv.poll() is not None:
            raise RuntimeError(f"the grpc-go server died: {srv.stderr.read() if srv.stderr else ''}")
        client = spawn_client(f"unix://{sock}", exe, False, False)
        out, err = client.communicate(timeout=600)
        srv.wait(timeout=60)   # it ends after its one stream
    finally:
        for p in (client, srv):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    line = (out or "").strip().splitlines()
    return json.loads(line[-1]) if line else {"error": err[-500:]}


def peer_figures(r: dict) -> dict:
    """A Go client's line (-frames) as per-event figures."""
    n = r.get("count", 0) or 1
    fin, fout = r.get("frames_in", {}), r.get("frames_out", {})
    data = fin.get("DATA", 0)
    return {"received": r.get("count", 0), "status": r.get("status", r.get("error")),
            "cpu_us_per_event": round(1e6 * r.get("cpu_s", 0.0) / n, 2),
            "data_frames_per_event": round(data / n, 4),
            "data_frame_bytes": round(fin.get("data_bytes", 0) / max(data, 1)),
            "reads_per_event": round(fin.get("calls", 0) / n, 4),
            "other_frames_in": {k: v for k, v in fin.items() if k.isupper() and k != "DATA"},
            "window_updates_per_event": round(fout.get("WINDOW_UPDATE", 0) / n, 4),
            "pings_per_event": round(fout.get("PING", 0) / n, 4),
            "writes_per_event": round(fout.get("calls", 0) / n, 4)}


def run_peer_go(records: list[bytes], tmp: Path, exe: str, rate: float, rounds: int) -> dict:
    """--peer go: the Go client against Vigil and against the grpc-go server, alternated."""
    global GO_ARGS
    messages = tmp / "peer-messages.bin"
    saved = GO_ARGS
    try:
        GO_ARGS = [*saved, "-frames", "-dump", str(messages)]   # what Vigil sends, for the grpc-go server
        run_phase(records, tmp, 1, exe, False, False, rate)
        GO_ARGS = [*saved, "-frames"]
        runs: dict[str, list[dict]] = {"vigil": [], "grpc-go": []}
        for i in range(rounds):
            for peer in (("vigil", "grpc-go") if i % 2 == 0 else ("grpc-go", "vigil")):
                if peer == "vigil":
                    ph = run_phase(records, tmp, 1, exe, False, False, rate)
                    runs[peer].append({**peer_figures(ph["client_lines"][0]), "lost": ph["per_client"][0]["lost"]})
                else:   # flow control holds the server back: nothing is lost
                    runs[peer].append({**peer_figures(run_go_server(exe, tmp, messages, rate)), "lost": 0})
    finally:
        GO_ARGS = saved
    floor = subprocess.run([exe, "-decode", "-messages", str(messages)], capture_output=True, text=True, check=True)
    dec = json.loads(floor.stdout.strip().splitlines()[-1])
    messages.unlink()
    return {"rate": rate, "runs": runs, "decode_only_us_per_event": round(1e6 * dec["cpu_s"] / max(dec["count"], 1), 2),
            "messages": dec["count"]}


def print_peer_go(peer: dict) -> None:
    print(f"  --peer go: one Go client, paced at {peer['rate']:,.0f} events/s, against Vigil and against a grpc-go "
          f"server streaming the same {peer['messages']} messages (runs alternated)", flush=True)
    for name, runs in peer["runs"].items():
        for r in runs:
            print(f"{name:>14}: client {r['cpu_us_per_event']:5.2f} us CPU/event, {r['received']} received "
                  f"({r['lost']} lost) [{r['status']}]; per event: DATA frames {r['data_frames_per_event']:.3f} "
                  f"({r['data_frame_bytes']} B each), reads {r['reads_per_event']:.3f}, sent WINDOW_UPDATE "
                  f"{r['window_updates_per_event']:.4f}, PING {r['pings_per_event']:.4f}", flush=True)
        print(f"{'':>16}median {median([r['cpu_us_per_event'] for r in runs]):.2f} us/event", flush=True)
    print(f"{'decode only':>14}: {peer['decode_only_us_per_event']:.2f} us CPU/event (proto.Unmarshal of the same "
          f"messages, no gRPC)", flush=True)


# ---------------------------------------------------------------- one phase

class PacedReplay:
    """The records released at `rate` per second from the first wait() on (the agent's
    replay-source interface: wait, drain, exhausted, close)."""

    def __init__(self, records: list[bytes], rate: float) -> None:
        self.records, self.rate = records, rate
        self.pos = 0
        self.t0 = 0.0

    def _due(self) -> int:
        if not self.t0:
            self.t0 = time.monotonic()
        step = int((time.monotonic() - self.t0) * 1000)  # whole milliseconds
        return min(len(self.records), int(step * self.rate / 1000))

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.records)

    def wait(self, timeout: float) -> bool:
        if not self.exhausted and self._due() <= self.pos:
            time.sleep(min(timeout, 0.001))
        return self._due() > self.pos

    def drain(self) -> list[bytes]:
        due = self._due()
        out = self.records[self.pos : due]
        self.pos = max(self.pos, due)
        return out

    def close(self) -> None:
        self.pos = len(self.records)


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def run_phase(records: list[bytes], tmp: Path, n_clients: int, impl: str, raw: bool, threaded: bool,
              rate: float = 0.0) -> dict:
    from vigil.agent.agent import Agent
    from vigil.agent.config import AgentConfig
    from vigil.agent.frontends import attach_frontends
    from vigil.events.source import ReplaySource

    export = tmp / f"export-{n_clients}.json"
    export.unlink(missing_ok=True)  # each phase writes its own file from empty
    sock = tmp / "vigil.sock"
    address = f"unix://{sock}" if n_clients else ""
    cfg = AgentConfig(export_filename=str(export), server_address=address, info_file="",
                      export_file_max_size_mb=100_000, node_name="bench-node")
    agent = Agent(cfg, source=PacedReplay(records, rate) if rate else ReplaySource(records))
    attach_frontends(agent)
    procs: list[subprocess.Popen[str]] = []
    agent.start()
    fe = next((f for f in agent.frontends if hasattr(f, "ring")), None)
    try:
        for i in range(n_clients):
            procs.append(spawn_client(address, impl, raw, threaded))
            _wait(lambda: fe.stats()["streams_active"] == i + 1  # noqa: B023 - called within this iteration
                  or procs[-1].poll() is not None, 60, f"client {i + 1} to subscribe")
            if procs[-1].poll() is not None:
                raise RuntimeError(f"client {i + 1} died: {procs[-1].stderr.read()}")
        if fe is not None:
            # steady state: the ring faulted in first, as the agent does once when a stream first
            # wants records (64 MB, ~50 ms of a thread: ~10% of a 200k-event phase, once in an
            # agent's life), not inside the measured replay
            fe.ring.populate()
            fe.ring.wait_populated(60)
        cpu0 = _cpu_self(), [_cpu_pid(p.pid) for p in (fe.procs if fe is not None else [])]
        sched0 = _sched_self()
        t0 = time.monotonic()
        agent.run()
        t_export = time.monotonic() - t0
        sched = [b - a for a, b in zip(sched0, _sched_self())]
        cpu_agent = _cpu_self() - cpu0[0]
        n_events = sum(agent.pipeline.events_by_type.values())
        dropped: list[int] = []
        grpc_stats: dict = {}
        cpu_serving = 0.0
        if fe is not None:
            # the serving process sends what is still queued (a client too slow loses it)
            last, still = None, 0
            while still < 10:
                cur = [(c["sent"], c["dropped"]) for c in fe.stats()["clients"]]
                still = still + 1 if cur == last else 0
                last = cur
                time.sleep(0.1)
            clients = sorted(fe.stats()["clients"], key=lambda c: int(c["peer"].rsplit("#", 1)[1]))
            dropped = [c["dropped"] for c in clients]
            grpc_stats = fe.stats()
            cpu_serving = sum(_cpu_pid(p.pid) - c for p, c in zip(fe.procs, cpu0[1]))
    finally:
        agent.close()  # stops the server: clients' streams end
        results = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            line = (out or "").strip().splitlines()
            results.append(json.loads(line[-1]) if line else {"error": err[-500:]})
    clients = []
    for r, d in zip(results, dropped):
        cnt = r.get("count", 0)
        span = (r["last"] - t0) if cnt else float("nan")
        clients.append({"received": cnt, "lost": d, "events_per_s": cnt / span if cnt else 0.0,
                        "status": r.get("status", r.get("error"))})
    return {"clients": n_clients, "impl": "go" if impl != "python" else "python", "events": n_events, "rate": rate,
            "export_seconds": t_export,
            "export_events_per_s": n_events / t_export, "per_client": clients, "client_lines": results,
            "grpc": grpc_stats,
            "cpu_s": {"agent_export": round(cpu_agent, 3), "serving": round(cpu_serving, 3),
                      "clients": [round(r.get("cpu_s", 0.0), 3) for r in results]},
            "agent_loop": {"ran_s": round(sched[0], 3), "waited_s": round(sched[1], 3),
                           "preempted": int(sched[2])}}


def _cpu_self() -> float:
    """CPU seconds of this process's threads (the agent runs in this process)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _sched_self() -> tuple[float, float, float]:
    """The calling thread (the agent's event loop in a replay) so far: seconds on a CPU,
    seconds runnable but waiting for one (/proc schedstat), and times it was preempted
    (involuntary context switches): what the export loses to the other processes."""
    ran, waited, _ = Path("/proc/thread-self/schedstat").read_text().split()
    status = Path("/proc/thread-self/status").read_text()
    preempted = int(status.rsplit("nonvoluntary_ctxt_switches:", 1)[1].split()[0])
    return int(ran) / 1e9, int(waited) / 1e9, float(preempted)


def _cpu_pid(pid: int) -> float:
    """CPU seconds of another process so far (utime + stime from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=20000 events")
    ap.add_argument("-n", type=int, default=0, help="events to replay (default 200000)")
    ap.add_argument("--clients", default="1,4", help="client counts to run after export alone")
    ap.add_argument("--rounds", type=int, default=0,
                    help="rounds of export alone + every client phase, interleaved (default 3; --quick 1)")
    ap.add_argument("--client-impl", default="go,python", help="client kinds to run: go, python or both")
    ap.add_argument("--go-output", choices=("none", "json"), default="none",
                    help="Go clients: decode only, or also write protojson lines as tetra -o json")
    ap.add_argument("--raw-clients", action="store_true", help="Python clients count bytes, do not parse")
    ap.add_argument("--threaded-clients", action="store_true",
                    help="clients consume with grpcio's default (threaded) consumer")
    ap.add_argument("--paced-rate", type=float, default=60_000,
                    help="events/s of the paced phase (one client of each kind; 0: skip it)")
    ap.add_argument("--peer", choices=("none", "go"), default="none",
                    help="go: also compare the Go client's CPU per event against Vigil and a grpc-go server")
    ap.add_argument("--peer-rate", type=float, default=20_000, help="events/s of the --peer phases")
    ap.add_argument("--client", metavar="ADDRESS", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        return client_main(a.client, a.raw_clients, a.threaded_clients)
    global GO_OUTPUT
    GO_OUTPUT = a.go_output
    install_signal_handlers()
    n = a.n or (20_000 if a.quick else 200_000)
    a.rounds = a.rounds or (1 if a.quick else 3)
    records = [shell_record()] + synth_exec_exit(n)
    counts = [int(x) for x in a.clients.split(",") if x.strip()]
    impls = [x.strip() for x in a.client_impl.split(",") if x.strip()]
    if not impls or set(impls) - {"go", "python"}:
        ap.error(f"--client-impl: go, python or go,python, not {a.client_impl!r}")
    if a.peer == "go" and "go" not in impls:
        ap.error("--peer go compares the Go client: --client-impl must include go")
    kinds = {"go": f"Go (grpc-go, {'decoded' if a.go_output == 'none' else 'decoded, written as protojson'})",
             "python": f"Python (grpcio, {'raw' if a.raw_clients else 'parsing'}, "
                       f"{'threaded' if a.threaded_clients else 'single-threaded'} consumer)"}
    print(f"grpc_throughput: {n} exec/exit events replayed, cpus={os.cpu_count()}; clients: "
          + ", ".join(kinds[i] for i in impls), flush=True)
    rounds: list[dict] = []   # each: export alone, then every client phase, back to back
    paced = []
    with tempdir("vigil-grpc-bench-", memory=True) as tmp:
        paths = {i: build_go_client(tmp) if i == "go" else "python" for i in impls}
        for _ in range(a.rounds):
            alone = run_phase(records, tmp, 0, "python", a.raw_clients, a.threaded_clients)
            phases = [run_phase(records, tmp, k, paths[i], a.raw_clients, a.threaded_clients)
                      for i in impls for k in counts]
            rounds.append({"alone": alone, "phases": phases})
            base = alone["export_events_per_s"]
            for ph in phases:
                ph["export_ratio"] = ph["export_events_per_s"] / base
                for c in ph["per_client"]:
                    c["ratio"] = c["events_per_s"] / base
        if a.paced_rate:
            paced = [run_phase(records, tmp, 1, paths[i], a.raw_clients, a.threaded_clients, a.paced_rate)
                     for i in impls]
        peer = run_peer_go(records, tmp, paths["go"], a.peer_rate, a.rounds) if a.peer == "go" else None
    alone_rates = [r["alone"]["export_events_per_s"] for r in rounds]
    alone_cpu = [r["alone"]["cpu_s"]["agent_export"] for r in rounds]
    print(f"  export alone: {' / '.join(f'{x:,.0f}' for x in alone_rates)} ev/s in rounds 1..{len(rounds)} "
          f"(agent CPU {' / '.join(f'{x:.2f}' for x in alone_cpu)} s)", flush=True)
    summary: dict = {"n": n, "cpus": os.cpu_count(), "raw_clients": a.raw_clients,
                     "threaded_clients": a.threaded_clients, "go_output": a.go_output, "rounds": len(rounds),
                     "export_alone_events_per_s": [round(x) for x in alone_rates],
                     "alone_loop_waited_s_rounds": [r["alone"]["agent_loop"]["waited_s"] for r in rounds],
                     "alone_loop_preempted_rounds": [r["alone"]["agent_loop"]["preempted"] for r in rounds]}
    for j in range(len(rounds[0]["phases"])):
        across = [r["phases"][j] for r in rounds]
        ratios = [ph["export_ratio"] for ph in across]
        ph = sorted(across, key=lambda p: p["export_ratio"])[len(across) // 2]  # the median round's details
        label = f"{ph['clients']} {ph['impl']} client(s)"
        print(f"{label:>14}: export kept x{median(ratios):.2f} (median; rounds "
              f"{', '.join(f'{x:.2f}' for x in ratios)}); the median round: export "
              f"{ph['export_events_per_s']:,.0f} ev/s", flush=True)
        for i, c in enumerate(ph["per_client"]):
            print(f"{'':>16}client {i + 1}: {c['received']:>8} received, {c['lost']:>7} lost, "
                  f"{c['events_per_s']:>9,.0f} ev/s delivered (x{c['ratio']:.2f} of export alone) [{c['status']}]",
                  flush=True)
        cpu = ph["cpu_s"]
        print(f"{'':>16}CPU s: agent {cpu['agent_export']:.2f} (during the export), serving process(es) "
              f"{cpu['serving']:.2f}, clients {' '.join(f'{c:.2f}' for c in cpu['clients']) or '-'}", flush=True)
        loop, alone_loop = ph["agent_loop"], rounds[across.index(ph)]["alone"]["agent_loop"]
        print(f"{'':>16}agent's loop: waited {loop['waited_s']:.3f} s for a CPU, preempted {loop['preempted']} "
              f"times (export alone: {alone_loop['waited_s']:.3f} s, {alone_loop['preempted']})", flush=True)
        if ph["grpc"]:
            g = ph["grpc"]
            print(f"{'':>16}ring: {g['ring']['records']} of {ph['events']} events encoded and written once by the "
                  f"agent ({g['ring']['skipped_no_room']} skipped: every stream full), {g['ring']['lost']} "
                  f"lost to laps; {g['serving_processes']} serving process(es)", flush=True)
        k = f"{ph['impl']}_{ph['clients']}"
        rates = [c["events_per_s"] for c in ph["per_client"]]
        summary[f"{k}_export_ratio"] = round(median(ratios), 3)
        summary[f"{k}_export_ratio_rounds"] = [round(x, 3) for x in ratios]
        summary[f"{k}_delivered_ratio_min"] = round(min(c["ratio"] for c in ph["per_client"]), 3) if rates else 0
        summary[f"{k}_delivered_events_per_s"] = [round(r) for r in rates]
        summary[f"{k}_received"] = [c["received"] for c in ph["per_client"]]
        summary[f"{k}_lost"] = [c["lost"] for c in ph["per_client"]]
        summary[f"{k}_loop_waited_s_rounds"] = [r["agent_loop"]["waited_s"] for r in across]
        summary[f"{k}_loop_preempted_rounds"] = [r["agent_loop"]["preempted"] for r in across]
    for ph in paced:
        c = ph["per_client"][0]
        print(f"{'1 ' + ph['impl'] + ', paced':>14}: export {ph['export_events_per_s']:>9,.0f} ev/s (paced at "
              f"{ph['rate']:,.0f}); client received {c['received']} of {ph['events']} ({c['lost']} lost), "
              f"{c['events_per_s']:,.0f} ev/s [{c['status']}]", flush=True)
        print(f"{'':>16}CPU s: agent {ph['cpu_s']['agent_export']:.2f}, serving process(es) "
              f"{ph['cpu_s']['serving']:.2f}, client {ph['cpu_s']['clients'][0]:.2f}", flush=True)
        loop = ph["agent_loop"]
        print(f"{'':>16}agent's loop: waited {loop['waited_s']:.3f} s for a CPU, preempted {loop['preempted']} "
              f"times", flush=True)
        summary[f"{ph['impl']}_paced"] = {"rate": ph["rate"], "exported": ph["events"], "received": c["received"],
                                          "lost": c["lost"], "delivered_events_per_s": round(c["events_per_s"]),
                                          "loop_waited_s": loop["waited_s"], "loop_preempted": loop["preempted"]}
    if peer is not None:
        print_peer_go(peer)
        summary["peer_go"] = {"rate": peer["rate"], "decode_only_us_per_event": peer["decode_only_us_per_event"],
                              **peer["runs"]}
    emit_json("grpc_throughput", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
