"""Grouped `vigil policy explain` text: one line per hook and mechanism, -v for every call."""
from __future__ import annotations

from vigil.cli.explain_view import error_lines, hook_lines


def _hooks(section: str, index: int, calls: list[str], fmt: str) -> list[dict]:
    return [{"section": section, "index": index, "target": c, "runs_on": fmt.format(c[4:])} for c in calls]


def test_expanded_list_prints_one_line_per_mechanism():
    calls = [f"sys_call{i}" for i in range(40)]
    hooks = _hooks("kprobes", 0, calls, "tracepoint:syscalls/sys_enter_{}")
    hooks += _hooks("kprobes", 0, ["sys_execve"], "fanotify:exec; Override of sys_{} enforced by fanotify")
    lines = hook_lines(hooks)
    assert lines == [
        "kprobes[0] 40 calls (sys_call0, sys_call1, sys_call2, sys_call3, sys_call4, sys_call5 and 34 more): "
        "tracepoint:syscalls/sys_enter_*",
        "kprobes[0] 1 call (sys_execve): fanotify:exec; Override of sys_* enforced by fanotify",
    ]
    assert len(hook_lines(hooks, verbose=True)) == 41


def test_short_hooks_are_not_grouped_and_order_is_kept():
    hooks = _hooks("kprobes", 0, ["sys_openat"], "tracepoint:syscalls/sys_enter_{}")
    hooks += _hooks("tracepoints", 0, ["sched/sched_process_exec"], "tracepoint:sched/sched_process_exec")
    assert hook_lines(hooks) == ["kprobes[0] sys_openat: tracepoint:syscalls/sys_enter_openat",
                                 "tracepoints[0] sched/sched_process_exec: tracepoint:sched/sched_process_exec"]


def test_a_stem_inside_another_name_is_not_replaced():
    hooks = _hooks("kprobes", 1, ["sys_accept", "sys_accept4", "sys_acct", "sys_access"],
                   "tracepoint:syscalls/sys_enter_{}")
    assert hook_lines(hooks) == ["kprobes[1] 4 calls (sys_accept, sys_accept4, sys_acct, sys_access): "
                                 "tracepoint:syscalls/sys_enter_*"]


def test_identical_refusals_of_expanded_calls_print_once():
    pre = "p.yaml:9:5: spec.kprobes[2]: kprobes[2]"
    errs = [f"{pre} (sys_{c}): this kernel cannot refuse sys_{c} before it takes effect (no LSM hook guards it)"
            for c in ("rmdir", "chmod", "chown")]
    other = f"{pre} (sys_mkdir): needs the BPF LSM hook path_mkdir"
    lines = error_lines([errs[0], other, *errs[1:], "p.yaml:1:1: unrelated"])
    assert lines == [
        f"{pre} (3 calls: sys_rmdir, sys_chmod, sys_chown): this kernel cannot refuse sys_* before it takes "
        "effect (no LSM hook guards it)",
        other,
        "p.yaml:1:1: unrelated",
    ]
    assert error_lines(errs, verbose=True) == errs
