/* model.h: a model description, loaded read-only: its architecture, shape
 * and weights.
 *
 * Two architectures (enum native_arch), each with its own forward pass in
 * model/: dense LLaMA (forward.c) and DeepSeek-V3 (deepseek_v3.c: MLA
 * attention over a latent cache, sigmoid-gated MoE with group-limited top-k
 * and shared experts, YaRN RoPE, FP8 weights with 128x128 block scales).
 *
 * Formats that load into struct native_model:
 *   - llama2.c `.bin`: 7 int32 (dim, hidden_dim, n_layers, n_heads,
 *     n_kv_heads, vocab_size, seq_len; a negative vocab_size means the
 *     classifier is not shared with the embedding), then float32 tensors in
 *     llama2.c's order. RoPE rotates adjacent pairs, eps is 1e-5, theta 10000.
 *   - Hugging Face LlamaForCausalLM: a folder (or its config.json) with
 *     model.safetensors or a sharded set (safetensors.h). F32, F16 and BF16
 *     weights; rope_theta, linear rope_scaling, GQA, tied or untied
 *     embeddings. RoPE uses HF's rotate_half layout (pairs i, i + head_dim/2).
 *   - Hugging Face DeepseekV3ForCausalLM: config.json, the index and its
 *     shards with the published tensor names, BF16 or F8_E4M3 weights with
 *     `<name>_scale_inv`; the multi-token-prediction layer the checkpoint
 *     ships (num_nextn_predict_layers) is skipped. RoPE rotates adjacent
 *     pairs, as DeepSeek's published weights are laid out.
 * The weights stay in the mmapped files; only the norm vectors are copied
 * out, as float32. A truncated or corrupt file, an unsupported dtype, a wrong
 * shape or a missing tensor is an error that names the file and the tensor.
 *
 * Fields are public because the forward pass reads them; treat them as
 * read-only. A loaded model is immutable, so any thread may read it.
 */
#ifndef CASCADE_NATIVE_MODEL_H
#define CASCADE_NATIVE_MODEL_H

#include "engines/native/backend/ops.h"

#include <stddef.h>

enum native_model_format {
    NATIVE_MODEL_LLAMA2C = 0,
    NATIVE_MODEL_HF = 1,
};

#define NATIVE_MAX_EOS 4

enum native_arch {
    NATIVE_ARCH_DENSE = 0,          /* LLaMA: GQA attention, SwiGLU MLP */
    NATIVE_ARCH_DEEPSEEK_V3 = 1,    /* MLA attention, MoE MLP (DeepSeek-V2/V3) */
};

static inline const char *native_arch_name(enum native_arch a)
{
    return a == NATIVE_ARCH_DEEPSEEK_V3 ? "deepseek_v3" : "dense";
}

/* YaRN context extension (rope_scaling.type "yarn"); factor 0 when absent. */
struct native_yarn {
    float factor;
    int original_max_pos;
    float beta_fast, beta_slow;
    float mscale, mscale_all_dim;
};

/* DeepSeek-V3's extra shape; zero for dense models. */
struct native_v3_config {
    int q_lora_rank;            /* 0: q_proj directly (q_lora_rank null) */
    int kv_lora_rank;
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    int n_routed_experts, n_shared_experts, n_experts_per_tok;
    int n_group, topk_group;
    int moe_intermediate_size;
    int first_k_dense_replace;  /* layers before this one are dense */
    int moe_layer_freq;
    int norm_topk_prob;
    float routed_scaling_factor;
    int n_nextn_layers;         /* MTP layers in the checkpoint (not run) */
};

struct native_model_config {
    enum native_arch arch;
    int dim;                /* hidden size */
    int hidden_dim;         /* FFN intermediate size */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int vocab_size;
    int max_pos;            /* context the model was trained for */
    float norm_eps;
    float rope_theta;
    float rope_scale;       /* linear scaling: positions are divided by this (1 = none) */
    enum native_rope_layout rope_layout;
    int bos_id;             /* -1 when unknown */
    int eos_ids[NATIVE_MAX_EOS];
    int n_eos;
    int tied_embeddings;
    struct native_yarn yarn;
    struct native_v3_config v3;
};

/* MLA weights of one DeepSeek-V3 layer (HF names in comments). */
struct native_mla_weights {
    struct native_mat q_a;          /* q_a_proj [q_lora, dim] (q_lora_rank > 0) */
    const float *q_a_norm;          /* q_a_layernorm [q_lora] */
    struct native_mat q_b;          /* q_b_proj [H*(nope+rope), q_lora], or q_proj [.., dim] */
    struct native_mat kv_a;         /* kv_a_proj_with_mqa [kv_lora + rope, dim] */
    const float *kv_a_norm;         /* kv_a_layernorm [kv_lora] */
    struct native_mat kv_b;         /* kv_b_proj [H*(nope+v), kv_lora] */
    struct native_mat o;            /* o_proj [dim, H*v] */
};

/* The MoE MLP of one DeepSeek-V3 layer. */
struct native_moe_weights {
    struct native_mat router;       /* mlp.gate.weight [n_experts, dim] */
    const float *bias;              /* mlp.gate.e_score_correction_bias [n_experts], or NULL */
    struct native_mat *gate, *up, *down;    /* mlp.experts.E.*: [n_experts] each */
    struct native_mat sh_gate, sh_up, sh_down;  /* mlp.shared_experts.* (rows 0 when none) */
};

struct native_layer {
    const float *attn_norm, *ffn_norm;          /* [dim] */
    /* dense attention */
    struct native_mat wq, wk, wv, wo;           /* [H*hd, dim], [KV*hd, dim] x2, [dim, H*hd] */
    /* dense MLP: LLaMA layers, and V3's first first_k_dense_replace layers */
    struct native_mat w_gate, w_up, w_down;     /* [hidden, dim] x2, [dim, hidden] */
    /* DeepSeek-V3 only */
    struct native_mla_weights mla;
    struct native_moe_weights *moe;             /* NULL for a dense-MLP layer */
};

struct native_model {
    struct native_model_config cfg;
    enum native_model_format format;
    char *path;             /* what was loaded: the .bin, or the HF folder */
    char *dir;              /* the folder it lives in (tokenizer files are looked up here) */
    struct native_mat embed;        /* [vocab, dim] */
    struct native_mat lm_head;      /* [vocab, dim]; the embedding when tied */
    const float *final_norm;        /* [dim] */
    struct native_layer *layers;
    size_t weight_bytes;            /* bytes of all matrices, for reports */
    int64_t n_params;               /* parameters of the layers generation runs */
    int64_t n_active_params;        /* of those, what one token reads (MoE: top-k experts) */

    /* private to model.c */
    struct safetensors *st_;
    void *map_;
    size_t map_size_;
    float *owned_;
};

/* Load from path: a llama2.c .bin file, or an HF folder / its config.json /
 * a .safetensors file inside it. 0 and *out set, or -1 and a message in err. */
int native_model_load(const char *path, struct native_model **out, char *err, size_t errlen);
void native_model_free(struct native_model *m);

/* The shape and numerics of a Hugging Face config.json from its text[0..len)
 * (the fuzz target uses it), with every check native_model_load() applies to
 * it; name stands for the file in messages. 0, or -1 with err set. */
int native_model_config_parse(const char *text, size_t len, const char *name,
                              struct native_model_config *c, char *err, size_t errlen);

/* A llama2.c .bin already in memory, buf[0..len) (the fuzz target uses it):
 * the same checks as native_model_load(). buf is borrowed, as the mapping
 * would be: the weights point into it, so it must outlive the model. name
 * stands for the file in messages. */
int native_model_load_llama2c_buffer(const void *buf, size_t len, const char *name,
                                     struct native_model **out, char *err, size_t errlen);

/* KV cache bytes one position costs in float32, as the backend stores it:
 * dense 2 * n_kv_heads * head_dim * layers; V3 (kv_lora_rank +
 * qk_rope_head_dim) * layers. */
size_t native_model_kv_bytes_per_token(const struct native_model_config *c);

/* 1 when id is one of the model's end-of-sequence tokens. */
int native_model_is_eos(const struct native_model *m, int id);

#endif
