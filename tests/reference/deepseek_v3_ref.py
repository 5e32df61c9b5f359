#!/usr/bin/python3
"""deepseek_v3_ref.py: an independent numpy reference for DeepSeek-V3 checkpoints.

It reads a Hugging Face DeepseekV3ForCausalLM folder (config.json, the
safetensors shards and their index) by itself and computes, in float64, the
log-probabilities of every next token of a causal sequence. It is written from
the published architecture (the DeepSeek-V3 technical report, and the semantics
of DeepSeek's inference/model.py and of the Hugging Face config), not from the
C engine, so the engine can be checked against it:

    deepseek_v3_ref.py MODEL_DIR --tokens 0,5,17 [--out FILE]
        [--rope-layout adjacent|half] [--attn naive|absorbed] [--report-margins]

prints (or writes) {"logprobs": [[vocab floats] per position]}: row i is
log_softmax(logits) after tokens[0..i], i.e. the prefill of all tokens, which
is also what prefill plus teacher-forced decode gives with a correct cache.

What it computes, in order (D hidden, H heads, per layer):
  - embedding rows of the tokens;
  - each of the num_hidden_layers decoder layers (the multi-token-prediction
    layer stored at index num_hidden_layers is ignored, as in generation):
      x = h + MLA(RMSNorm(h)),  h' = x + FFN(RMSNorm(x))
    FFN is the dense SwiGLU MLP for the first first_k_dense_replace layers and
    the MoE block after;
  - RMSNorm, lm_head, log_softmax.
RMSNorm(x) = x / sqrt(mean(x^2) + eps) * w, with eps = rms_norm_eps for every
norm (DeepSeek's code uses 1e-6 everywhere and HF uses its default 1e-6 for the
two latent norms; the published config says 1e-6, so they agree).

MLA (multi-head latent attention):
  q      = q_b_proj(RMSNorm_qa(q_a_proj(x)))   or q_proj(x) when q_lora_rank is null
           per head [q_nope (qk_nope_head_dim) | q_pe (qk_rope_head_dim)]
  kv_a   = kv_a_proj_with_mqa(x) = [c (kv_lora_rank) | k_pe (qk_rope_head_dim)]
  c      = RMSNorm_kv(c)                         the cached latent
  kv_b_proj(c), per head [k_nope | v]
  q_pe, k_pe rotated by RoPE (k_pe is one vector shared by all heads)
  score  = (q_nope . k_nope + q_pe . k_pe) * softmax_scale, causal mask
  out    = o_proj(concat_h softmax(score) @ v)
The "absorbed" form (--attn absorbed) folds kv_b_proj into the query and the
output and attends over the latent c directly; it is the same function, and
tests/reference/test_ref.py checks the two agree to 1e-10.

RoPE: the rotary dims of the published weights are interleaved pairs
(2i, 2i+1), rotated as complex numbers (DeepSeek's apply_rotary_emb; HF
de-interleaves them and uses rotate_half, the same rotation). That is the
default, --rope-layout adjacent. --rope-layout half rotates (i, i + d/2)
instead, which is WRONG for these weights; it exists so a test can show the
engine matches one layout and not the other.
Frequencies: inv_freq_i = rope_theta^(-2i/d). With rope_scaling.type "yarn"
(applied whenever the config says yarn, as HF does), YaRN blends them:
  low  = floor(d * ln(orig / (beta_fast * 2 pi)) / (2 ln theta)), at least 0
  high = ceil (d * ln(orig / (beta_slow * 2 pi)) / (2 ln theta)), at most d-1
  ramp_i = clip((i - low) / (high - low), 0, 1)     (high += 0.001 if equal)
  inv_freq_i = inv_freq_i / factor * ramp_i + inv_freq_i * (1 - ramp_i)
(DeepSeek's precompute_freqs_cis, with orig = original_max_position_embeddings)
and cos/sin are multiplied by mscale(factor, mscale) / mscale(factor,
mscale_all_dim) (HF; 1 when the two are equal, as in every DeepSeek config).
softmax_scale = (qk_nope + qk_rope)^-0.5 * m^2, m = 0.1 * mscale_all_dim *
ln(factor) + 1 (HF; equal to DeepSeek's, whose mscale equals mscale_all_dim).

MoE gate (topk_method noaux_tc, scoring_func sigmoid):
  s = sigmoid(x @ gate.weight^T)                      scores, per expert
  b = s + e_score_correction_bias                     for SELECTION only
  group score = sum of the top 2 of b in each of the n_group groups
  keep the topk_group best groups; experts of other groups are out
  choose num_experts_per_tok experts by b among the kept ones
  weight_k = s_k (unbiased), divided by their sum when norm_topk_prob,
             times routed_scaling_factor
  y = sum_k weight_k * expert_k(x) + shared_experts(x)
Ties, in groups and in experts, go to the lower index (a stable sort), which
is torch.topk's usual but unpromised order; the engine is asked to do the same.

Weights: BF16 and F16 and F32 are read exactly; F8_E4M3 bytes are decoded
from the bit formula (sign, 4 exponent bits of bias 7, 3 mantissa bits,
subnormals at exponent 0, S.1111.111 NaN) and multiplied by the F32
`<name>_scale_inv` of their 128x128 block (partial blocks at the edges).
Everything is then float64.

Needs numpy (Debian's python3-numpy, for /usr/bin/python3). Without it: exit
77 with the reason, or 1 when CI=true (tests/README.md).
"""
import json
import math
import os
import struct
import sys

try:
    import numpy as np
except ImportError:  # pragma: no cover - depends on the machine
    np = None


def need_numpy():
    """Exit 77 (SKIP), or 1 under CI=true, when numpy is missing."""
    if np is not None:
        return
    sys.stderr.write("SKIP: numpy is not installed for %s (apt-get install python3-numpy)\n"
                     % sys.executable)
    sys.exit(1 if os.environ.get("CI") == "true" else 77)


# ---- Reading the checkpoint ------------------------------------------------

def e4m3_table():
    """The float value of each of the 256 F8_E4M3 (e4m3fn) codes."""
    t = np.empty(256, dtype=np.float64)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        e, m = (b >> 3) & 0xF, b & 7
        if e == 0xF and m == 7:
            t[b] = float("nan")
        elif e == 0:
            t[b] = sign * (m / 8.0) * 2.0 ** -6
        else:
            t[b] = sign * (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return t


class Checkpoint:
    """The tensors of a folder, read lazily as float64 arrays by name."""

    def __init__(self, model_dir):
        self.dir = model_dir
        index = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = ["model.safetensors"]
        self.entries = {}
        for name in files:
            self._read_header(os.path.join(model_dir, name))
        self.cache = {}
        self.f8 = None

    def _read_header(self, path):
        with open(path, "rb") as f:
            data = f.read()
        (hlen,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + hlen])
        base = 8 + hlen
        for name, e in header.items():
            if name == "__metadata__":
                continue
            a, b = e["data_offsets"]
            self.entries[name] = (e["dtype"], tuple(e["shape"]), data, base + a, base + b)

    def has(self, name):
        return name in self.entries

    def raw(self, name):
        if name not in self.entries:
            raise KeyError("tensor %s is not in %s" % (name, self.dir))
        dtype, shape, data, a, b = self.entries[name]
        buf = data[a:b]
        if dtype == "F32":
            v = np.frombuffer(buf, dtype="<f4").astype(np.float64)
        elif dtype == "F16":
            v = np.frombuffer(buf, dtype="<f2").astype(np.float64)
        elif dtype == "BF16":
            u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            v = u.view(np.float32).astype(np.float64)
        elif dtype == "F8_E4M3":
            if self.f8 is None:
                self.f8 = e4m3_table()
            v = self.f8[np.frombuffer(buf, dtype=np.uint8)]
        else:
            raise ValueError("tensor %s: dtype %s is not supported" % (name, dtype))
        return dtype, v.reshape(shape)

    def get(self, name):
        """The tensor as float64, FP8 weights dequantized by their block scales."""
        if name in self.cache:
            return self.cache[name]
        dtype, v = self.raw(name)
        if dtype == "F8_E4M3":
            sname = name + "_scale_inv"
            if not self.has(sname):
                raise KeyError("FP8 tensor %s has no %s" % (name, sname))
            _, s = self.raw(sname)
            rows, cols = v.shape
            full = np.repeat(np.repeat(s, 128, axis=0), 128, axis=1)[:rows, :cols]
            v = v * full
        self.cache[name] = v
        return v


# ---- The model ------------------------------------------------------------

def yarn_mscale(factor, mscale):
    return 1.0 if factor <= 1.0 else 0.1 * mscale * math.log(factor) + 1.0


class Config:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        self.raw = c
        self.D = c["hidden_size"]
        self.L = c["num_hidden_layers"]
        self.H = c["num_attention_heads"]
        self.q_lora = c.get("q_lora_rank") or 0
        self.kv_lora = c["kv_lora_rank"]
        self.nope = c["qk_nope_head_dim"]
        self.rope = c["qk_rope_head_dim"]
        self.vdim = c["v_head_dim"]
        self.eps = c["rms_norm_eps"]
        self.theta = float(c.get("rope_theta", 10000.0))
        self.vocab = c["vocab_size"]
        self.first_dense = c.get("first_k_dense_replace", 0)
        self.moe_freq = c.get("moe_layer_freq", 1)
        self.E = c.get("n_routed_experts") or 0
        self.n_group = c.get("n_group", 1)
        self.topk_group = c.get("topk_group", 1)
        self.top_k = c.get("num_experts_per_tok", 1)
        self.norm_topk = bool(c.get("norm_topk_prob", True))
        self.route_scale = float(c.get("routed_scaling_factor", 1.0))
        if c.get("scoring_func", "sigmoid") != "sigmoid":
            raise ValueError("only scoring_func sigmoid is implemented")
        if c.get("topk_method", "noaux_tc") != "noaux_tc":
            raise ValueError("only topk_method noaux_tc is implemented")
        rs = c.get("rope_scaling") or {}
        self.yarn = (rs.get("type") or rs.get("rope_type")) == "yarn"
        self.factor = float(rs.get("factor", 1.0))
        self.orig_max = rs.get("original_max_position_embeddings", 4096)
        self.beta_fast = float(rs.get("beta_fast", 32))
        self.beta_slow = float(rs.get("beta_slow", 1))
        self.mscale = float(rs.get("mscale", 1.0))
        self.mscale_all_dim = float(rs.get("mscale_all_dim", 0.0))

    def is_moe(self, layer):
        return self.E > 0 and layer >= self.first_dense and layer % self.moe_freq == 0

    def inv_freq(self):
        """RoPE frequencies of the d/2 pairs, YaRN-blended when configured."""
        d = self.rope
        freq = 1.0 / self.theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
        if not self.yarn:
            return freq

        def corr_dim(rot):
            return d * math.log(self.orig_max / (rot * 2 * math.pi)) / (2 * math.log(self.theta))

        low = max(math.floor(corr_dim(self.beta_fast)), 0)
        high = min(math.ceil(corr_dim(self.beta_slow)), d - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        return freq / self.factor * ramp + freq * (1.0 - ramp)

    def rope_amplitude(self):
        if not self.yarn:
            return 1.0
        return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor, self.mscale_all_dim)

    def softmax_scale(self):
        s = (self.nope + self.rope) ** -0.5
        if self.yarn and self.mscale_all_dim:
            m = yarn_mscale(self.factor, self.mscale_all_dim)
            s *= m * m
        return s


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def rope(x, pos, cfg, layout):
    """Rotate the last axis (qk_rope_head_dim) of x [T, ..., d] by positions pos [T]."""
    ang = np.outer(pos, cfg.inv_freq())                     # [T, d/2]
    amp = cfg.rope_amplitude()
    cos, sin = np.cos(ang) * amp, np.sin(ang) * amp
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (ang.shape[1],)
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    y = np.empty_like(x)
    if layout == "adjacent":
        a, b = x[..., 0::2], x[..., 1::2]
        y[..., 0::2] = a * cos - b * sin
        y[..., 1::2] = a * sin + b * cos
    elif layout == "half":
        h = x.shape[-1] // 2
        a, b = x[..., :h], x[..., h:]
        y[..., :h] = a * cos - b * sin
        y[..., h:] = a * sin + b * cos
    else:
        raise ValueError("rope layout must be adjacent or half")
    return y


def topk_stable(v, k):
    """Indices of the k largest entries, ties to the lower index."""
    return np.argsort(-v, kind="stable")[:k]


def route(scores, bias, n_group, topk_group, top_k, norm_topk, route_scale, margin=None):
    """Group-limited top-k over one token's sigmoid scores [E].

    Returns (expert indices in selection order, their weights). Selection uses
    scores + bias; the weights use the scores alone (see the file comment).
    When margin is a list, appends how close the choice came to going another
    way: the smaller of the gap between the last kept and the best dropped
    group score, and between the last chosen and the best unchosen kept
    expert (inf when nothing was dropped)."""
    E = scores.shape[0]
    sel = scores + bias
    groups = sel.reshape(n_group, E // n_group)
    per_group = groups.shape[1]
    gscore = np.array([np.sum(np.sort(g)[::-1][:min(2, per_group)]) for g in groups])
    kept = topk_stable(gscore, topk_group)
    mask = np.full(E, -np.inf)
    for g in kept:
        mask[g * per_group:(g + 1) * per_group] = 0.0
    idx = topk_stable(sel + mask, top_k)
    if margin is not None:
        gaps = [float("inf")]
        if topk_group < n_group:
            order = topk_stable(gscore, n_group)
            gaps.append(gscore[order[topk_group - 1]] - gscore[order[topk_group]])
        rest = np.delete(sel + mask, idx)
        rest = rest[np.isfinite(rest)]
        if rest.size:
            gaps.append(np.min(sel[idx]) - np.max(rest))
        margin.append(float(min(gaps)))
    w = scores[idx].copy()
    if norm_topk:
        w = w / w.sum()
    return idx, w * route_scale


class Model:
    def __init__(self, model_dir, rope_layout="adjacent", attn="naive", bf16_act=False):
        self.bf16_act = bf16_act
        self.cfg = Config(model_dir)
        self.ck = Checkpoint(model_dir)
        self.rope_layout = rope_layout
        self.attn = attn
        self.gate_margins = []      # per MoE call: the smallest selection gap

    def w(self, name):
        return self.ck.get(name)

    def linear(self, x, name):
        return self.bf16_in(x, name + ".weight") @ self.w(name + ".weight").T

    def bf16_in(self, x, name):
        """x as a matmul over weight `name` sees it: rounded to BF16 (via
        float32, nearest even) when --bf16-activations and the weight is BF16,
        as the CPU engine's AVX-512 BF16 kernels do (ops_cpu_bf16.c)."""
        if not self.bf16_act or self.ck.entries[name][0] != "BF16":
            return x
        u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        return u.astype(np.uint32).view(np.float32).astype(np.float64)

    def mlp(self, x, p):
        return self.linear(silu(self.linear(x, p + "gate_proj")) * self.linear(x, p + "up_proj"),
                           p + "down_proj")

    def mla(self, x, l, pos):
        c, p = self.cfg, "model.layers.%d.self_attn." % l
        T, H = x.shape[0], c.H
        if c.q_lora:
            q = self.linear(rmsnorm(self.linear(x, p + "q_a_proj"),
                                    self.w(p + "q_a_layernorm.weight"), c.eps), p + "q_b_proj")
        else:
            q = self.linear(x, p + "q_proj")
        q = q.reshape(T, H, c.nope + c.rope)
        q_nope, q_pe = q[..., :c.nope], rope(q[..., c.nope:], pos, c, self.rope_layout)
        kv = self.linear(x, p + "kv_a_proj_with_mqa")
        lat = rmsnorm(kv[:, :c.kv_lora], self.w(p + "kv_a_layernorm.weight"), c.eps)
        k_pe = rope(kv[:, c.kv_lora:], pos, c, self.rope_layout)      # [T, rope]
        wkv_b = self.w(p + "kv_b_proj.weight").reshape(H, c.nope + c.vdim, c.kv_lora)
        w_uk, w_uv = wkv_b[:, :c.nope, :], wkv_b[:, c.nope:, :]
        mask = np.triu(np.full((T, T), -np.inf), 1)
        pe_scores = np.einsum("shr,tr->hst", q_pe, k_pe)
        if self.attn == "naive":
            k_nope = np.einsum("tc,hdc->thd", lat, w_uk)
            v = np.einsum("tc,hdc->thd", lat, w_uv)
            scores = np.einsum("shd,thd->hst", q_nope, k_nope) + pe_scores
        else:
            q_lat = np.einsum("shd,hdc->shc", q_nope, w_uk)
            scores = np.einsum("shc,tc->hst", q_lat, lat) + pe_scores
        scores = scores * c.softmax_scale() + mask
        scores = scores - scores.max(axis=-1, keepdims=True)
        prob = np.exp(scores)
        prob /= prob.sum(axis=-1, keepdims=True)
        if self.attn == "naive":
            o = np.einsum("hst,thd->shd", prob, v)
        else:
            o = np.einsum("hdc,shc->shd", w_uv, np.einsum("hst,tc->shc", prob, lat))
        return self.linear(o.reshape(T, H * c.vdim), p + "o_proj")

    def moe(self, x, l):
        c, p = self.cfg, "model.layers.%d.mlp." % l
        scores = sigmoid(self.linear(x, p + "gate"))
        bias = (self.w(p + "gate.e_score_correction_bias")
                if self.ck.has(p + "gate.e_score_correction_bias") else np.zeros(c.E))
        y = np.zeros_like(x)
        for t in range(x.shape[0]):
            idx, wts = route(scores[t], bias, c.n_group, c.topk_group, c.top_k, c.norm_topk,
                             c.route_scale, self.gate_margins)
            for e, wt in zip(idx, wts):
                y[t] += wt * self.mlp(x[t:t + 1], "%sexperts.%d." % (p, e))[0]
        if self.ck.has(p + "shared_experts.gate_proj.weight"):
            y += self.mlp(x, p + "shared_experts.")
        return y

    def logprobs(self, tokens):
        c = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size == 0 or tokens.min() < 0 or tokens.max() >= c.vocab:
            raise ValueError("tokens must be in [0, %d)" % c.vocab)
        pos = np.arange(tokens.size, dtype=np.float64)
        h = self.w("model.embed_tokens.weight")[tokens]
        for l in range(c.L):
            p = "model.layers.%d." % l
            h = h + self.mla(rmsnorm(h, self.w(p + "input_layernorm.weight"), c.eps), l, pos)
            x = rmsnorm(h, self.w(p + "post_attention_layernorm.weight"), c.eps)
            h = h + (self.moe(x, l) if c.is_moe(l) else self.mlp(x, p + "mlp."))
        h = rmsnorm(h, self.w("model.norm.weight"), c.eps)
        logits = self.bf16_in(h, "lm_head.weight") @ self.w("lm_head.weight").T
        m = logits.max(axis=-1, keepdims=True)
        return logits - (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", help="write the JSON here instead of stdout")
    ap.add_argument("--rope-layout", choices=["adjacent", "half"], default="adjacent")
    ap.add_argument("--attn", choices=["naive", "absorbed"], default="naive")
    ap.add_argument("--bf16-activations", action="store_true",
                    help="round the input of every matmul over BF16 weights to BF16, "
                         "as the CPU engine does where it runs its AVX-512 BF16 kernels")
    ap.add_argument("--report-margins", action="store_true",
                    help="add min_gate_margin: over all MoE calls, the smallest gap "
                         "between a kept and a dropped group score or a chosen and an "
                         "unchosen expert's biased score (near 0, a float32 engine may "
                         "route differently)")
    args = ap.parse_args(argv)
    need_numpy()
    try:
        tokens = [int(t) for t in args.tokens.split(",") if t.strip() != ""]
    except ValueError:
        ap.error("--tokens must be comma-separated integers")
    try:
        model = Model(args.model_dir, args.rope_layout, args.attn, args.bf16_activations)
        lp = model.logprobs(tokens)
    except (OSError, KeyError, ValueError) as e:
        sys.stderr.write("deepseek_v3_ref: %s\n" % e)
        return 1
    out = {"logprobs": lp.tolist()}
    if args.report_margins:
        out["min_gate_margin"] = min(model.gate_margins) if model.gate_margins else None
    text = json.dumps(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
