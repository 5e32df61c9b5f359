#!/usr/bin/env bash
# build.sh: build Cascade's gateway image (or the engine's) with podman, from
# the working tree, and print how long it took and how big the image is.
#
#   deploy/container/build.sh [gateway|engine]      (default: gateway)
#
# Environment:
#   TAG            image tag (default: dev): cascade/gateway:$TAG
#   PODMAN         the podman binary (default: podman)
#   BUILD_OPTS     extra `podman build` options (default: --isolation chroot
#                  --network host: RUN steps need no OCI runtime, cgroups or
#                  bridge network, which is what restricted machines allow;
#                  set BUILD_OPTS= on an ordinary one)
#   DEBIAN_BASE    the Debian 12 image both gateway stages start from
#                  (default: docker.io/library/debian:bookworm-slim when it is
#                  in local storage, else localhost/debian:bookworm, made here)
#   DEBIAN_MIRROR  debootstrap's mirror (default: http://deb.debian.org/debian)
#   CA_BUNDLE      CA certificates the build's npm step trusts besides its
#                  own (default: /etc/ssl/certs/ca-certificates.crt when it
#                  exists): a proxy that intercepts TLS is trusted in the
#                  build as on this machine. A build secret: no layer keeps it.
#
# No registry needed: when no Debian base image is stored locally, one is made
# with `debootstrap --variant=minbase bookworm` (needs root and debootstrap)
# and imported as localhost/debian:bookworm. The engine image needs the
# NVIDIA CUDA images (engine.Containerfile): pull them first, or set its
# CUDA_DEVEL/CUDA_RUNTIME build args through BUILD_OPTS.
set -euo pipefail
cd "$(dirname "$0")/../.."

what=${1:-gateway}
case "$what" in gateway|engine) ;; *) echo "usage: $0 [gateway|engine]" >&2; exit 2 ;; esac
TAG=${TAG:-dev}
PODMAN=${PODMAN:-podman}
BUILD_OPTS=${BUILD_OPTS---isolation chroot --network host}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_BASE=localhost/debian:bookworm

# make_base: a minimal Debian 12 root, apt pointed at bookworm, its updates
# and security, trimmed like Debian's -slim images (no docs, man pages or
# locales; dpkg keeps them out of later installs too), imported as an image.
make_base() {
  command -v debootstrap >/dev/null || { echo "build.sh: no base image and no debootstrap (apt install debootstrap)" >&2; exit 1; }
  [ "$(id -u)" -eq 0 ] || { echo "build.sh: debootstrap needs root to make the base image" >&2; exit 1; }
  local root
  tmp=$(mktemp -d /var/tmp/cascade-base.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  root=$tmp/rootfs
  echo "build.sh: making $LOCAL_BASE with debootstrap from $MIRROR"
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/cache/apt/"*.bin "$root/var/lib/apt/lists/"* \
         "$root/var/log/"*.log "$root/var/log/apt/"*
  tar -C "$root" -c . | $PODMAN import --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
  rm -rf "$tmp"
  trap - EXIT
}

pick_base() {
  if [ -n "${DEBIAN_BASE:-}" ]; then
    echo "$DEBIAN_BASE"
  elif $PODMAN image exists docker.io/library/debian:bookworm-slim; then
    echo docker.io/library/debian:bookworm-slim
  else
    $PODMAN image exists "$LOCAL_BASE" || make_base >&2
    echo "$LOCAL_BASE"
  fi
}

start=$(date +%s)
args=()
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
[ -z "$CA_BUNDLE" ] || [ ! -s "$CA_BUNDLE" ] || args+=(--secret "id=ca-bundle,src=$CA_BUNDLE")
if [ "$what" = gateway ]; then
  base=$(pick_base)
  # One base for both stages: the build stage installs its toolchain itself.
  args+=(--build-arg "BUILD_BASE=$base" --build-arg "RUNTIME_BASE=$base")
  echo "build.sh: cascade/gateway:$TAG from $base"
fi
# shellcheck disable=SC2086
$PODMAN build $BUILD_OPTS "${args[@]}" -f "deploy/container/$what.Containerfile" -t "cascade/$what:$TAG" .
end=$(date +%s)
size=$($PODMAN image inspect --format '{{.Size}}' "cascade/$what:$TAG")
echo "build.sh: cascade/$what:$TAG built in $((end - start)) s; image size $size bytes ($((size / 1048576)) MiB)"
