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
    ops = by_label(ctl, "tetragon_msg_op_total", "msg_op")
    lat = by_label(ctl, "tetragon_handling_latency_count", "op")
    for op in ("5", "7"):
        assert ops[op] - ops0.get(op, 0) >= 25, (op, ops0, ops)
        assert lat[op] - lat0.get(op, 0) >= 25, (op, lat0, lat)
    sums = by_label(ctl, "tetragon_handling_latency_sum", "op")
    assert sums["5"] > 0 and sums["7"] > 0, sums
