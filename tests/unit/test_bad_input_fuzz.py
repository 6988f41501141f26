"""Bad input at two more doors, generated: GetEvents requests with any field set to values
users get wrong (regexes RE2 refuses, unknown enum numbers, UNDEF, empty and huge strings), and
`vigil agent` options from flags, the environment and --config-dir files with bad values. Each
is taken or refused with a ValueError / usage error: never another exception (this found
field_filters' KeyError on event_set UNDEF, tests/unit/test_filters_fields.py; the option values
taken that should not have been, from reading what its runs accepted, are the rows of
test_agent_config_errors.py). The policy YAML door is tests/unit/test_policy_fuzz.py.
VIGIL_FUZZ_EXAMPLES / 20 examples each (seeded unless VIGIL_FUZZ_RANDOM=1)."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, settings, strategies as st

from vigil.api.pb import events_pb2
from vigil.api.streams import request_filter
from vigil.cli import agent_cmd
from vigil.cli.main import cli

EXAMPLES = max(50, int(os.environ.get("VIGIL_FUZZ_EXAMPLES", "10000")) // 20)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("VIGIL_FUZZ_RANDOM") != "1",
                    suppress_health_check=list(HealthCheck), database=None)
STRINGS = ["", "(", "[z-a]", "a**", "x", "/usr/bin/curl", "é", "\u202e", "app in (", "app=", "!app", "a,b", "=",
           "process_exec", "PROCESS_EXEC", "UNDEF", "nope", "process..binary", "process.binary", "*", "1" * 5000,
           "k8s:app=x", "CAP_SYS_ADMIN", "-1", "\x00", "true", "\\", "(?P<n>a)(?P<n>b)", "\\pX"]


def _scalar(f: Any, rng: random.Random) -> Any:
    if f.type == FD.TYPE_STRING:
        return rng.choice(STRINGS)
    if f.type == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if f.type == FD.TYPE_ENUM:
        return rng.choice([v.number for v in f.enum_type.values] + [999, -1])
    if f.type in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return rng.choice([0, 1, 2**32 - 1])
    if f.type in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return rng.choice([0, 1, 2**64 - 1])
    if f.type in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return rng.choice([0, -1, 2**31 - 1, -(2**31)])
    if f.type in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return rng.choice([0, -1, 2**63 - 1, -(2**63)])
    if f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return rng.choice([0.0, -1.0, float("nan"), float("inf")])
    return rng.choice([b"", b"\xff"])


def fill(msg: Any, rng: random.Random, depth: int = 0) -> None:
    """Set about half of `msg`'s fields, recursively, to values from the lists above."""
    for f in msg.DESCRIPTOR.fields:
        if rng.random() < 0.5:
            continue
        for _ in range(rng.choice([1, 1, 2, 5]) if f.is_repeated else 1):
            if f.type != FD.TYPE_MESSAGE:
                v = _scalar(f, rng)
                getattr(msg, f.name).append(v) if f.is_repeated else setattr(msg, f.name, v)
            elif f.message_type.GetOptions().map_entry:
                kf, vf = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
                k, m = _scalar(kf, rng), getattr(msg, f.name)
                if vf.type == FD.TYPE_MESSAGE:
                    fill(m[k], rng, depth + 1)
                else:
                    m[k] = _scalar(vf, rng)
            elif depth < 4:
                sub = getattr(msg, f.name).add() if f.is_repeated else getattr(msg, f.name)
                fill(sub, rng, depth + 1)
                sub.SetInParent()


@SETTINGS
@given(seed=st.integers(0, 2**64 - 1))
def test_every_get_events_request_is_taken_or_refused_with_a_value_error(seed: int) -> None:
    req = events_pb2.GetEventsRequest()
    fill(req, random.Random(seed))
    logging.disable(logging.WARNING)  # unknown field paths are logged: not what this looks at
    try:
        request_filter(req)
    except ValueError:   # FilterError, ConversionError: INVALID_ARGUMENT with the message
        pass
    finally:
        logging.disable(logging.NOTSET)


FLAGS = [f for f, _ in agent_cmd.OPTIONS]
VALUES = ["", " ", "-1", "0", "1", "99999999999999999999999", "1e309", "nan", "inf", "x", "é", "\u202e", "auto",
          "0777", "08", "1h", "-1s", "2562048h", "{", '{"binary_regex":["("]}', '{"event_set":["UNDEF"]}',
          '{"fields":"a..b"}', "/nonexistent", "/", "true", "yes", "a,b", ",", "library:nope", "a\nb", "1.5", "0x10",
          "10G", "-5M", '{"redact":["(x"]}', "1" * 5000]


@SETTINGS
@given(seed=st.integers(0, 2**64 - 1))
def test_every_agent_option_value_is_taken_or_a_usage_error(seed: int, tmp_path_factory: pytest.TempPathFactory,
                                                          monkeypatch_module: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    d: Path = tmp_path_factory.mktemp("cfg")
    argv, env = ["agent", "--config-dir", str(d)], {}
    for _ in range(rng.randint(1, 4)):
        flag, value, where = rng.choice(FLAGS), rng.choice(VALUES), rng.randrange(3)
        if where == 0:
            argv += [flag, value]
        elif where == 1:
            env["VIGIL_" + flag.lstrip("-").replace("-", "_").upper()] = value
        else:
            (d / flag.lstrip("-")).write_text(value)
    r = CliRunner().invoke(cli, argv, env=env)
    assert r.exception is None or isinstance(r.exception, SystemExit), (argv, env, r.exception)
    assert r.exit_code in (0, 2), (argv, env, r.output)
    assert "Traceback" not in r.output


@pytest.fixture(scope="module")
def monkeypatch_module():  # type: ignore[no-untyped-def]
    """The agent never starts: options read and checked, then run_agent is a no-op."""
    mp = pytest.MonkeyPatch()
    mp.setattr(agent_cmd, "run_agent", lambda cfg, signals=None: 0)
    yield mp
    mp.undo()
