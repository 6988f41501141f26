"""Small OCI image archives built here (no registry is reachable): busybox-static and its applets.

`busybox_archive()` writes an OCI image layout tar that `ctr images import` takes; the image
name goes in the `io.containerd.image.name` annotation.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "cat", "true", "echo", "ls", "id", "env", "ps", "touch", "rm", "mkdir", "head")


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644, typ: bytes = tarfile.REGTYPE,
         link: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.mode, ti.type, ti.linkname, ti.mtime = mode, typ, link, 0
    ti.size = len(data) if typ == tarfile.REGTYPE else 0
    tar.addfile(ti, io.BytesIO(data) if typ == tarfile.REGTYPE else None)


def _layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "var", "run"):
            _add(t, d, typ=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        _add(t, "bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
        for a in APPLETS:
            _add(t, f"bin/{a}", typ=tarfile.SYMTYPE, link="busybox")
        _add(t, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\n")
        _add(t, "etc/group", b"root:x:0:\n")
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    d = hashlib.sha256(data).hexdigest()
    _add(tar, f"blobs/sha256/{d}", data)
    return d


def busybox_archive(path: Path, names: dict[str, list[str]]) -> dict[str, str]:
    """Write one archive holding an image per name (name -> Cmd). Returns name -> image id."""
    layer = _layer()
    ldig = hashlib.sha256(layer).hexdigest()
    manifests = []
    ids = {}
    with tarfile.open(path, "w") as t:
        _blob(t, layer)
        for name, cmd in names.items():
            config = json.dumps({
                "architecture": "amd64", "os": "linux",
                "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/"},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{ldig}"]},
            }, sort_keys=True).encode()
            cdig = _blob(t, config)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{cdig}",
                           "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{ldig}",
                            "size": len(layer)}],
            }, sort_keys=True).encode()
            mdig = _blob(t, manifest)
            ids[name] = f"sha256:{cdig}"
            manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{mdig}",
                              "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"},
                              "annotations": {"io.containerd.image.name": name,
                                              "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}})
        _add(t, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add(t, "index.json", json.dumps({"schemaVersion": 2, "manifests": manifests}).encode())
    return ids
