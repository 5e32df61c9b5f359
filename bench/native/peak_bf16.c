/* peak_bf16.c: this CPU's compute bound for the BF16 matmul, measured.
 *
 *   cc -O2 -o /tmp/peak_bf16 bench/native/peak_bf16.c && /tmp/peak_bf16
 *
 * One thread. The clock comes from a chain of dependent integer adds (one
 * per cycle); vdpbf16ps (32 BF16 multiply-adds = 64 FLOP per zmm) and
 * vfmadd231ps (16 = 32 FLOP) run with N independent accumulators, so the
 * rate rises as N / latency until the ports saturate. Every figure is the
 * best of 300 short samples: on a shared VM a sample that nothing interrupted
 * is the machine's own rate, and longer ones are not. Peak FLOP/s = clock x
 * saturated rate x FLOP per instruction x cores.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

__attribute__((noinline)) static uint64_t chain(uint64_t n)
{
    uint64_t x = 0;
    for (uint64_t i = 0; i < n; i++)
        __asm__ volatile("add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\t"
                         "add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0"
                         : "+r"(x));
    return x;
}

/* N accumulators in named registers (an array would go through memory);
 * the empty asm keeps the compiler from hoisting the product out of the loop. */
#define A4(o) __m512 a##o##0 = _mm512_set1_ps(o##0.f), a##o##1 = _mm512_set1_ps(o##1.f), \
                     a##o##2 = _mm512_set1_ps(o##2.f), a##o##3 = _mm512_set1_ps(o##3.f);
#define DP4(o) a##o##0 = _mm512_dpbf16_ps(a##o##0, w, x); a##o##1 = _mm512_dpbf16_ps(a##o##1, w, x); \
               a##o##2 = _mm512_dpbf16_ps(a##o##2, w, x); a##o##3 = _mm512_dpbf16_ps(a##o##3, w, x);
#define FM4(o) a##o##0 = _mm512_fmadd_ps(v, u, a##o##0); a##o##1 = _mm512_fmadd_ps(v, u, a##o##1); \
               a##o##2 = _mm512_fmadd_ps(v, u, a##o##2); a##o##3 = _mm512_fmadd_ps(v, u, a##o##3);
#define S4(o) _mm512_add_ps(_mm512_add_ps(a##o##0, a##o##1), _mm512_add_ps(a##o##2, a##o##3))

#define BF_FN __attribute__((target("avx512f,avx512bf16"), noinline))
#define F_FN __attribute__((target("avx512f"), noinline))
#define BH __m512bh w = (__m512bh)_mm512_set1_epi16(0x3a83), x = w;
#define FH __m512 v = _mm512_set1_ps(1e-3f), u = v;

BF_FN static float dp4(uint64_t n) { A4(1) BH for (uint64_t i = 0; i < n; i++) { DP4(1) __asm__ volatile("" : "+v"(w)); } return _mm512_reduce_add_ps(S4(1)); }
BF_FN static float dp8(uint64_t n) { A4(1) A4(2) BH for (uint64_t i = 0; i < n; i++) { DP4(1) DP4(2) __asm__ volatile("" : "+v"(w)); } return _mm512_reduce_add_ps(_mm512_add_ps(S4(1), S4(2))); }
BF_FN static float dp16(uint64_t n) { A4(1) A4(2) A4(3) A4(4) BH for (uint64_t i = 0; i < n; i++) { DP4(1) DP4(2) DP4(3) DP4(4) __asm__ volatile("" : "+v"(w)); } return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(S4(1), S4(2)), _mm512_add_ps(S4(3), S4(4)))); }
F_FN static float fm4(uint64_t n) { A4(1) FH for (uint64_t i = 0; i < n; i++) { FM4(1) __asm__ volatile("" : "+v"(v)); } return _mm512_reduce_add_ps(S4(1)); }
F_FN static float fm16(uint64_t n) { A4(1) A4(2) A4(3) A4(4) FH for (uint64_t i = 0; i < n; i++) { FM4(1) FM4(2) FM4(3) FM4(4) __asm__ volatile("" : "+v"(v)); } return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(S4(1), S4(2)), _mm512_add_ps(S4(3), S4(4)))); }

int main(void)
{
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bf16")) {
        fprintf(stderr, "peak_bf16: this CPU has no AVX512_BF16\n");
        return 1;
    }
    const uint64_t N = 250000, M = 300000;     /* M instructions per sample */
    struct { const char *name; float (*fn)(uint64_t); int acc, flop; double best; } k[] = {
        {"vdpbf16ps", dp4, 4, 64, 1e9}, {"vdpbf16ps", dp8, 8, 64, 1e9}, {"vdpbf16ps", dp16, 16, 64, 1e9},
        {"vfmadd231ps", fm4, 4, 32, 1e9}, {"vfmadd231ps", fm16, 16, 32, 1e9},
    };
    const int nk = (int)(sizeof(k) / sizeof(k[0]));
    double bc = 1e9;
    for (int r = 0; r < 300; r++) {
        double t = now();
        volatile uint64_t z = chain(N);
        t = now() - t;
        bc = t < bc ? t : bc;
        (void)z;
        for (int i = 0; i < nk; i++) {
            t = now();
            volatile float f = k[i].fn(M / (uint64_t)k[i].acc);
            t = now() - t;
            k[i].best = t < k[i].best ? t : k[i].best;
            (void)f;
        }
    }
    const double ghz = 8.0 * (double)N / bc / 1e9;
    printf("clock %.2f GHz (dependent adds)\n", ghz);
    for (int i = 0; i < nk; i++) {
        const double per_cycle = (double)(M / (uint64_t)k[i].acc * (uint64_t)k[i].acc) / k[i].best / 1e9 / ghz;
        printf("%-12s zmm, %2d accumulators: %.2f per cycle = %.1f GFLOP/s per core\n", k[i].name,
               k[i].acc, per_cycle, per_cycle * ghz * k[i].flop);
    }
    return 0;
}
