#!/usr/bin/env bash
# overhead.sh: what admission plus settlement (two Redis Lua round trips per
# request) add to a request.
#
# Method. One bench/upstream (fixed-delay test double) and two cascaded
# processes that differ only in having "redis" configured:
#   local: no Redis; admission and settlement are in-process counters;
#   redis: every request runs the admit script before the engine and the
#          settle script after it (EVALSHA on the worker's connection).
# Requests are not cacheable (temperature 0.7), so the cache does not answer.
# The tenant has RPM, TPM and a daily budget, so every check runs.
# bench/loadgen sends the same open-loop rate to each, interleaved ROUNDS
# times; the table gives medians and the difference.
#
# Usage: bench/policy/overhead.sh  env: CASCADE_BUILD_DIR RATE=2000 DURATION=5 ROUNDS=3 CONNS=16 WORKERS=1
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CASCADE_BUILD_DIR:-$REPO/build}
RATE=${RATE:-2000}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-16}
WORKERS=${WORKERS:-1}
OUT=${OUT:-$(mktemp -d /tmp/cascade-policybench.XXXXXX)}
KEY="sk-bench-$$"
LOADGEN=$BUILD/bench/loadgen
UPSTREAM=$BUILD/bench/upstream
CASCADED=$BUILD/gateway/cascaded
mkdir -p "$OUT"
. "$REPO/bench/lib.sh"
need_bins "$LOADGEN" "$UPSTREAM" "$CASCADED"

start_redis
RPORT=$REDIS_PORT
start_upstream
KEYH=$(printf %s "$KEY" | sha256sum | cut -c1-64)

start_gw() { # NAME REDIS_JSON: starts cascaded; gw_port NAME reads its port
    cat >"$OUT/$1.json" <<JSON
{"listen":"127.0.0.1:0","workers":$WORKERS $2,
 "tiers":[{"name":"small","model":"m","engine":{"kind":"remote","urls":["http://127.0.0.1:$UPORT"]},
           "price":{"input_per_1m":0.14,"output_per_1m":0.28}}],
 "tenants":[{"id":"bench","keys":["$KEYH"],"allowed_tiers":["small"],
             "limits":{"rpm":100000000,"tpm":100000000000},"budget":{"usd_per_day":1000000}}]}
JSON
    bench_start "$1" "$CASCADED" -c "$OUT/$1.json"
    wait_for "$OUT/$1.log" '"msg":"listening"'
}
gw_port() { sed -n 's/.*"addr":"127.0.0.1:\([0-9]*\)".*/\1/p' "$OUT/$1.log" | head -1; }
start_gw local ""
start_gw redis ",\"redis\":{\"url\":\"redis://127.0.0.1:$RPORT/0\"}"
LPORT=$(gw_port local)
RPORT_GW=$(gw_port redis)
printf '%s' '{"model":"small","temperature":0.7,"max_tokens":16,"messages":[{"role":"user","content":"Say hello."}]}' >"$OUT/body.json"
lg() { "$LOADGEN" --url "http://127.0.0.1:$1/v1/chat/completions" --body "$OUT/body.json" \
        --header "Authorization: Bearer $KEY" --header 'Content-Type: application/json' \
        --rate "$RATE" --connections "$CONNS" --duration "$DURATION" --warmup 1; }
: >"$OUT/runs.jsonl"
for r in $(seq 1 "$ROUNDS"); do
    echo "{\"what\":\"local\",\"result\":$(lg "$LPORT")}" >>"$OUT/runs.jsonl"
    echo "{\"what\":\"redis\",\"result\":$(lg "$RPORT_GW")}" >>"$OUT/runs.jsonl"
done
ADMITS=$(redis-cli -p "$RPORT" HLEN 'cascade:{bench}:rl:req')
python3 - "$OUT/runs.jsonl" "$RATE" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(w, f): return statistics.median(r["result"][f] for r in rows if r["what"] == w)
print(f"open loop at {sys.argv[2]} req/s, medians of {len(rows)//2} rounds")
print()
print("| policy | p50 (µs) | p90 (µs) | p99 (µs) | errors / non-2xx |")
print("|---|---|---|---|---|")
for w in ("local", "redis"):
    print(f"| {w} | {med(w,'p50_us'):.0f} | {med(w,'p90_us'):.0f} | {med(w,'p99_us'):.0f} | {med(w,'errors'):.0f} / {med(w,'non2xx'):.0f} |")
print(f"| added by Redis admit + settle | {med('redis','p50_us')-med('local','p50_us'):+.0f} | {med('redis','p90_us')-med('local','p90_us'):+.0f} | {med('redis','p99_us')-med('local','p99_us'):+.0f} | |")
PY
echo "raw: $OUT/runs.jsonl (rl buckets seen in Redis: $ADMITS)"
