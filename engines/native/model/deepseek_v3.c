/* deepseek_v3.c: the DeepSeek-V3 forward pass (DeepseekV3ForCausalLM),
 * written once against the op table; see forward.h for the contract.
 *
 * Per layer, for the T tokens of a batch (x is the residual stream, [T][dim]):
 *
 *   h    = rmsnorm(x, input_layernorm)
 *   q    = q_lora ? q_b(rmsnorm(q_a(h), q_a_layernorm)) : q_proj(h)
 *                                                   [T][H][nope | rope]
 *   kva  = kv_a_proj_with_mqa(h)                    [T][kv_lora | rope]
 *   c    = rmsnorm(kva[:kv_lora], kv_a_layernorm)   (in place; the latent)
 *   q_pe, k_pe = rope(YaRN) of the rope parts; k_pe is one head shared by all
 *   cache[pos] = (c, k_pe)
 *   x   += o_proj(MLA(q, cache))                    (ops.h, struct native_mla)
 *   h    = rmsnorm(x, post_attention_layernorm)
 *   x   += layer < first_k_dense_replace (or off moe_layer_freq)
 *            ? down(silu(gate(h)) * up(h))
 *            : sum_i w_i expert_{e_i}(h) + shared(h)
 *                 (e_i, w_i from the sigmoid group-limited router)
 *
 * then the final norm and the LM head on the rows whose logits are wanted.
 *
 * Positions: the rotary dims of DeepSeek's published weights are
 * interleaved pairs (2i, 2i+1), NATIVE_ROPE_ADJACENT. YaRN stretches the
 * low frequencies (native_rope_tables); as in DeepSeek's and Hugging Face's
 * code the cos/sin carry the amplitude mscale(mscale) / mscale(mscale_all_dim)
 * and the softmax scale is (nope + rope)^-1/2 * mscale(mscale_all_dim)^2.
 *
 * Several ranks (model/parallel.h): the model is then the rank's shard. With
 * tensor parallelism each rank has its heads (q_b, kv_b rows; the latent is
 * whole, so each rank keeps the whole latent cache) and its part of the dense
 * MLP and the shared experts; o_proj, down and the shared down give partial
 * sums that tp_sum() adds up over the ranks. With expert parallelism each
 * rank holds a range of the routed experts and v3_ep_moe() sends the tokens'
 * rows to them and back. A single rank runs none of this.
 *
 * Memory: every activation buffer is a backend buffer sized in
 * native_forward_v3_new() for max_tokens rows (the logits for max_out),
 * with the scratch the MLA and MoE ops ask for; the weights are mapped into
 * the backend once there. A call allocates nothing.
 */
#include "engines/native/model/forward_impl.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One layer's weights at their backend addresses. */
struct v3_layer {
    const float *attn_norm, *ffn_norm;
    struct native_mla_weights mla;
    /* dense MLP, or the MoE with its expert arrays (host arrays of backend
     * matrices, as struct native_moe_experts takes them) */
    struct native_mat w_gate, w_up, w_down;
    int moe;
    struct native_mat router, sh_gate, sh_up, sh_down;
    const float *bias;
    struct native_mat *gate, *up, *down;
};

#define V3_MAX_BUFS 24

struct v3_forward {
    struct native_forward base;     /* first: forward.c's handle */
    const struct native_model *m;
    struct native_backend *b;
    struct native_forward_opts o;

    struct v3_layer *layers;
    struct native_mat embed, lm_head;
    const float *final_norm;
    struct native_mat *expert_mats;     /* storage behind v3_layer.gate/up/down */
    const void **maps;                  /* what map_weights() returned, for unmap */
    size_t n_maps, cap_maps;

    struct native_rope rope;
    float *rope_cos, *rope_sin;         /* host [n_ctx][rope/2] */
    float softmax_scale;

    struct native_buf *bufs[V3_MAX_BUFS];
    int n_bufs;
    float *x;           /* [T][dim] residual stream */
    float *h;           /* [T][dim] normed input of a block */
    float *qa;          /* [T][q_lora] (q_lora_rank > 0) */
    float *q;           /* [T][H * (nope + rope)] */
    float *kva;         /* [T][kv_lora + rope]: latent, then the rope key */
    float *att;         /* [T][H * v] attention output */
    float *gate, *up;   /* [T][max(intermediate, shared experts' width)] */
    float *router;      /* [T][n_experts] router logits */
    int32_t *ids;       /* [T][top_k] chosen experts */
    float *weights;     /* [T][top_k] their weights */
    float *moe_scratch, *mla_scratch;
    float *xo;          /* [max_out][dim] rows whose logits are wanted */
    float *logits_dev;  /* [max_out][vocab] */
    struct native_buf *logits_buf;
    float *logits;      /* host copy, returned to the caller (NULL when host_visible) */
    size_t bytes;

    /* Several ranks (model/parallel.h; the model is this rank's shard).
     * Tensor parallelism: o_proj, the dense MLP's down and the shared
     * experts' down give partial sums; rank 0 adds its part into x, the
     * others write theirs over x, and tp_sum() adds them up in rank order. */
    struct native_comm *comm;       /* NULL: one rank */
    int tp, ep;                     /* > 1: on */
    int acc;                        /* accumulate flag of those projections */
    int n_local;                    /* routed experts held here: [rank * n_local, +n_local) */
    /* Expert parallelism (v3_ep_moe): backend rows of (token, expert) pairs
     * sent, received and computed, at most max_tokens * top_k of each. */
    float *ep_send, *ep_recv, *ep_out, *ep_ones;
    int32_t *ep_send_ids, *ep_recv_ids;
    struct native_buf *ids_buf, *ep_out_buf, *ep_send_ids_buf;
    int32_t *ep_host;               /* host: ids, rows, slot, local ids, each [T * top_k] */
    float *ep_zeros;                /* host: zeros, EP_ZERO_FLOATS, to clear ep_out */
};

#define EP_ZERO_FLOATS 16384

static const struct native_forward_impl v3_impl;

/* ---- construction ---- */

/* A backend buffer of n elements of size esize, counted in f->bytes. */
static void *v3_alloc(struct v3_forward *f, size_t n, size_t esize, struct native_buf **keep)
{
    const struct native_ops *ops = f->b->ops;
    assert(f->n_bufs < V3_MAX_BUFS);
    struct native_buf *buf = ops->buf_alloc(f->b, n * esize);
    if (!buf)
        return NULL;
    f->bufs[f->n_bufs++] = buf;
    f->bytes += n * esize;
    if (keep)
        *keep = buf;
    return ops->buf_addr(f->b, buf);
}

/* The backend address of host weight bytes; remembered for unmap. */
static const void *v3_map(struct v3_forward *f, const void *host, size_t n)
{
    if (f->n_maps == f->cap_maps) {
        size_t cap = f->cap_maps ? 2 * f->cap_maps : 256;
        const void **nm = realloc(f->maps, cap * sizeof(*nm));
        if (!nm)
            return NULL;
        f->maps = nm;
        f->cap_maps = cap;
    }
    const void *addr = f->b->ops->map_weights(f->b, host, n);
    if (addr)
        f->maps[f->n_maps++] = addr;
    return addr;
}

/* dst = src with its data (and FP8 block scales) at backend addresses. A
 * matrix the model does not have (rows 0) stays empty. 0 or -1. */
static int v3_map_mat(struct v3_forward *f, const struct native_mat *src, struct native_mat *dst)
{
    *dst = *src;
    if (src->rows == 0 || !src->data)
        return 0;
    size_t bytes = (size_t)src->rows * (size_t)src->cols * native_dtype_size(src->dtype);
    if (!(dst->data = v3_map(f, src->data, bytes)))
        return -1;
    if (src->scale) {
        size_t nb = (size_t)((src->rows + NATIVE_FP8_BLOCK - 1) / NATIVE_FP8_BLOCK) *
                    (size_t)((src->cols + NATIVE_FP8_BLOCK - 1) / NATIVE_FP8_BLOCK);
        if (!(dst->scale = v3_map(f, src->scale, nb * sizeof(float))))
            return -1;
    }
    return 0;
}

static int v3_map_vec(struct v3_forward *f, const float *src, int64_t n, const float **dst)
{
    *dst = NULL;
    if (!src)
        return 0;
    *dst = v3_map(f, src, (size_t)n * sizeof(float));
    return *dst ? 0 : -1;
}

/* Every weight of the model into the backend (the CPU uses the mapping in
 * place; a GPU copies each once). */
static int v3_map_weights(struct v3_forward *f)
{
    const struct native_model *m = f->m;
    const struct native_model_config *c = &m->cfg;
    const struct native_v3_config *v = &c->v3;
    const int E = v->n_routed_experts;

    if (v3_map_mat(f, &m->embed, &f->embed) || v3_map_vec(f, m->final_norm, c->dim, &f->final_norm))
        return -1;
    if (c->tied_embeddings)
        f->lm_head = f->embed;
    else if (v3_map_mat(f, &m->lm_head, &f->lm_head))
        return -1;
    for (int l = 0; l < c->n_layers; l++) {
        const struct native_layer *src = &m->layers[l];
        struct v3_layer *dst = &f->layers[l];
        const struct native_mla_weights *a = &src->mla;
        if (v3_map_vec(f, src->attn_norm, c->dim, &dst->attn_norm) ||
            v3_map_vec(f, src->ffn_norm, c->dim, &dst->ffn_norm) ||
            v3_map_mat(f, &a->q_a, &dst->mla.q_a) ||
            v3_map_vec(f, a->q_a_norm, v->q_lora_rank, &dst->mla.q_a_norm) ||
            v3_map_mat(f, &a->q_b, &dst->mla.q_b) || v3_map_mat(f, &a->kv_a, &dst->mla.kv_a) ||
            v3_map_vec(f, a->kv_a_norm, v->kv_lora_rank, &dst->mla.kv_a_norm) ||
            v3_map_mat(f, &a->kv_b, &dst->mla.kv_b) || v3_map_mat(f, &a->o, &dst->mla.o))
            return -1;
        const struct native_moe_weights *w = src->moe;
        if (!w) {
            if (v3_map_mat(f, &src->w_gate, &dst->w_gate) ||
                v3_map_mat(f, &src->w_up, &dst->w_up) || v3_map_mat(f, &src->w_down, &dst->w_down))
                return -1;
            continue;
        }
        dst->moe = 1;
        dst->gate = f->expert_mats + (size_t)l * 3 * (size_t)E;
        dst->up = dst->gate + E;
        dst->down = dst->up + E;
        if (v3_map_mat(f, &w->router, &dst->router) || v3_map_vec(f, w->bias, E, &dst->bias) ||
            v3_map_mat(f, &w->sh_gate, &dst->sh_gate) || v3_map_mat(f, &w->sh_up, &dst->sh_up) ||
            v3_map_mat(f, &w->sh_down, &dst->sh_down))
            return -1;
        for (int e = 0; e < f->n_local; e++)
            if (v3_map_mat(f, &w->gate[e], &dst->gate[e]) || v3_map_mat(f, &w->up[e], &dst->up[e]) ||
                v3_map_mat(f, &w->down[e], &dst->down[e]))
                return -1;
    }
    return 0;
}

static void v3_free(struct native_forward *base)
{
    struct v3_forward *f = (struct v3_forward *)base;
    if (!f)
        return;
    for (int i = 0; i < f->n_bufs; i++)
        f->b->ops->buf_free(f->b, f->bufs[i]);
    for (size_t i = 0; i < f->n_maps; i++)
        f->b->ops->unmap_weights(f->b, f->maps[i]);
    free(f->maps);
    free(f->expert_mats);
    free(f->layers);
    free(f->rope_cos);
    free(f->rope_sin);
    free(f->logits);
    free(f->ep_host);
    free(f->ep_zeros);
    free(f);
}

static size_t v3_bytes(const struct native_forward *base)
{
    return ((const struct v3_forward *)base)->bytes;
}

/* The MLA op's description of layer l (the softmax scale carries YaRN's
 * attention factor). */
static struct native_mla v3_mla(const struct v3_forward *f, int l)
{
    const struct native_v3_config *v = &f->m->cfg.v3;
    return (struct native_mla){
        .mode = f->o.mla,
        .n_heads = f->m->cfg.n_heads,
        .nope_dim = v->qk_nope_head_dim,
        .rope_dim = v->qk_rope_head_dim,
        .v_dim = v->v_head_dim,
        .latent_dim = v->kv_lora_rank,
        .softmax_scale = f->softmax_scale,
        .kv_b = f->layers[l].mla.kv_b,
    };
}

struct native_forward *native_forward_v3_new(const struct native_model *m, struct native_backend *b,
                                             const struct native_forward_opts *o, char *err,
                                             size_t errlen)
{
    const struct native_model_config *c = &m->cfg;
    const struct native_v3_config *v = &c->v3;
    struct v3_forward *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    f->base.impl = &v3_impl;
    f->m = m;
    f->b = b;
    f->o = *o;
    f->comm = o->comm && (o->tp > 1 || o->ep > 1) ? o->comm : NULL;
    f->tp = f->comm && o->tp > 1 ? o->tp : 1;
    f->ep = f->comm && o->ep > 1 ? o->ep : 1;
    f->acc = f->tp == 1 || f->comm->rank == 0;
    f->n_local = v->n_routed_experts / f->ep;
    if (f->ep > 1 && !b->ops->moe_combine) {
        snprintf(err, errlen, "the %s backend has no moe_combine, so no expert parallelism",
                 b->ops->name);
        goto fail;
    }

    const size_t T = (size_t)o->max_tokens, D = (size_t)c->dim, H = (size_t)c->n_heads;
    const size_t QK = (size_t)(v->qk_nope_head_dim + v->qk_rope_head_dim);
    const size_t KVA = (size_t)(v->kv_lora_rank + v->qk_rope_head_dim);
    const size_t E = (size_t)v->n_routed_experts, K = (size_t)v->n_experts_per_tok;
    const size_t SH = (size_t)v->n_shared_experts * (size_t)v->moe_intermediate_size;
    const size_t FF = (size_t)c->hidden_dim > SH ? (size_t)c->hidden_dim : SH;
    const size_t half = (size_t)v->qk_rope_head_dim / 2;

    f->layers = calloc((size_t)c->n_layers, sizeof(*f->layers));
    f->expert_mats = calloc((size_t)c->n_layers * 3 * E, sizeof(*f->expert_mats));
    f->rope_cos = malloc(sizeof(float) * (size_t)o->n_ctx * half);
    f->rope_sin = malloc(sizeof(float) * (size_t)o->n_ctx * half);
    /* A host copy of the logits only where the backend's buffers are not
     * host memory. */
    const size_t host_logits = b->ops->host_visible ? 0 : (size_t)o->max_out * (size_t)c->vocab_size;
    f->logits = host_logits ? malloc(sizeof(float) * host_logits) : NULL;
    if (!f->layers || !f->expert_mats || !f->rope_cos || !f->rope_sin ||
        (host_logits && !f->logits)) {
        snprintf(err, errlen, "out of memory for the DeepSeek-V3 forward pass");
        goto fail;
    }
    f->bytes += sizeof(float) * ((size_t)o->n_ctx * half * 2 + host_logits);
    if (v3_map_weights(f) != 0) {
        snprintf(err, errlen, "%s: the %s backend could not map the weights", m->path, b->ops->name);
        goto fail;
    }

    /* YaRN: cos/sin scaled by mscale(mscale) / mscale(mscale_all_dim), and
     * the logits by mscale(mscale_all_dim)^2 (1 and 1 without YaRN). */
    const struct native_yarn *y = &c->yarn;
    double amp = native_yarn_mscale(y->factor, y->mscale) / native_yarn_mscale(y->factor, y->mscale_all_dim);
    double ms = native_yarn_mscale(y->factor, y->mscale_all_dim);
    f->softmax_scale = (float)(1.0 / sqrt((double)QK) * ms * ms);
    native_rope_tables(f->rope_cos, f->rope_sin, o->n_ctx, v->qk_rope_head_dim, c->rope_theta, 1.0,
                       y, amp);
    f->rope = (struct native_rope){NATIVE_ROPE_ADJACENT, v->qk_rope_head_dim, o->n_ctx, f->rope_cos,
                                   f->rope_sin};

    struct native_mla mla = v3_mla(f, 0);
    f->x = v3_alloc(f, T * D, sizeof(float), NULL);
    f->h = v3_alloc(f, T * D, sizeof(float), NULL);
    f->qa = v->q_lora_rank > 0 ? v3_alloc(f, T * (size_t)v->q_lora_rank, sizeof(float), NULL) : NULL;
    f->q = v3_alloc(f, T * H * QK, sizeof(float), NULL);
    f->kva = v3_alloc(f, T * KVA, sizeof(float), NULL);
    f->att = v3_alloc(f, T * H * (size_t)v->v_head_dim, sizeof(float), NULL);
    f->gate = v3_alloc(f, T * FF, sizeof(float), NULL);
    f->up = v3_alloc(f, T * FF, sizeof(float), NULL);
    f->router = v3_alloc(f, T * E, sizeof(float), NULL);
    f->ids = v3_alloc(f, T * K, sizeof(int32_t), &f->ids_buf);
    f->weights = v3_alloc(f, T * K, sizeof(float), NULL);
    f->moe_scratch = v3_alloc(f, native_moe_scratch_floats(o->max_tokens, (int)K, c->dim,
                                                           v->moe_intermediate_size),
                              sizeof(float), NULL);
    f->mla_scratch = v3_alloc(f, native_mla_scratch_floats(o->n_ctx, &mla), sizeof(float), NULL);
    f->xo = v3_alloc(f, (size_t)o->max_out * D, sizeof(float), NULL);
    f->logits_dev = v3_alloc(f, (size_t)o->max_out * (size_t)c->vocab_size, sizeof(float),
                             &f->logits_buf);
    if (f->ep > 1) {
        const size_t P = T * K;
        f->ep_send = v3_alloc(f, P * D, sizeof(float), NULL);
        f->ep_recv = v3_alloc(f, P * D, sizeof(float), NULL);
        f->ep_out = v3_alloc(f, P * D, sizeof(float), &f->ep_out_buf);
        struct native_buf *ones_buf = NULL;
        f->ep_ones = v3_alloc(f, P, sizeof(float), &ones_buf);
        f->ep_send_ids = v3_alloc(f, P, sizeof(int32_t), &f->ep_send_ids_buf);
        f->ep_recv_ids = v3_alloc(f, P, sizeof(int32_t), NULL);
        f->ep_host = malloc(sizeof(int32_t) * 4 * P);
        f->ep_zeros = calloc(EP_ZERO_FLOATS, sizeof(float));
        if (!f->ep_send || !f->ep_recv || !f->ep_out || !f->ep_ones || !f->ep_send_ids ||
            !f->ep_recv_ids || !f->ep_host || !f->ep_zeros) {
            snprintf(err, errlen, "out of memory for the expert-parallel buffers");
            goto fail;
        }
        /* The owner runs each received row through one expert with weight 1:
         * 0 + 1 * out is out exactly, and the weighted sum is left to the
         * token's own rank. */
        for (size_t i = 0; i < P; i++)
            f->ep_host[i] = 0x3f800000;     /* 1.0f */
        b->ops->upload(b, ones_buf, 0, f->ep_host, sizeof(float) * P);
    }
    if (!f->x || !f->h || (v->q_lora_rank > 0 && !f->qa) || !f->q || !f->kva || !f->att ||
        !f->gate || !f->up || !f->router || !f->ids || !f->weights || !f->moe_scratch ||
        !f->mla_scratch || !f->xo || !f->logits_dev) {
        snprintf(err, errlen, "out of memory for the DeepSeek-V3 forward pass buffers (%zu bytes)",
                 f->bytes);
        goto fail;
    }
    return &f->base;

fail:
    v3_free(&f->base);
    return NULL;
}

/* ---- the pass ---- */

/* Sum the ranks' partial residual streams (tensor parallelism). A failed
 * collective leaves the ranks out of step, which nothing here can repair. */
static void tp_sum(struct v3_forward *f, int n)
{
    if (native_comm_all_reduce_sum(f->comm, f->b, f->x, (size_t)n * (size_t)f->m->cfg.dim) != 0) {
        fprintf(stderr, "deepseek_v3: all_reduce_sum failed on rank %d; stopping\n",
                f->comm->rank);
        abort();
    }
}

static void ep_check(struct v3_forward *f, int rc)
{
    if (rc != 0) {
        fprintf(stderr, "deepseek_v3: an expert-parallel exchange failed on rank %d; stopping\n",
                f->comm->rank);
        abort();
    }
}

/* The routed experts, expert-parallel: x[t] += sum_i w_i expert_{e_i}(h[t])
 * for every token t of the batch, the experts spread over the ranks.
 *   1. Each rank takes its share of the batch, tokens [t0, t1) (its "home"
 *      tokens; a share may be empty), and routes them.
 *   2. Dispatch: each (token, expert) pair's input row goes to the rank that
 *      holds the expert, grouped by that rank, pairs in routing order; the
 *      ranks first swap how many rows each sends each other, then the rows
 *      and their experts' local ids.
 *   3. Each rank runs what it got through its experts, grouped per expert
 *      (moe_experts with one expert per row and weight 1).
 *   4. Combine: the outputs go back the way they came; the home rank puts
 *      them in (token, i) order and adds them into x[t] with the routing
 *      weights in i order (moe_combine: the same sum moe_experts does, so a
 *      token's result has the bits it has on one rank).
 *   5. Every rank's x gets every home rank's rows (an all-gather), so the
 *      next layer starts from the same residual stream everywhere. */
static void v3_ep_moe(struct v3_forward *f, const struct v3_layer *L,
                      const struct native_moe_gate *g, const struct native_moe_experts *e, int n)
{
    const struct native_ops *ops = f->b->ops;
    struct native_backend *b = f->b;
    const int W = f->comm->world, r = f->comm->rank, K = g->top_k, D = f->m->cfg.dim;
    const int t0 = (int)((int64_t)n * r / W), t1 = (int)((int64_t)n * (r + 1) / W);
    const int nh = t1 - t0, P = nh * K;
    const size_t row = sizeof(float) * (size_t)D, cap = (size_t)f->o.max_tokens * (size_t)K;
    int32_t sc[NATIVE_MAX_WORLD], sd[NATIVE_MAX_WORLD], rc[NATIVE_MAX_WORLD], rd[NATIVE_MAX_WORLD];
    int32_t fill[NATIVE_MAX_WORLD];
    int32_t *ids_host = f->ep_host, *rows = ids_host + cap, *slot = rows + cap, *lid = slot + cap;

    /* 1. Route the home tokens; their expert ids are needed on the host to
     * sort the pairs by destination. */
    const int32_t *ids = f->ids;
    if (nh > 0) {
        ops->matmul(b, nh, f->h + (size_t)t0 * D, 1, &L->router, &f->router, 0);
        ops->moe_gate(b, f->ids, f->weights, f->router, nh, g);
    }
    if (!ops->host_visible) {
        if (P > 0)
            ops->download(b, ids_host, f->ids_buf, 0, sizeof(int32_t) * (size_t)P);
        ids = ids_host;
    } else {
        ops->synchronize(b);
    }

    /* 2. Dispatch: a stable counting sort of the pairs by owner. */
    memset(sc, 0, sizeof(sc));
    for (int q = 0; q < P; q++)
        sc[ids[q] / f->n_local]++;
    for (int p = 0, off = 0; p < W; p++) {
        sd[p] = fill[p] = off;
        off += sc[p];
    }
    for (int q = 0; q < P; q++) {
        const int p = ids[q] / f->n_local, s = fill[p]++;
        slot[q] = s;
        rows[s] = t0 + q / K;
        lid[s] = ids[q] - p * f->n_local;
    }
    if (P > 0) {
        ops->gather(b, f->ep_send, f->h, rows, P, D);
        ops->upload(b, f->ep_send_ids_buf, 0, lid, sizeof(int32_t) * (size_t)P);
    }
    ep_check(f, native_comm_exchange_counts(f->comm, b, sc, rc));
    int nr = 0;
    for (int p = 0; p < W; p++) {
        rd[p] = nr;
        nr += rc[p];
    }
    assert((size_t)nr <= cap);
    ep_check(f, native_comm_all_to_all(f->comm, b, f->ep_send, sc, sd, f->ep_recv, rc, rd, row));
    ep_check(f, native_comm_all_to_all(f->comm, b, f->ep_send_ids, sc, sd, f->ep_recv_ids, rc, rd,
                                       sizeof(int32_t)));

    /* 3. This rank's experts over the rows it got, into cleared rows. */
    if (nr > 0) {
        const size_t total = (size_t)nr * (size_t)D;
        for (size_t off = 0; off < total; off += EP_ZERO_FLOATS) {
            size_t m = total - off < EP_ZERO_FLOATS ? total - off : EP_ZERO_FLOATS;
            ops->upload(b, f->ep_out_buf, off * sizeof(float), f->ep_zeros, m * sizeof(float));
        }
        ops->moe_experts(b, f->ep_out, f->ep_recv, nr, f->ep_recv_ids, f->ep_ones, 1, e,
                         f->moe_scratch);
    }

    /* 4. Combine: the outputs back to their home ranks, into ep_recv (free
     * again), then in (token, i) order into ep_send, then weighted into x. */
    ep_check(f, native_comm_all_to_all(f->comm, b, f->ep_out, rc, rd, f->ep_recv, sc, sd, row));
    if (P > 0) {
        ops->gather(b, f->ep_send, f->ep_recv, slot, P, D);
        ops->moe_combine(b, f->x + (size_t)t0 * D, f->ep_send, nh, f->weights, K, D);
    }

    /* 5. Everyone's home rows to everyone, in place. */
    for (int p = 0; p < W; p++) {
        sc[p] = nh;
        sd[p] = t0;
        rd[p] = (int)((int64_t)n * p / W);
        rc[p] = (int)((int64_t)n * (p + 1) / W) - rd[p];
    }
    ep_check(f, native_comm_all_to_all(f->comm, b, f->x, sc, sd, f->x, rc, rd, row));
}

static const float *v3_run(struct native_forward *base, struct native_kv *kv,
                           const struct native_batch *batch)
{
    struct v3_forward *f = (struct v3_forward *)base;
    const struct native_model_config *c = &f->m->cfg;
    const struct native_v3_config *v = &c->v3;
    const struct native_ops *ops = f->b->ops;
    struct native_backend *b = f->b;
    const int n = batch->n_tokens, D = c->dim, H = c->n_heads;
    const int NOPE = v->qk_nope_head_dim, R = v->qk_rope_head_dim, QK = NOPE + R;
    const int KVL = v->kv_lora_rank, KVA = KVL + R;
    const float eps = c->norm_eps;

    assert(n >= 1 && n <= f->o.max_tokens && batch->n_out <= f->o.max_out);
    native_begin_batch(b, batch);
    ops->embed(b, f->x, &f->embed, batch->token, n);
    for (int l = 0; l < c->n_layers; l++) {
        const struct v3_layer *L = &f->layers[l];
        const struct native_mla_weights *a = &L->mla;

        /* ---- MLA attention ---- */
        ops->rmsnorm(b, f->h, f->x, L->attn_norm, n, D, D, eps);
        /* The query's down-projection and the joint latent/rope-key
         * projection read the same input: one launch. */
        if (v->q_lora_rank > 0) {
            struct native_mat w[2] = {a->q_a, a->kv_a};
            float *y[2] = {f->qa, f->kva};
            ops->matmul(b, n, f->h, 2, w, y, 0);
            ops->rmsnorm(b, f->qa, f->qa, a->q_a_norm, n, v->q_lora_rank, v->q_lora_rank, eps);
            ops->matmul(b, n, f->qa, 1, &a->q_b, &f->q, 0);
        } else {
            struct native_mat w[2] = {a->q_b, a->kv_a};
            float *y[2] = {f->q, f->kva};
            ops->matmul(b, n, f->h, 2, w, y, 0);
        }
        /* The latent is normed; the rope key that follows it in each row is
         * not (it is roped instead). */
        ops->rmsnorm(b, f->kva, f->kva, a->kv_a_norm, n, KVL, KVA, eps);
        /* q_pe: the last R dims of each head; k_pe: one head per token at
         * offset kv_lora of its kva row. */
        ops->rope(b, f->q + NOPE, n, H, QK, H * QK, batch->pos, &f->rope);
        ops->rope(b, f->kva + KVL, n, 1, KVA, KVA, batch->pos, &f->rope);
        ops->kv_store(b, kv, l, batch, f->kva, KVA, f->kva + KVL, KVA);
        struct native_mla mla = v3_mla(f, l);
        ops->mla_attention(b, f->att, f->q, kv, l, batch, &mla, f->mla_scratch);
        ops->matmul(b, n, f->att, 1, &a->o, &f->x, f->acc);
        if (f->tp > 1)
            tp_sum(f, n);

        /* ---- MLP: dense SwiGLU, or routed experts plus shared ones ---- */
        ops->rmsnorm(b, f->h, f->x, L->ffn_norm, n, D, D, eps);
        if (!L->moe) {
            struct native_mat w[2] = {L->w_gate, L->w_up};
            float *y[2] = {f->gate, f->up};
            ops->matmul(b, n, f->h, 2, w, y, 0);
            ops->swiglu(b, f->gate, f->gate, f->up, (size_t)n * (size_t)c->hidden_dim);
            ops->matmul(b, n, f->gate, 1, &L->w_down, &f->x, f->acc);
            if (f->tp > 1)
                tp_sum(f, n);
            continue;
        }
        struct native_moe_gate g = {
            .n_experts = v->n_routed_experts,
            .top_k = v->n_experts_per_tok,
            .n_group = v->n_group,
            .topk_group = v->topk_group,
            .norm_topk_prob = v->norm_topk_prob,
            .routed_scale = v->routed_scaling_factor,
            .bias = L->bias,
        };
        struct native_moe_experts e = {
            .n_experts = f->n_local,
            .dim = D,
            .inter = v->moe_intermediate_size,
            .gate = L->gate,
            .up = L->up,
            .down = L->down,
        };
        /* Routed experts: all of them on every rank (ep 1; with tp > 1 each
         * rank adds the same sum into its x), or spread over the ranks. */
        if (f->ep > 1) {
            v3_ep_moe(f, L, &g, &e, n);
        } else {
            ops->matmul(b, n, f->h, 1, &L->router, &f->router, 0);
            ops->moe_gate(b, f->ids, f->weights, f->router, n, &g);
            ops->moe_experts(b, f->x, f->h, n, f->ids, f->weights, v->n_experts_per_tok, &e,
                             f->moe_scratch);
        }
        if (L->sh_gate.rows > 0) {
            const size_t SH = (size_t)L->sh_gate.rows;
            struct native_mat w[2] = {L->sh_gate, L->sh_up};
            float *y[2] = {f->gate, f->up};
            ops->matmul(b, n, f->h, 2, w, y, 0);
            ops->swiglu(b, f->gate, f->gate, f->up, (size_t)n * SH);
            ops->matmul(b, n, f->gate, 1, &L->sh_down, &f->x, f->acc);
            if (f->tp > 1)
                tp_sum(f, n);
        }
    }
    /* Only rows that will be sampled go through the final norm and the
     * vocabulary projection. */
    /* Ranks of a group hold the same residual stream by now; rank 0 alone
     * returns the logits (model/parallel.h), so the others stop here. */
    if (batch->n_out == 0 || (f->comm && f->comm->rank != 0))
        return ops->host_visible ? f->logits_dev : f->logits;
    ops->gather(b, f->xo, f->x, batch->out_rows, batch->n_out, D);
    ops->rmsnorm(b, f->xo, f->xo, f->final_norm, batch->n_out, D, D, eps);
    ops->matmul(b, batch->n_out, f->xo, 1, &f->lm_head, &f->logits_dev, 0);
    /* The logits are the one thing that comes back to the host each step;
     * a backend whose buffers are host memory needs no copy. */
    if (ops->host_visible) {
        ops->synchronize(b);
        return f->logits_dev;
    }
    ops->download(b, f->logits, f->logits_buf, 0,
                  sizeof(float) * (size_t)batch->n_out * (size_t)c->vocab_size);
    return f->logits;
}

static const struct native_forward_impl v3_impl = {
    .arch = "deepseek_v3",
    .run = v3_run,
    .bytes = v3_bytes,
    .free = v3_free,
};
