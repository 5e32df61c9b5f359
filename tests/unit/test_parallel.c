/* test_parallel: tensor and expert parallelism on the CPU, at world sizes
 * 1, 2 and 4.
 *
 * First the collectives alone (comm.h): each rank is a thread; what it finds
 * wrong it counts in its own slot, and the main thread turns the counts into
 * CHECKs (test.h is single-threaded).
 *
 * Then whole models through a parallel group (model/parallel.h) against the
 * same model on one CPU backend: stories260K (dense, 8 heads over 4 KV
 * heads, tp 2 and 4 split them), a synthetic dense BF16 checkpoint with 8
 * heads over 2 KV heads (tp 4 and 8 give each rank the one KV head its query
 * heads read, so ranks hold the same KV head) and the tiny DeepSeek-V3 checkpoints
 * (BF16 with absorbed and naive MLA, FP8, FP8 without q LoRA), with tp only,
 * ep only and both. One script of steps runs
 * two sequences: prefill chunks of both in one batch, a mixed step, decode
 * steps of both, then one sequence alone (so some ranks have no tokens of
 * their own in an expert-parallel layer). Every row of logits must match:
 *   - ep only: bit for bit. Attention is whole on every rank, and the
 *     experts' outputs come back and are summed in routing order by
 *     moe_combine, the same arithmetic as moe_experts on one rank.
 *   - tp: the log-probabilities within TP_TOL, and the same argmax. Each
 *     rank's o_proj / down sums only its part of the columns and the parts
 *     are then added in rank order, so the float rounding of those sums
 *     differs from one rank's single pass (and an FP8 matrix whose blocks a
 *     cut splits is held as F32); the differences are float32 rounding, a
 *     few 1e-6 in practice.
 */
#include "engines/native/backend/comm.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/model/forward.h"
#include "engines/native/model/model.h"
#include "engines/native/model/parallel.h"
#include "engines/native/model/shard.h"
#include "engines/native/model/synth.h"
#include "engines/native/model/synth_v3.h"
#include "engines/native/runtime/kvcache.h"
#include "engines/native/runtime/sched.h"

#include "test.h"

#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
        if (r == 0)
            fprintf(stderr, "(a refused mismatch at world %d follows, on purpose)\n", W);
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

/* ---- whole models ---- */

#define TP_TOL 1e-4

/* A backend for m: one CPU backend (world 1), or a group of world CPU
 * backends with one thread each. */
/* The ranks run the float kernels (OPS_CPU_NO_BF16): a tp cut reorders float
 * sums, and where a BF16 matmul rounds its input to BF16 (ops_cpu_bf16.c) a
 * last-bit change in x can cross a BF16 rounding boundary and move that term
 * by 2^-8, which would hide what tp itself changes behind the rounding of
 * the kernels; those kernels are tested against the float ones in test_ops. */
#define TP_CPU_FLAGS OPS_CPU_NO_BF16

static struct native_backend *make_backend(const struct native_model *m, int tp, int ep)
{
    const int world = tp > ep ? tp : ep;
    if (world == 1)
        return ops_cpu_new(1, TP_CPU_FLAGS);
    struct native_backend *be[NATIVE_MAX_WORLD];
    struct native_comm *comms[NATIVE_MAX_WORLD];
    if (native_comm_cpu_new_all(world, comms) != 0)
        return NULL;
    for (int r = 0; r < world; r++)
        be[r] = ops_cpu_new(1, TP_CPU_FLAGS);
    char err[512];
    struct native_parallel_config cfg = {tp, ep, be, comms};
    struct native_backend *g = native_parallel_new(m, &cfg, err, sizeof(err));
    if (!g)
        fprintf(stderr, "native_parallel_new(tp %d, ep %d): %s\n", tp, ep, err);
    return g;
}

enum { SCRIPT_ROWS = 22, MAX_ROWS = 64 };

/* The script's logits, row after row, [n_rows][vocab]; NULL on failure. */
static float *run_script(const struct native_model *m, int tp, int ep, enum native_mla_mode mla,
                         int *n_rows)
{
    const int V = m->cfg.vocab_size;
    char err[512];
    int32_t tok[2][16];
    for (int i = 0; i < 16; i++) {
        tok[0][i] = (int32_t)((i * 37 + 11) % V);
        tok[1][i] = (int32_t)((i * 101 + 5) % V);
    }
    struct native_backend *be = make_backend(m, tp, ep);
    struct native_kv_desc kvd;
    native_forward_kv_desc(m, &kvd);
    struct kvcache *kv = be ? kvcache_new(be, &kvd, be->ops->kv_block_bytes(be, &kvd) * 8, err,
                                          sizeof(err)) : NULL;
    struct native_forward_opts fo = {.max_tokens = 16, .max_out = 16, .n_ctx = 32, .mla = mla};
    struct native_forward *fw = kv ? native_forward_new(m, be, &fo, err, sizeof(err)) : NULL;
    float *out = malloc(sizeof(float) * (size_t)MAX_ROWS * (size_t)V);
    int32_t blocks[2][4];
    int rows = 0;
    if (!fw) {
        fprintf(stderr, "tp %d ep %d: %s\n", tp, ep, err);
        goto fail;
    }
    for (int s = 0; s < 2; s++)
        if (kvcache_alloc(kv, kvcache_blocks_for(kv, 16), blocks[s]) != 0)
            goto fail;
    struct native_seq_view views[2] = {{blocks[0], kvcache_blocks_for(kv, 16)},
                                       {blocks[1], kvcache_blocks_for(kv, 16)}};
    /* Steps: {tokens of A, tokens of B} to run. */
    static const int script[][2] = {{6, 4}, {2, 1}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, {1, 0}};
    int done[2] = {0, 0};
    for (size_t st = 0; st < sizeof(script) / sizeof(script[0]); st++) {
        int32_t b_tok[16], b_pos[16], b_seq[16], b_out[16];
        int nt = 0;
        /* B's tokens first in odd steps, so A's rows move around in the batch. */
        for (int k = 0; k < 2; k++) {
            const int s = st % 2 ? 1 - k : k;
            for (int i = 0; i < script[st][s]; i++, nt++) {
                b_tok[nt] = tok[s][done[s]];
                b_pos[nt] = done[s]++;
                b_seq[nt] = s;
                b_out[nt] = nt;
            }
        }
        struct native_batch batch = {.n_tokens = nt, .token = b_tok, .pos = b_pos, .seq = b_seq,
                                     .seqs = views, .n_seqs = 2, .out_rows = b_out, .n_out = nt};
        const float *lg = native_forward_run(fw, kvcache_kv(kv), &batch);
        memcpy(out + (size_t)rows * V, lg, sizeof(float) * (size_t)nt * (size_t)V);
        rows += nt;
    }
    native_forward_free(fw);
    kvcache_free(kv);
    native_backend_free(be);
    *n_rows = rows;
    return out;

fail:
    free(out);
    native_forward_free(fw);
    kvcache_free(kv);
    native_backend_free(be);
    return NULL;
}

static void log_softmax(const float *x, int n, double *y)
{
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < n; i++)
        sum += exp((double)x[i] - mx);
    for (int i = 0; i < n; i++)
        y[i] = (double)x[i] - mx - log(sum);
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Every (tp, ep) of worlds 2 up to max_world that the model has, against world 1. */
static void compare_model(const char *name, const struct native_model *m,
                          enum native_mla_mode mla, int max_world)
{
    const int V = m->cfg.vocab_size, moe = m->cfg.arch == NATIVE_ARCH_DEEPSEEK_V3;
    int n1 = 0;
    float *ref = run_script(m, 1, 1, mla, &n1);
    CHECK(ref != NULL && n1 == SCRIPT_ROWS);
    if (!ref)
        return;
    double *a = malloc(sizeof(double) * (size_t)V), *b = malloc(sizeof(double) * (size_t)V);
    static const int worlds[] = {2, 4, 8};
    for (int wi = 0; wi < 3 && worlds[wi] <= max_world; wi++) {
        const int w = worlds[wi];
        const int combos[3][2] = {{w, 1}, {1, w}, {w, w}};
        for (int k = 0; k < (moe ? 3 : 1); k++) {
            const int tp = combos[k][0], ep = combos[k][1];
            int n = 0;
            float *got = run_script(m, tp, ep, mla, &n);
            CHECK(got != NULL && n == n1);
            if (!got || n != n1) {
                free(got);
                continue;
            }
            double worst = 0;
            int same_argmax = 1;
            for (int r = 0; r < n; r++) {
                const float *x = ref + (size_t)r * V, *y = got + (size_t)r * V;
                log_softmax(x, V, a);
                log_softmax(y, V, b);
                for (int i = 0; i < V; i++)
                    worst = fabs(a[i] - b[i]) > worst ? fabs(a[i] - b[i]) : worst;
                same_argmax &= argmax(x, V) == argmax(y, V);
            }
            const int exact = memcmp(ref, got, sizeof(float) * (size_t)n * (size_t)V) == 0;
            printf("%s tp %d ep %d: %d rows, max |dlogprob| %.3g%s, argmax %s\n", name, tp, ep,
                   n, worst, exact ? " (bit-identical)" : "", same_argmax ? "same" : "DIFFERS");
            CHECK(same_argmax);
            if (tp == 1)
                CHECK(exact);   /* ep only: bit for bit */
            else
                CHECK(worst <= TP_TOL);
            free(got);
        }
    }
    free(a);
    free(b);
    free(ref);
}

/* What a rank of a dense model with 8 heads over 2 KV heads holds: its
 * heads' rows of wq, its KV heads' rows of wk/wv (the one its query heads
 * read when there are fewer KV heads than ranks), its columns of wo, copied. */
static void test_dense_shard(const struct native_model *m)
{
    char err[256];
    const int hd = m->cfg.head_dim;
    const size_t es = native_dtype_size(m->layers[0].wq.dtype);
    static const int cases[][3] = {{2, 1, 1}, {4, 1, 0}, {4, 3, 1}, {8, 2, 0}, {8, 5, 1}}; /* tp, rank, KV head */
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const int tp = cases[i][0], r = cases[i][1], g = cases[i][2];
        struct native_shard *s = native_shard_new(m, r, tp, 1, err, sizeof(err));
        CHECK(s != NULL);
        if (!s)
            continue;
        const struct native_model *v = native_shard_model(s);
        const struct native_layer *L = &m->layers[1], *S = &v->layers[1];
        const int kv = m->cfg.n_kv_heads / tp > 0 ? m->cfg.n_kv_heads / tp : 1;
        CHECK(v->cfg.n_heads == 8 / tp && v->cfg.n_kv_heads == kv);
        CHECK(S->wq.rows == (int64_t)(8 / tp) * hd &&
              S->wq.data == (const char *)L->wq.data + (size_t)r * (8 / tp) * hd * L->wq.cols * es);
        CHECK(S->wk.rows == (int64_t)kv * hd &&
              S->wk.data == (const char *)L->wk.data + (size_t)g * hd * L->wk.cols * es);
        CHECK(S->wo.cols == (int64_t)(8 / tp) * hd && S->wo.rows == L->wo.rows);
        /* wo's element (row 5, first column of the rank) is the whole's. */
        CHECK(memcmp((const char *)S->wo.data + 5 * S->wo.cols * es,
                     (const char *)L->wo.data + (5 * L->wo.cols + (size_t)r * (8 / tp) * hd) * es,
                     es) == 0);
        CHECK(native_shard_dequantized(s) == 0);
        native_shard_free(s);
    }
}

/* The tiny FP8 V3 at tp 2: q_b's 192 rows split at 96, inside a 128-row
 * block, so each rank's q_b is dequantized to F32 (one per layer); kv_b's
 * 256 rows split at 128 and o_proj's columns at 64 (inside one block) keep
 * FP8 with their scales. */
static void test_v3_shard(const struct native_model *m)
{
    char err[256];
    struct native_shard *s = native_shard_new(m, 1, 2, 1, err, sizeof(err));
    CHECK(s != NULL);
    if (!s)
        return;
    const struct native_model *v = native_shard_model(s);
    const struct native_layer *S = &v->layers[2];
    CHECK(native_shard_dequantized(s) == m->cfg.n_layers);
    CHECK(S->mla.q_b.dtype == NATIVE_F32 && S->mla.q_b.rows == 96);
    CHECK(S->mla.kv_b.dtype == NATIVE_F8_E4M3 && S->mla.kv_b.rows == 128 &&
          S->mla.kv_b.scale == m->layers[2].mla.kv_b.scale + 1);
    CHECK(S->mla.o.dtype == NATIVE_F8_E4M3 && S->mla.o.cols == 64 && S->mla.o.scale != NULL &&
          S->mla.o.scale[0] == m->layers[2].mla.o.scale[0]);
    native_shard_free(s);
    /* ep 4, rank 2: experts 8..11. */
    s = native_shard_new(m, 2, 1, 4, err, sizeof(err));
    CHECK(s && native_shard_model(s)->layers[2].moe->gate == m->layers[2].moe->gate + 8);
    native_shard_free(s);
}

/* A shape that does not split is refused with a message, not run. */
static void test_refusals(const struct native_model *dense)
{
    struct native_backend *be[3];
    struct native_comm *comms[3];
    char err[512];
    CHECK(native_comm_cpu_new_all(3, comms) == 0);
    for (int r = 0; r < 3; r++)
        be[r] = ops_cpu_new(1, 0);
    struct native_parallel_config cfg = {3, 1, be, comms};   /* 8 heads over 3 ranks */
    CHECK(native_parallel_new(dense, &cfg, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "cannot be split") != NULL);
    CHECK(native_comm_cpu_new_all(2, comms) == 0);
    for (int r = 0; r < 2; r++)
        be[r] = ops_cpu_new(1, 0);
    struct native_parallel_config cfg2 = {1, 2, be, comms};  /* experts of a dense model */
    CHECK(native_parallel_new(dense, &cfg2, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "no experts") != NULL);
}

/* ---- through the scheduler ---- */

/* One request's greedy tokens, collected on the scheduler's thread. */
struct gen {
    int32_t tok[32];
    int n, ended;
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
};

static int gen_token(void *ctx, const struct sched_token *t)
{
    struct gen *g = ctx;
    if (g->n < 32)
        g->tok[g->n++] = t->id;
    return 0;
}

static void gen_end(void *ctx, const struct sched_end *e)
{
    struct gen *g = ctx;
    (void)e;
    pthread_mutex_lock(g->mu);
    g->ended = 1;
    pthread_cond_broadcast(g->cv);
    pthread_mutex_unlock(g->mu);
}

enum { N_REQ = 3, GEN_TOKENS = 12 };

/* Three greedy requests at once through the continuous-batching scheduler on
 * backend be (the scheduler is handed a group like any backend). */
static int sched_generate(const struct native_model *m, struct native_backend *be,
                          struct gen out[N_REQ])
{
    char err[512];
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    struct sched_config sc = {.max_batch = 4, .max_step_tokens = 16, .kv_budget = 1 << 20,
                              .n_ctx = 64};
    struct sched *s = sched_new(m, be, &sc, err, sizeof(err));
    if (!s) {
        fprintf(stderr, "sched_new: %s\n", err);
        return -1;
    }
    for (int i = 0; i < N_REQ; i++) {
        int32_t prompt[5];
        for (int k = 0; k < 5; k++)
            prompt[k] = (int32_t)((i * 53 + k * 29 + 1) % m->cfg.vocab_size);
        out[i] = (struct gen){.mu = &mu, .cv = &cv};
        struct sched_request rq = {.prompt = prompt, .n_prompt = 3 + i, .max_tokens = GEN_TOKENS,
                                   .sink = {gen_token, gen_end, &out[i]}};
        uint64_t id;
        if (sched_submit(s, &rq, &id) != SCHED_OK)
            return -1;
    }
    pthread_mutex_lock(&mu);
    for (int i = 0; i < N_REQ; i++)
        while (!out[i].ended)
            pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    sched_free(s);
    return 0;
}

/* The scheduler on a tp + ep group gives the greedy tokens of one rank. */
static void test_sched(const char *name, const struct native_model *m, int tp, int ep)
{
    struct gen one[N_REQ], many[N_REQ];
    struct native_backend *b1 = make_backend(m, 1, 1), *bw = make_backend(m, tp, ep);
    CHECK(b1 && bw);
    if (b1 && bw && sched_generate(m, b1, one) == 0 && sched_generate(m, bw, many) == 0) {
        int same = 1;
        for (int i = 0; i < N_REQ; i++)
            same &= one[i].n == GEN_TOKENS && many[i].n == GEN_TOKENS &&
                    memcmp(one[i].tok, many[i].tok, sizeof(int32_t) * GEN_TOKENS) == 0;
        printf("%s through the scheduler at tp %d ep %d: %s greedy tokens\n", name, tp, ep,
               same ? "the same" : "DIFFERENT");
        CHECK(same);
    } else {
        CHECK(!"the scheduler ran");
    }
    native_backend_free(b1);
    native_backend_free(bw);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void test_models(void)
{
    char err[512], path[512];
    struct native_model *m = NULL;
    snprintf(path, sizeof(path), "%s/models/stories260K/stories260K.bin", test_shared_dir());
    if (access(path, R_OK) != 0) {
        TEST_SKIP("stories260K under tensor parallelism: %s not found", path);
    } else {
        CHECK(native_model_load(path, &m, err, sizeof(err)) == 0);
        if (m) {
            CHECK(m->cfg.n_heads == 8 && m->cfg.n_kv_heads == 4);
            compare_model("stories260K", m, NATIVE_MLA_ABSORB, 4);
            test_sched("stories260K", m, 4, 1);
            test_refusals(m);
            native_model_free(m);
        }
    }

    char root[] = "/tmp/cascade-test-parallel-XXXXXX";
    if (!mkdtemp(root)) {
        CHECK(!"mkdtemp");
        return;
    }
    /* A dense model with fewer KV heads than ranks. */
    struct synth_spec ds;
    synth_preset("tiny", &ds);
    ds.dim = 64, ds.hidden_dim = 128, ds.n_layers = 2, ds.n_heads = 8, ds.n_kv_heads = 2;
    ds.vocab_size = 300, ds.dtype = "BF16", ds.tied = 0, ds.n_shards = 1;
    snprintf(path, sizeof(path), "%s/dense", root);
    CHECK(synth_write(&ds, path, err, sizeof(err)) == 0);
    m = NULL;
    CHECK(native_model_load(path, &m, err, sizeof(err)) == 0);
    if (m) {
        CHECK(m->cfg.n_heads == 8 && m->cfg.n_kv_heads == 2);
        compare_model("dense 8/2 heads BF16", m, NATIVE_MLA_ABSORB, 8);
        test_dense_shard(m);
        native_model_free(m);
    }

    /* name, FP8, q LoRA */
    static const struct {
        const char *name;
        int fp8, q_lora;
    } v3s[] = {{"tiny V3 BF16", 0, 1}, {"tiny V3 FP8", 1, 1}, {"tiny V3 FP8 no q LoRA", 1, 0}};
    for (size_t i = 0; i < sizeof(v3s) / sizeof(v3s[0]); i++) {
        struct synth_v3_spec spec;
        synth_v3_preset("tiny", &spec);
        spec.fp8 = v3s[i].fp8;
        if (!v3s[i].q_lora)
            spec.q_lora_rank = 0;
        snprintf(path, sizeof(path), "%s/v3-%zu", root, i);
        CHECK(synth_v3_write(&spec, path, err, sizeof(err)) == 0);
        m = NULL;
        CHECK(native_model_load(path, &m, err, sizeof(err)) == 0);
        if (!m)
            continue;
        compare_model(v3s[i].name, m, NATIVE_MLA_ABSORB, 4);
        if (i == 0)
            compare_model("tiny V3 BF16 naive MLA", m, NATIVE_MLA_NAIVE, 4);
        if (i == 1) {
            test_v3_shard(m);
            test_sched("tiny V3 FP8", m, 2, 2);
        }
        native_model_free(m);
    }
    nftw(root, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    test_comm();
    test_models();
    TEST_MAIN_END();
}
