"""Correlated findings: two selector matches of related processes reported as one event.

A policy opts in with the option `vigil-finding`, value `<label A> then <label B>` (optionally
`within <duration>`, default 10m), naming two selector `label`s of the policy:

* a call matched by a selector labelled A is remembered for the calling process and for its
  parent, and exported as nothing;
* a later call matched by a selector labelled B, by the same process, its parent, or another
  child of that parent (`sh -c 'curl ... $(cat token)'`: cat reads, curl connects), within
  the window, is exported once as the finding: the B event with a message naming both sides,
  the A side appended to its args (label A) and the tag `vigil.finding`;
* a B match with nothing remembered is not exported (it is not a finding).

Pure: the agent feeds it policy events as they are built, `vigil policy dry-run` recorded
ones. State is bounded (least recently used marks are forgotten first).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from .values import parse_duration

OPTION = "vigil-finding"
TAG = "vigil.finding"
DEFAULT_WINDOW_S = 600
CAPACITY = 4096
_VALUE = re.compile(r"^\s*(?P<a>[^\s]+)\s+then\s+(?P<b>[^\s]+)(?:\s+within\s+(?P<w>[0-9]+[smh]?))?\s*$")
Event = dict[str, Any]


@dataclass(frozen=True)
class Sequence:
    first: str
    then: str
    window_s: int = DEFAULT_WINDOW_S


def parse_sequence(value: str, labels: Iterable[str]) -> Sequence:
    """`A then B [within 5m]`; A and B must be labels of the policy's selectors."""
    m = _VALUE.match(value)
    if not m:
        raise ValueError(f'{OPTION} value "{value}": expected "<selector label> then <selector label>" '
                         '(optionally followed by "within <duration>", e.g. 10m)')
    known = set(labels)
    for lab in (m["a"], m["b"]):
        if lab not in known:
            raise ValueError(f'{OPTION}: no selector has label "{lab}" (labels: {", ".join(sorted(known)) or "none"})')
    if m["a"] == m["b"]:
        raise ValueError(f"{OPTION}: the two labels must differ")
    return Sequence(m["a"], m["b"], parse_duration(m["w"]) if m["w"] else DEFAULT_WINDOW_S)


def selector_labels(policy: Any) -> list[str]:
    return [s.label for _section, h in policy.spec.hooks() for s in getattr(h, "selectors", ()) if s.label]


def finding_sequence(policy: Any) -> Sequence | None:
    value = policy.spec.option(OPTION)
    if value is None:
        return None
    return parse_sequence(value, selector_labels(policy))


def args_text(body: dict[str, Any]) -> str:
    """The arguments of an event, as a person reads them (paths, address:port, numbers)."""
    out = []
    for a in body.get("args") or ():
        if not isinstance(a, dict):
            continue
        if "string_arg" in a:
            out.append(str(a["string_arg"]))
        elif any(k in a for k in ("file_arg", "path_arg", "linux_binprm_arg")):
            k = next(k for k in ("file_arg", "path_arg", "linux_binprm_arg") if k in a)
            out.append(str((a[k] or {}).get("path", "")))
        elif "sockaddr_arg" in a:
            sa = a["sockaddr_arg"] or {}
            addr = sa.get("addr", "")
            out.append(f"[{addr}]:{sa.get('port', 0)}" if ":" in addr else f"{addr}:{sa.get('port', 0)}")
        elif "sock_arg" in a:
            sk = a["sock_arg"] or {}
            out.append(f"{sk.get('daddr', '')}:{sk.get('dport', 0)}")
        else:
            for k in ("int_arg", "uint_arg", "long_arg", "size_arg"):
                if k in a:
                    out.append(str(a[k]))
    return " ".join(x for x in out if x)


def _time_s(t: Any) -> float | None:
    if not isinstance(t, str) or len(t) < 19:
        return None
    from datetime import datetime

    try:
        base = datetime.strptime(t[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    frac = re.match(r"\.(\d+)", t[19:])
    return base + (float("0." + frac.group(1)) if frac else 0.0)


@dataclass
class Mark:
    what: str
    binary: str
    pid: int
    exec_id: str
    time: float | None


class Correlator:
    def __init__(self, policy: str, seq: Sequence, capacity: int = CAPACITY, keep: int = 1000) -> None:
        self.policy = policy
        self.seq = seq
        self.capacity = capacity
        self._marks: OrderedDict[str, Mark] = OrderedDict()
        self.findings: list[Event] = []   # the latest `keep` findings (dry-run reads them)
        self._keep = keep
        self.remembered = self.dropped = self.reported = 0

    def feed(self, event: Any, label: str) -> Any:
        """What to export instead of `event` (a policy event whose deciding selector has `label`):
        the event, None (remembered, or not a finding), or the finding. `event` is the agent's
        typed PolicyEvent or an event dict in GetEventsResponse's shape (dry-run)."""
        if label not in (self.seq.first, self.seq.then):
            return event
        kind, body, proc, parent, when = _parts(event)
        if body is None:
            return event
        now = _time_s(when)
        if label == self.seq.first:
            mark = Mark(args_text(body), str(_get(proc, "binary") or ""), int(_get(proc, "pid") or 0),
                        str(_get(proc, "exec_id") or ""), now)
            for key in (_get(proc, "exec_id"), _get(parent, "exec_id")):
                if key:
                    self._marks[key] = mark
                    self._marks.move_to_end(key)
            while len(self._marks) > self.capacity:
                self._marks.popitem(last=False)
            self.remembered += 1
            return None
        held: Mark | None = None
        for key in (_get(proc, "exec_id"), _get(parent, "exec_id")):
            m = self._marks.get(key) if key else None
            if m is not None and (now is None or m.time is None or now - m.time <= self.seq.window_s):
                held = m
                break
        if held is None:
            self.dropped += 1
            return None
        self.reported += 1
        finding = self._finding(event, kind, body, proc, held)
        self.findings.append(finding)
        if len(self.findings) > self._keep:
            del self.findings[0]
        return finding

    def exited(self, exec_id: str) -> None:
        """A process exited: what it did can no longer be followed by its own calls."""
        self._marks.pop(exec_id, None)

    def _finding(self, event: Any, kind: str, body: dict[str, Any], proc: Any, m: Mark) -> Any:
        pod = _get(proc, "pod") or {}
        where = f" in pod {pod.get('namespace', '')}/{pod.get('name', '')}" if pod else ""
        same = m.exec_id == _get(proc, "exec_id")
        who = "the same process" if same else f"{_get(proc, 'binary') or ''} (pid {_get(proc, 'pid')})"
        text = (f"vigil finding {self.seq.first} then {self.seq.then}{where}: {m.binary} (pid {m.pid}) "
                f"{m.what} then {who} {args_text(body)}")
        out = dict(body)
        out["message"] = f"{body['message']} {text}" if body.get("message") else text
        out["args"] = [*(body.get("args") or []), {"string_arg": m.what, "label": self.seq.first}]
        out["tags"] = [*(body.get("tags") or []), TAG]
        if isinstance(event, dict):
            return {**event, kind: out}
        from vigil.core.events import PolicyEvent

        return PolicyEvent(kind, event.process, event.parent, out, event.time, event.node_name,
                           getattr(event, "ancestors", ()))


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _parts(event: Any) -> tuple[str, dict[str, Any] | None, Any, Any, Any]:
    """(kind, hook body, process, parent, time) of a typed PolicyEvent or an event dict."""
    if isinstance(event, dict):
        kind = next((k for k in event if k not in ("node_name", "time")), "")
        body = event.get(kind)
        if not isinstance(body, dict):
            return kind, None, None, None, None
        return kind, body, body.get("process") or {}, body.get("parent") or {}, event.get("time")
    return event.kind, event.body, event.process, event.parent, event.time


__all__ = ["Correlator", "OPTION", "Sequence", "TAG", "args_text", "finding_sequence", "parse_sequence"]
