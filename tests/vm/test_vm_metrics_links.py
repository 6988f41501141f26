"""tetragon_missed_link_probes_total{policy,attach} on the guest kernels (kprobes): hits of a
kprobe the kernel did not run its program for, because another kprobe was running on that CPU.
A policy hooks vfs_open for this test process (its program reads the path with
bpf_probe_read_kernel, which is copy_from_kernel_nofault) and copy_from_kernel_nofault itself:
every open of the test runs the first program, whose reads hit the second probe while the
first runs, so the second's link counts misses. Kernels report a kprobe link's misses from 6.7
(6.12 here); on 6.1 there is no series, as Tetragon's."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from vmagent import Running, policy

from vigil.agent.metrics import AgentCollector

PID = os.getpid()
NAME = "vm-missed-link"


@pytest.fixture(scope="module")
def agent(agent: Running) -> Running:
    # the file's agent (conftest.py) with kernel functions on kprobes (its other choice where
    # trampolines exist): the links whose misses the kernel reports
    facts = agent.agent.policies.facts
    for f in ("fentry", "fexit"):
        facts.features[f] = (False, "test: kprobes only")
    return agent


def missed_links(agent: Running) -> dict[str, float]:
    out = {}
    for fam in AgentCollector(agent.agent.control).collect():
        for s in fam.samples:
            if s.name == "tetragon_missed_link_probes_total" and s.labels["policy"] == NAME:
                out[s.labels["attach"]] = s.value
    return out


def test_missed_link_probes_count_a_kprobe_hit_while_another_runs(agent: Running, tmp_path: Path) -> None:
    spec = f"""
    kprobes:
    - call: vfs_open
      syscall: false
      args: [{{index: 0, type: path}}]
      selectors:
      - matchPIDs: [{{operator: In, followForks: false, values: [{PID}]}}]
    - call: copy_from_kernel_nofault
      syscall: false
      selectors:
      - matchPIDs: [{{operator: In, followForks: false, values: [{PID}]}}]
    """
    name = agent.agent.policies.add_text(policy(NAME, spec), "<t>")[0]
    try:
        f = tmp_path / "f"
        f.write_text("x")
        before = missed_links(agent)
        for _ in range(20):
            f.open().close()
        after = missed_links(agent)
        rel = tuple(int(x) for x in os.environ["VIGIL_VM_KERNEL"].split(".")[:2])
        if rel < (6, 7):
            assert after == {} and before == {}, after  # the kernel does not report a link's misses
            return
        assert len(after) == 2, after
        nested = next(k for k in after if "copy_from_kernel_nofault" in k)
        outer = next(k for k in after if "vfs_open" in k)
        assert after[nested] - before.get(nested, 0) >= 20, (before, after)
        assert after[outer] == 0, after  # vfs_open's probe ran each time
    finally:
        agent.agent.delete_policy(name)


# the release vigil.kernel.info sees, whether its BTF is one whose struct bpf_link_info lacks the
# missed fields (else the guest's own) -> the hook's links are read where the BTF it sees has
# the fields (6.12's; 6.1's has none), whatever the release says
@pytest.mark.parametrize("release, lacking", [
    ((5, 14), False),   # a backport: an old release, the struct (on 6.12) has the fields
    ((6, 12), True),    # an odd kernel: a new release whose struct lacks them
], ids=["backport", "odd-kernel"])
def test_missed_link_probes_go_by_the_kernels_btf(agent: Running, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path, release: tuple[int, int], lacking: bool) -> None:
    from tests.unit.test_link_missed_btf import link_info_btf
    from vigil.kernel import btf, info

    has_fields = info.missed_offsets(btf.load()) != (None, None)
    monkeypatch.setattr(info, "_release", lambda: release)
    if lacking:
        monkeypatch.setattr(info, "_btf", lambda: link_info_btf(False, False))
    info._kernel_missed_offsets.cache_clear()
    name = f"{NAME}-btf"
    spec = f"""
    kprobes:
    - call: vfs_open
      syscall: false
      selectors:
      - matchPIDs: [{{operator: In, followForks: false, values: [{PID}]}}]
    """
    added = agent.agent.policies.add_text(policy(name, spec), "<t>")[0]
    try:
        (tmp_path / "f").write_text("x")
        links = [ln for ln in agent.agent.status()["links"] if ln["policy"] == name]
        series = {s.labels["attach"] for fam in AgentCollector(agent.agent.control).collect() for s in fam.samples
                  if s.name == "tetragon_missed_link_probes_total" and s.labels["policy"] == name}
    finally:
        agent.agent.delete_policy(added)
        info._kernel_missed_offsets.cache_clear()
    read = has_fields and not lacking
    assert bool(links) == read, (os.environ["VIGIL_VM_KERNEL"], links)
    assert bool(series) == read, series
