"""tetragon_events_total's process labels (vigil.agent.metrics.EventMetrics) from the events the
loop emits: pod labels of container processes, events without a process, and the series of
pods that left the node dropped a minute later (pod churn must not grow the metric forever)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from vigil.agent.metrics import POD_GONE_SECONDS, EventMetrics, parse_label_filter
from vigil.core.events import DictEvent, Pod, PodShared, PolicyEvent, ProcessExec, ProcessExit, ProcessMsg

ALL = "namespace,workload,pod,binary,node_name"


def proc(binary: str, ns: str = "", pod: str = "", workload: str = "") -> ProcessMsg:
    p = Pod(PodShared(namespace=ns, name=pod, workload=workload, container={"id": "c-" + pod}), 7, False) if pod else None
    return ProcessMsg("id-" + binary + pod, 1, binary=binary, pod=p, docker="c-" + pod if pod else "")


class Store:
    def __init__(self, *pods: tuple[str, str]) -> None:
        self.here = list(pods)

    def pods(self) -> list[Any]:
        return [SimpleNamespace(namespace=ns, name=name) for ns, name in self.here]


@pytest.mark.parametrize("text, labels", [
    ("namespace,workload,pod,binary", {"namespace", "workload", "pod", "binary"}),
    (" binary , node_name,", {"binary", "node_name"}),
    ("", set()),
    ("pod,bogus", {"pod"}),
])
def test_label_filter(text: str, labels: set[str]) -> None:
    assert parse_label_filter(text) == labels


@pytest.mark.parametrize("labels, key", [
    (ALL, ("PROCESS_EXEC", "shop", "cart", "cart-1", "/app", "n1")),
    ("namespace,pod", ("PROCESS_EXEC", "shop", "", "cart-1", "", "")),
    ("", ("PROCESS_EXEC", "", "", "", "", "")),
])
def test_events_are_counted_by_the_labels_the_filter_fills(labels: str, key: tuple[str, ...]) -> None:
    em = EventMetrics(parse_label_filter(labels), "n1", k8s=SimpleNamespace(store=Store(("shop", "cart-1"))))
    p = proc("/app", "shop", "cart-1", "cart")
    em([ProcessExec(p, None, (), "t", "n1") for _ in range(3)])
    em([ProcessExit(p, None, (), "", 0, "t", "n1")])
    assert em.counts == {key: 3, ("PROCESS_EXIT", *key[1:]): 1}


def test_an_event_without_a_process_is_counted_with_empty_labels() -> None:
    em = EventMetrics(parse_label_filter(ALL), "n1")
    em([ProcessExec(proc("/bin/a"), None, (), "t", "n1"), DictEvent({"process_loader": {}, "time": "t"}),
        ProcessExec(proc("/bin/a"), None, (), "t", "n1")])
    assert em.counts == {("PROCESS_EXEC", "", "", "", "/bin/a", "n1"): 2,
                         ("PROCESS_LOADER", "", "", "", "", "n1"): 1}


def test_series_of_a_deleted_pod_go_a_minute_after_it_left() -> None:
    store = Store(("shop", "cart-1"), ("shop", "cart-2"))
    em = EventMetrics(parse_label_filter(ALL), "n1", k8s=SimpleNamespace(store=store))
    em([ProcessExec(proc("/app", "shop", pod, "cart"), None, (), "t", "n1") for pod in ("cart-1", "cart-2")])
    em([ProcessExec(proc("/bin/sh"), None, (), "t", "n1")])  # a host process: never pruned
    pods = lambda: sorted({k[3] for k in em.counts})  # noqa: E731
    assert pods() == ["", "cart-1", "cart-2"]
    store.here = [("shop", "cart-2")]          # cart-1 deleted
    em.prune(1000.0)
    assert pods() == ["", "cart-1", "cart-2"]  # Prometheus still scrapes its last values
    em.prune(1000.0 + POD_GONE_SECONDS - 1)
    assert pods() == ["", "cart-1", "cart-2"]
    em.prune(1000.0 + POD_GONE_SECONDS)
    assert pods() == ["", "cart-2"]
    # a pod that left and came back (a re-list) keeps its series
    store.here = []
    em.prune(2000.0)
    store.here = [("shop", "cart-2")]
    em.prune(2000.0 + POD_GONE_SECONDS)
    assert pods() == ["", "cart-2"] and em._gone == {}


def test_without_kubernetes_container_processes_count_without_pod_labels() -> None:
    em = EventMetrics(parse_label_filter(ALL), "n1", k8s=lambda: None)
    em([ProcessExec(proc("/app", "shop", "cart-1", "cart"), None, (), "t", "n1")])
    assert em.counts == {("PROCESS_EXEC", "", "", "", "/app", "n1"): 1}


def test_a_container_counts_with_its_pod_once_its_events_carry_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events sent before their pod was known (held, then let go without it) count without pod
    labels; the container's later events, which carry the pod, count with them."""
    clock = [100.0]
    monkeypatch.setattr("vigil.agent.metrics.time.monotonic", lambda: clock[0])
    em = EventMetrics(parse_label_filter(ALL), "n1", k8s=SimpleNamespace(store=Store(("shop", "cart-1"))))
    with_pod = proc("/app", "shop", "cart-1", "cart")
    bare = ProcessMsg("id-early", 1, binary="/app", docker=with_pod.docker)
    em([ProcessExec(bare, None, (), "t", "n1"), ProcessExec(proc("/bin/sh"), None, (), "t", "n1")])
    clock[0] += 1.0
    em([ProcessExec(with_pod, None, (), "t", "n1") for _ in range(2)] + [ProcessExec(bare, None, (), "t", "n1")])
    assert em.counts == {("PROCESS_EXEC", "", "", "", "/app", "n1"): 1,
                         ("PROCESS_EXEC", "", "", "", "/bin/sh", "n1"): 1,
                         ("PROCESS_EXEC", "shop", "cart", "cart-1", "/app", "n1"): 3}


def pev(kind: str, p: ProcessMsg, **body: str) -> PolicyEvent:
    return PolicyEvent(kind, p, None, dict(body), "t", "n1")


# events (kind, process, body), the label filter, then tetragon_policy_events_total's series:
# (policy, hook, namespace, workload, pod, binary, node_name) -> count. Tetragon's hook label is
# made of the event's own fields (its PolicyInfo): kprobe:<function_name>, tracepoint:<subsys>/<event>, ...
CART = ("shop", "cart-1", "cart")
POLICY_CASES = {
    "kprobe-all-labels": (
        [("process_kprobe", ("/app", *CART), {"policy_name": "p", "function_name": "__x64_sys_openat"})] * 2
        + [("process_kprobe", ("/bin/sh",), {"policy_name": "p", "function_name": "__x64_sys_openat"})],
        ALL, {("p", "kprobe:__x64_sys_openat", "shop", "cart", "cart-1", "/app", "n1"): 2,
              ("p", "kprobe:__x64_sys_openat", "", "", "", "/bin/sh", "n1"): 1}),
    "default-filter": (
        [("process_tracepoint", ("/app", *CART), {"subsys": "syscalls", "event": "sys_enter_getppid",
                                                  "policy_name": "t"})],
        "namespace,workload,pod,binary",
        {("t", "tracepoint:syscalls/sys_enter_getppid", "shop", "cart", "cart-1", "/app", ""): 1}),
    "binary-only": (
        [("process_lsm", ("/app", *CART), {"function_name": "file_open", "policy_name": "l"})] * 3,
        "binary", {("l", "lsm:file_open", "", "", "", "/app", ""): 3}),
    "no-labels": (
        [("process_uprobe", (b,), {"path": "/lib/libc.so.6", "symbol": "malloc", "policy_name": "u"})
         for b in ("/a", "/b")] + [("process_kprobe", ("/a",), {"policy_name": "u", "function_name": "f"})],
        "", {("u", "uprobe:/lib/libc.so.6/malloc", "", "", "", "", ""): 2, ("u", "kprobe:f", "", "", "", "", ""): 1}),
    "uprobe-at-an-offset": (  # no symbol in the body: counted one by one, the symbol empty
        [("process_uprobe", ("/a",), {"path": "/bin/x", "policy_name": "u"}),
         ("process_uprobe", ("/a",), {"path": "/bin/x", "symbol": "main", "policy_name": "u"})],
        "binary", {("u", "uprobe:/bin/x/", "", "", "", "/a", ""): 1, ("u", "uprobe:/bin/x/main", "", "", "", "/a", ""): 1}),
    "usdt": (
        [("process_usdt", ("/a",), {"path": "/bin/x", "provider": "prov", "name": "probe", "policy_name": "s"})],
        "binary,node_name", {("s", "usdt:prov/probe", "", "", "", "/a", "n1"): 1}),
    "unnamed-policy-not-counted": (
        [("process_kprobe", ("/a",), {"function_name": "f"})], ALL, {}),
}


@pytest.mark.parametrize("events, labels, want", POLICY_CASES.values(), ids=POLICY_CASES.keys())
def test_policy_events_are_counted_by_policy_hook_and_the_labels_the_filter_fills(
        events: list[tuple[str, tuple[str, ...], dict[str, str]]], labels: str,
        want: dict[tuple[str, ...], int]) -> None:
    em = EventMetrics(parse_label_filter(labels), "n1", k8s=SimpleNamespace(store=Store(("shop", "cart-1"))))
    em([pev(kind, proc(*p), **body) for kind, p, body in events]
       + [ProcessExec(proc("/app", *CART), None, (), "t", "n1")])  # not a policy event
    assert em.policy_counts == want
    assert sum(n for k, n in em.counts.items() if k[0] != "PROCESS_EXEC") == len(events)


def test_policy_event_series_of_a_deleted_pod_go_with_its_other_series() -> None:
    store = Store(("shop", "cart-1"))
    em = EventMetrics(parse_label_filter(ALL), "n1", k8s=SimpleNamespace(store=store))
    em([pev("process_kprobe", proc("/app", *CART), policy_name="p", function_name="f")])
    store.here = []
    em.prune(1000.0)
    em.prune(1000.0 + POD_GONE_SECONDS)
    assert em.policy_counts == {} and em.counts == {}


def raw(p: ProcessMsg, *args: dict[str, Any], subsys: str = "raw_syscalls", event: str = "sys_enter",
        policy: str = "sc") -> PolicyEvent:
    return pev("process_tracepoint", p, subsys=subsys, event=event, policy_name=policy, args=list(args))  # type: ignore[arg-type]


def sid(n: int, abi: str = "x64") -> dict[str, Any]:
    return {"syscall_id": {"id": n, "abi": abi}}


# events, label filter, then tetragon_syscalls_total's series: (syscall, namespace, workload,
# pod, binary, node_name) -> count. Only raw_syscalls/sys_enter events with a syscall_id
# argument (Tetragon's first one, wherever it is) whose number names a syscall of its ABI
SYSCALL_CASES = {
    "by-binary": ([raw(proc("/a"), sid(257)), raw(proc("/a"), sid(257)), raw(proc("/b"), sid(0))], "binary",
                  {("openat", "", "", "", "/a", ""): 2, ("read", "", "", "", "/b", ""): 1}),
    "pod-labels": ([raw(proc("/app", *CART), sid(59))], ALL, {("execve", "shop", "cart", "cart-1", "/app", "n1"): 1}),
    "no-labels": ([raw(proc("/a"), sid(1)), raw(proc("/b"), sid(1))], "", {("write", "", "", "", "", ""): 2}),
    "id-not-first": ([raw(proc("/a"), {"int_arg": 3}, sid(3))], "binary", {("close", "", "", "", "/a", ""): 1}),
    "arm64": ([raw(proc("/a"), sid(56, "arm64"))], "binary", {("openat", "", "", "", "/a", ""): 1}),
    "not-raw-syscalls": ([raw(proc("/a"), sid(257), subsys="syscalls", event="sys_enter_openat"),
                          raw(proc("/a"), sid(257), event="sys_exit")], "binary", {}),
    "no-syscall-id": ([raw(proc("/a"), {"int_arg": 3}), raw(proc("/a"))], "binary", {}),
    "unknown-number": ([raw(proc("/a"), sid(100000))], "binary", {}),
}


@pytest.mark.parametrize("events, labels, want", SYSCALL_CASES.values(), ids=SYSCALL_CASES.keys())
def test_raw_syscall_events_are_counted_by_syscall_name(events: list[PolicyEvent], labels: str,
                                                         want: dict[tuple[str, ...], int]) -> None:
    em = EventMetrics(parse_label_filter(labels), "n1", k8s=SimpleNamespace(store=Store(("shop", "cart-1"))))
    em(events)
    assert em.syscall_counts == want
