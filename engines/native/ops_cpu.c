/* ops_cpu.c: CPU kernels for the op table; see ops_cpu.h and ops.h.
 *
 * Layout of this file: the backend handle and its thread-pool jobs first,
 * then the portable kernels, then the AVX2 kernels (compiled with a target
 * attribute, so they exist in every build and are picked at run time).
 *
 * Determinism: each output element is produced by the same instruction
 * sequence whatever the batch size, tile shape or thread split: a dot product
 * always accumulates 8 lanes over k in increasing order, then adds the lanes
 * in one fixed tree. That is what lets a request get the same tokens alone or
 * inside a batch.
 */
#include "ops_cpu.h"

#include "dtype.h"
#include "threadpool.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#define INLINE static inline __attribute__((always_inline))

/* Work below these sizes runs on the calling thread: waking a worker and
 * waiting for it costs about a microsecond, more than the op itself. */
#define MM_PARALLEL_MIN_MACS (96 * 1024)
#define ATTN_PARALLEL_MIN (16 * 1024)
/* Tokens per pass over a weight panel in the matmul: 48 rows of x at the
 * largest dims we serve (2048-5504 floats) stay in L2 while the weight rows
 * stream past them. A multiple of the 3-token tile. */
#define MM_TOKEN_BLOCK 48

struct cpu_backend {
    struct native_backend base;
    struct threadpool *pool;
    int threads;
    int avx2;
};

/* ------------------------------------------------------------------------ */
/* Portable kernels                                                          */
/* ------------------------------------------------------------------------ */

INLINE float load_w(const void *w, enum native_dtype dt, int64_t i)
{
    switch (dt) {
    case NATIVE_F32:
        return ((const float *)w)[i];
    case NATIVE_BF16:
        return dtype_bf16_to_f32(((const uint16_t *)w)[i]);
    default:
        return dtype_f16_to_f32(((const uint16_t *)w)[i]);
    }
}

/* The fixed lane tree every dot product ends with (same as hsum8 below). */
INLINE float lanes_sum(const float l[8])
{
    float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
    return (a0 + a2) + (a1 + a3);
}

/* y[t * ldy + r] (+)= dot(w[r], x[t]) for r in [r0, r1), t < n. */
INLINE void mm_rows_portable_dt(const void *w, enum native_dtype dt, int64_t K, int64_t r0,
                                int64_t r1, const float *x, int n, float *y, int64_t ldy,
                                int accumulate)
{
    for (int t = 0; t < n; t++) {
        const float *xt = x + (int64_t)t * K;
        for (int64_t r = r0; r < r1; r++) {
            float l[8] = {0};
            int64_t base = r * K, k = 0;
            for (; k + 8 <= K; k += 8)
                for (int j = 0; j < 8; j++)
                    l[j] += load_w(w, dt, base + k + j) * xt[k + j];
            for (int j = 0; k + j < K; j++)
                l[j] += load_w(w, dt, base + k + j) * xt[k + j];
            float s = lanes_sum(l);
            float *o = y + (int64_t)t * ldy + r;
            *o = accumulate ? *o + s : s;
        }
    }
}

static void mm_rows_portable(const struct native_mat *w, int64_t r0, int64_t r1, const float *x,
                             int n, float *y, int accumulate)
{
    switch (w->dtype) {
    case NATIVE_F32:
        mm_rows_portable_dt(w->data, NATIVE_F32, w->cols, r0, r1, x, n, y, w->rows, accumulate);
        break;
    case NATIVE_BF16:
        mm_rows_portable_dt(w->data, NATIVE_BF16, w->cols, r0, r1, x, n, y, w->rows, accumulate);
        break;
    default:
        mm_rows_portable_dt(w->data, NATIVE_F16, w->cols, r0, r1, x, n, y, w->rows, accumulate);
        break;
    }
}

/* One (token, head) of attention with an online softmax over blocks:
 *   m = running max, l = running sum of e^(s-m), acc = running sum of e^(s-m) v;
 *   a new block with max mb rescales l and acc by e^(m - max(m, mb)).
 * No scratch proportional to the context is needed. */
static void attn_head_portable(float *out, const float *q, const struct native_kv *kv, int layer,
                               const struct native_seq_view *sv, int n_pos, int g, int hd)
{
    const int BS = kv->block_size;
    const float scale = 1.0f / sqrtf((float)hd);
    float acc[OPS_CPU_MAX_HEAD_DIM];
    float s[NATIVE_MAX_BLOCK_SIZE];
    float m = -INFINITY, l = 0.0f;

    memset(acc, 0, sizeof(float) * (size_t)hd);
    for (int b = 0; b * BS < n_pos; b++) {
        const float *blk = kv->data + (size_t)sv->blocks[b] * kv->block_stride +
                           (size_t)layer * kv->layer_stride;
        const float *K = blk + (size_t)g * hd * BS;
        const float *V = blk + (size_t)BS * kv->kv_dim + (size_t)g * hd;
        int n = n_pos - b * BS < BS ? n_pos - b * BS : BS;
        float mb = -INFINITY;
        for (int j = 0; j < n; j++) {
            float d = 0.0f;
            for (int i = 0; i < hd; i++)
                d += q[i] * K[(size_t)i * BS + j];
            s[j] = d * scale;
            if (s[j] > mb)
                mb = s[j];
        }
        float mn = mb > m ? mb : m;
        float corr = expf(m - mn);
        l *= corr;
        for (int i = 0; i < hd; i++)
            acc[i] *= corr;
        for (int j = 0; j < n; j++) {
            float p = expf(s[j] - mn);
            l += p;
            const float *vj = V + (size_t)j * kv->kv_dim;
            for (int i = 0; i < hd; i++)
                acc[i] += p * vj[i];
        }
        m = mn;
    }
    float inv = 1.0f / l;
    for (int i = 0; i < hd; i++)
        out[i] = acc[i] * inv;
}

static void swiglu_portable(float *h, const float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* ------------------------------------------------------------------------ */
/* AVX2 + FMA + F16C kernels                                                 */
/* ------------------------------------------------------------------------ */
#if HAVE_X86
#define AVX2_FN __attribute__((target("avx2,fma,f16c")))

INLINE AVX2_FN __m256 ld_w8(const void *w, enum native_dtype dt, int64_t i)
{
    if (dt == NATIVE_F32)
        return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (dt == NATIVE_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* The last cols % 8 weights of a row, zero-padded to 8 lanes. */
INLINE AVX2_FN __m256 ld_w8_tail(const void *w, enum native_dtype dt, int64_t i, int rem)
{
    float tmp[8] = {0};
    for (int j = 0; j < rem; j++)
        tmp[j] = load_w(w, dt, i + j);
    return _mm256_loadu_ps(tmp);
}

INLINE AVX2_FN __m256 ld_x8_tail(const float *x, int rem)
{
    float tmp[8] = {0};
    memcpy(tmp, x, sizeof(float) * (size_t)rem);
    return _mm256_loadu_ps(tmp);
}

/* Lanes (0+4), (1+5), (2+6), (3+7); then (a0+a2) + (a1+a3): lanes_sum's tree. */
INLINE AVX2_FN float hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    __m128 c = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));
    return _mm_cvtss_f32(c);
}

/* An R-rows by T-tokens register tile of the matmul: R*T accumulators, each
 * weight vector loaded once and used T times, x read straight into the FMA.
 * R and T are constants at every call site, so the loops unroll into
 * registers (4x3 = 12 accumulators + 4 weights = all 16 ymm). */
INLINE AVX2_FN void mm_tile(const int R, const int T, const enum native_dtype dt, const void *w,
                            int64_t K, int64_t r, const float *x, int64_t t, float *y, int64_t ldy,
                            int accumulate)
{
    __m256 acc[8][3];
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *wr = (const char *)w + (size_t)r * (size_t)K * es;
    const float *xt = x + t * K;

#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 3
        for (int j = 0; j < T; j++)
            acc[i][j] = _mm256_setzero_ps();

    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            __m256 wv = ld_w8(wr, dt, i * K + k);
#pragma GCC unroll 3
            for (int j = 0; j < T; j++)
                acc[i][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xt + j * K + k), acc[i][j]);
        }
    }
    if (k < K) {
        int rem = (int)(K - k);
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            __m256 wv = ld_w8_tail(wr, dt, i * K + k, rem);
#pragma GCC unroll 3
            for (int j = 0; j < T; j++)
                acc[i][j] = _mm256_fmadd_ps(wv, ld_x8_tail(xt + j * K + k, rem), acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 3
        for (int j = 0; j < T; j++) {
            float s = hsum8(acc[i][j]);
            float *o = y + (t + j) * ldy + r + i;
            *o = accumulate ? *o + s : s;
        }
}

INLINE AVX2_FN void mm_rows_avx2_dt(const enum native_dtype dt, const void *w, int64_t K,
                                    int64_t r0, int64_t r1, const float *x, int n, float *y,
                                    int64_t ldy, int accumulate)
{
    for (int t0 = 0; t0 < n; t0 += MM_TOKEN_BLOCK) {
        int t1 = t0 + MM_TOKEN_BLOCK < n ? t0 + MM_TOKEN_BLOCK : n;
        int64_t r = r0;
        if (t1 - t0 == 1) {
            /* One token (decode): eight independent rows hide FMA latency. */
            for (; r + 8 <= r1; r += 8)
                mm_tile(8, 1, dt, w, K, r, x, t0, y, ldy, accumulate);
            for (; r < r1; r++)
                mm_tile(1, 1, dt, w, K, r, x, t0, y, ldy, accumulate);
            continue;
        }
        for (; r + 4 <= r1; r += 4) {
            int t = t0;
            for (; t + 3 <= t1; t += 3)
                mm_tile(4, 3, dt, w, K, r, x, t, y, ldy, accumulate);
            if (t1 - t == 2)
                mm_tile(4, 2, dt, w, K, r, x, t, y, ldy, accumulate);
            else if (t1 - t == 1)
                mm_tile(4, 1, dt, w, K, r, x, t, y, ldy, accumulate);
        }
        for (; r < r1; r++) {
            int t = t0;
            for (; t + 3 <= t1; t += 3)
                mm_tile(1, 3, dt, w, K, r, x, t, y, ldy, accumulate);
            for (; t < t1; t++)
                mm_tile(1, 1, dt, w, K, r, x, t, y, ldy, accumulate);
        }
    }
}

AVX2_FN static void mm_rows_avx2(const struct native_mat *w, int64_t r0, int64_t r1,
                                 const float *x, int n, float *y, int accumulate)
{
    switch (w->dtype) {
    case NATIVE_F32:
        mm_rows_avx2_dt(NATIVE_F32, w->data, w->cols, r0, r1, x, n, y, w->rows, accumulate);
        break;
    case NATIVE_BF16:
        mm_rows_avx2_dt(NATIVE_BF16, w->data, w->cols, r0, r1, x, n, y, w->rows, accumulate);
        break;
    default:
        mm_rows_avx2_dt(NATIVE_F16, w->data, w->cols, r0, r1, x, n, y, w->rows, accumulate);
        break;
    }
}

/* e^x for 8 lanes, Cephes' expf: x = n ln2 + r with |r| <= ln2/2 (ln2 split
 * in two parts so n ln2 is exact), e^r by a degree-6 polynomial, times 2^n
 * built in the exponent bits. About 1 ulp; inputs are clamped to the finite
 * range, so -inf gives ~1e-38, which callers treat as 0 anyway. */
INLINE AVX2_FN __m256 exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.3762626647949f));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

AVX2_FN static void swiglu_avx2(float *h, const float *g, const float *u, size_t n)
{
    size_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        __m256 sig = _mm256_div_ps(gv, _mm256_add_ps(one, e));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(sig, _mm256_loadu_ps(u + i)));
    }
    if (i < n) {
        float tg[8] = {0}, tu[8] = {0}, th[8];
        memcpy(tg, g + i, sizeof(float) * (n - i));
        memcpy(tu, u + i, sizeof(float) * (n - i));
        __m256 gv = _mm256_loadu_ps(tg);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        __m256 sig = _mm256_div_ps(gv, _mm256_add_ps(one, e));
        _mm256_storeu_ps(th, _mm256_mul_ps(sig, _mm256_loadu_ps(tu)));
        memcpy(h + i, th, sizeof(float) * (n - i));
    }
}

/* attn_head_portable's online softmax, vectorized: scores over 8 positions
 * at a time from the transposed K block, the weighted sum over 8 dims at a
 * time from the V rows. head_dim is a multiple of 8 here. For head_dim 8 the
 * V sum keeps four partial accumulators (positions j mod 4) so the FMA chain
 * is not one long dependency; they are summed in a fixed order. */
AVX2_FN static void attn_head_avx2(float *out, const float *q, const struct native_kv *kv,
                                   int layer, const struct native_seq_view *sv, int n_pos, int g,
                                   int hd)
{
    const int BS = kv->block_size;
    const int nc = hd / 8;
    const __m256 scale = _mm256_set1_ps(1.0f / sqrtf((float)hd));
    __m256 acc[OPS_CPU_MAX_HEAD_DIM / 8];
    float s[NATIVE_MAX_BLOCK_SIZE] __attribute__((aligned(32)));
    float m = -INFINITY, l = 0.0f;

    for (int c = 0; c < nc; c++)
        acc[c] = _mm256_setzero_ps();
    for (int b = 0; b * BS < n_pos; b++) {
        const float *blk = kv->data + (size_t)sv->blocks[b] * kv->block_stride +
                           (size_t)layer * kv->layer_stride;
        const float *K = blk + (size_t)g * hd * BS;
        const float *V = blk + (size_t)BS * kv->kv_dim + (size_t)g * hd;
        int n = n_pos - b * BS < BS ? n_pos - b * BS : BS;

        /* s[j] = (q . K[:, j]) * scale, two partial chains over even/odd dims. */
        for (int jv = 0; jv < n; jv += 8) {
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (int i = 0; i < hd; i += 2) {
                a0 = _mm256_fmadd_ps(_mm256_set1_ps(q[i]), _mm256_loadu_ps(K + (size_t)i * BS + jv), a0);
                a1 = _mm256_fmadd_ps(_mm256_set1_ps(q[i + 1]),
                                     _mm256_loadu_ps(K + (size_t)(i + 1) * BS + jv), a1);
            }
            _mm256_store_ps(s + jv, _mm256_mul_ps(_mm256_add_ps(a0, a1), scale));
        }
        float mb = s[0];
        for (int j = 1; j < n; j++)
            mb = s[j] > mb ? s[j] : mb;
        float mn = mb > m ? mb : m;
        float corr = expf(m - mn);

        /* p[j] = e^(s[j] - mn), zero past the last valid position. */
        __m256 mv = _mm256_set1_ps(mn);
        for (int jv = 0; jv < n; jv += 8)
            _mm256_store_ps(s + jv, exp8(_mm256_sub_ps(_mm256_load_ps(s + jv), mv)));
        for (int j = n; j < ((n + 7) & ~7); j++)
            s[j] = 0.0f;
        float ps = 0.0f;
        for (int j = 0; j < n; j++)
            ps += s[j];
        l = l * corr + ps;

        __m256 cv = _mm256_set1_ps(corr);
        if (nc == 1) {
            __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0;
            int j = 0;
            for (; j + 4 <= n; j += 4) {
                const float *vj = V + (size_t)j * kv->kv_dim;
                p0 = _mm256_fmadd_ps(_mm256_set1_ps(s[j]), _mm256_loadu_ps(vj), p0);
                p1 = _mm256_fmadd_ps(_mm256_set1_ps(s[j + 1]), _mm256_loadu_ps(vj + kv->kv_dim), p1);
                p2 = _mm256_fmadd_ps(_mm256_set1_ps(s[j + 2]), _mm256_loadu_ps(vj + 2 * kv->kv_dim), p2);
                p3 = _mm256_fmadd_ps(_mm256_set1_ps(s[j + 3]), _mm256_loadu_ps(vj + 3 * kv->kv_dim), p3);
            }
            for (; j < n; j++)
                p0 = _mm256_fmadd_ps(_mm256_set1_ps(s[j]), _mm256_loadu_ps(V + (size_t)j * kv->kv_dim), p0);
            __m256 blk_sum = _mm256_add_ps(_mm256_add_ps(p0, p1), _mm256_add_ps(p2, p3));
            acc[0] = _mm256_fmadd_ps(acc[0], cv, blk_sum);
        } else {
            for (int c = 0; c < nc; c++)
                acc[c] = _mm256_mul_ps(acc[c], cv);
            for (int j = 0; j < n; j++) {
                __m256 pj = _mm256_set1_ps(s[j]);
                const float *vj = V + (size_t)j * kv->kv_dim;
                for (int c = 0; c < nc; c++)
                    acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * c), acc[c]);
            }
        }
        m = mn;
    }
    __m256 inv = _mm256_set1_ps(1.0f / l);
    for (int c = 0; c < nc; c++)
        _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(acc[c], inv));
}

static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}
#else
static int cpu_has_avx2(void)
{
    return 0;
}
#endif

/* ------------------------------------------------------------------------ */
/* Ops                                                                       */
/* ------------------------------------------------------------------------ */

static void mm_rows(const struct cpu_backend *cb, const struct native_mat *w, int64_t r0,
                    int64_t r1, const float *x, int n, float *y, int accumulate)
{
#if HAVE_X86
    if (cb->avx2) {
        mm_rows_avx2(w, r0, r1, x, n, y, accumulate);
        return;
    }
#endif
    mm_rows_portable(w, r0, r1, x, n, y, accumulate);
}

struct mm_job {
    const struct cpu_backend *cb;
    int n;
    const float *x;
    const struct native_mat *w;
    float *const *y;
    int accumulate;
    int n_w;
    int64_t chunk;          /* rows per task */
    int first_task[5];      /* first task of weight j; first_task[n_w] = total */
};

static void mm_task(void *arg, int task, int thread)
{
    const struct mm_job *job = arg;
    (void)thread;
    int j = 0;
    while (task >= job->first_task[j + 1])
        j++;
    const struct native_mat *w = &job->w[j];
    int64_t r0 = (int64_t)(task - job->first_task[j]) * job->chunk;
    int64_t r1 = r0 + job->chunk < w->rows ? r0 + job->chunk : w->rows;
    mm_rows(job->cb, w, r0, r1, job->x, job->n, job->y[j], job->accumulate);
}

static void cpu_matmul(struct native_backend *b, int n, const float *x, int n_w,
                       const struct native_mat *w, float *const *y, int accumulate)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    int64_t macs = 0, rows = 0;

    assert(n_w >= 1 && n_w <= 4);
    for (int j = 0; j < n_w; j++) {
        assert(w[j].cols == w[0].cols);
        macs += (int64_t)n * w[j].rows * w[j].cols;
        rows += w[j].rows;
    }
    if (cb->threads == 1 || macs < MM_PARALLEL_MIN_MACS) {
        for (int j = 0; j < n_w; j++)
            mm_rows(cb, &w[j], 0, w[j].rows, x, n, y[j], accumulate);
        return;
    }

    /* About four tasks per thread, in whole 8-row tiles, so the dynamic
     * hand-out evens out; never fewer rows than a tile. */
    struct mm_job job = {cb, n, x, w, y, accumulate, n_w, 0, {0}};
    int64_t chunk = (rows + 4 * cb->threads - 1) / (4 * cb->threads);
    job.chunk = chunk < 8 ? 8 : (chunk + 7) & ~(int64_t)7;
    for (int j = 0; j < n_w; j++)
        job.first_task[j + 1] = job.first_task[j] + (int)((w[j].rows + job.chunk - 1) / job.chunk);
    threadpool_run(cb->pool, mm_task, &job, job.first_task[n_w]);
}

static void cpu_rmsnorm(struct native_backend *b, float *y, const float *x, const float *w, int n,
                        int dim, float eps)
{
    (void)b;
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * dim;
        float *yt = y + (size_t)t * dim;
        float l[8] = {0};
        int i = 0;
        for (; i + 8 <= dim; i += 8)
            for (int j = 0; j < 8; j++)
                l[j] += xt[i + j] * xt[i + j];
        for (int j = 0; i + j < dim; j++)
            l[j] += xt[i + j] * xt[i + j];
        float ss = lanes_sum(l) / (float)dim + eps;
        float inv = 1.0f / sqrtf(ss);
        for (i = 0; i < dim; i++)
            yt[i] = w[i] * (inv * xt[i]);
    }
}

static void cpu_rope(struct native_backend *b, float *x, int n, int n_heads, const int32_t *pos,
                     const struct native_rope *r)
{
    (void)b;
    const int hd = r->head_dim, half = hd / 2;
    for (int t = 0; t < n; t++) {
        assert(pos[t] >= 0 && pos[t] < r->n_pos);
        const float *c = r->cos + (size_t)pos[t] * half;
        const float *s = r->sin + (size_t)pos[t] * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * hd;
            if (r->layout == NATIVE_ROPE_ADJACENT) {
                for (int i = 0; i < half; i++) {
                    float a = v[2 * i], bb = v[2 * i + 1];
                    v[2 * i] = a * c[i] - bb * s[i];
                    v[2 * i + 1] = a * s[i] + bb * c[i];
                }
            } else {
                for (int i = 0; i < half; i++) {
                    float a = v[i], bb = v[i + half];
                    v[i] = a * c[i] - bb * s[i];
                    v[i + half] = a * s[i] + bb * c[i];
                }
            }
        }
    }
}

static void cpu_kv_store(struct native_backend *b, const struct native_kv *kv, int layer,
                         const struct native_batch *batch, const float *k, const float *v)
{
    (void)b;
    const int BS = kv->block_size, D = kv->kv_dim;
    for (int t = 0; t < batch->n_tokens; t++) {
        const struct native_seq_view *sv = &batch->seqs[batch->seq[t]];
        int p = batch->pos[t];
        assert(p / BS < sv->n_blocks);
        float *blk = kv->data + (size_t)sv->blocks[p / BS] * kv->block_stride +
                     (size_t)layer * kv->layer_stride;
        int off = p % BS;
        const float *kt = k + (size_t)t * D, *vt = v + (size_t)t * D;
        for (int i = 0; i < D; i++)
            blk[(size_t)i * BS + off] = kt[i];
        memcpy(blk + (size_t)BS * D + (size_t)off * D, vt, sizeof(float) * (size_t)D);
    }
}

struct attn_job {
    const struct cpu_backend *cb;
    float *out;
    const float *q;
    const struct native_kv *kv;
    int layer;
    const struct native_batch *batch;
    int n_heads, n_kv_heads, hd;
};

static void attn_task(void *arg, int task, int thread)
{
    const struct attn_job *j = arg;
    (void)thread;
    int t = task / j->n_heads, h = task % j->n_heads;
    const struct native_batch *bt = j->batch;
    const struct native_seq_view *sv = &bt->seqs[bt->seq[t]];
    int g = h / (j->n_heads / j->n_kv_heads);
    size_t off = ((size_t)t * j->n_heads + h) * j->hd;
#if HAVE_X86
    if (j->cb->avx2 && j->hd % 8 == 0) {
        attn_head_avx2(j->out + off, j->q + off, j->kv, j->layer, sv, bt->pos[t] + 1, g, j->hd);
        return;
    }
#endif
    attn_head_portable(j->out + off, j->q + off, j->kv, j->layer, sv, bt->pos[t] + 1, g, j->hd);
}

static void cpu_attention(struct native_backend *b, float *out, const float *q,
                          const struct native_kv *kv, int layer, const struct native_batch *batch,
                          int n_heads, int n_kv_heads, int head_dim)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    struct attn_job job = {cb, out, q, kv, layer, batch, n_heads, n_kv_heads, head_dim};
    int64_t work = 0;

    assert(head_dim <= OPS_CPU_MAX_HEAD_DIM && kv->block_size <= NATIVE_MAX_BLOCK_SIZE && kv->block_size % 8 == 0);
    for (int t = 0; t < batch->n_tokens; t++)
        work += (int64_t)(batch->pos[t] + 1) * n_heads * head_dim;
    int tasks = batch->n_tokens * n_heads;
    if (cb->threads == 1 || work < ATTN_PARALLEL_MIN) {
        for (int i = 0; i < tasks; i++)
            attn_task(&job, i, 0);
        return;
    }
    threadpool_run(cb->pool, attn_task, &job, tasks);
}

static void cpu_swiglu(struct native_backend *b, float *h, const float *g, const float *u, size_t n)
{
#if HAVE_X86
    if (((struct cpu_backend *)b)->avx2) {
        swiglu_avx2(h, g, u, n);
        return;
    }
#endif
    (void)b;
    swiglu_portable(h, g, u, n);
}

static void cpu_embed(struct native_backend *b, float *x, const struct native_mat *table,
                      const int32_t *ids, int n)
{
    (void)b;
    const int64_t D = table->cols;
    for (int t = 0; t < n; t++) {
        assert(ids[t] >= 0 && ids[t] < table->rows);
        float *xt = x + (size_t)t * D;
        int64_t base = (int64_t)ids[t] * D;
        if (table->dtype == NATIVE_F32) {
            memcpy(xt, (const float *)table->data + base, sizeof(float) * (size_t)D);
        } else {
            for (int64_t i = 0; i < D; i++)
                xt[i] = load_w(table->data, table->dtype, base + i);
        }
    }
}

static void cpu_gather(struct native_backend *b, float *dst, const float *src, const int32_t *rows,
                       int n, int dim)
{
    (void)b;
    for (int i = 0; i < n; i++)
        memmove(dst + (size_t)i * dim, src + (size_t)rows[i] * dim, sizeof(float) * (size_t)dim);
}

static void cpu_free(struct native_backend *b)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    threadpool_free(cb->pool);
    free(cb);
}

static const struct native_ops cpu_ops = {
    .name = "cpu",
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .embed = cpu_embed,
    .gather = cpu_gather,
    .free = cpu_free,
};

struct native_backend *ops_cpu_new(int threads, unsigned flags)
{
    struct cpu_backend *cb = calloc(1, sizeof(*cb));
    if (!cb)
        return NULL;
    cb->base.ops = &cpu_ops;
    cb->pool = threadpool_new(threads);
    if (!cb->pool) {
        free(cb);
        return NULL;
    }
    cb->threads = threadpool_threads(cb->pool);
    cb->avx2 = !(flags & OPS_CPU_PORTABLE) && cpu_has_avx2();
    return &cb->base;
}

const char *ops_cpu_kernels(const struct native_backend *b)
{
    return ((const struct cpu_backend *)b)->avx2 ? "avx2" : "portable";
}

int ops_cpu_threads(const struct native_backend *b)
{
    return ((const struct cpu_backend *)b)->threads;
}
