/* forward.c: the dense forward pass; see forward.h. */
#include "engines/native/model/forward.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

struct native_forward {
    const struct native_model *m;
    struct native_backend *b;
    int max_tokens, max_out;
    struct native_rope rope;
    float *rope_cos, *rope_sin;
    /* activations, one row per token */
    float *x;       /* [T][dim] residual stream */
    float *h;       /* [T][max(dim, q_dim)] normed input / attention output */
    float *q;       /* [T][q_dim] */
    float *k, *v;   /* [T][kv_dim] */
    float *gate;    /* [T][hidden] */
    float *up;      /* [T][hidden] */
    float *xo;      /* [max_out][dim] rows whose logits are wanted */
    float *logits;  /* [max_out][vocab] */
    size_t bytes;
};

/* Every buffer is counted, so the engine can report what it holds. */
static float *alloc_floats(struct native_forward *f, size_t n)
{
    f->bytes += n * sizeof(float);
    return malloc(n * sizeof(float));
}

/* cos/sin of pos / scale * theta^(-2i/head_dim), computed in double and
 * rounded once, for every position the engine will use. */
static void build_rope(struct native_forward *f, int n_ctx)
{
    const struct native_model_config *c = &f->m->cfg;
    const int half = c->head_dim / 2;
    for (int p = 0; p < n_ctx; p++) {
        for (int i = 0; i < half; i++) {
            double inv_freq = pow((double)c->rope_theta, -2.0 * i / (double)c->head_dim);
            double a = (double)p / (double)c->rope_scale * inv_freq;
            f->rope_cos[(size_t)p * half + i] = (float)cos(a);
            f->rope_sin[(size_t)p * half + i] = (float)sin(a);
        }
    }
}

struct native_forward *native_forward_new(const struct native_model *m, struct native_backend *b,
                                          int max_tokens, int max_out, int n_ctx, char *err,
                                          size_t errlen)
{
    /* Buffers are sized for the largest step; h doubles as the attention
     * output, which is as wide as q (wider than dim when head_dim * heads
     * exceeds the hidden size). */
    const struct native_model_config *c = &m->cfg;
    struct native_forward *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (c->head_dim > NATIVE_MAX_HEAD_DIM) {
        snprintf(err, errlen, "%s: head_dim %d is larger than the kernels take (%d)", m->path,
                 c->head_dim, NATIVE_MAX_HEAD_DIM);
        goto fail;
    }
    if (max_tokens < 1 || max_out < 1 || max_out > max_tokens || n_ctx < 1) {
        snprintf(err, errlen, "bad forward sizes (tokens %d, out %d, ctx %d)", max_tokens, max_out,
                 n_ctx);
        goto fail;
    }
    f->m = m;
    f->b = b;
    f->max_tokens = max_tokens;
    f->max_out = max_out;

    const size_t T = (size_t)max_tokens, D = (size_t)c->dim;
    const size_t Q = (size_t)c->n_heads * (size_t)c->head_dim;
    const size_t KV = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    const size_t half = (size_t)c->head_dim / 2;
    f->rope_cos = alloc_floats(f, (size_t)n_ctx * half);
    f->rope_sin = alloc_floats(f, (size_t)n_ctx * half);
    f->x = alloc_floats(f, T * D);
    f->h = alloc_floats(f, T * (Q > D ? Q : D));
    f->q = alloc_floats(f, T * Q);
    f->k = alloc_floats(f, T * KV);
    f->v = alloc_floats(f, T * KV);
    f->gate = alloc_floats(f, T * (size_t)c->hidden_dim);
    f->up = alloc_floats(f, T * (size_t)c->hidden_dim);
    f->xo = alloc_floats(f, (size_t)max_out * D);
    f->logits = alloc_floats(f, (size_t)max_out * (size_t)c->vocab_size);
    if (!f->rope_cos || !f->rope_sin || !f->x || !f->h || !f->q || !f->k || !f->v || !f->gate ||
        !f->up || !f->xo || !f->logits) {
        snprintf(err, errlen, "out of memory for the forward pass buffers");
        goto fail;
    }
    build_rope(f, n_ctx);
    f->rope = (struct native_rope){c->rope_layout, c->head_dim, n_ctx, f->rope_cos, f->rope_sin};
    return f;

fail:
    native_forward_free(f);
    return NULL;
}

void native_forward_free(struct native_forward *f)
{
    if (!f)
        return;
    free(f->rope_cos);
    free(f->rope_sin);
    free(f->x);
    free(f->h);
    free(f->q);
    free(f->k);
    free(f->v);
    free(f->gate);
    free(f->up);
    free(f->xo);
    free(f->logits);
    free(f);
}

const struct native_rope *native_forward_rope(const struct native_forward *f)
{
    return &f->rope;
}

size_t native_forward_bytes(const struct native_forward *f)
{
    return f->bytes;
}

const float *native_forward_run(struct native_forward *f, const struct native_kv *kv,
                                const struct native_batch *batch)
{
    const struct native_model *m = f->m;
    const struct native_model_config *c = &m->cfg;
    const struct native_ops *ops = f->b->ops;
    struct native_backend *b = f->b;
    const int n = batch->n_tokens;

    assert(n >= 1 && n <= f->max_tokens && batch->n_out <= f->max_out);
    ops->embed(b, f->x, &m->embed, batch->token, n);
    for (int l = 0; l < c->n_layers; l++) {
        const struct native_layer *L = &m->layers[l];

        /* Attention block. */
        ops->rmsnorm(b, f->h, f->x, L->attn_norm, n, c->dim, c->norm_eps);
        struct native_mat qkv[3] = {L->wq, L->wk, L->wv};
        float *qkv_out[3] = {f->q, f->k, f->v};
        ops->matmul(b, n, f->h, 3, qkv, qkv_out, 0);
        ops->rope(b, f->q, n, c->n_heads, batch->pos, &f->rope);
        ops->rope(b, f->k, n, c->n_kv_heads, batch->pos, &f->rope);
        ops->kv_store(b, kv, l, batch, f->k, f->v);
        ops->attention(b, f->h, f->q, kv, l, batch, c->n_heads, c->n_kv_heads, c->head_dim);
        ops->matmul(b, n, f->h, 1, &L->wo, &f->x, 1);

        /* Feed-forward block. */
        ops->rmsnorm(b, f->h, f->x, L->ffn_norm, n, c->dim, c->norm_eps);
        struct native_mat gu[2] = {L->w_gate, L->w_up};
        float *gu_out[2] = {f->gate, f->up};
        ops->matmul(b, n, f->h, 2, gu, gu_out, 0);
        ops->swiglu(b, f->gate, f->gate, f->up, (size_t)n * (size_t)c->hidden_dim);
        ops->matmul(b, n, f->gate, 1, &L->w_down, &f->x, 1);
    }
    /* Only rows that will be sampled go through the final norm and the
     * vocabulary projection, the most expensive matmul for small models. */
    if (batch->n_out == 0)
        return f->logits;
    ops->gather(b, f->xo, f->x, batch->out_rows, batch->n_out, c->dim);
    ops->rmsnorm(b, f->xo, f->xo, m->final_norm, batch->n_out, c->dim, c->norm_eps);
    ops->matmul(b, batch->n_out, f->xo, 1, &m->lm_head, &f->logits, 0);
    return f->logits;
}
