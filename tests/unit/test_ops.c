/* test_ops.c: every CPU op against a plain reference loop (in double), for
 * every kernel build the CPU runs (AVX-512 BF16, AVX-512, AVX2, portable),
 * with one and two threads, on shapes with ragged edges; plus the
 * invariances the scheduler relies on: a token's result is bit-identical
 * alone or in a batch, and whatever the thread count.
 *
 * The AVX-512 BF16 kernels round x to BF16 before the product (ops_cpu_bf16.c).
 * Against a reference that rounds x the same way they keep the float
 * kernels' tolerance (1e-5 of sum |w x|: float accumulation only); against
 * the float reference they stay within 2^-8 of sum |w x| (the rounding of
 * each x is at most 2^-9 relative, plus accumulation). */
#include "engines/native/backend/dtype.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#include "tests/unit/test.h"

#include <math.h>
#include <stdint.h>

static uint64_t rng_state = 12345;

static double urand(void)      /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

static void fill(float *x, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(urand() * scale);
}

/* A weight matrix in dtype dt holding values near the floats in src; the
 * reference reads the stored (rounded) values back. */
static void *make_weights(const float *src, size_t n, enum native_dtype dt)
{
    if (dt == NATIVE_F32) {
        float *w = malloc(n * 4);
        memcpy(w, src, n * 4);
        return w;
    }
    uint16_t *w = malloc(n * 2);
    for (size_t i = 0; i < n; i++)
        w[i] = dt == NATIVE_BF16 ? dtype_f32_to_bf16(src[i]) : dtype_f32_to_f16(src[i]);
    return w;
}

static double wval(const void *w, enum native_dtype dt, size_t i)
{
    if (dt == NATIVE_F32)
        return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    return dt == NATIVE_BF16 ? dtype_bf16_to_f32(h) : dtype_f16_to_f32(h);
}

static void test_dtype(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            continue;   /* NaN payloads need not round-trip */
        if (dtype_f32_to_f16(dtype_f16_to_f32((uint16_t)h)) != h)
            bad++;
    }
    CHECK(bad == 0);
    CHECK(dtype_f16_to_f32(0x3c00) == 1.0f);
    CHECK(dtype_f16_to_f32(0x0001) == ldexpf(1.0f, -24));     /* smallest subnormal */
    CHECK(dtype_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(dtype_f32_to_f16(65520.0f) == 0x7c00);               /* rounds to inf */
    CHECK(dtype_f32_to_f16(1.0f + ldexpf(1.0f, -11)) == 0x3c00);   /* tie to even */
    CHECK(dtype_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)) == 0x3c02);
    CHECK(dtype_f32_to_f16(ldexpf(1.0f, -25)) == 0x0000);      /* half the smallest: tie to 0 */
    CHECK(dtype_f32_to_f16(ldexpf(1.5f, -25)) == 0x0001);
    CHECK(dtype_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(dtype_bf16_to_f32(0x3f80) == 1.0f);
    CHECK(dtype_f32_to_bf16(1.0f + ldexpf(1.0f, -8)) == 0x3f80);   /* tie to even */
    CHECK(dtype_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)) == 0x3f82);
    CHECK(isnan(dtype_bf16_to_f32(dtype_f32_to_bf16(NAN))));
}

struct shape {
    int rows, cols, n;
};

/* x as the BF16 kernels see it: rounded to BF16, nearest even. */
static double xval(const float *x, size_t i, int bf16x)
{
    return bf16x ? dtype_bf16_to_f32(dtype_f32_to_bf16(x[i])) : x[i];
}

static void test_matmul(struct native_backend *b, const char *what)
{
    static const struct shape shapes[] = {
        {1, 1, 1}, {5, 7, 1}, {13, 64, 3}, {172, 64, 7}, {64, 172, 16}, {37, 100, 50},
        {300, 33, 2}, {512, 256, 9}, {9, 16, 4}, {21, 300, 13}, {16, 517, 1}, {10, 1024, 7},
        /* Every BF16 tile (8x1, 4 x 1..6, 1 x 1..6), K a multiple of 32 and not. */
        {67, 2048, 16}, {11, 96, 5}, {13, 33, 11}, {8, 64, 2},
    };
    const int bf16k = strcmp(what, "avx512bf16") == 0;
    static const enum native_dtype dts[] = {NATIVE_F32, NATIVE_F16, NATIVE_BF16};
    int fails = 0;

    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
        for (size_t di = 0; di < 3; di++) {
            const struct shape s = shapes[si];
            const enum native_dtype dt = dts[di];
            size_t nw = (size_t)s.rows * s.cols;
            float *src = malloc(nw * 4), *x = malloc((size_t)s.n * s.cols * 4);
            float *y = malloc((size_t)s.n * s.rows * 4);
            fill(src, nw, 1.0);
            fill(x, (size_t)s.n * s.cols, 1.0);
            void *wd = make_weights(src, nw, dt);
            struct native_mat w = {wd, dt, s.rows, s.cols, NULL};
            for (int acc = 0; acc < 2; acc++) {
                for (size_t i = 0; i < (size_t)s.n * s.rows; i++)
                    y[i] = 0.5f;
                b->ops->matmul(b, s.n, x, 1, &w, &y, acc);
                const int bf16x = bf16k && dt == NATIVE_BF16;
                for (int t = 0; t < s.n; t++) {
                    for (int r = 0; r < s.rows; r++) {
                        double ref = acc ? 0.5 : 0.0, mag = 0.0, ref_f = ref;
                        for (int c = 0; c < s.cols; c++) {
                            const size_t xi = (size_t)t * s.cols + c;
                            const double wv = wval(wd, dt, (size_t)r * s.cols + c);
                            double p = wv * xval(x, xi, bf16x);
                            ref += p;
                            ref_f += wv * x[xi];
                            mag += fabs(p);
                        }
                        double got = y[(size_t)t * s.rows + r];
                        if (fabs(got - ref) > 1e-5 * mag + 1e-6)
                            fails++;
                        if (fabs(got - ref_f) > ldexp(1.0, -8) * mag + 1e-6)
                            fails++;
                    }
                }
            }
            free(src);
            free(x);
            free(y);
            free(wd);
        }
    }
    if (fails)
        fprintf(stderr, "matmul (%s): %d wrong values\n", what, fails);
    CHECK(fails == 0);
}

/* Batch invariance, strictly: y for token t computed in a batch of n equals
 * y computed alone, bit for bit (no accumulate). */
static void test_matmul_invariance_shape(struct native_backend *b, struct native_backend *b1,
                                         const int rows, const int cols, const int n)
{
    float *src = malloc(rows * cols * 4), *x = malloc(n * cols * 4);
    float *y = malloc(n * rows * 4), *y1 = malloc(rows * 4), *yt = malloc(n * rows * 4);
    fill(src, rows * cols, 1.0);
    fill(x, n * cols, 1.0);
    int diff = 0;
    for (int dt = 0; dt < 3; dt++) {
        void *wd = make_weights(src, rows * cols, (enum native_dtype)dt);
        struct native_mat w = {wd, (enum native_dtype)dt, rows, cols, NULL};
        b->ops->matmul(b, n, x, 1, &w, &y, 0);
        b1->ops->matmul(b1, n, x, 1, &w, &yt, 0);      /* one thread */
        diff += memcmp(y, yt, n * rows * 4) != 0;
        for (int t = 0; t < n; t++) {
            b->ops->matmul(b, 1, x + t * cols, 1, &w, &y1, 0);
            diff += memcmp(y1, y + t * rows, rows * 4) != 0;
        }
        /* Three weights in one call give what three calls give. */
        struct native_mat ws[3] = {w, w, w};
        float *o3[3] = {yt, y1, yt};
        b->ops->matmul(b, 1, x, 3, ws, o3, 0);
        diff += memcmp(y1, y, rows * 4) != 0;
        free(wd);
    }
    CHECK(diff == 0);
    free(src);
    free(x);
    free(y);
    free(y1);
    free(yt);
}

static void test_matmul_invariance(struct native_backend *b, struct native_backend *b1)
{
    test_matmul_invariance_shape(b, b1, 200, 172, 16);
    /* Big enough to split over the pool, K not a multiple of 32, and a batch
     * that crosses a 48-token block with a ragged last tile. */
    test_matmul_invariance_shape(b, b1, 203, 2050, 53);
}

static void test_rmsnorm(struct native_backend *b)
{
    const int dim = 67, n = 5;
    float x[5 * 67], w[67], y[5 * 67];
    fill(x, n * dim, 3.0);
    fill(w, dim, 1.0);
    b->ops->rmsnorm(b, y, x, w, n, dim, dim, 1e-5f);
    int bad = 0;
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int i = 0; i < dim; i++)
            ss += (double)x[t * dim + i] * x[t * dim + i];
        double inv = 1.0 / sqrt(ss / dim + 1e-5);
        for (int i = 0; i < dim; i++)
            if (fabs(y[t * dim + i] - w[i] * x[t * dim + i] * inv) > 1e-5)
                bad++;
    }
    /* In place, too. */
    b->ops->rmsnorm(b, x, x, w, n, dim, dim, 1e-5f);
    CHECK(memcmp(x, y, sizeof(y)) == 0);
    CHECK(bad == 0);
}

static void test_rope(struct native_backend *b)
{
    const int hd = 16, half = 8, heads = 3, npos = 40;
    float cosv[40 * 8], sinv[40 * 8];
    for (int p = 0; p < npos; p++)
        for (int i = 0; i < half; i++) {
            double a = p / 4.0 * pow(100000.0, -2.0 * i / hd);
            cosv[p * half + i] = (float)cos(a);
            sinv[p * half + i] = (float)sin(a);
        }
    struct native_rope adj = {NATIVE_ROPE_ADJACENT, hd, npos, cosv, sinv};
    struct native_rope hf = {NATIVE_ROPE_HALF, hd, npos, cosv, sinv};
    int32_t pos[2] = {0, 37};
    float x[2 * 3 * 16], xa[2 * 3 * 16], xp[2 * 3 * 16];
    fill(x, sizeof(x) / 4, 1.0);
    memcpy(xa, x, sizeof(x));
    b->ops->rope(b, xa, 2, heads, hd, heads * hd, pos, &adj);
    int bad = 0;
    for (int t = 0; t < 2; t++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++) {
                const float *v = x + (t * heads + h) * hd;
                double a = pos[t] / 4.0 * pow(100000.0, -2.0 * i / hd);
                double r0 = v[2 * i] * cos(a) - v[2 * i + 1] * sin(a);
                double r1 = v[2 * i] * sin(a) + v[2 * i + 1] * cos(a);
                const float *o = xa + (t * heads + h) * hd;
                bad += fabs(o[2 * i] - r0) > 1e-5 || fabs(o[2 * i + 1] - r1) > 1e-5;
            }
    CHECK(bad == 0);
    CHECK(memcmp(xa, x, 3 * 16 * 4) == 0);     /* position 0 is the identity */

    /* The converter's permutation (new j*half + i = old 2i + j) maps the
     * adjacent layout onto the half-split one: rope_half(P v) = P rope_adj(v). */
    for (int t = 0; t < 2; t++)
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < 2; j++)
                for (int i = 0; i < half; i++)
                    xp[(t * heads + h) * hd + j * half + i] = x[(t * heads + h) * hd + 2 * i + j];
    b->ops->rope(b, xp, 2, heads, hd, heads * hd, pos, &hf);
    bad = 0;
    for (int t = 0; t < 2; t++)
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < 2; j++)
                for (int i = 0; i < half; i++)
                    bad += xp[(t * heads + h) * hd + j * half + i] != xa[(t * heads + h) * hd + 2 * i + j];
    CHECK(bad == 0);
}

/* Attention over a paged cache with shuffled block tables, against a
 * straightforward softmax in double. */
static void test_attention(struct native_backend *b, int n_heads, int n_kv, int hd, const char *what)
{
    const int BS = OPS_CPU_BLOCK_SIZE, n_blocks = 16, layers = 2, layer = 1;
    const int kvd = n_kv * hd;
    char err[128];
    struct native_kv_desc kvd_desc = {.kind = NATIVE_KV_DENSE, .n_layers = layers, .kv_dim = kvd};
    struct native_kv *kv = b->ops->kv_new(b, &kvd_desc, n_blocks, err, sizeof(err));
    CHECK(kv != NULL && b->ops->kv_block_size == BS);

    /* Two sequences: A holds 41 positions in blocks {7, 2, 12}, B 16 in {5}. */
    int32_t blocks_a[3] = {7, 2, 12}, blocks_b[1] = {5};
    struct native_seq_view seqs[2] = {{blocks_a, 3}, {blocks_b, 1}};
    const int len[2] = {41, 16};
    float *keys[2], *vals[2];
    for (int s = 0; s < 2; s++) {
        keys[s] = malloc((size_t)len[s] * kvd * 4);
        vals[s] = malloc((size_t)len[s] * kvd * 4);
        fill(keys[s], (size_t)len[s] * kvd, 1.0);
        fill(vals[s], (size_t)len[s] * kvd, 1.0);
        /* Store every position, one token at a time and in one batch. */
        int32_t *pos = malloc(len[s] * 4), *seq = malloc(len[s] * 4);
        for (int p = 0; p < len[s]; p++) {
            pos[p] = p;
            seq[p] = s;
        }
        struct native_batch bt = {len[s], NULL, pos, seq, seqs, 2, NULL, 0};
        b->ops->kv_store(b, kv, layer, &bt, keys[s], kvd, vals[s], kvd);
        free(pos);
        free(seq);
    }

    /* Queries: A at positions 0, 15, 16, 40; B at 15. */
    const int nt = 5;
    int32_t qpos[5] = {0, 15, 16, 40, 15}, qseq[5] = {0, 0, 0, 0, 1};
    float *q = malloc((size_t)nt * n_heads * hd * 4), *out = malloc((size_t)nt * n_heads * hd * 4);
    fill(q, (size_t)nt * n_heads * hd, 2.0);
    struct native_batch bt = {nt, NULL, qpos, qseq, seqs, 2, NULL, 0};
    b->ops->attention(b, out, q, kv, layer, &bt, n_heads, n_kv, hd);

    int bad = 0;
    double *sc = malloc(64 * sizeof(double));
    for (int t = 0; t < nt; t++) {
        for (int h = 0; h < n_heads; h++) {
            int g = h / (n_heads / n_kv), s = qseq[t], P = qpos[t] + 1;
            const float *qh = q + ((size_t)t * n_heads + h) * hd;
            double mx = -1e300, sum = 0;
            for (int p = 0; p < P; p++) {
                double d = 0;
                for (int i = 0; i < hd; i++)
                    d += (double)qh[i] * keys[s][(size_t)p * kvd + g * hd + i];
                sc[p] = d / sqrt((double)hd);
                mx = sc[p] > mx ? sc[p] : mx;
            }
            for (int p = 0; p < P; p++) {
                sc[p] = exp(sc[p] - mx);
                sum += sc[p];
            }
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int p = 0; p < P; p++)
                    o += sc[p] / sum * vals[s][(size_t)p * kvd + g * hd + i];
                if (fabs(o - out[((size_t)t * n_heads + h) * hd + i]) > 2e-5)
                    bad++;
            }
        }
    }
    if (bad)
        fprintf(stderr, "attention (%s, %d/%d heads, hd %d): %d wrong values\n", what, n_heads,
                n_kv, hd, bad);
    CHECK(bad == 0);

    /* A query alone gives the same bits as inside the batch. */
    float *one = malloc((size_t)n_heads * hd * 4);
    struct native_batch b1 = {1, NULL, &qpos[3], &qseq[3], seqs, 2, NULL, 0};
    b->ops->attention(b, one, q + (size_t)3 * n_heads * hd, kv, layer, &b1, n_heads, n_kv, hd);
    CHECK(memcmp(one, out + (size_t)3 * n_heads * hd, (size_t)n_heads * hd * 4) == 0);

    free(one);
    free(sc);
    free(q);
    free(out);
    for (int s = 0; s < 2; s++) {
        free(keys[s]);
        free(vals[s]);
    }
    b->ops->kv_free(b, kv);
}

static void test_swiglu(struct native_backend *b)
{
    enum { N = 203 };
    float g[N], u[N], h[N];
    fill(g, N, 20.0);
    fill(u, N, 2.0);
    g[0] = -100.0f;
    g[1] = 100.0f;
    g[2] = 0.0f;
    b->ops->swiglu(b, h, g, u, N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        double ref = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        if (fabs(h[i] - ref) > 1e-6 * fabs(ref) + 1e-30)
            bad++;
    }
    CHECK(bad == 0);
    /* In place (h == g). */
    b->ops->swiglu(b, g, g, u, N);
    CHECK(memcmp(g, h, sizeof(h)) == 0);
}

static void test_embed_gather(struct native_backend *b)
{
    float src[10 * 6];
    fill(src, 60, 1.0);
    int32_t ids[3] = {9, 0, 4};
    for (int dt = 0; dt < 3; dt++) {
        void *wd = make_weights(src, 60, (enum native_dtype)dt);
        struct native_mat tab = {wd, (enum native_dtype)dt, 10, 6, NULL};
        float x[18];
        b->ops->embed(b, x, &tab, ids, 3);
        int bad = 0;
        for (int t = 0; t < 3; t++)
            for (int i = 0; i < 6; i++)
                bad += x[t * 6 + i] != (float)wval(wd, (enum native_dtype)dt, (size_t)ids[t] * 6 + i);
        CHECK(bad == 0);
        free(wd);
    }
    float x[4 * 3] = {0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32}, d[2 * 3];
    int32_t rows[2] = {3, 1};
    b->ops->gather(b, d, x, rows, 2, 3);
    CHECK(d[0] == 30 && d[2] == 32 && d[3] == 10 && d[5] == 12);
}

int main(void)
{
    test_dtype();
    /* Every kernel set this CPU can run: AVX-512 matmul, AVX2, portable. */
    static const unsigned sets[4] = {0, OPS_CPU_NO_BF16, OPS_CPU_NO_AVX512, OPS_CPU_PORTABLE};
    static const char *const want[4] = {"avx512bf16", "avx512", "avx2", "portable"};
    for (int k = 0; k < 4; k++) {
        struct native_backend *probe = ops_cpu_new(1, sets[k]);
        int have = strcmp(ops_cpu_kernels(probe), want[k]) == 0;
        native_backend_free(probe);
        printf("%s kernels: %s\n", want[k], have ? "tested" : "not on this CPU");
        if (!have)
            continue;
        struct native_backend *b1 = ops_cpu_new(1, sets[k]), *b2 = ops_cpu_new(2, sets[k]);
        CHECK(b1 && b2);
        for (int t = 0; t < 2; t++) {
            struct native_backend *b = t ? b2 : b1;
            test_matmul(b, want[k]);
            test_rmsnorm(b);
            test_rope(b);
            test_attention(b, 8, 4, 8, want[k]);      /* stories260K's shape */
            test_attention(b, 4, 4, 128, want[k]);    /* DeepSeek-Coder's head_dim */
            test_attention(b, 6, 2, 16, want[k]);
            /* kv_dim 2048 (the 1.3B's): the store splits over the pool. */
            test_attention(b, 16, 16, 128, want[k]);
            test_swiglu(b);
            test_embed_gather(b);
        }
        test_matmul_invariance(b2, b1);
        native_backend_free(b1);
        native_backend_free(b2);
    }
    /* The two BF16 kernel sets give the same bits (ops_cpu.h): vdpbf16ps, and
     * its arithmetic in pairs of FMAs, which the backend picks at start where
     * vdpbf16ps issues slowly. Each against the other, on 1 and 2 threads,
     * alone and batched, so a token's logits do not depend on that pick. */
    struct native_backend *dp1 = ops_cpu_new(1, OPS_CPU_BF16_DP), *dp2 = ops_cpu_new(2, OPS_CPU_BF16_DP);
    struct native_backend *fma1 = ops_cpu_new(1, OPS_CPU_BF16_FMA), *fma2 = ops_cpu_new(2, OPS_CPU_BF16_FMA);
    CHECK(dp1 && dp2 && fma1 && fma2);
    if (strcmp(ops_cpu_bf16_kernels(dp1), "vdpbf16ps") == 0 && strcmp(ops_cpu_bf16_kernels(fma1), "fma") == 0) {
        printf("BF16 kernel sets vdpbf16ps and fma: compared\n");
        test_matmul_invariance(dp2, fma1);
        test_matmul_invariance(fma2, dp1);
    } else {
        printf("BF16 kernel sets vdpbf16ps and fma: not on this CPU (no AVX512_BF16)\n");
    }
    native_backend_free(dp1);
    native_backend_free(dp2);
    native_backend_free(fma1);
    native_backend_free(fma2);
    TEST_MAIN_END();
}
