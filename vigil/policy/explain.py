"""`vigil policy explain`: where each hook of a policy would run on a kernel, or every reason
it cannot, without loading anything. Pure: the kernel is a KernelFacts value, and the report
comes from the same compile the agent runs."""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from vigil.kernel.facts import KernelFacts

from . import standins
from .compile import compile_report, substitution_enabled
from .model import Policy
from .placement import Placement

CAUSE_TEXT = {"kernel": "this kernel", "target": "not on this system", "vigil": "not in Vigil",
              "policy": "policy", "option": "option"}


def explain_policy(policy: Policy, facts: KernelFacts, *, substitute: bool = False) -> dict[str, Any]:
    ids = itertools.count(1)
    cp, errs = compile_report(policy, facts, lambda: next(ids), follow_bit=lambda op, values: 0,
                              substitute=substitute)
    hooks: list[dict[str, Any]] = []
    by_hook: dict[tuple[str, int], list[Placement]] = {}
    for pl in cp.placements:
        by_hook.setdefault((pl.section, pl.index), []).append(pl)
    spec = policy.spec
    for section, hook in spec.hooks():
        idx = getattr(spec, section).index(hook)
        pls = by_hook.get((section, idx), [])
        target = _target(section, hook)
        entry: dict[str, Any] = {"section": section, "index": idx, "target": target,
                                 "loc": str(hook.loc)}
        ok = [p for p in pls if p.ok and not p.skipped]
        bad = [p for p in pls if not p.ok]
        entry["runs_on"] = _summary(ok) or "; ".join(p.describe() for p in pls if p.ok and p.skipped)
        entry["placements"] = [{"target": p.target, "runs_on": p.describe(), "ok": p.ok, "skipped": p.skipped,
                                "substitute": p.substitute, "override": p.override, "notes": list(p.notes),
                                "blockers": [{"where": str(b.loc), "field": b.loc.path, "cause": b.cause,
                                              "message": b.message} for b in p.blockers]}
                               for p in pls]
        entry["substituted"] = sorted({p.substitute for p in pls if p.substitute})
        stand = standins.describe(_standin_key(section, hook, target))
        if stand:
            entry["stand_in"] = stand
        entry["ok"] = bool(pls) and not bad
        hooks.append(entry)
    errors = [{"where": f"{e.file}:{e.line}:{e.col}", "field": e.path, "message": e.message, "cause": c}
              for e, c in zip(errs.errors, errs.causes)]
    hook_errors: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for err in errors:
        path = err["field"]
        for h in hooks:
            if path == f"spec.{h['section']}[{h['index']}]" or path.startswith(f"spec.{h['section']}[{h['index']}]."):
                hook_errors.setdefault((h["section"], h["index"]), []).append(err)
                break
    for h in hooks:
        h["errors"] = hook_errors.get((h["section"], h["index"]), [])
        h["ok"] = h["ok"] and not h["errors"]
    return {
        "policy": policy.name,
        "mode": policy.mode,
        "loadable": not errs.errors,
        "substitution": substitution_enabled(policy, substitute),
        "substituted": any(h["substituted"] for h in hooks),
        "hooks": hooks,
        "errors": errors,
        "warnings": [str(w) for w in errs.warnings],
    }


def _target(section: str, hook: Any) -> str:
    if section in ("kprobes", "fentries"):
        return hook.call
    if section == "tracepoints":
        return f"{hook.subsystem}/{hook.event}"
    if section == "lsmhooks":
        return hook.hook
    if section == "uprobes":
        return f"{hook.path}:{','.join(hook.symbols) or ','.join(hex(o) for o in hook.offsets)}"
    return f"{hook.path}:{hook.provider}:{hook.name}"


def _standin_key(section: str, hook: Any, target: str) -> str:
    return f"lsm:{target}" if section == "lsmhooks" else target


def _summary(placements: list[Placement]) -> str:
    if not placements:
        return ""
    if len(placements) == 1:
        return placements[0].where() + (" (stand-in)" if placements[0].substitute else "")
    kinds = Counter(p.where().split(":")[0] + (":" + p.attach.get("category", "") if p.mechanism == "tracepoint"
                                               else "") for p in placements)
    return f"{len(placements)} hooks: " + ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items()))
