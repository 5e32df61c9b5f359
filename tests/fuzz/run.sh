#!/usr/bin/env bash
# run.sh [seconds]: build the clang fuzz build and run every fuzz target for
# `seconds` (default 30) over its seed corpus, two at a time. Fails when any
# target crashes, leaks, times out or runs out of memory, and prints that
# target's report. Prints one line per target: executions, coverage (cov: edges,
# ft: features, from libFuzzer's final status line), corpus size and crashes.
#   FUZZ_BUILD_DIR  the clang build (default build-fuzz)
#   FUZZ_JOBS       targets run at once (default 2, the CI box's cores)
#   FUZZ_TARGETS    space-separated subset of targets (default all in targets.txt)
#   FUZZ_OUT        where logs, new inputs and crash files go (default a temp dir)
#   FUZZ_RUNS       also stop a target after this many executions (default: time only)
# Without clang it prints SKIP and exits 0, except under CI=true, where a
# missing clang is a failure: CI must not pass without fuzzing.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_TARGET=${1:-30}
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
JOBS=${FUZZ_JOBS:-2}

CLANG=$(command -v clang || command -v clang-14 || true)
if [ -z "$CLANG" ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "fuzz: FAIL: clang not found (install clang and libclang-rt-14-dev; scripts/setup.sh does)" >&2
    exit 1
  fi
  echo "fuzz: SKIP: clang not found; install clang and libclang-rt-14-dev to run the fuzz targets"
  exit 0
fi

echo "== fuzz: building $BUILD with $CLANG"
CC=$CLANG cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCASCADE_FUZZ=ON >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target cascade_fuzz >/dev/null

OUT=${FUZZ_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/cascade-fuzz.XXXXXX")}
mkdir -p "$OUT"
read -r -a TARGETS <<<"${FUZZ_TARGETS:-$(tr '\n' ' ' <"$BUILD/tests/fuzz/targets.txt")}"
[ ${#TARGETS[@]} -gt 0 ] || { echo "fuzz: no targets in $BUILD/tests/fuzz/targets.txt" >&2; exit 1; }

# Leaks are failures (libFuzzer checks them itself with -detect_leaks=1);
# UBSan already aborts (-fno-sanitize-recover in the build).
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1

# One target: new inputs go to $OUT/<t>/corpus (the committed seeds are only
# read), crashes to $OUT/<t>/. Limits are explicit: 2 GB RSS, 10 s per input;
# inputs up to libFuzzer's default length, the larger of 4 KiB and the largest seed.
run_one() {
  local t=$1 dir="$OUT/$1" rc=0 t0
  mkdir -p "$dir/corpus"
  t0=$(date +%s)
  local seeds=tests/fuzz/corpus/$t opts=()
  [ -d "$seeds" ] || seeds=""
  # A dictionary of the format's keywords, where the target has one.
  [ -f "tests/fuzz/dict/$t.dict" ] && opts+=(-dict="tests/fuzz/dict/$t.dict")
  [ -n "${FUZZ_RUNS:-}" ] && opts+=(-runs="$FUZZ_RUNS")
  "$BUILD/tests/fuzz/fuzz_$t" -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$dir/" "${opts[@]}" "$dir/corpus" $seeds \
    >"$dir/log" 2>&1 || rc=$?
  echo "${rc:-0}" >"$dir/rc"
  echo $(($(date +%s) - t0)) >"$dir/seconds"
}

pids=()
for t in "${TARGETS[@]}"; do
  [ -x "$BUILD/tests/fuzz/fuzz_$t" ] || { echo "fuzz: $BUILD/tests/fuzz/fuzz_$t is missing" >&2; exit 1; }
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  run_one "$t" &
  pids+=($!)
done
wait

status=0
printf '%-18s %12s %8s %6s %6s %7s %7s %7s %s\n' target executions exec/s cov ft corpus crashes seconds result
for t in "${TARGETS[@]}"; do
  dir="$OUT/$t"
  rc=$(cat "$dir/rc" 2>/dev/null || echo 99)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log" | tail -1)
  # The last status line carries the final coverage: "#N DONE cov: X ft: Y corp: Z/..."
  last=$(grep -E '^#[0-9]+' "$dir/log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  crashes=$(find "$dir" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  secs=$(cat "$dir/seconds" 2>/dev/null || echo "?")
  result=ok
  if [ "$rc" != 0 ] || [ "$crashes" != 0 ]; then
    result="FAIL (exit $rc; crash files in $dir)"
    status=1
  fi
  printf '%-18s %12s %8s %6s %6s %7s %7s %7s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" \
    "${corp:-?}" "$crashes" "$secs" "$result"
done
for t in "${TARGETS[@]}"; do
  if [ "$(cat "$OUT/$t/rc" 2>/dev/null || echo 99)" != 0 ]; then
    echo "== fuzz: $t failed; the end of its log ($OUT/$t/log):"
    tail -n 60 "$OUT/$t/log"
  fi
done
echo "fuzz: logs and new inputs in $OUT"
exit $status
