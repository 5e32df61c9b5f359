/* bench_classifier: latency of classifier_scores() per prompt, one thread.
 *
 *   bench_classifier --model classifier/models/difficulty.cdm \
 *                    --data ../shared/data/routing/routellm_mmlu_gsm8k.train.jsonl [--passes 5]
 *
 * Two workloads:
 *   all   every routing prompt as it is (12,435 prompts, 21 B to 4.9 KB);
 *   2kb   2048-byte prompts cut from the same text: each prompt padded with
 *         the prompts after it (newline-separated) and cut at 2048 bytes.
 * After one warm-up pass, each pass scores every prompt once, in file order,
 * timing each call alone with CLOCK_MONOTONIC. Two views of the same calls:
 *   all calls   percentiles over every call of every pass;
 *   best of N   each prompt's fastest call over the N passes, percentiles over
 *               prompts: what the prompt costs, without the preemptions a
 *               shared 2-core machine adds to single calls.
 * The timer's own cost (two clock_gettime calls back to back) is measured
 * and reported, not subtracted. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "classifier/classifier.h"
#include "classifier/dataset.h"
#include "common/mem.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double pctl(const uint64_t *sorted, size_t n, double p)
{
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)sorted[i] / 1000.0;
}

static volatile float sink;

/* What the gateway calls per request: every score of the prompt. */
static float score_all(const struct classifier *c, const struct classifier_input *in)
{
    struct classifier_scores s;
    classifier_scores(c, in, &s);
    return s.route;
}

static void run(const char *name, const struct classifier *c, char **texts, size_t *lens, size_t n, int passes)
{
    uint64_t *ns = xmalloc((size_t)passes * n * sizeof *ns);
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        struct classifier_input in = {.user = texts[i], .user_len = lens[i], .n_messages = 1};
        sink = score_all(c, &in); /* warm-up */
        bytes += lens[i];
    }
    uint64_t t0 = now_ns();
    for (int p = 0; p < passes; p++)
        for (size_t i = 0; i < n; i++) {
            struct classifier_input in = {.user = texts[i], .user_len = lens[i], .n_messages = 1};
            uint64_t a = now_ns();
            sink = score_all(c, &in);
            ns[(size_t)p * n + i] = now_ns() - a;
        }
    double wall = (double)(now_ns() - t0) / 1e9;
    size_t m = (size_t)passes * n;
    uint64_t *best = xmalloc(n * sizeof *best);
    for (size_t i = 0; i < n; i++) {
        best[i] = ns[i];
        for (int p = 1; p < passes; p++)
            if (ns[(size_t)p * n + i] < best[i])
                best[i] = ns[(size_t)p * n + i];
    }
    qsort(best, n, sizeof *best, cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < m; i++)
        sum += (double)ns[i];
    qsort(ns, m, sizeof *ns, cmp_u64);
    printf("| %s | %zu | %.0f | all %d x %zu calls | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f |\n", name, n,
           (double)bytes / (double)n, passes, n, pctl(ns, m, 0.5), pctl(ns, m, 0.99), pctl(ns, m, 0.999),
           (double)ns[m - 1] / 1000.0, sum / (double)m / 1000.0, (double)m / wall);
    printf("| %s | %zu | %.0f | best of %d per prompt | %.2f | %.2f | %.2f | %.2f | | |\n", name, n,
           (double)bytes / (double)n, passes, pctl(best, n, 0.5), pctl(best, n, 0.99), pctl(best, n, 0.999),
           (double)best[n - 1] / 1000.0);
    free(best);
    free(ns);
}

int main(int argc, char **argv)
{
    const char *model = NULL, *data = NULL;
    int passes = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--data"))
            data = argv[i + 1];
        else if (!strcmp(argv[i], "--passes"))
            passes = atoi(argv[i + 1]);
    }
    if (!model || !data || passes < 1) {
        fprintf(stderr, "usage: bench_classifier --model FILE --data FILE [--passes N]\n");
        return 2;
    }
    char err[512];
    struct classifier *c = classifier_load(model, err, sizeof err);
    struct dataset *d = c ? dataset_load(data, err, sizeof err) : NULL;
    if (!d) {
        fprintf(stderr, "bench_classifier: %s\n", err);
        classifier_free(c);
        return 1;
    }

    size_t n = d->n;
    char **texts = xmalloc(n * sizeof *texts), **cut = xmalloc(n * sizeof *cut);
    size_t *lens = xmalloc(n * sizeof *lens), *cut_lens = xmalloc(n * sizeof *cut_lens);
    for (size_t i = 0; i < n; i++) {
        texts[i] = d->rows[i].prompt;
        lens[i] = d->rows[i].prompt_len;
        cut[i] = xmalloc(2048);
        size_t k = 0;
        for (size_t j = i; k < 2048; j = (j + 1) % n) {
            size_t take = d->rows[j].prompt_len < 2048 - k ? d->rows[j].prompt_len : 2048 - k;
            memcpy(cut[i] + k, d->rows[j].prompt, take);
            k += take;
            if (k < 2048)
                cut[i][k++] = '\n';
        }
        cut_lens[i] = 2048;
    }

    uint64_t tmin = UINT64_MAX;
    for (int i = 0; i < 100000; i++) {
        uint64_t a = now_ns(), b = now_ns();
        if (b - a < tmin)
            tmin = b - a;
    }
    printf("timer overhead (min of back-to-back clock_gettime pairs): %llu ns\n\n", (unsigned long long)tmin);
    printf("| workload | prompts | mean bytes | view | p50 us | p99 us | p99.9 us | max us | mean us | scores/s |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    run("all routing prompts", c, texts, lens, n, passes);
    run("2 KB prompts", c, cut, cut_lens, n, passes);

    for (size_t i = 0; i < n; i++)
        free(cut[i]);
    free(cut);
    free(cut_lens);
    free(texts);
    free(lens);
    dataset_free(d);
    classifier_free(c);
    return 0;
}
