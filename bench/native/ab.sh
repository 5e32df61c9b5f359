#!/bin/sh
# bench/native/ab.sh: two builds of bench_native side by side, in interleaved
# rounds (A, B, A, B, ...), so a change to the runtime is judged against the
# code before it on the same machine at the same moment.
#
#   bench/native/ab.sh OLD_BUILD NEW_BUILD [ROUNDS]
#
# Scenarios: stories260K single-stream and 16 streams, and the synthetic
# DeepSeek-Coder-1.3B shape (NEW_BUILD/models/ds13b, made by run.sh) decoding
# 16 tokens. One JSON line per run, prefixed by the build and the 1-minute
# load average.
set -eu
OLD=$1
NEW=$2
ROUNDS=${3:-3}
SHARED=${CASCADE_SHARED_DIR:-../shared}
STORIES=$SHARED/models/stories260K/stories260K.bin
BIG=$NEW/models/ds13b

run() {
    label=$1
    shift
    printf '%s load %s ' "$label" "$(cut -d' ' -f1 /proc/loadavg)"
    "$@"
}

i=0
while [ "$i" -lt "$ROUNDS" ]; do
    for b in old new; do
        if [ "$b" = old ]; then B=$OLD/engines/native/bench_native; else B=$NEW/engines/native/bench_native; fi
        run "$b" "$B" single --model "$STORIES" --runs 20
        run "$b" "$B" streams --model "$STORIES" --n 16 --runs 3
        if [ -f "$BIG/model.safetensors" ]; then
            run "$b" "$B" big --model "$BIG" --tokens 16 --runs 2 --mib 256
        fi
    done
    i=$((i + 1))
done
