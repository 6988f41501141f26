"""Debian's containerd with its CRI plugin on a private socket and root, runc underneath.

Host-network pods only (no CNI), the cgroupfs driver, `restrict_oom_score_adj` (no
CAP_SYS_RESOURCE here), and images imported from archives built here (no registry). Every path
containerd, the shims and runc use is under one test directory.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.k8s.env.ociimage import busybox_archive
from tests.k8s.env.procs import Server

ROOT = Path(__file__).resolve().parents[3]
CRI_STUBS = ROOT / "build" / "k8s" / "cri"
PAUSE = "vigil.test/pause:1"
BUSYBOX = "vigil.test/busybox:1"


def cri_modules() -> tuple[Any, Any]:
    if not (CRI_STUBS / "cri_api_pb2.py").exists():
        raise RuntimeError(f"{CRI_STUBS} has no CRI stubs: `make k8s-env` generates them")
    if str(CRI_STUBS) not in sys.path:
        sys.path.insert(0, str(CRI_STUBS))
    import cri_api_pb2
    import cri_api_pb2_grpc

    return cri_api_pb2, cri_api_pb2_grpc


def _config(d: Path) -> str:
    return f"""version = 2
root = "{d}/root"
state = "{d}/state"
plugin_dir = "{d}/plugins"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"""


class Containerd:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "containerd.sock"
        (self.dir / "config.toml").write_text(_config(self.dir))
        # containerd, its shims and runc live in a mount namespace of their own, rooted at a
        # recursive bind of "/": the containers' rootfs mounts never appear on the host (and
        # vanish with the namespace), and the root is a mount point, which runc needs (it remounts
        # "/" as a slave) and which a chroot such as the fresh-box check's lacks
        view = self.dir / "root-view"
        view.mkdir(exist_ok=True)
        # (everything is made private first; in a chroot "/" cannot be, so only the view is)
        self.server = Server("containerd", [
            "/usr/bin/unshare", "--mount", "--propagation", "unchanged", "--",
            "/bin/sh", "-c", 'mount --make-rprivate / 2>/dev/null; mount --rbind / "$0" && '
                             'mount --make-rprivate "$0" && exec chroot "$0" "$@"', str(view),
            "/usr/bin/containerd", "--config", str(self.dir / "config.toml"), "--log-level", "warn"],
            self.dir / "containerd.log")
        self.image_ids: dict[str, str] = {}
        self._channel: Any = None
        self.runtime: Any = None
        self.images: Any = None
        self.pb: Any = None

    def start(self) -> None:
        self.server.start()
        self.server.wait_until(lambda: self.sock.exists(), 30, "its socket")
        import grpc

        pb, rpc = cri_modules()
        self.pb = pb
        self._channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.runtime = rpc.RuntimeServiceStub(self._channel)
        self.images = rpc.ImageServiceStub(self._channel)
        self.server.wait_until(lambda: self.runtime.Version(pb.VersionRequest(), timeout=2), 30, "CRI Version")
        archive = self.dir / "images.tar"
        self.image_ids = busybox_archive(archive, {PAUSE: ["/bin/sleep", "2147483647"],
                                                   BUSYBOX: ["/bin/sh"]})
        self.ctr("images", "import", str(archive))

    def ctr(self, *args: str) -> str:
        r = subprocess.run(["/usr/bin/ctr", "--address", str(self.sock), "--namespace", "k8s.io", *args],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def image_ref(self, name: str) -> str:
        """The image id as the kubelet reports it (imageID)."""
        st = self.images.ImageStatus(self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=name)), timeout=10)
        return st.image.repo_digests[0] if st.image.repo_digests else st.image.id

    def remove_all(self) -> None:
        """Stop and remove every sandbox and container this containerd runs (all are the test's)."""
        if self.runtime is None:
            return
        pb = self.pb
        try:
            for s in self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
                self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=s.id), timeout=60)
                self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=s.id), timeout=60)
        except Exception as e:  # noqa: BLE001 - keep tearing down
            print(f"containerd cleanup: {e}", file=sys.stderr)

    def stop(self) -> None:
        self.remove_all()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.server.stop()
        # the shims outlive containerd by design: end the ones of this root (by pid, from its state)
        for pidfile in (self.dir / "state").glob("io.containerd.runtime.v2.task/*/*/shim.pid"):
            try:
                pid = int(pidfile.read_text())
                subprocess.run(["kill", str(pid)], check=False)
            except (OSError, ValueError):
                pass
        time.sleep(0.2)
        # overlay mounts left under our root (a crashed shim): unmount, deepest first
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.dir) + "/")]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
