/* forward.h: a model's forward pass over a batch of tokens, for any
 * architecture.
 *
 * One call runs every token of a struct native_batch (prefill chunks and
 * decode tokens of many sequences mixed) through the model as
 * matrix-matrix work, writes their keys and values (or MLA latents) into the
 * backend's KV cache, and returns the logits of the tokens the batch asks
 * for. Each architecture has its own pass in its own file, written only
 * against the op table (backend/ops.h), so any backend runs it:
 *   - dense.c        LLaMA: GQA attention, SwiGLU MLP
 *   - deepseek_v3.c  DeepSeek-V3: MLA attention, MoE MLP, YaRN RoPE
 * native_forward_new() picks the one the model's arch names; on a group of
 * ranks (model/parallel.h) it builds one pass per rank, run together.
 *
 * Memory: every activation buffer lives on the backend and is allocated
 * once by native_forward_new(), with the RoPE tables; running a batch
 * allocates nothing. The logits come back to a host buffer the forward owns.
 *
 * Threads: a struct native_forward belongs to one thread at a time (the
 * scheduler's); the backend may use more threads inside each op.
 */
#ifndef CASCADE_NATIVE_FORWARD_H
#define CASCADE_NATIVE_FORWARD_H

#include "engines/native/backend/comm.h"
#include "engines/native/backend/ops.h"
#include "engines/native/model/model.h"

#include <stddef.h>

struct native_forward_opts {
    int max_tokens;             /* tokens per call */
    int max_out;                /* logit rows per call (<= max_tokens) */
    int n_ctx;                  /* positions 0..n_ctx-1 may be used */
    enum native_mla_mode mla;   /* DeepSeek-V3: absorbed (default) or naive attention */
    /* One rank of several (model/parallel.h sets these for each rank's pass;
     * NULL and 0 for a single rank): the rank's comm, and whether attention
     * and the dense MLPs are tensor-parallel (tp > 1) and the routed experts
     * expert-parallel (ep > 1) over comm's world. The model is then the
     * rank's shard (shard.h). */
    struct native_comm *comm;
    int tp, ep;
};

/* Every architecture's pass starts with this (forward_impl.h fills it). */
struct native_forward_impl;
struct native_forward {
    const struct native_forward_impl *impl;
};

/* The KV cache the model needs (the backend sizes and lays it out). */
void native_forward_kv_desc(const struct native_model *m, struct native_kv_desc *d);

/* A forward pass for m on backend b. The model and backend must outlive it.
 * NULL and a message in err when the model does not fit the backend or
 * memory is short. */
struct native_forward *native_forward_new(const struct native_model *m, struct native_backend *b,
                                          const struct native_forward_opts *o, char *err,
                                          size_t errlen);
void native_forward_free(struct native_forward *f);

/* Run batch (n_tokens <= max_tokens, n_out <= max_out, every pos < n_ctx)
 * with the KV cache kv (made by the same backend from native_forward_kv_desc).
 * Returns the logits, [n_out][vocab] in host memory, valid until the next
 * call. */
const float *native_forward_run(struct native_forward *f, struct native_kv *kv,
                                const struct native_batch *batch);

/* Bytes of activation buffers and tables this forward allocated. */
size_t native_forward_bytes(const struct native_forward *f);

#endif
