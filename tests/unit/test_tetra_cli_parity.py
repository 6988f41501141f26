"""Flags and commands of `tetra` that users type, against `vigil` (an in-process agent server)."""
from __future__ import annotations

import base64
import io
import json
import os
import platform
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.api.fake_agent import FakeAgent
from tests.api.harness import ROOT, running_server, stop_process, wait_for
from tests.api.pki import pki_fixture
from vigil.api.client import retry_service_config
from vigil.cli.main import cli


@pytest.fixture
def server():
    with running_server() as (srv, agent):
        yield srv, agent


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


# -- tetra's global flags: given before the command --------------------------------------

@pytest.mark.parametrize("args", [
    ["status"], ["version", "-s"], ["tp", "list"], ["tp", "list", "-o", "json"],
])
def test_global_server_address_and_timeout_reach_every_command(server, args):
    """`tetra --server-address X status` is how tetra is typed: vigil refused it with
    "No such option '--server-address'"."""
    srv, _ = server
    res = invoke("--server-address", srv.address, "--timeout", "5s", *args)
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("before, after, shown", [
    (["--server-address", "localhost:1", "--timeout", "500ms"], [], "localhost:1: no connection within 0.5s"),
    (["--server-address", "localhost:1"], ["--timeout", "0.25"], "localhost:1: no connection within 0.25s"),
    (["--server-address", "localhost:9", "--timeout", "0.25"], ["--server-address", "localhost:1"],
     "localhost:1: no connection within 0.25s"),   # the command's own flag wins
    (["-d", "--retries", "0", "--server-address", "localhost:1", "--timeout", "0.25"], [],
     "localhost:1: no connection within 0.25s"),
])
@pytest.mark.parametrize("command", [["status"], ["tp", "list"], ["getevents"]])
def test_global_flags_and_command_flags_combine(command, before, after, shown):
    res = invoke(*before, *command, *after)
    assert res.exit_code == 1, res.output
    assert shown in res.output and "Traceback" not in res.output


def test_global_max_recv_size_bounds_replies(server):
    """--max-recv-size: a reply larger than it is refused by the client, as tetra's."""
    srv, _ = server
    assert invoke("--server-address", srv.address, "--max-recv-size", "1000000", "status").exit_code == 0
    res = invoke("--server-address", srv.address, "--max-recv-size", "16", "status")
    assert res.exit_code == 1 and "RESOURCE_EXHAUSTED" in res.output, res.output
    res = invoke("--max-recv-size", "0", "status")
    assert res.exit_code == 2 and "--max-recv-size" in res.output


@pytest.mark.parametrize("retries, attempts", [(0, None), (-1, None), (1, 2), (3, 4), (4, 5), (10, 5)])
def test_retries_become_a_retry_policy(retries, attempts):
    config = json.loads(retry_service_config(retries))
    if attempts is None:
        assert config == {}
    else:
        policy = config["methodConfig"][0]["retryPolicy"]
        assert policy["maxAttempts"] == attempts and policy["retryableStatusCodes"] == ["UNAVAILABLE"]


# -- getevents flags ------------------------------------------------------------------------

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "events_sample.jsonl"


def _kprobe(path: str, data: bytes) -> dict:
    return {"process_kprobe": {"process": {"binary": "/bin/sh", "pod": {}}, "function_name": "tty_write",
                               "args": [{"file_arg": {"path": path}},
                                        {"bytes_arg": base64.b64encode(data).decode()}]},
            "node_name": "n", "time": "2024-01-01T00:00:00Z"}


def test_tty_encode_prints_the_bytes_written_to_that_terminal():
    """-t/--tty-encode PATH: tetra writes the raw bytes of kprobe events on that file and
    nothing else; vigil refused the flag."""
    events = [_kprobe("/dev/pts/3", b"ls -l\r\n"), _kprobe("/dev/pts/4", b"other"),
              *(json.loads(line) for line in SAMPLE.read_text().splitlines()),
              _kprobe("/dev/pts/3", b"\x1b[0mdone\n")]
    lines = "".join(json.dumps(e) + "\n" for e in events)
    for flag in ("-t", "--tty-encode"):
        res = CliRunner().invoke(cli, ["getevents", flag, "/dev/pts/3"], input=lines)
        assert res.exit_code == 0, res.output
        assert res.stdout_bytes == b"ls -l\r\n\x1b[0mdone\n"


def test_cel_expression_is_refused_clearly():
    res = invoke("getevents", "--cel-expression", "process_exec.process.binary == '/bin/sh'", input="")
    assert res.exit_code == 2 and "--cel-expression" in res.output and "not supported" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("flags, expected", [
    (["--process", "curl,sshd"], [0, 1, 2, 3, 4]),       # tetra's StringSlice: two regexes
    (["--processes", "sshd$", "--process", "nope"], [2, 4]),
    (["--process", "c{1,2}url"], [0, 1, 3]),             # a comma of a regex stays in it
    (["--process", '"zz,z",curl'], [0, 1, 3]),           # quoted as CSV
    (["--pods", "nope,^xw"], [0, 1, 3]),
    (["--namespace-regex", "x,^def"], [0, 1, 3]),
    (["--namespaces", "x,default"], [0, 1, 3]),
    (["--containers", "nope"], []),
])
def test_regex_flags_split_on_commas_like_tetra(flags, expected):
    lines = SAMPLE.read_text().splitlines()
    res = invoke("getevents", *flags, input="\n".join(lines) + "\n")
    assert res.exit_code == 0, res.output
    assert [json.loads(x) for x in res.stdout.splitlines()] == [json.loads(lines[i]) for i in expected]


# -- loglevel, eventlog, dump: tetra's commands over GetDebug/SetDebug and EventLogService ----

class EventLogAgent(FakeAgent):
    def __init__(self) -> None:
        super().__init__()
        self.params = {"max_size": 100, "rotation_interval": "0s", "max_backups": 5}

    def event_log_params(self) -> dict:
        return dict(self.params)

    def set_event_log_params(self, *, max_size_mb=None, rotation_interval=None, max_backups=None) -> None:
        for key, value in (("max_size", max_size_mb), ("rotation_interval", rotation_interval),
                           ("max_backups", max_backups)):
            if value is not None:
                self.params[key] = value


@pytest.fixture
def agent_cli():
    with running_server(agent=EventLogAgent()) as (srv, agent):
        agent.log_level = "info"

        def run(*args: str):
            return invoke("--server-address", srv.address, "--timeout", "5s", *args)
        yield run, agent


@pytest.mark.parametrize("args, code, out, level", [
    (["loglevel", "get"], 0, "Current log level: LOG_LEVEL_INFO\n", "info"),
    (["log", "get"], 0, "Current log level: LOG_LEVEL_INFO\n", "info"),
    (["loglevel", "set", "debug"], 0, "Log level set to: LOG_LEVEL_DEBUG\n", "debug"),
    (["loglevel", "set", "WARNING"], 0, "Log level set to: LOG_LEVEL_WARN\n", "warn"),
    (["loglevel", "set", "trace"], 0, "Log level set to: LOG_LEVEL_TRACE\n", "trace"),
    (["loglevel", "set", "loud"], 2, "invalid log level: loud", "info"),
    (["loglevel", "set"], 2, "Missing argument", "info"),
])
def test_loglevel(agent_cli, args, code, out, level):
    run, agent = agent_cli
    res = run(*args)
    assert res.exit_code == code, res.output
    assert (res.output == out) if code == 0 else (out in res.output and "Traceback" not in res.output)
    assert agent.log_level == level


@pytest.mark.parametrize("args, params", [
    ([], {"max_size": 100, "rotation_interval": "0s", "max_backups": 5}),
    (["--max-size", "20"], {"max_size": 20, "rotation_interval": "0s", "max_backups": 5}),
    (["--max-backups", "0", "--rotation-interval", "1h"], {"max_size": 100, "rotation_interval": "1h0m0s",
                                                           "max_backups": 0}),
    (["--rotation-interval", "90s"], {"max_size": 100, "rotation_interval": "1m30s", "max_backups": 5}),
])
def test_eventlog_set_and_get(agent_cli, args, params):
    run, agent = agent_cli
    res = run("eventlog", "set", *args)
    assert res.exit_code == 0 and res.output == "", res.output
    assert agent.params == params
    res = run("eventlog", "get")
    assert res.exit_code == 0, res.output
    assert res.output == (f'Current logging parameters: max_size:{params["max_size"]} '
                          f'rotation_interval:"{params["rotation_interval"]}" max_backups:{params["max_backups"]}\n')


@pytest.mark.parametrize("args, code, want", [
    (["dump", "processcache"], 0, '"binary": "/sbin/init"'),
    (["dump", "processCache", "--skip-zero-refcnt"], 0, '"refcnt": 2'),
    (["debug", "dump", "processcache"], 0, '"exec_id": "x"'),
    (["dump", "processcache", "--exclude-execve-map-processes"], 1, "exclude_execve_map_processes"),
    (["dump", "execve"], 1, "not available in vigil"),
    (["dump", "policyfilter", "--map-fname", "x"], 1, "not available in vigil"),
])
def test_dump(agent_cli, args, code, want):
    run, _ = agent_cli
    res = run(*args)
    assert res.exit_code == code, res.output
    assert want in res.output and "Traceback" not in res.output
    if code == 0:
        entries = [json.loads(line) for line in res.output.splitlines()]
        assert [e["process"]["pid"] for e in entries] == [1]


# -- tracingpolicy: --domain, domains, modify ---------------------------------------------

POLICY = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: p1}\nspec:\n  kprobes: [{call: x}]\n"


def test_tracingpolicy_domain_flag_and_domains(agent_cli, tmp_path):
    """tetra's --domain on add/delete/enable/disable/set-mode/list and `tp domains`: vigil
    refused them ("No such option", "No such command")."""
    run, agent = agent_cli
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    for args, code, want in [
        (["tp", "add", str(f), "--domain", "grpc"], 0, f'tracing policy "{f}" added'),
        (["tp", "add", str(f), "--domain", "k8s"], 1, "INVALID_ARGUMENT"),
        (["tp", "list", "--domain", "grpc"], 0, "p1"),
        (["tp", "list", "--domain", "static"], 0, "NMONITOR\n"),
        (["tp", "disable", "p1", "--domain", "grpc"], 0, 'tracing policy "p1" disabled'),
        (["tp", "enable", "p1", "--domain", "static"], 1, "NOT_FOUND"),
        (["tp", "enable", "p1", "--domain", "grpc", "-n", ""], 0, 'tracing policy "p1" enabled'),
        (["tp", "set-mode", "p1", "monitor", "--domain", "grpc"], 0, 'set to mode "monitor"'),
        (["tp", "domains"], 0, "[static grpc]\n"),
        (["tp", "domains", "-o", "json"], 0, '{"domains":["static","grpc"]}\n'),
        (["tp", "delete", "p1", "--domain", "static"], 1, "NOT_FOUND"),
        (["tp", "delete", "p1", "--domain", "grpc"], 0, 'tracing policy "p1" deleted'),
    ]:
        res = run(*args)
        assert res.exit_code == code, (args, res.output)
        assert want in res.output and "Traceback" not in res.output, (args, res.output)


@pytest.mark.parametrize("args", [
    ["tp", "list", "--domain", "bogus"],
    ["tp", "list", "-o", "json", "--domain", "GRPC"],
    ["tp", "add", "{file}", "--domain", "bogus"],
    ["tp", "delete", "p1", "--domain", "bogus"],
    ["tp", "enable", "p1", "--domain", "bogus"],
    ["tp", "disable", "p1", "--domain", "bogus"],
    ["tp", "set-mode", "p1", "monitor", "--domain", "bogus"],
])
def test_tracingpolicy_unknown_domain_is_a_usage_error(agent_cli, tmp_path, args):
    """`tp list --domain bogus` printed an empty table and exited 0 (a typo read as 'no
    policies'): an unknown domain is a usage error naming the option and the domains."""
    run, agent = agent_cli
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    res = run(*[a.format(file=f) for a in args])
    assert res.exit_code == 2, res.output
    bad = args[-1]
    assert "'--domain'" in res.output and f"'{bad}' is not a policy domain: use one of grpc, k8s, static" \
        in res.output, res.output
    assert not [c for c in agent.calls if c[0] != "log_level"]  # nothing reached the agent


@pytest.mark.parametrize("args, want", [
    (["bugtool", "-o", ""], "Invalid value for -o/--out: an empty file name"),          # was ValueError: nothing to open
    (["probe", "--obj", "/etc/passwd"], "Invalid value for --obj: /etc/passwd: not a BPF object"),  # was 34 '?'s, exit 0
    (["eventlog", "set", "--max-size", str(2**31)], "'--max-size': 2147483648 is not in the range 0<=x<=2147483647"),
    (["eventlog", "set", "--max-backups", "-1"], "'--max-backups': -1 is not in the range"),  # (the agent's words)
    (["tp", "add", ""], "Invalid value for 'FILE': an empty file name"),               # was 'cannot read .'
    (["tp", "modify", ""], "Invalid value for 'FILE': an empty file name"),
])
def test_bad_arguments_are_usage_errors(args, want):
    """Bad arguments found while walking the CLI: a traceback, a table of '?' and exit 0, and
    an empty name read as '.': each is now a usage error naming the argument (checked before
    any agent is asked)."""
    res = invoke(*args)
    assert res.exit_code == 2 and want in res.output, (res.output, res.exception)


@pytest.mark.parametrize("content, args, code, want", [
    (POLICY, [], 0, POLICY),                                           # unchanged without -m
    (POLICY, ["-m", "monitor"], 0, "options:\n  - name: policy-mode\n    value: monitor\n"),
    (POLICY, ["--mode", "enforce"], 0, "value: enforce"),
    (POLICY, ["-m", "loud"], 2, "'loud' is not one of 'enforce', 'monitor'"),
    ("kind: TracingPolicy\nmetadata: {name: p1\n", ["-m", "enforce"], 1, "p.yaml:3:1: YAML syntax error"),
    (b"\xff\xfe", ["-m", "enforce"], 1, "not UTF-8 text"),
    (None, ["-m", "enforce"], 1, "No such file or directory"),
])
def test_tracingpolicy_modify_prints_the_modified_yaml(tmp_path, content, args, code, want):
    f = tmp_path / "p.yaml"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    res = invoke("tp", "modify", str(f), *args)
    assert res.exit_code == code, res.output
    assert want in res.output and "Traceback" not in res.output
    if code == 0 and args:
        assert yaml.safe_load(res.output)["metadata"]["name"] == "p1"
        assert f.read_text() == content   # the file is left as it was


def test_tracingpolicy_add_of_a_binary_file_is_a_clear_error(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_bytes(b"\xff\xfe\x00")
    res = invoke("tp", "add", str(f), "--server-address", "localhost:1", "--timeout", "0.2")
    assert res.exit_code == 1 and f"cannot read {f}: not UTF-8 text" in res.output, res.output


@pytest.mark.parametrize("args, keys", [
    (["version", "-b"], ["CLI version", "PythonVersion"]),
    (["version", "--build", "-s"], ["CLI version", "Server version", "PythonVersion"]),
    (["version"], ["CLI version"]),
])
def test_version_build_info(agent_cli, args, keys):
    """tetra's version -b/--build prints the CLI's build info after the versions: vigil
    refused -b ("No such option")."""
    run, _ = agent_cli
    res = run(*args)
    assert res.exit_code == 0, res.output
    got = [line.split(": ", 1)[0] for line in res.output.splitlines()]
    assert got[:len(keys)] == keys
    assert set(got[len(keys):]) <= {"Date", "GitCommit", "GitTreeState"}
    if "PythonVersion" in keys:
        assert f"PythonVersion: {platform.python_version()}\n" in res.output


# -- tracingpolicy generate ------------------------------------------------------------------

PYTHON = os.path.realpath(sys.executable)  # an ELF with function symbols and (Debian) USDTs


def _generated(*args: str) -> dict:
    res = invoke("tp", "generate", *args)
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(res.output)
    assert doc["apiVersion"] == "cilium.io/v1alpha1" and doc["kind"] == "TracingPolicy"
    return doc


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="the syscall list comes from BTF")
def test_generate_empty_and_syscall_policies_load(tmp_path):
    """tetra's `tp generate ...` was 'No such command'; what it prints is a policy the
    loader accepts."""
    from vigil.policy import load_policies

    assert _generated("empty")["spec"] == {} and _generated("empty")["metadata"]["name"] == "empty"
    lst = _generated("-m", "/bin/sh", "all-syscalls-list")
    assert lst["spec"]["kprobes"] == [{"call": "list:syscalls", "syscall": True, "selectors": [
        {"matchBinaries": [{"operator": "In", "values": ["/bin/sh"]}]}]}]
    values = lst["spec"]["lists"][0]["values"]
    assert lst["spec"]["lists"][0]["type"] == "syscalls" and {"sys_read", "sys_openat"} <= set(values)
    each = _generated("all-syscalls")["spec"]["kprobes"]
    assert [k["call"] for k in each] == values and all(k["syscall"] is True for k in each)
    for name, doc in (("list", lst), ("each", {**lst, "spec": {"kprobes": each[:3]}})):
        f = tmp_path / f"{name}.yaml"
        f.write_text(yaml.safe_dump(doc))
        assert load_policies(str(f))


@pytest.mark.skipif(not os.path.exists(PYTHON), reason="needs the interpreter's ELF")
def test_generate_uprobes_and_usdts_of_a_binary():
    up = _generated("uprobes", "-b", PYTHON)["spec"]["uprobes"]
    assert up[0]["path"] == PYTHON and "Py_Initialize" in up[0]["symbols"]
    usdts = _generated("usdts", "--binary", PYTHON)["spec"]["usdts"]
    for u in usdts:
        assert u["path"] == PYTHON and u["provider"] and u["name"]
        for i, a in enumerate(u.get("args", [])):
            assert a["index"] == i and a["type"] in ("int8", "uint8", "int16", "uint16", "int32", "uint32",
                                                     "int64", "uint64")


@pytest.mark.parametrize("args, code, want", [
    (["uprobes"], 2, "binary is not specified, please use --binary option"),
    (["usdts"], 2, "binary is not specified"),
    (["uprobes", "-b", "/nonexistent/x"], 1, "failed to open '/nonexistent/x': No such file or directory"),
    (["usdts", "-b", "/etc/hostname"], 1, "not an ELF file"),
    (["uprobes", "-b", "TRUNCATED"], 1, "failed to get symtab"),
    (["ftrace-list", "-r", "("], 2, "--regex"),
    (["nope"], 2, "No such command 'nope'"),
])
def test_generate_errors_are_clear(tmp_path, args, code, want):
    if "TRUNCATED" in args:
        trunc = tmp_path / "trunc"
        trunc.write_bytes(open(PYTHON, "rb").read(200))
        args = [str(trunc) if a == "TRUNCATED" else a for a in args]
    res = invoke("tp", "generate", *args)
    assert res.exit_code == code, res.output
    assert want in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("first, second, code, want", [
    ("missing", "missing", 1, "cannot read the kernel's ftrace functions ({d}/first: No such file or directory; "
                              "{d}/second: No such file or directory)"),
    ("dir", "missing", 1, "{d}/first: Is a directory; {d}/second: No such file or directory)"),
    ("missing", "file", 0, "values:\n    - vfs_open\n"),
])
def test_generate_ftrace_list_says_why_it_cannot_read(tmp_path, monkeypatch, first, second, code, want):
    """`cannot read available_filter_functions (is tracefs mounted? root?)` was said whatever the
    cause, also to root on a mounted tracefs whose kernel refuses the file (EPERM): each file's
    own error now."""
    from vigil.cli import generate_cmd

    paths = []
    for name, kind in (("first", first), ("second", second)):
        p = tmp_path / name
        if kind == "dir":
            p.mkdir()
        elif kind == "file":
            p.write_text("vfs_open\n")
        paths.append(str(p))
    monkeypatch.setattr(generate_cmd, "FTRACE_FUNCTIONS", tuple(paths))
    res = invoke("tp", "generate", "ftrace-list")
    assert res.exit_code == code, res.output
    assert want.format(d=tmp_path) in res.output and "Traceback" not in res.output


# -- getevents --reconnect against a server that goes away and comes back -------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exec_event(binary: str) -> dict:
    return {"process_exec": {"process": {"exec_id": binary, "pid": 7, "binary": binary, "arguments": "a b"}},
            "node_name": "test-node", "time": "2024-01-01T00:00:00Z"}


def _read_line(proc: subprocess.Popen, deadline_s: float = 20.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
    assert ready, "no output from getevents"
    return proc.stdout.readline()


@pytest.mark.parametrize("reconnect", [True, False])
def test_getevents_reconnect(reconnect):
    """--reconnect keeps reading across an agent restart (--reconnect-wait between tries);
    without it the end of the agent is one clear error."""
    address = f"localhost:{_free_port()}"
    args = [sys.executable, "-m", "vigil.cli.main", "getevents", "-o", "compact", "--color", "never",
            "--server-address", address]
    if reconnect:
        args += ["--reconnect", "--reconnect-wait", "100ms"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        with running_server(address) as (_, agent):
            wait_for(lambda: agent.bus.subscriber_count == 1, what="getevents to subscribe")
            agent.publish([_exec_event("/bin/first")])
            assert _read_line(proc) == '🚀 process test-node /bin/first "a b"\n'
        if not reconnect:
            assert proc.wait(20) == 1
            err = proc.stderr.read()
            assert f"cannot reach the agent at {address}" in err and "Traceback" not in err
            return
        with running_server(address) as (_, agent):
            wait_for(lambda: agent.bus.subscriber_count == 1, what="getevents to reconnect")
            agent.publish([_exec_event("/bin/second")])
            assert _read_line(proc) == '🚀 process test-node /bin/second "a b"\n'
        assert proc.poll() is None
    finally:
        stop_process(proc)
    assert "reconnecting in 0.1s" in proc.stderr.read()


def test_info_prints_the_agents_info_as_tetra(agent_cli):
    """tetra's `info` (GetInfo as {Name, Version, Probes, Conf, Build}) was 'No such command'."""
    run, _ = agent_cli
    res = run("info")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["Name"] == "vigil" and data["Version"] == "9.9.9-test"
    assert set(data) == {"Name", "Version", "Probes", "Conf", "Build"}
    assert data["Probes"] == {"kprobe": True, "fmod_ret": False, "lsm": False}  # was {}
    assert json.loads(data["Conf"]["vigil.status"])["process_cache"]["size"] == 42
    assert data["Build"]["GoVersion"].startswith("python")


@pytest.mark.parametrize("probes, want", [
    ([], {}),
    ([("kprobe", True)], {"kprobe": True}),
    ([("kprobe", True), ("lsm", False), ("fentry", None)], {"fentry": False, "kprobe": True, "lsm": False}),
    ([("signal", True), ("fmodret", True), ("buildid", False)], {"buildid": False, "fmodret": True, "signal": True}),
])
def test_info_decodes_probes_as_tetra(probes, want):
    """GetInfo's probes ({Name, Enabled}, the proto's Go-cased fields) as tetra's map of name ->
    enabled (an unset Enabled: false); decoding any probe raised AttributeError ('name'). A Go
    map: tetra prints it with its keys sorted (Vigil printed the agent's order)."""
    from vigil.api.pb import sensors_pb2
    from vigil.cli.info_cmd import decode_info

    res = sensors_pb2.GetInfoResponse(name="vigil")
    for name, enabled in probes:
        p = res.probes.add(Name=name)
        if enabled is not None:
            p.Enabled.value = enabled
    assert list(decode_info(res)["Probes"].items()) == list(want.items())


@pytest.mark.parametrize("features, want", [
    ({"fmod_ret": (True, "")}, {"fmodret": True}),
    ({"send_signal": (False, "no helper")}, {"signal": False}),
    ({"kprobe_multi": (True, ""), "fentry": (None, "?"), "lsm": (False, ""), "override_return": (True, ""),
      "probe_write_user": (True, "")},
     {"kprobe_multi": True, "fentry": False, "lsm": False, "override_return": True, "probe_write_user": True}),
    ({"kprobe": (True, ""), "d_path": (True, "")}, {"kprobe": True, "d_path": True}),  # no Tetragon counterpart
])
def test_info_names_probes_as_tetragon_does(features, want):
    """GetInfo's probes carry Tetragon's probe name where Tetragon probes the same thing (its
    pkg/bpf names: fmod_ret programs are 'fmodret', the send-signal helper 'signal'); they
    were Vigil's own ('fmod_ret', 'send_signal'), so tetra info against Vigil showed other keys."""
    from types import SimpleNamespace

    from vigil.agent.control import AgentControl

    agent = SimpleNamespace(policies=SimpleNamespace(facts=SimpleNamespace(features=features)))
    assert AgentControl(agent).kernel_probes() == want  # type: ignore[arg-type]


@pytest.mark.parametrize("value, want", [
    ("string", "x"), ("int", 7), ("bool", True), ("list", ["a", 1.0]), ("other", "unknown value type"),
])
def test_info_decodes_each_conf_value_kind(value, want):
    from google.protobuf import any_pb2, struct_pb2, timestamp_pb2, wrappers_pb2

    from vigil.api.pb import sensors_pb2
    from vigil.cli.info_cmd import decode_info

    msg = {"string": wrappers_pb2.StringValue(value="x"), "int": wrappers_pb2.Int64Value(value=7),
           "bool": wrappers_pb2.BoolValue(value=True), "other": timestamp_pb2.Timestamp(seconds=1)}.get(value)
    if value == "list":
        msg = struct_pb2.ListValue()
        msg.extend(["a", 1])
    packed = any_pb2.Any()
    packed.Pack(msg)
    res = sensors_pb2.GetInfoResponse(name="vigil")
    res.conf.add(key="k", value=packed)
    got = decode_info(res)["Conf"]["k"]
    assert (want in got) if value == "other" else (got == want)


# -- probe config ------------------------------------------------------------------------------

@pytest.mark.parametrize("proc, boot, code, want", [
    (b"CONFIG_BPF=y\n# CONFIG_AUDIT is not set\nCONFIG_SECURITY=m\nCONFIG_X=y\n", None, 0,
     {"CONFIG_BPF:y", "CONFIG_AUDIT:n", "CONFIG_SECURITY:m"}),
    (None, "CONFIG_BPF_JIT=y\nCONFIG_CGROUPS=\n", 0, {"CONFIG_BPF_JIT:y", "CONFIG_CGROUPS:n", "CONFIG_BPF:n"}),
    (None, None, 1, "detecting kernel config failed"),
    (b"not gzip", None, 1, "detecting kernel config failed"),
])
def test_probe_config(tmp_path, monkeypatch, proc, boot, code, want):
    """tetra's `probe config` (the kernel build options it cares about) was 'Got unexpected
    extra argument (config)'."""
    import gzip

    from vigil.cli import probe_cmd

    proc_path, boot_path = tmp_path / "config.gz", tmp_path / "config-{release}"
    if proc is not None:
        proc_path.write_bytes(gzip.compress(proc) if proc != b"not gzip" else proc)
    if boot is not None:
        (tmp_path / f"config-{os.uname().release}").write_text(boot)
    monkeypatch.setattr(probe_cmd, "PROC_CONFIG", str(proc_path))
    monkeypatch.setattr(probe_cmd, "BOOT_CONFIG", str(boot_path))
    res = invoke("probe", "config")
    assert res.exit_code == code, res.output
    if code == 0:
        lines = res.output.splitlines()
        assert len(lines) == 15 and lines == sorted(lines) and want <= set(lines)
    else:
        assert want in res.output and "Traceback" not in res.output


# -- explain ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, code, want", [
    (["--list"], 0, ["NAME                     SHORTNAMES", "TracingPolicy            tgtp",
                     "TracingPolicyNamespaced  tgtpn"]),
    (["tracingpolicy"], 0, ["KIND:     TracingPolicy", "VERSION:  v1alpha1", "", "DESCRIPTION:"]),
    (["TracingPolicy.spec"], 0, ["KIND:     TracingPolicy", "VERSION:  v1alpha1", "", "FIELD:    spec <object>"]),
    (["tgtp[spec][options]"], 0, ["KIND:     TracingPolicy", "VERSION:  v1alpha1", "",
                                  "FIELD:    options <[]object>", "", "FIELDS:", "   name\t<string> -required-"]),
    (["tgtpn[spec].kprobes", "--api-version", "v1alpha1"], 0, ["KIND:     TracingPolicyNamespaced"]),
    (["tracingpolicy.spec.nope"], 1, "field 'nope' not found in 'tracingpolicy.spec' (available fields: "),
    (["podinfo"], 1, "unsupported resource: podinfo (supported resources: TracingPolicy"),
    (["tracingpolicy", "--api-version", "v9"], 1, "version v9 not found"),
    (["tracingpolicy.spec."], 2, "cannot be empty, start or end with '.'"),
    ([], 2, "missing RESOURCE"),
])
def test_explain(args, code, want):
    """tetra's `explain RESOURCE[.FIELD...]` (the CRDs' fields, no cluster needed) was
    'No such command'."""
    res = invoke("explain", *args)
    assert res.exit_code == code, res.output
    if code == 0:
        assert res.output.splitlines()[:len(want)] == want
    else:
        assert want in res.output and "Traceback" not in res.output


def test_explain_recursive_and_machine_output():
    spec = json.loads(invoke("explain", "tracingpolicy.spec", "-o", "json").output)
    assert spec["type"] == "object" and "kprobes" in spec["properties"]
    assert yaml.safe_load(invoke("explain", "tracingpolicy.spec", "-o", "yaml").output) == spec
    flat = invoke("explain", "tracingpolicy").output
    deep = invoke("explain", "tracingpolicy", "-R").output
    assert "   spec\t<object> -required-" in flat and "     kprobes\t<[]object>" not in flat
    assert "     kprobes\t<[]object>" in deep   # spec's fields, one level in


# -- tetra's TLS flags: names, global placement -------------------------------------------------

pki = pki_fixture


@pytest.fixture
def tls_address(pki):
    from vigil.api.server import TlsConfig

    tls = TlsConfig(pki["server.pem"], pki["server.key"], (pki["ca.pem"],), require_client_cert=True)
    with running_server("127.0.0.1:0", tls=tls) as (srv, _):
        yield srv.address


@pytest.mark.parametrize("before, after, code, want", [
    (["--tls-ca-cert-files", "ca.pem", "--tls-cert-file", "ca-client.pem", "--tls-key-file", "ca-client.key"],
     [], 0, "HEALTH_STATUS_RUNNING"),                                      # tetra's global flags
    ([], ["--tls-ca-cert-files", "ca.pem", "--tls-cert-file", "ca-client.pem", "--tls-key-file", "ca-client.key"],
     0, "HEALTH_STATUS_RUNNING"),                                          # tetra's names on the command
    (["--tls-cert-file", "ca-client.pem", "--tls-key-file", "ca-client.key"],
     ["--tls-ca-cert-files", "rogue.pem,ca.pem"], 0, "HEALTH_STATUS_RUNNING"),   # several CAs, mixed places
    (["--tls-ca-cert-files", "ca.pem"], [], 1, "cannot reach the agent"),   # no client certificate
    (["--tls-skip-verify"], [], 2, "--tls-skip-verify is not supported by vigil"),
    ([], ["--tls-ca-cert-files", "nope.pem"], 2, "nope.pem: no such file"),
])
def test_tls_flags_as_tetra(pki, tls_address, before, after, code, want):
    """tetra's TLS flags are global and the CA flag is --tls-ca-cert-files (a list): vigil
    took only --tls-ca-file after the command."""
    def path(a: str) -> str:
        return ",".join(pki.get(x, x) for x in a.split(","))
    res = invoke(*map(path, before), "--server-address", tls_address, "--timeout", "5s", "status", "-o", "json",
                 *map(path, after))
    assert res.exit_code == code, res.output
    assert want in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("args, code, want", [
    (["sensors", "list"], 0, "exec (enabled) base\n"),
    (["sensors", "enable", "exec"], 1, "UNIMPLEMENTED: EnableSensor: sensors belong to tracing policies"),
    (["sensors", "disable", "exec"], 1, "UNIMPLEMENTED: DisableSensor"),
    (["sensors", "rm", "exec"], 1, "UNIMPLEMENTED: RemoveSensor"),
    (["sensors", "enable"], 2, "Missing argument 'SENSOR'"),
])
def test_deprecated_sensors_command(agent_cli, args, code, want):
    """tetra's deprecated `sensors list|enable|disable|rm` was 'No such command'."""
    run, _ = agent_cli
    res = run(*args)
    assert res.exit_code == code, res.output
    assert want in res.output and "Traceback" not in res.output
    if code != 2:
        assert res.output.startswith('Command "sensors" is deprecated, please use the tracingpolicy command')


class _Tty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("mode, tty, env, color", [
    ("auto", True, {}, True),
    ("auto", False, {}, False),
    ("auto", True, {"NO_COLOR": "1"}, False),
    ("auto", True, {"TERM": "dumb"}, False),     # tetra's colour library: a dumb terminal has none
    ("always", False, {"NO_COLOR": "1", "TERM": "dumb"}, True),
    ("never", True, {}, False),
])
def test_color_modes(monkeypatch, mode, tty, env, color):
    from vigil.cli.getevents_cmd import _use_color

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _use_color(mode, _Tty(tty)) is color


@pytest.mark.parametrize("args, want", [
    (["policyfilter", "dump"], "`policyfilter` (a tetra command) is not available in vigil"),
    (["cgtracker", "dump"], "`cgtracker` (a tetra command) is not available in vigil"),
    (["cri", "version"], "`cri` (a tetra command) is not available in vigil"),
    (["rthooks", "create-container", "--help"], "`rthooks` (a tetra command) is not available in vigil"),
    (["policytest", "run"], "use `vigil policy dry-run"),
    (["debug", "maps"], "debug maps: not available in vigil"),
    (["debug", "progs", "--all-progs"], "debug progs: not available in vigil"),
    (["debug", "enable-stats"], "debug enable-stats: not available in vigil"),
])
def test_tetra_commands_without_a_vigil_counterpart_say_so(args, want):
    res = invoke(*args)
    assert res.exit_code == 1, res.output
    assert want in res.output and "Traceback" not in res.output


# -- bugtool -----------------------------------------------------------------------------------

def _members(path) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}


def test_bugtool_archives_the_agents_state(agent_cli, tmp_path):
    """tetra's `bugtool [-o FILE]` was 'No such command'."""
    run, _ = agent_cli
    out = tmp_path / "bt.tar.gz"
    res = run("bugtool", "-o", str(out), "--gops", "/usr/bin/gops")
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"bugtool archive written to {out}")
    files = _members(out)
    assert {"cli-version.txt", "uname.txt", "agent/health.json", "agent/status.json", "agent/version.txt",
            "agent/loglevel.txt", "agent/info.json", "agent/tracingpolicies.json",
            "agent/processcache.jsonl"} <= set(files)
    assert json.loads(files["agent/status.json"])["process_cache"]["size"] == 42
    assert files["agent/version.txt"] == b"9.9.9-test\n" and files["agent/loglevel.txt"] == b"LOG_LEVEL_INFO\n"
    assert json.loads(files["agent/processcache.jsonl"].splitlines()[0])["process"]["pid"] == 1
    assert b"gops" in files["errors.txt"]   # named, not silently ignored


@pytest.mark.parametrize("args, code, want", [
    (["--server-address", "localhost:1", "--timeout", "0.2"], 0, "see errors.txt"),
    (["--bpftool", "/nonexistent/bpftool"], 2, "/nonexistent/bpftool: not an executable file"),
    (["-o", "/nonexistent/dir/x.tar.gz", "--server-address", "localhost:1", "--timeout", "0.2"], 1,
     "cannot write /nonexistent/dir/x.tar.gz: No such file or directory"),
])
def test_bugtool_without_an_agent_or_with_bad_flags(tmp_path, monkeypatch, args, code, want):
    monkeypatch.chdir(tmp_path)
    res = invoke("bugtool", *args)
    assert res.exit_code == code, res.output
    assert want in res.output and "Traceback" not in res.output
    if code == 0:
        files = _members(tmp_path / "vigil-bugtool.tar.gz")
        assert "cli-version.txt" in files and b"cannot reach the agent at localhost:1" in files["errors.txt"]


def test_explain_finds_the_crds_where_the_package_installs_them(tmp_path, monkeypatch):
    """The Debian package installs the CRDs where `vigil explain` looks for them when it does
    not run from a checkout, and VIGIL_CRD_DIR points elsewhere."""
    from vigil.cli import explain_cmd

    script = (ROOT / "install" / "build-deb.sh").read_text()
    assert 'install -m 0644 install/kubernetes/vigil/crds/*.yaml "$STAGE/usr/share/vigil/crds/"' in script
    assert Path("/usr/share/vigil/crds") in explain_cmd.crd_dirs()
    (tmp_path / "x.yaml").write_text((ROOT / "install/kubernetes/vigil/crds/cilium.io_tracingpolicies.yaml").read_text())
    monkeypatch.setenv("VIGIL_CRD_DIR", str(tmp_path))
    assert [c["spec"]["names"]["kind"] for c in explain_cmd.load_crds()] == ["TracingPolicy"]


@pytest.mark.parametrize("command", [["status"], ["tp", "list"], ["getevents"]])
def test_global_server_address_beats_the_environment(monkeypatch, command):
    """A --server-address typed before the command wins over $VIGIL_SERVER_ADDRESS (which only
    stands in for a flag not typed)."""
    monkeypatch.setenv("VIGIL_SERVER_ADDRESS", "localhost:9")
    res = invoke("--server-address", "localhost:1", "--timeout", "0.2", *command)
    assert res.exit_code == 1 and "cannot reach the agent at localhost:1" in res.output, res.output
    if command != ["getevents"]:  # (getevents reads the runner's stdin when no address is typed)
        res = invoke("--timeout", "0.2", *command)
        assert res.exit_code == 1 and "cannot reach the agent at localhost:9" in res.output, res.output


@pytest.mark.parametrize("health, first", [
    ([], "Health Status: no status available"),
    ([{"status": "HEALTH_STATUS_RUNNING", "details": "running"}], "Health Status: running"),
])
def test_status_first_line_as_tetra(agent_cli, monkeypatch, health, first):
    from vigil.api.client import Client

    monkeypatch.setattr(Client, "health", lambda self: health)
    run, _ = agent_cli
    res = run("status")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == first
