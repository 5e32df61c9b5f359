#!/usr/bin/python3
"""compare_logprobs.py: the acceptance rule of issue 13, between two logprob files.

    compare_logprobs.py REFERENCE.json CANDIDATE.json [--tol 1e-3] [--positions a:b]

Both files hold {"logprobs": [[vocab floats] per position]}, as
deepseek_v3_ref.py and the engine's cascade-score print them. The candidate
passes when, at every compared position,
  - every token's |logprob difference| <= tol, and
  - its top-1 token is the reference's, except where the reference's top two
    are closer than tol (then either of them is accepted).
Prints one line per failing position and a summary line with the largest
difference; exit 0 on pass, 1 on fail, 2 on unusable input. Plain Python (no
numpy), so it runs wherever the JSON files are.
"""
import json
import sys


def load(path):
    with open(path) as f:
        rows = json.load(f).get("logprobs")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) and r for r in rows):
        raise ValueError("%s: no logprobs rows" % path)
    return rows


def top2(row):
    """Indices of the best and second-best entries (ties: lower index first)."""
    best = max(range(len(row)), key=lambda i: (row[i], -i))
    second = max((i for i in range(len(row)) if i != best), key=lambda i: (row[i], -i),
                 default=best)
    return best, second


def compare(ref, cand, tol):
    """A list of failure messages, and the largest |difference| seen."""
    fails, worst = [], 0.0
    if len(ref) != len(cand):
        return ["%d reference positions, %d candidate positions" % (len(ref), len(cand))], float("inf")
    for p, (r, c) in enumerate(zip(ref, cand)):
        if len(r) != len(c):
            fails.append("position %d: vocab %d vs %d" % (p, len(r), len(c)))
            continue
        d, at = max((abs(a - b), i) for i, (a, b) in enumerate(zip(r, c)))
        worst = max(worst, d)
        if not d <= tol:    # also catches NaN
            fails.append("position %d: |diff| %.3g at token %d (%.6f vs %.6f)" % (p, d, at, r[at], c[at]))
        b1, b2 = top2(r)
        c1, _ = top2(c)
        if c1 != b1 and not (r[b1] - r[b2] < tol and c1 == b2):
            fails.append("position %d: top-1 %d, reference %d (its top two %.6f, %.6f)"
                         % (p, c1, b1, r[b1], r[b2]))
    return fails, worst


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference")
    ap.add_argument("candidate")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--positions", help="compare only positions a:b (Python slice)")
    a = ap.parse_args(argv)
    try:
        ref, cand = load(a.reference), load(a.candidate)
    except (OSError, ValueError) as e:
        sys.stderr.write("compare_logprobs: %s\n" % e)
        return 2
    if a.positions:
        lo, _, hi = a.positions.partition(":")
        s = slice(int(lo) if lo else None, int(hi) if hi else None)
        ref, cand = ref[s], cand[s]
    fails, worst = compare(ref, cand, a.tol)
    for f in fails:
        print(f)
    print("%s: %d positions, max |diff| %.3g, tol %g" % ("FAIL" if fails else "PASS", len(ref), worst, a.tol))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
