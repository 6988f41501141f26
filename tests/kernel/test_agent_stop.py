"""SIGINT/SIGTERM at any moment of `vigil agent`'s life: while it starts (a large policy
directory loading), and a second one while it stops.

One signal while starting: the start stops at its next step (not after every policy of the
directory), everything it made is removed, one clear line, exit status 0. A second signal
while stopping: the agent exits at once (128 + signal), the kernel removes what it held, and
the next start is not hindered. Each agent pins into a BPF file system this test mounts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.bpfstate import require_root, still_loaded
from tests.kernel.test_agent_cli import VIGIL, AgentProcess, free_port
from tests.overlapcheck import FirstWaitsForSecond
from tests.stoppolicies import SYSCALLS, write_policies
from vigil.kernel import sys as ksys

pytestmark = pytest.mark.kernel


# hooks of the policy of many: a policy loads in ~10 s in the VM tier's emulated guests
MANY_HOOKS = 10


def mixed_policy_docs(n: int) -> list[str]:
    """Policies whose hooks have more than one link and an order to keep: a kprobe with its
    return side, an enforcer with the hook that leaves it notes, one policy of n tracepoints.
    Each needs a binary that never runs."""
    tps = "\n".join(f"""- subsystem: syscalls
  event: sys_enter_{sc}
  args: [{{index: 0}}]
  selectors:
  - matchBinaries: [{{operator: In, values: ["/nonexistent/stop-test-many"]}}]""" for sc in SYSCALLS[:n])
    head = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\n"
    return [head + """metadata: {name: stop-test-kretprobe}
spec:
  kprobes:
  - call: sys_getppid
    syscall: true
    return: true
    returnArg: {index: 0, type: int}
    selectors:
    - matchBinaries: [{operator: In, values: ["/nonexistent/stop-test-kretprobe"]}]
""", head + """metadata: {name: stop-test-enforcer}
spec:
  lists:
  - {name: dups, type: syscalls, values: [sys_dup]}
  enforcers:
  - calls: ["list:dups"]
  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    args: [{index: 4, type: syscall64}]
    selectors:
    - matchArgs: [{index: 4, operator: InMap, values: ["list:dups"]}]
      matchBinaries: [{operator: In, values: ["/nonexistent/stop-test-enforcer"]}]
      matchActions: [{action: NotifyEnforcer, argSig: 9}]
""", head + "metadata: {name: stop-test-many}\nspec:\n  tracepoints:\n" + "\n".join(
        "  " + line for line in tps.splitlines()) + "\n"]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Path]]:
    require_root()
    write_policies(tmp_path / "policies", len(SYSCALLS))
    write_policies(tmp_path / "few", 10)
    write_policies(tmp_path / "one-file", len(SYSCALLS), one_file=True)
    write_policies(tmp_path / "one", 1)
    (tmp_path / "mixed").mkdir()
    for i, doc in enumerate(mixed_policy_docs(MANY_HOOKS)):
        (tmp_path / "mixed" / f"m{i}.yaml").write_text(doc)
    (tmp_path / "none").mkdir()
    bpffs = Path(tempfile.mkdtemp(prefix="vigil-test-bpffs-"))
    ksys.mount("bpf", str(bpffs), "bpf")
    try:
        yield {"tmp": tmp_path, "policies": tmp_path / "policies", "few": tmp_path / "few",
               "one-file": tmp_path / "one-file", "none": tmp_path / "none", "one": tmp_path / "one",
               "mixed": tmp_path / "mixed", "bpffs": bpffs}
    finally:
        ksys.umount(str(bpffs))  # drops every pin left in it
        os.rmdir(bpffs)


def held_ids(pid: int) -> tuple[set[int], set[int]]:
    """(program ids, link ids) process `pid` holds fds for; empty once it is gone."""
    progs: set[int] = set()
    links: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return progs, links
    for fd in fds:
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "prog_id":
                progs.add(int(value))
            elif key == "link_id":
                links.add(int(value))
    return progs, links


def loaded_link_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {k["id"] for k in json.loads(out or "[]")}


class Run:
    """`vigil agent` with the test's policy directory; what it held, sampled until it exits."""

    def __init__(self, env: dict[str, Path], name: str, extra: list[str], policies: str = "policies",
                 command: list[str] | None = None) -> None:
        d = env["tmp"] / name
        d.mkdir()
        self.stderr = d / "agent.err"
        self.files = [d / "vigil.sock", d / "info.json"]  # the gRPC socket and server info file
        self.proc = subprocess.Popen(
            [*(command or VIGIL), "agent", "--tracing-policy-dir", str(env[policies]), "--server-address",
             f"unix://{d}/vigil.sock", "--info-file", str(d / "info.json"), "--bpf-dir", str(env["bpffs"] / "vigil"),
             *extra], stdout=subprocess.DEVNULL, stderr=open(self.stderr, "wb"))
        self.progs: set[int] = set()
        self.links: set[int] = set()

    def sample(self) -> None:
        p, k = held_ids(self.proc.pid)
        self.progs |= p
        self.links |= k

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr.read_text():
            self.sample()
            assert self.proc.poll() is None and time.monotonic() < deadline, \
                f"agent never logged {text!r}:\n{self.stderr.read_text()}"
            time.sleep(0.02)

    def wait_exit(self) -> int:
        deadline = time.monotonic() + 120
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.sample()
            time.sleep(0.02)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("agent still running 120 s after the signal:\n" + self.stderr.read_text())
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def pinned_files(bpffs: Path) -> list[str]:
    return [os.path.join(r, f) for r, _, fs in os.walk(bpffs) for f in fs]


def probe_cgroups(pid: int) -> list[str]:
    """The feature probe's cgroups of agent `pid` still there."""
    roots = [mp for _, mp, fs in ksys.mounts() if fs == "cgroup2"]
    return [p for r in roots if os.path.exists(p := os.path.join(r, f"vigil-probe-{pid}"))]


def assert_nothing_left(run: Run, env: dict[str, Path]) -> None:
    assert run.progs, "the agent held no BPF programs before the signal?"
    assert not still_loaded(run.progs), "programs still loaded"
    assert not run.links & loaded_link_ids(), "links still attached"
    assert not probe_cgroups(run.proc.pid)


# an API server that never answers: nothing listens on the port (loopback)
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: x}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""
K8S = ["--enable-k8s-api", "true", "--k8s-kubeconfig-path", "{kubeconfig}"]

ONE_FILE = ["--tracing-policy", "{one_file}"]

# (id, --tracing-policy-dir, log line to signal after, signal, extra flags): every step of the start
WHILE_STARTING = [
    ("sensor-attached", "policies", "process sensor attached", signal.SIGINT, []),
    ("features-probed", "policies", "kernel features", signal.SIGTERM, []),
    ("policy-03", "policies", "policy stop-test-03 loaded", signal.SIGINT, []),
    ("policy-08", "policies", "policy stop-test-08 loaded", signal.SIGTERM, []),
    ("policy-05-keep-sensors", "policies", "policy stop-test-05 loaded", signal.SIGINT,
     ["--keep-sensors-on-exit", "true"]),
    # the documents of one file: in the directory, and given with --tracing-policy
    ("one-file-in-dir-policy-04", "one-file", "policy stop-test-04 loaded", signal.SIGINT, []),
    ("one-file-policy-06", "none", "policy stop-test-06 loaded", signal.SIGTERM, ONE_FILE),
    # waiting (up to 15 s) for the first listing of the node's pods
    ("k8s-pods-unlisted", "policies", "WARNING vigil.k8s: pods: ", signal.SIGINT, K8S),
]


@pytest.mark.parametrize("policies,after,sig,extra", [r[1:] for r in WHILE_STARTING],
                         ids=[r[0] for r in WHILE_STARTING])
def test_a_signal_while_starting_stops_the_start(env: dict[str, Path], policies: str, after: str,
                                                 sig: signal.Signals, extra: list[str]) -> None:
    kubeconfig = env["tmp"] / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(port=free_port()))
    run = Run(env, "agent", [a.format(kubeconfig=kubeconfig, one_file=env["one-file"] / "all.yaml") for a in extra],
              policies=policies)
    try:
        run.wait_for(after)
        run.proc.send_signal(sig)
        rc = run.wait_exit()
    finally:
        run.kill()
    err = run.stderr.read_text()
    assert rc == 0 and "Traceback" not in err, err
    assert "vigil agent ready" not in err, "the start went on to the end:\n" + err
    assert f"vigil agent: {sig.name} while starting (" in err, err
    assert f"policy stop-test-{len(SYSCALLS) - 1:02d} loaded" not in err, err
    assert "not listed within" not in err, "the start waited for the API server:\n" + err
    assert not [f for f in run.files if f.exists()]
    if after.startswith("WARNING vigil.k8s"):
        assert "(listing the node's pods)" in err, err
        return  # before any BPF program
    assert_nothing_left(run, env)
    assert not pinned_files(env["bpffs"] / "vigil"), "a start that did not complete left pins (its partial policies)"


# `vigil agent` that signals itself while it reads its options, before the agent exists
SIGNALS_ITSELF = """import os, signal, sys
from vigil.agent.config import AgentConfig
from vigil.cli.main import main
validate, sent = AgentConfig.validate, []
def signalling(self):
    if not sent:
        sent.append(os.kill(os.getpid(), signal.{sig}))
    return validate(self)
AgentConfig.validate = signalling
main()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_before_the_agent_exists(env: dict[str, Path], sig: signal.Signals) -> None:
    run = Run(env, "agent", [], command=[VIGIL[0], "-c", SIGNALS_ITSELF.format(sig=sig.name)])
    try:
        rc = run.wait_exit()
    finally:
        run.kill()
    err = run.stderr.read_text()
    assert rc == 0 and "Traceback" not in err and "Aborted!" not in err, err
    assert f"vigil agent: {sig.name} while starting (opening the outputs)" in err, err
    assert not run.progs, "the agent loaded programs after the signal"


# sitecustomize (on PYTHONPATH) that sends its own process SIGINT when `module` is first
# imported, and says so in `marker`: a Ctrl-C at that moment of the start, every run alike
SIGINT_AT_IMPORT = """import os, signal, sys
class SigintAt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r} and not os.path.exists({marker!r}):
            open({marker!r}, "w").close()
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, SigintAt())
"""


@pytest.mark.parametrize("launcher", [[str(Path(sys.executable).parent / "vigil")], VIGIL],
                         ids=["console-script", "python-m"])
# the modules the start imports, in their order, before the agent's own handling of signals
@pytest.mark.parametrize("module", ["click", "vigil.api.cliutil", "vigil.cli.agent_cmd", "vigil.agent.config"])
def test_a_sigint_while_python_imports_exits_quietly(env: dict[str, Path], launcher: list[str], module: str) -> None:
    """Ctrl-C in the first moments of `vigil agent`, while Python imports the CLI (before the
    agent's own SIGINT/SIGTERM handling): exit status 130, nothing printed. Before: a Python
    traceback (KeyboardInterrupt), or click's "Aborted!" and status 1."""
    d = env["tmp"] / "site"
    d.mkdir()
    marker = d / "sent"
    (d / "sitecustomize.py").write_text(SIGINT_AT_IMPORT.format(module=module, marker=str(marker)))
    proc = subprocess.Popen([*launcher, "agent", "--tracing-policy-dir", str(env["none"]), "--server-address", "",
                             "--bpf-dir", str(env["bpffs"] / "vigil")],
                            env={**os.environ, "PYTHONPATH": str(d)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert marker.exists(), f"{module} was not imported"
    assert (proc.returncode, out, err) == (130, b"", b""), err.decode()


KEEP = ["--keep-sensors-on-exit", "true"]
# (id, --tracing-policy-dir, log line to signal after, signal, extra flags, pins kept)
SECOND_SIGNAL = [
    ("SIGINT-running", "few", "vigil agent ready", signal.SIGINT, [], False),
    ("SIGTERM-running", "few", "vigil agent ready", signal.SIGTERM, [], False),
    # a start that had not completed keeps no pins (its partial policies would enforce)
    ("SIGINT-starting-keep-sensors", "policies", "policy stop-test-05 loaded", signal.SIGINT, KEEP, False),
    # a running agent's are kept, as asked; the next start adopts and releases them
    ("SIGTERM-running-keep-sensors", "few", "vigil agent ready", signal.SIGTERM, KEEP, True),
]


@pytest.mark.parametrize("policies,after,sig,extra,kept", [r[1:] for r in SECOND_SIGNAL],
                         ids=[r[0] for r in SECOND_SIGNAL])
def test_a_second_signal_while_stopping_exits_at_once(env: dict[str, Path], policies: str, after: str,
                                                      sig: signal.Signals, extra: list[str], kept: bool) -> None:
    run = Run(env, "agent", extra, policies=policies)
    try:
        run.wait_for(after)
        run.proc.send_signal(sig)
        run.wait_for(f"received {sig.name}, stopping")  # then unloading the policies (~1 s for ten)
        run.proc.send_signal(sig)
        rc = run.wait_exit()
    finally:
        run.kill()
    err = run.stderr.read_text()
    assert rc == 128 + sig and "Traceback" not in err, err
    assert f"vigil agent: second {sig.name}: exiting now" in err, err
    assert "vigil agent stopped" not in err, err
    if kept:
        assert pinned_files(env["bpffs"] / "vigil")
    else:
        assert_nothing_left(run, env)
        assert not pinned_files(env["bpffs"] / "vigil")
    # the serving process sees the agent go, stops, and removes its socket and info file
    deadline = time.monotonic() + 30
    while any(f.exists() for f in run.files) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [f for f in run.files if f.exists()]
    # what the forced exit left (the run directory, kept pins) does not hinder the next start
    (env["tmp"] / "again").mkdir()
    again = AgentProcess(env["tmp"] / "again", ["--bpf-dir", str(env["bpffs"] / "vigil")])
    assert again.stop() == 0
    assert_nothing_left(run, env)
    assert not pinned_files(env["bpffs"] / "vigil")


# (id, --tracing-policy-dir, signal): one policy, ten, hooks of several links (kretprobe,
# enforcer) and a policy of ten hooks. bench/agent_footprint.py (d) stops 40.
STOP_WITH = [
    ("one-policy", "one", signal.SIGTERM),
    ("ten-policies", "few", signal.SIGINT),
    ("kretprobe-enforcer-ten-hooks", "mixed", signal.SIGTERM),
]


@pytest.mark.parametrize("policies,sig", [r[1:] for r in STOP_WITH], ids=[r[0] for r in STOP_WITH])
def test_stopping_with_many_policies_leaves_nothing(env: dict[str, Path], policies: str,
                                                    sig: signal.Signals) -> None:
    """The links of every policy close at once (vigil.kernel.objects.detach_objects), then the
    programs and maps: nothing of any of them stays loaded, attached or pinned."""
    run = Run(env, "agent", ["--server-address", ""], policies=policies)  # no gRPC serving process
    try:
        run.wait_for("vigil agent ready", timeout=600)  # the VM tier's guests load slowly
        run.sample()
        t0 = time.monotonic()
        run.proc.send_signal(sig)
        rc = run.wait_exit()
        took = time.monotonic() - t0
    finally:
        run.kill()
    err = run.stderr.read_text()
    assert rc == 0 and "Traceback" not in err and "vigil agent stopped" in err, err
    n = sum(1 for ln in err.splitlines() if "INFO vigil.policies: policy stop-test-" in ln and ln.endswith(" deleted"))
    assert n == len(list(env[policies].glob("*.yaml")))
    assert run.links, "the agent held no links before the signal?"
    assert_nothing_left(run, env)
    assert not pinned_files(env["bpffs"] / "vigil"), "pins left"
    print(f"stopped with {n} policies ({len(run.links)} links) in {took:.2f} s")


def test_deleting_a_policy_of_many_hooks_removes_all_of_it(env: dict[str, Path]) -> None:
    """`tracingpolicy delete` of one policy of many hooks: its programs and links go, all at
    once; the other policies' stay attached."""
    from tests.kernel.bpfstate import loaded_prog_ids
    from tests.kernel.conftest import RunningAgent
    from vigil.agent.config import AgentConfig

    def link_progs() -> set[int]:
        out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
        return {k.get("prog_id", 0) for k in json.loads(out or "[]")}

    cfg = AgentConfig(export_filename=str(env["tmp"] / "events.log"), server_address="",
                      tracing_policy_dir=str(env["mixed"]))
    with RunningAgent(cfg) as ra:
        ids = {p["name"]: set(p["program_ids"]) for p in ra.agent.list_policies()}
        assert set(ids) == {"stop-test-many", "stop-test-kretprobe", "stop-test-enforcer"}
        gone, kept = ids["stop-test-many"], ids["stop-test-kretprobe"] | ids["stop-test-enforcer"]
        assert len(gone) == MANY_HOOKS and gone <= link_progs() and kept <= link_progs()
        ra.agent.delete_policy("stop-test-many")
        assert not gone & link_progs(), "links of the deleted policy still attached"
        assert not still_loaded(gone)
        assert kept <= link_progs() and kept <= loaded_prog_ids(), "the other policies lost programs"
        assert [p["name"] for p in ra.agent.list_policies()] == ["stop-test-kretprobe", "stop-test-enforcer"]
    assert not still_loaded(kept)


@pytest.mark.skipif(not all(Path(f"/sys/kernel/tracing/events/syscalls/sys_enter_{c}").exists()
                            for c in ("execve", "execveat")), reason="no syscall trace events for execve")
def test_the_process_sensor_closes_its_syscall_links_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process sensor's execve/execveat entry links are perf-event tracepoints (a grace
    period wait each to close): its stop closes them side by side, the first destroy waits
    until the second has started (one after the other, the old way, never gets there), and
    nothing of the sensor stays loaded or attached."""
    from vigil.kernel import objects
    from vigil.sensors.process import EXEC_ENTRY, ProcessSensor

    require_root()
    destroy = FirstWaitsForSecond(objects._destroy)
    sensor = ProcessSensor()
    sensor.start()
    try:
        assert sensor.exec_creds
        progs = {p.fd for p in sensor.obj.programs.values() if p.autoload}  # type: ignore[union-attr]
        prog_ids = {int(ln.split()[1]) for fd in progs
                    for ln in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines() if ln.startswith("prog_id:")}
        link_ids = {int(ln.split()[1]) for k in sensor.obj.links  # type: ignore[union-attr]
                    for ln in Path(f"/proc/self/fdinfo/{k.fd}").read_text().splitlines() if ln.startswith("link_id:")}
        monkeypatch.setattr(objects, "_destroy", destroy)
        sensor.stop()
    finally:
        monkeypatch.undo()
        if sensor.obj is not None:
            sensor.obj.close()
    assert destroy.overlapped == [True], "each entry link waited for the one before it"
    assert {d.split("->")[0] for d in destroy.started[:2]} == set(EXEC_ENTRY), destroy.started  # newest first
    assert len(prog_ids) >= 5 and len(link_ids) == len(destroy.started)
    assert not still_loaded(prog_ids), "programs still loaded"
    assert not link_ids & loaded_link_ids(), "links still attached"
