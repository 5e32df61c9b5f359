/* bf16_fma_equiv.c: does vdpbf16ps give the bits of two float FMAs on this
 * CPU? The FMA kernel set of engines/native/backend/cpu/ops_cpu_bf16.c
 * rests on it (ops_cpu_new also checks a small matrix before using them).
 *
 *   cc -O2 -o /tmp/bf16_fma_equiv bench/native/bf16_fma_equiv.c && /tmp/bf16_fma_equiv
 *
 * Per lane i, vdpbf16ps is taken to compute
 *     acc = fma(w[2i+1], x[2i+1], acc);  acc = fma(w[2i], x[2i], acc)
 * (a product of two BF16s is exact in float) with denormal inputs read as
 * zero and denormal results flushed, i.e. under MXCSR DAZ|FTZ. Two sets of
 * random lanes: normal values whose accumulator nearly cancels the first
 * product (where the order and the number of roundings show), and tiny
 * ones (denormal BF16s, products that underflow). Prints the mismatches of
 * each set, and for contrast those of the other order and of the tiny set
 * without DAZ|FTZ; exit 1 on a mismatch under DAZ|FTZ.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define FN __attribute__((target("avx512f,avx512bw,avx512bf16")))

static uint64_t st = 88172645463325252ull;

static uint64_t rnd(void)
{
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    return st;
}

static float bf(uint16_t b)
{
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* A random BF16 with a biased exponent in [e0, e0 + span). */
static uint16_t rbf(unsigned e0, unsigned span)
{
    const unsigned e = e0 + (unsigned)(rnd() % span);
    return (uint16_t)((rnd() & 1) << 15 | e << 7 | (rnd() & 0x7f));
}

/* Mismatches over n vectors of 16 lanes; tiny: the underflow set. */
static FN long run(long n, int tiny, long *other_order)
{
    long bad = 0;
    for (long it = 0; it < n; it++) {
        uint16_t w[32], x[32];
        float acc[16], r[16], e[16];
        for (int i = 0; i < 32; i++) {
            w[i] = tiny ? (rnd() % 4 ? rbf(0, 70) : 0) : rbf(119, 16);
            x[i] = tiny ? (rnd() % 4 ? rbf(60, 70) : 0) : rbf(119, 16);
        }
        for (int i = 0; i < 16; i++) {
            if (tiny) {
                const uint32_t u = (uint32_t)(rnd() & 0x807fffff) | (uint32_t)(rnd() % 8) << 23;
                memcpy(&acc[i], &u, 4);
            } else {
                const float p = bf(w[2 * i + 1]) * bf(x[2 * i + 1]);
                acc[i] = rnd() & 1 ? -p * (1 + (float)(rnd() % 1000) * 1e-6f)
                                   : (float)((int)(rnd() % 2000) - 1000) * 0.37f;
            }
        }
        const __m512 a = _mm512_loadu_ps(acc);
        const __m512i wi = _mm512_loadu_si512(w), xi = _mm512_loadu_si512(x);
        _mm512_storeu_ps(r, _mm512_dpbf16_ps(a, (__m512bh)wi, (__m512bh)xi));
        /* Odd halves as floats (w & 0xffff0000), then even (w << 16). */
        const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
        const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(wi, hi));
        const __m512 xo = _mm512_castsi512_ps(_mm512_and_si512(xi, hi));
        const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(wi, 16));
        const __m512 xe = _mm512_castsi512_ps(_mm512_slli_epi32(xi, 16));
        _mm512_storeu_ps(e, _mm512_fmadd_ps(we, xe, _mm512_fmadd_ps(wo, xo, a)));
        bad += memcmp(r, e, sizeof(r)) != 0 ? 1 : 0;
        _mm512_storeu_ps(e, _mm512_fmadd_ps(wo, xo, _mm512_fmadd_ps(we, xe, a)));
        *other_order += memcmp(r, e, sizeof(r)) != 0 ? 1 : 0;
    }
    return bad;
}

int main(void)
{
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bf16")) {
        fprintf(stderr, "bf16_fma_equiv: this CPU has no AVX512_BF16\n");
        return 1;
    }
    const long n = 2000000;
    long o0 = 0, o1 = 0, o2 = 0;
    /* The FMAs without DAZ|FTZ, for contrast: the tiny set shows why. */
    const long b0 = run(n / 10, 1, &o0);
    _mm_setcsr(_mm_getcsr() | 0x8040);     /* DAZ | FTZ, as vdpbf16ps */
    const long b1 = run(n, 0, &o1), b2 = run(n, 1, &o2);
    printf("tiny, without DAZ|FTZ:   %ld of %ld vectors differ\n", b0, n / 10);
    printf("normal, near-cancelling: %ld of %ld vectors differ (even-then-odd order: %ld)\n", b1, n, o1);
    printf("tiny, underflowing:      %ld of %ld vectors differ (even-then-odd order: %ld)\n", b2, n, o2);
    return b1 || b2;
}
