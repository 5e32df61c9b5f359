/* comm_nccl.c: comm.h over NCCL, one GPU per rank in one process; see
 * comm_nccl.h. Plain C over the CUDA runtime API and nccl.h. */
#include "engines/native/backend/cuda/comm_nccl.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct nccl_group {
    int world;
    int refs;                       /* handles not yet freed; under mu */
    pthread_mutex_t mu;
};

struct comm_nccl {
    struct native_comm base;        /* first: comm.h's handle */
    struct nccl_group *g;
    ncclComm_t nc;
    int device;
    cudaStream_t stream;
    int32_t *d_counts;              /* device: [world] sent, [world] received, then 1 float */
};

static int nccl_ok(const struct comm_nccl *c, ncclResult_t r, const char *what)
{
    if (r == ncclSuccess)
        return 0;
    fprintf(stderr, "comm_nccl: rank %d (cuda:%d): %s: %s\n", c->base.rank, c->device, what,
            ncclGetErrorString(r));
    return -1;
}

static int cuda_ok(const struct comm_nccl *c, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 0;
    fprintf(stderr, "comm_nccl: rank %d (cuda:%d): %s: %s\n", c->base.rank, c->device, what,
            cudaGetErrorString(e));
    return -1;
}

/* The rank's device current on this thread, and its backend's writes done. */
static int enter(struct comm_nccl *c, struct native_backend *b)
{
    if (b)
        b->ops->synchronize(b);
    return cuda_ok(c, cudaSetDevice(c->device), "cudaSetDevice");
}

static int finish(struct comm_nccl *c)
{
    return cuda_ok(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
}

static int nccl_all_reduce_sum(struct native_comm *base, struct native_backend *b, float *buf,
                               size_t n)
{
    struct comm_nccl *c = (struct comm_nccl *)base;
    /* World 1 goes through NCCL too: that is how a one-GPU machine checks it. */
    if (n == 0)
        return 0;
    if (enter(c, b) ||
        nccl_ok(c, ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, c->nc, c->stream), "ncclAllReduce"))
        return -1;
    return finish(c);
}

static int nccl_exchange_counts(struct native_comm *base, struct native_backend *b,
                                const int32_t *send, int32_t *recv)
{
    struct comm_nccl *c = (struct comm_nccl *)base;
    const int W = base->world;
    if (enter(c, b) ||
        cuda_ok(c, cudaMemcpyAsync(c->d_counts, send, sizeof(int32_t) * (size_t)W,
                                   cudaMemcpyHostToDevice, c->stream), "counts to the device") ||
        nccl_ok(c, ncclGroupStart(), "ncclGroupStart"))
        return -1;
    int rc = 0;
    for (int p = 0; p < W && rc == 0; p++)
        rc = nccl_ok(c, ncclSend(c->d_counts + p, 1, ncclInt32, p, c->nc, c->stream), "ncclSend") ||
             nccl_ok(c, ncclRecv(c->d_counts + W + p, 1, ncclInt32, p, c->nc, c->stream),
                     "ncclRecv");
    if (nccl_ok(c, ncclGroupEnd(), "ncclGroupEnd") || rc)
        return -1;
    if (cuda_ok(c, cudaMemcpyAsync(recv, c->d_counts + W, sizeof(int32_t) * (size_t)W,
                                   cudaMemcpyDeviceToHost, c->stream), "counts to the host"))
        return -1;
    return finish(c);
}

static int nccl_all_to_all(struct native_comm *base, struct native_backend *b, const void *send,
                           const int32_t *send_counts, const int32_t *send_displs, void *recv,
                           const int32_t *recv_counts, const int32_t *recv_displs,
                           size_t row_bytes)
{
    struct comm_nccl *c = (struct comm_nccl *)base;
    const int W = base->world, r = base->rank;
    if (enter(c, b))
        return -1;
    if (send_counts[r] != recv_counts[r]) {
        fprintf(stderr, "comm_nccl: rank %d sends itself %d rows but expects %d\n", r,
                send_counts[r], recv_counts[r]);
        return -1;
    }
    /* A rank's own rows: a device copy, unless they already are in place. */
    const char *self_src = (const char *)send + (size_t)send_displs[r] * row_bytes;
    char *self_dst = (char *)recv + (size_t)recv_displs[r] * row_bytes;
    if (send_counts[r] > 0 && self_src != self_dst &&
        cuda_ok(c, cudaMemcpyAsync(self_dst, self_src, (size_t)send_counts[r] * row_bytes,
                                   cudaMemcpyDeviceToDevice, c->stream), "own rows"))
        return -1;
    if (nccl_ok(c, ncclGroupStart(), "ncclGroupStart"))
        return -1;
    int rc = 0;
    for (int p = 0; p < W && rc == 0; p++) {
        if (p == r)
            continue;
        if (send_counts[p] > 0)
            rc = nccl_ok(c, ncclSend((const char *)send + (size_t)send_displs[p] * row_bytes,
                                     (size_t)send_counts[p] * row_bytes, ncclUint8, p, c->nc,
                                     c->stream), "ncclSend");
        if (rc == 0 && recv_counts[p] > 0)
            rc = nccl_ok(c, ncclRecv((char *)recv + (size_t)recv_displs[p] * row_bytes,
                                     (size_t)recv_counts[p] * row_bytes, ncclUint8, p, c->nc,
                                     c->stream), "ncclRecv");
    }
    if (nccl_ok(c, ncclGroupEnd(), "ncclGroupEnd") || rc)
        return -1;
    return finish(c);
}

static int nccl_barrier(struct native_comm *base)
{
    struct comm_nccl *c = (struct comm_nccl *)base;
    float *one = (float *)(c->d_counts + 2 * base->world);
    if (enter(c, NULL) ||
        nccl_ok(c, ncclAllReduce(one, one, 1, ncclFloat, ncclSum, c->nc, c->stream), "barrier"))
        return -1;
    return finish(c);
}

static void nccl_free(struct native_comm *base)
{
    struct comm_nccl *c = (struct comm_nccl *)base;
    struct nccl_group *g = c->g;
    cudaSetDevice(c->device);
    if (c->nc)
        ncclCommDestroy(c->nc);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    cudaFree(c->d_counts);
    free(c);
    pthread_mutex_lock(&g->mu);
    int last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
        pthread_mutex_destroy(&g->mu);
        free(g);
    }
}

static const struct native_comm_ops nccl_comm_ops = {
    .name = "nccl",
    .all_reduce_sum = nccl_all_reduce_sum,
    .exchange_counts = nccl_exchange_counts,
    .all_to_all = nccl_all_to_all,
    .barrier = nccl_barrier,
    .free = nccl_free,
};

int native_comm_nccl_new_all(int world, const int *devices, struct native_comm **out, char *err,
                             size_t errlen)
{
    ncclComm_t nc[NATIVE_MAX_WORLD];
    if (world < 1 || world > NATIVE_MAX_WORLD) {
        snprintf(err, errlen, "NCCL: %d ranks (1..%d)", world, NATIVE_MAX_WORLD);
        return -1;
    }
    struct nccl_group *g = calloc(1, sizeof(*g));
    if (!g || pthread_mutex_init(&g->mu, NULL) != 0) {
        free(g);
        snprintf(err, errlen, "NCCL: out of memory");
        return -1;
    }
    g->world = world;
    ncclResult_t nr = ncclCommInitAll(nc, world, devices);
    if (nr != ncclSuccess) {
        snprintf(err, errlen, "ncclCommInitAll over %d GPUs: %s", world, ncclGetErrorString(nr));
        pthread_mutex_destroy(&g->mu);
        free(g);
        return -1;
    }
    /* Every rank gets a handle now, so a failure below unwinds through
     * nccl_free() alone. */
    g->refs = world;
    int r = 0, bad = 0;
    for (; r < world; r++) {
        struct comm_nccl *c = calloc(1, sizeof(*c));
        if (!c) {
            snprintf(err, errlen, "NCCL: out of memory");
            bad = 1;
            for (int q = r; q < world; q++)
                ncclCommDestroy(nc[q]);
            g->refs = r;
            break;
        }
        c->base = (struct native_comm){&nccl_comm_ops, r, world};
        c->g = g;
        c->nc = nc[r];
        c->device = devices[r];
        out[r] = &c->base;
        cudaError_t e = cudaSetDevice(c->device);
        if (e == cudaSuccess)
            e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
        if (e == cudaSuccess)
            e = cudaMalloc((void **)&c->d_counts, sizeof(int32_t) * (size_t)(2 * world + 1));
        if (e != cudaSuccess && !bad) {
            snprintf(err, errlen, "cuda:%d: %s", c->device, cudaGetErrorString(e));
            bad = 1;
        }
    }
    if (bad) {
        const int made = g->refs;
        for (int q = 0; q < made; q++)
            nccl_free(out[q]);
        if (made == 0) {
            pthread_mutex_destroy(&g->mu);
            free(g);
        }
        return -1;
    }
    return 0;
}
