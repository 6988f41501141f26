"""The agent's Prometheus metrics carry Tetragon's label values, on a running agent (the shared
in-process agent) after a workload its policy sees: what a Tetragon user's queries and alerts
select on must select the same series here."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.cachedchild import (
    cached,
    collect_policy_event,
    forgotten_by_kernel,
    opener_argv,
    own_child,
    send_line,
    taken_out,
)
from tests.kernel.conftest import RunningAgent
from tests.kernel.policytext import openat_policy, openat_selector
from vigil.agent.metrics import AgentCollector

pytestmark = pytest.mark.kernel

# a kprobe on a syscall (runs on the syscall tracepoint here) and a tracepoint; the first selector
# of each never matches, the second does: Tetragon's selector_index is 0-based
def labels_policy(name: str, work: Path, vpy: Path) -> str:
    return openat_policy(name, openat_selector(work / "nothing-opens-this", vpy, "never"),
                         openat_selector(work / "secret.txt", vpy, "secret"), more=f"""  tracepoints:
  - subsystem: syscalls
    event: sys_enter_getppid
    selectors:
    - label: never
      matchBinaries: [{{operator: In, values: ["/nothing/runs/this"]}}]
    - label: getppid
      matchBinaries: [{{operator: In, values: ["{vpy}"]}}]
""")


def samples(agent: Any, family: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for fam in AgentCollector(agent).collect():
        if fam.name == family:
            out += [(s.labels, s.value) for s in fam.samples if s.name == family + "_total"]
    return out


@pytest.fixture
def scrape(running_agent: RunningAgent) -> Iterator[Callable[[], dict[str, dict[frozenset[tuple[str, str]], float]]]]:
    """The shared agent's /metrics served on a loopback port: a function reading it (sample name
    -> label set -> value)."""
    from prometheus_client.parser import text_string_to_metric_families

    from vigil.agent.metrics import MetricsFrontend

    fe = MetricsFrontend(running_agent.agent.control, "127.0.0.1:0")
    fe.start()

    def read() -> dict[str, dict[frozenset[tuple[str, str]], float]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{fe.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                out.setdefault(smp.name, {})[frozenset(smp.labels.items())] = smp.value
        return out
    try:
        yield read
    finally:
        fe.stop()


def test_policy_metrics_name_hooks_and_selectors_as_tetragon(running_agent: RunningAgent, workdir: Path, scrape):
    """tetragon_policy_events_total{policy,hook,namespace,workload,pod,binary,node_name}: the hook
    as Tetragon's event names it (kprobe:<the event's function_name>), the process labels the
    default --metrics-label-filter fills (binary; node_name empty)."""
    a = running_agent.agent
    vpy = workdir / "vpy"
    shutil.copy2(os.path.realpath(sys.executable), vpy)
    (workdir / "secret.txt").write_text("s")
    name = a.policies.add_text(labels_policy("metric-labels", workdir, vpy), "<t>")[0]
    try:
        code = f"import os; open({str(workdir / 'secret.txt')!r}).close(); os.getppid()"
        evs = running_agent.collect(lambda: subprocess.run([str(vpy), "-S", "-c", code], check=True),
                                    until=lambda evs: sum(1 for e in evs for k in ("process_kprobe", "process_tracepoint")
                                                          if e.get(k, {}).get("policy_name") == name) >= 2)
        fn = next(e["process_kprobe"]["function_name"] for e in evs
                  if e.get("process_kprobe", {}).get("policy_name") == name)
        assert fn.endswith("sys_openat"), fn
        running_agent.collect(lambda: None)  # the loop hands a batch to its sinks before it emits the next
        got = scrape()
        hits = {dict(k)["hook"]: (dict(k), v) for k, v in got["tetragon_policy_events_total"].items()
                if dict(k)["policy"] == name}
        assert set(hits) == {f"kprobe:{fn}", "tracepoint:syscalls/sys_enter_getppid"}, hits
        for labels, v in hits.values():
            assert v >= 1 and labels["binary"] == str(vpy) and labels["node_name"] == "", labels
            assert set(labels) == {"policy", "hook", "namespace", "workload", "pod", "binary", "node_name"}
        acts = {(dict(k)["hook"], dict(k)["hook_index"], dict(k)["selector_index"], dict(k)["selector_label"],
                 dict(k)["action"], dict(k)["policy_namespace"])
                for k in got["tetragon_tracingpolicy_selector_actions_total"] if dict(k)["policy"] == name}
        assert acts == {("kprobe:sys_openat", "0", "1", "secret", "post", ""),
                        ("tracepoint:syscalls/sys_enter_getppid", "0", "1", "getppid", "post", "")}, acts
        # every state Tetragon reports; the policy's own maps' kernel memory, as ListTracingPolicies says
        states = {dict(k)["state"]: v for k, v in got["tetragon_tracingpolicy_loaded"].items()}
        assert set(states) == {"enabled", "disabled", "error", "load_error", "skipped", "partially_enabled"}
        assert states["enabled"] >= 1, states
        listed = next(p for p in a.list_policies() if p["name"] == name)["kernel_memory_bytes"]
        mem = got["tetragon_tracingpolicy_kernel_memory_bytes"]
        assert mem[frozenset({("policy", name), ("policy_namespace", "")})] == listed > 0, mem
        # the overhead metrics with Tetragon's labels: the program's ELF section among them
        over = [dict(k) for k in got["tetragon_overhead_program_runs_total"] if dict(k)["policy"] == name]
        assert over and all(set(lb) == {"policy_namespace", "policy", "sensor", "attach", "section"}
                            and lb["section"] and lb["policy_namespace"] == "" for lb in over), over
        # tetragon_missed_prog_probes_total{policy,attach}: each program's recursion_misses
        progs = [p for p in a.status()["programs"] if p["policy"] == name]
        missed = {dict(k)["attach"]: v for k, v in got["tetragon_missed_prog_probes_total"].items()
                  if dict(k)["policy"] == name}
        assert progs and set(missed) == {p["attach"] for p in progs}, missed
        for attach, v in missed.items():
            assert v <= sum(p["recursion_misses"] for p in progs if p["attach"] == attach)
    finally:
        a.delete_policy(name)


@pytest.mark.parametrize("kernel_forgets", [False, True], ids=["cache-lacks-it", "kernel-lacks-it-too"])
def test_a_policy_event_of_a_process_the_cache_lacks_is_a_miss_and_missing_process_info(
        running_agent: RunningAgent, workdir: Path, scrape, kernel_forgets: bool):
    """A policy event whose process is not in the process cache (here: taken out of it once its
    exec was cached) is sent with Tetragon's stand-in process: the pid and the start time of the
    kernel's key, or when the kernel's execve_map lacks it too (its entry deleted) the pid, flags
    "unknown" and the start of its thread group leader (the kernel's task start_time, which
    /proc/<pid>/stat gives in clock ticks); no exec_id, tid or parent. Counted as a process cache miss
    (tetragon_process_cache_misses_total{operation="get"}) and as an event missing its process
    info (tetragon_events_missing_process_info_total)."""
    a = running_agent.agent
    argv = opener_argv(workdir)
    name = a.policies.add_text(openat_policy("metric-cache-miss", openat_selector(workdir / "secret.txt")), "<t>")[0]
    try:
        with own_child(argv) as child:
            p = cached(a, child, argv[0])
            before = scrape()
            taken_out(a, p)  # as if its exec had never been seen
            if kernel_forgets:
                forgotten_by_kernel(a, child.pid)
            evs, ev = collect_policy_event(running_agent, name, lambda: send_line(child))
            # Tetragon's stand-in: the pid and start time of the kernel's key (the kernel has it: no
            # "unknown"), no exec_id, tid or parent
            want = {"pid": child.pid, "start_time": p.msg.start_time}
            if kernel_forgets:  # the leader's start: within the clock tick /proc says it started in
                got = ev["process"].get("start_time", "")
                want = {"pid": child.pid, "flags": "unknown", "start_time": got}
                hz = os.sysconf("SC_CLK_TCK")
                ticks = int(Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
                wall = a.clock.boot_offset + a.clock.offset  # boot ns -> wall ns
                assert got and ticks * 10**9 // hz + wall - 10**6 <= _rfc3339_ns(got) \
                    < (ticks + 1) * 10**9 // hz + wall + 10**6, (got, ticks, hz)
            assert ev["process"] == want and "parent" not in ev, ev
            running_agent.collect(lambda: None)
            after = scrape()
            get = frozenset({("operation", "get")})
            assert after["tetragon_process_cache_misses_total"][get] > before["tetragon_process_cache_misses_total"][get]
            info = "tetragon_events_missing_process_info_total"
            assert after[info][frozenset()] > before[info][frozenset()]
    finally:
        a.delete_policy(name)


def _rfc3339_ns(ts: str) -> int:
    """Wall-clock ns of an RFC 3339 UTC time as events carry it (fraction of up to 9 digits)."""
    import calendar

    base, _, frac = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) * 10**9 + int((frac + "000000000")[:9])


POLICY_RAW_SYSCALLS = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {name}}}
spec:
  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    args: [{{index: 4, type: syscall64}}]
    selectors:
    - matchArgs: [{{index: 4, operator: Equal, values: ["{dup2}"]}}]
      matchBinaries: [{{operator: In, values: ["{vpy}"]}}]
"""


def test_syscalls_total_counts_raw_syscall_events_by_name_and_binary(running_agent: RunningAgent, workdir: Path,
                                                                     scrape):
    """tetragon_syscalls_total{syscall,namespace,workload,pod,binary,node_name}: the
    raw_syscalls/sys_enter events a policy reports, by the syscall their syscall_id names."""
    import platform

    a = running_agent.agent
    vpy = workdir / "vpy"
    shutil.copy2(os.path.realpath(sys.executable), vpy)
    dup2 = {"x86_64": 33, "aarch64": 24}[platform.machine()]  # dup3 on arm64 (no dup2 there)
    name = a.policies.add_text(POLICY_RAW_SYSCALLS.format(name="metric-syscalls", vpy=vpy, dup2=dup2), "<t>")[0]
    try:
        code = "import os\nfor _ in range(3): os.dup2(1, 57)\n"
        running_agent.collect(lambda: subprocess.run([str(vpy), "-S", "-c", code], check=True),
                              until=lambda evs: sum(1 for e in evs
                                                    if e.get("process_tracepoint", {}).get("policy_name") == name) >= 3)
        running_agent.collect(lambda: None)
        got = {dict(k)["syscall"]: (dict(k), v) for k, v in scrape()["tetragon_syscalls_total"].items()
               if dict(k)["binary"] == str(vpy)}
        want = "dup2" if dup2 == 33 else "dup3"
        assert set(got) == {want}, got
        labels, v = got[want]
        assert v == 3 and labels["node_name"] == "" and labels["pod"] == "", labels
    finally:
        a.delete_policy(name)


@pytest.mark.parametrize("label_filter, expect", [
    ("namespace,workload,pod,binary", {"binary": "{bin}", "node_name": ""}),   # Tetragon's default
    ("binary,node_name", {"binary": "{bin}", "node_name": "vigil-test"}),
    ("", {"binary": "", "node_name": ""}),
    (" pod , nonsense", {"binary": "", "node_name": ""}),
], ids=["default", "binary-node", "none", "unknown-ignored"])
def test_events_total_by_process_labels(running_agent: RunningAgent, workdir: Path, label_filter: str,
                                        expect: dict[str, str]):
    """tetragon_events_total{type,namespace,workload,pod,binary,node_name}: every event the agent
    emits, by the labels --metrics-label-filter fills (the others empty, as Tetragon sends them)."""
    from vigil.agent.metrics import MetricsFrontend

    a = running_agent.agent
    a.config.metrics_label_filter = label_filter
    fe = MetricsFrontend(a.control, "127.0.0.1:0")  # not serving: read through its collector
    try:
        binary = str(workdir / "truebin")
        running_agent.collect(lambda: [subprocess.run([binary, str(i)], check=True) for i in range(3)])
        running_agent.collect(lambda: None)  # the loop hands a batch to its sinks before it emits the next
        got = {}
        for fam in fe.registry.collect():
            if fam.name == "tetragon_events":
                for s in fam.samples:
                    assert set(s.labels) == {"type", "namespace", "workload", "pod", "binary", "node_name"}
                    got[tuple(sorted(s.labels.items()))] = s.value
        want = {k: v.format(bin=binary) for k, v in expect.items()}
        for typ in ("PROCESS_EXEC", "PROCESS_EXIT"):
            key = tuple(sorted({"type": typ, "namespace": "", "workload": "", "pod": "", **want}.items()))
            assert got.get(key, 0) >= 3, (key, got)
        if not want["binary"]:  # no binary label: every exec of every binary in one series per type
            assert [k for k in got if dict(k)["binary"]] == []
    finally:
        fe.stop()
        a.config.metrics_label_filter = "namespace,workload,pod,binary"
    assert fe.events not in a.pipeline.sinks


def missed(agent: Any) -> dict[tuple[str, str], float]:
    return {(s["msg_op"], s["error"]): v for s, v in samples(agent, "tetragon_bpf_missed_events")}


def test_a_full_ring_buffer_is_a_missed_execve_with_tetragon_labels(workdir: Path, tmp_path: Path):
    """Execs the kernel could not deliver (an 8 KiB ring nobody drains) are
    tetragon_bpf_missed_events_total{msg_op="5",error="EAGAIN"}: the opcode number and the errno
    of the failed ring buffer output, as Tetragon labels them."""
    from vigil.agent.agent import Agent
    from vigil.agent.config import AgentConfig

    agent = Agent(AgentConfig(export_filename=str(tmp_path / "x.log"), server_address="", node_name="t",
                              rb_size=8192, args_max=4096))
    agent.start()
    try:
        child = str(workdir / "child")
        pids = [os.posix_spawn(child, [child, *["y" * 1000] * 3], os.environ) for _ in range(50)]
        for pid in pids:
            os.waitpid(pid, 0)
        agent.pipeline.tick()
        drops = agent.status()["lost"]["kernel"]
        assert drops["ringbuf_full_exec"] > 0
        got = missed(agent.control)
        assert got[("5", "EAGAIN")] == drops["ringbuf_full_exec"], got
        assert set(got) <= {("5", "EAGAIN"), ("23", "EAGAIN"), ("7", "EAGAIN"), ("13", "EAGAIN"),
                            ("5", "unknown")}, got
        maps = {s["map"]: v for s, v in samples(agent.control, "tetragon_map_errors_update")}
        assert maps == {"execve_map": drops["execve_map_full"]}
    finally:
        agent.close()


def test_loader_records_the_kernel_could_not_report_are_counted(running_agent: RunningAgent, tmp_path: Path):
    """A policy with loader: true reads executable mappings from per-CPU perf rings; mappings the
    kernel could not write there (a full ring: PERF_RECORD_LOST) are process_loader events that
    never come. They are counted in `vigil status` (lost.kernel.perf_ring_full_loader) and in
    tetragon_bpf_missed_events_total{msg_op="26"} (Tetragon's loader opcode). The ring fills
    while the sensor's reader is held inside its first event."""
    import mmap
    import threading
    import time

    a = running_agent.agent
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\0" * mmap.PAGESIZE)
    name = a.policies.add_text(POLICY_LOADER, "<t>")[0]
    gate, held = threading.Event(), threading.Event()
    loader = a.policies._loader
    emit = loader.emit

    def blocking_emit(*args: Any) -> None:
        held.set()
        gate.wait(60)
        emit(*args)

    loader.emit = blocking_emit
    try:
        def map_exec(n: int) -> None:
            with open(lib, "rb") as f:
                for _ in range(n):
                    mmap.mmap(f.fileno(), mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_EXEC).close()

        map_exec(1)
        assert held.wait(30), "the loader sensor reported no mapping"
        map_exec(20000)  # ~100 bytes each: far more than the 32 KiB rings hold while the reader waits
        gate.set()
        deadline = time.monotonic() + 30
        while loader.lost == 0 and time.monotonic() < deadline:
            map_exec(10)  # the kernel writes its LOST record once the ring has room again
            time.sleep(0.05)
        assert loader.lost > 0
        lost = a.status()["lost"]["kernel"]["perf_ring_full_loader"]
        assert lost >= 1
        got = missed(a)
        assert got[("26", "ENOSPC")] >= lost, got
    finally:
        gate.set()
        loader.emit = emit
        a.delete_policy(name)


POLICY_LOADER = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: metric-loader-lost}
spec:
  loader: true
"""


def test_process_loader_stats_count_loader_events_and_how_their_process_was_found(
        running_agent: RunningAgent, workdir: Path, scrape):
    """tetragon_process_loader_stats{count}: loader events the sensor reported (LoaderReceived),
    and those whose process was found, at once (LoaderResolvedImm) or after waiting for its exec
    record (LoaderResolvedRetry): each process_loader event sent with its process is one of them.
    Only the test's own process's events are held against the counters' change: they are all
    received after the first scrape. Another process's event may have been received (and
    counted) before it and sent after it (a retry waiting for its exec record on a busy machine)."""
    a = running_agent.agent
    vpy = workdir / "vpy"
    shutil.copy2(os.path.realpath(sys.executable), vpy)
    name = a.policies.add_text(POLICY_LOADER.replace("metric-loader-lost", "metric-loader-stats"), "<t>")[0]
    loader = "tetragon_process_loader_stats"
    try:
        before = {dict(k)["count"]: v for k, v in scrape()[loader].items()}
        got: list[dict[str, Any]] = []
        ours: list[int] = []

        def run_vpy() -> None:
            p = subprocess.Popen([str(vpy), "-S", "-c", "import _json"])
            ours.append(p.pid)
            assert p.wait(timeout=60) == 0

        action: Callable[[], object] = run_vpy
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e["process"].get("binary") == str(vpy) for e in got):
            got += [e["process_loader"] for e in running_agent.collect(action) if "process_loader" in e]
            action = lambda: None  # noqa: E731
        running_agent.collect(lambda: None)
        after = {dict(k)["count"]: v for k, v in scrape()[loader].items()}
        assert set(after) == {"LoaderReceived", "LoaderResolvedImm", "LoaderResolvedRetry"}, after
        mine = [e for e in got if e["process"].get("pid") in ours]
        resolved = [e for e in mine if e["process"].get("exec_id")]  # not a stand-in (pid, start_time)
        assert resolved, got
        d = {k: after[k] - before.get(k, 0) for k in after}
        assert d["LoaderReceived"] >= len(mine) and d["LoaderResolvedImm"] + d["LoaderResolvedRetry"] >= len(resolved), d
    finally:
        a.delete_policy(name)
