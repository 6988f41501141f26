"""The agent killed with SIGKILL under load and started again.

Without --keep-sensors-on-exit: nothing of the killed agent stays loaded, attached or
pinned, and the restarted agent enforces again. With it: the killed agent's BPF
enforcement stays attached while no agent runs, the next start recovers the events its
sensors collected meanwhile, then releases the old pins (old programs unloaded). Pins go to
a test-mounted BPF file system, removed at the end."""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.bpfstate import prog_ids_held, require_root, still_loaded
from tests.kernel.policytext import openat_policy, openat_selector
from tests.kernel.test_agent_cli import VIGIL, AgentProcess, free_port
from vigil.kernel import sys as ksys

pytestmark = pytest.mark.kernel


def kill_policy(target: Path, binary: Path) -> str:
    return openat_policy("kill-on-open", openat_selector(target, binary, action="action: Sigkill"))


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, Path]]:
    require_root()
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(work, 0o755)
    cat = work / "cat"
    shutil.copy2(os.path.realpath("/bin/cat"), cat)
    target = work / "guarded.txt"
    target.write_text("x\n")
    policy = tmp_path / "kill.yaml"
    policy.write_text(kill_policy(target, cat))
    bpffs = Path(tempfile.mkdtemp(prefix="vigil-test-bpffs-"))
    ksys.mount("bpf", str(bpffs), "bpf")
    try:
        yield {"tmp": tmp_path, "cat": cat, "target": target, "policy": policy, "bpffs": bpffs}
    finally:
        ksys.umount(str(bpffs))  # drops every pin left in it: nothing stays attached
        os.rmdir(bpffs)


def opened_by_test_binary(s: dict[str, Path]) -> int:
    return subprocess.run([str(s["cat"]), str(s["target"])], stdout=subprocess.DEVNULL, timeout=60).returncode


def start(s: dict[str, Path], name: str, keep: bool, export_args: str = "") -> AgentProcess:
    """`export_args`: export only the processes whose arguments start with it (the rest of this
    shared machine's execs rotate the export file away, beyond what the test reads)."""
    d = s["tmp"] / name
    d.mkdir()
    # a large ring buffer: while no agent runs, the old one fills with every exec of this
    # (shared, busy) machine; what does not fit is counted, checked below
    extra = ["--tracing-policy", str(s["policy"]), "--bpf-dir", str(s["bpffs"] / "vigil"), "--rb-size", "64M"]
    if export_args:
        extra += ["--export-allowlist", json.dumps({"arguments_regex": [f"^{export_args}"]})]
    return AgentProcess(d, extra + (["--keep-sensors-on-exit", "true"] if keep else []))


def sigkill(agent: AgentProcess) -> set[int]:
    ids = prog_ids_held(agent.proc.pid)
    load = subprocess.Popen(["sh", "-c", "for i in $(seq 2000); do /bin/true load-$i; done"])  # under load
    try:
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait()
    finally:
        load.wait(120)
    return ids


def test_sigkill_leaves_nothing_and_the_restart_enforces_again(setup: dict[str, Path]) -> None:
    s = setup
    a = start(s, "a1", keep=False)
    try:
        assert opened_by_test_binary(s) == -9
        ids = sigkill(a)
        assert ids and not still_loaded(ids), "programs of the killed agent are still loaded"
        assert not list(s["bpffs"].glob("vigil*")), "pins left without --keep-sensors-on-exit"
        assert opened_by_test_binary(s) == 0  # nothing enforces while no agent runs
    finally:
        a.stop()
    b = start(s, "a2", keep=False)
    try:
        assert opened_by_test_binary(s) == -9
    finally:
        assert b.stop() == 0


def test_keep_sensors_on_exit_survives_sigkill_and_is_adopted(setup: dict[str, Path]) -> None:
    s = setup
    a = start(s, "k1", keep=True)
    try:
        assert opened_by_test_binary(s) == -9
        old_ids = sigkill(a)
    finally:
        a.stop()
    runs = list((s["bpffs"] / "vigil").glob("run-*"))
    assert len(runs) == 1 and list(runs[0].glob("link-*")), "nothing pinned"
    assert still_loaded(old_ids, timeout=0) == old_ids  # still attached with no agent running
    assert opened_by_test_binary(s) == -9  # ... and still enforcing
    token = f"gap-{uuid.uuid4().hex[:8]}"
    for i in range(5):
        subprocess.run(["/bin/true", token, str(i)], check=True)  # while no agent runs

    b = start(s, "k2", keep=True, export_args=f"{token} ")
    try:
        assert opened_by_test_binary(s) == -9
        st = json.loads(b.cli("status", "-o", "json").stdout)["status"]
        assert st["restart"]["previous_runs"] == 1 and st["restart"]["records_recovered"] > 0
        assert not runs[0].exists(), "the previous run was not released"
        assert not still_loaded(old_ids), "the old programs stayed loaded after the adoption"
        recovered = [json.loads(ln) for ln in b.export.read_text().splitlines() if token in ln]
        args = sorted(e["process_exec"]["process"]["arguments"] for e in recovered if "process_exec" in e)
        assert set(args) <= {f"{token} {i}" for i in range(5)}
        lost = sum(n for k, n in st["restart"].items() if k.startswith("lost_ringbuf_full"))
        assert len(args) == 5 or lost >= 5 - len(args), f"execs while no agent ran neither recovered nor counted: {st}"
    finally:
        assert b.stop() == 0
    # a clean exit with the option keeps its pins too; a start without it adopts and cleans
    kept = list((s["bpffs"] / "vigil").glob("run-*"))
    assert len(kept) == 1 and opened_by_test_binary(s) == -9
    c = start(s, "k3", keep=False)
    try:
        assert not list((s["bpffs"] / "vigil").glob("run-*"))
        assert opened_by_test_binary(s) == -9
    finally:
        assert c.stop() == 0
    assert not list((s["bpffs"] / "vigil").glob("run-*")) and opened_by_test_binary(s) == 0


def test_a_refused_start_with_keep_sensors_leaves_nothing_pinned(setup: dict[str, Path]) -> None:
    """All or nothing: when a later policy is refused the agent does not start, and what it
    had loaded before (the process sensor, the first policy, with its Sigkill) goes with it,
    although --keep-sensors-on-exit keeps a started agent's attachments."""
    s = setup
    bad = s["tmp"] / "bad.yaml"
    bad.write_text("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: refused}\n"
                   "spec:\n  kprobes:\n  - call: sys_openat\n    syscall: true\n    args: [{index: 9, type: int}]\n")
    d = s["tmp"] / "refused"
    d.mkdir()
    err = d / "agent.err"
    with open(err, "wb") as f:
        r = subprocess.run([*VIGIL, "agent", "--export-filename", str(d / "export.log"),
                            "--server-address", f"unix://{d}/vigil.sock", "--metrics-server", f"127.0.0.1:{free_port()}",
                            "--keep-sensors-on-exit", "true", "--bpf-dir", str(s["bpffs"] / "vigil"),
                            "--tracing-policy", str(s["policy"]), "--tracing-policy", str(bad)],
                           stdout=subprocess.DEVNULL, stderr=f, timeout=120)
    text = err.read_text()
    assert r.returncode != 0 and "bad.yaml" in text and "Traceback" not in text, text
    assert not list((s["bpffs"] / "vigil").glob("run-*/*")), "a refused start left pins"
    assert opened_by_test_binary(s) == 0, "the first policy still enforces with no agent running"


def test_a_process_that_exec_d_while_no_agent_ran_keeps_one_identity(bpffs: Path, tmp_path: Path) -> None:
    """With --keep-sensors-on-exit, the previous agent's sensors record an exec while no agent
    runs; the next agent replays that record (its exec key: the exec's time) and seeds the
    process into its execve_map with that same key, not the /proc start time: its later
    records (exit, forks, policy events) name the process the cache and the events know."""
    from tests.kernel.conftest import RunningAgent, execs, exits
    from vigil.agent.config import AgentConfig
    from vigil.sensors.process import ENTRY

    def cfg(name: str) -> AgentConfig:
        return AgentConfig(export_filename=str(tmp_path / f"{name}.log"), server_address="", node_name="vigil-test",
                           keep_sensors_on_exit=True, bpf_dir=str(bpffs / "vigil"))

    with RunningAgent(cfg("first")):
        pass
    token = f"child-{uuid.uuid4().hex[:8]}"
    # while no agent runs: a shell that execs a long-lived program
    p = subprocess.Popen(["/bin/sh", "-c", "exec \"$0\" -c 'import subprocess, sys\nsys.stdin.readline()\n"
                          f"subprocess.run([\"/bin/true\", \"{token}\"])\nsys.stdin.readline()'",
                          os.path.realpath(sys.executable)], stdin=subprocess.PIPE)
    assert p.stdin is not None
    try:
        for _ in range(1000):
            try:
                if os.readlink(f"/proc/{p.pid}/exe") == os.path.realpath(sys.executable):
                    break
            except OSError:
                pass
            time.sleep(0.01)
        with RunningAgent(cfg("second")) as ra:
            assert ra.agent.restart["records_recovered"] > 0
            c = ra.agent.cache.by_pid(p.pid)
            assert c is not None and "procFS" not in c.msg.flags  # from the recovered exec record
            assert ra.agent.sensor is not None and ra.agent.sensor.obj is not None
            raw = ra.agent.sensor.obj.map("execve_map").lookup(struct.pack("<I", p.pid))
            assert raw is not None
            f = ENTRY.unpack_from(raw)
            assert (f[0], f[2]) == c.key

            def act() -> None:
                p.stdin.write(b"go\ngo\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
                p.wait()
            events = ra.collect(act)
            (child,) = execs(events, arguments=token)
            assert child["process"]["parent_exec_id"] == c.exec_id
            (x,) = exits(events, pid=p.pid)
            assert x["process"]["exec_id"] == c.exec_id
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("what", ["process", "parent"])
def test_a_process_older_than_both_agents_keeps_its_key_across_a_restart(
        bpffs: Path, tmp_path: Path, what: str) -> None:
    """With --keep-sensors-on-exit, a process that ran before the first agent (this test's own
    child, or this test's process as that child's parent) is known to the next agent by the key
    the first one gave it (its /proc start time as the first agent converted it, kept in the
    pinned execve_map), not by a new conversion of that start time, which differs by the
    clock's jitter: its exec_id stays the same, and the records the first agent's sensors made
    (a fork while no agent ran names its parent by that key) find it in the cache."""
    from tests.kernel.conftest import RunningAgent
    from vigil.agent.config import AgentConfig

    def cfg(name: str) -> AgentConfig:
        return AgentConfig(export_filename=str(tmp_path / f"{name}.log"), server_address="", node_name="vigil-test",
                           keep_sensors_on_exit=True, bpf_dir=str(bpffs / "vigil"))

    p = subprocess.Popen(["/bin/sleep", "600"])
    try:
        pid = p.pid if what == "process" else os.getpid()
        for _ in range(1000):
            if os.path.exists(f"/proc/{p.pid}/exe") and os.readlink(f"/proc/{p.pid}/exe") == "/usr/bin/sleep":
                break
            time.sleep(0.01)
        with RunningAgent(cfg("first")) as first:
            c1 = first.agent.cache.by_pid(pid)
            assert c1 is not None
            key1, exec_id1 = c1.key, c1.exec_id
        with RunningAgent(cfg("second")) as second:
            c2 = second.agent.cache.by_pid(pid)
            assert c2 is not None
            assert (c2.key, c2.exec_id) == (key1, exec_id1)
            assert second.agent.restart["procfs_keys_recovered"] > 0
    finally:
        p.kill()
        p.wait()
