/* fuzz_hf_config: a Hugging Face model folder's config.json
 * (engines/native/model/model.c), from arbitrary bytes through
 * native_model_config_parse(): the shape every buffer of the native engine
 * is sized from.
 *
 * An accepted config must be one the engine can size without overflow:
 * every dimension positive and within the loader's bounds, heads dividing
 * evenly, head_dim even, the numerics finite and positive. A DeepSeek-V3
 * config must also fit the op table (ops.h): MLA dims within
 * NATIVE_MAX_HEAD_DIM and NATIVE_MAX_LATENT, experts within
 * NATIVE_MAX_EXPERTS split evenly into groups, top-k within NATIVE_MAX_TOPK
 * and within the kept groups, YaRN's factors positive. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "engines/native/model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct native_model_config c;
    char err[512];
    if (native_model_config_parse((const char *)data, size, "config.json", &c, err, sizeof err) != 0)
        return 0;
    if (c.dim < 1 || c.hidden_dim < 1 || c.n_layers < 1 || c.n_heads < 1 || c.n_kv_heads < 1 ||
        c.n_heads % c.n_kv_heads != 0 || c.head_dim < 2 || c.head_dim % 2 || c.vocab_size < 1 ||
        c.max_pos < 1 || c.n_eos < 0 || c.n_eos > NATIVE_MAX_EOS)
        abort();
    if (!isfinite(c.norm_eps) || !(c.norm_eps > 0) || !isfinite(c.rope_theta) || !(c.rope_theta > 0) ||
        !isfinite(c.rope_scale) || !(c.rope_scale > 0))
        abort();
    if (c.arch == NATIVE_ARCH_DENSE)
        return 0;
    if (c.arch != NATIVE_ARCH_DEEPSEEK_V3)
        abort();
    const struct native_v3_config *v = &c.v3;
    if (v->q_lora_rank < 0 || v->kv_lora_rank < 1 || v->kv_lora_rank > NATIVE_MAX_LATENT ||
        v->qk_nope_head_dim < 1 || v->qk_rope_head_dim < 2 || v->qk_rope_head_dim % 2 ||
        v->qk_nope_head_dim + v->qk_rope_head_dim > NATIVE_MAX_HEAD_DIM || v->v_head_dim < 1 ||
        v->v_head_dim > NATIVE_MAX_HEAD_DIM || c.head_dim != v->qk_nope_head_dim + v->qk_rope_head_dim)
        abort();
    if (v->n_routed_experts < 1 || v->n_routed_experts > NATIVE_MAX_EXPERTS || v->n_group < 1 ||
        v->n_routed_experts % v->n_group || v->topk_group < 1 || v->topk_group > v->n_group ||
        v->n_experts_per_tok < 1 || v->n_experts_per_tok > NATIVE_MAX_TOPK ||
        v->n_experts_per_tok > v->topk_group * (v->n_routed_experts / v->n_group) ||
        v->moe_intermediate_size < 1 || v->n_shared_experts < 0 || v->first_k_dense_replace < 0 ||
        v->first_k_dense_replace > c.n_layers || v->moe_layer_freq < 1 ||
        !isfinite(v->routed_scaling_factor) || !(v->routed_scaling_factor > 0))
        abort();
    if (c.yarn.factor != 0 && (!(c.yarn.factor >= 1) || !isfinite(c.yarn.factor) ||
                               c.yarn.original_max_pos < 1 || !(c.yarn.beta_fast > 0) ||
                               !(c.yarn.beta_slow > 0) || !isfinite(c.yarn.beta_fast) ||
                               !isfinite(c.yarn.beta_slow) || !isfinite(c.yarn.mscale) ||
                               !isfinite(c.yarn.mscale_all_dim)))
        abort();
    return 0;
}
