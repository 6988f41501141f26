"""bench/exec_overhead.py's round layout and the exec loop's two figures (no timings checked).

Each round interleaves short blocks of every configuration so that a drift of the shared
machine during a round lands on every side alike: each configuration runs the same number
of blocks, and their mean position in the round is the same (over two rounds when the
number of blocks is odd), which is what cancels a linear drift.
"""
from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("exec_overhead"), importlib.import_module("_common")
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize(("configs", "blocks", "rounds_to_balance"), [
    (["off", "bpf", "on"], 4, 1),
    (["off", "bpf", "on"], 2, 1),
    (["off", "on"], 4, 1),
    (["off", "on"], 6, 1),
    (["off", "bpf", "on"], 3, 2),  # an odd count balances over two rounds
    (["off", "on"], 1, 2),
])
def test_blocks_interleave_every_configuration_evenly(bench, configs, blocks, rounds_to_balance):
    mod, _ = bench
    for first in range(4):  # every round, and every pair of rounds from an even or odd one
        seq = [c for r in range(first, first + rounds_to_balance) for i in range(blocks)
               for c in mod.block_order(configs, r, i)]
        counts = {c: seq.count(c) for c in configs}
        assert set(counts.values()) == {blocks * rounds_to_balance}, counts
        pos = {c: sum(k for k, x in enumerate(seq) if x == c) for c in configs}
        assert len(set(pos.values())) == 1, (first, seq, pos)
        # alternated: a round does not start with the same configuration as the one before
        nxt = mod.block_order(configs, first + 1, 0)
        assert nxt[0] != mod.block_order(configs, first, 0)[0]


@pytest.mark.skipif(not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")), reason="no C compiler")
def test_the_exec_loop_reports_wall_and_cpu_time(bench, tmp_path):
    _, common = bench
    spawner = common.build_spawner(tmp_path)
    wall, cpu, pid = common.run_spawner_times(spawner, 20, "/bin/true", "fork")
    assert wall > 0 and cpu > 0 and pid > 0
    secs, pid2 = common.run_spawner(spawner, 5, "/bin/true", "spawn")  # the API other benches use
    assert secs > 0 and pid2 != pid
