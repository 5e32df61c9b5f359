#!/usr/bin/env bash
# inflight.sh: Redis's cost per admission as a tenant's requests in flight
# grow (issue 18, third pass).
#
# Why. Every request of a tenant with limits or a budget runs the admit
# script (EVALSHA) before the engine and the settle script after it. Each
# reservation in flight is a member of the tenant's set until it settles, so
# a script that reads every member costs more with every open stream, and
# one Redis shard serves all of a tenant's gateways.
#
# Method. One redis-server, one bench/upstream answering after DELAY_US (so
# CONNS requests stay in flight), and cascaded (1 worker; the tenant has
# RPM, TPM and a daily budget; cache off). For each CONNS in turn, and each
# build (this one, and OLD_BUILD's cascaded when given) in interleaved
# ROUNDS, Redis's statistics are reset (CONFIG RESETSTAT, the set and sums
# dropped), bench/loadgen runs closed loop with CONNS connections for
# REQUESTS requests, and INFO commandstats gives the EVALSHA calls and the
# microseconds Redis spent in them (admit and settle together: two calls a
# request); INFO cpu's used_cpu_user+sys before and after gives Redis's whole
# CPU per request.
#
# Usage: bench/policy/inflight.sh   env: CASCADE_BUILD_DIR OLD_BUILD=DIR
#   INFLIGHT="8 64 256 1000" ROUNDS=2 REQUESTS=3000 DELAY_US=0 (1000000 for
#   CONNS >= 500, so that they are in flight at once) OUT=DIR
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CASCADE_BUILD_DIR:-$REPO/build}
OLD_BUILD=${OLD_BUILD:-}
INFLIGHT=${INFLIGHT:-"8 64 256 1000"}
ROUNDS=${ROUNDS:-2}
REQUESTS=${REQUESTS:-3000}
OUT=${OUT:-$(mktemp -d /tmp/cascade-inflight.XXXXXX)}
KEY="sk-bench-$$-$RANDOM"
LOADGEN=$BUILD/bench/loadgen
UPSTREAM=$BUILD/bench/upstream
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
. "$REPO/bench/lib.sh"
need_bins "$LOADGEN" "$UPSTREAM" "$BUILD/gateway/cascaded"
[ -z "$OLD_BUILD" ] || need_bins "$OLD_BUILD/gateway/cascaded"

KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
printf '{"model":"deepseek-coder-1.3b","temperature":0.7,"messages":[{"role":"user","content":"in flight @@UNIQUE@@@@@@@@"}]}' >"$OUT/body.json"

declare -A PORT
# start_gateway NAME BINARY UPSTREAM_PORT
start_gateway() {
    cat >"$OUT/$1.json" <<EOF
{"listen":"127.0.0.1:0","workers":1,"redis":{"url":"redis://127.0.0.1:$REDIS_PORT/0","timeout_ms":2000},
 "tiers":[{"name":"small","model":"deepseek-coder-1.3b",
           "engine":{"kind":"remote","urls":["http://127.0.0.1:$3"],"timeout_ms":60000,"chunk_timeout_ms":30000},
           "price":{"input_per_1m":0.14,"output_per_1m":0.28}}],
 "tenants":[{"id":"bench","keys":["$KEY_SHA"],"allowed_tiers":["small"],"default_tier":"small",
             "limits":{"rpm":1000000000,"tpm":1000000000000},"budget":{"usd_per_day":1000000},
             "cache":{"mode":"off"}}]}
EOF
    bench_start "$1" "$2" -c "$OUT/$1.json"
    wait_for "$OUT/$1.log" '"msg":"listening"'
    PORT[$1]=$(grep -m1 '"msg":"listening"' "$OUT/$1.log" | sed -n 's/.*"addr":"127\.0\.0\.1:\([0-9]*\)".*/\1/p')
}
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
redis_cpu() { rcli INFO cpu | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.6f", s }'; }

echo "| requests in flight | build | EVALSHA µs per call (admit and settle) | Redis CPU µs per request | request p50 ms |"
echo "|---|---|---|---|---|"
for n in $INFLIGHT; do
    delay=${DELAY_US:-0}
    [ "$n" -ge 500 ] && [ -z "${DELAY_US:-}" ] && delay=1000000
    # a fresh upstream and gateways per level: the delay differs
    bench_cleanup
    BENCH_PIDS=()
    start_redis
    start_upstream --delay-us "$delay"
    start_gateway new "$BUILD/gateway/cascaded" "$UPORT"
    builds="new"
    if [ -n "$OLD_BUILD" ]; then start_gateway old "$OLD_BUILD/gateway/cascaded" "$UPORT"; builds="new old"; fi
    reqs=$REQUESTS
    [ "$delay" -gt 0 ] && reqs=$((n * 3))
    for round in $(seq 1 "$ROUNDS"); do
        for b in $builds; do
            rcli DEL 'cascade:{bench}:resv' 'cascade:{bench}:resv:sum' >/dev/null
            rcli CONFIG RESETSTAT >/dev/null
            c0=$(redis_cpu)
            line=$("$LOADGEN" --url "http://127.0.0.1:${PORT[$b]}/v1/chat/completions" --body "$OUT/body.json" --unique \
                --header "Authorization: Bearer $KEY" --rate 0 --connections "$n" --requests "$reqs" --duration 60 --warmup 0)
            c1=$(redis_cpu)
            ok=$(echo "$line" | sed -n 's/.*"ok":\([0-9]*\).*/\1/p')
            p50=$(echo "$line" | sed -n 's/.*"p50_us":\([0-9.]*\).*/\1/p' | awk '{ printf "%.1f", $1 / 1000 }')
            us=$(rcli INFO commandstats | sed -n 's/^cmdstat_evalsha:.*usec_per_call=\([0-9.]*\).*/\1/p')
            cpu=$(awk -v a="$c0" -v b="$c1" -v n="$ok" 'BEGIN { printf "%.0f", n ? (b - a) / n * 1e6 : 0 }')
            echo "| $n | $b | $us | $cpu | $p50 |"
            echo "{\"inflight\":$n,\"build\":\"$b\",\"round\":$round,\"evalsha_us\":${us:-null},\"redis_cpu_us\":$cpu,\"loadgen\":$line}" >>"$OUT/runs.jsonl"
        done
    done
done
echo
echo "new: $(build_commit "$BUILD")"
[ -z "$OLD_BUILD" ] || echo "old: $(build_commit "$OLD_BUILD")"
echo "inflight.sh: raw runs in $OUT/runs.jsonl" >&2
