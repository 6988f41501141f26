"""Kubernetes label-selector strings, as used by the Filter ``labels`` field.

Supported syntax (comma-separated requirements, all of which must hold):
``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``,
``key`` (exists) and ``!key`` (does not exist). As in Kubernetes, ``!=`` and ``notin``
also match when the key is absent. An empty selector matches every label set.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from vigil.export.event_types import FilterError

Labels = Mapping[str, str]
Requirement = Callable[[Labels], bool]

# A label key: optional DNS prefix and a name; values may also be empty.
_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")
_SET_RE = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_CMP_RE = re.compile(r"^(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>\S*)$")


def _split_requirements(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise FilterError(f"labels: unbalanced ')' in selector {selector!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise FilterError(f"labels: unbalanced '(' in selector {selector!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _check_key(key: str, selector: str) -> str:
    if not _KEY_RE.match(key):
        raise FilterError(f"labels: invalid label key {key!r} in selector {selector!r}")
    return key


def _check_value(value: str, selector: str) -> str:
    if not _VALUE_RE.match(value):
        raise FilterError(f"labels: invalid label value {value!r} in selector {selector!r}")
    return value


def _parse_requirement(text: str, selector: str) -> Requirement:
    if not text:
        raise FilterError(f"labels: empty requirement in selector {selector!r}")
    if m := _SET_RE.match(text):
        key = _check_key(m["key"], selector)
        values = frozenset(
            _check_value(v.strip(), selector) for v in m["values"].split(",")
        )
        if m["op"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _CMP_RE.match(text):
        key = _check_key(m["key"], selector)
        value = _check_value(m["value"], selector)
        if m["op"] == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if text.startswith("!"):
        key = _check_key(text[1:].strip(), selector)
        return lambda labels: key not in labels
    key = _check_key(text, selector)
    return lambda labels: key in labels


def compile_selector(selector: str) -> Callable[[Labels], bool]:
    """Compile a selector string into a predicate over a label mapping."""
    if not isinstance(selector, str):
        raise FilterError(f"labels: selector must be a string, got {selector!r}")
    if not selector.strip():
        return lambda labels: True
    requirements = [_parse_requirement(p, selector) for p in _split_requirements(selector)]
    if len(requirements) == 1:
        return requirements[0]
    return lambda labels: all(req(labels) for req in requirements)
