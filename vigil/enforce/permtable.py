"""The decision table the native permission helper (vigil-permd) answers from.

A table is rules (one per selector, grouped by hook, in selector order), the marks
that decide which execs and opens reach the helper at all, and the answer to give
when no decision is written in time. `evaluate` is the reference for the helper's
decisions: tests compare the two on random tables and requests.

Semantics (the helper implements the same): each hook decides by its first matching
selector; a request is refused when any deciding selector is an Override or Sigkill
that is not in monitor mode; Sigkill also kills the requester; every deciding
selector but NoPost is reported.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vigil.enforce import permd_proto as P

# the one statement of the string operators, shared with the policy engine's reference evaluator
from vigil.policy.evaluate import string_match

STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
PID_OPS = ("In", "NotIn")
MAX_ANCESTORS = 64


@dataclass(frozen=True, slots=True)
class Cond:
    field: str                      # path | binary | pid
    op: str                         # STRING_OPS for path/binary, PID_OPS for pid
    values: tuple[str | int, ...]
    follow_forks: bool = False

    def __post_init__(self) -> None:
        ops = PID_OPS if self.field == "pid" else STRING_OPS
        if self.field not in P.FIELD or self.op not in ops:
            raise ValueError(f"condition {self.field} {self.op}: not something the helper evaluates")


@dataclass(frozen=True, slots=True)
class Rule:
    hook_id: int
    selector: int                   # 0-based within its hook
    kinds: frozenset[str]           # exec, open
    action: str                     # post | nopost | override | sigkill
    monitor: bool = False
    conds: tuple[Cond, ...] = ()

    @property
    def enforcing(self) -> bool:
        return self.action in ("override", "sigkill") and not self.monitor


@dataclass(frozen=True, slots=True)
class Mark:
    kind: str                       # file | tree | mount | filesystem | all
    path: str
    kinds: frozenset[str]           # exec, open


@dataclass
class Table:
    rules: list[Rule] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    exempt: tuple[int, ...] = ()
    default_allow: bool = True
    deadline_ms: int = 1000


@dataclass(frozen=True, slots=True)
class Verdict:
    allow: bool
    kill: bool
    matched: tuple[int, ...]        # indices into Table.rules of the deciding selectors


def proc_ancestors(pid: int) -> list[int]:
    """Parent, grandparent, ... of pid from /proc (what the helper reads)."""
    out: list[int] = []
    while len(out) < MAX_ANCESTORS:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            break
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        if ppid <= 0:
            break
        out.append(ppid)
        pid = ppid
    return out


def _cond_matches(c: Cond, kind: str, pid: int, path: str, binary: str, ancestors: Callable[[], list[int]]) -> bool:
    if c.field == "path":
        return string_match(c.op, c.values, path)  # type: ignore[arg-type]
    if c.field == "binary":
        return string_match(c.op, c.values, binary)  # type: ignore[arg-type]
    pids = {pid} | (set(ancestors()) if c.follow_forks else set())
    hit = bool(pids & set(c.values))
    return hit if c.op == "In" else not hit


def evaluate(table: Table, kind: str, pid: int, path: str, binary: str,
             ancestors: Callable[[int], list[int]] = proc_ancestors) -> Verdict:
    """The helper's decision for one request, in Python."""
    anc: list[int] | None = None

    def lazy_ancestors() -> list[int]:
        nonlocal anc
        if anc is None:
            anc = ancestors(pid)
        return anc

    allow, kill = True, False
    matched: list[int] = []
    decided: set[int] = set()
    for i, r in enumerate(table.rules):
        if r.hook_id in decided or kind not in r.kinds:
            continue
        if all(_cond_matches(c, kind, pid, path, binary, lazy_ancestors) for c in r.conds):
            decided.add(r.hook_id)
            if len(matched) < P.MAX_MATCH:
                matched.append(i)
            if r.enforcing:
                allow = False
                kill = kill or r.action == "sigkill"
    return Verdict(allow, kill, tuple(matched))


# ---------------------------------------------------------------- marks
def _mount_points() -> set[str]:
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            out.add(line.split()[4].encode().decode("unicode_escape"))
    return out


def _existing(path: str) -> str:
    p = os.path.abspath(path)
    while p != "/" and not os.path.exists(p):
        p = os.path.dirname(p)
    return os.path.realpath(p)


def scope_of(rule: Rule) -> list[tuple[str, str]] | None:
    """What a rule can match at most, as (Equal|Prefix, value) pairs; None when it can
    match anywhere (no Equal/Prefix condition on the path)."""
    for c in rule.conds:
        if c.field == "path" and c.op in ("Equal", "Prefix"):
            return [(c.op, str(v)) for v in c.values]
    return None


def plan_marks(rules: Iterable[Rule], mounts: set[str] | None = None) -> list[Mark]:
    """Marks covering exactly what the rules can concern: the named files, the trees under
    named prefixes (their mount when the prefix is a mount point), every file system only
    for rules that can match anywhere. Reads the file system (existence, mounts)."""
    mounts = _mount_points() if mounts is None else mounts
    want: dict[tuple[str, str], set[str]] = {}
    for r in rules:
        scope = scope_of(r)
        if scope is None:
            want.setdefault(("all", ""), set()).update(r.kinds)
            continue
        for op, v in scope:
            if op == "Equal" and os.path.isdir(os.path.dirname(v) or "/") and not os.path.isdir(v):
                d = os.path.realpath(os.path.dirname(v) or "/")
                key = ("file", os.path.join(d, os.path.basename(v)))
            else:
                # a prefix "/a/b" matches "/a/bc/..." too: its tree is the directory holding it,
                # unless it names a directory itself
                root = v if os.path.isdir(v) else os.path.dirname(v.rstrip("/") if v.endswith("/") else v)
                root = _existing(root or "/")
                key = ("mount" if root in mounts else "tree", root)
            want.setdefault(key, set()).update(r.kinds)
    marks = [Mark(kind, path, frozenset(kinds)) for (kind, path), kinds in want.items()]
    return _drop_covered(marks)


def _drop_covered(marks: list[Mark]) -> list[Mark]:
    """A mark inside a tree or mount mark of the same kinds adds nothing."""
    if any(m.kind == "all" for m in marks):
        allk = frozenset().union(*(m.kinds for m in marks if m.kind == "all"))
        rest = [m for m in marks if m.kind != "all" and not m.kinds <= allk]
        return [Mark("all", "", allk)] + rest
    trees = [m for m in marks if m.kind in ("tree", "mount")]

    def covered(m: Mark) -> bool:
        return any(t is not m and m.kinds <= t.kinds and m.path.startswith(t.path.rstrip("/") + "/") and
                   (t.kind == "tree" or m.kind == "file") for t in trees)
    return sorted((m for m in marks if not covered(m)), key=lambda m: (m.kind, m.path))


# ---------------------------------------------------------------- encoding
def encode(table: Table, generation: int) -> list[bytes]:
    """The packets that stage and commit `table` in the helper."""
    out = [P.pack(P.BEGIN_S, P.BEGIN, generation, int(table.default_allow), table.deadline_ms, 0)]
    for r in table.rules:
        kinds = sum(P.KIND[k] for k in r.kinds)
        out.append(P.pack(P.RULE_S, P.RULE, r.hook_id, r.selector, kinds, P.ACTION[r.action], int(r.monitor)))
        for c in r.conds:
            if c.field == "pid":
                chunks = P.encode_pids([int(v) for v in c.values])
            else:
                chunks = P.encode_strings([os.fsencode(str(v)) for v in c.values])
            flags = P.COND_FOLLOW_FORKS if c.follow_forks else 0
            for i, (n, payload) in enumerate(chunks):
                out.append(P.pack(P.COND_S, P.COND, P.FIELD[c.field], P.OP[c.op], flags | (P.COND_CONT if i else 0),
                                  n, tail=payload))
    for m in table.marks:
        mask = sum(P.MASK[k] for k in m.kinds)
        out.append(P.pack(P.MARK_S, P.MARK, P.MARK_KIND[m.kind], mask, tail=os.fsencode(m.path) + b"\0"))
    for pid in table.exempt:
        out.append(P.pack(P.EXEMPT_S, P.EXEMPT, pid))
    out.append(P.HDR.pack(P.COMMIT, P.HDR.size))
    return out


__all__ = ["Cond", "Mark", "Rule", "Table", "Verdict", "encode", "evaluate", "plan_marks", "proc_ancestors",
           "scope_of", "string_match"]
