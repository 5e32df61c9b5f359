/* forward.h: the dense LLaMA forward pass over a batch of tokens.
 *
 * One call runs every token of a struct native_batch (prefill chunks and
 * decode tokens of many sequences mixed) through the model as
 * matrix-matrix work, writes their keys and values into the KV cache, and
 * returns the logits of the tokens the batch asks for:
 *
 *   x = embed(token)
 *   per layer:  h = rmsnorm(x);  q,k,v = h Wq, h Wk, h Wv;  rope(q, k)
 *               x += attention(q, cache) Wo
 *               h = rmsnorm(x);  x += (silu(h Wgate) * h Wup) Wdown
 *   logits = rmsnorm(x) Wlm_head
 *
 * It is written only against the op table (ops.h), so any backend runs it.
 * All activation buffers and the RoPE tables are allocated once by
 * native_forward_new(); running a batch allocates nothing.
 *
 * Threads: a struct native_forward belongs to one thread at a time (the
 * scheduler's); the backend may use more threads inside each op.
 */
#ifndef CASCADE_NATIVE_FORWARD_H
#define CASCADE_NATIVE_FORWARD_H

#include "engines/native/model/model.h"
#include "engines/native/backend/ops.h"

#include <stddef.h>

struct native_forward;

/* Buffers for up to max_tokens tokens and max_out logit rows per call, RoPE
 * tables for positions 0..n_ctx-1. The model and backend must outlive it.
 * NULL and a message in err when the model does not fit the backend or
 * memory is short. */
struct native_forward *native_forward_new(const struct native_model *m, struct native_backend *b,
                                          int max_tokens, int max_out, int n_ctx, char *err,
                                          size_t errlen);
void native_forward_free(struct native_forward *f);

/* Run batch (n_tokens <= max_tokens, n_out <= max_out, every pos < n_ctx)
 * with the KV cache kv. Returns the logits, [n_out][vocab], valid until the
 * next call. */
const float *native_forward_run(struct native_forward *f, const struct native_kv *kv,
                                const struct native_batch *batch);

/* The RoPE tables this forward built (for tests, and for backends that keep
 * their own copy). */
const struct native_rope *native_forward_rope(const struct native_forward *f);

/* Bytes of activation buffers and tables this forward allocated. */
size_t native_forward_bytes(const struct native_forward *f);

#endif
