#!/usr/bin/env bash
# test.sh: the whole test suite. Builds twice, a normal build and one with
# AddressSanitizer + UndefinedBehaviorSanitizer, and runs every CTest test
# (unit, integration, end-to-end) against each, then every libFuzzer target
# (tests/fuzz/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=build scripts/setup.sh
BUILD_DIR=build-asan CMAKE_ARGS="-DCASCADE_SANITIZE=ON" scripts/setup.sh

# Leaks fail the sanitizer run, as do UB reports (-fno-sanitize-recover).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

# Tests labelled gpu need an NVIDIA GPU; on a machine without one they are
# left out by name, with the reason, rather than reported as skips (which
# fail under CI=true). bench/gpu/run.sh runs them on a GPU machine.
exclude=()
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "== no NVIDIA GPU here (nvidia-smi finds none): tests labelled gpu are not run"
  exclude=(-LE gpu)
fi

status=0
for dir in build build-asan; do
  echo "== ctest in $dir"
  ctest --test-dir "$dir" --output-on-failure -j2 --timeout 600 "${exclude[@]}" || status=1
done
# Every fuzz target for 30 s under ASan+UBSan (a clang build of its own; SKIP
# without clang, except under CI=true where that fails).
echo "== fuzz targets"
tests/fuzz/run.sh "${FUZZ_SECONDS:-30}" || status=1
exit $status
