/* model.h: a dense LLaMA-architecture model, loaded read-only.
 *
 * Two formats load into the same struct native_model:
 *   - llama2.c `.bin`: 7 int32 (dim, hidden_dim, n_layers, n_heads,
 *     n_kv_heads, vocab_size, seq_len; a negative vocab_size means the
 *     classifier is not shared with the embedding), then float32 tensors in
 *     llama2.c's order. RoPE rotates adjacent pairs, eps is 1e-5, theta 10000.
 *   - Hugging Face LlamaForCausalLM: a folder (or its config.json) with
 *     model.safetensors or a sharded set (safetensors.h). F32, F16 and BF16
 *     weights; rope_theta, linear rope_scaling, GQA, tied or untied
 *     embeddings. RoPE uses HF's rotate_half layout (pairs i, i + head_dim/2).
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

struct native_model_config {
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
};

struct native_layer {
    const float *attn_norm, *ffn_norm;          /* [dim] */
    struct native_mat wq, wk, wv, wo;           /* [H*hd, dim], [KV*hd, dim] x2, [dim, H*hd] */
    struct native_mat w_gate, w_up, w_down;     /* [hidden, dim] x2, [dim, hidden] */
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

/* 1 when id is one of the model's end-of-sequence tokens. */
int native_model_is_eos(const struct native_model *m, int id);

#endif
