#!/usr/bin/env bash
# wrk-check.sh: bench/loadgen cross-checked against Debian's wrk at saturation.
#
# Both run closed loop with the same connections (CONNS, one thread each) and
# the same non-stream request (body and headers), against bench/upstream
# directly and through cascaded (1 worker, cache off, no Redis), alternating
# loadgen and wrk for ROUNDS rounds. If loadgen itself were the bottleneck or
# mis-counted, its saturation would sit below wrk's; the table gives both
# throughputs (medians, min..max) and their ratio, and p50/p99 latency.
# wrk's latency is from the send of each request (closed loop), as loadgen's
# is at rate 0. wrk is single-threaded here (-t1) as loadgen is by default.
# The client's own CPU per request (user + system, /usr/bin/time) is given too:
# on a 2-core machine what the load generator burns is lost to the server.
#
# Usage: bench/peers/wrk-check.sh   env: CASCADE_BUILD_DIR (default <repo>/build)
#        CONNS=64 DURATION=5 ROUNDS=3 INSTALL=1 (apt-get wrk when missing) OUT=DIR
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${CASCADE_BUILD_DIR:-$REPO/build}
CONNS=${CONNS:-64}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
INSTALL=${INSTALL:-1}
OUT=${OUT:-$(mktemp -d /tmp/cascade-wrkcheck.XXXXXX)}
MODEL=deepseek-coder-1.3b
KEY="sk-bench-$$-$RANDOM"
LOADGEN=$BUILD/bench/loadgen
UPSTREAM=$BUILD/bench/upstream
CASCADED=$BUILD/gateway/cascaded
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
. "$REPO/bench/lib.sh"
need_bins "$LOADGEN" "$UPSTREAM" "$CASCADED"
if ! command -v wrk >/dev/null; then
    [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ] || { echo "wrk-check.sh: wrk missing (apt-get install wrk)" >&2; exit 2; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk >"$OUT/apt.log" 2>&1 ||
        { cat "$OUT/apt.log" >&2; exit 2; }
fi

start_upstream
KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
cat >"$OUT/cascaded.json" <<EOF
{"listen":"127.0.0.1:0","workers":1,
 "tiers":[{"name":"small","model":"$MODEL","engine":{"kind":"remote","urls":["http://127.0.0.1:$UPORT"]},
           "price":{"input_per_1m":0.14,"output_per_1m":0.28}}],
 "tenants":[{"id":"bench","keys":["$KEY_SHA"],"allowed_tiers":["small"],"default_tier":"small",
             "cache":{"mode":"off"}}]}
EOF
bench_start cascaded "$CASCADED" -c "$OUT/cascaded.json"
wait_for "$OUT/cascaded.log" '"msg":"listening"'
GPORT=$(grep -m1 '"msg":"listening"' "$OUT/cascaded.log" | sed -n 's/.*"addr":"127\.0\.0\.1:\([0-9]*\)".*/\1/p')

BODY='{"model":"'$MODEL'","temperature":0,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}'
printf '%s' "$BODY" >"$OUT/body.json"
# the same request for wrk: method, body and headers from a Lua script
cat >"$OUT/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
EOF

: >"$OUT/runs.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    for target in direct cascaded; do
        port=$UPORT
        [ "$target" = cascaded ] && port=$GPORT
        url="http://127.0.0.1:$port/v1/chat/completions"
        load=$(cut -d' ' -f1 /proc/loadavg)
        # the client's own CPU (user + system seconds) as well: on 2 shared
        # cores, what the load generator spends per request the server lacks
        line=$(/usr/bin/time -f '%U %S' -o "$OUT/time.txt" "$LOADGEN" --url "$url" --body "$OUT/body.json" \
            --header "Authorization: Bearer $KEY" --rate 0 --connections "$CONNS" --duration "$DURATION" --warmup 1)
        cpu=$(awk '{ print $1 + $2 }' "$OUT/time.txt")
        echo "{\"tool\":\"loadgen\",\"target\":\"$target\",\"round\":$round,\"load1\":$load,\"client_cpu_s\":$cpu,\"seconds\":$((DURATION + 1)),\"result\":$line}" >>"$OUT/runs.jsonl"
        load=$(cut -d' ' -f1 /proc/loadavg)
        /usr/bin/time -f '%U %S' -o "$OUT/time.txt" \
            wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$OUT/post.lua" "$url" >"$OUT/wrk-$target-$round.txt"
        cpu=$(awk '{ print $1 + $2 }' "$OUT/time.txt")
        python3 - "$OUT/wrk-$target-$round.txt" "$target" "$round" "$load" "$cpu" "$DURATION" >>"$OUT/runs.jsonl" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
def us(s):
    v, u = float(s[:-2] if s[-2:] in ("us", "ms") else s[:-1]), s[-2:] if s[-2:] in ("us", "ms") else s[-1:]
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[u]
pct = {m.group(1): us(m.group(2)) for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M)}
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
print(json.dumps({"tool": "wrk", "target": sys.argv[2], "round": int(sys.argv[3]), "load1": float(sys.argv[4]),
                  "client_cpu_s": float(sys.argv[5]), "seconds": int(sys.argv[6]),
                  "result": {"rate_achieved": rps, "p50_us": pct.get("50"), "p99_us": pct.get("99"),
                             "non2xx": int(non2xx.group(1)) if non2xx else 0,
                             "errors": sum(map(int, errs.groups())) if errs else 0}}))
PY
        tail -2 "$OUT/runs.jsonl" | sed 's/"url"[^,]*,//' | cut -c1-160 >&2
    done
done

python3 - "$OUT/runs.jsonl" "$CONNS" "$ROUNDS" <<'PY' | tee "$OUT/table.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def vals(tool, target, key):
    return [r["result"][key] for r in rows if r["tool"] == tool and r["target"] == target and r["result"].get(key) is not None]
def fmt(v):
    return f"{statistics.median(v):,.0f} [{min(v):,.0f}..{max(v):,.0f}]" if v else "-"
print(f"closed loop, {sys.argv[2]} connections, one thread each; median [min..max] of {sys.argv[3]} alternating rounds\n")
print("| target | tool | req/s | p50 µs | p99 µs | errors + non-2xx | client CPU µs / request | loadgen / wrk req/s |")
print("|---|---|---|---|---|---|---|---|")
for target in ("direct", "cascaded"):
    for tool in ("loadgen", "wrk"):
        e = sum(vals(tool, target, "errors")) + sum(vals(tool, target, "non2xx"))
        ratio = ""
        if tool == "wrk":
            ratio = f"{statistics.median(vals('loadgen', target, 'rate_achieved')) / statistics.median(vals('wrk', target, 'rate_achieved')):.2f}"
        # loadgen runs 1 s of warm-up beyond --duration; wrk none: CPU over
        # the requests of the whole run (rate x seconds run)
        cpu = [1e6 * r["client_cpu_s"] / (r["result"]["rate_achieved"] * r["seconds"]) for r in rows
               if r["tool"] == tool and r["target"] == target and r["result"]["rate_achieved"]]
        print(f"| {target} | {tool} | {fmt(vals(tool, target, 'rate_achieved'))} | {fmt(vals(tool, target, 'p50_us'))} | "
              f"{fmt(vals(tool, target, 'p99_us'))} | {e} | {fmt(cpu)} | {ratio} |")
loads = [r["load1"] for r in rows]
print(f"\nload average before the runs: {min(loads):.2f}..{max(loads):.2f}")
PY
(wrk --version 2>&1 || true) | head -1 | sed "s/  *Copyright.*//" | tee -a "$OUT/table.md"
echo "wrk-check.sh: raw runs in $OUT/runs.jsonl" >&2
