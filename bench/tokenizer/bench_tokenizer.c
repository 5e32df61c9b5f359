/* bench_tokenizer: encode throughput, load time and peak memory of the
 * tokenizer.json BPE tokenizer, on a JSONL file of prompts.
 *
 *   bench_tokenizer --tokenizer FILE --prompts FILE.jsonl [--field prompt]
 *                   [--passes N] [--threads N] [--no-cache] [--loads N]
 *
 * Prints one JSON object: load_ms (median of --loads loads), bytes and ids
 * per pass, MB/s of the first pass (cold word cache) and of the best later
 * pass, and peak RSS (getrusage ru_maxrss) after load and at the end. MB is
 * 10^6 bytes of UTF-8 prompt text. With --threads N every thread encodes the
 * whole set once per pass; MB/s counts all threads' bytes. bench.mjs runs
 * this beside the JavaScript reference and writes the comparison table. */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_bpe.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A field of /proc/self/status in KiB: VmHWM is the peak resident set of
 * this program's own address space (getrusage's ru_maxrss can carry the
 * parent's high-water mark across fork and exec), VmRSS the current one. */
static long proc_status_kib(const char *field)
{
    char line[256];
    long v = -1;
    size_t fl = strlen(field);
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
            v = atol(line + fl + 1);
            break;
        }
    fclose(f);
    return v;
}

static long peak_rss_kib(void)
{
    return proc_status_kib("VmHWM");
}

static long rss_now_kib(void)
{
    return proc_status_kib("VmRSS");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct set {
    char **text;
    size_t *len;
    size_t n, bytes;
};

struct job {
    const struct tokenizer *t;
    const struct set *s;
    size_t ids;
    int failed;
};

static void *encode_all(void *arg)
{
    struct job *j = arg;
    struct tok_ids ids = { 0 };
    j->ids = 0;
    for (size_t i = 0; i < j->s->n; i++) {
        ids.n = 0;
        if (tokenizer_encode(j->t, j->s->text[i], j->s->len[i], 0, &ids) != TOK_OK)
            j->failed = 1;
        j->ids += ids.n;
    }
    tok_ids_free(&ids);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *tok_path = NULL, *prompts = NULL, *field = "prompt";
    int passes = 3, threads = 1, cache = 1, loads = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            tok_path = argv[++i];
        else if (!strcmp(argv[i], "--prompts") && i + 1 < argc)
            prompts = argv[++i];
        else if (!strcmp(argv[i], "--field") && i + 1 < argc)
            field = argv[++i];
        else if (!strcmp(argv[i], "--passes") && i + 1 < argc)
            passes = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--loads") && i + 1 < argc)
            loads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-cache"))
            cache = 0;
        else {
            fprintf(stderr, "usage: bench_tokenizer --tokenizer FILE --prompts FILE.jsonl "
                            "[--field NAME] [--passes N] [--threads N] [--no-cache] [--loads N]\n");
            return 2;
        }
    }
    if (!tok_path || !prompts || passes < 1 || threads < 1 || threads > 64 || loads < 1)
        return 2;

    /* Prompts first, so the load-time RSS below includes them too. */
    struct set s = { 0 };
    FILE *f = fopen(prompts, "r");
    if (!f) {
        perror(prompts);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *row = json_loads(line, JSON_ALLOW_NUL | JSON_DECODE_ANY, NULL);
        json_t *p = json_is_string(row) ? row : json_object_get(row, field);
        if (json_is_string(p)) {
            s.text = realloc(s.text, (s.n + 1) * sizeof(char *));
            s.len = realloc(s.len, (s.n + 1) * sizeof(size_t));
            s.len[s.n] = json_string_length(p);
            s.text[s.n] = malloc(s.len[s.n] + 1);
            memcpy(s.text[s.n], json_string_value(p), s.len[s.n] + 1);
            s.bytes += s.len[s.n++];
        }
        json_decref(row);
    }
    free(line);
    fclose(f);
    long rss_prompts = peak_rss_kib();

    char err[256];
    struct tokenizer *t = NULL;
    double load_ms[64];
    if (loads > 64)
        loads = 64;
    for (int i = 0; i < loads; i++) {
        tokenizer_free(t);
        double t0 = now_s();
        if (tok_bpe_load(tok_path, &t, err, sizeof(err)) != TOK_OK) {
            fprintf(stderr, "load: %s\n", err);
            return 1;
        }
        load_ms[i] = (now_s() - t0) * 1e3;
    }
    qsort(load_ms, (size_t)loads, sizeof(double), cmp_double);
    long rss_loaded = peak_rss_kib(), rss_resident = rss_now_kib();
    tok_bpe_set_cache(t, cache);

    double first = 0, best = 0;
    size_t ids_per_pass = 0;
    for (int p = 0; p < passes; p++) {
        pthread_t th[64];
        struct job jobs[64];
        double t0 = now_s();
        for (int k = 0; k < threads; k++) {
            jobs[k] = (struct job){ t, &s, 0, 0 };
            pthread_create(&th[k], NULL, encode_all, &jobs[k]);
        }
        for (int k = 0; k < threads; k++) {
            pthread_join(th[k], NULL);
            if (jobs[k].failed) {
                fprintf(stderr, "an encode failed\n");
                return 1;
            }
        }
        double mbs = (double)s.bytes * threads / (now_s() - t0) / 1e6;
        ids_per_pass = jobs[0].ids;
        if (p == 0)
            first = mbs;
        else if (mbs > best)
            best = mbs;
    }
    printf("{\"impl\":\"c\",\"prompts\":%zu,\"bytes\":%zu,\"ids\":%zu,\"threads\":%d,\"cache\":%s,"
           "\"load_ms\":%.1f,\"mbs_first\":%.2f,\"mbs_best\":%.2f,\"rss_prompts_kib\":%ld,"
           "\"rss_loaded_kib\":%ld,\"rss_resident_loaded_kib\":%ld,\"rss_peak_kib\":%ld}\n",
           s.n, s.bytes, ids_per_pass, threads, cache ? "true" : "false", load_ms[loads / 2], first,
           passes > 1 ? best : first, rss_prompts, rss_loaded, rss_resident, peak_rss_kib());
    tokenizer_free(t);
    for (size_t i = 0; i < s.n; i++)
        free(s.text[i]);
    free(s.text);
    free(s.len);
    return 0;
}
