"""The export file on a test-made tmpfs that fills up, goes read-only or loses the file:
the writer (and the agent around it) keeps running, counts what it could not write, never
leaves half a line, and resumes by itself."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.bpfstate import require_root
from tests.kernel.test_agent_cli import AgentProcess
from vigil.export.jsonl import JsonlWriter
from vigil.kernel import sys as ksys

pytestmark = pytest.mark.kernel


@pytest.fixture
def small_fs() -> Iterator[Path]:
    require_root()
    d = Path(tempfile.mkdtemp(prefix="vigil-export-fs-"))
    ksys.mount("tmpfs", str(d), "tmpfs", 0, "size=64k")
    try:
        yield d
    finally:
        ksys.umount(str(d))
        os.rmdir(d)


def event(i: int) -> dict:
    return {"process_exec": {"process": {"pid": i, "binary": "/bin/x", "arguments": "a" * 200}}, "node_name": "t"}


def lines_ok(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "a half-written line is left at the end"
    return [json.loads(x) for x in raw.splitlines()]


def test_disk_full_is_counted_and_export_resumes(small_fs: Path) -> None:
    path = small_fs / "vigil.log"
    w = JsonlWriter(str(path), max_size_mb=0)
    n = 0
    while not w.events_failed:
        w.write_batch([event(n), event(n + 1), event(n + 2)])
        n += 3
        assert n < 10_000, "the 64 KiB file system never filled"
    written = w.events_written
    assert w.errors.get("ENOSPC") == w.events_failed
    assert len(lines_ok(path)) == written  # the failed batch left nothing behind
    for _ in range(5):
        w.write_batch([event(0)])  # full: counted, not raised (one may still fit a freed page end)
    assert w.events_written + w.events_failed == n + 5
    assert len(lines_ok(path)) == w.events_written
    path.write_bytes(b"")  # space returns (an operator truncated the log)
    w.write_batch([event(7)])
    assert lines_ok(path)[-1]["process_exec"]["process"]["pid"] == 7
    w.close()


def test_deleted_export_file_is_recreated(small_fs: Path) -> None:
    path = small_fs / "vigil.log"
    w = JsonlWriter(str(path))
    w.write_batch([event(1)])
    path.unlink()
    w.write_batch([event(2)])
    assert [e["process_exec"]["process"]["pid"] for e in lines_ok(path)] == [2]
    assert w.reopens == 1 and w.events_failed == 0
    w.close()


def test_unwritable_export_path_is_counted_until_writable_again(small_fs: Path) -> None:
    """The file replaced by something that cannot take lines (here a directory)."""
    path = small_fs / "vigil.log"
    w = JsonlWriter(str(path))
    w.write_batch([event(1)])
    path.unlink()
    path.mkdir()
    try:
        w.write_batch([event(2), event(3)])
        assert w.errors == {"EISDIR": 2} and "EISDIR" in w.last_error
    finally:
        path.rmdir()
    w.write_batch([event(4)])
    assert [e["process_exec"]["process"]["pid"] for e in lines_ok(path)] == [4]
    w.close()


def test_agent_keeps_running_on_a_full_export_disk(small_fs: Path, tmp_path: Path) -> None:
    export = small_fs / "events.log"
    agent = AgentProcess(tmp_path, ["--export-filename", str(export)])
    try:
        def failed() -> int:
            r = agent.cli("status", "-o", "json")
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)["status"]["export"]["events_failed"]

        deadline = time.monotonic() + 120
        while failed() == 0:
            assert time.monotonic() < deadline, "the export never filled 64 KiB"
            for i in range(50):
                subprocess.run(["/bin/true", f"fill-{i}"], check=True)
        assert agent.proc.poll() is None, "the agent exited on a full disk"
        r = agent.cli("status", "-o", "json")
        exp = json.loads(r.stdout)["status"]["export"]
        assert exp["write_errors"].get("ENOSPC", 0) > 0 and exp["last_error"].startswith("ENOSPC")
        lines_ok(export)
        export.unlink()  # space returns
        token = f"vigil-after-full-{os.getpid()}"
        deadline = time.monotonic() + 60
        while not (export.exists() and token.encode() in export.read_bytes()):
            assert time.monotonic() < deadline, "export did not resume"
            subprocess.run(["/bin/true", token], check=True)
            time.sleep(0.1)
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0
