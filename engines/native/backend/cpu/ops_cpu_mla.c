/* ops_cpu_mla.c: MLA attention (DeepSeek-V2/V3) over the CPU's latent KV
 * cache; the op mla_attention of ops.h, whose struct native_mla comment
 * holds the math.
 *
 * Cache rows (cpu_internal.h): position p of a sequence, in layer l, is
 * latent_dim floats of c[p] then rope_dim floats of k_pe[p].
 * kv_b is [n_heads * (nope + v)][latent]: head h's first nope rows are
 * W_UK[h], the next v rows W_UV[h].
 *
 * Two paths, the same function:
 *   NAIVE, per sequence and head: decompress k_nope[p] = W_UK[h] c[p] and
 *     v[p] = W_UV[h] c[p] for every attended position into scratch, then
 *     plain softmax attention;
 *   ABSORB, per group of 8 heads and token: q_lat = W_UK[h]^T q_nope
 *     (kv_b's rows scaled and summed: row access only, no transposed copy),
 *     s_p = q_lat . c[p] + q_pe . k_pe[p], o_lat = sum_p softmax(s)_p c[p],
 *     out = W_UV[h] o_lat. It reads each head's rows of kv_b once per token
 *     (from cache after the first token) and each cached latent once per
 *     group of heads. The two latent products are GEMMs over heads x
 *     positions x latent (134 M multiply-adds per token at V3's size and
 *     1025 positions), so the vector builds run them as register tiles.
 *
 * Scratch (floats), maxp = the most positions any token of the call attends
 * (at most the n_ctx that native_mla_scratch_floats() was given):
 *   lat [n_heads][latent + v]         absorb: q_lat, then o_lat
 *   sc  [n_heads][maxp]               scores, then softmax numerators
 *   kvd [n_heads][maxp][nope + v]     naive: decompressed k_nope | v
 *
 * Threads: one task per head (naive) or group of 8 heads (absorb), each with
 * its own slices of scratch, on the backend's pool when the work pays for
 * the hand-off. A (token, head) result is the same instruction sequence
 * whatever the thread count, the grouping or the batch.
 */
#include "engines/native/backend/cpu/cpu_internal.h"

#include "engines/native/backend/dtype.h"

#include <assert.h>
#include <math.h>
#include <string.h>

/* Below this many multiply-adds a call runs on the calling thread. */
#define MLA_PARALLEL_MIN (64 * 1024)
/* Heads per absorb task: their q_lat/o_lat (8 x 2 KiB at latent 512) stay
 * in L1 while a cache row passes over all of them. */
#define MLA_HEAD_GROUP 8

INLINE float wval(const struct native_mat *w, int64_t i)
{
    switch (w->dtype) {
    case NATIVE_F32:
        return ((const float *)w->data)[i];
    case NATIVE_BF16:
        return dtype_bf16_to_f32(((const uint16_t *)w->data)[i]);
    case NATIVE_F16:
        return dtype_f16_to_f32(((const uint16_t *)w->data)[i]);
    default:
        return dtype_e4m3_to_f32(((const uint8_t *)w->data)[i]);
    }
}

/* ---- Portable vector helpers ---- */

static float dot_portable(const float *a, const float *b, int n)
{
    float l[8] = {0};
    for (int i = 0; i < n; i++)
        l[i & 7] += a[i] * b[i];
    return lanes_sum(l);
}

static void axpy_portable(float *y, float a, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

/* w[r] . x for the 16/32-bit dtypes. */
static float wdot_portable(const struct native_mat *w, int64_t r, const float *x)
{
    float l[8] = {0};
    const int64_t base = r * w->cols;
    for (int64_t i = 0; i < w->cols; i++)
        l[i & 7] += wval(w, base + i) * x[i];
    return lanes_sum(l);
}

static void waxpy_portable(const struct native_mat *w, int64_t r, float a, float *acc)
{
    const int64_t base = r * w->cols;
    for (int64_t i = 0; i < w->cols; i++)
        acc[i] += a * wval(w, base + i);
}

/* ---- AVX2 vector helpers ---- */
#if HAVE_X86

INLINE AVX2_FN __m256i tail_mask(int rem)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

INLINE AVX2_FN float reduce1(__m256 a)
{
    __m256 t = _mm256_hadd_ps(a, a);
    t = _mm256_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

/* 8 weights of row data (dtype dt) from element i, as floats. */
INLINE AVX2_FN __m256 wload8(enum native_dtype dt, const void *data, int64_t i)
{
    if (dt == NATIVE_F32)
        return _mm256_loadu_ps((const float *)data + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)data + i));
    if (dt == NATIVE_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* Two chains (even and odd vectors) hide the FMA latency; they meet before
 * the tail, in a fixed order. */
AVX2_FN static float dot_avx2(const float *a, const float *b, int n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    s0 = _mm256_add_ps(s0, s1);
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s0);
    }
    return reduce1(s0);
}

AVX2_FN static void axpy_avx2(float *y, float a, const float *x, int n)
{
    const __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

AVX2_FN static float wdot_avx2(const struct native_mat *w, int64_t r, const float *x)
{
    const int64_t K = w->cols, base = r * K;
    __m256 s = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= K; i += 8)
        s = _mm256_fmadd_ps(wload8(w->dtype, w->data, base + i), _mm256_loadu_ps(x + i), s);
    float l[8] = {0}, t = 0.0f;
    for (; i < K; i++)
        t += wval(w, base + i) * x[i];
    l[0] = t;
    return reduce1(_mm256_add_ps(s, _mm256_loadu_ps(l)));
}

AVX2_FN static void waxpy_avx2(const struct native_mat *w, int64_t r, float a, float *acc)
{
    const int64_t K = w->cols, base = r * K;
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= K; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(av, wload8(w->dtype, w->data, base + i),
                                                  _mm256_loadu_ps(acc + i)));
    for (; i < K; i++)
        acc[i] += a * wval(w, base + i);
}
#endif

/* ---- Dispatch over the kernel build and kv_b's dtype ---- */

INLINE float vdot(const struct cpu_backend *cb, const float *a, const float *b, int n)
{
#if HAVE_X86
    if (cb->avx2)
        return dot_avx2(a, b, n);
#endif
    (void)cb;
    return dot_portable(a, b, n);
}

INLINE void vaxpy(const struct cpu_backend *cb, float *y, float a, const float *x, int n)
{
#if HAVE_X86
    if (cb->avx2) {
        axpy_avx2(y, a, x, n);
        return;
    }
#endif
    (void)cb;
    axpy_portable(y, a, x, n);
}

/* kv_b[r] . x (x has latent_dim floats). */
INLINE float wdot(const struct cpu_backend *cb, const struct native_mat *w, int64_t r,
                  const float *x)
{
    if (w->dtype == NATIVE_F8_E4M3)
        return cpu_fp8_dot(cb, w, r, x);
#if HAVE_X86
    if (cb->avx2)
        return wdot_avx2(w, r, x);
#endif
    return wdot_portable(w, r, x);
}

/* acc += a * kv_b[r]. */
INLINE void waxpy(const struct cpu_backend *cb, const struct native_mat *w, int64_t r, float a,
                  float *acc)
{
    if (w->dtype == NATIVE_F8_E4M3) {
        cpu_fp8_axpy(cb, w, r, a, acc);
        return;
    }
#if HAVE_X86
    if (cb->avx2) {
        waxpy_avx2(w, r, a, acc);
        return;
    }
#endif
    waxpy_portable(w, r, a, acc);
}

/* ---- The op ---- */

struct mla_job {
    const struct cpu_backend *cb;
    float *out;
    const float *q;
    const struct native_kv *kv;
    int layer;
    const struct native_batch *batch;
    const struct native_mla *p;
    float *lat, *sc, *kvd;
    int maxp;
    int t0, t1;         /* naive: the tokens of one sequence */
    int n_att;          /* naive: positions that sequence attends */
};

/* The cache row of position pos of sequence view sv. */
INLINE const float *latent_row(const struct native_kv *kv, const struct native_seq_view *sv,
                               int pos, int layer)
{
    const int w = kv->desc.latent_dim + kv->desc.rope_dim;
    return cpu_kv_block(kv, sv, pos, layer) + (size_t)(pos % kv->block_size) * (size_t)w;
}

/* sc[0..n) = e^(sc - max); returns 1 / their sum (added in p order). */
static float softmax_numerators(float *sc, int n)
{
    float m = sc[0];
    for (int i = 1; i < n; i++)
        m = sc[i] > m ? sc[i] : m;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        sc[i] = expf(sc[i] - m);
        sum += sc[i];
    }
    return 1.0f / sum;
}

#if HAVE_X86
/* The absorbed path's two products over the latent, as register tiles (the
 * GEMMs S = Q_lat C^T and O_lat = E C of FlashMLA, for 4 heads at a time):
 *   scores: 4 heads x 3 positions, 12 accumulators; per 8 latent dims, 3
 *           cache loads and 4 q_lat loads feed 12 FMAs;
 *   o_lat:  4 heads x 24 latent dims, 12 accumulators held over every
 *           position; per position 3 cache loads and 4 broadcasts feed 12.
 * Edge tiles run at full size on a repeated head or position and throw the
 * extra results away, so every kept value is the same chain (a dot product:
 * 8 lanes over the dims in order, then reduce1; an o_lat element: FMAs over
 * the positions in order) whatever tile it fell in. */
AVX2_FN static void absorb_scores_avx2(const struct native_kv *kv, int layer,
                                       const struct native_seq_view *sv, int np, const float *lat,
                                       int lat_stride, const float *const *qpe, int nh, float *sc,
                                       int sc_stride, float scale)
{
    const int L = kv->desc.latent_dim, R = kv->desc.rope_dim, nv = L / 8, rem = L % 8;
    const __m256i m = tail_mask(rem);
    for (int p0 = 0; p0 < np; p0 += 3) {
        const int pn = np - p0 < 3 ? np - p0 : 3;
        const float *c[3];
        for (int i = 0; i < 3; i++)
            c[i] = latent_row(kv, sv, p0 + (i < pn ? i : 0), layer);
        for (int h = 0; h < nh; h += 4) {
            const int hn = nh - h < 4 ? nh - h : 4;
            const float *q[4];
            for (int i = 0; i < 4; i++)
                q[i] = lat + (size_t)(h + (i < hn ? i : 0)) * lat_stride;
            __m256 a[4][3];
            for (int i = 0; i < 4; i++)
                for (int k = 0; k < 3; k++)
                    a[i][k] = _mm256_setzero_ps();
            for (int v = 0; v < nv; v++) {
                const __m256 c0 = _mm256_loadu_ps(c[0] + 8 * v), c1 = _mm256_loadu_ps(c[1] + 8 * v);
                const __m256 c2 = _mm256_loadu_ps(c[2] + 8 * v);
                for (int i = 0; i < 4; i++) {
                    const __m256 qv = _mm256_loadu_ps(q[i] + 8 * v);
                    a[i][0] = _mm256_fmadd_ps(qv, c0, a[i][0]);
                    a[i][1] = _mm256_fmadd_ps(qv, c1, a[i][1]);
                    a[i][2] = _mm256_fmadd_ps(qv, c2, a[i][2]);
                }
            }
            if (rem) {
                const __m256 c0 = _mm256_maskload_ps(c[0] + 8 * nv, m);
                const __m256 c1 = _mm256_maskload_ps(c[1] + 8 * nv, m);
                const __m256 c2 = _mm256_maskload_ps(c[2] + 8 * nv, m);
                for (int i = 0; i < 4; i++) {
                    const __m256 qv = _mm256_maskload_ps(q[i] + 8 * nv, m);
                    a[i][0] = _mm256_fmadd_ps(qv, c0, a[i][0]);
                    a[i][1] = _mm256_fmadd_ps(qv, c1, a[i][1]);
                    a[i][2] = _mm256_fmadd_ps(qv, c2, a[i][2]);
                }
            }
            for (int i = 0; i < hn; i++)
                for (int k = 0; k < pn; k++)
                    sc[(size_t)(h + i) * sc_stride + p0 + k] =
                        (reduce1(a[i][k]) + dot_avx2(qpe[h + i], c[k] + L, R)) * scale;
        }
    }
}

/* o[h][d] = sum_p e[h][p] c[p][d] for d in 8 * v0 .. 8 * (v0 + 3), p < np,
 * four heads (o and e rows, repeated at the edge). masked: some of the
 * three vectors run past L (then their lanes there load and store nothing). */
INLINE AVX2_FN void olat_tile(const int masked, const struct native_kv *kv, int layer,
                              const struct native_seq_view *sv, int np, int v0, float *const *o,
                              const float *const *e, int hn)
{
    const int L = kv->desc.latent_dim, W = L + kv->desc.rope_dim, BS = kv->block_size;
    __m256i mk[3];
    for (int k = 0; k < 3; k++) {
        int left = L - 8 * (v0 + k);
        mk[k] = tail_mask(left < 0 ? 0 : left > 8 ? 8 : left);
    }
    __m256 a[4][3];
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 3; k++)
            a[i][k] = _mm256_setzero_ps();
    for (int p = 0; p < np;) {
        const float *row = latent_row(kv, sv, p, layer) + 8 * v0;
        const int n = BS - p % BS < np - p ? BS - p % BS : np - p;
        for (int r = 0; r < n; r++, p++, row += W) {
            __m256 cv[3];
            for (int k = 0; k < 3; k++)
                cv[k] = masked ? _mm256_maskload_ps(row + 8 * k, mk[k]) : _mm256_loadu_ps(row + 8 * k);
            for (int i = 0; i < 4; i++) {
                const __m256 ev = _mm256_broadcast_ss(e[i] + p);
                for (int k = 0; k < 3; k++)
                    a[i][k] = _mm256_fmadd_ps(ev, cv[k], a[i][k]);
            }
        }
    }
    for (int i = 0; i < hn; i++)
        for (int k = 0; k < 3; k++) {
            float *d = o[i] + 8 * (v0 + k);
            if (masked)
                _mm256_maskstore_ps(d, mk[k], a[i][k]);
            else
                _mm256_storeu_ps(d, a[i][k]);
        }
}

AVX2_FN static void absorb_olat_avx2(const struct native_kv *kv, int layer,
                                     const struct native_seq_view *sv, int np, float *lat,
                                     int lat_stride, const float *sc, int sc_stride, int nh)
{
    const int L = kv->desc.latent_dim, nvec = (L + 7) / 8;
    for (int h = 0; h < nh; h += 4) {
        const int hn = nh - h < 4 ? nh - h : 4;
        float *o[4];
        const float *e[4];
        for (int i = 0; i < 4; i++) {
            o[i] = lat + (size_t)(h + (i < hn ? i : 0)) * lat_stride;
            e[i] = sc + (size_t)(h + (i < hn ? i : 0)) * sc_stride;
        }
        for (int v0 = 0; v0 < nvec; v0 += 3) {
            if (8 * (v0 + 3) <= L)
                olat_tile(0, kv, layer, sv, np, v0, o, e, hn);
            else
                olat_tile(1, kv, layer, sv, np, v0, o, e, hn);
        }
    }
}
#endif

#if HAVE_X86
/* The same two tiles over 16 lanes and 32 registers, for the backends that
 * run AVX-512 (twice the multiply-adds per instruction where the core has
 * full-width units): scores in 8-head x 3-position tiles, o_lat in 8-head x
 * 48-dim tiles. Same rules: edge tiles repeat a head or position, each kept
 * value is one fixed chain (16 lanes folded to 8 before reduce1's tree). */

INLINE AVX512_FN float reduce16(__m512 a)
{
    return reduce1(_mm256_add_ps(_mm512_castps512_ps256(a),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1))));
}

AVX512_FN static void absorb_scores_avx512(const struct native_kv *kv, int layer,
                                           const struct native_seq_view *sv, int np,
                                           const float *lat, int lat_stride,
                                           const float *const *qpe, int nh, float *sc,
                                           int sc_stride, float scale)
{
    const int L = kv->desc.latent_dim, R = kv->desc.rope_dim, nv = L / 16, rem = L % 16;
    const __mmask16 m = (__mmask16)((1u << rem) - 1);
    for (int p0 = 0; p0 < np; p0 += 3) {
        const int pn = np - p0 < 3 ? np - p0 : 3;
        const float *c[3];
        for (int i = 0; i < 3; i++)
            c[i] = latent_row(kv, sv, p0 + (i < pn ? i : 0), layer);
        for (int h = 0; h < nh; h += 8) {
            const int hn = nh - h < 8 ? nh - h : 8;
            const float *q[8];
            for (int i = 0; i < 8; i++)
                q[i] = lat + (size_t)(h + (i < hn ? i : 0)) * lat_stride;
            __m512 a[8][3];
            for (int i = 0; i < 8; i++)
                for (int k = 0; k < 3; k++)
                    a[i][k] = _mm512_setzero_ps();
            for (int v = 0; v < nv; v++) {
                const __m512 c0 = _mm512_loadu_ps(c[0] + 16 * v), c1 = _mm512_loadu_ps(c[1] + 16 * v);
                const __m512 c2 = _mm512_loadu_ps(c[2] + 16 * v);
                for (int i = 0; i < 8; i++) {
                    const __m512 qv = _mm512_loadu_ps(q[i] + 16 * v);
                    a[i][0] = _mm512_fmadd_ps(qv, c0, a[i][0]);
                    a[i][1] = _mm512_fmadd_ps(qv, c1, a[i][1]);
                    a[i][2] = _mm512_fmadd_ps(qv, c2, a[i][2]);
                }
            }
            if (rem) {
                const __m512 c0 = _mm512_maskz_loadu_ps(m, c[0] + 16 * nv);
                const __m512 c1 = _mm512_maskz_loadu_ps(m, c[1] + 16 * nv);
                const __m512 c2 = _mm512_maskz_loadu_ps(m, c[2] + 16 * nv);
                for (int i = 0; i < 8; i++) {
                    const __m512 qv = _mm512_maskz_loadu_ps(m, q[i] + 16 * nv);
                    a[i][0] = _mm512_fmadd_ps(qv, c0, a[i][0]);
                    a[i][1] = _mm512_fmadd_ps(qv, c1, a[i][1]);
                    a[i][2] = _mm512_fmadd_ps(qv, c2, a[i][2]);
                }
            }
            for (int i = 0; i < hn; i++)
                for (int k = 0; k < pn; k++)
                    sc[(size_t)(h + i) * sc_stride + p0 + k] =
                        (reduce16(a[i][k]) + dot_avx2(qpe[h + i], c[k] + L, R)) * scale;
        }
    }
}

INLINE AVX512_FN void olat_tile512(const int masked, const struct native_kv *kv, int layer,
                                   const struct native_seq_view *sv, int np, int v0,
                                   float *const *o, const float *const *e, int hn)
{
    const int L = kv->desc.latent_dim, W = L + kv->desc.rope_dim, BS = kv->block_size;
    __mmask16 mk[3];
    for (int k = 0; k < 3; k++) {
        int left = L - 16 * (v0 + k);
        left = left < 0 ? 0 : left > 16 ? 16 : left;
        mk[k] = (__mmask16)((1u << left) - 1);
    }
    __m512 a[8][3];
    for (int i = 0; i < 8; i++)
        for (int k = 0; k < 3; k++)
            a[i][k] = _mm512_setzero_ps();
    for (int p = 0; p < np;) {
        const float *row = latent_row(kv, sv, p, layer) + 16 * v0;
        const int n = BS - p % BS < np - p ? BS - p % BS : np - p;
        for (int r = 0; r < n; r++, p++, row += W) {
            __m512 cv[3];
            for (int k = 0; k < 3; k++)
                cv[k] = masked ? _mm512_maskz_loadu_ps(mk[k], row + 16 * k) : _mm512_loadu_ps(row + 16 * k);
            for (int i = 0; i < 8; i++) {
                const __m512 ev = _mm512_set1_ps(e[i][p]);
                for (int k = 0; k < 3; k++)
                    a[i][k] = _mm512_fmadd_ps(ev, cv[k], a[i][k]);
            }
        }
    }
    for (int i = 0; i < hn; i++)
        for (int k = 0; k < 3; k++) {
            float *d = o[i] + 16 * (v0 + k);
            if (masked)
                _mm512_mask_storeu_ps(d, mk[k], a[i][k]);
            else
                _mm512_storeu_ps(d, a[i][k]);
        }
}

AVX512_FN static void absorb_olat_avx512(const struct native_kv *kv, int layer,
                                         const struct native_seq_view *sv, int np, float *lat,
                                         int lat_stride, const float *sc, int sc_stride, int nh)
{
    const int L = kv->desc.latent_dim, nvec = (L + 15) / 16;
    for (int h = 0; h < nh; h += 8) {
        const int hn = nh - h < 8 ? nh - h : 8;
        float *o[8];
        const float *e[8];
        for (int i = 0; i < 8; i++) {
            o[i] = lat + (size_t)(h + (i < hn ? i : 0)) * lat_stride;
            e[i] = sc + (size_t)(h + (i < hn ? i : 0)) * sc_stride;
        }
        for (int v0 = 0; v0 < nvec; v0 += 3) {
            if (16 * (v0 + 3) <= L)
                olat_tile512(0, kv, layer, sv, np, v0, o, e, hn);
            else
                olat_tile512(1, kv, layer, sv, np, v0, o, e, hn);
        }
    }
}
#endif

/* The scores, softmax and o_lat of token t for heads h0..h1 with the AVX2
 * or AVX-512 tiles (q_lat in the lat rows on entry, o_lat on return, inv[] the
 * softmax's 1 / sum); 0 when this build has none. */
static int absorb_products_vec(const struct mla_job *j, int t, int h0, int h1, float *inv)
{
#if HAVE_X86
    if (j->cb->avx2 || j->cb->avx512) {
        const struct native_mla *p = j->p;
        const int L = p->latent_dim, V = p->v_dim, qd = p->nope_dim + p->rope_dim;
        const struct native_seq_view *sv = &j->batch->seqs[j->batch->seq[t]];
        const int np = j->batch->pos[t] + 1;
        float *lat = j->lat + (size_t)h0 * (size_t)(L + V);
        float *sc = j->sc + (size_t)h0 * (size_t)j->maxp;
        const float *qpe[MLA_HEAD_GROUP];
        for (int h = h0; h < h1; h++)
            qpe[h - h0] = j->q + ((size_t)t * p->n_heads + h) * qd + p->nope_dim;
        /* The build is the backend's choice, never the batch's. */
        if (j->cb->avx512)
            absorb_scores_avx512(j->kv, j->layer, sv, np, lat, L + V, qpe, h1 - h0, sc, j->maxp,
                                 p->softmax_scale);
        else
            absorb_scores_avx2(j->kv, j->layer, sv, np, lat, L + V, qpe, h1 - h0, sc, j->maxp,
                               p->softmax_scale);
        for (int h = 0; h < h1 - h0; h++)
            inv[h] = softmax_numerators(sc + (size_t)h * j->maxp, np);
        if (j->cb->avx512)
            absorb_olat_avx512(j->kv, j->layer, sv, np, lat, L + V, sc, j->maxp, h1 - h0);
        else
            absorb_olat_avx2(j->kv, j->layer, sv, np, lat, L + V, sc, j->maxp, h1 - h0);
        return 1;
    }
#endif
    (void)j, (void)t, (void)h0, (void)h1, (void)inv;
    return 0;
}

/* Absorb: heads h0 .. h0 + MLA_HEAD_GROUP of every token of the batch.
 * Positions run outermost inside a token, so each cache row is read once
 * per group of heads (not once per head) while it is in L1; each head's
 * chain of operations is the same whatever the grouping. */
static void mla_absorb_task(void *arg, int task, int thread)
{
    const struct mla_job *j = arg;
    const struct native_mla *p = j->p;
    const struct cpu_backend *cb = j->cb;
    const int L = p->latent_dim, R = p->rope_dim, NP = p->nope_dim, V = p->v_dim, H = p->n_heads;
    const int qd = NP + R, hr = NP + V;
    const int h0 = task * MLA_HEAD_GROUP;
    const int h1 = h0 + MLA_HEAD_GROUP < H ? h0 + MLA_HEAD_GROUP : H;
    float inv[MLA_HEAD_GROUP];
    (void)thread;

#define LAT(h) (j->lat + (size_t)(h) * (size_t)(L + V))
#define SC(h) (j->sc + (size_t)(h) * (size_t)j->maxp)
#define QN(h) (j->q + ((size_t)t * H + (h)) * qd)
    for (int t = 0; t < j->batch->n_tokens; t++) {
        const struct native_seq_view *sv = &j->batch->seqs[j->batch->seq[t]];
        const int np = j->batch->pos[t] + 1;

        /* q_lat[h] = sum_i q_nope[h][i] W_UK[h][i] */
        for (int h = h0; h < h1; h++) {
            memset(LAT(h), 0, sizeof(float) * (size_t)L);
            for (int i = 0; i < NP; i++)
                waxpy(cb, &p->kv_b, (int64_t)h * hr + i, QN(h)[i], LAT(h));
        }
        if (!absorb_products_vec(j, t, h0, h1, inv)) {
            /* s[h][p] = (q_lat[h] . c[p] + q_pe[h] . k_pe[p]) * scale */
            for (int pos = 0; pos < np; pos++) {
                const float *c = latent_row(j->kv, sv, pos, j->layer);
                for (int h = h0; h < h1; h++)
                    SC(h)[pos] = (vdot(cb, LAT(h), c, L) + vdot(cb, QN(h) + NP, c + L, R)) *
                                 p->softmax_scale;
            }
            for (int h = h0; h < h1; h++) {
                inv[h - h0] = softmax_numerators(SC(h), np);
                memset(LAT(h), 0, sizeof(float) * (size_t)L);   /* q_lat is spent: o_lat */
            }
            /* o_lat[h] = sum_p e[h][p] c[p] */
            for (int pos = 0; pos < np; pos++) {
                const float *c = latent_row(j->kv, sv, pos, j->layer);
                for (int h = h0; h < h1; h++)
                    vaxpy(cb, LAT(h), SC(h)[pos], c, L);
            }
        }
        /* out[t][h] = W_UV[h] o_lat[h] / sum */
        for (int h = h0; h < h1; h++) {
            float *o = j->out + ((size_t)t * H + h) * V;
            for (int i = 0; i < V; i++)
                o[i] = wdot(cb, &p->kv_b, (int64_t)h * hr + NP + i, LAT(h)) * inv[h - h0];
        }
    }
#undef LAT
#undef SC
#undef QN
}

/* Naive: head h of one sequence's tokens t0..t1. */
static void mla_naive_task(void *arg, int h, int thread)
{
    const struct mla_job *j = arg;
    const struct native_mla *p = j->p;
    const struct cpu_backend *cb = j->cb;
    const int L = p->latent_dim, R = p->rope_dim, NP = p->nope_dim, V = p->v_dim;
    const int qd = NP + R, hr = NP + V;
    const int64_t row0 = (int64_t)h * hr;
    const struct native_seq_view *sv = &j->batch->seqs[j->batch->seq[j->t0]];
    float *kvd = j->kvd + (size_t)h * (size_t)j->maxp * (size_t)hr;
    float *sc = j->sc + (size_t)h * (size_t)j->maxp;
    (void)thread;

    /* k_nope[p] | v[p] = kv_b[head h rows] c[p] */
    for (int pos = 0; pos < j->n_att; pos++) {
        const float *c = latent_row(j->kv, sv, pos, j->layer);
        float *d = kvd + (size_t)pos * hr;
        for (int i = 0; i < hr; i++)
            d[i] = wdot(cb, &p->kv_b, row0 + i, c);
    }
    for (int t = j->t0; t < j->t1; t++) {
        const float *qn = j->q + ((size_t)t * p->n_heads + h) * qd, *qp = qn + NP;
        const int np = j->batch->pos[t] + 1;
        for (int pos = 0; pos < np; pos++) {
            const float *kpe = latent_row(j->kv, sv, pos, j->layer) + L;
            sc[pos] = (vdot(cb, qn, kvd + (size_t)pos * hr, NP) + vdot(cb, qp, kpe, R)) *
                      p->softmax_scale;
        }
        const float inv = softmax_numerators(sc, np);
        float *o = j->out + ((size_t)t * p->n_heads + h) * V;
        memset(o, 0, sizeof(float) * (size_t)V);
        for (int pos = 0; pos < np; pos++)
            vaxpy(cb, o, sc[pos], kvd + (size_t)pos * hr + NP, V);
        for (int i = 0; i < V; i++)
            o[i] *= inv;
    }
}

static void run_tasks(const struct cpu_backend *cb, threadpool_fn fn, struct mla_job *job,
                      int n_tasks, int64_t work)
{
    if (cb->threads == 1 || work < MLA_PARALLEL_MIN) {
        for (int i = 0; i < n_tasks; i++)
            fn(job, i, 0);
        return;
    }
    threadpool_run(cb->pool, fn, job, n_tasks);
}

void cpu_mla_attention(struct native_backend *b, float *out, const float *q, struct native_kv *kv,
                       int layer, const struct native_batch *batch, const struct native_mla *p,
                       float *scratch)
{
    const struct cpu_backend *cb = (const struct cpu_backend *)b;
    const int H = p->n_heads, L = p->latent_dim, V = p->v_dim, hr = p->nope_dim + p->v_dim;
    int maxp = 0;

    assert(kv->desc.kind == NATIVE_KV_LATENT && kv->desc.latent_dim == L &&
           kv->desc.rope_dim == p->rope_dim);
    assert(p->kv_b.rows == (int64_t)H * hr && p->kv_b.cols == L);
    for (int t = 0; t < batch->n_tokens; t++)
        maxp = batch->pos[t] + 1 > maxp ? batch->pos[t] + 1 : maxp;

    struct mla_job job = {
        .cb = cb, .out = out, .q = q, .kv = kv, .layer = layer, .batch = batch, .p = p,
        .lat = scratch, .maxp = maxp,
    };
    job.sc = job.lat + (size_t)H * (size_t)(L + V);
    job.kvd = job.sc + (size_t)H * (size_t)maxp;

    if (p->mode == NATIVE_MLA_ABSORB) {
        int64_t work = 0;
        for (int t = 0; t < batch->n_tokens; t++)
            work += (int64_t)H * ((int64_t)(p->nope_dim + V) * L +
                                  (int64_t)(batch->pos[t] + 1) * (2 * L + p->rope_dim));
        run_tasks(cb, mla_absorb_task, &job, (H + MLA_HEAD_GROUP - 1) / MLA_HEAD_GROUP, work);
        return;
    }

    /* Naive: one sequence at a time, since its decompressed K and V fill
     * the scratch. Its tokens are contiguous and in position order. */
    for (int t0 = 0; t0 < batch->n_tokens;) {
        int t1 = t0 + 1;
        while (t1 < batch->n_tokens && batch->seq[t1] == batch->seq[t0])
            t1++;
        job.t0 = t0;
        job.t1 = t1;
        job.n_att = 0;
        for (int t = t0; t < t1; t++)
            job.n_att = batch->pos[t] + 1 > job.n_att ? batch->pos[t] + 1 : job.n_att;
        int64_t work = (int64_t)H * job.n_att * hr * L;
        for (int t = t0; t < t1; t++)
            work += (int64_t)H * (batch->pos[t] + 1) * (hr + p->rope_dim);
        run_tasks(cb, mla_naive_task, &job, H, work);
        t0 = t1;
    }
}
