# lib.sh: what the benchmark scripts share. Source it; it defines
#   bench_start NAME CMD...   run CMD in the background, output to $OUT/NAME.log,
#                             remembered for cleanup (only the processes started here)
#   wait_for FILE REGEX       poll a log until a line matches (10 s at most)
#   free_port                 a TCP port free a moment ago
#   start_redis               redis-server without persistence; sets REDIS_PORT
#   start_upstream ARGS...    bench/upstream on a free port; sets UPORT
#   need_bins FILE...         exit 2 unless every binary is built
#   build_commit DIR          the commit a build tree's sources were at
# and installs an EXIT trap that stops what bench_start started.
BENCH_PIDS=()
bench_cleanup() {
    for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
trap bench_cleanup EXIT

bench_start() {
    local name=$1
    shift
    "$@" >"$OUT/$name.log" 2>&1 &
    BENCH_PIDS+=($!)
}

wait_for() {
    for _ in $(seq 1 200); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "$(basename "$0"): timed out waiting for /$2/ in $1" >&2
    cat "$1" >&2
    return 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_redis() {
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
    BENCH_PIDS+=($!)
    wait_for "$OUT/redis.log" 'Ready to accept'
}

# need_bins FILE...: every benchmark binary is built, or say which is not.
need_bins() {
    for b in "$@"; do [ -x "$b" ] || { echo "$(basename "$0"): $b not built" >&2; exit 2; }; done
}

# start_upstream ARGS...: bench/upstream (the fixed-delay test double); sets UPORT.
start_upstream() {
    bench_start upstream "$UPSTREAM" --port 0 "$@"
    wait_for "$OUT/upstream.log" 'UPSTREAM_PORT=[0-9]+'
    UPORT=$(sed -n 's/^UPSTREAM_PORT=\([0-9]*\).*/\1/p' "$OUT/upstream.log")
}

# build_commit DIR: the commit of the source tree DIR was configured from, and
# whether that tree had uncommitted changes in the gateway's code
build_commit() {
    local src
    src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$1/CMakeCache.txt" 2>/dev/null)
    [ -n "$src" ] || { echo "unknown ($1)"; return; }
    echo "$1 from $src at $(git -C "$src" rev-parse --short HEAD)$([ -z "$(git -C "$src" status --porcelain -- \
        gateway common engines/remote cache policies)" ] || echo ' + uncommitted changes')"
}
