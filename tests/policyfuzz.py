"""Hostile TracingPolicies for the fuzz tests: generated from the policy model itself (every
field of every node in vigil/policy/model.py, with the values users write and the values
that break things), then mutated at the YAML level (missing keys, wrong types, unknown keys)
and at the text level (truncation, garbage, broken indentation).

The oracle, `outcome(text)`: a policy is either accepted (parsed, validated and compiled) or
rejected with PolicyErrors whose every line is `file:line:col: field: message`. Any other
exception is a find.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import random
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from vigil.kernel.facts import KernelFacts
from vigil.policy import PolicyErrors, model, parse_policies
from vigil.policy.compile import compile_policy

FILENAME = "fuzz.yaml"
LOCATED = re.compile(rf"^{re.escape(FILENAME)}:\d+:\d+: ")

# ---------------------------------------------------------------- vocabularies per field
# field name -> (values that are right somewhere, values that are wrong everywhere)
WORDS: dict[str, tuple[list[Any], list[Any]]] = {
    "call": (["sys_openat", "sys_openat", "sys_execve", "sys_connect", "sys_write", "sys_mkdir", "sys_setuid",
              "sys_ptrace", "security_file_open", "tcp_connect", "do_sys_open", "fd_install", "__x64_sys_openat",
              "__arm64_sys_openat", "list:syscalls", "__ia32_sys_dup", "sys_fstat", "sys_get_thread_area",
              "security_bprm_check", "__sys_setuid", "create_user_ns", "cap_capable", "tcp_close", "tcp_sendmsg",
              "security_socket_connect", "security_file_permission", "security_mmap_file", "bpf_check",
              "security_capset", "kfree_skb_reason", "dev_queue_xmit", "tty_write", "security_inode_mkdir",
              "commit_creds"], ["sys_no_such_call", "", "list:nope", "a b", "no_such_kernel_function"]),
    "subsystem": (["syscalls", "sched", "raw_syscalls", "sock"], ["nope", "", "../..", "a\x00b"]),
    "event": (["sys_enter_openat", "sched_process_exec", "sys_exit", "inet_sock_set_state"], ["nope", ""]),
    "hook": (["file_open", "bprm_check_security", "socket_connect", "path_mkdir", "inode_mkdir"],
             ["no_such_hook", ""]),
    "type": (["string", "int", "uint32", "int64", "fd", "file", "path", "sockaddr", "sock", "skb", "char_buf",
              "char_iovec", "size_t", "cred", "linux_binprm", "capability", "auto", "syscalls", "generated_syscalls",
              "generated_ftrace", "Effective", "Permitted", "Inheritable", "net_device", "dentry", "kiocb",
              "iov_iter", "bpf_attr", "bpf_prog", "bpf_map", "perf_event", "module", "load_info", "user_namespace",
              "cap_effective", "kernel_cap_t", "int8", "uint16", "nop"], ["bogus", ""]),
    "operator": (["Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix", "Mask", "GreaterThan",
                  "LessThan", "SPort", "DPort", "SAddr", "DAddr", "Protocol", "Family", "State", "InMap", "NotInMap",
                  "In", "NotIn", "Exists", "DoesNotExist", "SPortPriv", "DPortPriv", "CapabilitiesGained",
                  "FileType", "NotFileType", "InRange", "SubString"],
                 ["", "equal", "Bogus"]),
    "action": (["Post", "NoPost", "Sigkill", "Signal", "Override", "FollowFD", "UnfollowFD", "CopyFD", "GetUrl",
                "DnsLookup", "TrackSock", "UntrackSock", "NotifyEnforcer", "Set", "CleanupEnforcerNotification"],
               ["Nope", ""]),
    "namespace": (["Uts", "Ipc", "Mnt", "Pid", "PidForChildren", "Net", "Time", "TimeForChildren", "Cgroup",
                   "User"], ["Bogus", ""]),
    "name": (["p", "fuzz-policy", "policy-mode", "vigil-enforce-fallback", "disable-kprobe-multi",
              "vigil-hook-substitution"],
             ["UPPER_case", "a" * 300, ""]),
    "value": (["enforce", "monitor", "sigkill", "true"], ["x", ""]),
    "kind": (["TracingPolicy", "TracingPolicyNamespaced"], ["Pod", ""]),
    "api_version": (["cilium.io/v1alpha1"], ["cilium.io/v1", ""]),
    "path": (["/bin/bash", "/usr/bin/python3"], ["/nonexistent", "relative/path", "${BIN}", ""]),
    "values": (["/etc/passwd", "/tmp/", "/", "0", "1", "80", "127.0.0.1/8", "::1", "1:1000", "CAP_SYS_ADMIN",
                "host_ns", "AF_INET", "TCP", "TCP_ESTABLISHED", "0x10"],
               ["-1", "4294967296", "10.0.0.0/33", "65536", "CAP_NOPE", "${PODCIDR}", "list:nope", "a" * 5000,
                "\u00e9\u00e8", "\x00"]),
    "rate_limit": (["1m", "10s", "2h"], ["0", "bogus", ""]),
    "rate_limit_scope": (["thread", "process", "global"], ["bogus", ""]),
    "resolve": (["f_path.dentry", "mm.exe_file", "mm.owner.real_parent.comm", "file", "sk.__sk_common.skc_family"],
                ["nope..x", "", "no_such_field"]),
    "arg_regs": (["rax", "rdi=rsi"], ["bogus"]),
    "label": (["a", "x" * 100], [""]),
    "return_arg_action": (["TrackSock", "UntrackSock", "Post"], ["x"]),
    "symbols": (["readline", "main", "malloc"], ["", "no_such_symbol"]),
}
# fields a node nearly always has in real policies (else the front end rightly refuses them)
USUAL = {"KProbeArg": ("type",), "UProbeSpec": ("symbols",), "KProbeSpec": ("args", "selectors"),
         "Selector": ("matchActions",)}
BAD = 0.05   # how often a field gets a value that is wrong everywhere
NUMBERS = [0, 1, 2, 3, 5, 7, -1, 255, 65535, 2**31 - 1, 2**32, 2**63, -(2**63) - 1]
RAW = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def _yaml_key(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    return f.metadata.get("yaml") or f.name


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:  # type: ignore[type-arg]
    hints = typing.get_type_hints(cls, vars(model))
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if "yaml" in f.metadata]


def _scalar(name: str, tp: Any) -> st.SearchStrategy[Any]:
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.sampled_from(NUMBERS) | st.integers(-1000, 100000)
    words = WORDS.get(name)
    if words is not None:
        return st.sampled_from(words[0] + words[1])
    return st.sampled_from(["", "x", "a" * 64]) | st.text(max_size=12)


def _value(name: str, tp: Any, depth: int) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return st.none() | st.one_of(*[_value(name, a, depth) for a in inner])
    if origin is tuple:
        sub = _value(name, args[0], depth + 1)
        return st.lists(sub, max_size=3 if depth < 3 else 1)
    if origin in (dict, typing.Mapping, __import__("collections.abc").abc.Mapping):
        return st.dictionaries(st.sampled_from(["m1", "m2", "k8s:app"]), _value(name, args[1], depth + 1), max_size=2)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _node(tp, depth + 1)
    if tp is Any:
        return RAW
    return _scalar(name, tp)


def _node(cls: type, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """A dict for a model node: required keys always, optional keys sometimes."""
    if depth > 6:
        return st.just({})
    parts = []
    for f, tp in _fields(cls):
        key, sub = _yaml_key(f), _value(f.name, tp, depth)
        if f.metadata.get("required"):
            parts.append(sub.map(lambda v, k=key: {k: v}))
        else:
            parts.append(st.one_of(st.just({}), sub.map(lambda v, k=key: {k: v})))
    return st.tuples(*parts).map(lambda ds: {k: v for d in ds for k, v in d.items()})


def _policy_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """Mostly plausible policies: the right apiVersion/kind, one of the hook sections filled."""
    spec = _node(model.TracingPolicySpec, 1)
    meta = st.fixed_dictionaries({"name": st.sampled_from(WORDS["name"][0] + WORDS["name"][1])},
                                 optional={"namespace": st.sampled_from(["", "default", "kube-system"])})
    return st.fixed_dictionaries({
        "apiVersion": st.sampled_from(["cilium.io/v1alpha1"] * 8 + WORDS["api_version"][1]),
        "kind": st.sampled_from(["TracingPolicy"] * 6 + WORDS["kind"][1]),
        "metadata": meta,
        "spec": spec,
    })


# ---------------------------------------------------------------- mutations
def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(doc: Any, draw: st.DrawFn) -> Any:
    paths = _paths(doc)[1:]
    if not paths:
        return doc
    path = draw(st.sampled_from(paths))
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    how = draw(st.sampled_from(["delete", "retype", "unknown-key", "duplicate-list", "deep"]))
    if how == "delete":
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
    elif how == "retype":
        parent[last] = draw(RAW)
    elif how == "unknown-key" and isinstance(parent, dict):
        parent[draw(st.sampled_from(["bogusKey", "Call", "matchargs", "selectors "]))] = draw(RAW)
    elif how == "duplicate-list" and isinstance(parent[last], list):
        parent[last] = parent[last] * 40
    elif how == "deep":
        v: Any = 1
        for _ in range(draw(st.integers(5, 60))):
            v = [v] if draw(st.booleans()) else {"a": v}
        parent[last] = v
    return doc


@st.composite
def policy_texts(draw: st.DrawFn) -> str:
    """YAML text of one (sometimes several, sometimes broken) policy documents."""
    docs = [draw(_policy_dicts()) for _ in range(draw(st.sampled_from([1, 1, 1, 1, 2])))]
    for d in docs:
        for _ in range(draw(st.integers(0, 3))):
            d = _mutate(d, draw)
    text = "---\n".join(yaml.safe_dump(d, sort_keys=False, allow_unicode=True) for d in docs)
    textual = draw(st.sampled_from(["none"] * 6 + ["truncate", "garbage", "indent", "tabs", "anchor", "empty"]))
    if textual == "truncate" and text:
        text = text[:draw(st.integers(0, len(text)))]
    elif textual == "garbage":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["{", "]", ": :", "\x00", "- - -", "&a *b", "!!python/object:os.system",
                                                 "\ufeff", "%YAML 9.9\n"])) + text[at:]
    elif textual == "indent":
        lines = text.splitlines()
        if lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = "   " + lines[i]
        text = "\n".join(lines)
    elif textual == "tabs":
        text = text.replace("  ", "\t", 1)
    elif textual == "anchor":
        text = "x: &a [*a]\n" + text
    elif textual == "empty":
        text = draw(st.sampled_from(["", "---", "null", "[]", "42", "'just a string'"]))
    return text


# ---------------------------------------------------------------- the fast seeded generator
# Hypothesis builds these trees at ~130 ms each; the same schema walk with random.Random
# takes well under 1 ms, which is what lets `make test` try 10,000 policies.
HOOK_SECTIONS = ("kprobes", "tracepoints", "uprobes", "lsmhooks", "usdts", "fentries")


def _rvalue(rng: random.Random, name: str, tp: Any, depth: int) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return None if rng.random() < 0.1 else _rvalue(rng, name, rng.choice(inner), depth)
    if origin is tuple:
        n = rng.choice([0, 1, 1, 1, 2, 3]) if depth < 4 else rng.choice([0, 1])
        return [_rvalue(rng, name, args[0], depth + 1) for _ in range(n)]
    if origin is not None and origin.__name__ in ("Mapping", "dict"):
        return {rng.choice(["m1", "m2", "k8s:app"]): _rvalue(rng, name, args[1], depth + 1)
                for _ in range(rng.choice([0, 1, 2]))}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return rnode(rng, tp, depth + 1)
    if tp is bool:
        return rng.random() < 0.5
    if tp is int:
        return rng.choice(NUMBERS) if rng.random() < BAD else rng.randint(0, 5)
    if tp is Any:
        return rng.choice([None, 1, "x", [1], {"a": 1}])
    words = WORDS.get(name)
    if words is not None:
        return rng.choice(words[1] if rng.random() < BAD else words[0])
    return rng.choice(["", "a" * 64, "\u0000", "é", " spaced "]) if rng.random() < BAD else "x"


def rnode(rng: random.Random, cls: type, depth: int = 0, p_optional: float = 0.25) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if depth > 6:
        return out
    usual = USUAL.get(cls.__name__, ())
    for f, tp in _fields(cls):
        if f.metadata.get("required") or rng.random() < (0.9 if f.name in usual else p_optional):
            out[_yaml_key(f)] = _rvalue(rng, f.name, tp, depth)
    return out


def rpolicy(rng: random.Random) -> dict[str, Any]:
    """A mostly plausible policy: right header, one or two hook sections, sparse options."""
    spec: dict[str, Any] = {}
    hints = dict(_fields(model.TracingPolicySpec))
    by_key = {_yaml_key(f): (f, tp) for f, tp in hints.items()}
    for section in rng.sample(HOOK_SECTIONS, rng.choice([1, 1, 1, 2])):
        f, tp = by_key[section]
        spec[section] = _rvalue(rng, f.name, tp, 1)
    for key in ("lists", "options", "selectorsMacros", "enforcers", "podSelector", "loader"):
        if rng.random() < 0.15:
            f, tp = by_key[key]
            spec[key] = _rvalue(rng, f.name, tp, 1)
    return {"apiVersion": "cilium.io/v1alpha1" if rng.random() > BAD else rng.choice(WORDS["api_version"][1]),
            "kind": rng.choice(WORDS["kind"][0]) if rng.random() > BAD else rng.choice(WORDS["kind"][1]),
            "metadata": {"name": "fuzz-policy" if rng.random() > BAD else rng.choice(WORDS["name"][1])},
            "spec": spec}


CORPUS_DIR = Path(__file__).resolve().parent / "policies" / "good"


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[Any, ...]:
    """The project's valid example policies, one YAML document each: seeds for mutation."""
    docs = []
    for f in sorted(CORPUS_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return tuple(docs)


def rmutate(rng: random.Random, doc: Any) -> Any:
    paths = _paths(doc)[1:]
    if not paths:
        return doc
    path = rng.choice(paths)
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    how = rng.choice(["delete", "retype", "unknown-key", "duplicate-list", "deep", "respell", "respell"])
    if how == "respell" and isinstance(parent[last], (str, int)) and not isinstance(parent[last], bool):
        good, bad = rng.choice(list(WORDS.values()))   # a word that is right somewhere else
        parent[last] = rng.choice(bad if rng.random() < BAD else good)
    elif how == "delete":
        del parent[last]
    elif how == "retype":
        parent[last] = rng.choice([None, True, 0, -1, 2**70, 1.5, float("nan"), "x", "", [], {}, [1, "a"],
                                   {"k": None}])
    elif how == "unknown-key" and isinstance(parent, dict):
        parent[rng.choice(["bogusKey", "Call", "matchargs", "selectors "])] = 1
    elif how == "duplicate-list" and isinstance(parent[last], list):
        parent[last] = parent[last] * 40
    elif how == "deep":
        v: Any = 1
        for _ in range(rng.randint(5, 60)):
            v = [v] if rng.random() < 0.5 else {"a": v}
        parent[last] = v
    return doc


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
GARBAGE = ["{", "]", ": :", "\x00", "- - -", "&a *b", "!!python/object/apply:os.system ['true']", "\ufeff",
           "%YAML 9.9\n", "'", "\"", "? ", "|\n"]


def rtext(rng: random.Random) -> str:
    if rng.random() < 0.5:   # a real policy, lightly mutated
        docs = [copy.deepcopy(rng.choice(corpus())) for _ in range(rng.choice([1, 1, 1, 2]))]
    else:                    # one generated from the model
        docs = [rpolicy(rng) for _ in range(rng.choice([1, 1, 1, 1, 2]))]
    n = rng.choice([0, 0, 0, 0, 1, 2, 3])   # more than half of the documents stay as generated
    for d in docs:
        for _ in range(n):
            d = rmutate(rng, d)
    text = "---\n".join(yaml.dump(d, Dumper=_DUMPER, sort_keys=False, allow_unicode=True) for d in docs)
    how = rng.choice(["none"] * 24 + ["truncate", "garbage", "indent", "tabs", "anchor", "empty", "dupkey",
                                      "unicode", "digits"])
    if how == "truncate" and text:
        text = text[:rng.randint(0, len(text))]
    elif how == "garbage":
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(GARBAGE) + text[at:]
    elif how == "indent":
        lines = text.splitlines()
        if lines:
            i = rng.randrange(len(lines))
            lines[i] = "   " + lines[i]
        text = "\n".join(lines)
    elif how == "tabs":
        text = text.replace("  ", "\t", 1)
    elif how == "anchor":
        text = "x: &a [*a]\n" + text
    elif how == "empty":
        text = rng.choice(["", "---", "null", "[]", "42", "'just a string'"])
    elif how == "dupkey":   # a mapping's key again, with its value or another (YAML allows neither)
        lines = text.splitlines()
        keyed = [i for i, ln in enumerate(lines) if _KEY_LINE.match(ln)]
        if keyed:
            i = rng.choice(keyed)
            again = lines[i].lstrip("- ") if lines[i].lstrip().startswith("- ") else lines[i].lstrip()
            indent = len(lines[i]) - len(lines[i].lstrip()) + (2 if lines[i].lstrip().startswith("- ") else 0)
            if rng.random() < 0.5:
                again = again.split(":", 1)[0] + ": " + str(rng.choice(["null", "1", "x", "[]", "{}"]))
            lines.insert(i + 1, " " * indent + again)
        text = "\n".join(lines)
    elif how == "unicode" and text:   # characters a terminal or a C string takes otherwise
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(UNICODE) + text[at:]
    elif how == "digits":   # a number past any integer type (and Python's 4300-digit limit)
        text = re.sub(r"\b\d+\b", lambda m: m.group(0) * rng.choice([3, 30, 5000]), text, count=rng.randint(1, 3))
    return text


_KEY_LINE = re.compile(r"^\s*(- )?[A-Za-z_][A-Za-z0-9_]*:( |$)")
UNICODE = ["\u202e", "\x1b[2J", "\x85", "\u2028", "\x7f", "\U0001f600", "e\u0301", "\ufeff", "\x00", "\t", "\r"]


# ---------------------------------------------------------------- the oracle
FACTS_DIR = Path(__file__).resolve().parent / "data" / "facts"
HOST_FEATURES, VM_FEATURES = "host-6.18", "vm-6.12"   # recorded kernels (tests/facts/record.py)


def facts(name: str) -> KernelFacts:
    """A kernel recorded by tests/facts/record.py: this host, or the VM tier's 6.12 guest."""
    return KernelFacts.load(str(FACTS_DIR / f"{name}.json"))


def outcome(text: str, kernel: KernelFacts, substitute: bool = False) -> str:
    """accepted | rejected (parse/validate) | refused (compile); raises AssertionError on
    an unlocated message, and lets any other exception through (a find)."""
    try:
        policies = parse_policies(text, FILENAME)
    except PolicyErrors as e:
        _located(e)
        return "rejected"
    ids = itertools.count(1)
    bits = itertools.count(0)
    for p in policies:
        try:
            compile_policy(p, kernel, lambda: next(ids), follow_bit=lambda op, values: next(bits) % 64,
                           substitute=substitute)
        except PolicyErrors as e:
            _located(e)
            return "refused"
    return "accepted"


def _located(e: PolicyErrors) -> None:
    assert e.errors, "PolicyErrors without errors"
    for err in e.errors:
        line = str(err)
        assert LOCATED.match(line) and "Traceback" not in line, f"unlocated error: {line!r}"
        assert err.path or err.line, f"error names no field: {line!r}"
