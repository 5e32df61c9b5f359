/* dense.c: the dense LLaMA forward pass; see forward.h.
 *
 *   x = embed(token)
 *   per layer:  h = rmsnorm(x);  q,k,v = h Wq, h Wk, h Wv;  rope(q, k)
 *               x += attention(q, cache) Wo
 *               h = rmsnorm(x);  x += (silu(h Wgate) * h Wup) Wdown
 *   logits = rmsnorm(x) Wlm_head
 *
 * Activations live in one backend buffer carved into the slices below; the
 * weights are the model's, mapped onto the backend once by new().
 *
 * As one rank of a tensor-parallel group (model/parallel.h) the model is the
 * rank's shard, with its heads, KV heads and part of the MLP, and the two
 * projections back into the residual stream (wo, w_down) give partial sums
 * that tp_sum() adds up over the ranks; everything else runs as is.
 */
#include "engines/native/model/forward_impl.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

struct dense_forward {
    struct native_forward base;
    const struct native_model *m;
    struct native_backend *b;
    int max_tokens, max_out;
    struct native_rope rope;
    float *rope_cos, *rope_sin;     /* host: the rope op reads its table from the host */
    struct native_layer *layers;    /* the model's layers with backend weight addresses */
    struct native_mat embed, lm_head;
    const float *final_norm;
    const void **mapped;            /* every address map_weights() returned, to unmap */
    int n_mapped;
    struct native_buf *act;         /* every activation slice below */
    float *x;       /* [T][dim] residual stream */
    float *h;       /* [T][max(dim, q_dim)] normed input / attention output */
    float *q;       /* [T][q_dim] */
    float *k, *v;   /* [T][kv_dim] */
    float *gate;    /* [T][hidden] */
    float *up;      /* [T][hidden] */
    float *xo;      /* [max_out][dim] rows whose logits are wanted */
    float *logits;  /* [max_out][vocab] on the backend */
    float *logits_host;
    size_t bytes;
    /* Tensor parallelism (model/parallel.h): o_proj and down give this
     * rank's partial sums. Rank 0 adds its part into x as one rank would;
     * the others write theirs over x (its old value is on rank 0 already),
     * and the all-reduce then adds them up in rank order. */
    struct native_comm *tp_comm;    /* NULL: one rank */
    int acc;                        /* accumulate flag of o_proj and down */
};

static const struct native_forward_impl dense_impl;

/* Map one weight matrix (and keep the address to unmap it); 0 or -1. */
static int map_mat(struct dense_forward *f, struct native_mat *w)
{
    size_t n = (size_t)w->rows * (size_t)w->cols * native_dtype_size(w->dtype);
    const void *p = f->b->ops->map_weights(f->b, w->data, n);
    if (!p)
        return -1;
    f->mapped[f->n_mapped++] = p;
    w->data = p;
    return 0;
}

static int map_vec(struct dense_forward *f, const float **v, int n)
{
    const void *p = f->b->ops->map_weights(f->b, *v, (size_t)n * sizeof(float));
    if (!p)
        return -1;
    f->mapped[f->n_mapped++] = p;
    *v = p;
    return 0;
}

static void dense_free(struct native_forward *base)
{
    struct dense_forward *f = (struct dense_forward *)base;
    struct native_backend *b = f->b;
    for (int i = 0; i < f->n_mapped; i++)
        b->ops->unmap_weights(b, f->mapped[i]);
    b->ops->buf_free(b, f->act);
    free(f->mapped);
    free(f->layers);
    free(f->rope_cos);
    free(f->rope_sin);
    free(f->logits_host);
    free(f);
}

static size_t dense_bytes(const struct native_forward *base)
{
    return ((const struct dense_forward *)base)->bytes;
}

struct native_forward *native_forward_dense_new(const struct native_model *m,
                                                struct native_backend *b,
                                                const struct native_forward_opts *o, char *err,
                                                size_t errlen)
{
    /* Buffers are sized for the largest step; h doubles as the attention
     * output, which is as wide as q (wider than dim when head_dim * heads
     * exceeds the hidden size). */
    const struct native_model_config *c = &m->cfg;
    struct dense_forward *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    f->base.impl = &dense_impl;
    f->m = m;
    f->b = b;
    if (c->head_dim > NATIVE_MAX_HEAD_DIM) {
        snprintf(err, errlen, "%s: head_dim %d is larger than the kernels take (%d)", m->path,
                 c->head_dim, NATIVE_MAX_HEAD_DIM);
        goto fail;
    }
    f->max_tokens = o->max_tokens;
    f->max_out = o->max_out;
    f->tp_comm = o->comm && o->tp > 1 ? o->comm : NULL;
    f->acc = !f->tp_comm || f->tp_comm->rank == 0;
    if (o->ep > 1) {
        snprintf(err, errlen, "%s: a dense model has no experts to split (ep %d)", m->path, o->ep);
        goto fail;
    }

    const size_t T = (size_t)o->max_tokens, D = (size_t)c->dim;
    const size_t Q = (size_t)c->n_heads * (size_t)c->head_dim;
    const size_t KV = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    const size_t H = (size_t)c->hidden_dim, V = (size_t)c->vocab_size;
    const size_t half = (size_t)c->head_dim / 2, n_ctx = (size_t)o->n_ctx;
    const size_t hw = Q > D ? Q : D;
    /* Slices of one buffer, each a multiple of 16 floats so every slice
     * starts 64-byte aligned. */
#define SLICE(n) (((n) + 15) & ~(size_t)15)
    const size_t floats = SLICE(T * D) + SLICE(T * hw) + SLICE(T * Q) + 2 * SLICE(T * KV) +
                          2 * SLICE(T * H) + SLICE((size_t)o->max_out * D) +
                          SLICE((size_t)o->max_out * V);
    f->rope_cos = malloc(n_ctx * half * sizeof(float));
    f->rope_sin = malloc(n_ctx * half * sizeof(float));
    f->logits_host = malloc((size_t)o->max_out * V * sizeof(float));
    f->layers = malloc((size_t)c->n_layers * sizeof(*f->layers));
    f->mapped = malloc((size_t)(c->n_layers * 9 + 3) * sizeof(*f->mapped));
    f->act = b->ops->buf_alloc(b, floats * sizeof(float));
    if (!f->rope_cos || !f->rope_sin || !f->logits_host || !f->layers || !f->mapped || !f->act) {
        snprintf(err, errlen, "out of memory for the forward pass buffers");
        goto fail;
    }
    f->bytes = floats * sizeof(float) + 2 * n_ctx * half * sizeof(float) +
               (size_t)o->max_out * V * sizeof(float);
    float *p = b->ops->buf_addr(b, f->act);
    f->x = p, p += SLICE(T * D);
    f->h = p, p += SLICE(T * hw);
    f->q = p, p += SLICE(T * Q);
    f->k = p, p += SLICE(T * KV);
    f->v = p, p += SLICE(T * KV);
    f->gate = p, p += SLICE(T * H);
    f->up = p, p += SLICE(T * H);
    f->xo = p, p += SLICE((size_t)o->max_out * D);
    f->logits = p;
#undef SLICE

    /* The weights, once, onto the backend (the CPU uses the mmap in place). */
    f->embed = m->embed;
    f->lm_head = m->lm_head;
    f->final_norm = m->final_norm;
    int bad = map_mat(f, &f->embed) || map_mat(f, &f->lm_head) ||
              map_vec(f, &f->final_norm, c->dim);
    for (int l = 0; l < c->n_layers && !bad; l++) {
        struct native_layer *L = &f->layers[l];
        *L = m->layers[l];
        bad = map_vec(f, &L->attn_norm, c->dim) || map_vec(f, &L->ffn_norm, c->dim) ||
              map_mat(f, &L->wq) || map_mat(f, &L->wk) || map_mat(f, &L->wv) ||
              map_mat(f, &L->wo) || map_mat(f, &L->w_gate) || map_mat(f, &L->w_up) ||
              map_mat(f, &L->w_down);
    }
    if (bad) {
        snprintf(err, errlen, "%s: the %s backend cannot hold the weights", m->path,
                 b->ops->name);
        goto fail;
    }

    native_rope_tables(f->rope_cos, f->rope_sin, o->n_ctx, c->head_dim, c->rope_theta,
                       c->rope_scale, NULL, 1.0);
    f->rope = (struct native_rope){c->rope_layout, c->head_dim, o->n_ctx, f->rope_cos, f->rope_sin};
    return &f->base;

fail:
    dense_free(&f->base);
    return NULL;
}

/* Sum the ranks' partial residual streams (tensor parallelism). A failed
 * collective leaves the ranks out of step, which nothing here can repair. */
static void tp_sum(struct dense_forward *f, int n)
{
    if (native_comm_all_reduce_sum(f->tp_comm, f->b, f->x,
                                   (size_t)n * (size_t)f->m->cfg.dim) != 0) {
        fprintf(stderr, "dense: all_reduce_sum failed on rank %d; stopping\n", f->tp_comm->rank);
        abort();
    }
}

static const float *dense_run(struct native_forward *base, struct native_kv *kv,
                              const struct native_batch *batch)
{
    struct dense_forward *f = (struct dense_forward *)base;
    const struct native_model_config *c = &f->m->cfg;
    const struct native_ops *ops = f->b->ops;
    struct native_backend *b = f->b;
    const int n = batch->n_tokens;
    const int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;

    assert(n >= 1 && n <= f->max_tokens && batch->n_out <= f->max_out);
    native_begin_batch(b, batch);
    ops->embed(b, f->x, &f->embed, batch->token, n);
    for (int l = 0; l < c->n_layers; l++) {
        const struct native_layer *L = &f->layers[l];

        /* Attention block. */
        ops->rmsnorm(b, f->h, f->x, L->attn_norm, n, c->dim, c->dim, c->norm_eps);
        struct native_mat qkv[3] = {L->wq, L->wk, L->wv};
        float *qkv_out[3] = {f->q, f->k, f->v};
        ops->matmul(b, n, f->h, 3, qkv, qkv_out, 0);
        ops->rope(b, f->q, n, c->n_heads, c->head_dim, q_dim, batch->pos, &f->rope);
        ops->rope(b, f->k, n, c->n_kv_heads, c->head_dim, kv_dim, batch->pos, &f->rope);
        ops->kv_store(b, kv, l, batch, f->k, kv_dim, f->v, kv_dim);
        ops->attention(b, f->h, f->q, kv, l, batch, c->n_heads, c->n_kv_heads, c->head_dim);
        ops->matmul(b, n, f->h, 1, &L->wo, &f->x, f->acc);
        if (f->tp_comm)
            tp_sum(f, n);

        /* Feed-forward block. */
        ops->rmsnorm(b, f->h, f->x, L->ffn_norm, n, c->dim, c->dim, c->norm_eps);
        struct native_mat gu[2] = {L->w_gate, L->w_up};
        float *gu_out[2] = {f->gate, f->up};
        ops->matmul(b, n, f->h, 2, gu, gu_out, 0);
        ops->swiglu(b, f->gate, f->gate, f->up, (size_t)n * (size_t)c->hidden_dim);
        ops->matmul(b, n, f->gate, 1, &L->w_down, &f->x, f->acc);
        if (f->tp_comm)
            tp_sum(f, n);
    }
    /* Only rows that will be sampled go through the final norm and the
     * vocabulary projection, the most expensive matmul for small models. In
     * a tensor-parallel group every rank holds the whole residual stream
     * now, and rank 0 alone returns the logits (model/parallel.h), so the
     * others stop here. */
    if (batch->n_out == 0 || (f->tp_comm && f->tp_comm->rank != 0))
        return f->logits_host;
    ops->gather(b, f->xo, f->x, batch->out_rows, batch->n_out, c->dim);
    ops->rmsnorm(b, f->xo, f->xo, f->final_norm, batch->n_out, c->dim, c->dim, c->norm_eps);
    ops->matmul(b, batch->n_out, f->xo, 1, &f->lm_head, &f->logits, 0);
    /* The logits are the one thing that comes back to the host each step;
     * a backend whose buffers are host memory needs no copy. */
    if (ops->host_visible) {
        ops->synchronize(b);
        return f->logits;
    }
    ops->download(b, f->logits_host, f->act,
                  (size_t)((char *)f->logits - (char *)ops->buf_addr(b, f->act)),
                  (size_t)batch->n_out * (size_t)c->vocab_size * sizeof(float));
    return f->logits_host;
}

static const struct native_forward_impl dense_impl = {
    .arch = "dense",
    .run = dense_run,
    .bytes = dense_bytes,
    .free = dense_free,
};
