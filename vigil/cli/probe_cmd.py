"""`vigil probe`: what this kernel can do, found by loading and attaching tiny BPF programs."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

import click

from vigil.kernel.features import Feature


def format_table(features: Mapping[str, Feature]) -> str:
    """feature | yes/no/? | reason, columns aligned; one line per feature."""
    rows = [("FEATURE", "OK", "REASON")] + [(n, f.mark(), f.reason) for n, f in features.items()]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)


def format_json(features: Mapping[str, Feature]) -> str:
    return json.dumps({n: f.as_dict() for n, f in features.items()}, indent=2)


@click.command("probe")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--obj", "obj_path", type=click.Path(dir_okay=False), default=None,
              help="Probe object (default: build/bpf/probe.bpf.o).")
def probe(output: str, obj_path: str | None) -> None:
    """Report which BPF hooks and helpers work on this kernel (by trying them)."""
    from vigil.kernel.features import probe_all

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("vigil.features").setLevel(logging.WARNING)  # the table says it all
    t = time.perf_counter()
    feats = probe_all(obj_path)
    if output == "json":
        click.echo(format_json(feats))
        return
    click.echo(format_table(feats))
    counts = {v: sum(1 for f in feats.values() if f.supported is v) for v in (True, False, None)}
    click.echo(f"\n{counts[True]} yes, {counts[False]} no, {counts[None]} inconclusive "
               f"({1000 * (time.perf_counter() - t):.0f} ms)")
