#!/usr/bin/env bash
# run.sh: Cascade against its peers, in one command (issue 18).
#
# What runs. One bench/upstream (a fixed-delay OpenAI-compatible test double:
# no delay, CHUNKS stream chunks) and, in front of it, every target:
#   direct        the upstream itself: zero overhead, the baseline
#   cascade1      cascaded, 1 worker, cache off, no Redis
#   cascade2      cascaded, 2 workers, cache off, no Redis
#   cascade_full  cascaded, 1 worker, with a real redis-server: the tenant has
#                 RPM/TPM limits and a daily budget (admit + settle scripts on
#                 every request) and its cache on; every request is a cache miss
#                 (loadgen --unique), so lookup, upstream and store all run
#   nginx         Debian's nginx, 1 worker, proxy_pass to a keep-alive upstream
#                 block, proxy_buffering off, access log on (the floor for any
#                 HTTP proxy); nginx2: the same with 2 workers (not by default)
#   portkey       Portkey's open-source gateway from npm (pinned), installed in a
#                 scratch folder outside the project's lockfile, run as shipped
#                 (--headless only turns its web console off) on the system Node
#   cascade1_old  (and cascade2_old, cascade_full_old) when OLD_BUILD names an
#                 older build tree: the same as cascade1 (cascade2, cascade_full)
#                 with that tree's cascaded, for before/after; cascade_full_old
#                 uses the same redis-server, its own database (1)
# All proxies log each request: cascaded its access line to a file, nginx its
# access_log, Portkey whatever it logs by default.
#
# Method. bench/loadgen (CONNS keep-alive connections, one thread) drives every
# target with the same body and headers (Portkey also gets the two headers it
# needs to find the upstream). For each mode (non-stream, stream), each rate
# (open loop at 1,000, 5,000, 10,000 req/s; 0 = closed loop, saturation) and
# each round, every target runs once, in an order rotated each round, so slow
# drifts of this shared machine fall on all targets alike. Open-loop latency
# counts from each request's due time (no coordinated omission); for streams
# loadgen also gives the time to the first body byte (TTFB).
# Around every run we read, for each process under test, utime+stime from
# /proc/PID/stat (cascaded's threads, nginx's master and workers, Portkey's
# node, redis-server for cascade_full; the upstream for direct) and the
# upstream's request count, so CPU per request = CPU / upstream requests in the
# run (warmup included on both sides). The load average is read before each
# run. Peak RSS is VmHWM at the end (over the whole benchmark).
# Reported per target: added latency over direct at p50/p99/p99.9 (paired with
# direct in the same round, median and min..max over rounds), saturation with
# its error rate, CPU seconds per 1,000 requests, peak RSS.
#
# Usage: bench/peers/run.sh      (from anywhere; env overrides below)
#   CASCADE_BUILD_DIR  build tree with bench/loadgen, bench/upstream,
#                      gateway/cascaded (default <repo>/build)
#   TARGETS="direct cascade1 cascade2 cascade_full nginx portkey"
#   RATES="1000 5000 10000 0"  MODES="nonstream stream"
#   ROUNDS=3  DURATION=5  WARMUP=1  CONNS=64  CHUNKS=8
#   OLD_BUILD=DIR      adds cascade1_old (and cascade2_old with cascade2,
#                      cascade_full_old with cascade_full) from DIR
#   PORTKEY_VERSION=1.15.2   PEERS_DIR=/tmp/cascade-peers (npm scratch folder)
#   INSTALL=1          apt-get nginx / npm install Portkey when missing (0: fail)
#   OUT=DIR            runs.jsonl, table.md, logs, configs (default: a temp dir)
# A short run: ROUNDS=1 DURATION=2 RATES="5000 0" TARGETS="direct cascade1 nginx"
# Prints the markdown tables on stdout; one JSON line per run in $OUT/runs.jsonl.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CASCADE_BUILD_DIR:-$REPO/build}
TARGETS=${TARGETS:-"direct cascade1 cascade2 cascade_full nginx portkey"}
RATES=${RATES:-"1000 5000 10000 0"}
MODES=${MODES:-"nonstream stream"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-64}
CHUNKS=${CHUNKS:-8}
OLD_BUILD=${OLD_BUILD:-}
PORTKEY_VERSION=${PORTKEY_VERSION:-1.15.2}
PEERS_DIR=${PEERS_DIR:-/tmp/cascade-peers}
INSTALL=${INSTALL:-1}
OUT=${OUT:-$(mktemp -d /tmp/cascade-peers-run.XXXXXX)}
MODEL=deepseek-coder-1.3b
KEY="sk-bench-$$-$RANDOM"

LOADGEN=$BUILD/bench/loadgen
UPSTREAM=$BUILD/bench/upstream
CASCADED=$BUILD/gateway/cascaded
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
. "$REPO/bench/lib.sh"
need_bins "$LOADGEN" "$UPSTREAM"

if [ -n "$OLD_BUILD" ]; then
    need_bins "$OLD_BUILD/gateway/cascaded"
    case " $TARGETS " in *" cascade1 "*) TARGETS="$TARGETS cascade1_old" ;; esac
    case " $TARGETS " in *" cascade2 "*) TARGETS="$TARGETS cascade2_old" ;; esac
    case " $TARGETS " in *" cascade_full "*) TARGETS="$TARGETS cascade_full_old" ;; esac
fi
has_target() { case " $TARGETS " in *" $1 "*) return 0 ;; esac; return 1; }
case " $TARGETS " in *" cascade"*) need_bins "$CASCADED" ;; esac
has_target direct || { echo "run.sh: TARGETS must include direct (the baseline)" >&2; exit 2; }

# ---- the peers, installed when missing ---------------------------------------
if has_target nginx || has_target nginx2; then
    if ! command -v nginx >/dev/null; then
        [ "$INSTALL" = 1 ] || { echo "run.sh: nginx missing (INSTALL=0)" >&2; exit 2; }
        [ "$(id -u)" = 0 ] || { echo "run.sh: nginx missing; apt-get install nginx needs root" >&2; exit 2; }
        # policy-rc.d or not, we never use the packaged service: nginx runs below
        # with our own prefix and config
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx >"$OUT/apt.log" 2>&1 ||
            { cat "$OUT/apt.log" >&2; exit 2; }
    fi
    NGINX_VERSION=$(nginx -v 2>&1 | sed 's/.*nginx\///')
    NGINX_DEB=$(dpkg-query -W -f='${Version}' nginx 2>/dev/null || echo unknown)
fi
if has_target portkey; then
    command -v node >/dev/null || { echo "run.sh: node missing (Portkey runs on it)" >&2; exit 2; }
    PK_DIR=$PEERS_DIR/portkey-$PORTKEY_VERSION
    PK_MAIN=$PK_DIR/node_modules/@portkey-ai/gateway/build/start-server.js
    if [ ! -f "$PK_MAIN" ]; then
        [ "$INSTALL" = 1 ] || { echo "run.sh: $PK_MAIN missing (INSTALL=0)" >&2; exit 2; }
        mkdir -p "$PK_DIR"
        # a scratch package of its own, so the project's lockfile never sees it
        echo '{"name":"cascade-peers-portkey","private":true}' >"$PK_DIR/package.json"
        (cd "$PK_DIR" && npm install --no-audit --no-fund "@portkey-ai/gateway@$PORTKEY_VERSION") \
            >"$OUT/npm.log" 2>&1 || { cat "$OUT/npm.log" >&2; exit 2; }
    fi
    (cd "$PK_DIR" && npm ls --all 2>/dev/null) >"$OUT/portkey-deps.txt" || true
    NODE_VERSION=$(node --version)
fi

# ---- the servers -------------------------------------------------------------
start_upstream --chunks "$CHUNKS"
UP_PID=${BENCH_PIDS[-1]}
KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)

declare -A PORT PIDS
PORT[direct]=$UPORT
PIDS[direct]=$UP_PID

# gw_config NAME WORKERS EXTRA TENANT_EXTRA: a cascaded config with one tier on
# the upstream; EXTRA adds top-level keys, TENANT_EXTRA the tenant's.
gw_config() {
    cat >"$OUT/$1.json" <<EOF
{"listen":"127.0.0.1:0","workers":$2 $3,
 "limits":{"max_body_bytes":1048576,"max_header_bytes":16384,"header_timeout_ms":10000,
           "read_timeout_ms":30000,"write_timeout_ms":30000,"upstream_timeout_ms":60000,
           "drain_timeout_ms":2000},
 "tiers":[{"name":"small","model":"$MODEL",
           "engine":{"kind":"remote","urls":["http://127.0.0.1:$UPORT"],"timeout_ms":60000,
                     "chunk_timeout_ms":30000},
           "price":{"input_per_1m":0.14,"output_per_1m":0.28}}],
 "tenants":[{"id":"bench","keys":["$KEY_SHA"],"allowed_tiers":["small"],
             "default_tier":"small" $4}]}
EOF
}
# start_cascaded NAME BINARY: start it, record its port and pid.
start_cascaded() {
    bench_start "$1" "$2" -c "$OUT/$1.json"
    PIDS[$1]=${BENCH_PIDS[-1]}
    wait_for "$OUT/$1.log" '"msg":"listening"'
    PORT[$1]=$(grep -m1 '"msg":"listening"' "$OUT/$1.log" | sed -n 's/.*"addr":"127\.0\.0\.1:\([0-9]*\)".*/\1/p')
    [ -n "${PORT[$1]}" ] || { echo "run.sh: no port in $1's listening line" >&2; exit 1; }
}
CACHE_OFF=',"cache":{"mode":"off"}'
for t in cascade1 cascade2 cascade1_old cascade2_old; do
    has_target $t || continue
    case $t in *2*) w=2 ;; *) w=1 ;; esac
    case $t in *_old) bin=$OLD_BUILD/gateway/cascaded ;; *) bin=$CASCADED ;; esac
    gw_config $t $w "" "$CACHE_OFF"
    start_cascaded $t "$bin"
done
if has_target cascade_full; then
    # no persistence (a benchmark's keys are throwaway); cache entries carry a
    # TTL, so volatile-lru keeps a long run's misses from filling the memory
    REDIS_PORT=$(free_port)
    bench_start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --maxmemory 1gb --maxmemory-policy volatile-lru
    REDIS_PID=${BENCH_PIDS[-1]}
    wait_for "$OUT/redis.log" 'Ready to accept'
    for t in cascade_full cascade_full_old; do
        has_target $t || continue
        case $t in *_old) bin=$OLD_BUILD/gateway/cascaded db=1 ;; *) bin=$CASCADED db=0 ;; esac
        gw_config $t 1 ",\"redis\":{\"url\":\"redis://127.0.0.1:$REDIS_PORT/$db\",\"timeout_ms\":200}" \
            ',"limits":{"rpm":1000000000,"tpm":1000000000000},"budget":{"usd_per_day":1000000},"cache":{"mode":"deterministic"}'
        start_cascaded $t "$bin"
    done
fi
for t in nginx nginx2; do
    has_target $t || continue
    d=$OUT/$t
    mkdir -p "$d"
    PORT[$t]=$(free_port)
    nw=1
    [ $t = nginx2 ] && nw=2
    cat >"$d/nginx.conf" <<EOF
worker_processes $nw;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log $d/access.log;
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    keepalive_requests 1000000;
    upstream up {
        server 127.0.0.1:$UPORT;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT[$t]};
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
    bench_start $t nginx -p "$d" -c "$d/nginx.conf"
    master=${BENCH_PIDS[-1]}
    for _ in $(seq 1 100); do
        # pgrep fails while nginx has not forked its workers yet: not an error
        # here (set -e and pipefail made it end the whole run, silently)
        workers=$(pgrep -P "$master" | tr '\n' ' ' || true)
        [ "$(echo $workers | wc -w)" -ge $nw ] && break
        sleep 0.05
    done
    PIDS[$t]="$master $workers"
done
if has_target portkey; then
    PORT[portkey]=$(free_port)
    bench_start portkey node "$PK_MAIN" "--port=${PORT[portkey]}" --headless
    PIDS[portkey]=${BENCH_PIDS[-1]}
    wait_for "$OUT/portkey.log" 'Ready for connections|running at'
fi

# ---- bodies, headers, and one request through each target --------------------
# temperature 0 makes cascade_full's tenant cache the answers; the marker makes
# every request a different one (loadgen --unique), so each is a miss
printf '{"model":"%s","temperature":0,"messages":[{"role":"user","content":"Say hello to the benchmark. @@UNIQUE@@@@@@@@"}]}' \
    "$MODEL" >"$OUT/nonstream.json"
printf '{"model":"%s","temperature":0,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello to the benchmark. @@UNIQUE@@@@@@@@"}]}' \
    "$MODEL" >"$OUT/stream.json"
# headers TARGET: loadgen --header arguments for a target, one per line
headers() {
    echo "Authorization: Bearer $KEY"
    if [ "$1" = portkey ]; then
        echo "x-portkey-provider: openai"
        echo "x-portkey-custom-host: http://127.0.0.1:$UPORT/v1"
    fi
}
up_requests() { curl -s "http://127.0.0.1:$UPORT/_stats" | sed 's/.*"requests":\([0-9]*\).*/\1/'; }

: >"$OUT/checks.txt"
for t in $TARGETS; do
    for mode in $MODES; do
        args=()
        while IFS= read -r h; do args+=(-H "$h"); done < <(headers "$t")
        body=$(sed 's/@@UNIQUE@@@@@@@@/check-'"$t"'/' "$OUT/$mode.json")
        code=$(curl -s -o "$OUT/check-$t-$mode.txt" -w '%{http_code}' --max-time 10 "${args[@]}" \
            -H 'Content-Type: application/json' --data-binary "$body" \
            "http://127.0.0.1:${PORT[$t]}/v1/chat/completions" || true)
        echo "$t $mode: HTTP $code, $(head -c 300 "$OUT/check-$t-$mode.txt" | tr '\n' ' ')" >>"$OUT/checks.txt"
        if [ "$code" != 200 ] && [ "$t" = portkey ]; then
            # what Portkey said about it, as shipped (its own error log line)
            grep -m1 -A2 -i 'error' "$OUT/portkey.log" | tr '\n' ' ' | sed 's/^/  portkey log: /' >>"$OUT/checks.txt"
            echo >>"$OUT/checks.txt"
        fi
        if [ "$code" != 200 ] && [ "$t" != portkey ]; then
            echo "run.sh: $t $mode answered HTTP $code:" >&2
            cat "$OUT/checks.txt" >&2
            exit 1
        fi
    done
done

# ---- the runs -----------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# cpu_of PIDS...: "pid:utime:stime,..." in clock ticks (fields 14, 15; the
# command names here have no spaces, so awk's fields line up)
cpu_of() {
    local p out=""
    for p in "$@"; do out+="$p:$(awk '{ print $14 ":" $15 }' "/proc/$p/stat"),"; done
    echo "${out%,}"
}
# run_one TARGET MODE RATE ROUND: one loadgen run, one JSON line in runs.jsonl
run_one() {
    local t=$1 mode=$2 rate=$3 round=$4 extra=() line load up0 up1 cpu0 cpu1 upc0 upc1 others rc0 rc1 t0 wall
    [ "$mode" = stream ] && extra+=(--stream)
    while IFS= read -r h; do extra+=(--header "$h"); done < <(headers "$t")
    load=$(cut -d' ' -f1 /proc/loadavg)
    # the upstream's own CPU is kept for every run, and Redis's for
    # cascade_full: neither counts as the proxy's
    others=""
    case $t in cascade_full*) others=$REDIS_PID ;; esac
    # shellcheck disable=SC2086
    up0=$(up_requests); cpu0=$(cpu_of ${PIDS[$t]}); upc0=$(cpu_of "$UP_PID"); rc0=$(cpu_of $others)
    t0=$(date +%s.%N)
    line=$("$LOADGEN" --url "http://127.0.0.1:${PORT[$t]}/v1/chat/completions" \
        --body "$OUT/$mode.json" --unique --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" \
        --connections "$CONNS" "${extra[@]}")
    # shellcheck disable=SC2086
    wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    cpu1=$(cpu_of ${PIDS[$t]}); upc1=$(cpu_of "$UP_PID"); rc1=$(cpu_of $others); up1=$(up_requests)
    printf '{"target":"%s","mode":"%s","rate":%s,"round":%d,"wall_s":%s,"load1_before":%s,"upstream_requests":%d,"clk_tck":%d,"cpu_before":"%s","cpu_after":"%s","upstream_cpu_before":"%s","upstream_cpu_after":"%s","redis_cpu_before":"%s","redis_cpu_after":"%s","result":%s}\n' \
        "$t" "$mode" "$rate" "$round" "$wall" "$load" "$((up1 - up0))" "$CLK_TCK" "$cpu0" "$cpu1" "$upc0" "$upc1" "$rc0" "$rc1" "$line" \
        >>"$OUT/runs.jsonl"
    echo "$(date -u +%T) $t $mode rate=$rate round=$round load=$load: $(echo "$line" |
        sed 's/.*"rate_achieved":\([0-9.]*\).*"p50_us":\([0-9.a-z]*\).*"p99_us":\([0-9.a-z]*\),.*/achieved \1 p50 \2 p99 \3/')" >&2
}

read -r -a TLIST <<<"$TARGETS"
NT=${#TLIST[@]}
: >"$OUT/runs.jsonl"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "cascaded: $(build_commit "$BUILD")"
    [ -n "$OLD_BUILD" ] && echo "cascaded (old): $(build_commit "$OLD_BUILD")"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
    echo "targets: $TARGETS; rates: $RATES; modes: $MODES; rounds: $ROUNDS; duration: ${DURATION}s + ${WARMUP}s warmup; connections: $CONNS; chunks: $CHUNKS"
    [ -n "${NGINX_VERSION:-}" ] && echo "nginx: $NGINX_VERSION (Debian package $NGINX_DEB)"
    [ -n "${NODE_VERSION:-}" ] && echo "portkey: @portkey-ai/gateway@$PORTKEY_VERSION on Node $NODE_VERSION"
    echo "redis: $(redis-server --version | sed 's/.*v=\([0-9.]*\).*/\1/')"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/meta.txt"
for mode in $MODES; do
    for rate in $RATES; do
        for round in $(seq 1 "$ROUNDS"); do
            # rotate the order each round
            for i in $(seq 0 $((NT - 1))); do
                run_one "${TLIST[$(((i + round - 1) % NT))]}" "$mode" "$rate" "$round"
            done
        done
    done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/meta.txt"

# peak RSS of each target's processes (VmHWM, kB), summed over its processes
: >"$OUT/rss.txt"
for t in $TARGETS; do
    kb=0
    # shellcheck disable=SC2086
    for p in ${PIDS[$t]}; do
        v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
        kb=$((kb + ${v:-0}))
    done
    case $t in cascade_full*) kb="$kb $(awk '/^VmHWM:/ { print $2 }' "/proc/$REDIS_PID/status")" ;; esac
    echo "$t $kb" >>"$OUT/rss.txt"
done

python3 "$REPO/bench/peers/report.py" "$OUT" >"$OUT/table.md"
cat "$OUT/table.md"
echo "run.sh: raw runs in $OUT/runs.jsonl" >&2
