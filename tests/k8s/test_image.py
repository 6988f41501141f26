"""The agent's image, run as the chart's DaemonSet says (items 4-5).

The test plays the DaemonSet controller and the kubelet for one node: the chart is rendered by
the real Helm engine and created on the API server; the DaemonSet's pod template becomes a Pod of
this node and a container under containerd CRI (privileged, host PID and network), with what the
kubelet would give it: the ConfigMap as a config directory, the service account's token, CA and
namespace at /var/run/secrets/kubernetes.io/serviceaccount, NODE_NAME from the downward API,
KUBERNETES_SERVICE_HOST/PORT, and the template's hostPath mounts. The agent must export events
with pod data, answer the readiness probe's command, and load a policy from the cluster.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.conftest import Cluster
from tests.k8s.env.procs import free_port
from tests.k8s.test_chart import render, sa_token
from tests.k8s.test_policies import policy, wait_for

pytestmark = pytest.mark.kernel
IMAGE_ARCHIVE = Path(os.environ.get("VIGIL_K8S_CACHE", "/var/cache/vigil-k8s")) / "image" / "vigil-agent.tar"
IMAGE = "vigil.test/vigil-agent:dev"


def events_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def container_pid(container_id: str) -> int:
    """A host pid of a process of the container (its cgroup path names the container)."""
    for d in sorted(os.listdir("/proc")):
        if not d.isdigit():
            continue
        try:
            if container_id in Path(f"/proc/{d}/cgroup").read_text():
                return int(d)
        except OSError:
            continue
    raise AssertionError(f"no process of container {container_id} in /proc")


def test_image_pins_are_the_venvs_versions() -> None:
    """The image's dependencies are the venv's exact versions: the gRPC stubs the venv generated
    refuse an older grpcio, so a base built earlier (or from a newer PyPI) must not be reused."""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "install/kubernetes/image/pins.py"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    pins = dict(line.split("==") for line in out.splitlines())
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["k8s"]:
        name = Requirement(req).name.lower()
        assert pins.get(name) == md.version(name), (name, pins.get(name))
    # and what those need, e.g. the kubernetes client's own requirements
    assert pins["urllib3"] == md.version("urllib3")
    assert "pytest" not in pins and "hypothesis" not in pins   # test tools stay out of the image


def test_agent_image_runs_as_the_chart_daemonset(cluster: Cluster) -> None:
    from kubernetes import client, utils

    if not IMAGE_ARCHIVE.exists():
        pytest.fail(f"{IMAGE_ARCHIVE} missing: `make k8s-image` builds it")
    cri, pb, kl = cluster.cri, cluster.cri.pb, cluster.kubelet
    cri.ctr("images", "import", str(IMAGE_ARCHIVE))
    ns = cluster.namespace("vigil-img")
    node_dir = cluster.workdir / "node"          # the node's files for this pod
    export_dir, run_dir = node_dir / "var-log-vigil", node_dir / "run-vigil"
    for d in (export_dir, run_dir):
        d.mkdir(parents=True, exist_ok=True)
    sock = f"unix://{run_dir}/vigil.sock"
    values = {"image": {"repository": IMAGE.rsplit(":", 1)[0], "tag": "dev"},
              "hostPaths": {"exportDir": str(export_dir), "runDir": str(run_dir)},
              "grpc": {"address": sock}, "metrics": {"port": free_port()}, "podWait": 1}
    docs = render(values, namespace=ns)
    rbac = client.RbacAuthorizationV1Api(cluster.client)
    cluster_scoped = []
    for d in docs:
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            d["metadata"]["name"] += f"-img-{cluster.run_id}"
            if d["kind"] == "ClusterRoleBinding":
                d["roleRef"]["name"] += f"-img-{cluster.run_id}"
            cluster_scoped.append(d)
        utils.create_from_dict(cluster.client, d, namespace=ns)
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    tpl = ds["spec"]["template"]
    spec = tpl["spec"]
    ctr_spec = spec["containers"][0]

    # the DaemonSet controller's pod for this node, and the kubelet's files for its volumes
    core = cluster.core
    pod_obj = core.create_namespaced_pod(ns, {"metadata": {"name": f"vigil-{cluster.node}", "labels": tpl["metadata"]["labels"]},
                                              "spec": {**spec, "nodeName": cluster.node}})
    cfg_dir = node_dir / "config"
    cfg_dir.mkdir()
    for k, v in cm["data"].items():
        (cfg_dir / k).write_text(v)
    sa_dir = node_dir / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(sa_token(cluster, ns, spec["serviceAccountName"]))
    (sa_dir / "ca.crt").write_text(cluster.api.ca_pem())
    (sa_dir / "namespace").write_text(ns)
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = [pb.Mount(container_path="/var/run/secrets/kubernetes.io/serviceaccount", host_path=str(sa_dir),
                       readonly=True)]
    for m in ctr_spec["volumeMounts"]:
        src = str(cfg_dir) if m["name"] == "config" else host_paths[m["name"]]
        mounts.append(pb.Mount(container_path=m["mountPath"], host_path=src, readonly=bool(m.get("readOnly"))))
    env = [pb.KeyValue(key="NODE_NAME", value=cluster.node),  # fieldRef spec.nodeName
           pb.KeyValue(key="KUBERNETES_SERVICE_HOST", value="127.0.0.1"),
           pb.KeyValue(key="KUBERNETES_SERVICE_PORT", value=str(cluster.api.port))]
    assert [e["name"] for e in ctr_spec["env"]] == ["NODE_NAME"]
    host_ns = pb.NamespaceOption(network=pb.NODE, pid=pb.NODE, ipc=pb.POD)
    uid = pod_obj.metadata.uid
    log_dir = node_dir / "pod-logs"
    log_dir.mkdir()
    sandbox = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=pod_obj.metadata.name, uid=uid, namespace=ns, attempt=0),
        log_directory=str(log_dir),
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=f"{kl.cgroup_root}/kubepods/burstable/pod{uid}",
                                       security_context=pb.LinuxSandboxSecurityContext(namespace_options=host_ns,
                                                                                       privileged=True)))
    sid = cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox), timeout=120).pod_sandbox_id
    cid = ""
    target = None
    try:
        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=ctr_spec["name"], attempt=0), image=pb.ImageSpec(image=ctr_spec["image"]),
            args=ctr_spec["args"], envs=env, mounts=mounts, log_path="vigil.log",
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                privileged=ctr_spec["securityContext"]["privileged"], namespace_options=host_ns)))
        cid = cri.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=cfg,
                                                                    sandbox_config=sandbox), timeout=120).container_id
        cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
        export = export_dir / "vigil.log"

        class Logs:  # the container's state and log tail, read when a wait fails
            def __str__(self) -> str:
                st = cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=10).status
                tail = "\n".join((log_dir / "vigil.log").read_text(errors="replace").splitlines()[-40:]) \
                    if (log_dir / "vigil.log").exists() else "(no log)"
                return f"state {st.state} exit {st.exit_code} {st.reason} {st.message}\n{tail}"
        logs = Logs()

        probes = []

        def probe() -> bool:
            """The readiness probe's command, run from the image with the pod's mounts (as a
            one-shot container of the pod: the kubelet would exec it in the agent's container)."""
            cmd = ctr_spec["readinessProbe"]["exec"]["command"]
            pcfg = pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="probe", attempt=len(probes)), image=pb.ImageSpec(image=ctr_spec["image"]),
                command=cmd, envs=env, mounts=mounts, linux=pb.LinuxContainerConfig(
                    security_context=pb.LinuxContainerSecurityContext(namespace_options=host_ns)))
            pid_ = cri.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=pcfg,
                                                                         sandbox_config=sandbox), timeout=120).container_id
            probes.append(pid_)
            cri.runtime.StartContainer(pb.StartContainerRequest(container_id=pid_), timeout=120)
            deadline = time.monotonic() + 120
            while True:
                st = cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=pid_), timeout=10).status
                if st.state == pb.CONTAINER_EXITED or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=pid_), timeout=60)
            return st.exit_code == 0

        def first_event() -> bool:
            st = cri.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=10).status
            if st.state == pb.CONTAINER_EXITED:
                raise AssertionError(f"the agent exited: {logs}")
            return any("process_exec" in e for e in events_in(export))

        wait_for(first_event, "the agent's first event",
                 timeout=180, why=logs)
        wait_for(probe, "the readiness probe passes", timeout=120, why=logs)

        # pod data from the API server, through the service account's token
        target = kl.run_pod(cluster.namespace("img-target"), "target", [{"name": "c", "command": ["/bin/sleep", "3600"]}],
                            labels={"app": "target"})
        marker = f"img-{cluster.run_id}"
        kl.exec(target, "c", ["/bin/echo", marker])

        def marked() -> dict[str, Any] | None:
            for e in events_in(export):
                p = e.get("process_exec", {}).get("process", {})
                if p.get("arguments") == marker:
                    return p
            return None
        p = wait_for(marked, "the exec in the target pod exported")
        assert p["pod"]["name"] == "target" and p["pod"]["container"]["name"] == "c"
        assert p["docker"] == target.containers["c"][:31]

        # a uprobe written for Tetragon's DaemonSet: the binary inside another container, by its
        # host pid under /procRoot (the chart mounts the node's /proc there); its events come
        # from the target pod's busybox, at its ELF entry point (busybox is stripped: addrs)
        cpid = container_pid(target.containers["c"])
        entry = struct.unpack_from("<Q", Path("/bin/busybox").read_bytes(), 24)[0]  # e_entry
        up_name, up_path = f"img-up-{cluster.run_id}", f"/procRoot/{cpid}/root/bin/busybox"
        cluster.custom.create_cluster_custom_object("cilium.io", "v1alpha1", "tracingpolicies", {
            "apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": up_name},
            "spec": {"uprobes": [{"path": up_path, "addrs": [entry], "message": "procRoot"}]}})
        up_marker = f"img-up-{cluster.run_id}"

        def uprobed() -> dict[str, Any] | None:
            kl.exec(target, "c", ["/bin/echo", up_marker])
            for e in events_in(export):
                u = e.get("process_uprobe", {})
                if u.get("policy_name") == up_name and u["process"].get("arguments") == up_marker:
                    return u
            return None
        u = wait_for(uprobed, "a uprobe event from the /procRoot/<pid>/root path", why=logs)
        assert u["path"] == up_path and u["message"] == "procRoot"
        assert u["process"]["pod"]["name"] == "target"

        # a policy from the cluster, listed over the chart's gRPC socket with its source
        cluster.custom.create_cluster_custom_object("cilium.io", "v1alpha1", "tracingpolicies",
                                                    policy("TracingPolicy", f"img-{cluster.run_id}", "/etc/hostname"))

        def listed() -> str | None:
            r = subprocess.run([sys.executable, "-m", "vigil.cli.main", "tracingpolicy", "list", "--server-address", sock],
                               capture_output=True, text=True, timeout=60)
            return r.stdout if f"img-{cluster.run_id}" in r.stdout else None
        out = wait_for(listed, "the cluster's policy listed by the agent in the image", why=logs)
        row = next(line for line in out.splitlines() if f"img-{cluster.run_id}" in line)
        assert "k8s" in row.split() and "enabled" in row.split()
    finally:
        if target is not None:
            kl.delete_pod(target)
        for name in (f"img-{cluster.run_id}", f"img-up-{cluster.run_id}"):
            try:
                cluster.custom.delete_cluster_custom_object("cilium.io", "v1alpha1", "tracingpolicies", name)
            except Exception:  # noqa: BLE001 - not created
                pass
        cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120)
        from tests.k8s.env.kubelet import remove_cgroups
        remove_cgroups(f"{kl.cgroup_root}/kubepods/burstable/pod{uid}")
        for d in cluster_scoped:
            fn = rbac.delete_cluster_role if d["kind"] == "ClusterRole" else rbac.delete_cluster_role_binding
            fn(d["metadata"]["name"])
