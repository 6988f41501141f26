"""spec.selectorsMacros: merge the macros a selector names into it.

A field may come from the selector itself or from one macro, never from two places; macros do
not nest. Merged fields keep their macro locations, so later errors point into the macro."""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from .errors import Diagnostics, Loc
from .model import Policy, Selector

_FIELDS = [(f.name, f.metadata["yaml"] or f.name) for f in dataclasses.fields(Selector)
           if "yaml" in f.metadata and f.name != "macros"]


def expand_macros(policy: Policy, diag: Diagnostics) -> Policy:
    spec = policy.spec
    macros = spec.selectors_macros
    for name, m in macros.items():
        if m.macros:
            diag.error(m.at("macros"), f'macro "{name}" uses macros; macros cannot nest')
    used: set[str] = set()

    def expand(sel: Selector) -> Selector:
        if not sel.macros:
            return sel
        new: dict[str, Any] = {}  # keyword arguments of dataclasses.replace
        locs: dict[str, Loc] = dict(sel.locs)
        owner: dict[str, str] = {}
        for j, mname in enumerate(sel.macros):
            m = macros.get(mname)
            if m is None:
                known = ", ".join(sorted(macros)) or "none"
                diag.error(sel.at(f"macros[{j}]"), f'unknown macro "{mname}" (defined in '
                           f"spec.selectorsMacros: {known})")
                continue
            used.add(mname)
            for attr, key in _FIELDS:
                if not m.has(key):
                    continue
                if sel.has(key):
                    diag.error(sel.at(key), f'field "{key}" is set both in this selector and '
                               f'in macro "{mname}"')
                elif key in owner:
                    diag.error(sel.at(f"macros[{j}]"), f'field "{key}" is set by both macro '
                               f'"{owner[key]}" and macro "{mname}"')
                else:
                    owner[key] = mname
                    new[attr] = getattr(m, attr)
                    for k, v in m.locs.items():
                        if k == key or k.startswith((key + "[", key + ".")):
                            locs[k] = v
        return dataclasses.replace(sel, locs=MappingProxyType(locs), **new) if new else sel

    changes: dict[str, Any] = {}  # keyword arguments of dataclasses.replace
    for section in ("kprobes", "fentries", "tracepoints", "uprobes", "lsmhooks", "usdts"):
        hooks = getattr(spec, section)
        if any(s.macros for h in hooks for s in h.selectors):
            changes[section] = tuple(
                dataclasses.replace(h, selectors=tuple(expand(s) for s in h.selectors))
                for h in hooks)
    for name in macros:
        if name not in used:
            diag.warn(spec.at(f"selectorsMacros.{name}"), f'macro "{name}" is not used')
    if not changes:
        return policy
    return dataclasses.replace(policy, spec=dataclasses.replace(spec, **changes))
