/* test_classifier: the difficulty classifier as the gateway relies on it.
 *
 * - the shipped model loads, and scores are in [0,1], deterministic (same
 *   text, same bits; from several threads at once too) and total (empty,
 *   binary and huge inputs);
 * - the file format: little-endian on disk whatever the host, a write/read
 *   round trip, and a clear error for a truncated, oversized, corrupt (one
 *   flipped byte), wrongly versioned or non-finite model;
 * - the trainer's view of the features equals the scorer's;
 * - the shipped model still scores the held-out split as its evaluation
 *   recorded in classifier/models/metrics.json (a guard against the model
 *   file or the features drifting; routeval itself is checked against
 *   hand-computed and brute-force answers in test_routeval);
 * - it beats the TF-IDF baseline, fitted here on the same train rows (not
 *   read from a file), on unseen subjects, and ranks GSM8K above MMLU on
 *   average. */
#include <jansson.h>
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
#include "tests/unit/test.h"

static char model_path[1024], metrics_path[1024], data_path[1024], tmp_path[1024];

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

static void test_format(void)
{
    /* A small model with known values: bias 1.5 must sit at its offset as
     * the little-endian bytes of 0x3fc00000, whatever this host's order. */
    struct cmodel *m = cmodel_new(FEATURES_MIN_BITS, 2);
    CHECK(m != NULL);
    if (!m)
        return;
    m->bias = 1.5f;
    m->sparse_w[3] = -0.25f;
    m->out_w[1] = 2.0f;
    m->hidden_b[1] = 0.5f;
    CHECK(cmodel_set_meta(m, "{\"k\":1}") == 0);
    char err[256];
    CHECK(cmodel_write(m, tmp_path, err, sizeof err) == 0);
    size_t len;
    unsigned char *buf = read_all(tmp_path, &len);
    size_t bias_at = CMODEL_HEADER_BYTES + 2 * 4 * FEATURES_N_DENSE;
    CHECK(buf && memcmp(buf, "CASCDIFF", 8) == 0);
    CHECK(buf && buf[8] == 1 && buf[9] == 0 && buf[10] == 0 && buf[11] == 0);
    CHECK(buf && buf[bias_at] == 0x00 && buf[bias_at + 1] == 0x00 && buf[bias_at + 2] == 0xc0 &&
          buf[bias_at + 3] == 0x3f);
    CHECK(len == (size_t)buf[16] + ((size_t)buf[17] << 8) + ((size_t)buf[18] << 16));

    struct cmodel *r = cmodel_read(tmp_path, err, sizeof err);
    CHECK(r != NULL);
    if (r) {
        CHECK(r->bias == 1.5f && r->sparse_w[3] == -0.25f && r->out_w[1] == 2.0f && r->hidden_b[1] == 0.5f);
        CHECK(r->n_hidden == 2 && r->hash_bits == FEATURES_MIN_BITS);
        CHECK_STR(r->meta, "{\"k\":1}");
        /* Hidden unit 1 is ReLU(0.5) * 2 = 1, on top of the bias. */
        struct classifier_input in = {0};
        CHECK(fabsf(cmodel_logit(r, &in) - 2.5f) < 1e-6);
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
    buf[8] = 2;
    CHECK(load_fails_with(buf, len, "unsupported model format version 2"));
    buf[8] = 1;
    buf[0] = 'X';
    CHECK(load_fails_with(buf, len, "bad magic"));
    buf[0] = 'C';
    write_all(tmp_path, buf, len); /* restored: loads again */
    struct classifier *ok = classifier_load(tmp_path, err, sizeof err);
    CHECK(ok != NULL);
    classifier_free(ok);
    free(buf);

    /* A NaN weight behind a valid checksum is still refused. */
    m->sparse_w[7] = NAN;
    CHECK(cmodel_write(m, tmp_path, err, sizeof err) == 0);
    char lerr[256] = "";
    struct classifier *c = classifier_load(tmp_path, lerr, sizeof lerr);
    CHECK(!c && strstr(lerr, "non-finite"));
    classifier_free(c);
    cmodel_free(m);

    CHECK(classifier_load("/nonexistent/model.cdm", lerr, sizeof lerr) == NULL && strstr(lerr, "nonexistent"));
    classifier_free(NULL);
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

/* The TF-IDF + logistic regression baseline (tfidf.h, C = 1 as
 * scikit-learn's default), fitted on the train rows of d's split. */
static struct tfidf *fit_baseline(const struct dataset *d)
{
    const char **texts = malloc(d->n * sizeof *texts);
    size_t *lens = malloc(d->n * sizeof *lens), *train = malloc(d->n * sizeof *train), n_train = 0;
    int *y = malloc(d->n * sizeof *y);
    for (size_t i = 0; i < d->n; i++) {
        texts[i] = d->rows[i].prompt;
        lens[i] = d->rows[i].prompt_len;
        y[i] = d->rows[i].label;
        if (d->rows[i].split == DATASET_TRAIN)
            train[n_train++] = i;
    }
    struct tfidf *t = tfidf_fit(texts, lens, y, train, n_train, 1.0);
    free(texts);
    free(lens);
    free(train);
    free(y);
    return t;
}

/* The shipped model against its recorded evaluation and a baseline fitted
 * here. */
static void test_recorded_metrics(const struct classifier *c)
{
    if (access(data_path, R_OK) != 0) {
        TEST_SKIP("the held-out evaluation: %s not found", data_path);
        return;
    }
    json_error_t jerr;
    json_t *j = json_load_file(metrics_path, 0, &jerr);
    CHECK(j != NULL);
    char err[256];
    struct dataset *d = dataset_load(data_path, err, sizeof err);
    CHECK(d != NULL);
    if (!j || !d) {
        fprintf(stderr, "  %s / %s: %s\n", metrics_path, data_path, j ? err : jerr.text);
        json_decref(j);
        dataset_free(d);
        return;
    }
    dataset_split(d, (uint64_t)json_integer_value(json_object_get(j, "split_seed")), DATASET_SUBJECT_FRAC,
                  DATASET_RANDOM_FRAC);
    const char *keys[2] = {"heldout_subjects", "heldout_rows"};
    enum dataset_split splits[2] = {DATASET_VAL_SUBJECTS, DATASET_VAL_ROWS};
    struct tfidf *base = fit_baseline(d);
    CHECK(base != NULL);
    float *score = malloc(d->n * sizeof *score), *base_score = malloc(d->n * sizeof *base_score);
    int *weak = malloc(d->n * sizeof *weak), *strong = malloc(d->n * sizeof *strong);
    for (int s = 0; s < 2; s++) {
        size_t m = 0;
        for (size_t i = 0; i < d->n; i++) {
            if (d->rows[i].split != splits[s])
                continue;
            score[m] = score_text(c, d->rows[i].prompt, d->rows[i].prompt_len);
            base_score[m] = base ? tfidf_score(base, d->rows[i].prompt, d->rows[i].prompt_len) : 0.5f;
            weak[m] = d->rows[i].weak_correct;
            strong[m] = d->rows[i].strong_correct;
            m++;
        }
        struct routeval r, rb;
        CHECK(routeval_compute(score, weak, strong, m, &r) == 0);
        CHECK(routeval_compute(base_score, weak, strong, m, &rb) == 0);
        json_t *rec = json_object_get(json_object_get(j, keys[s]), "cascade");
        double auc = json_real_value(json_object_get(rec, "auc"));
        double apgr = json_real_value(json_object_get(rec, "apgr"));
        printf("%s: %zu rows, AUC %.4f (recorded %.4f), APGR %.4f (recorded %.4f), baseline fitted here: "
               "AUC %.4f, APGR %.4f\n", keys[s], m, r.auc, auc, r.apgr, apgr, rb.auc, rb.apgr);
        CHECK(m == (size_t)json_integer_value(json_object_get(json_object_get(j, keys[s]), "rows")));
        CHECK(fabs(r.auc - auc) < 1e-4);
        CHECK(fabs(r.apgr - apgr) < 1e-4);
        /* The acceptance bar: better than the baseline on unseen subjects. */
        if (s == 0)
            CHECK(r.auc > rb.auc && r.apgr > rb.apgr);
        routeval_release(&r);
        routeval_release(&rb);
    }
    /* Sensible order where the data has one: GSM8K word problems need the
     * large model more often than MMLU questions (28% against 16% of rows),
     * and the model scores unseen GSM8K prompts higher on average. */
    double sum[2] = {0, 0};
    size_t cnt[2] = {0, 0};
    for (size_t i = 0; i < d->n; i++) {
        if (d->rows[i].split != DATASET_VAL_ROWS)
            continue;
        int g = strcmp(d->rows[i].source, "gsm8k") == 0;
        sum[g] += score_text(c, d->rows[i].prompt, d->rows[i].prompt_len);
        cnt[g]++;
    }
    CHECK(cnt[0] > 100 && cnt[1] > 100);
    if (cnt[0] && cnt[1]) {
        printf("held-out rows: mean score MMLU %.4f (%zu), GSM8K %.4f (%zu)\n", sum[0] / cnt[0], cnt[0],
               sum[1] / cnt[1], cnt[1]);
        CHECK(sum[1] / cnt[1] > sum[0] / cnt[0] + 0.05);
    }
    free(score);
    free(base_score);
    tfidf_free(base);
    free(weak);
    free(strong);
    json_decref(j);
    dataset_free(d);
}

int main(void)
{
    const char *src = getenv("CASCADE_SOURCE_DIR") ? getenv("CASCADE_SOURCE_DIR") : ".";
    const char *build = getenv("CASCADE_BUILD_DIR") ? getenv("CASCADE_BUILD_DIR") : ".";
    snprintf(model_path, sizeof model_path, "%s/classifier/models/difficulty.cdm", src);
    snprintf(metrics_path, sizeof metrics_path, "%s/classifier/models/metrics.json", src);
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
    test_shipped_flips();
    test_recorded_metrics(c);
    classifier_free(c);
    remove(tmp_path);
    TEST_MAIN_END();
}
