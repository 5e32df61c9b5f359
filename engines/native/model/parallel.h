/* parallel.h: one model run by several ranks in this process, tensor and
 * expert parallel, behind the ordinary backend and forward interfaces.
 *
 * native_parallel_new() makes a group "backend" out of one backend and one
 * comm (comm.h) per rank: it shards the model (shard.h) for each rank. The
 * group is handed to the scheduler, or to cascade-score, like any backend:
 *   - its KV cache (kv_new) is one cache per rank, each laid out by that
 *     rank's backend for that rank's shard (a dense model's KV heads are
 *     split over tensor ranks; MLA's latent is whole on every rank), all
 *     with the same block numbers, so the runtime's block tables serve all;
 *     kv_block_bytes is what one block costs over all ranks together;
 *   - native_forward_new() on it builds one forward pass per rank (dense.c
 *     or deepseek_v3.c on the rank's shard, with the rank's comm) and one
 *     thread per rank but the first; native_forward_run() hands the batch to
 *     every rank, runs rank 0 on the caller's thread, waits for all, and
 *     returns rank 0's logits (every rank computes the same ones);
 *   - buffers and map_weights go to rank 0's backend; it has no compute ops
 *     of its own (they are NULL): ops run on the ranks' backends.
 *
 * world = max(tp, ep), and each of tp and ep is 1 or world:
 *   tp = world: attention heads, the dense MLPs and the shared experts are
 *               split; each rank's o_proj and down give partial sums, and the
 *               ranks add them up (all_reduce_sum) into the residual stream;
 *   ep = world: the routed experts are split into contiguous ranges; in each
 *               MoE layer every rank routes its share of the batch's tokens,
 *               sends each (token, expert) row to the expert's rank (counts
 *               first, then rows), gets the expert outputs back, sums them
 *               into its tokens in routing order, and shares the result
 *               (deepseek_v3.c says how).
 * The embedding and LM head stay whole on every rank, so no rank needs a
 * gather of the logits.
 *
 * Threads: like any backend, the group is driven by one thread at a time;
 * the rank threads it starts only run forward passes inside
 * native_forward_run().
 */
#ifndef CASCADE_NATIVE_PARALLEL_H
#define CASCADE_NATIVE_PARALLEL_H

#include "engines/native/backend/comm.h"
#include "engines/native/backend/device.h"
#include "engines/native/backend/ops.h"
#include "engines/native/model/forward.h"
#include "engines/native/model/model.h"

#include <stddef.h>

struct native_parallel_config {
    int tp, ep;
    /* [world] each: the ranks' backends and comms (comms[r]->rank == r).
     * The group takes them over, also when it fails. */
    struct native_backend **backends;
    struct native_comm **comms;
};

/* The group for model m (which must outlive it). NULL and a message in err
 * when the model does not split that way, or a rank cannot hold its part. */
struct native_backend *native_parallel_new(const struct native_model *m,
                                           const struct native_parallel_config *cfg, char *err,
                                           size_t errlen);

/* The group for tp and ep over device d (backend/device.h): world =
 * max(tp, ep) CPU backends of `threads` threads each with the CPU comm, or
 * one GPU per rank (d names exactly world GPUs) with NCCL. tp/ep 0 mean the
 * default: the number of GPUs d names (1 on the CPU), and for ep 1 when the
 * model has no experts. A world of 1 is the plain backend of device.h. NULL
 * and the reason in err. */
struct native_backend *native_parallel_on_device(const struct native_model *m,
                                                 const struct native_device *d, int tp, int ep,
                                                 int threads, unsigned cpu_flags, char *err,
                                                 size_t errlen);

/* The first device error of any rank (device.h's native_device_error()),
 * or NULL; for any backend. */
const char *native_parallel_error(const struct native_backend *b);

/* For start-up lines: "tp 2, ep 2: 2 x cpu (avx2, 1 threads)", or
 * device.h's description of any other backend. */
void native_parallel_describe(const struct native_backend *b, char *buf, size_t n);

/* 1 when b was made by native_parallel_new(). */
int native_parallel_is(const struct native_backend *b);

/* The ranks in b's group (1 for any other backend). */
int native_parallel_world(const struct native_backend *b);

/* forward.c: the multi-rank forward pass over a group (m must be the group's). */
struct native_forward *native_forward_parallel_new(const struct native_model *m,
                                                   struct native_backend *b,
                                                   const struct native_forward_opts *o, char *err,
                                                   size_t errlen);

#endif
