"""One AddTracingPolicy YAML (or policy file) with several documents loads all of them or
none: a refused document unloads the ones before it, namespaced ones too."""
from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.kernel.bpfstate import prog_ids_held
from tests.kernel.conftest import RunningAgent
from vigil.core.errors import PolicyError, PolicyNotFound

pytestmark = pytest.mark.kernel

DOC = """apiVersion: cilium.io/v1alpha1
kind: {kind}
metadata:
  name: {name}
{ns}spec:
  tracepoints:
  - subsystem: syscalls
    event: {event}
    args:
    - index: 1
      type: string
"""


class _Scopes:
    """Stands in for the Kubernetes stage: pod scopes of namespaced policies (no cluster)."""

    def __init__(self) -> None:
        self.scopes: dict[int, str] = {}
        self._next = 1000
        self.hold = SimpleNamespace(flush=list)

    def add_scope(self, name: str, namespace: Any, pod: Any, container: Any) -> int:
        self._next += 1
        self.scopes[self._next] = name
        return self._next

    def remove_scope(self, fid: int) -> None:
        del self.scopes[fid]

    def filter_events(self, events: list[Any]) -> list[Any]:
        return events

    def tick(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def scoped_agent(running_agent: RunningAgent) -> Iterator[tuple[RunningAgent, _Scopes]]:
    a = running_agent.agent
    assert a.k8s is None
    scopes = _Scopes()
    a.k8s = scopes
    try:
        yield running_agent, scopes
    finally:
        for p in a.list_policies():
            if p["name"].startswith("rollback-"):
                a.policies.delete(p["name"], p["namespace"])
        a.k8s = None


def doc(name: str, namespace: str = "", event: str = "sys_enter_openat") -> str:
    kind = "TracingPolicyNamespaced" if namespace else "TracingPolicy"
    ns = f"  namespace: {namespace}\n" if namespace else ""
    return DOC.format(kind=kind, name=name, ns=ns, event=event)


@pytest.mark.parametrize("first", [
    pytest.param(("rollback-a", "team-a"), id="namespaced"),
    pytest.param(("rollback-a", ""), id="cluster-wide"),
])
def test_refused_document_unloads_the_ones_before_it(scoped_agent, first):
    ra, scopes = scoped_agent
    name, namespace = first
    before = prog_ids_held()
    text = doc(name, namespace) + "---\n" + doc("rollback-b", event="sys_enter_no_such_tracepoint_vigil")
    with pytest.raises(PolicyError) as e:
        ra.agent.policies.add_text(text, "<test>")
    assert not isinstance(e.value, PolicyNotFound), e.value  # the refusal itself, not a failed rollback
    assert "rollback-b" in str(e.value) or "no_such_tracepoint" in str(e.value)
    assert [p["name"] for p in ra.agent.list_policies() if p["name"].startswith("rollback-")] == []
    assert scopes.scopes == {}  # the namespaced policy's pod scope went with it
    assert prog_ids_held() == before


def test_policy_dir_loads_one_level_of_subdirectories(running_agent: RunningAgent, tmp_path) -> None:
    """--tracing-policy-dir is read as Tetragon reads it: the directory's files and its
    subdirectories' (a tree such as examples/tracingpolicy/cves/), not deeper ones. The
    subdirectory's policy was left out."""
    layout = {"top.yaml": "h5-dir-top", "sub/one.yaml": "h5-dir-sub", "sub/deeper/two.yaml": "h5-dir-deep"}
    for rel, name in layout.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(DOC.format(kind="TracingPolicy", name=name, ns="", event="sys_enter_openat"))
    a = running_agent.agent
    loaded: list[str] = []
    try:
        loaded = a.policies.add_dir(str(tmp_path))
        assert sorted(loaded) == ["h5-dir-sub", "h5-dir-top"]
    finally:
        for name in loaded:
            a.policies.delete(name, "")
