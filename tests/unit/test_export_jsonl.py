from __future__ import annotations

import gzip
import os
import stat
import threading

import orjson
import pytest

from vigil.export.jsonl import JsonlWriter


def _event(i: int, pad: int = 0) -> dict:
    return {
        "process_exec": {"process": {"pid": i, "binary": "/bin/x", "arguments": "a" * pad}},
        "node_name": "n1",
        "time": "2026-01-01T00:00:00Z",
    }


def _lines(path) -> list[dict]:
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f]


def test_writes_compact_json_lines_and_counts(tmp_path):
    path = tmp_path / "sub" / "dir" / "vigil.log"  # parent dirs are created
    with JsonlWriter(str(path)) as w:
        w.write_batch([_event(1), _event(2)])
        w.write(_event(3))
        assert w.events_written == 3
        assert w.bytes_written == path.stat().st_size
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b": " not in raw and b", " not in raw
    assert [e["process_exec"]["process"]["pid"] for e in _lines(path)] == [1, 2, 3]
    assert raw.splitlines()[0].startswith(b'{"process_exec":')


def test_file_mode_from_perm_regardless_of_umask(tmp_path):
    old = os.umask(0o077)
    try:
        path = tmp_path / "a.log"
        JsonlWriter(str(path), perm=0o640).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        path2 = tmp_path / "b.log"
        JsonlWriter(str(path2)).close()
        assert stat.S_IMODE(path2.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_appends_to_existing_file(tmp_path):
    path = tmp_path / "v.log"
    with JsonlWriter(str(path)) as w:
        w.write(_event(1))
    with JsonlWriter(str(path)) as w:
        w.write(_event(2))
    assert len(_lines(path)) == 2


def test_rotation_by_size_keeps_max_backups(tmp_path):
    path = tmp_path / "v.log"
    one_line = len(orjson.dumps(_event(0, pad=1000))) + 1
    # room for exactly 3 events per file
    w = JsonlWriter(str(path), max_size_mb=(3 * one_line + 10) / (1024 * 1024), max_backups=2)
    for i in range(12):
        w.write(_event(i, pad=1000))
    w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["v.log", "v.log.1", "v.log.2"]
    assert w.rotations == 3
    # newest data in the live file, then .1, then .2 (oldest kept)
    pids = lambda p: [e["process_exec"]["process"]["pid"] for e in _lines(p)]  # noqa: E731
    assert pids(path) == [9, 10, 11]
    assert pids(tmp_path / "v.log.1") == [6, 7, 8]
    assert pids(tmp_path / "v.log.2") == [3, 4, 5]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= w.max_bytes


def test_a_fifo_or_device_is_written_as_a_stream_never_rotated_or_chmoded(tmp_path):
    """--export-filename /dev/null (or a pipe to a log shipper): rotating would rename the
    node and leave a regular file in its place, and fchmod would change the node's mode."""
    fifo = tmp_path / "shipper.pipe"
    os.mkfifo(fifo, 0o644)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    one_line = len(orjson.dumps(_event(0, pad=1000))) + 1
    w = JsonlWriter(str(fifo), max_size_mb=(2 * one_line) / (1024 * 1024), max_backups=2)
    for i in range(10):
        w.write(_event(i, pad=1000))
    w.close()
    reader.join(10)
    assert [orjson.loads(x)["process_exec"]["process"]["pid"] for x in got[0].splitlines()] == list(range(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shipper.pipe"]
    st = fifo.stat()
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert w.rotations == 0 and w.events_written == 10


def test_a_pipe_write_cut_short_by_a_signal_goes_on_where_it_stopped(tmp_path):
    """A signal the agent handles (its timers, SIGTERM) cuts a blocked pipe write short: the
    rest of the batch follows; no line is lost or broken."""
    import signal
    import time

    fifo = tmp_path / "slow.pipe"
    os.mkfifo(fifo, 0o644)
    got: list[bytes] = []

    def slow_reader() -> None:
        with open(fifo, "rb", buffering=0) as f:
            while chunk := f.read(4096):
                got.append(chunk)
                time.sleep(0.0002)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    ticks = [0]
    old = signal.signal(signal.SIGALRM, lambda *_: ticks.__setitem__(0, ticks[0] + 1))
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    try:
        w = JsonlWriter(str(fifo), max_size_mb=0, max_backups=0)
        for b in range(30):
            w.write_batch([_event(b * 100 + i, pad=300) for i in range(100)])
        w.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    reader.join(30)
    lines = b"".join(got).splitlines()
    assert ticks[0] > 0
    assert [orjson.loads(x)["process_exec"]["process"]["pid"] for x in lines] == list(range(3000))
    assert w.events_written == 3000


def test_large_batch_is_split_on_event_boundaries(tmp_path):
    path = tmp_path / "v.log"
    one_line = len(orjson.dumps(_event(0, pad=1000))) + 1
    w = JsonlWriter(str(path), max_size_mb=(2 * one_line) / (1024 * 1024), max_backups=10)
    w.write_batch([_event(i, pad=1000) for i in range(6)])
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.log", "v.log.1", "v.log.2"]
    total = sum(len(_lines(p)) for p in tmp_path.iterdir())
    assert total == 6 and w.events_written == 6


def test_rotation_with_compression(tmp_path):
    path = tmp_path / "v.log"
    one_line = len(orjson.dumps(_event(0, pad=1000))) + 1
    w = JsonlWriter(str(path), max_size_mb=one_line / (1024 * 1024), max_backups=2,
                    compress=True, perm=0o640)
    for i in range(4):
        w.write(_event(i, pad=1000))
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.log", "v.log.1.gz", "v.log.2.gz"]
    with gzip.open(tmp_path / "v.log.1.gz") as f:
        assert orjson.loads(f.readline())["process_exec"]["process"]["pid"] == 2
    with gzip.open(tmp_path / "v.log.2.gz") as f:
        assert orjson.loads(f.readline())["process_exec"]["process"]["pid"] == 1
    assert stat.S_IMODE((tmp_path / "v.log.1.gz").stat().st_mode) == 0o640


def test_zero_backups_keeps_all(tmp_path):
    path = tmp_path / "v.log"
    one_line = len(orjson.dumps(_event(0))) + 1
    w = JsonlWriter(str(path), max_size_mb=one_line / (1024 * 1024), max_backups=0)
    for i in range(5):
        w.write(_event(i))
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "v.log", "v.log.1", "v.log.2", "v.log.3", "v.log.4"
    ]
    assert _lines(tmp_path / "v.log.4")[0]["process_exec"]["process"]["pid"] == 0


def test_zero_size_disables_rotation(tmp_path):
    w = JsonlWriter(str(tmp_path / "v.log"), max_size_mb=0)
    for i in range(50):
        w.write(_event(i, pad=100))
    w.close()
    assert [p.name for p in tmp_path.iterdir()] == ["v.log"]


def test_rotation_interval_with_fake_clock(tmp_path):
    now = [0.0]
    w = JsonlWriter(str(tmp_path / "v.log"), rotation_interval=60, clock=lambda: now[0])
    w.write(_event(1))
    now[0] = 30
    w.write(_event(2))
    now[0] = 61
    w.write(_event(3))
    w.close()
    assert len(_lines(tmp_path / "v.log.1")) == 2
    assert len(_lines(tmp_path / "v.log")) == 1


def test_set_params_shrinks_backups(tmp_path):
    path = tmp_path / "v.log"
    one_line = len(orjson.dumps(_event(0))) + 1
    w = JsonlWriter(str(path), max_size_mb=one_line / (1024 * 1024), max_backups=5)
    for i in range(6):
        w.write(_event(i))
    w.set_params(max_backups=2)
    w.write(_event(6))
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.log", "v.log.1", "v.log.2"]


def test_thread_safety_no_torn_lines(tmp_path):
    path = tmp_path / "v.log"
    w = JsonlWriter(str(path), max_size_mb=0.05, max_backups=100)

    def worker(base: int) -> None:
        for i in range(50):
            w.write_batch([_event(base + i * 10 + k, pad=50) for k in range(10)])

    threads = [threading.Thread(target=worker, args=(t * 10000,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    seen = [e for p in tmp_path.iterdir() for e in _lines(p)]
    assert len(seen) == 4 * 50 * 10 == w.events_written


def test_stdout_target(capfdbinary):
    w = JsonlWriter("-")
    w.write_batch([_event(1), _event(2)])
    w.close()
    out = capfdbinary.readouterr().out
    assert len(out.splitlines()) == 2


def test_write_after_close_raises(tmp_path):
    w = JsonlWriter(str(tmp_path / "v.log"))
    w.close()
    with pytest.raises(ValueError):
        w.write(_event(1))


@pytest.mark.parametrize("check_s, in_new, in_renamed", [
    (0.0, [2], [1]),      # the path is looked up again: a new file under the name
    (3600.0, [], [1, 2]),  # within the window: the line goes to the renamed file, not lost
])
def test_export_file_renamed_under_the_writer(tmp_path, monkeypatch, check_s, in_new, in_renamed):
    from vigil.export import jsonl

    monkeypatch.setattr(jsonl, "PATH_CHECK_S", check_s)
    path = tmp_path / "vigil.log"
    with JsonlWriter(str(path)) as w:
        w.write_batch([_event(1)])
        path.rename(tmp_path / "vigil.log.1")
        w.write_batch([_event(2)])
        assert w.reopens == (1 if in_new else 0) and w.events_failed == 0
    pids = [e["process_exec"]["process"]["pid"] for e in _lines(tmp_path / "vigil.log.1")]
    assert pids == in_renamed
    assert [e["process_exec"]["process"]["pid"] for e in _lines(path)] == in_new if in_new else not path.exists()


# what happens to the export file between two writes: the lines each file has after
@pytest.mark.parametrize("change, in_new, in_old", [
    ("none", [1, 2], None),
    ("unlink", [2], None),               # deleted: a new file, the second line in it
    ("hard-link", [1, 2], [1, 2]),       # another name for it: still linked, written as before
    ("link-then-unlink", None, [1, 2]),  # only the other name is left: a rename (looked up each PATH_CHECK_S)
], ids=["none", "unlink", "hard-link", "link-then-unlink"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_a_deleted_export_file_is_seen_at_the_next_write(tmp_path, monkeypatch, compiled, change, in_new, in_old):
    """The deletion check before each write reads the open file's link count: compiled
    (native file_links, no os.stat_result per write) or os.fstat (its reference); the same
    files either way."""
    from vigil.core import native
    from vigil.export import jsonl

    if compiled:
        assert native.fast is not None, "the compiled fast path is not built (make native)"
    else:
        monkeypatch.setattr(jsonl.native, "fast", None)
    monkeypatch.setattr(jsonl, "PATH_CHECK_S", 3600.0)  # the path looked up at the first write only
    path, other = tmp_path / "vigil.log", tmp_path / "other.log"
    with JsonlWriter(str(path)) as w:
        w.write_batch([_event(1)])
        if change in ("hard-link", "link-then-unlink"):
            os.link(path, other)
        if change in ("unlink", "link-then-unlink"):
            path.unlink()
        w.write_batch([_event(2)])
        assert w.reopens == (1 if change == "unlink" else 0) and w.events_failed == 0
    if in_new is None:
        assert not path.exists()
    else:
        assert [e["process_exec"]["process"]["pid"] for e in _lines(path)] == in_new
    if in_old is not None:
        assert [e["process_exec"]["process"]["pid"] for e in _lines(other)] == in_old


@pytest.mark.parametrize("links", [1, 2, 0])
def test_the_compiled_link_count_is_fstats(tmp_path, links):
    from vigil.core import native

    assert native.fast is not None, "the compiled fast path is not built (make native)"
    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        if links == 2:
            os.link(path, tmp_path / "g")
        if links == 0:
            path.unlink()
        assert native.fast.file_links(fd) == os.fstat(fd).st_nlink == links
    finally:
        os.close(fd)
    with pytest.raises(OSError) as got:
        native.fast.file_links(fd)  # closed: EBADF, as os.fstat
    with pytest.raises(OSError) as want:
        os.fstat(fd)
    assert got.value.errno == want.value.errno
