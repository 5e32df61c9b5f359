#!/usr/bin/env python3
"""check.py: the greedy stories260K check of bench/gpu/run.sh.

    check.py greedy --ids IDS.txt --logprobs SCORE.json
                    [--tokenizer tok512.bin --golden reference.txt]

IDS.txt holds the greedy ids after BOS (whitespace-separated; '#' lines are
comments). SCORE.json is cascade-score's output for BOS followed by every id
but the last, so row i is the model's distribution after position i. The
run passes when
  - every row's top-1 token is the next id of the greedy sequence (so greedy
    decoding on that backend produces exactly these ids), and
  - with --tokenizer and --golden, the ids decode (llama2.c's rules: raw
    bytes for <0xHH>, no leading space right after BOS) to the golden text,
    trailing newlines aside: the ids are the reference's output, not just
    what the CPU happened to produce.
Prints one JSON line; exit 0 on pass, 1 on fail, 2 on unusable input.
Plain Python, no numpy.
"""
import argparse
import json
import struct
import sys

BOS = 1


def read_ids(path):
    ids = []
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                ids += [int(t) for t in line.split()]
    return ids


def llama2c_pieces(path):
    """The vocabulary of a llama2.c tokenizer.bin: max_len, then per token
    a float score, an int32 length and the bytes."""
    with open(path, "rb") as f:
        data = f.read()
    off, pieces = 4, []
    while off < len(data):
        _score, n = struct.unpack_from("<fi", data, off)
        off += 8
        pieces.append(data[off:off + n])
        off += n
    return pieces


def decode(pieces, ids):
    out, prev = bytearray(), BOS
    for t in ids:
        p = pieces[t]
        if prev == BOS and p.startswith(b" "):
            p = p[1:]
        if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
            p = bytes([int(p[3:5], 16)])
        out += p
        prev = t
    return out.decode("utf-8", errors="replace")


def greedy(a):
    ids = read_ids(a.ids)
    with open(a.logprobs) as f:
        rows = json.load(f)["logprobs"]
    res = {"check": "greedy", "positions": len(rows), "ids": len(ids)}
    fails = []
    if len(rows) != len(ids):
        fails.append("%d rows for %d ids" % (len(rows), len(ids)))
    for i, (row, want) in enumerate(zip(rows, ids)):
        top = max(range(len(row)), key=lambda k: (row[k], -k))
        if top != want:
            fails.append("position %d: top-1 %d, greedy reference %d (%.6f vs %.6f)"
                         % (i, top, want, row[top], row[want]))
    if a.tokenizer and a.golden:
        text = decode(llama2c_pieces(a.tokenizer), ids)
        with open(a.golden, encoding="utf-8") as f:
            golden = f.read()
        res["text_matches_golden"] = text.rstrip("\n") == golden.rstrip("\n")
        if not res["text_matches_golden"]:
            fails.append("the ids do not decode to the golden text")
    res["status"] = "fail" if fails else "pass"
    res["failures"] = fails[:10]
    print(json.dumps(res))
    return 1 if fails else 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("greedy")
    g.add_argument("--ids", required=True)
    g.add_argument("--logprobs", required=True)
    g.add_argument("--tokenizer")
    g.add_argument("--golden")
    a = ap.parse_args(argv)
    try:
        return greedy(a)
    except (OSError, ValueError, KeyError, IndexError) as e:
        print(json.dumps({"check": a.cmd, "status": "error", "error": str(e)}))
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
