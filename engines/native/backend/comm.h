/* comm.h: collective communication between the ranks of one process, for
 * tensor and expert parallelism (model/parallel.h).
 *
 * A group of `world` ranks is made at once; each rank gets its own struct
 * native_comm, which only that rank's thread uses. Every call below is a
 * collective: all ranks of the group make the same calls in the same order
 * (with their own buffers), and a call returns on a rank once that rank's
 * part is done. Buffers are backend buffers of the rank's own backend
 * (ops.h): host memory for the CPU backend, device memory for CUDA. A
 * rank's backend must have finished the ops that wrote a buffer before the
 * buffer goes into a call; the caller passes its backend so that an
 * implementation can wait for it (or order itself after it on the device).
 *
 *   all_reduce_sum   buf[i] = sum over ranks of buf[i], in place, for n
 *                    floats. The sum is taken in rank order (rank 0's value,
 *                    plus rank 1's, ...), so every rank gets the same bits and
 *                    the result never depends on timing (the CPU
 *                    implementation; NCCL's order is NCCL's).
 *   exchange_counts  the first half of an all-to-all: rank r tells each peer
 *                    p how many rows it will send, send[p], and learns how
 *                    many it will get, recv[p] = what p said to r. Counts
 *                    may be 0, and a rank may send to itself.
 *   all_to_all       the second half (MPI's alltoallv): rank r sends
 *                    send_counts[p] rows of row_bytes bytes, starting at row
 *                    send_displs[p] of send, to each peer p, and receives
 *                    recv_counts[p] rows from p at row recv_displs[p] of recv.
 *                    In NCCL terms, one group (ncclGroupStart, an ncclSend and
 *                    an ncclRecv per peer with rows to move, ncclGroupEnd).
 *                    Regions that one call reads and writes must not overlap,
 *                    except a rank's own rows sent to itself to the same
 *                    place (an all-gather in place), which is left as it is.
 *   barrier          returns once every rank has called it.
 *
 * Errors: a collective that fails leaves the ranks out of step, which no rank
 * can repair alone; the calls return 0, or -1 after logging to stderr, and
 * the caller stops the process (model/parallel.c does).
 *
 * Implementations: comm_cpu.c (ranks as threads of this process, shared
 * memory; native_comm_cpu_new_all below) and backend/cuda/comm_nccl.c (one
 * GPU per rank, ncclCommInitAll; comm_nccl.h).
 */
#ifndef CASCADE_NATIVE_COMM_H
#define CASCADE_NATIVE_COMM_H

#include "engines/native/backend/ops.h"

#include <stddef.h>
#include <stdint.h>

#define NATIVE_MAX_WORLD 64

struct native_comm;

struct native_comm_ops {
    const char *name;
    int (*all_reduce_sum)(struct native_comm *c, struct native_backend *b, float *buf, size_t n);
    int (*exchange_counts)(struct native_comm *c, struct native_backend *b, const int32_t *send,
                           int32_t *recv);
    int (*all_to_all)(struct native_comm *c, struct native_backend *b, const void *send,
                      const int32_t *send_counts, const int32_t *send_displs, void *recv,
                      const int32_t *recv_counts, const int32_t *recv_displs, size_t row_bytes);
    int (*barrier)(struct native_comm *c);
    /* Frees this rank's handle; the group's shared state goes with the last. */
    void (*free)(struct native_comm *c);
};

/* Every implementation's handle starts with this. */
struct native_comm {
    const struct native_comm_ops *ops;
    int rank, world;
};

static inline int native_comm_all_reduce_sum(struct native_comm *c, struct native_backend *b,
                                             float *buf, size_t n)
{
    return c->ops->all_reduce_sum(c, b, buf, n);
}

static inline int native_comm_exchange_counts(struct native_comm *c, struct native_backend *b,
                                              const int32_t *send, int32_t *recv)
{
    return c->ops->exchange_counts(c, b, send, recv);
}

static inline int native_comm_all_to_all(struct native_comm *c, struct native_backend *b,
                                         const void *send, const int32_t *send_counts,
                                         const int32_t *send_displs, void *recv,
                                         const int32_t *recv_counts, const int32_t *recv_displs,
                                         size_t row_bytes)
{
    return c->ops->all_to_all(c, b, send, send_counts, send_displs, recv, recv_counts,
                              recv_displs, row_bytes);
}

static inline int native_comm_barrier(struct native_comm *c)
{
    return c->ops->barrier(c);
}

static inline void native_comm_free(struct native_comm *c)
{
    if (c)
        c->ops->free(c);
}

/* comm_cpu.c: a group of world ranks (1..NATIVE_MAX_WORLD) as threads of
 * this process, over host buffers (the CPU backend's). out[r] is rank r's
 * handle. 0, or -1 when memory or a mutex is short. */
int native_comm_cpu_new_all(int world, struct native_comm **out);

#endif
