"""`vigil agent` as users run it: CLI process, gRPC clients, metrics, clean stop."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.bpfstate import prog_ids_held, require_root, still_loaded
from tests.kernel.policytext import openat_policy, openat_selector

pytestmark = pytest.mark.kernel
VIGIL = [sys.executable, "-m", "vigil.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    def __init__(self, tmp: Path, extra: list[str] | None = None, env: dict[str, str] | None = None,
                 command: list[str] | None = None, cwd: Path | None = None) -> None:
        self.sock = f"unix://{tmp}/vigil.sock"
        self.export = tmp / "export.log"
        self.info = tmp / "info.json"
        self.metrics_port = free_port()
        self.stderr = tmp / "agent.err"
        self.proc = subprocess.Popen(
            [*(command or VIGIL), "agent", "--export-filename", str(self.export), "--server-address", self.sock,
             "--metrics-server", f"127.0.0.1:{self.metrics_port}", "--info-file", str(self.info),
             *(extra or [])],
            stdout=subprocess.DEVNULL, stderr=open(self.stderr, "wb"), env=env, cwd=cwd,
        )
        deadline = time.monotonic() + 60
        while b"vigil agent ready" not in self.stderr.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("agent did not start:\n" + self.stderr.read_text())
            time.sleep(0.05)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VIGIL, *args, "--server-address", self.sock], capture_output=True, text=True,
                              timeout=timeout)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


@pytest.fixture
def agent_proc(tmp_path: Path) -> Iterator[AgentProcess]:
    require_root()
    ap = AgentProcess(tmp_path)
    try:
        yield ap
    finally:
        ap.stop()


def test_serving_process_never_runs_code_from_the_working_directory(tmp_path: Path):
    """A root agent started in a directory others can write (/tmp) runs only its own code:
    its gRPC serving process is started so that the working directory is not on its path."""
    require_root()
    cwd, marker = tmp_path / "cwd", tmp_path / "ran-from-the-working-directory"
    (cwd / "vigil" / "api").mkdir(parents=True)
    (cwd / "vigil" / "__init__.py").write_text("")
    (cwd / "vigil" / "api" / "__init__.py").write_text("")
    (cwd / "vigil" / "api" / "fanout.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(1)\n")
    # the console script users run (`python -m` would put the working directory on the agent's own path)
    ap = AgentProcess(tmp_path, command=[str(Path(sys.executable).parent / "vigil")], cwd=cwd)
    try:
        r = ap.cli("status")
        assert r.returncode == 0 and "Health Status: running" in r.stdout, r.stdout + r.stderr
    finally:
        ap.stop()
    assert not marker.exists()


def metric_value(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in metrics"
    return float(m.group(1))


def test_getevents_compact_streams_live_events(agent_proc: AgentProcess, workdir: Path):
    ge = subprocess.Popen([*VIGIL, "getevents", "-o", "compact", "--color", "never", "--server-address",
                           agent_proc.sock, "--process", re.escape(str(workdir))],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # let the stream subscribe before the action
        child = workdir / "child"
        subprocess.run([str(child), "hello", "compact"], check=True, stdout=subprocess.DEVNULL)
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(ln.startswith("💥") for ln in lines):
            lines.append(ge.stdout.readline().rstrip("\n"))
        # root runs with every capability: lines end with the caps trailer, and the arguments (with a space) are quoted as tetra
        assert any(ln.startswith(f"🚀 process {socket.gethostname()} {child} \"hello compact\" ") for ln in lines), lines
        assert any(ln.startswith(f"💥 exit    {socket.gethostname()} {child} \"hello compact\" 0") for ln in lines), lines
    finally:
        ge.kill()
        ge.wait()


def exec_count(text: str, binary: str) -> float:
    """tetragon_events_total of the execs of `binary` (Tetragon's binary label)."""
    return sum(float(v) for labels, v in re.findall(r"^tetragon_events_total{(.*)} (\S+)$", text, re.M)
               if 'type="PROCESS_EXEC"' in labels and f'binary="{binary}"' in labels)


def test_status_and_metrics_count_a_known_workload(agent_proc: AgentProcess, workdir: Path):
    truebin = str(workdir / "truebin")
    assert exec_count(agent_proc.metrics(), truebin) == 0
    for i in range(25):
        subprocess.run([truebin, str(i)], check=True)
    deadline = time.monotonic() + 30
    after = 0.0
    while time.monotonic() < deadline and after < 25:
        time.sleep(0.1)
        after = exec_count(agent_proc.metrics(), truebin)
    assert after == 25
    text = agent_proc.metrics()
    # Tetragon's labels: the opcode number (5: execve) and the errno name of the failed ring buffer output
    for op in ("5", "7", "23", "13"):
        assert metric_value(text, "tetragon_bpf_missed_events_total", f'{{error="EAGAIN",msg_op="{op}"}}') == 0
    assert metric_value(text, "tetragon_map_errors_update_total", '{map="execve_map"}') == 0
    assert metric_value(text, "tetragon_process_cache_size") > 0
    st = agent_proc.cli("status", "-o", "json")
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert "ringbuf_full_exec" in json.dumps(data)


def _threads(pid: int) -> dict[int, tuple[int, int]]:
    """Each thread of `pid`: (nice, scheduling policy), from /proc/<pid>/task/<tid>/stat."""
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        stat = (t / "stat").read_text()
        rest = stat[stat.rindex(")") + 2:].split()  # fields 3.. (comm may hold spaces)
        out[int(t.name)] = (int(rest[19 - 3]), int(rest[41 - 3]))
    return out


def test_the_event_loop_alone_runs_raised_and_in_batch_scheduling(agent_proc: AgentProcess):
    """The live event loop's thread: SCHED_BATCH, and 4 nice levels (the default
    --event-loop-priority-boost) above the agent's other threads, which keep their nice."""
    threads = _threads(agent_proc.proc.pid)
    loop = [tid for tid, (_nice, policy) in threads.items() if policy == os.SCHED_BATCH]
    assert len(loop) == 1, threads
    others = {nice for tid, (nice, _p) in threads.items() if tid != loop[0]}
    assert len(others) == 1, threads   # (the loop runs on the main thread: the others started with its nice)
    assert threads[loop[0]][0] == max(-20, others.pop() - 4), threads


def test_sigterm_stops_cleanly_and_removes_everything(agent_proc: AgentProcess):
    assert json.loads(agent_proc.info.read_text())["server_address"] == agent_proc.sock
    ids = prog_ids_held(agent_proc.proc.pid)
    assert ids, "agent holds no BPF programs?"
    assert agent_proc.stop() == 0
    assert not agent_proc.info.exists()
    assert not Path(agent_proc.sock[len("unix://"):]).exists()
    assert not still_loaded(ids)


def test_agent_unreachable_is_a_clear_error(tmp_path: Path):
    r = subprocess.run([*VIGIL, "status", "--server-address", f"unix://{tmp_path}/none.sock", "--timeout", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "none.sock" in r.stderr and "Traceback" not in r.stderr


REFUSED_POLICY = openat_policy("refused", openat_selector("/x", index=3))  # no argument 3


def test_policy_refused_at_start_is_one_error_line(tmp_path: Path):
    pol = tmp_path / "refused.yaml"
    pol.write_text(REFUSED_POLICY)
    r = subprocess.run([*VIGIL, "agent", "--tracing-policy", str(pol), "--server-address", "",
                        "--info-file", str(tmp_path / "info.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vigil agent: ")]
    assert errors == [f"vigil agent: {pol}:10:27: spec.kprobes[0].selectors[0].matchArgs[0].index: index 3 does not "
                      "match any args[].index of the hook (defined: 1)"], r.stderr


def test_policy_refused_at_start_with_warn_starts_without_it(tmp_path: Path):
    pol = tmp_path / "refused.yaml"
    pol.write_text(REFUSED_POLICY)
    agent = AgentProcess(tmp_path, ["--tracing-policy", str(pol), "--tracing-policy-on-error", "warn"])
    try:
        err = agent.stderr.read_text()
        assert "policy not loaded, starting without it" in err and f"{pol}:10:" in err
        r = agent.cli("tracingpolicy", "list", "-o", "json")
        assert r.returncode == 0 and "refused" not in r.stdout, r.stderr
    finally:
        assert agent.stop() == 0


def test_tracingpolicy_add_list_delete_over_grpc(agent_proc: AgentProcess, tmp_path: Path):
    pol = tmp_path / "p.yaml"
    pol.write_text(openat_policy("grpc-open", openat_selector("/nonexistent/vigil-grpc")))
    r = agent_proc.cli("tracingpolicy", "add", str(pol))
    assert r.returncode == 0, r.stderr
    r = agent_proc.cli("tracingpolicy", "list", "-o", "json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    pols = listed["policies"] if isinstance(listed, dict) else listed
    (p,) = [x for x in pols if x["name"] == "grpc-open"]
    assert "sys_enter_openat" in json.dumps(p)
    # the agent holds the hook's program now
    ids_before = prog_ids_held(agent_proc.proc.pid)
    assert len(ids_before) >= 4  # process sensor (3) + the hook
    dup = agent_proc.cli("tracingpolicy", "add", str(pol))
    assert dup.returncode != 0 and "exists" in (dup.stderr + dup.stdout)
    r = agent_proc.cli("tracingpolicy", "delete", "grpc-open")
    assert r.returncode == 0, r.stderr
    assert len(prog_ids_held(agent_proc.proc.pid)) == len(ids_before) - 1
    missing = agent_proc.cli("tracingpolicy", "delete", "grpc-open")
    assert missing.returncode != 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(pol.read_text().replace("operator: Equal", "operator: Equals"))
    r = agent_proc.cli("tracingpolicy", "add", str(bad))
    assert r.returncode != 0 and "Equals" in (r.stderr + r.stdout)


NO_SUCH_CALL = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: named-in-file
spec:
  kprobes:
  - call: "no_such_syscall_vigil"
"""


def test_tracingpolicy_add_refusal_names_the_file(agent_proc: AgentProcess, tmp_path: Path):
    """A policy the agent refuses is reported at the file's line and column, as `vigil policy
    validate` and `vigil agent --tracing-policy` report it; the agent's own name for text
    sent over gRPC (`<grpc>`) meant nothing to the user. With -m the text sent is rewritten:
    the positions are said to be those `tp modify -m` prints."""
    pol = tmp_path / "p.yaml"
    call = 'spec.kprobes[0].call: "no_such_syscall_vigil" is not an x86_64 syscall'
    for text, args, first, last in [
        (NO_SUCH_CALL, [], f"Error: INVALID_ARGUMENT: {pol}:7:11: {call}", None),
        ("# a comment moves it a line down\n" + NO_SUCH_CALL, [], f"Error: INVALID_ARGUMENT: {pol}:8:11: {call}",
         None),
        (NO_SUCH_CALL, ["-m", "monitor"], f"Error: INVALID_ARGUMENT: {pol} (-m monitor):", "`vigil tracingpolicy "
         f"modify -m monitor {pol}` prints it)"),
        (NO_SUCH_CALL.replace("no_such_syscall_vigil", "sys_getppid"), [], None, None),  # loads
        (NO_SUCH_CALL.replace("no_such_syscall_vigil", "sys_getppid"), [],
         f"Error: ALREADY_EXISTS: {pol}:4:9: metadata.name: policy 'named-in-file' already exists", None),
    ]:
        pol.write_text(text)
        r = agent_proc.cli("tracingpolicy", "add", *args, str(pol))
        if first is None:
            assert r.returncode == 0, r.stderr
            continue
        lines = r.stderr.splitlines()
        assert r.returncode == 1 and "<grpc>" not in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith(first), r.stderr
        if last is not None:
            assert lines[-1].endswith(last), r.stderr
    assert agent_proc.cli("tracingpolicy", "delete", "named-in-file").returncode == 0




@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_a_second_agent_on_the_same_address_is_refused(tmp_path: Path, kind: str):
    """A second agent given a running agent's --server-address started: on a unix socket it
    replaced the socket (the first agent's clients could no longer reach it, and the socket
    was gone once the second stopped), on TCP it shared the port (SO_REUSEPORT: connections
    went to either agent). It is refused now, naming the address, and the first keeps it."""
    require_root()
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    address = f"unix://{first_dir}/vigil.sock" if kind == "unix" else f"127.0.0.1:{free_port()}"
    first = AgentProcess(first_dir, ["--server-address", address] if kind == "tcp" else None)
    try:
        r = subprocess.run([*VIGIL, "agent", "--server-address", address, "--info-file", str(second_dir / "info.json"),
                            "--export-filename", str(second_dir / "export.log")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"vigil agent: cannot listen on {address}: another process is listening there" in r.stderr, r.stderr
        status = subprocess.run([*VIGIL, "status", "--server-address", address, "-o", "json", "--timeout", "10"],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"]["export"]["file"] == str(first.export)
    finally:
        assert first.stop() == 0


@pytest.mark.parametrize("host", ["127.0.0.1", ""])
def test_a_metrics_port_in_use_is_named(tmp_path: Path, host: str):
    """`vigil agent: [Errno 98] Address already in use` named neither --metrics-server nor the
    address (the gRPC address in use was named): one line naming both now, exit 1."""
    require_root()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([*VIGIL, "agent", "--server-address", "", "--metrics-server", f"{host}:{port}",
                            "--info-file", str(tmp_path / "info.json"), "--export-filename", str(tmp_path / "e.log")],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vigil agent: ")]
    assert errors == [f"vigil agent: --metrics-server {host or '0.0.0.0'}:{port}: cannot listen: "
                      "Address already in use"], r.stderr


def test_a_stale_unix_socket_is_replaced(tmp_path: Path):
    """A socket file nobody listens on (an agent that was killed) does not keep the next one out."""
    require_root()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "vigil.sock"))
    stale.close()  # the file stays, nobody listens
    agent = AgentProcess(tmp_path)
    try:
        r = agent.cli("status", "-o", "json")
        assert r.returncode == 0, r.stderr
    finally:
        assert agent.stop() == 0


def test_stopping_the_agent_removes_its_denies(tmp_path: Path):
    from tests import enforce_cases as C

    require_root()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    pol = tmp_path / "deny.yaml"
    pol.write_text(C.connect_deny(port))
    ap = AgentProcess(tmp_path, extra=["--tracing-policy", str(pol)])
    try:
        ids = prog_ids_held(ap.proc.pid)
        assert C.run_connect_case(srv)["connect_errno"] == 1  # denied while the agent runs
        assert ap.stop() == 0
    finally:
        ap.stop()
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # the deny left with the agent
    srv.close()
    assert not still_loaded(ids)


def test_tetras_commands_against_the_agent(agent_proc: AgentProcess):
    """tetra's loglevel, eventlog, dump, info, tp domains, sensors, version -s -b and global
    flags, run as a user would against a running agent."""
    ap = agent_proc
    for args, want in [
        (["loglevel", "get"], r"^Current log level: LOG_LEVEL_INFO\n$"),
        (["loglevel", "set", "debug"], r"^Log level set to: LOG_LEVEL_DEBUG\n$"),
        (["log", "get"], r"^Current log level: LOG_LEVEL_DEBUG\n$"),
        (["loglevel", "set", "info"], r"^Log level set to: LOG_LEVEL_INFO\n$"),
        (["eventlog", "set", "--max-backups", "3", "--rotation-interval", "1h"], r"^$"),
        (["eventlog", "get"], r'^Current logging parameters: max_size:\d+ rotation_interval:"1h0m0s" max_backups:3\n$'),
        (["dump", "processcache", "--skip-zero-refcnt"], r'^\{"process": \{'),
        (["info"], r'^\{"Name":"vigil","Version":'),
        (["tp", "domains"], r"^\[.*grpc.*\]\n$"),
        (["sensors", "list"], r"\((enabled|not enabled)\)"),
        (["version", "-s", "-b"], r"^CLI version: .*\nServer version: .*\nPythonVersion: "),
        (["--timeout", "10s", "--retries", "0", "tp", "list", "-o", "json"], r'^\{"policies":\['),
    ]:
        r = ap.cli(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert re.search(want, r.stdout), (args, r.stdout)
    pids = {json.loads(line)["process"]["pid"] for line in ap.cli("dump", "processcache").stdout.splitlines()}
    assert ap.proc.pid in pids  # the agent's own process is among the cached ones


def test_info_reports_the_kernel_probes_vigil_found(agent_proc: AgentProcess):
    """`vigil info` printed "Probes":{}: it is the agent's feature probe (what `vigil probe`
    finds on this kernel), each feature's name (Tetragon's where it probes the same thing) ->
    whether it works, keys sorted, as tetra's info prints it."""
    from vigil.kernel.features import TETRAGON_PROBE_NAMES

    info = agent_proc.cli("info")
    assert info.returncode == 0, info.stderr
    probes = json.loads(info.stdout)["Probes"]
    probed = subprocess.run([*VIGIL, "probe", "-o", "json"], capture_output=True, text=True, timeout=120)
    assert probed.returncode == 0, probed.stderr
    want = dict(sorted((TETRAGON_PROBE_NAMES.get(name, name), f["supported"] is True)
                       for name, f in json.loads(probed.stdout).items()))
    assert list(probes.items()) == list(want.items())
    assert "fmodret" in probes and "signal" in probes and "fmod_ret" not in probes
    assert probes["tracepoint"] is True  # what the agent's process sensor runs on
