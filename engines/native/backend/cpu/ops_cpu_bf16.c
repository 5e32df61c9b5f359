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
 * for batches) does exactly that, so a row's bits do not depend on the batch
 * it came in, on the tile that computed it or on the thread split. Since
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
 */
#include "engines/native/backend/cpu/cpu_internal.h"

#include <assert.h>

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
    for (; k < Kf; k += 32) {
        /* Prefetch the next R rows while these compute. Decode (pf_every
         * 1): every line, into L1, a tile ahead. A batch: the row group's J
         * token tiles share the next group's lines, tile pf_j taking every
         * J-th (pf_every = J), so the DRAM reads spread over the whole group
         * instead of piling onto its first tile; into L2, since the x rows
         * streaming through L1 would evict them before use. */
        if (pf_every == 1) {
            for (int i = 0; i < R; i++)
                _mm_prefetch((const char *)(wr[i] + R * K + k), _MM_HINT_T0);
        } else if (pf_every > 1 && (k / 32) % pf_every == 0) {
            for (int i = 0; i < R; i++)
                _mm_prefetch((const char *)(wr[i] + R * K + k + 32 * pf_j), _MM_HINT_T1);
        }
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

BF16_FN void cpu_bf16_rows(const struct native_mat *w, int64_t r0, int64_t r1,
                           const uint16_t *xb, int64_t ldx, int n, float *y, int accumulate)
{
    const uint16_t *W = w->data;
    const int64_t K = w->cols, ldy = w->rows;
    assert(w->dtype == NATIVE_BF16 && ldx >= K && ldx % 32 == 0);
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

BF16_FN void cpu_bf16_round_x(const float *x, int n, int64_t K, uint16_t *xb, int64_t ldx)
{
    for (int t = 0; t < n; t++) {
        const float *xt = x + t * K;
        uint16_t *o = xb + t * ldx;
        for (int64_t k = 0; k < ldx; k += 32) {
            /* Lanes past K read nothing and become zeros. */
            const int64_t left = K - k;
            const __mmask16 m0 = left >= 16 ? (__mmask16)0xffff
                                 : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
            const __mmask16 m1 = left >= 32 ? (__mmask16)0xffff
                                 : left > 16 ? (__mmask16)((1u << (left - 16)) - 1u) : 0;
            const __m512 lo = _mm512_maskz_loadu_ps(m0, xt + k);
            const __m512 hi = _mm512_maskz_loadu_ps(m1, xt + k + 16);
            /* vcvtne2ps2bf16: the second operand fills the low 16 BF16s. */
            _mm512_storeu_si512(o + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    }
}

int cpu_has_avx512_bf16(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

#else

void cpu_bf16_rows(const struct native_mat *w, int64_t r0, int64_t r1, const uint16_t *xb,
                   int64_t ldx, int n, float *y, int accumulate)
{
    (void)w, (void)r0, (void)r1, (void)xb, (void)ldx, (void)n, (void)y, (void)accumulate;
    assert(!"no AVX-512 BF16 on this architecture");
}

void cpu_bf16_round_x(const float *x, int n, int64_t K, uint16_t *xb, int64_t ldx)
{
    (void)x, (void)n, (void)K, (void)xb, (void)ldx;
    assert(!"no AVX-512 BF16 on this architecture");
}

int cpu_has_avx512_bf16(void)
{
    return 0;
}

#endif
