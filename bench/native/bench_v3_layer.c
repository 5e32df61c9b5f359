/* bench_v3_layer: one DeepSeek-V3 MoE layer at its real dimensions, FP8
 * weights with 128x128 block scales, random values, on the CPU backend;
 * the time of a decode step against the memory bound.
 *
 *   bench_v3_layer [--threads N] [--batch B] [--steps S] [--ctx P] [--no-thp]
 *
 * The layer (config.json of deepseek-ai/DeepSeek-V3): hidden 7168; MLA with
 * q_lora_rank 1536, kv_lora_rank 512, 128 heads of qk_nope 128 + qk_rope 64,
 * v_head_dim 128; 256 routed experts of moe_intermediate_size 2048, top-8,
 * n_group 8, topk_group 4, routed_scaling_factor 2.5; one shared expert. Every
 * projection is FP8 (as in the published checkpoint) except the router
 * (BF16) and the norms (F32). All 256 experts are allocated and filled
 * (11.3 GB), since the gate picks them from random weights: nothing is
 * shared or left unmapped.
 *
 * A step is what deepseek_v3.c runs per MoE layer for B decode tokens (one
 * per sequence, each at position P of its own cache): rmsnorm, q_a, q_a
 * norm, q_b, kv_a, latent norm, rope, kv_store, absorbed MLA, o_proj + the
 * residual, rmsnorm, router, moe_gate, the routed experts, the shared
 * expert. A fresh random residual before each step lets the gate pick new
 * experts every time.
 *
 * The bound: the bytes the step must read (the attention's FP8 weights and
 * scales, the router, the shared expert, every distinct expert the gate
 * chose in that step, and the B latent caches) over the copy bandwidth
 * measured in the same process right before that step: memcpy of 256 MiB
 * on every thread, best of 3, counted as 2 x bytes / time (read + write), as
 * bench_native does. of_bound is the median over the steps of bound / time.
 */
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/backend/cpu/threadpool.h"
#include "engines/native/backend/dtype.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

enum {
    HID = 7168, QLORA = 1536, KVLORA = 512, NH = 128, NOPE = 128, ROPE = 64, VD = 128,
    NE = 256, INTER = 2048, TOPK = 8, NGROUP = 8, TOPKG = 4, QHD = NOPE + ROPE,
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int use_thp = 1;

/* Anonymous memory, in transparent huge pages unless --no-thp: 11 GB of
 * 4 KiB pages take minutes to fault in on this VM, and their TLB misses
 * would be charged to the kernels. */
static void *big_alloc(size_t n)
{
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "bench_v3_layer: cannot map %zu bytes\n", n);
        exit(1);
    }
    if (use_thp)
        madvise(p, n, MADV_HUGEPAGE);
    return p;
}

/* ---- Filling memory fast, on every thread ---- */

struct fill_job {
    uint8_t *p;
    size_t n, chunk;
};

/* Random e4m3 bytes with bit 6 clear: exponents up to 7, |v| <= 1.875, so
 * never NaN (0x7f) and of a size the scales below turn into unit activations. */
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

static void fill_fp8(struct threadpool *pool, uint8_t *p, size_t n)
{
    struct fill_job j = {p, n, 64u << 20};
    threadpool_run(pool, fill_task, &j, (int)((n + j.chunk - 1) / j.chunk));
}

static uint64_t rng = 88172645463325252ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 4503599627370496.0 - 1.0);
}

/* An FP8 matrix in the arena, with scales making rows of unit-size outputs
 * for unit-size inputs. */
static size_t fp8_bytes(int64_t rows, int64_t cols)
{
    return (size_t)rows * (size_t)cols + sizeof(float) * (size_t)((rows + 127) / 128) *
                                             (size_t)((cols + 127) / 128);
}

static struct native_mat fp8_mat(uint8_t *data, int64_t rows, int64_t cols)
{
    struct native_mat m = {data, NATIVE_F8_E4M3, rows, cols, NULL};
    float *sc = (float *)(data + (size_t)rows * (size_t)cols);
    size_t ns = (size_t)((rows + 127) / 128) * (size_t)((cols + 127) / 128);
    for (size_t i = 0; i < ns; i++)
        sc[i] = (float)(1.6 / sqrt((double)cols));
    m.scale = sc;
    return m;
}

/* ---- Copy bandwidth ---- */

struct copy_arg {
    char *dst;
    const char *src;
    size_t n;
};

static void copy_task(void *arg, int task, int thread)
{
    (void)thread;
    struct copy_arg *a = arg;
    memcpy(a[task].dst, a[task].src, a[task].n);
}

/* Copy bandwidth on every thread, best of reps, as 2 x bytes / time. */
static double copy_bandwidth(struct threadpool *pool, int threads, char *src, char *dst, size_t n,
                             int reps)
{
    struct copy_arg a[64];
    for (int i = 0; i < threads; i++)
        a[i] = (struct copy_arg){dst + n / threads * i, src + n / threads * i, n / threads};
    double best = 0;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now_s();
        threadpool_run(pool, copy_task, a, threads);
        double bw = 2.0 * (double)(n / threads * threads) / (now_s() - t0);
        best = bw > best ? bw : best;
    }
    return best;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int threads = 2, B = 1, steps = 5, P = 1024;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--no-thp"))
            use_thp = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--no-thp"))
            i--;
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch"))
            B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ctx"))
            P = atoi(argv[i + 1]);
    }
    if (threads < 1 || threads > 64 || B < 1 || B > 64 || steps < 1 || steps > 100 || P < 1) {
        fprintf(stderr, "usage: bench_v3_layer [--threads N] [--batch B] [--steps S] [--ctx P] [--no-thp]\n");
        return 2;
    }
    struct native_backend *be = ops_cpu_new(threads, 0);
    const struct native_ops *o = be->ops;
    struct threadpool *pool = threadpool_new(threads);
    /* The copy benchmark runs again right before every step (the machine
     * is shared, so its bandwidth moves), and each step is set against the
     * bandwidth measured next to it. */
    const size_t copy_n = (size_t)256 << 20;
    char *copy_src = big_alloc(copy_n), *copy_dst = big_alloc(copy_n);
    memset(copy_src, 1, copy_n);
    memset(copy_dst, 2, copy_n);

    /* ---- Weights ---- */
    const size_t attn_bytes = fp8_bytes(QLORA, HID) + fp8_bytes((int64_t)NH * QHD, QLORA) +
                              fp8_bytes(KVLORA + ROPE, HID) +
                              fp8_bytes((int64_t)NH * (NOPE + VD), KVLORA) +
                              fp8_bytes(HID, (int64_t)NH * VD);
    const size_t expert_bytes = 2 * fp8_bytes(INTER, HID) + fp8_bytes(HID, INTER);
    const size_t router_bytes = (size_t)NE * HID * 2;
    double t_fill = now_s();
    uint8_t *attn = big_alloc(attn_bytes), *experts = big_alloc(expert_bytes * (NE + 1));
    fill_fp8(pool, attn, attn_bytes);
    fill_fp8(pool, experts, expert_bytes * (NE + 1));
    uint8_t *a = attn;
    struct native_mat q_a = fp8_mat(a, QLORA, HID);
    a += fp8_bytes(QLORA, HID);
    struct native_mat q_b = fp8_mat(a, (int64_t)NH * QHD, QLORA);
    a += fp8_bytes((int64_t)NH * QHD, QLORA);
    struct native_mat kv_a = fp8_mat(a, KVLORA + ROPE, HID);
    a += fp8_bytes(KVLORA + ROPE, HID);
    struct native_mat kv_b = fp8_mat(a, (int64_t)NH * (NOPE + VD), KVLORA);
    a += fp8_bytes((int64_t)NH * (NOPE + VD), KVLORA);
    struct native_mat o_proj = fp8_mat(a, HID, (int64_t)NH * VD);
    static struct native_mat eg[NE + 1], eu[NE + 1], ed[NE + 1];
    for (int e = 0; e <= NE; e++) {
        uint8_t *p = experts + (size_t)e * expert_bytes;
        eg[e] = fp8_mat(p, INTER, HID);
        eu[e] = fp8_mat(p + fp8_bytes(INTER, HID), INTER, HID);
        ed[e] = fp8_mat(p + 2 * fp8_bytes(INTER, HID), HID, INTER);
    }
    /* expert NE is the shared one */
    uint16_t *router_w = malloc(router_bytes);
    float *bias = malloc(sizeof(float) * NE), *norm_w = malloc(sizeof(float) * HID);
    for (size_t i = 0; i < (size_t)NE * HID; i++)
        router_w[i] = dtype_f32_to_bf16(frand() * 0.05f);
    for (int i = 0; i < NE; i++)
        bias[i] = frand() * 0.01f;
    for (int i = 0; i < HID; i++)
        norm_w[i] = 1.0f + 0.1f * frand();
    struct native_mat router = {o->map_weights(be, router_w, router_bytes), NATIVE_BF16, NE, HID, NULL};
    const float *norm_d = o->map_weights(be, norm_w, sizeof(float) * HID);
    const float *bias_d = o->map_weights(be, bias, sizeof(float) * NE);
    t_fill = now_s() - t_fill;

    /* ---- KV cache: B sequences with P positions of random latents ---- */
    const int BS = o->kv_block_size, nb = (P + 1 + BS - 1) / BS;
    struct native_kv_desc kd = {NATIVE_KV_LATENT, 1, 0, KVLORA, ROPE};
    char err[128];
    struct native_kv *kv = o->kv_new(be, &kd, B * nb, err, sizeof(err));
    if (!kv) {
        fprintf(stderr, "kv_new: %s\n", err);
        return 1;
    }
    int32_t *blocks = malloc(sizeof(int32_t) * (size_t)B * nb);
    struct native_seq_view *sv = malloc(sizeof(*sv) * (size_t)B);
    for (int s = 0; s < B; s++) {
        for (int i = 0; i < nb; i++)
            blocks[s * nb + i] = s * nb + i;
        sv[s] = (struct native_seq_view){blocks + s * nb, nb};
    }
    {
        const int W = KVLORA + ROPE;
        float *rows = malloc(sizeof(float) * (size_t)P * W);
        int32_t *pos = malloc(sizeof(int32_t) * (size_t)P), *seq = malloc(sizeof(int32_t) * (size_t)P);
        struct native_buf *rb = o->buf_alloc(be, sizeof(float) * (size_t)P * W);
        for (int s = 0; s < B; s++) {
            for (size_t i = 0; i < (size_t)P * W; i++)
                rows[i] = frand();
            for (int p = 0; p < P; p++) {
                pos[p] = p;
                seq[p] = s;
            }
            o->upload(be, rb, 0, rows, sizeof(float) * (size_t)P * W);
            struct native_batch hb = {P, pos, pos, seq, sv, B, NULL, 0};
            float *r = o->buf_addr(be, rb);
            o->kv_store(be, kv, 0, &hb, r, W, r + KVLORA, W);
        }
        o->buf_free(be, rb);
        free(rows);
        free(pos);
        free(seq);
    }

    /* ---- Activations ---- */
    struct native_mla mla = {NATIVE_MLA_ABSORB, NH, NOPE, ROPE, VD, KVLORA,
                             (float)(1.0 / sqrt((double)QHD)), kv_b};
    const size_t mla_scr = native_mla_scratch_floats(P + 1, &mla);
    const size_t moe_scr = native_moe_scratch_floats(B, TOPK, HID, INTER);
#define BUF(name, floats)                                                        \
    struct native_buf *name##_b = o->buf_alloc(be, sizeof(float) * (size_t)(floats)); \
    float *name = o->buf_addr(be, name##_b)
    BUF(x, B * HID);
    BUF(h, B * HID);
    BUF(qa, B * QLORA);
    BUF(qh, (size_t)B * NH * QHD);
    BUF(kva, B * (KVLORA + ROPE));
    BUF(att, (size_t)B * NH * VD);
    BUF(logits, B * NE);
    BUF(wts, B * TOPK);
    BUF(ids_f, B * TOPK);
    BUF(sg, B * INTER);
    BUF(su, B * INTER);
    BUF(mscr, mla_scr);
    BUF(escr, moe_scr);
#undef BUF
    int32_t *ids = (int32_t *)ids_f;
    float *cs = malloc(sizeof(float) * (size_t)(P + 1) * ROPE / 2);
    float *sn = malloc(sizeof(float) * (size_t)(P + 1) * ROPE / 2);
    for (int p = 0; p <= P; p++)
        for (int i = 0; i < ROPE / 2; i++) {
            double ang = p * pow(10000.0, -2.0 * i / ROPE);
            cs[p * ROPE / 2 + i] = (float)cos(ang);
            sn[p * ROPE / 2 + i] = (float)sin(ang);
        }
    struct native_rope rope = {NATIVE_ROPE_ADJACENT, ROPE, P + 1, cs, sn};
    int32_t *pos = malloc(sizeof(int32_t) * B), *seq = malloc(sizeof(int32_t) * B);
    for (int t = 0; t < B; t++) {
        pos[t] = P;
        seq[t] = t;
    }
    struct native_batch batch = {B, pos, pos, seq, sv, B, NULL, 0};
    struct native_moe_gate gate = {NE, TOPK, NGROUP, TOPKG, 1, 2.5f, bias_d};
    struct native_moe_experts me = {NE, HID, INTER, eg, eu, ed};
    float *xh = malloc(sizeof(float) * (size_t)B * HID);
    int32_t *ids_h = malloc(sizeof(int32_t) * (size_t)B * TOPK);

    /* parts: 0 attention projections (q_a, q_b, kv_a, norms, rope, store),
     * 1 mla_attention, 2 o_proj, 3 router + gate, 4 routed experts,
     * 5 shared expert */
    enum { N_PARTS = 6 };
    static const char *part_name[N_PARTS] = {"attn_proj", "mla", "o_proj", "router_gate", "experts",
                                             "shared"};
    double *t_part[N_PARTS];
    for (int k = 0; k < N_PARTS; k++)
        t_part[k] = calloc((size_t)steps, sizeof(double));
    double tp[N_PARTS + 1];
    double *t_step = calloc((size_t)steps, sizeof(double)), *t_attn = calloc((size_t)steps, sizeof(double));
    double *bound = calloc((size_t)steps, sizeof(double));
    double *step_bytes = calloc((size_t)steps, sizeof(double));
    double *bw_step = calloc((size_t)steps, sizeof(double)), *ratio = calloc((size_t)steps, sizeof(double));
    int *distinct = calloc((size_t)steps, sizeof(int));
    for (int it = -1; it < steps; it++) {   /* it = -1: warm-up, not recorded */
        for (size_t i = 0; i < (size_t)B * HID; i++)
            xh[i] = frand();
        o->upload(be, x_b, 0, xh, sizeof(float) * (size_t)B * HID);
        const double copy_bw = copy_bandwidth(pool, threads, copy_src, copy_dst, copy_n, 3);
        o->synchronize(be);
        double t0 = now_s();
        tp[0] = t0;
        /* attention */
        o->rmsnorm(be, h, x, norm_d, B, HID, HID, 1e-6f);
        float *y1[1] = {qa};
        o->matmul(be, B, h, 1, &q_a, y1, 0);
        o->rmsnorm(be, qa, qa, norm_d, B, QLORA, QLORA, 1e-6f);
        float *y2[1] = {qh};
        o->matmul(be, B, qa, 1, &q_b, y2, 0);
        float *y3[1] = {kva};
        o->matmul(be, B, h, 1, &kv_a, y3, 0);
        o->rmsnorm(be, kva, kva, norm_d, B, KVLORA, KVLORA + ROPE, 1e-6f);
        o->rope(be, qh + NOPE, B, NH, QHD, NH * QHD, pos, &rope);
        o->rope(be, kva + KVLORA, B, 1, KVLORA + ROPE, KVLORA + ROPE, pos, &rope);
        o->kv_store(be, kv, 0, &batch, kva, KVLORA + ROPE, kva + KVLORA, KVLORA + ROPE);
        o->synchronize(be);
        tp[1] = now_s();
        o->mla_attention(be, att, qh, kv, 0, &batch, &mla, mscr);
        o->synchronize(be);
        tp[2] = now_s();
        float *y4[1] = {x};
        o->matmul(be, B, att, 1, &o_proj, y4, 1);
        o->synchronize(be);
        double t1 = now_s();
        tp[3] = t1;
        /* MoE */
        o->rmsnorm(be, h, x, norm_d, B, HID, HID, 1e-6f);
        float *y5[1] = {logits};
        o->matmul(be, B, h, 1, &router, y5, 0);
        o->moe_gate(be, ids, wts, logits, B, &gate);
        o->synchronize(be);
        tp[4] = now_s();
        o->moe_experts(be, x, h, B, ids, wts, TOPK, &me, escr);
        o->synchronize(be);
        tp[5] = now_s();
        float *y6[2] = {sg, su};
        struct native_mat gu[2] = {eg[NE], eu[NE]};
        o->matmul(be, B, h, 2, gu, y6, 0);
        o->swiglu(be, sg, sg, su, (size_t)B * INTER);
        float *y7[1] = {x};
        o->matmul(be, B, sg, 1, &ed[NE], y7, 1);
        o->synchronize(be);
        double t2 = now_s();
        tp[6] = t2;
        if (it < 0)
            continue;
        for (int k = 0; k < N_PARTS; k++)
            t_part[k][it] = tp[k + 1] - tp[k];
        o->download(be, ids_h, ids_f_b, 0, sizeof(int32_t) * (size_t)B * TOPK);
        unsigned char seen[NE] = {0};
        int nd = 0;
        for (int i = 0; i < B * TOPK; i++)
            if (!seen[ids_h[i]]) {
                seen[ids_h[i]] = 1;
                nd++;
            }
        const double bytes = (double)attn_bytes + (double)router_bytes +
                             (double)expert_bytes * (1 + nd) +
                             (double)B * (P + 1) * (KVLORA + ROPE) * sizeof(float);
        t_step[it] = t2 - t0;
        t_attn[it] = t1 - t0;
        bound[it] = bytes / copy_bw;
        step_bytes[it] = bytes;
        bw_step[it] = copy_bw;
        ratio[it] = bound[it] / t_step[it];
        distinct[it] = nd;
    }
    double *cp = malloc(sizeof(double) * (size_t)steps);
#define MEDIAN(arr) (memcpy(cp, (arr), sizeof(double) * (size_t)steps),                  \
                     qsort(cp, (size_t)steps, sizeof(double), cmp_double), cp[steps / 2])
    const double med_step = MEDIAN(t_step), med_attn = MEDIAN(t_attn), med_bound = MEDIAN(bound);
    const double med_bw = MEDIAN(bw_step), med_ratio = MEDIAN(ratio);
    double lo = ratio[0], hi = ratio[0];
    for (int i = 1; i < steps; i++) {
        lo = ratio[i] < lo ? ratio[i] : lo;
        hi = ratio[i] > hi ? ratio[i] : hi;
    }
    /* of_bound: the median over steps of (that step's bound / its time). */
    printf("{\"scenario\":\"v3_layer_decode\",\"kernels\":\"%s\",\"threads\":%d,\"batch\":%d,"
           "\"ctx\":%d,\"thp\":%d,\"steps\":%d,\"fill_s\":%.1f,\"copy_gb_s_median\":%.2f,"
           "\"step_ms_median\":%.2f,\"attn_ms_median\":%.2f,\"bound_ms_median\":%.2f,"
           "\"of_bound_median\":%.3f,\"of_bound_min\":%.3f,\"of_bound_max\":%.3f,\"steps_ms\":[",
           ops_cpu_kernels(be), threads, B, P, use_thp, steps, t_fill, med_bw / 1e9,
           med_step * 1e3, med_attn * 1e3, med_bound * 1e3, med_ratio, lo, hi);
    for (int i = 0; i < steps; i++)
        printf("%s%.2f", i ? "," : "", t_step[i] * 1e3);
    printf("],\"bound_ms\":[");
    for (int i = 0; i < steps; i++)
        printf("%s%.2f", i ? "," : "", bound[i] * 1e3);
    printf("],\"copy_gb_s\":[");
    for (int i = 0; i < steps; i++)
        printf("%s%.1f", i ? "," : "", bw_step[i] / 1e9);
    printf("],\"step_mb\":[");
    for (int i = 0; i < steps; i++)
        printf("%s%.1f", i ? "," : "", step_bytes[i] / 1e6);
    printf("],\"distinct_experts\":[");
    for (int i = 0; i < steps; i++)
        printf("%s%d", i ? "," : "", distinct[i]);
    printf("]");
    for (int k = 0; k < N_PARTS; k++) {
        printf(",\"%s_ms\":%.2f", part_name[k], MEDIAN(t_part[k]) * 1e3);
    }
#undef MEDIAN
    printf(",\"attn_weight_bytes\":%zu,\"expert_bytes\":%zu}\n", attn_bytes, expert_bytes);
    return 0;
}
