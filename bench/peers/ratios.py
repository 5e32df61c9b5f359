#!/usr/bin/env python3
"""ratios.py RUNS.jsonl: cascade1 against nginx round by round, from run.sh's raw runs.

run.sh's table gives medians over rounds of each target on its own; issue 18's
targets are ratios within a round (the same minutes of a shared machine). For
each mode, rate and round this prints cascade1's and nginx's CPU per request
(utime + stime from /proc over the run / upstream requests, in µs) and their
ratio; at saturation (rate 0) also both throughputs and their ratio; at a fixed
rate each one's p99 (time to first byte for streams), in µs. With cascade1_old
in the runs (OLD_BUILD) its CPU per request is added, and at a fixed rate its p99.
"""
import json
import sys


def ticks(field):
    # "pid:utime:stime" per process, comma-separated (run.sh's cpu_before/after)
    total = 0
    for kv in field.split(","):
        if kv:
            f = kv.split(":")
            total += int(f[1]) + int(f[2])
    return total


def cpu_us_per_request(r):
    s = (ticks(r["cpu_after"]) - ticks(r["cpu_before"])) / r["clk_tck"]
    return s / r["upstream_requests"] * 1e6


def p99(r, mode):
    res = r["result"]
    return res.get("ttfb_p99_us") if mode == "stream" else res["p99_us"]


def main(path):
    rows = [json.loads(line) for line in open(path)]
    by = {(r["target"], r["mode"], r["rate"], r["round"]): r for r in rows}
    for mode in ("nonstream", "stream"):
        for rate in sorted({r["rate"] for r in rows}):
            for rnd in sorted({r["round"] for r in rows}):
                c, n = by.get(("cascade1", mode, rate, rnd)), by.get(("nginx", mode, rate, rnd))
                if not c or not n:
                    continue
                cc, nn = cpu_us_per_request(c), cpu_us_per_request(n)
                line = f"{mode:9} rate={rate:5} round={rnd} cpu/req cascade1={cc:6.1f} nginx={nn:6.1f} ratio={cc / nn:4.2f}"
                if rate == 0:
                    cs, ns = c["result"]["rate_achieved"], n["result"]["rate_achieved"]
                    line += f" saturation cascade1={cs:7.0f} nginx={ns:7.0f} ratio={cs / ns:4.2f}"
                else:
                    line += f" p99 cascade1={p99(c, mode):8.0f} nginx={p99(n, mode):8.0f}"
                o = by.get(("cascade1_old", mode, rate, rnd))
                if o:
                    line += f" cascade1_old cpu/req={cpu_us_per_request(o):6.1f}"
                    if rate != 0:
                        line += f" p99={p99(o, mode):8.0f}"
                print(line)


if __name__ == "__main__":
    main(sys.argv[1])
