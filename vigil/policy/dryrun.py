"""Dry-run: what a policy would have done to a recorded stream of events (pure; no kernel).

Each recorded event that one of the policy's hooks would have seen is turned into the facts
the selectors read (`evaluate.Process`, `evaluate.Call`) and decided by the reference
evaluator. Which events a hook sees:

* `process_kprobe` / `process_tracepoint` / `process_lsm` / `process_uprobe` events of the same
  call (the recording was made with a policy observing it, e.g. this one in monitor mode);
* for exec hooks (`sys_execve`, `sys_execveat`, `security_bprm_check`, LSM `bprm_*`,
  `sched/sched_process_exec`) that have no such events, every `process_exec`: the executed
  binary is the path argument; hooks that run before the exec see the caller as it was (the
  previous image of the same pid, else the parent it was forked from).

Anything a selector needs that the recording does not hold is counted as undecidable, with the
reason, never guessed. Rate limits are simulated from the event times per selector, scope and
arguments (the kernel digests the first 32 bytes of each argument; the simulation the whole).
"""
from __future__ import annotations

import base64
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from . import enums
from .evaluate import NS_KEYS, Call, Decision, HookRules, Process, Sock, Unknown, decide, pod_selector_match
from .findings import Correlator, finding_sequence
from .model import KProbeSpec, Policy, Selector, UProbeSpec
from .values import parse_duration

Event = dict[str, Any]
KINDS = ("process_kprobe", "process_tracepoint", "process_lsm", "process_uprobe")
CAP_BITS = {**enums.CAPABILITIES, "DAC_OVERRIDE": 1}
AF = dict(enums.AF)
PROTO = dict(enums.IPPROTO)
TCP = dict(enums.TCP_STATES)

# exec hooks fed from process_exec events: call -> (position of the path among the hook's
# `index`es, True when the hook runs before the new image replaces the caller)
EXEC_KPROBES = {"sys_execve": (0, True), "sys_execveat": (1, True), "security_bprm_check": (0, True),
                "security_bprm_creds_for_exec": (0, True), "security_bprm_creds_from_file": (0, True),
                "security_bprm_committing_creds": (0, True)}
EXEC_LSM = {"bprm_check_security": (0, True), "bprm_creds_for_exec": (0, True),
            "bprm_creds_from_file": (0, True), "bprm_committing_creds": (0, True),
            "bprm_committed_creds": (0, False)}
# sched/sched_process_exec format: common fields 0-3, then filename (4), pid (5), old_pid (6)
SCHED_EXEC_FIELDS = {4: "filename", 5: "pid", 6: "old_pid"}


def call_name(name: str) -> str:
    """`__x64_sys_openat`, `sys_openat` -> `sys_openat`; other kernel functions unchanged."""
    for p in ("__x64_", "__arm64_", "__ia32_compat_", "__ia32_"):
        if name.startswith(p + "sys_"):
            return name[len(p):]
    return name


@dataclass
class HookView:
    section: str
    index: int
    kind: str                          # process_kprobe | process_tracepoint | process_lsm | process_uprobe
    keys: tuple[str, ...]              # what recorded events name: call names, subsys/event, hook, path:symbol
    rules: HookRules
    spec: Any
    exec_source: dict[str, tuple[int, bool]] = field(default_factory=dict)  # key -> exec synthesis

    @property
    def target(self) -> str:
        if len(self.keys) == 1:
            return self.keys[0]
        return f"{len(self.keys)} calls ({', '.join(self.keys[:3])}{', ...' if len(self.keys) > 3 else ''})"


def hooks_of(policy: Policy) -> list[HookView]:
    spec = policy.spec
    lists = {ls.name: ls for ls in spec.lists}
    out: list[HookView] = []
    for section in ("kprobes", "fentries"):
        for i, kp in enumerate(getattr(spec, section)):
            calls = _expand(policy, kp)
            rules = HookRules(kp.args, kp.selectors, lists=lists, ret_type=_ret_type(kp))
            hv = HookView(section, i, "process_kprobe", tuple(calls), rules, kp)
            for c in calls:
                if c in EXEC_KPROBES:
                    hv.exec_source[c] = EXEC_KPROBES[c]
            out.append(hv)
    for i, tp in enumerate(spec.tracepoints):
        key = f"{tp.subsystem}/{tp.event}"
        hv = HookView("tracepoints", i, "process_tracepoint", (key,),
                      HookRules(tp.args, tp.selectors, tracepoint=not tp.raw, lists=lists), tp)
        if key == "sched/sched_process_exec" and not tp.raw:
            hv.exec_source[key] = (-1, False)
        out.append(hv)
    for i, lh in enumerate(spec.lsmhooks):
        hv = HookView("lsmhooks", i, "process_lsm", (lh.hook,), HookRules(lh.args, lh.selectors, lists=lists), lh)
        if lh.hook in EXEC_LSM:
            hv.exec_source[lh.hook] = EXEC_LSM[lh.hook]
        out.append(hv)
    for i, up in enumerate(spec.uprobes):
        keys = tuple(f"{up.path}:{s}" for s in up.symbols) or (up.path,)
        out.append(HookView("uprobes", i, "process_uprobe", keys,
                            HookRules(up.args, up.selectors, lists=lists, ret_type=_ret_type(up)), up))
    return out


def _ret_type(spec: KProbeSpec | UProbeSpec) -> str:
    return spec.return_arg.type if spec.return_ and spec.return_arg is not None else ""


def _expand(policy: Policy, kp: KProbeSpec) -> list[str]:
    if not kp.call.startswith("list:"):
        return [call_name(kp.call)]
    lst = policy.spec.list_named(kp.call[5:])
    if lst is None:
        return []
    if lst.type == "generated_syscalls":
        from .syscalls import SYSCALL_NAMES

        return [f"sys_{n}" for n in sorted(SYSCALL_NAMES)]
    return [call_name(v if v.startswith(("sys_", "__")) else f"sys_{v}") for v in lst.values]


# ---------------------------------------------------------------- facts from event JSON
class ProcessTracker:
    """What the stream told us about processes, for ancestry and pre-exec images."""

    def __init__(self) -> None:
        self.by_exec_id: dict[str, tuple[int, str, str]] = {}   # exec_id -> (pid, binary, parent_exec_id)
        self.last_binary: dict[int, str] = {}                   # pid -> binary of its latest exec

    def learn(self, proc: Mapping[str, Any] | None) -> None:
        if not proc or not proc.get("exec_id"):
            return
        self.by_exec_id.setdefault(proc["exec_id"], (int(proc.get("pid") or 0), str(proc.get("binary", "")),
                                                     str(proc.get("parent_exec_id", ""))))

    def chain(self, parent: Mapping[str, Any] | None, depth: int = 8) -> tuple[tuple[int, ...], tuple[str, ...], bool]:
        """(pids, binaries, complete) of the parent and its ancestors, nearest first."""
        if not parent:
            return (), (), False
        pids, bins = [int(parent.get("pid") or 0)], [str(parent.get("binary", ""))]
        nxt = str(parent.get("parent_exec_id", ""))
        while len(pids) < depth:
            if pids[-1] <= 1:
                return tuple(pids), tuple(bins), True
            info = self.by_exec_id.get(nxt)
            if info is None:
                return tuple(pids), tuple(bins), False
            pids.append(info[0])
            bins.append(info[1])
            nxt = info[2]
        return tuple(pids), tuple(bins), True


def caps_of(proc: Mapping[str, Any]) -> dict[str, int] | None:
    cap = proc.get("cap")
    if cap is None:
        if "process_credentials" in proc:
            return {"effective": 0, "permitted": 0, "inheritable": 0}  # credentials on, no caps
        return None
    out = {}
    for k in ("effective", "permitted", "inheritable"):
        m = 0
        for name in cap.get(k) or ():
            bit = CAP_BITS.get(name) if isinstance(name, str) else int(name)
            if bit is not None:
                m |= 1 << bit
        out[k] = m
    return out


def namespaces_of(proc: Mapping[str, Any]) -> dict[str, tuple[int, bool]] | None:
    ns = proc.get("ns")
    if not isinstance(ns, dict):
        return None
    return {k: (int((ns.get(k) or {}).get("inum") or 0), bool((ns.get(k) or {}).get("is_host")))
            for k in NS_KEYS if k in ns}


def process_facts(body: Mapping[str, Any], tracker: ProcessTracker, *, before_exec: bool = False) -> Process:
    proc = body.get("process") or {}
    parent = body.get("parent") or {}
    pids, bins, complete = tracker.chain(parent)
    ns = namespaces_of(proc)
    pid = proc.get("pid")
    nspid = None
    if ns is not None and ns.get("pid", (0, False))[1]:
        nspid = pid
    elif (proc.get("pod") or {}).get("container", {}).get("pid") is not None:
        nspid = proc["pod"]["container"]["pid"]
    binary = proc.get("binary")
    if before_exec:
        # the caller of execve is the image before this one: the pid's previous exec, else
        # the parent it was forked from
        binary = tracker.last_binary.get(int(pid or 0)) or parent.get("binary")
    pod = proc.get("pod")
    return Process(
        binary=binary, pid=int(pid) if pid is not None else None, nspid=nspid,
        ancestors=pids if complete else None, ancestor_binaries=bins if complete else None,
        parent_binary=parent.get("binary"), namespaces=ns, caps=caps_of(proc) if not before_exec else
        (caps_of(parent) if parent else None),
        pod=pod if pod is not None else ({} if "docker" not in proc else None))


def _sock(d: Mapping[str, Any], sockaddr: bool) -> Sock | None:
    fam = d.get("family", 0)
    family = AF.get(fam, 0) if isinstance(fam, str) else int(fam)
    if isinstance(fam, str) and fam not in AF:
        try:
            family = int(fam)
        except ValueError:
            return None
    if sockaddr:
        return Sock.sockaddr(family, d.get("addr") or None, int(d.get("port") or 0))
    import ipaddress

    def ip(s: str | None) -> Any:
        return ipaddress.ip_address(s) if s else None

    proto = d.get("protocol", 0)
    state = d.get("state", 0)
    return Sock(family, ip(d.get("saddr")), ip(d.get("daddr")), int(d.get("sport") or 0), int(d.get("dport") or 0),
                PROTO.get(proto, 0) if isinstance(proto, str) else int(proto),
                TCP.get(state, 0) if isinstance(state, str) else int(state))


def arg_value(a: Mapping[str, Any]) -> Any:
    """The value a selector compares, from one exported argument (None: not comparable, also
    when the argument's value is not of its kind: "size_arg": "abc")."""
    try:
        return _arg_value(a)
    except (ValueError, TypeError, AttributeError):   # (binascii.Error is a ValueError)
        return None


def _arg_value(a: Mapping[str, Any]) -> Any:
    if "string_arg" in a:
        return a["string_arg"]
    for k in ("file_arg", "path_arg", "linux_binprm_arg"):
        if k in a:
            return (a[k] or {}).get("path", "")
    if "bytes_arg" in a:
        return base64.b64decode(a["bytes_arg"])
    if "truncated_bytes_arg" in a:
        return base64.b64decode((a["truncated_bytes_arg"] or {}).get("bytes_arg", ""))
    for k in ("int_arg", "uint_arg", "long_arg", "size_arg"):
        if k in a:
            return int(a[k])
    if "sockaddr_arg" in a:
        return _sock(a["sockaddr_arg"] or {}, True)
    if "sock_arg" in a:
        return _sock(a["sock_arg"] or {}, False)
    if "capability_arg" in a:
        return int((a["capability_arg"] or {}).get("value") or 0)
    if "syscall_id" in a:
        return int((a["syscall_id"] or {}).get("id") or 0)
    if "bpf_cmd_arg" in a:
        v = a["bpf_cmd_arg"]
        return enums.BPF_CMDS.get(v, v if isinstance(v, int) else None)
    return None


def _ret_value(body: Mapping[str, Any]) -> int | None:
    r = body.get("return")
    if not isinstance(r, dict):
        return None
    v = arg_value(r)
    return v if isinstance(v, int) else None


def call_from_event(hv: HookView, body: Mapping[str, Any]) -> Call:
    """The hook's arguments by position, from the recorded event's args (recorded `nop`
    arguments are not exported, so positions skip them)."""
    recorded = list(body.get("args") or [])
    values: list[Any] = []
    k = 0
    for a in hv.rules.args:
        if a.type == "nop":
            values.append(None)
            continue
        values.append(arg_value(recorded[k]) if k < len(recorded) and isinstance(recorded[k], dict) else None)
        k += 1
    return Call(tuple(values), _ret_value(body))


def call_from_exec(hv: HookView, key: str, body: Mapping[str, Any]) -> Call:
    proc = body.get("process") or {}
    binary = proc.get("binary")
    pos, _ = hv.exec_source[key]
    values: list[Any] = []
    for a in hv.rules.args:
        if key == "sched/sched_process_exec":
            f = SCHED_EXEC_FIELDS.get(a.index)
            values.append(binary if f == "filename" else proc.get("pid") if f else None)
        else:
            values.append(binary if a.index == pos else None)
    return Call(tuple(values))


# ---------------------------------------------------------------- the report
@dataclass
class SelectorStats:
    label: str
    summary: str
    matched: int = 0
    posted: int = 0
    rate_limited: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)         # Sigkill/Override/Signal/(monitor ...)
    processes: Counter[tuple[str, str]] = field(default_factory=Counter)        # (binary, pod) -> count
    samples: list[str] = field(default_factory=list)


@dataclass
class HookReport:
    section: str
    index: int
    target: str
    source: str = ""                   # "events", "process_exec" or "" (nothing in the recording)
    seen: int = 0
    no_match: int = 0
    posted_without_selectors: int = 0
    selectors: list[SelectorStats] = field(default_factory=list)
    undecidable: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


@dataclass
class DryRunReport:
    policy: str
    mode: str
    events: int = 0
    hooks: list[HookReport] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    findings: list[Event] = field(default_factory=list)
    out_of_scope: int = 0

    def totals(self) -> dict[str, int]:
        t: Counter[str] = Counter()
        for h in self.hooks:
            t["posted"] += h.posted_without_selectors
            for s in h.selectors:
                t["posted"] += s.posted
                for k, n in s.outcomes.items():
                    t[k] += n
            t["undecidable"] += sum(h.undecidable.values())
        t["findings"] = len(self.findings)
        return dict(t)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "mode": self.mode, "events": self.events, "totals": self.totals(),
            "out_of_scope": self.out_of_scope, "missing": self.missing,
            "hooks": [{
                "hook": f"{h.section}[{h.index}]", "target": h.target, "source": h.source, "seen": h.seen,
                "no_match": h.no_match, "posted_without_selectors": h.posted_without_selectors,
                "undecidable": dict(h.undecidable), "notes": h.notes,
                "selectors": [{"selector": i + 1, "label": s.label, "summary": s.summary, "matched": s.matched,
                               "posted": s.posted, "rate_limited": s.rate_limited, "outcomes": dict(s.outcomes),
                               "processes": [{"binary": b, "pod": pod, "count": n}
                                             for (b, pod), n in s.processes.most_common()]}
                              for i, s in enumerate(h.selectors)]} for h in self.hooks],
            "findings": self.findings,
        }


def selector_summary(sel: Selector) -> str:
    parts = [f"args[{e.index}] {e.operator} {list(e.values)}" for e in sel.match_args]
    parts += [f"binary {b.operator} {list(b.values)}" for b in sel.match_binaries]
    parts += [f"pid {p.operator} {list(p.values)}" for p in sel.match_pids]
    parts += [f"{n.namespace} ns {n.operator} {list(n.values)}" for n in sel.match_namespaces]
    parts += [f"{c.type.lower()} caps {c.operator} {list(c.values)}" for c in sel.match_capabilities]
    parts += [f"ns changes {c.operator} {list(c.values)}" for c in sel.match_namespace_changes]
    parts += [f"cap changes {c.operator} {list(c.values)}" for c in sel.match_capability_changes]
    acts = ", ".join(a.action + (f" {a.arg_error}" if a.action.lower() == "override" else "")
                     for a in sel.match_actions) or "Post"
    return ("; ".join(parts) or "any call") + f" -> {acts}"


_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")


def _time_ns(t: Any) -> int | None:
    m = _TIME.match(t or "") if isinstance(t, str) else None
    if not m:
        return None
    from datetime import datetime

    secs = int(datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    return secs * 1_000_000_000 + int((m.group(2) or "0").ljust(9, "0"))


def _outcome(d: Decision) -> str:
    what = {"Sigkill": "killed", "Override": "denied", "Signal": "signalled"}.get(d.enforce, "")
    return f"{what} (monitor mode: reported only)" if what and d.monitor else what


def dry_run(policy: Policy, events: Iterable[Event], *, mode: str | None = None,
            sample_limit: int = 5) -> DryRunReport:
    """Replay `events` through the policy's selectors."""
    events = list(events)
    mode = mode or policy.mode
    monitor = mode == "monitor"
    rep = DryRunReport(policy.name, mode, len(events))
    views = hooks_of(policy)
    tracker = ProcessTracker()
    for e in events:  # ancestry from every process the stream mentions
        body = e.get(next(iter(e), ""), None)
        if isinstance(body, dict):
            tracker.learn(body.get("process"))
            tracker.learn(body.get("parent"))
    recorded: set[tuple[str, str]] = set()
    for e in events:
        for kind in KINDS:
            if kind in e:
                recorded.add((kind, _event_key(kind, e[kind])))
    index: dict[tuple[str, str], list[tuple[HookView, HookReport]]] = {}
    exec_hooks: list[tuple[HookView, str, HookReport]] = []
    for hv in views:
        hr = HookReport(hv.section, hv.index, hv.target,
                        selectors=[SelectorStats(s.label, selector_summary(s)) for s in hv.rules.selectors])
        rep.hooks.append(hr)
        have = [k for k in hv.keys if (hv.kind, k) in recorded]
        for k in hv.keys:
            index.setdefault((hv.kind, k), []).append((hv, hr))
        if have:
            hr.source = "events"
        for k, (_pos, before) in hv.exec_source.items():
            if (hv.kind, k) not in recorded:
                exec_hooks.append((hv, k, hr))
                hr.source = hr.source or "process_exec"
                hr.notes.append(f"{k}: replayed from process_exec events (the path argument is the executed "
                                f"binary{'; the caller is the image before the exec' if before else ''})")
        if not hr.source:
            rep.missing.append(f"{hv.section}[{hv.index}] {hv.target}: no events of it in the recording; record with "
                               f"a policy observing it (for example this one with `policy-mode: monitor`)")
    seq = finding_sequence(policy)
    correlator = Correlator(policy.name, seq) if seq is not None else None
    last_post: dict[tuple[object, ...], int] = {}
    scope_ok = (policy.spec.pod_selector is not None or policy.spec.container_selector is not None
                or policy.namespaced)
    for e in events:
        if "process_exec" in e:
            body = e["process_exec"] or {}
            for hv, key, hr in exec_hooks:
                before = hv.exec_source[key][1]
                _decide_one(rep, hv, hr, body, e, process_facts(body, tracker, before_exec=before),
                            call_from_exec(hv, key, body), monitor, last_post, correlator, scope_ok, policy,
                            sample_limit)
            proc = body.get("process") or {}
            if proc.get("pid") is not None and proc.get("binary"):
                tracker.last_binary[int(proc["pid"])] = proc["binary"]
            continue
        if "process_exit" in e and correlator is not None:
            correlator.exited(((e["process_exit"] or {}).get("process") or {}).get("exec_id", ""))
        for kind in KINDS:
            if kind not in e:
                continue
            body = e[kind] or {}
            for hv, hr in index.get((kind, _event_key(kind, body)), []):
                _decide_one(rep, hv, hr, body, e, process_facts(body, tracker), call_from_event(hv, body),
                            monitor, last_post, correlator, scope_ok, policy, sample_limit)
    if correlator is not None:
        rep.findings = correlator.findings
    for _hv, hr in zip(views, rep.hooks):
        for reason, n in hr.undecidable.items():
            rep.missing.append(f"{hr.section}[{hr.index}] {hr.target}: {n} call(s) undecidable: {reason}")
    return rep


def _event_key(kind: str, body: Mapping[str, Any]) -> str:
    if kind == "process_kprobe":
        return call_name(str(body.get("function_name", "")))
    if kind == "process_tracepoint":
        return f"{body.get('subsys', '')}/{body.get('event', '')}"
    if kind == "process_lsm":
        return str(body.get("function_name", ""))
    sym = body.get("symbol")
    return f"{body.get('path', '')}:{sym}" if sym else str(body.get("path", ""))


def _decide_one(rep: DryRunReport, hv: HookView, hr: HookReport, body: Mapping[str, Any], event: Event,
                p: Process, call: Call, monitor: bool, last_post: dict[tuple[object, ...], int],
                correlator: Correlator | None, scoped: bool, policy: Policy, sample_limit: int) -> None:
    hr.seen += 1
    if scoped:
        t = pod_selector_match(policy.spec.pod_selector, p, policy.namespace if policy.namespaced else None,
                               policy.spec.container_selector)
        if t is False:
            rep.out_of_scope += 1
            return
        if isinstance(t, Unknown):
            hr.undecidable[f"podSelector/containerSelector: {t}"] += 1
            return
    d = decide(hv.rules, p, call, monitor=monitor)
    if d.unknown:
        hr.undecidable[d.unknown] += 1
        return
    if not d.matched:
        hr.no_match += 1
        return
    if d.selector is None:
        hr.posted_without_selectors += 1
        return
    st = hr.selectors[d.selector]
    st.matched += 1
    proc = body.get("process") or {}
    pod = proc.get("pod") or {}
    # the process as recorded (for exec hooks: the program being executed, not its caller)
    who = (str(proc.get("binary") or p.binary or ""),
           f"{pod.get('namespace', '')}/{pod.get('name', '')}" if pod else "")
    st.processes[who] += 1
    out = _outcome(d)
    if out:
        st.outcomes[out] += 1
    post = d.post
    if post:
        sel = hv.rules.selectors[d.selector]
        limit = next((a for a in sel.match_actions if a.action.lower() == "post" and a.rate_limit), None)
        now = _time_ns(event.get("time"))
        if limit is not None and now is not None:
            scope = limit.rate_limit_scope or "thread"
            who_key = 0 if scope == "global" else proc.get("pid") if scope == "process" else proc.get("tid")
            key = (hr.section, hr.index, d.selector, who_key, repr(call.args))
            last = last_post.get(key)
            if last is not None and now - last < parse_duration(limit.rate_limit) * 1_000_000_000:
                st.rate_limited += 1
                post = False
            else:
                last_post[key] = now
    if post:
        st.posted += 1
        if correlator is not None:
            correlator.feed(dict(event), hv.rules.selectors[d.selector].label)
    if len(st.samples) < sample_limit:
        st.samples.append(f"{event.get('time', '')} pid {proc.get('pid', '?')} {who[0]}"
                          f"{' ' + who[1] if who[1] else ''}: {_call_text(call)}" + (f" -> {out}" if out else ""))


def _call_text(call: Call) -> str:
    parts = []
    for v in call.args:
        if v is None:
            continue
        if isinstance(v, Sock):
            parts.append(f"{v.daddr}:{v.dport}" if v.daddr is not None else f"family {v.family}")
        elif isinstance(v, bytes):
            parts.append(repr(v[:40]))
        else:
            parts.append(str(v))
    return " ".join(parts) or "(no arguments)"


def render_text(rep: DryRunReport, source: str) -> list[str]:
    lines = [f"{rep.policy}: dry-run over {source} ({rep.events} events, mode {rep.mode}); nothing was loaded"]
    t = rep.totals()
    verbs = [f"{n} {k}" for k, n in sorted(t.items()) if n and k not in ("posted", "undecidable", "findings")]
    lines.append(f"  would have: posted {t.get('posted', 0)} event(s)" + (", " + ", ".join(verbs) if verbs else "")
                 + (f", {t['findings']} finding(s)" if t.get("findings") else "")
                 + (f"; {t['undecidable']} call(s) undecidable" if t.get("undecidable") else ""))
    if rep.out_of_scope:
        lines.append(f"  {rep.out_of_scope} call(s) outside the policy's pod scope")
    for h in rep.hooks:
        src = {"events": "recorded events", "process_exec": "process_exec events", "": "nothing recorded"}[h.source]
        lines.append(f"  {h.section}[{h.index}] {h.target}: {h.seen} call(s) from {src}")
        for n in h.notes:
            lines.append(f"    note: {n}")
        if not h.selectors and h.posted_without_selectors:
            lines.append(f"    no selectors: every call posted ({h.posted_without_selectors})")
        for i, s in enumerate(h.selectors):
            label = f" [{s.label}]" if s.label else ""
            outs = ", ".join(f"{n} {k}" for k, n in s.outcomes.items())
            lines.append(f"    selector {i + 1}{label} ({s.summary}): {s.matched} match(es), {s.posted} posted"
                         + (f", {s.rate_limited} rate-limited" if s.rate_limited else "")
                         + (f", {outs}" if outs else ""))
            for (b, pod), n in s.processes.most_common(10):
                lines.append(f"      {n:>6}  {b}{'  ' + pod if pod else ''}")
            more = len(s.processes) - 10
            if more > 0:
                lines.append(f"      ... and {more} more process(es)")
            for sample in s.samples:
                lines.append(f"      e.g. {sample}")
        if h.selectors:
            lines.append(f"    no selector matched: {h.no_match}")
        for reason, n in h.undecidable.items():
            lines.append(f"    undecidable ({n}): {reason}")
    for f in rep.findings:
        body = f.get("process_kprobe") or {}
        lines.append(f"  finding: {body.get('message', '')}")
    for m in rep.missing:
        lines.append(f"  missing data: {m}")
    return lines


__all__ = ["DryRunReport", "HookView", "ProcessTracker", "arg_value", "call_from_event", "dry_run", "hooks_of",
           "process_facts", "render_text"]
