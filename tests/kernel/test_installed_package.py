"""The Debian package (`make deb`): its contents, and the agent it installs run as its systemd unit
would run it: the unit's own ExecStart, the runtime and logs directories the unit asks systemd for,
then `vigil status`, the policy library, the export file and the metrics endpoint used as an
operator would on a machine with the package. Nothing is installed on the host: the files are
unpacked under a test directory.
"""
from __future__ import annotations

import configparser
import glob
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.kernel.bpfstate import require_root
from vigil.policy.library import entries

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]


def the_deb() -> Path:
    debs = sorted(glob.glob(str(REPO / "build" / "vigil_*.deb")))
    if not debs:
        pytest.fail("build/vigil_*.deb missing: `make deb` (make test builds it)")
    return Path(debs[-1])


def contents(deb: Path) -> dict[str, tarfile.TarInfo]:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name.removeprefix("./"): m for m in t.getmembers()}


def unit(deb: Path, tmp: Path) -> configparser.ConfigParser:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(tmp / "x" / "usr/lib/systemd/system/vigil.service")
    return cp


def test_package_contents_and_unit(tmp_path: Path):
    deb = the_deb()
    files = contents(deb)
    for f in ("usr/bin/vigil", "usr/lib/vigil/vigil-permd", "usr/lib/vigil/bpf/process.bpf.o",
              "usr/lib/vigil/bpf/generic.bpf.o", "usr/lib/vigil/venv/bin/vigil", "usr/lib/systemd/system/vigil.service",
              "usr/share/vigil/grafana/vigil-dashboard.json", "usr/share/vigil/policies/README.md",
              "usr/share/vigil/policies/network/raw-sockets/policy.yaml", "etc/vigil/export-filename",
              "etc/vigil/server-address", "etc/vigil/tracing-policy-dir"):
        assert f in files, f
    assert files["etc/vigil/policies.d"].isdir()
    assert any(f.startswith("usr/lib/vigil/venv/lib/python3.11/site-packages/vigil/_fastpath.") for f in files)
    assert files["usr/bin/vigil"].mode & 0o111 and files["usr/lib/vigil/vigil-permd"].mode & 0o111
    info = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Depends"], capture_output=True, text=True,
                          check=True).stdout
    assert "Package: vigil" in info and "python3.11" in info
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert "/etc/vigil/export-filename" in conffiles and all(c.startswith("/etc/vigil/") for c in conffiles)
    u = unit(deb, tmp_path)
    svc = u["Service"]
    assert svc["ExecStart"].split()[:4] == ["/usr/bin/vigil", "agent", "--config-dir", "/etc/vigil"]
    assert (svc["RuntimeDirectory"], svc["LogsDirectory"], svc["Restart"]) == ("vigil", "vigil", "on-failure")
    assert u["Install"]["WantedBy"] == "multi-user.target"
    # every option file names an agent option (the agent refuses unknown ones)
    r = subprocess.run([str(REPO / ".venv/bin/vigil"), "agent", "--help"], capture_output=True, text=True)
    for f in (tmp_path / "x" / "etc/vigil").iterdir():
        if f.is_file():
            assert f"--{f.name}" in r.stdout, f.name


SCRIPT = r"""
set -eu
T={tmp}
R=$T/root
ip link set lo up
# the package's files, as dpkg -i unpacks them, under $R; the paths it names are moved there too
dpkg-deb -x {deb} $R
sed -i "s|/usr/lib/vigil|$R/usr/lib/vigil|g; s|/usr/share/vigil|$R/usr/share/vigil|g" $R/usr/bin/vigil
sed -i "1s|^#!/usr/lib/vigil|#!$R/usr/lib/vigil|" $R/usr/lib/vigil/venv/bin/vigil
sed -i "s|/run/|$T/run/|" $R/etc/vigil/server-address $R/etc/vigil/info-file
sed -i "s|/var/log/|$T/log/|" $R/etc/vigil/export-filename
sed -i "s|/etc/vigil|$R/etc/vigil|" $R/etc/vigil/tracing-policy-dir
export VIGIL_INFO_FILE=$T/run/vigil/vigil-info.json
# what systemd does for the unit: RuntimeDirectory=, LogsDirectory=, then ExecStart
mkdir -p -m 0750 $T/run/{runtime} $T/log/{logs}
$(echo "{execstart}" | sed "s|/usr/bin/vigil|$R/usr/bin/vigil|; s|/etc/vigil|$R/etc/vigil|") 2> $T/agent.err &
AGENT=$!
trap 'kill -TERM $AGENT 2>/dev/null; wait $AGENT 2>/dev/null || true' EXIT
i=0
until grep -q "vigil agent ready" $T/agent.err; do
    i=$((i + 1)); [ $i -lt 1200 ] || {{ echo "AGENT-NOT-READY"; cat $T/agent.err; exit 1; }}
    kill -0 $AGENT 2>/dev/null || {{ echo "AGENT-DIED"; cat $T/agent.err; exit 1; }}
    sleep 0.1
done
echo "== status"
$R/usr/bin/vigil status
echo "== library"
$R/usr/bin/vigil policy library list | tail -1
/usr/bin/true vigil-installed-marker
echo "== tracingpolicy"
$R/usr/bin/vigil tracingpolicy add library:raw-sockets
$R/usr/bin/vigil tracingpolicy list
echo "== metrics"
$R/usr/lib/vigil/venv/bin/python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:2112/metrics', timeout=10).read().decode())" | grep '^tetragon_build_info'
echo "== run"
ls $T/run/vigil
kill -TERM $AGENT
wait $AGENT && echo "== agent exit 0"
trap - EXIT
echo "== export"
grep -c vigil-installed-marker $T/log/vigil/vigil.log
"""


def test_installed_agent_answers_vigil_status(tmp_path: Path):
    """The package's files unpacked under a test directory, with the absolute paths they name moved
    there (the package installed over the real /usr needs a private mount namespace, which a chroot
    cannot give), run by the unit's ExecStart in a network namespace of its own (its loopback
    metrics port is its own)."""
    require_root()
    deb = the_deb()
    u = unit(deb, tmp_path)
    svc = u["Service"]
    script = SCRIPT.format(tmp=tmp_path, deb=deb, execstart=svc["ExecStart"], runtime=svc["RuntimeDirectory"],
                           logs=svc["LogsDirectory"])
    r = subprocess.run(["/usr/bin/unshare", "--net", "--fork", "/bin/sh", "-c", script], capture_output=True,
                       text=True, timeout=300)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    status = out.split("== status")[1].split("== library")[0]
    assert "Health Status: running" in status and f"Server: unix://{tmp_path}/run/vigil/vigil.sock" in status
    assert f"{len(entries())} policies in {tmp_path}/root/usr/share/vigil/policies" in out
    assert "raw-sockets" in out.split("== tracingpolicy")[1]
    assert 'tetragon_build_info{' in out.split("== metrics")[1]
    assert out.split("== run")[1].split()[:2] == ["vigil-info.json", "vigil.sock"]
    assert "== agent exit 0" in out
    export = out.split("== export")[1].split()
    assert int(export[0]) >= 1  # the marker's exec and exit reached the export file


def test_installed_paths_fit_together(tmp_path: Path):
    """What the relocated run above cannot see: the absolute paths of the package name each other."""
    from vigil.api.client import INFO_FILES

    deb = the_deb()
    unit(deb, tmp_path)
    x = tmp_path / "x"
    wrapper = (x / "usr/bin/vigil").read_text()
    for path in ("/usr/lib/vigil/bpf", "/usr/lib/vigil/vigil-permd", "/usr/share/vigil/policies",
                 "/usr/lib/vigil/venv/bin/vigil"):
        assert path in wrapper and (x / path.lstrip("/")).exists(), path
    assert (x / "usr/lib/vigil/venv/bin/vigil").read_text().startswith("#!/usr/lib/vigil/venv/bin/python\n")
    opt = {f.name: f.read_text().strip() for f in (x / "etc/vigil").iterdir() if f.is_file()}
    (tmp_path / "u").mkdir()
    svc = unit(deb, tmp_path / "u")["Service"]
    assert opt["info-file"] in {f.replace("/var/run/", "/run/") for f in INFO_FILES}  # where vigil status looks
    assert opt["server-address"] == "unix:///run/vigil/vigil.sock"
    assert opt["info-file"].startswith(f"/run/{svc['RuntimeDirectory']}/")
    assert opt["export-filename"].startswith(f"/var/log/{svc['LogsDirectory']}/")
    assert opt["tracing-policy-dir"] == "/etc/vigil/policies.d" and (x / "etc/vigil/policies.d").is_dir()
