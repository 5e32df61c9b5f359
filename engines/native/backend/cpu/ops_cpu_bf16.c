/* ops_cpu_bf16.c: the matmul over BF16 weights with AVX-512 BF16
 * (vdpbf16ps), for CPUs that have it; see cpu_internal.h for the contract.
 *
 * Math: y[t][r] (+)= sum_c W[r][c] * bf16(x[t][c]). The activations are
 * rounded to BF16 once per matmul call (round to nearest even, by
 * vcvtne2ps2bf16) into the backend's scratch; the weights are used as stored.
 * vdpbf16ps multiplies 32 BF16 pairs and adds each adjacent pair's products
 * into one of 16 float lanes, so a weight byte is never widened to float:
 * twice the multiply-adds per instruction of the float path, and no
 * conversion work at all in the inner loop.
 *
 * Layout: W row-major [rows][K] BF16 as in the checkpoint; xb [n][ldx] BF16
 * with ldx = K rounded up to 32 and zeros after K, so a row's last step
 * reads a whole vector of x and a masked (zero-filled) vector of W.
 *
 * Determinism (the promise in ops.h): every output is one dot product,
 * accumulated in 16 lanes over k = 0, 32, 64, ... in increasing order, the
 * lanes then folded (upper 8 onto lower 8) and summed in lanes_sum's fixed
 * tree. Every tile below (8 rows x 1 token for decode, 4 x 1..6 and 1 x 1..6
 * for batches, in either kernel set) does exactly that, so a row's bits do
 * not depend on the batch it came in, on the tile that computed it, on the
 * thread split or on the kernel set. Since
 * decode and batches both run these kernels, a token gets the same logits
 * alone or in any batch; it gets different logits from the float kernels
 * (the BF16 rounding of x), which is why one backend picks one set for a
 * matrix by its dtype alone, never by batch size.
 *
 * Speed: one token is memory-bound (the weights stream once per step), so
 * the 8x1 tile prefetches the next tile's rows. A batch is compute-bound
 * with the float tiles; here a 4x6 tile holds 24 accumulators, loads each
 * weight vector once for 6 tokens and each x vector once for 4 rows, and the
 * 4 rows stay in L1/L2 while every token of the block passes over them.
 *
 * The pair-FMA kernels (CPU_BF16_FMA): some CPUs with AVX512_BF16 issue
 * vdpbf16ps at a quarter of their vfmadd231ps rate (Emerald Rapids here: 1.4
 * G/s against 5.6 G/s per core, bench/native/peak_bf16.c), so two FMAs do
 * its work faster. vdpbf16ps computes, per lane i and 32-column step,
 *     acc = acc + w[2i+1] * x[2i+1];  acc = acc + w[2i] * x[2i]
 * as two float FMAs in that order (a product of two BF16s is exact in float),
 * with denormal inputs read as zero and denormal results flushed. So the
 * FMA kernels take the odd BF16 of each 32-bit weight lane as a float
 * (w & 0xffff0000), then the even one (w << 16), and run under MXCSR
 * DAZ|FTZ: bit for bit vdpbf16ps's results (checked at start-up by
 * cpu_bf16_pick, and on 64M random lanes by bench/native/bf16_fma_equiv.c,
 * denormals included; without DAZ|FTZ the tiny ones differ; a NaN result,
 * from Inf or NaN weights, may carry another payload). x is
 * prepared once per call the same way, as floats: each 32-column step is
 * its 16 odd columns then its 16 even ones, so no x conversion sits in the
 * inner loop.
 */
#include "engines/native/backend/cpu/cpu_internal.h"

#include <assert.h>
#include <string.h>
#include <time.h>

#if HAVE_X86

#define BF16_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))

/* Rows per tile in batches, and the most tokens per tile. */
#define BF_R 4
#define BF_T 6
/* Tokens per pass over a weight panel (as MM_TOKEN_BLOCK in ops_cpu.c): their
 * BF16 rows stay in L2 while the panel's rows stream past. */
#define BF_TOKEN_BLOCK 48

/* Eight accumulators, each folded to 8 lanes and summed in lanes_sum's tree,
 * written to out[0..7]. hadd pairs neighbours inside each 128-bit half, the
 * halves are added last: ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)). */
INLINE BF16_FN __m256 bf_fold(__m512 a)
{
    return _mm256_add_ps(_mm512_castps512_ps256(a),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}

INLINE BF16_FN __m256 bf_reduce8(const __m256 *a)
{
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

INLINE BF16_FN float bf_reduce1(__m256 a)
{
    __m256 t = _mm256_hadd_ps(a, a);
    t = _mm256_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

/* The sums of n folded accumulators into out[]: eight at a time where it
 * can, one at a time for the rest. Both give each sum the same tree. */
INLINE BF16_FN void bf_sums(const __m256 *f, int n, float *out)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, bf_reduce8(f + i));
    for (; i < n; i++)
        out[i] = bf_reduce1(f[i]);
}

INLINE BF16_FN __m512bh bf_w(const uint16_t *w, int64_t k, __mmask32 m, int full)
{
    return (__m512bh)(full ? _mm512_loadu_si512(w + k) : _mm512_maskz_loadu_epi16(m, w + k));
}

INLINE BF16_FN __m512bh bf_x(const uint16_t *x, int64_t k)
{
    return (__m512bh)_mm512_loadu_si512(x + k);
}

/* Prefetch the next R rows (after wr[0..R)) while these compute, at column
 * step k of a tile (step pf of every pf_every). Decode (pf_every 1): every
 * line, into L1, a tile ahead. A batch: the row group's J token tiles share
 * the next group's lines, tile pf_j taking every J-th (pf_every = J), so the
 * DRAM reads spread over the whole group instead of piling onto its first
 * tile; into L2, since the x rows streaming through L1 would evict them
 * before use. 0: no prefetch. Both kernel sets' tiles use it. */
INLINE void next_rows_prefetch(const int R, const uint16_t *const *wr, int64_t K, int64_t k, int pf, int pf_every,
                               int pf_j)
{
    if (pf_every == 1) {
        for (int i = 0; i < R; i++)
            _mm_prefetch((const char *)(wr[i] + R * K + k), _MM_HINT_T0);
    } else if (pf_every > 1 && pf == 0) {
        for (int i = 0; i < R; i++)
            _mm_prefetch((const char *)(wr[i] + R * K + k + 32 * pf_j), _MM_HINT_T1);
    }
}

/* y[t * ldy + r + i] (+)= W[r + i] . xb[t], i < R, t < T: R x T accumulators
 * in registers (R and T are constants after inlining). pf_every / pf_j: how
 * this tile prefetches the next R rows (0: not at all; see the loop). */
INLINE BF16_FN void bf_tile(const int R, const int T, const uint16_t *w, int64_t K, int64_t r,
                            const uint16_t *xb, int64_t ldx, float *y, int64_t ldy,
                            int accumulate, int pf_every, int pf_j)
{
    const uint16_t *wr[8];
    const uint16_t *xt[BF_T];
    __m512 acc[8][BF_T];
    for (int i = 0; i < R; i++) {
        wr[i] = w + (r + i) * K;
        for (int j = 0; j < T; j++)
            acc[i][j] = _mm512_setzero_ps();
    }
    for (int j = 0; j < T; j++)
        xt[j] = xb + j * ldx;
    const int64_t Kf = K & ~(int64_t)31;
    int64_t k = 0;
    for (int pf = 0; k < Kf; k += 32, pf = pf + 1 == pf_every ? 0 : pf + 1) {
        next_rows_prefetch(R, wr, K, k, pf, pf_every, pf_j);
        __m512bh wv[8];
        for (int i = 0; i < R; i++)
            wv[i] = bf_w(wr[i], k, 0, 1);
        for (int j = 0; j < T; j++) {
            const __m512bh xv = bf_x(xt[j], k);
            for (int i = 0; i < R; i++)
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[i], xv);
        }
    }
    if (k < K) {
        /* The last K - k < 32 columns: W masked to zeros, x already zero. */
        const __mmask32 m = (__mmask32)((1u << (K - k)) - 1u);
        __m512bh wv[8];
        for (int i = 0; i < R; i++)
            wv[i] = bf_w(wr[i], k, m, 0);
        for (int j = 0; j < T; j++) {
            const __m512bh xv = bf_x(xt[j], k);
            for (int i = 0; i < R; i++)
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[i], xv);
        }
    }
    /* Fold and sum, token-major: out[j * R + i] is row r + i of token j. */
    __m256 f[8 * BF_T];
    float out[8 * BF_T];
    for (int j = 0; j < T; j++)
        for (int i = 0; i < R; i++)
            f[j * R + i] = bf_fold(acc[i][j]);
    bf_sums(f, R * T, out);
    for (int j = 0; j < T; j++) {
        float *o = y + j * ldy + r;
        for (int i = 0; i < R; i++)
            o[i] = accumulate ? o[i] + out[j * R + i] : out[j * R + i];
    }
}

/* The tile of R rows and T = 1..6 tokens, with T a constant in each call. */
INLINE BF16_FN void bf_tile_t(const int R, int T, const uint16_t *w, int64_t K, int64_t r,
                              const uint16_t *xb, int64_t ldx, float *y, int64_t ldy,
                              int accumulate, int pf_every, int pf_j)
{
    switch (T) {
    case 6: bf_tile(R, 6, w, K, r, xb, ldx, y, ldy, accumulate, pf_every, pf_j); break;
    case 5: bf_tile(R, 5, w, K, r, xb, ldx, y, ldy, accumulate, pf_every, pf_j); break;
    case 4: bf_tile(R, 4, w, K, r, xb, ldx, y, ldy, accumulate, pf_every, pf_j); break;
    case 3: bf_tile(R, 3, w, K, r, xb, ldx, y, ldy, accumulate, pf_every, pf_j); break;
    case 2: bf_tile(R, 2, w, K, r, xb, ldx, y, ldy, accumulate, pf_every, pf_j); break;
    default: bf_tile(R, 1, w, K, r, xb, ldx, y, ldy, accumulate, pf_every, pf_j); break;
    }
}

static BF16_FN void dp_rows(const struct native_mat *w, int64_t r0, int64_t r1, const uint16_t *xb,
                            int64_t ldx, int n, float *y, int accumulate)
{
    const uint16_t *W = w->data;
    const int64_t K = w->cols, ldy = w->rows;
    for (int t0 = 0; t0 < n; t0 += BF_TOKEN_BLOCK) {
        const int t1 = t0 + BF_TOKEN_BLOCK < n ? t0 + BF_TOKEN_BLOCK : n;
        const uint16_t *xb0 = xb + t0 * ldx;
        float *y0 = y + t0 * ldy;
        int64_t r = r0;
        if (t1 - t0 == 1) {
            /* Decode: memory-bound, eight rows streaming at once. */
            for (; r + 8 <= r1; r += 8)
                bf_tile(8, 1, W, K, r, xb0, ldx, y0, ldy, accumulate, 1, 0);
            for (; r < r1; r++)
                bf_tile(1, 1, W, K, r, xb0, ldx, y0, ldy, accumulate, 0, 0);
            continue;
        }
        /* Each group of BF_R rows meets every token of the block before the
         * next group, so its rows come from memory once per block. */
        const int J = (t1 - t0 + BF_T - 1) / BF_T;     /* token tiles per row group */
        for (; r + BF_R <= r1; r += BF_R)
            for (int t = t0; t < t1; t += BF_T) {
                const int T = t1 - t < BF_T ? t1 - t : BF_T;
                bf_tile_t(BF_R, T, W, K, r, xb + t * ldx, ldx, y + t * ldy, ldy, accumulate,
                          J, (t - t0) / BF_T);
            }
        for (; r < r1; r++)
            for (int t = t0; t < t1; t += BF_T) {
                const int T = t1 - t < BF_T ? t1 - t : BF_T;
                bf_tile_t(1, T, W, K, r, xb + t * ldx, ldx, y + t * ldy, ldy, accumulate, 0, 0);
            }
    }
}


/* ---- The pair-FMA kernels: vdpbf16ps's arithmetic in vfmadd231ps ---- */

/* Rows per tile and the most tokens per tile in batches: 2R + 2RT
 * instructions on the FMA ports per R x T x 32 products (the weight
 * conversions spread over T tokens), R x T + R + 1 zmm registers live (see
 * pf_step). 4 x 6 measured best on Emerald Rapids, one thread, 5504 x 2048:
 * 63 GMAC/s at 16-64 tokens, against 57-59 for 5 x 5, 6 x 4, 5 x 4 and 4 x
 * 5, 41 for 3 x 8 and 40 for vdpbf16ps's 4 x 6. */
#ifndef PF_R
#define PF_R 4
#endif
#ifndef PF_T
#define PF_T 6
#endif

/* One 32-column step of an R x T tile: every accumulator gets its odd
 * product, then its even one. The odd half runs over all tokens before the
 * even half, so only R converted weights are live (R x T + R + 1 registers). */
INLINE BF16_FN void pf_step(const int R, const int T, const uint16_t *const *wr, int64_t k,
                            __mmask32 m, const float *const *xt, __m512 (*acc)[PF_T])
{
    __m512 wv[8];
    /* The odd BF16s in place, the even ones zeroed by the load's mask (no
     * register for an AND constant). */
    for (int i = 0; i < R; i++)
        wv[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m & 0xaaaaaaaau, wr[i] + k));
    for (int j = 0; j < T; j++) {
        const __m512 xo = _mm512_loadu_ps(xt[j] + k);
        for (int i = 0; i < R; i++)
            acc[i][j] = _mm512_fmadd_ps(wv[i], xo, acc[i][j]);
    }
    for (int i = 0; i < R; i++)
        wv[i] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_maskz_loadu_epi16(m, wr[i] + k), 16));
    for (int j = 0; j < T; j++) {
        const __m512 xe = _mm512_loadu_ps(xt[j] + k + 16);
        for (int i = 0; i < R; i++)
            acc[i][j] = _mm512_fmadd_ps(wv[i], xe, acc[i][j]);
    }
}

/* As bf_tile, over xf: x as floats, each 32-column step its odd columns
 * then its even ones (cpu_bf16_round_x for CPU_BF16_FMA). */
INLINE BF16_FN void pf_tile(const int R, const int T, const uint16_t *w, int64_t K, int64_t r,
                            const float *xf, int64_t ldx, float *y, int64_t ldy,
                            int accumulate, int pf_every, int pf_j)
{
    const uint16_t *wr[8];
    const float *xt[PF_T];
    __m512 acc[8][PF_T];
    for (int i = 0; i < R; i++) {
        wr[i] = w + (r + i) * K;
        for (int j = 0; j < T; j++)
            acc[i][j] = _mm512_setzero_ps();
    }
    for (int j = 0; j < T; j++)
        xt[j] = xf + j * ldx;
    const int64_t Kf = K & ~(int64_t)31;
    int64_t k = 0;
    for (int pf = 0; k < Kf; k += 32, pf = pf + 1 == pf_every ? 0 : pf + 1) {
        next_rows_prefetch(R, wr, K, k, pf, pf_every, pf_j);
        pf_step(R, T, wr, k, ~(__mmask32)0, xt, acc);
    }
    if (k < K)
        /* The last K - k < 32 columns: W masked to zeros, x already zero. */
        pf_step(R, T, wr, k, (__mmask32)((1u << (K - k)) - 1u), xt, acc);
    __m256 f[8 * PF_T];
    float out[8 * PF_T];
    for (int j = 0; j < T; j++)
        for (int i = 0; i < R; i++)
            f[j * R + i] = bf_fold(acc[i][j]);
    bf_sums(f, R * T, out);
    for (int j = 0; j < T; j++) {
        float *o = y + j * ldy + r;
        for (int i = 0; i < R; i++)
            o[i] = accumulate ? o[i] + out[j * R + i] : out[j * R + i];
    }
}

INLINE BF16_FN void pf_tile_t(const int R, int T, const uint16_t *w, int64_t K, int64_t r,
                              const float *xf, int64_t ldx, float *y, int64_t ldy,
                              int accumulate, int pf_every, int pf_j)
{
    switch (T) {
#if PF_T >= 8
    case 8: pf_tile(R, 8, w, K, r, xf, ldx, y, ldy, accumulate, pf_every, pf_j); break;
#endif
#if PF_T >= 7
    case 7: pf_tile(R, 7, w, K, r, xf, ldx, y, ldy, accumulate, pf_every, pf_j); break;
#endif
#if PF_T >= 6
    case 6: pf_tile(R, 6, w, K, r, xf, ldx, y, ldy, accumulate, pf_every, pf_j); break;
#endif
#if PF_T >= 5
    case 5: pf_tile(R, 5, w, K, r, xf, ldx, y, ldy, accumulate, pf_every, pf_j); break;
#endif
    case 4: pf_tile(R, 4, w, K, r, xf, ldx, y, ldy, accumulate, pf_every, pf_j); break;
    case 3: pf_tile(R, 3, w, K, r, xf, ldx, y, ldy, accumulate, pf_every, pf_j); break;
    case 2: pf_tile(R, 2, w, K, r, xf, ldx, y, ldy, accumulate, pf_every, pf_j); break;
    default: pf_tile(R, 1, w, K, r, xf, ldx, y, ldy, accumulate, pf_every, pf_j); break;
    }
}

static BF16_FN void fma_rows(const struct native_mat *w, int64_t r0, int64_t r1, const float *xf,
                             int64_t ldx, int n, float *y, int accumulate)
{
    const uint16_t *W = w->data;
    const int64_t K = w->cols, ldy = w->rows;
    /* vdpbf16ps reads denormals as zero and flushes denormal results. */
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    for (int t0 = 0; t0 < n; t0 += BF_TOKEN_BLOCK) {
        const int t1 = t0 + BF_TOKEN_BLOCK < n ? t0 + BF_TOKEN_BLOCK : n;
        const float *xf0 = xf + t0 * ldx;
        float *y0 = y + t0 * ldy;
        int64_t r = r0;
        if (t1 - t0 == 1) {
            for (; r + 8 <= r1; r += 8)
                pf_tile(8, 1, W, K, r, xf0, ldx, y0, ldy, accumulate, 1, 0);
            for (; r < r1; r++)
                pf_tile(1, 1, W, K, r, xf0, ldx, y0, ldy, accumulate, 0, 0);
            continue;
        }
        const int J = (t1 - t0 + PF_T - 1) / PF_T;
        for (; r + PF_R <= r1; r += PF_R)
            for (int t = t0; t < t1; t += PF_T) {
                const int T = t1 - t < PF_T ? t1 - t : PF_T;
                pf_tile_t(PF_R, T, W, K, r, xf + t * ldx, ldx, y + t * ldy, ldy, accumulate,
                          J, (t - t0) / PF_T);
            }
        for (; r < r1; r++)
            for (int t = t0; t < t1; t += PF_T) {
                const int T = t1 - t < PF_T ? t1 - t : PF_T;
                pf_tile_t(1, T, W, K, r, xf + t * ldx, ldx, y + t * ldy, ldy, accumulate, 0, 0);
            }
    }
    _mm_setcsr(csr);
}

void cpu_bf16_rows(int kind, const struct native_mat *w, int64_t r0, int64_t r1, const uint16_t *xb,
                   int64_t ldx, int n, float *y, int accumulate)
{
    assert(w->dtype == NATIVE_BF16 && ldx >= w->cols && ldx % 32 == 0);
    if (kind == CPU_BF16_FMA)
        fma_rows(w, r0, r1, (const float *)(const void *)xb, ldx, n, y, accumulate);
    else
        dp_rows(w, r0, r1, xb, ldx, n, y, accumulate);
}

BF16_FN void cpu_bf16_round_x(int kind, const float *x, int n, int64_t K, uint16_t *xb,
                              int64_t ldx)
{
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    for (int t = 0; t < n; t++) {
        const float *xt = x + t * K;
        uint16_t *o = xb + t * ldx;
        float *of = (float *)(void *)xb + t * ldx;
        for (int64_t k = 0; k < ldx; k += 32) {
            /* Lanes past K read nothing and become zeros. */
            const int64_t left = K - k;
            const __mmask16 m0 = left >= 16 ? (__mmask16)0xffff
                                 : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
            const __mmask16 m1 = left >= 32 ? (__mmask16)0xffff
                                 : left > 16 ? (__mmask16)((1u << (left - 16)) - 1u) : 0;
            const __m512 lo = _mm512_maskz_loadu_ps(m0, xt + k);
            const __m512 hv = _mm512_maskz_loadu_ps(m1, xt + k + 16);
            /* vcvtne2ps2bf16: the second operand fills the low 16 BF16s. */
            const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hv, lo);
            if (kind == CPU_BF16_FMA) {
                /* The same BF16 values as floats: odd columns, then even. */
                _mm512_storeu_si512(of + k, _mm512_and_si512(v, hi));
                _mm512_storeu_si512(of + k + 16, _mm512_slli_epi32(v, 16));
            } else {
                _mm512_storeu_si512(o + k, v);
            }
        }
    }
}

/* Seconds for n steps of 16 independent vdpbf16ps (dp) or vfmadd231ps. */
static BF16_FN __attribute__((noinline)) double pick_time(int dp, int n)
{
    __m512 a[16];
    for (int i = 0; i < 16; i++)
        a[i] = _mm512_set1_ps((float)i);
    __m512bh wb = (__m512bh)_mm512_set1_epi16(0x3a83);
    __m512 wf = _mm512_set1_ps(1e-3f);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int s = 0; s < n; s++) {
        if (dp)
            for (int i = 0; i < 16; i++)
                a[i] = _mm512_dpbf16_ps(a[i], wb, wb);
        else
            for (int i = 0; i < 16; i++)
                a[i] = _mm512_fmadd_ps(wf, wf, a[i]);
        /* Keeps the multiplicands opaque, so nothing is hoisted. */
        __asm__ volatile("" : "+v"(wb), "+v"(wf));
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    __m512 sum = a[0];
    for (int i = 1; i < 16; i++)
        sum = _mm512_add_ps(sum, a[i]);
    volatile float sink = _mm512_reduce_add_ps(sum);
    (void)sink;
    return (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
}

/* Whether the FMA kernels give vdpbf16ps's bits on a small matrix whose
 * values include denormals, cancellations and a K that is no multiple of 32:
 * the property that makes the choice between them invisible in the logits. */
static BF16_FN int pick_same_bits(void)
{
    enum { R = 9, K = 77, N = 11 };
    uint16_t w[R * K];
    float x[N * K], y0[N * R], y1[N * R];
    _Alignas(64) uint16_t xb[N * 96];
    _Alignas(64) float xf[N * 96];
    uint64_t st = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < R * K; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        /* Exponents 0..31 and 112..143: denormals, and products that underflow. */
        const unsigned e = (unsigned)(st >> 59) + ((st >> 58) & 1 ? 112u : 0u);
        w[i] = (uint16_t)(((st >> 57) & 1) << 15 | e << 7 | ((st >> 33) & 0x7f));
    }
    for (int i = 0; i < N * K; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((int64_t)(st >> 40) - (1 << 23)) * 0x1p-20f * ((st >> 36) & 1 ? 0x1p-100f : 1.0f);
    }
    const struct native_mat m = {w, NATIVE_BF16, R, K, NULL};
    cpu_bf16_round_x(CPU_BF16_DP, x, N, K, xb, 96);
    cpu_bf16_round_x(CPU_BF16_FMA, x, N, K, (uint16_t *)(void *)xf, 96);
    for (int n = 1; n <= N; n += N - 1) {
        cpu_bf16_rows(CPU_BF16_DP, &m, 0, R, xb, 96, n, y0, 0);
        cpu_bf16_rows(CPU_BF16_FMA, &m, 0, R, (const uint16_t *)(const void *)xf, 96, n, y1, 0);
        if (memcmp(y0, y1, sizeof(float) * (size_t)(n * R)))
            return 0;
    }
    return 1;
}

int cpu_bf16_pick(void)
{
    /* Best of a few short samples, so a preempted one does not decide. The
     * FMA kernels issue about 2.25 FMAs where the others issue one vdpbf16ps
     * (two per 32 columns, plus the weight conversion over 8 tokens), and
     * more loads; they pay only where vdpbf16ps is 3x slower or more. */
    double dp = 1e9, fma = 1e9;
    for (int i = 0; i < 7; i++) {
        const double a = pick_time(1, 512), b = pick_time(0, 512);
        dp = a < dp ? a : dp;
        fma = b < fma ? b : fma;
    }
    return dp > 3.0 * fma && pick_same_bits() ? CPU_BF16_FMA : CPU_BF16_DP;
}

int cpu_has_avx512_bf16(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

#else

void cpu_bf16_rows(int kind, const struct native_mat *w, int64_t r0, int64_t r1, const uint16_t *xb,
                   int64_t ldx, int n, float *y, int accumulate)
{
    (void)kind, (void)w, (void)r0, (void)r1, (void)xb, (void)ldx, (void)n, (void)y, (void)accumulate;
    assert(!"no AVX-512 BF16 on this architecture");
}

void cpu_bf16_round_x(int kind, const float *x, int n, int64_t K, uint16_t *xb, int64_t ldx)
{
    (void)kind, (void)x, (void)n, (void)K, (void)xb, (void)ldx;
    assert(!"no AVX-512 BF16 on this architecture");
}

int cpu_has_avx512_bf16(void)
{
    return 0;
}

int cpu_bf16_pick(void)
{
    return CPU_BF16_DP;
}

#endif
