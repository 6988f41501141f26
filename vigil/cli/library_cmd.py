"""`vigil policy library list|show`: the ready-made policies shipped with Vigil."""
from __future__ import annotations

import json
from typing import Any

import click

from vigil.policy.library import Entry, LibraryError, entries, find, root


def _effect(entry: Entry) -> str:
    """observe | deny | kill, from the policy's actions."""
    from vigil.policy.loader import check_file

    r = check_file(entry.path)
    acts = {a.action.lower() for p in r.policies for _s, h in p.spec.hooks()
            for sel in h.selectors for a in (*sel.match_actions, *sel.match_return_actions)}
    if "override" in acts:
        return "deny"
    if "sigkill" in acts or "signal" in acts:
        return "kill"
    return "observe"


def _here(entry: Entry, facts: Any) -> tuple[bool, str]:
    """(loadable on this kernel, the first reason it is not)."""
    from vigil.policy.compile import compile_policy
    from vigil.policy.errors import PolicyErrors
    from vigil.policy.loader import load_policies

    ids = iter(range(1, 1 << 30))
    try:
        for p in load_policies(entry.path):
            compile_policy(p, facts, lambda: next(ids))
    except PolicyErrors as e:
        first = e.errors[0].message if e.errors else str(e)
        return False, first
    return True, ""


def _probe() -> Any:
    """This kernel's facts (the feature probe loads tiny BPF programs: root)."""
    from vigil.kernel.facts import KernelFacts

    return KernelFacts.gather()


@click.group("library")
def library() -> None:
    """The policy library: ready-made TracingPolicies (load one with --tracing-policy library:NAME)."""


@library.command("list")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--check", is_flag=True,
              help="Also say whether each policy loads on this kernel (runs the feature probe: needs root).")
def list_cmd(output: str, check: bool) -> None:
    """List the library's policies by use case."""
    try:
        items = entries()
    except LibraryError as err:
        raise click.ClickException(str(err)) from None
    has = _probe() if check else None
    rows = []
    for e in items:
        row: dict[str, Any] = {"name": e.name, "use_case": e.use_case, "effect": _effect(e), "summary": e.summary,
                               "needs": e.needs, "path": str(e.path)}
        if has is not None:
            ok, why = _here(e, has)
            row["loads_here"] = ok
            if not ok:
                row["reason"] = why
        rows.append(row)
    if output == "json":
        click.echo(json.dumps({"library": str(root()), "policies": rows}, indent=2))
        return
    width = max((len(r["name"]) for r in rows), default=4)
    current = None
    for r in rows:
        if r["use_case"] != current:
            current = r["use_case"]
            click.echo(f"{current}:")
        here = ""
        if has is not None:
            here = "  [loads here]" if r["loads_here"] else "  [not here: " + r["reason"] + "]"
        click.echo(f"  {r['name']:<{width}}  {r['effect']:<7}  {r['summary']}{here}")
    click.echo(f"\n{len(rows)} policies in {root()}; `vigil policy library show NAME` for details")


@library.command("show")
@click.argument("name")
@click.option("--yaml", "show_yaml", is_flag=True, help="Print the policy file itself.")
def show(name: str, show_yaml: bool) -> None:
    """Print a library policy's README (what it catches, an event, false positives, tuning)."""
    try:
        e = find(name.removeprefix("library:"))
    except LibraryError as err:
        raise click.ClickException(str(err)) from None
    if show_yaml:
        click.echo(e.path.read_text(encoding="utf-8"), nl=False)
        return
    click.echo(f"{e.name} ({e.use_case}, {_effect(e)}): {e.summary}")
    click.echo(f"policy file: {e.path}   load it: vigil agent --tracing-policy library:{e.name}")
    if e.needs:
        click.echo(f"needs: {e.needs}")
    click.echo("")
    try:
        click.echo(e.readme.read_text(encoding="utf-8"), nl=False)
    except OSError:
        click.echo("(no README)")
