/* ops_cuda.cu: the CUDA op table; see ops_cuda.h, ops.h and cuda_internal.h.
 *
 * Layout of this file: errors and small helpers, memory (buffers, scratch,
 * weights, the KV pool), the batch mirror, the matmul (GEMV kernel, cuBLASLt,
 * a SIMT tile kernel), the elementwise ops, kv_store and dense paged
 * attention, then the table and the constructor.
 *
 * Every op queues work on cb->stream and returns. Host arrays an op is given
 * (token ids, positions, rows) are either the current batch's, which
 * begin_batch() already copied, or go through the pinned ring
 * (cuda_host_ids), an async copy the stream orders before the kernel that
 * reads it; nothing in a step makes the host wait for the device.
 *
 * Memory a step may add on its first run (then kept): scratch slots, the
 * ring, the rope tables. Attention's partials take n_tokens x n_heads x
 * ceil(max_pos / 256) x (head_dim + 2) floats, which bounds how long a
 * prefill chunk should be at long contexts.
 *
 * Determinism (ops.h): a GEMV output element is a fixed sequence of FMAs per
 * lane followed by a fixed shuffle tree, whatever the number of tokens (up to
 * cb->gemv_max); attention splits each token's context into fixed 256-position
 * pieces and always combines them, so a token's result does not depend on the
 * batch around it. Above gemv_max tokens the matmul switches to cuBLASLt,
 * whose summation order differs from the GEMV's: a decode token's logits are
 * batch-invariant among batches of up to gemv_max tokens, not across that
 * threshold. Attention rows keep their arithmetic in any tile, so a token
 * gets the same attention output decoding alone or inside a prefill chunk.
 */
#include "engines/native/backend/cuda/cuda_internal.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rows per GEMV block: one warp per row. */
#define GEMV_WARPS 4
/* Loads each GEMV lane keeps in flight (16 bytes each). */
#define GEMV_UNROLL 4
#define GEMV_DEFAULT_MAX 8
#define GEMV_MAX_TEMPLATE 8
/* SIMT tile GEMM: 64 rows x 64 tokens per 256-thread block, k by 16. */
#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
/* Dense attention: 16 positions (one KV block) per tile, 128 threads, up to
 * 8 rows (token, query head) of one sequence and KV group per block;
 * contexts split in 256-position pieces combined by a second kernel. */
#define ATT_THREADS 128
#define ATT_MAX_ROWS 8
#define ATT_SPLIT 256
#define CUDA_LT_PLANS 64
#define HOST_IDS_MIN_INTS ((size_t)1 << 18)     /* 1 MiB of pinned ring */

struct cuda_lt_plan {
    int used;
    int64_t m, n, k;
    int dt;                 /* NATIVE_BF16 or NATIVE_F32 */
    int align_b, align_c;   /* byte alignment of x and y, which the algorithm may assume */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

static void note_error(struct cuda_backend *cb, int code, const char *text)
{
    if (!cb)
        return;
    /* The text first, then the code with release order: another thread
     * (an engine's health check) may read them through ops_cuda_error(). */
    if (!__atomic_load_n(&cb->last_error, __ATOMIC_RELAXED)) {
        snprintf(cb->error, sizeof(cb->error), "%s", text);
        __atomic_store_n(&cb->last_error, code ? code : -1, __ATOMIC_RELEASE);
    }
    cb->n_errors++;
}

void cuda_report(struct cuda_backend *cb, cudaError_t e, const char *what, const char *file, int line)
{
    char text[256];
    snprintf(text, sizeof(text), "%s: %s (%s:%d)", what, cudaGetErrorString(e), file, line);
    /* A fault repeats in every op after it: say it a few times, not per op. */
    if (!cb || cb->n_errors < 8)
        fprintf(stderr, "cuda: %s\n", text);
    note_error(cb, (int)e, text);
}

void cuda_report_blas(struct cuda_backend *cb, int status, const char *what, const char *file, int line)
{
    char text[256];
    snprintf(text, sizeof(text), "%s: %s (%s:%d)", what,
             cublasGetStatusString((cublasStatus_t)status), file, line);
    if (!cb || cb->n_errors < 8)
        fprintf(stderr, "cuda: %s\n", text);
    note_error(cb, 100000 + status, text);
}

void cuda_enter(struct cuda_backend *cb)
{
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != cb->device)
        CUDA_CHECK(cb, cudaSetDevice(cb->device));
}

/* Blocks of `threads` covering n items, capped for a grid-stride loop. */
static unsigned grid_for(size_t n, unsigned threads)
{
    size_t g = (n + threads - 1) / threads;
    if (g > 65535u * 16u)
        g = 65535u * 16u;
    return g ? (unsigned)g : 1u;
}

/* ------------------------------------------------------------------------ */
/* Memory                                                                    */
/* ------------------------------------------------------------------------ */

void *cuda_scratch(struct cuda_backend *cb, enum cuda_scratch_slot slot, size_t bytes)
{
    if (bytes <= cb->scratch_bytes[slot] && cb->scratch[slot])
        return cb->scratch[slot];
    /* Grow with headroom, so a slowly rising size does not reallocate every step. */
    size_t nb = bytes + bytes / 4;
    nb = (nb + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
    if (cb->scratch[slot]) {
        /* Queued kernels may still read the old block. */
        CUDA_CHECK(cb, cudaStreamSynchronize(cb->stream));
        CUDA_CHECK(cb, cudaFree(cb->scratch[slot]));
        cb->scratch[slot] = NULL;
        cb->scratch_bytes[slot] = 0;
    }
    if (CUDA_CHECK(cb, cudaMalloc(&cb->scratch[slot], nb))) {
        cb->scratch[slot] = NULL;
        return NULL;
    }
    cb->scratch_bytes[slot] = nb;
    return cb->scratch[slot];
}

static struct native_buf *cuda_buf_alloc(struct native_backend *b, size_t bytes)
{
    struct cuda_backend *cb = cuda_cb(b);
    cuda_enter(cb);
    struct native_buf *buf = (struct native_buf *)malloc(sizeof(*buf));
    if (!buf)
        return NULL;
    buf->bytes = bytes;
    /* Out of memory is an answer here (NULL), not an op error. */
    if (cudaMalloc(&buf->dev, bytes ? bytes : 256) != cudaSuccess) {
        (void)cudaGetLastError();
        free(buf);
        return NULL;
    }
    return buf;
}

static void cuda_buf_free(struct native_backend *b, struct native_buf *buf)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (!buf)
        return;
    cuda_enter(cb);
    /* cudaFree waits for the device, so no queued op still reads it. */
    CUDA_CHECK(cb, cudaFree(buf->dev));
    free(buf);
}

static void *cuda_buf_addr(struct native_backend *b, struct native_buf *buf)
{
    (void)b;
    return buf->dev;
}

/* Pageable host memory: cudaMemcpyAsync returns once src has been staged, so
 * the caller may reuse src at once; the copy is ordered on the stream. */
static void cuda_upload(struct native_backend *b, struct native_buf *buf, size_t offset,
                        const void *src, size_t n)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (!n)
        return;
    cuda_enter(cb);
    CUDA_CHECK(cb, cudaMemcpyAsync((char *)buf->dev + offset, src, n, cudaMemcpyHostToDevice,
                                   cb->stream));
}

static void cuda_download(struct native_backend *b, void *dst, struct native_buf *buf, size_t offset,
                          size_t n)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (!n)
        return;
    cuda_enter(cb);
    CUDA_CHECK(cb, cudaMemcpyAsync(dst, (const char *)buf->dev + offset, n, cudaMemcpyDeviceToHost,
                                   cb->stream));
    CUDA_CHECK(cb, cudaStreamSynchronize(cb->stream));
}

static void cuda_synchronize(struct native_backend *b)
{
    struct cuda_backend *cb = cuda_cb(b);
    cuda_enter(cb);
    CUDA_CHECK(cb, cudaStreamSynchronize(cb->stream));
}

/* ---- weights: one cudaMalloc + copy per tensor, found again by address ---- */

static size_t map_hash(const void *p, size_t cap)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static int map_insert(struct cuda_backend *cb, void *dev, size_t bytes);

/* Rehash into a table of cap slots (a power of two); drops tombstones. */
static int map_rehash(struct cuda_backend *cb, size_t cap)
{
    struct cuda_weight_map *old = cb->maps;
    size_t old_cap = cb->cap_maps;
    struct cuda_weight_map *nm = (struct cuda_weight_map *)calloc(cap, sizeof(*nm));
    if (!nm)
        return -1;
    cb->maps = nm;
    cb->cap_maps = cap;
    cb->n_maps = cb->n_tomb = 0;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].dev && old[i].dev != CUDA_MAP_TOMB)
            map_insert(cb, old[i].dev, old[i].bytes);
    free(old);
    return 0;
}

static int map_insert(struct cuda_backend *cb, void *dev, size_t bytes)
{
    if ((cb->n_maps + cb->n_tomb + 1) * 2 > cb->cap_maps &&
        map_rehash(cb, cb->cap_maps ? (cb->n_maps + 1) * 4 > cb->cap_maps ? cb->cap_maps * 2 : cb->cap_maps
                                    : 1024) != 0)
        return -1;
    size_t i = map_hash(dev, cb->cap_maps);
    while (cb->maps[i].dev && cb->maps[i].dev != CUDA_MAP_TOMB)
        i = (i + 1) & (cb->cap_maps - 1);
    if (cb->maps[i].dev == CUDA_MAP_TOMB)
        cb->n_tomb--;
    cb->maps[i].dev = dev;
    cb->maps[i].bytes = bytes;
    cb->n_maps++;
    return 0;
}

static const void *cuda_map_weights(struct native_backend *b, const void *host, size_t n)
{
    struct cuda_backend *cb = cuda_cb(b);
    void *dev = NULL;
    cuda_enter(cb);
    if (cudaMalloc(&dev, n ? n : 256) != cudaSuccess) {
        (void)cudaGetLastError();
        fprintf(stderr, "cuda: cannot allocate %zu bytes of weights on %s (%zu held already)\n", n,
                cb->name, cb->weight_bytes);
        return NULL;
    }
    /* Synchronous: the host bytes are the model's mmap, read once here. */
    if (n && CUDA_CHECK(cb, cudaMemcpy(dev, host, n, cudaMemcpyHostToDevice))) {
        cudaFree(dev);
        return NULL;
    }
    if (map_insert(cb, dev, n) != 0) {
        cudaFree(dev);
        return NULL;
    }
    cb->weight_bytes += n;
    return dev;
}

static void cuda_unmap_weights(struct native_backend *b, const void *addr)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (!addr || !cb->cap_maps)
        return;
    size_t i = map_hash(addr, cb->cap_maps);
    while (cb->maps[i].dev && cb->maps[i].dev != addr)
        i = (i + 1) & (cb->cap_maps - 1);
    if (!cb->maps[i].dev)
        return;     /* not ours: nothing to free */
    cuda_enter(cb);
    CUDA_CHECK(cb, cudaFree(cb->maps[i].dev));
    cb->weight_bytes -= cb->maps[i].bytes;
    cb->maps[i].dev = CUDA_MAP_TOMB;
    cb->n_maps--;
    cb->n_tomb++;
}

/* ---- the KV pool ---- */

static size_t kv_layer_floats(const struct native_kv_desc *d)
{
    if (d->kind == NATIVE_KV_LATENT)
        return (size_t)CUDA_KV_BLOCK_SIZE * (size_t)(d->latent_dim + d->rope_dim);
    return 2 * (size_t)CUDA_KV_BLOCK_SIZE * (size_t)d->kv_dim;
}

static size_t cuda_kv_block_bytes(struct native_backend *b, const struct native_kv_desc *d)
{
    (void)b;
    return kv_layer_floats(d) * (size_t)d->n_layers * sizeof(float);
}

static struct native_kv *cuda_kv_new(struct native_backend *b, const struct native_kv_desc *d,
                                     int n_blocks, char *err, size_t errlen)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (d->n_layers < 1 || n_blocks < 1 ||
        (d->kind == NATIVE_KV_DENSE && (d->kv_dim < 1 || d->kv_dim > 65536)) ||
        (d->kind == NATIVE_KV_LATENT &&
         (d->latent_dim < 1 || d->latent_dim > NATIVE_MAX_LATENT || d->rope_dim < 2 ||
          d->rope_dim > NATIVE_MAX_HEAD_DIM))) {
        snprintf(err, errlen, "KV cache shape not supported by the CUDA backend");
        return NULL;
    }
    struct native_kv *kv = (struct native_kv *)calloc(1, sizeof(*kv));
    if (!kv) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    kv->desc = *d;
    kv->block_size = CUDA_KV_BLOCK_SIZE;
    kv->n_blocks = n_blocks;
    kv->layer_stride = kv_layer_floats(d);
    kv->block_stride = (size_t)d->n_layers * kv->layer_stride;
    kv->bytes = cuda_kv_block_bytes(b, d) * (size_t)n_blocks;
    cuda_enter(cb);
    if (cudaMalloc(&kv->data, kv->bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        snprintf(err, errlen, "cannot allocate %zu bytes of KV cache on %s (%zu free)", kv->bytes,
                 cb->name, fr);
        free(kv);
        return NULL;
    }
    /* Zero, so a position read before it is written is 0, never NaN bits. */
    if (CUDA_CHECK(cb, cudaMemsetAsync(kv->data, 0, kv->bytes, cb->stream))) {
        snprintf(err, errlen, "cannot clear the KV cache: %s", cb->error);
        cudaFree(kv->data);
        free(kv);
        return NULL;
    }
    return kv;
}

static void cuda_kv_free(struct native_backend *b, struct native_kv *kv)
{
    if (!kv)
        return;
    struct cuda_backend *cb = cuda_cb(b);
    cuda_enter(cb);
    CUDA_CHECK(cb, cudaFree(kv->data));
    free(kv);
}

/* ------------------------------------------------------------------------ */
/* The batch mirror                                                          */
/* ------------------------------------------------------------------------ */

static size_t batch_ints(const struct native_batch *bt)
{
    size_t n = 3 * (size_t)bt->n_tokens + (size_t)bt->n_out + (size_t)bt->n_seqs + 1;
    for (int s = 0; s < bt->n_seqs; s++)
        n += (size_t)(bt->seqs[s].n_blocks > 0 ? bt->seqs[s].n_blocks : 0);
    return n;
}

static int same_ints(const int32_t *staged, const int32_t *host, int n)
{
    if (n <= 0)
        return 1;
    if (!host) {
        for (int i = 0; i < n; i++)
            if (staged[i])
                return 0;
        return 1;
    }
    return memcmp(staged, host, sizeof(int32_t) * (size_t)n) == 0;
}

/* 1 when the mirror holds exactly this batch: the same pointer (the contract)
 * and the same contents (a caller that reuses a struct for another batch
 * without begin_batch(), as tests do, still gets the right arrays). Reads
 * only host memory: the pinned staging copy is what was sent. */
static int batch_current(const struct cuda_backend *cb, const struct native_batch *bt)
{
    const struct cuda_batch *m = &cb->batch;
    if (m->host != bt || m->n_tokens != bt->n_tokens || m->n_seqs != bt->n_seqs ||
        m->n_out != bt->n_out || m->used != batch_ints(bt))
        return 0;
    const int32_t *s = m->staging;
    const int nt = bt->n_tokens;
    if (!same_ints(s, bt->token, nt) || !same_ints(s + nt, bt->pos, nt) ||
        !same_ints(s + 2 * nt, bt->seq, nt) || !same_ints(s + 3 * nt, bt->out_rows, bt->n_out))
        return 0;
    const int32_t *off = s + 3 * nt + bt->n_out, *blocks = off + bt->n_seqs + 1;
    for (int q = 0; q < bt->n_seqs; q++) {
        int nb = bt->seqs[q].n_blocks > 0 ? bt->seqs[q].n_blocks : 0;
        if (off[q + 1] - off[q] != nb || !same_ints(blocks + off[q], bt->seqs[q].blocks, nb))
            return 0;
    }
    return 1;
}

static void cuda_begin_batch(struct native_backend *b, const struct native_batch *bt)
{
    struct cuda_backend *cb = cuda_cb(b);
    struct cuda_batch *m = &cb->batch;
    const size_t need = batch_ints(bt);
    cuda_enter(cb);
    /* The previous step's copy may still be reading the staging buffer. */
    if (m->pending) {
        CUDA_CHECK(cb, cudaEventSynchronize(m->copied));
        m->pending = 0;
    }
    if (need > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < need)
            cap *= 2;
        CUDA_CHECK(cb, cudaStreamSynchronize(cb->stream));     /* kernels may read m->dev */
        cudaFreeHost(m->staging);
        cudaFree(m->dev);
        m->staging = NULL;
        m->dev = NULL;
        m->cap = 0;
        if (CUDA_CHECK(cb, cudaMallocHost((void **)&m->staging, cap * sizeof(int32_t))) ||
            CUDA_CHECK(cb, cudaMalloc((void **)&m->dev, cap * sizeof(int32_t)))) {
            cudaFreeHost(m->staging);
            m->staging = NULL;
            m->host = NULL;
            return;
        }
        m->cap = cap;
    }
    const int nt = bt->n_tokens;
    int32_t *s = m->staging;
    if (bt->token)
        memcpy(s, bt->token, sizeof(int32_t) * (size_t)nt);
    else
        memset(s, 0, sizeof(int32_t) * (size_t)nt);
    memcpy(s + nt, bt->pos, sizeof(int32_t) * (size_t)nt);
    memcpy(s + 2 * nt, bt->seq, sizeof(int32_t) * (size_t)nt);
    if (bt->n_out > 0)
        memcpy(s + 3 * nt, bt->out_rows, sizeof(int32_t) * (size_t)bt->n_out);
    int32_t *off = s + 3 * nt + bt->n_out, *blocks = off + bt->n_seqs + 1;
    off[0] = 0;
    m->max_blocks = 0;
    for (int q = 0; q < bt->n_seqs; q++) {
        int nb = bt->seqs[q].n_blocks > 0 ? bt->seqs[q].n_blocks : 0;
        if (nb)
            memcpy(blocks + off[q], bt->seqs[q].blocks, sizeof(int32_t) * (size_t)nb);
        off[q + 1] = off[q] + nb;
        if (nb > m->max_blocks)
            m->max_blocks = nb;
    }
    m->max_pos = 0;
    m->sum_ctx = 0;
    for (int t = 0; t < nt; t++) {
        if (bt->pos[t] + 1 > m->max_pos)
            m->max_pos = bt->pos[t] + 1;
        m->sum_ctx += bt->pos[t] + 1;
    }
    m->host = bt;
    m->host_token = bt->token;
    m->host_pos = bt->pos;
    m->host_out_rows = bt->out_rows;
    m->n_tokens = nt;
    m->n_seqs = bt->n_seqs;
    m->n_out = bt->n_out;
    m->used = need;
    m->token = m->dev;
    m->pos = m->dev + nt;
    m->seq = m->dev + 2 * nt;
    m->out_rows = m->dev + 3 * nt;
    m->block_off = m->out_rows + bt->n_out;
    m->blocks = m->block_off + bt->n_seqs + 1;
    CUDA_CHECK(cb, cudaMemcpyAsync(m->dev, s, need * sizeof(int32_t), cudaMemcpyHostToDevice,
                                   cb->stream));
    if (!CUDA_CHECK(cb, cudaEventRecord(m->copied, cb->stream)))
        m->pending = 1;
}

/* The mirror of bt, made now if the caller did not call begin_batch(). */
static const struct cuda_batch *use_batch(struct cuda_backend *cb, const struct native_batch *bt)
{
    if (!batch_current(cb, bt))
        cuda_begin_batch(&cb->base, bt);
    return cb->batch.host == bt && cb->batch.dev ? &cb->batch : NULL;
}

const int32_t *cuda_host_ids(struct cuda_backend *cb, const int32_t *host, int n, size_t at)
{
    const struct cuda_batch *m = &cb->batch;
    if (n <= 0)
        return NULL;
    /* The batch's own arrays were copied by begin_batch(); the contents
     * are compared too, since another array may now live at that address. */
    if (m->host && m->dev) {
        const int nt = m->n_tokens;
        if (host == m->host_token && n <= nt && same_ints(m->staging, host, n))
            return m->token;
        if (host == m->host_pos && n <= nt && same_ints(m->staging + nt, host, n))
            return m->pos;
        if (host == m->host_out_rows && n <= m->n_out && same_ints(m->staging + 3 * nt, host, n))
            return m->out_rows;
    }
    (void)at;
    /* Grow, or wrap when the rest of the ring is too short: either way the
     * ring's earlier copies must be done first (they precede ids_done on
     * the stream). 64-byte steps keep every copy's start aligned. */
    const size_t need = ((size_t)n + 15) & ~(size_t)15;
    if (cb->ids_off + need > cb->ids_cap) {
        if (cb->ids_pending && CUDA_CHECK(cb, cudaEventSynchronize(cb->ids_done)))
            return NULL;
        cb->ids_pending = 0;
        cb->ids_off = 0;
        if (need > cb->ids_cap) {
            size_t cap = cb->ids_cap ? cb->ids_cap : HOST_IDS_MIN_INTS;
            while (cap < need)
                cap *= 2;
            CUDA_CHECK(cb, cudaStreamSynchronize(cb->stream));  /* kernels may read the old twin */
            cudaFreeHost(cb->ids_host);
            cudaFree(cb->ids_dev);
            cb->ids_host = NULL;
            cb->ids_dev = NULL;
            cb->ids_cap = 0;
            if (CUDA_CHECK(cb, cudaMallocHost((void **)&cb->ids_host, cap * sizeof(int32_t))) ||
                CUDA_CHECK(cb, cudaMalloc((void **)&cb->ids_dev, cap * sizeof(int32_t)))) {
                cudaFreeHost(cb->ids_host);
                cb->ids_host = NULL;
                return NULL;
            }
            cb->ids_cap = cap;
        }
    }
    int32_t *h = cb->ids_host + cb->ids_off, *d = cb->ids_dev + cb->ids_off;
    memcpy(h, host, sizeof(int32_t) * (size_t)n);
    cb->ids_off += need;
    if (CUDA_CHECK(cb, cudaMemcpyAsync(d, h, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, cb->stream)))
        return NULL;
    if (!CUDA_CHECK(cb, cudaEventRecord(cb->ids_done, cb->stream)))
        cb->ids_pending = 1;
    return d;
}

/* ------------------------------------------------------------------------ */
/* Matmul                                                                    */
/* ------------------------------------------------------------------------ */

/* Eight BF16 or F16 weights of a 16-byte load, as floats. */
template <int DT>
static __device__ __forceinline__ void unpack8(const uint4 v, float f[8])
{
    const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (DT == NATIVE_BF16) {
            f[2 * i] = __uint_as_float(u[i] << 16);
            f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
        } else {
            __half2 h = *reinterpret_cast<const __half2 *>(&u[i]);
            float2 p = __half22float2(h);
            f[2 * i] = p.x;
            f[2 * i + 1] = p.y;
        }
    }
}

/* Up to GEMV_MAX_SET weights of one dtype and width sharing an input (q/k/v,
 * gate/up), run by one launch: block b works on weight j where
 * first_block[j] <= b < first_block[j + 1]. */
#define GEMV_MAX_SET 4
struct gemv_set {
    const void *w[GEMV_MAX_SET];
    float *y[GEMV_MAX_SET];
    int64_t rows[GEMV_MAX_SET];
    unsigned first_block[GEMV_MAX_SET + 1];
    int n_w;
    int dt;
    int64_t cols;
    const float *x;
    int accumulate;
};

/* This warp's weight and row, or -1 when it has none. */
static __device__ __forceinline__ int64_t gemv_row(const struct gemv_set &a, int *j)
{
    int k = 0;
    while (k + 1 < a.n_w && blockIdx.x >= a.first_block[k + 1])
        k++;
    *j = k;
    const int64_t r = (int64_t)(blockIdx.x - a.first_block[k]) * GEMV_WARPS + (threadIdx.x >> 5);
    return r < a.rows[k] ? r : -1;
}

/* GEMV, y[t][r] (+)= w[r] . x[t] for NT tokens, one warp per row.
 * Lane l takes the row's 16-byte vectors l, l + 32, ... (8 BF16/F16 or 4
 * F32 weights each), GEMV_UNROLL loads in flight, weights with the
 * streaming hint (each is read once per step), x through the cache (every
 * warp reads it). Needs cols % 8 == 0 and 16-byte aligned w and x.
 * Order, fixed: per lane, its vectors in increasing order and each
 * vector's elements in order, one FMA each; then the warp's xor-shuffle
 * tree. It is the same for every NT, so a token gets the same bits alone
 * or with up to 7 others, and gemv_any_kernel keeps it too. */
template <int NT, int DT>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_vec_kernel(const struct gemv_set a)
{
    const int lane = threadIdx.x & 31;
    int j;
    const int64_t r = gemv_row(a, &j);
    if (r < 0)
        return;
    const int64_t cols = a.cols;
    const float *__restrict__ x = a.x;
    constexpr int EPV = DT == NATIVE_F32 ? 4 : 8;     /* elements per 16-byte vector */
    const int64_t nv = cols / EPV;
    const uint4 *wr = reinterpret_cast<const uint4 *>(static_cast<const char *>(a.w[j]) +
                                                      (size_t)r * (size_t)cols * (DT == NATIVE_F32 ? 4 : 2));
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    for (int64_t v0 = lane; v0 < nv; v0 += 32 * GEMV_UNROLL) {
        uint4 wv[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int64_t v = v0 + 32 * u;
            wv[u] = v < nv ? __ldcs(wr + v) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int64_t v = v0 + 32 * u;
            if (v >= nv)
                break;
            if (DT == NATIVE_F32) {
                const float4 wf = *reinterpret_cast<const float4 *>(&wv[u]);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const float4 xv = __ldg(reinterpret_cast<const float4 *>(x + (size_t)t * cols) + v);
                    acc[t] = fmaf(wf.x, xv.x, acc[t]);
                    acc[t] = fmaf(wf.y, xv.y, acc[t]);
                    acc[t] = fmaf(wf.z, xv.z, acc[t]);
                    acc[t] = fmaf(wf.w, xv.w, acc[t]);
                }
            } else {
                float wf[8];
                unpack8<DT>(wv[u], wf);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const float4 *xp = reinterpret_cast<const float4 *>(x + (size_t)t * cols) + 2 * v;
                    const float4 p = __ldg(xp), q = __ldg(xp + 1);
                    acc[t] = fmaf(wf[0], p.x, acc[t]);
                    acc[t] = fmaf(wf[1], p.y, acc[t]);
                    acc[t] = fmaf(wf[2], p.z, acc[t]);
                    acc[t] = fmaf(wf[3], p.w, acc[t]);
                    acc[t] = fmaf(wf[4], q.x, acc[t]);
                    acc[t] = fmaf(wf[5], q.y, acc[t]);
                    acc[t] = fmaf(wf[6], q.z, acc[t]);
                    acc[t] = fmaf(wf[7], q.w, acc[t]);
                }
            }
        }
    }
    const int64_t rows = a.rows[j];
    float *y = a.y[j];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float sum = cuda_warp_sum(acc[t]);
        if (lane == t % 32) {
            float *o = y + (size_t)t * (size_t)rows + r;
            *o = a.accumulate ? *o + sum : sum;
        }
    }
}

/* The same for any width and alignment, element by element in the vector
 * kernel's order (lane l: elements EPV*l .. EPV*l + EPV-1, then 32 vectors
 * further, ...), so where both apply they give the same bits. */
template <int NT>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_any_kernel(const struct gemv_set a)
{
    const int lane = threadIdx.x & 31;
    int j;
    const int64_t r = gemv_row(a, &j);
    if (r < 0)
        return;
    const int64_t cols = a.cols;
    const enum native_dtype dt = (enum native_dtype)a.dt;
    const int epv = dt == NATIVE_F32 ? 4 : 8;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    const int64_t base = r * cols;
    for (int64_t k0 = (int64_t)lane * epv; k0 < cols; k0 += 32 * (int64_t)epv) {
        for (int e = 0; e < epv && k0 + e < cols; e++) {
            const float wv = cuda_load_w(a.w[j], dt, base + k0 + e);
#pragma unroll
            for (int t = 0; t < NT; t++)
                acc[t] = fmaf(wv, a.x[(size_t)t * cols + k0 + e], acc[t]);
        }
    }
    const int64_t rows = a.rows[j];
    float *y = a.y[j];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float sum = cuda_warp_sum(acc[t]);
        if (lane == t % 32) {
            float *o = y + (size_t)t * (size_t)rows + r;
            *o = a.accumulate ? *o + sum : sum;
        }
    }
}

template <int NT>
static void gemv_launch_nt(struct cuda_backend *cb, const struct gemv_set &a, int vec)
{
    const dim3 grid(a.first_block[a.n_w]), block(GEMV_WARPS * 32);
    if (!vec)
        gemv_any_kernel<NT><<<grid, block, 0, cb->stream>>>(a);
    else if (a.dt == NATIVE_BF16)
        gemv_vec_kernel<NT, NATIVE_BF16><<<grid, block, 0, cb->stream>>>(a);
    else if (a.dt == NATIVE_F16)
        gemv_vec_kernel<NT, NATIVE_F16><<<grid, block, 0, cb->stream>>>(a);
    else
        gemv_vec_kernel<NT, NATIVE_F32><<<grid, block, 0, cb->stream>>>(a);
    CUDA_LAUNCHED(cb, "gemv");
}

/* n tokens (any n; groups of GEMV_MAX_TEMPLATE) through n_w <= GEMV_MAX_SET
 * weights of one dtype and width, one launch per group. */
static void gemv(struct cuda_backend *cb, int n, const float *x, int n_w, const struct native_mat *w,
                 float *const *y, int accumulate)
{
    struct gemv_set a;
    memset(&a, 0, sizeof(a));
    uintptr_t mis = (uintptr_t)x;
    a.n_w = n_w;
    a.dt = (int)w[0].dtype;
    a.cols = w[0].cols;
    a.accumulate = accumulate;
    for (int j = 0; j < n_w; j++) {
        a.w[j] = w[j].data;
        a.rows[j] = w[j].rows;
        a.first_block[j + 1] = a.first_block[j] + (unsigned)((w[j].rows + GEMV_WARPS - 1) / GEMV_WARPS);
        mis |= (uintptr_t)w[j].data;
    }
    const int vec = a.cols % 8 == 0 && (mis & 15) == 0;
    for (int t0 = 0; t0 < n; t0 += GEMV_MAX_TEMPLATE) {
        const int nt = n - t0 < GEMV_MAX_TEMPLATE ? n - t0 : GEMV_MAX_TEMPLATE;
        a.x = x + (size_t)t0 * (size_t)a.cols;
        for (int j = 0; j < n_w; j++)
            a.y[j] = y[j] + (size_t)t0 * (size_t)w[j].rows;
        switch (nt) {
        case 1: gemv_launch_nt<1>(cb, a, vec); break;
        case 2: gemv_launch_nt<2>(cb, a, vec); break;
        case 3: gemv_launch_nt<3>(cb, a, vec); break;
        case 4: gemv_launch_nt<4>(cb, a, vec); break;
        case 5: gemv_launch_nt<5>(cb, a, vec); break;
        case 6: gemv_launch_nt<6>(cb, a, vec); break;
        case 7: gemv_launch_nt<7>(cb, a, vec); break;
        default: gemv_launch_nt<8>(cb, a, vec); break;
        }
    }
}

/* SIMT tile GEMM with float32 accumulation, any non-FP8 dtype and shape:
 *   y[t][r] (+)= sum_k w[r][k] x[t][k]
 * A 256-thread block owns TILE_M rows x TILE_N tokens; each thread a 4x4
 * sub-tile (rows tr..tr+3, tokens tt..tt+3); k advances TILE_K at a time
 * through shared memory, weights widened to float on the way in. The exact
 * fallback where tensor cores would round (F16 weights) or fail. */
__global__ void __launch_bounds__(256)
gemm_simt_kernel(const void *__restrict__ w, int dt, int64_t rows, int64_t cols,
                 const float *__restrict__ x, int n, float *__restrict__ y, int accumulate)
{
    __shared__ float ws[TILE_K][TILE_M + 4];
    __shared__ float xs[TILE_K][TILE_N + 4];
    const int tid = threadIdx.x;
    const int64_t r0 = (int64_t)blockIdx.x * TILE_M;
    const int t0 = blockIdx.y * TILE_N;
    const int tr = (tid % 16) * 4, tt = (tid / 16) * 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
            acc[i][j] = 0.0f;
    for (int64_t k0 = 0; k0 < cols; k0 += TILE_K) {
        for (int i = tid; i < TILE_M * TILE_K; i += 256) {
            const int rr = i / TILE_K, kk = i % TILE_K;
            const int64_t gr = r0 + rr, gk = k0 + kk;
            ws[kk][rr] = gr < rows && gk < cols ? cuda_load_w(w, (enum native_dtype)dt, gr * cols + gk) : 0.0f;
            const int64_t gt = t0 + rr;
            xs[kk][rr] = gt < n && gk < cols ? x[gt * cols + gk] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE_K; kk++) {
            float a[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                a[i] = ws[kk][tr + i];
                bv[i] = xs[kk][tt + i];
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[i][j] = fmaf(a[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int64_t t = t0 + tt + j;
        if (t >= n)
            continue;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int64_t r = r0 + tr + i;
            if (r < rows) {
                float *o = y + t * rows + r;
                *o = accumulate ? *o + acc[i][j] : acc[i][j];
            }
        }
    }
}

static void gemm_simt(struct cuda_backend *cb, int n, const float *x, const struct native_mat *w,
                      float *y, int accumulate)
{
    const dim3 grid((unsigned)((w->rows + TILE_M - 1) / TILE_M), (unsigned)((n + TILE_N - 1) / TILE_N));
    gemm_simt_kernel<<<grid, 256, 0, cb->stream>>>(w->data, (int)w->dtype, w->rows, w->cols, x, n, y,
                                                   accumulate);
    CUDA_LAUNCHED(cb, "gemm_simt");
}

/* x (float32) cut into `parts` BF16 arrays of n values each, `stride`
 * elements apart:  hi = bf16(x), mid = bf16(x - hi), lo = bf16(x - hi - mid). */
__global__ void split_bf16_kernel(const float *__restrict__ x, __nv_bfloat16 *__restrict__ out, size_t n,
                                  int parts, size_t stride)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float rest = x[i];
        for (int p = 0; p < parts; p++) {
            const __nv_bfloat16 h = __float2bfloat16_rn(rest);
            out[(size_t)p * stride + i] = h;
            rest -= __bfloat162float(h);
        }
    }
}

static int align_of(const void *p)
{
    const uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 4 && (a & (uintptr_t)(al - 1)))
        al /= 2;
    return al;
}

static void plan_destroy(struct cuda_lt_plan *p)
{
    if (!p->used)
        return;
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->c);
    cublasLtMatmulDescDestroy(p->op);
    p->used = 0;
}

/* The cached cuBLASLt plan for y[n][m] = x[n][k] . W[m][k]^T, or NULL.
 * Column-major view: W row-major [m][k] is a k x m matrix (ld k) used
 * transposed; x is k x n (ld k); y is m x n (ld m). F32 compute and output;
 * inputs BF16 (W as stored, x cut into parts) or F32. */
static struct cuda_lt_plan *lt_plan(struct cuda_backend *cb, int64_t m, int64_t n, int64_t k, int dt,
                                    int align_b, int align_c)
{
    for (int i = 0; i < CUDA_LT_PLANS; i++) {
        struct cuda_lt_plan *p = &cb->plans[i];
        if (p->used && p->m == m && p->n == n && p->k == k && p->dt == dt && p->align_b == align_b &&
            p->align_c == align_c)
            return p;
    }
    struct cuda_lt_plan *p = &cb->plans[cb->plan_next];
    cb->plan_next = (cb->plan_next + 1) % CUDA_LT_PLANS;
    plan_destroy(p);
    const cudaDataType_t ab = dt == NATIVE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const uint32_t al_a = 256, al_b = (uint32_t)align_b, al_c = (uint32_t)align_c;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    memset(&res, 0, sizeof(res));
    p->op = NULL;
    p->a = p->b = p->c = NULL;
    if (CUBLAS_CHECK(cb, cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F)) ||
        CUBLAS_CHECK(cb, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta))) ||
        CUBLAS_CHECK(cb, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb))) ||
        CUBLAS_CHECK(cb, cublasLtMatrixLayoutCreate(&p->a, ab, (uint64_t)k, (uint64_t)m, k)) ||
        CUBLAS_CHECK(cb, cublasLtMatrixLayoutCreate(&p->b, ab, (uint64_t)k, (uint64_t)n, k)) ||
        CUBLAS_CHECK(cb, cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, (uint64_t)m, (uint64_t)n, m)) ||
        CUBLAS_CHECK(cb, cublasLtMatmulPreferenceCreate(&pref)) ||
        CUBLAS_CHECK(cb, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                              &cb->lt_ws_bytes, sizeof(cb->lt_ws_bytes))) ||
        CUBLAS_CHECK(cb, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                              &al_a, sizeof(al_a))) ||
        CUBLAS_CHECK(cb, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                              &al_b, sizeof(al_b))) ||
        CUBLAS_CHECK(cb, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                              &al_c, sizeof(al_c))) ||
        CUBLAS_CHECK(cb, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                              &al_c, sizeof(al_c))) ||
        /* No algorithm for this shape is an answer, not an error: the caller falls back. */
        cublasLtMatmulAlgoGetHeuristic(cb->lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &found) !=
            CUBLAS_STATUS_SUCCESS ||
        found < 1) {
        if (pref)
            cublasLtMatmulPreferenceDestroy(pref);
        if (p->a)
            cublasLtMatrixLayoutDestroy(p->a);
        if (p->b)
            cublasLtMatrixLayoutDestroy(p->b);
        if (p->c)
            cublasLtMatrixLayoutDestroy(p->c);
        if (p->op)
            cublasLtMatmulDescDestroy(p->op);
        return NULL;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    p->algo = res.algo;
    p->m = m;
    p->n = n;
    p->k = k;
    p->dt = dt;
    p->align_b = align_b;
    p->align_c = align_c;
    p->used = 1;
    return p;
}

/* cuBLASLt for BF16 (x cut into cb->gemm_parts BF16 parts) and F32 weights;
 * -1 when cuBLASLt has no plan, so the caller falls back. */
static int gemm_lt(struct cuda_backend *cb, int n, const float *x, const struct native_mat *w, float *y,
                   int accumulate)
{
    const int64_t m = w->rows, k = w->cols;
    const int parts = w->dtype == NATIVE_BF16 ? cb->gemm_parts : 1;
    const void *xin = x;
    size_t part_bytes = 0;
    if (w->dtype == NATIVE_BF16) {
        const size_t cnt = (size_t)n * (size_t)k;
        part_bytes = (cnt * sizeof(__nv_bfloat16) + 255) & ~(size_t)255;
        void *xs = cuda_scratch(cb, CUDA_SCRATCH_MATMUL, part_bytes * (size_t)parts);
        if (!xs)
            return -1;
        /* Each part starts 256-byte aligned, as the plan's alignment assumes. */
        split_bf16_kernel<<<grid_for(cnt, 256), 256, 0, cb->stream>>>(x, (__nv_bfloat16 *)xs, cnt, parts,
                                                                      part_bytes / sizeof(__nv_bfloat16));
        if (CUDA_LAUNCHED(cb, "split_bf16"))
            return -1;
        xin = xs;
    }
    struct cuda_lt_plan *p = lt_plan(cb, m, n, k, w->dtype, align_of(xin), align_of(y));
    if (!p)
        return -1;
    const float one = 1.0f, zero = 0.0f;
    for (int q = 0; q < parts; q++) {
        const void *b = (const char *)xin + (size_t)q * part_bytes;
        const float *beta = q > 0 || accumulate ? &one : &zero;
        if (CUBLAS_CHECK(cb, cublasLtMatmul(cb->lt, p->op, &one, w->data, p->a, b, p->b, beta, y, p->c, y,
                                            p->c, &p->algo, cb->lt_ws, cb->lt_ws_bytes, cb->stream)))
            return q == 0 ? -1 : 0;    /* a later part failing leaves y half done: reported */
    }
    return 0;
}

void cuda_matmul_one(struct cuda_backend *cb, int n, const float *x, const struct native_mat *w, float *y,
                     int accumulate)
{
    if (n <= 0 || w->rows <= 0)
        return;
    if (w->dtype == NATIVE_F8_E4M3) {
        cuda_fp8_matmul(cb, n, x, w, y, accumulate);
        return;
    }
    if (n <= cb->gemv_max) {
        gemv(cb, n, x, 1, w, &y, accumulate);
        return;
    }
    /* Tensor cores would round F16 weights' activations to F16 (range as
     * well as precision): those take the exact SIMT tiles. */
    if ((w->dtype == NATIVE_BF16 || w->dtype == NATIVE_F32) && gemm_lt(cb, n, x, w, y, accumulate) == 0)
        return;
    gemm_simt(cb, n, x, w, y, accumulate);
}

static void cuda_matmul(struct native_backend *b, int n, const float *x, int n_w,
                        const struct native_mat *w, float *const *y, int accumulate)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (n <= 0)
        return;
    cuda_enter(cb);
    /* Decode: weights of one dtype that share the input run as one GEMV
     * launch (q/k/v, gate/up), a third of the launches and one tail. */
    int same = n <= cb->gemv_max && n_w <= GEMV_MAX_SET && w[0].dtype != NATIVE_F8_E4M3;
    for (int j = 1; j < n_w && same; j++)
        same = w[j].dtype == w[0].dtype && w[j].cols == w[0].cols;
    for (int j = 0; j < n_w && same; j++)
        same = w[j].rows > 0;
    if (same && n_w > 1) {
        gemv(cb, n, x, n_w, w, y, accumulate);
        return;
    }
    for (int j = 0; j < n_w; j++)
        cuda_matmul_one(cb, n, x, &w[j], y[j], accumulate);
}

/* ------------------------------------------------------------------------ */
/* Elementwise ops                                                           */
/* ------------------------------------------------------------------------ */

static __device__ float block_sum(float v, float *red)
{
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = cuda_warp_sum(v);
    if (lane == 0)
        red[wid] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < nw; i++)    /* fixed order: the same bits for every row */
        s += red[i];
    __syncthreads();
    return s;
}

/* y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, one block per row. */
__global__ void rmsnorm_kernel(float *y, const float *x, const float *__restrict__ w, int dim, int stride,
                               float eps)
{
    __shared__ float red[32];
    const float *xt = x + (size_t)blockIdx.x * (size_t)stride;
    float *yt = y + (size_t)blockIdx.x * (size_t)stride;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss = fmaf(xt[i], xt[i], ss);
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    /* Each thread rewrites only what it read: y may be x. */
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        yt[i] = w[i] * (inv * xt[i]);
}

static void cuda_rmsnorm(struct native_backend *b, float *y, const float *x, const float *w, int n, int dim,
                         int stride, float eps)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (n <= 0)
        return;
    cuda_enter(cb);
    const int threads = dim >= 1024 ? 512 : dim >= 256 ? 256 : 128;
    rmsnorm_kernel<<<(unsigned)n, threads, 0, cb->stream>>>(y, x, w, dim, stride, eps);
    CUDA_LAUNCHED(cb, "rmsnorm");
}

/* Pair i of each head rotated by the angle of its token's position:
 *   adjacent: (2i, 2i+1);  half: (i, i + half). */
__global__ void rope_kernel(float *x, int n, int n_heads, int head_stride, int row_stride,
                            const int32_t *__restrict__ pos, const float *__restrict__ cs,
                            const float *__restrict__ sn, int half, int n_pos, int layout)
{
    const size_t total = (size_t)n * n_heads * half;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half);
        const int h = (int)((idx / half) % n_heads);
        const int t = (int)(idx / ((size_t)half * n_heads));
        const int p = pos[t];
        if (p < 0 || p >= n_pos)
            continue;
        const float c = cs[(size_t)p * half + i], s = sn[(size_t)p * half + i];
        float *v = x + (size_t)t * row_stride + (size_t)h * head_stride;
        const int i0 = layout == NATIVE_ROPE_ADJACENT ? 2 * i : i;
        const int i1 = layout == NATIVE_ROPE_ADJACENT ? 2 * i + 1 : i + half;
        const float a = v[i0], bb = v[i1];
        v[i0] = a * c - bb * s;
        v[i1] = a * s + bb * c;
    }
}

static void rope_fingerprint(const struct native_rope *r, float fp[32])
{
    const size_t n = (size_t)r->n_pos * (size_t)(r->dim / 2);
    for (int k = 0; k < 16; k++) {
        const size_t i = n > 1 ? (size_t)k * (n - 1) / 15 : 0;
        fp[k] = n ? r->cos[i] : 0.0f;
        fp[16 + k] = n ? r->sin[i] : 0.0f;
    }
}

/* The device copy of a host cos/sin table, uploaded on first use. */
static const float *rope_table(struct cuda_backend *cb, const struct native_rope *r)
{
    const int half = r->dim / 2;
    float fp[32];
    rope_fingerprint(r, fp);
    for (int i = 0; i < CUDA_ROPE_TABLES; i++) {
        struct cuda_rope_table *e = &cb->rope[i];
        if (e->dev && e->host_cos == r->cos && e->host_sin == r->sin && e->n_pos == r->n_pos &&
            e->half == half && memcmp(e->fp, fp, sizeof(fp)) == 0)
            return e->dev;
    }
    int slot = -1;
    for (int i = 0; i < CUDA_ROPE_TABLES && slot < 0; i++)
        if (!cb->rope[i].dev)
            slot = i;
    if (slot < 0) {
        slot = cb->rope_next;
        cb->rope_next = (cb->rope_next + 1) % CUDA_ROPE_TABLES;
    }
    struct cuda_rope_table *e = &cb->rope[slot];
    const size_t n = (size_t)r->n_pos * (size_t)half;
    if (e->dev) {
        CUDA_CHECK(cb, cudaStreamSynchronize(cb->stream));  /* a queued rope may read it */
        CUDA_CHECK(cb, cudaFree(e->dev));
        e->dev = NULL;
    }
    if (CUDA_CHECK(cb, cudaMalloc((void **)&e->dev, 2 * n * sizeof(float) + 4)))
        return e->dev = NULL;
    if (CUDA_CHECK(cb, cudaMemcpyAsync(e->dev, r->cos, n * sizeof(float), cudaMemcpyHostToDevice, cb->stream)) ||
        CUDA_CHECK(cb, cudaMemcpyAsync(e->dev + n, r->sin, n * sizeof(float), cudaMemcpyHostToDevice,
                                       cb->stream))) {
        cudaFree(e->dev);
        return e->dev = NULL;
    }
    e->host_cos = r->cos;
    e->host_sin = r->sin;
    e->n_pos = r->n_pos;
    e->half = half;
    memcpy(e->fp, fp, sizeof(fp));
    return e->dev;
}

static void cuda_rope(struct native_backend *b, float *x, int n, int n_heads, int head_stride, int row_stride,
                      const int32_t *pos, const struct native_rope *r)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (n <= 0 || n_heads <= 0 || r->dim < 2)
        return;
    cuda_enter(cb);
    const float *tab = rope_table(cb, r);
    const int32_t *dpos = cuda_host_ids(cb, pos, n, 0);
    if (!tab || !dpos)
        return;
    const int half = r->dim / 2;
    const size_t total = (size_t)n * n_heads * half;
    rope_kernel<<<grid_for(total, 256), 256, 0, cb->stream>>>(x, n, n_heads, head_stride, row_stride, dpos, tab,
                                                              tab + (size_t)r->n_pos * half, half, r->n_pos,
                                                              (int)r->layout);
    CUDA_LAUNCHED(cb, "rope");
}

__global__ void swiglu_kernel(float *h, const float *g, const float *u, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gv = g[i];
        h[i] = gv / (1.0f + expf(-gv)) * u[i];
    }
}

static void cuda_swiglu(struct native_backend *b, float *h, const float *g, const float *u, size_t n)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (!n)
        return;
    cuda_enter(cb);
    swiglu_kernel<<<grid_for(n, 256), 256, 0, cb->stream>>>(h, g, u, n);
    CUDA_LAUNCHED(cb, "swiglu");
}

__global__ void embed_kernel(float *x, const void *__restrict__ table, int dt, int64_t D,
                             const int32_t *__restrict__ ids, int n)
{
    const size_t total = (size_t)n * (size_t)D;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const int t = (int)(i / (size_t)D);
        const int64_t c = (int64_t)(i % (size_t)D);
        x[i] = cuda_load_w(table, (enum native_dtype)dt, (int64_t)ids[t] * D + c);
    }
}

static void cuda_embed(struct native_backend *b, float *x, const struct native_mat *table, const int32_t *ids,
                       int n)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (n <= 0)
        return;
    cuda_enter(cb);
    /* The ids are host memory: check them here, where it is cheap, so no
     * kernel reads outside the table. */
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= table->rows) {
            char text[96];
            snprintf(text, sizeof(text), "embed: token id %d outside the table (%lld rows)", ids[t],
                     (long long)table->rows);
            fprintf(stderr, "cuda: %s\n", text);
            note_error(cb, -2, text);
            return;
        }
    if (table->dtype == NATIVE_F8_E4M3) {
        note_error(cb, -3, "embed: F8_E4M3 embedding tables are not supported");
        return;
    }
    const int32_t *d = cuda_host_ids(cb, ids, n, 0);
    if (!d)
        return;
    const size_t total = (size_t)n * (size_t)table->cols;
    embed_kernel<<<grid_for(total, 256), 256, 0, cb->stream>>>(x, table->data, (int)table->dtype, table->cols,
                                                               d, n);
    CUDA_LAUNCHED(cb, "embed");
}

__global__ void gather_kernel(float *dst, const float *src, const int32_t *__restrict__ rows, int n, int dim)
{
    const size_t total = (size_t)n * (size_t)dim;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const int r = (int)(i / (size_t)dim), c = (int)(i % (size_t)dim);
        dst[i] = src[(size_t)rows[r] * (size_t)dim + c];
    }
}

/* dst must not overlap src (the forward passes gather into a separate
 * buffer): rows run in parallel, unlike the CPU's memmove in order. */
static void cuda_gather(struct native_backend *b, float *dst, const float *src, const int32_t *rows, int n,
                        int dim)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (n <= 0 || dim <= 0)
        return;
    cuda_enter(cb);
    const int32_t *d = cuda_host_ids(cb, rows, n, 0);
    if (!d)
        return;
    gather_kernel<<<grid_for((size_t)n * dim, 256), 256, 0, cb->stream>>>(dst, src, d, n, dim);
    CUDA_LAUNCHED(cb, "gather");
}

/* ------------------------------------------------------------------------ */
/* KV store and dense paged attention                                       */
/* ------------------------------------------------------------------------ */

/* The first float of token t's block in layer `layer`, or NULL when its
 * position has no block in the table (a caller's bug: skipped, never
 * written out of bounds). *off gets the position inside the block. */
static __device__ __forceinline__ float *kv_block_of(float *data, size_t block_stride, size_t layer_off,
                                                     int n_pool, const int32_t *__restrict__ block_off,
                                                     const int32_t *__restrict__ blocks, int s, int p, int *off)
{
    const int b = p / CUDA_KV_BLOCK_SIZE;
    if (p < 0 || b >= block_off[s + 1] - block_off[s])
        return NULL;
    const int id = blocks[block_off[s] + b];
    if (id < 0 || id >= n_pool)
        return NULL;
    *off = p % CUDA_KV_BLOCK_SIZE;
    return data + (size_t)id * block_stride + layer_off;
}

/* Dense: K[i][off] = a[t][i] (K transposed), V[off][i] = bb[t][i].
 * Latent: row[off] = [a[t][0..L) | bb[t][0..R)]. grid.y = token. */
__global__ void kv_store_kernel(float *data, size_t block_stride, size_t layer_off, int n_pool, int latent,
                                int D, int L, int R, const int32_t *__restrict__ pos,
                                const int32_t *__restrict__ seq, const int32_t *__restrict__ block_off,
                                const int32_t *__restrict__ blocks, const float *__restrict__ a, int a_stride,
                                const float *__restrict__ bb, int bb_stride)
{
    const int t = blockIdx.y;
    int off = 0;
    float *blk = kv_block_of(data, block_stride, layer_off, n_pool, block_off, blocks, seq[t], pos[t], &off);
    if (!blk)
        return;
    const float *at = a + (size_t)t * a_stride, *bt = bb + (size_t)t * bb_stride;
    const int width = latent ? L + R : D;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < width; i += gridDim.x * blockDim.x) {
        if (latent) {
            float *row = blk + (size_t)off * (size_t)(L + R);
            row[i] = i < L ? at[i] : bt[i - L];
        } else {
            blk[(size_t)i * CUDA_KV_BLOCK_SIZE + off] = at[i];
            blk[(size_t)CUDA_KV_BLOCK_SIZE * D + (size_t)off * D + i] = bt[i];
        }
    }
}

static void cuda_kv_store(struct native_backend *b, struct native_kv *kv, int layer,
                          const struct native_batch *batch, const float *a, int a_stride, const float *bb,
                          int bb_stride)
{
    struct cuda_backend *cb = cuda_cb(b);
    if (batch->n_tokens <= 0)
        return;
    cuda_enter(cb);
    const struct cuda_batch *m = use_batch(cb, batch);
    if (!m)
        return;
    const int latent = kv->desc.kind == NATIVE_KV_LATENT;
    const int width = latent ? kv->desc.latent_dim + kv->desc.rope_dim : kv->desc.kv_dim;
    const unsigned gx = (unsigned)((width + 255) / 256);
    const dim3 grid(gx, (unsigned)batch->n_tokens);
    kv_store_kernel<<<grid, 256, 0, cb->stream>>>(kv->data, kv->block_stride, (size_t)layer * kv->layer_stride,
                                                  kv->n_blocks, latent, kv->desc.kv_dim, kv->desc.latent_dim,
                                                  kv->desc.rope_dim, m->pos, m->seq, m->block_off, m->blocks, a,
                                                  a_stride, bb, bb_stride);
    CUDA_LAUNCHED(cb, "kv_store");
}

/* Dense causal GQA attention over the paged cache. A block takes up to
 * ATT_MAX_ROWS rows, a row being one (token, query head): the heads of KV
 * group g (blockIdx.y) of a tile of consecutive tokens of one sequence
 * (tiles[blockIdx.x]: first token, count; ATT_MAX_ROWS / heads-per-group
 * tokens at most, one token when a group has more heads than that, the
 * heads then split in chunks). All rows read the same sequence's K/V, so
 * each K/V tile is loaded once for all of them: a prefill chunk's queries
 * share their loads (flash-style), a decode token's heads do.
 *
 * blockIdx.z = split * n_chunks + chunk: split z covers positions
 * [z * ATT_SPLIT, min((z + 1) * ATT_SPLIT, pos + 1)) of each row's context,
 * in tiles of one KV block (16 positions), with the online softmax
 *   s_j = (q . K_j) * scale;  m' = max(m, max_j s_j);  c = e^(m - m')
 *   l' = l c + sum_j e^(s_j - m');  acc' = acc c + sum_j e^(s_j - m') V_j
 * and writes (m, l, acc) for attn_combine_kernel.
 *
 * In a tile, thread (j = tid % 16, slice = tid / 16) sums dims slice,
 * slice + 8, ... of position j's dot product for every row (K is stored
 * transposed, so a slice's 16 threads read 64 contiguous bytes); the eight
 * slices are added in order in shared memory. A row whose context ends
 * before the tile does nothing in it. So a row's arithmetic is the same
 * sequence whatever tile, chunk or batch it runs in: a token gets the same
 * bits alone, decoding, or inside a prefill chunk. */
__global__ void __launch_bounds__(ATT_THREADS)
attn_split_kernel(float *__restrict__ part, const float *__restrict__ q, const float *__restrict__ kvdata,
                  size_t block_stride, size_t layer_off, int n_pool, int kv_dim,
                  const int32_t *__restrict__ tiles, const int32_t *__restrict__ pos,
                  const int32_t *__restrict__ seq, const int32_t *__restrict__ block_off,
                  const int32_t *__restrict__ blocks, int n_heads, int n_kv_heads, int hd, int n_chunks,
                  int max_splits, float scale)
{
    constexpr int BS = CUDA_KV_BLOCK_SIZE;
    constexpr int SLICES = ATT_THREADS / BS;
    constexpr int MR = ATT_MAX_ROWS;
    extern __shared__ float sm[];
    float *qs = sm;                     /* [MR][hd] */
    float *acc = qs + MR * hd;          /* [MR][hd] */
    float *pd = acc + MR * hd;          /* [SLICES][MR][BS] */
    float *sc = pd + SLICES * MR * BS;  /* [MR][BS] */
    float *mrow = sc + MR * BS, *lrow = mrow + MR, *crow = lrow + MR;
    __shared__ int row_t[MR], row_h[MR], row_p1[MR], row_nj[MR];

    const int t0 = tiles[2 * blockIdx.x], nt = tiles[2 * blockIdx.x + 1];
    const int g = blockIdx.y;
    const int chunk = blockIdx.z % n_chunks, split = blockIdx.z / n_chunks;
    const int rep = n_heads / n_kv_heads;
    const int h0 = g * rep + chunk * MR;
    const int nh = min(MR, (g + 1) * rep - h0);     /* heads per token in this block */
    const int rows = nh * nt;
    const int p0 = split * ATT_SPLIT;
    const int tid = threadIdx.x;
    if (nh <= 0 || rows > MR)
        return;

    /* Rows, and the furthest position any of them reaches in this split. */
    int p_end = 0;
    for (int r = 0; r < rows; r++)
        p_end = max(p_end, min(pos[t0 + r / nh] + 1, p0 + ATT_SPLIT));
    if (p_end <= p0)
        return;     /* no row's context reaches this split */
    if (tid < rows) {
        row_t[tid] = t0 + tid / nh;
        row_h[tid] = h0 + tid % nh;
        row_p1[tid] = min(pos[t0 + tid / nh] + 1, p0 + ATT_SPLIT);
        mrow[tid] = -INFINITY;
        lrow[tid] = 0.0f;
    }
    __syncthreads();
    for (int i = tid; i < rows * hd; i += ATT_THREADS) {
        const int r = i / hd;
        qs[i] = q[((size_t)row_t[r] * n_heads + row_h[r]) * hd + i % hd];
        acc[i] = 0.0f;
    }
    const int s = seq[t0];
    __syncthreads();

    for (int pt = p0; pt < p_end; pt += BS) {
        int off = 0;
        const float *blk = kv_block_of(const_cast<float *>(kvdata), block_stride, layer_off, n_pool, block_off,
                                       blocks, s, pt, &off);
        if (!blk)
            break;      /* uniform across the block: every thread read the same table */
        const float *K = blk + (size_t)g * hd * BS;
        const float *V = blk + (size_t)BS * kv_dim + (size_t)g * hd;
        if (tid < rows)
            row_nj[tid] = max(0, min(BS, row_p1[tid] - pt));
        __syncthreads();
        const int j = tid % BS, sl = tid / BS;
        float d[MR];
#pragma unroll
        for (int r = 0; r < MR; r++)
            d[r] = 0.0f;
        for (int i = sl; i < hd; i += SLICES) {
            const float kv = K[(size_t)i * BS + j];
#pragma unroll
            for (int r = 0; r < MR; r++)
                if (r < rows && j < row_nj[r])
                    d[r] = fmaf(qs[r * hd + i], kv, d[r]);
        }
#pragma unroll
        for (int r = 0; r < MR; r++)
            pd[(sl * MR + r) * BS + j] = d[r];
        __syncthreads();
        if (tid < MR * BS) {
            const int r = tid / BS, jj = tid % BS;
            float v = -INFINITY;
            if (r < rows && jj < row_nj[r]) {
                v = 0.0f;
                for (int q2 = 0; q2 < SLICES; q2++)
                    v += pd[(q2 * MR + r) * BS + jj];
                v *= scale;
            }
            sc[r * BS + jj] = v;
        }
        __syncthreads();
        if (tid < rows && row_nj[tid] > 0) {
            const int r = tid, nj = row_nj[r];
            float mb = -INFINITY;
            for (int jj = 0; jj < nj; jj++)
                mb = fmaxf(mb, sc[r * BS + jj]);
            const float mn = fmaxf(mrow[r], mb);
            const float c = expf(mrow[r] - mn);
            float l = lrow[r] * c;
            for (int jj = 0; jj < nj; jj++) {
                const float pv = expf(sc[r * BS + jj] - mn);
                sc[r * BS + jj] = pv;
                l += pv;
            }
            lrow[r] = l;
            mrow[r] = mn;
            crow[r] = c;
        }
        __syncthreads();
        for (int idx = tid; idx < rows * hd; idx += ATT_THREADS) {
            const int r = idx / hd, i = idx % hd, nj = row_nj[r];
            if (nj == 0)
                continue;
            float a = acc[idx] * crow[r];
            for (int jj = 0; jj < nj; jj++)
                a = fmaf(sc[r * BS + jj], V[(size_t)jj * kv_dim + i], a);
            acc[idx] = a;
        }
        __syncthreads();
    }
    /* part[((t * n_heads + h) * max_splits + split)] = (m, l, acc[hd]) for
     * the rows whose context reaches this split. */
    for (int idx = tid; idx < rows * (hd + 2); idx += ATT_THREADS) {
        const int r = idx / (hd + 2), i = idx % (hd + 2);
        if (row_p1[r] <= p0)
            continue;
        float *o = part + (((size_t)row_t[r] * n_heads + row_h[r]) * max_splits + split) * (size_t)(hd + 2);
        o[i] = i == 0 ? mrow[r] : i == 1 ? lrow[r] : acc[r * hd + i - 2];
    }
}

/* out[t][h] = sum_z e^(m_z - M) acc_z / sum_z e^(m_z - M) l_z over the
 * splits z of token t's context, M = max_z m_z; always run, so one split
 * and several give the same arithmetic shape. One block per (t, h). */
__global__ void attn_combine_kernel(float *__restrict__ out, const float *__restrict__ part,
                                    const int32_t *__restrict__ pos, int n_heads, int hd, int max_splits)
{
    const int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    const int ns = (pos[t] + 1 + ATT_SPLIT - 1) / ATT_SPLIT;
    const float *pp = part + ((size_t)t * n_heads + h) * max_splits * (size_t)(hd + 2);
    float M = -INFINITY;
    for (int z = 0; z < ns; z++)
        M = fmaxf(M, pp[(size_t)z * (hd + 2)]);
    float L = 0.0f;
    for (int z = 0; z < ns; z++)
        L += expf(pp[(size_t)z * (hd + 2)] - M) * pp[(size_t)z * (hd + 2) + 1];
    const float inv = 1.0f / L;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float a = 0.0f;
        for (int z = 0; z < ns; z++)
            a += expf(pp[(size_t)z * (hd + 2)] - M) * pp[(size_t)z * (hd + 2) + 2 + i];
        out[((size_t)t * n_heads + h) * hd + i] = a * inv;
    }
}

static void cuda_attention(struct native_backend *b, float *out, const float *q, struct native_kv *kv, int layer,
                           const struct native_batch *batch, int n_heads, int n_kv_heads, int head_dim)
{
    struct cuda_backend *cb = cuda_cb(b);
    const int n = batch->n_tokens;
    if (n <= 0)
        return;
    cuda_enter(cb);
    if (kv->desc.kind != NATIVE_KV_DENSE || head_dim < 1 || head_dim > NATIVE_MAX_HEAD_DIM || n_kv_heads < 1 ||
        n_heads % n_kv_heads != 0) {
        note_error(cb, -4, "attention: shape not supported (dense cache, head_dim <= 256, n_heads % n_kv_heads == 0)");
        return;
    }
    const struct cuda_batch *m = use_batch(cb, batch);
    if (!m)
        return;
    const int rep = n_heads / n_kv_heads;
    const int n_chunks = (rep + ATT_MAX_ROWS - 1) / ATT_MAX_ROWS;
    const int per_tile = rep >= ATT_MAX_ROWS ? 1 : ATT_MAX_ROWS / rep;
    const int max_splits = (m->max_pos + ATT_SPLIT - 1) / ATT_SPLIT;
    if (max_splits < 1)
        return;
    if ((size_t)n_chunks * (size_t)max_splits > 65535 || n_kv_heads > 65535) {
        note_error(cb, -5, "attention: context too long for the grid");
        return;
    }
    /* Token tiles: runs of up to per_tile consecutive tokens of one
     * sequence (a batch keeps a sequence's tokens together), as (first,
     * count) pairs, built from the host batch and copied with the step. */
    if ((size_t)n * 2 > cb->att_tiles_cap) {
        int32_t *nt = (int32_t *)realloc(cb->att_tiles, sizeof(int32_t) * (size_t)n * 2);
        if (!nt) {
            note_error(cb, -6, "attention: out of host memory");
            return;
        }
        cb->att_tiles = nt;
        cb->att_tiles_cap = (size_t)n * 2;
    }
    int n_tiles = 0;
    for (int t = 0; t < n; t++) {
        int32_t *last = n_tiles ? cb->att_tiles + 2 * (n_tiles - 1) : NULL;
        if (last && batch->seq[last[0]] == batch->seq[t] && last[1] < per_tile) {
            last[1]++;
        } else {
            cb->att_tiles[2 * n_tiles] = t;
            cb->att_tiles[2 * n_tiles + 1] = 1;
            n_tiles++;
        }
    }
    const int32_t *tiles = cuda_host_ids(cb, cb->att_tiles, 2 * n_tiles, 0);
    const size_t part_floats = (size_t)n * n_heads * max_splits * (size_t)(head_dim + 2);
    float *part = (float *)cuda_scratch(cb, CUDA_SCRATCH_ATTN, part_floats * sizeof(float));
    if (!tiles || !part)
        return;
    const size_t smem = sizeof(float) * (2 * (size_t)ATT_MAX_ROWS * head_dim +
                                         (size_t)(ATT_THREADS / CUDA_KV_BLOCK_SIZE) * ATT_MAX_ROWS * CUDA_KV_BLOCK_SIZE +
                                         (size_t)ATT_MAX_ROWS * CUDA_KV_BLOCK_SIZE + 3 * ATT_MAX_ROWS);
    const dim3 grid((unsigned)n_tiles, (unsigned)n_kv_heads, (unsigned)(n_chunks * max_splits));
    attn_split_kernel<<<grid, ATT_THREADS, smem, cb->stream>>>(
        part, q, kv->data, kv->block_stride, (size_t)layer * kv->layer_stride, kv->n_blocks, kv->desc.kv_dim,
        tiles, m->pos, m->seq, m->block_off, m->blocks, n_heads, n_kv_heads, head_dim, n_chunks, max_splits,
        1.0f / sqrtf((float)head_dim));
    if (CUDA_LAUNCHED(cb, "attention"))
        return;
    attn_combine_kernel<<<(unsigned)(n * n_heads), head_dim < 128 ? 64 : 128, 0, cb->stream>>>(
        out, part, m->pos, n_heads, head_dim, max_splits);
    CUDA_LAUNCHED(cb, "attention_combine");
}

/* ------------------------------------------------------------------------ */
/* The table, the constructor                                                */
/* ------------------------------------------------------------------------ */

static void cuda_free(struct native_backend *b)
{
    struct cuda_backend *cb = cuda_cb(b);
    cuda_enter(cb);
    cudaStreamSynchronize(cb->stream);
    for (int i = 0; i < CUDA_SCRATCH_COUNT; i++)
        cudaFree(cb->scratch[i]);
    for (int i = 0; i < CUDA_ROPE_TABLES; i++)
        cudaFree(cb->rope[i].dev);
    for (size_t i = 0; i < cb->cap_maps; i++)
        if (cb->maps[i].dev && cb->maps[i].dev != CUDA_MAP_TOMB)
            cudaFree(cb->maps[i].dev);
    free(cb->maps);
    if (cb->plans) {
        for (int i = 0; i < CUDA_LT_PLANS; i++)
            plan_destroy(&cb->plans[i]);
        free(cb->plans);
    }
    cudaFreeHost(cb->batch.staging);
    cudaFree(cb->batch.dev);
    cudaFreeHost(cb->ids_host);
    cudaFree(cb->ids_dev);
    if (cb->ids_done)
        cudaEventDestroy(cb->ids_done);
    if (cb->batch.copied)
        cudaEventDestroy(cb->batch.copied);
    free(cb->att_tiles);
    cudaFree(cb->lt_ws);
    if (cb->lt)
        cublasLtDestroy(cb->lt);
    if (cb->cublas)
        cublasDestroy(cb->cublas);
    if (cb->stream)
        cudaStreamDestroy(cb->stream);
    free(cb);
}

static const struct native_ops cuda_ops = {
    .name = "cuda",
    .buf_alloc = cuda_buf_alloc,
    .buf_free = cuda_buf_free,
    .buf_addr = cuda_buf_addr,
    .upload = cuda_upload,
    .download = cuda_download,
    .synchronize = cuda_synchronize,
    .host_visible = 0,
    .map_weights = cuda_map_weights,
    .unmap_weights = cuda_unmap_weights,
    .kv_new = cuda_kv_new,
    .kv_free = cuda_kv_free,
    .kv_block_bytes = cuda_kv_block_bytes,
    .kv_block_size = CUDA_KV_BLOCK_SIZE,
    .begin_batch = cuda_begin_batch,
    .matmul = cuda_matmul,
    .rmsnorm = cuda_rmsnorm,
    .rope = cuda_rope,
    .kv_store = cuda_kv_store,
    .attention = cuda_attention,
    .mla_attention = cuda_mla_attention,
    .swiglu = cuda_swiglu,
    .embed = cuda_embed,
    .gather = cuda_gather,
    .moe_gate = cuda_moe_gate,
    .moe_experts = cuda_moe_experts,
    .moe_combine = cuda_moe_combine,
    .free = cuda_free,
};

extern "C" int ops_cuda_device_count(char *why, size_t n)
{
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(why, n, "no usable CUDA device: cudaGetDeviceCount: %s", cudaGetErrorString(e));
        return 0;
    }
    if (count < 1)
        snprintf(why, n, "no CUDA device found");
    return count;
}

/* CASCADE_CUDA_GEMM and CASCADE_CUDA_GEMV_MAX: how matmuls run (cuda_internal.h). */
static void read_env(struct cuda_backend *cb)
{
    const char *g = getenv("CASCADE_CUDA_GEMM");
    cb->gemm_parts = CUDA_GEMM_SPLIT3;
    if (g && strcmp(g, "bf16") == 0)
        cb->gemm_parts = CUDA_GEMM_BF16;
    else if (g && strcmp(g, "split2") == 0)
        cb->gemm_parts = CUDA_GEMM_SPLIT2;
    const char *v = getenv("CASCADE_CUDA_GEMV_MAX");
    cb->gemv_max = GEMV_DEFAULT_MAX;
    if (v) {
        const int k = atoi(v);
        if (k >= 0 && k <= 256)
            cb->gemv_max = k;
    }
}

extern "C" struct native_backend *ops_cuda_new(int device, char *err, size_t errlen)
{
    char why[160];
    const int count = ops_cuda_device_count(why, sizeof(why));
    if (count < 1) {
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    if (device < 0 || device >= count) {
        snprintf(err, errlen, "cuda:%d: no such device (%d found)", device, count);
        return NULL;
    }
    struct cuda_backend *cb = (struct cuda_backend *)calloc(1, sizeof(*cb));
    if (!cb) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    cb->base.ops = &cuda_ops;
    cb->device = device;
    cudaDeviceProp prop;
    cudaError_t e;
    if ((e = cudaSetDevice(device)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess)
        goto fail_cuda;
    cb->cc_major = prop.major;
    cb->cc_minor = prop.minor;
    cb->sm_count = prop.multiProcessorCount;
    cb->smem_optin = prop.sharedMemPerBlockOptin;
    snprintf(cb->name, sizeof(cb->name), "cuda:%d (%.80s, sm_%d%d)", device, prop.name, prop.major, prop.minor);
    if (prop.major < 8) {
        snprintf(err, errlen, "%s: compute capability 8.0 or newer is needed", cb->name);
        goto fail;
    }
    if ((e = cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&cb->batch.copied, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&cb->ids_done, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaMalloc(&cb->lt_ws, CUDA_LT_WS_BYTES)) != cudaSuccess)
        goto fail_cuda;
    cb->lt_ws_bytes = CUDA_LT_WS_BYTES;
    if (cublasCreate(&cb->cublas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(cb->cublas, cb->stream) != CUBLAS_STATUS_SUCCESS ||
        cublasLtCreate(&cb->lt) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "%s: cuBLAS failed to start", cb->name);
        goto fail;
    }
    cb->plans = (struct cuda_lt_plan *)calloc(CUDA_LT_PLANS, sizeof(*cb->plans));
    if (!cb->plans) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    read_env(cb);
    return &cb->base;

fail_cuda:
    snprintf(err, errlen, "cuda:%d: %s", device, cudaGetErrorString(e));
fail:
    (void)cudaGetLastError();
    cuda_free(&cb->base);
    return NULL;
}

extern "C" const char *ops_cuda_name(const struct native_backend *b)
{
    return ((const struct cuda_backend *)b)->name;
}

extern "C" int ops_cuda_mem_info(const struct native_backend *b, size_t *free_bytes, size_t *total_bytes)
{
    struct cuda_backend *cb = (struct cuda_backend *)b;
    cuda_enter(cb);
    return cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess ? 0 : -1;
}

extern "C" const char *ops_cuda_error(const struct native_backend *b)
{
    const struct cuda_backend *cb = (const struct cuda_backend *)b;
    return __atomic_load_n(&cb->last_error, __ATOMIC_ACQUIRE) ? cb->error : NULL;
}
