/* cuda_rows.cuh: the row-dot body that every weight product of the DeepSeek
 * ops runs on the GPU: the FP8 matmul (ops_cuda_fp8.cu), the grouped routed
 * experts (ops_cuda_moe.cu) and MLA's naive decompression (ops_cuda_mla.cu).
 * Private to engines/native/backend/cuda/; device code only.
 *
 * The math: y[t][r] = sum_c w[r][c] x[t][c], c < K, with w in F32, F16, BF16
 * or F8_E4M3 (w = e4m3 * scale[r / 128][c / 128]).
 *
 * The order of operations, fixed per output whatever kernel, tile, batch or
 * alignment it runs in (ops.h: a token gets the same bits alone or inside
 * any batch):
 *   - the columns split into chunks of 16: chunk j holds columns
 *     16j .. min(16j + 16, K) - 1, all inside one 128-column block kb = j / 8;
 *   - chain_j = the chunk's products added in column order from 0, one fused
 *     multiply-add each (the weight decoded exactly to float first);
 *   - lane class l (l < 32) folds the chunks j = l, l + 32, ... in order:
 *     acc_l = fma(chain_j, scale[r / 128][kb], acc_l) for F8, acc_l + chain_j
 *     otherwise;
 *   - y = the 32 acc_l added by the butterfly xor 16, 8, 4, 2, 1 (IEEE
 *     addition commutes, so every lane ends with the same bits).
 * One warp computes R rows x T tokens at a time, lane l doing class l. The
 * vector path (16-byte weight loads, float4 activation loads) and the scalar
 * path (any K, any alignment) perform this same sequence, so they agree to
 * the bit; which runs is an alignment question only.
 *
 * At batch 1 a lane streams 16 weight bytes per FP8 row per chunk, R rows
 * deep, so a warp keeps R x 16 bytes per lane in flight; tokens beyond 8 run
 * as further tiles (grid.y), re-reading the rows from L2.
 */
#ifndef CASCADE_NATIVE_CUDA_ROWS_CUH
#define CASCADE_NATIVE_CUDA_ROWS_CUH

#include "engines/native/backend/cuda/cuda_internal.h"

#include <cuda_fp16.h>

#define ROWS_CHUNK 16
#define ROWS_WARPS 8                    /* warps per CTA: 256 threads */
#define ROWS_TMAX 8                     /* tokens per tile, at most */

/* One weight matrix as the kernels see it. */
struct rows_w {
    const void *data;
    const float *scale;     /* F8: [ceil(rows/128)][ceil(cols/128)], else NULL */
};

/* e4m3fn byte -> float, exactly and without subnormal floats (so a
 * flush-to-zero build still decodes e4m3 subnormals): a normal e4m3 is its
 * seven bits eeee.mmm moved to float bits 29..20 with the exponent rebased
 * (+120); exponent 0 is m * 2^-9. 0x7f/0xff (NaN in e4m3fn) come out as
 * +-480, as in the CPU's AVX2 decoder; no checkpoint holds them. */
static __device__ __forceinline__ float rows_e4m3(uint32_t b)
{
    float v = __uint_as_float(((b & 0x7fu) << 20) + (120u << 23));
    if (!(b & 0x78u))
        v = (float)(b & 7u) * 0.001953125f;
    return (b & 0x80u) ? -v : v;
}

/* Element k (0..15) of a 16-element chunk held raw in u[] (16 bytes for
 * F8, 32 for F16/BF16, 64 for F32), as float. k is a compile-time constant
 * after unrolling, so u[] stays in registers. */
template <int DT>
static __device__ __forceinline__ float rows_raw_get(const uint32_t *u, int k)
{
    if (DT == NATIVE_F8_E4M3)
        return rows_e4m3((u[k >> 2] >> (8 * (k & 3))) & 0xffu);
    if (DT == NATIVE_BF16)
        return __uint_as_float((k & 1) ? (u[k >> 1] & 0xffff0000u) : (u[k >> 1] << 16));
    if (DT == NATIVE_F16)
        return __half2float(__ushort_as_half((unsigned short)((k & 1) ? (u[k >> 1] >> 16)
                                                                      : (u[k >> 1] & 0xffffu))));
    return __uint_as_float(u[k]);
}

/* 32-bit words in a chunk's raw bytes. */
template <int DT>
struct rows_raw_words {
    static const int n = DT == NATIVE_F8_E4M3 ? 4 : DT == NATIVE_F32 ? 16 : 8;
};

/* Loads the chunk of 16 elements starting at element e (16-byte aligned). */
template <int DT>
static __device__ __forceinline__ void rows_raw_load(uint32_t *u, const void *data, int64_t e)
{
    const int bytes = DT == NATIVE_F8_E4M3 ? 1 : DT == NATIVE_F32 ? 4 : 2;
    const uint4 *p = (const uint4 *)((const char *)data + e * bytes);
#pragma unroll
    for (int i = 0; i < rows_raw_words<DT>::n / 4; i++) {
        const uint4 v = __ldg(p + i);
        u[4 * i] = v.x;
        u[4 * i + 1] = v.y;
        u[4 * i + 2] = v.z;
        u[4 * i + 3] = v.w;
    }
}

/* One element, for the scalar path. */
template <int DT>
static __device__ __forceinline__ float rows_elem(const void *data, int64_t i)
{
    if (DT == NATIVE_F8_E4M3)
        return rows_e4m3(__ldg((const unsigned char *)data + i));
    if (DT == NATIVE_BF16)
        return __uint_as_float((uint32_t)__ldg((const unsigned short *)data + i) << 16);
    if (DT == NATIVE_F16)
        return __half2float(__ushort_as_half(__ldg((const unsigned short *)data + i)));
    return __ldg((const float *)data + i);
}

/* The tile: NW weights (1, or 2 for gate and up) x R rows (rr[], already
 * clamped into the matrix) x T tokens (xp[], rows of K floats). On return
 * acc[w][i][t] holds y for (weight w, row rr[i], token t) in every lane.
 * VEC: K % 16 == 0, the weight rows and xp[] 16-byte aligned. */
template <int DT, int NW, int R, int T, bool VEC>
static __device__ __forceinline__ void rows_tile(const rows_w *w, const int64_t *rr, int64_t K,
                                                 const float *const *xp, float (*acc)[R][T])
{
    const int lane = threadIdx.x & 31;
    const int64_t nch = (K + ROWS_CHUNK - 1) / ROWS_CHUNK;
    const int64_t ncb = (K + 127) / 128;

#pragma unroll
    for (int a = 0; a < NW; a++)
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int t = 0; t < T; t++)
                acc[a][i][t] = 0.0f;

    for (int64_t j = lane; j < nch; j += 32) {
        const int64_t c0 = j * ROWS_CHUNK;
        float ch[NW][R][T];
#pragma unroll
        for (int a = 0; a < NW; a++)
#pragma unroll
            for (int i = 0; i < R; i++)
#pragma unroll
                for (int t = 0; t < T; t++)
                    ch[a][i][t] = 0.0f;

        if (VEC) {
            uint32_t raw[NW][R][rows_raw_words<DT>::n];
#pragma unroll
            for (int a = 0; a < NW; a++)
#pragma unroll
                for (int i = 0; i < R; i++)
                    rows_raw_load<DT>(raw[a][i], w[a].data, rr[i] * K + c0);
#pragma unroll
            for (int q = 0; q < ROWS_CHUNK / 4; q++) {
                float4 xv[T];
#pragma unroll
                for (int t = 0; t < T; t++)
                    xv[t] = __ldg((const float4 *)(xp[t] + c0) + q);
#pragma unroll
                for (int k = 0; k < 4; k++) {
#pragma unroll
                    for (int a = 0; a < NW; a++)
#pragma unroll
                        for (int i = 0; i < R; i++) {
                            const float wv = rows_raw_get<DT>(raw[a][i], 4 * q + k);
#pragma unroll
                            for (int t = 0; t < T; t++) {
                                const float xk = k == 0 ? xv[t].x : k == 1 ? xv[t].y
                                               : k == 2 ? xv[t].z : xv[t].w;
                                ch[a][i][t] = __fmaf_rn(wv, xk, ch[a][i][t]);
                            }
                        }
                }
            }
        } else {
            const int len = K - c0 < ROWS_CHUNK ? (int)(K - c0) : ROWS_CHUNK;
#pragma unroll
            for (int k = 0; k < ROWS_CHUNK; k++) {
                if (k < len) {
                    float xs[T];
#pragma unroll
                    for (int t = 0; t < T; t++)
                        xs[t] = __ldg(xp[t] + c0 + k);
#pragma unroll
                    for (int a = 0; a < NW; a++)
#pragma unroll
                        for (int i = 0; i < R; i++) {
                            const float wv = rows_elem<DT>(w[a].data, rr[i] * K + c0 + k);
#pragma unroll
                            for (int t = 0; t < T; t++)
                                ch[a][i][t] = __fmaf_rn(wv, xs[t], ch[a][i][t]);
                        }
                }
            }
        }

        /* Fold the chunk into this lane's class. */
#pragma unroll
        for (int a = 0; a < NW; a++)
#pragma unroll
            for (int i = 0; i < R; i++) {
                if (DT == NATIVE_F8_E4M3) {
                    const float s = __ldg(w[a].scale + (rr[i] / 128) * ncb + j / 8);
#pragma unroll
                    for (int t = 0; t < T; t++)
                        acc[a][i][t] = __fmaf_rn(ch[a][i][t], s, acc[a][i][t]);
                } else {
#pragma unroll
                    for (int t = 0; t < T; t++)
                        acc[a][i][t] = __fadd_rn(acc[a][i][t], ch[a][i][t]);
                }
            }
    }

    /* The 32 classes, by the fixed butterfly. */
#pragma unroll
    for (int a = 0; a < NW; a++)
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int t = 0; t < T; t++) {
                float v = acc[a][i][t];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1)
                    v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
                acc[a][i][t] = v;
            }
}

/* Host: whether the vector path may run over these weights and activation
 * rows (x rows at x + k * x_stride floats). */
static inline bool rows_vec_ok(const void *data, int64_t K, const float *x, int64_t x_stride)
{
    return K % ROWS_CHUNK == 0 && ((uintptr_t)data & 15) == 0 && ((uintptr_t)x & 15) == 0 &&
           x_stride % 4 == 0;
}

/* silu(g) * u as the CPU's swiglu writes it (ops_cpu.c). */
static __device__ __forceinline__ float rows_silu_mul(float g, float u)
{
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

/* ---- The plain kernel: y[t * y_stride + r] (+)= w[r] . x-row(t) ----
 * x-row(t) = x + (xi ? xi[t] : t) * x_stride. grid.x covers rows
 * (ROWS_WARPS * R per CTA), grid.y tiles of T tokens starting at token
 * t_base + blockIdx.y * T. */
struct rows_plain_args {
    struct rows_w w;
    int64_t rows, K;
    const float *x;
    int64_t x_stride;
    const int32_t *xi;
    float *y;
    int64_t y_stride;
    int n, t_base, accumulate;
};

template <int DT, int R, int T, bool VEC>
static __device__ __forceinline__ void rows_plain_tile(const rows_plain_args &a, int64_t r0, int t0,
                                                       int tn)
{
    int64_t rr[R];
#pragma unroll
    for (int i = 0; i < R; i++)
        rr[i] = r0 + i < a.rows ? r0 + i : a.rows - 1;
    const float *xp[T];
#pragma unroll
    for (int t = 0; t < T; t++) {
        const int tt = t0 + (t < tn ? t : tn - 1);    /* repeated at the edge, not stored */
        xp[t] = a.x + (int64_t)(a.xi ? a.xi[tt] : tt) * a.x_stride;
    }
    float acc[1][R][T];
    rows_tile<DT, 1, R, T, VEC>(&a.w, rr, a.K, xp, acc);
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int t = 0; t < T; t++)
            if (lane == ((i * T + t) & 31) && r0 + i < a.rows && t < tn) {
                float *o = a.y + (int64_t)(t0 + t) * a.y_stride + r0 + i;
                *o = a.accumulate ? __fadd_rn(*o, acc[0][i][t]) : acc[0][i][t];
            }
}

/* T is the launch's tile (1, 2, 4 or 8: the batch rounded up to a power of
 * two, 8 beyond); a short last tile repeats its last token and stores only
 * its own, so every output runs the same sequence in any tile. */
template <int DT, int R, int T, bool VEC>
__global__ void __launch_bounds__(ROWS_WARPS * 32) rows_plain_kernel(const rows_plain_args a)
{
    const int64_t r0 = ((int64_t)blockIdx.x * ROWS_WARPS + (threadIdx.x >> 5)) * R;
    const int t0 = a.t_base + (int)blockIdx.y * T;
    if (r0 >= a.rows || t0 >= a.n)
        return;
    rows_plain_tile<DT, R, T, VEC>(a, r0, t0, a.n - t0 < T ? a.n - t0 : T);
}

/* ops_cuda_fp8.cu: the plain kernel over all of a->n tokens on stream s,
 * for a weight of any dtype (grid.y sliced to what the hardware allows).
 * Returns the launch error. Instantiated once there, called from the MLA
 * file too. */
cudaError_t cuda_rows_plain(enum native_dtype dt, const struct rows_plain_args *a, cudaStream_t s);

#endif
