"""Flags and commands of `tetra` that users type, against `vigil` (an in-process agent server)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.api.harness import running_server
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


@pytest.mark.parametrize("retries, attempts", [(0, None), (-1, None), (1, 2), (3, 4)])
def test_retries_become_a_retry_policy(retries, attempts):
    config = json.loads(retry_service_config(retries))
    if attempts is None:
        assert config == {}
    else:
        policy = config["methodConfig"][0]["retryPolicy"]
        assert policy["maxAttempts"] == attempts and policy["retryableStatusCodes"] == ["UNAVAILABLE"]
