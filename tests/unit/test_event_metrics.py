"""tetragon_events_total's process labels (vigil.agent.metrics.EventMetrics) from the events the
loop emits: pod labels of container processes, events without a process, and the series of
pods that left the node dropped a minute later (pod churn must not grow the metric forever)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from vigil.agent.metrics import POD_GONE_SECONDS, EventMetrics, parse_label_filter
from vigil.core.events import DictEvent, Pod, PodShared, ProcessExec, ProcessExit, ProcessMsg

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
