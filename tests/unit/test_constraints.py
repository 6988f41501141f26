"""constraints.txt pins every package pyproject.toml asks for, at a version it allows.

make venv installs with `-c constraints.txt`, so a requirement added to pyproject.toml without a
pin would be taken at whatever version PyPI has that day, which is what the file is there to stop.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            out[canonicalize_name(name)] = version
    return out


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]


@pytest.mark.parametrize("req", requirements())
def test_every_requirement_is_pinned_within_its_range(req: str) -> None:
    r = Requirement(req)
    pinned = pins().get(canonicalize_name(r.name))
    assert pinned is not None, f"{r.name} is in pyproject.toml but not in constraints.txt: run make lock"
    assert r.specifier.contains(pinned, prereleases=True), f"{r.name}=={pinned} is outside {r.specifier}"
