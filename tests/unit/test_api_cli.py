"""`vigil status`, `vigil version`, `vigil tracingpolicy` against an in-process server."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from tests.api.harness import running_server
from tests.api.pki import pki_fixture
from vigil.cli.main import cli
from vigil.cli.tracingpolicy_cmd import humanize_bytes, with_mode

POLICY = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: p1}\nspec:\n  kprobes: [{call: x}]\n"


@pytest.fixture
def env():
    with running_server() as (server, agent):
        runner = CliRunner()

        def run(*args: str, ok: bool = True):
            res = runner.invoke(cli, [*args, "--server-address", server.address, "--timeout", "5"])
            assert (res.exit_code == 0) == ok, res.output
            return res
        yield run, agent


def test_version(env):
    run, _ = env
    assert run("version").output.startswith("CLI version: ")
    assert "Server version: 9.9.9-test" in run("version", "-s").output


def test_status_text_and_json(env):
    run, _ = env
    out = run("status").output
    assert out.startswith("Health Status: running")
    assert "process_exec" in out and "capacity" in out
    data = json.loads(run("status", "-o", "json").output)
    assert data["health"][0]["status"] == "HEALTH_STATUS_RUNNING"
    assert data["status"]["lost"]["ringbuf"] == 1


def test_tracingpolicy_commands(env, tmp_path):
    run, agent = env
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    run("tracingpolicy", "add", str(f), "-m", "monitor")
    sent = yaml.safe_load(agent.calls[-1][1])
    assert sent["spec"]["options"] == [{"name": "policy-mode", "value": "monitor"}]
    lines = run("tp", "list").output.splitlines()
    assert lines[0].split() == ["ID", "NAME", "DOMAIN", "STATE", "FILTERID", "NAMESPACE", "SENSORS", "KERNELMEMORY",
                                "MODE", "NPOST", "NENFORCE", "NMONITOR"]
    assert lines[1].split() == ["1", "p1", "grpc", "enabled", "0", "(global)", "generic_kprobe", "4.10", "kB",
                                "monitor", "3", "1", "2"]
    wide = run("tp", "list", "-o", "wide").output.splitlines()
    assert wide[0].split()[-1] == "HOOKS" and wide[1].endswith("kprobes[0]=kprobe:security_file_open")
    pols = json.loads(run("tp", "list", "-o", "json").output)["policies"]
    assert pols[0]["name"] == "p1" and pols[0]["mode"] == "TP_MODE_MONITOR"
    run("tp", "disable", "p1")
    assert "disabled" in run("tp", "list").output
    err = run("tp", "disable", "p1", ok=False)
    assert "FAILED_PRECONDITION" in err.output
    run("tp", "enable", "p1")
    run("tp", "set-mode", "p1", "enforce")
    assert agent.policies[("", "p1")]["mode"] == "enforce"
    run("tp", "delete", "p1")
    assert "NOT_FOUND" in run("tp", "delete", "p1", ok=False).output
    assert run("tp", "list").output.splitlines()[1:] == []


def test_partially_enabled_policy_shows_hook_table(env):
    run, agent = env
    agent.policies[("", "pp")] = {"id": 7, "name": "pp", "state": "partially_enabled", "mode": "enforce",
                                  "hooks": [{"section": "kprobes", "index": 0, "hook": "kprobe:a"},
                                            {"section": "kprobes", "index": 1, "hook": "kprobe:b",
                                             "state": "call_not_found"}]}
    out = run("tp", "list").output.splitlines()
    assert out[2].split() == ["SECTION", "CFGIDX", "DESCRIPTION", "STATUS"]
    assert out[4].split() == ["kprobes", "1", "kprobe:b", "call_not_found"]


def test_unreachable_agent_is_a_clear_error():
    res = CliRunner().invoke(cli, ["status", "--server-address", "localhost:1", "--timeout", "0.5"])
    assert res.exit_code == 1
    assert "localhost:1" in res.output
    res = CliRunner().invoke(cli, ["tp", "list", "--server-address", "localhost:1", "--timeout", "0.5"])
    assert res.exit_code == 1 and "cannot reach the agent at localhost:1" in res.output


def test_helpers():
    assert humanize_bytes(999) == "999 B"
    assert humanize_bytes(4096) == "4.10 kB"
    assert humanize_bytes(5_500_000) == "5.50 MB"
    doc = yaml.safe_load(with_mode(POLICY.replace("spec:\n", "spec:\n  options: [{name: policy-mode, value: enforce}, {name: x, value: y}]\n"), "monitor"))
    assert doc["spec"]["options"] == [{"name": "x", "value": "y"}, {"name": "policy-mode", "value": "monitor"}]


@pytest.mark.parametrize("command", [["status"], ["health"], ["version", "-s"], ["tp", "list"],
                                     ["tp", "delete", "p"], ["getevents"]])
@pytest.mark.parametrize("timeout, shown", [("500ms", "0.5s"), ("0.5", "0.5s")])
def test_timeout_takes_a_duration_like_tetra(command, timeout, shown):
    """tetra's --timeout is a duration (30s): `vigil status --timeout 2s` was refused with
    "'2s' is not a valid float" by every command but getevents."""
    res = CliRunner().invoke(cli, [*command, "--server-address", "localhost:1", "--timeout", timeout])
    assert res.exit_code == 1, res.output
    assert f"no connection within {shown}" in res.output


def test_tracingpolicy_messages_are_tetras(env, tmp_path):
    """The confirmations read as tetra's (Go %q quoting), which scripts match."""
    run, _ = env
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    for args, line in [
        (("tp", "add", str(f)), f'tracing policy "{f}" added'),
        (("tp", "disable", "p1"), 'tracing policy "p1" disabled'),
        (("tp", "enable", "p1"), 'tracing policy "p1" enabled'),
        (("tp", "set-mode", "p1", "monitor"), 'tracing policy "p1" set to mode "monitor"'),
        (("tp", "delete", "p1"), 'tracing policy "p1" deleted'),
    ]:
        assert run(*args).output.splitlines() == [line]


def test_status_renders_lists_of_records_as_blocks():
    """Lists of records (rings, programs, policy_events) were printed as Python dict reprs."""
    from vigil.cli.status_cmd import _render

    out = _render({"ringbuf": {"size": 8, "rings": [{"name": "process", "records": 3},
                                                    {"name": "policy", "records": 10}]},
                   "maps": {"execve_map": [84, 32768]}, "policy_events": []})
    assert out == ["ringbuf:", "  size  8", "  rings:",
                   "    - name     process", "      records  3",
                   "    - name     policy", "      records  10",
                   "maps:", "  execve_map: 84, 32768",
                   "policy_events: (none)"]
    assert not any("{" in line for line in out)


@pytest.mark.parametrize("args", [["status", "--timeout"], ["tp", "list", "--timeout"], ["--timeout"],
                                  ["getevents", "--timeout"], ["getevents", "--reconnect-wait"],
                                  ["eventlog", "set", "--rotation-interval"]])
@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e999", "-0.5", "1e22", "9000000000", "2000000h"])
def test_a_duration_is_finite_and_not_negative(args, value):
    """`--timeout inf` ended in an OverflowError traceback, `--timeout -1` waited "-1s" and
    `nan` failed as DEADLINE_EXCEEDED: each is now a usage error naming the option. So is a
    finite length beyond 100 years: 1e22 was an OverflowError traceback (a thread's wait),
    9e9 s an immediate DEADLINE_EXCEEDED (gRPC's deadline overflowed)."""
    cmd = [*args, value, "--server-address", "localhost:1"] if args[0] != "--timeout" else \
        ["--timeout", value, "--server-address", "localhost:1", "status"]
    res = CliRunner().invoke(cli, cmd)
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{args[-1]}'" in res.output and f"{value!r} is not a duration" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("args", [["status", "--timeout"], ["tp", "list", "--timeout"], ["--timeout"],
                                  ["getevents", "--timeout"], ["dump", "processcache", "--timeout"]])
@pytest.mark.parametrize("value", ["0", "0s", "0ms"])
def test_a_timeout_is_more_than_zero(args, value):
    """`--timeout 0` printed a gRPC thread's traceback (ValueError: Cannot monitor channel
    state: Channel closed!) and 'no connection within 0s': a usage error naming the option."""
    cmd = [*args, value, "--server-address", "localhost:1"] if args[0] != "--timeout" else \
        ["--timeout", value, "--server-address", "localhost:1", "status"]
    res = CliRunner().invoke(cli, cmd)
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '--timeout': {value!r} is no time to wait" in res.output, res.output


@pytest.mark.parametrize("option, value, shown", [
    ("--retries", "99999999999999999999", "is not in the range x<=2147483646"),         # was a C-core error, 30 s
    ("--max-recv-size", "99999999999999999999", "is not in the range 1<=x<=2147483647"),  # was OverflowError
    ("--max-recv-size", "2147483648", "is not in the range 1<=x<=2147483647"),
])
def test_global_integers_fit_grpcs(option, value, shown):
    res = CliRunner().invoke(cli, [option, value, "--server-address", "localhost:1", "--timeout", "0.2", "status"])
    assert res.exit_code == 2 and f"Invalid value for '{option}': {value} {shown}" in res.output, \
        (res.output, res.exception)


@pytest.mark.parametrize("value, seconds", [("0", 0.0), ("0s", 0.0), ("1.5", 1.5), ("1m30s", 90.0), ("250ms", 0.25)])
def test_durations_that_are_taken(value, seconds):
    from vigil.api.cliutil import Duration

    assert Duration().convert(value, None, None) == seconds


pki = pki_fixture


@pytest.mark.parametrize("command", [["tp", "list"], ["status"], ["getevents"]])
@pytest.mark.parametrize("files, option, shown", [
    ({"--tls-ca-cert-files": "garbage"}, "--tls-ca-cert-files", "garbage: no PEM certificate could be read"),
    ({"--tls-ca-cert-files": "ca-client.key"}, "--tls-ca-cert-files", "ca-client.key: no PEM certificate"),
    ({"--tls-ca-cert-files": "ca.pem,garbage"}, "--tls-ca-cert-files", "garbage: no PEM certificate"),
    ({"--tls-ca-cert-files": "ca.pem", "--tls-cert-file": "ca-client.pem", "--tls-key-file": "garbage"},
     "--tls-cert-file/--tls-key-file", "not a PEM certificate and its unencrypted private key"),
    ({"--tls-ca-cert-files": "ca.pem", "--tls-cert-file": "ca-client.pem", "--tls-key-file": "rogue-client.key"},
     "--tls-cert-file/--tls-key-file", "not a PEM certificate and its unencrypted private key"),
    ({"--tls-ca-cert-files": "ca.pem", "--tls-cert-file": "garbage", "--tls-key-file": "ca-client.key"},
     "--tls-cert-file/--tls-key-file", "not a PEM certificate and its unencrypted private key"),
], ids=["ca-garbage", "ca-is-a-key", "second-ca-garbage", "key-garbage", "key-of-another-cert", "cert-garbage"])
def test_tls_files_that_are_not_pem_are_named(tmp_path, pki, command, files, option, shown):
    """A CA bundle or client certificate gRPC cannot use was only logged by gRPC (C-core lines
    on stderr) and the command said it could not reach the agent: now a usage error naming
    the option and the file, before connecting."""
    (tmp_path / "garbage").write_text("not a certificate\n")

    def path(name: str) -> str:
        return str(tmp_path / name) if name == "garbage" else pki[name]

    args = [a for opt, names in files.items()
            for a in (opt, ",".join(path(n) for n in names.split(",")))]
    res = CliRunner().invoke(cli, [*command, "--server-address", "localhost:1", "--timeout", "0.5", *args])
    assert res.exit_code == 2, res.output
    assert f"Invalid value for {option}" in res.output and shown in res.output, res.output
    assert "cannot reach" not in res.output


def test_good_tls_files_pass_the_check(pki):
    res = CliRunner().invoke(cli, ["tp", "list", "--server-address", "localhost:1", "--timeout", "0.5",
                                   "--tls-ca-cert-files", pki["ca.pem"], "--tls-cert-file", pki["ca-client.pem"],
                                   "--tls-key-file", pki["ca-client.key"]])
    assert res.exit_code == 1 and "cannot reach the agent at localhost:1" in res.output, res.output


@pytest.mark.parametrize("command", [["tp", "list"], ["status"], ["getevents"]])
@pytest.mark.parametrize("env, args, code, shown", [
    ({"VIGIL_TLS_CA_FILE": "/nonexistent/ca.pem"}, [], 2,
     "Invalid value for --tls-ca-cert-files (from environment variable VIGIL_TLS_CA_FILE): /nonexistent/ca.pem: "
     "no such file"),
    ({"VIGIL_TLS_CA_FILE": "{garbage}"}, [], 2,
     "--tls-ca-cert-files (from environment variable VIGIL_TLS_CA_FILE): {garbage}: no PEM certificate"),
    ({"VIGIL_TLS_CERT_FILE": "{garbage}"}, [], 2,
     "--tls-cert-file (from environment variable VIGIL_TLS_CERT_FILE) and --tls-key-file go together"),
    ({"VIGIL_TLS_CERT_FILE": "{garbage}", "VIGIL_TLS_KEY_FILE": "{garbage}"}, [], 2,
     "--tls-cert-file (from environment variable VIGIL_TLS_CERT_FILE)/--tls-key-file (from environment variable "
     "VIGIL_TLS_KEY_FILE): {garbage} and {garbage}: not a PEM certificate"),
    ({"VIGIL_TLS_CA_FILE": "{garbage}"}, ["--tls-ca-cert-files", "/nonexistent/ca.pem"], 2,
     "Invalid value for --tls-ca-cert-files: /nonexistent/ca.pem: no such file"),     # the flag's, no variable
    ({"VIGIL_SERVER_ADDRESS": "localhost:1"}, [], 1,
     "cannot reach the agent at localhost:1: no connection within 0.3s (is `vigil agent` running? use "
     "--server-address) (address from environment variable VIGIL_SERVER_ADDRESS)"),
    ({"VIGIL_SERVER_ADDRESS": "localhost:2"}, ["--server-address", "localhost:1"], 1,
     "use --server-address)\n"),                                                       # typed: no variable named
])
def test_values_from_the_environment_are_named(tmp_path, monkeypatch, command, env, args, code, shown):
    """A bad VIGIL_TLS_* file or an unreachable VIGIL_SERVER_ADDRESS was reported as if the
    option had been typed (`--tls-ca-cert-files: X: no such file`; `use --server-address`):
    the error now names the variable the value came from."""
    garbage = tmp_path / "garbage"
    garbage.write_text("not a certificate\n")
    env = {k: v.format(garbage=garbage) for k, v in env.items()}
    from vigil.cli import getevents_cmd

    monkeypatch.setattr(getevents_cmd, "_stdin_has_events", lambda: False)  # as at a terminal: ask the agent
    res = CliRunner().invoke(cli, [*command, "--timeout", "0.3", *args], env=env)
    assert res.exit_code == code, res.output
    assert shown.format(garbage=garbage) in res.output, res.output
