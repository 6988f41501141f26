"""The kernel records the tracking cgroup (id and parent/leaf names) of every exec (item 1)."""
from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.k8s.env.kubelet import remove_cgroups

pytestmark = pytest.mark.kernel

CID = uuid.uuid4().hex + uuid.uuid4().hex
UID = str(uuid.uuid4())
LAYOUTS = {
    "cgroupfs": f"kubepods/besteffort/pod{UID}/{CID}",
    "systemd": f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
               f"cri-containerd-{CID}.scope",
    "podman": f"machine.slice/libpod-{CID}.scope/container",
    "docker": f"docker/{CID}",
}


@pytest.fixture(scope="module")
def agent() -> Iterator[object]:
    from tests.kernel.bpfstate import require_root
    from tests.kernel.conftest import RunningAgent
    from vigil.agent.config import AgentConfig

    require_root()
    with RunningAgent(AgentConfig(server_address="", node_name="vigil-cgroup-test")) as ra:
        yield ra


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_exec_in_a_container_cgroup(agent, layout: str) -> None:  # type: ignore[no-untyped-def]
    from vigil.kernel.cgroups import tracking

    t = tracking()
    root = f"/vigil-cgtest-{uuid.uuid4().hex[:6]}"
    path = f"{root}/{LAYOUTS[layout]}"
    d = t.mount + path
    os.makedirs(d)
    try:
        token = f"cg-{uuid.uuid4().hex}"
        # the shell moves itself into the cgroup, then execs the marked binary there
        events = agent.collect(lambda: subprocess.run(
            ["/bin/sh", "-c", f'echo $$ > {d}/cgroup.procs && exec /bin/echo {token}'], check=True,
            stdout=subprocess.DEVNULL))
        (ex,) = [e["process_exec"] for e in events if "process_exec" in e
                 and e["process_exec"]["process"].get("arguments") == token]
        assert ex["process"]["docker"] == CID[:31]
        p = agent.agent.cache.get(ex["process"]["exec_id"])
        assert p is not None and p.cgroup_id == os.stat(d).st_ino   # the tracking hierarchy's id
    finally:
        remove_cgroups(root)
