/* synth_v3.h: tiny DeepSeek-V3 checkpoints with seeded random weights,
 * written exactly as Hugging Face publishes the real one.
 *
 * What it is for: the V3 forward pass, its loader and the whole serving path
 * are tested on these checkpoints against an independent reference
 * (tests/reference/deepseek_v3_ref.py), and the quickstart's large tier serves
 * one when no real weights are present. The weights are random, so the text
 * is nonsense, but every part of the architecture is exercised: MLA with and
 * without q LoRA, YaRN RoPE, group-limited sigmoid routing with a correction
 * bias, shared experts, the dense first layers, FP8 128x128 block scales
 * (with partial blocks), and the multi-token-prediction layer that the real
 * checkpoint ships and generation ignores.
 *
 * Output in dir (created if missing):
 *   config.json                   DeepseekV3ForCausalLM, the real field names
 *                                 (q_lora_rank null without q LoRA; a
 *                                 quantization_config for FP8)
 *   model-0000k-of-0000n.safetensors and model.safetensors.index.json
 *                                 ({"metadata":{"total_size"},"weight_map"});
 *                                 one model.safetensors when n_shards is 1
 *   tokenizer.json                byte-level BPE with a small vocabulary of its
 *                                 own (256 byte symbols, merges learned by a
 *                                 deterministic BPE pass over an embedded
 *                                 English text) and DeepSeek-V3's pre-tokenizer
 *                                 and added tokens, spelled as in the real file
 *   tokenizer_config.json         add_bos_token true, bos/eos/pad tokens
 *
 * Weights, by tensor (values depend on the seed and the tensor's name only,
 * so the BF16 and FP8 checkpoints of one seed hold the same weights before
 * quantization, and the variants with and without q LoRA share every tensor
 * they both have):
 *   linear weights      uniform in +-g/sqrt(fan_in), where the gain g in
 *                       [0.5, 2) is drawn per 128x128 block, so FP8 block
 *                       scales differ and a kernel that used the wrong
 *                       block's scale would be caught
 *   embed_tokens        uniform in +-1 (a scale of its own so the token
 *                       survives the first residual add)
 *   lm_head, MTP head   uniform in +-4/sqrt(hidden): peaked next-token
 *                       distributions, so top-1 comparisons mean something
 *   mlp.gate (router)   uniform in +-3/sqrt(hidden): sigmoid scores spread
 *                       over about 0.15..0.85, not all near 0.5
 *   norms               1 + uniform +-0.25, so a skipped norm shows
 *   e_score_correction_bias  uniform in +-0.1 (F32): changes which experts
 *                       are chosen often enough that selection and weighting
 *                       differ
 * BF16 checkpoints store every matrix and norm as BF16. FP8 checkpoints store
 * every linear weight of attention, the dense MLPs, the experts and the
 * shared experts as F8_E4M3 with an F32 `<name>_scale_inv` of
 * [ceil(rows/128)][ceil(cols/128)]: per block, scale = max|w| / 448 and
 * q = e4m3(w / scale), round to nearest even (w ~= q * scale_inv). The
 * embeddings, heads, norms, router and eh_proj stay BF16, as in the real file.
 * Within a shard, tensors are ordered as the safetensors library orders them
 * (wider dtype first, then by name), so every tensor is aligned.
 *
 * The same spec and seed always give the same bytes. Single-threaded; writes
 * files; holds no state between calls.
 */
#ifndef CASCADE_NATIVE_SYNTH_V3_H
#define CASCADE_NATIVE_SYNTH_V3_H

#include <stddef.h>
#include <stdint.h>

struct synth_v3_spec {
    int hidden, intermediate, moe_intermediate;
    int n_layers, first_k_dense;        /* layers [0, first_k_dense) are dense */
    int n_heads;
    int q_lora_rank;                    /* 0: no q LoRA (q_proj, config null) */
    int kv_lora_rank, qk_nope_dim, qk_rope_dim, v_head_dim;
    int n_routed_experts, n_shared_experts, experts_per_tok, n_group, topk_group;
    int n_mtp_layers;                   /* num_nextn_predict_layers */
    double routed_scaling_factor;
    double rope_theta, norm_eps;
    int max_pos;
    /* rope_scaling (YaRN) */
    double yarn_factor, yarn_beta_fast, yarn_beta_slow, yarn_mscale, yarn_mscale_all_dim;
    int yarn_original_max_pos;
    int fp8;                            /* 1: F8_E4M3 linears with block scales */
    int n_shards;                       /* 1: model.safetensors; more: index + shards */
    uint64_t seed;
};

/* A preset by name: "tiny" (3 layers, hidden 256, first layer dense with
 * intermediate 512, 16 routed experts of 128 in 4 groups, top-4 of 2 groups,
 * 1 shared expert, 4 heads, q_lora 96, kv_lora 64, nope 32, rope 16, v 32,
 * DeepSeek-V3's YaRN and routing constants; BF16, 2 shards, seed 1; about
 * 13 MB in BF16, 7 MB in FP8; vocabulary 512). 0, or -1 for an unknown name. */
int synth_v3_preset(const char *name, struct synth_v3_spec *out);

/* The vocabulary size every checkpoint gets (the embedded tokenizer's, a
 * multiple of 64; ids past the learned merges are DeepSeek-V3's added tokens
 * and placeholders). */
int synth_v3_vocab_size(void);

/* Write the checkpoint into dir. 0, or -1 with a message in err. */
int synth_v3_write(const struct synth_v3_spec *spec, const char *dir, char *err, size_t errlen);

#endif
