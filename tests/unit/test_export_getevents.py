"""`vigil getevents` through click's CliRunner (files, stdin, filters, agent errors)."""
from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from vigil.cli import getevents_cmd
from vigil.cli.getevents_cmd import build_request_filters, getevents, iter_file_lines

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "events_sample.jsonl"

COMPACT_ALL = [
    "🚀 process default/xwing /usr/bin/curl https://ebpf.io",
    "🔌 connect default/xwing /usr/bin/curl tcp 10.244.1.5:40388 -> 104.198.14.52:443",
    "🚀 process kind-worker /usr/sbin/sshd -D",
    "💥 exit    default/xwing /usr/bin/curl https://ebpf.io 0",
    "💥 exit    kind-worker /usr/sbin/sshd -D SIGKILL",
]


def run(*args: str, input: bytes | None = None):
    runner = CliRunner()
    return runner.invoke(getevents, list(args), input=input, catch_exceptions=False)


def test_file_compact_output():
    result = run("--file", str(SAMPLE), "-o", "compact", "--color", "never")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == COMPACT_ALL


def test_file_json_output_round_trips():
    result = run("--file", str(SAMPLE))
    assert result.exit_code == 0
    got = [orjson.loads(line) for line in result.stdout.splitlines()]
    want = [orjson.loads(line) for line in SAMPLE.read_bytes().splitlines()]
    assert got == want


@pytest.mark.parametrize("flags,expected", [
    (["-e", "PROCESS_EXIT"], [3, 4]),
    (["-e", "process_exec,PROCESS_KPROBE"], [0, 1, 2]),
    (["--process", "sshd$"], [2, 4]),
    (["-n", "default"], [0, 1, 3]),
    (["--host"], [2, 4]),
    (["-n", "default", "--host"], [0, 1, 2, 3, 4]),
    (["--pod", "^xw"], [0, 1, 3]),
    (["--policy-names", "connect"], [1]),
    (["--namespace-regex", "^def"], [0, 1, 3]),
    (["--process", "curl", "-e", "PROCESS_EXIT"], [3]),
])
def test_filters_from_flags(flags, expected):
    result = run("--file", str(SAMPLE), "-o", "compact", *flags)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [COMPACT_ALL[i] for i in expected]


def test_include_and_exclude_fields():
    result = run("--file", str(SAMPLE), "-e", "PROCESS_EXEC", "-f", "process.binary,process.pid")
    events = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["process_exec"] == {"process": {"pid": 11, "binary": "/usr/bin/curl"}}
    assert events[0]["node_name"] == "kind-worker"
    result = run("--file", str(SAMPLE), "-e", "PROCESS_EXEC", "-F", "parent", "-F", "process.pod")
    body = orjson.loads(result.stdout.splitlines()[0])["process_exec"]
    assert "parent" not in body and "pod" not in body["process"]


def test_timestamps_flag():
    result = run("--file", str(SAMPLE), "-o", "compact", "--timestamps", "-e", "PROCESS_KPROBE")
    assert result.stdout == "2026-03-01T10:00:01.200000000Z " + COMPACT_ALL[1] + "\n"


def test_color_always():
    result = run("--file", str(SAMPLE), "-o", "compact", "--color", "always", "--host")
    assert "\x1b[34m🚀 process\x1b[0m" in result.stdout


def test_malformed_lines_are_reported_and_skipped(tmp_path):
    lines = SAMPLE.read_bytes().splitlines()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([lines[0], b"{not json", b"[1,2]", b"", lines[2]]) + b"\n")
    result = run("--file", str(path), "-o", "compact")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [COMPACT_ALL[0], COMPACT_ALL[2]]
    assert f"{path}:2: skipping malformed line" in result.stderr
    assert f"{path}:3: skipping malformed line: not a JSON object" in result.stderr
    assert "skipped 2 malformed line(s)" in result.stderr


def test_stdin_source_when_not_a_tty():
    result = run("-o", "compact", "--process", "curl", input=SAMPLE.read_bytes())
    assert result.stdout.splitlines() == [COMPACT_ALL[0], COMPACT_ALL[1], COMPACT_ALL[3]]


def test_bad_regex_and_bad_event_type_are_usage_errors():
    result = run("--file", str(SAMPLE), "--process", "(")
    assert result.exit_code == 2 and "--process: invalid regex" in result.output
    result = run("--file", str(SAMPLE), "-e", "PROCESS_NOPE")
    assert result.exit_code == 2 and "PROCESS_NOPE" in result.output
    result = run("--file", str(SAMPLE), "-f", "process..binary")
    assert result.exit_code == 2 and "process..binary" in result.output
    # a path naming no field is no error, as tetra's and Tetragon's: it matches nothing
    result = run("--file", str(SAMPLE), "-f", "proces.binary")
    assert result.exit_code == 0, result.output


def test_missing_file():
    result = run("--file", "/nonexistent/events.json")
    assert result.exit_code == 1 and "cannot read /nonexistent/events.json" in result.output


def test_build_request_filters_like_tetra():
    allow, fields = build_request_filters(
        event_types=["PROCESS_EXEC,process_exit"], namespaces=["a,b"], host=True,
        processes=["curl{1,2}"], pods=["web"], policy_names=["p1"], namespace_regex=["^k"],
        include_fields=["process.binary"], exclude_fields=["parent"],
    )
    assert allow == [{"event_set": ["PROCESS_EXEC", "PROCESS_EXIT"], "namespace": ["a", "b", ""],
                      "binary_regex": ["curl{1,2}"], "pod_regex": ["web"],
                      "namespace_regex": ["^k"], "policy_names": ["p1"]}]
    assert fields == [{"fields": "process.binary", "action": "INCLUDE"},
                      {"fields": "parent", "action": "EXCLUDE"}]
    assert build_request_filters() == ([], [])


# -- agent source --------------------------------------------------------------------


class FakeUnreachable(Exception):
    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        super().__init__(f"cannot reach the agent at {address}: {reason}")


@pytest.fixture
def fake_client(monkeypatch):
    calls: list[tuple] = []
    module = types.ModuleType("vigil.api.client")
    module.AgentUnreachable = FakeUnreachable
    module.behaviour = "events"

    def stream_events(server_address, allow_list, deny_list, field_filters, timeout, tls=None):
        calls.append((server_address, allow_list, deny_list, field_filters, timeout))
        if module.behaviour == "unreachable":
            raise FakeUnreachable(server_address or "localhost:54321", "connection refused")
        for line in SAMPLE.read_bytes().splitlines():
            yield orjson.loads(line)

    module.stream_events = stream_events
    monkeypatch.setitem(sys.modules, "vigil.api.client", module)
    monkeypatch.setattr(getevents_cmd, "_stdin_has_events", lambda: False)
    return module, calls


def test_agent_source_sends_filters(fake_client):
    module, calls = fake_client
    result = run("-o", "compact", "--server-address", "unix:///tmp/x.sock", "-e", "PROCESS_EXEC",
                 "-F", "parent", "--timeout", "5s")
    assert result.exit_code == 0
    assert calls == [("unix:///tmp/x.sock", [{"event_set": ["PROCESS_EXEC"]}], [],
                      [{"fields": "parent", "action": "EXCLUDE"}], 5.0)]
    # the server filters; the client prints what it gets
    assert result.stdout.splitlines() == COMPACT_ALL


def test_agent_unreachable_is_a_clear_error(fake_client):
    module, _ = fake_client
    module.behaviour = "unreachable"
    result = run("--server-address", "localhost:9999")
    assert result.exit_code == 1
    assert "localhost:9999" in result.output and "connection refused" in result.output


@pytest.mark.parametrize("flag", ["--process", "--pod", "--namespace-regex", "--container"])
@pytest.mark.parametrize("source", ["file", "agent"])
def test_a_bad_regex_is_named_by_its_flag_before_the_agent_is_asked(fake_client, flag, source):
    """The error named the request's field (`binary_regex: invalid regex`), not the flag the
    user typed; from the agent it came back as `agent error: invalid GetEvents filter` (exit 1)
    after connecting. Now a usage error naming the flag, and the agent is not asked."""
    _, calls = fake_client
    where = ["--file", str(SAMPLE)] if source == "file" else ["--server-address", "localhost:9999"]
    result = run(*where, flag, "ok", flag, "a(")
    assert result.exit_code == 2, result.output
    assert f"Error: {flag}: invalid regex: missing ) in 'a('" in result.output
    assert calls == []


# -- follow and broken pipe ------------------------------------------------------------


def test_iter_file_lines_follow_sees_appends_and_rotation(tmp_path):
    path = tmp_path / "v.log"
    path.write_bytes(b'{"a":1}\n{"a":')
    stop = threading.Event()
    got: list[bytes] = []

    def reader() -> None:
        for _, line in iter_file_lines(str(path), follow=True, poll_interval=0.01,
                                       should_stop=stop.is_set):
            got.append(line)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)
    with open(path, "ab") as f:
        f.write(b'2}\n')
    time.sleep(0.05)
    path.rename(tmp_path / "v.log.1")  # rotation: a new file appears under the name
    path.write_bytes(b'{"a":3}\n')
    deadline = time.time() + 2
    while len(got) < 3 and time.time() < deadline:
        time.sleep(0.01)
    stop.set()
    t.join(2)
    assert got == [b'{"a":1}\n', b'{"a":2}\n', b'{"a":3}\n']


def test_broken_pipe_exits_quietly(monkeypatch):
    class ClosedPipe:
        def write(self, data):
            raise BrokenPipeError

        def flush(self):
            raise BrokenPipeError

    real = getevents_cmd._binary_stream
    monkeypatch.setattr(getevents_cmd, "_binary_stream",
                        lambda s: ClosedPipe() if s is sys.stdout else real(s))
    from vigil.cli import main  # every command's ending on a closed stdout (test_cli_endings.py)

    monkeypatch.setattr(main, "_stdout_closed", lambda: True)
    monkeypatch.setattr(main, "_silence_stdout", lambda: None)
    died: list[bool] = []
    monkeypatch.setattr(main, "_die_of_sigpipe", lambda: died.append(True))  # not this test process
    result = CliRunner().invoke(main.cli, ["getevents", "--file", str(SAMPLE)], catch_exceptions=False)
    assert died == [True] and result.exit_code == 141 and result.stderr == ""


def test_file_reads_a_gzipd_rotated_export(tmp_path):
    """The agent's rotated exports are gzip'd (--export-file-compress, the package's default):
    `--file vigil.log.1.gz` reported every line as malformed JSON."""
    import gzip

    gz = tmp_path / "vigil.log.1.gz"
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    result = run("--file", str(gz), "-o", "compact", "--color", "never")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == COMPACT_ALL and not result.stderr
    assert run("--file", str(gz), "--follow").exit_code == 2  # a rotated file does not grow
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(SAMPLE.read_bytes())[:-12])
    result = CliRunner().invoke(getevents, ["--file", str(broken)])
    assert result.exit_code == 1 and "not a readable gzip file" in result.output
