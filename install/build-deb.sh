#!/bin/sh
# Build the Vigil Debian package: build-deb.sh PYTHON OUT.deb (run by `make deb`, after `make all`).
#
# Layout: /usr/bin/vigil (a wrapper), /usr/lib/vigil/venv (the Python package and its dependencies,
# on Debian's interpreter), /usr/lib/vigil/bpf (the BPF objects), /usr/lib/vigil/vigil-permd,
# /usr/share/vigil/policies (the policy library), /usr/share/vigil/crds (vigil explain),
# /usr/share/vigil/grafana, /etc/vigil (one file per agent option, conffiles), /etc/vigil/policies.d,
# /usr/lib/systemd/system/vigil.service.
set -eu
PYTHON=$1
OUT=$2
TOP=$(pwd)
STAGE=$TOP/build/deb/root
VENV=/usr/lib/vigil/venv
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)

rm -rf "$TOP/build/deb"
mkdir -p "$STAGE$VENV" "$STAGE/usr/bin" "$STAGE/usr/lib/vigil/bpf" "$STAGE/usr/share/vigil/grafana" \
         "$STAGE/usr/share/doc/vigil" "$STAGE/etc/vigil/policies.d" "$STAGE/usr/lib/systemd/system" "$STAGE/DEBIAN"

# the Python package, in a virtualenv made by Debian's interpreter at its final path
"$PYTHON" -m venv "$STAGE$VENV"
"$STAGE$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location "$TOP"
# scripts name the interpreter by the staging path: point them at the installed one
for f in "$STAGE$VENV"/bin/*; do
    if [ -f "$f" ] && [ ! -L "$f" ] && head -c 2 "$f" | grep -q '#!'; then
        sed -i "1s|^#!$STAGE$VENV/|#!$VENV/|" "$f"
    fi
done
sed -i "s|$STAGE$VENV|$VENV|g" "$STAGE$VENV"/bin/activate* "$STAGE$VENV/pyvenv.cfg" 2>/dev/null || true
find "$STAGE$VENV" -name __pycache__ -prune -exec rm -rf {} +   # compiled again on first use
# the compiled hot path (built by make against this interpreter's headers; not a package file)
SITE=$("$STAGE$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
install -m 0644 vigil/_fastpath*.so "$SITE/vigil/"

install -m 0644 build/bpf/*.bpf.o "$STAGE/usr/lib/vigil/bpf/"
install -m 0755 build/native/vigil-permd "$STAGE/usr/lib/vigil/vigil-permd"
cat > "$STAGE/usr/bin/vigil" <<'WRAP'
#!/bin/sh
# Vigil, installed: the package's BPF objects, permission helper and policy library.
export VIGIL_BPF_OBJECTS="${VIGIL_BPF_OBJECTS:-/usr/lib/vigil/bpf}"
export VIGIL_PERMD="${VIGIL_PERMD:-/usr/lib/vigil/vigil-permd}"
export VIGIL_POLICY_LIBRARY="${VIGIL_POLICY_LIBRARY:-/usr/share/vigil/policies}"
exec /usr/lib/vigil/venv/bin/vigil "$@"
WRAP
chmod 0755 "$STAGE/usr/bin/vigil"
cp -r policies "$STAGE/usr/share/vigil/policies"
mkdir -p "$STAGE/usr/share/vigil/crds"   # read by `vigil explain`
install -m 0644 install/kubernetes/vigil/crds/*.yaml "$STAGE/usr/share/vigil/crds/"
install -m 0644 install/grafana/vigil-dashboard.json "$STAGE/usr/share/vigil/grafana/"
install -m 0644 README.md "$STAGE/usr/share/doc/vigil/README.md"
install -m 0644 install/systemd/vigil.service "$STAGE/usr/lib/systemd/system/vigil.service"
for f in install/etc-vigil/*; do install -m 0644 "$f" "$STAGE/etc/vigil/"; done

( cd "$STAGE" && find etc -type f | sort | sed 's|^|/|' ) > "$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: vigil
Version: $VERSION
Architecture: $ARCH
Maintainer: Vigil developers <vigil@localhost>
Installed-Size: $SIZE
Depends: python3.11, libc6
Section: admin
Priority: optional
Description: eBPF security observability and enforcement (Tetragon-compatible)
 Vigil sees every process exec and exit with its ancestry, credentials and
 namespaces, runs TracingPolicies (with a library of ready-made ones) and
 enforces them, and exports Tetragon-format events (JSON, gRPC, metrics).
CONTROL
cat > "$STAGE/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    systemctl enable vigil.service >/dev/null || true
    systemctl restart vigil.service || true
fi
SCRIPT
cat > "$STAGE/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl stop vigil.service >/dev/null 2>&1 || true
    [ "$1" = remove ] && systemctl disable vigil.service >/dev/null 2>&1 || true
fi
SCRIPT
cat > "$STAGE/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
[ -d /run/systemd/system ] && systemctl daemon-reload >/dev/null 2>&1 || true
if [ "$1" = purge ]; then rm -rf /var/log/vigil; fi
SCRIPT
chmod 0755 "$STAGE/DEBIAN/postinst" "$STAGE/DEBIAN/prerm" "$STAGE/DEBIAN/postrm"
dpkg-deb --root-owner-group -Zgzip --build "$STAGE" "$OUT" >/dev/null
echo "built $OUT"
