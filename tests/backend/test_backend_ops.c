/* test_backend_ops.c: every op of the table (ops.h), for every registered
 * backend, against a plain reference loop in double; in the style of ggml's
 * test-backend-ops.
 *
 * A backend is one line in `backends` below. Each case builds random inputs
 * on the host, moves them in only through the backend's own memory
 * (buf_alloc/upload, map_weights, kv_new + kv_store) and reads results back
 * only through download(), so a GPU backend runs the same cases unchanged.
 * Errors are measured as the normalized RMS error
 *   sqrt(sum (got - ref)^2 / sum ref^2)
 * against a tolerance chosen per op and weight dtype (the reference reads the
 * stored, rounded weights, so the tolerance covers float accumulation only).
 *
 * Beyond the loops: MLA's absorbed path equals its naive one; the routing
 * cases DeepSeek-V3 depends on (ties, a masked group, topk_group = n_group,
 * one group, the bias steering the choice but not the weights); and, for the
 * CPU, bit-identical results whatever the thread count or the batch around a
 * token.
 */
#include "engines/native/backend/cpu/ops_cpu.h"
#ifdef CASCADE_HAVE_CUDA
#include "engines/native/backend/cuda/ops_cuda.h"
#endif
#include "engines/native/backend/dtype.h"
#include "engines/native/backend/ops.h"
#include "tests/unit/test.h"

#include <math.h>
#include <stdint.h>

/* Setup the test cannot go on without (asserts vanish under NDEBUG). */
#define REQUIRE(c)                                                               \
    do {                                                                         \
        if (!(c)) {                                                              \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                             \
        }                                                                        \
    } while (0)

/* ---- The registry ---- */

static struct native_backend *cpu_default(void) { return ops_cpu_new(2, 0); }
static struct native_backend *cpu_avx2(void) { return ops_cpu_new(2, OPS_CPU_NO_AVX512); }
static struct native_backend *cpu_no_bf16(void) { return ops_cpu_new(2, OPS_CPU_NO_BF16); }
static struct native_backend *cpu_portable(void) { return ops_cpu_new(2, OPS_CPU_PORTABLE); }
static struct native_backend *cpu_one_thread(void) { return ops_cpu_new(1, 0); }

#ifdef CASCADE_HAVE_CUDA
/* Why the CUDA backend could not be made, for the SKIP or failure line. */
static char cuda_why[256];
static int cuda_devices;

static struct native_backend *cuda_first(void)
{
    cuda_devices = ops_cuda_device_count(cuda_why, sizeof(cuda_why));
    if (cuda_devices < 1)
        return NULL;
    return ops_cuda_new(0, cuda_why, sizeof(cuda_why));
}
#endif

/* gpu: run only by `test_backend_ops gpu` (CTest test_backend_ops_cuda,
 * label gpu), which reports SKIP with the reason when there is no device; the
 * plain run (label unit) takes the CPU lines, so a machine without a GPU
 * runs it green, CI=true included. */
static const struct backend_entry {
    const char *name;
    struct native_backend *(*make)(void);
    int gpu;
} backends[] = {
    {"cpu", cpu_default, 0},               /* AVX-512 (BF16) matmul where the CPU has it */
    {"cpu-avx512-float", cpu_no_bf16, 0},  /* the float AVX-512 tiles for BF16 weights */
    {"cpu-avx2", cpu_avx2, 0},
    {"cpu-portable", cpu_portable, 0},
    {"cpu-1thread", cpu_one_thread, 0},
#ifdef CASCADE_HAVE_CUDA
    {"cuda:0", cuda_first, 1},
#endif
};

/* ---- Random numbers and helpers ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double urand(void) /* uniform in [-1, 1) */
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

static float *frand(size_t n, double scale)
{
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(urand() * scale);
    return x;
}

static const char *cur_backend = "";
static const char *cur_case = "";
/* The backend under test rounds a matmul's activations to BF16 for BF16
 * weights (the CPU's AVX-512 BF16 kernels, ops_cpu_bf16.c); the references
 * then round x the same way, so the tolerances still measure accumulation. */
static int cur_bf16x;

static double xr(float v, enum native_dtype dt)
{
    return cur_bf16x && dt == NATIVE_BF16 ? dtype_bf16_to_f32(dtype_f32_to_bf16(v)) : v;
}

/* Normalized RMS error of got against ref; reports a failure above tol. */
static void check_close(const float *got, const double *ref, size_t n, double tol, const char *what)
{
    double num = 0, den = 0;
    int finite = 1;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]))
            finite = 0;
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    double err = den > 0 ? sqrt(num / den) : sqrt(num);
    if (getenv("TEST_VERBOSE") || !finite || !(err <= tol))
        fprintf(stderr, "  [%s] %s %s: error %.3g (tolerance %.3g)%s\n", cur_backend, cur_case, what, err, tol,
                finite ? "" : " (non-finite output)");
    CHECK(finite && err <= tol);
}

/* ---- Backend memory, freed per case ---- */

struct dev {
    struct native_backend *b;
    const struct native_ops *o;
    struct native_buf *bufs[64];
    int n_bufs;
    const void *maps[64];
    int n_maps;
};

static void *dalloc(struct dev *d, size_t bytes)
{
    struct native_buf *buf = d->o->buf_alloc(d->b, bytes ? bytes : 4);
    REQUIRE(buf && d->n_bufs < 64);
    d->bufs[d->n_bufs++] = buf;
    return d->o->buf_addr(d->b, buf);
}

/* A buffer holding a copy of host[0..bytes). */
static void *dup_in(struct dev *d, const void *host, size_t bytes)
{
    void *a = dalloc(d, bytes);
    d->o->upload(d->b, d->bufs[d->n_bufs - 1], 0, host, bytes);
    return a;
}

static struct native_buf *buf_of(struct dev *d, const void *addr)
{
    for (int i = 0; i < d->n_bufs; i++)
        if (d->o->buf_addr(d->b, d->bufs[i]) == addr)
            return d->bufs[i];
    REQUIRE(!"a buffer of this case");
    return NULL;
}

static void dl(struct dev *d, void *host, const void *addr, size_t bytes)
{
    d->o->download(d->b, host, buf_of(d, addr), 0, bytes);
}

static const void *dmap(struct dev *d, const void *host, size_t bytes)
{
    const void *a = d->o->map_weights(d->b, host, bytes);
    REQUIRE(a && d->n_maps < 64);
    d->maps[d->n_maps++] = a;
    return a;
}

static void dev_reset(struct dev *d)
{
    d->o->synchronize(d->b);
    for (int i = 0; i < d->n_bufs; i++)
        d->o->buf_free(d->b, d->bufs[i]);
    for (int i = 0; i < d->n_maps; i++)
        d->o->unmap_weights(d->b, d->maps[i]);
    d->n_bufs = d->n_maps = 0;
}

/* ---- Weights: a host matrix in a dtype, its block scales, and the reference view ---- */

struct hmat {
    enum native_dtype dt;
    int64_t rows, cols;
    void *data;
    float *scale;           /* F8 only */
    size_t bytes, scale_bytes;
};

/* Random weights of magnitude ~ amp. FP8 gets one scale per 128x128 block,
 * chosen so the block's largest value maps near 448 (as a quantizer does),
 * with magnitudes that differ between blocks. */
static struct hmat hmat_rand(enum native_dtype dt, int64_t rows, int64_t cols, double amp)
{
    struct hmat m = {dt, rows, cols, NULL, NULL, 0, 0};
    const size_t n = (size_t)rows * (size_t)cols;
    float *src = frand(n, amp);
    m.bytes = n * native_dtype_size(dt);
    m.data = malloc(m.bytes);
    if (dt == NATIVE_F32) {
        memcpy(m.data, src, m.bytes);
    } else if (dt == NATIVE_BF16 || dt == NATIVE_F16) {
        uint16_t *h = m.data;
        for (size_t i = 0; i < n; i++)
            h[i] = dt == NATIVE_BF16 ? dtype_f32_to_bf16(src[i]) : dtype_f32_to_f16(src[i]);
    } else {
        const int64_t rb = (rows + 127) / 128, cb = (cols + 127) / 128;
        m.scale_bytes = (size_t)(rb * cb) * sizeof(float);
        m.scale = malloc(m.scale_bytes);
        for (int64_t i = 0; i < rb * cb; i++)
            m.scale[i] = (float)(amp * (1.0 + 0.5 * urand()) / 448.0);
        uint8_t *q = m.data;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                q[r * cols + c] = dtype_f32_to_e4m3(src[r * cols + c] / m.scale[(r / 128) * cb + c / 128]);
    }
    free(src);
    return m;
}

static double hval(const struct hmat *m, int64_t r, int64_t c)
{
    const size_t i = (size_t)(r * m->cols + c);
    switch (m->dt) {
    case NATIVE_F32:
        return ((const float *)m->data)[i];
    case NATIVE_BF16:
        return dtype_bf16_to_f32(((const uint16_t *)m->data)[i]);
    case NATIVE_F16:
        return dtype_f16_to_f32(((const uint16_t *)m->data)[i]);
    case NATIVE_F8_E4M3:
        return (double)dtype_e4m3_to_f32(((const uint8_t *)m->data)[i]) *
               m->scale[(r / 128) * ((m->cols + 127) / 128) + c / 128];
    }
    return 0;
}

static void hmat_free(struct hmat *m)
{
    free(m->data);
    free(m->scale);
}

/* The backend's view of a host matrix. */
static struct native_mat dmat(struct dev *d, const struct hmat *m)
{
    struct native_mat w = {dmap(d, m->data, m->bytes), m->dt, m->rows, m->cols, NULL};
    if (m->scale)
        w.scale = dmap(d, m->scale, m->scale_bytes);
    return w;
}

/* Reference y[t][r] = sum_c x[t][c] w[r][c]. */
static void ref_matvec(const struct hmat *m, const float *x, int n, double *y)
{
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < m->rows; r++) {
            double s = 0;
            for (int64_t c = 0; c < m->cols; c++)
                s += hval(m, r, c) * xr(x[(size_t)t * m->cols + c], m->dt);
            y[(size_t)t * m->rows + r] = s;
        }
}

static double tol_of(enum native_dtype dt)
{
    /* Float accumulation over a few hundred terms, and for FP8 the block
     * scale applied to the block's partial sum. */
    return dt == NATIVE_F8_E4M3 ? 2e-6 : 1e-6;
}

static const enum native_dtype all_dtypes[] = {NATIVE_F32, NATIVE_F16, NATIVE_BF16, NATIVE_F8_E4M3};

/* ---- matmul ---- */

static void case_matmul(struct dev *d, enum native_dtype dt, int n, int n_w, const int64_t *rows,
                        int64_t cols, int accumulate)
{
    char what[96];
    snprintf(what, sizeof(what), "%s n=%d n_w=%d cols=%lld acc=%d", native_dtype_name(dt), n, n_w,
             (long long)cols, accumulate);
    cur_case = "matmul";
    struct hmat hm[4];
    struct native_mat w[4];
    float *y0[4], *yd[4];
    float *x = frand((size_t)n * cols, 1.0);
    float *xd = dup_in(d, x, sizeof(float) * (size_t)n * cols);
    for (int j = 0; j < n_w; j++) {
        hm[j] = hmat_rand(dt, rows[j], cols, 0.5);
        w[j] = dmat(d, &hm[j]);
        y0[j] = frand((size_t)n * rows[j], 1.0);
        yd[j] = dup_in(d, y0[j], sizeof(float) * (size_t)n * rows[j]);
    }
    d->o->matmul(d->b, n, xd, n_w, w, yd, accumulate);
    for (int j = 0; j < n_w; j++) {
        size_t ny = (size_t)n * rows[j];
        double *ref = malloc(ny * sizeof(double));
        float *got = malloc(ny * sizeof(float));
        ref_matvec(&hm[j], x, n, ref);
        if (accumulate)
            for (size_t i = 0; i < ny; i++)
                ref[i] += y0[j][i];
        dl(d, got, yd[j], ny * sizeof(float));
        check_close(got, ref, ny, tol_of(dt), what);
        free(ref);
        free(got);
        free(y0[j]);
        hmat_free(&hm[j]);
    }
    free(x);
    dev_reset(d);
}

static void test_matmul(struct dev *d)
{
    for (size_t k = 0; k < sizeof(all_dtypes) / sizeof(all_dtypes[0]); k++) {
        enum native_dtype dt = all_dtypes[k];
        const int64_t r1[] = {13}, r2[] = {130}, r3[] = {64, 8, 36}, r4[] = {257};
        case_matmul(d, dt, 1, 1, r1, 37, 0);         /* ragged everything, one token */
        case_matmul(d, dt, 3, 1, r2, 300, 0);        /* partial FP8 blocks in rows and cols */
        case_matmul(d, dt, 5, 3, r3, 256, 0);        /* q/k/v style: three weights, one input */
        case_matmul(d, dt, 17, 1, r4, 129, 1);       /* > 16 tokens, accumulate (residual) */
        case_matmul(d, dt, 2, 1, r2, 1, 1);          /* one column */
    }
}

/* ---- rmsnorm, with a stride ---- */

static void test_rmsnorm(struct dev *d)
{
    cur_case = "rmsnorm";
    const int n = 3, dim = 70, stride = 80;
    const float eps = 1e-5f;
    float *x = frand((size_t)n * stride, 2.0), *w = frand(dim, 1.0);
    for (int inplace = 0; inplace < 2; inplace++) {
        float *xd = dup_in(d, x, sizeof(float) * n * stride);
        float *wd = dup_in(d, w, sizeof(float) * dim);
        float *yd = inplace ? xd : dup_in(d, x, sizeof(float) * n * stride);
        d->o->rmsnorm(d->b, yd, xd, wd, n, dim, stride, eps);
        float got[3 * 80];
        double ref[3 * 80];
        dl(d, got, yd, sizeof(got));
        for (int t = 0; t < n; t++) {
            double ss = 0;
            for (int i = 0; i < dim; i++)
                ss += (double)x[t * stride + i] * x[t * stride + i];
            double inv = 1.0 / sqrt(ss / dim + eps);
            for (int i = 0; i < stride; i++)
                ref[t * stride + i] = i < dim ? x[t * stride + i] * inv * w[i] : x[t * stride + i];
        }
        check_close(got, ref, (size_t)n * stride, 1e-6, inplace ? "in place" : "out of place");
        dev_reset(d);
    }
    free(x);
    free(w);
}

/* ---- rope, both layouts, strided heads ---- */

static void test_rope(struct dev *d)
{
    cur_case = "rope";
    const int n = 3, H = 4, dim = 16, hs = 24, rs = H * hs + 8, n_pos = 40;
    const int32_t pos[3] = {0, 7, 39};
    float *cs = malloc(sizeof(float) * n_pos * dim / 2), *sn = malloc(sizeof(float) * n_pos * dim / 2);
    for (int p = 0; p < n_pos; p++)
        for (int i = 0; i < dim / 2; i++) {
            double a = p * pow(10000.0, -2.0 * i / dim);
            cs[p * dim / 2 + i] = (float)cos(a);
            sn[p * dim / 2 + i] = (float)sin(a);
        }
    for (int layout = 0; layout < 2; layout++) {
        struct native_rope r = {layout ? NATIVE_ROPE_HALF : NATIVE_ROPE_ADJACENT, dim, n_pos, cs, sn};
        float *x = frand((size_t)n * rs, 1.0);
        float *xd = dup_in(d, x, sizeof(float) * n * rs);
        d->o->rope(d->b, xd, n, H, hs, rs, pos, &r);
        double *ref = malloc(sizeof(double) * n * rs);
        float *got = malloc(sizeof(float) * n * rs);
        for (int i = 0; i < n * rs; i++)
            ref[i] = x[i];
        for (int t = 0; t < n; t++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < dim / 2; i++) {
                    const float *v = x + t * rs + h * hs;
                    double *o = ref + t * rs + h * hs;
                    int i0 = layout ? i : 2 * i, i1 = layout ? i + dim / 2 : 2 * i + 1;
                    double c = cs[pos[t] * dim / 2 + i], s = sn[pos[t] * dim / 2 + i];
                    o[i0] = v[i0] * c - v[i1] * s;
                    o[i1] = v[i0] * s + v[i1] * c;
                }
        dl(d, got, xd, sizeof(float) * n * rs);
        check_close(got, ref, (size_t)n * rs, 1e-6, layout ? "half" : "adjacent");
        free(x);
        free(ref);
        free(got);
        dev_reset(d);
    }
    free(cs);
    free(sn);
}

/* ---- A batch shaped like the scheduler's: sequence 0 prefills positions
 * 0..4 in this step; sequence 1 decodes position `late`, its earlier
 * positions stored by an earlier step. ---- */

struct tbatch {
    struct native_batch b, hist;     /* this step; sequence 1's history */
    int32_t tok[8], pos[8], seq[8], hpos[64], hseq[64];
    int32_t blocks0[4], blocks1[4];
    struct native_seq_view sv[2];
};

static void tbatch_init(struct tbatch *tb, int late, int block_size)
{
    memset(tb, 0, sizeof(*tb));
    REQUIRE(late < 64 && late + 1 <= 4 * block_size);
    for (int i = 0; i < 4; i++) {
        tb->blocks0[i] = 7 - 2 * i;     /* not in order: the table must be followed */
        tb->blocks1[i] = 2 * i;
    }
    tb->sv[0] = (struct native_seq_view){tb->blocks0, 4};
    tb->sv[1] = (struct native_seq_view){tb->blocks1, 4};
    for (int t = 0; t < 5; t++) {
        tb->pos[t] = t;
        tb->seq[t] = 0;
    }
    tb->pos[5] = late;
    tb->seq[5] = 1;
    tb->b = (struct native_batch){6, tb->tok, tb->pos, tb->seq, tb->sv, 2, NULL, 0};
    for (int p = 0; p < late; p++) {
        tb->hpos[p] = p;
        tb->hseq[p] = 1;
    }
    tb->hist = (struct native_batch){late, tb->tok, tb->hpos, tb->hseq, tb->sv, 2, NULL, 0};
}

/* ---- kv_store + attention (dense) ---- */

static void test_attention(struct dev *d, int H, int G, int hd)
{
    cur_case = "attention";
    const int late = 20, D = G * hd;
    struct tbatch tb;
    tbatch_init(&tb, late, d->o->kv_block_size);
    struct native_kv_desc desc = {NATIVE_KV_DENSE, 2, D, 0, 0};
    char err[128];
    struct native_kv *kv = d->o->kv_new(d->b, &desc, 8, err, sizeof(err));
    CHECK(kv != NULL);
    if (!kv)
        return;
    /* All K/V rows by (sequence, position): history first, then this step. */
    float *K[2], *Vv[2];
    for (int s = 0; s < 2; s++) {
        K[s] = frand((size_t)(late + 1) * D, 1.0);
        Vv[s] = frand((size_t)(late + 1) * D, 1.0);
    }
    float kb[6 * 256], vb[6 * 256];
    for (int t = 0; t < 6; t++) {
        int s = tb.seq[t], p = tb.pos[t];
        memcpy(kb + t * D, K[s] + p * D, sizeof(float) * D);
        memcpy(vb + t * D, Vv[s] + p * D, sizeof(float) * D);
    }
    const int layer = 1;
    d->o->kv_store(d->b, kv, layer, &tb.hist, dup_in(d, K[1], sizeof(float) * late * D), D,
                   dup_in(d, Vv[1], sizeof(float) * late * D), D);
    d->o->kv_store(d->b, kv, layer, &tb.b, dup_in(d, kb, sizeof(float) * 6 * D), D,
                   dup_in(d, vb, sizeof(float) * 6 * D), D);
    float *q = frand((size_t)6 * H * hd, 1.0);
    float *qd = dup_in(d, q, sizeof(float) * 6 * H * hd);
    float *od = dalloc(d, sizeof(float) * 6 * H * hd);
    d->o->attention(d->b, od, qd, kv, layer, &tb.b, H, G, hd);
    double *ref = calloc((size_t)6 * H * hd, sizeof(double));
    float *got = malloc(sizeof(float) * 6 * H * hd);
    for (int t = 0; t < 6; t++)
        for (int h = 0; h < H; h++) {
            int s = tb.seq[t], g = h / (H / G), np = tb.pos[t] + 1;
            double sc[64], m = -INFINITY, sum = 0;
            for (int p = 0; p < np; p++) {
                double a = 0;
                for (int i = 0; i < hd; i++)
                    a += (double)q[(t * H + h) * hd + i] * K[s][p * D + g * hd + i];
                sc[p] = a / sqrt((double)hd);
                m = sc[p] > m ? sc[p] : m;
            }
            for (int p = 0; p < np; p++)
                sum += (sc[p] = exp(sc[p] - m));
            for (int p = 0; p < np; p++)
                for (int i = 0; i < hd; i++)
                    ref[(t * H + h) * hd + i] += sc[p] / sum * Vv[s][p * D + g * hd + i];
        }
    dl(d, got, od, sizeof(float) * 6 * H * hd);
    char what[64];
    snprintf(what, sizeof(what), "H=%d G=%d hd=%d", H, G, hd);
    check_close(got, ref, (size_t)6 * H * hd, 1e-6, what);
    free(ref);
    free(got);
    free(q);
    for (int s = 0; s < 2; s++) {
        free(K[s]);
        free(Vv[s]);
    }
    d->o->kv_free(d->b, kv);
    dev_reset(d);
}

/* ---- attention over long contexts: three sequences in one step --
 * sequence 0 prefills positions 590..599 (a chunk after 590 stored ones),
 * sequence 1 decodes position 511 (exactly two 256-position pieces, where a
 * GPU splits a context), sequence 2 decodes position 256 (a piece of one
 * position) -- with block tables scattered over the pool. ---- */

static void test_attention_long(struct dev *d, int H, int G, int hd)
{
    cur_case = "attention long";
    enum { NS = 3, NOW = 12 };
    const int first[NS] = {590, 511, 256}, count[NS] = {10, 1, 1};
    const int D = G * hd, BS = d->o->kv_block_size;
    int32_t *tables[NS];
    struct native_seq_view sv[NS];
    int n_blocks = 0;
    for (int s = 0; s < NS; s++)
        n_blocks += (first[s] + count[s] + BS - 1) / BS;
    /* Block ids: a permutation of the pool (37 is prime to it). */
    const int pool = n_blocks + 5;
    REQUIRE(pool % 37 != 0);
    for (int s = 0, k = 0; s < NS; s++) {
        const int nb = (first[s] + count[s] + BS - 1) / BS;
        tables[s] = malloc(sizeof(int32_t) * nb);
        for (int i = 0; i < nb; i++, k++)
            tables[s][i] = (int32_t)((k * 37 + 3) % pool);
        sv[s] = (struct native_seq_view){tables[s], nb};
    }
    struct native_kv_desc desc = {NATIVE_KV_DENSE, 1, D, 0, 0};
    char err[128];
    struct native_kv *kv = d->o->kv_new(d->b, &desc, pool, err, sizeof(err));
    CHECK(kv != NULL);
    if (!kv)
        return;
    /* K/V rows by (sequence, position); the history of every sequence as
     * one earlier step, then this step's tokens. */
    float *K[NS], *V[NS];
    int n_hist = 0;
    for (int s = 0; s < NS; s++) {
        K[s] = frand((size_t)(first[s] + count[s]) * D, 1.0);
        V[s] = frand((size_t)(first[s] + count[s]) * D, 1.0);
        n_hist += first[s];
    }
    int32_t *hpos = malloc(sizeof(int32_t) * n_hist), *hseq = malloc(sizeof(int32_t) * n_hist);
    float *hk = malloc(sizeof(float) * (size_t)n_hist * D), *hv = malloc(sizeof(float) * (size_t)n_hist * D);
    for (int s = 0, t = 0; s < NS; s++)
        for (int p = 0; p < first[s]; p++, t++) {
            hpos[t] = p;
            hseq[t] = s;
            memcpy(hk + (size_t)t * D, K[s] + (size_t)p * D, sizeof(float) * D);
            memcpy(hv + (size_t)t * D, V[s] + (size_t)p * D, sizeof(float) * D);
        }
    struct native_batch hist = {n_hist, NULL, hpos, hseq, sv, NS, NULL, 0};
    d->o->kv_store(d->b, kv, 0, &hist, dup_in(d, hk, sizeof(float) * (size_t)n_hist * D), D,
                   dup_in(d, hv, sizeof(float) * (size_t)n_hist * D), D);
    int32_t pos[NOW], seq[NOW], tok[NOW] = {0};
    float nk[NOW * 256], nv[NOW * 256];
    for (int s = 0, t = 0; s < NS; s++)
        for (int i = 0; i < count[s]; i++, t++) {
            pos[t] = first[s] + i;
            seq[t] = s;
            memcpy(nk + t * D, K[s] + (size_t)pos[t] * D, sizeof(float) * D);
            memcpy(nv + t * D, V[s] + (size_t)pos[t] * D, sizeof(float) * D);
        }
    struct native_batch now = {NOW, tok, pos, seq, sv, NS, NULL, 0};
    native_begin_batch(d->b, &now);
    d->o->kv_store(d->b, kv, 0, &now, dup_in(d, nk, sizeof(float) * NOW * D), D,
                   dup_in(d, nv, sizeof(float) * NOW * D), D);
    const size_t nq = (size_t)NOW * H * hd;
    float *q = frand(nq, 1.0);
    float *od = dalloc(d, sizeof(float) * nq);
    d->o->attention(d->b, od, dup_in(d, q, sizeof(float) * nq), kv, 0, &now, H, G, hd);
    double *ref = calloc(nq, sizeof(double));
    double *sc = malloc(sizeof(double) * 1024);
    for (int t = 0; t < NOW; t++)
        for (int h = 0; h < H; h++) {
            const int s = seq[t], g = h / (H / G), np = pos[t] + 1;
            double m = -INFINITY, sum = 0;
            for (int p = 0; p < np; p++) {
                double a = 0;
                for (int i = 0; i < hd; i++)
                    a += (double)q[((size_t)t * H + h) * hd + i] * K[s][(size_t)p * D + g * hd + i];
                sc[p] = a / sqrt((double)hd);
                m = sc[p] > m ? sc[p] : m;
            }
            for (int p = 0; p < np; p++)
                sum += (sc[p] = exp(sc[p] - m));
            for (int p = 0; p < np; p++)
                for (int i = 0; i < hd; i++)
                    ref[((size_t)t * H + h) * hd + i] += sc[p] / sum * V[s][(size_t)p * D + g * hd + i];
        }
    float *got = malloc(sizeof(float) * nq);
    dl(d, got, od, sizeof(float) * nq);
    char what[64];
    snprintf(what, sizeof(what), "H=%d G=%d hd=%d", H, G, hd);
    check_close(got, ref, nq, 1e-6, what);
    free(got);
    free(ref);
    free(sc);
    free(q);
    free(hpos);
    free(hseq);
    free(hk);
    free(hv);
    for (int s = 0; s < NS; s++) {
        free(K[s]);
        free(V[s]);
        free(tables[s]);
    }
    d->o->kv_free(d->b, kv);
    dev_reset(d);
}

/* ---- kv_store (latent) + mla_attention, both modes ---- */

struct mla_shape {
    int H, nope, rope, v, L;
};

/* Runs mla_attention in `mode` on the test batch; out has 6 * H * v floats. */
static void run_mla(struct dev *d, const struct mla_shape *sh, const struct hmat *kvb, const float *c_all[2], const float *kpe_all[2],
                    const float *q, int late, enum native_mla_mode mode, float *out)
{
    struct tbatch tb;
    tbatch_init(&tb, late, d->o->kv_block_size);
    const int L = sh->L, R = sh->rope;
    struct native_kv_desc desc = {NATIVE_KV_LATENT, 2, 0, L, R};
    char err[128];
    struct native_kv *kv = d->o->kv_new(d->b, &desc, 8, err, sizeof(err));
    CHECK(kv != NULL);
    if (!kv)
        return;
    /* The latent arrives inside a wider row (MLA's kv_a output is
     * [c | k_pe]), so the strides are exercised: a_stride = bb_stride = L + R. */
    const int S = L + R;
    float *hist = malloc(sizeof(float) * (size_t)late * S), *now = malloc(sizeof(float) * 6 * S);
    for (int p = 0; p < late; p++) {
        memcpy(hist + p * S, c_all[1] + p * L, sizeof(float) * L);
        memcpy(hist + p * S + L, kpe_all[1] + p * R, sizeof(float) * R);
    }
    for (int t = 0; t < 6; t++) {
        int s = tb.seq[t], p = tb.pos[t];
        memcpy(now + t * S, c_all[s] + p * L, sizeof(float) * L);
        memcpy(now + t * S + L, kpe_all[s] + p * R, sizeof(float) * R);
    }
    float *hd_ = dup_in(d, hist, sizeof(float) * late * S);
    float *nd = dup_in(d, now, sizeof(float) * 6 * S);
    d->o->kv_store(d->b, kv, 0, &tb.hist, hd_, S, hd_ + L, S);
    d->o->kv_store(d->b, kv, 0, &tb.b, nd, S, nd + L, S);
    struct native_mla p = {mode, sh->H, sh->nope, sh->rope, sh->v, L,
                           (float)(1.0 / sqrt((double)(sh->nope + sh->rope))), dmat(d, kvb)};
    const int n_ctx = late + 1;
    float *scratch = dalloc(d, sizeof(float) * native_mla_scratch_floats(n_ctx, &p));
    float *qd = dup_in(d, q, sizeof(float) * 6 * sh->H * (sh->nope + sh->rope));
    float *od = dalloc(d, sizeof(float) * 6 * sh->H * sh->v);
    d->o->mla_attention(d->b, od, qd, kv, 0, &tb.b, &p, scratch);
    dl(d, out, od, sizeof(float) * 6 * sh->H * sh->v);
    free(hist);
    free(now);
    d->o->kv_free(d->b, kv);
    dev_reset(d);
}

/* late: the decoding sequence's position (it attends late + 1 positions). */
static void test_mla(struct dev *d, const struct mla_shape *sh, enum native_dtype dt, int late)
{
    cur_case = "mla_attention";
    const int H = sh->H, NP = sh->nope, R = sh->rope, V = sh->v, L = sh->L;
    struct hmat kvb = hmat_rand(dt, (int64_t)H * (NP + V), L, 0.3);
    const float *c_all[2], *kpe_all[2];
    for (int s = 0; s < 2; s++) {
        c_all[s] = frand((size_t)(late + 1) * L, 1.0);
        kpe_all[s] = frand((size_t)(late + 1) * R, 1.0);
    }
    float *q = frand((size_t)6 * H * (NP + R), 1.0);
    const size_t no = (size_t)6 * H * V;
    float *naive = malloc(sizeof(float) * no), *absorb = malloc(sizeof(float) * no);
    run_mla(d, sh, &kvb, c_all, kpe_all, q, late, NATIVE_MLA_NAIVE, naive);
    run_mla(d, sh, &kvb, c_all, kpe_all, q, late, NATIVE_MLA_ABSORB, absorb);

    /* Reference: decompress in double, as the naive formula reads. */
    struct tbatch tb;
    tbatch_init(&tb, late, d->o->kv_block_size);
    const double scale = 1.0 / sqrt((double)(NP + R));
    double *ref = calloc(no, sizeof(double));
    for (int t = 0; t < 6; t++)
        for (int h = 0; h < H; h++) {
            int s = tb.seq[t], np = tb.pos[t] + 1;
            const float *qn = q + ((size_t)t * H + h) * (NP + R), *qp = qn + NP;
            double sc[64], m = -INFINITY, sum = 0;
            for (int p = 0; p < np; p++) {
                const float *c = c_all[s] + p * L;
                double a = 0;
                for (int i = 0; i < NP; i++) {
                    double k = 0;
                    for (int j = 0; j < L; j++)
                        k += hval(&kvb, h * (NP + V) + i, j) * c[j];
                    a += qn[i] * k;
                }
                for (int i = 0; i < R; i++)
                    a += (double)qp[i] * kpe_all[s][p * R + i];
                sc[p] = a * (float)scale;
                m = sc[p] > m ? sc[p] : m;
            }
            for (int p = 0; p < np; p++)
                sum += (sc[p] = exp(sc[p] - m));
            for (int p = 0; p < np; p++) {
                const float *c = c_all[s] + p * L;
                for (int i = 0; i < V; i++) {
                    double v = 0;
                    for (int j = 0; j < L; j++)
                        v += hval(&kvb, h * (NP + V) + NP + i, j) * c[j];
                    ref[((size_t)t * H + h) * V + i] += sc[p] / sum * v;
                }
            }
        }
    char what[96];
    snprintf(what, sizeof(what), "%s H=%d nope=%d rope=%d v=%d L=%d", native_dtype_name(dt), H, NP, R,
             V, L);
    char w2[128];
    snprintf(w2, sizeof(w2), "naive %s", what);
    check_close(naive, ref, no, 2e-6, w2);
    snprintf(w2, sizeof(w2), "absorb %s", what);
    check_close(absorb, ref, no, 2e-6, w2);
    /* The two paths agree with each other as closely as either meets the reference. */
    double *nd = malloc(sizeof(double) * no);
    for (size_t i = 0; i < no; i++)
        nd[i] = naive[i];
    snprintf(w2, sizeof(w2), "absorb vs naive %s", what);
    check_close(absorb, nd, no, 2e-6, w2);
    free(nd);
    free(ref);
    free(naive);
    free(absorb);
    free(q);
    for (int s = 0; s < 2; s++) {
        free((void *)c_all[s]);
        free((void *)kpe_all[s]);
    }
    hmat_free(&kvb);
}

/* ---- swiglu, embed, gather ---- */

static void test_swiglu(struct dev *d)
{
    cur_case = "swiglu";
    const size_t n = 77;
    float *g = frand(n, 8.0), *u = frand(n, 2.0);
    double ref[77];
    for (size_t i = 0; i < n; i++)
        ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    for (int inplace = 0; inplace < 2; inplace++) {
        float *gd = dup_in(d, g, sizeof(float) * n), *ud = dup_in(d, u, sizeof(float) * n);
        float *hd = inplace ? gd : dalloc(d, sizeof(float) * n);
        float got[77];
        d->o->swiglu(d->b, hd, gd, ud, n);
        dl(d, got, hd, sizeof(got));
        check_close(got, ref, n, 1e-6, inplace ? "h = g" : "h apart");
        dev_reset(d);
    }
    free(g);
    free(u);
}

static void test_embed_gather(struct dev *d)
{
    cur_case = "embed";
    const int V = 11, D = 19, n = 4;
    const int32_t ids[4] = {3, 0, 10, 3};
    for (int k = 0; k < 3; k++) {
        struct hmat t = hmat_rand(all_dtypes[k], V, D, 1.0);
        struct native_mat w = dmat(d, &t);
        float *xd = dalloc(d, sizeof(float) * n * D);
        d->o->embed(d->b, xd, &w, ids, n);
        float got[4 * 19];
        double ref[4 * 19];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < D; j++)
                ref[i * D + j] = hval(&t, ids[i], j);
        dl(d, got, xd, sizeof(got));
        check_close(got, ref, (size_t)n * D, 0.0, native_dtype_name(t.dt));
        hmat_free(&t);
        dev_reset(d);
    }
    cur_case = "gather";
    float *src = frand((size_t)6 * D, 1.0);
    const int32_t rows[5] = {5, 1, 1, 0, 3};
    float *sd = dup_in(d, src, sizeof(float) * 6 * D), *dd = dalloc(d, sizeof(float) * 5 * D);
    d->o->gather(d->b, dd, sd, rows, 5, D);
    float got[5 * 19];
    double ref[5 * 19];
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < D; j++)
            ref[i * D + j] = src[rows[i] * D + j];
    dl(d, got, dd, sizeof(got));
    check_close(got, ref, (size_t)5 * D, 0.0, "rows");
    free(src);
    dev_reset(d);
}

/* ---- moe_gate ---- */

/* The reference router, written from the model's description: sort-based,
 * in double, sharing no code with any backend. */
static void ref_gate(const float *lg, const float *bias, int E, int K, int G, int TG, int norm,
                     double rs, int32_t *ids, double *w)
{
    double s[NATIVE_MAX_EXPERTS], bsc[NATIVE_MAX_EXPERTS], gsc[NATIVE_MAX_EXPERTS];
    int ok[NATIVE_MAX_EXPERTS], per = E / G;
    for (int e = 0; e < E; e++) {
        s[e] = (float)(1.0f / (1.0f + expf(-lg[e])));   /* the score as float32 holds it */
        bsc[e] = (float)((float)s[e] + (bias ? bias[e] : 0.0f));
        ok[e] = 1;
    }
    if (TG < G) {
        for (int j = 0; j < G; j++) {
            double a = -INFINITY, b2 = -INFINITY;   /* best and second best */
            for (int e = j * per; e < (j + 1) * per; e++) {
                if (bsc[e] > a) {
                    b2 = a;
                    a = bsc[e];
                } else if (bsc[e] > b2) {
                    b2 = bsc[e];
                }
            }
            gsc[j] = (float)(per > 1 ? (float)a + (float)b2 : a);
        }
        /* rank of group j = groups strictly better, or equal with a lower index */
        for (int j = 0; j < G; j++) {
            int rank = 0;
            for (int k = 0; k < G; k++)
                if (gsc[k] > gsc[j] || (gsc[k] == gsc[j] && k < j))
                    rank++;
            if (rank >= TG)
                for (int e = j * per; e < (j + 1) * per; e++)
                    ok[e] = 0;
        }
    }
    double sum = 0;
    for (int i = 0; i < K; i++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (ok[e] && (best < 0 || bsc[e] > bsc[best]))
                best = e;
        ids[i] = best;
        ok[best] = 0;
        w[i] = s[best];
        sum += (float)s[best];
    }
    for (int i = 0; i < K; i++)
        w[i] = (norm ? w[i] / sum : w[i]) * rs;
}

/* Runs the backend's gate on n tokens; ids and w out in host memory. */
static void run_gate(struct dev *d, const float *lg, const float *bias, int n,
                     const struct native_moe_gate *g, int32_t *ids, float *w)
{
    struct native_moe_gate gg = *g;
    float *ld = dup_in(d, lg, sizeof(float) * (size_t)n * g->n_experts);
    if (bias)
        gg.bias = dup_in(d, bias, sizeof(float) * g->n_experts);
    int32_t *idd = dalloc(d, sizeof(int32_t) * n * g->top_k);
    float *wd = dalloc(d, sizeof(float) * n * g->top_k);
    d->o->moe_gate(d->b, idd, wd, ld, n, &gg);
    dl(d, ids, idd, sizeof(int32_t) * n * g->top_k);
    dl(d, w, wd, sizeof(float) * n * g->top_k);
    dev_reset(d);
}

static void case_gate_random(struct dev *d, int E, int K, int G, int TG, int norm, int with_bias)
{
    const int n = 9;
    struct native_moe_gate g = {E, K, G, TG, norm, 2.5f, NULL};
    float *lg = frand((size_t)n * E, 3.0), *bias = with_bias ? frand(E, 0.5) : NULL;
    int32_t ids[9 * NATIVE_MAX_TOPK], rid[NATIVE_MAX_TOPK];
    float w[9 * NATIVE_MAX_TOPK];
    double rw[NATIVE_MAX_TOPK];
    int same = 1;
    double werr = 0;
    run_gate(d, lg, bias, n, &g, ids, w);
    for (int t = 0; t < n; t++) {
        ref_gate(lg + t * E, bias, E, K, G, TG, norm, 2.5, rid, rw);
        for (int i = 0; i < K; i++) {
            same &= ids[t * K + i] == rid[i];
            werr = fmax(werr, fabs(w[t * K + i] - rw[i]) / fabs(rw[i]));
        }
    }
    if (!same || werr > 1e-6)
        fprintf(stderr, "  [%s] moe_gate E=%d K=%d G=%d TG=%d: ids %s, weight error %.3g\n", cur_backend,
                E, K, G, TG, same ? "same" : "differ", werr);
    CHECK(same);
    CHECK(werr <= 1e-6);
    free(lg);
    free(bias);
}

static void test_moe_gate(struct dev *d)
{
    cur_case = "moe_gate";
    case_gate_random(d, 16, 4, 4, 2, 1, 1);     /* the tiny V3 shape */
    case_gate_random(d, 64, 8, 8, 4, 1, 1);     /* V3's ratios */
    case_gate_random(d, 16, 4, 4, 4, 1, 1);     /* topk_group == n_group: plain top-k */
    case_gate_random(d, 16, 3, 1, 1, 0, 0);     /* one group, no bias, unnormalized */
    case_gate_random(d, 8, 2, 8, 2, 1, 1);      /* groups of one expert */
    case_gate_random(d, 256, 8, 8, 4, 1, 1);    /* V3's real shape: 8 groups of 32 */

    int32_t ids[16];
    float w[16];

    /* Tied scores: every logit equal, so every choice is a tie; the lower
     * index wins each, for groups and experts alike. */
    {
        float lg[16] = {0};
        struct native_moe_gate g = {16, 4, 4, 2, 1, 1.0f, NULL};
        run_gate(d, lg, NULL, 1, &g, ids, w);
        CHECK(ids[0] == 0 && ids[1] == 1 && ids[2] == 2 && ids[3] == 3);
        CHECK(fabsf(w[0] - 0.25f) < 1e-7f && fabsf(w[3] - 0.25f) < 1e-7f);
        g.n_group = 1;
        g.topk_group = 1;
        run_gate(d, lg, NULL, 1, &g, ids, w);
        CHECK(ids[0] == 0 && ids[1] == 1 && ids[2] == 2 && ids[3] == 3);
    }
    /* A masked group: expert 0 has the best single score, but group 0's top
     * two sum (one high, one very low) loses to groups 1 and 2; expert 0 is
     * never chosen. With topk_group == n_group it is chosen first. */
    {
        float lg[16];
        for (int e = 0; e < 16; e++)
            lg[e] = e < 4 ? -6.0f : e < 8 ? 2.0f : e < 12 ? 1.5f : -1.0f;
        lg[0] = 6.0f;
        struct native_moe_gate g = {16, 4, 4, 2, 1, 1.0f, NULL};
        run_gate(d, lg, NULL, 1, &g, ids, w);
        int in_kept = 1;
        for (int i = 0; i < 4; i++)
            in_kept &= ids[i] >= 4 && ids[i] < 12;
        CHECK(in_kept);
        CHECK(ids[0] == 4 && ids[1] == 5 && ids[2] == 6 && ids[3] == 7);
        g.topk_group = 4;
        run_gate(d, lg, NULL, 1, &g, ids, w);
        CHECK(ids[0] == 0 && ids[1] == 4);
    }
    /* The bias steers the choice, not the weights: expert 9 (lowest score in
     * its group) is lifted into the top 4 by its bias, and its weight comes
     * from its own unbiased score. */
    {
        float lg[16], bias[16] = {0};
        for (int e = 0; e < 16; e++)
            lg[e] = (float)(16 - e) * 0.1f;
        bias[9] = 1.0f;
        struct native_moe_gate g = {16, 4, 2, 2, 1, 1.0f, NULL};
        run_gate(d, lg, bias, 1, &g, ids, w);
        CHECK(ids[0] == 9 && ids[1] == 0 && ids[2] == 1 && ids[3] == 2);
        double s[4], sum = 0;
        for (int i = 0; i < 4; i++)
            sum += s[i] = 1.0 / (1.0 + exp(-(double)lg[ids[i]]));
        CHECK(fabs(w[0] - s[0] / sum) < 1e-6 && fabs(w[1] - s[1] / sum) < 1e-6);
        /* Without the bias, expert 9 stays out. */
        run_gate(d, lg, NULL, 1, &g, ids, w);
        CHECK(ids[0] == 0 && ids[1] == 1 && ids[2] == 2 && ids[3] == 3);
    }
}

/* ---- moe_experts ---- */

struct experts_host {
    int E, D, I;
    struct hmat g[8], u[8], dn[8];
};

static void run_experts(struct dev *d, struct experts_host *eh, const float *x, const float *y0,
                        int n, const int32_t *ids, const float *wts, int K, float *y)
{
    struct native_mat gm[8], um[8], dm[8];
    for (int e = 0; e < eh->E; e++) {
        gm[e] = dmat(d, &eh->g[e]);
        um[e] = dmat(d, &eh->u[e]);
        dm[e] = dmat(d, &eh->dn[e]);
    }
    struct native_moe_experts me = {eh->E, eh->D, eh->I, gm, um, dm};
    float *xd = dup_in(d, x, sizeof(float) * n * eh->D);
    float *yd = dup_in(d, y0, sizeof(float) * n * eh->D);
    int32_t *idd = dup_in(d, ids, sizeof(int32_t) * n * K);
    float *wd = dup_in(d, wts, sizeof(float) * n * K);
    float *sc = dalloc(d, sizeof(float) * native_moe_scratch_floats(n, K, eh->D, eh->I));
    d->o->moe_experts(d->b, yd, xd, n, idd, wd, K, &me, sc);
    dl(d, y, yd, sizeof(float) * n * eh->D);
    dev_reset(d);
}

/* E <= 8 experts of dim D, inter I <= 64; n tokens with K experts each
 * (ids); the tokens `alone` run again one at a time. */
static void test_moe_experts(struct dev *d, enum native_dtype dt, int E, int D, int I, int n, int K,
                             const int32_t *ids, const int *alone, int n_alone)
{
    cur_case = "moe_experts";
    struct experts_host eh = {E, D, I, {{0}}, {{0}}, {{0}}};
    REQUIRE(E <= 8 && I <= 64);
    for (int e = 0; e < eh.E; e++) {
        eh.g[e] = hmat_rand(dt, eh.I, eh.D, 0.3);
        eh.u[e] = hmat_rand(dt, eh.I, eh.D, 0.3);
        eh.dn[e] = hmat_rand(dt, eh.D, eh.I, 0.3);
    }
    float *x = frand((size_t)n * eh.D, 1.0), *y0 = frand((size_t)n * eh.D, 1.0);
    float *wts = frand((size_t)n * K, 1.0);
    float *y = malloc(sizeof(float) * n * eh.D);
    run_experts(d, &eh, x, y0, n, ids, wts, K, y);

    double *ref = malloc(sizeof(double) * n * eh.D);
    for (int t = 0; t < n; t++) {
        for (int c = 0; c < eh.D; c++)
            ref[t * eh.D + c] = y0[t * eh.D + c];
        for (int i = 0; i < K; i++) {
            const int e = ids[t * K + i];
            double h[64];
            for (int r = 0; r < eh.I; r++) {
                double a = 0, b = 0;
                for (int c = 0; c < eh.D; c++) {
                    a += hval(&eh.g[e], r, c) * xr(x[t * eh.D + c], dt);
                    b += hval(&eh.u[e], r, c) * xr(x[t * eh.D + c], dt);
                }
                h[r] = a / (1.0 + exp(-a)) * b;
                h[r] = xr((float)h[r], dt);
            }
            for (int c = 0; c < eh.D; c++) {
                double o = 0;
                for (int r = 0; r < eh.I; r++)
                    o += hval(&eh.dn[e], c, r) * h[r];
                ref[t * eh.D + c] += wts[t * K + i] * o;
            }
        }
    }
    /* With BF16 activations the kernel rounds its float h, the reference its
     * double h: now and then one lands on the other side of a BF16 rounding
     * boundary (2^-8 of that term), hence the wider bound. */
    check_close(y, ref, (size_t)n * eh.D, cur_bf16x && dt == NATIVE_BF16 ? 2e-4 : tol_of(dt) * 2,
                native_dtype_name(dt));

    /* A token alone gets the same bits as inside the batch. */
    float *y1 = malloc(sizeof(float) * eh.D);
    for (int k = 0; k < n_alone; k++) {
        const int t = alone[k];
        run_experts(d, &eh, x + t * eh.D, y0 + t * eh.D, 1, ids + t * K, wts + t * K, K, y1);
        CHECK(memcmp(y1, y + t * eh.D, sizeof(float) * eh.D) == 0);
    }
    free(y1);

    /* moe_combine (expert parallelism: the rows come back from other ranks)
     * adds each pair's expert row exactly as moe_experts does: each row is
     * that expert alone with weight 1 on a zero y, then the combine must
     * give moe_experts' bits. */
    if (d->o->moe_combine) {
        cur_case = "moe_combine";
        const size_t P = (size_t)n * K;
        float *rows = malloc(sizeof(float) * P * eh.D), *zero = calloc(eh.D, sizeof(float));
        const float one = 1.0f;
        for (size_t q = 0; q < P; q++)
            run_experts(d, &eh, x + (q / K) * eh.D, zero, 1, ids + q, &one, 1, rows + q * eh.D);
        float *yd = dup_in(d, y0, sizeof(float) * n * eh.D);
        d->o->moe_combine(d->b, yd, dup_in(d, rows, sizeof(float) * P * eh.D), n,
                          dup_in(d, wts, sizeof(float) * P), K, eh.D);
        float *yc = malloc(sizeof(float) * n * eh.D);
        dl(d, yc, yd, sizeof(float) * n * eh.D);
        CHECK(memcmp(yc, y, sizeof(float) * n * eh.D) == 0);
        dev_reset(d);
        free(yc);
        free(rows);
        free(zero);
        cur_case = "moe_experts";
    }

    free(ref);
    free(x);
    free(y0);
    free(wts);
    free(y);
    for (int e = 0; e < eh.E; e++) {
        hmat_free(&eh.g[e]);
        hmat_free(&eh.u[e]);
        hmat_free(&eh.dn[e]);
    }
}

static void test_moe_experts_all(struct dev *d)
{
    /* Ragged rows (136, 40); expert 3 takes four of the five tokens, expert
     * 5 none. */
    static const int32_t ids5[15] = {3, 0, 1, 3, 2, 4, 1, 3, 0, 3, 4, 2, 0, 1, 2};
    static const int alone5[1] = {2};
    /* Rows of 16-multiples (a GPU's vector loads); expert 0 takes all 20
     * tokens (more than one GPU tile of 8), the others share the rest. */
    int32_t ids20[40];
    for (int t = 0; t < 20; t++) {
        ids20[2 * t] = 0;
        ids20[2 * t + 1] = 1 + t % 3;
    }
    static const int alone20[2] = {2, 13};
    const enum native_dtype dts[3] = {NATIVE_F32, NATIVE_BF16, NATIVE_F8_E4M3};
    for (int k = 0; k < 3; k++) {
        test_moe_experts(d, dts[k], 6, 136, 40, 5, 3, ids5, alone5, 1);
        test_moe_experts(d, dts[k], 4, 128, 64, 20, 2, ids20, alone20, 2);
    }
}

/* ---- FP8 matmul: a token's row is the same bits alone, in batches of
 * several sizes, and read from an unaligned copy (a GPU backend picks its
 * kernel by batch size and alignment; ops.h wants one result). ---- */

static void test_matmul_fp8_invariance(struct dev *d)
{
    cur_case = "matmul fp8 invariance";
    const int64_t rows = 136, cols = 512;
    const int N = 20, tok = 2;
    struct hmat m = hmat_rand(NATIVE_F8_E4M3, rows, cols, 0.5);
    float *x = frand((size_t)N * cols, 1.0);
    float *got = malloc(sizeof(float) * N * rows);
    float one[136];
    const int ns[4] = {20, 9, 3, 1};
    for (int k = 0; k < 4; k++) {
        struct native_mat w = dmat(d, &m);
        const float *xs = x + (ns[k] == 1 ? tok * cols : 0);
        float *xd = dup_in(d, xs, sizeof(float) * ns[k] * cols);
        float *yd = dalloc(d, sizeof(float) * ns[k] * rows), *out[1] = {yd};
        d->o->matmul(d->b, ns[k], xd, 1, &w, out, 0);
        dl(d, got, yd, sizeof(float) * ns[k] * rows);
        if (k == 0) {
            double *ref = malloc(sizeof(double) * N * rows);
            ref_matvec(&m, x, N, ref);
            check_close(got, ref, (size_t)N * rows, tol_of(NATIVE_F8_E4M3), "n=20 cols=512");
            free(ref);
            memcpy(one, got + tok * rows, sizeof(one));
        } else {
            CHECK(memcmp(one, got + (ns[k] == 1 ? 0 : tok * rows), sizeof(one)) == 0);
        }
        dev_reset(d);
    }
    /* The same token from an address 4 bytes past a 16-byte boundary. */
    {
        struct native_mat w = dmat(d, &m);
        float *buf = dalloc(d, sizeof(float) * (cols + 4));
        d->o->upload(d->b, d->bufs[d->n_bufs - 1], sizeof(float), x + tok * cols, sizeof(float) * cols);
        float *yd = dalloc(d, sizeof(float) * rows), *out[1] = {yd};
        d->o->matmul(d->b, 1, buf + 1, 1, &w, out, 0);
        dl(d, got, yd, sizeof(float) * rows);
        CHECK(memcmp(one, got, sizeof(one)) == 0);
        dev_reset(d);
    }
    free(got);
    free(x);
    hmat_free(&m);
}

/* ---- CPU only: one thread and two give the same bits ---- */

static void test_cpu_thread_invariance(void)
{
    cur_backend = "cpu threads";
    struct native_backend *b1 = ops_cpu_new(1, 0), *b2 = ops_cpu_new(2, 0);
    struct dev d1 = {b1, b1->ops, {0}, 0, {0}, 0}, d2 = {b2, b2->ops, {0}, 0, {0}, 0};
    /* FP8 matmul large enough to be split over the pool. */
    struct hmat m = hmat_rand(NATIVE_F8_E4M3, 520, 700, 0.5);
    const int n = 9;
    float *x = frand((size_t)n * 700, 1.0);
    float *y[2];
    struct dev *ds[2] = {&d1, &d2};
    for (int k = 0; k < 2; k++) {
        struct native_mat w = dmat(ds[k], &m);
        float *yd = dalloc(ds[k], sizeof(float) * n * 520);
        float *out[1] = {yd};
        ds[k]->o->matmul(ds[k]->b, n, dup_in(ds[k], x, sizeof(float) * n * 700), 1, &w, out, 0);
        y[k] = malloc(sizeof(float) * n * 520);
        dl(ds[k], y[k], yd, sizeof(float) * n * 520);
        dev_reset(ds[k]);
    }
    CHECK(memcmp(y[0], y[1], sizeof(float) * n * 520) == 0);
    /* And one token alone equals its row in the batch. */
    {
        struct native_mat w = dmat(&d2, &m);
        float *yd = dalloc(&d2, sizeof(float) * 520), *out[1] = {yd};
        float one[520];
        d2.o->matmul(d2.b, 1, dup_in(&d2, x + 4 * 700, sizeof(float) * 700), 1, &w, out, 0);
        dl(&d2, one, yd, sizeof(one));
        CHECK(memcmp(one, y[1] + 4 * 520, sizeof(one)) == 0);
        dev_reset(&d2);
    }
    free(y[0]);
    free(y[1]);
    free(x);
    hmat_free(&m);

    /* MLA, both modes, big enough for the pool (128 positions, 16 heads). */
    const struct mla_shape sh = {16, 32, 16, 32, 256};
    struct hmat kvb = hmat_rand(NATIVE_F8_E4M3, 16 * 64, 256, 0.3);
    const int late = 40;
    const float *c_all[2], *kpe_all[2];
    for (int s = 0; s < 2; s++) {
        c_all[s] = frand((size_t)(late + 1) * 256, 1.0);
        kpe_all[s] = frand((size_t)(late + 1) * 16, 1.0);
    }
    float *q = frand((size_t)6 * 16 * 48, 1.0);
    for (int mode = 0; mode < 2; mode++) {
        float *o[2];
        for (int k = 0; k < 2; k++) {
            o[k] = malloc(sizeof(float) * 6 * 16 * 32);
            run_mla(ds[k], &sh, &kvb, c_all, kpe_all, q, late,
                    mode ? NATIVE_MLA_NAIVE : NATIVE_MLA_ABSORB, o[k]);
        }
        CHECK(memcmp(o[0], o[1], sizeof(float) * 6 * 16 * 32) == 0);
        free(o[0]);
        free(o[1]);
    }
    free(q);
    for (int s = 0; s < 2; s++) {
        free((void *)c_all[s]);
        free((void *)kpe_all[s]);
    }
    hmat_free(&kvb);
    native_backend_free(b1);
    native_backend_free(b2);
}

int main(int argc, char **argv)
{
    const int gpu = argc > 1 && strcmp(argv[1], "gpu") == 0;
    for (size_t k = 0; k < sizeof(backends) / sizeof(backends[0]); k++) {
        if (backends[k].gpu != gpu)
            continue;
        struct native_backend *b = backends[k].make();
#ifdef CASCADE_HAVE_CUDA
        /* No driver or no device: nothing to test here, said as a SKIP.
         * A device that is there but will not start is a failure. */
        if (!b && backends[k].gpu && cuda_devices < 1) {
            TEST_SKIP("%s: %s", backends[k].name, cuda_why);
            continue;
        }
        if (!b && backends[k].gpu)
            fprintf(stderr, "%s: %s\n", backends[k].name, cuda_why);
#endif
        CHECK(b != NULL);
        if (!b)
            continue;
        struct dev d = {b, b->ops, {0}, 0, {0}, 0};
        cur_backend = backends[k].name;
        cur_bf16x = !backends[k].gpu && strcmp(ops_cpu_kernels(b), "avx512bf16") == 0;
        int before = test_failed_;

        test_matmul(&d);
        test_matmul_fp8_invariance(&d);
        test_rmsnorm(&d);
        test_rope(&d);
        test_attention(&d, 4, 2, 16);
        test_attention(&d, 6, 6, 8);
        test_attention(&d, 2, 1, 64);
        test_attention_long(&d, 8, 2, 128);     /* 4 heads per group: 2-token tiles on a GPU */
        test_attention_long(&d, 20, 2, 32);     /* 10 heads per group: chunks of 8 and 2 */
        const struct mla_shape small = {3, 16, 8, 12, 40}, wide = {10, 24, 8, 16, 200};
        for (size_t j = 0; j < sizeof(all_dtypes) / sizeof(all_dtypes[0]); j++) {
            test_mla(&d, &small, all_dtypes[j], 20);
            test_mla(&d, &wide, all_dtypes[j], 20);
        }
        /* V3's latent and rope widths, heads not a multiple of 8, and 51
         * positions: a GPU kernel's position tiles (32 on CUDA) and head
         * groups (8) both end part-way. */
        const struct mla_shape v3ish = {9, 32, 64, 32, 512};
        test_mla(&d, &v3ish, NATIVE_BF16, 50);
        test_mla(&d, &v3ish, NATIVE_F8_E4M3, 50);
        test_swiglu(&d);
        test_embed_gather(&d);
        test_moe_gate(&d);
        test_moe_experts_all(&d);

#ifdef CASCADE_HAVE_CUDA
        /* Ops cannot return errors; a device fault or an op not built is
         * remembered by the backend. */
        if (backends[k].gpu) {
            b->ops->synchronize(b);
            const char *e = ops_cuda_error(b);
            if (e)
                fprintf(stderr, "  [%s] CUDA error: %s\n", backends[k].name, e);
            CHECK(e == NULL);
        }
#endif
        printf("%-14s %s\n", backends[k].name, test_failed_ == before ? "OK" : "FAILED");
        native_backend_free(b);
    }
    if (gpu) {
#ifndef CASCADE_HAVE_CUDA
        TEST_SKIP("gpu: this build has no CUDA backend (nvcc not found or -DCASCADE_CUDA=OFF)");
#endif
        TEST_MAIN_END();
    }
    test_cpu_thread_invariance();
    TEST_MAIN_END();
}
