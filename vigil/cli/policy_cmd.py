"""`vigil policy ...`: offline TracingPolicy tools (`validate` here; more subcommands later)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from vigil.policy.loader import LoadResult, check_file


@click.group("policy")
def policy() -> None:
    """Work with TracingPolicy YAML files offline."""


def _expand(paths: tuple[str, ...]) -> list[Path]:
    from vigil.policy.library import LibraryError, resolve
    from vigil.policy.loader import policy_dir_files

    out: list[Path] = []
    for ref in paths:
        try:
            p = resolve(ref)  # library:NAME -> its file
        except LibraryError as e:
            raise click.ClickException(str(e)) from None
        try:   # Path.exists raises, not returns False, for a name too long (ENAMETOOLONG)
            p.stat()
        except FileNotFoundError:
            raise click.BadParameter(f"{ref}: no such file or directory", param_hint="FILES") from None
        except OSError as e:
            raise click.BadParameter(f"{ref}: {e.strerror}", param_hint="FILES") from None
        if p.is_dir():
            found = policy_dir_files(p)  # and one level of subdirectories, as --tracing-policy-dir
            if not found:
                raise click.BadParameter(f"{ref}: no .yaml, .yml or .json file in this directory (or in its "
                                         "subdirectories)", param_hint="FILES")
            out.extend(found)
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

    Offline (no kernel, no root): the schema, the values, and everything Vigil cannot do on
    any kernel. Whether a policy runs on a given kernel is `vigil policy explain`'s job.
    A file is accepted only as a whole: any error in any document rejects it."""
    from vigil.policy.compile import unsupported

    results = [check_file(p) for p in _expand(files)]
    for r in results:
        if r.ok:
            extra = [e for p in r.policies for e in unsupported(p)]
            if extra:
                r.errors.extend(extra)
                r.policies = []
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
@click.option("-v", "--details", is_flag=True, help="Every reason and note with its file:line:col "
              "(the default is one line per hook).")
@click.option("--hook-substitution", is_flag=True, help="Explain as an agent run with --hook-substitution: "
              "hooks this kernel cannot attach run on their documented stand-ins.")
@click.option("--facts", "facts_file", type=click.Path(exists=True), help="Explain for the kernel "
              "recorded in this file (see --record-facts) instead of this one; needs no root.")
@click.option("--record-facts", type=click.Path(), help="Write what was asked of this kernel (or, with "
              "--full, everything) to this JSON file.")
@click.option("--full", is_flag=True, help="With --record-facts: record the complete name lists.")
@click.option("--summary", is_flag=True, help="Text output: only the count of files per outcome.")
def explain(files: tuple[str, ...], output: str, details: bool, hook_substitution: bool,
            facts_file: str | None, record_facts: str | None, full: bool, summary: bool) -> None:
    """Show where each hook of the policies would run on this kernel, or every reason it cannot.

    Uses the kernel's facts (the feature probe loads tiny BPF programs, so it needs root; or
    --facts FILE); nothing of the policy itself is loaded. Each reason names its cause: this
    kernel, not on this system (a function, tracepoint or binary), not in Vigil, the policy, or
    an option. Exit 1 if any policy could not be loaded here."""
    from vigil.kernel.facts import KernelFacts
    from vigil.policy.errors import PolicyErrors, PolicyValidationError
    from vigil.policy.explain import CAUSE_TEXT, explain_policy
    from vigil.policy.loader import load_policies

    paths = _expand(files)  # a missing file is reported before the kernel is probed (root, seconds)
    if facts_file:
        try:
            facts = KernelFacts.load(facts_file)
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:  # (JSONDecodeError: a ValueError)
            raise click.BadParameter(f"{facts_file}: not a facts file recorded by --record-facts ({e})",
                                     param_hint="--facts") from None
    else:
        facts = KernelFacts.gather()
    report: list[dict[str, Any]] = []
    ok = True
    for path in paths:
        warnings: list[PolicyValidationError] = []
        try:
            policies = load_policies(path, warnings)
        except PolicyErrors as e:
            ok = False
            report.append({"file": str(path), "invalid": True, "errors": [str(x) for x in e.errors]})
            continue
        for p in policies:
            entry = explain_policy(p, facts, substitute=hook_substitution)
            entry["file"] = str(path)
            entry["warnings"] = [str(w) for w in warnings] + entry["warnings"]
            ok = ok and entry["loadable"]
            report.append(entry)
    if record_facts:
        try:
            with open(record_facts, "w") as fh:
                json.dump(facts.record(full=full), fh, indent=1, sort_keys=True)
        except OSError as e:
            raise click.BadParameter(f"{record_facts}: {e.strerror}", param_hint="--record-facts") from None
    unrecorded = list(facts.unrecorded)
    if output == "json":
        click.echo(json.dumps({"kernel": facts.release, "hook_substitution": hook_substitution,
                               "policies": report, "counts": _counts(report), "unrecorded": unrecorded},
                              indent=2))
    elif summary:
        for k, v in _counts(report).items():
            click.echo(f"{k}: {v}")
    else:
        for entry in report:
            _print_explain(entry, details, CAUSE_TEXT)
    if unrecorded:  # answered "absent" only because the file does not hold them
        ok = False
        shown = ", ".join(unrecorded[:8]) + (f" and {len(unrecorded) - 8} more" if len(unrecorded) > 8 else "")
        click.echo(f"{facts_file}: does not record {shown}: it holds only what its recording asked about, so "
                   "what rests on these is not known for that kernel (record the facts with these policies, "
                   "or with --record-facts --full)", err=True)
    if not ok:
        raise SystemExit(1)


def _counts(report: list[dict[str, Any]]) -> dict[str, int]:
    """Files per outcome: loadable (natively), loadable with stand-ins, refused, invalid."""
    files: dict[str, str] = {}
    rank = {"loadable": 0, "loadable with stand-ins": 1, "refused": 2, "invalid": 3}
    for e in report:
        out = ("invalid" if e.get("invalid") else "refused" if not e["loadable"] else
               "loadable with stand-ins" if e.get("substituted") else "loadable")
        prev = files.get(e["file"])
        if prev is None or rank[out] > rank[prev]:
            files[e["file"]] = out
    counts = dict.fromkeys(rank, 0)
    for out in files.values():
        counts[out] += 1
    return counts


def _print_explain(entry: dict[str, Any], details: bool, cause_text: dict[str, str]) -> None:
    if entry.get("invalid"):
        click.echo(f"{entry['file']}: invalid")
        for e in entry["errors"]:
            click.echo(f"  {e}")
        return
    verdict = ("loadable" if entry["loadable"] and not entry["substituted"] else
               "loadable with stand-ins" if entry["loadable"] else "NOT loadable on this kernel")
    click.echo(f"{entry['policy']} ({entry['file']}, mode {entry['mode']}): {verdict}")
    for h in entry["hooks"]:
        head = f"  {h['section']}[{h['index']}] {h['target']}"
        if h["ok"]:
            click.echo(f"{head}: {h['runs_on']}")
        else:
            causes = sorted({e["cause"] for e in h["errors"]})
            first = h["errors"][0]["message"].split(": ", 1)[-1] if h["errors"] else ""
            if len(first) > 110 and " (" in first:
                first = first[:first.index(" (")]
            more = f" (+{len(h['errors']) - 1} more)" if len(h["errors"]) > 1 else ""
            click.echo(f"{head}: REFUSED [{', '.join(cause_text[c] for c in causes)}] {first}{more}"
                       if not details else f"{head}: REFUSED")
        if details:
            for pl in h["placements"]:
                if pl["ok"]:
                    if len(h["placements"]) > 1:
                        click.echo(f"      {pl['target']}: {pl['runs_on']}")
                    else:
                        for n in pl["notes"]:
                            click.echo(f"      note: {n}")
                    if pl["override"]:
                        click.echo(f"      Override: {pl['override']}")
            for e in h["errors"]:
                click.echo(f"      {e['where']}: {e['field']}: [{cause_text[e['cause']]}] {e['message']}")
            if h.get("stand_in") and not h["substituted"]:
                click.echo(f"      stand-in: {h['stand_in']}")
    rest = [e for e in entry["errors"] if not any(e in h["errors"] for h in entry["hooks"])]
    for e in rest:
        click.echo(f"  {e['where']}: {e['field']}: [{cause_text[e['cause']]}] {e['message']}")
    if details:
        for w in entry["warnings"]:
            click.echo(f"  {w}")


def _register() -> None:
    """Subcommands that live in modules of their own."""
    from vigil.cli.dryrun_cmd import dry_run
    from vigil.cli.library_cmd import library

    policy.add_command(library)
    policy.add_command(dry_run)


_register()
