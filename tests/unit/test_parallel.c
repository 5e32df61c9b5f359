/* test_parallel: the CPU collectives (comm.h) at world sizes 1, 2 and 4.
 *
 * Each rank is a thread; what it finds wrong it counts in its own slot, and
 * the main thread turns the counts into CHECKs (test.h is single-threaded). */
#include "engines/native/backend/comm.h"

#include "test.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- the collectives alone ---- */

struct rank_arg {
    struct native_comm *c;
    int bad;            /* checks this rank saw fail */
};

/* A value whose float sums depend on their order, so a reduction that does
 * not add in rank order shows. */
static float val(int rank, size_t i)
{
    static const float mag[4] = {1e8f, 1.0f, -1e8f, 3.25f};
    return mag[(rank + (int)i) % 4] + (float)(i % 7) * 0.125f - (float)rank;
}

static const size_t reduce_sizes[] = {0, 1, 3, 1000, 4097};

static void *reduce_rank(void *p)
{
    struct rank_arg *a = p;
    const int W = a->c->world, r = a->c->rank;
    for (size_t k = 0; k < sizeof(reduce_sizes) / sizeof(reduce_sizes[0]); k++) {
        const size_t n = reduce_sizes[k];
        float *buf = malloc(sizeof(float) * (n + 1));
        for (size_t i = 0; i < n; i++)
            buf[i] = val(r, i);
        if (native_comm_all_reduce_sum(a->c, NULL, buf, n) != 0)
            a->bad++;
        for (size_t i = 0; i < n; i++) {
            float s = val(0, i);
            for (int q = 1; q < W; q++)
                s += val(q, i);
            if (memcmp(&s, &buf[i], sizeof(float)) != 0) {
                if (a->bad++ < 3)
                    fprintf(stderr, "rank %d of %d: all_reduce n=%zu [%zu] = %.9g, want %.9g\n",
                            r, W, n, i, (double)buf[i], (double)s);
            }
        }
        free(buf);
    }
    return NULL;
}

/* Rows rank src sends to dst: uneven, zero for some pairs, a rank's rows to
 * itself included. */
static int n_rows(int src, int dst, int round)
{
    return (src * 3 + dst * 5 + round) % 4;
}

/* Row i from src to dst, 3 ints wide: who, to whom, which. */
static void *a2a_rank(void *p)
{
    struct rank_arg *a = p;
    const int W = a->c->world, r = a->c->rank;
    for (int round = 0; round < 3; round++) {
        int32_t send_counts[NATIVE_MAX_WORLD], send_displs[NATIVE_MAX_WORLD];
        int32_t recv_counts[NATIVE_MAX_WORLD], recv_displs[NATIVE_MAX_WORLD];
        /* Peers' rows go in the send buffer in reverse rank order, with a
         * gap before each, so the displacements matter. */
        int off = 0;
        for (int p = W - 1; p >= 0; p--) {
            off += 1;
            send_counts[p] = n_rows(r, p, round);
            send_displs[p] = off;
            off += send_counts[p];
        }
        int32_t *send = calloc((size_t)off + 1, 3 * sizeof(int32_t));
        for (int p = 0; p < W; p++)
            for (int i = 0; i < send_counts[p]; i++) {
                int32_t *row = send + 3 * (size_t)(send_displs[p] + i);
                row[0] = r, row[1] = p, row[2] = i;
            }
        if (native_comm_exchange_counts(a->c, NULL, send_counts, recv_counts) != 0)
            a->bad++;
        int total = 0;
        for (int p = 0; p < W; p++) {
            if (recv_counts[p] != n_rows(p, r, round))
                a->bad++;
            recv_displs[p] = total;
            total += recv_counts[p];
        }
        int32_t *recv = calloc((size_t)total + 1, 3 * sizeof(int32_t));
        if (native_comm_all_to_all(a->c, NULL, send, send_counts, send_displs, recv, recv_counts,
                                   recv_displs, 3 * sizeof(int32_t)) != 0)
            a->bad++;
        for (int p = 0; p < W; p++)
            for (int i = 0; i < recv_counts[p]; i++) {
                const int32_t *row = recv + 3 * (size_t)(recv_displs[p] + i);
                if (row[0] != p || row[1] != r || row[2] != i) {
                    if (a->bad++ < 3)
                        fprintf(stderr, "rank %d of %d: row %d from %d reads (%d,%d,%d)\n", r, W,
                                i, p, row[0], row[1], row[2]);
                }
            }
        free(send);
        free(recv);
    }

    /* An all-gather in place: each rank's own rows of one buffer go to the
     * same place in every rank's copy of it. */
    enum { ROWS = 7 };
    float x[ROWS];
    int32_t counts[NATIVE_MAX_WORLD], displs[NATIVE_MAX_WORLD], rc[NATIVE_MAX_WORLD],
        rd[NATIVE_MAX_WORLD];
    const int lo = ROWS * r / W, hi = ROWS * (r + 1) / W;
    for (int i = 0; i < ROWS; i++)
        x[i] = i >= lo && i < hi ? (float)(100 * i + 1) : -1.0f;
    for (int p = 0; p < W; p++) {
        counts[p] = hi - lo;
        displs[p] = lo;
        rd[p] = ROWS * p / W;
        rc[p] = ROWS * (p + 1) / W - rd[p];
    }
    if (native_comm_all_to_all(a->c, NULL, x, counts, displs, x, rc, rd, sizeof(float)) != 0)
        a->bad++;
    for (int i = 0; i < ROWS; i++)
        if (x[i] != (float)(100 * i + 1))
            a->bad++;

    /* Mismatched counts are refused on the rank that sees them, and every
     * rank still returns (no rank is left at a barrier). */
    if (W > 1) {
        int32_t sc[NATIVE_MAX_WORLD] = {0}, sd[NATIVE_MAX_WORLD] = {0};
        int32_t rcv[NATIVE_MAX_WORLD] = {0}, rdp[NATIVE_MAX_WORLD] = {0};
        float one = 1.0f, got = 0.0f;
        if (r == 1)
            sc[0] = 1;      /* rank 0 does not expect it */
        int ret = native_comm_all_to_all(a->c, NULL, &one, sc, sd, &got, rcv, rdp, sizeof(float));
        if ((r == 0) != (ret != 0))
            a->bad++;
    }
    native_comm_barrier(a->c);
    return NULL;
}

static void run_ranks(int world, void *(*fn)(void *), const char *what)
{
    struct native_comm *comms[NATIVE_MAX_WORLD];
    struct rank_arg args[NATIVE_MAX_WORLD];
    pthread_t th[NATIVE_MAX_WORLD];
    CHECK(native_comm_cpu_new_all(world, comms) == 0);
    for (int r = 0; r < world; r++) {
        args[r] = (struct rank_arg){comms[r], 0};
        CHECK(comms[r]->rank == r && comms[r]->world == world);
        pthread_create(&th[r], NULL, fn, &args[r]);
    }
    int bad = 0;
    for (int r = 0; r < world; r++) {
        pthread_join(th[r], NULL);
        bad += args[r].bad;
        native_comm_free(comms[r]);
    }
    if (bad)
        fprintf(stderr, "%s at world %d: %d wrong\n", what, world, bad);
    CHECK(bad == 0);
}

static void test_comm(void)
{
    static const int worlds[] = {1, 2, 4};
    for (size_t i = 0; i < 3; i++) {
        run_ranks(worlds[i], reduce_rank, "all_reduce_sum");
        run_ranks(worlds[i], a2a_rank, "all_to_all");
    }
    struct native_comm *c[1];
    CHECK(native_comm_cpu_new_all(0, c) != 0);
    CHECK(native_comm_cpu_new_all(NATIVE_MAX_WORLD + 1, c) != 0);
}

int main(void)
{
    test_comm();
    TEST_MAIN_END();
}
