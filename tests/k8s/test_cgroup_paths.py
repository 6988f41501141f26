"""Container id, pod UID and runtime from every cgroup layout (issue 10, item 1)."""
from __future__ import annotations

import pytest

from vigil.process.cgroups import ContainerRef, container_id, parse

CID = "4e6f1c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
UID = "0c7e9f3a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
UID_ = UID.replace("-", "_")
STATIC = "6f8d1e2c3b4a59687d6e5f4a3b2c1d0e"   # a static pod: the kubelet's hash of its manifest

LAYOUTS = [
    # cgroupfs driver (kubelet)
    (f"/kubepods/besteffort/pod{UID}/{CID}", ContainerRef(CID, UID, "")),
    (f"/kubepods/burstable/pod{UID}/{CID}", ContainerRef(CID, UID, "")),
    (f"/kubepods/pod{UID}/{CID}", ContainerRef(CID, UID, "")),  # guaranteed QoS
    (f"/kubepods/besteffort/pod{UID}/crio-{CID}", ContainerRef(CID, UID, "cri-o")),
    # systemd driver
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
     ContainerRef(CID, UID, "containerd")),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
     ContainerRef(CID, UID, "cri-o")),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope", ContainerRef(CID, UID, "docker")),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{CID}.scope",
     ContainerRef(CID, UID, "cri-o", conmon=True)),
    # static pods (kube-apiserver, etcd, ...): named by the manifest's hash, not a uid
    (f"/kubepods/burstable/pod{STATIC}/{CID}", ContainerRef(CID, STATIC, "")),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC}.slice/cri-containerd-{CID}.scope",
     ContainerRef(CID, STATIC, "containerd")),
    # the slice:prefix:id form (runc's --systemd-cgroup cgroupsPath)
    (f"kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}", ContainerRef(CID, UID, "containerd")),
    (f"system.slice:docker:{CID}", ContainerRef(CID, "", "docker")),
    # plain Docker and podman
    (f"/docker/{CID}", ContainerRef(CID, "", "")),
    (f"/system.slice/docker-{CID}.scope", ContainerRef(CID, "", "docker")),
    (f"/machine.slice/libpod-{CID}.scope/container", ContainerRef(CID, "", "podman")),
    (f"/machine.slice/libpod-{CID}.scope", ContainerRef(CID, "", "podman")),
    # a kubelet inside a Docker container (kind, minikube): the innermost container counts
    (f"/docker/{'a' * 64}/kubepods/besteffort/pod{UID}/{CID}", ContainerRef(CID, UID, "")),
    (f"/docker/{'a' * 64}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"cri-containerd-{CID}.scope", ContainerRef(CID, UID, "containerd")),
    # what the kernel records: the tracking cgroup's parent and leaf only
    (f"pod{UID}/{CID}", ContainerRef(CID, UID, "")),
    (f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope", ContainerRef(CID, UID, "containerd")),
    (f"libpod-{CID}.scope/container", ContainerRef(CID, "", "podman")),
    (f"cri-containerd-{CID}.scope", ContainerRef(CID, "", "containerd")),
]

NOT_CONTAINERS = ["", "/", "/user.slice/user-1000.slice/session-3.scope", "/system.slice/ssh.service",
                  "/init.scope", "/kubepods/besteffort", f"/kubepods/besteffort/pod{UID}",
                  f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice",
                  "/docker/abc123", "/machine.slice/libpod-conmon.scope", "/lxc/not-hex-" + "z" * 40]


@pytest.mark.parametrize("path,want", LAYOUTS, ids=[p[:60] for p, _ in LAYOUTS])
def test_layouts(path: str, want: ContainerRef) -> None:
    assert parse(path) == want
    assert container_id(path) == CID[:31]  # the docker field: Tetragon's truncation
    assert len(parse(path).docker) == 31


@pytest.mark.parametrize("path", NOT_CONTAINERS)
def test_not_a_container(path: str) -> None:
    assert parse(path) == ContainerRef()
    assert container_id(path) == ""


def test_short_or_uppercase_ids_are_not_container_ids() -> None:
    assert container_id("/docker/" + "a" * 30) == ""
    assert container_id("/docker/" + "A" * 64) == ""
    assert container_id("/docker/" + "a" * 31) == "a" * 31
