/* test_classifier: the difficulty classifier as the gateway relies on it.
 *
 * - the shipped model loads, and scores are in [0,1], deterministic (same
 *   text, same bits; from several threads at once too) and total (empty,
 *   binary and huge inputs);
 * - the file format: little-endian on disk whatever the host, a write/read
 *   round trip, and a clear error for a truncated, oversized, corrupt (one
 *   flipped byte), wrongly versioned or non-finite model;
 * - the trainer's view of the features equals the scorer's;
 * - format 2: three heads, trees and the route-score quantiles round
 *   trip; route is (1 + gain) / 2; a format-1 file is refused by name;
 * - the option-structure signals on hand-worked prompts;
 * - length reaches the route score monotonically for word problems, on a
 *   model fitted here and on the shipped one (and the check can fail);
 * - on the held-out subjects, which the shipped model never saw, it beats
 *   the TF-IDF baseline fitted here on every other row, in AUC and APGR,
 *   its share thresholds order as they should, and it ranks GSM8K above
 *   MMLU on average. (The repeated grouped folds are classifier-eval's.) */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "classifier/classifier.h"
#include "classifier/cmodel.h"
#include "classifier/dataset.h"
#include "classifier/features.h"
#include "classifier/routeval.h"
#include "classifier/tfidf.h"
#include "classifier/trainer.h"
#include "tests/unit/test.h"

static char model_path[1024], data_path[1024], tmp_path[1024];

static const char *gsm8k_hard =
    "A bakery sells muffins for $3 each and cookies for $1.50 each. On Monday it sold 48 muffins and twice "
    "as many cookies. On Tuesday it sold 25% fewer muffins than on Monday and 12 more cookies than on "
    "Monday. How much money did the bakery make on the two days together?";
static const char *mmlu_easy = "What is the capital of France?\nA. Paris\nB. Rome\nC. Berlin\nD. Madrid\nAnswer:";

static float score_text(const struct classifier *c, const char *text, size_t len)
{
    struct classifier_input in = {.user = text, .user_len = len, .n_messages = 1};
    return classifier_score(c, &in);
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    *len = fread(buf, 1, (size_t)n, f);
    fclose(f);
    return buf;
}

static void write_all(const char *path, const unsigned char *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(buf, 1, len, f);
        fclose(f);
    }
}

/* Load buf[0..len) from a file; 1 when it fails with want in the error. */
static int load_fails_with(const unsigned char *buf, size_t len, const char *want)
{
    write_all(tmp_path, buf, len);
    char err[256] = "";
    struct classifier *c = classifier_load(tmp_path, err, sizeof err);
    int ok = !c && strstr(err, want) != NULL;
    if (!ok)
        fprintf(stderr, "  load of %zu bytes: expected \"%s\", got \"%s\"\n", len, want, c ? "(loaded)" : err);
    classifier_free(c);
    return ok;
}

static void test_scores(const struct classifier *c)
{
    float a = score_text(c, gsm8k_hard, strlen(gsm8k_hard));
    float b = score_text(c, gsm8k_hard, strlen(gsm8k_hard));
    char *copy = strdup(gsm8k_hard);
    float d = score_text(c, copy, strlen(copy));
    free(copy);
    CHECK(a >= 0.0f && a <= 1.0f);
    CHECK(memcmp(&a, &b, sizeof a) == 0 && memcmp(&a, &d, sizeof a) == 0);

    /* Total: NULL, empty, binary and huge inputs all score. */
    struct classifier_input none = {0};
    float e = classifier_score(c, &none);
    CHECK(e >= 0.0f && e <= 1.0f);
    CHECK(score_text(c, "", 0) == e);
    unsigned char bin[512];
    for (int i = 0; i < 512; i++)
        bin[i] = (unsigned char)(i * 37 + 11);
    float f = score_text(c, (const char *)bin, sizeof bin);
    CHECK(f >= 0.0f && f <= 1.0f);
    size_t big = 1 << 20;
    char *huge = malloc(big);
    for (size_t i = 0; i < big; i++)
        huge[i] = "the quick brown fox 42 + 17 = ?\n"[i % 32];
    float g = score_text(c, huge, big);
    CHECK(g >= 0.0f && g <= 1.0f);
    /* Bounded reading: bytes between the head and tail windows do not move
     * the n-gram part of the score. */
    struct classifier_input hin = {.user = huge, .user_len = big, .n_messages = 1};
    uint32_t bits = 12;
    float *w = malloc(sizeof(float) << bits);
    for (size_t i = 0; i < ((size_t)1 << bits); i++)
        w[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    float s1 = features_sparse_dot(&hin, bits, w);
    memset(huge + FEATURES_HEAD + 100, 'x', 4096);
    float s2 = features_sparse_dot(&hin, bits, w);
    CHECK(s1 == s2);
    free(w);
    free(huge);

    /* The system prompt and turn count are inputs too (the shipped data has
     * neither, so only check that they are accepted and stay in range). */
    struct classifier_input full = {.system = "You are terse.", .system_len = 14, .user = mmlu_easy,
                                    .user_len = strlen(mmlu_easy), .n_messages = 7};
    float h = classifier_score(c, &full);
    CHECK(h >= 0.0f && h <= 1.0f);
}

struct thread_arg {
    const struct classifier *c;
    float out[2];
};

static void *score_thread(void *p)
{
    struct thread_arg *a = p;
    for (int r = 0; r < 200; r++) {
        a->out[0] = score_text(a->c, gsm8k_hard, strlen(gsm8k_hard));
        a->out[1] = score_text(a->c, mmlu_easy, strlen(mmlu_easy));
    }
    return NULL;
}

static void test_threads(const struct classifier *c)
{
    float want0 = score_text(c, gsm8k_hard, strlen(gsm8k_hard));
    float want1 = score_text(c, mmlu_easy, strlen(mmlu_easy));
    pthread_t t[4];
    struct thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i].c = c;
        pthread_create(&t[i], NULL, score_thread, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK(args[i].out[0] == want0 && args[i].out[1] == want1);
    }
}

/* The trainer's (bucket, value) pairs give the scorer's dot product. */
static void test_features_agree(void)
{
    const char *texts[] = {gsm8k_hard, mmlu_easy, "x", "  \n\t ", "Ünïcödé ∑ λ → x² 3.14159"};
    unsigned bits = 14;
    float *w = malloc(sizeof(float) << bits);
    for (size_t i = 0; i < ((size_t)1 << bits); i++)
        w[i] = (float)((i * 40503u) % 2001) / 1000.0f - 1.0f;
    for (size_t t = 0; t < sizeof texts / sizeof texts[0]; t++) {
        struct classifier_input in = {.user = texts[t], .user_len = strlen(texts[t]), .n_messages = 1};
        struct features_entry *e;
        size_t n;
        CHECK(features_sparse_collect(&in, bits, &e, &n) == 0);
        double dot = 0;
        for (size_t i = 0; i < n; i++) {
            CHECK(e[i].index < (1u << bits));
            if (i > 0)
                CHECK(e[i].index > e[i - 1].index);
            dot += w[e[i].index] * e[i].value;
        }
        CHECK(fabs(dot - features_sparse_dot(&in, bits, w)) < 1e-4);
        free(e);
    }
    free(w);

    /* Dense signals see the multiple-choice shape and the arithmetic. */
    float x[FEATURES_N_DENSE], y[FEATURES_N_DENSE];
    struct classifier_input a = {.user = mmlu_easy, .user_len = strlen(mmlu_easy), .n_messages = 1};
    struct classifier_input b = {.user = gsm8k_hard, .user_len = strlen(gsm8k_hard), .n_messages = 1};
    features_dense(&a, x);
    features_dense(&b, y);
    CHECK(x[FD_HAS_4_OPTIONS] == 1.0f && y[FD_HAS_4_OPTIONS] == 0.0f);
    CHECK(x[FD_ENDS_ANSWER] == 1.0f && y[FD_ENDS_ANSWER] == 0.0f);
    CHECK(fabsf(x[FD_LOG_OPTIONS] - logf(5.0f)) < 1e-5);
    CHECK(y[FD_LOG_NUMBERS] > x[FD_LOG_NUMBERS] && y[FD_LOG_CURRENCY] > 0 && y[FD_LOG_PERCENT] > 0);
    CHECK(y[FD_LOG_QWORDS] > 0);
}

/* A one-head model with known values, for the format checks. */
static struct cmodel *small_model(int n_heads)
{
    int kinds[3] = {CMODEL_NEEDS_LARGE, CMODEL_SMALL_RIGHT, CMODEL_LARGE_RIGHT}, hidden[3] = {2, 0, 0};
    struct cmodel *m = cmodel_new(FEATURES_MIN_BITS, n_heads, kinds, hidden);
    if (!m)
        return NULL;
    m->head[0].bias = 1.5f;
    m->sparse_w[3 * CMODEL_SPARSE_STRIDE] = -0.25f; /* bucket 3, head 0 */
    m->head[0].out_w[1] = 2.0f;
    m->head[0].hidden_b[1] = 0.5f;
    return m;
}

static void test_format(void)
{
    /* bias 1.5 must sit at its offset as the little-endian bytes of
     * 0x3fc00000, whatever this host's order. */
    struct cmodel *m = small_model(1);
    CHECK(m != NULL);
    if (!m)
        return;
    CHECK(cmodel_set_meta(m, "{\"k\":1}") == 0);
    char err[256];
    CHECK(cmodel_write(m, tmp_path, err, sizeof err) == 0);
    size_t len;
    unsigned char *buf = read_all(tmp_path, &len);
    size_t bias_at = CMODEL_HEADER_BYTES + 2 * 4 * FEATURES_N_DENSE + 16;
    CHECK(buf && memcmp(buf, "CASCDIFF", 8) == 0);
    CHECK(buf && buf[8] == 2 && buf[9] == 0 && buf[10] == 0 && buf[11] == 0);
    CHECK(buf && buf[bias_at] == 0x00 && buf[bias_at + 1] == 0x00 && buf[bias_at + 2] == 0xc0 &&
          buf[bias_at + 3] == 0x3f);
    CHECK(len == (size_t)buf[16] + ((size_t)buf[17] << 8) + ((size_t)buf[18] << 16));

    struct cmodel *r = cmodel_read(tmp_path, err, sizeof err);
    CHECK(r != NULL);
    if (r) {
        CHECK(r->head[0].bias == 1.5f && r->sparse_w[3 * CMODEL_SPARSE_STRIDE] == -0.25f && r->head[0].out_w[1] == 2.0f &&
              r->head[0].hidden_b[1] == 0.5f);
        CHECK(r->n_heads == 1 && r->head[0].n_hidden == 2 && r->hash_bits == FEATURES_MIN_BITS);
        CHECK_STR(r->meta, "{\"k\":1}");
        /* Hidden unit 1 is ReLU(0.5) * 2 = 1, on top of the bias; one head
         * routes by P(needs large). */
        struct classifier_input in = {0};
        float logit;
        cmodel_logits(r, &in, &logit);
        CHECK(fabsf(logit - 2.5f) < 1e-6);
        struct classifier_scores sc;
        cmodel_scores(r, &in, &sc);
        CHECK(fabsf(sc.route - 1.0f / (1.0f + expf(-2.5f))) < 1e-6 && sc.route == sc.needs_large);
        CHECK(sc.small_right == -1.0f && sc.large_right == -1.0f && sc.gain == 0.0f);
        CHECK(cmodel_threshold_for_share(r, 0.3) == -1);
        cmodel_free(r);
    }

    /* Truncated anywhere, oversized, corrupt, or from another version. */
    CHECK(load_fails_with(buf, 0, "truncated"));
    CHECK(load_fails_with(buf, 7, "truncated"));
    CHECK(load_fails_with(buf, 40, "truncated"));
    CHECK(load_fails_with(buf, len / 2, "truncated"));
    CHECK(load_fails_with(buf, len - 1, "truncated"));
    unsigned char *more = malloc(len + 1);
    memcpy(more, buf, len);
    more[len] = 0;
    CHECK(load_fails_with(more, len + 1, "oversized"));
    free(more);
    buf[bias_at + 2] ^= 0x01;
    CHECK(load_fails_with(buf, len, "checksum"));
    buf[bias_at + 2] ^= 0x01;
    buf[len - 5] ^= 0x80; /* in the checksum itself */
    CHECK(load_fails_with(buf, len, "checksum"));
    buf[len - 5] ^= 0x80;
    buf[8] = 3;
    CHECK(load_fails_with(buf, len, "unsupported model format version 3"));
    /* The v1 format is refused by name, with what to do about it. */
    buf[8] = 1;
    CHECK(load_fails_with(buf, len, "model format 1 is no longer supported; regenerate with "
                                    "classifier/models/regenerate.sh"));
    buf[8] = 2;
    buf[0] = 'X';
    CHECK(load_fails_with(buf, len, "bad magic"));
    buf[0] = 'C';
    write_all(tmp_path, buf, len); /* restored: loads again */
    struct classifier *ok = classifier_load(tmp_path, err, sizeof err);
    CHECK(ok != NULL);
    classifier_free(ok);
    free(buf);

    /* A NaN weight behind a valid checksum is still refused. */
    m->sparse_w[7 * CMODEL_SPARSE_STRIDE] = NAN;
    CHECK(cmodel_write(m, tmp_path, err, sizeof err) == 0);
    char lerr[256] = "";
    struct classifier *c = classifier_load(tmp_path, lerr, sizeof lerr);
    CHECK(!c && strstr(lerr, "non-finite"));
    classifier_free(c);
    cmodel_free(m);

    CHECK(classifier_load("/nonexistent/model.cdm", lerr, sizeof lerr) == NULL && strstr(lerr, "nonexistent"));
    classifier_free(NULL);
}

/* Three heads with trees and a route-score distribution: a write/read round
 * trip scores the same, route is the expected gain, and the threshold for a
 * share reads the stored quantiles. */
static void test_format_v2(void)
{
    struct cmodel *m = small_model(3);
    CHECK(m != NULL);
    if (!m)
        return;
    /* Head 2 (large_right) gets one depth-2 tree on FD_LOG_OPTIONS and
     * FD_LOG_DIGITS. */
    struct gbt_forest *f = &m->head[2].trees;
    f->n_trees = 1;
    f->depth = 2;
    f->feat = malloc(2 * sizeof *f->feat);
    f->thr = malloc(2 * sizeof *f->thr);
    f->leaf = malloc(4 * sizeof *f->leaf);
    f->feat[0] = FD_LOG_OPTIONS;
    f->thr[0] = 1.0f;
    f->feat[1] = FD_LOG_DIGITS;
    f->thr[1] = 0.5f;
    for (int i = 0; i < 4; i++)
        f->leaf[i] = 0.25f * (float)(i + 1);
    m->head[1].bias = -1.0f;
    float q[5] = {0.1f, 0.2f, 0.4f, 0.6f, 0.9f};
    CHECK(cmodel_set_quantiles(m, q, 5) == 0);
    char err[256];
    CHECK(cmodel_write(m, tmp_path, err, sizeof err) == 0);
    struct cmodel *r = cmodel_read(tmp_path, err, sizeof err);
    CHECK(r != NULL);
    if (!r) {
        fprintf(stderr, "  %s\n", err);
        cmodel_free(m);
        return;
    }
    CHECK(r->n_heads == 3 && r->head[2].trees.n_trees == 1 && r->head[2].trees.feat[1] == FD_LOG_DIGITS);
    struct classifier_input in = {.user = mmlu_easy, .user_len = strlen(mmlu_easy), .n_messages = 1};
    float la[3], lb[3];
    cmodel_logits(m, &in, la);
    cmodel_logits(r, &in, lb);
    CHECK(memcmp(la, lb, sizeof la) == 0);
    /* mmlu_easy has 4 options (log 5 > 1) and no digits: leaf index 1. */
    CHECK(lb[2] == 0.5f);
    struct classifier_scores s;
    cmodel_scores(r, &in, &s);
    float ps = 1.0f / (1.0f + expf(1.0f)), pl = 1.0f / (1.0f + expf(-0.5f));
    CHECK(fabsf(s.small_right - ps) < 1e-6 && fabsf(s.large_right - pl) < 1e-6);
    CHECK(fabsf(s.gain - (pl - ps)) < 1e-6 && fabsf(s.route - 0.5f * (1 + pl - ps)) < 1e-6);
    /* share s: the (1 - s) quantile, linear between the stored ones. */
    CHECK(fabs(cmodel_threshold_for_share(r, 0.5) - 0.4) < 1e-6);
    CHECK(fabs(cmodel_threshold_for_share(r, 0.125) - 0.75) < 1e-6);
    CHECK(cmodel_threshold_for_share(r, 0) > 1.0 && cmodel_threshold_for_share(r, -1) > 1.0);
    CHECK(cmodel_threshold_for_share(r, 1) == 0 && cmodel_threshold_for_share(r, NAN) > 1.0);
    cmodel_free(r);

    /* Quantiles out of order, and a tree that names a signal past D, are
     * refused even behind a valid checksum. */
    q[3] = 0.3f;
    CHECK(cmodel_set_quantiles(m, q, 5) == 0);
    CHECK(cmodel_write(m, tmp_path, err, sizeof err) == 0);
    r = cmodel_read(tmp_path, err, sizeof err);
    CHECK(!r && strstr(err, "quantiles"));
    cmodel_free(r);
    q[3] = 0.6f;
    CHECK(cmodel_set_quantiles(m, q, 5) == 0);
    f->feat[0] = FEATURES_N_DENSE;
    CHECK(cmodel_write(m, tmp_path, err, sizeof err) == 0);
    r = cmodel_read(tmp_path, err, sizeof err);
    CHECK(!r && strstr(err, "tree tests signal"));
    cmodel_free(r);
    cmodel_free(m);
}

/* The option-structure signals (features.h, version 2) on prompts whose
 * overlaps are worked out by hand, and the k-vector sparse dot against k
 * single ones. */
static void test_option_signals(void)
{
    float x[FEATURES_N_DENSE];
    /* Options {red apple}, {green apple}, {red pear}: Jaccard 1/3, 0, 1/3,
     * mean 2/9. The stem "Which apple is red?" holds "apple" and "red"
     * ("which", "is" are not in the options): shares 1, 1/2, 1/2, mean 2/3.
     * Lengths 9, 11 and 8 bytes. */
    const char *t = "Which apple is red?\nA. red apple\nB. green apple\nC. red pear\nAnswer:";
    struct classifier_input in = {.user = t, .user_len = strlen(t), .n_messages = 1};
    features_dense(&in, x);
    CHECK(fabsf(x[FD_OPT_OVERLAP] - 2.0f / 9.0f) < 1e-6);
    CHECK(fabsf(x[FD_OPT_STEM_OVERLAP] - 2.0f / 3.0f) < 1e-6);
    CHECK(fabsf(x[FD_OPT_LEN_SPREAD] - (log1pf(11) - log1pf(8))) < 1e-6);
    CHECK(x[FD_MC_LOG_WORDS] == x[FD_LOG_WORDS] && x[FD_WP_LOG_WORDS] == 0.0f);
    CHECK(fabsf(x[FD_MC_LOG_STEM] - log1pf(20)) < 1e-6);
    /* Function words ("the", "of") do not count as overlap. */
    const char *u = "Q?\nA. the cat\nB. of the dog\n";
    in = (struct classifier_input){.user = u, .user_len = strlen(u), .n_messages = 1};
    features_dense(&in, x);
    CHECK(x[FD_OPT_OVERLAP] == 0.0f && x[FD_OPT_STEM_OVERLAP] == 0.0f);
    /* A word problem: no option signals, its length in FD_WP_LOG_WORDS. */
    in = (struct classifier_input){.user = gsm8k_hard, .user_len = strlen(gsm8k_hard), .n_messages = 1};
    features_dense(&in, x);
    CHECK(x[FD_OPT_OVERLAP] == 0.0f && x[FD_OPT_STEM_OVERLAP] == 0.0f && x[FD_OPT_LEN_SPREAD] == 0.0f);
    CHECK(x[FD_WP_LOG_WORDS] == x[FD_LOG_WORDS] && x[FD_WP_LOG_WORDS] > 3.0f && x[FD_MC_LOG_WORDS] == 0.0f);

    unsigned bits = 12;
    size_t nb = (size_t)1 << bits;
    float *w4 = aligned_alloc(64, 4 * nb * sizeof *w4), *w1 = malloc(nb * sizeof *w1);
    for (size_t i = 0; i < 4 * nb; i++)
        w4[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    const char *texts[] = {gsm8k_hard, mmlu_easy, "", "x"};
    for (size_t tt = 0; tt < 4; tt++) {
        in = (struct classifier_input){.user = texts[tt], .user_len = strlen(texts[tt]), .n_messages = 1};
        float out[4];
        features_sparse_dots(&in, bits, w4, out);
        for (int j = 0; j < 4; j++) {
            for (size_t i = 0; i < nb; i++)
                w1[i] = w4[i * 4 + (size_t)j];
            CHECK(fabsf(out[j] - features_sparse_dot(&in, bits, w1)) < 1e-5);
        }
    }
    free(w4);
    free(w1);
}

static const int length_signals[] = {FD_LOG_BYTES, FD_LOG_WORDS, FD_LOG_LINES, FD_LOG_SENTENCES, FD_LOG_STEM_LEN,
                                     FD_WP_LOG_WORDS};
#define N_LENGTH_SIGNALS ((int)(sizeof length_signals / sizeof length_signals[0]))

/* 1 when m's route score of the word problem `text` never falls as its
 * length signals grow together (everything else held), over a sweep from
 * far shorter to far longer than the text. */
static int route_monotone_in_length(const struct cmodel *m, const char *text)
{
    struct classifier_input in = {.user = text, .user_len = strlen(text), .n_messages = 1};
    float x[FEATURES_N_DENSE], x2[FEATURES_N_DENSE], sparse[CMODEL_MAX_HEADS], logit[CMODEL_MAX_HEADS];
    features_dense(&in, x);
    float dots[FEATURES_MAX_DOTS];
    features_sparse_dots(&in, m->hash_bits, m->sparse_w, dots);
    memcpy(sparse, dots, sizeof sparse);
    float prev = -1.0f;
    for (int step = -40; step <= 40; step++) {
        memcpy(x2, x, sizeof x2);
        for (int i = 0; i < N_LENGTH_SIGNALS; i++) {
            float v = x[length_signals[i]] + 0.1f * (float)step;
            x2[length_signals[i]] = v > 0 ? v : 0;
        }
        cmodel_logits_from(m, x2, sparse, logit);
        struct classifier_scores s;
        cmodel_scores_of(m, logit, &s);
        if (s.route < prev) {
            fprintf(stderr, "  route falls with length: %.7f after %.7f at step %d\n", s.route, prev, step);
            return 0;
        }
        prev = s.route;
    }
    return 1;
}

/* No tree of m reads a length signal. */
static int trees_blind_to_length(const struct cmodel *m)
{
    for (int k = 0; k < m->n_heads; k++) {
        const struct gbt_forest *f = &m->head[k].trees;
        for (int i = 0; i < f->n_trees * f->depth; i++)
            for (int j = 0; j < N_LENGTH_SIGNALS; j++)
                if (f->feat[i] == (uint32_t)length_signals[j] && f->thr[i] < FLT_MAX)
                    return 0;
    }
    return 1;
}

static const char *word_problems[] = {
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
    "clips did Natalia sell altogether in April and May?",
    "A bakery sells muffins for $3 each and cookies for $1.50 each. On Monday it sold 48 muffins and twice "
    "as many cookies. On Tuesday it sold 25% fewer muffins than on Monday and 12 more cookies than on "
    "Monday. How much money did the bakery make on the two days together?",
    "Write a haiku about the sea.",
};

/* Length reaches a v2 model's score monotonically for word problems: the
 * trainer keeps the word-problem length weight's sign per head and the
 * trees never see length. Checked on a model fitted here (fast options)
 * and on the shipped one; and the check itself catches a wrong sign. */
static void test_length_monotone(const struct classifier *shipped)
{
    (void)shipped;
    if (access(data_path, R_OK) != 0) {
        TEST_SKIP("the trained-model monotonicity check: %s not found", data_path);
        return;
    }
    char err[256];
    struct dataset *d = dataset_load(data_path, err, sizeof err);
    CHECK(d != NULL);
    if (!d)
        return;
    /* Every 6th row: about 2,000 prompts, GSM8K and MMLU both. */
    size_t n = 0, *rows = malloc(d->n * sizeof *rows);
    struct classifier_input *in = malloc(d->n * sizeof *in);
    int *weak = malloc(d->n * sizeof *weak), *strong = malloc(d->n * sizeof *strong);
    for (size_t i = 0; i < d->n; i++) {
        in[i] = (struct classifier_input){.user = d->rows[i].prompt, .user_len = d->rows[i].prompt_len,
                                          .n_messages = 1};
        weak[i] = d->rows[i].weak_correct;
        strong[i] = d->rows[i].strong_correct;
        if (i % 6 == 0)
            rows[n++] = i;
    }
    struct trainer_features *f = trainer_featurize(in, d->n, 12);
    struct trainer_recipe r;
    trainer_recipe_default(&r, 2);
    r.lin.hash_bits = 12;
    r.lin.max_iter = 40;
    r.gbt_rounds = 20;
    r.gbt_min_leaf = 20;
    struct cmodel *m = f ? trainer_fit_recipe(f, rows, n, weak, strong, &r, err, sizeof err) : NULL;
    CHECK(m != NULL);
    if (m) {
        CHECK(m->n_heads == 3 && cmodel_head_of(m, CMODEL_SMALL_RIGHT) >= 0 &&
              cmodel_head_of(m, CMODEL_LARGE_RIGHT) >= 0 && cmodel_head_of(m, CMODEL_NEEDS_LARGE) >= 0);
        int sr = cmodel_head_of(m, CMODEL_SMALL_RIGHT), lr = cmodel_head_of(m, CMODEL_LARGE_RIGHT);
        /* Every head has its own 20 trees (large_right also carries the
         * small head's, being stacked on it). */
        for (int k = 0; k < m->n_heads; k++)
            CHECK(m->head[k].trees.n_trees >= 20);
        CHECK(m->head[lr].trees.n_trees == m->head[sr].trees.n_trees + 20);
        CHECK(m->head[sr].dense_w[FD_WP_LOG_WORDS] <= 0.0f && m->head[lr].dense_w[FD_WP_LOG_WORDS] >= 0.0f);
        CHECK(trees_blind_to_length(m));
        for (size_t t = 0; t < sizeof word_problems / sizeof word_problems[0]; t++)
            CHECK(route_monotone_in_length(m, word_problems[t]));
        /* The check can fail: the same model with the small model's
         * length weight turned positive (the data's own lean, unconstrained)
         * lets the route fall as a word problem grows. */
        float keep = m->head[sr].dense_w[FD_WP_LOG_WORDS];
        m->head[sr].dense_w[FD_WP_LOG_WORDS] = 0.5f;
        CHECK(!route_monotone_in_length(m, word_problems[0]));
        m->head[sr].dense_w[FD_WP_LOG_WORDS] = keep;
        cmodel_free(m);
    } else {
        fprintf(stderr, "  %s\n", err);
    }
    trainer_features_free(f);

    /* The shipped model, read as a cmodel. */
    struct cmodel *s = cmodel_read(model_path, err, sizeof err);
    CHECK(s != NULL);
    if (s) {
        CHECK(trees_blind_to_length(s));
        for (size_t t = 0; t < sizeof word_problems / sizeof word_problems[0]; t++)
            CHECK(route_monotone_in_length(s, word_problems[t]));
        cmodel_free(s);
    }
    free(rows);
    free(in);
    free(weak);
    free(strong);
    dataset_free(d);
}

/* The shipped file checked byte by byte: each of a sample of single-byte
 * flips is caught at load. */
static void test_shipped_flips(void)
{
    size_t len;
    unsigned char *buf = read_all(model_path, &len);
    CHECK(buf != NULL && len > 1000);
    if (!buf)
        return;
    size_t at[] = {20, 30, 64, 200, len / 3, len / 2, len - 40, len - 33, len - 1};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        buf[at[i]] ^= 0x10;
        CHECK(load_fails_with(buf, len, at[i] < 24 ? "" : "checksum"));
        buf[at[i]] ^= 0x10;
    }
    free(buf);
}


/* The shipped model on the held-out subjects of dataset.h, which it never
 * trained on (classifier-train --out leaves them out): it routes them better
 * than a TF-IDF baseline fitted here on every other row, in AUC and APGR;
 * the route-score distribution it carries predicts the share of these
 * unseen prompts above a threshold (what routing.large_share relies on);
 * and word problems score higher than multiple-choice questions on
 * average, as they need the large model more often (28% against 16%). */
static void test_heldout(const struct classifier *c)
{
    if (access(data_path, R_OK) != 0) {
        TEST_SKIP("the held-out evaluation: %s not found", data_path);
        return;
    }
    char err[256];
    struct dataset *d = dataset_load(data_path, err, sizeof err);
    CHECK(d != NULL);
    if (!d) {
        fprintf(stderr, "  %s: %s\n", data_path, err);
        return;
    }
    dataset_split(d, DATASET_SPLIT_SEED, DATASET_SUBJECT_FRAC, DATASET_RANDOM_FRAC);
    const char **texts = malloc(d->n * sizeof *texts);
    size_t *lens = malloc(d->n * sizeof *lens), *train = malloc(d->n * sizeof *train), n_train = 0;
    int *y = malloc(d->n * sizeof *y);
    for (size_t i = 0; i < d->n; i++) {
        texts[i] = d->rows[i].prompt;
        lens[i] = d->rows[i].prompt_len;
        y[i] = d->rows[i].label;
        if (d->rows[i].split != DATASET_VAL_SUBJECTS)
            train[n_train++] = i;
    }
    struct tfidf *base = tfidf_fit(texts, lens, y, train, n_train, 1.0);
    CHECK(base != NULL);
    float *score = malloc(d->n * sizeof *score), *base_score = malloc(d->n * sizeof *base_score);
    int *weak = malloc(d->n * sizeof *weak), *strong = malloc(d->n * sizeof *strong);
    size_t m = 0;
    for (size_t i = 0; i < d->n; i++) {
        if (d->rows[i].split != DATASET_VAL_SUBJECTS)
            continue;
        score[m] = score_text(c, d->rows[i].prompt, d->rows[i].prompt_len);
        base_score[m] = base ? tfidf_score(base, d->rows[i].prompt, d->rows[i].prompt_len) : 0.5f;
        weak[m] = d->rows[i].weak_correct;
        strong[m] = d->rows[i].strong_correct;
        m++;
    }
    struct routeval r, rb;
    CHECK(m > 1000);
    CHECK(routeval_compute(score, weak, strong, m, &r) == 0);
    CHECK(routeval_compute(base_score, weak, strong, m, &rb) == 0);
    printf("held-out subjects: %zu rows, AUC %.4f, APGR %.4f; TF-IDF baseline fitted here: AUC %.4f, APGR %.4f\n",
           m, r.auc, r.apgr, rb.auc, rb.apgr);
    CHECK(r.auc > rb.auc && r.apgr > rb.apgr);
    routeval_release(&r);
    routeval_release(&rb);
    /* The stored distribution, measured out of fold on other subjects:
     * thresholds fall as the share grows, and more of these unseen
     * prompts pass a lower one. How close the realised share comes to the
     * setting is printed, not asserted here: a new subject mix shifts the
     * whole distribution (tests/integration/route_shares.test.mjs holds the
     * acceptance bar of +-0.05). */
    double prev_t = 2, prev_got = -1;
    for (double share = 0.2; share < 0.55; share += 0.15) {
        double t = classifier_threshold_for_share(c, share);
        size_t above = 0;
        for (size_t i = 0; i < m; i++)
            above += score[i] >= t;
        double got = (double)above / (double)m;
        printf("share %.2f: threshold %.4f, realised %.4f on the held-out subjects\n", share, t, got);
        CHECK(t > 0 && t < 1 && t < prev_t && got > prev_got);
        prev_t = t;
        prev_got = got;
    }
    double sum[2] = {0, 0};
    size_t cnt[2] = {0, 0};
    for (size_t i = 0; i < d->n; i++) {
        int g = strcmp(d->rows[i].source, "gsm8k") == 0;
        sum[g] += score_text(c, d->rows[i].prompt, d->rows[i].prompt_len);
        cnt[g]++;
    }
    CHECK(cnt[0] > 100 && cnt[1] > 100);
    if (cnt[0] && cnt[1]) {
        printf("every row: mean route score MMLU %.4f (%zu), GSM8K %.4f (%zu)\n", sum[0] / cnt[0], cnt[0],
               sum[1] / cnt[1], cnt[1]);
        CHECK(sum[1] / cnt[1] > sum[0] / cnt[0] + 0.02);
    }
    free(score);
    free(base_score);
    free(weak);
    free(strong);
    free(texts);
    free(lens);
    free(train);
    free(y);
    tfidf_free(base);
    dataset_free(d);
}

int main(void)
{
    const char *src = getenv("CASCADE_SOURCE_DIR") ? getenv("CASCADE_SOURCE_DIR") : ".";
    const char *build = getenv("CASCADE_BUILD_DIR") ? getenv("CASCADE_BUILD_DIR") : ".";
    snprintf(model_path, sizeof model_path, "%s/classifier/models/difficulty.cdm", src);
    snprintf(data_path, sizeof data_path, "%s/data/routing/routellm_mmlu_gsm8k.train.jsonl", test_shared_dir());
    snprintf(tmp_path, sizeof tmp_path, "%s/test_classifier.%d.cdm", build, (int)getpid());

    char err[256];
    struct classifier *c = classifier_load(model_path, err, sizeof err);
    CHECK(c != NULL);
    if (!c) {
        fprintf(stderr, "%s\n", err);
        TEST_MAIN_END();
    }
    CHECK(strstr(classifier_metadata(c), "needs_large") != NULL);
    test_scores(c);
    test_threads(c);
    test_features_agree();
    test_format();
    test_format_v2();
    test_option_signals();
    test_length_monotone(c);
    test_shipped_flips();
    test_heldout(c);
    classifier_free(c);
    remove(tmp_path);
    TEST_MAIN_END();
}
