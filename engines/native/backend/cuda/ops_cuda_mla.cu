/* ops_cuda_mla.cu: MLA attention (DeepSeek-V2/V3) over the device latent
 * cache; cuda_mla_attention of cuda_internal.h, the op mla_attention of
 * ops.h (struct native_mla's comment holds the math).
 *
 * Cache rows (cuda_internal.h): position p of the sequence of token t, in
 * layer l, is latent_dim floats of c[p] then rope_dim floats of k_pe[p], at
 *   data + blocks[block_off[seq[t]] + p / 16] * block_stride
 *        + l * layer_stride + (p % 16) * (latent + rope).
 * kv_b is [n_heads * (nope + v)][latent]: head h's first nope rows are
 * W_UK[h], the next v rows W_UV[h]; any dtype (F8 with its block scales).
 *
 * ABSORB (what decode runs): one CTA of 8 warps per (token, group of 8
 * heads). It builds q_lat[h] = W_UK[h]^T q_nope[h] in shared memory (a
 * column per thread, rows of kv_b in order, coalesced), then walks the
 * token's positions in tiles of 32 with an online softmax:
 *   scores  s[h][p] = (q_lat[h] . c[p] + q_pe[h] . k_pe[p]) * softmax_scale,
 *           a warp per position, lanes over the latent, for all 8 heads at
 *           once (each cache row is read once per head group, not per head);
 *   softmax warp h rescales head h's running max and sum for the tile;
 *   o_lat   o[h] = o[h] * corr[h] + sum_p e[h][p] c[p], each thread owning
 *           latent dims, for the 8 heads;
 * and ends with out[t][h] = (W_UV[h] o_lat[h]) / sum[h], a warp per output
 * row. The cache is read twice per tile (scores, then o_lat), the second
 * time from L1/L2.
 *
 * NAIVE: one sequence at a time, as the CPU does: the latent rows its
 * tokens attend are decompressed into the caller's scratch, kvd[p] =
 * kv_b c[p] ([n_att][n_heads * (nope + v)], through cuda_rows.cuh's plain
 * kernel reading the paged rows by index), then one CTA per (token, head)
 * runs the same tiled online softmax over k_nope | k_pe and v.
 *
 * Accuracy: float32 throughout; the online softmax rounds differently from
 * the CPU's two passes, well inside test_backend_ops' 2e-6.
 * Determinism: each (token, head) is a fixed sequence: tiles start at
 * position 0, head groups at multiples of 8, whatever the batch.
 *
 * Threads: called by the thread that drives the backend; everything goes on
 * cb->stream and nothing here waits.
 */
#include "engines/native/backend/cuda/cuda_rows.cuh"

#include <math.h>
#include <string.h>

#define MLA_HG 8            /* heads per absorb CTA: one warp each in the softmax step */
#define MLA_TP 32           /* positions per tile: one lane each in the softmax step */
#define MLA_THREADS (MLA_HG * 32)
#define MLA_DPT ((NATIVE_MAX_LATENT + MLA_THREADS - 1) / MLA_THREADS)  /* latent dims per thread */
#define MLA_NAIVE_WARPS 4
#define MLA_VPT ((NATIVE_MAX_HEAD_DIM + MLA_NAIVE_WARPS * 32 - 1) / (MLA_NAIVE_WARPS * 32))

struct mla_args {
    const void *kvb;
    const float *kvb_scale;     /* F8 only */
    int H, NP, R, V, L;
    float scale;
    const float *q;             /* [n][H][NP + R] */
    float *out;                 /* [n][H][V] */
    const float *cache;         /* kv->data + layer * layer_stride */
    int64_t block_stride;       /* floats */
    int block_size;
    const int32_t *pos, *seq, *block_off, *blocks;  /* the device batch */
};

static __device__ __forceinline__ float mla_neg_inf(void)
{
    return __int_as_float((int)0xff800000u);
}

/* kv_b element (row, c) as float, and the block scale that goes with it. */
template <int DT>
static __device__ __forceinline__ float mla_w(const mla_args &a, int64_t row, int c)
{
    return rows_elem<DT>(a.kvb, row * a.L + c);
}

template <int DT>
static __device__ __forceinline__ float mla_s(const mla_args &a, int64_t row, int c)
{
    if (DT != NATIVE_F8_E4M3)
        return 1.0f;
    return __ldg(a.kvb_scale + (row / 128) * ((a.L + 127) / 128) + c / 128);
}

/* The cache row of position p for the token whose block table starts at bt. */
static __device__ __forceinline__ const float *mla_row(const mla_args &a, const int32_t *bt, int p)
{
    return a.cache + (int64_t)bt[p / a.block_size] * a.block_stride +
           (int64_t)(p % a.block_size) * (a.L + a.R);
}

/* One tile's softmax step for one head, run by one warp: sc[0..32) holds the
 * tile's scores (positions >= np: -inf) and becomes their numerators
 * e^(s - m_new); m, l and corr are the head's running max, running sum and
 * the factor the accumulators must be scaled by. */
static __device__ __forceinline__ void mla_softmax_step(float *sc, float *m, float *l, float *corr,
                                                        int valid)
{
    const int lane = threadIdx.x & 31;
    const float v = sc[lane];
    float mx = v;
    for (int o = 16; o > 0; o >>= 1)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const float m_old = *m;
    const float m_new = fmaxf(m_old, mx);
    const float e = lane < valid ? expf(v - m_new) : 0.0f;
    float sum = e;
    for (int o = 16; o > 0; o >>= 1)
        sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, o));
    __syncwarp();
    sc[lane] = e;
    if (lane == 0) {
        const float c = expf(m_old - m_new);    /* 0 on the first tile (m_old = -inf) */
        *l = __fmaf_rn(*l, c, sum);
        *m = m_new;
        *corr = c;
    }
}

/* ------------------------------------------------------------------------ */
/* ABSORB                                                                    */
/* ------------------------------------------------------------------------ */

template <int DT>
__global__ void __launch_bounds__(MLA_THREADS) mla_absorb_kernel(const mla_args a)
{
    extern __shared__ float smem[];
    const int L = a.L, R = a.R, NP = a.NP, V = a.V, H = a.H;
    float *qlat = smem;                         /* [HG][L]: q_lat, later o_lat */
    float *qpe = qlat + MLA_HG * L;             /* [HG][R] */
    float *sc = qpe + MLA_HG * R;               /* [HG][TP] */
    float *mx = sc + MLA_HG * MLA_TP;           /* [HG] running max */
    float *sm = mx + MLA_HG;                    /* [HG] running sum */
    float *cr = sm + MLA_HG;                    /* [HG] this tile's correction */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h0 = blockIdx.x * MLA_HG, t = blockIdx.y;
    const int qd = NP + R, hr = NP + V;
    const int np = a.pos[t] + 1;
    const int32_t *bt = a.blocks + a.block_off[a.seq[t]];

    /* q_lat[g][c] = sum_i q_nope[g][i] W_UK[h][i][c], rows in order; for F8
     * each term is (q * block scale) * e4m3, as the CPU's fp8 axpy. */
    for (int idx = tid; idx < MLA_HG * L; idx += MLA_THREADS) {
        const int g = idx / L, c = idx % L, h = h0 + g;
        float acc = 0.0f;
        if (h < H) {
            const float *qn = a.q + ((int64_t)t * H + h) * qd;
            for (int i = 0; i < NP; i++) {
                const int64_t row = (int64_t)h * hr + i;
                const float coef = DT == NATIVE_F8_E4M3 ? __fmul_rn(qn[i], mla_s<DT>(a, row, c)) : qn[i];
                acc = __fmaf_rn(coef, mla_w<DT>(a, row, c), acc);
            }
        }
        qlat[idx] = acc;
    }
    for (int idx = tid; idx < MLA_HG * R; idx += MLA_THREADS) {
        const int g = idx / R, r = idx % R, h = h0 + g;
        qpe[idx] = h < H ? a.q[((int64_t)t * H + h) * qd + NP + r] : 0.0f;
    }
    if (tid < MLA_HG) {
        mx[tid] = mla_neg_inf();
        sm[tid] = 0.0f;
    }
    __syncthreads();

    float o[MLA_HG][MLA_DPT];
#pragma unroll
    for (int g = 0; g < MLA_HG; g++)
#pragma unroll
        for (int k = 0; k < MLA_DPT; k++)
            o[g][k] = 0.0f;

    for (int p0 = 0; p0 < np; p0 += MLA_TP) {
        /* Scores: warp w takes positions p0 + w, p0 + w + 8, ... */
        for (int pp = warp; pp < MLA_TP; pp += MLA_HG) {
            const int p = p0 + pp;
            if (p >= np) {
                if (lane < MLA_HG)
                    sc[lane * MLA_TP + pp] = mla_neg_inf();
                continue;
            }
            const float *row = mla_row(a, bt, p);
            float sl[MLA_HG], sr[MLA_HG];
#pragma unroll
            for (int g = 0; g < MLA_HG; g++)
                sl[g] = sr[g] = 0.0f;
            for (int c = lane; c < L; c += 32) {
                const float cv = row[c];
#pragma unroll
                for (int g = 0; g < MLA_HG; g++)
                    sl[g] = __fmaf_rn(qlat[g * L + c], cv, sl[g]);
            }
            for (int r = lane; r < R; r += 32) {
                const float kv = row[L + r];
#pragma unroll
                for (int g = 0; g < MLA_HG; g++)
                    sr[g] = __fmaf_rn(qpe[g * R + r], kv, sr[g]);
            }
#pragma unroll
            for (int g = 0; g < MLA_HG; g++) {
                for (int off = 16; off > 0; off >>= 1) {
                    sl[g] = __fadd_rn(sl[g], __shfl_xor_sync(0xffffffffu, sl[g], off));
                    sr[g] = __fadd_rn(sr[g], __shfl_xor_sync(0xffffffffu, sr[g], off));
                }
            }
            if (lane < MLA_HG) {
                /* lane g stores head g (registers indexed by a constant) */
#pragma unroll
                for (int g = 0; g < MLA_HG; g++)
                    if (lane == g)
                        sc[g * MLA_TP + pp] = __fmul_rn(__fadd_rn(sl[g], sr[g]), a.scale);
            }
        }
        __syncthreads();
        mla_softmax_step(sc + warp * MLA_TP, mx + warp, sm + warp, cr + warp, np - p0);
        __syncthreads();

        /* o_lat: rescale, then add this tile's weighted rows. */
#pragma unroll
        for (int g = 0; g < MLA_HG; g++) {
            const float c = cr[g];
#pragma unroll
            for (int k = 0; k < MLA_DPT; k++)
                o[g][k] = __fmul_rn(o[g][k], c);
        }
        const int pn = np - p0 < MLA_TP ? np - p0 : MLA_TP;
        for (int pp = 0; pp < pn; pp++) {
            const float *row = mla_row(a, bt, p0 + pp);
#pragma unroll
            for (int k = 0; k < MLA_DPT; k++) {
                const int c = tid + k * MLA_THREADS;
                if (c < L) {
                    const float cv = row[c];
#pragma unroll
                    for (int g = 0; g < MLA_HG; g++)
                        o[g][k] = __fmaf_rn(sc[g * MLA_TP + pp], cv, o[g][k]);
                }
            }
        }
        __syncthreads();    /* sc is rewritten by the next tile */
    }

    /* out[t][h][i] = (W_UV[h][i] . o_lat[h]) / sum[h] */
#pragma unroll
    for (int k = 0; k < MLA_DPT; k++) {
        const int c = tid + k * MLA_THREADS;
        if (c < L)
#pragma unroll
            for (int g = 0; g < MLA_HG; g++)
                qlat[g * L + c] = o[g][k];
    }
    __syncthreads();
    for (int idx = warp; idx < MLA_HG * V; idx += MLA_HG) {
        const int g = idx / V, i = idx % V, h = h0 + g;
        if (h >= H)
            continue;   /* warp-uniform */
        const int64_t row = (int64_t)h * hr + NP + i;
        const float *ol = qlat + g * L;
        float tot = 0.0f;
        for (int kb = 0; kb < L; kb += 128) {
            const int end = L - kb < 128 ? L : kb + 128;
            float ch = 0.0f;
            for (int c = kb + lane; c < end; c += 32)
                ch = __fmaf_rn(mla_w<DT>(a, row, c), ol[c], ch);
            tot = DT == NATIVE_F8_E4M3 ? __fmaf_rn(ch, mla_s<DT>(a, row, kb), tot) : __fadd_rn(tot, ch);
        }
        for (int off = 16; off > 0; off >>= 1)
            tot = __fadd_rn(tot, __shfl_xor_sync(0xffffffffu, tot, off));
        if (lane == 0)
            a.out[((int64_t)t * H + h) * V + i] = __fmul_rn(tot, __fdiv_rn(1.0f, sm[g]));
    }
}

/* ------------------------------------------------------------------------ */
/* NAIVE                                                                     */
/* ------------------------------------------------------------------------ */

/* idx[p] = position p's cache row, counted in rows of latent + rope floats
 * from the layer's base, for sequence s. */
__global__ void mla_rowidx_kernel(int32_t *idx, int n_att, const int32_t *block_off,
                                  const int32_t *blocks, int s, int block_size,
                                  int64_t rows_per_block)
{
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p < n_att)
        idx[p] = (int32_t)(blocks[block_off[s] + p / block_size] * rows_per_block + p % block_size);
}

struct mla_naive_args {
    mla_args m;
    const float *kvd;           /* [n_att][H * (NP + V)] */
    const int32_t *idx;         /* cache row of each position */
    int t0;
};

/* One (token t0 + blockIdx.y, head blockIdx.x): plain attention over the
 * decompressed k_nope | k_pe and v, tiles of 32 positions, online softmax. */
__global__ void __launch_bounds__(MLA_NAIVE_WARPS * 32) mla_naive_kernel(const mla_naive_args na)
{
    __shared__ float qs[2 * NATIVE_MAX_HEAD_DIM];
    __shared__ float sc[MLA_TP];
    __shared__ float st[3];     /* running max, running sum, correction */
    const mla_args &a = na.m;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h = blockIdx.x, t = na.t0 + blockIdx.y;
    const int NP = a.NP, R = a.R, V = a.V, L = a.L, qd = NP + R, hr = NP + V;
    const int64_t hrow = (int64_t)a.H * hr;
    const int np = a.pos[t] + 1;

    for (int i = tid; i < qd; i += blockDim.x)
        qs[i] = a.q[((int64_t)t * a.H + h) * qd + i];
    if (tid == 0) {
        st[0] = mla_neg_inf();
        st[1] = 0.0f;
    }
    __syncthreads();

    float o[MLA_VPT];
#pragma unroll
    for (int k = 0; k < MLA_VPT; k++)
        o[k] = 0.0f;
    for (int p0 = 0; p0 < np; p0 += MLA_TP) {
        for (int pp = warp; pp < MLA_TP; pp += MLA_NAIVE_WARPS) {
            const int p = p0 + pp;
            if (p >= np) {
                if (lane == 0)
                    sc[pp] = mla_neg_inf();
                continue;
            }
            const float *kn = na.kvd + p * hrow + (int64_t)h * hr;
            const float *kpe = a.cache + (int64_t)na.idx[p] * (L + R) + L;
            float sn = 0.0f, sr = 0.0f;
            for (int i = lane; i < NP; i += 32)
                sn = __fmaf_rn(qs[i], kn[i], sn);
            for (int r = lane; r < R; r += 32)
                sr = __fmaf_rn(qs[NP + r], kpe[r], sr);
            for (int off = 16; off > 0; off >>= 1) {
                sn = __fadd_rn(sn, __shfl_xor_sync(0xffffffffu, sn, off));
                sr = __fadd_rn(sr, __shfl_xor_sync(0xffffffffu, sr, off));
            }
            if (lane == 0)
                sc[pp] = __fmul_rn(__fadd_rn(sn, sr), a.scale);
        }
        __syncthreads();
        if (warp == 0)
            mla_softmax_step(sc, st, st + 1, st + 2, np - p0);
        __syncthreads();
        const float c = st[2];
        const int pn = np - p0 < MLA_TP ? np - p0 : MLA_TP;
#pragma unroll
        for (int k = 0; k < MLA_VPT; k++) {
            const int i = tid + k * MLA_NAIVE_WARPS * 32;
            if (i < V) {
                float v = __fmul_rn(o[k], c);
                for (int pp = 0; pp < pn; pp++)
                    v = __fmaf_rn(sc[pp], na.kvd[(p0 + pp) * hrow + (int64_t)h * hr + NP + i], v);
                o[k] = v;
            }
        }
        __syncthreads();
    }
    const float inv = __fdiv_rn(1.0f, st[1]);
#pragma unroll
    for (int k = 0; k < MLA_VPT; k++) {
        const int i = tid + k * MLA_NAIVE_WARPS * 32;
        if (i < V)
            a.out[((int64_t)t * a.H + h) * V + i] = __fmul_rn(o[k], inv);
    }
}

/* ------------------------------------------------------------------------ */
/* The op                                                                    */
/* ------------------------------------------------------------------------ */

/* The device mirror of batch: the one begin_batch() made when it holds
 * this batch (same pointer, and the same positions, sequences and block
 * tables in the staging copy it was sent from: a caller may reuse a struct
 * for another batch, as the backend tests do), else a new one. Host reads
 * only, so a decode step never waits here. NULL when the mirror could not
 * be made (reported by begin_batch). */
static const struct cuda_batch *mla_batch(struct cuda_backend *cb, const struct native_batch *bt)
{
    const struct cuda_batch *m = &cb->batch;
    const int nt = bt->n_tokens;
    bool same = m->host == bt && m->dev && m->staging && m->n_tokens == nt &&
                m->n_seqs == bt->n_seqs && m->n_out == bt->n_out;
    if (same) {
        const int32_t *s = m->staging;
        same = !memcmp(s + nt, bt->pos, sizeof(int32_t) * (size_t)nt) &&
               !memcmp(s + 2 * nt, bt->seq, sizeof(int32_t) * (size_t)nt);
        const int32_t *off = s + 3 * nt + bt->n_out, *blocks = off + bt->n_seqs + 1;
        for (int q = 0; same && q < bt->n_seqs; q++) {
            const int nb = bt->seqs[q].n_blocks > 0 ? bt->seqs[q].n_blocks : 0;
            same = off[q + 1] - off[q] == nb &&
                   (nb == 0 || !memcmp(blocks + off[q], bt->seqs[q].blocks, sizeof(int32_t) * (size_t)nb));
        }
    }
    if (!same)
        cb->base.ops->begin_batch(&cb->base, bt);
    return m->host == bt && m->dev ? m : NULL;
}

template <int DT>
static cudaError_t mla_absorb_launch(const mla_args &a, int n, cudaStream_t s)
{
    const size_t smem = sizeof(float) * ((size_t)MLA_HG * (a.L + a.R + MLA_TP) + 3 * MLA_HG);
    const dim3 grid((unsigned)((a.H + MLA_HG - 1) / MLA_HG), (unsigned)n);
    mla_absorb_kernel<DT><<<grid, MLA_THREADS, smem, s>>>(a);
    return cudaGetLastError();
}

void cuda_mla_attention(struct native_backend *b, float *out, const float *q, struct native_kv *kv,
                        int layer, const struct native_batch *batch, const struct native_mla *p,
                        float *scratch)
{
    struct cuda_backend *cb = cuda_cb(b);
    const int H = p->n_heads, L = p->latent_dim, R = p->rope_dim, NP = p->nope_dim, V = p->v_dim;
    const int hr = NP + V;
    if (batch->n_tokens <= 0)
        return;
    /* The CPU asserts these; the smem and register tiles are sized by
     * ops.h's limits. */
    if (kv->desc.kind != NATIVE_KV_LATENT || kv->desc.latent_dim != L || kv->desc.rope_dim != R ||
        p->kv_b.rows != (int64_t)H * hr || p->kv_b.cols != L || H <= 0 || L <= 0 ||
        L > NATIVE_MAX_LATENT || NP + R > NATIVE_MAX_HEAD_DIM || V > NATIVE_MAX_HEAD_DIM ||
        NP <= 0 || R < 0 || V <= 0 || (p->kv_b.dtype == NATIVE_F8_E4M3 && !p->kv_b.scale) ||
        batch->n_tokens > 65535) {
        cuda_report(cb, cudaErrorInvalidValue, "cuda_mla_attention: unsupported shape", __FILE__,
                    __LINE__);
        return;
    }
    cuda_enter(cb);
    const struct cuda_batch *db = mla_batch(cb, batch);
    if (!db)
        return;     /* reported */

    mla_args a;
    a.kvb = p->kv_b.data;
    a.kvb_scale = p->kv_b.scale;
    a.H = H;
    a.NP = NP;
    a.R = R;
    a.V = V;
    a.L = L;
    a.scale = p->softmax_scale;
    a.q = q;
    a.out = out;
    a.cache = kv->data + (size_t)layer * kv->layer_stride;
    a.block_stride = (int64_t)kv->block_stride;
    a.block_size = kv->block_size;
    a.pos = db->pos;
    a.seq = db->seq;
    a.block_off = db->block_off;
    a.blocks = db->blocks;

    cudaError_t e = cudaSuccess;
    if (p->mode == NATIVE_MLA_ABSORB) {
        switch (p->kv_b.dtype) {
        case NATIVE_F32:
            e = mla_absorb_launch<NATIVE_F32>(a, batch->n_tokens, cb->stream);
            break;
        case NATIVE_F16:
            e = mla_absorb_launch<NATIVE_F16>(a, batch->n_tokens, cb->stream);
            break;
        case NATIVE_BF16:
            e = mla_absorb_launch<NATIVE_BF16>(a, batch->n_tokens, cb->stream);
            break;
        case NATIVE_F8_E4M3:
            e = mla_absorb_launch<NATIVE_F8_E4M3>(a, batch->n_tokens, cb->stream);
            break;
        }
        if (e != cudaSuccess)
            cuda_report(cb, e, "mla_absorb_kernel launch", __FILE__, __LINE__);
        return;
    }

    /* NAIVE: one sequence at a time (its tokens are contiguous and in
     * position order), since its decompressed K and V fill the scratch. */
    int max_att = 0;
    for (int t = 0; t < batch->n_tokens; t++)
        max_att = batch->pos[t] + 1 > max_att ? batch->pos[t] + 1 : max_att;
    int32_t *idx = (int32_t *)cuda_scratch(cb, CUDA_SCRATCH_MLA, sizeof(int32_t) * (size_t)max_att);
    if (!idx)
        return;     /* reported */
    const int64_t row_w = L + R;
    for (int t0 = 0; t0 < batch->n_tokens;) {
        int t1 = t0 + 1;
        while (t1 < batch->n_tokens && batch->seq[t1] == batch->seq[t0])
            t1++;
        int n_att = 0;
        for (int t = t0; t < t1; t++)
            n_att = batch->pos[t] + 1 > n_att ? batch->pos[t] + 1 : n_att;

        mla_rowidx_kernel<<<(n_att + 255) / 256, 256, 0, cb->stream>>>(
            idx, n_att, db->block_off, db->blocks, batch->seq[t0], kv->block_size,
            (int64_t)kv->block_stride / row_w);
        if (CUDA_LAUNCHED(cb, "mla_rowidx_kernel"))
            return;

        /* kvd[p][h * hr + i] = kv_b[h * hr + i] . c[p] */
        rows_plain_args d;
        d.w.data = p->kv_b.data;
        d.w.scale = p->kv_b.scale;
        d.rows = (int64_t)H * hr;
        d.K = L;
        d.x = a.cache;
        d.x_stride = row_w;
        d.xi = idx;
        d.y = scratch;
        d.y_stride = (int64_t)H * hr;
        d.n = n_att;
        d.t_base = 0;
        d.accumulate = 0;
        e = cuda_rows_plain(p->kv_b.dtype, &d, cb->stream);
        if (e != cudaSuccess) {
            cuda_report(cb, e, "mla decompress launch", __FILE__, __LINE__);
            return;
        }

        mla_naive_args na;
        na.m = a;
        na.kvd = scratch;
        na.idx = idx;
        na.t0 = t0;
        mla_naive_kernel<<<dim3((unsigned)H, (unsigned)(t1 - t0)), MLA_NAIVE_WARPS * 32, 0,
                           cb->stream>>>(na);
        if (CUDA_LAUNCHED(cb, "mla_naive_kernel"))
            return;
        t0 = t1;
    }
}
