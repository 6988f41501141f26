"""Data flows one way: a lower stage never imports a higher one (the layer table of the
README). Walks every module's imports (also those inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "vigil"
LAYERS = {
    "core": 0,
    "kernel": 1,
    "events": 2,
    "process": 3, "k8s": 3,
    "policy": 4,
    "sensors": 5, "enforce": 5,
    "export": 6, "api": 6,
    "agent": 7, "cli": 7, "vmtier": 7,
}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "vigil" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    pkg = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
    return out


ALLOWED: set[tuple[str, str]] = set()  # known upward imports being removed: none

MODULES = sorted(p for p in ROOT.rglob("*.py") if "gen" not in p.relative_to(ROOT).parts)


def test_every_stage_has_a_layer() -> None:
    stages = {p.relative_to(ROOT).parts[0] for p in MODULES if len(p.relative_to(ROOT).parts) > 1}
    assert stages <= set(LAYERS), f"stages without a layer: {stages - set(LAYERS)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_runs_upward(path: Path) -> None:
    parts = path.relative_to(ROOT).parts
    if len(parts) == 1:
        return  # vigil/__init__.py
    mine = LAYERS[parts[0]]
    rel = str(path.relative_to(ROOT))
    bad = [f"line {ln}: {mod} (layer {LAYERS[_stage(mod)]})" for ln, mod in _imports(path)  # type: ignore[index]
           if _stage(mod) in LAYERS and LAYERS[_stage(mod)] > mine and (rel, mod) not in ALLOWED]  # type: ignore[index]
    assert not bad, f"{parts[0]} (layer {mine}) imports upward: {bad}"
