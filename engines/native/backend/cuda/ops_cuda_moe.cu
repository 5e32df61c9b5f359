/* ops_cuda_moe.cu: DeepSeek-V3's MoE routing and its grouped routed experts
 * on the GPU; cuda_moe_gate, cuda_moe_experts and cuda_moe_combine of
 * cuda_internal.h, the ops of the same names in ops.h (whose comments hold
 * the math).
 *
 * moe_gate: one warp per token. The sigmoid scores and biased scores go to
 * shared memory; one lane per group takes its two best biased scores, lane
 * 0 picks the topk_group groups exactly as the CPU's top_indices() does
 * (sequential, ties to the lower index), and the top_k experts come from
 * top_k warp-wide argmax rounds (value descending, ties to the lower index;
 * for scores without NaN that is the CPU's sequential rule, and a NaN never
 * beats a number). The weights are the CPU's formula, summed in i order.
 *
 * moe_combine: step 4 below alone, for expert outputs computed on other
 * ranks (expert parallelism), with the same kernel so the bits agree.
 *
 * moe_experts, all on the device so a decode step never waits for the host:
 *   1. route (one CTA): count the (token, i) pairs per expert, prefix sums,
 *      then a stable counting sort gives each pair a slot (experts in order,
 *      tokens in batch order inside one) and cuts each expert's slots into
 *      work items of up to T tokens (T = the batch rounded up to 1, 2, 4 or
 *      8);
 *   2. gate/up: one launch over (row tile, work item): the warp runs
 *      cuda_rows.cuh's row-dot for W_gate and W_up of the item's expert over
 *      its tokens (read straight from x, no gathered copy) and writes
 *      h = silu(g) * u;
 *   3. down: the same over W_down, h -> the pair's output row;
 *   4. combine: y[t] += w[t][i] * out(t, i) for i in order.
 * The expert weight pointers travel in the launch parameters (2 x 8 KiB at
 * 512 experts; kernels take up to 32 KiB of parameters since CUDA 12.1), so
 * nothing is copied per call and the step can be captured in a CUDA graph.
 *
 * Determinism: every output row of every expert is cuda_rows.cuh's fixed
 * sequence whatever tile or item it falls in, and the combine adds a
 * token's top_k outputs in i order, so a token gets the same bits alone or
 * inside any batch (test_backend_ops checks this).
 *
 * Scratch: the caller's (native_moe_scratch_floats) holds out [P][dim] then
 * h [P][inter], P = n * top_k; the slot table, the slot->token map and the
 * work items live in the backend's CUDA_SCRATCH_MOE slot.
 *
 * Threads: called by the thread that drives the backend; everything goes on
 * cb->stream and nothing here waits.
 */
#include "engines/native/backend/cuda/cuda_rows.cuh"

#include <assert.h>

/* ------------------------------------------------------------------------ */
/* moe_gate                                                                  */
/* ------------------------------------------------------------------------ */

#define GATE_WARPS 4

struct gate_args {
    int n_experts, top_k, n_group, topk_group, norm_topk_prob;
    float routed_scale;
    const float *bias;
};

/* Whether candidate (av, ai) ranks before (bv, bi); index < 0 is "none". */
static __device__ __forceinline__ bool gate_better(float av, int ai, float bv, int bi)
{
    if (bi < 0)
        return ai >= 0;
    if (ai < 0)
        return false;
    const bool an = isnan(av), bn = isnan(bv);
    if (an != bn)
        return bn;
    if (av > bv)
        return true;
    if (av < bv)
        return false;
    return ai < bi;
}

__global__ void __launch_bounds__(GATE_WARPS * 32)
    moe_gate_kernel(int32_t *ids, float *weights, const float *logits, int n, const gate_args g)
{
    __shared__ float s_s[GATE_WARPS][NATIVE_MAX_EXPERTS];      /* sigmoid scores */
    __shared__ float s_b[GATE_WARPS][NATIVE_MAX_EXPERTS];      /* biased scores */
    __shared__ float s_gs[GATE_WARPS][NATIVE_MAX_EXPERTS];     /* group scores */
    __shared__ unsigned char s_ok[GATE_WARPS][NATIVE_MAX_EXPERTS];  /* still a candidate */
    __shared__ unsigned char s_gk[GATE_WARPS][NATIVE_MAX_EXPERTS];  /* group kept */
    const int wi = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * GATE_WARPS + wi;
    if (t >= n)
        return;     /* whole warps only: the kernel syncs warps, never the CTA */
    const int E = g.n_experts, K = g.top_k, G = g.n_group, per = E / G;
    const int limit = g.topk_group < G;
    float *sc = s_s[wi], *bs = s_b[wi], *gs = s_gs[wi];
    unsigned char *ok = s_ok[wi], *gk = s_gk[wi];
    const float *lt = logits + (size_t)t * E;

    /* s_e = sigmoid(g_e) in float, exp taken in double so it rounds as a
     * correctly rounded expf would (the CPU's glibc expf is within half an
     * ulp); the bias only steers the choice. */
    for (int e = lane; e < E; e += 32) {
        const float ex = (float)exp(-(double)lt[e]);
        const float s = __fdiv_rn(1.0f, __fadd_rn(1.0f, ex));
        sc[e] = s;
        bs[e] = __fadd_rn(s, g.bias ? g.bias[e] : 0.0f);
        ok[e] = 1;
    }
    __syncwarp();

    if (limit) {
        /* Group j's score: its two best biased scores (its best alone with
         * one expert), found as the CPU's top_indices finds them. */
        for (int j = lane; j < G; j += 32) {
            const float *bj = bs + j * per;
            int b0 = 0;
            for (int e = 1; e < per; e++)
                if (bj[e] > bj[b0])
                    b0 = e;
            if (per < 2) {
                gs[j] = bj[b0];
            } else {
                int b1 = -1;
                for (int e = 0; e < per; e++) {
                    if (e == b0)
                        continue;
                    if (b1 < 0 || bj[e] > bj[b1])
                        b1 = e;
                }
                gs[j] = __fadd_rn(bj[b0], bj[b1]);
            }
            gk[j] = 0;
        }
        __syncwarp();
        /* The topk_group best groups, sequentially, ties to the lower index. */
        if (lane == 0) {
            for (int i = 0; i < g.topk_group; i++) {
                int best = -1;
                for (int j = 0; j < G; j++) {
                    if (gk[j])
                        continue;
                    if (best < 0 || gs[j] > gs[best])
                        best = j;
                }
                gk[best] = 1;
            }
        }
        __syncwarp();
        for (int e = lane; e < E; e += 32)
            ok[e] = gk[e / per];
        __syncwarp();
    }

    /* The top_k experts among the candidates, in descending biased score. */
    int32_t *it = ids + (size_t)t * K;
    float *wt = weights + (size_t)t * K;
    for (int i = 0; i < K; i++) {
        float bv = 0.0f;
        int bi = -1;
        for (int e = lane; e < E; e += 32)
            if (ok[e] && gate_better(bs[e], e, bv, bi)) {
                bv = bs[e];
                bi = e;
            }
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (gate_better(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (lane == 0) {
            bi = bi < 0 ? 0 : bi;   /* never: the host checked that enough candidates remain */
            it[i] = bi;
            ok[bi] = 0;
        }
        __syncwarp();
    }

    /* Weights from the unbiased scores, summed in i order. */
    if (lane == 0) {
        float sum = 0.0f;
        for (int i = 0; i < K; i++)
            sum = __fadd_rn(sum, sc[it[i]]);
        for (int i = 0; i < K; i++) {
            const float s = sc[it[i]];
            wt[i] = __fmul_rn(g.norm_topk_prob ? __fdiv_rn(s, sum) : s, g.routed_scale);
        }
    }
}

void cuda_moe_gate(struct native_backend *b, int32_t *ids, float *weights, const float *logits,
                   int n, const struct native_moe_gate *g)
{
    struct cuda_backend *cb = cuda_cb(b);
    const int E = g->n_experts, K = g->top_k;
    if (n <= 0)
        return;
    /* The CPU asserts these; here a bad config is reported, never run. */
    const bool shape_ok = E > 0 && E <= NATIVE_MAX_EXPERTS && K > 0 && K <= NATIVE_MAX_TOPK &&
                          K <= E && g->n_group >= 1 && E % g->n_group == 0 &&
                          g->topk_group >= 1 && g->topk_group <= g->n_group &&
                          (g->topk_group == g->n_group ||
                           g->topk_group * (E / g->n_group) >= K);
    if (!shape_ok) {
        cuda_report(cb, cudaErrorInvalidValue, "cuda_moe_gate: unsupported routing shape", __FILE__,
                    __LINE__);
        return;
    }
    cuda_enter(cb);
    gate_args a;
    a.n_experts = E;
    a.top_k = K;
    a.n_group = g->n_group;
    a.topk_group = g->topk_group;
    a.norm_topk_prob = g->norm_topk_prob;
    a.routed_scale = g->routed_scale;
    a.bias = g->bias;
    moe_gate_kernel<<<(n + GATE_WARPS - 1) / GATE_WARPS, GATE_WARPS * 32, 0, cb->stream>>>(
        ids, weights, logits, n, a);
    CUDA_LAUNCHED(cb, "moe_gate_kernel");
}

/* ------------------------------------------------------------------------ */
/* moe_experts                                                               */
/* ------------------------------------------------------------------------ */

#define ROUTE_THREADS 512

/* The routing of P = n * top_k pairs (pair q = t * top_k + i):
 *   slot[q]    where pair q's rows sit (-1: an expert id out of range,
 *              which the combine skips);
 *   stok[s]    the token of the pair in slot s;
 *   items[3k]  work item k: expert, first slot, tokens (<= T), experts in
 *              order; *n_items of them.
 * Counting runs on every thread; the prefix sums, the items and the stable
 * fill on thread 0 (P steps: a few microseconds at decode sizes). */
__global__ void __launch_bounds__(ROUTE_THREADS)
    moe_route_kernel(const int32_t *ids, int P, int top_k, int E, int T, int32_t *slot,
                     int32_t *stok, int32_t *items, int32_t *n_items)
{
    __shared__ int cnt[NATIVE_MAX_EXPERTS];
    __shared__ int start[NATIVE_MAX_EXPERTS + 1];
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        cnt[e] = 0;
    __syncthreads();
    for (int q = threadIdx.x; q < P; q += blockDim.x) {
        const int e = ids[q];
        if (e >= 0 && e < E)
            atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    int k = 0;
    start[0] = 0;
    for (int e = 0; e < E; e++) {
        start[e + 1] = start[e] + cnt[e];
        for (int s = start[e]; s < start[e + 1]; s += T) {
            items[3 * k] = e;
            items[3 * k + 1] = s;
            items[3 * k + 2] = start[e + 1] - s < T ? start[e + 1] - s : T;
            k++;
        }
        cnt[e] = start[e];      /* from here on: the next free slot */
    }
    *n_items = k;
    for (int q = 0; q < P; q++) {
        const int e = ids[q];
        if (e < 0 || e >= E) {
            slot[q] = -1;
            continue;
        }
        const int s = cnt[e]++;
        slot[q] = s;
        stok[s] = q / top_k;
    }
}

/* The experts' weights, indexed by expert id. */
struct moe_tab {
    const void *data[NATIVE_MAX_EXPERTS];
    const float *scale[NATIVE_MAX_EXPERTS];
};

struct moe_mm_args {
    moe_tab wa, wb;             /* gate and up; down in wa (wb unused) */
    int64_t rows, K;            /* inter x dim (gate/up), dim x inter (down) */
    const float *x;             /* gate/up: x [n][dim], rows by stok; down: h [P][inter] by slot */
    const int32_t *stok;        /* gate/up only */
    const int32_t *items;
    const int32_t *n_items;
    float *y;                   /* gate/up: h [P][inter]; down: out [P][dim] */
    int item_base;
};

/* GLU = 1: h[s] = silu(W_gate x) * (W_up x) for the item's slots s;
 * GLU = 0: out[s] = W_down h[s]. */
template <int DT, int GLU, int R, int T, bool VEC>
__global__ void __launch_bounds__(ROWS_WARPS * 32) moe_mm_kernel(const moe_mm_args a)
{
    const int item = a.item_base + (int)blockIdx.y;
    if (item >= *a.n_items)
        return;
    const int64_t r0 = ((int64_t)blockIdx.x * ROWS_WARPS + (threadIdx.x >> 5)) * R;
    if (r0 >= a.rows)
        return;
    const int ex = a.items[3 * item], s0 = a.items[3 * item + 1], cnt = a.items[3 * item + 2];
    const int NW = GLU ? 2 : 1;
    rows_w w[NW];
    w[0].data = a.wa.data[ex];
    w[0].scale = a.wa.scale[ex];
    if (GLU) {
        w[NW - 1].data = a.wb.data[ex];
        w[NW - 1].scale = a.wb.scale[ex];
    }
    int64_t rr[R];
#pragma unroll
    for (int i = 0; i < R; i++)
        rr[i] = r0 + i < a.rows ? r0 + i : a.rows - 1;
    const float *xp[T];
#pragma unroll
    for (int t = 0; t < T; t++) {
        const int s = s0 + (t < cnt ? t : cnt - 1);     /* repeated at the edge, not stored */
        xp[t] = a.x + (int64_t)(GLU ? a.stok[s] : s) * a.K;
    }
    float acc[NW][R][T];
    rows_tile<DT, NW, R, T, VEC>(w, rr, a.K, xp, acc);
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int t = 0; t < T; t++)
            if (lane == ((i * T + t) & 31) && r0 + i < a.rows && t < cnt)
                a.y[(int64_t)(s0 + t) * a.rows + r0 + i] =
                    GLU ? rows_silu_mul(acc[0][i][t], acc[NW - 1][i][t]) : acc[0][i][t];
}

/* y[t][d] += sum_i w[t][i] * out[slot[t][i]][d], i in order; slot NULL:
 * the pair's row is its own index t * top_k + i (moe_combine). */
__global__ void moe_combine_kernel(float *y, const float *out, const int32_t *slot,
                                   const float *weights, int n, int top_k, int D)
{
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D)
        return;
    for (int t = blockIdx.y; t < n; t += gridDim.y) {
        float v = y[(size_t)t * D + d];
        for (int i = 0; i < top_k; i++) {
            const int s = slot ? slot[t * top_k + i] : t * top_k + i;
            if (s >= 0)
                v = __fmaf_rn(weights[t * top_k + i], out[(size_t)s * D + d], v);
        }
        y[(size_t)t * D + d] = v;
    }
}

/* Launches the gate/up (GLU) or down kernel over every possible work item,
 * in grid.y slices; items beyond *n_items return at once. */
template <int DT, int GLU, int R, int T>
static cudaError_t moe_mm_shape(moe_mm_args a, int max_items, bool vec, cudaStream_t s)
{
    const int64_t per_cta = (int64_t)ROWS_WARPS * R;
    const int max_y = 65535;
    for (int base = 0; base < max_items; base += max_y) {
        const int left = max_items - base;
        const dim3 grid((unsigned)((a.rows + per_cta - 1) / per_cta),
                        (unsigned)(left < max_y ? left : max_y));
        a.item_base = base;
        if (vec)
            moe_mm_kernel<DT, GLU, R, T, true><<<grid, ROWS_WARPS * 32, 0, s>>>(a);
        else
            moe_mm_kernel<DT, GLU, R, T, false><<<grid, ROWS_WARPS * 32, 0, s>>>(a);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

/* The tile shape by T: R rows per warp so that NW x R x T sums stay in
 * registers (gate and up count twice). */
template <int DT, int GLU>
static cudaError_t moe_mm_launch(const moe_mm_args &a, int T, int max_items, bool vec,
                                 cudaStream_t s)
{
    switch (T) {
    case 1:
        return moe_mm_shape<DT, GLU, 4, 1>(a, max_items, vec, s);
    case 2:
        return moe_mm_shape<DT, GLU, GLU ? 2 : 4, 2>(a, max_items, vec, s);
    case 4:
        return moe_mm_shape<DT, GLU, GLU ? 2 : 4, 4>(a, max_items, vec, s);
    default:
        return moe_mm_shape<DT, GLU, GLU ? 1 : 2, 8>(a, max_items, vec, s);
    }
}

template <int GLU>
static cudaError_t moe_mm_any(enum native_dtype dt, const moe_mm_args &a, int T, int max_items,
                              bool vec, cudaStream_t s)
{
    switch (dt) {
    case NATIVE_F32:
        return moe_mm_launch<NATIVE_F32, GLU>(a, T, max_items, vec, s);
    case NATIVE_F16:
        return moe_mm_launch<NATIVE_F16, GLU>(a, T, max_items, vec, s);
    case NATIVE_BF16:
        return moe_mm_launch<NATIVE_BF16, GLU>(a, T, max_items, vec, s);
    case NATIVE_F8_E4M3:
        return moe_mm_launch<NATIVE_F8_E4M3, GLU>(a, T, max_items, vec, s);
    }
    return cudaErrorInvalidValue;
}

/* Whether every expert's matrix m[ex] is (rows x cols) of dtype dt, with
 * scales when F8; *aligned: every data pointer 16-byte aligned. */
static bool moe_mats_ok(const struct native_mat *m, int E, enum native_dtype dt, int64_t rows,
                        int64_t cols, bool *aligned)
{
    for (int ex = 0; ex < E; ex++) {
        if (m[ex].dtype != dt || m[ex].rows != rows || m[ex].cols != cols || !m[ex].data ||
            (dt == NATIVE_F8_E4M3 && !m[ex].scale))
            return false;
        if ((uintptr_t)m[ex].data & 15)
            *aligned = false;
    }
    return true;
}

void cuda_moe_experts(struct native_backend *b, float *y, const float *x, int n, const int32_t *ids,
                      const float *weights, int top_k, const struct native_moe_experts *e,
                      float *scratch)
{
    struct cuda_backend *cb = cuda_cb(b);
    const int E = e->n_experts, D = e->dim, I = e->inter;
    if (n <= 0)
        return;
    const enum native_dtype dt = E > 0 ? e->gate[0].dtype : NATIVE_F32;
    bool al_gu = true, al_dn = true;
    if (E <= 0 || E > NATIVE_MAX_EXPERTS || top_k <= 0 || top_k > NATIVE_MAX_TOPK || D <= 0 ||
        I <= 0 || !moe_mats_ok(e->gate, E, dt, I, D, &al_gu) ||
        !moe_mats_ok(e->up, E, dt, I, D, &al_gu) || !moe_mats_ok(e->down, E, dt, D, I, &al_dn)) {
        cuda_report(cb, cudaErrorInvalidValue,
                    "cuda_moe_experts: expert count, top_k or weight shapes/dtypes", __FILE__,
                    __LINE__);
        return;
    }
    cuda_enter(cb);

    const int P = n * top_k;
    /* Tokens per work item: an expert has at most n of them. */
    const int T = n >= 5 ? 8 : n >= 3 ? 4 : n;
    const int active = E < P ? E : P;
    const int max_items = (P + (T - 1) * active) / T + 1;
    const size_t ints = 2 * (size_t)P + 3 * (size_t)max_items + 1;
    int32_t *slot = (int32_t *)cuda_scratch(cb, CUDA_SCRATCH_MOE, ints * sizeof(int32_t));
    if (!slot)
        return;     /* reported */
    int32_t *stok = slot + P, *items = stok + P, *n_items = items + 3 * (size_t)max_items;
    float *out = scratch;                       /* [P][D] */
    float *h = scratch + (size_t)P * D;         /* [P][I] */

    moe_route_kernel<<<1, ROUTE_THREADS, 0, cb->stream>>>(ids, P, top_k, E, T, slot, stok, items,
                                                           n_items);
    if (CUDA_LAUNCHED(cb, "moe_route_kernel"))
        return;

    /* Parameters for both products; 16 KiB of pointers, filled on the host. */
    static thread_local moe_mm_args a;  /* too big for a stack frame; one per driving thread */
    for (int ex = 0; ex < E; ex++) {
        a.wa.data[ex] = e->gate[ex].data;
        a.wa.scale[ex] = e->gate[ex].scale;
        a.wb.data[ex] = e->up[ex].data;
        a.wb.scale[ex] = e->up[ex].scale;
    }
    a.rows = I;
    a.K = D;
    a.x = x;
    a.stok = stok;
    a.items = items;
    a.n_items = n_items;
    a.y = h;
    cudaError_t err = moe_mm_any<1>(dt, a, T, max_items, al_gu && rows_vec_ok(NULL, D, x, D), cb->stream);
    if (err != cudaSuccess) {
        cuda_report(cb, err, "moe gate/up launch", __FILE__, __LINE__);
        return;
    }

    for (int ex = 0; ex < E; ex++) {
        a.wa.data[ex] = e->down[ex].data;
        a.wa.scale[ex] = e->down[ex].scale;
    }
    a.rows = D;
    a.K = I;
    a.x = h;
    a.y = out;
    err = moe_mm_any<0>(dt, a, T, max_items, al_dn && rows_vec_ok(NULL, I, h, I), cb->stream);
    if (err != cudaSuccess) {
        cuda_report(cb, err, "moe down launch", __FILE__, __LINE__);
        return;
    }

    moe_combine_kernel<<<dim3((unsigned)((D + 255) / 256), (unsigned)(n < 65535 ? n : 65535)), 256,
                         0, cb->stream>>>(y, out, slot, weights, n, top_k, D);
    CUDA_LAUNCHED(cb, "moe_combine_kernel");
}

/* moe_combine (ops.h): the expert outputs came from elsewhere (expert
 * parallelism), one row per (token, i) pair in pair order; the same kernel
 * and arithmetic as moe_experts' own combine, so splitting the experts over
 * ranks changes no bit. */
void cuda_moe_combine(struct native_backend *b, float *y, const float *rows, int n,
                      const float *weights, int top_k, int dim)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (n <= 0 || dim <= 0 || top_k <= 0)
        return;
    cuda_enter(cb);
    moe_combine_kernel<<<dim3((unsigned)((dim + 255) / 256), (unsigned)(n < 65535 ? n : 65535)), 256,
                         0, cb->stream>>>(y, rows, NULL, weights, n, top_k, dim);
    CUDA_LAUNCHED(cb, "moe_combine_kernel");
}
