"""A test fixture that plays the kubelet of one node: real pods through CRI, real Pod objects.

`run_pod()` writes the Pod (spec.nodeName = this node) to the API server, runs its sandbox and
containers through containerd's CRI with the kubelet's cgroupfs layout
(`<cgroup-root>/kubepods/besteffort/pod<uid>/<container id>`, under a cgroup root private to the
test run, as `kubelet --cgroup-root` makes), then writes `status.containerStatuses` as the kubelet
would. Everything it creates (pods, containers, cgroup directories) it removes again.
"""
from __future__ import annotations

import datetime as dt
import os
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.k8s.env.containerd import BUSYBOX, Containerd

# How a test runs a command inside a container: each test container starts with a small exec
# server (busybox sh) reading command lines from a FIFO the test owns, and runs each one as its
# own child with `exec`, inside the container (its root, namespaces and cgroup). CRI's ExecSync
# (runc exec) would do, except where the test harness itself runs in a chroot: there runc exec
# enters the container's mount namespace at the host's root instead of the container's.
EXEC_DIR = "/vigil-exec"
_EXEC_SERVER = (f'mkfifo {EXEC_DIR}/in 2>/dev/null; '
                f'(while true; do while read -r id cmd; do ( eval "exec $cmd" ) >{EXEC_DIR}/$id.out 2>&1; '
                f'echo $? >{EXEC_DIR}/$id.rc.tmp; mv {EXEC_DIR}/$id.rc.tmp {EXEC_DIR}/$id.rc; '
                f'done <{EXEC_DIR}/in; done) & exec "$0" "$@"')


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    sandbox_id: str
    containers: dict[str, str] = field(default_factory=dict)  # name -> container id
    cgroup_parent: str = ""
    exec_dirs: dict[str, str] = field(default_factory=dict)   # name -> host dir of its exec server
    statuses: list[dict[str, Any]] = field(default_factory=list)  # containerStatuses not reported yet


class Kubelet:
    def __init__(self, core: Any, cri: Containerd, node: str, cgroup_root: str) -> None:
        self.core = core
        self.cri = cri
        self.node = node
        self.cgroup_root = cgroup_root.rstrip("/")
        self.pods: list[RunningPod] = []

    def run_pod(self, namespace: str, name: str, containers: list[dict[str, Any]], *,
                labels: dict[str, str] | None = None, owner: dict[str, str] | None = None,
                node: str | None = None, start: bool = True, report: bool = True) -> RunningPod:
        """containers: [{"name": ..., "command": [...], "probe": [...] (exec liveness probe)}].
        report=False: the containers run, but their status (their ids) is written only by
        `report()` (a kubelet or API server that is slow to tell)."""
        spec_cs = []
        for c in containers:
            sc: dict[str, Any] = {"name": c["name"], "image": c.get("image", BUSYBOX), "command": c["command"]}
            if c.get("probe"):
                sc["livenessProbe"] = {"exec": {"command": c["probe"]}, "periodSeconds": 3600}
            spec_cs.append(sc)
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
        if owner:
            meta["ownerReferences"] = [{"apiVersion": owner.get("apiVersion", "apps/v1"), "kind": owner["kind"],
                                        "name": owner["name"], "uid": str(uuid.uuid4()), "controller": True}]
            meta["generateName"] = owner["name"] + "-"   # as a controller makes its pods (the name still wins)
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"nodeName": node or self.node, "hostNetwork": True, "containers": spec_cs,
                         "terminationGracePeriodSeconds": 0}}
        created = self.core.create_namespaced_pod(namespace, body)
        uid = created.metadata.uid
        parent = f"{self.cgroup_root}/kubepods/besteffort/pod{uid}"
        rp = RunningPod(namespace, name, uid, "", cgroup_parent=parent)
        self.pods.append(rp)
        if not start:
            return rp
        pb = self.cri.pb
        ns_opts = pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
        sandbox = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                                        "io.kubernetes.pod.uid": uid},
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent, security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=ns_opts)))
        rp.sandbox_id = self.cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox), timeout=120).pod_sandbox_id
        statuses = []
        for c in containers:
            xdir = self._exec_dir(rp, c["name"])
            cfg = pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name=c["name"], attempt=0),
                image=pb.ImageSpec(image=c.get("image", BUSYBOX)),
                command=["/bin/sh", "-c", _EXEC_SERVER, *c["command"]],
                mounts=[pb.Mount(container_path=EXEC_DIR, host_path=xdir)],
                labels={"io.kubernetes.container.name": c["name"], "io.kubernetes.pod.name": name,
                        "io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.uid": uid},
                linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                    namespace_options=ns_opts)))
            cid = self.cri.runtime.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=rp.sandbox_id, config=cfg, sandbox_config=sandbox), timeout=120).container_id
            self.cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
            rp.containers[c["name"]] = cid
            image = c.get("image", BUSYBOX)
            statuses.append({"name": c["name"], "containerID": f"containerd://{cid}", "image": image,
                             "imageID": self.cri.image_ref(image), "ready": True, "started": True,
                             "restartCount": 0, "state": {"running": {"startedAt": now_rfc3339()}}})
        rp.statuses = statuses
        if report:
            self.report(rp)
        return rp

    def report(self, rp: RunningPod) -> None:
        """Write the pod's container statuses (its container ids) to the API server."""
        self.core.patch_namespaced_pod_status(rp.name, rp.namespace, {"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": now_rfc3339(),
            "containerStatuses": rp.statuses}})

    def run_unlisted_pod(self, name: str, command: list[str]) -> RunningPod:
        """A sandbox and container in the kubelet layout whose Pod the API server never gets."""
        pb = self.cri.pb
        uid = str(uuid.uuid4())
        parent = f"{self.cgroup_root}/kubepods/besteffort/pod{uid}"
        rp = RunningPod("unlisted", name, uid, "", cgroup_parent=parent)
        self.pods.append(rp)
        ns_opts = pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
        sandbox = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace="unlisted", attempt=0),
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent, security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=ns_opts)))
        rp.sandbox_id = self.cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox), timeout=120).pod_sandbox_id
        cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c", attempt=0), image=pb.ImageSpec(image=BUSYBOX),
                                 command=["/bin/sh", "-c", _EXEC_SERVER, *command],
                                 mounts=[pb.Mount(container_path=EXEC_DIR, host_path=self._exec_dir(rp, "c"))],
                                 linux=pb.LinuxContainerConfig(
                                     security_context=pb.LinuxContainerSecurityContext(namespace_options=ns_opts)))
        cid = self.cri.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=rp.sandbox_id, config=cfg, sandbox_config=sandbox), timeout=120).container_id
        self.cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
        rp.containers["c"] = cid
        return rp

    def _exec_dir(self, pod: RunningPod, container: str) -> str:
        d = self.cri.dir / "exec" / f"{pod.uid}-{container}"
        d.mkdir(parents=True, exist_ok=True)
        pod.exec_dirs[container] = str(d)
        return str(d)

    def exec(self, pod: RunningPod, container: str, cmd: list[str], timeout: float = 60) -> str:
        """Run cmd inside the container (a child of its exec server); returns its output."""
        d = pod.exec_dirs[container]
        rid = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        while True:  # the server makes its FIFO when the container starts, then reads it
            try:
                fd = os.open(f"{d}/in", os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:  # not there yet, or no reader right now (ENXIO)
                if time.monotonic() > deadline:
                    raise AssertionError(f"exec server of {pod.name}/{container} not answering") from None
                time.sleep(0.005)
        try:
            os.write(fd, f"{rid} {shlex.join(cmd)}\n".encode())
        finally:
            os.close(fd)
        while not os.path.exists(f"{d}/{rid}.rc"):
            if time.monotonic() > deadline:
                raise AssertionError(f"exec {cmd} in {pod.name}/{container}: no answer")
            time.sleep(0.005)
        rc = int(open(f"{d}/{rid}.rc").read().strip() or "-1")
        out = open(f"{d}/{rid}.out", errors="replace").read()
        if rc != 0:
            raise AssertionError(f"exec {cmd} in {pod.name}/{container}: exit {rc}: {out!r}")
        return out

    def label(self, pod: RunningPod, labels: dict[str, str | None]) -> None:
        self.core.patch_namespaced_pod(pod.name, pod.namespace, {"metadata": {"labels": labels}})

    def cgroup_id(self, pod: RunningPod, container: str) -> int:
        """The container's tracking cgroup id (what the kernel filter keys on)."""
        from vigil.kernel.cgroups import tracking

        t = tracking()
        return os.stat(f"{t.mount}{pod.cgroup_parent}/{pod.containers[container]}").st_ino

    def delete_pod(self, pod: RunningPod) -> None:
        pb = self.cri.pb
        if pod.sandbox_id:
            try:
                self.cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.sandbox_id), timeout=60)
                self.cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.sandbox_id), timeout=60)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if pod.namespace != "unlisted":
            try:
                self.core.delete_namespaced_pod(pod.name, pod.namespace, grace_period_seconds=0)
            except Exception:  # noqa: BLE001
                pass
        remove_cgroups(pod.cgroup_parent)
        if pod in self.pods:
            self.pods.remove(pod)

    def close(self) -> None:
        for pod in list(self.pods):
            self.delete_pod(pod)
        remove_cgroups(self.cgroup_root)


def remove_cgroups(path: str) -> None:
    """rmdir `path` and everything below it on every mounted hierarchy (empty ones only)."""
    if not path.strip("/"):
        raise ValueError("refusing to remove a cgroup root")
    base = Path("/sys/fs/cgroup")
    roots = [base] if (base / "cgroup.controllers").exists() else [p for p in base.iterdir() if p.is_dir()]
    for r in roots:
        top = r / path.lstrip("/")
        if not top.is_dir():
            continue
        for d, _subdirs, _files in sorted(os.walk(top), key=lambda x: -len(x[0])):
            try:
                os.rmdir(d)
            except OSError:
                pass
