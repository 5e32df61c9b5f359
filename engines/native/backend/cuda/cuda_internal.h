/* cuda_internal.h: what the CUDA backend's files share. Private to
 * engines/native/backend/cuda/; every file that includes it is a .cu built
 * by nvcc (C++ linkage between them; ops_cuda.h is the C face).
 *
 * Files:
 *   ops_cuda.cu       the table, memory, weights, the KV cache, the batch
 *                     mirror, the dense matmul (GEMV for small batches,
 *                     cuBLAS for large ones), rmsnorm, rope, swiglu, embed,
 *                     gather, kv_store and dense paged attention;
 *   ops_cuda_fp8.cu   cuda_fp8_matmul: FP8 128x128 block-scaled GEMM   (H5)
 *   ops_cuda_mla.cu   cuda_mla_attention over the latent cache          (H5)
 *   ops_cuda_moe.cu   cuda_moe_gate, cuda_moe_experts, cuda_moe_combine (H5)
 *
 * Streams: everything runs on cb->stream, in op order, so an op may read
 * what the op before it wrote and reuse a scratch slot without waiting. Ops
 * never synchronize the host except download() and synchronize().
 *
 * Memory: plain cudaMalloc (never managed memory). Buffers, weights and the
 * KV pool are allocated by their owners up front. The scratch slots below
 * grow to the largest request they see and then stay; a forward pass asks
 * for the same sizes every step, so they stop growing after the first one.
 *
 * Thread: one host thread drives a backend at a time (ops.h); it must be the
 * thread that called cudaSetDevice(cb->device) -- every entry point sets it
 * again cheaply with cuda_enter().
 */
#ifndef CASCADE_NATIVE_CUDA_INTERNAL_H
#define CASCADE_NATIVE_CUDA_INTERNAL_H

#include "engines/native/backend/ops.h"
#include "engines/native/backend/cuda/ops_cuda.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Positions per KV block; the same 16 as the CPU, so both backends can be
 * driven by one block table in tests. */
#define CUDA_KV_BLOCK_SIZE 16

/* Scratch slots: device memory an op may use between its launch and the
 * next op's. Separate slots for ops that call each other (moe_experts calls
 * the matmul, which uses CUDA_SCRATCH_MATMUL), so a callee never clobbers
 * its caller's scratch. */
enum cuda_scratch_slot {
    CUDA_SCRATCH_MATMUL = 0,    /* BF16 copies of activations for cuBLAS, split-K partials */
    CUDA_SCRATCH_FP8 = 1,       /* H5: quantized activations, dequantized tiles */
    CUDA_SCRATCH_MLA = 2,       /* H5 */
    CUDA_SCRATCH_MOE = 3,       /* H5: permutation, counts, offsets */
    CUDA_SCRATCH_HOST_IDS = 4,  /* unused: cuda_host_ids() has its own ring */
    CUDA_SCRATCH_ATTN = 5,      /* dense attention's per-split partial results */
    CUDA_SCRATCH_COUNT
};

/* The device copy of the step's struct native_batch, made by begin_batch()
 * with one cudaMemcpyAsync of a packed host staging buffer. All arrays are
 * int32 in one device allocation:
 *   token[n_tokens], pos[n_tokens], seq[n_tokens], out_rows[n_out],
 *   block_off[n_seqs + 1], blocks[block_off[n_seqs]]
 * Sequence s's block table is blocks[block_off[s] .. block_off[s + 1]), so
 * position p of the sequence of token t lives in KV block
 *   blocks[block_off[seq[t]] + p / CUDA_KV_BLOCK_SIZE].
 * The host fields say what the arrays hold without a download. */
struct cuda_batch {
    const struct native_batch *host;    /* the pointer begin_batch() got */
    const int32_t *host_token, *host_pos, *host_out_rows;   /* its arrays, to recognize them */
    int n_tokens, n_seqs, n_out;
    int max_pos;            /* max over tokens of pos + 1 (grid sizing for attention) */
    int max_blocks;         /* max blocks of one sequence */
    int64_t sum_ctx;        /* sum over tokens of pos + 1 (the attention's work) */
    int32_t *token, *pos, *seq, *out_rows, *block_off, *blocks;     /* device */

    /* storage behind the arrays */
    int32_t *dev;           /* device, cap int32s */
    int32_t *staging;       /* pinned host, cap int32s: also what the mirror holds, for comparing */
    size_t cap, used;       /* int32s */
    cudaEvent_t copied;     /* recorded after the copy out of staging */
    int pending;            /* copied was recorded and staging may still be read */
};

/* A host cos/sin table uploaded once: the rope op's tables are host memory
 * (ops.h), fixed for a model's life, so they are keyed by host pointer. */
#define CUDA_ROPE_TABLES 8
struct cuda_rope_table {
    const float *host_cos, *host_sin;
    int n_pos, half;
    float fp[32];           /* sampled entries: a table freed and rebuilt at the same address differs */
    float *dev;             /* [n_pos][half] cos, then [n_pos][half] sin */
};

/* One map_weights() copy, in an open-addressing table keyed by device
 * address, so unmap_weights() is O(1) for the ~10^5 tensors of a large MoE. */
struct cuda_weight_map {
    void *dev;              /* NULL: empty slot; CUDA_MAP_TOMB: removed */
    size_t bytes;
};
#define CUDA_MAP_TOMB ((void *)1)

/* How matmuls above the GEMV's token count run for BF16 weights
 * (CASCADE_CUDA_GEMM=split3|split2|bf16): cuBLASLt on BF16 tensor cores
 * with the float32 activations cut into 3, 2 or 1 BF16 parts (x = hi + mid +
 * lo), one GEMM per part into the same F32 output. Three parts reproduce the
 * float32 product to about 2^-24 (what the CPU comparison needs), one is the
 * usual BF16 inference GEMM at a third of the work. */
enum cuda_gemm_mode {
    CUDA_GEMM_BF16 = 1,
    CUDA_GEMM_SPLIT2 = 2,
    CUDA_GEMM_SPLIT3 = 3,
};

struct cuda_lt_plan;        /* ops_cuda.cu: a cached cuBLASLt descriptor set and algorithm */

struct cuda_backend {
    struct native_backend base;
    int device;
    int cc_major, cc_minor;     /* compute capability: 8.x Ampere, 9.0 Hopper */
    int sm_count;
    size_t smem_optin;          /* max dynamic shared memory per block */
    char name[128];             /* "cuda:0 (NVIDIA H200, sm_90)" */
    cudaStream_t stream;
    cublasHandle_t cublas;
    cublasLtHandle_t lt;
    void *lt_ws;                /* cuBLAS(Lt) workspace, CUDA_LT_WS_BYTES */
    size_t lt_ws_bytes;

    struct cuda_batch batch;

    void *scratch[CUDA_SCRATCH_COUNT];
    size_t scratch_bytes[CUDA_SCRATCH_COUNT];

    struct cuda_rope_table rope[CUDA_ROPE_TABLES];
    int rope_next;              /* round-robin victim when all slots are used */

    struct cuda_weight_map *maps;
    size_t n_maps, n_tomb, cap_maps;    /* cap_maps: a power of two */
    size_t weight_bytes;        /* sum of what map_weights() holds */

    int gemm_parts;             /* enum cuda_gemm_mode */
    int gemv_max;               /* matmuls of up to this many tokens use the GEMV kernel */
    struct cuda_lt_plan *plans; /* CUDA_LT_PLANS, round-robin replaced */
    int plan_next;

    /* Small host int arrays ops get (ids, rows, positions outside the
     * batch, attention's tiles) go through a pinned ring and its device
     * twin: a copy from pageable memory may wait for the whole stream,
     * one from pinned memory never does. ids_done follows the latest copy
     * out of the ring; wrapping waits for it. */
    int32_t *ids_host, *ids_dev;
    size_t ids_cap, ids_off;    /* int32s */
    cudaEvent_t ids_done;
    int ids_pending;

    int32_t *att_tiles;         /* host: attention's token tiles, (first, count) pairs */
    size_t att_tiles_cap;       /* int32s */

    int last_error;             /* first CUDA/cuBLAS error an op hit, 0 if none */
    int n_errors;
    char error[256];            /* its text */
};

#define CUDA_LT_WS_BYTES ((size_t)32 << 20)

/* The device KV cache: the CPU's layout (cpu_internal.h), in one cudaMalloc
 * of n_blocks blocks of CUDA_KV_BLOCK_SIZE positions. Inside a block, layer
 * l starts at l * layer_stride floats:
 *   dense:  K transposed [kv_dim][block_size], then V [block_size][kv_dim];
 *           layer_stride = 2 * block_size * kv_dim.
 *   latent: [block_size][latent_dim + rope_dim]: position i's latent c, then
 *           its rope key k_pe; layer_stride = block_size * (latent + rope).
 * The block tables come with the batch (struct cuda_batch), not with the
 * cache: the runtime owns the tables and may change them every step. */
struct native_kv {
    struct native_kv_desc desc;
    float *data;            /* device */
    int block_size;
    int n_blocks;
    size_t layer_stride;    /* floats */
    size_t block_stride;    /* floats: n_layers * layer_stride */
    size_t bytes;
};

/* A buffer: device memory of bytes bytes. */
struct native_buf {
    void *dev;
    size_t bytes;
};

/* ---- errors ----
 * An op cannot return an error (ops.h): a CUDA failure inside one is
 * reported once on stderr with the file and line, remembered in
 * cb->last_error, and the op returns; download() and synchronize() then see
 * the sticky error too. A device fault is not something a request can
 * recover from, so the runtime treats it as fatal for the engine. */
void cuda_report(struct cuda_backend *cb, cudaError_t e, const char *what, const char *file,
                 int line);
void cuda_report_blas(struct cuda_backend *cb, int status, const char *what, const char *file,
                      int line);

/* CUDA_CHECK(cb, call): evaluates call once; on failure reports it and
 * evaluates to nonzero. Use as `if (CUDA_CHECK(cb, cudaMalloc(...))) goto fail;` */
#define CUDA_CHECK(cb, call)                                                                        \
    __extension__({                                                                                 \
        cudaError_t cuda_check_e_ = (call);                                                         \
        if (cuda_check_e_ != cudaSuccess)                                                           \
            cuda_report((cb), cuda_check_e_, #call, __FILE__, __LINE__);                           \
        cuda_check_e_ != cudaSuccess;                                                               \
    })

/* After a <<<>>> launch: a bad configuration shows up here, not in the launch. */
#define CUDA_LAUNCHED(cb, name) CUDA_CHECK(cb, cudaGetLastError())

#define CUBLAS_CHECK(cb, call)                                                                      \
    __extension__({                                                                                 \
        int cublas_check_s_ = (int)(call);                                                          \
        if (cublas_check_s_ != 0)                                                                   \
            cuda_report_blas((cb), cublas_check_s_, #call, __FILE__, __LINE__);                    \
        cublas_check_s_ != 0;                                                                       \
    })

static inline struct cuda_backend *cuda_cb(struct native_backend *b)
{
    return (struct cuda_backend *)b;
}

/* Make cb's device current on this thread (cheap when it already is). */
void cuda_enter(struct cuda_backend *cb);

/* Device memory of at least bytes in slot, valid until the next call for the
 * same slot. Growing waits for the stream (the old block may be in use) and
 * reallocates; NULL (reported) when the device is out of memory. */
void *cuda_scratch(struct cuda_backend *cb, enum cuda_scratch_slot slot, size_t bytes);

/* A device copy of n int32 host values (ids, rows or positions an op got in
 * host memory), queued on the stream through the pinned ring (cb->ids_*),
 * so the host never waits; valid for the kernels queued after it in this
 * step. When host is one of the current batch's arrays the mirror is
 * returned and nothing is copied. `at` is unused (kept for callers). NULL on
 * failure (reported). */
const int32_t *cuda_host_ids(struct cuda_backend *cb, const int32_t *host, int n, size_t at);

/* ---- kernels shared between the files ---- */

/* y[t * w->rows + r] (+)= x[t] . w[r], t < n, for one BF16/F16/F32 weight,
 * x and y device float32 (ops.h's matmul for n_w = 1). Picks the GEMV kernel
 * for small n and cuBLAS otherwise. (moe_experts does not: its grouped
 * kernel runs every dtype through cuda_rows.cuh, without a host round trip.) */
void cuda_matmul_one(struct cuda_backend *cb, int n, const float *x, const struct native_mat *w,
                     float *y, int accumulate);

/* ops_cuda_fp8.cu (H5): the same for an F8_E4M3 weight with its 128x128
 * block scales (w->scale, device): the bytes decoded exactly to float32
 * inside the product and summed in float32, in cuda_rows.cuh's fixed order
 * (so the CPU comparison holds at its own tolerance). There is no FP8
 * tensor-core path yet; cuda_fp8_exact is there to keep this exact path
 * selectable once an sm_90a one (FP8 activations, FP8 tolerance) exists. */
void cuda_fp8_matmul(struct cuda_backend *cb, int n, const float *x, const struct native_mat *w,
                     float *y, int accumulate);
extern int cuda_fp8_exact;

/* ops_cuda_mla.cu, ops_cuda_moe.cu (H5): the ops of the same names in ops.h,
 * with the op table's signatures. The batch arrays are in cb->batch. */
void cuda_mla_attention(struct native_backend *b, float *out, const float *q, struct native_kv *kv,
                        int layer, const struct native_batch *batch, const struct native_mla *p,
                        float *scratch);
void cuda_moe_gate(struct native_backend *b, int32_t *ids, float *weights, const float *logits,
                   int n, const struct native_moe_gate *g);
void cuda_moe_experts(struct native_backend *b, float *y, const float *x, int n, const int32_t *ids,
                      const float *weights, int top_k, const struct native_moe_experts *e,
                      float *scratch);
void cuda_moe_combine(struct native_backend *b, float *y, const float *rows, int n,
                      const float *weights, int top_k, int dim);

/* ---- device helpers for kernels (any .cu) ---- */
#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>

/* One weight element as float, by dtype (not F8: that has its own path). */
static __device__ __forceinline__ float cuda_load_w(const void *w, enum native_dtype dt, int64_t i)
{
    if (dt == NATIVE_F32)
        return ((const float *)w)[i];
    if (dt == NATIVE_BF16)
        return __uint_as_float((uint32_t)((const uint16_t *)w)[i] << 16);
    return __half2float(((const __half *)w)[i]);
}

/* OCP e4m3fn -> float: sign, 4 exponent bits (bias 7), 3 mantissa bits; no
 * infinities, 0x7f/0xff are NaN. */
static __device__ __forceinline__ float cuda_e4m3_to_f32(uint8_t v)
{
    const uint32_t s = (uint32_t)(v & 0x80) << 24;
    const int e = (v >> 3) & 0xf, m = v & 7;
    if (e == 0xf && m == 7)
        return __uint_as_float(s | 0x7fc00000u);
    if (e == 0)     /* subnormal: m * 2^-9 */
        return (s ? -1.0f : 1.0f) * (float)m * 0.001953125f;
    return __uint_as_float(s | ((uint32_t)(e + 120) << 23) | ((uint32_t)m << 20));
}

static __device__ __forceinline__ float cuda_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float cuda_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
#endif

#endif
