"""Pod records, workloads, exec-probe guesses, label selectors and the hold stage (no cluster)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from vigil.core.events import ProcessExec, ProcessMsg
from vigil.k8s.enrich import HoldStage, PodResolver
from vigil.k8s.pods import PodStore, maybe_exec_probe, workload_of
from vigil.k8s.selectors import container_labels, image_repo, matches, pod_labels

CID = "a" * 64
CID2 = "b" * 64
CID3 = "c" * 64
UID = "0c7e9f3a-1b2c-4d5e-8f90-a1b2c3d4e5f6"


class Writer:
    """A kernel map's stand-in for the policy filter: the keys it holds."""

    def __init__(self) -> None:
        self.keys: set[bytes] = set()

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self.keys.add(key)

    def delete(self, key: bytes) -> None:
        self.keys.discard(key)


def owner(kind: str, name: str, controller: bool = True, generated: bool = True) -> dict[str, Any]:
    """Metadata of a pod its controller made (a generated name), as the API server gives it."""
    return {"ownerReferences": [{"kind": kind, "name": name, "controller": controller, "uid": "x", "apiVersion": "v1"}],
            **({"generateName": name + "-"} if generated else {})}


@pytest.mark.parametrize("meta,want", [
    ({"name": "web-7c9f8d-x2x", "labels": {"pod-template-hash": "7c9f8d"}, **owner("ReplicaSet", "web-7c9f8d")},
     ("web", "Deployment")),
    ({"name": "rs-only-abc", **owner("ReplicaSet", "rs-only")}, ("rs-only", "ReplicaSet")),
    ({"name": "db-0", **owner("StatefulSet", "db")}, ("db", "StatefulSet")),
    ({"name": "agent-x7", **owner("DaemonSet", "agent")}, ("agent", "DaemonSet")),
    ({"name": "once-abcde", **owner("Job", "once")}, ("once", "Job")),
    ({"name": "nightly-28912345-q", **owner("Job", "nightly-28912345")}, ("nightly", "CronJob")),
    ({"name": "lonely"}, ("lonely", "Pod")),
    # as Tetragon: a static pod's mirror names its node as controller, with no generated name
    ({"name": "etcd-node1", **owner("Node", "node1", generated=False)}, ("etcd-node1", "Pod")),
    ({"name": "named", **owner("StatefulSet", "db", generated=False)}, ("named", "Pod")),
    # an owner that is not the controller is no workload
    ({"name": "adopted-x", **owner("ConfigMap", "cm", controller=False)}, ("adopted-x", "Pod")),
    ({"name": "dc-1-abc", "labels": {"deploymentconfig": "frontend"}, **owner("ReplicationController", "dc-1")},
     ("frontend", "DeploymentConfig")),
    ({"name": "rc-abc", **owner("ReplicationController", "rc")}, ("rc", "ReplicationController")),
    # the ReplicaSet's name ends with the hash without a dash before it: a Deployment of that name
    ({"name": "web7c9f8d-x", "labels": {"pod-template-hash": "7c9f8d"}, **owner("ReplicaSet", "web7c9f8d")},
     ("web7c9f8d", "Deployment")),
    ({"name": "x-abc", **owner("DaemonSet", "")}, ("x-abc", "DaemonSet")),
])
def test_workload(meta: dict[str, Any], want: tuple[str, str]) -> None:
    assert workload_of(meta) == want


def pod_obj(labels: dict[str, str] | None = None, cid: str = CID, name: str = "web-1", ns: str = "shop",
            uid: str = UID, probe: list[str] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "app", "image": "reg.example/shop/web:1.2"}
    if probe:
        c["readinessProbe"] = {"exec": {"command": probe}}
    return {"metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels or {"app": "web"},
                         **owner("StatefulSet", "web")},
            "spec": {"containers": [c, {"name": "side", "image": "reg.example/side@sha256:" + "c" * 64}]},
            "status": {"containerStatuses": [
                {"name": "app", "containerID": f"containerd://{cid}", "image": "reg.example/shop/web:1.2",
                 "imageID": "reg.example/shop/web@sha256:" + "d" * 64,
                 "state": {"running": {"startedAt": "2026-01-02T03:04:05Z"}}},
                {"name": "side", "containerID": "", "image": "x"}]}}


def test_pod_info_and_json() -> None:
    store = PodStore()
    store.upsert(pod_obj(probe=["cat", "/tmp/ready"]))
    pod, c = store.lookup(CID)
    assert (pod.namespace, pod.name, pod.workload, pod.workload_kind) == ("shop", "web-1", "web", "StatefulSet")
    assert c.name == "app" and c.exec_probes == (("cat", "/tmp/ready"),)
    assert store.lookup(CID2) is None  # a container without an id yet is not indexed
    res = PodResolver(store)
    j = res.pod_json(f"pod{UID}/{CID}", 7, "/bin/cat", "/tmp/ready")
    assert j == {"namespace": "shop", "name": "web-1", "uid": UID,
                 "container": {"id": f"containerd://{CID}", "name": "app",
                               "image": {"id": "reg.example/shop/web@sha256:" + "d" * 64,
                                         "name": "reg.example/shop/web:1.2"},
                               "start_time": "2026-01-02T03:04:05Z", "pid": 7, "maybe_exec_probe": True,
                               "security_context": {}},
                 "pod_labels": {"app": "web"}, "workload": "web", "workload_kind": "StatefulSet"}
    assert list(j) == ["namespace", "name", "uid", "container", "pod_labels", "workload", "workload_kind"]
    assert list(j["container"]) == ["id", "name", "image", "start_time", "pid", "maybe_exec_probe",
                                    "security_context"]   # proto field order
    assert "maybe_exec_probe" not in res.pod_json(f"pod{UID}/{CID}", 8, "/bin/cat", "/etc/passwd")["container"]
    assert res.pod_json(f"pod{UID}/{CID2}", 1, "/bin/sh", "") is None


def with_status(state: dict[str, Any], privileged: bool | None = None, image_id: str | None = None,
                image: str | None = None) -> dict[str, Any]:
    obj = pod_obj()
    cs = obj["status"]["containerStatuses"][0]
    cs["state"] = state
    if image_id is not None:
        cs["imageID"] = image_id
    if image is not None:
        cs["image"] = obj["spec"]["containers"][0]["image"] = image
    if privileged is not None:
        obj["spec"]["containers"][0]["securityContext"] = {"privileged": privileged}
    return obj


RUNNING = {"running": {"startedAt": "2026-01-02T03:04:05Z"}}
TERMINATED = {"terminated": {"startedAt": "2026-01-02T03:04:05Z", "finishedAt": "2026-01-02T03:05:00Z",
                             "exitCode": 0}}
IMG, IMG_ID = "reg.example/shop/web:1.2", "reg.example/shop/web@sha256:" + "d" * 64


@pytest.mark.parametrize("obj,want", [
    (with_status(RUNNING), {"image": {"id": IMG_ID, "name": IMG}, "start_time": "2026-01-02T03:04:05Z",
                            "security_context": {}}),
    # as Tetragon: start_time only while the container runs (a terminated one's is left out)
    (with_status(TERMINATED), {"image": {"id": IMG_ID, "name": IMG}, "security_context": {}}),
    (with_status(RUNNING, privileged=True), {"image": {"id": IMG_ID, "name": IMG},
                                             "start_time": "2026-01-02T03:04:05Z",
                                             "security_context": {"privileged": True}}),
    (with_status(RUNNING, privileged=False), {"image": {"id": IMG_ID, "name": IMG},
                                              "start_time": "2026-01-02T03:04:05Z", "security_context": {}}),
    # image is always there, its empty fields left out
    (with_status(RUNNING, image_id="", image=""), {"image": {}, "start_time": "2026-01-02T03:04:05Z",
                                                   "security_context": {}}),
])
def test_container_fields_present_as_tetragon_gives_them(obj: dict[str, Any], want: dict[str, Any]) -> None:
    import orjson

    from vigil.api import wire
    from vigil.api.gen.tetragon import tetragon_pb2
    from vigil.export.codec import pod_json

    store = PodStore()
    store.upsert(obj)
    p = PodResolver(store).pod_json(f"pod{UID}/{CID}", 0, "/bin/ls", "")
    assert p is not None
    assert p["container"] == {"id": f"containerd://{CID}", "name": "app", **want}
    assert orjson.loads(pod_json(p)) == p.as_dict()
    # the protobuf has the same fields set (an empty security_context or image is still there)
    msg = tetragon_pb2.Pod()
    body = wire.pod_bytes(p)
    msg.ParseFromString(body[2:] if body[1] < 0x80 else body[3:])
    assert msg.container.HasField("image") and msg.container.HasField("security_context")
    assert msg.container.security_context.privileged == want["security_context"].get("privileged", False)
    assert msg.container.HasField("start_time") == ("start_time" in want)


def all_kinds_pod() -> dict[str, Any]:
    """A pod with an init container (done), a container and an ephemeral (debug) container."""
    def status(name: str, cid: str, state: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "containerID": f"containerd://{cid}", "image": f"reg/{name}:1",
                "imageID": f"reg/{name}@sha256:00", "state": state}
    return {"metadata": {"name": "web-1", "namespace": "shop", "uid": UID},
            "spec": {"initContainers": [{"name": "setup", "image": "reg/setup:1",
                                         "securityContext": {"privileged": True}}],
                     "containers": [{"name": "app", "image": "reg/app:1"}],
                     "ephemeralContainers": [{"name": "debug", "image": "reg/debug:1",
                                              "securityContext": {"privileged": True}}]},
            "status": {"initContainerStatuses": [status("setup", CID3, TERMINATED)],
                       "containerStatuses": [status("app", CID, RUNNING)],
                       "ephemeralContainerStatuses": [status("debug", CID2, RUNNING)]}}


@pytest.mark.parametrize("cid,name,started,privileged", [
    (CID3, "setup", False, True),    # init container, finished: no start_time
    (CID, "app", True, False),
    (CID2, "debug", True, True),     # ephemeral container: its status is in its own list
])
def test_init_and_ephemeral_containers_have_their_pod(cid: str, name: str, started: bool, privileged: bool) -> None:
    store = PodStore()
    store.upsert(all_kinds_pod())
    p = PodResolver(store).pod_json(f"pod{UID}/{cid}", 3, "/bin/ls", "")
    assert p is not None and p["name"] == "web-1"
    c = p["container"]
    assert (c["id"], c["name"], c["image"]) == (f"containerd://{cid}", name, {"id": f"reg/{name}@sha256:00",
                                                                             "name": f"reg/{name}:1"})
    assert ("start_time" in c) is started
    assert c["security_context"] == ({"privileged": True} if privileged else {})


def test_a_containers_pod_part_is_made_when_its_pod_arrives_and_remade_when_it_changes() -> None:
    """The watcher thread builds each container's shared pod part (PodResolver listens to the
    store), so a container's first process only looks it up; a part made for an older version
    of the pod is never used, even before the watcher has replaced it."""
    store = PodStore()
    res = PodResolver(store)
    cg = f"pod{UID}/{CID}"
    store.upsert(pod_obj())
    made = res._shared[CID][1]
    first = res.pod_json(cg, 7, "/bin/ls", "")
    assert first.shared is made and first["pod_labels"] == {"app": "web"}
    stale = res._shared[CID]
    store.upsert(pod_obj(labels={"app": "web", "tier": "1"}))
    assert res._shared[CID][1] is not made
    later = res.pod_json(cg, 8, "/bin/ls", "")
    assert later.shared is res._shared[CID][1] and later["pod_labels"] == {"app": "web", "tier": "1"}
    # as if the store had changed and the watcher not yet got to the resolver
    store.upsert(pod_obj(labels={"app": "web", "tier": "2"}))
    res._shared[CID] = stale
    res._by_cg.clear()
    assert res.pod_json(cg, 9, "/bin/ls", "")["pod_labels"] == {"app": "web", "tier": "2"}
    store.delete(pod_obj())   # its processes still running: the deleted pod's data (as Tetragon's)
    assert CID not in res._shared and res.pod_json(cg, 10, "/bin/ls", "")["pod_labels"] == {"app": "web", "tier": "2"}


def probe_pod(probes: dict[str, list[str]], init: bool = False) -> dict[str, Any]:
    """A pod whose container "app" (or, init=True, its init container "app") has these exec probes."""
    obj = pod_obj()
    c = obj["spec"]["containers"][0]
    c.update({k: {"exec": {"command": cmd}} for k, cmd in probes.items()})
    if init:
        obj["spec"]["initContainers"] = [obj["spec"]["containers"].pop(0)]
        obj["status"]["initContainerStatuses"] = [obj["status"]["containerStatuses"].pop(0)]
    return obj


SH_OK = ["/bin/sh", "-c", "test -f /tmp/ok"]
ARGV: Any = object()   # the arguments the process builder makes of the probe command


@pytest.mark.parametrize("probes,init,binary,arguments,want", [
    ({"readinessProbe": SH_OK}, False, "/bin/sh", '-c "test -f /tmp/ok"', True),
    ({"livenessProbe": SH_OK}, False, "/bin/sh", '-c "test -f /tmp/ok"', True),
    ({"readinessProbe": SH_OK}, False, "/bin/sh", "-c true", False),
    ({"readinessProbe": SH_OK}, False, "/usr/bin/sh", '-c "test -f /tmp/ok"', False),  # absolute: equal paths
    # as Tetragon: a startup probe's command is not flagged, nor a (sidecar) init container's probe
    ({"startupProbe": SH_OK}, False, "/bin/sh", '-c "test -f /tmp/ok"', False),
    ({"readinessProbe": SH_OK}, True, "/bin/sh", '-c "test -f /tmp/ok"', False),
    # a relative command compares last elements, also when it names a directory
    ({"livenessProbe": ["cat", "/tmp/ready"]}, False, "/bin/cat", "/tmp/ready", True),
    ({"livenessProbe": ["./bin/check", "x"]}, False, "/app/bin/check", "x", True),
    ({"livenessProbe": ["./bin/check", "x"]}, False, "/app/bin/other", "x", False),
    # a script run through its #! line: the kernel passes the script's path as the first argument
    ({"livenessProbe": ["/health/ping.sh", "5"]}, False, "/health/ping.sh", "/health/ping.sh 5", True),
    ({"livenessProbe": ["/health/ping.sh", "5"]}, False, "/health/ping.sh", "5", True),
    ({"livenessProbe": ["/health/ping.sh", "5"]}, False, "/health/ping.sh", "/health/ping.sh 6", False),
    ({"livenessProbe": ["ping.sh", "5"]}, False, "/health/ping.sh", "/health/ping.sh 5", False),
    # the arguments as the process's are written (a quoted first argument follows a space)
    ({"livenessProbe": ["python3", "my check.py", "x"]}, False, "/usr/bin/python3", ARGV, True),
    ({"livenessProbe": ["python3", "", "y"]}, False, "/usr/bin/python3", ARGV, True),
])
def test_maybe_exec_probe(probes: dict[str, list[str]], init: bool, binary: str, arguments: str,
                          want: bool) -> None:
    if arguments is ARGV:  # what the process builder makes of the probe's own argv
        from vigil.process.build import format_arguments
        cmd = next(iter(probes.values()))
        arguments = format_arguments("\0".join(cmd).encode() + b"\0")
    store = PodStore()
    store.upsert(probe_pod(probes, init))
    _pod, c = store.lookup(CID)
    assert maybe_exec_probe(c, binary, arguments) is want
    # the resolver's quick check on the arguments agrees
    got = PodResolver(store).pod_json(f"pod{UID}/{CID}", 7, binary, arguments)
    assert got is not None and got["container"].get("maybe_exec_probe", False) is want


@pytest.mark.parametrize("arguments,probe", [('-c "test -f /tmp/ok"', True), ("-c true", False)])
def test_a_forked_child_keeps_its_parents_exec_probe_guess(arguments: str, probe: bool) -> None:
    """As Tetragon's clone of the parent's process: its own pid, the parent's maybe_exec_probe."""
    store = PodStore()
    store.upsert(probe_pod({"livenessProbe": SH_OK}))
    res = PodResolver(store)
    parent = res.pod_json(f"pod{UID}/{CID}", 7, "/bin/sh", arguments)
    assert parent is not None
    child = res.with_pid(parent, 8)
    assert child["container"]["pid"] == 8 and child["container"].get("maybe_exec_probe", False) is probe
    assert {k: v for k, v in child["container"].items() if k != "pid"} == \
        {k: v for k, v in parent["container"].items() if k != "pid"}


def test_store_updates_notify_and_reindex() -> None:
    store = PodStore()
    seen: list[tuple[Any, Any]] = []
    store.listen(lambda old, new: seen.append((old and old.labels, new and new.labels)))
    store.upsert(pod_obj())
    store.upsert(pod_obj())                 # no change: no notification
    store.upsert(pod_obj(labels={"app": "web", "tier": "1"}, cid=CID2))
    assert store.lookup(CID) is None and store.lookup(CID2)[0].labels["tier"] == "1"
    store.replace_all([])
    assert len(store) == 0 and CID2 not in store.by_container
    assert seen == [(None, {"app": "web"}), ({"app": "web"}, {"app": "web", "tier": "1"}),
                    ({"app": "web", "tier": "1"}, None)]


@dataclass
class Sel:
    match_labels: dict[str, str] = field(default_factory=dict)
    match_expressions: tuple[Any, ...] = ()


@dataclass
class Req:
    key: str
    operator: str
    values: tuple[str, ...] = ()


NS_KEY = "k8s:io.kubernetes.pod.namespace"


@pytest.mark.parametrize("sel,labels,want", [
    (None, {"app": "web"}, True),
    (Sel(), {"app": "web"}, True),
    (Sel({"app": "web"}), {"app": "web", "tier": "front"}, True),
    (Sel({"app": "db"}), {"app": "web"}, False),
    (Sel({NS_KEY: "shop"}), {"app": "web"}, True),        # the namespace, under its k8s: key
    (Sel({NS_KEY: "other"}), {"app": "web"}, False),
    (Sel(match_expressions=(Req(NS_KEY, "In", ("shop", "x")),)), {}, True),
    (Sel(match_expressions=(Req("tier", "In", ("front", "back")),)), {"tier": "front"}, True),
    (Sel(match_expressions=(Req("tier", "In", ("front",)),)), {}, False),
    (Sel(match_expressions=(Req("tier", "NotIn", ("front",)),)), {"tier": "front"}, False),
    (Sel(match_expressions=(Req("gone", "NotIn", ("x",)),)), {}, True),
    (Sel(match_expressions=(Req("app", "Exists"),)), {"app": "web"}, True),
    (Sel(match_expressions=(Req("app", "DoesNotExist"),)), {"app": "web"}, False),
    (Sel(match_expressions=(Req("gone", "DoesNotExist"),)), {}, True),
    # as Tetragon: keys are matched as written; k8s: is no prefix of the pod's own labels, and
    # the namespace has no unprefixed key (a pod label of that name is the pod's own)
    (Sel({"k8s:app": "web"}), {"app": "web"}, False),
    (Sel(match_expressions=(Req("k8s:app", "Exists"),)), {"app": "web"}, False),
    (Sel({"io.kubernetes.pod.namespace": "shop"}), {"app": "web"}, False),
    (Sel({"io.kubernetes.pod.namespace": "other"}), {"io.kubernetes.pod.namespace": "other"}, True),
    (Sel({NS_KEY: "shop"}), {"io.kubernetes.pod.namespace": "other"}, True),
])
def test_pod_selector(sel: Sel | None, labels: dict[str, str], want: bool) -> None:
    """podSelector against a pod of namespace "shop" with these labels."""
    assert matches(sel, pod_labels("shop", labels)) is want


@pytest.mark.parametrize("image_id,repo", [
    ("reg.example/shop/web@sha256:" + "d" * 64, "reg.example/shop/web"),
    ("reg.example:5000/shop/web@sha256:abc", "reg.example:5000/shop/web"),
    ("docker.io/library/busybox@sha256:abc", "docker.io/library/busybox"),
    # as Tetragon: the repo comes from the imageID, never from the image name; an imageID
    # without exactly one @ (the image ran by its id) has none
    ("sha256:" + "d" * 64, ""),
    ("", ""),
    ("a@b@c", ""),
])
def test_container_selector_repo_is_the_image_ids(image_id: str, repo: str) -> None:
    assert image_repo(image_id) == repo
    assert container_labels("app", image_id) == {"name": "app", "repo": repo}


@pytest.mark.parametrize("image,image_id,selector,want", [
    ("reg.example/shop/web:1.2", "reg.example/shop/web@sha256:" + "d" * 64,
     {"name": "app", "repo": "reg.example/shop/web"}, True),
    # a tag of another repository than the image's digest: the digest's repository decides
    ("reg.example/alias:latest", "reg.example/shop/web@sha256:" + "d" * 64, {"repo": "reg.example/alias"}, False),
    ("reg.example/alias:latest", "reg.example/shop/web@sha256:" + "d" * 64, {"repo": "reg.example/shop/web"}, True),
    ("reg.example/shop/web:1.2", "sha256:" + "d" * 64, {"repo": "reg.example/shop/web"}, False),
])
def test_container_selector_picks_by_name_and_repo(image: str, image_id: str, selector: dict[str, str],
                                                   want: bool) -> None:
    """Through the policy filter: the container's cgroup is in the kernel map or not."""
    from vigil.k8s.policyfilter import PolicyFilter, Scope


    class Locator:
        def container_cgroups(self, pod: Any) -> dict[str, int]:
            return {c.id: 1000 + i for i, c in enumerate(pod.containers)}

    obj = pod_obj()
    obj["status"]["containerStatuses"][0].update(image=image, imageID=image_id)
    store, writer = PodStore(), Writer()
    store.upsert(obj)
    pf = PolicyFilter(store, writer, Locator())  # type: ignore[arg-type]
    fid = pf.add(Scope(None, None, Sel(selector)))
    assert pf.scopes[fid].cgroups == ({1000} if want else set())
    assert len(writer.keys) == int(want)


def exec_event(docker: str, n: int) -> ProcessExec:
    return ProcessExec(ProcessMsg(f"e{n}", 1, binary="/bin/x", docker=docker), None, (), "", "node")


def ids(events: list[Any]) -> list[str]:
    return [e.process.exec_id for e in events]


def test_hold_stage_waits_for_the_pod_then_enriches_in_order() -> None:
    store = PodStore()
    res = PodResolver(store)
    released: list[Any] = []
    hold = HoldStage(res, hold_seconds=5, max_events=3, emit=released.extend)
    store.listen(hold.on_pod)
    # the builder found no pod for these containers: one kubelet-managed, one plain Docker
    assert res.pod_json(f"pod{UID}/{CID}", 1, "/bin/x", "") is None
    assert res.pod_json(f"/docker/{CID2}", 1, "/bin/x", "") is None
    host = ProcessExec(ProcessMsg("h", 2, binary="/bin/h"), None, (), "", "node")
    evs = [exec_event(CID[:31], 1), host, exec_event(CID2[:31], 2), exec_event(CID[:31], 3)]
    out = hold.filter(evs, now_ns=0)
    assert out == [host, evs[2]]
    assert hold.stats()["held_now"] == 2
    store.upsert(pod_obj())             # the watcher delivers the pod
    assert ids(released) == ["e1", "e3"]
    assert all(e.process.pod["name"] == "web-1" for e in released)
    assert out[1].process.pod is None   # plain Docker: no pod, never held
    assert hold.stats()["released_enriched"] == 2 and hold.stats()["held_now"] == 0


@pytest.mark.parametrize("docker,gets_pod", [(CID[:31], True), (CID2[:31], False)])
def test_processes_forked_while_their_pod_was_awaited_get_it_too(docker: str, gets_pod: bool) -> None:
    """A container's first process forks before the kubelet reports the container: its
    children (cached with no pod, as their parent was) get the pod when the held events are
    released, so their later events carry it (Tetragon looks their pod up again); processes
    of other containers are left alone."""
    from vigil.process.cache import ProcessCache
    from vigil.process.ids import exec_id
    from vigil.process.model import Process

    store = PodStore()
    res = PodResolver(store)
    cache = ProcessCache()
    hold = HoldStage(res, hold_seconds=5, cache=cache, emit=lambda _evs: None)
    store.listen(hold.on_pod)
    assert res.pod_json(f"pod{UID}/{CID}", 1, "/bin/sh", "") is None
    procs = []
    for i, (pid, nspid) in enumerate(((100, 1), (101, 2))):  # the container's first process, its forked child
        eid = exec_id("node", 1000 + i, pid)
        p = Process(eid, (pid, 1000 + i), "", None, 1,
                    ProcessMsg(eid, pid, binary="/bin/sh", docker=docker if i else CID[:31]))
        p.docker, p.nspid = p.msg.docker, nspid
        cache.add(p, 0)
        res.podless(p)   # as the builders tell it of a process cached without its pod
        procs.append(p)
    first = ProcessExec(procs[0].msg, None, (), "", "node")
    assert hold.filter([first], now_ns=0) == []   # the first exec waits for the pod
    store.upsert(pod_obj())
    child = procs[1].msg.pod
    assert procs[0].msg.pod is not None and procs[0].msg.pod["container"]["pid"] == 1
    assert (child is not None) is gets_pod
    if gets_pod:
        assert child is not None and child["name"] == "web-1" and child["container"]["pid"] == 2


def test_hold_stage_deadline_and_bound_never_drop() -> None:
    store = PodStore()
    res = PodResolver(store)
    released: list[Any] = []
    hold = HoldStage(res, hold_seconds=1, max_events=2, emit=released.extend)
    assert res.pod_json(f"pod{UID}/{CID}", 1, "/bin/x", "") is None
    evs = [exec_event(CID[:31], i) for i in range(4)]
    out = hold.filter(evs, now_ns=0)
    assert out == evs[2:]                       # past the bound: out at once, counted
    assert hold.stats()["hold_overflow"] == 2
    hold.tick(now_ns=500_000_000)
    assert released == []
    hold.tick(now_ns=1_000_000_001)             # the wait ran out: out without pod data, counted
    assert released == evs[:2] and hold.stats()["released_without_pod"] == 2
    later = [exec_event(CID[:31], 9)]
    assert hold.filter(later, now_ns=2_000_000_000) == later


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({
    "labels": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    "workload": st.sampled_from(["", "web", "w\u00e9b"]), "image": st.sampled_from(["", "reg/web:1"]),
    "started": st.sampled_from(["", "2026-12-05T10:00:00Z"]), "pid": st.integers(0, 2**31),
    "probe": st.booleans(), "sc": st.sampled_from([None, {}, {"privileged": True}])}))
def test_pod_json_equals_the_whole_dicts_encoding(v: dict[str, Any]) -> None:
    """The export encodes a container's shared part once and adds the process's own fields:
    the same bytes as encoding the pod dict whole, and the dict is Tetragon's pod object."""
    import orjson

    from vigil.core.events import Pod
    from vigil.export.codec import pod_json

    cont: dict[str, Any] = {"id": "containerd://abc", "name": "app"}
    if v["image"]:
        cont["image"] = {"name": v["image"]}
    if v["started"]:
        cont["start_time"] = v["started"]
    if v["sc"] is not None:
        cont["security_context"] = v["sc"]
    shared: dict[str, Any] = {"namespace": "shop", "name": "web-1", "uid": "u", "container": cont}
    if v["labels"]:
        shared["pod_labels"] = v["labels"]
    if v["workload"]:
        shared["workload"] = v["workload"]
    p = Pod(shared, v["pid"], v["probe"])
    assert pod_json(p) == orjson.dumps(dict(p)) == orjson.dumps(p.as_dict())
    assert list(p) == list(shared) and p["container"]["id"] == "containerd://abc"
    assert ("pid" in p["container"]) == bool(v["pid"]) and shared["container"] is cont and "pid" not in cont
    if v["sc"] is not None:  # the last field, after the process's own (proto order)
        assert list(p["container"])[-1] == "security_context"


def test_a_change_a_listener_failed_on_is_told_again_at_the_next_sight_of_the_pod() -> None:
    """A listener that fails (a full kernel map) neither keeps the change from the others nor
    loses it: the watch replaying the same pod after the error, or a re-list, tells it again."""
    store = PodStore()
    heard: list[Any] = []
    fail = [True]

    def flaky(old: Any, new: Any) -> None:
        if fail[0]:
            raise OSError(12, "Cannot allocate memory")
        heard.append((old and old.labels, new and new.labels))
    other: list[Any] = []
    store.listen(flaky)
    store.listen(lambda old, new: other.append(new and new.labels))
    store.upsert(pod_obj())
    assert heard == [] and other == [{"app": "web"}] and store.listener_errors == 1
    fail[0] = False
    store.upsert(pod_obj())          # the same pod again (the watch resumed from before the error)
    assert heard == [(None, {"app": "web"})]
    store.upsert(pod_obj())          # told once, not again
    assert len(heard) == 1
    fail[0] = True
    store.replace_all([])            # its deletion fails to reach the listener
    fail[0] = False
    store.replace_all([])            # the next re-list tells it
    assert heard[-1] == ({"app": "web"}, None) and len(heard) == 2


def test_static_pods_and_exited_containers_in_the_policy_filter(tmp_path: Path) -> None:
    """A static pod's cgroup is named by its manifest's hash (the mirror pod's annotation), not
    its API uid; a container that exited has no cgroup and is not waited for; one still
    missing is looked for again with a wait that doubles, not a walk every second."""
    from vigil.k8s.policyfilter import CgroupLocator, PolicyFilter, Scope

    h = "6f8d1e2c3b4a59687d6e5f4a3b2c1d0e"
    static = pod_obj(name="etcd-node", uid=UID)
    static["metadata"]["annotations"] = {"kubernetes.io/config.mirror": h}
    cg = tmp_path / "kubepods" / "burstable" / f"pod{h}" / CID
    cg.mkdir(parents=True)
    done = pod_obj(name="job-1", uid="1" * 8 + UID[8:], cid=CID2)
    done["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 0}}

    store, w = PodStore(), Writer()
    loc = CgroupLocator(str(tmp_path))
    pf = PolicyFilter(store, w, loc)
    store.listen(pf.on_pod)
    store.upsert(static)
    store.upsert(done)
    fid = pf.add(Scope(namespace=None))
    assert pf.scopes[fid].cgroups == {cg.stat().st_ino}
    assert pf._pending == {}          # the exited container's cgroup is not waited for
    missing = pod_obj(name="late", uid="2" * 8 + UID[8:], cid="e" * 64)
    store.upsert(missing)             # running, no cgroup yet
    assert list(pf._pending) == [missing["metadata"]["uid"]]
    looks: list[str] = []
    pod_dir = loc.pod_dir
    loc.pod_dir = lambda uid: looks.append(uid) or pod_dir(uid)  # type: ignore[method-assign]
    t0 = time.monotonic()
    for k in range(10):               # ten ticks a second apart: looked for at 1, 3 and 7 s
        pf.retry_pending(now=t0 + k + 1.0)
    assert len(looks) == 3


@pytest.mark.parametrize("steps,found", [
    # (what happens to the pod, in order), then which container ids still give pod data
    ((), {CID: True}),
    (("delete",), {CID: True}),                       # deleted while its processes run
    (("relist-without",), {CID: True}),               # a re-list that no longer has it
    (("restart",), {CID: False, CID3: True}),         # a restarted container: the old id is gone
    (("restart", "delete"), {CID: False, CID3: True}),
    (("delete", "others"), {CID: False}),             # pushed out by the deletions of later pods
])
def test_a_deleted_pods_containers_are_still_found(steps: tuple[str, ...], found: dict[str, bool]) -> None:
    from vigil.k8s import pods

    store = PodStore()
    res = PodResolver(store)
    store.upsert(pod_obj())
    for step in steps:
        if step == "delete":
            store.delete(pod_obj())
        elif step == "relist-without":
            store.replace_all([])
        elif step == "restart":
            store.upsert(pod_obj(cid=CID3))
        elif step == "others":
            for i in range(pods.DELETED_CONTAINERS_MAX):
                other = pod_obj(cid=f"{i:064x}", uid=f"u{i}", name=f"o{i}")
                store.upsert(other)
                store.delete(other)
    assert len(store.deleted) <= pods.DELETED_CONTAINERS_MAX
    for cid, want in found.items():
        p = res.pod_json(f"pod{UID}/{cid}", 7, "/bin/ls", "")
        assert (p is not None) is want
        if want:
            assert p is not None and p["name"] == "web-1" and p["container"]["id"] == f"containerd://{cid}"
            assert not res.waits_for_pod(cid[:31])


def test_a_deleted_pods_containers_are_no_longer_waited_for() -> None:
    store = PodStore()
    res = PodResolver(store)
    store.upsert(pod_obj())
    res.pod_json(f"pod{UID}/{CID}", 7, "/bin/x", "")
    assert CID[:31] in res.by_docker
    store.replace_all([])
    assert CID[:31] not in res.by_docker and not res.waits_for_pod(CID[:31])


def _process_record(op: int, pid: int, ktime: int, ppid: int, pktime: int, nspid: int, cgroup: str,
                    nlink: int = 1) -> bytes:
    """An exec or clone record (msg_process) of /bin/sh -c x in `cgroup`, its parent named by key
    (nlink 0: an unlinked file, which gives the exec binary_properties)."""
    from vigil.events import records as R

    exe, cwd, fn, cg, args = b"/bin/sh", b"/", b"/bin/sh\0", cgroup.encode() + b"\0", b"sh\0-c\0x\0"
    host = (4026531835, 4026531836, 4026531837, 4026531838, 4026531839, 4026531840, 4026531841, 4026531842,
            4026531843, 4026531844)
    head = R.PROCESS.pack(op, 0, 0, 0, ktime + 1000, pid, 0, ktime, ppid, 0, pktime, pid, ppid, nspid, 0,
                          *([0] * 8), 0, 0, 0, 0, 0, 0, 0, *host, 77, 123456, 0o100755, nlink, ktime, 0, 0, 0,
                          len(exe), len(cwd), len(fn), len(cg), len(args), 0)
    return head + exe + cwd + fn + cg + args


KUBELET_CG, DOCKER_CG = f"/kubepods/besteffort/pod{UID}/{CID}", f"/docker/{CID3}"


def _no_status(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod as listed before the kubelet reported its containers (no container ids yet)."""
    return {**obj, "status": {}}


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("cgroup,news,want_pod", [
    # the pod came after the hold gave up
    (KUBELET_CG, ["pod"], True),
    # the pod was listed before, without its container's status; the status came after
    (KUBELET_CG, ["early", "pod"], True),
    # the pod came, then was deleted: its processes keep the pod they got (as Tetragon's)
    (KUBELET_CG, ["pod", "delete"], True),
    # listed without the container's status only: no pod for its processes
    (KUBELET_CG, ["early"], False),
    (KUBELET_CG, [], False),                   # still no pod: none
    (DOCKER_CG, ["pod"], False),               # a plain Docker container has no pod
])
def test_a_pod_that_comes_late_reaches_every_cached_process_of_its_container(
        compiled: bool, cgroup: str, news: list[str], want_pod: bool) -> None:
    """A container's processes built without their pod (its first exec, a child forked while
    the pod was awaited), whose held events left without it (the wait ran out): when the pod
    comes (or its container's status does), every cached process of the container gets it, with
    its own pid inside the container, so every later event carries it: the process's own exit,
    its children's `parent`, ancestors lists; their cached encodings are made again. A child
    forked after the pod came gets it at fork. Both builder twins."""
    from vigil.core import native
    from vigil.events import records as R
    from vigil.export import codec
    from vigil.process.build import BuildOptions, EventBuilder
    from vigil.process.cache import ProcessCache
    from vigil.process.clock import WallClock

    if compiled:
        assert native.fast is not None, "the compiled extension is not built (make native)"
    store = PodStore()
    res = PodResolver(store)
    cache = ProcessCache()
    b = EventBuilder(cache, WallClock(), BuildOptions("node", ancestors=True))
    b.pods = res
    if not compiled:
        b._fast = None
    handlers = b.record_handlers()
    hold = HoldStage(res, hold_seconds=1, cache=cache, emit=lambda _evs: None)
    store.listen(hold.on_pod)
    kubelet = "kubepods" in cgroup

    def exit_of(pid: int, ktime: int, t: int) -> Any:
        return handlers[R.OP_EXIT](R.EXIT.pack(R.OP_EXIT, 0, 0, R.EXIT.size, t, pid, 0, ktime, pid, 0), 0)

    shell = handlers[R.OP_EXEC](_process_record(R.OP_EXEC, 100, 5_000, 1, 0, 1, cgroup), 0)
    handlers[R.OP_CLONE](_process_record(R.OP_CLONE, 101, 6_000, 100, 5_000, 2, cgroup), 0)   # forked before
    handlers[R.OP_CLONE](_process_record(R.OP_CLONE, 103, 6_500, 101, 6_000, 4, cgroup), 0)   # and its child
    assert shell.process.pod is None and cache.get((101, 6_000)).msg.pod is None
    before = codec.process_json(cache.get((100, 5_000)).msg)   # its encoding, cached on its message
    assert hold.filter([shell], now_ns=0) == ([] if kubelet else [shell])
    hold.tick(now_ns=2_000_000_000)   # the wait ran out: the event left without its pod
    for step in news:
        if step == "delete":
            store.delete(pod_obj())
        else:
            store.upsert(_no_status(pod_obj()) if step == "early" else pod_obj())
    # an exec in the grandchild, and a child forked from the shell after the news
    ex = handlers[R.OP_EXEC](_process_record(R.OP_EXEC, 103, 7_000, 101, 6_000, 4, cgroup), 0)
    handlers[R.OP_CLONE](_process_record(R.OP_CLONE, 102, 8_000, 100, 5_000, 3, cgroup), 0)
    gone = [exit_of(103, 7_000, 9_000), exit_of(102, 8_000, 9_100), exit_of(100, 5_000, 9_200)]
    pods = {  # what carries the pod, and the pid inside the container it must name
        "the shell's cached process": (cache.get((100, 5_000)).msg.pod, 1),
        "the child forked before": (cache.get((101, 6_000)).msg.pod, 2),
        "the child forked after": (cache.get((102, 8_000)).msg.pod, 3),
        "the grandchild forked before": (cache.get((103, 6_500)).msg.pod, 4),
        "the exec's parent": (ex.parent.pod, 2),
        "the exec's ancestors": (ex.ancestors[0].pod if ex.ancestors else None, 1),
        "the exec's process": (ex.process.pod, 4),
        "the exit's parent": (gone[1].parent.pod, 1),
        "the shell's exit": (gone[2].process.pod, 1),
    }
    for what, (pod, pid) in pods.items():
        assert (pod is not None) is want_pod, what
        if want_pod:
            assert pod is not None and pod["name"] == "web-1" and pod["container"]["pid"] == pid, what
    after = codec.encode(gone[2])
    assert (b'"pod":{' in after) is want_pod and (b'"pod":{' in before) is False
    assert not want_pod or res.podless_now() == 0   # none left waiting



@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("adopting", [True, False], ids=["pod-given-to-the-cache", "pod-given-at-release"])
def test_a_held_exec_keeps_its_binary_properties_and_the_cache_gets_none(compiled: bool, adopting: bool) -> None:
    """An exec with binary_properties (an unlinked file) held for its pod: released with the pod
    and its binary_properties, while the cached process gets the pod and no binary_properties
    (Tetragon adds them to the exec event alone), whether the pod reached the cache first
    (PodResolver.adopt, the hold stage listening) or at the event's release. Before: the adopted
    message replaced the event's (binary_properties lost), or the event's went into the cache."""
    from vigil.events import records as R
    from vigil.process.build import BuildOptions, EventBuilder
    from vigil.process.cache import ProcessCache
    from vigil.process.clock import WallClock

    store = PodStore()
    res = PodResolver(store)
    cache = ProcessCache()
    b = EventBuilder(cache, WallClock(), BuildOptions("node"))
    b.pods = res
    if not compiled:
        b._fast = None
    released: list[Any] = []
    hold = HoldStage(res, hold_seconds=5, cache=cache, emit=released.extend)
    if adopting:
        store.listen(hold.on_pod)
    ex = b.record_handlers()[R.OP_EXEC](_process_record(R.OP_EXEC, 100, 5_000, 1, 0, 1, KUBELET_CG, nlink=0), 0)
    bp = {"file": {"inode": {"number": "123456", "links": 0}}}
    assert ex.process.pod is None and ex.process.binary_properties == bp
    if adopting:
        assert hold.filter([ex], now_ns=0) == []
        store.upsert(pod_obj())
    else:
        store.upsert(pod_obj())
        released = hold.filter([ex], now_ns=0)
    (got,) = released
    cached = cache.get((100, 5_000)).msg
    assert (got.process.binary_properties, got.process.pod is not None) == (bp, True)
    assert (cached.binary_properties, cached.pod is not None) == (None, True)


@pytest.mark.parametrize("pod_at,cgroup,want_pod,waiting", [
    ("before", KUBELET_CG, True, 0),     # the pod came between its build and the builder's word
    ("after", KUBELET_CG, True, 0),      # the pod came later: given then
    ("never", KUBELET_CG, False, 1),     # kept, waiting
    ("before", DOCKER_CG, False, 0),     # no kubelet container: never kept
])
def test_resolver_keeps_podless_processes_until_their_pod(pod_at: str, cgroup: str, want_pod: bool,
                                                          waiting: int) -> None:
    from vigil.process.cache import ProcessCache
    from vigil.process.model import Process

    store = PodStore()
    res = PodResolver(store)
    res.cache = cache = ProcessCache()
    assert res.pod_json(cgroup, 5, "/bin/sh", "") is None   # the builder found none
    p = Process("e", (100, 1), "", None, 1, ProcessMsg("e", 100, binary="/bin/sh", docker=CID[:31]))
    p.docker, p.nspid = p.msg.docker, 5
    cache.add(p, 0)
    if pod_at == "before":
        store.upsert(pod_obj())
    res.podless(p)
    if pod_at == "after":
        store.upsert(pod_obj())
        assert res.adopt(store.lookup(CID)[0]) == 1
    assert (p.msg.pod is not None) is want_pod
    if want_pod:
        assert p.msg.pod is not None and p.msg.pod["container"]["pid"] == 5
    assert res.podless_now() == waiting


def test_podless_index_stays_bounded() -> None:
    """Processes of a container whose pod never comes, gone from the cache: the index keeps
    only cached ones once it passes its bound."""
    from vigil.k8s import enrich
    from vigil.process.cache import ProcessCache
    from vigil.process.model import Process

    res = PodResolver(PodStore())
    res.cache = cache = ProcessCache(capacity=16, grace_ns=0)
    assert res.pod_json(KUBELET_CG, 5, "/bin/sh", "") is None
    for i in range(enrich._PODLESS_MIN * 2):
        p = Process(f"e{i}", (1000 + i, i), "", None, 1, ProcessMsg(f"e{i}", 1000 + i, docker=CID[:31]))
        p.docker = CID[:31]
        cache.add(p, i)   # (the oldest are evicted past the capacity)
        res.podless(p)
    assert res.podless_now() <= enrich._PODLESS_MIN
    assert res.podless_now() >= len(cache)
