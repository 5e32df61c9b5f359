/* ops_cpu.c: CPU kernels for the op table; see ops_cpu.h and ops.h.
 *
 * Layout of this file: the backend handle, the portable kernels, the AVX2
 * kernels, the AVX-512 matmul tiles (both compiled with target attributes,
 * so they exist in every build and are picked at run time), then the ops and
 * their thread-pool jobs.
 *
 * The matmul is a dot product per output, y[t][r] = W[r] . x[t], computed in
 * register tiles of R rows x T tokens (8x1 for a lone decode token, 4x3 and
 * 2x6 for batches): each weight vector loaded (and widened from BF16/F16) is
 * used T times, each x vector R times. Decode is memory-bound on the
 * weights; batches are compute-bound, which is what the wider tiles are for.
 *
 * Determinism: each output element is produced by the same instruction
 * sequence whatever the batch size, tile shape or thread split: a dot product
 * always accumulates 8 lanes over k in increasing order, then adds the lanes
 * in one fixed tree. That is what lets a request get the same tokens alone or
 * inside a batch.
 */
#include "engines/native/backend/cpu/ops_cpu.h"

#include "engines/native/backend/cpu/cpu_internal.h"
#include "engines/native/backend/dtype.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if HAVE_X86
#include <cpuid.h>
#endif

/* Work below these sizes runs on the calling thread: waking a worker and
 * waiting for it costs about a microsecond, more than the op itself. */
#define MM_PARALLEL_MIN_MACS (96 * 1024)
/* Rows shorter than this use the AVX2 tiles even where AVX-512 exists. */
#define MM_AVX512_MIN_COLS 256
/* The least work worth a separate matmul task (~15-30 us of FMAs). */
#define MM_TASK_MACS (256 * 1024)
#define ATTN_PARALLEL_MIN (16 * 1024)
/* Tokens per pass over a weight panel in the matmul: 48 rows of x at the
 * largest dims we serve (2048-5504 floats) stay in L2 while the weight rows
 * stream past them. A multiple of the 3-token tile. */
#define MM_TOKEN_BLOCK 48
/* The BF16 kernels' activation scratch: 8 Mi elements (16 MiB, committed
 * only as far as used), enough for 256 tokens of V3's widest rows (18432)
 * with vdpbf16ps, 128 with the FMA kernels (cpu_bf16_row_elems); more tokens
 * run in several passes. */
#define MM_BF16_SCRATCH ((size_t)8 << 20)
#define MM_BF16_LDX(K) (((int64_t)(K) + 31) & ~(int64_t)31)
/* Query heads handled together by one attention task (they share K and V). */
#define ATTN_MAX_REP 8


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

/* The fixed lane tree every dot product ends with, ((l0+l1)+(l2+l3)) +
 * ((l4+l5)+(l6+l7)), the order the AVX2 reductions below produce. */
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
        const float *V = blk + (size_t)BS * kv->desc.kv_dim + (size_t)g * hd;
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
            const float *vj = V + (size_t)j * kv->desc.kv_dim;
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

INLINE AVX2_FN __m256 ld_w8(const void *w, enum native_dtype dt, int64_t i)
{
    if (dt == NATIVE_F32)
        return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (dt == NATIVE_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* The last rem < 8 elements of a row, zero-padded to 8 lanes, without
 * reading past the row and without calls (a call would spill every ymm). */
INLINE AVX2_FN __m256i tail_mask(int rem)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

INLINE AVX2_FN __m256 ld_w8_tail(const void *w, enum native_dtype dt, int64_t i, int rem)
{
    if (dt == NATIVE_F32)
        return _mm256_maskload_ps((const float *)w + i, tail_mask(rem));
    const uint16_t *h = (const uint16_t *)w + i;
    uint16_t tmp[8] = {0};
    for (int j = 0; j < 8; j++)
        tmp[j] = j < rem ? h[j] : 0;
    return ld_w8(tmp, dt, 0);
}

INLINE AVX2_FN __m256 ld_x8_tail(const float *x, int rem)
{
    return _mm256_maskload_ps(x, tail_mask(rem));
}

/* Horizontal sums with lanes_sum's tree, ((x0+x1)+(x2+x3)) + ((x4+x5)+(x6+x7)),
 * for one, four or eight accumulators at once. hadd pairs neighbours inside
 * each 128-bit half; the two halves are added last. One tree for all widths
 * keeps a dot product's bits independent of the tile it was computed in. */
INLINE AVX2_FN float reduce1(__m256 a)
{
    __m256 t = _mm256_hadd_ps(a, a);
    t = _mm256_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

INLINE AVX2_FN __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

INLINE AVX2_FN __m256 reduce8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5,
                              __m256 a6, __m256 a7)
{
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* 8 lanes of row w (dtype dt) at element k: a full vector, or the last
 * rem = K - k < 8 elements zero-padded (copied, never read past the row). */
INLINE AVX2_FN __m256 wload(const enum native_dtype dt, const void *w, int64_t k, int rem)
{
    return rem == 8 ? ld_w8(w, dt, k) : ld_w8_tail(w, dt, k, rem);
}

INLINE AVX2_FN __m256 xload(const float *x, int64_t k, int rem)
{
    return rem == 8 ? _mm256_loadu_ps(x + k) : ld_x8_tail(x + k, rem);
}

#define ROW(i) ((const char *)w + ((size_t)(r + (i)) * (size_t)K) * es)

/* Register tiles of the matmul, y[t][r..] (+)= W[r..] . x[t], named
 * accumulators so they stay in registers:
 *   8x1: eight rows, one token (decode): eight independent FMA chains;
 *   4x3: four rows, three tokens: 12 accumulators + 4 weight vectors = 16 ymm,
 *        each weight vector loaded once and used three times;
 *   4x1 and 1x1 for the edges.
 * Every dot product accumulates k in increasing order, 8 lanes wide, and
 * ends with the same reduction tree, whatever the tile. */
INLINE AVX2_FN void tile_8x1(const enum native_dtype dt, const void *w, int64_t K, int64_t r,
                             const float *x, float *y, int accumulate)
{
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *w0 = ROW(0), *w1 = ROW(1), *w2 = ROW(2), *w3 = ROW(3);
    const char *w4 = ROW(4), *w5 = ROW(5), *w6 = ROW(6), *w7 = ROW(7);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    /* Decode streams each weight row once, and every row starts a new page,
     * where the hardware prefetcher loses the stream: fetch the next tile's
     * rows alongside this one (a prefetch never faults, even past the end). */
    const size_t rs = (size_t)K * es;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        const int rem = 8;
        if ((k * (int64_t)es) % 64 == 0) {
            const char *n8 = w0 + 8 * rs + (size_t)k * es;
            _mm_prefetch(n8, _MM_HINT_T0);
            _mm_prefetch(n8 + rs, _MM_HINT_T0);
            _mm_prefetch(n8 + 2 * rs, _MM_HINT_T0);
            _mm_prefetch(n8 + 3 * rs, _MM_HINT_T0);
            _mm_prefetch(n8 + 4 * rs, _MM_HINT_T0);
            _mm_prefetch(n8 + 5 * rs, _MM_HINT_T0);
            _mm_prefetch(n8 + 6 * rs, _MM_HINT_T0);
            _mm_prefetch(n8 + 7 * rs, _MM_HINT_T0);
        }
        const __m256 xv = xload(x, k, rem);
        a0 = _mm256_fmadd_ps(wload(dt, w0, k, rem), xv, a0);
        a1 = _mm256_fmadd_ps(wload(dt, w1, k, rem), xv, a1);
        a2 = _mm256_fmadd_ps(wload(dt, w2, k, rem), xv, a2);
        a3 = _mm256_fmadd_ps(wload(dt, w3, k, rem), xv, a3);
        a4 = _mm256_fmadd_ps(wload(dt, w4, k, rem), xv, a4);
        a5 = _mm256_fmadd_ps(wload(dt, w5, k, rem), xv, a5);
        a6 = _mm256_fmadd_ps(wload(dt, w6, k, rem), xv, a6);
        a7 = _mm256_fmadd_ps(wload(dt, w7, k, rem), xv, a7);
    }
    if (k < K) {
        const int rem = (int)(K - k);
        const __m256 xv = xload(x, k, rem);
        a0 = _mm256_fmadd_ps(wload(dt, w0, k, rem), xv, a0);
        a1 = _mm256_fmadd_ps(wload(dt, w1, k, rem), xv, a1);
        a2 = _mm256_fmadd_ps(wload(dt, w2, k, rem), xv, a2);
        a3 = _mm256_fmadd_ps(wload(dt, w3, k, rem), xv, a3);
        a4 = _mm256_fmadd_ps(wload(dt, w4, k, rem), xv, a4);
        a5 = _mm256_fmadd_ps(wload(dt, w5, k, rem), xv, a5);
        a6 = _mm256_fmadd_ps(wload(dt, w6, k, rem), xv, a6);
        a7 = _mm256_fmadd_ps(wload(dt, w7, k, rem), xv, a7);
    }
    __m256 v = reduce8(a0, a1, a2, a3, a4, a5, a6, a7);
    float *o = y + r;
    _mm256_storeu_ps(o, accumulate ? _mm256_add_ps(_mm256_loadu_ps(o), v) : v);
}

INLINE AVX2_FN void tile_4x3(const enum native_dtype dt, const void *w, int64_t K, int64_t r,
                             const float *x, float *y, int64_t ldy, int accumulate)
{
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *w0 = ROW(0), *w1 = ROW(1), *w2 = ROW(2), *w3 = ROW(3);
    const float *x0 = x, *x1 = x + K, *x2 = x + 2 * K;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
    __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        const int rem = 8;
        const __m256 v0 = wload(dt, w0, k, rem), v1 = wload(dt, w1, k, rem);
        const __m256 v2 = wload(dt, w2, k, rem), v3 = wload(dt, w3, k, rem);
        __m256 xv = xload(x0, k, rem);
        a00 = _mm256_fmadd_ps(v0, xv, a00);
        a10 = _mm256_fmadd_ps(v1, xv, a10);
        a20 = _mm256_fmadd_ps(v2, xv, a20);
        a30 = _mm256_fmadd_ps(v3, xv, a30);
        xv = xload(x1, k, rem);
        a01 = _mm256_fmadd_ps(v0, xv, a01);
        a11 = _mm256_fmadd_ps(v1, xv, a11);
        a21 = _mm256_fmadd_ps(v2, xv, a21);
        a31 = _mm256_fmadd_ps(v3, xv, a31);
        xv = xload(x2, k, rem);
        a02 = _mm256_fmadd_ps(v0, xv, a02);
        a12 = _mm256_fmadd_ps(v1, xv, a12);
        a22 = _mm256_fmadd_ps(v2, xv, a22);
        a32 = _mm256_fmadd_ps(v3, xv, a32);
    }
    if (k < K) {
        const int rem = (int)(K - k);
        const __m256 v0 = wload(dt, w0, k, rem), v1 = wload(dt, w1, k, rem);
        const __m256 v2 = wload(dt, w2, k, rem), v3 = wload(dt, w3, k, rem);
        __m256 xv = xload(x0, k, rem);
        a00 = _mm256_fmadd_ps(v0, xv, a00);
        a10 = _mm256_fmadd_ps(v1, xv, a10);
        a20 = _mm256_fmadd_ps(v2, xv, a20);
        a30 = _mm256_fmadd_ps(v3, xv, a30);
        xv = xload(x1, k, rem);
        a01 = _mm256_fmadd_ps(v0, xv, a01);
        a11 = _mm256_fmadd_ps(v1, xv, a11);
        a21 = _mm256_fmadd_ps(v2, xv, a21);
        a31 = _mm256_fmadd_ps(v3, xv, a31);
        xv = xload(x2, k, rem);
        a02 = _mm256_fmadd_ps(v0, xv, a02);
        a12 = _mm256_fmadd_ps(v1, xv, a12);
        a22 = _mm256_fmadd_ps(v2, xv, a22);
        a32 = _mm256_fmadd_ps(v3, xv, a32);
    }
    __m128 s0 = reduce4(a00, a10, a20, a30), s1 = reduce4(a01, a11, a21, a31);
    __m128 s2 = reduce4(a02, a12, a22, a32);
    float *o0 = y + r, *o1 = o0 + ldy, *o2 = o1 + ldy;
    if (accumulate) {
        s0 = _mm_add_ps(_mm_loadu_ps(o0), s0);
        s1 = _mm_add_ps(_mm_loadu_ps(o1), s1);
        s2 = _mm_add_ps(_mm_loadu_ps(o2), s2);
    }
    _mm_storeu_ps(o0, s0);
    _mm_storeu_ps(o1, s1);
    _mm_storeu_ps(o2, s2);
}

/* Two rows by six tokens, for 16-bit weights: widening BF16/F16 to float is
 * a shuffle, and the 4x3 tile needs four per twelve FMAs, which caps it well
 * below the FMA rate; this one needs two. */
INLINE AVX2_FN void tile_2x6(const enum native_dtype dt, const void *w, int64_t K, int64_t r,
                             const float *x, float *y, int64_t ldy, int accumulate, int pf)
{
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *w0 = ROW(0), *w1 = ROW(1);
    const float *x0 = x, *x1 = x + K, *x2 = x + 2 * K, *x3 = x + 3 * K, *x4 = x + 4 * K;
    const float *x5 = x + 5 * K;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a04 = a00, a05 = a00;
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00, a14 = a00, a15 = a00;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        const int rem = 8;
        if (pf && (k * (int64_t)es) % 64 == 0) {
            /* The next row group's rows (r+4.., r+6..), while these stream. */
            const char *nx = w0 + 4 * (size_t)K * es + (size_t)k * es;
            _mm_prefetch(nx, _MM_HINT_T0);
            _mm_prefetch(nx + (size_t)K * es, _MM_HINT_T0);
        }
        const __m256 v0 = wload(dt, w0, k, rem), v1 = wload(dt, w1, k, rem);
        __m256 xv = xload(x0, k, rem);
        a00 = _mm256_fmadd_ps(v0, xv, a00);
        a10 = _mm256_fmadd_ps(v1, xv, a10);
        xv = xload(x1, k, rem);
        a01 = _mm256_fmadd_ps(v0, xv, a01);
        a11 = _mm256_fmadd_ps(v1, xv, a11);
        xv = xload(x2, k, rem);
        a02 = _mm256_fmadd_ps(v0, xv, a02);
        a12 = _mm256_fmadd_ps(v1, xv, a12);
        xv = xload(x3, k, rem);
        a03 = _mm256_fmadd_ps(v0, xv, a03);
        a13 = _mm256_fmadd_ps(v1, xv, a13);
        xv = xload(x4, k, rem);
        a04 = _mm256_fmadd_ps(v0, xv, a04);
        a14 = _mm256_fmadd_ps(v1, xv, a14);
        xv = xload(x5, k, rem);
        a05 = _mm256_fmadd_ps(v0, xv, a05);
        a15 = _mm256_fmadd_ps(v1, xv, a15);
    }
    if (k < K) {
        const int rem = (int)(K - k);
        const __m256 v0 = wload(dt, w0, k, rem), v1 = wload(dt, w1, k, rem);
        a00 = _mm256_fmadd_ps(v0, xload(x0, k, rem), a00);
        a10 = _mm256_fmadd_ps(v1, xload(x0, k, rem), a10);
        a01 = _mm256_fmadd_ps(v0, xload(x1, k, rem), a01);
        a11 = _mm256_fmadd_ps(v1, xload(x1, k, rem), a11);
        a02 = _mm256_fmadd_ps(v0, xload(x2, k, rem), a02);
        a12 = _mm256_fmadd_ps(v1, xload(x2, k, rem), a12);
        a03 = _mm256_fmadd_ps(v0, xload(x3, k, rem), a03);
        a13 = _mm256_fmadd_ps(v1, xload(x3, k, rem), a13);
        a04 = _mm256_fmadd_ps(v0, xload(x4, k, rem), a04);
        a14 = _mm256_fmadd_ps(v1, xload(x4, k, rem), a14);
        a05 = _mm256_fmadd_ps(v0, xload(x5, k, rem), a05);
        a15 = _mm256_fmadd_ps(v1, xload(x5, k, rem), a15);
    }
    /* reduce4 sums four dots at once: (row 0, row 1) of two tokens. */
    __m128 s01 = reduce4(a00, a10, a01, a11), s23 = reduce4(a02, a12, a03, a13);
    __m128 s45 = reduce4(a04, a14, a05, a15);
    const __m128 sums[3] = {s01, s23, s45};
    for (int j = 0; j < 3; j++) {
        float v[4];
        _mm_storeu_ps(v, sums[j]);
        float *o0 = y + (2 * j) * ldy + r, *o1 = o0 + ldy;
        o0[0] = accumulate ? o0[0] + v[0] : v[0];
        o0[1] = accumulate ? o0[1] + v[1] : v[1];
        o1[0] = accumulate ? o1[0] + v[2] : v[2];
        o1[1] = accumulate ? o1[1] + v[3] : v[3];
    }
}

INLINE AVX2_FN void tile_4x1(const enum native_dtype dt, const void *w, int64_t K, int64_t r,
                             const float *x, float *y, int accumulate)
{
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *w0 = ROW(0), *w1 = ROW(1), *w2 = ROW(2), *w3 = ROW(3);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        const int rem = 8;
        const __m256 xv = xload(x, k, rem);
        a0 = _mm256_fmadd_ps(wload(dt, w0, k, rem), xv, a0);
        a1 = _mm256_fmadd_ps(wload(dt, w1, k, rem), xv, a1);
        a2 = _mm256_fmadd_ps(wload(dt, w2, k, rem), xv, a2);
        a3 = _mm256_fmadd_ps(wload(dt, w3, k, rem), xv, a3);
    }
    if (k < K) {
        const int rem = (int)(K - k);
        const __m256 xv = xload(x, k, rem);
        a0 = _mm256_fmadd_ps(wload(dt, w0, k, rem), xv, a0);
        a1 = _mm256_fmadd_ps(wload(dt, w1, k, rem), xv, a1);
        a2 = _mm256_fmadd_ps(wload(dt, w2, k, rem), xv, a2);
        a3 = _mm256_fmadd_ps(wload(dt, w3, k, rem), xv, a3);
    }
    __m128 v = reduce4(a0, a1, a2, a3);
    float *o = y + r;
    _mm_storeu_ps(o, accumulate ? _mm_add_ps(_mm_loadu_ps(o), v) : v);
}

INLINE AVX2_FN void tile_1x1(const enum native_dtype dt, const void *w, int64_t K, int64_t r,
                             const float *x, float *y, int accumulate)
{
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *w0 = ROW(0);
    __m256 a0 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        const int rem = 8;
        a0 = _mm256_fmadd_ps(wload(dt, w0, k, rem), xload(x, k, rem), a0);
    }
    if (k < K) {
        const int rem = (int)(K - k);
        a0 = _mm256_fmadd_ps(wload(dt, w0, k, rem), xload(x, k, rem), a0);
    }
    float v = reduce1(a0);
    y[r] = accumulate ? y[r] + v : v;
}
#undef ROW

/* Rows [r0, r1) for tokens [0, n): tokens in blocks that stay in cache,
 * three at a time through 4x3 tiles, the rest one at a time. */
INLINE AVX2_FN void mm_rows_avx2_dt(const enum native_dtype dt, const void *w, int64_t K,
                                    int64_t r0, int64_t r1, const float *x, int n, float *y,
                                    int64_t ldy, int accumulate)
{
    for (int t0 = 0; t0 < n; t0 += MM_TOKEN_BLOCK) {
        const int t1 = t0 + MM_TOKEN_BLOCK < n ? t0 + MM_TOKEN_BLOCK : n;
        int64_t r = r0;
        if (dt != NATIVE_F32 && t1 - t0 >= 6) {
            /* 16-bit weights with six or more tokens: 2x6 tiles. Each group
             * of four rows meets every token of the block (leftover tokens
             * through 4x1 tiles) before the next group, so its rows come
             * from memory once; the first pass prefetches the next group. */
            const int t6 = t0 + (t1 - t0) / 6 * 6;
            for (; r + 4 <= r1; r += 4) {
                for (int t = t0; t < t6; t += 6) {
                    tile_2x6(dt, w, K, r, x + (int64_t)t * K, y + (int64_t)t * ldy, ldy, accumulate, t == t0);
                    tile_2x6(dt, w, K, r + 2, x + (int64_t)t * K, y + (int64_t)t * ldy, ldy, accumulate, t == t0);
                }
                for (int t = t6; t < t1; t++)
                    tile_4x1(dt, w, K, r, x + (int64_t)t * K, y + (int64_t)t * ldy, accumulate);
            }
            for (; r < r1; r++)
                for (int t = t0; t < t1; t++)
                    tile_1x1(dt, w, K, r, x + (int64_t)t * K, y + (int64_t)t * ldy, accumulate);
            continue;
        }
        for (; r + 4 <= r1; r += 4) {
            int t = t0;
            for (; t + 3 <= t1; t += 3)
                tile_4x3(dt, w, K, r, x + (int64_t)t * K, y + (int64_t)t * ldy, ldy, accumulate);
            for (; t < t1; t++) {
                if (r + 8 <= r1 && t1 - t0 == 1) {
                    /* A lone token: eight rows at once, and skip ahead. */
                    tile_8x1(dt, w, K, r, x + (int64_t)t * K, y + (int64_t)t * ldy, accumulate);
                    r += 4;
                } else {
                    tile_4x1(dt, w, K, r, x + (int64_t)t * K, y + (int64_t)t * ldy, accumulate);
                }
            }
        }
        for (; r < r1; r++)
            for (int t = t0; t < t1; t++)
                tile_1x1(dt, w, K, r, x + (int64_t)t * K, y + (int64_t)t * ldy, accumulate);
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

/* Attention for the query heads of one KV group (GQA: they share K and V)
 * at one token, vectorized. The softmax runs exactly over chunks of up to
 * ATTN_CHUNK positions (one chunk for contexts up to that), online across
 * chunks: per head, m = running max, l = running sum of e^(s-m),
 * acc = running sum of e^(s-m) v; a chunk with max mb rescales l and acc by
 * e^(m - max(m, mb)).
 *   scores: from the transposed K block, 8 positions per vector:
 *           s[j..j+8) = sum_d q[d] * K[d][j..j+8)   (two chains, even/odd d)
 *   values: acc += p[j] * V[j] over 8 dims per vector; with head_dim 8 four
 *           partial sums (j mod 4) break the FMA dependency chain.
 * Every order is fixed by the positions alone, not by the batch. */
#define ATTN_CHUNK 256

AVX2_FN static void attn_group_avx2(float *out, const float *q, const struct native_kv *kv,
                                    int layer, const struct native_seq_view *sv, int n_pos, int g,
                                    int hd, int rep)
{
    const int BS = kv->block_size, nc = hd / 8, kvd = kv->desc.kv_dim;
    const __m256 scale = _mm256_set1_ps(1.0f / sqrtf((float)hd));
    const __m256 neg_inf = _mm256_set1_ps(-INFINITY);
    const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    float s[ATTN_MAX_REP][ATTN_CHUNK] __attribute__((aligned(32)));
    __m256 acc[ATTN_MAX_REP][NATIVE_MAX_HEAD_DIM / 8];
    float m[ATTN_MAX_REP], l[ATTN_MAX_REP];

    for (int r = 0; r < rep; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int c = 0; c < nc; c++)
            acc[r][c] = _mm256_setzero_ps();
    }
    for (int c0 = 0; c0 < n_pos; c0 += ATTN_CHUNK) {
        const int cn = n_pos - c0 < ATTN_CHUNK ? n_pos - c0 : ATTN_CHUNK;
        const __m256 limit = _mm256_set1_ps((float)cn);

        /* Scores; positions past the end become -inf. */
        for (int j0 = 0; j0 < cn; j0 += BS) {
            const float *K = kv->data + (size_t)sv->blocks[(c0 + j0) / BS] * kv->block_stride +
                             (size_t)layer * kv->layer_stride + (size_t)g * hd * BS;
            const int bn = cn - j0 < BS ? cn - j0 : BS;
            for (int jv = 0; jv < bn; jv += 8) {
                __m256 valid = _mm256_cmp_ps(_mm256_add_ps(lane, _mm256_set1_ps((float)(j0 + jv))),
                                             limit, _CMP_LT_OQ);
                for (int r = 0; r < rep; r++) {
                    const float *qr = q + (size_t)r * hd;
                    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
                    for (int d = 0; d < hd; d += 2) {
                        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(qr + d),
                                             _mm256_loadu_ps(K + (size_t)d * BS + jv), a0);
                        a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(qr + d + 1),
                                             _mm256_loadu_ps(K + (size_t)(d + 1) * BS + jv), a1);
                    }
                    __m256 sc = _mm256_mul_ps(_mm256_add_ps(a0, a1), scale);
                    _mm256_store_ps(&s[r][j0 + jv], _mm256_blendv_ps(neg_inf, sc, valid));
                }
            }
        }

        /* Probabilities relative to the new running max. */
        const int cv = (cn + 7) & ~7;
        float corr[ATTN_MAX_REP];
        for (int r = 0; r < rep; r++) {
            __m256 mx = neg_inf;
            for (int j = 0; j < cv; j += 8)
                mx = _mm256_max_ps(mx, _mm256_load_ps(&s[r][j]));
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
            float mb = _mm_cvtss_f32(h), mn = mb > m[r] ? mb : m[r];
            corr[r] = expf(m[r] - mn);
            __m256 mv = _mm256_set1_ps(mn), sum = _mm256_setzero_ps();
            for (int j = 0; j < cv; j += 8) {
                __m256 valid = _mm256_cmp_ps(_mm256_add_ps(lane, _mm256_set1_ps((float)j)), limit,
                                             _CMP_LT_OQ);
                __m256 p = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_load_ps(&s[r][j]), mv)), valid);
                _mm256_store_ps(&s[r][j], p);
                sum = _mm256_add_ps(sum, p);
            }
            l[r] = l[r] * corr[r] + reduce1(sum);
            m[r] = mn;
        }

        /* Weighted sum of the values. */
        if (nc == 1) {
            for (int r = 0; r < rep; r++) {
                __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0;
                for (int j0 = 0; j0 < cn; j0 += BS) {
                    const float *V = kv->data + (size_t)sv->blocks[(c0 + j0) / BS] * kv->block_stride +
                                     (size_t)layer * kv->layer_stride + (size_t)BS * kvd + (size_t)g * hd;
                    const int bn = cn - j0 < BS ? cn - j0 : BS;
                    const float *p = &s[r][j0];
                    int j = 0;
                    for (; j + 4 <= bn; j += 4) {
                        const float *vj = V + (size_t)j * kvd;
                        p0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_loadu_ps(vj), p0);
                        p1 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j + 1), _mm256_loadu_ps(vj + kvd), p1);
                        p2 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j + 2), _mm256_loadu_ps(vj + 2 * kvd), p2);
                        p3 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j + 3), _mm256_loadu_ps(vj + 3 * kvd), p3);
                    }
                    for (; j < bn; j++)
                        p0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_loadu_ps(V + (size_t)j * kvd), p0);
                }
                __m256 sum = _mm256_add_ps(_mm256_add_ps(p0, p1), _mm256_add_ps(p2, p3));
                acc[r][0] = _mm256_fmadd_ps(acc[r][0], _mm256_set1_ps(corr[r]), sum);
            }
        } else {
            for (int r = 0; r < rep; r++)
                for (int c = 0; c < nc; c++)
                    acc[r][c] = _mm256_mul_ps(acc[r][c], _mm256_set1_ps(corr[r]));
            for (int j0 = 0; j0 < cn; j0 += BS) {
                const float *V = kv->data + (size_t)sv->blocks[(c0 + j0) / BS] * kv->block_stride +
                                 (size_t)layer * kv->layer_stride + (size_t)BS * kvd + (size_t)g * hd;
                const int bn = cn - j0 < BS ? cn - j0 : BS;
                for (int j = 0; j < bn; j++) {
                    const float *vj = V + (size_t)j * kvd;
                    for (int r = 0; r < rep; r++) {
                        __m256 pj = _mm256_broadcast_ss(&s[r][j0 + j]);
                        for (int c = 0; c < nc; c++)
                            acc[r][c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * c), acc[r][c]);
                    }
                }
            }
        }
    }
    for (int r = 0; r < rep; r++) {
        __m256 inv = _mm256_set1_ps(1.0f / l[r]);
        for (int c = 0; c < nc; c++)
            _mm256_storeu_ps(out + (size_t)r * hd + 8 * c, _mm256_mul_ps(acc[r][c], inv));
    }
}

/* ------------------------------------------------------------------------ */
/* AVX-512 matmul tiles (where the CPU has AVX-512F/BW/VL)                   */
/* ------------------------------------------------------------------------ */
/* The same tiles as the AVX2 ones, 16 lanes wide: where a batch makes the
 * matmul compute-bound (many streams on a big model), twice the FMA width
 * is twice the speed. A dot product accumulates 16 lanes over k in
 * increasing order, adds the upper 8 lanes onto the lower 8, then ends with
 * lanes_sum's tree; every tile does exactly that, so results still do not
 * depend on the batch. (They differ in the last bits from the AVX2 kernels;
 * one backend uses one set throughout.) */
#define ROW(i) ((const char *)w + ((size_t)(r + (i)) * (size_t)K) * es)

INLINE AVX512_FN __m512 wload16(const enum native_dtype dt, const void *w, int64_t k, int rem)
{
    const __mmask16 m = rem == 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1);
    if (dt == NATIVE_F32)
        return rem == 16 ? _mm512_loadu_ps((const float *)w + k)
                         : _mm512_maskz_loadu_ps(m, (const float *)w + k);
    const __m256i h = rem == 16 ? _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k))
                                : _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + k);
    if (dt == NATIVE_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

INLINE AVX512_FN __m512 xload16(const float *x, int64_t k, int rem)
{
    return rem == 16 ? _mm512_loadu_ps(x + k)
                     : _mm512_maskz_loadu_ps((__mmask16)((1u << rem) - 1), x + k);
}

/* Upper 8 lanes onto the lower 8, for the AVX2 reductions. */
INLINE AVX512_FN __m256 fold16(__m512 a)
{
    return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}

INLINE AVX512_FN void tile16_8x1(const enum native_dtype dt, const void *w, int64_t K, int64_t r,
                                 const float *x, float *y, int accumulate)
{
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *w0 = ROW(0), *w1 = ROW(1), *w2 = ROW(2), *w3 = ROW(3);
    const char *w4 = ROW(4), *w5 = ROW(5), *w6 = ROW(6), *w7 = ROW(7);
    const size_t rs = (size_t)K * es;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const int rem = 16;
        if ((k * (int64_t)es) % 64 == 0) {
            /* The next tile's rows, as in the AVX2 tile: each row is a new page. */
            const char *n8 = w0 + 8 * rs + (size_t)k * es;
            for (int i = 0; i < 8; i++)
                _mm_prefetch(n8 + (size_t)i * rs, _MM_HINT_T0);
        }
        const __m512 xv = xload16(x, k, rem);
        a0 = _mm512_fmadd_ps(wload16(dt, w0, k, rem), xv, a0);
        a1 = _mm512_fmadd_ps(wload16(dt, w1, k, rem), xv, a1);
        a2 = _mm512_fmadd_ps(wload16(dt, w2, k, rem), xv, a2);
        a3 = _mm512_fmadd_ps(wload16(dt, w3, k, rem), xv, a3);
        a4 = _mm512_fmadd_ps(wload16(dt, w4, k, rem), xv, a4);
        a5 = _mm512_fmadd_ps(wload16(dt, w5, k, rem), xv, a5);
        a6 = _mm512_fmadd_ps(wload16(dt, w6, k, rem), xv, a6);
        a7 = _mm512_fmadd_ps(wload16(dt, w7, k, rem), xv, a7);
    }
    if (k < K) {
        const int rem = (int)(K - k);
        if ((k * (int64_t)es) % 64 == 0) {
            /* The next tile's rows, as in the AVX2 tile: each row is a new page. */
            const char *n8 = w0 + 8 * rs + (size_t)k * es;
            for (int i = 0; i < 8; i++)
                _mm_prefetch(n8 + (size_t)i * rs, _MM_HINT_T0);
        }
        const __m512 xv = xload16(x, k, rem);
        a0 = _mm512_fmadd_ps(wload16(dt, w0, k, rem), xv, a0);
        a1 = _mm512_fmadd_ps(wload16(dt, w1, k, rem), xv, a1);
        a2 = _mm512_fmadd_ps(wload16(dt, w2, k, rem), xv, a2);
        a3 = _mm512_fmadd_ps(wload16(dt, w3, k, rem), xv, a3);
        a4 = _mm512_fmadd_ps(wload16(dt, w4, k, rem), xv, a4);
        a5 = _mm512_fmadd_ps(wload16(dt, w5, k, rem), xv, a5);
        a6 = _mm512_fmadd_ps(wload16(dt, w6, k, rem), xv, a6);
        a7 = _mm512_fmadd_ps(wload16(dt, w7, k, rem), xv, a7);
    }
    __m256 v = reduce8(fold16(a0), fold16(a1), fold16(a2), fold16(a3), fold16(a4), fold16(a5),
                       fold16(a6), fold16(a7));
    float *o = y + r;
    _mm256_storeu_ps(o, accumulate ? _mm256_add_ps(_mm256_loadu_ps(o), v) : v);
}

INLINE AVX512_FN void tile16_4x3(const enum native_dtype dt, const void *w, int64_t K, int64_t r,
                                 const float *x, float *y, int64_t ldy, int accumulate)
{
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *w0 = ROW(0), *w1 = ROW(1), *w2 = ROW(2), *w3 = ROW(3);
    const float *x0 = x, *x1 = x + K, *x2 = x + 2 * K;
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const int rem = 16;
        const __m512 v0 = wload16(dt, w0, k, rem), v1 = wload16(dt, w1, k, rem);
        const __m512 v2 = wload16(dt, w2, k, rem), v3 = wload16(dt, w3, k, rem);
        __m512 xv = xload16(x0, k, rem);
        a00 = _mm512_fmadd_ps(v0, xv, a00);
        a10 = _mm512_fmadd_ps(v1, xv, a10);
        a20 = _mm512_fmadd_ps(v2, xv, a20);
        a30 = _mm512_fmadd_ps(v3, xv, a30);
        xv = xload16(x1, k, rem);
        a01 = _mm512_fmadd_ps(v0, xv, a01);
        a11 = _mm512_fmadd_ps(v1, xv, a11);
        a21 = _mm512_fmadd_ps(v2, xv, a21);
        a31 = _mm512_fmadd_ps(v3, xv, a31);
        xv = xload16(x2, k, rem);
        a02 = _mm512_fmadd_ps(v0, xv, a02);
        a12 = _mm512_fmadd_ps(v1, xv, a12);
        a22 = _mm512_fmadd_ps(v2, xv, a22);
        a32 = _mm512_fmadd_ps(v3, xv, a32);
    }
    if (k < K) {
        const int rem = (int)(K - k);
        const __m512 v0 = wload16(dt, w0, k, rem), v1 = wload16(dt, w1, k, rem);
        const __m512 v2 = wload16(dt, w2, k, rem), v3 = wload16(dt, w3, k, rem);
        __m512 xv = xload16(x0, k, rem);
        a00 = _mm512_fmadd_ps(v0, xv, a00);
        a10 = _mm512_fmadd_ps(v1, xv, a10);
        a20 = _mm512_fmadd_ps(v2, xv, a20);
        a30 = _mm512_fmadd_ps(v3, xv, a30);
        xv = xload16(x1, k, rem);
        a01 = _mm512_fmadd_ps(v0, xv, a01);
        a11 = _mm512_fmadd_ps(v1, xv, a11);
        a21 = _mm512_fmadd_ps(v2, xv, a21);
        a31 = _mm512_fmadd_ps(v3, xv, a31);
        xv = xload16(x2, k, rem);
        a02 = _mm512_fmadd_ps(v0, xv, a02);
        a12 = _mm512_fmadd_ps(v1, xv, a12);
        a22 = _mm512_fmadd_ps(v2, xv, a22);
        a32 = _mm512_fmadd_ps(v3, xv, a32);
    }
    __m128 s0 = reduce4(fold16(a00), fold16(a10), fold16(a20), fold16(a30));
    __m128 s1 = reduce4(fold16(a01), fold16(a11), fold16(a21), fold16(a31));
    __m128 s2 = reduce4(fold16(a02), fold16(a12), fold16(a22), fold16(a32));
    float *o0 = y + r, *o1 = o0 + ldy, *o2 = o1 + ldy;
    if (accumulate) {
        s0 = _mm_add_ps(_mm_loadu_ps(o0), s0);
        s1 = _mm_add_ps(_mm_loadu_ps(o1), s1);
        s2 = _mm_add_ps(_mm_loadu_ps(o2), s2);
    }
    _mm_storeu_ps(o0, s0);
    _mm_storeu_ps(o1, s1);
    _mm_storeu_ps(o2, s2);
}

INLINE AVX512_FN void tile16_2x6(const enum native_dtype dt, const void *w, int64_t K, int64_t r,
                                 const float *x, float *y, int64_t ldy, int accumulate, int pf)
{
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *w0 = ROW(0), *w1 = ROW(1);
    const float *x0 = x, *x1 = x + K, *x2 = x + 2 * K, *x3 = x + 3 * K, *x4 = x + 4 * K;
    const float *x5 = x + 5 * K;
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a04 = a00, a05 = a00;
    __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00, a14 = a00, a15 = a00;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const int rem = 16;
        if (pf && (k * (int64_t)es) % 64 == 0) {
            /* The next row group's rows (r+4.., r+6..), while these stream. */
            const char *nx = w0 + 4 * (size_t)K * es + (size_t)k * es;
            _mm_prefetch(nx, _MM_HINT_T0);
            _mm_prefetch(nx + (size_t)K * es, _MM_HINT_T0);
        }
        const __m512 v0 = wload16(dt, w0, k, rem), v1 = wload16(dt, w1, k, rem);
        __m512 xv = xload16(x0, k, rem);
        a00 = _mm512_fmadd_ps(v0, xv, a00);
        a10 = _mm512_fmadd_ps(v1, xv, a10);
        xv = xload16(x1, k, rem);
        a01 = _mm512_fmadd_ps(v0, xv, a01);
        a11 = _mm512_fmadd_ps(v1, xv, a11);
        xv = xload16(x2, k, rem);
        a02 = _mm512_fmadd_ps(v0, xv, a02);
        a12 = _mm512_fmadd_ps(v1, xv, a12);
        xv = xload16(x3, k, rem);
        a03 = _mm512_fmadd_ps(v0, xv, a03);
        a13 = _mm512_fmadd_ps(v1, xv, a13);
        xv = xload16(x4, k, rem);
        a04 = _mm512_fmadd_ps(v0, xv, a04);
        a14 = _mm512_fmadd_ps(v1, xv, a14);
        xv = xload16(x5, k, rem);
        a05 = _mm512_fmadd_ps(v0, xv, a05);
        a15 = _mm512_fmadd_ps(v1, xv, a15);
    }
    if (k < K) {
        const int rem = (int)(K - k);
        const __m512 v0 = wload16(dt, w0, k, rem), v1 = wload16(dt, w1, k, rem);
        __m512 xv = xload16(x0, k, rem);
        a00 = _mm512_fmadd_ps(v0, xv, a00);
        a10 = _mm512_fmadd_ps(v1, xv, a10);
        xv = xload16(x1, k, rem);
        a01 = _mm512_fmadd_ps(v0, xv, a01);
        a11 = _mm512_fmadd_ps(v1, xv, a11);
        xv = xload16(x2, k, rem);
        a02 = _mm512_fmadd_ps(v0, xv, a02);
        a12 = _mm512_fmadd_ps(v1, xv, a12);
        xv = xload16(x3, k, rem);
        a03 = _mm512_fmadd_ps(v0, xv, a03);
        a13 = _mm512_fmadd_ps(v1, xv, a13);
        xv = xload16(x4, k, rem);
        a04 = _mm512_fmadd_ps(v0, xv, a04);
        a14 = _mm512_fmadd_ps(v1, xv, a14);
        xv = xload16(x5, k, rem);
        a05 = _mm512_fmadd_ps(v0, xv, a05);
        a15 = _mm512_fmadd_ps(v1, xv, a15);
    }
    __m128 s01 = reduce4(fold16(a00), fold16(a10), fold16(a01), fold16(a11));
    __m128 s23 = reduce4(fold16(a02), fold16(a12), fold16(a03), fold16(a13));
    __m128 s45 = reduce4(fold16(a04), fold16(a14), fold16(a05), fold16(a15));
    const __m128 sums[3] = {s01, s23, s45};
    for (int j = 0; j < 3; j++) {
        float v[4];
        _mm_storeu_ps(v, sums[j]);
        float *o0 = y + (2 * j) * ldy + r, *o1 = o0 + ldy;
        o0[0] = accumulate ? o0[0] + v[0] : v[0];
        o0[1] = accumulate ? o0[1] + v[1] : v[1];
        o1[0] = accumulate ? o1[0] + v[2] : v[2];
        o1[1] = accumulate ? o1[1] + v[3] : v[3];
    }
}

INLINE AVX512_FN void tile16_4x1(const enum native_dtype dt, const void *w, int64_t K, int64_t r,
                                 const float *x, float *y, int accumulate)
{
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *w0 = ROW(0), *w1 = ROW(1), *w2 = ROW(2), *w3 = ROW(3);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const int rem = 16;
        const __m512 xv = xload16(x, k, rem);
        a0 = _mm512_fmadd_ps(wload16(dt, w0, k, rem), xv, a0);
        a1 = _mm512_fmadd_ps(wload16(dt, w1, k, rem), xv, a1);
        a2 = _mm512_fmadd_ps(wload16(dt, w2, k, rem), xv, a2);
        a3 = _mm512_fmadd_ps(wload16(dt, w3, k, rem), xv, a3);
    }
    if (k < K) {
        const int rem = (int)(K - k);
        const __m512 xv = xload16(x, k, rem);
        a0 = _mm512_fmadd_ps(wload16(dt, w0, k, rem), xv, a0);
        a1 = _mm512_fmadd_ps(wload16(dt, w1, k, rem), xv, a1);
        a2 = _mm512_fmadd_ps(wload16(dt, w2, k, rem), xv, a2);
        a3 = _mm512_fmadd_ps(wload16(dt, w3, k, rem), xv, a3);
    }
    __m128 v = reduce4(fold16(a0), fold16(a1), fold16(a2), fold16(a3));
    float *o = y + r;
    _mm_storeu_ps(o, accumulate ? _mm_add_ps(_mm_loadu_ps(o), v) : v);
}

INLINE AVX512_FN void tile16_1x1(const enum native_dtype dt, const void *w, int64_t K, int64_t r,
                                 const float *x, float *y, int accumulate)
{
    const size_t es = dt == NATIVE_F32 ? 4 : 2;
    const char *w0 = ROW(0);
    __m512 a0 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const int rem = 16;
        a0 = _mm512_fmadd_ps(wload16(dt, w0, k, rem), xload16(x, k, rem), a0);
    }
    if (k < K) {
        const int rem = (int)(K - k);
        a0 = _mm512_fmadd_ps(wload16(dt, w0, k, rem), xload16(x, k, rem), a0);
    }
    float v = reduce1(fold16(a0));
    y[r] = accumulate ? y[r] + v : v;
}
#undef ROW

/* The AVX2 driver's schedule, with 16-lane tiles. */
INLINE AVX512_FN void mm_rows_avx512_dt(const enum native_dtype dt, const void *w, int64_t K,
                                        int64_t r0, int64_t r1, const float *x, int n, float *y,
                                        int64_t ldy, int accumulate)
{
#define X(t) (x + (int64_t)(t) * K)
#define Y(t) (y + (int64_t)(t) * ldy)
    for (int t0 = 0; t0 < n; t0 += MM_TOKEN_BLOCK) {
        const int t1 = t0 + MM_TOKEN_BLOCK < n ? t0 + MM_TOKEN_BLOCK : n;
        int tm = t0;        /* tokens [t0, tm) go through the wide tiles */
        int64_t r = r0;
        if (t1 - t0 == 1) {
            for (; r + 8 <= r1; r += 8)
                tile16_8x1(dt, w, K, r, X(t0), Y(t0), accumulate);
            for (; r < r1; r++)
                tile16_1x1(dt, w, K, r, X(t0), Y(t0), accumulate);
            continue;
        }
        /* Each group of four rows meets every token of the block before the
         * next group, so its rows come from memory once. */
        const int wide = dt != NATIVE_F32 && t1 - t0 >= 6 ? 6 : 3;
        tm = t0 + (t1 - t0) / wide * wide;
        for (; r + 4 <= r1; r += 4) {
            for (int t = t0; t < tm; t += wide) {
                if (wide == 6) {
                    tile16_2x6(dt, w, K, r, X(t), Y(t), ldy, accumulate, t == t0);
                    tile16_2x6(dt, w, K, r + 2, X(t), Y(t), ldy, accumulate, t == t0);
                } else {
                    tile16_4x3(dt, w, K, r, X(t), Y(t), ldy, accumulate);
                }
            }
            for (int t = tm; t < t1; t++)
                tile16_4x1(dt, w, K, r, X(t), Y(t), accumulate);
        }
        for (; r < r1; r++)
            for (int t = t0; t < t1; t++)
                tile16_1x1(dt, w, K, r, X(t), Y(t), accumulate);
    }
#undef X
#undef Y
}

AVX512_FN static void mm_rows_avx512(const struct native_mat *w, int64_t r0, int64_t r1,
                                     const float *x, int n, float *y, int accumulate)
{
    switch (w->dtype) {
    case NATIVE_F32:
        mm_rows_avx512_dt(NATIVE_F32, w->data, w->cols, r0, r1, x, n, y, w->rows, accumulate);
        break;
    case NATIVE_BF16:
        mm_rows_avx512_dt(NATIVE_BF16, w->data, w->cols, r0, r1, x, n, y, w->rows, accumulate);
        break;
    default:
        mm_rows_avx512_dt(NATIVE_F16, w->data, w->cols, r0, r1, x, n, y, w->rows, accumulate);
        break;
    }
}

static int cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

/* F16C is CPUID leaf 1, ECX bit 29; asked through cpuid because clang 14's
 * __builtin_cpu_supports() does not know "f16c". */
static int cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
}
#else
static int cpu_has_avx2(void)
{
    return 0;
}

static int cpu_has_avx512(void)
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
    if (w->dtype == NATIVE_F8_E4M3) {
        cpu_fp8_rows(cb, w, r0, r1, x, n, y, accumulate);
        return;
    }
#if HAVE_X86
    /* Wide vectors pay off on long rows; on short ones (stories260K's 64 and
     * 172) the extra reduction work eats the gain, so those stay on AVX2.
     * The choice depends on the matrix alone, so it never varies by batch. */
    if (cb->avx512 && w->cols >= MM_AVX512_MIN_COLS) {
        mm_rows_avx512(w, r0, r1, x, n, y, accumulate);
        return;
    }
    if (cb->avx2) {
        mm_rows_avx2(w, r0, r1, x, n, y, accumulate);
        return;
    }
#endif
    mm_rows_portable(w, r0, r1, x, n, y, accumulate);
}

/* The BF16 kernels (ops_cpu_bf16.c) take BF16 weights whose rows fit the
 * activation scratch at least one token at a time. The choice depends on the
 * matrix alone (and the backend), so a token's row never changes kernel with
 * the batch around it: that is what keeps ops.h's promise. */
static int mm_uses_bf16(const struct cpu_backend *cb, const struct native_mat *w)
{
    return cb->bf16 && w->dtype == NATIVE_BF16 &&
           (size_t)cpu_bf16_row_elems(cb->bf16, w->cols) <= cb->xb_cap;
}

struct mm_job {
    const struct cpu_backend *cb;
    int n;
    const float *x;
    const struct native_mat *w;
    float *const *y;
    int accumulate;
    int n_w;
    const uint16_t *xb;     /* x rounded to BF16 (rows of ldx), or NULL */
    int64_t ldx;
    int64_t chunk;          /* rows per task */
    int first_task[5];      /* first task of weight j; first_task[n_w] = total */
};

/* Rows r0..r1 of weight w for every token of the job: the BF16 kernels where
 * the matrix takes them (job->xb is then ready), else mm_rows. */
static void mm_job_rows(const struct mm_job *job, const struct native_mat *w, int64_t r0,
                        int64_t r1, float *y)
{
    if (job->xb && mm_uses_bf16(job->cb, w))
        cpu_bf16_rows(job->cb->bf16, w, r0, r1, job->xb, job->ldx, job->n, y, job->accumulate);
    else
        mm_rows(job->cb, w, r0, r1, job->x, job->n, y, job->accumulate);
}

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
    mm_job_rows(job, w, r0, r1, job->y[j]);
}

/* One matmul over tokens [0, n) with x rounded to BF16 in xb (or xb NULL). */
static void mm_run(struct cpu_backend *cb, int n, const float *x, const uint16_t *xb,
                   int64_t ldx, int n_w, const struct native_mat *w, float *const *y,
                   int accumulate)
{
    int64_t macs = 0, rows = 0;

    for (int j = 0; j < n_w; j++) {
        macs += (int64_t)n * w[j].rows * w[j].cols;
        rows += w[j].rows;
    }
    struct mm_job job = {cb, n, x, w, y, accumulate, n_w, xb, ldx, 0, {0}};
    if (cb->threads == 1 || macs < MM_PARALLEL_MIN_MACS) {
        for (int j = 0; j < n_w; j++)
            mm_job_rows(&job, &w[j], 0, w[j].rows, y[j]);
        return;
    }

    /* Tasks of at least MM_TASK_MACS, at most sixteen per thread, in whole
     * 8-row tiles: many small tasks even out the dynamic hand-out, and a
     * thread the OS preempts mid-task (the machine is shared) holds up only
     * a small piece; but each task costs a hand-off between cores, which a
     * small matmul cannot pay for. */
    int64_t tasks = macs / MM_TASK_MACS;
    if (tasks > 16 * cb->threads)
        tasks = 16 * cb->threads;
    if (tasks < cb->threads)
        tasks = cb->threads;
    int64_t chunk = (rows + tasks - 1) / tasks;
    job.chunk = chunk < 8 ? 8 : (chunk + 7) & ~(int64_t)7;
    for (int j = 0; j < n_w; j++)
        job.first_task[j + 1] = job.first_task[j] + (int)((w[j].rows + job.chunk - 1) / job.chunk);
    threadpool_run(cb->pool, mm_task, &job, job.first_task[n_w]);
}

static void cpu_matmul(struct native_backend *b, int n, const float *x, int n_w,
                       const struct native_mat *w, float *const *y, int accumulate)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    int bf16 = 0;

    assert(n_w >= 1 && n_w <= 4);
    for (int j = 0; j < n_w; j++) {
        assert(w[j].cols == w[0].cols);
        bf16 |= mm_uses_bf16(cb, &w[j]);
    }
    if (!bf16) {
        mm_run(cb, n, x, NULL, 0, n_w, w, y, accumulate);
        return;
    }
    /* Round x to BF16 once for every weight of the call, as many tokens at a
     * time as the scratch holds (all of them at the sizes we serve; a token's
     * row does not depend on which pass it came in). */
    const int64_t K = w[0].cols, ldx = MM_BF16_LDX(K);
    const size_t row = (size_t)cpu_bf16_row_elems(cb->bf16, K);
    const int per = (size_t)n * row <= cb->xb_cap ? n : (int)(cb->xb_cap / row);
    for (int t0 = 0; t0 < n; t0 += per) {
        const int m = n - t0 < per ? n - t0 : per;
        float *yt[4];
        for (int j = 0; j < n_w; j++)
            yt[j] = y[j] + (int64_t)t0 * w[j].rows;
        cpu_bf16_round_x(cb->bf16, x + (int64_t)t0 * K, m, K, cb->xb, ldx);
        mm_run(cb, m, x + (int64_t)t0 * K, cb->xb, ldx, n_w, w, yt, accumulate);
    }
}

static void cpu_rmsnorm(struct native_backend *b, float *y, const float *x, const float *w, int n,
                        int dim, int stride, float eps)
{
    (void)b;
    assert(stride >= dim);
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * stride;
        float *yt = y + (size_t)t * stride;
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

static void cpu_rope(struct native_backend *b, float *x, int n, int n_heads, int head_stride,
                     int row_stride, const int32_t *pos, const struct native_rope *r)
{
    (void)b;
    const int half = r->dim / 2;
    for (int t = 0; t < n; t++) {
        assert(pos[t] >= 0 && pos[t] < r->n_pos);
        const float *c = r->cos + (size_t)pos[t] * half;
        const float *s = r->sin + (size_t)pos[t] * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)t * row_stride + (size_t)h * head_stride;
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

/* Dense: K goes in transposed, V as a row (layouts in cpu_internal.h).
 * Latent: c then k_pe, one row per position. */
/* A dense store split over the pool by slices of kv_dim: K is stored
 * transposed, so each of a token's kv_dim values lands on its own cache line
 * of K^T (a block's row of BS positions), and with 16 streams of a 2048-wide
 * model those misses were 8% of a batched step on one core while the other
 * waited. Slices of whole 16-dim groups touch disjoint lines of K^T and of V. */
#define KV_STORE_PARALLEL_MIN (32 * 1024)
#define KV_STORE_TASK_DIMS 256

struct kv_store_job {
    struct native_kv *kv;
    int layer;
    const struct native_batch *batch;
    const float *a, *bb;
    int a_stride, bb_stride;
};

static void kv_store_dense(const struct kv_store_job *j, int d0, int d1)
{
    const struct native_kv *kv = j->kv;
    const int BS = kv->block_size, D = kv->desc.kv_dim;
    for (int t = 0; t < j->batch->n_tokens; t++) {
        const struct native_seq_view *sv = &j->batch->seqs[j->batch->seq[t]];
        const int p = j->batch->pos[t];
        float *blk = cpu_kv_block(kv, sv, p, j->layer);
        const int off = p % BS;
        const float *at = j->a + (size_t)t * j->a_stride, *bt = j->bb + (size_t)t * j->bb_stride;
        for (int i = d0; i < d1; i++)
            blk[(size_t)i * BS + off] = at[i];
        memcpy(blk + (size_t)BS * D + (size_t)off * D + d0, bt + d0, sizeof(float) * (size_t)(d1 - d0));
    }
}

static void kv_store_task(void *arg, int task, int thread)
{
    const struct kv_store_job *j = arg;
    (void)thread;
    const int D = j->kv->desc.kv_dim, d0 = task * KV_STORE_TASK_DIMS;
    kv_store_dense(j, d0, d0 + KV_STORE_TASK_DIMS < D ? d0 + KV_STORE_TASK_DIMS : D);
}

static void cpu_kv_store(struct native_backend *b, struct native_kv *kv, int layer,
                         const struct native_batch *batch, const float *a, int a_stride,
                         const float *bb, int bb_stride)
{
    const struct cpu_backend *cb = (const struct cpu_backend *)b;
    const int BS = kv->block_size;
    for (int t = 0; t < batch->n_tokens; t++)
        assert(batch->pos[t] / BS < batch->seqs[batch->seq[t]].n_blocks);
    if (kv->desc.kind == NATIVE_KV_DENSE) {
        const struct kv_store_job j = {kv, layer, batch, a, bb, a_stride, bb_stride};
        const int D = kv->desc.kv_dim;
        if (cb->threads == 1 || (int64_t)batch->n_tokens * D < KV_STORE_PARALLEL_MIN)
            kv_store_dense(&j, 0, D);
        else
            threadpool_run(cb->pool, kv_store_task, (void *)&j,
                           (D + KV_STORE_TASK_DIMS - 1) / KV_STORE_TASK_DIMS);
        return;
    }
    for (int t = 0; t < batch->n_tokens; t++) {
        const struct native_seq_view *sv = &batch->seqs[batch->seq[t]];
        int p = batch->pos[t];
        float *blk = cpu_kv_block(kv, sv, p, layer);
        int off = p % BS;
        const float *at = a + (size_t)t * a_stride, *bt = bb + (size_t)t * bb_stride;
        const int L = kv->desc.latent_dim, R = kv->desc.rope_dim;
        float *row = blk + (size_t)off * (size_t)(L + R);
        memcpy(row, at, sizeof(float) * (size_t)L);
        memcpy(row + L, bt, sizeof(float) * (size_t)R);
    }
}

struct attn_job {
    const struct cpu_backend *cb;
    float *out;
    const float *q;
    struct native_kv *kv;
    int layer;
    const struct native_batch *batch;
    int n_heads, n_kv_heads, hd;
};

/* One task: token t, KV group g, all of its query heads. */
static void attn_task(void *arg, int task, int thread)
{
    const struct attn_job *j = arg;
    (void)thread;
    const int rep = j->n_heads / j->n_kv_heads;
    const int t = task / j->n_kv_heads, g = task % j->n_kv_heads;
    const struct native_batch *bt = j->batch;
    const struct native_seq_view *sv = &bt->seqs[bt->seq[t]];
    const int n_pos = bt->pos[t] + 1;
    for (int h0 = g * rep; h0 < (g + 1) * rep; h0 += ATTN_MAX_REP) {
        const int nh = (g + 1) * rep - h0 < ATTN_MAX_REP ? (g + 1) * rep - h0 : ATTN_MAX_REP;
        const size_t off = ((size_t)t * j->n_heads + h0) * j->hd;
#if HAVE_X86
        if (j->cb->avx2 && j->hd % 8 == 0) {
            attn_group_avx2(j->out + off, j->q + off, j->kv, j->layer, sv, n_pos, g, j->hd, nh);
            continue;
        }
#endif
        for (int h = 0; h < nh; h++)
            attn_head_portable(j->out + off + (size_t)h * j->hd, j->q + off + (size_t)h * j->hd,
                               j->kv, j->layer, sv, n_pos, g, j->hd);
    }
}

static void cpu_attention(struct native_backend *b, float *out, const float *q,
                          struct native_kv *kv, int layer, const struct native_batch *batch,
                          int n_heads, int n_kv_heads, int head_dim)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    struct attn_job job = {cb, out, q, kv, layer, batch, n_heads, n_kv_heads, head_dim};
    int64_t work = 0;

    assert(kv->desc.kind == NATIVE_KV_DENSE && head_dim <= OPS_CPU_MAX_HEAD_DIM &&
           kv->block_size <= NATIVE_MAX_BLOCK_SIZE && kv->block_size % 8 == 0);
    for (int t = 0; t < batch->n_tokens; t++)
        work += (int64_t)(batch->pos[t] + 1) * n_heads * head_dim;
    int tasks = batch->n_tokens * n_kv_heads;
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

/* ---- Memory: host memory is the CPU's own, so buffers are plain
 * allocations (64-byte aligned for the vector loads), weights are used
 * where the model mapped them, and upload/download are copies. ---- */

struct native_buf {
    void *data;
};

static struct native_buf *cpu_buf_alloc(struct native_backend *b, size_t bytes)
{
    (void)b;
    struct native_buf *buf = malloc(sizeof(*buf));
    if (!buf)
        return NULL;
    /* aligned_alloc wants a multiple of the alignment, and 0 bytes is legal here. */
    size_t n = (bytes + 63) & ~(size_t)63;
    buf->data = aligned_alloc(64, n ? n : 64);
    if (!buf->data) {
        free(buf);
        return NULL;
    }
    return buf;
}

static void cpu_buf_free(struct native_backend *b, struct native_buf *buf)
{
    (void)b;
    if (!buf)
        return;
    free(buf->data);
    free(buf);
}

static void *cpu_buf_addr(struct native_backend *b, struct native_buf *buf)
{
    (void)b;
    return buf->data;
}

static void cpu_upload(struct native_backend *b, struct native_buf *buf, size_t offset,
                       const void *src, size_t n)
{
    (void)b;
    memcpy((char *)buf->data + offset, src, n);
}

static void cpu_download(struct native_backend *b, void *dst, struct native_buf *buf, size_t offset,
                         size_t n)
{
    (void)b;
    memcpy(dst, (const char *)buf->data + offset, n);
}

/* Every CPU op has finished when it returns. */
static void cpu_synchronize(struct native_backend *b)
{
    (void)b;
}

static const void *cpu_map_weights(struct native_backend *b, const void *host, size_t n)
{
    (void)b;
    (void)n;
    return host;
}

static void cpu_unmap_weights(struct native_backend *b, const void *addr)
{
    (void)b;
    (void)addr;
}

static size_t cpu_kv_layer_floats(const struct native_kv_desc *d)
{
    if (d->kind == NATIVE_KV_LATENT)
        return (size_t)OPS_CPU_BLOCK_SIZE * (size_t)(d->latent_dim + d->rope_dim);
    return 2 * (size_t)OPS_CPU_BLOCK_SIZE * (size_t)d->kv_dim;
}

static size_t cpu_kv_block_bytes(struct native_backend *b, const struct native_kv_desc *d)
{
    (void)b;
    return cpu_kv_layer_floats(d) * (size_t)d->n_layers * sizeof(float);
}

/* One anonymous mapping: pages count against RSS only once a sequence has
 * written to them, so a large budget costs nothing until it is used. */
static struct native_kv *cpu_kv_new(struct native_backend *b, const struct native_kv_desc *d,
                                    int n_blocks, char *err, size_t errlen)
{
    if (d->n_layers < 1 || n_blocks < 1 ||
        (d->kind == NATIVE_KV_DENSE && (d->kv_dim < 1 || d->kv_dim > 65536)) ||
        (d->kind == NATIVE_KV_LATENT &&
         (d->latent_dim < 1 || d->latent_dim > NATIVE_MAX_LATENT || d->rope_dim < 2 ||
          d->rope_dim > NATIVE_MAX_HEAD_DIM))) {
        snprintf(err, errlen, "KV cache shape not supported by the CPU backend");
        return NULL;
    }
    struct native_kv *kv = calloc(1, sizeof(*kv));
    if (!kv) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    kv->desc = *d;
    kv->block_size = OPS_CPU_BLOCK_SIZE;
    kv->n_blocks = n_blocks;
    kv->layer_stride = cpu_kv_layer_floats(d);
    kv->block_stride = (size_t)d->n_layers * kv->layer_stride;
    kv->map_bytes = cpu_kv_block_bytes(b, d) * (size_t)n_blocks;
    void *p = mmap(NULL, kv->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) {
        snprintf(err, errlen, "cannot map %zu bytes of KV cache", kv->map_bytes);
        free(kv);
        return NULL;
    }
    kv->data = p;
    return kv;
}

static void cpu_kv_free(struct native_backend *b, struct native_kv *kv)
{
    (void)b;
    if (!kv)
        return;
    munmap(kv->data, kv->map_bytes);
    free(kv);
}

static void cpu_free(struct native_backend *b)
{
    struct cpu_backend *cb = (struct cpu_backend *)b;
    if (cb->xb)
        munmap(cb->xb, cb->xb_cap * sizeof(uint16_t));
    threadpool_free(cb->pool);
    free(cb);
}

static const struct native_ops cpu_ops = {
    .name = "cpu",
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .buf_addr = cpu_buf_addr,
    .upload = cpu_upload,
    .download = cpu_download,
    .synchronize = cpu_synchronize,
    .host_visible = 1,
    .map_weights = cpu_map_weights,
    .unmap_weights = cpu_unmap_weights,
    .kv_new = cpu_kv_new,
    .kv_free = cpu_kv_free,
    .kv_block_bytes = cpu_kv_block_bytes,
    .kv_block_size = OPS_CPU_BLOCK_SIZE,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .mla_attention = cpu_mla_attention,
    .swiglu = cpu_swiglu,
    .embed = cpu_embed,
    .gather = cpu_gather,
    .moe_gate = cpu_moe_gate,
    .moe_experts = cpu_moe_experts,
    .moe_combine = cpu_moe_combine,
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
    cb->avx512 = cb->avx2 && !(flags & OPS_CPU_NO_AVX512) && cpu_has_avx512();
    if (cb->avx512 && !(flags & OPS_CPU_NO_BF16) && cpu_has_avx512_bf16()) {
        /* Without the scratch the backend still works, on the float tiles. */
        void *p = mmap(NULL, MM_BF16_SCRATCH * sizeof(uint16_t), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p != MAP_FAILED) {
            cb->xb = p;
            cb->xb_cap = MM_BF16_SCRATCH;
            cb->bf16 = flags & OPS_CPU_BF16_DP    ? CPU_BF16_DP
                       : flags & OPS_CPU_BF16_FMA ? CPU_BF16_FMA
                                                  : cpu_bf16_pick();
        }
    }
    return &cb->base;
}

const char *ops_cpu_kernels(const struct native_backend *b)
{
    const struct cpu_backend *cb = (const struct cpu_backend *)b;
    return cb->bf16 ? "avx512bf16" : cb->avx512 ? "avx512" : cb->avx2 ? "avx2" : "portable";
}

const char *ops_cpu_bf16_kernels(const struct native_backend *b)
{
    const struct cpu_backend *cb = (const struct cpu_backend *)b;
    return cb->bf16 == CPU_BF16_FMA ? "fma" : cb->bf16 == CPU_BF16_DP ? "vdpbf16ps" : "";
}

int ops_cpu_threads(const struct native_backend *b)
{
    return ((const struct cpu_backend *)b)->threads;
}
