"""Load TracingPolicy YAML: compose (keeping marks), convert strictly, merge macros, validate.

A file loads completely or not at all: any error in any document rejects the whole file and
raises PolicyErrors carrying every error found (and the warnings)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import enums
from .convert import BAD, MAX_VALUES, Converter, is_null
from .errors import Diagnostics, Loc, PolicyErrors, PolicyValidationError
from .macros import expand_macros
from .model import Policy
from .validate import validate_policy

POLICY_SUFFIXES = (".yaml", ".yml", ".json")
# libyaml's SafeLoader when built in: same resolver and node marks, several times faster.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class LoadResult:
    """Outcome of checking one file; `policies` is empty whenever `errors` is not."""

    file: str
    policies: list[Policy] = field(default_factory=list)
    errors: list[PolicyValidationError] = field(default_factory=list)
    warnings: list[PolicyValidationError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_text(text: str, filename: str = "<string>") -> LoadResult:
    """Parse and validate without raising."""
    diag = Diagnostics()
    policies = _parse(text, filename, diag)
    errors = diag.sorted_errors()
    return LoadResult(filename, [] if errors else policies, errors, diag.sorted_warnings())


def structure_errors(text: str, filename: str = "<string>") -> list[PolicyValidationError]:
    """What the strict reading of the YAML alone finds (syntax, duplicate or unknown fields,
    types), before any check of what the policy means: for a tool that rewrites the documents
    before another checks them (`vigil tracingpolicy add -m`), so the rewriting hides nothing."""
    diag = Diagnostics()
    _parse(text, filename, diag, semantic=False)
    return diag.sorted_errors()


def check_file(path: str | Path) -> LoadResult:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        err = PolicyValidationError(str(p), 1, 1, "", f"cannot read file: {e}")
        return LoadResult(str(p), errors=[err])
    return check_text(text, str(p))


def parse_policies(text: str, filename: str = "<string>",
                   warnings: list[PolicyValidationError] | None = None) -> list[Policy]:
    """All policies of a (multi-document) YAML text; raises PolicyErrors on any error.
    Warnings are appended to `warnings` when a list is given."""
    return _unwrap([check_text(text, filename)], warnings)


def policy_dir_files(d: Path) -> list[Path]:
    """The policy files (*.yaml, *.yml, *.json) of a directory, read as Tetragon reads
    --tracing-policy-dir: the directory's own and those of its subdirectories one level
    down, not deeper, in path order. A symlink to a directory is not entered (as Go's
    fs.WalkDir), nor is a hidden directory (a Kubernetes ConfigMap mount's ..DATE data
    directory, whose files the top level already links to)."""
    out: list[Path] = []
    for f in sorted(d.iterdir()):
        if f.is_dir():
            if not f.is_symlink() and not f.name.startswith("."):
                out += (g for g in sorted(f.iterdir()) if g.suffix.lower() in POLICY_SUFFIXES and g.is_file())
        elif f.suffix.lower() in POLICY_SUFFIXES and f.is_file():
            out.append(f)
    return out


def load_policies(path: str | Path,
                  warnings: list[PolicyValidationError] | None = None) -> list[Policy]:
    """Policies of a file, or of every policy file of a directory (policy_dir_files).
    Raises PolicyErrors with the errors of every failing file."""
    p = Path(path)
    files = policy_dir_files(p) if p.is_dir() else [p]
    results = [check_file(f) for f in files]
    if len(results) > 1:
        _cross_file_duplicates(results)
    return _unwrap(results, warnings)


def _unwrap(results: list[LoadResult], warnings: list[PolicyValidationError] | None
            ) -> list[Policy]:
    errs = [e for r in results for e in r.errors]
    warns = [w for r in results for w in r.warnings]
    if warnings is not None:
        warnings.extend(warns)
    if errs:
        raise PolicyErrors(errs, warns)
    return [pol for r in results for pol in r.policies]


def _parse(text: str, filename: str, diag: Diagnostics, semantic: bool = True) -> list[Policy]:
    try:
        docs = list(yaml.compose_all(text, Loader=_LOADER))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(x for x in (e.context, e.problem) if x)
        diag.error(Loc(filename, line, col, ""), f"YAML syntax error: {what}")
        return []
    except yaml.YAMLError as e:
        diag.error(Loc(filename, 1, 1, ""), f"YAML error: {e}")
        return []
    except RecursionError:
        diag.error(Loc(filename, 1, 1, ""), "YAML error: nested too deeply")
        return []
    conv = Converter(filename, diag)
    policies: list[Policy] = []
    for n, doc in enumerate(docs, 1):
        if doc is None or is_null(doc):
            continue  # empty document (e.g. a trailing ---)
        other = _other_kind(doc)
        if other:
            # a manifest that also holds other objects (kubectl apply -f): not ours to load
            diag.warn(Loc(filename, doc.start_mark.line + 1, doc.start_mark.column + 1, ""),
                      f"document {n} is a {other}, not a TracingPolicy: skipped")
            continue
        structural = Diagnostics()
        conv.diag = structural
        conv.budget = MAX_VALUES
        pol = conv.build(Policy, doc, "")
        meaning = Diagnostics()
        if pol is not BAD:
            if semantic:
                pol = _normalize(pol, meaning)
                pol = expand_macros(pol, meaning)
                validate_policy(pol, meaning)
            policies.append(pol)
        _merge(diag, structural, meaning)
    if not policies and not diag.errors:
        diag.error(Loc(filename, 1, 1, ""), "no TracingPolicy document in file")
    _duplicate_names(policies, diag)
    return policies


def _other_kind(doc: yaml.Node) -> str:
    """'apiVersion/kind' of a document that is some other Kubernetes object, else ''."""
    if not isinstance(doc, yaml.MappingNode):
        return ""
    fields = {k.value: v.value for k, v in doc.value
              if isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode)}
    api, kind = str(fields.get("apiVersion", "")), str(fields.get("kind", ""))
    if not api or not kind or api.startswith("cilium.io/") or kind in enums.KINDS:
        return ""
    return f"{api}/{kind}"


def _normalize(pol: Policy, diag: Diagnostics) -> Policy:
    """Kubernetes puts a namespaced object without a namespace into "default"."""
    if pol.kind == enums.KIND_NAMESPACED and not pol.metadata.namespace:
        diag.warn(pol.metadata.loc.child("namespace"), 'no metadata.namespace: the policy is '
                  'placed in namespace "default"')
        meta = dataclasses.replace(pol.metadata, namespace="default")
        return dataclasses.replace(pol, metadata=meta)
    return pol


def _scope(path: str) -> str:
    """Where follow-on noise from a structural error can appear: the node holding the bad
    field, or the whole hook when the bad field shapes the hook (its own fields, its args)."""
    parts = path.split(".")
    parent = ".".join(parts[:-1])
    if len(parts) >= 2 and parts[0] == "spec" and "[" in parts[1]:
        rest = parts[2:]
        if len(rest) <= 1 or rest[0].startswith(("args[", "data[", "returnArg")):
            return ".".join(parts[:2])
    return parent


def _merge(diag: Diagnostics, structural: Diagnostics, semantic: Diagnostics) -> None:
    """Semantic checks run on a partly-converted tree; drop their findings inside a hook (or
    field) that already has a structural error, since they would only be follow-on noise."""
    scopes = {_scope(e.path) for e in structural.errors}

    def noisy(path: str) -> bool:
        return any(path == s or path.startswith((s + ".", s + "[")) for s in scopes if s)

    for src in (structural, semantic):
        for e in src.errors:
            if src is structural or not noisy(e.path):
                diag.errors.append(e)
        diag.warnings.extend(src.warnings)


def _key(p: Policy) -> tuple[str, str, str]:
    return ("namespaced" if p.namespaced else "cluster", p.metadata.namespace or "", p.name)


def _duplicate_names(policies: list[Policy], diag: Diagnostics) -> None:
    first: dict[tuple[str, str, str], Policy] = {}
    for p in policies:
        k = _key(p)
        if k in first:
            prev = first[k].metadata.at("name")
            diag.error(p.metadata.at("name"), f'duplicate policy name "{p.name}" (first defined '
                       f"at line {prev.line})")
        else:
            first[k] = p


def _cross_file_duplicates(results: list[LoadResult]) -> None:
    first: dict[tuple[str, str, str], Loc] = {}
    for r in results:
        for p in r.policies:
            k, here = _key(p), p.metadata.at("name")
            if k in first:
                r.errors.append(PolicyValidationError.at(here, f'duplicate policy name '
                                f'"{p.name}" (also in {first[k].file}:{first[k].line})'))
            else:
                first[k] = here
        if r.errors:
            r.policies = []
