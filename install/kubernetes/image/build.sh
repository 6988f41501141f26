#!/usr/bin/env bash
# The agent's container image, without any image registry: a Debian 12 rootfs from debootstrap
# (python3 and the agent's Python dependencies as wheels from PyPI, at the host venv's versions)
# is the base, the agent (vigil/, the BPF objects, vigil-permd) goes on top; buildah turns them
# into an OCI archive.
#   usage: install/kubernetes/image/build.sh OUT_DIR      (run from the repository root, after make)
# Writes OUT_DIR/vigil-agent.tar (image vigil.test/vigil-agent:dev). The base rootfs is cached in
# OUT_DIR as a tar by the hash of the recipe and the pinned dependencies; the image is rebuilt
# when the agent's files change.
set -euo pipefail
OUT=${1:?usage: build.sh OUT_DIR}
IMAGE=${VIGIL_IMAGE:-vigil.test/vigil-agent:dev}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
log() { echo ">> k8s-image: $*" >&2; }
for f in build/bpf/process.bpf.o build/native/vigil-permd vigil/api/gen; do
  [ -e "$f" ] || { echo "build.sh: $f missing: run make first" >&2; exit 1; }
done

# buildah keeps its storage here, never in the host's /var/lib/containers
STORE=(--root "$OUT/storage" --runroot "$OUT/run" --storage-driver vfs)

# the venv's exact versions (pins.py says why): the stubs it generated need its own grpcio
deps=$($PY install/kubernetes/image/pins.py)
base_key=$( (cat install/kubernetes/image/build.sh install/kubernetes/image/pins.py; echo "$deps") | sha256sum | cut -c1-16)
BASE=$OUT/base-$base_key.tar
if [ ! -s "$BASE" ]; then
  log "base image $base_key: debootstrap bookworm + python3 + wheels"
  W=$(mktemp -d "${TMPDIR:-/var/tmp}/vigil-image.XXXXXX")
  trap 'umount -l "$W/rootfs/proc" 2>/dev/null || true; rm -rf --one-file-system "$W"' EXIT
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mkdir -p "$OUT/debs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libbpf1 --cache-dir="$OUT/debs" \
    bookworm "$W/rootfs" "${mirror:-http://deb.debian.org/debian}" >"$W/debootstrap.log" 2>&1 \
    || { tail -20 "$W/debootstrap.log" >&2; exit 1; }
  # the agent's dependencies as wheels (the host's pip configuration reaches PyPI), installed offline
  $PY -m pip wheel -q -w "$W/rootfs/tmp/wheels" $deps
  mount -t proc proc "$W/rootfs/proc"
  chroot "$W/rootfs" /usr/bin/python3 -m venv /opt/vigil/venv
  chroot "$W/rootfs" /opt/vigil/venv/bin/pip install -q --no-index --find-links /tmp/wheels $deps
  umount "$W/rootfs/proc"
  rm -rf "$W/rootfs/tmp/wheels" "$W/rootfs/var/cache/apt/archives/"*.deb "$W/rootfs/var/lib/apt/lists/"*
  printf '#!/bin/sh\nexec /opt/vigil/venv/bin/python -m vigil.cli.main "$@"\n' > "$W/rootfs/usr/local/bin/vigil"
  chmod 755 "$W/rootfs/usr/local/bin/vigil"
  tar -C "$W/rootfs" -cf "$BASE.tmp" .
  mv "$BASE.tmp" "$BASE"
  for old in "$OUT"/base-*.tar; do [ "$old" = "$BASE" ] || rm -f "$old"; done
  rm -rf --one-file-system "$W"; trap - EXIT
fi

# the agent on top, rebuilt when any of its files change
app_key=$( (echo "$base_key"; git ls-files -s vigil 2>/dev/null; find vigil build/bpf build/native/vigil-permd -type f \
           \( -name '*.py' -o -name '*.o' -o -name 'vigil-permd' -o -name 'py.typed' \) -print0 | sort -z | xargs -0 sha256sum) \
           | sha256sum | cut -c1-16)
FINAL=$OUT/vigil-agent.tar
if [ -s "$FINAL" ] && [ "$(cat "$OUT/vigil-agent.key" 2>/dev/null)" = "$app_key" ]; then
  exit 0
fi
log "agent $app_key on base $base_key"
# one layer, made from scratch: unpacking an image's layers (buildah from IMAGE) needs "/" to be a
# mount point, which it is not in a chroot (the fresh-box check runs there)
ctr=$(buildah "${STORE[@]}" from scratch)
trap 'buildah "${STORE[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah "${STORE[@]}" mount "$ctr")
tar -C "$mnt" -xf "$BASE"
mkdir -p "$mnt/opt/vigil/build/bpf" "$mnt/opt/vigil/build/native"
(tar -cf - --exclude=__pycache__ vigil) | tar -C "$mnt/opt/vigil" -xf -
cp build/bpf/*.bpf.o "$mnt/opt/vigil/build/bpf/"
cp build/native/vigil-permd "$mnt/opt/vigil/build/native/"
buildah "${STORE[@]}" umount "$ctr" >/dev/null
buildah "${STORE[@]}" config --env PYTHONPATH=/opt/vigil --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --workingdir /opt/vigil --entrypoint '["/opt/vigil/venv/bin/python","-m","vigil.cli.main","agent"]' --cmd '' \
  --label org.opencontainers.image.title=vigil-agent "$ctr"
buildah "${STORE[@]}" commit -q --format oci --rm "$ctr" "oci-archive:$FINAL.tmp:$IMAGE" >/dev/null
trap - EXIT
# storage holds nothing needed between builds (the archives are the cache)
buildah "${STORE[@]}" rmi --all -f >/dev/null 2>&1 || true
mv "$FINAL.tmp" "$FINAL"
echo "$app_key" > "$OUT/vigil-agent.key"
log "built $FINAL ($(du -h "$FINAL" | cut -f1))"
