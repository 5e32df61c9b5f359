/* comm_cpu.c: the collectives of comm.h for ranks that are threads of one
 * process, over host memory.
 *
 * Every collective is "publish, meet, pull, meet": a rank writes the
 * addresses of its buffers into its slot of the shared group, waits at the
 * barrier until every rank has done so, then reads what it needs straight
 * from the other ranks' buffers, and meets the others once more before
 * returning, so no rank reuses a buffer that a peer may still be reading.
 * No data is copied through the group; its only state is the slots and the
 * barrier, so a call allocates nothing.
 *
 * The barrier is a mutex and a condition variable with a generation count,
 * reusable at once; blocking rather than spinning, because CI runs four
 * ranks on two cores.
 */
#include "engines/native/backend/comm.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What rank r published for the collective in progress. */
struct slot {
    float *buf;                 /* all_reduce_sum */
    size_t n;
    const int32_t *counts;      /* exchange_counts: what r sends to each peer */
    const char *send;           /* all_to_all */
    const int32_t *send_counts, *send_displs;
    size_t row_bytes;
};

struct group {
    int world;
    int refs;                   /* handles not yet freed; under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int waiting;                /* ranks at the barrier now */
    unsigned long generation;   /* barrier rounds completed */
    struct slot slot[NATIVE_MAX_WORLD];
};

struct comm_cpu {
    struct native_comm base;    /* first: comm.h's handle */
    struct group *g;
};

static void group_wait(struct group *g)
{
    pthread_mutex_lock(&g->mu);
    unsigned long gen = g->generation;
    if (++g->waiting == g->world) {
        g->waiting = 0;
        g->generation++;
        pthread_cond_broadcast(&g->cv);
    } else {
        while (gen == g->generation)
            pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
}

static int cpu_barrier(struct native_comm *c)
{
    group_wait(((struct comm_cpu *)c)->g);
    return 0;
}

/* The ops that wrote the buffers are finished before a peer reads them. */
static void wait_backend(struct native_backend *b)
{
    if (b)
        b->ops->synchronize(b);
}

/* In place: a reduce-scatter then an all-gather. Rank r owns the elements
 * [n*r/W, n*(r+1)/W): it sums them over every rank's buffer, in rank order,
 * into its own buffer (no other rank touches that range of any buffer in this
 * phase), then, after the barrier, copies every other rank's range from
 * that rank's buffer into its own. */
static int cpu_all_reduce_sum(struct native_comm *c, struct native_backend *b, float *buf, size_t n)
{
    struct group *g = ((struct comm_cpu *)c)->g;
    const int W = c->world, r = c->rank;
    if (W == 1)
        return 0;
    wait_backend(b);
    g->slot[r].buf = buf;
    g->slot[r].n = n;
    group_wait(g);
    for (int q = 0; q < W; q++) {
        if (g->slot[q].n != n) {
            fprintf(stderr, "comm_cpu: all_reduce_sum of %zu floats on rank %d, %zu on rank %d\n",
                    n, r, g->slot[q].n, q);
            group_wait(g);
            group_wait(g);
            return -1;
        }
    }
    const size_t lo = n * (size_t)r / (size_t)W, hi = n * (size_t)(r + 1) / (size_t)W;
    for (size_t i = lo; i < hi; i++) {
        float s = g->slot[0].buf[i];
        for (int q = 1; q < W; q++)
            s += g->slot[q].buf[i];
        buf[i] = s;
    }
    group_wait(g);
    for (int q = 0; q < W; q++) {
        if (q == r)
            continue;
        const size_t qlo = n * (size_t)q / (size_t)W, qhi = n * (size_t)(q + 1) / (size_t)W;
        memcpy(buf + qlo, g->slot[q].buf + qlo, sizeof(float) * (qhi - qlo));
    }
    group_wait(g);
    return 0;
}

static int cpu_exchange_counts(struct native_comm *c, struct native_backend *b,
                               const int32_t *send, int32_t *recv)
{
    struct group *g = ((struct comm_cpu *)c)->g;
    const int W = c->world, r = c->rank;
    (void)b;    /* counts are host memory */
    g->slot[r].counts = send;
    group_wait(g);
    for (int p = 0; p < W; p++)
        recv[p] = g->slot[p].counts[r];
    group_wait(g);
    return 0;
}

/* Each rank pulls its rows from every peer's send buffer; the peer's counts
 * must agree with what the receiver expects (exchange_counts made them). */
static int cpu_all_to_all(struct native_comm *c, struct native_backend *b, const void *send,
                          const int32_t *send_counts, const int32_t *send_displs, void *recv,
                          const int32_t *recv_counts, const int32_t *recv_displs,
                          size_t row_bytes)
{
    struct group *g = ((struct comm_cpu *)c)->g;
    const int W = c->world, r = c->rank;
    int rc = 0;
    wait_backend(b);
    g->slot[r].send = send;
    g->slot[r].send_counts = send_counts;
    g->slot[r].send_displs = send_displs;
    g->slot[r].row_bytes = row_bytes;
    group_wait(g);
    for (int p = 0; p < W; p++) {
        const struct slot *s = &g->slot[p];
        if (s->row_bytes != row_bytes || s->send_counts[r] != recv_counts[p]) {
            fprintf(stderr, "comm_cpu: rank %d expects %d rows of %zu bytes from rank %d, which "
                            "sends %d of %zu\n", r, recv_counts[p], row_bytes, p,
                    s->send_counts[r], s->row_bytes);
            rc = -1;
            continue;
        }
        const char *src = s->send + (size_t)s->send_displs[r] * row_bytes;
        char *dst = (char *)recv + (size_t)recv_displs[p] * row_bytes;
        /* A rank's rows sent to the same place in itself (all-gather in place). */
        if (src != dst && recv_counts[p] > 0)
            memcpy(dst, src, (size_t)recv_counts[p] * row_bytes);
    }
    group_wait(g);
    return rc;
}

static void cpu_free(struct native_comm *c)
{
    struct comm_cpu *cc = (struct comm_cpu *)c;
    struct group *g = cc->g;
    pthread_mutex_lock(&g->mu);
    int last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    free(cc);
    if (last) {
        pthread_cond_destroy(&g->cv);
        pthread_mutex_destroy(&g->mu);
        free(g);
    }
}

static const struct native_comm_ops cpu_comm_ops = {
    .name = "cpu",
    .all_reduce_sum = cpu_all_reduce_sum,
    .exchange_counts = cpu_exchange_counts,
    .all_to_all = cpu_all_to_all,
    .barrier = cpu_barrier,
    .free = cpu_free,
};

int native_comm_cpu_new_all(int world, struct native_comm **out)
{
    if (world < 1 || world > NATIVE_MAX_WORLD)
        return -1;
    struct group *g = calloc(1, sizeof(*g));
    if (!g)
        return -1;
    g->world = world;
    if (pthread_mutex_init(&g->mu, NULL) != 0)
        goto fail_mu;
    if (pthread_cond_init(&g->cv, NULL) != 0)
        goto fail_cv;
    int r = 0;
    for (; r < world; r++) {
        struct comm_cpu *cc = calloc(1, sizeof(*cc));
        if (!cc)
            goto fail_ranks;
        cc->base = (struct native_comm){&cpu_comm_ops, r, world};
        cc->g = g;
        out[r] = &cc->base;
    }
    g->refs = world;
    return 0;

fail_ranks:
    while (r-- > 0)
        free(out[r]);
    pthread_cond_destroy(&g->cv);
fail_cv:
    pthread_mutex_destroy(&g->mu);
fail_mu:
    free(g);
    return -1;
}
