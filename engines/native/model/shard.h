/* shard.h: one rank's view of a model, for tensor and expert parallelism.
 *
 * A shard is a struct native_model that a forward pass (forward.h) runs as
 * it would run a whole model, with the shape of one rank's part: its
 * config says n_heads / tp heads, and so on. What each rank holds:
 *
 *   tensor parallelism (tp ranks, rank r holds the r-th contiguous part)
 *     dense attention  wq rows of its heads; wk, wv rows of its KV heads
 *                      (n_kv_heads / tp of them when n_kv_heads >= tp; else
 *                      the one KV head its query heads use, which several
 *                      ranks then hold alike); wo the columns of its heads
 *     MLA              q_b and kv_b rows of its heads, o_proj their columns;
 *                      q_a, kv_a, their norms and so the latent cache are
 *                      whole on every rank
 *     dense MLP        gate/up rows and down columns of its part of the
 *                      intermediate size; the shared experts alike
 *     the partial outputs of o_proj and of down are summed over the ranks
 *     (comm.h all_reduce_sum) by the forward pass
 *   expert parallelism (ep ranks): the routed experts, rank r holding the
 *     contiguous range [r * E / ep, (r + 1) * E / ep); the router is whole
 *   whole on every rank: embedding, LM head (the logits need no gather),
 *     norms, the router; with ep = 1 every routed expert (each rank runs all
 *     of them for every token).
 *
 * Memory: row ranges of a row-major matrix are contiguous, so a shard points
 * into the model's mapping; column ranges are not, and are copied once into
 * memory the shard owns (64-byte aligned), as are FP8 block scales for them.
 * FP8 keeps its 128x128 blocks when the cut falls on a block boundary, or
 * when the part lies inside one block; otherwise that part is dequantized to
 * F32 (exact per weight: an e4m3 value times its float scale, rounded once),
 * and native_shard_dequantized() counts such matrices.
 *
 * The model must outlive its shards. A shard is immutable once made; any
 * thread may read it.
 */
#ifndef CASCADE_NATIVE_SHARD_H
#define CASCADE_NATIVE_SHARD_H

#include "engines/native/model/model.h"

#include <stddef.h>

struct native_shard;

/* Rank `rank`'s view of m for tensor parallelism over tp ranks and expert
 * parallelism over ep ranks (each 1 or world; rank < world = max(tp, ep)).
 * NULL and a message in err when the shape does not split that way (heads,
 * KV heads, intermediate sizes or experts not divisible) or memory is short. */
struct native_shard *native_shard_new(const struct native_model *m, int rank, int tp, int ep,
                                      char *err, size_t errlen);
void native_shard_free(struct native_shard *s);

/* The view, for native_forward_new() and native_forward_kv_desc(). */
const struct native_model *native_shard_model(const struct native_shard *s);

/* Matrices whose FP8 blocks the cut split, so that the shard holds them as F32. */
int native_shard_dequantized(const struct native_shard *s);

#endif
