/* ops.h: the backend seam. Every forward pass is written against this table.
 *
 * A backend (in the style of ggml-backend) owns three kinds of memory and
 * the ops that run over them:
 *   - buffers: activations and scratch, made with buf_alloc(); the forward
 *     pass never dereferences their addresses, it only hands them to ops.
 *     Host bytes go in with upload() and come out with download(); ops may
 *     run asynchronously, and synchronize() waits for all of them.
 *   - weights: a model's tensors are mapped once with map_weights(). The CPU
 *     backend uses the mmapped file in place; a GPU backend copies them.
 *     struct native_mat then holds the backend address, its dtype and, for
 *     F8_E4M3, the address of its block scales.
 *   - the KV cache: kv_new() makes a pool of blocks whose layout only the
 *     backend knows. A dense cache holds K and V rows; a latent cache (MLA,
 *     DeepSeek-V3) holds the compressed kv_lora_rank latent and the shared
 *     rope key of each position. The runtime hands out block numbers
 *     (runtime/kvcache.h); the backend stores and reads them.
 *
 * Conventions shared by every op:
 *   - Activations are float32, row-major, one row per token: x[t * dim + i],
 *     in buffers of the same backend.
 *   - struct native_batch lives in host memory (token ids, positions, block
 *     tables). A forward pass calls begin_batch() once per step before any
 *     op that takes the batch, so a device backend copies it over once; every
 *     op of that step then gets the same batch pointer, unchanged.
 *   - A batch mixes tokens of several sequences (prefill chunks and single
 *     decode tokens); tokens of one sequence are contiguous and in position
 *     order.
 *   - Every output element is computed by a fixed sequence of operations that
 *     does not depend on the batch around it or on the thread count, so a
 *     request gets bit-identical logits alone or inside any batch. A backend
 *     picks its kernel for a matrix by the matrix (dtype, shape) and by
 *     itself, never by the batch: the CPU's AVX-512 BF16 kernels, which round
 *     a matmul's input to BF16, run for a BF16 matrix alone and in batches
 *     alike (issue 18 kept this promise rather than trade it for a
 *     tolerance). Logits may differ between backends and kernel sets (the
 *     BF16 kernels against the float ones: up to 2^-8 of sum |w x| per
 *     product, tests/unit/test_ops.c), never between batches of one backend.
 *
 * A backend is driven by one thread at a time; it may use more threads
 * inside an op. tests/backend/ runs every op of every registered backend
 * against the CPU one on the same inputs (ggml's test-backend-ops style).
 */
#ifndef CASCADE_NATIVE_OPS_H
#define CASCADE_NATIVE_OPS_H

#include <stddef.h>
#include <stdint.h>

enum native_dtype {
    NATIVE_F32 = 0,
    NATIVE_F16 = 1,
    NATIVE_BF16 = 2,
    NATIVE_F8_E4M3 = 3,     /* OCP FP8 e4m3fn, with 128x128 block scales */
};

static inline size_t native_dtype_size(enum native_dtype t)
{
    return t == NATIVE_F32 ? 4 : t == NATIVE_F8_E4M3 ? 1 : 2;
}

static inline const char *native_dtype_name(enum native_dtype t)
{
    switch (t) {
    case NATIVE_F32: return "F32";
    case NATIVE_F16: return "F16";
    case NATIVE_BF16: return "BF16";
    case NATIVE_F8_E4M3: return "F8_E4M3";
    }
    return "?";
}

/* FP8 weights are scaled per block of NATIVE_FP8_BLOCK x NATIVE_FP8_BLOCK
 * elements, as DeepSeek-V3's quantization_config says (weight_block_size). */
#define NATIVE_FP8_BLOCK 128

/* A weight matrix: rows x cols, row r starts at element r * cols.
 * For F8_E4M3, scale is [ceil(rows/128)][ceil(cols/128)] float32 and
 *   w[r][c] = e4m3(data[r][c]) * scale[r / 128][c / 128]
 * (the checkpoint's `<name>_scale_inv`). scale is NULL for other dtypes. */
struct native_mat {
    const void *data;
    enum native_dtype dtype;
    int64_t rows, cols;
    const float *scale;
};

/* Rotary embeddings. Pair i of the rotary part (i < dim/2) is rotated by the
 * angle in cos/sin[pos][i]. The pair is either (2i, 2i+1), as in llama2.c,
 * Meta's checkpoints and DeepSeek-V3's published weights, or (i, i + dim/2),
 * the rotate_half layout of Hugging Face LLaMA checkpoints. cos/sin hold
 * [n_pos][dim/2], built by the forward pass (plain, linear-scaled or YaRN,
 * possibly with an amplitude factor folded in), and live in host memory. */
enum native_rope_layout {
    NATIVE_ROPE_ADJACENT = 0,
    NATIVE_ROPE_HALF = 1,
};

struct native_rope {
    enum native_rope_layout layout;
    int dim;                /* rotary dims per head (head_dim for LLaMA, qk_rope_head_dim for V3) */
    int n_pos;
    const float *cos, *sin;
};

/* What a KV cache holds per position per layer. */
enum native_kv_kind {
    NATIVE_KV_DENSE = 0,    /* K and V, kv_dim floats each */
    NATIVE_KV_LATENT = 1,   /* MLA: latent_dim (kv_lora_rank) + rope_dim floats */
};

struct native_kv_desc {
    enum native_kv_kind kind;
    int n_layers;
    int kv_dim;             /* dense: n_kv_heads * head_dim */
    int latent_dim, rope_dim;   /* latent */
};

/* The backend's KV storage; its layout is private to the backend. */
struct native_kv;

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

/* Limits every backend supports: head_dim (dense attention, and MLA's
 * qk_nope + qk_rope and v_head_dim), positions per KV block, MLA's latent. */
#define NATIVE_MAX_HEAD_DIM 256
#define NATIVE_MAX_BLOCK_SIZE 64
#define NATIVE_MAX_LATENT 1024
#define NATIVE_MAX_EXPERTS 512
#define NATIVE_MAX_TOPK 16

/* MLA attention (DeepSeek-V2/V3), for one layer.
 *   q[t][h] = [q_nope (nope_dim) | q_pe (rope_dim)], already roped;
 *   the cache holds, per position p: c[p] (latent_dim, already normed) and
 *   k_pe[p] (rope_dim, already roped, shared by every head);
 *   kv_b is [n_heads * (nope_dim + v_dim)][latent_dim]: head h's rows
 *   h*(nope+v) .. +nope are W_UK[h], the next v_dim rows are W_UV[h].
 * Then
 *   k_nope[h][p] = W_UK[h] c[p],  v[h][p] = W_UV[h] c[p]
 *   s_p = (q_nope . k_nope[h][p] + q_pe . k_pe[p]) * softmax_scale
 *   out[t][h] = sum_p softmax(s)_p v[h][p]          (v_dim floats)
 * NATIVE_MLA_NAIVE decompresses k_nope and v for every attended position;
 * NATIVE_MLA_ABSORB folds W_UK into the query (q_lat = W_UK[h]^T q_nope) and
 * W_UV into the output (out = W_UV[h] sum_p softmax(s)_p c[p]), so it reads
 * only the latent. The two are the same function; they differ in rounding. */
enum native_mla_mode {
    NATIVE_MLA_ABSORB = 0,
    NATIVE_MLA_NAIVE = 1,
};

struct native_mla {
    enum native_mla_mode mode;
    int n_heads, nope_dim, rope_dim, v_dim, latent_dim;
    float softmax_scale;
    struct native_mat kv_b;
};

/* MoE routing, DeepSeek-V3 style ("noaux_tc"): for token t with router
 * logits g[t][e] (n_experts):
 *   s_e = sigmoid(g_e);  b_e = s_e + bias_e   (bias: e_score_correction_bias)
 *   group j's score = sum of the top 2 b_e in it (n_group groups of
 *   n_experts / n_group); keep the topk_group best groups, ties to the lower
 *   index; the top_k experts by b_e among the kept groups, ties to the lower
 *   expert index;
 *   weight_i = s_{e_i} / sum_j s_{e_j} (when norm_topk_prob) * routed_scale.
 * ids[t][i] and weights[t][i], i < top_k, in descending b order. bias may be
 * NULL (all zero). */
struct native_moe_gate {
    int n_experts, top_k, n_group, topk_group;
    int norm_topk_prob;
    float routed_scale;
    const float *bias;      /* [n_experts], backend address, or NULL */
};

/* The routed experts of one MoE layer: expert e is the SwiGLU MLP
 *   y = W_down[e] (silu(W_gate[e] x) * W_up[e] x),  W_gate/W_up [inter][dim]. */
struct native_moe_experts {
    int n_experts, dim, inter;
    const struct native_mat *gate, *up, *down;  /* [n_experts] each (host array) */
};

/* Floats of scratch moe_experts needs for n tokens with top_k experts each. */
static inline size_t native_moe_scratch_floats(int n, int top_k, int dim, int inter)
{
    return (size_t)n * (size_t)top_k * (2 * (size_t)dim + 2 * (size_t)inter + 2);
}

/* Floats of scratch mla_attention needs in p->mode when a sequence attends
 * to up to n_ctx positions: a score per head and position, plus, for the
 * naive path only, the decompressed k_nope | v of every position and head.
 * The absorbed path must not pay for the naive one: at V3's size and
 * context (128 heads, 163840 positions) that term alone is 21 GB. */
static inline size_t native_mla_scratch_floats(int n_ctx, const struct native_mla *p)
{
    size_t per_pos = 1 + (p->mode == NATIVE_MLA_NAIVE ? (size_t)(p->nope_dim + p->v_dim) : 0);
    return (size_t)n_ctx * (size_t)p->n_heads * per_pos +
           (size_t)p->n_heads * (size_t)(p->latent_dim + p->v_dim);
}

struct native_backend;
struct native_buf;

struct native_ops {
    const char *name;

    /* ---- Memory ---- */

    /* A buffer of bytes; NULL when out of memory. Contents start undefined. */
    struct native_buf *(*buf_alloc)(struct native_backend *b, size_t bytes);
    void (*buf_free)(struct native_backend *b, struct native_buf *buf);
    /* The backend address of a buffer's first byte, for op arguments. */
    void *(*buf_addr)(struct native_backend *b, struct native_buf *buf);
    /* Copy n host bytes into / out of buf at offset. download waits for the
     * ops before it. */
    void (*upload)(struct native_backend *b, struct native_buf *buf, size_t offset,
                   const void *src, size_t n);
    void (*download)(struct native_backend *b, void *dst, struct native_buf *buf, size_t offset,
                     size_t n);
    void (*synchronize)(struct native_backend *b);
    /* 1 when buffer addresses are host memory the caller may read once the
     * ops before have finished (the CPU): results need no download. */
    int host_visible;

    /* The backend address for host weight bytes [host, host + n), which stay
     * valid and unchanged while the backend uses them (the model's mmap).
     * The CPU returns host itself; a GPU copies them once. NULL on failure.
     * unmap_weights() releases what map_weights() made. */
    const void *(*map_weights)(struct native_backend *b, const void *host, size_t n);
    void (*unmap_weights)(struct native_backend *b, const void *addr);

    /* A KV cache of n_blocks blocks; NULL and err set when the desc is not
     * supported or memory is short. kv_block_bytes() says what one block
     * costs, so the runtime can size the pool from a byte budget;
     * kv_block_size is positions per block, fixed per backend. */
    struct native_kv *(*kv_new)(struct native_backend *b, const struct native_kv_desc *d,
                                int n_blocks, char *err, size_t errlen);
    void (*kv_free)(struct native_backend *b, struct native_kv *kv);
    size_t (*kv_block_bytes)(struct native_backend *b, const struct native_kv_desc *d);
    int kv_block_size;

    /* ---- Compute ---- */

    /* A new step's batch: the ops until the next begin_batch() get this
     * pointer, with these contents. NULL for a backend that reads the host
     * copy directly (the CPU); callers use native_begin_batch(). */
    void (*begin_batch)(struct native_backend *b, const struct native_batch *batch);

    /* For each weight j < n_w sharing one input (q/k/v, or gate/up), so a
     * backend can run them as one launch:
     *   y[j][t * rows_j + r] (+)= sum_c x[t * cols + c] * w[j][r][c],  t < n
     * accumulate = 1 adds into y (the residual connection). Any dtype; FP8
     * is dequantized inside the product, never into a full copy. */
    void (*matmul)(struct native_backend *b, int n, const float *x, int n_w,
                   const struct native_mat *w, float *const *y, int accumulate);

    /* y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, for n rows of dim, reading
     * row t at x + t * stride and writing it at y + t * stride (stride >=
     * dim; the latent inside MLA's kv_a output is normed in place). y may be x. */
    void (*rmsnorm)(struct native_backend *b, float *y, const float *x, const float *w,
                    int n, int dim, int stride, float eps);

    /* Rotate, in place, the first r->dim floats of each head of each row:
     * head h of token t starts at x + t * row_stride + h * head_stride. */
    void (*rope)(struct native_backend *b, float *x, int n, int n_heads, int head_stride,
                 int row_stride, const int32_t *pos, const struct native_rope *r);

    /* Write token rows into the cache at (seq[t], pos[t]) of layer.
     * Dense: a = K [n][kv_dim], bb = V [n][kv_dim].
     * Latent: a = c, bb = k_pe, rows of a_stride / bb_stride floats holding
     * latent_dim / rope_dim values. For dense, strides are kv_dim. */
    void (*kv_store)(struct native_backend *b, struct native_kv *kv, int layer,
                     const struct native_batch *batch, const float *a, int a_stride,
                     const float *bb, int bb_stride);

    /* Causal grouped-query attention over a dense cache. For token t and
     * head h (kv head g = h / (n_heads / n_kv_heads)):
     *   s_p = q[t][h] . K[g][p] / sqrt(head_dim),   p = 0..pos[t]
     *   out[t][h] = sum_p softmax(s)_p V[g][p] */
    void (*attention)(struct native_backend *b, float *out, const float *q,
                      struct native_kv *kv, int layer, const struct native_batch *batch,
                      int n_heads, int n_kv_heads, int head_dim);

    /* MLA attention over a latent cache (struct native_mla above):
     * out [n][n_heads * v_dim]; scratch holds native_mla_scratch_floats(n_ctx). */
    void (*mla_attention)(struct native_backend *b, float *out, const float *q,
                          struct native_kv *kv, int layer, const struct native_batch *batch,
                          const struct native_mla *p, float *scratch);

    /* h = silu(g) * u elementwise over n values, silu(g) = g / (1 + e^-g). h may be g. */
    void (*swiglu)(struct native_backend *b, float *h, const float *g, const float *u, size_t n);

    /* x[t] = row ids[t] of table, converted to float (ids in host memory). */
    void (*embed)(struct native_backend *b, float *x, const struct native_mat *table,
                  const int32_t *ids, int n);

    /* dst[i] = src[rows[i]] for rows of dim floats (rows in host memory). */
    void (*gather)(struct native_backend *b, float *dst, const float *src, const int32_t *rows,
                   int n, int dim);

    /* MoE routing (struct native_moe_gate): logits [n][n_experts] ->
     * ids [n][top_k], weights [n][top_k], both backend buffers. */
    void (*moe_gate)(struct native_backend *b, int32_t *ids, float *weights, const float *logits,
                     int n, const struct native_moe_gate *g);

    /* y[t] += sum_i weights[t][i] * expert_{ids[t][i]}(x[t]). The tokens
     * routed to one expert run through it together (gathered, one matmul
     * per expert), never one token at a time. scratch holds
     * native_moe_scratch_floats(n, top_k, dim, inter). */
    void (*moe_experts)(struct native_backend *b, float *y, const float *x, int n,
                        const int32_t *ids, const float *weights, int top_k,
                        const struct native_moe_experts *e, float *scratch);

    /* y[t] += sum_i weights[t][i] * rows[t * top_k + i], i < top_k in order,
     * for t < n rows of dim floats: the weighted sum that ends moe_experts,
     * for expert outputs computed elsewhere (expert parallelism: the experts
     * ran on other ranks and their rows came back). It must do the same
     * arithmetic as moe_experts' own sum, so that splitting the experts over
     * ranks changes no bit. NULL where a backend has no expert parallelism
     * yet; the forward pass then refuses ep > 1. */
    void (*moe_combine)(struct native_backend *b, float *y, const float *rows, int n,
                        const float *weights, int top_k, int dim);

    void (*free)(struct native_backend *b);
};

/* Every backend's handle starts with this. */
struct native_backend {
    const struct native_ops *ops;
};

static inline void native_begin_batch(struct native_backend *b, const struct native_batch *batch)
{
    if (b->ops->begin_batch)
        b->ops->begin_batch(b, batch);
}

static inline void native_backend_free(struct native_backend *b)
{
    if (b)
        b->ops->free(b);
}

#endif
