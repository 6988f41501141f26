"""Tetragon ``RedactionFilter``: hide secrets in process arguments and environment.

Each ``redact`` regex must contain at least one capture group; every non-empty group
span of every match is replaced by ``*****``. ``binary_regex`` (optional) limits the
filter to processes whose own ``binary`` matches. Redaction applies to the
``arguments`` of ``process``, ``parent`` and each of ``ancestors``, and to
``environment_variables``, where the regex sees ``KEY=VALUE`` and only the value
part can change. The deprecated ``match`` field is accepted and ignored.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vigil.export.event_types import FilterError, event_key
from vigil.export.filters import normalize_keys
from vigil.export.regex import compile_regex, compile_regex_list

REDACTED = "*****"
REDACTION_FIELDS = ("match", "redact", "binary_regex")


def redact_text(text: str, patterns: Iterable[Any]) -> str:
    for pattern in patterns:
        spans: list[tuple[int, int]] = []
        for m in pattern.finditer(text):
            for g in range(1, (pattern.groups or 0) + 1):
                start, end = m.span(g)
                if start >= 0 and end > start:
                    spans.append((start, end))
        if spans:
            pieces, last = [], 0
            for start, end in sorted(spans):
                if start < last:  # nested/overlapping groups: already covered
                    start = last
                if end <= last:
                    continue
                pieces.append(text[last:start])
                pieces.append(REDACTED)
                last = end
            pieces.append(text[last:])
            text = "".join(pieces)
    return text


class RedactionFilter:
    def __init__(self, spec: dict[str, Any]) -> None:
        fields = normalize_keys(spec, REDACTION_FIELDS, "redaction filter")
        redact = fields.get("redact") or []
        if not isinstance(redact, list) or not redact:
            raise FilterError("redaction filter redact: expected a non-empty list of regexes")
        self.patterns = [compile_regex(p, "redaction filter redact") for p in redact]
        for p in self.patterns:
            if p.groups == 0:
                raise FilterError(
                    f"redaction filter redact: regex {p.pattern!r} has no capture group; "
                    "wrap the secret part in (...)"
                )
        binaries = fields.get("binary_regex") or []
        if not isinstance(binaries, list):
            raise FilterError("redaction filter binary_regex: expected a list of regexes")
        self.binary_pattern = compile_regex_list(binaries, "redaction filter binary_regex")

    def applies_to(self, process: dict[str, Any]) -> bool:
        if self.binary_pattern is None:
            return True
        return self.binary_pattern.search(process.get("binary", "")) is not None


class RedactionSet:
    def __init__(self, specs: Iterable[dict[str, Any] | RedactionFilter] = ()) -> None:
        self.filters = [s if isinstance(s, RedactionFilter) else RedactionFilter(s) for s in specs]
        # Patterns of unscoped filters apply to every process: collect them once.
        self._always = [p for f in self.filters if f.binary_pattern is None for p in f.patterns]
        self._scoped = [f for f in self.filters if f.binary_pattern is not None]

    def __bool__(self) -> bool:
        return bool(self.filters)

    def redact_process(self, process: dict[str, Any]) -> dict[str, Any]:
        """Redacted copy of a Process dict (the same object when nothing changed)."""
        patterns = self._always
        if self._scoped:
            patterns = patterns + [
                p for f in self._scoped if f.applies_to(process) for p in f.patterns
            ]
        if not patterns:
            return process
        out = process
        args = process.get("arguments")
        if args:
            new_args = redact_text(args, patterns)
            if new_args != args:
                out = dict(process)
                out["arguments"] = new_args
        env = process.get("environment_variables")
        if env:
            new_env = [self._redact_env(var, patterns) for var in env]
            if any(a is not b for a, b in zip(new_env, env)):
                if out is process:
                    out = dict(process)
                out["environment_variables"] = new_env
        return out

    @staticmethod
    def _redact_env(var: dict[str, Any], patterns: list[Any]) -> dict[str, Any]:
        key, value = var.get("Key", ""), var.get("Value", "")
        joined = f"{key}={value}"
        redacted = redact_text(joined, patterns)
        if redacted == joined:
            return var
        # Keep the key as is; whatever follows the first '=' is the (redacted) value.
        new_value = redacted.split("=", 1)[1] if redacted.startswith(key + "=") else REDACTED
        return {**var, "Value": new_value}

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """Redacted copy of `event`, or `event` itself when nothing matched."""
        if not self.filters:
            return event
        key = event_key(event)
        if key is None:
            return event
        body = event[key]
        if not isinstance(body, dict):
            return event
        new_body = body
        for role in ("process", "parent"):
            proc = body.get(role)
            if proc:
                redacted = self.redact_process(proc)
                if redacted is not proc:
                    if new_body is body:
                        new_body = dict(body)
                    new_body[role] = redacted
        ancestors = body.get("ancestors")
        if ancestors:
            new_ancestors = [self.redact_process(a) for a in ancestors]
            if any(a is not b for a, b in zip(new_ancestors, ancestors)):
                if new_body is body:
                    new_body = dict(body)
                new_body["ancestors"] = new_ancestors
        if new_body is body:
            return event
        out = dict(event)
        out[key] = new_body
        return out
