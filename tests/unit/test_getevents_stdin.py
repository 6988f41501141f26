"""`vigil getevents` as a real process: stdin is read only when it is a pipe or a regular file.

Under cron, systemd or CI stdin is /dev/null or closed; the command must then ask the agent
(here: an agent address that does not answer, so the outcome is a clear error naming it)
instead of reading an empty stdin and printing nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "events_sample.jsonl"
VIGIL = [sys.executable, "-m", "vigil.cli.main", "getevents", "-o", "compact", "--color", "never",
         "--timeout", "1s"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"server_address": f"unix://{tmp_path}/no-agent.sock"}))
    return {**os.environ, "VIGIL_INFO_FILE": str(info)}


def expected_lines() -> list[str]:
    from vigil.export.compact import format_compact

    out = []
    for line in SAMPLE.read_bytes().splitlines():
        text = format_compact(json.loads(line))
        if text is not None:
            out.append(text)
    return out


def test_pipe_is_read(env: dict[str, str]):
    r = subprocess.run(VIGIL, input=SAMPLE.read_bytes(), capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == expected_lines()


def test_regular_file_is_read(env: dict[str, str]):
    with open(SAMPLE, "rb") as f:
        r = subprocess.run(VIGIL, stdin=f, capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == expected_lines()


def test_dev_null_stdin_asks_the_agent(env: dict[str, str], tmp_path: Path):
    r = subprocess.run(VIGIL, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=60)
    assert r.returncode == 1
    assert f"unix://{tmp_path}/no-agent.sock" in r.stderr.decode()
    assert r.stdout == b""


def test_closed_stdin_asks_the_agent(env: dict[str, str], tmp_path: Path):
    cmd = " ".join(f"'{a}'" for a in VIGIL) + " <&-"
    r = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, env=env, timeout=60)
    assert r.returncode == 1, r.stderr
    assert f"unix://{tmp_path}/no-agent.sock" in r.stderr.decode()


# (VIGIL_SERVER_ADDRESS, --server-address, stdin, address the error names (None: stdin read))
ADDRESS_CASES = [
    ("env.sock", None, "devnull", "env.sock"),      # the environment, as every vigil command
    ("env.sock", "flag.sock", "devnull", "flag.sock"),  # the flag wins over the environment
    (None, None, "devnull", "no-agent.sock"),       # neither: the agent's info file
    ("env.sock", None, "pipe", None),               # the environment names no source: a pipe is read
    (None, "flag.sock", "pipe", "flag.sock"),       # an explicit flag means the agent even then
]


@pytest.mark.parametrize("env_addr,flag_addr,stdin,named", ADDRESS_CASES,
                         ids=[f"env={c[0]}-flag={c[1]}-{c[2]}" for c in ADDRESS_CASES])
def test_server_address_from_environment(env: dict[str, str], tmp_path: Path, env_addr, flag_addr,
                                         stdin, named):
    if env_addr is not None:
        env = {**env, "VIGIL_SERVER_ADDRESS": f"unix://{tmp_path}/{env_addr}"}
    cmd = VIGIL + ([] if flag_addr is None else ["--server-address", f"unix://{tmp_path}/{flag_addr}"])
    if stdin == "pipe":
        r = subprocess.run(cmd, input=SAMPLE.read_bytes(), capture_output=True, env=env, timeout=60)
    else:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=60)
    if named is None:
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().splitlines() == expected_lines()
    else:
        assert r.returncode == 1, r.stderr
        assert f"unix://{tmp_path}/{named}" in r.stderr.decode()
        assert r.stdout == b""
