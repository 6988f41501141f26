"""Smoke test: bench/event_throughput.py --quick runs end to end on the replay seam.

Only correctness is checked (exit status, every record exported, JSON summary line);
never timings -- those belong to the benchmark output, not to a test.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_event_throughput_quick_replay():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "event_throughput.py"), "--quick", "--no-live", "-n", "2000"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "event_throughput"
    assert summary["records"] == 2001
    assert summary["lost"] == 0
    assert set(summary["stages_s"]) == {"decode+build", "encode", "write"}


def test_tetragon_examples_explains_every_file_at_any_depth(tmp_path: Path) -> None:
    """bench/tetragon_examples.py counted the files at any depth but explained the directory, which
    `policy explain` reads one level deep: sandbox/linux-namespaces/*.yaml were left out (69 of 71)."""
    tp = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {}\nspec:\n"
          "  tracepoints: [{{subsystem: sched, event: sched_process_fork}}]\n")
    deep = tmp_path / "one" / "two"
    deep.mkdir(parents=True)
    (tmp_path / "top.yaml").write_text(tp.format("top"))
    (deep / "deep.yaml").write_text(tp.format("deep"))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "tetragon_examples.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["yaml_files"] == 2
    counts = {k: v for k, v in summary["host"].items() if k != "loads_pct"}
    assert sum(counts.values()) == 2, summary
