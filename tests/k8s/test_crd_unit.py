"""Policy custom resources against a policy manager that refuses at load time (no cluster)."""
from __future__ import annotations

from typing import Any

from vigil.k8s.crd import PolicyResources


class Control:
    """PolicyManager's part PolicyResources uses: checks pass; loading fails for texts holding `refuse`."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.loaded: dict[str, str] = {}   # name -> text
        self.calls: list[str] = []

    def check_text(self, text: str, filename: str) -> None:
        self.calls.append("check")

    def add_text(self, text: str, filename: str = "", *, mode: str | None = None, source: str = "") -> list[str]:
        self.calls.append("add")
        name = filename.rsplit("/", 1)[-1]
        if self.refuse and self.refuse in text:
            raise RuntimeError(f"{filename}: loading the hook failed: the verifier said no")
        assert name not in self.loaded, "loaded twice"
        self.loaded[name] = text
        return [name]

    def delete(self, name: str, namespace: str = "") -> None:
        self.calls.append("delete")
        del self.loaded[name]


def resource(event: str, rv: str = "1") -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy",
            "metadata": {"name": "live", "resourceVersion": rv},
            "spec": {"tracepoints": [{"subsystem": "syscalls", "event": event}]}}


def test_an_update_the_kernel_refuses_gets_the_previous_version_loaded_again() -> None:
    control = Control(refuse="sys_enter_refused")
    res = PolicyResources(control)
    res.on_event("ADDED", resource("sys_enter_getppid"))
    assert "sys_enter_getppid" in control.loaded["live"]
    res.on_event("MODIFIED", resource("sys_enter_refused", "2"))
    # the update was refused while loading: reported under the resource's name, and the
    # previous version is in force again, not nothing
    assert "sys_enter_getppid" in control.loaded["live"]
    assert "verifier said no" in res.stats()["rejected"]["TracingPolicy/live"]
    # the resource put back as it was: nothing to load, and no longer reported as rejected
    calls = len(control.calls)
    res.on_event("MODIFIED", resource("sys_enter_getppid", "3"))
    assert len(control.calls) == calls and res.stats()["rejected"] == {}
    # a later update that loads replaces it
    res.on_event("MODIFIED", resource("sys_enter_getpid", "4"))
    assert "sys_enter_getpid" in control.loaded["live"] and res.stats()["loaded"] == 1
    res.on_event("DELETED", resource("sys_enter_getpid", "5"))
    assert control.loaded == {} and res.stats()["loaded"] == 0


def test_a_new_resource_the_kernel_refuses_leaves_nothing_loaded() -> None:
    control = Control(refuse="sys_enter_refused")
    res = PolicyResources(control)
    res.on_event("ADDED", resource("sys_enter_refused"))
    assert control.loaded == {} and res.stats()["loaded"] == 0
    assert "TracingPolicy/live" in res.stats()["rejected"]


def test_the_check_before_an_update_refuses_a_pod_scoped_policy_the_pod_filter_cannot_reach() -> None:
    """An exec deny placed on fanotify (this host: no BPF LSM, no kprobes) has no pod filter: a
    namespaced resource asking for one is refused by the check, before the loaded version goes."""
    from types import SimpleNamespace

    import yaml

    from tests.policyfuzz import facts
    from vigil.agent.policies import PolicyManager
    from vigil.core.errors import PolicyError

    agent = SimpleNamespace(builder=None, pipeline=SimpleNamespace(inject=lambda e: None), k8s=object(),
                            config=SimpleNamespace(permission_deadline_ms=1000, permission_default="allow"))
    pm = PolicyManager(agent)
    pm._facts = facts("host-6.18")
    doc = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicyNamespaced",
           "metadata": {"name": "no-curl", "namespace": "team-a"},
           "spec": {"kprobes": [{"call": "sys_execve", "syscall": True,
                                 "args": [{"index": 0, "type": "string"}],
                                 "selectors": [{"matchArgs": [{"index": 0, "operator": "Equal",
                                                               "values": ["/usr/bin/curl"]}],
                                                "matchActions": [{"action": "Override", "argError": -1}]}]}]}}
    text = yaml.safe_dump(doc)
    try:
        pm.check_text(text, "TracingPolicyNamespaced/team-a/no-curl")
    except PolicyError as e:
        assert "scoped to pods cannot use" in str(e) and "fanotify" in str(e), e
    else:
        raise AssertionError("a pod-scoped fanotify policy passed the check")
    # the same rules for the whole cluster pass it
    doc["kind"] = "TracingPolicy"
    del doc["metadata"]["namespace"]
    pm.check_text(yaml.safe_dump(doc), "TracingPolicy/no-curl")
