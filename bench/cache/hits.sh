#!/usr/bin/env bash
# hits.sh: cache-hit throughput and latency through cascaded, against
# redis-benchmark GET on the same Redis in the same run (the bound for one
# round trip to Redis).
#
# Method. Start redis-server (no persistence), bench/upstream and cascaded
# with its cache on that Redis. One deterministic request (temperature 0) is
# sent once to fill the cache; every request after that is a hit: the gateway
# authenticates, parses, derives the key, GETs the entry from Redis and
# replays it. bench/loadgen then runs against the gateway:
#   - saturation: closed loop, CONNS connections, for DURATION seconds;
#   - fixed rate: open loop at RATE req/s (latency from the scheduled send).
# redis-benchmark runs GET of the same entry with CONNS clients, no
# pipelining. Each measurement is repeated ROUNDS times, interleaved; the
# table gives medians.
#
# Usage: bench/cache/hits.sh   env: CASCADE_BUILD_DIR, DURATION=5 ROUNDS=3
#        CONNS=32 RATE=5000 WORKERS=1 OUT=DIR
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CASCADE_BUILD_DIR:-$REPO/build}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
RATE=${RATE:-5000}
WORKERS=${WORKERS:-1}
OUT=${OUT:-$(mktemp -d /tmp/cascade-cachebench.XXXXXX)}
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
cat >"$OUT/config.json" <<JSON
{"listen":"127.0.0.1:0","workers":$WORKERS,
 "redis":{"url":"redis://127.0.0.1:$RPORT/0","timeout_ms":200},
 "tiers":[{"name":"small","model":"deepseek-coder-1.3b","engine":{"kind":"remote","urls":["http://127.0.0.1:$UPORT"]},
           "price":{"input_per_1m":0.14,"output_per_1m":0.28}}],
 "tenants":[{"id":"bench","keys":["$KEYH"],"allowed_tiers":["small"]}]}
JSON
bench_start gateway "$CASCADED" -c "$OUT/config.json"
wait_for "$OUT/gateway.log" '"msg":"listening"'
GPORT=$(sed -n 's/.*"addr":"127.0.0.1:\([0-9]*\)".*/\1/p' "$OUT/gateway.log" | head -1)

BODY="$OUT/body.json"
printf '%s' '{"model":"small","temperature":0,"messages":[{"role":"user","content":"What is the capital of France? Answer in one word."}]}' >"$BODY"
URL="http://127.0.0.1:$GPORT/v1/chat/completions"
# Fill the cache, and check the next answer is a hit.
curl -sf "$URL" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' --data-binary @"$BODY" >/dev/null
curl -sfi "$URL" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' --data-binary @"$BODY" \
    | grep -qi '^x-cascade-cache: hit' || { echo "hits.sh: the second request was not a hit" >&2; exit 1; }
RKEY=$(redis-cli -p "$RPORT" --scan --pattern 'cascade:{bench}:resp:*' | head -1)
VALUE_BYTES=$(redis-cli -p "$RPORT" STRLEN "$RKEY")

lg() { "$LOADGEN" --url "$URL" --body "$BODY" --header "Authorization: Bearer $KEY" \
        --header 'Content-Type: application/json' --duration "$DURATION" --warmup 1 "$@"; }
: >"$OUT/runs.jsonl"
for r in $(seq 1 "$ROUNDS"); do
    echo "{\"round\":$r,\"what\":\"gateway_saturation\",\"result\":$(lg --rate 0 --connections "$CONNS")}" >>"$OUT/runs.jsonl"
    echo "{\"round\":$r,\"what\":\"gateway_rate\",\"result\":$(lg --rate "$RATE" --connections "$CONNS")}" >>"$OUT/runs.jsonl"
    rb=$(redis-benchmark -p "$RPORT" -c "$CONNS" -n 200000 -P 1 --csv -t get 2>/dev/null | tail -1)
    echo "{\"round\":$r,\"what\":\"redis_get\",\"csv\":$(printf '%s' "$rb" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" >>"$OUT/runs.jsonl"
done

python3 - "$OUT/runs.jsonl" "$CONNS" "$RATE" "$VALUE_BYTES" <<'PY'
import json, statistics, sys, csv, io
rows = [json.loads(l) for l in open(sys.argv[1])]
conns, rate, vbytes = sys.argv[2], sys.argv[3], sys.argv[4]
def med(what, field):
    return statistics.median(r["result"][field] for r in rows if r["what"] == what)
sat_rps = med("gateway_saturation", "rate_achieved")
gets = []
for r in rows:
    if r["what"] == "redis_get":
        rec = list(csv.reader(io.StringIO(r["csv"])))[-1]
        gets.append((float(rec[1]), float(rec[6]) if len(rec) > 6 else float("nan")))
print(f"cache entry: {vbytes} bytes; {conns} connections; medians of {len([r for r in rows if r['what']=='redis_get'])} rounds")
print()
print("| measurement | throughput (req/s) | p50 (µs) | p99 (µs) | errors / non-2xx |")
print("|---|---|---|---|---|")
print(f"| gateway cache hits, saturation | {sat_rps:,.0f} | {med('gateway_saturation','p50_us'):.0f} | {med('gateway_saturation','p99_us'):.0f} | {med('gateway_saturation','errors'):.0f} / {med('gateway_saturation','non2xx'):.0f} |")
print(f"| gateway cache hits, open loop at {rate}/s | {med('gateway_rate','rate_achieved'):,.0f} | {med('gateway_rate','p50_us'):.0f} | {med('gateway_rate','p99_us'):.0f} | {med('gateway_rate','errors'):.0f} / {med('gateway_rate','non2xx'):.0f} |")
g_rps = statistics.median(g[0] for g in gets)
g_p99 = statistics.median(g[1] for g in gets) * 1000
print(f"| redis-benchmark GET (bound) | {g_rps:,.0f} | - | {g_p99:.0f} | - |")
print()
print(f"gateway hits/s as a share of redis-benchmark GET/s: {sat_rps / g_rps:.2f}")
PY
echo "raw: $OUT/runs.jsonl"
