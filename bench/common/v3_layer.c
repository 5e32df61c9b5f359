/* v3_layer.c: DeepSeek-V3 MoE layers at real size on any backend; see v3_layer.h. */
#include "bench/common/v3_layer.h"

#include "engines/native/backend/cpu/threadpool.h"
#include "engines/native/backend/dtype.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

const char *const v3l_part_name[V3L_N_PARTS] = {"attn_proj", "mla", "o_proj", "router_gate",
                                                "experts", "shared"};

/* ---- Sizes ---- */

/* An FP8 matrix as it sits in an arena: its bytes, then its float scales. */
static size_t fp8_bytes(int64_t rows, int64_t cols)
{
    return (size_t)rows * (size_t)cols +
           sizeof(float) * (size_t)((rows + 127) / 128) * (size_t)((cols + 127) / 128);
}

size_t v3l_attn_bytes(void)
{
    return fp8_bytes(V3L_QLORA, V3L_HID) + fp8_bytes((int64_t)V3L_NH * V3L_QHD, V3L_QLORA) +
           fp8_bytes(V3L_KVLORA + V3L_ROPE, V3L_HID) +
           fp8_bytes((int64_t)V3L_NH * (V3L_NOPE + V3L_VD), V3L_KVLORA) +
           fp8_bytes(V3L_HID, (int64_t)V3L_NH * V3L_VD);
}

size_t v3l_expert_bytes(void)
{
    return 2 * fp8_bytes(V3L_INTER, V3L_HID) + fp8_bytes(V3L_HID, V3L_INTER);
}

size_t v3l_router_bytes(int n_experts)
{
    return (size_t)n_experts * V3L_HID * 2;
}

/* ---- Host weights ---- */

struct v3l_host {
    int n_experts;
    uint8_t *arena;         /* attention, then n_experts + 1 experts (the last is shared) */
    size_t arena_bytes;
    uint16_t *router;       /* BF16 [n_experts][HID] */
    float *bias, *norm;     /* [n_experts], [HID] (every norm uses this one) */
};

struct fill_job {
    uint8_t *p;
    size_t n, chunk;
};

/* Random e4m3 bytes with bit 6 clear: exponents up to 7, |v| <= 1.875, so
 * never NaN (0x7f) and of a size the scales turn into unit activations. */
static void fill_task(void *arg, int task, int thread)
{
    (void)thread;
    const struct fill_job *j = arg;
    size_t a = (size_t)task * j->chunk, b = a + j->chunk < j->n ? a + j->chunk : j->n;
    uint64_t s = 0x9e3779b97f4a7c15ull * (uint64_t)(task + 1);
    for (size_t i = a; i + 8 <= b; i += 8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        uint64_t v = s & 0xbfbfbfbfbfbfbfbfull;
        memcpy(j->p + i, &v, 8);
    }
}

/* The scales of every FP8 matrix in the arena: rows of unit-size outputs for
 * unit-size inputs. Written after the random fill, which covered them. */
static uint8_t *set_scales(uint8_t *p, int64_t rows, int64_t cols)
{
    float *sc = (float *)(p + (size_t)rows * (size_t)cols);
    size_t ns = (size_t)((rows + 127) / 128) * (size_t)((cols + 127) / 128);
    for (size_t i = 0; i < ns; i++)
        sc[i] = (float)(1.6 / sqrt((double)cols));
    return p + fp8_bytes(rows, cols);
}

static uint64_t rng = 88172645463325252ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 4503599627370496.0 - 1.0);
}

struct v3l_host *v3l_host_new(int n_experts, int threads, int thp, char *err, size_t errlen)
{
    if (n_experts < 16 || n_experts > V3L_NE || n_experts % V3L_NGROUP) {
        snprintf(err, errlen, "experts must be a multiple of %d in [16, %d]", V3L_NGROUP, V3L_NE);
        return NULL;
    }
    struct v3l_host *h = calloc(1, sizeof(*h));
    struct threadpool *pool = NULL;
    if (!h)
        goto oom;
    h->n_experts = n_experts;
    h->arena_bytes = v3l_attn_bytes() + v3l_expert_bytes() * (size_t)(n_experts + 1);
    h->arena = mmap(NULL, h->arena_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (h->arena == MAP_FAILED) {
        h->arena = NULL;
        goto oom;
    }
    /* 11 GB of 4 KiB pages take long to fault in, and their TLB misses would
     * be charged to the CPU kernels. */
    if (thp)
        madvise(h->arena, h->arena_bytes, MADV_HUGEPAGE);
    h->router = malloc(v3l_router_bytes(n_experts));
    h->bias = malloc(sizeof(float) * (size_t)n_experts);
    h->norm = malloc(sizeof(float) * V3L_HID);
    if (!h->router || !h->bias || !h->norm || !(pool = threadpool_new(threads)))
        goto oom;

    struct fill_job j = {h->arena, h->arena_bytes, (size_t)64 << 20};
    threadpool_run(pool, fill_task, &j, (int)((j.n + j.chunk - 1) / j.chunk));
    threadpool_free(pool);
    uint8_t *p = h->arena;
    p = set_scales(p, V3L_QLORA, V3L_HID);
    p = set_scales(p, (int64_t)V3L_NH * V3L_QHD, V3L_QLORA);
    p = set_scales(p, V3L_KVLORA + V3L_ROPE, V3L_HID);
    p = set_scales(p, (int64_t)V3L_NH * (V3L_NOPE + V3L_VD), V3L_KVLORA);
    p = set_scales(p, V3L_HID, (int64_t)V3L_NH * V3L_VD);
    for (int e = 0; e <= n_experts; e++) {
        p = set_scales(p, V3L_INTER, V3L_HID);
        p = set_scales(p, V3L_INTER, V3L_HID);
        p = set_scales(p, V3L_HID, V3L_INTER);
    }
    for (size_t i = 0; i < (size_t)n_experts * V3L_HID; i++)
        h->router[i] = dtype_f32_to_bf16(frand() * 0.05f);
    for (int i = 0; i < n_experts; i++)
        h->bias[i] = frand() * 0.01f;
    for (int i = 0; i < V3L_HID; i++)
        h->norm[i] = 1.0f + 0.1f * frand();
    return h;

oom:
    snprintf(err, errlen, "out of host memory for the layer's weights");
    threadpool_free(pool);
    v3l_host_free(h);
    return NULL;
}

void v3l_host_free(struct v3l_host *h)
{
    if (!h)
        return;
    if (h->arena)
        munmap(h->arena, h->arena_bytes);
    free(h->router);
    free(h->bias);
    free(h->norm);
    free(h);
}

size_t v3l_host_bytes(const struct v3l_host *h)
{
    return h->arena_bytes + v3l_router_bytes(h->n_experts);
}

/* ---- Layers on a backend ---- */

struct v3l_weights {
    const void *arena, *router, *bias, *norm;   /* map_weights() results */
    struct native_mat q_a, q_b, kv_a, kv_b, o, router_m;
    struct native_mat *eg, *eu, *ed;            /* [n_experts + 1]; the last is shared */
    struct native_buf *ids_b;                   /* this layer's expert ids [batch][topk] */
};

struct v3l {
    struct native_backend *be;
    const struct native_ops *o;
    const struct v3l_host *h;
    int n_layers, batch, ctx;
    struct v3l_weights *w;
    struct native_kv *kv;
    int32_t *blocks, *pos, *seq, *ids_h;
    struct native_seq_view *views;
    float *cos, *sin, *xh;
    struct native_buf *bufs[13];
    float *x, *hn, *qa, *qh, *kva, *att, *logits, *wts, *sg, *su, *mscr, *escr, *unused;
};

/* A matrix at byte offset *off of a mapped arena; *off moves past it. */
static struct native_mat arena_mat(const uint8_t *base, size_t *off, int64_t rows, int64_t cols)
{
    struct native_mat m = {base + *off, NATIVE_F8_E4M3, rows, cols,
                           (const float *)(base + *off + (size_t)rows * (size_t)cols)};
    *off += fp8_bytes(rows, cols);
    return m;
}

static int map_layer(struct v3l *v, struct v3l_weights *w)
{
    const struct v3l_host *h = v->h;
    const int ne = h->n_experts;
    w->arena = v->o->map_weights(v->be, h->arena, h->arena_bytes);
    w->router = v->o->map_weights(v->be, h->router, v3l_router_bytes(ne));
    w->bias = v->o->map_weights(v->be, h->bias, sizeof(float) * (size_t)ne);
    w->norm = v->o->map_weights(v->be, h->norm, sizeof(float) * V3L_HID);
    w->eg = calloc((size_t)ne + 1, sizeof(struct native_mat));
    w->eu = calloc((size_t)ne + 1, sizeof(struct native_mat));
    w->ed = calloc((size_t)ne + 1, sizeof(struct native_mat));
    w->ids_b = v->o->buf_alloc(v->be, sizeof(int32_t) * (size_t)v->batch * V3L_TOPK);
    if (!w->arena || !w->router || !w->bias || !w->norm || !w->eg || !w->eu || !w->ed || !w->ids_b)
        return -1;
    const uint8_t *base = w->arena;
    size_t off = 0;
    w->q_a = arena_mat(base, &off, V3L_QLORA, V3L_HID);
    w->q_b = arena_mat(base, &off, (int64_t)V3L_NH * V3L_QHD, V3L_QLORA);
    w->kv_a = arena_mat(base, &off, V3L_KVLORA + V3L_ROPE, V3L_HID);
    w->kv_b = arena_mat(base, &off, (int64_t)V3L_NH * (V3L_NOPE + V3L_VD), V3L_KVLORA);
    w->o = arena_mat(base, &off, V3L_HID, (int64_t)V3L_NH * V3L_VD);
    for (int e = 0; e <= ne; e++) {
        w->eg[e] = arena_mat(base, &off, V3L_INTER, V3L_HID);
        w->eu[e] = arena_mat(base, &off, V3L_INTER, V3L_HID);
        w->ed[e] = arena_mat(base, &off, V3L_HID, V3L_INTER);
    }
    w->router_m = (struct native_mat){w->router, NATIVE_BF16, ne, V3L_HID, NULL};
    return 0;
}

static void unmap_layer(struct v3l *v, struct v3l_weights *w)
{
    const void *maps[4] = {w->arena, w->router, w->bias, w->norm};
    for (int i = 0; i < 4; i++)
        if (maps[i])
            v->o->unmap_weights(v->be, maps[i]);
    if (w->ids_b)
        v->o->buf_free(v->be, w->ids_b);
    free(w->eg);
    free(w->eu);
    free(w->ed);
}

/* The latent cache: every sequence gets ctx positions of random latents in
 * every layer, stored through kv_store as a prefill would. */
static int fill_kv(struct v3l *v)
{
    const int W = V3L_KVLORA + V3L_ROPE, P = v->ctx;
    float *rows = malloc(sizeof(float) * (size_t)P * W);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)P), *seq = malloc(sizeof(int32_t) * (size_t)P);
    struct native_buf *rb = v->o->buf_alloc(v->be, sizeof(float) * (size_t)P * W);
    int rc = -1;
    if (!rows || !pos || !seq || !rb)
        goto out;
    for (int l = 0; l < v->n_layers; l++) {
        for (int s = 0; s < v->batch; s++) {
            for (size_t i = 0; i < (size_t)P * W; i++)
                rows[i] = frand();
            for (int p = 0; p < P; p++) {
                pos[p] = p;
                seq[p] = s;
            }
            v->o->upload(v->be, rb, 0, rows, sizeof(float) * (size_t)P * W);
            struct native_batch hb = {P, pos, pos, seq, v->views, v->batch, NULL, 0};
            native_begin_batch(v->be, &hb);
            float *r = v->o->buf_addr(v->be, rb);
            v->o->kv_store(v->be, v->kv, l, &hb, r, W, r + V3L_KVLORA, W);
            v->o->synchronize(v->be);   /* rows is rewritten for the next sequence */
        }
    }
    rc = 0;
out:
    if (rb)
        v->o->buf_free(v->be, rb);
    free(rows);
    free(pos);
    free(seq);
    return rc;
}

struct v3l *v3l_new(struct native_backend *be, const struct v3l_host *h, int n_layers,
                    int batch, int ctx, char *err, size_t errlen)
{
    struct v3l *v = calloc(1, sizeof(*v));
    if (!v) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    v->be = be;
    v->o = be->ops;
    v->h = h;
    v->n_layers = n_layers;
    v->batch = batch;
    v->ctx = ctx;
    const struct native_ops *o = v->o;
    const int B = batch, P = ctx;

    v->w = calloc((size_t)n_layers, sizeof(*v->w));
    if (!v->w)
        goto oom;
    for (int l = 0; l < n_layers; l++)
        if (map_layer(v, &v->w[l]) != 0) {
            snprintf(err, errlen, "layer %d: the backend could not take its weights (%.2f GB)", l,
                     (double)v3l_host_bytes(h) / 1e9);
            goto fail;
        }

    /* KV: one sequence per decode token, room for positions 0..ctx. */
    const int BS = o->kv_block_size, nb = (P + 1 + BS - 1) / BS;
    struct native_kv_desc kd = {NATIVE_KV_LATENT, n_layers, 0, V3L_KVLORA, V3L_ROPE};
    if (!(v->kv = o->kv_new(be, &kd, B * nb, err, errlen)))
        goto fail;
    v->blocks = malloc(sizeof(int32_t) * (size_t)B * nb);
    v->views = malloc(sizeof(*v->views) * (size_t)B);
    v->pos = malloc(sizeof(int32_t) * (size_t)B);
    v->seq = malloc(sizeof(int32_t) * (size_t)B);
    v->ids_h = malloc(sizeof(int32_t) * (size_t)B * V3L_TOPK);
    v->xh = malloc(sizeof(float) * (size_t)B * V3L_HID);
    v->cos = malloc(sizeof(float) * (size_t)(P + 1) * V3L_ROPE / 2);
    v->sin = malloc(sizeof(float) * (size_t)(P + 1) * V3L_ROPE / 2);
    if (!v->blocks || !v->views || !v->pos || !v->seq || !v->ids_h || !v->xh || !v->cos || !v->sin)
        goto oom;
    for (int s = 0; s < B; s++) {
        for (int i = 0; i < nb; i++)
            v->blocks[s * nb + i] = s * nb + i;
        v->views[s] = (struct native_seq_view){v->blocks + s * nb, nb};
        v->pos[s] = P;
        v->seq[s] = s;
    }
    for (int p = 0; p <= P; p++)
        for (int i = 0; i < V3L_ROPE / 2; i++) {
            double ang = p * pow(10000.0, -2.0 * i / V3L_ROPE);
            v->cos[p * V3L_ROPE / 2 + i] = (float)cos(ang);
            v->sin[p * V3L_ROPE / 2 + i] = (float)sin(ang);
        }

    struct native_mla mla = {NATIVE_MLA_ABSORB, V3L_NH, V3L_NOPE, V3L_ROPE, V3L_VD, V3L_KVLORA,
                             (float)(1.0 / sqrt((double)V3L_QHD)), v->w[0].kv_b};
    const size_t floats[13] = {
        (size_t)B * V3L_HID, (size_t)B * V3L_HID, (size_t)B * V3L_QLORA,
        (size_t)B * V3L_NH * V3L_QHD, (size_t)B * (V3L_KVLORA + V3L_ROPE),
        (size_t)B * V3L_NH * V3L_VD, (size_t)B * (size_t)h->n_experts, (size_t)B * V3L_TOPK,
        (size_t)B * V3L_INTER, (size_t)B * V3L_INTER, native_mla_scratch_floats(P + 1, &mla),
        native_moe_scratch_floats(B, V3L_TOPK, V3L_HID, V3L_INTER), 1};
    float **addr[13] = {&v->x, &v->hn, &v->qa, &v->qh, &v->kva, &v->att, &v->logits, &v->wts,
                        &v->sg, &v->su, &v->mscr, &v->escr, &v->unused};
    for (int i = 0; i < 13; i++) {
        if (!(v->bufs[i] = o->buf_alloc(be, sizeof(float) * floats[i]))) {
            snprintf(err, errlen, "the backend is out of memory for activations");
            goto fail;
        }
        *addr[i] = o->buf_addr(be, v->bufs[i]);
    }
    if (fill_kv(v) != 0)
        goto oom;
    return v;

oom:
    snprintf(err, errlen, "out of memory");
fail:
    v3l_free(v);
    return NULL;
}

void v3l_free(struct v3l *v)
{
    if (!v)
        return;
    for (int i = 0; i < 13; i++)
        if (v->bufs[i])
            v->o->buf_free(v->be, v->bufs[i]);
    if (v->kv)
        v->o->kv_free(v->be, v->kv);
    if (v->w)
        for (int l = 0; l < v->n_layers; l++)
            unmap_layer(v, &v->w[l]);
    free(v->w);
    free(v->blocks);
    free(v->views);
    free(v->pos);
    free(v->seq);
    free(v->ids_h);
    free(v->xh);
    free(v->cos);
    free(v->sin);
    free(v);
}

void v3l_new_input(struct v3l *v, int batch)
{
    for (size_t i = 0; i < (size_t)batch * V3L_HID; i++)
        v->xh[i] = frand();
    v->o->upload(v->be, v->bufs[0], 0, v->xh, sizeof(float) * (size_t)batch * V3L_HID);
    v->o->synchronize(v->be);
}

/* Seconds since an arbitrary start. */
static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The end of part k: with parts, wait for the backend and charge the time. */
static void part_done(struct v3l *v, double *parts, int k, double *t)
{
    if (!parts)
        return;
    v->o->synchronize(v->be);
    double n = now_s();
    parts[k] += n - *t;
    *t = n;
}

void v3l_step(struct v3l *v, int batch, double parts[V3L_N_PARTS])
{
    const struct native_ops *o = v->o;
    struct native_backend *be = v->be;
    const int B = batch < v->batch ? batch : v->batch, ne = v->h->n_experts;
    float *x = v->x, *h = v->hn;
    struct native_rope rope = {NATIVE_ROPE_ADJACENT, V3L_ROPE, v->ctx + 1, v->cos, v->sin};
    struct native_batch nb = {B, v->pos, v->pos, v->seq, v->views, B, NULL, 0};
    double t = now_s();
    if (parts)
        for (int k = 0; k < V3L_N_PARTS; k++)
            parts[k] = 0;
    native_begin_batch(be, &nb);
    for (int l = 0; l < v->n_layers; l++) {
        const struct v3l_weights *w = &v->w[l];
        const float *norm = w->norm;
        struct native_mla mla = {NATIVE_MLA_ABSORB, V3L_NH, V3L_NOPE, V3L_ROPE, V3L_VD, V3L_KVLORA,
                                 (float)(1.0 / sqrt((double)V3L_QHD)), w->kv_b};
        struct native_moe_gate gate = {ne, V3L_TOPK, V3L_NGROUP, V3L_TOPKG, 1, 2.5f, w->bias};
        struct native_moe_experts me = {ne, V3L_HID, V3L_INTER, w->eg, w->eu, w->ed};
        int32_t *ids = o->buf_addr(be, w->ids_b);

        /* attention */
        o->rmsnorm(be, h, x, norm, B, V3L_HID, V3L_HID, 1e-6f);
        float *y1[1] = {v->qa};
        o->matmul(be, B, h, 1, &w->q_a, y1, 0);
        o->rmsnorm(be, v->qa, v->qa, norm, B, V3L_QLORA, V3L_QLORA, 1e-6f);
        float *y2[1] = {v->qh};
        o->matmul(be, B, v->qa, 1, &w->q_b, y2, 0);
        float *y3[1] = {v->kva};
        o->matmul(be, B, h, 1, &w->kv_a, y3, 0);
        o->rmsnorm(be, v->kva, v->kva, norm, B, V3L_KVLORA, V3L_KVLORA + V3L_ROPE, 1e-6f);
        o->rope(be, v->qh + V3L_NOPE, B, V3L_NH, V3L_QHD, V3L_NH * V3L_QHD, v->pos, &rope);
        o->rope(be, v->kva + V3L_KVLORA, B, 1, V3L_KVLORA + V3L_ROPE, V3L_KVLORA + V3L_ROPE, v->pos,
                &rope);
        o->kv_store(be, v->kv, l, &nb, v->kva, V3L_KVLORA + V3L_ROPE, v->kva + V3L_KVLORA,
                    V3L_KVLORA + V3L_ROPE);
        part_done(v, parts, V3L_ATTN_PROJ, &t);
        o->mla_attention(be, v->att, v->qh, v->kv, l, &nb, &mla, v->mscr);
        part_done(v, parts, V3L_MLA, &t);
        float *y4[1] = {x};
        o->matmul(be, B, v->att, 1, &w->o, y4, 1);
        part_done(v, parts, V3L_O_PROJ, &t);
        /* MoE */
        o->rmsnorm(be, h, x, norm, B, V3L_HID, V3L_HID, 1e-6f);
        float *y5[1] = {v->logits};
        o->matmul(be, B, h, 1, &w->router_m, y5, 0);
        o->moe_gate(be, ids, v->wts, v->logits, B, &gate);
        part_done(v, parts, V3L_ROUTER_GATE, &t);
        o->moe_experts(be, x, h, B, ids, v->wts, V3L_TOPK, &me, v->escr);
        part_done(v, parts, V3L_EXPERTS, &t);
        float *y6[2] = {v->sg, v->su};
        struct native_mat gu[2] = {w->eg[ne], w->eu[ne]};
        o->matmul(be, B, h, 2, gu, y6, 0);
        o->swiglu(be, v->sg, v->sg, v->su, (size_t)B * V3L_INTER);
        float *y7[1] = {x};
        o->matmul(be, B, v->sg, 1, &w->ed[ne], y7, 1);
        part_done(v, parts, V3L_SHARED, &t);
    }
    o->synchronize(be);
}

double v3l_step_bytes(struct v3l *v, int batch, int *distinct)
{
    const int ne = v->h->n_experts, B = batch < v->batch ? batch : v->batch;
    double bytes = 0;
    int total = 0;
    for (int l = 0; l < v->n_layers; l++) {
        v->o->download(v->be, v->ids_h, v->w[l].ids_b, 0, sizeof(int32_t) * (size_t)B * V3L_TOPK);
        unsigned char seen[V3L_NE] = {0};
        int nd = 0;
        for (int i = 0; i < B * V3L_TOPK; i++) {
            int e = v->ids_h[i];
            if (e >= 0 && e < ne && !seen[e]) {
                seen[e] = 1;
                nd++;
            }
        }
        total += nd;
        bytes += (double)v3l_attn_bytes() + (double)v3l_router_bytes(ne) +
                 (double)v3l_expert_bytes() * (1 + nd) +
                 (double)B * (v->ctx + 1) * (V3L_KVLORA + V3L_ROPE) * sizeof(float);
    }
    if (distinct)
        *distinct = total;
    return bytes;
}

int v3l_distinct_copies(const struct v3l *v)
{
    for (int l = 1; l < v->n_layers; l++)
        if (v->w[l].arena == v->w[0].arena)
            return 0;
    return 1;
}
