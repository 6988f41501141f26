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
