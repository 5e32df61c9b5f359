/* ops_cpu_moe.c: DeepSeek-V3's MoE routing and its grouped routed experts
 * on the CPU; the ops moe_gate, moe_experts and moe_combine of ops.h.
 *
 * Routing (struct native_moe_gate) is a few hundred comparisons per token,
 * done on the calling thread. The experts are the cost: each token visits
 * top_k of them, and a batch's tokens are grouped per expert so that each
 * expert's weights stream from memory once per step for all the tokens that
 * chose it (the backend's own matmul, which splits rows over the pool).
 *
 * Determinism: a token's output does not depend on the batch around it. The
 * matmul computes each row the same way whatever the number of rows beside
 * it, and each token's top_k expert outputs are added into y in i order
 * (descending routing score), from per-pair rows kept in scratch, never in
 * the order the experts happened to run.
 *
 * Threads: called by the thread that drives the backend.
 */
#include "engines/native/backend/cpu/cpu_internal.h"

#include <assert.h>
#include <math.h>
#include <string.h>

/* The top_k indices of v[0..n) among those with keep[i] (keep NULL: all),
 * by value descending, ties to the lower index. NaN never wins against a
 * number, yet a slot is always filled while candidates remain. */
static void top_indices(const float *v, const unsigned char *keep, int n, int k, int32_t *out)
{
    unsigned char taken[NATIVE_MAX_EXPERTS];
    memset(taken, 0, (size_t)n);
    for (int i = 0; i < k; i++) {
        int best = -1;
        for (int e = 0; e < n; e++) {
            if (taken[e] || (keep && !keep[e]))
                continue;
            if (best < 0 || v[e] > v[best])
                best = e;
        }
        assert(best >= 0);  /* the caller keeps at least k candidates */
        taken[best] = 1;
        out[i] = best;
    }
}

void cpu_moe_gate(struct native_backend *b, int32_t *ids, float *weights, const float *logits,
                  int n, const struct native_moe_gate *g)
{
    (void)b;
    const int E = g->n_experts, K = g->top_k;
    assert(E > 0 && E <= NATIVE_MAX_EXPERTS && K > 0 && K <= NATIVE_MAX_TOPK && K <= E);
    assert(g->n_group >= 1 && E % g->n_group == 0);
    assert(g->topk_group >= 1 && g->topk_group <= g->n_group);
    const int per_group = E / g->n_group;
    /* Group limiting only narrows the choice when some group is dropped. */
    const int limit = g->topk_group < g->n_group;
    assert(!limit || g->topk_group * per_group >= K);

    for (int t = 0; t < n; t++) {
        const float *lt = logits + (size_t)t * E;
        float s[NATIVE_MAX_EXPERTS], biased[NATIVE_MAX_EXPERTS];
        unsigned char keep[NATIVE_MAX_EXPERTS];
        int32_t *it = ids + (size_t)t * K;
        float *wt = weights + (size_t)t * K;

        /* s_e = sigmoid(g_e); the bias only steers the choice. */
        for (int e = 0; e < E; e++) {
            s[e] = 1.0f / (1.0f + expf(-lt[e]));
            biased[e] = s[e] + (g->bias ? g->bias[e] : 0.0f);
        }
        if (limit) {
            /* A group's score is the sum of its two best biased scores (its
             * best alone when it has one expert). */
            float gs[NATIVE_MAX_EXPERTS];
            int32_t kept[NATIVE_MAX_EXPERTS];
            for (int j = 0; j < g->n_group; j++) {
                const float *bj = biased + j * per_group;
                int32_t top2[2];
                int m = per_group < 2 ? per_group : 2;
                top_indices(bj, NULL, per_group, m, top2);
                gs[j] = m == 2 ? bj[top2[0]] + bj[top2[1]] : bj[top2[0]];
            }
            top_indices(gs, NULL, g->n_group, g->topk_group, kept);
            memset(keep, 0, (size_t)E);
            for (int i = 0; i < g->topk_group; i++)
                memset(keep + kept[i] * per_group, 1, (size_t)per_group);
        }
        top_indices(biased, limit ? keep : NULL, E, K, it);

        /* Weights from the unbiased scores, summed in i order. */
        float sum = 0.0f;
        for (int i = 0; i < K; i++) {
            wt[i] = s[it[i]];
            sum += wt[i];
        }
        for (int i = 0; i < K; i++)
            wt[i] = (g->norm_topk_prob ? wt[i] / sum : wt[i]) * g->routed_scale;
    }
}

/* y[t] += sum_i w[t][i] * out(t, i), i in order, where pair q = t * top_k + i
 * has its row at out + slot[q] * D (slot NULL: at q). One function for
 * moe_experts and moe_combine, kept out of line so both run the very same
 * instructions: expert parallelism relies on getting the same bits. */
__attribute__((noinline)) static void combine(float *y, const float *out, const int32_t *slot,
                                              int n, const float *weights, int top_k, int D)
{
    for (int t = 0; t < n; t++) {
        float *yt = y + (size_t)t * D;
        for (int i = 0; i < top_k; i++) {
            const size_t q = (size_t)t * top_k + i;
            const float wq = weights[q];
            const float *o = out + (slot ? (size_t)slot[q] : q) * D;
            for (int d = 0; d < D; d++)
                yt[d] += wq * o[d];
        }
    }
}

/* Scratch, in floats, for P = n * top_k (token, expert) pairs; it matches
 * native_moe_scratch_floats() in ops.h:
 *   xg   [P][dim]     the pairs' inputs, gathered in expert order
 *   out  [P][dim]     each pair's expert output, same order
 *   gbuf [P][inter]   gate projections, then silu(gate) * up
 *   ubuf [P][inter]   up projections
 *   slot [P] int32    where pair (t, i) = t * top_k + i sits in that order
 *   pair [P] int32    which pair sits in each slot */
void cpu_moe_experts(struct native_backend *b, float *y, const float *x, int n,
                     const int32_t *ids, const float *weights, int top_k,
                     const struct native_moe_experts *e, float *scratch)
{
    const int E = e->n_experts, D = e->dim, I = e->inter;
    const size_t P = (size_t)n * (size_t)top_k;
    if (n <= 0)
        return;
    assert(E > 0 && E <= NATIVE_MAX_EXPERTS && top_k > 0 && top_k <= NATIVE_MAX_TOPK);

    float *xg = scratch;
    float *out = xg + P * D;
    float *gbuf = out + P * D;
    float *ubuf = gbuf + P * I;
    int32_t *slot = (int32_t *)(ubuf + P * I);
    int32_t *pair = slot + P;

    /* Counting sort of the pairs by expert; stable, so an expert's tokens
     * stay in batch order. */
    int start[NATIVE_MAX_EXPERTS + 1];
    memset(start, 0, sizeof(start));
    for (size_t q = 0; q < P; q++) {
        assert(ids[q] >= 0 && ids[q] < E);
        start[ids[q] + 1]++;
    }
    for (int ex = 0; ex < E; ex++)
        start[ex + 1] += start[ex];
    int fill[NATIVE_MAX_EXPERTS];
    memcpy(fill, start, sizeof(int) * (size_t)E);
    for (size_t q = 0; q < P; q++) {
        int s = fill[ids[q]]++;
        slot[q] = s;
        pair[s] = (int32_t)q;
    }
    for (size_t s = 0; s < P; s++)
        memcpy(xg + s * D, x + (size_t)(pair[s] / top_k) * D, sizeof(float) * (size_t)D);

    /* Each chosen expert over its tokens: gate and up in one call, SwiGLU,
     * down. */
    for (int ex = 0; ex < E; ex++) {
        const int m = start[ex + 1] - start[ex];
        if (m == 0)
            continue;
        const size_t s0 = (size_t)start[ex];
        const struct native_mat gu[2] = {e->gate[ex], e->up[ex]};
        float *gy[2] = {gbuf + s0 * I, ubuf + s0 * I};
        float *dy[1] = {out + s0 * D};
        assert(gu[0].rows == I && gu[0].cols == D && gu[1].rows == I && e->down[ex].rows == D &&
               e->down[ex].cols == I);
        b->ops->matmul(b, m, xg + s0 * D, 2, gu, gy, 0);
        b->ops->swiglu(b, gy[0], gy[0], gy[1], (size_t)m * I);
        b->ops->matmul(b, m, gy[0], 1, &e->down[ex], dy, 0);
    }

    combine(y, out, slot, n, weights, top_k, D);
}

void cpu_moe_combine(struct native_backend *b, float *y, const float *rows, int n,
                     const float *weights, int top_k, int dim)
{
    (void)b;
    combine(y, rows, NULL, n, weights, top_k, dim);
}
