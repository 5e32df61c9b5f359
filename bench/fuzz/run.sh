#!/usr/bin/env bash
# bench/fuzz/run.sh [seconds]: run every libFuzzer target long (default up to
# 600 s each), nice'd, two at a time, and report per target: executions, exec/s,
# coverage (cov: edges reached, ft: libFuzzer features, both from the final
# status line), corpus size, crashes (crash, leak, timeout and out-of-memory
# files) and wall seconds. The table and the command go in bench/README.md.
#   FUZZ_RUNS     stop a target once it has run this many inputs (default
#                 10000000, the issue's goal), so fast targets free their core
#                 for the slow ones; `seconds` caps every target
#   FUZZ_JOBS     targets at once (default 2)
#   FUZZ_TARGETS  a subset, space-separated (default all)
#   FUZZ_OUT      where logs, grown corpora and crash files go
#                 (default build-fuzz/bench-<UTC time>)
# Same build, limits and failure rules as CI (tests/fuzz/run.sh, which this
# calls); only the duration differs. Exits non-zero when any target crashed.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${1:-600}
export FUZZ_RUNS=${FUZZ_RUNS:-10000000}
export FUZZ_OUT=${FUZZ_OUT:-build-fuzz/bench-$(date -u +%Y%m%dT%H%M%SZ)}
echo "bench/fuzz: up to $SECS s or $FUZZ_RUNS runs per target, ${FUZZ_JOBS:-2} at a time, $(nproc) cores;" \
  "$( (clang --version || clang-14 --version) 2>/dev/null | head -1); started $(date -u +%FT%TZ)"
rc=0
nice -n 10 tests/fuzz/run.sh "$SECS" || rc=$?
echo "bench/fuzz: finished $(date -u +%FT%TZ); output in $FUZZ_OUT"
exit $rc
