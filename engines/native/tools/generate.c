/* cascade-generate: run a model on one prompt from the command line, through
 * the library directly (no scheduler, no event loop), like llama2.c's run.
 *
 *   cascade-generate --model PATH [--tokenizer PATH] [--prompt TEXT]
 *                    [--steps N] [--temperature T] [--top-p P] [--top-k K]
 *                    [--seed S] [--threads N] [--portable] [--ids] [--stats]
 *
 * --steps counts positions, prompt included, as llama2.c does (default 256);
 * generation also stops at an end-of-sequence token. The text goes to stdout;
 * --ids prints token ids instead, --stats prints timing to stderr.
 */
#include "engines/native/model/forward.h"
#include "engines/native/runtime/kvcache.h"
#include "engines/native/model/model.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/runtime/prompt.h"
#include "engines/native/runtime/sampler.h"
#include "tokenizer/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage(void)
{
    fprintf(stderr, "usage: cascade-generate --model PATH [--tokenizer PATH] [--prompt TEXT] "
                    "[--steps N] [--temperature T] [--top-p P] [--top-k K] [--seed S] "
                    "[--threads N] [--portable] [--ids] [--stats]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *tok_path = NULL, *prompt = "";
    int steps = 256, threads = 0, top_k = 0, print_ids = 0, stats = 0;
    unsigned flags = 0;
    double temperature = 0.0, top_p = 1.0;
    unsigned long long seed = 0;
    char err[512];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--portable")) {
            flags |= OPS_CPU_PORTABLE;
            continue;
        }
        if (!strcmp(a, "--ids")) {
            print_ids = 1;
            continue;
        }
        if (!strcmp(a, "--stats")) {
            stats = 1;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--model"))
            model_path = v;
        else if (!strcmp(a, "--tokenizer"))
            tok_path = v;
        else if (!strcmp(a, "--prompt"))
            prompt = v;
        else if (!strcmp(a, "--steps"))
            steps = atoi(v);
        else if (!strcmp(a, "--temperature"))
            temperature = atof(v);
        else if (!strcmp(a, "--top-p"))
            top_p = atof(v);
        else if (!strcmp(a, "--top-k"))
            top_k = atoi(v);
        else if (!strcmp(a, "--seed"))
            seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--threads"))
            threads = atoi(v);
        else
            usage();
    }
    if (!model_path || steps < 1)
        usage();

    struct native_model *m = NULL;
    struct tokenizer *tok = NULL;
    struct native_backend *be = NULL;
    struct kvcache *kv = NULL;
    struct native_forward *fw = NULL;
    struct sampler *smp = NULL;
    struct tok_ids ids = {0};
    int rc = 1;
    enum prompt_style style;

    double t_load = now_s();
    if (native_model_load(model_path, &m, err, sizeof(err)) != 0 ||
        prompt_tokenizer_load(m, tok_path, &tok, &style, err, sizeof(err)) != 0) {
        fprintf(stderr, "cascade-generate: %s\n", err);
        goto out;
    }
    if (prompt_encode_text(tok, style, prompt, strlen(prompt), &ids) != TOK_OK) {
        fprintf(stderr, "cascade-generate: cannot encode the prompt\n");
        goto out;
    }
    if (steps > m->cfg.max_pos)
        steps = m->cfg.max_pos;
    if ((int)ids.n >= steps) {
        fprintf(stderr, "cascade-generate: the prompt has %zu tokens, --steps is %d\n", ids.n, steps);
        goto out;
    }
    const struct native_model_config *c = &m->cfg;
    int n_blocks = (steps + OPS_CPU_BLOCK_SIZE - 1) / OPS_CPU_BLOCK_SIZE;
    struct native_kv_desc kvd;
    native_forward_kv_desc(m, &kvd);
    be = ops_cpu_new(threads, flags);
    kv = be ? kvcache_new(be, &kvd, be->ops->kv_block_bytes(be, &kvd) * (size_t)n_blocks, err,
                          sizeof(err))
            : NULL;
    struct native_forward_opts fo = {.max_tokens = (int)ids.n, .max_out = 1, .n_ctx = steps};
    fw = kv ? native_forward_new(m, be, &fo, err, sizeof(err)) : NULL;
    smp = sampler_new(c->vocab_size);
    if (!be || !kv || !fw || !smp) {
        fprintf(stderr, "cascade-generate: %s\n", be ? err : "cannot start the CPU backend");
        goto out;
    }
    int32_t *blocks = malloc(sizeof(int32_t) * (size_t)n_blocks);
    int32_t *pos = malloc(sizeof(int32_t) * ids.n), *seq = calloc(ids.n, sizeof(int32_t));
    if (!blocks || !pos || !seq || kvcache_alloc(kv, n_blocks, blocks) != 0) {
        fprintf(stderr, "cascade-generate: out of memory\n");
        free(blocks);
        free(pos);
        free(seq);
        goto out;
    }
    t_load = now_s() - t_load;

    struct native_seq_view sv = {blocks, n_blocks};
    struct sampler_params sp = {temperature, top_p, top_k};
    uint64_t rng = sampler_seed(seed);
    struct tok_decoder dec;
    tok_decoder_init(&dec, tok);
    dec.prev = ids.v[ids.n - 1];
    char text[4096];

    /* Prefill the whole prompt as one batch, then decode token by token. */
    double t0 = now_s(), t_first = 0.0;
    for (size_t i = 0; i < ids.n; i++)
        pos[i] = (int32_t)i;
    int32_t last_row = (int32_t)ids.n - 1;
    struct native_batch batch = {(int)ids.n, ids.v, pos, seq, &sv, 1, &last_row, 1};
    const float *logits = native_forward_run(fw, kvcache_kv(kv), &batch);
    int generated = 0, p = (int)ids.n;
    for (;;) {
        int32_t next = sampler_sample(smp, logits, &sp, &rng);
        generated++;
        if (generated == 1)
            t_first = now_s();
        if (native_model_is_eos(m, next))
            break;
        if (print_ids) {
            printf("%d\n", next);
        } else {
            size_t n = tok_decoder_push(&dec, next, text, sizeof(text));
            fwrite(text, 1, n, stdout);
        }
        if (p >= steps)
            break;
        int32_t zero = 0;
        struct native_batch one = {1, &next, &p, &zero, &sv, 1, &zero, 1};
        logits = native_forward_run(fw, kvcache_kv(kv), &one);
        p++;
    }
    double t1 = now_s();
    if (!print_ids) {
        size_t n = tok_decoder_flush(&dec, text, sizeof(text));
        fwrite(text, 1, n, stdout);
        printf("\n");
    }
    fflush(stdout);
    if (stats) {
        fprintf(stderr,
                "kernels %s, threads %d, load %.3f s, prompt %zu tokens (%.3f ms), "
                "%d generated, decode %.1f tok/s\n",
                ops_cpu_kernels(be), ops_cpu_threads(be), t_load, ids.n, (t_first - t0) * 1e3,
                generated, generated > 1 ? (generated - 1) / (t1 - t_first) : 0.0);
    }
    free(blocks);
    free(pos);
    free(seq);
    rc = 0;
out:
    tok_ids_free(&ids);
    sampler_free(smp);
    native_forward_free(fw);
    kvcache_free(kv);
    native_backend_free(be);
    tokenizer_free(tok);
    native_model_free(m);
    return rc;
}
