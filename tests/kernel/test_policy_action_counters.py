"""A policy's action counters (ListTracingPolicies' TracingPolicyStats, the metric
tetragon_tracingpolicy_selector_actions_total) count every action a matching selector takes,
where it is taken, as Tetragon's do: Post and Sigkill count post and signal; NoPost counts
nopost though no event reaches user space; in monitor mode the monitor_ counters. Each on the
selector that took it (0-based selector_index, its label)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import loaded, policy_yaml
from vigil.agent.metrics import AgentCollector
from vigil.api.policies import policy_status
from vigil.sensors.generic import ACTION_COUNTERS

pytestmark = pytest.mark.kernel

HOOK = "tracepoint:syscalls/sys_enter_getppid"

# the first selector never matches: the second's counters are selector_index 1
SPEC = """
tracepoints:
- subsystem: syscalls
  event: sys_enter_getppid
  selectors:
  - label: never
    matchBinaries: [{{operator: In, values: ["/nothing/runs/this"]}}]
    matchActions: [{{action: Sigkill}}]
  - label: mine
    matchBinaries: [{{operator: In, values: ["{binary}"]}}]
    matchActions: [{actions}]
"""

CALLS = 3  # getppid calls of the test's process (it makes none other)


@pytest.mark.parametrize("actions, mode, killed, counted", [
    # each call: the event posted and the signal sent; the first call kills it
    ("{action: Post}, {action: Sigkill}", None, True, {"post": 1, "signal": 1}),
    ("{action: Sigkill}, {action: Post}", None, True, {"post": 1, "signal": 1}),
    # no event, yet every call's NoPost is counted
    ("{action: NoPost}", None, False, {"nopost": CALLS}),
    ("{action: Sigkill}, {action: NoPost}", None, True, {"signal": 1, "nopost": 1}),
    # monitor mode: reported, not done, every call
    ("{action: Sigkill}", "monitor", False, {"post": CALLS, "monitor_signal": CALLS}),
    ("{action: Signal, argSig: 10}, {action: NoPost}", "monitor", False,
     {"monitor_signal": CALLS, "nopost": CALLS}),
], ids=["post-sigkill", "sigkill-post", "nopost", "sigkill-nopost", "monitor-sigkill", "monitor-signal-nopost"])
def test_each_action_a_selector_takes_is_counted_once(running_agent: RunningAgent, workdir: Path, actions: str,
                                                      mode: str | None, killed: bool, counted: dict[str, int]):
    a = running_agent.agent
    vpy = workdir / "vpy-counters"
    shutil.copy2(os.path.realpath(sys.executable), vpy)
    name = f"action-counters-{abs(hash((actions, mode))) % 100000}"
    with loaded(running_agent, policy_yaml(name, SPEC.format(binary=vpy, actions=actions)), mode=mode):
        code = f"import os\nfor _ in range({CALLS}): os.getppid()"
        rc = subprocess.run([str(vpy), "-S", "-c", code], check=False).returncode
        assert rc == (-9 if killed else 0), rc
        listed = next(p for p in a.list_policies() if p["name"] == name)
        scraped = {(s["hook"], s["hook_index"], s["selector_index"], s["selector_label"], s["action"]): v
                   for s, v in samples(a, "tetragon_tracingpolicy_selector_actions")
                   if s["policy"] == name and s["policy_namespace"] == ""}

    want = dict.fromkeys(ACTION_COUNTERS, 0) | counted
    assert listed["stats"]["action_counters"] == want
    assert listed["stats"]["selector_action_counters"] == [
        {"hook": HOOK, "hook_index": 0, "selector_index": 1, "selector_label": "mine", "action_counters": counted}]
    # as the gRPC API sends it
    st = policy_status(listed).stats
    assert {n: getattr(st.action_counters, n) for n in ACTION_COUNTERS} == want
    assert [(c.hook, c.hook_index.value, c.selector_index.value, c.selector_label,
             {n: getattr(c.action_counters, n) for n in ACTION_COUNTERS if getattr(c.action_counters, n)})
            for c in st.selector_action_counters] == [(HOOK, 0, 1, "mine", counted)]
    # the metric: one series per action taken
    assert scraped == {(HOOK, "0", "1", "mine", action): n for action, n in counted.items()}


def samples(agent: object, family: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for fam in AgentCollector(agent).collect() if fam.name == family
            for s in fam.samples if s.name == family + "_total"]


@pytest.mark.parametrize("case, mode, counted", [
    ("open", None, {"post": 1, "override": 1}),
    ("open", "monitor", {"post": 1, "monitor_override": 1}),
    ("connect", None, {"post": 1, "override": 1}),
    ("connect", "monitor", {"post": 1, "monitor_override": 1}),
], ids=["fanotify-override", "fanotify-monitor", "socket-rule-override", "socket-rule-monitor"])
def test_the_stand_ins_count_the_actions_they_decide(running_agent: RunningAgent, workdir: Path, case: str,
                                                     mode: str | None, counted: dict[str, int]):
    """Where no BPF LSM enforces an Override, the fanotify helper (an open) and the cgroup socket
    rules (a connect) decide it: each counts the actions its selector took, as the kernel hooks."""
    from tests import enforce_cases as C

    C.prepare(workdir)
    srv = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        text = C.open_deny(workdir) if case == "open" else C.connect_deny(srv.getsockname()[1])
        with loaded(running_agent, text, mode=mode) as st:
            name = st["name"]
            assert ("fanotify" if case == "open" else "cgroup/connect4") in st["hooks"][0]["hook"]
            running_agent.collect(lambda: C.run_open_case(workdir) if case == "open" else C.run_connect_case(srv))
            listed = next(p for p in running_agent.agent.list_policies() if p["name"] == name)
    finally:
        srv.close()
    assert listed["stats"]["action_counters"] == dict.fromkeys(ACTION_COUNTERS, 0) | counted
    assert listed["stats"]["selector_action_counters"] == [
        {"hook": f"kprobe:sys_{'openat' if case == 'open' else 'connect'}", "hook_index": 0, "selector_index": 0,
         "selector_label": "", "action_counters": counted}]


class _MapReads:
    """Counts the libbpf map reads (each one bpf() system call) made while it is installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from vigil.kernel import _libbpf as L

        self.calls: dict[str, int] = {}
        for fn in ("bpf_map_lookup_elem", "bpf_map_lookup_batch"):
            real = getattr(L.lib, fn)

            def counted(*args, _real=real, _fn=fn):  # type: ignore[no-untyped-def]
                self.calls[_fn] = self.calls.get(_fn, 0) + 1
                return _real(*args)

            monkeypatch.setattr(L.lib, fn, counted)


@pytest.mark.parametrize("batch, reads", [
    # one BPF_MAP_LOOKUP_BATCH per hook for its selectors' rows, one for its hook counters
    (True, {"bpf_map_lookup_batch": 1}),
    # the kernel without batch lookups: one lookup per counter of each row (3 rows x 10), per hook counter
    (False, {"bpf_map_lookup_elem": 3 * len(ACTION_COUNTERS)}),
], ids=["batch", "one-lookup-per-counter"])
def test_a_hooks_counters_are_read_in_one_system_call(running_agent: RunningAgent, workdir: Path,
                                                       monkeypatch: pytest.MonkeyPatch, batch: bool,
                                                       reads: dict[str, int]):
    """A scrape or List reads every hook's counters: one BPF_MAP_LOOKUP_BATCH each (hook_stats,
    action_stats), not a bpf() per counter; where the kernel has no batch lookup for the map,
    the same counters one lookup each."""
    from vigil.kernel import objects

    a = running_agent.agent
    vpy = workdir / "vpy-counters"
    shutil.copy2(os.path.realpath(sys.executable), vpy)
    name = f"action-counters-reads-{int(batch)}"
    with loaded(running_agent, policy_yaml(name, SPEC.format(binary=vpy, actions="{action: NoPost}"))):
        subprocess.run([str(vpy), "-S", "-c", f"import os\nfor _ in range({CALLS}): os.getppid()"], check=True)
        lp = next(lp for lp in a.policies.policies.values() if lp.name == name)
        (gh,) = lp.hooks
        monkeypatch.setattr(objects, "_batch_lookup", {} if batch else {6: False})  # 6: BPF_MAP_TYPE_PERCPU_ARRAY
        reads_of = _MapReads(monkeypatch)
        by_selector = gh.selector_stats()
        assert reads_of.calls == reads
        reads_of.calls.clear()
        hook = gh.stats()
        assert reads_of.calls == ({"bpf_map_lookup_batch": 1} if batch else {"bpf_map_lookup_elem": 13})
    assert by_selector == {2: {"nopost": CALLS}}
    assert hook["hits"] - hook["filtered"] == CALLS  # other processes' getppid calls are filtered


@pytest.mark.parametrize("cpus", [2, 8, 64])
def test_kernel_memory_holds_the_per_cpu_counters(running_agent: RunningAgent, workdir: Path,
                                                  monkeypatch: pytest.MonkeyPatch, cpus: int):
    """A policy's kernel_memory_bytes holds each generic hook's per-CPU counter maps, a u64 per
    possible CPU: hook_stats and the selectors' action counters (action_stats), as the kernel
    sizes them (their max_entries)."""
    from vigil.sensors import generic

    name = f"action-counters-memory-{cpus}"
    with loaded(running_agent, policy_yaml(name, SPEC.format(binary=workdir / "truebin", actions="{action: Post}"))):
        lp = next(lp for lp in running_agent.agent.policies.policies.values() if lp.name == name)
        (gh,) = lp.hooks
        entries = sum(gh.obj.map(m).max_entries for m in ("hook_stats", "action_stats"))
        listed = next(p for p in running_agent.agent.list_policies() if p["name"] == name)["kernel_memory_bytes"]
        assert listed == gh.kernel_memory()
        # only kernel_memory's CPU count (the maps' reads keep the real one)
        monkeypatch.setattr(generic, "_possible_cpus", lambda: 1)
        one = gh.kernel_memory()
        monkeypatch.setattr(generic, "_possible_cpus", lambda: cpus)
        many = gh.kernel_memory()
    assert entries == 13 + 6 * 16
    assert many - one == (cpus - 1) * entries * 8


OPEN_NOPOST = """
kprobes:
- call: sys_openat
  syscall: true
  args: [{{index: 1, type: string}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: ["{d}/secret.txt"]}}]
    matchActions: [{{action: Override, argError: -1}}{first}]
  - matchArgs: [{{index: 1, operator: Equal, values: ["{d}/public.txt"]}}]
    matchActions: [{{action: NoPost}}]
"""


@pytest.mark.parametrize("mode, again, counted", [
    (None, "", [{"post": 1, "override": 1}, {"nopost": 1}]),
    ("monitor", "", [{"post": 1, "monitor_override": 1}, {"nopost": 1}]),
    # another policy's hook pushes a new table: the NoPost count goes on in it; the files opened
    # again at once, while the group replaced is still marked (asked too): counted once
    (None, "another-policy", [{"post": 2, "override": 2}, {"nopost": 2}]),
    # disabled (no rules: the helper stops) and enabled again, the files opened again: both counted
    (None, "disable-enable", [{"post": 2, "override": 2}, {"nopost": 2}]),
    # [Override, NoPost]: denied, no event; override and nopost counted, as a kernel hook's
    (None, "override-nopost", [{"override": 1, "nopost": 1}, {"nopost": 1}]),
    ("monitor", "override-nopost", [{"monitor_override": 1, "nopost": 1}, {"nopost": 1}]),
], ids=["enforce", "monitor", "new-table", "disable-enable", "override-nopost", "monitor-override-nopost"])
def test_the_fanotify_helper_counts_nopost(running_agent: RunningAgent, workdir: Path, mode: str | None,
                                           again: str, counted: list[dict[str, int]]):
    """A NoPost selector the fanotify helper decides sends no report: the helper counts its
    decisions per rule, read with its other counters, and they reach the selector's counters.
    One that also enforces is reported (the helper's rule is the enforcement): no event, nopost."""
    from tests import enforce_cases as C
    from tests.kernel.test_policy_engine import policy_yaml as pyaml

    C.prepare(workdir)
    a = running_agent.agent
    first = ", {action: NoPost}" if again == "override-nopost" else ""
    with loaded(running_agent, pyaml("fanotify-nopost", OPEN_NOPOST.format(d=workdir, first=first)), mode=mode) as st:
        assert "fanotify" in st["hooks"][0]["hook"]
        events = running_agent.collect(lambda: C.run_open_case(workdir))
        posted = [e for e in events if "process_kprobe" in e
                  and e["process_kprobe"]["policy_name"] == "fanotify-nopost"]
        assert len(posted) == counted[0].get("post", 0) - (again in ("disable-enable", "another-policy"))
        if again == "another-policy":
            with loaded(running_agent, C.open_deny(workdir / "elsewhere")):
                assert C.run_open_case(workdir) == C.EXPECT["open"]
                listed = next(p for p in a.list_policies() if p["name"] == "fanotify-nopost")
        else:
            if again == "disable-enable":
                a.policies.set_enabled("fanotify-nopost", False)
                a.policies.set_enabled("fanotify-nopost", True)
                assert C.run_open_case(workdir) == C.EXPECT["open"]
            listed = next(p for p in a.list_policies() if p["name"] == "fanotify-nopost")
    want = dict.fromkeys(ACTION_COUNTERS, 0)
    for row in counted:
        for k, n in row.items():
            want[k] += n
    assert listed["stats"]["action_counters"] == want
    assert listed["stats"]["selector_action_counters"] == [
        {"hook": "kprobe:sys_openat", "hook_index": 0, "selector_index": i, "selector_label": "",
         "action_counters": c} for i, c in enumerate(counted)]
