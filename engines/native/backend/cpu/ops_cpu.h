/* ops_cpu.h: the CPU implementation of the op table (ops.h).
 *
 * Kernels come in builds inside one binary, chosen at run time with
 * __builtin_cpu_supports(): AVX2+FMA+F16C, a portable C fallback, and for the
 * matmul AVX-512 tiles, so the default build runs on any x86-64 (and other
 * CPUs) yet uses AVX2 or AVX-512 where they exist. Weights in BF16 and F16 are
 * widened to float inside the dot product, so a memory-bound decode streams
 * half the bytes of F32. Where the CPU has AVX512_BF16, BF16 weights go
 * through vdpbf16ps's arithmetic instead (ops_cpu_bf16.c): the matmul's input
 * is rounded to BF16 once per call, which makes a batched decode about 2-4x
 * faster; OPS_CPU_NO_BF16 keeps the float tiles. That arithmetic runs as
 * vdpbf16ps itself or, on CPUs that issue it slowly, as two FMAs with the
 * same bits; the backend picks the faster at start-up.
 * The kernel follows the matrix, not the batch, so ops.h's bit-for-bit
 * promise holds with either.
 *
 * Threads: the backend owns a thread pool (threadpool.h). Matmul and
 * attention split their work over it when it is large enough to pay for the
 * hand-off; small ops (and tiny models, where a hand-off costs more than the
 * op) run on the calling thread. Results never depend on the thread count.
 * One thread drives a backend at a time.
 */
#ifndef CASCADE_NATIVE_OPS_CPU_H
#define CASCADE_NATIVE_OPS_CPU_H

#include "engines/native/backend/ops.h"

enum {
    OPS_CPU_PORTABLE = 1u << 0,     /* use the portable kernels even where AVX2 exists */
    OPS_CPU_NO_AVX512 = 1u << 1,    /* AVX2 matmul even where AVX-512 exists */
    OPS_CPU_NO_BF16 = 1u << 2,      /* float AVX-512 tiles for BF16 weights even where
                                     * AVX512_BF16 exists (the pre-BF16 kernels) */
    /* Which of the two BF16 kernel sets, where AVX512_BF16 exists: they give
     * the same bits, so these only move speed (benchmarks, tests). Without
     * either the backend times both briefly and takes the faster. */
    OPS_CPU_BF16_DP = 1u << 3,      /* vdpbf16ps */
    OPS_CPU_BF16_FMA = 1u << 4,     /* vdpbf16ps's arithmetic in pairs of vfmadd231ps */
};

/* threads <= 0: one per online CPU. NULL when out of memory or threads. */
struct native_backend *ops_cpu_new(int threads, unsigned flags);

/* "avx512bf16", "avx512", "avx2" or "portable": the matmul kernels this
 * backend runs (AVX-512 only for the matmul; the other ops use AVX2 there).
 * "avx512bf16" is "avx512" plus the vdpbf16ps kernels for BF16 weights. */
const char *ops_cpu_kernels(const struct native_backend *b);
/* Which set runs "avx512bf16": "vdpbf16ps" or "fma" (same bits); "" when
 * BF16 weights take the float tiles. */
const char *ops_cpu_bf16_kernels(const struct native_backend *b);
int ops_cpu_threads(const struct native_backend *b);

/* The KV cache block size the CPU attention kernel expects (positions per
 * block, a multiple of 8). */
#define OPS_CPU_BLOCK_SIZE 16
/* The largest head_dim the attention kernels take. */
#define OPS_CPU_MAX_HEAD_DIM NATIVE_MAX_HEAD_DIM

#endif
