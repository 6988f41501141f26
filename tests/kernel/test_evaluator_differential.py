"""The reference selector evaluator (vigil.policy.evaluate, used by `vigil policy dry-run`)
against the kernel: random selectors on a real hook and random calls from a test-owned process;
for every call, the selector the kernel decided with (and whether it posted) must be the one the
evaluator predicts.

The hook is `sys_openat` (syscall tracepoint) with the path and the flags captured. Each selector
has random matchArgs (string and integer operators), matchBinaries, matchPIDs (with followForks),
matchCapabilities and matchNamespaces filters, and either Sigkill (the policy runs in monitor mode,
so nothing is killed and the event names the deciding selector) or NoPost. The caller is a copy of
the interpreter, run as root (in the host's namespaces or in new mount and network namespaces) or
as nobody, calling openat(2) directly with exact flags.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.kernel.conftest import RunningAgent
from tests.kernel.library_harness import Gated, build_bins, loaded, make_work, policy_bodies
from vigil.policy import parse_policies
from vigil.policy.evaluate import Call, HookRules, Process, decide

pytestmark = pytest.mark.kernel
NOBODY = 65534
NAMES = ["a", "ab", "abc.txt", "b.sh", "sub/c.sh", "sub/cd.txt", "x"]
FLAGS = [0, 0x800, 0x20000, 0x10000, 0x100, 0x80000, 0x80800, 0x200000]
STRING_OPS = ["Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix"]
INT_OPS = ["Equal", "NotEqual", "GT", "LT", "Mask", "InRange", "NotInRange", "InMap", "NotInMap"]
ALL_CAPS = (1 << 41) - 1


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    d = Path(tempfile.mkdtemp(prefix="vigil-diff-"))
    try:
        work = make_work(d)
        (work / "files" / "sub").mkdir(parents=True)
        for n in NAMES:
            (work / "files" / n).write_text("x")
        os.chmod(work / "files", 0o755)
        os.chmod(work / "files" / "sub", 0o755)
        yield {"work": work, "files": str(work / "files"), **build_bins(work / "bins")}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def ancestors(pid: int) -> tuple[int, ...]:
    out = []
    while pid > 1 and len(out) < 16:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
        out.append(pid)
    return tuple(out)


KINDS = ["path", "flags", "binary", "pids", "caps", "namespaces", "namespaces"]


@st.composite
def selectors(draw: st.DrawFn, files: str, vpy: str) -> dict[str, Any]:
    """One selector with one or two kinds of filter (more would rarely match at all)."""
    kinds = draw(st.sets(st.sampled_from(KINDS), min_size=1, max_size=2))
    sel: dict[str, Any] = {}
    margs = []
    if "path" in kinds:
        op = draw(st.sampled_from(STRING_OPS))
        if op in ("Equal", "NotEqual"):
            vals = [f"{files}/{n}" for n in draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))]
        elif op in ("Prefix", "NotPrefix"):
            vals = draw(st.lists(st.sampled_from([f"{files}/a", f"{files}/sub/", f"{files}/b", "/etc/", "/",
                                                  f"{files}/x"]), min_size=1, max_size=3))
        else:
            vals = draw(st.lists(st.sampled_from([".sh", ".txt", "b", "/x", "c.sh"]), min_size=1, max_size=3))
        margs.append({"index": 1, "operator": op, "values": vals})
    if "flags" in kinds:
        op = draw(st.sampled_from(INT_OPS))
        if op in ("InRange", "NotInRange"):
            vals = [f"{lo}:{lo + draw(st.sampled_from([0, 0x100, 0x20000, 0x100000]))}"
                    for lo in draw(st.lists(st.sampled_from(FLAGS), min_size=1, max_size=2))]
        elif op in ("GT", "LT"):
            vals = [str(draw(st.sampled_from(FLAGS)))]
        else:
            vals = [hex(v) for v in draw(st.lists(st.sampled_from(FLAGS + [0x800 | 0x20000]), min_size=1,
                                                  max_size=3))]
        margs.append({"index": 2, "operator": op, "values": vals})
    if margs:
        sel["matchArgs"] = margs
    if "binary" in kinds:
        sel["matchBinaries"] = [{"operator": draw(st.sampled_from(["In", "NotIn", "Prefix", "NotPrefix", "Postfix",
                                                                    "NotPostfix"])),
                                 "values": draw(st.lists(st.sampled_from([vpy, os.path.dirname(vpy) + "/", "/usr/",
                                                                          "vpy", "/usr/bin/python3"]),
                                                         min_size=1, max_size=2))}]
    if "pids" in kinds:
        sel["matchPIDs"] = [{"operator": draw(st.sampled_from(["In", "NotIn"])),
                             "values": draw(st.lists(st.sampled_from(["RUNNER", "PYTEST", "PYTEST", 1, 999999]),
                                                     min_size=1, max_size=2)),
                             "followForks": draw(st.booleans())}]
    if "caps" in kinds:
        sel["matchCapabilities"] = [{"type": "Effective", "operator": draw(st.sampled_from(["In", "NotIn"])),
                                     "values": draw(st.lists(st.sampled_from(["CAP_SYS_ADMIN", "CAP_NET_RAW"]),
                                                             min_size=1, max_size=2, unique=True))}]
    if "namespaces" in kinds:
        sel["matchNamespaces"] = [{"namespace": draw(st.sampled_from(["Mnt", "Net", "Pid"])),
                                   "operator": draw(st.sampled_from(["In", "NotIn"])), "values": ["host_ns"]}]
    sel["matchActions"] = [{"action": draw(st.sampled_from(["Sigkill", "Sigkill", "NoPost"]))}]
    return sel


@st.composite
def cases(draw: st.DrawFn, files: str, vpy: str) -> dict[str, Any]:
    return {
        "selectors": draw(st.lists(selectors(files, vpy), min_size=1, max_size=3)),
        "user": draw(st.sampled_from([None, NOBODY])),
        "own_namespaces": draw(st.booleans()),   # new mount and network namespaces (root only)
        "calls": draw(st.lists(st.tuples(st.sampled_from(NAMES + ["/etc/hostname", "none"]), st.sampled_from(FLAGS)),
                               min_size=1, max_size=12)),
    }


RUNNER = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
for arg in sys.argv[1:]:
    path, flags = arg.rsplit(":", 1)
    fd = libc.syscall(257, -100, path.encode(), int(flags), 0)
    if fd >= 0:
        libc.close(fd)
"""


def _policy(sels: list[dict[str, Any]], runner: int) -> str:
    pids = {"RUNNER": runner, "PYTEST": os.getpid()}
    sels = yaml.safe_load(yaml.safe_dump(sels))
    for s in sels:
        for mp in s.get("matchPIDs", []):
            mp["values"] = [pids.get(v, v) for v in mp["values"]]
    doc = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "differential"},
           "spec": {"kprobes": [{"call": "sys_openat", "syscall": True,
                                 "args": [{"index": 1, "type": "string"}, {"index": 2, "type": "int"}],
                                 "selectors": sels}]}}
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def case_strategy(env: dict[str, Any]) -> Any:
    return cases(env["files"], str(env["work"] / "vpy"))


@pytest.mark.usefixtures("others_can_resolve_paths")
@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_kernel_decides_like_the_evaluator(running_agent: RunningAgent, env: dict[str, Any], case_strategy: Any,
                                           data: st.DataObject) -> None:
    case = data.draw(case_strategy)
    files = env["files"]
    calls = [(n if n.startswith("/") else f"{files}/{n}", f) for n, f in case["calls"]]
    vpy = str(env["work"] / "vpy")
    own_ns = case["own_namespaces"] and case["user"] is None
    # (nothing is mounted in them: their propagation is left as it is, which a chroot requires)
    prefix = ["/usr/bin/unshare", "--mount", "--propagation", "unchanged", "--net"] if own_ns else []
    g = Gated(env["gate"], [*prefix, vpy, "-S", "-c", RUNNER, *[f"{p}:{f}" for p, f in calls]], user=case["user"])
    try:
        running_agent.collect(lambda: None)  # the agent has seen the gate's exec
        text = _policy(case["selectors"], g.pid)
        with loaded(running_agent, text, mode="monitor") as name:
            events = running_agent.collect(lambda: g.go())
    finally:
        g.close()
    assert g.returncode == 0, g.stderr
    got: Counter = Counter()
    ours = {p for p, _ in calls}
    for b in policy_bodies(events, name):
        if b["process"].get("pid") != g.pid:
            continue
        if b["args"][0]["string_arg"] not in ours:
            continue  # the interpreter's own opens (libraries, locale): not calls of this case
        m = re.search(r"\[vigil: selector (\d+)", b.get("message", ""))
        assert m, b
        got[(b["args"][0]["string_arg"], b["args"][1]["int_arg"], int(m.group(1)) - 1)] += 1
    (policy,) = parse_policies(text)
    kp = policy.spec.kprobes[0]
    rules = HookRules(kp.args, kp.selectors)
    proc = Process(binary=vpy, pid=g.pid, ancestors=(os.getpid(), *ancestors(os.getpid())),
                   namespaces={"mnt": (0, not own_ns), "net": (0, not own_ns), "pid": (0, True)},
                   caps={"effective": ALL_CAPS if case["user"] is None else 0, "permitted": 0, "inheritable": 0})
    want: Counter = Counter()
    for path, flags in calls:
        d = decide(rules, proc, Call((path, flags)), monitor=True)
        assert d.decided, d.unknown
        if d.matched and d.post:
            want[(path, flags, d.selector)] += 1
    assert got == want, (case, text)

