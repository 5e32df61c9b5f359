/* bench_native: decode throughput of the native runtime, one scenario per run
 * (so peak RSS is per scenario). Prints one JSON line.
 *
 *   bench_native copy [--mib N]
 *       Memory bandwidth: memcpy between two buffers on every core, best of 5.
 *       Reported STREAM-style: (bytes read + bytes written) / time.
 *   bench_native single --model M [--runs N] [--threads T]
 *       One stream through the library (forward + greedy sample + detokenize),
 *       from BOS to 256 positions, like llama2.c's run; tok/s excludes the
 *       first token, as run.c's own figure does. Median and best of N runs.
 *   bench_native streams --model M --n K [--runs N] [--threads T] [--tokens N]
 *       K concurrent greedy requests with different prompts through the
 *       continuous-batching scheduler, each to 256 positions (or N tokens).
 *       Aggregate tok/s = all generated tokens / wall time from the first
 *       submit to the last end (prefill included); decode_tok_per_cpu_s =
 *       tokens after every prompt was prefilled / the process CPU seconds
 *       over that window (of the last run), which other load moves less.
 *   bench_native big --model DIR [--tokens N] [--threads T] [--mib N]
 *       The copy benchmark, then decode on a big model (e.g. the synthetic
 *       DeepSeek-Coder-1.3B): a 16-token prompt, then N tokens; tok/s over the
 *       decode steps, the bytes of weights each step reads, and the bound
 *       copy_bandwidth / bytes_per_token.
 */
#include "engines/native/model/forward.h"
#include "engines/native/runtime/kvcache.h"
#include "engines/native/model/model.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/runtime/prompt.h"
#include "engines/native/runtime/sampler.h"
#include "engines/native/runtime/sched.h"
#include "engines/native/backend/cpu/threadpool.h"
#include "tokenizer/tokenizer.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long peak_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- copy bandwidth ---- */

struct copy_arg {
    char *dst;
    const char *src;
    size_t n;
};

static void copy_task(void *arg, int task, int thread)
{
    (void)thread;
    struct copy_arg *a = arg;
    memcpy(a[task].dst, a[task].src, a[task].n);
}

static double copy_bandwidth(int threads, size_t mib)
{
    size_t n = mib << 20;
    char *src = malloc(n), *dst = malloc(n);
    if (!src || !dst) {
        fprintf(stderr, "copy: out of memory\n");
        exit(1);
    }
    memset(src, 1, n);
    memset(dst, 2, n);
    struct threadpool *p = threadpool_new(threads);
    int t = threadpool_threads(p);
    struct copy_arg *a = calloc((size_t)t, sizeof(*a));
    for (int i = 0; i < t; i++)
        a[i] = (struct copy_arg){dst + n / t * i, src + n / t * i, n / t};
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
        threadpool_run(p, copy_task, a, t);
        double bw = 2.0 * (double)(n / t * t) / (now_s() - t0);
        best = bw > best ? bw : best;
    }
    threadpool_free(p);
    free(a);
    free(src);
    free(dst);
    return best;
}

/* The copy benchmark in a child process, so its buffers do not count in
 * this process's peak RSS. */
static double copy_bandwidth_child(int threads, size_t mib)
{
    int fds[2];
    if (pipe(fds) != 0)
        return copy_bandwidth(threads, mib);
    pid_t pid = fork();
    if (pid == 0) {
        double bw = copy_bandwidth(threads, mib);
        ssize_t w = write(fds[1], &bw, sizeof(bw));
        _exit(w == (ssize_t)sizeof(bw) ? 0 : 1);
    }
    double bw = 0;
    if (pid < 0 || read(fds[0], &bw, sizeof(bw)) != (ssize_t)sizeof(bw))
        bw = 0;
    if (pid > 0)
        waitpid(pid, NULL, 0);
    close(fds[0]);
    close(fds[1]);
    return bw;
}

/* ---- one stream through the library ---- */

struct lib {
    struct native_model *m;
    struct tokenizer *tok;
    enum prompt_style style;
};

static void load(struct lib *l, const char *path)
{
    char err[512];
    if (native_model_load(path, &l->m, err, sizeof(err)) != 0 ||
        prompt_tokenizer_load(l->m, NULL, &l->tok, &l->style, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_native: %s\n", err);
        exit(1);
    }
}

/* Decode from prompt to `steps` positions (or n_gen tokens); returns tok/s
 * over the tokens after the first, and the count in *generated. */
static double run_stream(const struct lib *l, struct native_backend *be, const char *prompt,
                         int steps, int *generated)
{
    char err[256];
    const struct native_model_config *c = &l->m->cfg;
    struct tok_ids ids = {0};
    prompt_encode_text(l->tok, l->style, prompt, strlen(prompt), &ids);
    struct native_kv_desc kvd;
    native_forward_kv_desc(l->m, &kvd);
    struct kvcache *kv = kvcache_new(be, &kvd,
                                     be->ops->kv_block_bytes(be, &kvd) *
                                         (size_t)((steps + 2 * OPS_CPU_BLOCK_SIZE) / OPS_CPU_BLOCK_SIZE),
                                     err, sizeof(err));
    struct native_forward_opts fo = {.max_tokens = (int)ids.n, .max_out = 1, .n_ctx = steps + 1};
    struct native_forward *fw = native_forward_new(l->m, be, &fo, err, sizeof(err));
    struct sampler *smp = sampler_new(c->vocab_size);
    if (!kv || !fw || !smp) {
        fprintf(stderr, "bench_native: %s\n", err);
        exit(1);
    }
    int nb = kvcache_blocks_for(kv, steps + 1);
    int32_t *blocks = malloc(sizeof(int32_t) * (size_t)nb);
    kvcache_alloc(kv, nb, blocks);
    struct native_seq_view sv = {blocks, nb};
    int32_t *pos = calloc(ids.n, 4), *seq = calloc(ids.n, 4);
    for (size_t i = 0; i < ids.n; i++)
        pos[i] = (int32_t)i;
    int32_t last = (int32_t)ids.n - 1;
    struct native_batch b = {(int)ids.n, ids.v, pos, seq, &sv, 1, &last, 1};
    struct sampler_params sp = {0, 1, 0};
    uint64_t rng = 0;
    struct tok_decoder d;
    tok_decoder_init(&d, l->tok);
    d.prev = ids.v[ids.n - 1];
    char text[1024];
    size_t out_bytes = 0;

    const float *logits = native_forward_run(fw, kvcache_kv(kv), &b);
    double t_first = 0;
    int n = 0;
    for (int p = (int)ids.n;; p++) {
        int32_t next = sampler_sample(smp, logits, &sp, &rng);
        n++;
        if (n == 1)
            t_first = now_s();
        if (native_model_is_eos(l->m, next))
            break;
        out_bytes += tok_decoder_push(&d, next, text, sizeof(text));
        if (p >= steps)
            break;
        int32_t zero = 0;
        struct native_batch one = {1, &next, &p, &zero, &sv, 1, &zero, 1};
        logits = native_forward_run(fw, kvcache_kv(kv), &one);
    }
    double dt = now_s() - t_first;
    *generated = n;
    free(blocks);
    free(pos);
    free(seq);
    tok_ids_free(&ids);
    sampler_free(smp);
    native_forward_free(fw);
    kvcache_free(kv);
    (void)out_bytes;
    return n > 1 ? (n - 1) / dt : 0.0;
}

/* ---- many streams through the scheduler ---- */

static const char *const prompts[] = {
    "", "Once upon a time", "The cat", "Lily and Tom went to the park", "One day",
    "There was a big red ball", "The sun was shining", "Sam had a toy car",
    "A little bird", "Mom said", "The dog ran fast", "Tim was sad because",
    "Sue liked to draw", "In the forest there was", "Ben found a box", "The sky",
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int pending, started, n_streams;
static long total_tokens, streamed, decode_base;
static double t_decode, cpu_decode;   /* wall and process CPU time when decode began */
static double cpu_per_decode_token;   /* process CPU seconds per token in that window */

/* CPU seconds used by every thread of the process: on a shared machine the
 * work itself, which the wall clock is not. */
static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
static int seen[1024];     /* per stream: its first token has come (or it ended) */

/* A stream has started once its first token is out (or it ended without
 * one); when all have, every prompt is prefilled and the decode-only window
 * begins. Under mu. */
static void mark_started(int i)
{
    if (seen[i])
        return;
    seen[i] = 1;
    if (++started == n_streams) {
        t_decode = now_s();
        cpu_decode = cpu_s();
        decode_base = streamed;
    }
}

static int sink_token(void *ctx, const struct sched_token *t)
{
    (void)t;
    pthread_mutex_lock(&mu);
    streamed++;
    mark_started((int)(intptr_t)ctx);
    pthread_mutex_unlock(&mu);
    return 0;
}

static void sink_end(void *ctx, const struct sched_end *e)
{
    pthread_mutex_lock(&mu);
    total_tokens += e->completion_tokens;
    mark_started((int)(intptr_t)ctx);
    if (--pending == 0)
        pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

/* Returns aggregate tok/s over the whole run; *decode gets tok/s over the
 * window after every prompt was prefilled. */
static double run_streams(const struct lib *l, struct sched *s, int k, int max_tokens, double *decode)
{
    pthread_mutex_lock(&mu);
    pending = n_streams = k;
    total_tokens = streamed = decode_base = 0;
    started = 0;
    t_decode = 0;
    memset(seen, 0, sizeof(seen));
    pthread_mutex_unlock(&mu);
    double t0 = now_s();
    for (int i = 0; i < k; i++) {
        const char *p = prompts[i % 16];
        struct tok_ids ids = {0};
        prompt_encode_text(l->tok, l->style, p, strlen(p), &ids);
        struct sched_request r = {0};
        r.prompt = ids.v;
        r.n_prompt = (int)ids.n;
        r.max_tokens = max_tokens > 0 ? max_tokens : 256 - (int)ids.n + 1;
        r.sampling = (struct sampler_params){0, 1, 0};
        r.sink = (struct sched_sink){sink_token, sink_end, (void *)(intptr_t)i};
        uint64_t id;
        if (sched_submit(s, &r, &id) != SCHED_OK) {
            fprintf(stderr, "bench_native: submit failed\n");
            exit(1);
        }
        tok_ids_free(&ids);
    }
    pthread_mutex_lock(&mu);
    while (pending)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    double t1 = now_s(), c1 = cpu_s();
    *decode = t_decode > 0 && t1 > t_decode ? (double)(streamed - decode_base) / (t1 - t_decode) : 0.0;
    cpu_per_decode_token = t_decode > 0 && streamed > decode_base
                               ? (c1 - cpu_decode) / (double)(streamed - decode_base) : 0.0;
    return (double)total_tokens / (t1 - t0);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_native copy|single|streams|big [--model M] [--n K] "
                        "[--runs N] [--threads T] [--tokens N] [--mib N] [--portable] [--no-avx512] [--no-bf16]\n"
                        "       [--bf16-dp|--bf16-fma]\n");
        return 2;
    }
    const char *mode = argv[1], *model = NULL;
    int n = 16, runs = 10, threads = 0, tokens = 64, tokens_set = 0;
    unsigned flags = 0;
    size_t mib = 1024;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--portable")) {
            flags |= OPS_CPU_PORTABLE;
            continue;
        }
        if (!strcmp(a, "--no-avx512")) {
            flags |= OPS_CPU_NO_AVX512;
            continue;
        }
        if (!strcmp(a, "--no-bf16")) {
            flags |= OPS_CPU_NO_BF16;   /* the float AVX-512 tiles for BF16 weights */
            continue;
        }
        /* One of the two BF16 kernel sets (same bits), instead of the faster. */
        if (!strcmp(a, "--bf16-dp") || !strcmp(a, "--bf16-fma")) {
            flags |= !strcmp(a, "--bf16-dp") ? OPS_CPU_BF16_DP : OPS_CPU_BF16_FMA;
            continue;
        }
        i++;
        if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--n"))
            n = atoi(v);
        else if (!strcmp(a, "--runs"))
            runs = atoi(v);
        else if (!strcmp(a, "--threads"))
            threads = atoi(v);
        else if (!strcmp(a, "--tokens")) {
            tokens = atoi(v);
            tokens_set = 1;
        }
        else if (!strcmp(a, "--mib"))
            mib = (size_t)atol(v);
    }
    int cpus = threadpool_cpu_count();
    if (threads <= 0)
        threads = cpus;

    if (!strcmp(mode, "copy")) {
        double bw = copy_bandwidth(threads, mib);
        printf("{\"scenario\":\"copy\",\"threads\":%d,\"mib\":%zu,\"copy_gb_s\":%.2f,"
               "\"peak_rss_mib\":%.1f}\n",
               threads, mib, bw / 1e9, peak_rss_kib() / 1024.0);
        return 0;
    }
    if (!strcmp(mode, "matmul")) {
        /* One matmul, y = x W^T with W [rows x cols] BF16 (random) and n
         * tokens, repeated: the kernel's MAC rate, without a model. */
        const int64_t rows = 5504, cols = 2048;
        uint16_t *w = malloc(sizeof(uint16_t) * (size_t)(rows * cols));
        float *x = malloc(sizeof(float) * (size_t)n * (size_t)cols);
        float *y = malloc(sizeof(float) * (size_t)n * (size_t)rows);
        uint64_t st = 1;
        for (int64_t i = 0; i < rows * cols; i++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            w[i] = (uint16_t)(0x3c00 | ((st >> 40) & 0x7f)) ^ (uint16_t)((st >> 60) << 15);
        }
        for (int64_t i = 0; i < n * cols; i++)
            x[i] = (float)(i % 7) * 0.1f;
        struct native_backend *be = ops_cpu_new(threads, flags);
        struct native_mat m = {w, NATIVE_BF16, rows, cols, NULL};
        double best = 1e9;
        for (int r = 0; r < runs; r++) {
            double t0 = now_s();
            be->ops->matmul(be, n, x, 1, &m, &y, 0);
            double dt = now_s() - t0;
            best = dt < best ? dt : best;
        }
        printf("{\"scenario\":\"matmul\",\"kernels\":\"%s\",\"bf16\":\"%s\","
               "\"threads\":%d,\"rows\":%lld,"
               "\"cols\":%lld,\"tokens\":%d,\"gmac_s\":%.1f,\"weight_gb_s\":%.1f}\n",
               ops_cpu_kernels(be), ops_cpu_bf16_kernels(be), threads,
               (long long)rows, (long long)cols, n,
               (double)rows * cols * n / best / 1e9, (double)rows * cols * 2 / best / 1e9);
        native_backend_free(be);
        free(w);
        free(x);
        free(y);
        return 0;
    }
    if (!model || n < 1 || n > 1024) {
        fprintf(stderr, "bench_native: --model is required, --n 1..1024\n");
        return 2;
    }
    /* The big scenario measures memory bandwidth before the model is in
     * memory, so neither disturbs the other. */
    double big_bw = !strcmp(mode, "big") ? copy_bandwidth_child(threads, mib) : 0.0;
    struct lib l;
    double t_load = now_s();
    load(&l, model);
    t_load = now_s() - t_load;

    if (!strcmp(mode, "single")) {
        struct native_backend *be = ops_cpu_new(threads, flags);
        double *r = calloc((size_t)runs, sizeof(double));
        int gen = 0;
        for (int i = 0; i < runs; i++)
            r[i] = run_stream(&l, be, "", 256, &gen);
        qsort(r, (size_t)runs, sizeof(double), cmp_double);
        printf("{\"scenario\":\"single\",\"model\":\"%s\",\"kernels\":\"%s\","
               "\"bf16\":\"%s\",\"threads\":%d,"
               "\"runs\":%d,\"tokens\":%d,\"tok_s_median\":%.0f,\"tok_s_best\":%.0f,"
               "\"peak_rss_mib\":%.1f}\n",
               model, ops_cpu_kernels(be), ops_cpu_bf16_kernels(be), threads,
               runs, gen, r[runs / 2], r[runs - 1],
               peak_rss_kib() / 1024.0);
        free(r);
        native_backend_free(be);
    } else if (!strcmp(mode, "streams")) {
        char err[256];
        struct sched_config c = {n > 16 ? n : 16, 256, 256, (size_t)256 << 20, 0, NATIVE_MLA_ABSORB, NULL};
        struct native_backend *be = ops_cpu_new(threads, flags);
        struct sched *s = be ? sched_new(l.m, be, &c, err, sizeof(err)) : NULL;
        if (!s) {
            fprintf(stderr, "bench_native: %s\n", err);
            return 1;
        }
        double *r = calloc((size_t)runs, sizeof(double)), *d = calloc((size_t)runs, sizeof(double));
        for (int i = 0; i < runs; i++)
            r[i] = run_streams(&l, s, n, tokens_set ? tokens : 0, &d[i]);
        qsort(r, (size_t)runs, sizeof(double), cmp_double);
        qsort(d, (size_t)runs, sizeof(double), cmp_double);
        printf("{\"scenario\":\"streams\",\"model\":\"%s\",\"kernels\":\"%s\","
               "\"bf16\":\"%s\",\"threads\":%d,"
               "\"streams\":%d,\"runs\":%d,\"tokens_per_run\":%ld,\"agg_tok_s_median\":%.1f,"
               "\"agg_tok_s_best\":%.1f,\"decode_tok_s_median\":%.1f,"
               "\"decode_tok_per_cpu_s\":%.2f,\"peak_rss_mib\":%.1f}\n",
               model, ops_cpu_kernels(be), ops_cpu_bf16_kernels(be), threads,
               n, runs, total_tokens, r[runs / 2], r[runs - 1],
               d[runs / 2], cpu_per_decode_token > 0 ? 1.0 / cpu_per_decode_token : 0.0,
               peak_rss_kib() / 1024.0);
        free(r);
        free(d);
        sched_free(s);
        native_backend_free(be);
    } else if (!strcmp(mode, "big")) {
        double bw = big_bw;
        struct native_backend *be = ops_cpu_new(threads, flags);
        const struct native_model *m = l.m;
        /* Bytes a decode step reads: every matrix but the embedding, of which
         * it reads one row (the lm_head is separate when untied). */
        size_t emb = (size_t)m->embed.rows * (size_t)m->embed.cols * native_dtype_size(m->embed.dtype);
        size_t step_bytes = m->weight_bytes - (m->cfg.tied_embeddings ? 0 : emb);
        double best = 0;
        int gen = 0;
        for (int i = 0; i < runs; i++) {
            /* 16 prompt tokens: a fixed text the synthetic vocabulary encodes. */
            double ts = run_stream(&l, be, "the quick brown fox jumps over", 16 + tokens, &gen);
            best = ts > best ? ts : best;
        }
        double bound = bw / (double)step_bytes;
        printf("{\"scenario\":\"big\",\"model\":\"%s\",\"kernels\":\"%s\","
               "\"bf16\":\"%s\",\"threads\":%d,"
               "\"load_s\":%.2f,\"weight_bytes\":%zu,\"bytes_per_token\":%zu,\"copy_gb_s\":%.2f,"
               "\"bound_tok_s\":%.2f,\"tok_s_best\":%.2f,\"fraction_of_bound\":%.3f,"
               "\"generated\":%d,\"peak_rss_mib\":%.1f}\n",
               model, ops_cpu_kernels(be), ops_cpu_bf16_kernels(be), threads,
               t_load, m->weight_bytes, step_bytes, bw / 1e9,
               bound, best, best / bound, gen, peak_rss_kib() / 1024.0);
        native_backend_free(be);
    } else {
        fprintf(stderr, "bench_native: unknown scenario %s\n", mode);
        return 2;
    }
    tokenizer_free(l.tok);
    native_model_free(l.m);
    return 0;
}
