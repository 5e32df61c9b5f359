/* ops.h: the op table the forward pass is written against.
 *
 * The dense forward pass (forward.c) calls only these ops, so a backend is a
 * struct native_ops filled with its own kernels: the CPU one lives in
 * ops_cpu.c; a CUDA one implements the same table later and is tested op by
 * op against the CPU one on the same inputs (ggml's test-backend-ops style).
 *
 * Conventions shared by every op:
 *   - Activations are float32, row-major, one row per token: x[t * dim + i].
 *   - Weights are struct native_mat: row-major rows x cols in F32, F16 or
 *     BF16, read-only (usually straight from an mmapped file).
 *   - A batch mixes tokens of several sequences (prefill chunks and single
 *     decode tokens); struct native_batch says which sequence and position
 *     each token has. Tokens of one sequence are contiguous and in position
 *     order.
 *   - Every output element is computed by a fixed sequence of operations that
 *     does not depend on the batch around it or on the thread count, so a
 *     request gets bit-identical logits alone or inside any batch.
 *
 * Buffers passed to ops belong to the caller (the forward pass allocates them
 * once). A backend is driven by one thread at a time; it may use more threads
 * inside an op.
 */
#ifndef CASCADE_NATIVE_OPS_H
#define CASCADE_NATIVE_OPS_H

#include <stddef.h>
#include <stdint.h>

enum native_dtype {
    NATIVE_F32 = 0,
    NATIVE_F16 = 1,
    NATIVE_BF16 = 2,
};

static inline size_t native_dtype_size(enum native_dtype t)
{
    return t == NATIVE_F32 ? 4 : 2;
}

static inline const char *native_dtype_name(enum native_dtype t)
{
    return t == NATIVE_F32 ? "F32" : t == NATIVE_F16 ? "F16" : "BF16";
}

/* A weight matrix: rows x cols, row r starts at element r * cols. */
struct native_mat {
    const void *data;
    enum native_dtype dtype;
    int64_t rows, cols;
};

/* Rotary embeddings. Pair i of a head (i < head_dim/2) is rotated by the
 * angle pos * inv_freq[i] (inv_freq[i] = theta^(-2i/head_dim), pos already
 * divided by a linear scaling factor). The pair is either (2i, 2i+1), as in
 * llama2.c and Meta's checkpoints, or (i, i + head_dim/2), the rotate_half
 * layout of Hugging Face checkpoints. cos/sin hold [n_pos][head_dim/2]. */
enum native_rope_layout {
    NATIVE_ROPE_ADJACENT = 0,
    NATIVE_ROPE_HALF = 1,
};

struct native_rope {
    enum native_rope_layout layout;
    int head_dim;
    int n_pos;
    const float *cos, *sin;
};

/* The paged KV cache. Storage is a pool of blocks of block_size positions;
 * a sequence owns a list of blocks (its block table). Inside a block, layer l
 * starts at l * layer_stride floats and holds
 *   K transposed: [kv_dim][block_size]   (so scores vectorize over positions)
 *   V:            [block_size][kv_dim]   (so the weighted sum vectorizes over dims)
 * where kv_dim = n_kv_heads * head_dim. */
struct native_kv {
    float *data;
    int block_size;
    int kv_dim;
    int n_layers;
    size_t layer_stride;    /* 2 * block_size * kv_dim */
    size_t block_stride;    /* n_layers * layer_stride */
};

struct native_seq_view {
    const int32_t *blocks;  /* block table: position p lives in blocks[p / block_size] */
    int n_blocks;
};

/* One forward step's tokens. Token t belongs to sequence seq[t] and sits at
 * position pos[t]; it attends to positions 0..pos[t] of that sequence, whose
 * K/V must be in the cache (kv_store runs before attention). out_rows lists
 * the tokens whose logits are wanted, in the order the logits come out. */
struct native_batch {
    int n_tokens;
    const int32_t *token;
    const int32_t *pos;
    const int32_t *seq;
    const struct native_seq_view *seqs;
    int n_seqs;
    const int32_t *out_rows;
    int n_out;
};

/* Limits every backend supports: head_dim, and positions per KV block. */
#define NATIVE_MAX_HEAD_DIM 256
#define NATIVE_MAX_BLOCK_SIZE 64

struct native_backend;

struct native_ops {
    const char *name;

    /* For each weight j < n_w sharing one input (q/k/v, or gate/up), so a
     * backend can run them as one launch:
     *   y[j][t * rows_j + r] (+)= sum_c x[t * cols + c] * w[j][r][c],  t < n
     * accumulate = 1 adds into y (the residual connection). */
    void (*matmul)(struct native_backend *b, int n, const float *x, int n_w,
                   const struct native_mat *w, float *const *y, int accumulate);

    /* y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, for n rows of dim. y may be x. */
    void (*rmsnorm)(struct native_backend *b, float *y, const float *x, const float *w,
                    int n, int dim, float eps);

    /* Rotate x[t] ([n_heads][head_dim]) in place at position pos[t]. */
    void (*rope)(struct native_backend *b, float *x, int n, int n_heads, const int32_t *pos,
                 const struct native_rope *r);

    /* Write k[t], v[t] ([kv_dim] each) into the cache at (seq[t], pos[t]) of layer. */
    void (*kv_store)(struct native_backend *b, const struct native_kv *kv, int layer,
                     const struct native_batch *batch, const float *k, const float *v);

    /* Causal grouped-query attention. For token t and head h (kv head
     * g = h / (n_heads / n_kv_heads)):
     *   s_p = q[t][h] . K[g][p] / sqrt(head_dim),   p = 0..pos[t]
     *   out[t][h] = sum_p softmax(s)_p V[g][p] */
    void (*attention)(struct native_backend *b, float *out, const float *q,
                      const struct native_kv *kv, int layer, const struct native_batch *batch,
                      int n_heads, int n_kv_heads, int head_dim);

    /* h = silu(g) * u elementwise over n values, silu(g) = g / (1 + e^-g). h may be g. */
    void (*swiglu)(struct native_backend *b, float *h, const float *g, const float *u, size_t n);

    /* x[t] = row ids[t] of table, converted to float. */
    void (*embed)(struct native_backend *b, float *x, const struct native_mat *table,
                  const int32_t *ids, int n);

    /* dst[i] = src[rows[i]] for rows of dim floats. */
    void (*gather)(struct native_backend *b, float *dst, const float *src, const int32_t *rows,
                   int n, int dim);

    void (*free)(struct native_backend *b);
};

/* Every backend's handle starts with this. */
struct native_backend {
    const struct native_ops *ops;
};

static inline void native_backend_free(struct native_backend *b)
{
    if (b)
        b->ops->free(b);
}

#endif
