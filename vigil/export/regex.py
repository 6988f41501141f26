"""Compiling user regexes that Tetragon evaluates with Go's RE2.

Python's ``re`` is used instead. Differences users may hit:

* RE2 has no backreferences or look-around; Python accepts them (a superset, harmless).
* RE2 ``\\C``, ``\\pN`` one-letter classes and ``(?U)`` (ungreedy flag) are not supported
  by ``re`` and are reported as invalid.
* Matching is unanchored search in both (Go ``MatchString`` == Python ``re.search``).
* Python ``re`` can backtrack exponentially on pathological patterns; RE2 cannot.
"""
from __future__ import annotations

import re

from vigil.export.event_types import FilterError


def compile_regex(pattern: object, field: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise FilterError(f"{field}: regex must be a string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise FilterError(f"{field}: invalid regex {pattern!r}: {e}") from None


def compile_regex_list(patterns: list[object], field: str) -> re.Pattern[str] | None:
    """Compile a list of alternatives into one pattern (one search instead of N).

    Each alternative is compiled alone first, so an error names the bad pattern."""
    compiled = [compile_regex(p, field) for p in patterns]
    if not compiled:
        return None
    if len(compiled) == 1:
        return compiled[0]
    # Groups in separate alternatives cannot clash by name unless named the same;
    # fall back to a list search in that case.
    try:
        return re.compile("|".join(f"(?:{c.pattern})" for c in compiled))
    except re.error:
        return _AnyOf(compiled)  # type: ignore[return-value]


class _AnyOf:
    """Duck-typed stand-in for re.Pattern.search over several patterns."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        self.patterns = patterns
        self.pattern = "|".join(p.pattern for p in patterns)

    def search(self, text: str) -> object | None:
        for p in self.patterns:
            m = p.search(text)
            if m:
                return m
        return None
