/* cpu_internal.h: what the CPU backend's files share. Private to
 * engines/native/backend/cpu/.
 *
 * ops_cpu.c holds the table, memory, the KV cache and the dense kernels;
 * ops_cpu_bf16.c the BF16-weight matmul rows with AVX-512 BF16 (vdpbf16ps);
 * ops_cpu_fp8.c the FP8 block-scaled matmul rows; ops_cpu_mla.c MLA
 * attention over the latent cache; ops_cpu_moe.c MoE routing and the grouped
 * experts.
 */
#ifndef CASCADE_NATIVE_CPU_INTERNAL_H
#define CASCADE_NATIVE_CPU_INTERNAL_H

#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/backend/cpu/threadpool.h"

#include <stddef.h>
#include <stdint.h>

/* Build switches every kernel file shares. The vector kernels exist in
 * every build (compiled with target attributes) and are picked at run time
 * from cb->avx2 / cb->avx512, so the default build runs on any x86-64. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#define INLINE static inline __attribute__((always_inline))
#define AVX2_FN __attribute__((target("avx2,fma,f16c")))
#define AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

/* The sum of 8 lanes in one fixed tree: every dot product of the CPU
 * kernels ends with it, so a result does not depend on which kernel or
 * tile computed it. */
INLINE float lanes_sum(const float l[8])
{
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

struct cpu_backend {
    struct native_backend base;
    struct threadpool *pool;
    int threads;
    int avx2;           /* AVX2+FMA+F16C kernels (attention, swiglu, and matmul unless avx512) */
    int avx512;         /* AVX-512 matmul tiles */
    int bf16;           /* enum cpu_bf16: the BF16-weight matmul (ops_cpu_bf16.c), or 0 */
    /* The activations of one matmul rounded to BF16 for the bf16 kernels,
     * written by the driving thread before the pool runs: a lazily committed
     * mapping of xb_cap elements, made once in ops_cpu_new (the forward pass
     * allocates nothing). */
    uint16_t *xb;
    size_t xb_cap;
};

/* The CPU KV cache: one anonymous mapping of n_blocks blocks of block_size
 * positions. Inside a block, layer l starts at l * layer_stride floats.
 *   dense:  K transposed [kv_dim][block_size] (scores vectorize over
 *           positions), then V [block_size][kv_dim] (the weighted sum
 *           vectorizes over dims); layer_stride = 2 * block_size * kv_dim.
 *   latent: [block_size][latent_dim + rope_dim]: position i's latent c,
 *           then its rope key k_pe; layer_stride = block_size * (latent + rope). */
struct native_kv {
    struct native_kv_desc desc;
    float *data;
    int block_size;
    int n_blocks;
    size_t layer_stride;
    size_t block_stride;    /* n_layers * layer_stride */
    size_t map_bytes;
};

/* The float row of position p of a sequence, in layer l. */
static inline float *cpu_kv_block(const struct native_kv *kv, const struct native_seq_view *sv,
                                  int p, int layer)
{
    return kv->data + (size_t)sv->blocks[p / kv->block_size] * kv->block_stride +
           (size_t)layer * kv->layer_stride;
}

/* The two BF16-weight kernel sets of ops_cpu_bf16.c. They give the same
 * bits (x rounded to BF16, vdpbf16ps's arithmetic; only a NaN's payload may
 * differ) and differ in speed by CPU, which is all the choice between them
 * depends on. */
enum cpu_bf16 {
    CPU_BF16_DP = 1,    /* vdpbf16ps; xb rows of ldx BF16s */
    CPU_BF16_FMA = 2,   /* pairs of vfmadd231ps; xb rows of ldx floats */
};

/* The scratch (uint16_t elements) one token's row of x takes for kernel
 * set kind at K columns. */
static inline int64_t cpu_bf16_row_elems(int kind, int64_t K)
{
    const int64_t ldx = (K + 31) & ~(int64_t)31;
    return kind == CPU_BF16_FMA ? 2 * ldx : ldx;
}

/* ops_cpu_bf16.c: y[t * w->rows + r] (+)= W[r] . xb[t] for rows r0..r1 and
 * t < n, W in BF16, xb the activations prepared by cpu_bf16_round_x() for
 * the same kind, in rows of ldx columns (a multiple of 32, >= w->cols, zero
 * past cols; cpu_bf16_row_elems apart). Any thread. */
void cpu_bf16_rows(int kind, const struct native_mat *w, int64_t r0, int64_t r1,
                   const uint16_t *xb, int64_t ldx, int n, float *y, int accumulate);
/* xb[t][c] = bf16(x[t][c]) (nearest even) for c < K, 0 for K <= c < ldx,
 * laid out for kernel set kind. */
void cpu_bf16_round_x(int kind, const float *x, int n, int64_t K, uint16_t *xb, int64_t ldx);
/* AVX-512F/BW/VL and AVX512_BF16 on this CPU. */
int cpu_has_avx512_bf16(void);
/* The faster kernel set on this CPU (a few microseconds of timing), given
 * AVX512_BF16: CPU_BF16_FMA only where it also gives CPU_BF16_DP's bits. */
int cpu_bf16_pick(void);

/* ops_cpu_fp8.c: y[t * w->rows + r] (+)= x[t] . w[r] for rows r0..r1 and
 * t < n, w in F8_E4M3 with block scales. */
void cpu_fp8_rows(const struct cpu_backend *cb, const struct native_mat *w, int64_t r0, int64_t r1,
                  const float *x, int n, float *y, int accumulate);
/* ops_cpu_fp8.c, for MLA's per-row work on an FP8 kv_b: w[r] . x, and
 * acc[c] += a * w[r][c] for every column c. */
float cpu_fp8_dot(const struct cpu_backend *cb, const struct native_mat *w, int64_t r,
                  const float *x);
void cpu_fp8_axpy(const struct cpu_backend *cb, const struct native_mat *w, int64_t r, float a,
                  float *acc);

/* ops_cpu_mla.c, ops_cpu_moe.c: the ops of the same names in ops.h. */
void cpu_mla_attention(struct native_backend *b, float *out, const float *q, struct native_kv *kv,
                       int layer, const struct native_batch *batch, const struct native_mla *p,
                       float *scratch);
void cpu_moe_gate(struct native_backend *b, int32_t *ids, float *weights, const float *logits,
                  int n, const struct native_moe_gate *g);
void cpu_moe_experts(struct native_backend *b, float *y, const float *x, int n,
                     const int32_t *ids, const float *weights, int top_k,
                     const struct native_moe_experts *e, float *scratch);
void cpu_moe_combine(struct native_backend *b, float *y, const float *rows, int n,
                     const float *weights, int top_k, int dim);

#endif
