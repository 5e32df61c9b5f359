/* shard.c: one rank's view of a model; see shard.h. */
#include "engines/native/model/shard.h"

#include "engines/native/backend/dtype.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct native_shard {
    struct native_model m;              /* the view; its pointers are the model's or ours */
    struct native_layer *layers;
    struct native_moe_weights *moe;     /* [n_layers], used by MoE layers */
    void **owned;                       /* copies made for column cuts and dequantized parts */
    int n_owned, cap_owned;
    int dequantized;
};

#define BLK NATIVE_FP8_BLOCK

static int64_t blocks(int64_t n)
{
    return (n + BLK - 1) / BLK;
}

/* n bytes, 64-byte aligned, freed with the shard; NULL when memory is short. */
static void *own(struct native_shard *s, size_t n)
{
    if (s->n_owned == s->cap_owned) {
        int cap = s->cap_owned ? 2 * s->cap_owned : 64;
        void **no = realloc(s->owned, sizeof(*no) * (size_t)cap);
        if (!no)
            return NULL;
        s->owned = no;
        s->cap_owned = cap;
    }
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (p)
        s->owned[s->n_owned++] = p;
    return p;
}

/* A cut [lo, hi) of n elements keeps the FP8 blocks when each block of the
 * part is one block of the whole: the cut starts on a block boundary, or the
 * part lies inside one block (then its one block has the whole's scale). */
static int keeps_blocks(int64_t lo, int64_t hi)
{
    return lo % BLK == 0 || lo / BLK == (hi - 1) / BLK;
}

/* Element (r, c) of w as float. */
static float element(const struct native_mat *w, int64_t r, int64_t c)
{
    const size_t i = (size_t)r * (size_t)w->cols + (size_t)c;
    switch (w->dtype) {
    case NATIVE_F32: return ((const float *)w->data)[i];
    case NATIVE_BF16: return dtype_bf16_to_f32(((const uint16_t *)w->data)[i]);
    case NATIVE_F16: return dtype_f16_to_f32(((const uint16_t *)w->data)[i]);
    case NATIVE_F8_E4M3:
        return dtype_e4m3_to_f32(((const uint8_t *)w->data)[i]) *
               w->scale[(size_t)(r / BLK) * (size_t)blocks(w->cols) + (size_t)(c / BLK)];
    }
    return 0.0f;
}

/* dst = w[r0:r1, c0:c1] as F32, in memory the shard owns. */
static int dequantize(struct native_shard *s, const struct native_mat *w, int64_t r0, int64_t r1,
                      int64_t c0, int64_t c1, struct native_mat *dst)
{
    const int64_t R = r1 - r0, C = c1 - c0;
    float *d = own(s, sizeof(float) * (size_t)R * (size_t)C);
    if (!d)
        return -1;
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++)
            d[r * C + c] = element(w, r0 + r, c0 + c);
    *dst = (struct native_mat){d, NATIVE_F32, R, C, NULL};
    s->dequantized++;
    return 0;
}

/* dst = rows [r0, r1) of w: a pointer into it, its scale rows too. */
static int cut_rows(struct native_shard *s, const struct native_mat *w, int64_t r0, int64_t r1,
                    struct native_mat *dst)
{
    if (w->dtype == NATIVE_F8_E4M3 && !keeps_blocks(r0, r1))
        return dequantize(s, w, r0, r1, 0, w->cols, dst);
    *dst = *w;
    dst->rows = r1 - r0;
    dst->data = (const char *)w->data +
                (size_t)r0 * (size_t)w->cols * native_dtype_size(w->dtype);
    if (w->scale)
        dst->scale = w->scale + (size_t)(r0 / BLK) * (size_t)blocks(w->cols);
    return 0;
}

/* dst = columns [c0, c1) of w, copied; FP8 scales copied for those columns. */
static int cut_cols(struct native_shard *s, const struct native_mat *w, int64_t c0, int64_t c1,
                    struct native_mat *dst)
{
    if (w->dtype == NATIVE_F8_E4M3 && !keeps_blocks(c0, c1))
        return dequantize(s, w, 0, w->rows, c0, c1, dst);
    const size_t es = native_dtype_size(w->dtype), C = (size_t)(c1 - c0);
    char *d = own(s, (size_t)w->rows * C * es);
    if (!d)
        return -1;
    for (int64_t r = 0; r < w->rows; r++)
        memcpy(d + (size_t)r * C * es,
               (const char *)w->data + ((size_t)r * (size_t)w->cols + (size_t)c0) * es, C * es);
    *dst = (struct native_mat){d, w->dtype, w->rows, (int64_t)C, NULL};
    if (w->scale) {
        const int64_t rb = blocks(w->rows), cb = blocks((int64_t)C), wcb = blocks(w->cols);
        float *sc = own(s, sizeof(float) * (size_t)(rb * cb));
        if (!sc)
            return -1;
        for (int64_t i = 0; i < rb; i++)
            for (int64_t j = 0; j < cb; j++)
                sc[i * cb + j] = w->scale[i * wcb + c0 / BLK + j];
        dst->scale = sc;
    }
    return 0;
}

/* A SwiGLU MLP's part [lo, hi) of its intermediate size: gate/up rows, down columns. */
static int cut_mlp(struct native_shard *s, const struct native_mat *gate, const struct native_mat *up,
                   const struct native_mat *down, int64_t lo, int64_t hi, struct native_mat *g,
                   struct native_mat *u, struct native_mat *d)
{
    if (gate->rows == 0) {
        *g = *gate, *u = *up, *d = *down;
        return 0;
    }
    return cut_rows(s, gate, lo, hi, g) || cut_rows(s, up, lo, hi, u) ||
           cut_cols(s, down, lo, hi, d);
}

void native_shard_free(struct native_shard *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_owned; i++)
        free(s->owned[i]);
    free(s->owned);
    free(s->layers);
    free(s->moe);
    free(s);
}

const struct native_model *native_shard_model(const struct native_shard *s)
{
    return &s->m;
}

int native_shard_dequantized(const struct native_shard *s)
{
    return s->dequantized;
}

struct native_shard *native_shard_new(const struct native_model *m, int rank, int tp, int ep,
                                      char *err, size_t errlen)
{
    const struct native_model_config *c = &m->cfg;
    const struct native_v3_config *v = &c->v3;
    const int v3 = c->arch == NATIVE_ARCH_DEEPSEEK_V3;
    const int world = tp > ep ? tp : ep;
    if (tp < 1 || ep < 1 || (tp != 1 && tp != world) || (ep != 1 && ep != world) || rank < 0 ||
        rank >= world) {
        snprintf(err, errlen, "tp %d and ep %d: each must be 1 or the number of ranks", tp, ep);
        return NULL;
    }
    const int tr = tp > 1 ? rank : 0;   /* this rank's part of what tp splits */
    const int H = c->n_heads, KV = c->n_kv_heads;
    const int64_t SH = v3 ? (int64_t)v->n_shared_experts * v->moe_intermediate_size : 0;
    const int E = v3 ? v->n_routed_experts : 0;
    if (H % tp != 0 || c->hidden_dim % tp != 0 || SH % tp != 0 ||
        (!v3 && KV % tp != 0 && tp % KV != 0)) {
        snprintf(err, errlen, "%s: %d heads (%d KV), intermediate %d%s cannot be split over %d "
                 "ranks", m->path, H, KV, c->hidden_dim, SH ? " and shared experts" : "", tp);
        return NULL;
    }
    if (ep > 1 && (!v3 || E % ep != 0)) {
        if (v3)
            snprintf(err, errlen, "%s: %d routed experts cannot be split over %d ranks", m->path,
                     E, ep);
        else
            snprintf(err, errlen, "%s: a dense model has no experts to split over %d ranks (ep)",
                     m->path, ep);
        return NULL;
    }

    struct native_shard *s = calloc(1, sizeof(*s));
    if (!s)
        goto oom;
    s->m = *m;
    s->m.st_ = NULL;
    s->m.map_ = NULL;
    s->m.owned_ = NULL;
    s->layers = calloc((size_t)c->n_layers, sizeof(*s->layers));
    s->moe = v3 ? calloc((size_t)c->n_layers, sizeof(*s->moe)) : NULL;
    if (!s->layers || (v3 && !s->moe))
        goto oom;
    s->m.layers = s->layers;

    /* The shape of this rank's part. */
    struct native_model_config *sc = &s->m.cfg;
    const int h0 = tr * (H / tp), h1 = h0 + H / tp;
    sc->n_heads = H / tp;
    int g0 = 0, g1 = KV;
    if (!v3) {
        if (KV >= tp) {
            g0 = tr * (KV / tp), g1 = g0 + KV / tp;
        } else {
            /* The KV head of this rank's query heads (tp % KV == 0, so they share one). */
            g0 = h0 / (H / KV), g1 = g0 + 1;
        }
        sc->n_kv_heads = g1 - g0;
    } else {
        sc->n_kv_heads = sc->n_heads;
    }
    const int64_t f0 = (int64_t)tr * (c->hidden_dim / tp), f1 = f0 + c->hidden_dim / tp;
    sc->hidden_dim = c->hidden_dim / tp;
    const int64_t s0 = tr * (SH / (tp > 0 ? tp : 1)), s1 = s0 + SH / tp;
    const int e0 = ep > 1 ? rank * (E / ep) : 0;

    const int64_t hd = c->head_dim;
    for (int l = 0; l < c->n_layers; l++) {
        const struct native_layer *L = &m->layers[l];
        struct native_layer *D = &s->layers[l];
        *D = *L;
        int bad = 0;
        if (!v3) {
            bad = cut_rows(s, &L->wq, h0 * hd, h1 * hd, &D->wq) ||
                  cut_rows(s, &L->wk, g0 * hd, g1 * hd, &D->wk) ||
                  cut_rows(s, &L->wv, g0 * hd, g1 * hd, &D->wv) ||
                  cut_cols(s, &L->wo, h0 * hd, h1 * hd, &D->wo);
        } else {
            const int64_t qk = v->qk_nope_head_dim + v->qk_rope_head_dim;
            const int64_t kvb = v->qk_nope_head_dim + v->v_head_dim, vd = v->v_head_dim;
            bad = cut_rows(s, &L->mla.q_b, h0 * qk, h1 * qk, &D->mla.q_b) ||
                  cut_rows(s, &L->mla.kv_b, h0 * kvb, h1 * kvb, &D->mla.kv_b) ||
                  cut_cols(s, &L->mla.o, h0 * vd, h1 * vd, &D->mla.o);
        }
        if (!bad && (!v3 || !L->moe))
            bad = cut_mlp(s, &L->w_gate, &L->w_up, &L->w_down, f0, f1, &D->w_gate, &D->w_up,
                          &D->w_down);
        if (!bad && v3 && L->moe) {
            struct native_moe_weights *w = &s->moe[l];
            *w = *L->moe;
            w->gate = L->moe->gate + e0;
            w->up = L->moe->up + e0;
            w->down = L->moe->down + e0;
            bad = cut_mlp(s, &L->moe->sh_gate, &L->moe->sh_up, &L->moe->sh_down, s0, s1,
                          &w->sh_gate, &w->sh_up, &w->sh_down);
            D->moe = w;
        }
        if (bad)
            goto oom;
    }
    return s;

oom:
    snprintf(err, errlen, "out of memory for the shard of rank %d", rank);
    native_shard_free(s);
    return NULL;
}
