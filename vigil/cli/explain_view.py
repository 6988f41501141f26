"""Text layout of `vigil policy explain`: long outputs grouped, details on request.

A hook written once can expand to hundreds of placements (a `list:` of syscalls, a
generated list, a uprobe on many symbols). Those print as one line per (hook, mechanism),
with the call names summarised; identical refusals of expanded calls print once with the
calls they concern. `verbose` prints every placement and refusal on its own line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

GROUP_AT = 4        # a hook with this many placements (or more) is summarised
SHOW_NAMES = 6      # call names listed before "and N more"


@dataclass
class _Group:
    key: tuple[str, int, str]
    targets: list[str] = field(default_factory=list)


def _stem(target: str) -> str:
    """The part of a call name that differs between expanded calls (sys_openat -> openat)."""
    t = target.split(":")[-1]
    return re.sub(r"^(__x64_|__arm64_|__ia32_)?sys_", "", t)


def _template(text: str, target: str) -> str:
    stem = _stem(target)
    if stem and stem in text:
        return re.sub(rf"(?:(?<=[_/:\s(])|^){re.escape(stem)}(?![A-Za-z0-9])", "*", text)
    return text.replace(target, "*")


def _names(targets: list[str]) -> str:
    shown = ", ".join(targets[:SHOW_NAMES])
    more = len(targets) - SHOW_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


def hook_lines(hooks: Iterable[dict[str, Any]], verbose: bool = False) -> list[str]:
    """Lines for the placements of one policy (dicts with section, index, target, runs_on)."""
    hooks = list(hooks)
    if verbose:
        return [f"{h['section']}[{h['index']}] {h['target']}: {h['runs_on']}" for h in hooks]
    per_hook: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for h in hooks:
        per_hook.setdefault((h["section"], h["index"]), []).append(h)
    out: list[str] = []
    for (section, index), items in per_hook.items():
        if len(items) < GROUP_AT:
            out += [f"{section}[{index}] {h['target']}: {h['runs_on']}" for h in items]
            continue
        groups: dict[str, _Group] = {}
        for h in items:
            tpl = _template(h["runs_on"], h["target"])
            groups.setdefault(tpl, _Group((section, index, tpl))).targets.append(h["target"])
        for tpl, g in groups.items():
            n = len(g.targets)
            out.append(f"{section}[{index}] {n} call{'s' if n != 1 else ''} ({_names(g.targets)}): {tpl}")
    return out


_ERR_TARGET = re.compile(r"^(?P<pre>.*?)(?P<hook>(kprobes|fentries|tracepoints|uprobes|lsmhooks|usdts)\[\d+\]) "
                         r"\((?P<target>[^)]*)\): (?P<msg>.*)$")


def error_lines(errors: Iterable[str], verbose: bool = False) -> list[str]:
    """Refusals; the same refusal of several expanded calls of one hook prints once."""
    errors = list(errors)
    if verbose:
        return errors
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    order: list[tuple[str, str, str] | str] = []
    for e in errors:
        m = _ERR_TARGET.match(e)
        if not m:
            order.append(e)
            continue
        key = (m["pre"], m["hook"], _template(m["msg"], m["target"]))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((m["target"], e))
    out: list[str] = []
    for k in order:
        if isinstance(k, str):
            out.append(k)
            continue
        pre, hook, msg = k
        items = groups[k]
        if len(items) == 1:
            out.append(items[0][1])
        else:
            out.append(f"{pre}{hook} ({len(items)} calls: {_names([t for t, _ in items])}): {msg}")
    return out
