/* classifier-train: fit the difficulty classifier on the routing data.
 *
 *   classifier-train --data ../shared/data/routing/routellm_mmlu_gsm8k.train.jsonl \
 *                    --out classifier/models/difficulty.cdm
 *
 * trains on the train split (dataset.h: held-out subjects and held-out rows
 * stay out) and writes the model, with the options, the split and the data's
 * SHA-256 in its metadata. Same data and options, same bytes out.
 *
 * With --cv K it writes nothing and instead cross-validates every
 * combination of the comma-separated option lists (--bits, --hidden,
 * --l2-sparse, --l2-dense, --l2-hidden) over K folds of the train split,
 * MMLU folds by subject, and prints the out-of-fold AUC and APGR of each:
 * that is how the shipped options were chosen. */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classifier/cmodel.h"
#include "classifier/dataset.h"
#include "classifier/features.h"
#include "classifier/routeval.h"
#include "classifier/trainer.h"
#include "common/hash.h"
#include "common/mem.h"

#define MAX_LIST 16

struct list {
    double v[MAX_LIST];
    int n;
};

static int parse_list(const char *s, struct list *l)
{
    l->n = 0;
    while (*s) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || l->n == MAX_LIST)
            return -1;
        l->v[l->n++] = v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return l->n ? 0 : -1;
}

/* 1 when name is one of the comma-separated names in list. */
static int listed(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0)
            return 1;
        p += len + (e != NULL);
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: classifier-train --data FILE (--out MODEL | --cv K)\n"
            "       [--bits 18] [--hidden 0] [--l2-sparse 1e-4] [--l2-dense 1e-3] [--l2-hidden 1e-3]\n"
            "       [--iters 300] [--seed 1] [--split-seed %u] [--verbose N] [--jobs N (folds in parallel)]\n"
            "       [--exclude-subject a,b (never train on these subjects' rows)]\n"
            "       [--ensemble E (average E fits from seeds seed..seed+E-1; --hidden is per fit)]\n"
            "With --cv, option values may be comma-separated lists; every combination is scored.\n",
            DATASET_SPLIT_SEED);
}

static int file_sha256_hex(const char *path, char *hex)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t cap = 1 << 20, n = 0, got;
    unsigned char *buf = xmalloc(cap);
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap)
            buf = xrealloc(buf, cap *= 2);
    }
    fclose(f);
    uint8_t sum[SHA256_LEN];
    hash_sha256(buf, n, sum);
    hash_hex(sum, SHA256_LEN, hex);
    free(buf);
    return 0;
}

static struct classifier_input input_of(const struct dataset_row *r)
{
    /* The routing data is single-turn with no system prompt. */
    return (struct classifier_input){.user = r->prompt, .user_len = r->prompt_len, .n_messages = 1};
}

/* One cross-validation fold: fit on the other folds' train rows, score its own. */
struct fold_job {
    const struct dataset *d;
    const struct trainer_features *f;
    const int *fold, *y, *excluded;
    const struct trainer_opts *o;
    int k;
    float *logit; /* [d->n], filled for this fold's rows */
    int failed;
};

static void *run_fold(void *p)
{
    struct fold_job *j = p;
    const struct dataset *d = j->d;
    size_t *rows = xmalloc(d->n * sizeof *rows), n_rows = 0;
    for (size_t i = 0; i < d->n; i++)
        if (j->fold[i] >= 0 && j->fold[i] != j->k && !j->excluded[i])
            rows[n_rows++] = i;
    char err[256];
    struct cmodel *m = trainer_fit(j->f, rows, n_rows, j->y, j->o, err, sizeof err);
    free(rows);
    if (!m) {
        fprintf(stderr, "classifier-train: %s\n", err);
        j->failed = 1;
        return NULL;
    }
    for (size_t i = 0; i < d->n; i++) {
        if (j->fold[i] != j->k)
            continue;
        struct classifier_input in = input_of(&d->rows[i]);
        j->logit[i] = cmodel_logit(m, &in);
    }
    cmodel_free(m);
    return NULL;
}

/* Out-of-fold scores for one option set; returns the pooled AUC and fills
 * *apgr and the mean per-fold AUC. Folds run on up to `jobs` threads; each
 * fold is computed alone, so the numbers do not depend on `jobs`. */
static double cross_validate(const struct dataset *d, const struct trainer_features *f, const int *fold, int k,
                             const int *y, const int *excluded, const struct trainer_opts *o, int jobs, double *apgr,
                             double *fold_auc_mean)
{
    float *logit = xcalloc(d->n, sizeof *logit);
    struct fold_job *job = xcalloc((size_t)k, sizeof *job);
    pthread_t *tid = xcalloc((size_t)k, sizeof *tid);
    for (int a = 0; a < k; a += jobs) {
        int b = a + jobs < k ? a + jobs : k;
        for (int fk = a; fk < b; fk++) {
            job[fk] = (struct fold_job){.d = d, .f = f, .fold = fold, .y = y, .excluded = excluded, .o = o, .k = fk, .logit = logit};
            if (pthread_create(&tid[fk], NULL, run_fold, &job[fk]) != 0)
                run_fold(&job[fk]), tid[fk] = 0;
        }
        for (int fk = a; fk < b; fk++)
            if (tid[fk])
                pthread_join(tid[fk], NULL);
    }
    for (int fk = 0; fk < k; fk++)
        if (job[fk].failed)
            exit(1);

    float *score = xmalloc(d->n * sizeof *score);
    int *weak = xmalloc(d->n * sizeof *weak), *strong = xmalloc(d->n * sizeof *strong);
    int *lab = xmalloc(d->n * sizeof *lab);
    double auc_sum = 0;
    for (int fk = 0; fk < k; fk++) {
        size_t m = 0;
        for (size_t i = 0; i < d->n; i++)
            if (fold[i] == fk) {
                score[m] = logit[i];
                lab[m++] = d->rows[i].label;
            }
        auc_sum += routeval_auc(score, lab, m);
    }
    size_t n_oof = 0;
    for (size_t i = 0; i < d->n; i++) {
        if (fold[i] < 0)
            continue;
        score[n_oof] = logit[i];
        weak[n_oof] = d->rows[i].weak_correct;
        strong[n_oof] = d->rows[i].strong_correct;
        n_oof++;
    }
    struct routeval r;
    double auc = 0;
    if (routeval_compute(score, weak, strong, n_oof, &r) == 0) {
        auc = r.auc;
        *apgr = r.apgr;
        routeval_release(&r);
    }
    *fold_auc_mean = auc_sum / k;
    free(logit);
    free(job);
    free(tid);
    free(score);
    free(weak);
    free(strong);
    free(lab);
    return auc;
}

int main(int argc, char **argv)
{
    const char *data = NULL, *out = NULL, *exclude = "";
    int cv = 0, iters = 300, verbose = 0, jobs = 1, ensemble = 1;
    uint64_t seed = 1, split_seed = DATASET_SPLIT_SEED;
    struct list bits = {{18}, 1}, hidden = {{0}, 1}, l2s = {{1e-4}, 1}, l2d = {{1e-3}, 1}, l2h = {{1e-3}, 1};
    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v) {
            bad = 1;
        } else if (!strcmp(a, "--data")) {
            data = v;
        } else if (!strcmp(a, "--out")) {
            out = v;
        } else if (!strcmp(a, "--cv")) {
            cv = atoi(v);
        } else if (!strcmp(a, "--exclude-subject")) {
            exclude = v;
        } else if (!strcmp(a, "--ensemble")) {
            ensemble = atoi(v);
            bad = ensemble < 1 || ensemble > 16;
        } else if (!strcmp(a, "--jobs")) {
            jobs = atoi(v) > 0 ? atoi(v) : 1;
        } else if (!strcmp(a, "--iters")) {
            iters = atoi(v);
        } else if (!strcmp(a, "--verbose")) {
            verbose = atoi(v);
        } else if (!strcmp(a, "--seed")) {
            seed = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--split-seed")) {
            split_seed = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--bits")) {
            bad = parse_list(v, &bits);
        } else if (!strcmp(a, "--hidden")) {
            bad = parse_list(v, &hidden);
        } else if (!strcmp(a, "--l2-sparse")) {
            bad = parse_list(v, &l2s);
        } else if (!strcmp(a, "--l2-dense")) {
            bad = parse_list(v, &l2d);
        } else if (!strcmp(a, "--l2-hidden")) {
            bad = parse_list(v, &l2h);
        } else {
            bad = 1;
        }
        if (bad) {
            usage();
            return 2;
        }
    }
    if (!data || (!out && cv < 2) ||
        (!cv && (bits.n > 1 || hidden.n > 1 || l2s.n > 1 || l2d.n > 1 || l2h.n > 1))) {
        usage();
        return 2;
    }

    char err[512];
    struct dataset *d = dataset_load(data, err, sizeof err);
    if (!d) {
        fprintf(stderr, "classifier-train: %s\n", err);
        return 1;
    }
    dataset_split(d, split_seed, DATASET_SUBJECT_FRAC, DATASET_RANDOM_FRAC);
    struct classifier_input *in = xmalloc(d->n * sizeof *in);
    int *y = xmalloc(d->n * sizeof *y);
    size_t n_train = 0, pos = 0, n_excluded = 0;
    int *excluded = xcalloc(d->n, sizeof *excluded);
    for (size_t i = 0; i < d->n; i++) {
        in[i] = input_of(&d->rows[i]);
        y[i] = d->rows[i].label;
        excluded[i] = d->rows[i].split == DATASET_TRAIN && listed(exclude, d->rows[i].subject);
        n_excluded += (size_t)excluded[i];
        if (d->rows[i].split == DATASET_TRAIN && !excluded[i]) {
            n_train++;
            pos += (size_t)y[i];
        }
    }
    fprintf(stderr, "classifier-train: %zu rows, %zu train rows (%zu positive), %zu excluded\n", d->n, n_train, pos,
            n_excluded);

    int rc = 0;
    if (cv >= 2) {
        int *fold = xmalloc(d->n * sizeof *fold);
        /* Excluded rows are still scored: only their training is skipped,
         * so runs with and without an exclusion are measured on the same rows. */
        dataset_folds(d, cv, split_seed, fold);
        printf("| bits | hidden | ensemble | l2_sparse | l2_dense | l2_hidden | OOF AUC | mean fold AUC | OOF APGR |\n");
        printf("|---|---|---|---|---|---|---|---|---|\n");
        for (int b = 0; b < bits.n; b++) {
            struct trainer_features *f = trainer_featurize(in, d->n, (unsigned)bits.v[b]);
            for (int h = 0; h < hidden.n; h++)
                for (int s = 0; s < l2s.n; s++)
                    for (int dd = 0; dd < l2d.n; dd++)
                        for (int hh = 0; hh < (hidden.v[h] > 0 ? l2h.n : 1); hh++) {
                            struct trainer_opts o = {
                                .hash_bits = (unsigned)bits.v[b], .n_hidden = (int)hidden.v[h] * ensemble,
                                .n_ensemble = ensemble,
                                .l2_sparse = l2s.v[s], .l2_dense = l2d.v[dd], .l2_hidden = l2h.v[hh],
                                .max_iter = iters, .seed = seed, .verbose = verbose,
                            };
                            double apgr = 0, fold_auc = 0;
                            double auc = cross_validate(d, f, fold, cv, y, excluded, &o, jobs, &apgr, &fold_auc);
                            printf("| %u | %d | %d | %g | %g | %g | %.4f | %.4f | %.4f |\n", o.hash_bits,
                                   o.n_hidden / ensemble, ensemble, o.l2_sparse, o.l2_dense, o.n_hidden ? o.l2_hidden : 0.0, auc, fold_auc, apgr);
                            fflush(stdout);
                        }
            trainer_features_free(f);
        }
        free(fold);
        goto done;
    }

    struct trainer_opts o = {
        .hash_bits = (unsigned)bits.v[0], .n_hidden = (int)hidden.v[0] * ensemble, .n_ensemble = ensemble,
        .l2_sparse = l2s.v[0],
        .l2_dense = l2d.v[0], .l2_hidden = l2h.v[0], .max_iter = iters, .seed = seed, .verbose = verbose,
    };
    struct trainer_features *f = trainer_featurize(in, d->n, o.hash_bits);
    size_t *rows = xmalloc(n_train * sizeof *rows), k = 0;
    for (size_t i = 0; i < d->n; i++)
        if (d->rows[i].split == DATASET_TRAIN && !excluded[i])
            rows[k++] = i;
    struct cmodel *m = f ? trainer_fit(f, rows, n_train, y, &o, err, sizeof err) : NULL;
    trainer_features_free(f);
    free(rows);
    if (!m) {
        fprintf(stderr, "classifier-train: %s\n", f ? err : "out of memory");
        rc = 1;
        goto done;
    }

    /* Provenance in the file: what data, which rows, which options. */
    char sha[SHA256_HEX_LEN + 1] = "", subjects[2048];
    file_sha256_hex(data, sha);
    dataset_heldout_subjects(d, subjects, sizeof subjects);
    const char *base = strrchr(data, '/') ? strrchr(data, '/') + 1 : data;
    json_t *meta = json_pack(
        "{s:s, s:s, s:{s:s, s:s, s:I, s:I, s:s}, s:{s:I, s:f, s:f, s:s}, s:{s:I, s:I, s:I, s:f, s:f, s:f, s:I, s:I}}",
        "model", "cascade difficulty classifier: P(strong_correct && !weak_correct)",
        "label", "needs_large = strong_correct && !weak_correct",
        "data", "file", base, "sha256", sha, "rows", (json_int_t)d->n, "train_rows", (json_int_t)n_train,
        "excluded_subjects", exclude,
        "split", "seed", (json_int_t)split_seed, "subject_frac", DATASET_SUBJECT_FRAC,
        "random_frac", DATASET_RANDOM_FRAC, "heldout_subjects", subjects,
        "options", "hash_bits", (json_int_t)o.hash_bits, "hidden", (json_int_t)(o.n_hidden / ensemble), "ensemble",
        (json_int_t)ensemble, "l2_sparse",
        o.l2_sparse, "l2_dense", o.l2_dense, "l2_hidden", o.l2_hidden, "iters", (json_int_t)o.max_iter,
        "seed", (json_int_t)o.seed);
    char *meta_text = meta ? json_dumps(meta, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(meta);
    if (!meta_text || cmodel_set_meta(m, meta_text) < 0 || cmodel_write(m, out, err, sizeof err) < 0) {
        fprintf(stderr, "classifier-train: %s\n", meta_text ? err : "cannot build metadata");
        rc = 1;
    } else {
        fprintf(stderr, "classifier-train: wrote %s\n", out);
    }
    free(meta_text);
    cmodel_free(m);

done:
    free(excluded);
    free(in);
    free(y);
    dataset_free(d);
    return rc;
}
