#!/usr/bin/python3
"""test_ref.py: checks of the numpy DeepSeek-V3 reference (deepseek_v3_ref.py) itself.

The reference is what the C engine is judged by, so it is checked on its own:
  - the F8_E4M3 decode table at known codes, and its order;
  - the MoE gate on hand-computed cases: tied scores, a group that is fully
    masked although it holds the best expert, topk_group == n_group, a bias
    that changes the choice but not the weights, norm_topk_prob off, tied
    groups;
  - RoPE: YaRN frequencies and the softmax scale against numbers worked out by
    hand for the tiny config; rotations keep norms and depend only on relative
    position, in both layouts; the adjacent layout pairs (2i, 2i+1);
  - the acceptance rule of compare_logprobs.py on hand-made rows;
  - on tiny checkpoints written by cascade-gen-v3 (BF16, FP8, FP8 without q
    LoRA): naive and absorbed MLA agree to 1e-10; the logprobs of a prefix
    alone equal those positions of a longer sequence; rows are normalized;
    the half rotation layout gives clearly different results; FP8 weights
    dequantize to within e4m3's rounding of the BF16 checkpoint's; the CLI
    prints {"logprobs": [[vocab] per position]}.

Run: /usr/bin/python3 tests/reference/test_ref.py (CTest sets
CASCADE_GEN_V3 to the cascade-gen-v3 binary, or CASCADE_BUILD_DIR).
Exit 0 when all pass, 1 on any failure, 77 (SKIP) when numpy or
cascade-gen-v3 is missing, 1 for a skip under CI=true (tests/README.md).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare_logprobs as cmp  # noqa: E402
import deepseek_v3_ref as ref  # noqa: E402

passed = failed = skipped = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        sys.stderr.write("CHECK failed: %s\n" % what)


def skip(why):
    global skipped
    skipped += 1
    print("SKIP: " + why)


def finish():
    if skipped:
        print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    else:
        print("%d passed, %d failed" % (passed, failed))
    if failed:
        return 1
    if skipped:
        if os.environ.get("CI") == "true":
            sys.stderr.write("FAIL: skipped under CI=true, where every dependency is installed\n")
            return 1
        return 77
    return 0


def close(a, b, tol):
    return abs(a - b) <= tol


# ---- F8_E4M3 -----------------------------------------------------------------

def test_e4m3():
    np = ref.np
    t = ref.e4m3_table()
    check(t[0x7E] == 448.0 and t[0xFE] == -448.0, "e4m3 max is 448")
    check(t[0x01] == 2.0 ** -9 and t[0x08] == 2.0 ** -6, "e4m3 smallest subnormal, normal")
    check(t[0x38] == 1.0 and t[0xB8] == -1.0 and t[0x40] == 2.0, "e4m3 1, -1, 2")
    check(t[0x00] == 0.0 and t[0x80] == 0.0 and math.copysign(1, t[0x80]) < 0, "e4m3 +-0")
    check(int(np.isnan(t).sum()) == 2 and np.isnan(t[0x7F]) and np.isnan(t[0xFF]), "e4m3 NaNs")
    check(bool(np.all(np.diff(t[:0x7F]) > 0)), "e4m3 positive codes increase")
    check(bool(np.all(t[0x80:0xFF] == -t[:0x7F])), "e4m3 sign bit")


# ---- The gate ------------------------------------------------------------------

def test_gate():
    np = ref.np
    z16 = np.zeros(16)
    # All scores tied: groups tie, experts tie; the lower index wins both.
    idx, w = ref.route(np.full(16, 0.5), z16, 4, 2, 4, True, 2.5)
    check(list(idx) == [0, 1, 2, 3], "tied scores pick experts 0..3, got %s" % list(idx))
    check(np.allclose(w, [0.625] * 4, rtol=0, atol=1e-15), "tied weights 2.5/4")

    # A fully masked group: expert 0 has the best score, but its group's top-2
    # sum (0.9 + 0.1) loses to groups 1 (1.2) and 2 (1.1).
    s = np.array([0.9, 0.1, 0.6, 0.6, 0.55, 0.55, 0.2, 0.2])
    z8 = np.zeros(8)
    margins = []
    idx, w = ref.route(s, z8, 4, 2, 2, True, 2.5, margins)
    check(list(idx) == [2, 3], "masked group: experts 2, 3 (tie, lower first), got %s" % list(idx))
    check(0 not in idx, "the best expert of a dropped group is not chosen")
    check(np.allclose(w, [1.25, 1.25], rtol=0, atol=1e-15), "masked group weights")
    # Margins: groups 1.1 vs 1.0 (0.1); experts 0.6 vs 0.55 (0.05).
    check(len(margins) == 1 and close(margins[0], 0.05, 1e-12), "gate margin %s" % margins)

    # topk_group == n_group: no group is dropped, a plain top-k.
    idx, w = ref.route(s, z8, 4, 4, 2, True, 2.5)
    check(list(idx) == [0, 2], "topk_group == n_group: experts 0, 2, got %s" % list(idx))
    check(np.allclose(w, [0.9 / 1.5 * 2.5, 0.6 / 1.5 * 2.5], rtol=0, atol=1e-15),
          "topk_group == n_group weights")

    # The bias chooses, the unbiased scores weigh.
    s4 = np.array([0.5, 0.4, 0.3, 0.2])
    idx, w = ref.route(s4, np.array([0.0, 0.0, 0.25, 0.0]), 1, 1, 2, True, 2.0)
    check(list(idx) == [2, 0], "bias selects expert 2 first, got %s" % list(idx))
    check(np.allclose(w, [0.3 / 0.8 * 2.0, 0.5 / 0.8 * 2.0], rtol=0, atol=1e-15),
          "weights are the unbiased scores")

    # norm_topk_prob false: the scores times the scaling factor.
    idx, w = ref.route(s4, np.zeros(4), 1, 1, 2, False, 2.0)
    check(list(idx) == [0, 1] and np.allclose(w, [1.0, 0.8], rtol=0, atol=1e-15),
          "norm_topk_prob false")

    # Tied group scores (0.6, 0.6, 0.6, 0.2): the lower groups 0 and 1 are
    # kept, so expert 4 (0.35, group 2) loses to expert 0 (0.3, tied with 1).
    s8 = np.array([0.3, 0.3, 0.2, 0.4, 0.35, 0.25, 0.1, 0.1])
    idx, _ = ref.route(s8, z8, 4, 2, 2, True, 1.0)
    check(list(idx) == [3, 0], "tied groups keep groups 0 and 1, got %s" % list(idx))


# ---- RoPE ---------------------------------------------------------------------

def tiny_config():
    """The tiny preset's rope and attention fields, as cascade-gen-v3 writes them."""
    c = ref.Config.__new__(ref.Config)
    c.rope, c.nope, c.theta = 16, 32, 10000.0
    c.yarn, c.factor, c.orig_max = True, 40.0, 4096
    c.beta_fast, c.beta_slow, c.mscale, c.mscale_all_dim = 32.0, 1.0, 1.0, 1.0
    return c


def test_rope():
    np = ref.np
    c = tiny_config()
    f = c.inv_freq()
    base = [10000.0 ** (-2.0 * i / 16) for i in range(8)]
    # By hand: beta_fast 32 gives 16 ln(4096 / 64 pi) / (2 ln 10^4) = 2.62 -> low 2;
    # beta_slow 1 gives 16 ln(4096 / 2 pi) / (2 ln 10^4) = 5.63 -> high 6.
    # Dims below 2 keep their frequency, above 6 are divided by 40, between blend.
    want = []
    for i in range(8):
        ramp = min(max((i - 2) / 4.0, 0.0), 1.0)
        want.append(base[i] / 40.0 * ramp + base[i] * (1 - ramp))
    check(np.allclose(f, want, rtol=1e-15, atol=0), "yarn frequencies %s" % f)
    check(f[0] == 1.0 and close(f[7], base[7] / 40, 1e-18) and close(f[4], base[4] * 41 / 80, 1e-15),
          "yarn ends and midpoint")
    m = 0.1 * math.log(40.0) + 1.0
    check(close(c.softmax_scale(), 48 ** -0.5 * m * m, 1e-15), "softmax scale with mscale")
    check(c.rope_amplitude() == 1.0, "mscale == mscale_all_dim: cos/sin unscaled")
    c.yarn = False
    check(np.allclose(c.inv_freq(), base, rtol=1e-15, atol=0), "no yarn: plain frequencies")
    check(close(c.softmax_scale(), 48 ** -0.5, 1e-15), "no yarn: plain softmax scale")
    c.yarn = True

    # The adjacent layout rotates dims (0, 1) by position * f[0] = position.
    pos = np.array([3.0])
    e0 = np.zeros((1, 16))
    e0[0, 0] = 1.0
    y = ref.rope(e0, pos, c, "adjacent")
    check(close(y[0, 0], math.cos(3.0), 1e-15) and close(y[0, 1], math.sin(3.0), 1e-15)
          and abs(y[0, 2:]).max() == 0.0, "adjacent pair (0, 1)")
    y = ref.rope(e0, pos, c, "half")
    check(close(y[0, 0], math.cos(3.0), 1e-15) and close(y[0, 8], math.sin(3.0), 1e-15)
          and abs(y[0, 1]) == 0.0, "half pair (0, 8)")

    # Norm kept, and q.k depends on the relative position only.
    rng = np.random.default_rng(7)
    q, k = rng.standard_normal((1, 16)), rng.standard_normal((1, 16))
    for layout in ("adjacent", "half"):
        def dot(pq, pk):
            return float(ref.rope(q, np.array([pq]), c, layout)[0] @
                         ref.rope(k, np.array([pk]), c, layout)[0])
        yq = ref.rope(q, np.array([11.0]), c, layout)
        check(close(np.linalg.norm(yq), np.linalg.norm(q), 1e-12), "rope keeps norm (%s)" % layout)
        check(close(dot(5, 2), dot(105, 102), 1e-9) and not close(dot(5, 2), dot(5, 4), 1e-3),
              "rope is relative (%s)" % layout)


# ---- The acceptance rule (compare_logprobs.py) -----------------------------------

def test_compare():
    r = [[-1.0, -2.0, -3.0], [-0.5, -0.5004, -4.0]]
    check(cmp.compare(r, r, 1e-3) == ([], 0.0), "identical rows pass")
    near = [[x + 0.0009 for x in row] for row in r]
    check(not cmp.compare(r, near, 1e-3)[0], "a shift of 0.9e-3 passes")
    far = [[-1.0, -2.0, -3.002], r[1]]
    check(len(cmp.compare(r, far, 1e-3)[0]) == 1, "a token 2e-3 off fails")
    # Position 1's reference top two are 4e-4 apart: a swapped top-1 is accepted.
    swap = [r[0], [-0.5003, -0.5001, -4.0]]
    check(not cmp.compare(r, swap, 1e-3)[0], "top-1 swap within a near tie passes")
    # Top two 1.5e-3 apart, each moved 0.9e-3 towards the other: every diff is
    # within tol, but the top-1 changed where the reference was not tied.
    gap = [[-1.0, -1.0015, -3.0]]
    check(len(cmp.compare(gap, [[-1.0009, -1.0006, -3.0]], 1e-3)[0]) == 1, "a real top-1 change fails")
    check(len(cmp.compare(r, [r[0], [float("nan"), -0.5004, -4.0]], 1e-3)[0]) >= 1, "NaN fails")
    check(len(cmp.compare(r, r[:1], 1e-3)[0]) == 1, "a missing position fails")


# ---- On checkpoints ------------------------------------------------------------

def find_gen():
    g = os.environ.get("CASCADE_GEN_V3")
    if g and os.access(g, os.X_OK):
        return g
    b = os.environ.get("CASCADE_BUILD_DIR")
    if b:
        g = os.path.join(b, "engines", "native", "cascade-gen-v3")
        if os.access(g, os.X_OK):
            return g
    return None


def test_checkpoints(gen, tmp):
    np = ref.np
    dirs = {}
    for name, args in (("bf16", []), ("fp8", ["--dtype", "fp8"]),
                       ("fp8-noq", ["--dtype", "fp8", "--no-q-lora", "--shards", "3"])):
        d = os.path.join(tmp, name)
        r = subprocess.run([gen, "--out", d] + args, capture_output=True, text=True)
        check(r.returncode == 0, "cascade-gen-v3 %s: %s" % (name, r.stderr))
        dirs[name] = d
    tokens = [0, 17, 300, 42, 5, 128, 77, 460, 3, 250]
    lp = {}
    for name, d in dirs.items():
        naive = ref.Model(d, "adjacent", "naive").logprobs(tokens)
        absorbed = ref.Model(d, "adjacent", "absorbed").logprobs(tokens)
        lp[name] = naive
        vocab = ref.Config(d).vocab
        check(naive.shape == (len(tokens), vocab), "%s: logprobs shape" % name)
        check(float(np.abs(naive - absorbed).max()) <= 1e-10,
              "%s: naive and absorbed MLA differ by %g" % (name, np.abs(naive - absorbed).max()))
        lse = np.log(np.exp(naive).sum(axis=1))
        check(float(np.abs(lse).max()) <= 1e-12, "%s: rows are log-probabilities" % name)
        prefix = ref.Model(d).logprobs(tokens[:4])
        check(float(np.abs(prefix - naive[:4]).max()) <= 1e-10,
              "%s: a prefix alone equals its positions in the longer sequence" % name)
        half = ref.Model(d, "half").logprobs(tokens)
        check(bool(cmp.compare(naive.tolist(), half.tolist(), 1e-3)[0]) and
              not cmp.compare(naive.tolist(), absorbed.tolist(), 1e-3)[0],
              "%s: the acceptance rule passes absorbed, fails the half layout" % name)
        check(float(np.abs(half - naive).max()) > 0.1,
              "%s: the half rotation layout differs clearly (%g)" % (name, np.abs(half - naive).max()))
        check(bool(np.any(half[1:].argmax(1) != naive[1:].argmax(1))) or
              float(np.abs(half - naive).max()) > 0.3, "%s: layouts change predictions" % name)
    # The three checkpoints share their seed: FP8 is near BF16, not equal
    # (where quantization flips an expert choice a position can move more,
    # so the bound is on the mean).
    diff = np.abs(lp["fp8"] - lp["bf16"])
    check(float(diff.max()) > 1e-4 and float(diff.mean()) < 0.5,
          "FP8 vs BF16 logprobs: max %g, mean %g" % (diff.max(), diff.mean()))

    # Dequantization: every FP8 weight is within e4m3's rounding of the BF16
    # checkpoint's weight of the same name (independent of the C reader).
    f8, bf = ref.Checkpoint(dirs["fp8"]), ref.Checkpoint(dirs["bf16"])
    n, bad, partial = 0, 0, 0
    for name, (dtype, shape, *_rest) in f8.entries.items():
        if dtype != "F8_E4M3":
            continue
        w8, wb = f8.get(name), bf.get(name)
        _, s = f8.raw(name + "_scale_inv")
        sc = np.repeat(np.repeat(s, 128, 0), 128, 1)[:shape[0], :shape[1]]
        tol = np.abs(wb) * (1 / 16 + 1 / 256) + sc * 2.0 ** -9
        bad += int(np.sum(np.abs(w8 - wb) > tol))
        partial += shape[0] % 128 != 0 or shape[1] % 128 != 0
        n += 1
    check(n > 100 and partial > 0 and bad == 0,
          "FP8 dequantization: %d tensors, %d partial, %d values off" % (n, partial, bad))

    # The CLI: the JSON shape the engine's cascade-score also prints.
    out = os.path.join(tmp, "out.json")
    r = subprocess.run([sys.executable, os.path.join(HERE, "deepseek_v3_ref.py"), dirs["fp8-noq"],
                        "--tokens", "0,1,2", "--out", out], capture_output=True, text=True)
    check(r.returncode == 0, "CLI: %s" % r.stderr)
    if r.returncode == 0:
        with open(out) as fh:
            j = json.load(fh)
        rows = j.get("logprobs")
        check(list(j.keys()) == ["logprobs"] and len(rows) == 3 and
              all(len(x) == ref.Config(dirs["fp8-noq"]).vocab for x in rows), "CLI JSON shape")
        check(np.allclose(rows, ref.Model(dirs["fp8-noq"]).logprobs([0, 1, 2]), rtol=0,
                          atol=1e-15), "CLI JSON values")
    r = subprocess.run([sys.executable, os.path.join(HERE, "deepseek_v3_ref.py"), dirs["bf16"],
                        "--tokens", "0,99999"], capture_output=True, text=True)
    check(r.returncode != 0 and "tokens must be in" in r.stderr, "CLI refuses an out-of-range id")


def main():
    if ref.np is None:
        skip("numpy is not installed for %s (apt-get install python3-numpy)" % sys.executable)
        return finish()
    test_e4m3()
    test_gate()
    test_rope()
    test_compare()
    gen = find_gen()
    if gen is None:
        skip("cascade-gen-v3 not found (set CASCADE_GEN_V3 or CASCADE_BUILD_DIR); "
             "checkpoint checks not run")
    else:
        with tempfile.TemporaryDirectory(prefix="cascade_ref_") as tmp:
            test_checkpoints(gen, tmp)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
