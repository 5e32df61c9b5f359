#!/bin/sh
# bench/native/batched.sh: batched decode on the DeepSeek-Coder-1.3B shapes,
# two bench_native binaries side by side (e.g. the commit before the BF16
# kernels, built in a worktree, and the tree now), in interleaved rounds
# (the order flips each round), at 1, 4, 16 and 64 concurrent streams.
# One line per run: the build, the 1-minute load average at its start, the
# CPU seconds the run used (user and sys, from /usr/bin/time) and
# bench_native's JSON. On a shared machine the tok/s move with the load;
# read the old/new ratio within a round, and the medians across rounds.
#
#   bench/native/batched.sh OLD_BENCH NEW_BENCH MODEL_DIR [ROUNDS] [TOKENS] [THREADS]
#
# THREADS (default 2, both cores here): with 1, the CPU seconds are the work
# itself (no pool waiting on a preempted thread), the figure that moves least
# with other load: tokens / cpu_s is one core's rate.
# MODEL_DIR: a 1.3B-shaped checkpoint, made once with
#   BUILD/engines/native/cascade-gen-model --preset deepseek-coder-1.3b --out DIR
# TOKENS (default 16) per stream; 64 streams run TOKENS/2 to bound a round.
set -eu
OLD=$1
NEW=$2
MODEL=$3
ROUNDS=${4:-3}
TOKENS=${5:-16}
THREADS=${6:-2}

run() {
    label=$1
    shift
    load=$(cut -d' ' -f1 /proc/loadavg)
    out=$( { /usr/bin/time -f 'cpu_s %U %S' "$@"; } 2>&1 )
    printf '%s load %s %s\n' "$label" "$load" "$(echo "$out" | tr '\n' ' ')"
}

i=0
while [ "$i" -lt "$ROUNDS" ]; do
    if [ $((i % 2)) -eq 0 ]; then order="old new"; else order="new old"; fi
    for n in 1 4 16 64; do
        tok=$TOKENS
        [ "$n" -ge 64 ] && tok=$((TOKENS / 2))
        for b in $order; do
            if [ "$b" = old ]; then B=$OLD; else B=$NEW; fi
            run "$b" "$B" streams --model "$MODEL" --n "$n" --tokens "$tok" --runs 1 --threads "$THREADS"
        done
    done
    i=$((i + 1))
done
