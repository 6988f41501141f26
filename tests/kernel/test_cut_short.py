"""Strings read up to a limit in the kernel: one exactly as long as the limit is whole, one
longer is cut short and flagged so. The read helpers return the buffer's size both for a string
that fills it with its own NUL and for a longer one (whose last kept byte they replace by a
NUL); the source's next byte tells them apart. The flags are in the kernel's records, which is
where these tests look: a Tetragon string argument or exec event has no field for them."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import RunningAgent, execs
from tests.kernel.test_policy_engine import (
    Run,
    loaded,
    open_file,
    openat_spec,
    path_is,
    policy_events,
    policy_yaml,
    pywork,
    run_py,
    scoped,
)
from vigil.events import records as R
from vigil.events.generic import py_decode_generic
from vigil.kernel import policy_layout as L

pytestmark = pytest.mark.kernel
__all__ = ["pywork"]  # the fixture, used here

STR_LIMIT = L.ARG_DATA - 2  # bytes of a string argument kept: its 4095-byte buffer holds them and the NUL
NAME_LIMIT = 255            # bytes of a name Tetragon's exec event keeps in place (with its NUL)


@contextmanager
def raw_records(ra: RunningAgent, op: int) -> Iterator[list[bytes]]:
    """The kernel's records of `op`, as the agent's event loop gets them, while the block runs."""
    handlers = ra.agent.pipeline.handlers
    inner = handlers[op]
    seen: list[bytes] = []

    def tap(buf: Any, now: int) -> Any:
        seen.append(bytes(buf))
        return inner(buf, now)

    handlers[op] = tap
    try:
        yield seen
    finally:
        handlers[op] = inner


def test_string_argument_cut_short_only_past_its_limit(running_agent: RunningAgent, pywork: Path):
    """Lengths limit - 1 and limit: whole, not flagged (limit was flagged cut short); limit + 1
    and + 2: the first `limit` bytes, flagged."""
    stem = f"{pywork}/data/long-"
    spec = openat_spec([path_is(stem, op="Prefix"), scoped(pywork)])
    lengths = (100, STR_LIMIT - 1, STR_LIMIT, STR_LIMIT + 1, STR_LIMIT + 2)
    names = [stem + "x" * (n - len(stem)) for n in lengths]   # no such files: the opens fail
    code = "import os\n" + "".join(open_file(n) for n in names)
    r = Run()
    with loaded(running_agent, policy_yaml("strlimit", spec)), raw_records(running_agent, R.OP_GENERIC) as raw:
        events = running_agent.collect(lambda: run_py(pywork, code, out=r))
    got = [b["args"][0]["string_arg"] for _, b in policy_events(events, r.pid, "strlimit")]
    assert got == [n[:STR_LIMIT] for n in names]
    flags = []
    for buf in raw:
        m, data = py_decode_generic(buf)
        ah = m.args[0]
        if m.pid == r.pid and data[ah.off:ah.off + len(stem)] == stem.encode():
            flags.append((ah.len, bool(ah.flags & L.ARGF_TRUNC)))
    assert flags == [(min(n, STR_LIMIT), n > STR_LIMIT) for n in lengths]


def _path_of_length(root: Path, n: int, truebin: Path) -> str:
    """A copy of truebin at a path of exactly n bytes under root (directories of at most 200)."""
    d, left = root, n - len(str(root)) - len("/t")
    while left > 201:
        d, left = d / ("d" * 200), left - 201
    d = d / ("p" * (left - 1))
    d.mkdir(parents=True)
    shutil.copy2(truebin, d / "t")
    path = str(d / "t")
    assert len(path) == n
    return path


# name lengths: whole up to execve's own limit (PATH_MAX with its NUL); Tetragon's exec event
# keeps a name of up to 253 bytes in place and sends a longer one apart (dataFilename)
NAME_LENGTHS = (NAME_LIMIT - 2, NAME_LIMIT - 1, NAME_LIMIT, NAME_LIMIT + 1, 300, 4095)


def test_exec_filename_is_whole_up_to_the_kernels_limit(running_agent: RunningAgent, workdir: Path):
    """The name execve was given was read up to 255 bytes: a longer one was cut short (flagged
    in the record) and the event's binary was its first 255 bytes. It is read up to PATH_MAX,
    which execve itself refuses beyond: whole, never flagged, the binary the path run; the flag
    word dataFilename from 254 bytes, as Tetragon's exec event sets it."""
    paths = [_path_of_length(workdir / f"n{n}", n, workdir / "truebin") for n in NAME_LENGTHS]
    with raw_records(running_agent, R.OP_EXEC) as raw:
        events = running_agent.collect(lambda: [subprocess.run([p], check=True) for p in paths])
    got = []
    for buf in raw:
        rec = R.ProcessRecord(buf)
        if rec.filename.startswith(f"{workdir}/n"):
            got.append((rec.filename, bool(rec.flags & R.F_FILENAME_TRUNC)))
    assert got == [(p, False) for p in paths]
    for p in paths:
        (ev,) = execs(events, binary=p)
        assert ("dataFilename" in ev["process"]["flags"].split()) == (len(p) >= NAME_LIMIT - 1), (len(p), ev)


# Tetragon's exec event holds the arguments after argv[0] in place when they are fewer bytes than
# its 1024-byte buffer leaves after 56 bytes of fields and the name with its NUL, else sends them
# apart (dataArgs): (the one argument's length past that room, dataArgs)
ARGS_ROWS = [(-2, False), (-1, True), (0, True), (2000, True)]


@pytest.mark.parametrize("past, data", ARGS_ROWS, ids=[str(p) for p, _ in ARGS_ROWS])
def test_long_arguments_carry_tetragons_dataArgs_word(running_agent: RunningAgent, workdir: Path,
                                                        past: int, data: bool):
    truebin = str(workdir / "truebin")
    room = 1024 - 56 - (len(truebin) + 1)
    arg = "a" * (room + past)  # its bytes after argv[0]: the argument and its NUL
    events = running_agent.collect(lambda: subprocess.run([truebin, arg], check=True))
    (ev,) = execs(events, binary=truebin, arguments=arg)
    assert ("dataArgs" in ev["process"]["flags"].split()) == data, ev["process"]["flags"]


