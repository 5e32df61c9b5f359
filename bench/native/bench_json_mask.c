/* bench_json_mask: what response_format json_object costs per generated
 * token: json_constraint_mask() over a real vocabulary, along a real JSON
 * object's tokens (the text below, encoded by the same tokenizer), against
 * the memcpy of the logits that any adjusted request already pays.
 *
 *   bench_json_mask --tok PATH [--vocab N] [--reps N]
 *       PATH: a llama2.c tokenizer.bin (with --vocab, e.g. 512) or a
 *       tokenizer.json (vocab: the tokenizer's, or --vocab, e.g. 129280 for
 *       DeepSeek-V3's padded head). Prints one JSON line: the tables' build
 *       time and size, then the mask's time per token (median, p90, max
 *       over every step of every rep), split into steps inside a string
 *       (the fast path) and elsewhere (the trie walk), and the memcpy.
 */
#include "engines/native/runtime/json_constraint.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_bpe.h"
#include "tokenizer/tokenizer_llama2c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char SAMPLE[] =
    "{\"name\": \"Lily\", \"age\": 3, \"toys\": [\"ball\", \"doll\", \"red kite\"], "
    "\"happy\": true, \"friend\": null, \"height_m\": 1.05, \"story\": \"She loved to play "
    "outside in the park. One day, she saw a big, red ball.\", \"tags\": {\"kind\": "
    "\"girl\", \"score\": -2.5e-1}}";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char *bytes_of(void *ctx, int32_t id, size_t *len)
{
    const struct tokenizer *t = ctx;
    *len = 0;
    if (id == t->eos_id || id == t->bos_id)
        return NULL;
    return tokenizer_token_bytes(t, -1, id, len);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void stats(double *v, int n, double *med, double *p90, double *max)
{
    if (n == 0) {
        *med = *p90 = *max = 0;
        return;
    }
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    *med = v[n / 2];
    *p90 = v[(n * 9) / 10];
    *max = v[n - 1];
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int vocab = 0, reps = 200;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tok"))
            path = argv[i + 1];
        else if (!strcmp(argv[i], "--vocab"))
            vocab = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
    }
    if (!path || reps < 1) {
        fprintf(stderr, "usage: bench_json_mask --tok PATH [--vocab N] [--reps N]\n");
        return 2;
    }
    struct tokenizer *t = NULL;
    char err[256] = "";
    size_t pl = strlen(path);
    int rc = pl > 4 && !strcmp(path + pl - 4, ".bin") ? tok_llama2c_load(path, vocab, &t, err, sizeof(err))
                                                      : tok_bpe_load(path, &t, err, sizeof(err));
    if (rc != TOK_OK) {
        fprintf(stderr, "bench_json_mask: %s\n", err);
        return 1;
    }
    if (vocab <= 0)
        vocab = t->vocab_size;

    double t0 = now_s();
    struct json_vocab *v = json_vocab_new(vocab, bytes_of, t);
    double build_ms = (now_s() - t0) * 1e3;
    struct json_scratch *sc = v ? json_scratch_new(v) : NULL;
    struct tok_ids ids = {0};
    if (!v || !sc || tokenizer_encode(t, SAMPLE, strlen(SAMPLE), 0, &ids) != TOK_OK) {
        fprintf(stderr, "bench_json_mask: out of memory or the sample cannot be encoded\n");
        return 1;
    }
    /* The sample's ids, BOS dropped: the walk feeds them as the model would. */
    size_t first = ids.n && ids.v[0] == t->bos_id ? 1 : 0;
    const int steps = (int)(ids.n - first);
    float *logits = malloc(sizeof(float) * (size_t)vocab), *src = malloc(sizeof(float) * (size_t)vocab);
    double *in_str = malloc(sizeof(double) * (size_t)steps * (size_t)reps);
    double *other = malloc(sizeof(double) * (size_t)steps * (size_t)reps);
    double *copy = malloc(sizeof(double) * (size_t)steps * (size_t)reps);
    if (!logits || !src || !in_str || !other || !copy)
        return 1;
    for (int i = 0; i < vocab; i++)
        src[i] = (float)((i * 2654435761u) % 1000) * 1e-3f;
    int n_in = 0, n_other = 0, n_copy = 0, refused = 0;
    long allowed_sum = 0;
    for (int r = 0; r < reps; r++) {
        struct json_state st;
        json_state_init(&st);
        for (int k = 0; k < steps; k++) {
            double a = now_s();
            memcpy(logits, src, sizeof(float) * (size_t)vocab);
            double b = now_s();
            int in_string = st.mode == JC_STRING && st.utf8_need == 0;
            int n_ok = json_constraint_mask(v, sc, &st, 1 << 20, logits);
            double c = now_s();
            copy[n_copy++] = (b - a) * 1e6;
            if (in_string)
                in_str[n_in++] = (c - b) * 1e6;
            else
                other[n_other++] = (c - b) * 1e6;
            allowed_sum += n_ok;
            if (!json_constraint_advance(v, &st, ids.v[first + (size_t)k]))
                refused++;
        }
        if (!json_done(&st))
            refused++;
    }
    double all_mean = 0;
    for (int i = 0; i < n_in; i++)
        all_mean += in_str[i];
    for (int i = 0; i < n_other; i++)
        all_mean += other[i];
    all_mean /= (double)(n_in + n_other);
    double im, ip, ix, om, op, ox, cm, cp, cx;
    stats(in_str, n_in, &im, &ip, &ix);
    stats(other, n_other, &om, &op, &ox);
    stats(copy, n_copy, &cm, &cp, &cx);
    printf("{\"tokenizer\":\"%s\",\"vocab\":%d,\"tables_mib\":%.2f,\"build_ms\":%.1f,"
           "\"sample_tokens\":%d,\"reps\":%d,\"refused\":%d,\"mean_allowed\":%.0f,"
           "\"mask_us_mean\":%.2f,"
           "\"in_string\":{\"steps\":%d,\"median_us\":%.2f,\"p90_us\":%.2f,\"max_us\":%.2f},"
           "\"elsewhere\":{\"steps\":%d,\"median_us\":%.2f,\"p90_us\":%.2f,\"max_us\":%.2f},"
           "\"logits_memcpy\":{\"median_us\":%.2f,\"p90_us\":%.2f}}\n",
           path, vocab, (double)json_vocab_bytes(v) / (1 << 20), build_ms, steps, reps, refused,
           (double)allowed_sum / (double)(n_in + n_other), all_mean, n_in / reps, im, ip, ix,
           n_other / reps, om, op, ox, cm, cp);
    free(logits);
    free(src);
    free(in_str);
    free(other);
    free(copy);
    tok_ids_free(&ids);
    json_scratch_free(sc);
    json_vocab_free(v);
    tokenizer_free(t);
    return refused ? 1 : 0;
}
