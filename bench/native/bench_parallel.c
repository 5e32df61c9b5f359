/* bench_parallel: what tensor and expert parallelism cost on the CPU, where
 * the ranks are threads sharing one machine's cores: decode tokens/s of one
 * model at several (tp, ep), against one rank.
 *
 *   bench_parallel --model M [--rounds R] [--steps S] [--batch B]
 *                  [--configs "tp,ep[,threads] ..."]
 *
 * Each run makes the backend (one CPU backend of `threads` threads, default
 * 1, or world backends of 1 thread each in a group with the CPU comm), prefills B sequences of 8 tokens, then
 * times S decode steps of B tokens (one per sequence); tokens/s = B * S /
 * time. The configs run interleaved, round after round, so load on the
 * machine falls on all of them alike; the median, min and max over rounds
 * are printed, with the load average before and after. One JSON line per
 * config.
 */
#include "engines/native/backend/comm.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/model/forward.h"
#include "engines/native/model/model.h"
#include "engines/native/model/parallel.h"
#include "engines/native/runtime/kvcache.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_CONFIGS 16
#define MAX_ROUNDS 64
#define MAX_BATCH 64
#define PROMPT 8

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static struct native_backend *make_backend(const struct native_model *m, int tp, int ep,
                                           int threads, char *err, size_t errlen)
{
    const int world = tp > ep ? tp : ep;
    if (world == 1)
        return ops_cpu_new(threads, 0);
    struct native_backend *be[NATIVE_MAX_WORLD];
    struct native_comm *comms[NATIVE_MAX_WORLD];
    if (native_comm_cpu_new_all(world, comms) != 0)
        return NULL;
    for (int r = 0; r < world; r++)
        be[r] = ops_cpu_new(1, 0);
    struct native_parallel_config cfg = {tp, ep, be, comms};
    return native_parallel_new(m, &cfg, err, errlen);
}

/* Decode tokens/s of one run, or -1. */
static double run(const struct native_model *m, int tp, int ep, int threads, int batch, int steps)
{
    char err[512];
    const int n_ctx = PROMPT + steps, V = m->cfg.vocab_size;
    double tps = -1;
    struct native_backend *be = make_backend(m, tp, ep, threads, err, sizeof(err));
    struct kvcache *kv = NULL;
    struct native_forward *fw = NULL;
    int32_t *blocks = NULL;
    struct native_seq_view views[MAX_BATCH];
    int32_t tok[MAX_BATCH * PROMPT], pos[MAX_BATCH * PROMPT], seq[MAX_BATCH * PROMPT],
        out[MAX_BATCH * PROMPT];
    if (!be) {
        fprintf(stderr, "bench_parallel: tp %d ep %d: %s\n", tp, ep, err);
        return -1;
    }
    struct native_kv_desc kvd;
    native_forward_kv_desc(m, &kvd);
    const int per_seq = (n_ctx + be->ops->kv_block_size - 1) / be->ops->kv_block_size;
    kv = kvcache_new(be, &kvd, be->ops->kv_block_bytes(be, &kvd) * (size_t)(per_seq * batch), err,
                     sizeof(err));
    struct native_forward_opts fo = {.max_tokens = batch * PROMPT, .max_out = batch * PROMPT,
                                     .n_ctx = n_ctx};
    fw = kv ? native_forward_new(m, be, &fo, err, sizeof(err)) : NULL;
    blocks = malloc(sizeof(int32_t) * (size_t)(per_seq * batch));
    if (!fw || !blocks || kvcache_alloc(kv, per_seq * batch, blocks) != 0) {
        fprintf(stderr, "bench_parallel: tp %d ep %d: %s\n", tp, ep, fw ? "no KV blocks" : err);
        goto out;
    }
    for (int s = 0; s < batch; s++)
        views[s] = (struct native_seq_view){blocks + s * per_seq, per_seq};
    /* Prefill: every sequence's prompt in one step. */
    int nt = 0;
    for (int s = 0; s < batch; s++)
        for (int i = 0; i < PROMPT; i++, nt++) {
            tok[nt] = (int32_t)((s * 131 + i * 17 + 1) % V);
            pos[nt] = i;
            seq[nt] = s;
            out[nt] = nt;
        }
    struct native_batch b = {.n_tokens = nt, .token = tok, .pos = pos, .seq = seq, .seqs = views,
                             .n_seqs = batch, .out_rows = out, .n_out = batch};
    native_forward_run(fw, kvcache_kv(kv), &b);
    /* Decode: one token per sequence per step, greedy. */
    const double t0 = now_s();
    for (int st = 0; st < steps; st++) {
        for (int s = 0; s < batch; s++) {
            tok[s] = (int32_t)((s * 7 + st * 13 + 3) % V);
            pos[s] = PROMPT + st;
            seq[s] = s;
            out[s] = s;
        }
        b.n_tokens = batch;
        b.n_out = batch;
        native_forward_run(fw, kvcache_kv(kv), &b);
    }
    tps = (double)batch * steps / (now_s() - t0);
out:
    free(blocks);
    native_forward_free(fw);
    kvcache_free(kv);
    native_backend_free(be);
    return tps;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_parallel --model M [--rounds R] [--steps S] [--batch B] "
                    "[--configs \"tp,ep ...\"]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *model = NULL, *configs = "1,1 2,1 4,1";
    int rounds = 5, steps = 32, batch = 4;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch"))
            batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--configs"))
            configs = argv[i + 1];
        else
            usage();
    }
    if (!model || rounds < 1 || rounds > MAX_ROUNDS || steps < 1 || batch < 1 ||
        batch > MAX_BATCH)
        usage();
    int tp[MAX_CONFIGS], ep[MAX_CONFIGS], th[MAX_CONFIGS], n_cfg = 0, used = 0;
    while (n_cfg < MAX_CONFIGS && sscanf(configs, " %d,%d%n", &tp[n_cfg], &ep[n_cfg], &used) == 2) {
        configs += used;
        th[n_cfg] = 1;
        if (*configs == ',' && sscanf(configs, ",%d%n", &th[n_cfg], &used) == 1)
            configs += used;
        n_cfg++;
    }
    if (n_cfg == 0)
        usage();

    char err[512];
    struct native_model *m = NULL;
    if (native_model_load(model, &m, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_parallel: %s\n", err);
        return 1;
    }
    double load0[3] = {0}, load1[3] = {0};
    getloadavg(load0, 3);
    static double tps[MAX_CONFIGS][MAX_ROUNDS];
    for (int r = 0; r < rounds; r++)
        for (int c = 0; c < n_cfg; c++)
            if ((tps[c][r] = run(m, tp[c], ep[c], th[c], batch, steps)) < 0)
                return 1;
    getloadavg(load1, 3);
    qsort(tps[0], (size_t)rounds, sizeof(double), cmp_double);
    const double base = tps[0][rounds / 2];
    for (int c = 0; c < n_cfg; c++) {
        if (c > 0)
            qsort(tps[c], (size_t)rounds, sizeof(double), cmp_double);
        printf("{\"model\": \"%s\", \"tp\": %d, \"ep\": %d, \"threads\": %d, \"batch\": %d, \"steps\": %d, "
               "\"rounds\": %d, \"tok_s_median\": %.1f, \"tok_s_min\": %.1f, \"tok_s_max\": %.1f, "
               "\"vs_first\": %.2f, \"load_before\": %.2f, \"load_after\": %.2f}\n",
               model, tp[c], ep[c], (tp[c] > ep[c] ? tp[c] : ep[c]) > 1 ? 1 : th[c], batch, steps, rounds, tps[c][rounds / 2], tps[c][0],
               tps[c][rounds - 1], tps[c][rounds / 2] / base, load0[0], load1[0]);
    }
    native_model_free(m);
    return 0;
}
