#!/usr/bin/env bash
# Builds kube-apiserver 1.20.2 from Debian 12's own `kubernetes` source package (Debian's Go),
# and keeps the CRI api.proto of the same tree, in a cache OUTSIDE the repository.
#   usage: build-kube-apiserver.sh CACHE_DIR      (default /var/cache/vigil-k8s)
# Reused when CACHE_DIR/bin/kube-apiserver and CACHE_DIR/cri/api.proto exist. The source comes
# through a private apt configuration under CACHE_DIR/apt (deb-src of the host's Debian mirror), so
# the host's apt sources are never touched. Needs root (apt-get install of the build tools).
set -euo pipefail
CACHE=${1:-/var/cache/vigil-k8s}
BIN=$CACHE/bin/kube-apiserver
PROTO=$CACHE/cri/api.proto
RECIPE=2   # bump when the build below changes: a cached binary of another recipe is rebuilt
if [ -x "$BIN" ] && [ -s "$PROTO" ] && [ "$(cat "$CACHE/bin/.recipe" 2>/dev/null)" = "$RECIPE" ]; then
  exit 0
fi
log() { echo ">> k8s-apiserver: $*" >&2; }
mkdir -p "$CACHE/bin" "$CACHE/cri"
export DEBIAN_FRONTEND=noninteractive

# 1. build tools from Debian (installed only when missing)
need=""
for p in golang-go etcd-server golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev dpkg-dev rsync; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
  log "apt-get install$need"
  apt-get install -y -qq --no-install-recommends $need >/dev/null || { apt-get update -qq; apt-get install -y -qq --no-install-recommends $need >/dev/null; }
fi

# 2. the source package through a private deb-src configuration
A=$CACHE/apt
mkdir -p "$A/sources.list.d" "$A/lists/partial" "$A/cache/archives/partial" "$A/src"
: > "$A/sources.list"
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ]; then
  sed 's/^Types:.*/Types: deb-src/' "$src" > "$A/sources.list.d/debian-src.sources"
else
  grep -h '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > "$A/sources.list"
fi
APT=(-o "Dir::Etc::sourcelist=$A/sources.list" -o "Dir::Etc::sourceparts=$A/sources.list.d"
     -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
     -o "APT::Sandbox::User=root")
if ! ls "$A/src"/kubernetes_*.dsc >/dev/null 2>&1; then
  log "apt-get update (private deb-src lists)"
  apt-get "${APT[@]}" -qq update
  log "apt-get source --download-only kubernetes"
  (cd "$A/src" && apt-get "${APT[@]}" -qq source --download-only kubernetes)
fi

# 3. unpack into a GOPATH, swap the two vendored libraries that crash the 1.20 server on custom resources
W=$(mktemp -d "${TMPDIR:-/var/tmp}/vigil-kube-build.XXXXXX")
trap 'rm -rf "$W"' EXIT
GP=$W/gopath
mkdir -p "$GP/src/k8s.io"
log "unpacking $(ls "$A/src"/kubernetes_*.dsc)"
dpkg-source --no-check -x "$A"/src/kubernetes_*.dsc "$W/src" >/dev/null
mv "$W/src" "$GP/src/k8s.io/kubernetes"
K=$GP/src/k8s.io/kubernetes
for lib in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  rm -rf "$K/vendor/$lib"
  cp -rL "/usr/share/gocode/src/$lib" "$K/vendor/$lib"
done
cp "$K/staging/src/k8s.io/cri-api/pkg/apis/runtime/v1alpha2/api.proto" "$PROTO.tmp"

# 4. build
export GOPATH=$GP GO111MODULE=off CGO_ENABLED=0 GOCACHE=$W/gocache GOFLAGS=
log "make gen_openapi"
(cd "$K" && rm -f _output/bin/openapi-gen && make gen_openapi >"$W/gen.log" 2>&1) || { tail -30 "$W/gen.log" >&2; exit 1; }
log "go build ./cmd/kube-apiserver (a few minutes on 2 cores)"
V=k8s.io/kubernetes/vendor/k8s.io/component-base/version
(cd "$K" && go build -ldflags "-s -w -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean" \
   -o "$BIN.tmp" ./cmd/kube-apiserver)
mv "$BIN.tmp" "$BIN"
mv "$PROTO.tmp" "$PROTO"
echo "$RECIPE" > "$CACHE/bin/.recipe"
log "built $BIN ($(du -h "$BIN" | cut -f1))"
