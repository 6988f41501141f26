"""A kprobe's `data` (values from its pt_regs or the current task) and matchData on them,
compiled against recorded kernels: the data entries take the slots after the args, matchData
filters on them, and pt_regs data is read only where the hook really runs as a kprobe (the
others refuse it at data[j].source, saying where the hook runs and why)."""
from __future__ import annotations

import itertools

import pytest

from tests.unit.test_policy_compile import HOST, VM, one
from vigil.kernel import policy_layout as L
from vigil.kernel.facts import KernelFacts
from vigil.policy import PolicyErrors
from vigil.policy.compile import compile_policy, unsupported
from vigil.policy.explain import explain_policy

IDEAL = KernelFacts.ideal()
KERNELS = {"host": HOST, "vm": VM, "ideal": IDEAL}
REGS = "{index: 0, type: int32, source: pt_regs, resolve: edx}"
REGS_DI = "{index: 0, type: uint64, source: pt_regs, resolve: rdi}"
TASK = "{index: 0, type: int32, source: current_task, resolve: tgid}"
MKDIR = "call: security_inode_mkdir, syscall: false, args: [{index: 2, type: int}]"
OVERRIDE = "matchActions: [{action: Override, argError: -1}]"

# (case, the kprobes entry, kernel, stand-ins on, the hook's mechanism and its data slots
# [(slot, source)] and the selector's filter slots -- or the error's words)
CASES = [
    ("regs-makes-a-kprobe", f"{{{MKDIR}, data: [{REGS}], selectors: [{{matchData: [{{index: 0, operator: Equal, "
     "values: ['448']}]}]}", "vm", False, ("kprobe", [(1, L.SRC_USDT)], [1])),
    ("task-keeps-the-fentry", f"{{{MKDIR}, data: [{TASK}]}}", "ideal", False, ("fentry", [(1, L.SRC_TASK)], [])),
    ("second-entry-with-match-args", f"{{{MKDIR}, data: [{REGS_DI}, {REGS}], selectors: [{{matchArgs: [{{index: 2, "
     "operator: Equal, values: ['448']}], matchData: [{index: 1, operator: Equal, values: ['448']}]}]}", "vm", False,
     ("kprobe", [(1, L.SRC_USDT), (2, L.SRC_USDT)], [0, 2])),
    ("task-on-a-syscall-tracepoint", f"{{call: sys_mkdirat, args: [{{index: 2, type: int}}], data: [{TASK}], "
     "selectors: [{matchData: [{index: 0, operator: Equal, values: ['1']}]}]}", "ideal", False,
     ("tracepoint", [(1, L.SRC_TASK)], [1])),
    ("regs-on-a-syscall-tracepoint", f"{{call: sys_mkdirat, data: [{REGS}]}}", "host", False,
     "spec.kprobes[0].data[0].source: kprobes[0] (sys_mkdirat): data[0] reads register edx from pt_regs, which a "
     "hook has only where it runs as a kprobe; __x64_sys_mkdirat runs here as tracepoint:sys_enter_mkdirat: Vigil "
     "hooks a syscall at its tracepoint, which has no kprobe registers"),
    ("regs-on-a-stand-in", f"{{call: tcp_connect, syscall: false, data: [{REGS}]}}", "host", True,
     "spec.kprobes[0].data[0].source: kprobes[0] (tcp_connect): data[0] reads register edx from pt_regs, which a hook "
     "has only where it runs as a kprobe; tcp_connect runs here as the stand-in "
     "sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB: a stand-in runs where this kernel has no kprobe for the function"),
    ("regs-with-fmod-ret-override", f"{{{MKDIR}, data: [{REGS}], selectors: [{{{OVERRIDE}}}]}}", "vm", False,
     "data[0] reads register edx from pt_regs, which a hook has only where it runs as a kprobe; security_inode_mkdir "
     "runs here as fmod_ret:security_inode_mkdir: a fmod_ret program is given the function's arguments, not pt_regs"),
    ("data-where-fanotify-enforces", f"{{call: sys_openat, data: [{TASK}], selectors: [{{{OVERRIDE}}}]}}", "host",
     False, "spec.kprobes[0].data: kprobes[0] (sys_openat): data cannot be read where __x64_sys_openat is enforced "
     "by fanotify"),
    ("args-and-data-past-five-slots", "{call: security_inode_mkdir, syscall: false, args: [{index: 0, type: int}, "
     "{index: 1, type: int}, {index: 2, type: int}], data: [" + REGS_DI + ", " + REGS + ", " + REGS + "]}",
     "vm", False, "args and data share 5 argument slots; this data entry is the 6th"),
]


@pytest.mark.parametrize("case, hook, kernel, sub, want", CASES, ids=[c[0] for c in CASES])
def test_kprobe_data_placement(case: str, hook: str, kernel: str, sub: bool,
                               want: tuple[str, list[tuple[int, int]], list[int]] | str) -> None:
    p = one(f"kprobes:\n- {hook}" if "fentries" not in hook else hook)
    ids = itertools.count(1)
    if isinstance(want, str):
        with pytest.raises(PolicyErrors) as e:
            compile_policy(p, KERNELS[kernel], lambda: next(ids), follow_bit=lambda op, v: 0, substitute=sub)
        assert any(want in str(x) for x in e.value.errors), [str(x) for x in e.value.errors]
        return
    mechanism, data, filters = want
    cp = compile_policy(p, KERNELS[kernel], lambda: next(ids), follow_bit=lambda op, v: 0, substitute=sub)
    (ch,) = cp.hooks
    assert ch.placement.mechanism == mechanism
    assert [(a.slot, a.src) for a in ch.placement.args if a.data] == data
    assert ch.config.nargs == len(ch.placement.args)
    s = ch.config.sel[0]
    assert [s.args[j].slot for j in range(s.nfilters)] == filters


def test_fentries_refuse_pt_regs_data() -> None:
    """An fentry is given the function's arguments: pt_regs data is refused there (current_task
    data is read)."""
    p = one(f"fentries:\n- {{{MKDIR}, data: [{REGS_DI}, {REGS}]}}")
    ids = itertools.count(1)
    with pytest.raises(PolicyErrors) as e:
        compile_policy(p, VM, lambda: next(ids), follow_bit=lambda op, v: 0)
    assert [str(x).split(": ", 1)[1] for x in e.value.errors][1:] == [
        "spec.fentries[0].data[1].source: fentries[0] (security_inode_mkdir): data[1] reads register edx from "
        "pt_regs, which a hook has only where it runs as a kprobe; security_inode_mkdir runs here as "
        "fentry:security_inode_mkdir: an fentry is given the function's arguments, not pt_regs (use kprobes)"]


# (hook, stand-ins on, what validate (no kernel) finds, explain's words on this host's recording
# (neither kprobes nor fentry), or on the 6.12 guest's where the hook loads)
EXPLAIN = [
    (f"{{{MKDIR}, data: [{REGS_DI}, {REGS}], selectors: [{{matchData: [{{index: 1, operator: Equal, "
     "values: ['1']}]}]}", False, [], "vm", "kprobe:security_inode_mkdir"),
    (f"{{call: sys_mkdirat, data: [{REGS}]}}", False, ["data[0] reads register edx from pt_regs"], "host",
     "Vigil hooks a syscall at its tracepoint, which has no kprobe registers"),
    (f"{{call: tcp_connect, syscall: false, data: [{REGS}]}}", True, [], "host",
     "runs here as the stand-in sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB: a stand-in runs where this kernel has no "
     "kprobe for the function"),
]


@pytest.mark.parametrize("hook, sub, offline, kernel, words", EXPLAIN)
def test_validate_and_explain_say_why(hook: str, sub: bool, offline: list[str], kernel: str, words: str) -> None:
    """validate (no kernel) accepts kprobe data and matchData and names only what Vigil cannot
    do on any kernel; explain says where the hook runs, and why pt_regs data cannot be read
    where it does not run as a kprobe."""
    p = one(f"kprobes:\n- {hook}")
    found = [e.message for e in unsupported(p)]
    assert len(found) == len(offline) and all(w in f for w, f in zip(offline, found)), found
    ex = explain_policy(p, KERNELS[kernel], substitute=sub)
    assert ex["loadable"] == (kernel == "vm")
    assert words in str(ex)


# (the hook's data entries, the record's data slot values, the event's data list: uint64 is a size_arg as in Tetragon)
DECODE = [
    (f"[{REGS}]", [448], [{"int_arg": 448}]),
    (f"[{REGS_DI}, {REGS}]", [2 ** 64 - 1, 488], [{"size_arg": str(2 ** 64 - 1)}, {"int_arg": 488}]),
]


@pytest.mark.parametrize("data, values, want", DECODE)
def test_kprobe_data_is_the_events_last_list(data: str, values: list[int], want: list[dict]) -> None:
    """A kprobe record's data slots (after the args') become the event's `data` list, its last
    field (Tetragon's ProcessKprobe field 14, after ancestors), not more args; the compiled
    event handler leaves such hooks to build_body (no plan), which writes them."""
    from vigil.agent.policy_events import PolicyEvents
    from vigil.events.generic import decode_generic
    from vigil.events.synth import generic_record
    from vigil.sensors import generic_events as G

    p = one(f"kprobes:\n- {{{MKDIR}, data: {data}}}")
    ids = itertools.count(7)
    (ch,) = compile_policy(p, VM, lambda: next(ids), follow_bit=lambda op, v: 0).hooks
    assert G.fast_plan(ch, (ch, None), {}, frozenset(), PolicyEvents.action_key) is None
    m, raw = decode_generic(generic_record(hook_id=ch.hook_id, pid=100, ktime=7, exec_ktime=5,
                                           args=[(b"", v, 0, 0) for v in [448, *values]], action=L.ACT["Post"]))
    body = G.build_body(ch, m, raw)
    assert body["args"] == [{"int_arg": 448}]
    assert body["data"] == want
    assert list(body)[-1] == "data"
    from vigil.api.convert import to_proto  # the gRPC message's ProcessKprobe.data (field 14)

    msg = to_proto({"process_kprobe": {"function_name": body["function_name"], "data": body["data"]},
                    "node_name": "n", "time": "2026-01-01T00:00:00Z"})
    assert len(msg.process_kprobe.data) == len(want)
    assert msg.process_kprobe.DESCRIPTOR.fields_by_name["data"].number == 14
