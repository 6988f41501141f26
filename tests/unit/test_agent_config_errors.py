"""`vigil agent` values that were taken without a word, each now a usage error naming the option
and where its value came from (the flag, an environment variable, a --config-dir file): found by
fuzzing the options (flags, environment, config dir) with bad values."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from vigil.cli import agent_cmd
from vigil.cli.main import cli


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list:
    got: list = []
    monkeypatch.setattr(agent_cmd, "run_agent", lambda cfg, signals=None: got.append(cfg) or 0)
    return got


def _dir_entry(kind: str):  # type: ignore[no-untyped-def]
    def make(d: Path) -> None:
        p = d / "rb-size"
        if kind == "directory":
            p.mkdir()
        elif kind == "dangling":
            p.symlink_to(d / "nowhere")
        elif kind == "loop":
            p.symlink_to(p)
        elif kind == "fifo":
            os.mkfifo(p)
    return make


# (case, flags, environment, config dir files or a function making its entries, exit code, in the output)
CASES = [
    # a config dir entry named as an option, not a file: the option silently took its default
    ("dir-entry-directory", [], {}, _dir_entry("directory"), 2, "rb-size: a directory, not a file"),
    ("dir-entry-dangling", [], {}, _dir_entry("dangling"), 2, "rb-size: a broken symbolic link"),
    ("dir-entry-loop", [], {}, _dir_entry("loop"), 2, "rb-size: a broken symbolic link"),
    ("dir-entry-fifo", [], {}, _dir_entry("fifo"), 2, "rb-size: a special file"),
    ("dir-entry-hidden-directory", [], {}, lambda d: (d / "..data").mkdir(), 0, ""),  # Kubernetes' ConfigMap
    # nan and inf passed click's float and the checks (nan <= 0 is false): never rotate by size
    ("float-nan-flag", ["--export-file-max-size-mb", "nan"], {}, {}, 2,
     "--export-file-max-size-mb: nan is not a finite number"),
    ("float-inf-env", [], {"VIGIL_EXPORT_FILE_MAX_SIZE_MB": "inf"}, {}, 2,
     "--export-file-max-size-mb (from environment variable VIGIL_EXPORT_FILE_MAX_SIZE_MB: 'inf'): inf is not"),
    ("float-1e400-file", [], {}, {"export-file-max-size-mb": "1e400"}, 2, "'1e400'): inf is not a finite number"),
    ("float-finite", ["--export-file-max-size-mb", "1e3"], {}, {}, 0, ""),
    # past Go's longest duration (inf for 400 digits: reporting it raised OverflowError)
    ("rotation-2562048h", ["--export-file-rotation-interval", "2562048h"], {}, {}, 2,
     "--export-file-rotation-interval: longer than the longest duration, 2562047h"),
    ("rotation-400-digits-file", [], {}, {"export-file-rotation-interval": "9" * 400 + "h"}, 2,
     "longer than the longest duration"),
    ("rotation-2562047h", ["--export-file-rotation-interval", "2562047h"], {}, {}, 0, ""),
]


@pytest.mark.parametrize("case, flags, env, files, code, shown", CASES, ids=[c[0] for c in CASES])
def test_a_bad_agent_option_is_a_usage_error(tmp_path: Path, started: list, case: str, flags: list[str],
                                             env: dict[str, str], files, code: int, shown: str) -> None:
    if callable(files):
        files(tmp_path)
    else:
        for name, text in files.items():
            (tmp_path / name).write_text(text)
    r = CliRunner().invoke(cli, ["agent", "--config-dir", str(tmp_path), *flags], env=env)
    assert r.exit_code == code, r.output
    assert isinstance(r.exception, SystemExit) or r.exception is None, r.exception
    assert shown in r.output.replace("\n", " ") if shown else r.output == ""
    assert len(started) == (1 if code == 0 else 0)  # the agent started only with good values
