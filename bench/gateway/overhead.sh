#!/usr/bin/env bash
# overhead.sh: the latency cascaded adds over calling the upstream directly.
#
# Method. One bench/upstream (a fixed-delay OpenAI-compatible test double) is
# started, then one cascaded whose only tier points at it. For every scenario
# (request rate x stream/non-stream) bench/loadgen runs with identical
# settings against the upstream ("direct") and through the gateway
# ("gateway"), interleaved: direct, gateway, direct, gateway, ... ROUNDS
# times. The table reports the median over rounds of each percentile, and
# added = median(gateway) - median(direct). Open-loop rates measure latency
# from each request's scheduled send time (no coordinated omission); rate 0 is
# saturation (closed loop, CONNS connections), where throughput is the figure.
#
# Usage: bench/gateway/overhead.sh        (from anywhere; env overrides below)
#   CASCADE_BUILD_DIR  build tree with bench/loadgen, bench/upstream and
#                      gateway/cascaded (default <repo>/build)
#   RATES="1000 5000 0"  DURATION=5  WARMUP=1  ROUNDS=3  CONNS=64
#   WORKERS=1          gateway worker threads (the machine has 2 cores, shared
#                      with loadgen and upstream)
#   DELAY_US=0 CHUNKS=8 CHUNK_DELAY_US=0  upstream: delay before answering,
#                      stream chunks, pause between chunks
#   MODES="nonstream stream"
#   DIRECT_ONLY=1      skip the gateway (validates loadgen against upstream)
#   OUT=DIR            where runs.jsonl, table.md and the logs go (default: a temp dir)
# Prints the markdown table on stdout; raw loadgen lines are in $OUT/runs.jsonl.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CASCADE_BUILD_DIR:-$REPO/build}
RATES=${RATES:-"1000 5000 0"}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
DELAY_US=${DELAY_US:-0}
CHUNKS=${CHUNKS:-8}
CHUNK_DELAY_US=${CHUNK_DELAY_US:-0}
MODES=${MODES:-"nonstream stream"}
DIRECT_ONLY=${DIRECT_ONLY:-0}
OUT=${OUT:-$(mktemp -d /tmp/cascade-overhead.XXXXXX)}
MODEL=deepseek-coder-1.3b
KEY="sk-bench-$$-$RANDOM"

LOADGEN=$BUILD/bench/loadgen
UPSTREAM=$BUILD/bench/upstream
CASCADED=$BUILD/gateway/cascaded
mkdir -p "$OUT"
for b in "$LOADGEN" "$UPSTREAM"; do
    [ -x "$b" ] || { echo "overhead.sh: $b not built" >&2; exit 2; }
done
if [ "$DIRECT_ONLY" != 1 ] && [ ! -x "$CASCADED" ]; then
    echo "overhead.sh: $CASCADED not built (DIRECT_ONLY=1 to measure the upstream alone)" >&2
    exit 2
fi

UP_PID=""
GW_PID=""
cleanup() {
    # only the two processes this script started, by their ids
    [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
    [ -n "$UP_PID" ] && kill "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
}
trap cleanup EXIT

# wait_for FILE REGEX: poll a log until a line matches (10 s at most).
wait_for() {
    for _ in $(seq 1 200); do
        if grep -qE "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "overhead.sh: timed out waiting for /$2/ in $1:" >&2
    cat "$1" >&2
    return 1
}

"$UPSTREAM" --port 0 --delay-us "$DELAY_US" --chunks "$CHUNKS" --chunk-delay-us "$CHUNK_DELAY_US" >"$OUT/upstream.log" 2>&1 &
UP_PID=$!
wait_for "$OUT/upstream.log" 'UPSTREAM_PORT=[0-9]+'
UP_PORT=$(sed -n 's/^UPSTREAM_PORT=\([0-9]*\).*/\1/p' "$OUT/upstream.log")

GW_PORT=""
if [ "$DIRECT_ONLY" != 1 ]; then
    KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
    ADMIN_SHA=$(printf '%s' "admin-$KEY" | sha256sum | cut -d' ' -f1)
    # No redis, and the tenant's cache is off: every request goes upstream,
    # which is what this benchmark measures (a cache hit would skip it; each
    # run's upstream request count is recorded in runs.jsonl to show it).
    cat >"$OUT/config.json" <<EOF
{"listen":"127.0.0.1:0","workers":$WORKERS,
 "limits":{"max_body_bytes":1048576,"max_header_bytes":16384,"header_timeout_ms":10000,
           "read_timeout_ms":30000,"write_timeout_ms":30000,"upstream_timeout_ms":60000,
           "drain_timeout_ms":2000},
 "admin_token_sha256":"$ADMIN_SHA",
 "tiers":[{"name":"small","model":"$MODEL",
           "engine":{"kind":"remote","urls":["http://127.0.0.1:$UP_PORT"],"timeout_ms":60000,
                     "chunk_timeout_ms":30000},
           "price":{"input_per_1m":0.14,"output_per_1m":0.28}}],
 "tenants":[{"id":"bench","keys":["$KEY_SHA"],"allowed_tiers":["small"],
             "default_tier":"small","cache":{"mode":"off"}}]}
EOF
    "$CASCADED" -c "$OUT/config.json" --listen 127.0.0.1:0 >"$OUT/cascaded.out" 2>"$OUT/cascaded.log" &
    GW_PID=$!
    wait_for "$OUT/cascaded.log" '"msg":"listening"'
    GW_PORT=$(grep -m1 '"msg":"listening"' "$OUT/cascaded.log" |
              sed -n 's/.*"addr":"127\.0\.0\.1:\([0-9]*\)".*/\1/p')
    [ -n "$GW_PORT" ] || { echo "overhead.sh: no port in the listening line" >&2; exit 1; }
fi

printf '{"model":"%s","messages":[{"role":"user","content":"Say hello to the benchmark."}]}' \
    "$MODEL" >"$OUT/nonstream.json"
printf '{"model":"%s","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello to the benchmark."}]}' \
    "$MODEL" >"$OUT/stream.json"

# proc_cpu PID: user + system CPU time of a process so far, in clock ticks
# (fields 14 and 15 of /proc/PID/stat; our processes' names have no spaces).
CLK_TCK=$(getconf CLK_TCK)
proc_cpu() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# run_one TARGET MODE RATE ROUND: one loadgen run, tagged, appended to
# runs.jsonl, with the CPU time the server under test (the upstream for
# direct, cascaded for gateway) spent per request: a figure that, unlike the
# latency tail, hardly depends on what else the machine is doing.
run_one() {
    local target=$1 mode=$2 rate=$3 round=$4 port extra=()
    if [ "$target" = direct ]; then port=$UP_PORT; else port=$GW_PORT; fi
    [ "$mode" = stream ] && extra+=(--stream)
    local line before after pid cpu0 cpu1
    if [ "$target" = direct ]; then pid=$UP_PID; else pid=$GW_PID; fi
    before=$(curl -s "http://127.0.0.1:$UP_PORT/_stats" | sed 's/.*"requests":\([0-9]*\).*/\1/')
    cpu0=$(proc_cpu "$pid")
    line=$("$LOADGEN" --url "http://127.0.0.1:$port/v1/chat/completions" \
        --body "$OUT/$mode.json" --header "Authorization: Bearer $KEY" \
        --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNS" \
        "${extra[@]}")
    cpu1=$(proc_cpu "$pid")
    after=$(curl -s "http://127.0.0.1:$UP_PORT/_stats" | sed 's/.*"requests":\([0-9]*\).*/\1/')
    printf '{"target":"%s","mode":"%s","round":%d,"upstream_requests":%d,"server_cpu_s":%s,"result":%s}\n' \
        "$target" "$mode" "$round" "$((after - before))" \
        "$(awk -v t="$((cpu1 - cpu0))" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')" \
        "$line" >>"$OUT/runs.jsonl"
    echo "$target $mode rate=$rate round=$round: $line" >&2
}

: >"$OUT/runs.jsonl"
# The machine is shared: record how busy it was, to judge the figures by.
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/load.txt"
for mode in $MODES; do
    for rate in $RATES; do
        for round in $(seq 1 "$ROUNDS"); do
            run_one direct "$mode" "$rate" "$round"
            [ "$DIRECT_ONLY" = 1 ] || run_one gateway "$mode" "$rate" "$round"
        done
    done
done

# Medians over rounds, and gateway minus direct per percentile.
node - "$OUT/runs.jsonl" >"$OUT/table.md" <<'EOF'
const fs = require('node:fs');
const runs = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const median = (xs) => {
  const v = xs.filter((x) => x !== null).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
const f = (x) => (x === null ? '-' : x.toFixed(0));
const d = (a, b) => (a === null || b === null ? '-' : (a - b >= 0 ? '+' : '') + (a - b).toFixed(0));
const keys = ['p50_us', 'p90_us', 'p99_us', 'p999_us', 'ttfb_p50_us', 'ttfb_p99_us', 'rate_achieved',
  'sched_lag_p99_us', 'cpu_us_per_req'];
const groups = new Map();
for (const r of runs) {
  const k = `${r.mode}|${r.result.rate}`;
  if (!groups.has(k)) groups.set(k, { mode: r.mode, rate: r.result.rate, direct: [], gateway: [] });
  // CPU per request counts every request of the run, warmup included
  const cpu = r.upstream_requests > 0 ? (r.server_cpu_s * 1e6) / r.upstream_requests : null;
  groups.get(k)[r.target].push({ ...r.result, cpu_us_per_req: cpu });
}
const med = (rs, key) => median(rs.map((r) => r[key]));
const errs = (rs) => rs.reduce((n, r) => n + r.errors + r.non2xx, 0);
console.log('| mode | rate (req/s) | target | p50 µs | p90 µs | p99 µs | p99.9 µs | ttfb p50 µs | ttfb p99 µs | achieved req/s | errors+non2xx | loadgen lag p99 µs | server CPU µs/req | rounds |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
for (const g of groups.values()) {
  const rate = g.rate === 0 ? 'saturation' : String(g.rate);
  const m = {};
  for (const t of ['direct', 'gateway']) {
    if (!g[t].length) continue;
    m[t] = Object.fromEntries(keys.map((k) => [k, med(g[t], k)]));
    const v = m[t];
    console.log(`| ${g.mode} | ${rate} | ${t} | ${f(v.p50_us)} | ${f(v.p90_us)} | ${f(v.p99_us)} | ${f(v.p999_us)} | ` +
      `${f(v.ttfb_p50_us)} | ${f(v.ttfb_p99_us)} | ${f(v.rate_achieved)} | ${errs(g[t])} | ` +
      `${f(v.sched_lag_p99_us)} | ${v.cpu_us_per_req === null ? '-' : v.cpu_us_per_req.toFixed(1)} | ${g[t].length} |`);
  }
  if (m.direct && m.gateway) {
    const a = m.gateway, b = m.direct;
    console.log(`| ${g.mode} | ${rate} | **added** | **${d(a.p50_us, b.p50_us)}** | ${d(a.p90_us, b.p90_us)} | ` +
      `**${d(a.p99_us, b.p99_us)}** | ${d(a.p999_us, b.p999_us)} | ${d(a.ttfb_p50_us, b.ttfb_p50_us)} | ` +
      `${d(a.ttfb_p99_us, b.ttfb_p99_us)} | ${d(a.rate_achieved, b.rate_achieved)} | | | | |`);
  }
}
// Every answered request must have been an upstream call (no cache hits).
for (const r of runs) {
  if (r.upstream_requests < r.result.ok + r.result.non2xx) {
    console.log(`\nWARNING: ${r.target} ${r.mode} rate ${r.result.rate} round ${r.round}: ` +
      `${r.upstream_requests} upstream calls for ${r.result.ok + r.result.non2xx} answers`);
  }
}
EOF
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
{ echo; sed 's/$/  /' "$OUT/load.txt"; } >>"$OUT/table.md"
cat "$OUT/table.md"
echo "overhead.sh: raw runs in $OUT/runs.jsonl" >&2
