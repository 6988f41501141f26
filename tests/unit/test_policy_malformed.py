"""Every malformed case is rejected as a whole, with an error naming file, line and field path.

Builds policy texts for the table-driven malformed cases in tests/policies/malformed.yaml.

A case gives exactly one of:
  doc:  a whole YAML file;
  spec: the body of `spec:` (a header with apiVersion/kind/metadata is prepended);
  sel:  the items of `selectors:` of a test kprobe (SCAFFOLD);
  arg:  one matchArgs entry (flow style) of that kprobe's first selector;
  act:  one matchActions entry (flow style) of that kprobe's first selector.
The line the error must point at carries a `#!` marker (arg/act cases get it automatically).
`path` is the expected field path; a path starting with "." is relative to the shorthand's node.
`msg` must be a substring of the message.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from vigil.policy import PolicyErrors, parse_policies

CASES_FILE = Path(__file__).parents[1] / "policies" / "malformed.yaml"
WARN_FILE = Path(__file__).parents[1] / "policies" / "warnings.yaml"
HEADER = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: case\nspec:\n"
SCAFFOLD = """\
kprobes:
- call: vigil_test_fn
  syscall: false
  return: true
  args:
  - {index: 0, type: int}
  - {index: 1, type: string}
  - {index: 2, type: sock}
  - {index: 3, type: file}
  - {index: 4, type: sockaddr}
  data:
  - {index: 0, type: uint32, source: current_task, resolve: pid}
  returnArg: {index: 0, type: int}
  selectors:
"""
SEL_BASE = "spec.kprobes[0].selectors"
ARG_BASE = SEL_BASE + "[0].matchArgs[0]"
ACT_BASE = SEL_BASE + "[0].matchActions[0]"


@dataclass
class Case:
    id: str
    text: str
    line: int
    path: str
    msg: str
    col: int | None = None


def _indent(text: str, n: int) -> str:
    return "".join(" " * n + ln if ln.strip() else ln for ln in text.splitlines(True))


def build(raw: dict) -> Case:
    base = ""
    if "doc" in raw:
        text = raw["doc"]
    elif "spec" in raw:
        text = HEADER + _indent(raw["spec"], 2)
    elif "sel" in raw:
        text, base = HEADER + _indent(SCAFFOLD + _indent(raw["sel"], 2), 2), SEL_BASE
    elif "arg" in raw:
        body = SCAFFOLD + f"  - matchArgs:\n    - {raw['arg']}  #!\n"
        text, base = HEADER + _indent(body, 2), ARG_BASE
    elif "act" in raw:
        body = SCAFFOLD + f"  - matchActions:\n    - {raw['act']}  #!\n"
        text, base = HEADER + _indent(body, 2), ACT_BASE
    else:
        raise ValueError(f"case {raw.get('id')}: no doc/spec/sel/arg/act")
    marked = [i + 1 for i, ln in enumerate(text.splitlines()) if "#!" in ln]
    if len(marked) != 1:
        raise ValueError(f"case {raw['id']}: expected exactly one #! marker, got {marked}")
    path = raw["path"]
    if path == ".":
        path = base
    elif path.startswith((".", "[")):
        path = base + path
    return Case(raw["id"], text, marked[0], path, raw["msg"], raw.get("col"))


def _long_cases() -> list[dict]:
    """Limits on lengths and counts that are unwieldy to spell out in YAML."""
    a257, a129, a101 = "a" * 257, "a" * 129, "a" * 101
    subs = ", ".join(f"s{i}" for i in range(101))
    n5000 = "9" * 5000  # beyond Python's int digits limit: its error told the user to call sys.set_int_max_str_digits()
    return [
        {"id": "int-5000-digits-field", "path": "spec.kprobes[0].args[0].index",
         "msg": "an integer of 5000 characters is out of range (0..4294967295)",
         "spec": f"kprobes:\n- call: sys_write\n  args: [{{index: {n5000}, type: int}}]  #!\n"},
        {"id": "int-5000-digits-value", "path": ".values[0]",
         "msg": '"' + "9" * 40 + '..." (5000 characters) is out of range for a 64-bit integer',
         "arg": f"{{index: 0, operator: Equal, values: ['{n5000}']}}"},
        {"id": "int-5000-digits-port", "path": ".values[0]", "msg": "is not a port or port range",
         "arg": f"{{index: 4, operator: SPort, values: ['{n5000}']}}"},
        {"id": "int-5000-digits-ratelimit", "path": ".rateLimit", "msg": "invalid rateLimit",
         "act": f"{{action: Post, rateLimit: '{n5000}'}}"},
        {"id": "len-message-257", "path": "spec.kprobes[0].message",
         "msg": "message is 257 characters long (max 256)",
         "spec": f"kprobes:\n- call: sys_write\n  message: {a257}  #!\n"},
        {"id": "len-prefix-257", "path": ".values[0]", "msg": "value is 257 characters long "
         "(max 256)", "arg": f"{{index: 1, operator: Prefix, values: [{a257}]}}"},
        {"id": "len-notprefix-257", "path": ".values[0]", "msg": "(max 256)",
         "arg": f"{{index: 1, operator: NotPrefix, values: [{a257}]}}"},
        {"id": "len-postfix-129", "path": ".values[0]", "msg": "value is 129 characters long "
         "(max 128)", "arg": f"{{index: 1, operator: Postfix, values: [{a129}]}}"},
        {"id": "len-notpostfix-129", "path": ".values[0]", "msg": "(max 128)",
         "arg": f"{{index: 3, operator: NotPostfix, values: [{a129}]}}"},
        {"id": "len-equal-4097-bytes", "path": ".values[0]", "msg": "value is 4097 bytes long "
         "(max 4096)", "arg": f"{{index: 1, operator: Equal, values: [{'a' * 4097}]}}"},
        {"id": "len-equal-multibyte", "path": ".values[0]", "msg": "value is 4098 bytes long",
         "arg": f"{{index: 1, operator: Equal, values: [{'é' * 2049}]}}"},
        {"id": "len-substring-value-101", "path": ".values[0]", "msg": "value is 101 characters "
         "long (max 100)", "arg": f"{{index: 1, operator: SubString, values: [{a101}]}}"},
        {"id": "len-substring-101-values", "path": ".values[100]", "msg": "too many values for "
         "SubString: 101 (max 100)", "arg": f"{{index: 1, operator: SubString, values: [{subs}]}}"},
        {"id": "len-binaries-prefix-257", "path": "[0].matchBinaries[0].values[0]",
         "msg": "value is 257 characters long (max 256 for Prefix)",
         "sel": f"- matchBinaries: [{{operator: Prefix, values: [/{a257[1:]}]}}]  #!\n"},
        {"id": "len-binaries-postfix-129", "path": "[0].matchBinaries[0].values[0]",
         "msg": "(max 128 for Postfix)",
         "sel": f"- matchBinaries: [{{operator: Postfix, values: [{a129}]}}]  #!\n"},
        {"id": "len-name-254", "path": "metadata.name", "msg": "invalid name",
         "doc": f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n"
                f"  name: {'a' * 254}  #!\nspec: {{}}\n"},
        {"id": "len-follow-children-65", "path": "spec.kprobes[64].selectors[0].matchBinaries[0]"
         ".followChildren", "msg": "too many followChildren entries in this policy (max 64)",
         "spec": "kprobes:\n" + "".join(
             f"- call: sys_write\n  selectors:\n  - matchBinaries: [{{operator: In, values: "
             f"[/bin/sh], followChildren: true}}]{'  #!' if i == 64 else ''}\n"
             for i in range(65))},
    ]


def load_cases(path: Path = CASES_FILE) -> list[Case]:
    raws = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if path == CASES_FILE:
        raws = [*raws, *_long_cases()]
    cases = [build(r) for r in raws]
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"duplicate case ids: {sorted(dup)}")
    return cases

CASES = load_cases()
WARN_CASES = load_cases(WARN_FILE)


def test_enough_cases() -> None:
    assert len(CASES) >= 220


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed(case) -> None:
    fname = f"{case.id}.yaml"
    result = None
    with pytest.raises(PolicyErrors) as exc:
        result = parse_policies(case.text, fname)
    assert result is None  # nothing is returned from a rejected file
    errors = exc.value.errors
    assert errors, "PolicyErrors without errors"
    assert all(e.file == fname for e in errors)
    hits = [e for e in errors if e.path == case.path and e.line == case.line]
    shown = "\n".join(str(e) for e in errors)
    assert hits, f"no error at line {case.line} path {case.path}; got:\n{shown}"
    assert any(case.msg in e.message for e in hits), f"message lacks {case.msg!r}; got:\n{shown}"
    if case.col is not None:
        assert any(e.col == case.col for e in hits), shown
    # the formatted diagnostic is FILE:LINE:COL: PATH: MESSAGE
    where = f"{case.path}: " if case.path else ""
    assert str(hits[0]).startswith(f"{fname}:{case.line}:{hits[0].col}: {where}")


@pytest.mark.parametrize("case", WARN_CASES, ids=[c.id for c in WARN_CASES])
def test_warning(case) -> None:
    """Warnings never reject a policy, and are located like errors."""
    fname = f"{case.id}.yaml"
    warnings: list = []
    policies = parse_policies(case.text, fname, warnings)
    assert policies
    shown = "\n".join(str(w) for w in warnings)
    hits = [w for w in warnings if w.path == case.path and w.line == case.line]
    assert hits, f"no warning at line {case.line} path {case.path}; got:\n{shown}"
    assert any(case.msg in w.message for w in hits), shown
    assert all(w.severity == "warning" and w.file == fname for w in warnings)


# (the call a policy names, as its error shows it): unprintable characters escaped, not written
# out (a NUL showed as nothing, an ESC sequence drove the terminal, U+202E reversed the line)
UNPRINTABLE_CASES = [
    ('"sys\\0getpid"', "sys\\x00getpid"),
    ('"sys_\\e[2Jgetpid"', "sys_\\x1b[2Jgetpid"),
    ('"sys_\\u202egetpid"', "sys_\\u202egetpid"),
    ('"sys_\\x85getpid"', "sys_\\x85getpid"),
    ('"sys_g\\tétpid"', "sys_g\tétpid"),  # tab and letters: as written
]


@pytest.mark.parametrize("call,shown", UNPRINTABLE_CASES, ids=[c[1] for c in UNPRINTABLE_CASES])
def test_a_message_escapes_the_unprintable_characters_it_quotes(call: str, shown: str) -> None:
    text = HEADER + f"  kprobes:\n  - call: {call}\n    syscall: true\n"
    with pytest.raises(PolicyErrors) as exc:
        parse_policies(text, "f.yaml")
    line = str(exc.value.errors[0])
    assert line.startswith("f.yaml:7:11: spec.kprobes[0].call: ") and f'"{shown}"' in line, line
    assert line.isprintable() or "\t" in shown, line
    assert str(exc.value) == "\n".join(str(e) for e in exc.value.errors)
