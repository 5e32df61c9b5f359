#!/usr/bin/env bash
# callgrind.sh: instructions per request through cascaded (and nginx, for a
# like-for-like ratio), counted by valgrind's callgrind over a fixed number of
# requests. Instruction counts barely move with the machine's load, so this is
# the figure to compare before and after a hot-path change (issue 18).
#
# Method. bench/upstream runs natively. The proxy runs under
#   valgrind --tool=callgrind --instr-atstart=no
# so its startup is not counted; once it listens, instrumentation goes on. For
# each mode: N0 warm-up requests (connections to the upstream pooled, buffers
# grown), then the counts are zeroed (`callgrind_control -z`), exactly N
# requests run from bench/loadgen (--requests N, closed loop, CONNS
# connections, each body different), and `callgrind_control -d` dumps the
# counts: instructions/request = the dump's total Ir / N. The count is the
# user-space instructions of every thread of the process (workers, the log
# writer, libc, libevent, jansson, libcrypto); the kernel's share (syscalls,
# TCP) is not in it. An idle phase (no requests, IDLE_S seconds) shows what
# timers add per second on their own.
# RUNS separate processes give the run-to-run spread.
#   cascaded: 1 worker, cache off, no Redis, access log on (to a file);
#   nginx:    master_process off (one process), proxy_pass to a keep-alive
#             upstream, proxy_buffering off, access log on.
#
# Usage: bench/gateway/callgrind.sh     (env overrides below)
#   CASCADE_BUILD_DIR  build tree (default <repo>/build); compare two builds by
#                      running the script once with each
#   TARGETS="cascaded nginx"  MODES="nonstream stream"  RUNS=3
#   N=500  N0=100  CONNS=1  CHUNKS=8  IDLE_S=1  TOP=25
#   SYSCALLS=1         also count system calls per request (strace -f -c,
#                      natively, one run per target); 0 skips it
#   OUT=DIR            dumps, logs, results.jsonl, summary.md (default: a temp dir)
# Prints summary.md: instructions/request per target and mode (median, min..max
# over RUNS), the cascaded/nginx ratio, and the top functions (exclusive Ir per
# request, from the first run) with each shared object's share.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CASCADE_BUILD_DIR:-$REPO/build}
TARGETS=${TARGETS:-"cascaded nginx"}
MODES=${MODES:-"nonstream stream"}
RUNS=${RUNS:-3}
N=${N:-500}
N0=${N0:-100}
CONNS=${CONNS:-1}
CHUNKS=${CHUNKS:-8}
IDLE_S=${IDLE_S:-1}
SYSCALLS=${SYSCALLS:-1}
TOP=${TOP:-25}
OUT=${OUT:-$(mktemp -d /tmp/cascade-callgrind.XXXXXX)}
MODEL=deepseek-coder-1.3b
KEY="sk-bench-$$-$RANDOM"
LOADGEN=$BUILD/bench/loadgen
UPSTREAM=$BUILD/bench/upstream
CASCADED=$BUILD/gateway/cascaded
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
. "$REPO/bench/lib.sh"
need_bins "$LOADGEN" "$UPSTREAM"
case " $TARGETS " in *" cascaded "*) need_bins "$CASCADED" ;; esac
for tool in valgrind callgrind_control callgrind_annotate; do
    command -v $tool >/dev/null || { echo "callgrind.sh: $tool missing (apt-get install valgrind)" >&2; exit 2; }
done
case " $TARGETS " in *" nginx "*)
    command -v nginx >/dev/null || { echo "callgrind.sh: nginx missing (apt-get install nginx, or TARGETS=cascaded)" >&2; exit 2; } ;;
esac

start_upstream --chunks "$CHUNKS"
KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
cat >"$OUT/cascaded.json" <<EOF
{"listen":"127.0.0.1:0","workers":1,
 "tiers":[{"name":"small","model":"$MODEL",
           "engine":{"kind":"remote","urls":["http://127.0.0.1:$UPORT"],"timeout_ms":60000,
                     "chunk_timeout_ms":30000},
           "price":{"input_per_1m":0.14,"output_per_1m":0.28}}],
 "tenants":[{"id":"bench","keys":["$KEY_SHA"],"allowed_tiers":["small"],
             "default_tier":"small","cache":{"mode":"off"}}]}
EOF
printf '{"model":"%s","temperature":0,"messages":[{"role":"user","content":"Say hello to the benchmark. @@UNIQUE@@@@@@@@"}]}' \
    "$MODEL" >"$OUT/nonstream.json"
printf '{"model":"%s","temperature":0,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello to the benchmark. @@UNIQUE@@@@@@@@"}]}' \
    "$MODEL" >"$OUT/stream.json"

# nginx_conf DIR PORT: one process, the proxy settings of bench/peers/run.sh
nginx_conf() {
    cat >"$1/nginx.conf" <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
http {
    access_log $1/access.log;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
    upstream up { server 127.0.0.1:$UPORT; keepalive 16; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$2;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
}

# drive PORT MODE COUNT: COUNT requests, closed loop; fails unless all are 2xx
drive() {
    local extra=() line
    [ "$2" = stream ] && extra+=(--stream)
    line=$("$LOADGEN" --url "http://127.0.0.1:$1/v1/chat/completions" --body "$OUT/$2.json" --unique \
        --header "Authorization: Bearer $KEY" --rate 0 --requests "$3" --connections "$CONNS" \
        --duration 600 --warmup 0 "${extra[@]}")
    case $line in *"\"ok\":$3,"*) ;; *) echo "callgrind.sh: not all $3 requests answered: $line" >&2; return 1 ;; esac
}

# start_target TARGET NAME DIR [PREFIX...]: start the proxy (under PREFIX, e.g.
# valgrind), log to $OUT/NAME.log; sets pid and port once it answers
start_target() {
    local t=$1 name=$2 d=$3
    shift 3
    if [ "$t" = cascaded ]; then
        bench_start "$name" "$@" "$CASCADED" -c "$OUT/cascaded.json" --listen 127.0.0.1:0
        pid=${BENCH_PIDS[-1]}
        # valgrind's own lines go to the same log as the gateway's JSON lines
        wait_for "$OUT/$name.log" '"msg":"listening"' || exit 1
        port=$(grep -m1 '"msg":"listening"' "$OUT/$name.log" | sed -n 's/.*"addr":"127\.0\.0\.1:\([0-9]*\)".*/\1/p')
    else
        port=$(free_port)
        nginx_conf "$d" "$port"
        bench_start "$name" "$@" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
        pid=${BENCH_PIDS[-1]}
        for _ in $(seq 1 300); do
            curl -s -o /dev/null "http://127.0.0.1:$port/" && break
            sleep 0.1
        done
    fi
}

# dump_to PID FILE: dump the counts since the last dump and move that part to
# FILE; callgrind numbers the parts .1, .2, ... in dump order (PART counts them)
dump_to() {
    PART=$((PART + 1))
    callgrind_control -d "$1" >/dev/null
    # the part is complete once its last line, the totals, is written
    for _ in $(seq 1 300); do
        grep -q '^totals:' "$CGBASE.$PART" 2>/dev/null && break
        sleep 0.1
    done
    mv "$CGBASE.$PART" "$2"
}

: >"$OUT/results.jsonl"
t_start=$(date +%s)
for run in $(seq 1 "$RUNS"); do
    for t in $TARGETS; do
        d=$OUT/$t.$run
        mkdir -p "$d"
        CGBASE=$d/callgrind.out
        PART=0
        VG=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$CGBASE")
        start_target "$t" "$t.$run" "$d" "${VG[@]}"
        # Instrumentation goes on once and stays on: turning it off and on
        # again between phases left callgrind 3.19's per-part summary short
        # of the functions' costs (seen: nginx's stream part read 9,271 per
        # request, 32,400 when measured alone). Each phase zeroes the counts
        # (-z) after its warm-up and dumps them after its N requests.
        callgrind_control -i on "$pid" >/dev/null
        for mode in idle $MODES; do
            if [ "$mode" = idle ]; then
                callgrind_control -z "$pid" >/dev/null
                sleep "$IDLE_S"
                count=$IDLE_S
            else
                drive "$port" "$mode" "$N0"
                callgrind_control -z "$pid" >/dev/null
                drive "$port" "$mode" "$N"
                count=$N
            fi
            dump_to "$pid" "$d/$mode.cg"
            ir=$(sed -n 's/^summary: *//p' "$d/$mode.cg")
            tot=$(sed -n 's/^totals: *//p' "$d/$mode.cg")
            # The part's summary (the event counter since -z) and its cost
            # lines' total agree within a fraction of a percent (cascaded's
            # threads leave ~0.2% attributed across the zeroing); a larger gap
            # means the dump does not hold what this phase did.
            if [ $((tot - ir)) -gt $((ir / 100 + 1000)) ] || [ $((ir - tot)) -gt $((ir / 100 + 1000)) ]; then
                echo "callgrind.sh: $d/$mode.cg: summary $ir and totals $tot differ" >&2
                exit 1
            fi
            printf '{"target":"%s","run":%d,"mode":"%s","count":%s,"ir":%s,"ir_totals":%s,"load1":%s}\n' \
                "$t" "$run" "$mode" "$count" "$ir" "$tot" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/results.jsonl"
            echo "$t run $run $mode: $ir Ir / $count = $((ir / count))" >&2
        done
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
done
elapsed=$(($(date +%s) - t_start))

# System calls per request: the same N requests with the proxy running
# natively under `strace -f -c` (attached after the warm-up, detached after
# the N requests). User-space instructions are only part of the CPU: the
# kernel's side of each read, write and epoll call is the rest.
if [ "$SYSCALLS" = 1 ]; then
    command -v strace >/dev/null || { echo "callgrind.sh: strace missing (SYSCALLS=0 to skip)" >&2; exit 2; }
    for t in $TARGETS; do
        d=$OUT/$t.strace
        mkdir -p "$d"
        start_target "$t" "$t.strace" "$d"
        for mode in $MODES; do
            drive "$port" "$mode" "$N0"
            strace -f -c -o "$d/$mode.txt" -p "$pid" 2>"$d/$mode.err" &
            spid=$!
            # every thread attached before the first request
            for _ in $(seq 1 100); do grep -q attached "$d/$mode.err" 2>/dev/null && break; sleep 0.05; done
            sleep 0.3
            drive "$port" "$mode" "$N"
            kill -INT "$spid"
            wait "$spid" || true
        done
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
fi

# top functions of the first run, exclusive Ir, for each target and mode
for t in $TARGETS; do
    for mode in $MODES; do
        callgrind_annotate --auto=no --inclusive=no --threshold=100 "$OUT/$t.1/$mode.cg" >"$OUT/$t.$mode.annotate.txt" 2>/dev/null || true
        callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$OUT/$t.1/$mode.cg" >"$OUT/$t.$mode.inclusive.txt" 2>/dev/null || true
    done
done

python3 - "$OUT" "$N" "$TOP" "$elapsed" "$TARGETS" "$MODES" >"$OUT/summary.md" <<'PY'
import json, os, re, statistics, sys
out, n, top, elapsed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
targets, modes = sys.argv[5].split(), sys.argv[6].split()
rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl"))]
def per(t, m):
    return [r["ir"] / r["count"] for r in rows if r["target"] == t and r["mode"] == m]
if rows:
    print(f"instructions (user space, all threads) per request, {n} requests per run after warm-up; "
          f"median [min..max] over {max(r['run'] for r in rows)} runs (separate processes)\n")
    print("| target | " + " | ".join(modes) + " | idle, per second |")
    print("|---|" + "---|" * (len(modes) + 1))
med = {}
for t in (targets if rows else []):
    cells = []
    for m in modes:
        v = per(t, m)
        med[(t, m)] = statistics.median(v)
        spread = (max(v) - min(v)) / statistics.median(v) * 100
        cells.append(f"{statistics.median(v):,.0f} [{min(v):,.0f}..{max(v):,.0f}] (spread {spread:.2f}%)")
    idle = per(t, "idle")
    cells.append(f"{statistics.median(idle):,.0f}")
    print(f"| {t} | " + " | ".join(cells) + " |")
if rows and "cascaded" in targets and "nginx" in targets:
    print("| cascaded / nginx | " + " | ".join(f"{med[('cascaded', m)] / med[('nginx', m)]:.2f}x" for m in modes) + " | |")
print(f"\nwall time {elapsed} s; load average at the end {open('/proc/loadavg').read().split()[0]}\n")
# strace -c: "% time seconds usecs/call calls [errors] syscall" per line
sc = {}
for t in targets:
    for m in modes:
        p = os.path.join(out, f"{t}.strace", f"{m}.txt")
        if not os.path.exists(p):
            continue
        calls = {}
        for l in open(p):
            f = l.split()
            if len(f) >= 5 and re.match(r"^[\d.]+$", f[0]) and f[-1] != "total":
                calls[f[-1]] = int(f[3])
        sc[(t, m)] = calls
if sc:
    print("system calls per request (strace -f -c over the same N requests, natively; failed calls "
          "such as EAGAIN reads included)\n")
    print("| target | mode | all | by call |")
    print("|---|---|---|---|")
    for (t, m), calls in sc.items():
        by = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v / n >= 0.05)
        print(f"| {t} | {m} | {sum(calls.values()) / n:.2f} | {by} |")
    print()
line_re = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)\s*$")
for t in (targets if rows else []):
    for m in modes:
        p = os.path.join(out, f"{t}.{m}.annotate.txt")
        funcs = []
        for l in open(p):
            mm = line_re.match(l)
            if mm and "PROGRAM TOTALS" not in l:
                funcs.append((int(mm.group(1).replace(",", "")), mm.group(2)))
        total = sum(f[0] for f in funcs) or 1
        objs = {}
        for ir, name in funcs:
            o = re.search(r"\[([^\]]+)\]\s*$", name)
            key = os.path.basename(o.group(1)) if o else "(no object named)"
            objs[key] = objs.get(key, 0) + ir
        print(f"### {t}, {m}: by object (run 1, instructions per request)\n")
        print(", ".join(f"{k} {v / n:,.0f} ({100 * v / total:.1f}%)"
                        for k, v in sorted(objs.items(), key=lambda kv: -kv[1])[:8]) + "\n")
        def short(name):
            name = re.sub(r"^\S*?/(?=[^/]*:)", "", name)  # drop the source directory
            return re.sub(r"\[/\S*/([^/\]]+)\]", r"[\1]", name)
        print(f"### {t}, {m}: top {top} functions, exclusive (run 1)\n")
        print("| Ir / request | share | function |")
        print("|---|---|---|")
        for ir, name in funcs[:top]:
            print(f"| {ir / n:,.0f} | {100 * ir / total:.1f}% | `{short(name)}` |")
        print()
        # where the libraries' time comes from: the program's own functions,
        # inclusive of what they call (jansson has no symbols to name)
        own = os.path.basename(next((x for x in (t,) if x != "cascaded"), "cascaded"))
        inc = []
        for l in open(os.path.join(out, f"{t}.{m}.inclusive.txt")):
            mm = line_re.match(l)
            if mm and f"/{own}]" in mm.group(2):
                inc.append((int(mm.group(1).replace(",", "")), mm.group(2)))
        print(f"### {t}, {m}: top {top} of its own functions, inclusive (run 1)\n")
        print("| Ir / request | share | function |")
        print("|---|---|---|")
        for ir, name in inc[:top]:
            print(f"| {ir / n:,.0f} | {100 * ir / total:.1f}% | `{short(name)}` |")
        print()
PY
{
    echo "cascaded: $(build_commit "$BUILD"); nginx: $(command -v nginx >/dev/null && nginx -v 2>&1 | sed 's/.*nginx\///'); valgrind: $(valgrind --version)"
} >>"$OUT/summary.md"
cat "$OUT/summary.md"
echo "callgrind.sh: dumps and annotations in $OUT (callgrind_annotate $OUT/cascaded.1/nonstream.cg)" >&2
