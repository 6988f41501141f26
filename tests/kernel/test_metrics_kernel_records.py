"""Tetragon's metrics of the kernel's records and probes, on a running agent after a workload:
records read by opcode (tetragon_msg_op_total) and their handling time
(tetragon_handling_latency)."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import RunningAgent
from vigil.agent.metrics import AgentCollector

pytestmark = pytest.mark.kernel


def by_label(agent: Any, sample: str, label: str) -> dict[str, float]:
    """`sample`'s values by the value of `label` (e.g. tetragon_msg_op_total by msg_op)."""
    out: dict[str, float] = {}
    for fam in AgentCollector(agent).collect():
        for s in fam.samples:
            if s.name == sample:
                out[s.labels[label]] = out.get(s.labels[label], 0.0) + s.value
    return out


def test_msg_op_total_and_handling_latency_count_the_workloads_records(running_agent: RunningAgent, workdir: Path):
    """25 execs of a test binary are at least 25 execve (5) and 25 exit (7) records more in
    tetragon_msg_op_total, and as many more observations in tetragon_handling_latency{op}."""
    ctl = running_agent.agent.control
    ops0 = by_label(ctl, "tetragon_msg_op_total", "msg_op")
    lat0 = by_label(ctl, "tetragon_handling_latency_count", "op")
    truebin = str(workdir / "truebin")
    running_agent.collect(lambda: [subprocess.run([truebin, str(i)], check=True) for i in range(25)],
                          until=lambda evs: sum(1 for e in evs if e.get("process_exit", {}).get("process", {})
                                                .get("binary") == truebin) >= 25)
    running_agent.counted()  # the last of those exits may be of a batch whose records are not counted yet
    ops = by_label(ctl, "tetragon_msg_op_total", "msg_op")
    lat = by_label(ctl, "tetragon_handling_latency_count", "op")
    for op in ("5", "7"):
        assert ops[op] - ops0.get(op, 0) >= 25, (op, ops0, ops)
        assert lat[op] - lat0.get(op, 0) >= 25, (op, lat0, lat)
    sums = by_label(ctl, "tetragon_handling_latency_sum", "op")
    assert sums["5"] > 0 and sums["7"] > 0, sums


@pytest.mark.parametrize("per_cpu", [[0], [3], [2, 5]], ids=["none", "one-cpu", "two-cpus"])
def test_map_errors_delete_total_is_the_exit_programs_failed_execve_map_deletes(tmp_path: Path, per_cpu: list[int]):
    """tetragon_map_errors_delete_total{map="execve_map"}: the exit program's failed execve_map
    deletes, summed over the CPUs of the kernel's drop counter (vigil_drops slot 6,
    DROP_EXECVE_MAP_DELETE), listed from 0 as Tetragon's. It is no lost record: not in
    tetragon_bpf_missed_events_total. (The delete fails only when two threads end a group at the
    same instant on kernels without group_dead: the counter is set here, on a private agent.)"""
    import struct

    from vigil.agent.agent import Agent
    from vigil.agent.config import AgentConfig
    from vigil.kernel.objects import possible_cpus
    from vigil.sensors.process import DROP_CAUSES

    agent = Agent(AgentConfig(export_filename=str(tmp_path / "x.log"), server_address="", node_name="t"))
    agent.start()
    try:
        slot = DROP_CAUSES.index("execve_map_delete")
        assert slot == 6  # DROP_EXECVE_MAP_DELETE (bpf/lib/vigil_common.bpf.h)
        ncpu = possible_cpus()
        vals = (per_cpu + [0] * ncpu)[:ncpu]
        agent.sensor.drops_map.update(struct.pack("<I", slot), b"".join(struct.pack("<Q", v) for v in vals))
        agent.pipeline.tick()
        ctl = agent.control
        assert agent.status()["lost"]["kernel"]["execve_map_delete"] == sum(vals)
        assert by_label(ctl, "tetragon_map_errors_delete_total", "map") == {"execve_map": sum(vals)}
        missed = {(s.labels["msg_op"], s.labels["error"]) for fam in AgentCollector(ctl).collect()
                  for s in fam.samples if s.name == "tetragon_bpf_missed_events_total"}
        assert ("0", "unknown") not in missed, missed
    finally:
        agent.close()


# map type, whether the key is in the map before the delete -> delete's result (True: deleted,
# False: already gone, an errno: BpfError), and whether tetragon_map_errors_delete_total{map}
# counts it: ENOENT is no failure (the caller's key is gone, as it asked); EINVAL (an array's
# slots cannot be deleted) is
@pytest.mark.parametrize("map_type, present, want, counted", [
    (1, True, True, False),      # BPF_MAP_TYPE_HASH, key there: deleted
    (1, False, False, False),    # hash, key absent: ENOENT, already gone
    (2, True, 22, True),         # BPF_MAP_TYPE_ARRAY: EINVAL
], ids=["deleted", "absent", "einval"])
def test_a_user_space_delete_that_fails_is_a_map_delete_error(tmp_path: Path, map_type: int, present: bool,
                                                              want: bool | int, counted: bool):
    """Map.delete (the policy filter's, follow's and netdeny's deletes) of a map made here: a
    failure other than ENOENT is counted by the map's name, in `vigil status` map_delete_errors
    and tetragon_map_errors_delete_total{map}; a deleted or absent key counts nothing."""
    import os
    import struct

    from tests.unit.test_pipeline_metrics import EXEC
    from vigil.agent.agent import Agent
    from vigil.agent.config import AgentConfig
    from vigil.events.source import ReplaySource
    from vigil.kernel import _libbpf as LB
    from vigil.kernel.errors import BpfError
    from vigil.kernel.objects import Map, delete_errors

    name = f"vgt_del_{map_type}{int(present)}"
    fd = LB.lib.bpf_map_create(map_type, name.encode(), 4, 8, 4, None)
    assert fd >= 0, LB.errno()
    try:
        m = Map(None, fd=fd, key_size=4, value_size=8, map_type=map_type, name=name, max_entries=4)
        key = struct.pack("<I", 1)
        if present:
            m.update(key, struct.pack("<Q", 7))
        before = delete_errors().get(name, 0)
        if isinstance(want, bool):
            assert m.delete(key) is want
        else:
            with pytest.raises(BpfError) as e:
                m.delete(key)
            assert e.value.errno == want
        assert delete_errors().get(name, 0) - before == int(counted)
    finally:
        os.close(fd)
    agent = Agent(AgentConfig(export_filename=str(tmp_path / "e.log"), server_address="", node_name="n1"),
                  source=ReplaySource([EXEC], batch=7))
    agent.start()
    try:
        agent.run()
        assert agent.status()["map_delete_errors"].get(name, 0) == delete_errors().get(name, 0)
        series = by_label(agent.control, "tetragon_map_errors_delete_total", "map")
    finally:
        agent.close()
    assert series.get(name, 0) == delete_errors().get(name, 0)
    assert (name in series) == (delete_errors().get(name, 0) > 0)
    assert series["execve_map"] == 0  # the kernel's own, listed from 0 as before


# a policy hook's kernel counters of hits whose record was not made, per CPU (busy: slot 9,
# HS_BUSY; pending_full: slot 6, HS_PENDING_FULL), then set again to more busy ones (read at a
# stats tick), then to `late` more pending_full ones after the last tick, just before the
# policy is deleted (read at its deletion)
@pytest.mark.parametrize("busy, pending, more, late", [
    ([0], [0], 0, 0),
    ([2], [0], 1, 0),
    ([1, 3], [4], 2, 0),
    ([1], [0], 0, 3),
    ([1, 3], [4], 2, 5),
], ids=["none", "busy", "both-two-cpus", "after-the-last-tick", "both-and-after-the-last-tick"])
def test_a_policy_hooks_unmade_records_are_counted_as_missed_events(tmp_path: Path, busy: list[int],
                                                                   pending: list[int], more: int, late: int):
    """Hits of a policy's hook whose record the kernel did not make (its CPU's buffers busy, no
    room to keep the entry for the return) were counted only in the policy's kernel_stats: not
    in `vigil status` lost.kernel nor /metrics. Now lost.kernel generic_busy and
    generic_pending_full, and tetragon_bpf_missed_events_total{msg_op="13", error="EBUSY"|"E2BIG"},
    summed over the hooks and kept when the policy is deleted. (The drops cannot be made to
    happen on demand: the hook's counters are set here, on a private agent.)"""
    import struct

    from vigil.agent.agent import Agent
    from vigil.agent.config import AgentConfig
    from vigil.kernel.objects import possible_cpus

    def missed(agent: Agent) -> dict[tuple[str, str], float]:
        return {(s.labels["msg_op"], s.labels["error"]): s.value for fam in AgentCollector(agent.control).collect()
                for s in fam.samples if s.name == "tetragon_bpf_missed_events_total"}

    agent = Agent(AgentConfig(export_filename=str(tmp_path / "x.log"), server_address="", node_name="t"))
    agent.start()
    try:
        name = agent.policies.add_text(
            "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: unmade-records}\nspec:\n"
            "  kprobes:\n  - call: sys_openat\n    syscall: true\n    args: [{index: 1, type: string}]\n"
            "    selectors:\n    - matchArgs: [{index: 1, operator: Equal, values: [/nonexistent/vigil]}]\n",
            "<t>")[0]
        gh = agent.policies.policies[name].hooks[0]
        stats = gh.obj.map("hook_stats")
        ncpu = possible_cpus()

        def put(slot: int, per_cpu: list[int]) -> None:
            vals = (per_cpu + [0] * ncpu)[:ncpu]
            stats.update(struct.pack("<I", slot), b"".join(struct.pack("<Q", v) for v in vals))

        put(9, busy)
        put(6, pending)
        agent.pipeline.tick()
        lost = agent.status()["lost"]["kernel"]  # (a cause that never happened: no entry, no series)
        assert (lost.get("generic_busy", 0), lost.get("generic_pending_full", 0)) == (sum(busy), sum(pending))
        m = missed(agent)
        assert (m.get(("13", "EBUSY"), 0), m.get(("13", "E2BIG"), 0)) == (sum(busy), sum(pending))
        put(9, [busy[0] + more, *busy[1:]])
        agent.pipeline.tick()
        put(6, [pending[0] + late, *pending[1:]])  # after the last tick: read at the deletion
        agent.delete_policy(name)
        agent.pipeline.tick()
        lost = agent.status()["lost"]["kernel"]
        assert (lost.get("generic_busy", 0), lost.get("generic_pending_full", 0)) == (sum(busy) + more,
                                                                                    sum(pending) + late)
        m = missed(agent)  # the deleted policy's stay
        assert (m.get(("13", "EBUSY"), 0), m.get(("13", "E2BIG"), 0)) == (sum(busy) + more, sum(pending) + late)
    finally:
        agent.close()
