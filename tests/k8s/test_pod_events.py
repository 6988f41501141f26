"""Events of processes in real containers carry their pod (issue 10, items 1-2)."""
from __future__ import annotations

from typing import Any

import pytest

from tests.k8s.conftest import Cluster, K8sAgent, metrics_of
from tests.k8s.test_policies import wait_for

pytestmark = pytest.mark.kernel


def execs_in(events: list[dict[str, Any]], cid: str) -> list[dict[str, Any]]:
    return [e["process_exec"] for e in events
            if "process_exec" in e and e["process_exec"]["process"].get("docker") == cid[:31]]


def test_exec_in_a_container_has_pod_container_and_workload(cluster: Cluster, k8s_agent: K8sAgent) -> None:
    ns = cluster.namespace("events")
    kl = cluster.kubelet
    pods = []

    def start() -> None:
        pods.append(kl.run_pod(ns, "web-7c9f8d-abcde", [{"name": "app", "command": ["/bin/sleep", "3600"]}],
                               labels={"app": "web", "pod-template-hash": "7c9f8d"},
                               owner={"kind": "ReplicaSet", "name": "web-7c9f8d"}))
    # the kubelet reports the container only after it started: its first exec waits for the pod
    def sleep_exec(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        cid = pods[0].containers["app"]
        return [e for e in execs_in(events, cid) if e["process"]["binary"] == "/bin/sleep"]

    with metrics_of(k8s_agent) as scrape:
        before = scrape().get(("tetragon_watcher_events_total", (("watcher", "k8s"),)), 0)
        events = k8s_agent.collect(start, timeout=60, until=sleep_exec)
        # pod info found for the container's processes: Tetragon's watcher events
        assert scrape()[("tetragon_watcher_events_total", (("watcher", "k8s"),))] > before
    pod = pods[0]
    cid = pod.containers["app"]
    first = sleep_exec(events)
    assert first and first[0]["process"]["pod"]["name"] == pod.name
    st = k8s_agent.agent.status()["k8s"]
    assert st["events"]["released_enriched"] >= 1, st

    events = k8s_agent.collect(lambda: kl.exec(pod, "app", ["/bin/cat", "/etc/group"]))
    (ex,) = [e for e in execs_in(events, cid) if e["process"]["binary"] == "/bin/cat"]
    p = ex["process"]
    assert p["docker"] == cid[:31]
    api_pod = cluster.core.read_namespaced_pod(pod.name, ns)
    cs = api_pod.status.container_statuses[0]
    want_container = {"id": f"containerd://{cid}", "name": "app",
                      "image": {"id": cs.image_id, "name": "vigil.test/busybox:1"}}
    got = p["pod"]
    assert {k: got["container"][k] for k in want_container} == want_container
    assert got["container"]["start_time"].endswith("Z")
    assert got["container"]["security_context"] == {}                 # always there, as Tetragon's
    assert list(got["container"])[-1] == "security_context"           # proto field order
    assert 1 < got["container"]["pid"] != p["pid"]            # pid inside the container's pid namespace
    assert {k: got[k] for k in ("namespace", "name", "uid", "workload", "workload_kind")} == {
        "namespace": ns, "name": pod.name, "uid": pod.uid, "workload": "web", "workload_kind": "Deployment"}
    assert got["pod_labels"] == {"app": "web", "pod-template-hash": "7c9f8d"}
    assert list(p).index("pod") == list(p).index("docker") - 1   # proto field order
    # the exit of the same process carries the same pod
    exits = [e["process_exit"] for e in events if "process_exit" in e
             and e["process_exit"]["process"]["exec_id"] == p["exec_id"]]
    assert exits and exits[0]["process"]["pod"]["name"] == pod.name

    # the Pod object deleted at once (a forced deletion) while its container runs: its processes'
    # events still carry the pod, as Tetragon's deleted-pod cache gives them
    store = k8s_agent.agent.k8s.store
    cluster.core.delete_namespaced_pod(pod.name, ns, grace_period_seconds=0)
    wait_for(lambda: pod.uid not in store.by_uid, "the agent saw the pod deleted")
    def late_cat(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in execs_in(events, cid) if e["process"]["arguments"] == "/etc/hostname"]
    (late,) = late_cat(k8s_agent.collect(lambda: kl.exec(pod, "app", ["/bin/cat", "/etc/hostname"]), until=late_cat))
    assert {k: late["process"]["pod"][k] for k in ("namespace", "name", "uid", "workload")} == {
        "namespace": ns, "name": pod.name, "uid": pod.uid, "workload": "web"}


def test_processes_started_before_the_agent_get_pod_data(cluster: Cluster) -> None:
    ns = cluster.namespace("early")
    pod = cluster.kubelet.run_pod(ns, "early", [{"name": "main", "command": ["/bin/sleep", "3600"]}],
                                  labels={"app": "early"})
    try:
        with K8sAgent(cluster) as a:
            sub = a.agent.subscribe()
            try:
                snap = [p for p in a.agent.control.process_cache_dump()
                        if p["process"].get("docker") == pod.containers["main"][:31]]
            finally:
                sub.close()
        assert snap, "the container's process was not found at start"
        proc = snap[0]["process"]
        assert "procFS" in proc["flags"]
        assert proc["pod"]["name"] == "early" and proc["pod"]["workload_kind"] == "Pod"
        assert proc["pod"]["container"]["name"] == "main" and proc["pod"]["container"]["pid"] == 1
    finally:
        cluster.kubelet.delete_pod(pod)


def test_container_of_an_unknown_pod_leaves_without_pod_data_counted(cluster: Cluster) -> None:
    """A container of a pod the API never lists: its events wait, then leave without pod data,
    counted in `vigil status` and in Tetragon's event cache and watcher metrics (scraped from
    /metrics): tetragon_event_cache_inserts_total,
    tetragon_event_cache_fetch_failures_total{entry_type="pod_info"},
    tetragon_watcher_errors_total{watcher="k8s",error="failed_to_get_pod"}."""
    with K8sAgent(cluster, k8s_pod_wait=0.5) as a, metrics_of(a) as scrape:
        pods = []
        events = a.collect(lambda: pods.append(cluster.kubelet.run_unlisted_pod("ghost", ["/bin/sleep", "3600"])))
        try:
            cid = pods[0].containers["c"]
            # held for the wait, then out without pod data: never dropped
            import time
            deadline = time.monotonic() + 20
            got = execs_in(events, cid)
            while not got and time.monotonic() < deadline:
                events += a.collect(lambda: None)
                got = execs_in(events, cid)
            assert got and "pod" not in got[0]["process"]
            st = a.agent.status()["k8s"]["events"]
            assert st["released_without_pod"] >= 1 and st["held"] >= 1, st
            got = scrape()
            assert got[("tetragon_event_cache_inserts_total", ())] >= st["held"] >= 1
            assert got[("tetragon_event_cache_fetch_failures_total", (("entry_type", "pod_info"),))] >= 1
            assert ("tetragon_event_cache_entries", ()) in got
            assert got[("tetragon_watcher_errors_total", (("error", "failed_to_get_pod"), ("watcher", "k8s")))] >= 1
        finally:
            for p in pods:
                cluster.kubelet.delete_pod(p)


def test_a_pod_that_comes_late_reaches_the_containers_cached_processes(cluster: Cluster) -> None:
    """The kubelet reports a container's status (its id) only after the wait for its pod ran
    out: its processes were cached without pod data and their first events left without it.
    When the status comes, every cached process of the container gets the pod (its own pid in
    the container), so later events carry it: the exec server's (a process forked before) as
    the `parent` and among the ancestors of a command it runs, and in the process cache."""
    ns = cluster.namespace("late")
    kl = cluster.kubelet
    with K8sAgent(cluster, k8s_pod_wait=0.5, enable_ancestors=True) as a:
        pods: list[Any] = []

        def sleep_exec(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in execs_in(events, pods[0].containers["app"]) if e["process"]["binary"] == "/bin/sleep"]
        try:
            events = a.collect(lambda: pods.append(kl.run_pod(
                ns, "late-1", [{"name": "app", "command": ["/bin/sleep", "3600"]}], report=False)),
                until=sleep_exec)
            pod = pods[0]
            cid = pod.containers["app"]
            assert "pod" not in sleep_exec(events)[0]["process"]   # its wait ran out: no pod data
            kl.report(pod)
            store = a.agent.k8s.store
            wait_for(lambda: store.lookup(cid) is not None, "the agent saw the container's status")

            def cat(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
                return [e for e in execs_in(events, cid) if e["process"]["arguments"] == "/etc/hostname"]
            (ex,) = cat(a.collect(lambda: kl.exec(pod, "app", ["/bin/cat", "/etc/hostname"]), until=cat))
            # the exec server (forked before the pod came) runs the command: its parent; the
            # container's ancestors (the runtime's, outside it, have none)
            mine = [p for p in ex["ancestors"] if p.get("docker") == cid[:31]]
            for what, proc in [("process", ex["process"]), ("parent", ex["parent"]),
                               *((f"ancestor {i}", p) for i, p in enumerate(mine))]:
                got = proc.get("pod")
                assert got is not None, f"{what} {proc['binary']} has no pod data"
                assert (got["name"], got["container"]["name"]) == ("late-1", "app"), what
                assert got["container"]["pid"] != proc["pid"], what  # its pid inside the container
            assert mine, "the command's ancestors in its container were not sent"
            cached = [p["process"] for p in a.agent.control.process_cache_dump()
                      if p["process"].get("docker") == cid[:31]]
            assert cached and all(p.get("pod", {}).get("name") == "late-1" for p in cached), cached
        finally:
            for p in pods:
                kl.delete_pod(p)
