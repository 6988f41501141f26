#!/usr/bin/env python3
"""How many of Tetragon's example policies load here, and on the VM tier's 6.12 kernel.

    bench/tetragon_examples.py EXAMPLES_DIR [--vm 6.12]

EXAMPLES_DIR is `examples/tracingpolicy` of a cilium/tetragon checkout (fetch it yourself; its
files are not part of this repository). Every file goes through `vigil policy explain` (the
agent's own compile path; nothing is loaded) with and without --hook-substitution, on this
kernel and, with --vm, inside that guest kernel (6.1 or 6.12) (`python -m vigil.vmtier shell-cmd`; the guest
sees this host's / read-only). Prints the counts per outcome and the refused files with their
first reason (on this host only with stand-ins), then one JSON summary line.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VIGIL = [sys.executable, "-m", "vigil.cli.main"]


def _explain_json(cmd: list[str], cwd: Path = ROOT) -> dict[str, Any]:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    out = r.stdout
    start = out.find("{")
    if start < 0:
        raise SystemExit(f"no JSON from {' '.join(cmd)}:\n{out[-2000:]}\n{r.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(out[start:])
    return report


def files(examples: Path) -> list[str]:
    """Every policy file, at any depth: a directory argument is read one level deep (as
    --tracing-policy-dir), which left out sandbox/linux-namespaces/*.yaml."""
    return sorted(str(f) for f in examples.rglob("*.y*ml"))


def host(examples: Path, substitute: bool) -> dict[str, Any]:
    return _explain_json([*VIGIL, "policy", "explain", "-o", "json",
                          *(["--hook-substitution"] if substitute else []), *files(examples)])


def guest(examples: Path, kernel: str, substitute: bool) -> dict[str, Any]:
    inner = " ".join(shlex.quote(a) for a in [*VIGIL, "policy", "explain", "-o", "json",
                                                *(["--hook-substitution"] if substitute else []),
                                                *files(examples)])
    return _explain_json([sys.executable, "-m", "vigil.vmtier", "shell-cmd", "--kernel", kernel,
                          "--timeout", "600", "--", "sh", "-c", f"cd {shlex.quote(str(ROOT))} && {inner} 2>/dev/null"],
                         # the runner keeps its cwd visible in the guest (a tmpfs covers the guest's
                         # /tmp otherwise, hiding examples fetched under /tmp)
                         cwd=examples)


def refused(report: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for e in report["policies"]:
        if e.get("invalid") or not e.get("loadable"):
            errs = e.get("errors") or []
            first = errs[0] if errs and isinstance(errs[0], str) else (errs[0]["message"] if errs else "")
            out.append((os.path.basename(e["file"]), first[:160]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("examples", type=Path)
    ap.add_argument("--vm", default="", help="also inside this guest kernel (6.1 or 6.12)")
    a = ap.parse_args()
    examples = a.examples.resolve()
    summary: dict[str, Any] = {"bench": "tetragon_examples", "yaml_files": len(files(examples))}
    runs = [("host", False), ("host", True)] + ([(f"vm-{a.vm}", False), (f"vm-{a.vm}", True)] if a.vm else [])
    for where, sub in runs:
        rep = host(examples, sub) if where == "host" else guest(examples, a.vm, sub)
        c = rep["counts"]
        total = sum(c.values()) or 1
        ok = c["loadable"] + c["loadable with stand-ins"]
        name = f"{where}{' +stand-ins' if sub else ''}"
        print(f"{name:22} kernel {rep['kernel']}: {c}  loads: {ok}/{total} ({100 * ok / total:.0f}%)")
        if sub or where != "host":  # the guests' refusals without stand-ins too (renamed functions)
            for f, why in refused(rep):
                print(f"    refused {f}: {why}")
        summary[name] = {**c, "loads_pct": round(100 * ok / total, 1)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
