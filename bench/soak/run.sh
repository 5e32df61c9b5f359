#!/usr/bin/env bash
# run.sh: the soak. Sustained mixed traffic against one cascaded, for a set
# duration, with Redis SIGKILLed and restarted once half way; reports RSS over
# time, errors by kind, latency percentiles and whether spend survived.
#
# Method. Real pieces, all started here: redis-server with AOF (fsync
# always, so a SIGKILL loses nothing acknowledged), bench/upstream (the
# fixed-delay OpenAI-compatible double: DELAY_US before answering, CHUNKS
# stream chunks CHUNK_DELAY_US apart), and cascaded (WORKERS workers, the
# Redis cache, one tenant). bench/soak/driver.mjs sends RATE requests per
# second, open loop: about 21% streams, 25% deterministic requests over 20
# prompts (cache hits once warm), 4% streams cancelled by the client after
# their 3rd chunk; its header says exactly. Every SAMPLE_S seconds the
# gateway's VmRSS and open file descriptors are read from /proc. At half
# time Redis gets SIGKILL, stays down REDIS_DOWN_S seconds, and comes back on
# the same port and AOF file. At the end the spend in Redis is compared with
# the sum of the access log's cost_nano (the journal must have replayed).
#
# Usage: bench/soak/run.sh DURATION       DURATION in seconds, or Nm for minutes
#   CASCADE_BUILD_DIR  build tree with gateway/cascaded and bench/upstream
#                      (default <repo>/build)
#   RATE=20 WORKERS=2 SAMPLE_S=5 REDIS_DOWN_S=3
#   WARMUP_S           excluded from the RSS growth figure
#                      (default: 10% of DURATION, at least 60 s, at most 300 s)
#   DELAY_US=20000 CHUNKS=16 CHUNK_DELAY_US=15000
#   OUT=DIR            logs, rss.tsv, driver.json, report.md (default: a temp dir)
# Prints the report (markdown) on stdout; exit 1 when any request failed or
# the RSS grew 5% or more after warm-up.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CASCADE_BUILD_DIR:-$REPO/build}
D=${1:?usage: bench/soak/run.sh DURATION (seconds, or Nm)}
case "$D" in
    *m) DURATION=$(( ${D%m} * 60 )) ;;
    *) DURATION=$D ;;
esac
RATE=${RATE:-20}
WORKERS=${WORKERS:-2}
SAMPLE_S=${SAMPLE_S:-5}
REDIS_DOWN_S=${REDIS_DOWN_S:-3}
W=$(( DURATION / 10 )); [ "$W" -lt 60 ] && W=60; [ "$W" -gt 300 ] && W=300
WARMUP_S=${WARMUP_S:-$W}
DELAY_US=${DELAY_US:-20000}
CHUNKS=${CHUNKS:-16}
CHUNK_DELAY_US=${CHUNK_DELAY_US:-15000}
OUT=${OUT:-$(mktemp -d /tmp/cascade-soak.XXXXXX)}
mkdir -p "$OUT"
CASCADED=$BUILD/gateway/cascaded
UPSTREAM=$BUILD/bench/upstream
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
need_bins "$CASCADED" "$UPSTREAM"
command -v redis-server >/dev/null || { echo "run.sh: redis-server not installed" >&2; exit 2; }

# Redis with AOF, restartable on the same port and file.
REDIS_PORT=$(free_port)
mkdir -p "$OUT/redis"
redis_up() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
        --dir "$OUT/redis" >>"$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    BENCH_PIDS+=("$REDIS_PID")
    local n
    n=$(grep -c 'Ready to accept' "$OUT/redis.log" 2>/dev/null || true)
    for _ in $(seq 1 200); do
        [ "$(grep -c 'Ready to accept' "$OUT/redis.log")" -gt "$n" ] && return 0
        sleep 0.05
    done
    echo "run.sh: redis-server did not start" >&2
    return 1
}
redis_up

start_upstream --delay-us "$DELAY_US" --chunks "$CHUNKS" --chunk-delay-us "$CHUNK_DELAY_US"

KEY="sk-soak-$$-$RANDOM"
KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
cat >"$OUT/config.json" <<EOF
{
  "listen": "127.0.0.1:0",
  "workers": $WORKERS,
  "limits": {"drain_timeout_ms": 5000},
  "redis": {"url": "redis://127.0.0.1:$REDIS_PORT/0", "timeout_ms": 200},
  "tiers": [{"name": "small", "model": "deepseek-coder-1.3b",
             "engine": {"kind": "remote", "urls": ["http://127.0.0.1:$UPORT"], "timeout_ms": 10000,
                        "chunk_timeout_ms": 5000},
             "price": {"input_per_1m": 10, "output_per_1m": 100}}],
  "tenants": [{"id": "soak", "keys": ["$KEY_SHA"], "allowed_tiers": ["small"]}]
}
EOF
bench_start gateway "$CASCADED" -c "$OUT/config.json" --listen 127.0.0.1:0
GW_PID=${BENCH_PIDS[-1]}
wait_for "$OUT/gateway.log" '"msg":"listening"'
GW_PORT=$(grep -m1 '"msg":"listening"' "$OUT/gateway.log" | sed -n 's/.*"addr":"127\.0\.0\.1:\([0-9]*\)".*/\1/p')

# RSS and fds of the gateway, and the load average, every SAMPLE_S seconds.
sample() {
    local t start=$SECONDS
    printf 't_s\trss_kb\tfds\tload1\n' >"$OUT/rss.tsv"
    while kill -0 "$GW_PID" 2>/dev/null; do
        local rss fds
        t=$(( SECONDS - start ))
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0)
        fds=$(ls "/proc/$GW_PID/fd" 2>/dev/null | wc -l)
        printf '%s\t%s\t%s\t%s\n' "$t" "$rss" "$fds" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/rss.tsv"
        sleep "$SAMPLE_S"
    done
}
sample &
BENCH_PIDS+=($!)

echo "soak: ${DURATION}s at ${RATE} req/s, gateway pid $GW_PID port $GW_PORT, redis $REDIS_PORT, out $OUT" >&2
node "$REPO/bench/soak/driver.mjs" --url "http://127.0.0.1:$GW_PORT" --key "$KEY" --rate "$RATE" \
    --duration "$DURATION" >"$OUT/driver.json" 2>"$OUT/driver.log" &
DRIVER=$!
sleep $(( DURATION / 2 ))
echo "soak: $(date -u +%T) SIGKILL redis for ${REDIS_DOWN_S}s" >&2
kill -KILL "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
echo "redis_killed_at_s $(( DURATION / 2 ))" >"$OUT/events.txt"
sleep "$REDIS_DOWN_S"
redis_up
echo "soak: $(date -u +%T) redis back" >&2
wait "$DRIVER" || { echo "run.sh: the driver failed:" >&2; cat "$OUT/driver.log" >&2; exit 1; }

# Spend: Redis against the access log, once the journal has replayed.
DAY=$(date -u +%Y%m%d)
# Summed in Python: awk prints large sums in exponent form (2.47112e+10).
LOGGED=$(grep '"msg":"access"' "$OUT/gateway.log" | sed -n 's/.*"cost_nano":\([0-9]*\).*/\1/p' |
    python3 -c 'import sys; print(sum(int(l) for l in sys.stdin))')
SPENT=0
for _ in $(seq 1 100); do
    SPENT=$(redis-cli -p "$REDIS_PORT" GET "cascade:{soak}:spend:$DAY")
    SPENT=${SPENT:-0}
    [ "$SPENT" = "$LOGGED" ] && break
    sleep 0.1
done
echo "spend_redis_nano $SPENT" >>"$OUT/events.txt"
echo "spend_logged_nano $LOGGED" >>"$OUT/events.txt"
grep -c '"msg":"access"' "$OUT/gateway.log" | sed 's/^/access_lines /' >>"$OUT/events.txt"
grep -cE '"level":"(warn|error)"' "$OUT/gateway.log" | sed 's/^/warn_error_lines /' >>"$OUT/events.txt" || true

node "$REPO/bench/soak/report.mjs" "$OUT" "$WARMUP_S" | tee "$OUT/report.md"
