"""`vigil policy ...`: offline TracingPolicy tools (`validate` here; more subcommands later)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from vigil.policy.loader import LoadResult, check_file


@click.group("policy")
def policy() -> None:
    """Work with TracingPolicy YAML files offline."""


def _expand(paths: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json")))
        else:
            out.append(p)
    return out


@policy.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Output format.")
@click.option("-q", "--quiet", is_flag=True, help="Text output: hide warnings.")
def validate(files: tuple[str, ...], output: str, quiet: bool) -> None:
    """Check TracingPolicy FILES (or directories of them); exit 1 if any file fails.

    A file is accepted only as a whole: any error in any document rejects it."""
    results = [check_file(p) for p in _expand(files)]
    if output == "json":
        click.echo(json.dumps({"ok": all(r.ok for r in results),
                               "files": [_as_dict(r) for r in results]}, indent=2))
    else:
        for r in results:
            _print_text(r, quiet)
    if not all(r.ok for r in results):
        raise SystemExit(1)


def _print_text(r: LoadResult, quiet: bool) -> None:
    for e in r.errors:
        click.echo(str(e), err=False)
    if not quiet:
        for w in r.warnings:
            click.echo(str(w))
    if r.ok:
        n = len(r.policies)
        click.echo(f"{r.file}: OK ({n} policies)")
    else:
        n = len(r.errors)
        click.echo(f"{r.file}: FAILED ({n} error{'' if n == 1 else 's'})")


def _as_dict(r: LoadResult) -> dict[str, object]:
    return {
        "file": r.file,
        "ok": r.ok,
        "policies": [{"name": p.name, "kind": p.kind, "namespace": p.metadata.namespace}
                     for p in r.policies],
        "errors": [e.to_dict() for e in r.errors],
        "warnings": [w.to_dict() for w in r.warnings],
    }
