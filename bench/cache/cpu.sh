#!/usr/bin/env bash
# cpu.sh: the gateway's CPU per request for a cache hit, against the same
# request sent past the cache to the upstream, for docs/deploy.md's sizing
# (requests per second per gateway core).
#
# Method. redis-server (no persistence), bench/upstream and one cascaded
# (WORKERS workers, the Redis cache, one tenant with no limits or budget).
# One deterministic request (temperature 0) fills the cache and the next is
# checked to be a hit. Then, in each of ROUNDS rounds and for each mode,
# bench/loadgen sends that request open loop at RATE req/s for DURATION
# seconds (after a 1 s warm-up) over CONNS connections:
#   hit     the request as is: auth, parse, key, Redis GET, replay, settle;
#   bypass  with `x-cascade-cache: bypass`: no lookup, the upstream answers,
#           settle (what a miss costs, without its store).
# The gateway's CPU (utime + stime from /proc/PID/stat, all threads) is read
# before and after each run and divided by the requests it answered in that
# run (the sum of cascade_requests_total from /metrics, warm-up included).
# CPU time, unlike latency, hardly depends on what else the machine runs.
#
# Usage: bench/cache/cpu.sh   env: CASCADE_BUILD_DIR, RATE=2000 DURATION=5
#        ROUNDS=3 CONNS=16 WORKERS=1 OUT=DIR
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CASCADE_BUILD_DIR:-$REPO/build}
RATE=${RATE:-2000}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-16}
WORKERS=${WORKERS:-1}
OUT=${OUT:-$(mktemp -d /tmp/cascade-cachecpu.XXXXXX)}
KEY="sk-bench-$$"
LOADGEN=$BUILD/bench/loadgen
UPSTREAM=$BUILD/bench/upstream
CASCADED=$BUILD/gateway/cascaded
mkdir -p "$OUT"

. "$REPO/bench/lib.sh"
need_bins "$LOADGEN" "$UPSTREAM" "$CASCADED"

start_redis
start_upstream
KEYH=$(printf %s "$KEY" | sha256sum | cut -c1-64)
cat >"$OUT/config.json" <<JSON
{"listen":"127.0.0.1:0","workers":$WORKERS,
 "redis":{"url":"redis://127.0.0.1:$REDIS_PORT/0","timeout_ms":200},
 "tiers":[{"name":"small","model":"deepseek-coder-1.3b","engine":{"kind":"remote","urls":["http://127.0.0.1:$UPORT"]},
           "price":{"input_per_1m":0.14,"output_per_1m":0.28}}],
 "tenants":[{"id":"bench","keys":["$KEYH"],"allowed_tiers":["small"]}]}
JSON
bench_start gateway "$CASCADED" -c "$OUT/config.json"
wait_for "$OUT/gateway.log" '"msg":"listening"'
GPORT=$(sed -n 's/.*"addr":"127.0.0.1:\([0-9]*\)".*/\1/p' "$OUT/gateway.log" | head -1)
GW_PID=${BENCH_PIDS[${#BENCH_PIDS[@]}-1]}
URL="http://127.0.0.1:$GPORT"

BODY="$OUT/body.json"
printf '%s' '{"model":"small","temperature":0,"messages":[{"role":"user","content":"What is the capital of France? Answer in one word."}]}' >"$BODY"
curl -sf "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    --data-binary @"$BODY" >/dev/null
curl -sfi "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    --data-binary @"$BODY" | grep -qi '^x-cascade-cache: hit' || { echo "cpu.sh: the second request was not a hit" >&2; exit 1; }

CLK_TCK=$(getconf CLK_TCK)
proc_cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
answered() { curl -sf "$URL/metrics" | awk '/^cascade_requests_total/ { s += $NF } END { printf "%d", s }'; }

: >"$OUT/runs.jsonl"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/load.txt"
for round in $(seq 1 "$ROUNDS"); do
    for mode in hit bypass; do
        extra=()
        [ "$mode" = bypass ] && extra+=(--header 'x-cascade-cache: bypass')
        n0=$(answered); c0=$(proc_cpu "$GW_PID")
        line=$("$LOADGEN" --url "$URL/v1/chat/completions" --body "$BODY" --header "Authorization: Bearer $KEY" \
            --header 'Content-Type: application/json' "${extra[@]}" --rate "$RATE" --duration "$DURATION" \
            --warmup 1 --connections "$CONNS")
        c1=$(proc_cpu "$GW_PID"); n1=$(answered)
        printf '{"mode":"%s","round":%d,"answered":%d,"cpu_ticks":%d,"result":%s}\n' \
            "$mode" "$round" "$((n1 - n0))" "$((c1 - c0))" "$line" >>"$OUT/runs.jsonl"
        echo "round $round $mode: $((n1 - n0)) answered, $((c1 - c0)) ticks: $line" >&2
    done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"

node - "$OUT/runs.jsonl" "$CLK_TCK" <<'EOF'
const fs = require('node:fs');
const runs = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const hz = Number(process.argv[3]);
const median = (v) => { const s = [...v].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
console.log('| mode | gateway CPU µs per request, median [min..max] | per round | requests/s per core (1 / median) | errors+non2xx |');
console.log('|---|---|---|---|---|');
for (const mode of ['hit', 'bypass']) {
  const rs = runs.filter((r) => r.mode === mode);
  const us = rs.map((r) => (r.cpu_ticks / hz) * 1e6 / r.answered);
  const bad = rs.reduce((n, r) => n + r.result.errors + r.result.non2xx, 0);
  const m = median(us);
  console.log(`| ${mode} | ${m.toFixed(1)} [${Math.min(...us).toFixed(1)}..${Math.max(...us).toFixed(1)}] | ` +
    `${us.map((x) => x.toFixed(1)).join(', ')} | ${Math.round(1e6 / m).toLocaleString('en-US')} | ${bad} |`);
}
EOF
cat "$OUT/load.txt"
