"""Source locations and the diagnostics the policy front end reports."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """Where a model node (or one of its fields) came from: file, 1-based line/column, field path."""

    file: str
    line: int
    col: int
    path: str

    def child(self, key: str | int) -> Loc:
        """Location of a field that is absent: reported at the parent, with the field's path."""
        return Loc(self.file, self.line, self.col, join_path(self.path, key))

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


# control characters (C0 but tab, DEL, C1) and the bidirectional overrides and isolates: a policy's
# text quoted in a message showed as nothing (NUL), or drove the terminal that printed it
# (ESC sequences) or reordered the line (U+202E)
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in [*range(0x09), *range(0x0a, 0x20), *range(0x7f, 0xa0)]}
_UNPRINTABLE.update({c: f"\\u{c:04x}" for c in [*range(0x202a, 0x202f), *range(0x2066, 0x206a)]})


def printable(text: str) -> str:
    """`text` with its unprintable characters escaped (\\x1b, \\u202e): one line, as written."""
    return text.translate(_UNPRINTABLE)


def join_path(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else key


@dataclass(frozen=True)
class PolicyValidationError:
    """One diagnostic. `severity` is "error" or "warning"; warnings never reject a policy."""

    file: str
    line: int
    col: int
    path: str
    message: str
    severity: str = "error"

    @classmethod
    def at(cls, loc: Loc, message: str, severity: str = "error") -> PolicyValidationError:
        return cls(loc.file, loc.line, loc.col, loc.path, message, severity)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}: "
        path = f"{self.path}: " if self.path else ""
        tag = "warning: " if self.severity == "warning" else ""
        return printable(f"{where}{path}{tag}{self.message}")

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.col,
            "path": self.path,
            "message": self.message,
            "severity": self.severity,
        }


class PolicyErrors(ValueError):
    """Raised when a file has at least one error; nothing from that file is loaded."""

    def __init__(
        self,
        errors: list[PolicyValidationError],
        warnings: list[PolicyValidationError] | None = None,
    ) -> None:
        self.errors = list(errors)
        self.warnings = list(warnings or [])
        super().__init__("\n".join(str(e) for e in self.errors))


class Diagnostics:
    """Collects every problem of a load instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[PolicyValidationError] = []
        self.warnings: list[PolicyValidationError] = []
        self._seen: set[PolicyValidationError] = set()

    def error(self, loc: Loc, message: str) -> None:
        self._add(PolicyValidationError.at(loc, message), self.errors)

    def warn(self, loc: Loc, message: str) -> None:
        self._add(PolicyValidationError.at(loc, message, "warning"), self.warnings)

    def _add(self, d: PolicyValidationError, into: list[PolicyValidationError]) -> None:
        # A macro used by several selectors would otherwise report the same problem repeatedly.
        if d not in self._seen:
            self._seen.add(d)
            into.append(d)

    def sorted_errors(self) -> list[PolicyValidationError]:
        return sorted(self.errors, key=lambda e: (e.file, e.line, e.col))

    def sorted_warnings(self) -> list[PolicyValidationError]:
        return sorted(self.warnings, key=lambda e: (e.file, e.line, e.col))
