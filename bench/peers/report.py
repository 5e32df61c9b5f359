#!/usr/bin/env python3
"""report.py OUT: the markdown tables of bench/peers/run.sh from OUT/runs.jsonl,
OUT/rss.txt and OUT/meta.txt.

Every latency figure "added" is paired: the target's percentile minus direct's
in the same round (same mode and rate), then the median over rounds with the
min..max across rounds beside it. CPU per request is the target's processes'
utime+stime over the run divided by the upstream requests the run caused, in
CPU seconds per 1,000 requests (0.058 s per 1,000 = 58 us per request). A run counts as overloaded when it
achieved under 95% of its open-loop rate or more than 1% of its requests
failed, or when its rate is at or above the target's own saturation; its
latency then measures a queue, and is marked so.
"""
import json
import os
import statistics
import sys

OUT = sys.argv[1]
runs = [json.loads(l) for l in open(os.path.join(OUT, "runs.jsonl")) if l.strip()]
ORDER = ["direct", "cascade1", "cascade1_old", "cascade2", "cascade2_old", "cascade_full",
         "cascade_full_old", "nginx", "nginx2", "portkey"]
targets = sorted({r["target"] for r in runs}, key=lambda t: ORDER.index(t) if t in ORDER else 99)
modes = [m for m in ("nonstream", "stream") if any(r["mode"] == m for r in runs)]
rates = sorted({r["rate"] for r in runs}, key=lambda x: (x == 0, x))


def ticks(s, part):
    """pid -> ticks from "pid:utime:stime,..." (part: 'all', 'user', 'sys');
    older runs wrote "pid:utime+stime", which only 'all' can read"""
    out = {}
    for kv in (x for x in s.split(",") if x):
        f = kv.split(":")
        if len(f) == 2:
            out[f[0]] = int(f[1]) if part == "all" else None
        else:
            u, st = int(f[1]), int(f[2])
            out[f[0]] = {"all": u + st, "user": u, "sys": st}[part]
    return out


def cpu_s(r, before, after, part="all"):
    a, b = ticks(r[before], part), ticks(r[after], part)
    if any(v is None for v in b.values()):
        return None
    return sum(b[p] - a.get(p, 0) for p in b) / r["clk_tck"]


for r in runs:
    res = r["result"]
    n = r["upstream_requests"]
    r["cpu_per_1k"] = 1000 * cpu_s(r, "cpu_before", "cpu_after") / n if n > 0 else None
    sys_s = cpu_s(r, "cpu_before", "cpu_after", "sys")
    r["sys_per_1k"] = 1000 * sys_s / n if n > 0 and sys_s is not None else None
    r["upstream_per_1k"] = 1000 * cpu_s(r, "upstream_cpu_before", "upstream_cpu_after") / n if n > 0 else None
    r["redis_per_1k"] = 1000 * cpu_s(r, "redis_cpu_before", "redis_cpu_after") / n if n > 0 else None
    sent = max(res["sent"], 1)
    r["err_frac"] = (res["errors"] + res["non2xx"]) / sent
    r["overloaded"] = r["err_frac"] > 0.01 or (r["rate"] > 0 and res["rate_achieved"] < 0.95 * r["rate"])

# An open-loop rate at or above what the target sustained in closed loop (the
# median of its saturation runs in the same mode) only measures a growing queue.
for r in runs:
    sat = [x["result"]["rate_achieved"] for x in runs
           if x["target"] == r["target"] and x["mode"] == r["mode"] and x["rate"] == 0]
    if r["rate"] > 0 and sat and r["rate"] >= statistics.median(sat):
        r["overloaded"] = True


def sel(t, mode, rate):
    return sorted((r for r in runs if r["target"] == t and r["mode"] == mode and r["rate"] == rate),
                  key=lambda r: r["round"])


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs, fmt, sign=False):
    """median [min..max] of xs, or '-'; fmt "lat": microseconds, shown in ms
    from 10 ms up (queues of seconds stay readable)"""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if fmt == "lat":
        def f(v):
            s = "+" if sign else ""
            return format(v, s + ".0f") if abs(v) < 10000 else format(v / 1000, s + ",.0f") + " ms"
    else:
        f = (lambda v: format(v, "+" + fmt)) if sign else (lambda v: format(v, fmt))
    if len(xs) == 1:
        return f(xs[0])
    return f"{f(statistics.median(xs))} [{f(min(xs))}..{f(max(xs))}]"


def added(t, mode, rate, key):
    """per-round target - direct for one percentile"""
    d = {r["round"]: r["result"].get(key) for r in sel("direct", mode, rate)}
    out = []
    for r in sel(t, mode, rate):
        v, base = r["result"].get(key), d.get(r["round"])
        out.append(v - base if v is not None and base is not None else None)
    return out


rss = {}
if os.path.exists(os.path.join(OUT, "rss.txt")):
    for line in open(os.path.join(OUT, "rss.txt")):
        parts = line.split()
        if len(parts) >= 2:
            rss[parts[0]] = [int(x) for x in parts[1:]]

print("### Summary: per request, medians over rounds [min..max]\n")
cols = [t for t in targets]
print("| | " + " | ".join(cols) + " |")
print("|---|" + "---|" * len(cols))


def row(label, fn):
    print(f"| {label} | " + " | ".join(fn(t) for t in cols) + " |")


def cpu_cell(mode, rate):
    def f(t):
        rs = sel(t, mode, rate)
        s = spread([r["cpu_per_1k"] for r in rs], ".3f")
        if t.startswith("cascade_full") and rs:
            s += f" (+ Redis {spread([r['redis_per_1k'] for r in rs], '.3f')})"
        if any(r["overloaded"] for r in rs):
            s += " (overloaded)"
        return s
    return f


def sat_cell(mode):
    def f(t):
        rs = sel(t, mode, 0)
        if not rs:
            return "-"
        e = med([r["err_frac"] for r in rs])
        return f"{spread([r['result']['rate_achieved'] for r in rs], ',.0f')} req/s, errors {100 * e:.1f}%"
    return f


def add_cell(mode, rate, key):
    def f(t):
        if t == "direct":
            return spread([r["result"].get(key) for r in sel(t, mode, rate)], "lat") + " (absolute)"
        rs = sel(t, mode, rate)
        if not rs:
            return "-"
        s = spread(added(t, mode, rate, key), "lat", sign=True)
        if any(r["overloaded"] for r in rs):
            s = "overloaded: " + s
        return s
    return f


for mode in modes:
    for rate in rates:
        if rate in (5000,):
            row(f"CPU s per 1,000 req at {rate:,}/s, {mode}", cpu_cell(mode, rate))
for mode in modes:
    if 0 in rates:
        row(f"saturation, {mode}", sat_cell(mode))
        row(f"CPU s per 1,000 req at saturation, {mode}", cpu_cell(mode, 0))
        if any(r["sys_per_1k"] is not None for r in runs):
            row(f"of which in the kernel (stime), {mode}",
                lambda t, mode=mode: spread([r["sys_per_1k"] for r in sel(t, mode, 0)], ".3f"))
for mode in modes:
    key = "ttfb_p50_us" if mode == "stream" else "p50_us"
    for rate in rates:
        if rate in (1000, 5000):
            row(f"added p50 µs at {rate:,}/s, {mode}" + (" (TTFB)" if mode == "stream" else ""),
                add_cell(mode, rate, key))
            k99 = "ttfb_p99_us" if mode == "stream" else "p99_us"
            row(f"added p99 µs at {rate:,}/s, {mode}" + (" (TTFB)" if mode == "stream" else ""),
                add_cell(mode, rate, k99))
row("peak RSS (VmHWM, all its processes)",
    lambda t: (f"{rss[t][0] / 1024:.1f} MiB" + (f" (+ Redis {rss[t][1] / 1024:.1f} MiB)" if len(rss[t]) > 1 else ""))
    if t in rss else "-")

print("\n### Every load: added latency over direct (µs), paired per round, median [min..max]\n")
print("Latency of a stream is to its last byte; TTFB to its first body byte. Load = 1-minute load "
      "average before the runs (median [min..max]).\n")
print("| mode | rate | target | achieved req/s | errors | added p50 | added p99 | added p99.9 | added TTFB p50 | added TTFB p99 | CPU s / 1k req | load |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for mode in modes:
    for rate in rates:
        rl = "saturation" if rate == 0 else f"{rate:,}/s"
        for t in targets:
            rs = sel(t, mode, rate)
            if not rs:
                continue
            e = med([r["err_frac"] for r in rs])
            ach = spread([r["result"]["rate_achieved"] for r in rs], ",.0f")
            if t == "direct":
                cells = [spread([r["result"].get(k) for r in rs], "lat") + " abs"
                         for k in ("p50_us", "p99_us", "p999_us")]
                cells += [spread([r["result"].get(k) for r in rs], "lat") + " abs" if mode == "stream" else "-"
                          for k in ("ttfb_p50_us", "ttfb_p99_us")]
            else:
                cells = [spread(added(t, mode, rate, k), "lat", sign=True)
                         for k in ("p50_us", "p99_us", "p999_us")]
                cells += [spread(added(t, mode, rate, k), "lat", sign=True) if mode == "stream" else "-"
                          for k in ("ttfb_p50_us", "ttfb_p99_us")]
            name = t + (" (overloaded)" if any(r["overloaded"] for r in rs) else "")
            print(f"| {mode} | {rl} | {name} | {ach} | {100 * e:.2f}% | " + " | ".join(cells) +
                  f" | {spread([r['cpu_per_1k'] for r in rs], '.3f')} | "
                  f"{spread([r['load1_before'] for r in rs], '.2f')} |")

# every answer must have been an upstream call (cascade_full: no cache hit)
warn = [r for r in runs if r["upstream_requests"] < r["result"]["ok"]]
for r in warn:
    print(f"\nWARNING: {r['target']} {r['mode']} rate {r['rate']} round {r['round']}: "
          f"{r['upstream_requests']} upstream calls for {r['result']['ok']} answers")
print()
for name in ("meta.txt", "checks.txt"):
    p = os.path.join(OUT, name)
    if os.path.exists(p):
        for line in open(p):
            print(line.rstrip()[:400] + "  ")
