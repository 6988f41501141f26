"""The policy library: ready-made TracingPolicies for the jobs users come for.

Layout: `<root>/<use case>/<name>/policy.yaml` plus a README.md per policy; `<name>` is the
policy's metadata.name. The root is `$VIGIL_POLICY_LIBRARY`, else the `policies/` folder of a
source checkout, else where `make install` / the Debian package put it. A policy is referred to
as `library:NAME` (or `library:USE-CASE/NAME`) wherever a policy file is accepted.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PREFIX = "library:"
ENV = "VIGIL_POLICY_LIBRARY"
INSTALLED = ("/usr/share/vigil/policies", "/usr/local/share/vigil/policies")
ANNOTATION = "vigil.io/"


class LibraryError(ValueError):
    """A library reference that names nothing, or a library that cannot be found."""


@dataclass(frozen=True)
class Entry:
    name: str
    use_case: str
    path: Path            # policy.yaml
    summary: str
    needs: str            # what the policy needs beyond syscall/tracepoint hooks ("" = nothing)

    @property
    def readme(self) -> Path:
        return self.path.parent / "README.md"

    @property
    def ref(self) -> str:
        return f"{PREFIX}{self.name}"


def root() -> Path:
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "policies"
    if here.is_dir():
        return here
    for d in INSTALLED:
        if Path(d).is_dir():
            return Path(d)
    raise LibraryError(f"no policy library found (set {ENV}, or install Vigil with `make install`)")


def _meta(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise LibraryError(f"{path}: cannot read library policy: {e}") from None
    meta = (doc or {}).get("metadata") or {}
    return {"name": meta.get("name", ""), "annotations": meta.get("annotations") or {}}


def entries(base: Path | None = None) -> list[Entry]:
    """Every library policy, by use case then name."""
    base = base or root()
    out = []
    for p in sorted(base.glob("*/*/policy.yaml")):
        m = _meta(p)
        ann = m["annotations"]
        out.append(Entry(m["name"] or p.parent.name, p.parent.parent.name, p,
                         str(ann.get(ANNOTATION + "summary", "")), str(ann.get(ANNOTATION + "needs", ""))))
    return out


def find(name: str, base: Path | None = None) -> Entry:
    """The entry named `name` (NAME or USE-CASE/NAME)."""
    all_entries = entries(base)
    use_case, _, short = name.rpartition("/")
    for e in all_entries:
        if e.name == short and (not use_case or e.use_case == use_case):
            return e
    close = difflib.get_close_matches(short, [e.name for e in all_entries], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `vigil policy library list` shows them all"
    raise LibraryError(f"no library policy named {name!r}{hint}")


def is_ref(text: str) -> bool:
    return text.startswith(PREFIX)


def resolve(ref: str, base: Path | None = None) -> Path:
    """A policy file for `ref`: `library:NAME` -> its policy.yaml, anything else unchanged."""
    if not is_ref(ref):
        return Path(ref)
    name = ref[len(PREFIX):].strip()
    if not name:
        raise LibraryError(f"{ref!r}: expected library:NAME")
    return find(name, base).path


__all__ = ["ENV", "Entry", "LibraryError", "PREFIX", "entries", "find", "is_ref", "resolve", "root"]
