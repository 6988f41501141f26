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
    from vigil.policy.library import LibraryError, resolve

    out: list[Path] = []
    for ref in paths:
        try:
            p = resolve(ref)  # library:NAME -> its file
        except LibraryError as e:
            raise click.ClickException(str(e)) from None
        if not p.exists():
            raise click.BadParameter(f"{ref}: no such file or directory", param_hint="FILES")
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json")))
        else:
            out.append(p)
    return out


@policy.command("validate")
@click.argument("files", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Output format.")
@click.option("-q", "--quiet", is_flag=True, help="Text output: hide warnings.")
def validate(files: tuple[str, ...], output: str, quiet: bool) -> None:
    """Check TracingPolicy FILES (or directories of them, or library:NAME); exit 1 if any file fails.

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


@policy.command("explain")
@click.argument("files", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-v", "--verbose", is_flag=True,
              help="Text output: one line per expanded call (lists, symbols) instead of grouped lines.")
def explain(files: tuple[str, ...], output: str, verbose: bool) -> None:
    """Show where each hook of the policies would run on this kernel, or why it cannot.

    Uses the feature probe (it loads tiny BPF programs, so it needs root); nothing of the
    policy itself is loaded. Exit 1 if any policy could not be loaded here. Hooks that
    expand to many calls print grouped (one line per hook and mechanism); -v lists each."""
    from vigil.cli.explain_view import error_lines, hook_lines

    from vigil.kernel.features import cached_probe
    from vigil.policy.compile import compile_policy
    from vigil.policy.errors import PolicyErrors
    from vigil.policy.loader import load_policies

    feats = cached_probe()

    def has(name: str) -> tuple[bool, str]:
        f = feats.get(name)
        return (bool(f.supported), f.reason) if f else (False, f"unknown feature {name}")

    ids = iter(range(1, 1 << 30))
    report: list[dict] = []
    ok = True
    for path in _expand(files):
        try:
            policies = load_policies(path)
        except PolicyErrors as e:
            ok = False
            report.append({"file": str(path), "errors": [str(x) for x in e.errors]})
            continue
        for p in policies:
            entry: dict = {"file": str(path), "policy": p.name, "mode": p.mode}
            try:
                cp = compile_policy(p, has, lambda: next(ids))
                entry["loadable"] = True
                entry["hooks"] = [{"section": h.placement.section, "index": h.placement.index,
                                   "target": h.placement.target, "runs_on": h.placement.describe()}
                                  for h in cp.hooks]
            except PolicyErrors as e:
                ok = False
                entry["loadable"] = False
                entry["errors"] = [str(x) for x in e.errors]
            report.append(entry)
    if output == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        for entry in report:
            if "policy" not in entry:
                click.echo(f"{entry['file']}: invalid")
                for e in entry["errors"]:
                    click.echo(f"  {e}")
                continue
            verdict = "loadable" if entry["loadable"] else "NOT loadable on this kernel"
            click.echo(f"{entry['policy']} ({entry['file']}, mode {entry['mode']}): {verdict}")
            for line in hook_lines(entry.get("hooks", []), verbose):
                click.echo(f"  {line}")
            for line in error_lines(entry.get("errors", []), verbose):
                click.echo(f"  refused: {line}")
    if not ok:
        raise SystemExit(1)


def _register() -> None:
    """Subcommands that live in modules of their own."""
    from vigil.cli.dryrun_cmd import dry_run
    from vigil.cli.library_cmd import library

    policy.add_command(library)
    policy.add_command(dry_run)


_register()
