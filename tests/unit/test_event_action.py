"""The `action` and `return_action` of policy events, as Tetragon's: its BPF sets the event's
action at every action it runs, Post and NoPost included, so the event reports the last action
of the deciding selector's list ([Sigkill, Post]: KPROBE_ACTION_POST); a kprobe event's
return_action is always there, Post unless return actions ran (Tetragon's unset return action
is action 0, Post). The record keeps the kernel's choice (the last action other than Post and
NoPost, vigil.sensors.generic_events.kernel_action) for enforcement messages and counters."""
from __future__ import annotations

import itertools
import textwrap
from typing import Any

import pytest

from vigil.agent.policy_events import PolicyEvents
from vigil.events.generic import decode_generic
from vigil.events.synth import generic_record
from vigil.kernel import policy_layout as L
from vigil.sensors import generic_events as G

A = L.ACT
HOOKS = {  # one hook of each kind, with {sel} for its selectors
    "process_kprobe": "kprobes:\n- call: sys_openat\n  syscall: true\n  args: [{index: 1, type: string}]\n{sel}",
    "process_tracepoint": ("tracepoints:\n- subsystem: syscalls\n  event: sys_enter_openat\n"
                           "  args: [{index: 6, type: string}]\n{sel}"),
    "process_lsm": "lsmhooks:\n- hook: file_open\n  args: [{index: 0, type: file}]\n{sel}",
    "process_uprobe": "uprobes:\n- path: /bin/bash\n  symbols: [readline]\n{sel}",
}


def _hook(kind: str, actions: str | None, ret_actions: str | None = None) -> Any:
    from tests.policyfuzz import facts
    from vigil.policy import parse_policies
    from vigil.policy.compile import compile_policy

    sel = ""
    if actions is not None:
        sel = "  selectors:\n  - matchActions: " + actions + "\n"
        if ret_actions is not None:
            sel += ("    matchReturnArgs: [{index: 0, operator: Equal, values: ['0']}]\n"
                    "    matchReturnActions: " + ret_actions + "\n")
    spec = HOOKS[kind].replace("{sel}", sel)
    if ret_actions is not None:
        spec = spec.replace("  syscall: true\n", "  syscall: true\n  return: true\n  returnArg: {index: 0, type: int}\n")
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: act\nspec:\n"
            + textwrap.indent(spec, "  "))
    (policy,) = parse_policies(text, "act.yaml")
    ids = itertools.count(7)
    (ch,) = compile_policy(policy, facts("vm-6.12"), lambda: next(ids), follow_bit=lambda op, v: 0).hooks
    assert ch.placement.event_kind == kind
    return ch


def _body(ch: Any, selector: int, action: int, ret_action: int = 0) -> dict[str, Any]:
    m, data = decode_generic(generic_record(hook_id=ch.hook_id, pid=100, ktime=7, exec_ktime=5,
                                            args=[(b"/etc/passwd", 0, 0, 0)], selector=selector,
                                            action=action, ret_action=ret_action))
    return G.build_body(ch, m, data)


# (the selector's matchActions, or None: no selectors; the event's action)
ACTION_CASES = [
    (None, "KPROBE_ACTION_POST"),
    ("[{action: Post}]", "KPROBE_ACTION_POST"),
    ("[{action: Sigkill}]", "KPROBE_ACTION_SIGKILL"),
    ("[{action: Sigkill}, {action: Post}]", "KPROBE_ACTION_POST"),       # the last action run
    ("[{action: Post}, {action: Sigkill}]", "KPROBE_ACTION_SIGKILL"),
    ("[{action: Signal, argSig: 10}, {action: Post}]", "KPROBE_ACTION_POST"),
    ("[{action: Override, argError: -1}, {action: Post, rateLimit: '1m'}]", "KPROBE_ACTION_POST"),
    ("[{action: Post}, {action: Signal, argSig: 10}]", "KPROBE_ACTION_SIGNAL"),
    ("[{action: GetUrl, argUrl: 'http://x'}, {action: Post}]", "KPROBE_ACTION_POST"),
    ("[{action: Post}, {action: GetUrl, argUrl: 'http://x'}]", "KPROBE_ACTION_GETURL"),
]


# Override is for kprobes and LSM hooks; GetUrl is refused on uprobes (as Tetragon); the rest is
# taken by every kind
CASES = [(kind, actions, want) for kind in sorted(HOOKS) for actions, want in ACTION_CASES
         if not (actions and "Override" in actions and kind not in ("process_kprobe", "process_lsm"))
         and not (actions and "GetUrl" in actions and kind == "process_uprobe")]


@pytest.mark.parametrize("kind,actions,want", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_event_action_is_the_last_action_run(kind: str, actions: str | None, want: str) -> None:
    ch = _hook(kind, actions)
    codes = [G._ACT_BY_LOWER[a.action.lower()] for a in (ch.selectors[0].match_actions if ch.selectors else ())]
    selector = 1 if ch.selectors else 0
    body = _body(ch, selector, G.kernel_action(codes))  # the record as the kernel fills it
    assert body["action"] == want
    if kind == "process_kprobe":
        assert body["return_action"] == "KPROBE_ACTION_POST"  # no return actions ran
    # the compiled handler's plan covers every hook: it has the selectors' reported actions
    assert G.fast_plan(ch, (ch, None), {}, frozenset(), PolicyEvents.action_key) is not None


# (matchReturnActions, whether they ran, the event's return_action)
RETURN_CASES = [
    ("[{action: Post}]", True, "KPROBE_ACTION_POST"),
    ("[{action: Signal, argSig: 10}]", True, "KPROBE_ACTION_SIGNAL"),
    ("[{action: Signal, argSig: 10}, {action: Post}]", True, "KPROBE_ACTION_POST"),
    ("[{action: Post}, {action: Signal, argSig: 10}]", True, "KPROBE_ACTION_SIGNAL"),
    ("[{action: Signal, argSig: 10}]", False, "KPROBE_ACTION_POST"),
]


@pytest.mark.parametrize("ret_actions,ran,want", RETURN_CASES, ids=[f"{c[0]}-{c[1]}" for c in RETURN_CASES])
def test_kprobe_return_action_is_the_last_return_action_run(ret_actions: str, ran: bool, want: str) -> None:
    ch = _hook("process_kprobe", "[{action: Post}]", ret_actions)
    codes = [G._ACT_BY_LOWER[a.action.lower()] for a in ch.selectors[0].match_return_actions]
    body = _body(ch, 1, A["Post"], G.kernel_action(codes) if ran else 0)
    assert (body["action"], body["return_action"]) == ("KPROBE_ACTION_POST", want)
    assert G.fast_plan(ch, (ch, None), {}, frozenset(), PolicyEvents.action_key) is not None  # compiled too (test_fastpath)


# (matchActions, the user-space actions an event of the selector asks for): Tetragon's agent runs
# the GetUrl/DnsLookup the event's action names, the last action run: only the selector's last
URL, FQDN = "{action: GetUrl, argUrl: 'http://127.0.0.1/x'}", "{action: DnsLookup, argFqdn: 'localhost'}"
USER_ACTION_CASES = [
    (f"[{URL}]", [("GetUrl", "http://127.0.0.1/x")]),
    (f"[{FQDN}]", [("DnsLookup", "localhost")]),
    (f"[{{action: Post}}, {URL}]", [("GetUrl", "http://127.0.0.1/x")]),
    (f"[{URL}, {{action: Post}}]", []),
    (f"[{URL}, {{action: NoPost}}]", []),
    (f"[{URL}, {FQDN}]", [("DnsLookup", "localhost")]),
    (f"[{FQDN}, {URL}]", [("GetUrl", "http://127.0.0.1/x")]),
    (f"[{URL}, {{action: Signal, argSig: 10}}]", []),
    ("[{action: Post}]", []),
]


@pytest.mark.parametrize("actions,want", USER_ACTION_CASES, ids=[c[0] for c in USER_ACTION_CASES])
def test_user_actions_run_only_as_the_selectors_last_action(actions: str, want: list[tuple[str, str]]) -> None:
    from vigil.agent.policy_events import PolicyEvents
    from vigil.sensors.user_actions import requested

    ch = _hook("process_kprobe", actions)
    assert requested(ch, 1) == want
    # through the Python handler: what it submits for a record as the kernel fills it
    codes = [G._ACT_BY_LOWER[a.action.lower()] for a in ch.selectors[0].match_actions]
    submitted: list[tuple[str, str]] = []
    builder = _StubBuilder()
    pe = PolicyEvents(builder, lambda e: None, {ch.hook_id: (ch, None)},  # type: ignore[arg-type]
                      type("UA", (), {"submit": lambda self, k, t: submitted.append((k, t))})())
    rec = generic_record(hook_id=ch.hook_id, pid=100, ktime=7, exec_ktime=5, args=[(b"/etc/passwd", 0, 0, 0)],
                         selector=1, action=G.kernel_action(codes))
    ev = pe.handle(rec, 0)
    assert submitted == want and ev is not None and ev.body["action"] == G.reported_action(codes)


class _StubBuilder:
    """What PolicyEvents.handle asks of the process stage, for a process it does not know."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.cache = SimpleNamespace(_by_key={}, by_pid=lambda pid: None, missed=lambda pid, ktime: None)
        self.missing_info = 0
        self.node = ""

    def ktime_rfc3339(self, ktime: int) -> str:
        return "1970-01-01T00:00:00Z"


# (matchActions, the user-space action wanted) of a policy in monitor mode: its records carry
# EV_MONITOR when an enforcing action before the user action was only reported. Tetragon's
# monitor mode turns the enforcing actions into monitor_* ones alone (do_action's enforce_mode):
# GetUrl and DnsLookup still set the action argument and its agent runs them whatever the mode
MONITOR_USER_ACTION_CASES = [
    (f"[{{action: Sigkill}}, {URL}]", [("GetUrl", "http://127.0.0.1/x")]),
    (f"[{{action: Override, argError: -1}}, {FQDN}]", [("DnsLookup", "localhost")]),
    (f"[{{action: Signal, argSig: 10}}, {URL}]", [("GetUrl", "http://127.0.0.1/x")]),
    (f"[{URL}]", [("GetUrl", "http://127.0.0.1/x")]),
    (f"[{URL}, {{action: Sigkill}}]", []),
]


@pytest.mark.parametrize("actions,want", MONITOR_USER_ACTION_CASES, ids=[c[0] for c in MONITOR_USER_ACTION_CASES])
def test_user_actions_run_in_monitor_mode(actions: str, want: list[tuple[str, str]]) -> None:
    from vigil.agent.policy_events import PolicyEvents

    ch = _hook("process_kprobe", actions)
    codes = [G._ACT_BY_LOWER[a.action.lower()] for a in ch.selectors[0].match_actions]
    submitted: list[tuple[str, str]] = []
    pe = PolicyEvents(_StubBuilder(), lambda e: None, {ch.hook_id: (ch, None)},  # type: ignore[arg-type]
                      type("UA", (), {"submit": lambda self, k, t: submitted.append((k, t))})())
    rec = generic_record(hook_id=ch.hook_id, pid=100, ktime=7, exec_ktime=5, args=[(b"/etc/passwd", 0, 0, 0)],
                         selector=1, action=G.kernel_action(codes), flags=L.EV_MONITOR)
    ev = pe.handle(rec, 0)
    assert submitted == want and ev is not None and ev.body["action"] == G.reported_action(codes)
