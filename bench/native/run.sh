#!/bin/sh
# bench/native/run.sh: every benchmark of the native runtime, each scenario in
# its own process (so peak RSS is per scenario), REPEAT times, one JSON line
# per run with the 1-minute load average in front (the machine may be shared:
# read figures taken under load with care).
#
#   bench/native/run.sh [BUILD_DIR] [REPEAT]
#
# BUILD_DIR defaults to ./build; the synthetic DeepSeek-Coder-1.3B-shaped model
# (2.7 GB, BF16) is generated into BUILD_DIR/models/ds13b on first use.
# stories260K comes from $CASCADE_SHARED_DIR (default ../shared).
set -eu
BUILD=${1:-build}
REPEAT=${2:-3}
B=$BUILD/engines/native
SHARED=${CASCADE_SHARED_DIR:-../shared}
STORIES=$SHARED/models/stories260K/stories260K.bin
BIG=$BUILD/models/ds13b

run() {
    load=$(cut -d' ' -f1 /proc/loadavg)
    printf 'load %s ' "$load"
    "$B/bench_native" "$@"
}

if [ ! -f "$BIG/model.safetensors" ]; then
    mkdir -p "$BUILD/models"
    "$B/cascade-gen-model" --preset deepseek-coder-1.3b --out "$BIG"
fi

i=0
while [ "$i" -lt "$REPEAT" ]; do
    run copy --mib 1024
    run single --model "$STORIES" --runs 40
    run streams --model "$STORIES" --n 1 --runs 10
    run streams --model "$STORIES" --n 16 --runs 5
    run big --model "$BIG" --tokens 32 --runs 3 --mib 1024
    run streams --model "$BIG" --n 1 --tokens 32 --runs 1
    run streams --model "$BIG" --n 16 --tokens 32 --runs 1
    i=$((i + 1))
done
