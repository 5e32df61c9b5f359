/* ops_cpu_fp8.c: matmul rows over F8_E4M3 weights with 128x128 block
 * scales (DeepSeek-V3's checkpoint format), for ops_cpu.c's matmul and for
 * MLA's per-row work; see cpu_internal.h.
 *
 * The math, for output row r, token t, column blocks kb of 128 columns:
 *   y[t][r] = sum_kb scale[r / 128][kb] * sum_{c in kb} e4m3(w[r][c]) * x[t][c]
 * The bytes are decoded inside the product, never into a copy of the
 * matrix: a lone token (decode at batch 1) multiplies straight from the
 * decoded registers, streaming each FP8 byte once; a batch decodes 128
 * columns of 4 rows at a time into a small L1 buffer and reuses them for
 * up to 16 tokens in register tiles.
 *
 * Decoding. The portable path reads a 256-entry table (built once, from
 * dtype_e4m3_to_f32). The AVX2 and AVX-512 paths decode 32 bytes in a
 * handful of integer instructions and F16C conversions: the seven bits eeee.mmm of an
 * e4m3 byte, moved to bits 13..7 of a half and the sign to bit 15, form the
 * half whose value is exactly e4m3 / 256 (exponent bias 15 against 7, and
 * e4m3 subnormals land on half subnormals, which vcvtph2ps converts exactly
 * and without a microcode assist). The 256 is folded into the block scale,
 * a power of two, so nothing is rounded. The one code this reads differently
 * is NaN (0x7f/0xff, which comes out as +-480); no checkpoint holds it.
 *
 * Determinism: every (token, row) result is the same instruction sequence
 * whatever the batch, the row range or the tile it falls in: 8 lanes (16
 * in the AVX-512 build) accumulate a block's columns in increasing order
 * from zero, each block's lanes are added to the running lanes as p * scale
 * (one fused multiply-add per lane in the vector builds), and the lanes end
 * in ops_cpu.c's fixed tree (AVX-512 first adds its high half to its low).
 * The build is the backend's choice (its flags), never the batch's.
 *
 * Threads: pure functions over read-only weights; any thread may call them
 * (the matmul splits rows over the pool).
 */
#include "engines/native/backend/cpu/cpu_internal.h"

#include "engines/native/backend/dtype.h"

#include <assert.h>
#include <pthread.h>
#include <string.h>

#define QB NATIVE_FP8_BLOCK
/* Tokens per pass over a row group: their running lanes (16 x 4 vectors,
 * 2 KiB) stay in L1 next to the decoded block. */
#define FP8_TOKENS 16
/* Rows decoded together: 4 rows x 128 floats is 2 KiB of L1. */
#define FP8_ROWS 4

static float e4m3_lut[256];
static pthread_once_t e4m3_once = PTHREAD_ONCE_INIT;

static void e4m3_lut_init(void)
{
    for (int i = 0; i < 256; i++)
        e4m3_lut[i] = dtype_e4m3_to_f32((uint8_t)i);
}

static const float *e4m3_table(void)
{
    pthread_once(&e4m3_once, e4m3_lut_init);
    return e4m3_lut;
}

/* ops_cpu.c's lane tree: ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)). */
INLINE const float *scale_row(const struct native_mat *w, int64_t r)
{
    return w->scale + (r / QB) * ((w->cols + QB - 1) / QB);
}

/* ------------------------------------------------------------------------ */
/* Portable                                                                  */
/* ------------------------------------------------------------------------ */

static void fp8_rows_portable(const struct native_mat *w, int64_t r0, int64_t r1, const float *x,
                              int n, float *y, int accumulate)
{
    const float *lut = e4m3_table();
    const uint8_t *W = w->data;
    const int64_t K = w->cols;

    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = W + r * K;
        const float *sr = scale_row(w, r);
        for (int t = 0; t < n; t++) {
            const float *xt = x + (int64_t)t * K;
            float tot[8] = {0};
            for (int64_t k0 = 0, kb = 0; k0 < K; k0 += QB, kb++) {
                const int len = K - k0 < QB ? (int)(K - k0) : QB;
                float p[8] = {0};
                for (int j = 0; j < len; j++)
                    p[j & 7] += lut[row[k0 + j]] * xt[k0 + j];
                for (int l = 0; l < 8; l++)
                    tot[l] += p[l] * sr[kb];
            }
            float s = lanes_sum(tot);
            float *o = y + (int64_t)t * w->rows + r;
            *o = accumulate ? *o + s : s;
        }
    }
}

static float fp8_dot_portable(const struct native_mat *w, int64_t r, const float *x)
{
    const float *lut = e4m3_table();
    const uint8_t *row = (const uint8_t *)w->data + r * w->cols;
    const float *sr = scale_row(w, r);
    float tot[8] = {0};
    for (int64_t k0 = 0, kb = 0; k0 < w->cols; k0 += QB, kb++) {
        const int len = w->cols - k0 < QB ? (int)(w->cols - k0) : QB;
        float p[8] = {0};
        for (int j = 0; j < len; j++)
            p[j & 7] += lut[row[k0 + j]] * x[k0 + j];
        for (int l = 0; l < 8; l++)
            tot[l] += p[l] * sr[kb];
    }
    return lanes_sum(tot);
}

static void fp8_axpy_portable(const struct native_mat *w, int64_t r, float a, float *acc)
{
    const float *lut = e4m3_table();
    const uint8_t *row = (const uint8_t *)w->data + r * w->cols;
    const float *sr = scale_row(w, r);
    for (int64_t k0 = 0, kb = 0; k0 < w->cols; k0 += QB, kb++) {
        const int len = w->cols - k0 < QB ? (int)(w->cols - k0) : QB;
        const float c = a * sr[kb];
        for (int j = 0; j < len; j++)
            acc[k0 + j] += c * lut[row[k0 + j]];
    }
}

/* ------------------------------------------------------------------------ */
/* AVX2 + FMA + F16C                                                         */
/* ------------------------------------------------------------------------ */
#if HAVE_X86

/* 32 e4m3 bytes -> e4m3 / 256 as floats, in element order: d[0] = 0..7,
 * d[1] = 8..15, d[2] = 16..23, d[3] = 24..31. Unpacking against zero puts
 * each byte in the high half of a 16-bit lane (b << 8); an arithmetic shift
 * by one copies the sign into bit 14 and leaves eeee.mmm in bits 13..7; the
 * mask 0xbf80 clears bit 14. unpack works inside 128-bit lanes, hence the
 * 0..7 | 16..23 and 8..15 | 24..31 halves. */
INLINE AVX2_FN void dec32(const uint8_t *src, __m256 d[4])
{
    const __m256i b = _mm256_loadu_si256((const __m256i *)src);
    const __m256i z = _mm256_setzero_si256(), m = _mm256_set1_epi16((short)0xbf80);
    const __m256i lo = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpacklo_epi8(z, b), 1), m);
    const __m256i hi = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpackhi_epi8(z, b), 1), m);
    d[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(lo));
    d[1] = _mm256_cvtph_ps(_mm256_castsi256_si128(hi));
    d[2] = _mm256_cvtph_ps(_mm256_extracti128_si256(lo, 1));
    d[3] = _mm256_cvtph_ps(_mm256_extracti128_si256(hi, 1));
}

/* The first len <= 128 bytes of a block, zero-padded to a multiple of 32
 * (never reading past the row), decoded into dst. */
INLINE AVX2_FN void dec_block(const uint8_t *src, int len, float *dst)
{
    if (len == QB) {
        for (int i = 0; i < QB; i += 32) {
            __m256 d[4];
            dec32(src + i, d);
            _mm256_store_ps(dst + i, d[0]);
            _mm256_store_ps(dst + i + 8, d[1]);
            _mm256_store_ps(dst + i + 16, d[2]);
            _mm256_store_ps(dst + i + 24, d[3]);
        }
        return;
    }
    uint8_t tmp[QB] __attribute__((aligned(32)));
    memset(tmp, 0, sizeof(tmp));
    memcpy(tmp, src, (size_t)len);
    for (int i = 0; i < len; i += 32) {
        __m256 d[4];
        dec32(tmp + i, d);
        _mm256_store_ps(dst + i, d[0]);
        _mm256_store_ps(dst + i + 8, d[1]);
        _mm256_store_ps(dst + i + 16, d[2]);
        _mm256_store_ps(dst + i + 24, d[3]);
    }
}

INLINE AVX2_FN __m256i tail_mask(int rem)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ops_cpu.c's reduce1: the lane tree of lanes_sum. */
INLINE AVX2_FN float reduce1(__m256 a)
{
    __m256 t = _mm256_hadd_ps(a, a);
    t = _mm256_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

/* One block's partial lanes for R decoded rows (wb[i], zero-padded) and T
 * tokens (xs[j] at the block's first column), folded into tot[j][i] as
 * tot = p * s + tot. nv full vectors, then rem < 8 columns. R and T are
 * compile-time constants at every call, so p[][] lives in registers. */
INLINE AVX2_FN void fp8_tile(const int R, const int T, const float (*wb)[QB], const float *const *xs,
                             int nv, int rem, const __m256 *s, __m256 (*tot)[FP8_ROWS])
{
    __m256 p[FP8_ROWS][2];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++)
            p[i][j] = _mm256_setzero_ps();
    for (int v = 0; v < nv; v++) {
        __m256 xv[2];
        for (int j = 0; j < T; j++)
            xv[j] = _mm256_loadu_ps(xs[j] + 8 * v);
        for (int i = 0; i < R; i++) {
            const __m256 wv = _mm256_load_ps(wb[i] + 8 * v);
            for (int j = 0; j < T; j++)
                p[i][j] = _mm256_fmadd_ps(wv, xv[j], p[i][j]);
        }
    }
    if (rem) {
        const __m256i m = tail_mask(rem);
        __m256 xv[2];
        for (int j = 0; j < T; j++)
            xv[j] = _mm256_maskload_ps(xs[j] + 8 * nv, m);
        for (int i = 0; i < R; i++) {
            const __m256 wv = _mm256_load_ps(wb[i] + 8 * nv);
            for (int j = 0; j < T; j++)
                p[i][j] = _mm256_fmadd_ps(wv, xv[j], p[i][j]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++)
            tot[j][i] = _mm256_fmadd_ps(p[i][j], s[i], tot[j][i]);
}

/* Rows r .. r+R-1 for tokens t0 .. t1-1 (t1 - t0 <= FP8_TOKENS). */
INLINE AVX2_FN void fp8_group_avx2(const int R, const struct native_mat *w, int64_t r,
                                   const float *x, int t0, int t1, float *y, int accumulate)
{
    const int64_t K = w->cols;
    const uint8_t *W = (const uint8_t *)w->data;
    float wb[FP8_ROWS][QB] __attribute__((aligned(32)));
    __m256 tot[FP8_TOKENS][FP8_ROWS];
    const float *sr[FP8_ROWS];

    for (int i = 0; i < R; i++)
        sr[i] = scale_row(w, r + i);
    for (int j = 0; j < t1 - t0; j++)
        for (int i = 0; i < R; i++)
            tot[j][i] = _mm256_setzero_ps();

    for (int64_t k0 = 0, kb = 0; k0 < K; k0 += QB, kb++) {
        const int len = K - k0 < QB ? (int)(K - k0) : QB;
        __m256 s[FP8_ROWS];
        for (int i = 0; i < R; i++) {
            /* The next row group's bytes at this block: rows start a new
             * stream every K bytes, which the hardware prefetcher picks up
             * late; a prefetch never faults, even past the matrix. */
            const char *next = (const char *)(W + (r + i) * K + k0) + R * K;
            _mm_prefetch(next, _MM_HINT_T0);
            _mm_prefetch(next + 64, _MM_HINT_T0);
            s[i] = _mm256_set1_ps(sr[i][kb] * 256.0f);
        }
        if (t1 - t0 == 1 && len == QB) {
            /* One token (decode): FMA straight from the decoded registers,
             * the same chain per row as fp8_tile, without the round trip
             * through wb. */
            const float *xt = x + t0 * K + k0;
            __m256 p[FP8_ROWS];
            for (int i = 0; i < R; i++)
                p[i] = _mm256_setzero_ps();
            for (int c = 0; c < QB; c += 32) {
                const __m256 x0 = _mm256_loadu_ps(xt + c), x1 = _mm256_loadu_ps(xt + c + 8);
                const __m256 x2 = _mm256_loadu_ps(xt + c + 16), x3 = _mm256_loadu_ps(xt + c + 24);
                for (int i = 0; i < R; i++) {
                    __m256 d[4];
                    dec32(W + (r + i) * K + k0 + c, d);
                    p[i] = _mm256_fmadd_ps(d[0], x0, p[i]);
                    p[i] = _mm256_fmadd_ps(d[1], x1, p[i]);
                    p[i] = _mm256_fmadd_ps(d[2], x2, p[i]);
                    p[i] = _mm256_fmadd_ps(d[3], x3, p[i]);
                }
            }
            for (int i = 0; i < R; i++)
                tot[0][i] = _mm256_fmadd_ps(p[i], s[i], tot[0][i]);
            continue;
        }
        for (int i = 0; i < R; i++)
            dec_block(W + (r + i) * K + k0, len, wb[i]);
        const int nv = len / 8, rem = len % 8;
        int t = t0;
        if (R == FP8_ROWS) {
            for (; t + 2 <= t1; t += 2) {
                const float *xs[2] = {x + t * K + k0, x + (t + 1) * K + k0};
                fp8_tile(R, 2, (const float (*)[QB])wb, xs, nv, rem, s, tot + (t - t0));
            }
        }
        for (; t < t1; t++) {
            const float *xs[1] = {x + t * K + k0};
            fp8_tile(R, 1, (const float (*)[QB])wb, xs, nv, rem, s, tot + (t - t0));
        }
    }
    for (int t = t0; t < t1; t++)
        for (int i = 0; i < R; i++) {
            float v = reduce1(tot[t - t0][i]);
            float *o = y + (int64_t)t * w->rows + r + i;
            *o = accumulate ? *o + v : v;
        }
}

AVX2_FN static void fp8_rows_avx2(const struct native_mat *w, int64_t r0, int64_t r1,
                                  const float *x, int n, float *y, int accumulate)
{
    int64_t r = r0;
    /* Row groups outermost: a group's bytes come from memory once and stay
     * in cache while every token block passes over them. */
    for (; r + FP8_ROWS <= r1; r += FP8_ROWS)
        for (int t0 = 0; t0 < n; t0 += FP8_TOKENS)
            fp8_group_avx2(FP8_ROWS, w, r, x, t0, t0 + FP8_TOKENS < n ? t0 + FP8_TOKENS : n, y,
                           accumulate);
    for (; r < r1; r++)
        for (int t0 = 0; t0 < n; t0 += FP8_TOKENS)
            fp8_group_avx2(1, w, r, x, t0, t0 + FP8_TOKENS < n ? t0 + FP8_TOKENS : n, y,
                           accumulate);
}

/* x . w[r], decoding straight into registers. */
AVX2_FN static float fp8_dot_avx2(const struct native_mat *w, int64_t r, const float *x)
{
    const int64_t K = w->cols;
    const uint8_t *row = (const uint8_t *)w->data + r * K;
    const float *sr = scale_row(w, r);
    __m256 tot = _mm256_setzero_ps();
    for (int64_t k0 = 0, kb = 0; k0 < K; k0 += QB, kb++) {
        const int len = K - k0 < QB ? (int)(K - k0) : QB;
        __m256 p = _mm256_setzero_ps();
        if (len == QB) {
            for (int i = 0; i < QB; i += 32) {
                __m256 d[4];
                dec32(row + k0 + i, d);
                for (int q = 0; q < 4; q++)
                    p = _mm256_fmadd_ps(d[q], _mm256_loadu_ps(x + k0 + i + 8 * q), p);
            }
        } else {
            float wb[QB] __attribute__((aligned(32)));
            dec_block(row + k0, len, wb);
            int v = 0;
            for (; 8 * v + 8 <= len; v++)
                p = _mm256_fmadd_ps(_mm256_load_ps(wb + 8 * v), _mm256_loadu_ps(x + k0 + 8 * v), p);
            if (len % 8)
                p = _mm256_fmadd_ps(_mm256_load_ps(wb + 8 * v),
                                    _mm256_maskload_ps(x + k0 + 8 * v, tail_mask(len % 8)), p);
        }
        tot = _mm256_fmadd_ps(p, _mm256_set1_ps(sr[kb] * 256.0f), tot);
    }
    return reduce1(tot);
}

AVX2_FN static void fp8_axpy_avx2(const struct native_mat *w, int64_t r, float a, float *acc)
{
    const int64_t K = w->cols;
    const uint8_t *row = (const uint8_t *)w->data + r * K;
    const float *sr = scale_row(w, r);
    for (int64_t k0 = 0, kb = 0; k0 < K; k0 += QB, kb++) {
        const int len = K - k0 < QB ? (int)(K - k0) : QB;
        const __m256 c = _mm256_set1_ps(a * sr[kb] * 256.0f);
        float *o = acc + k0;
        if (len == QB) {
            for (int i = 0; i < QB; i += 32) {
                __m256 d[4];
                dec32(row + k0 + i, d);
                for (int q = 0; q < 4; q++) {
                    float *oq = o + i + 8 * q;
                    _mm256_storeu_ps(oq, _mm256_fmadd_ps(c, d[q], _mm256_loadu_ps(oq)));
                }
            }
        } else {
            float wb[QB] __attribute__((aligned(32)));
            dec_block(row + k0, len, wb);
            int v = 0;
            for (; 8 * v + 8 <= len; v++)
                _mm256_storeu_ps(o + 8 * v, _mm256_fmadd_ps(c, _mm256_load_ps(wb + 8 * v),
                                                            _mm256_loadu_ps(o + 8 * v)));
            if (len % 8) {
                const __m256i m = tail_mask(len % 8);
                _mm256_maskstore_ps(o + 8 * v, m,
                                    _mm256_fmadd_ps(c, _mm256_load_ps(wb + 8 * v),
                                                    _mm256_maskload_ps(o + 8 * v, m)));
            }
        }
    }
}
/* ------------------------------------------------------------------------ */
/* AVX-512 (F, BW, VL)                                                       */
/* ------------------------------------------------------------------------ */
/* The same algorithm over 16 lanes, for the builds that run ops_cpu.c's
 * AVX-512 matmul. Decoding costs about half the instructions per byte of
 * the AVX2 path (a zero-extending load of 32 bytes to 16-bit lanes, shift,
 * and, add, two conversions), which is what keeps a decode step streaming at
 * the memory's speed rather than the core's. The 16 lanes fold to 8 (low
 * half + high half) before AVX2's lane tree. */
#define FP8_T512 4      /* tokens per register tile */

/* 32 e4m3 bytes -> e4m3 / 256 in two vectors of 16, in element order:
 * t = b << 7 puts the sign at bit 14 and eeee.mmm at bits 13..7; adding
 * (t & 0x4000) carries the sign into bit 15 and clears bit 14. */
INLINE AVX512_FN void dec32_512(const uint8_t *src, __m512 *d0, __m512 *d1)
{
    const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)src));
    const __m512i t = _mm512_slli_epi16(v, 7);
    const __m512i h = _mm512_add_epi16(t, _mm512_and_si512(t, _mm512_set1_epi16(0x4000)));
    *d0 = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    *d1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}

INLINE AVX512_FN void dec_block_512(const uint8_t *src, int len, float *dst)
{
    uint8_t tmp[QB] __attribute__((aligned(64)));
    if (len < QB) {
        memset(tmp, 0, sizeof(tmp));
        memcpy(tmp, src, (size_t)len);
        src = tmp;
    }
    for (int i = 0; i < len; i += 32) {
        __m512 d0, d1;
        dec32_512(src + i, &d0, &d1);
        _mm512_store_ps(dst + i, d0);
        _mm512_store_ps(dst + i + 16, d1);
    }
}

INLINE AVX512_FN float reduce16(__m512 a)
{
    const __m256 f = _mm256_add_ps(_mm512_castps512_ps256(a),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m256 t = _mm256_hadd_ps(f, f);
    t = _mm256_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

INLINE AVX512_FN void fp8_tile512(const int R, const int T, const float (*wb)[QB],
                                  const float *const *xs, int nv, int rem, const __m512 *s,
                                  __m512 (*tot)[FP8_ROWS])
{
    __m512 p[FP8_ROWS][FP8_T512];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++)
            p[i][j] = _mm512_setzero_ps();
    for (int v = 0; v < nv; v++) {
        __m512 xv[FP8_T512];
        for (int j = 0; j < T; j++)
            xv[j] = _mm512_loadu_ps(xs[j] + 16 * v);
        for (int i = 0; i < R; i++) {
            const __m512 wv = _mm512_load_ps(wb[i] + 16 * v);
            for (int j = 0; j < T; j++)
                p[i][j] = _mm512_fmadd_ps(wv, xv[j], p[i][j]);
        }
    }
    if (rem) {
        const __mmask16 m = (__mmask16)((1u << rem) - 1);
        __m512 xv[FP8_T512];
        for (int j = 0; j < T; j++)
            xv[j] = _mm512_maskz_loadu_ps(m, xs[j] + 16 * nv);
        for (int i = 0; i < R; i++) {
            const __m512 wv = _mm512_load_ps(wb[i] + 16 * nv);
            for (int j = 0; j < T; j++)
                p[i][j] = _mm512_fmadd_ps(wv, xv[j], p[i][j]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++)
            tot[j][i] = _mm512_fmadd_ps(p[i][j], s[i], tot[j][i]);
}

INLINE AVX512_FN void fp8_group_avx512(const int R, const struct native_mat *w, int64_t r,
                                       const float *x, int t0, int t1, float *y, int accumulate)
{
    const int64_t K = w->cols;
    const uint8_t *W = (const uint8_t *)w->data;
    float wb[FP8_ROWS][QB] __attribute__((aligned(64)));
    __m512 tot[FP8_TOKENS][FP8_ROWS];
    const float *sr[FP8_ROWS];

    for (int i = 0; i < R; i++)
        sr[i] = scale_row(w, r + i);
    for (int j = 0; j < t1 - t0; j++)
        for (int i = 0; i < R; i++)
            tot[j][i] = _mm512_setzero_ps();

    for (int64_t k0 = 0, kb = 0; k0 < K; k0 += QB, kb++) {
        const int len = K - k0 < QB ? (int)(K - k0) : QB;
        __m512 s[FP8_ROWS];
        for (int i = 0; i < R; i++) {
            const char *next = (const char *)(W + (r + i) * K + k0) + R * K;
            _mm_prefetch(next, _MM_HINT_T0);
            _mm_prefetch(next + 64, _MM_HINT_T0);
            s[i] = _mm512_set1_ps(sr[i][kb] * 256.0f);
        }
        if (t1 - t0 == 1 && len == QB) {
            const float *xt = x + t0 * K + k0;
            __m512 p[FP8_ROWS];
            for (int i = 0; i < R; i++)
                p[i] = _mm512_setzero_ps();
            for (int c = 0; c < QB; c += 32) {
                const __m512 x0 = _mm512_loadu_ps(xt + c), x1 = _mm512_loadu_ps(xt + c + 16);
                for (int i = 0; i < R; i++) {
                    __m512 d0, d1;
                    dec32_512(W + (r + i) * K + k0 + c, &d0, &d1);
                    p[i] = _mm512_fmadd_ps(d0, x0, p[i]);
                    p[i] = _mm512_fmadd_ps(d1, x1, p[i]);
                }
            }
            for (int i = 0; i < R; i++)
                tot[0][i] = _mm512_fmadd_ps(p[i], s[i], tot[0][i]);
            continue;
        }
        for (int i = 0; i < R; i++)
            dec_block_512(W + (r + i) * K + k0, len, wb[i]);
        const int nv = len / 16, rem = len % 16;
        int t = t0;
        if (R == FP8_ROWS) {
            for (; t + FP8_T512 <= t1; t += FP8_T512) {
                const float *xs[FP8_T512];
                for (int j = 0; j < FP8_T512; j++)
                    xs[j] = x + (t + j) * K + k0;
                fp8_tile512(R, FP8_T512, (const float (*)[QB])wb, xs, nv, rem, s, tot + (t - t0));
            }
        }
        for (; t < t1; t++) {
            const float *xs[1] = {x + t * K + k0};
            fp8_tile512(R, 1, (const float (*)[QB])wb, xs, nv, rem, s, tot + (t - t0));
        }
    }
    for (int t = t0; t < t1; t++)
        for (int i = 0; i < R; i++) {
            float v = reduce16(tot[t - t0][i]);
            float *o = y + (int64_t)t * w->rows + r + i;
            *o = accumulate ? *o + v : v;
        }
}

AVX512_FN static void fp8_rows_avx512(const struct native_mat *w, int64_t r0, int64_t r1,
                                      const float *x, int n, float *y, int accumulate)
{
    int64_t r = r0;
    for (; r + FP8_ROWS <= r1; r += FP8_ROWS)
        for (int t0 = 0; t0 < n; t0 += FP8_TOKENS)
            fp8_group_avx512(FP8_ROWS, w, r, x, t0, t0 + FP8_TOKENS < n ? t0 + FP8_TOKENS : n, y,
                             accumulate);
    for (; r < r1; r++)
        for (int t0 = 0; t0 < n; t0 += FP8_TOKENS)
            fp8_group_avx512(1, w, r, x, t0, t0 + FP8_TOKENS < n ? t0 + FP8_TOKENS : n, y,
                             accumulate);
}
#endif

/* ------------------------------------------------------------------------ */
/* Entry points                                                              */
/* ------------------------------------------------------------------------ */

void cpu_fp8_rows(const struct cpu_backend *cb, const struct native_mat *w, int64_t r0, int64_t r1,
                  const float *x, int n, float *y, int accumulate)
{
    assert(w->dtype == NATIVE_F8_E4M3 && w->scale);
#if HAVE_X86
    /* The kernel depends on the backend alone, never on the batch. */
    if (cb->avx512) {
        fp8_rows_avx512(w, r0, r1, x, n, y, accumulate);
        return;
    }
    if (cb->avx2) {
        fp8_rows_avx2(w, r0, r1, x, n, y, accumulate);
        return;
    }
#endif
    (void)cb;
    fp8_rows_portable(w, r0, r1, x, n, y, accumulate);
}

float cpu_fp8_dot(const struct cpu_backend *cb, const struct native_mat *w, int64_t r,
                  const float *x)
{
#if HAVE_X86
    if (cb->avx2)
        return fp8_dot_avx2(w, r, x);
#endif
    (void)cb;
    return fp8_dot_portable(w, r, x);
}

void cpu_fp8_axpy(const struct cpu_backend *cb, const struct native_mat *w, int64_t r, float a,
                  float *acc)
{
#if HAVE_X86
    if (cb->avx2) {
        fp8_axpy_avx2(w, r, a, acc);
        return;
    }
#endif
    (void)cb;
    fp8_axpy_portable(w, r, a, acc);
}
