/* classifier-train: fit the difficulty classifier on the routing data.
 *
 *   classifier-train --data ../shared/data/routing/routellm_mmlu_gsm8k.train.jsonl \
 *                    --out classifier/models/difficulty.cdm
 *
 * fits a recipe (trainer.h; --recipe 2 by default, the v2 model with its
 * shipped options) on every row except the held-out subjects of dataset.h,
 * which stay unseen so the share acceptance test can replay them. A v2
 * model also carries its route-score distribution: the rows are cut into
 * --oof-folds folds (MMLU by subject, GSM8K by row id), a model is fitted
 * without each fold and scores it, and --quantiles quantiles of those
 * out-of-fold scores go into the file (classifier_threshold_for_share()).
 * The options, the rows and the data's SHA-256 go into the metadata. Same
 * data and options, same bytes out.
 *
 * With --cv K it writes nothing: it fits the recipe on K folds of the train
 * split (MMLU folds by subject, so each fold scores subjects its model never
 * saw; held-out rows and subjects are never touched) and prints each fold's
 * AUC (needs_large, scored by the route score) and APGR, with mean and sd.
 * --compare 1 fits the v1 recipe on the same folds too and reports the
 * paired differences and wins: how the v2 options were chosen. */
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
            "       [--recipe 2] [--compare 1 (with --cv: also fit this recipe, paired report)]\n"
            "       [--bits 18] [--l2-sparse X] [--l2-dense X] [--iters N] [--seed 1] [--heads 3|2]\n"
            "       [--gbt-rounds N] [--gbt-depth N] [--gbt-lr X] [--gbt-l2 X] [--gbt-min-leaf N] [--gbt-bins N]\n       [--gbt-base-folds K] [--label-check 1|0] [--large-from-small 0|1] [--delta-l2 X] [--cv-score route|needs|small|large]\n"
            "       [--oof-folds 5] [--quantiles 1001] [--split-seed %u] [--verbose N] [--jobs N (folds in parallel)]\n"
            "       [--exclude-subject a,b (never train on these subjects' rows)]\n"
            "Options not given keep the recipe's shipped values (trainer_recipe_default).\n",
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

/* What --cv ranks by (diagnostics): 0 route, 1 needs_large, 2 P(small
 * wrong), 3 P(large right). */
static int cv_score;

/* One fold: fit on the member rows of the other folds, score its own rows'
 * route. */
struct fold_job {
    const struct dataset *d;
    const struct trainer_features *f;
    const int *fold, *weak, *strong;
    const unsigned char *trainable; /* rows a model may train on */
    const struct trainer_recipe *r;
    int k;
    float *route; /* [d->n], filled for this fold's rows */
    int failed;
};

static void *run_fold(void *p)
{
    struct fold_job *j = p;
    const struct dataset *d = j->d;
    size_t *rows = xmalloc(d->n * sizeof *rows), n_rows = 0;
    for (size_t i = 0; i < d->n; i++)
        if (j->fold[i] >= 0 && j->fold[i] != j->k && j->trainable[i])
            rows[n_rows++] = i;
    char err[256];
    struct cmodel *m = trainer_fit_recipe(j->f, rows, n_rows, j->weak, j->strong, j->r, err, sizeof err);
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
        struct classifier_scores s;
        cmodel_scores(m, &in, &s);
        j->route[i] = cv_score == 1 ? s.needs_large : cv_score == 2 ? 1.0f - s.small_right
                      : cv_score == 3 ? s.large_right : cv_score == 4 ? s.needs_large - s.small_right : s.route;
    }
    cmodel_free(m);
    return NULL;
}

/* Out-of-fold route scores of every row with fold[i] >= 0, folds on up to
 * `jobs` threads; each fold is computed alone, so the scores do not depend
 * on `jobs`. 0, or -1 when a fit failed. */
static int out_of_fold(const struct dataset *d, const struct trainer_features *f, const int *fold, int k,
                       const int *weak, const int *strong, const unsigned char *trainable,
                       const struct trainer_recipe *r, int jobs, float *route)
{
    struct fold_job *job = xcalloc((size_t)k, sizeof *job);
    pthread_t *tid = xcalloc((size_t)k, sizeof *tid);
    int rc = 0;
    for (int a = 0; a < k; a += jobs) {
        int b = a + jobs < k ? a + jobs : k;
        for (int fk = a; fk < b; fk++) {
            job[fk] = (struct fold_job){.d = d, .f = f, .fold = fold, .weak = weak, .strong = strong,
                                        .trainable = trainable, .r = r, .k = fk, .route = route};
            if (jobs == 1 || pthread_create(&tid[fk], NULL, run_fold, &job[fk]) != 0)
                run_fold(&job[fk]), tid[fk] = 0;
        }
        for (int fk = a; fk < b; fk++)
            if (tid[fk])
                pthread_join(tid[fk], NULL);
    }
    for (int fk = 0; fk < k; fk++)
        rc |= job[fk].failed ? -1 : 0;
    free(job);
    free(tid);
    return rc;
}

/* AUC (needs_large by route) and APGR of fold fk's rows. */
static void fold_metrics(const struct dataset *d, const int *fold, int fk, const float *route, double *auc,
                         double *apgr)
{
    float *s = xmalloc(d->n * sizeof *s);
    int *w = xmalloc(d->n * sizeof *w), *st = xmalloc(d->n * sizeof *st), *lab = xmalloc(d->n * sizeof *lab);
    size_t m = 0;
    for (size_t i = 0; i < d->n; i++)
        if (fold[i] == fk) {
            s[m] = route[i];
            w[m] = d->rows[i].weak_correct;
            st[m] = d->rows[i].strong_correct;
            lab[m++] = d->rows[i].label;
        }
    *auc = routeval_auc(s, lab, m);
    struct routeval rv;
    *apgr = 0;
    if (routeval_compute(s, w, st, m, &rv) == 0) {
        *apgr = rv.apgr;
        routeval_release(&rv);
    }
    free(s);
    free(w);
    free(st);
    free(lab);
}

static void print_recipe(const char *tag, const struct trainer_recipe *r)
{
    printf("%s: recipe %d: bits %u, hidden %d x %d, l2_sparse %g, l2_dense %g, l2_hidden %g, iters %d, seed %llu",
           tag, r->version, r->lin.hash_bits, r->lin.n_ensemble, r->lin.n_ensemble ? r->lin.n_hidden / r->lin.n_ensemble : 0,
           r->lin.l2_sparse, r->lin.l2_dense, r->lin.l2_hidden, r->lin.max_iter, (unsigned long long)r->lin.seed);
    if (r->version == 2)
        printf(", heads %d, trees %d of depth %d, lr %g, l2 %g, min_leaf %d, bins %d, base folds %d, large from small %d "
               "(delta l2 x%g)", r->n_heads, r->gbt_rounds, r->gbt_depth, r->gbt_lr, r->gbt_l2, r->gbt_min_leaf,
               r->gbt_bins, r->gbt_base_folds, r->large_from_small, r->delta_l2);
    printf("\n");
}

int main(int argc, char **argv)
{
    const char *data = NULL, *out = NULL, *exclude = "";
    int no_groups = 0, cv = 0, verbose = 0, jobs = 1, version = 2, compare = 0, oof_folds = 5, n_q = 1001;
    uint64_t split_seed = DATASET_SPLIT_SEED;
    /* Overrides of the recipe's defaults; NAN / -1 mean "keep". */
    double l2s = NAN, l2d = NAN, glr = NAN, gl2 = NAN, dl2 = NAN;
    long bits = -1, iters = -1, seed = -1, heads = -1, grounds = -1, gdepth = -1, gleaf = -1, gbins = -1, gbase = -1, lfs = -1;
    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v)
            bad = 1;
        else if (!strcmp(a, "--data"))
            data = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--cv"))
            cv = atoi(v);
        else if (!strcmp(a, "--recipe"))
            version = atoi(v), bad = version != 1 && version != 2;
        else if (!strcmp(a, "--compare"))
            compare = atoi(v), bad = compare != 1 && compare != 2;
        else if (!strcmp(a, "--exclude-subject"))
            exclude = v;
        else if (!strcmp(a, "--jobs"))
            jobs = atoi(v) > 0 ? atoi(v) : 1;
        else if (!strcmp(a, "--verbose"))
            verbose = atoi(v);
        else if (!strcmp(a, "--split-seed"))
            split_seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--oof-folds"))
            oof_folds = atoi(v), bad = oof_folds < 2 || oof_folds > 20;
        else if (!strcmp(a, "--quantiles"))
            n_q = atoi(v), bad = n_q < 2 || n_q > CMODEL_MAX_QUANTILES;
        else if (!strcmp(a, "--bits"))
            bits = atol(v);
        else if (!strcmp(a, "--iters"))
            iters = atol(v);
        else if (!strcmp(a, "--seed"))
            seed = atol(v);
        else if (!strcmp(a, "--heads"))
            heads = atol(v), bad = heads != 2 && heads != 3;
        else if (!strcmp(a, "--l2-sparse"))
            l2s = atof(v);
        else if (!strcmp(a, "--l2-dense"))
            l2d = atof(v);
        else if (!strcmp(a, "--gbt-rounds"))
            grounds = atol(v);
        else if (!strcmp(a, "--gbt-depth"))
            gdepth = atol(v);
        else if (!strcmp(a, "--gbt-lr"))
            glr = atof(v);
        else if (!strcmp(a, "--gbt-l2"))
            gl2 = atof(v);
        else if (!strcmp(a, "--gbt-min-leaf"))
            gleaf = atol(v);
        else if (!strcmp(a, "--gbt-bins"))
            gbins = atol(v);
        else if (!strcmp(a, "--cv-score"))
            cv_score = !strcmp(v, "needs") ? 1 : !strcmp(v, "small") ? 2 : !strcmp(v, "large") ? 3 : !strcmp(v, "ni") ? 4 : 0;
        else if (!strcmp(a, "--label-check"))
            no_groups = !atoi(v);
        else if (!strcmp(a, "--large-from-small"))
            lfs = atol(v);
        else if (!strcmp(a, "--delta-l2"))
            dl2 = atof(v);
        else if (!strcmp(a, "--gbt-base-folds"))
            gbase = atol(v);
        else
            bad = 1;
        if (bad) {
            usage();
            return 2;
        }
    }
    if (!data || (!out && cv < 2)) {
        usage();
        return 2;
    }
    struct trainer_recipe r, base;
    trainer_recipe_default(&r, version);
    trainer_recipe_default(&base, compare ? compare : 1);
    if (bits > 0)
        r.lin.hash_bits = (unsigned)bits, base.lin.hash_bits = (unsigned)bits;
    if (iters > 0)
        r.lin.max_iter = (int)iters;
    if (seed >= 0)
        r.lin.seed = (uint64_t)seed;
    if (heads > 0)
        r.n_heads = (int)heads;
    if (!isnan(l2s))
        r.lin.l2_sparse = l2s;
    if (!isnan(l2d))
        r.lin.l2_dense = l2d;
    if (grounds >= 0)
        r.gbt_rounds = (int)grounds;
    if (gdepth > 0)
        r.gbt_depth = (int)gdepth;
    if (!isnan(glr))
        r.gbt_lr = glr;
    if (!isnan(gl2))
        r.gbt_l2 = gl2;
    if (gleaf > 0)
        r.gbt_min_leaf = (int)gleaf;
    if (gbins > 0)
        r.gbt_bins = (int)gbins;
    if (gbase >= 0)
        r.gbt_base_folds = (int)gbase;
    if (lfs >= 0)
        r.large_from_small = (int)lfs;
    if (!isnan(dl2))
        r.delta_l2 = dl2;
    r.lin.verbose = base.lin.verbose = verbose;

    char err[512];
    struct dataset *d = dataset_load(data, err, sizeof err);
    if (!d) {
        fprintf(stderr, "classifier-train: %s\n", err);
        return 1;
    }
    dataset_split(d, split_seed, DATASET_SUBJECT_FRAC, DATASET_RANDOM_FRAC);
    struct classifier_input *in = xmalloc(d->n * sizeof *in);
    int *weak = xmalloc(d->n * sizeof *weak), *strong = xmalloc(d->n * sizeof *strong);
    unsigned char *trainable = xcalloc(d->n, 1), *member = xcalloc(d->n, 1);
    size_t n_train = 0, pos = 0, n_excluded = 0;
    /* --out trains on every row but the held-out subjects; --cv on folds of
     * the train split only. Excluded subjects are scored, never trained on. */
    for (size_t i = 0; i < d->n; i++) {
        in[i] = input_of(&d->rows[i]);
        weak[i] = d->rows[i].weak_correct;
        strong[i] = d->rows[i].strong_correct;
        member[i] = cv ? d->rows[i].split == DATASET_TRAIN : d->rows[i].split != DATASET_VAL_SUBJECTS;
        int ex = member[i] && listed(exclude, d->rows[i].subject);
        trainable[i] = member[i] && !ex;
        n_excluded += (size_t)ex;
        n_train += trainable[i];
        pos += (size_t)(trainable[i] && d->rows[i].label);
    }
    fprintf(stderr, "classifier-train: %zu rows, %zu to train on (%zu need the large model), %zu excluded\n", d->n,
            n_train, pos, n_excluded);
    /* Group ids for the v2 recipe's label check: one per MMLU subject. */
    int *group = xmalloc(d->n * sizeof *group);
    for (size_t i = 0; i < d->n; i++) {
        group[i] = -1;
        if (strcmp(d->rows[i].source, "mmlu") != 0)
            continue;
        for (size_t j = 0; j < i && group[i] < 0; j++)
            if (group[j] >= 0 && strcmp(d->rows[j].subject, d->rows[i].subject) == 0)
                group[i] = group[j];
        if (group[i] < 0)
            group[i] = (int)i;
    }
    if (!no_groups)
        r.group = group;
    struct trainer_features *f = trainer_featurize(in, d->n, r.lin.hash_bits);
    if (!f) {
        fprintf(stderr, "classifier-train: out of memory\n");
        return 1;
    }
    int *fold = xmalloc(d->n * sizeof *fold);
    float *route = xcalloc(d->n, sizeof *route), *route_b = xcalloc(d->n, sizeof *route_b);
    int rc = 0;

    if (cv >= 2) {
        dataset_group_folds(d, member, cv, split_seed, fold);
        print_recipe("fit", &r);
        if (compare)
            print_recipe("against", &base);
        if (out_of_fold(d, f, fold, cv, weak, strong, trainable, &r, jobs, route) < 0 ||
            (compare && out_of_fold(d, f, fold, cv, weak, strong, trainable, &base, jobs, route_b) < 0)) {
            rc = 1;
            goto done;
        }
        double *auc = xcalloc(2 * (size_t)cv, sizeof *auc), *apgr = xcalloc(2 * (size_t)cv, sizeof *apgr);
        printf("| fold | AUC | APGR |%s\n", compare ? " AUC (against) | APGR (against) |" : "");
        for (int fk = 0; fk < cv; fk++) {
            fold_metrics(d, fold, fk, route, &auc[fk], &apgr[fk]);
            printf("| %d | %.4f | %.4f |", fk, auc[fk], apgr[fk]);
            if (compare) {
                fold_metrics(d, fold, fk, route_b, &auc[cv + fk], &apgr[cv + fk]);
                printf(" %.4f | %.4f |", auc[cv + fk], apgr[cv + fk]);
            }
            printf("\n");
        }
        struct routeval_summary sa, sp;
        routeval_summarize(auc, (size_t)cv, &sa);
        routeval_summarize(apgr, (size_t)cv, &sp);
        printf("mean: AUC %.4f +- %.4f, APGR %.4f +- %.4f\n", sa.mean, sa.sd, sp.mean, sp.sd);
        if (compare) {
            struct routeval_paired pa, pp;
            routeval_paired(auc, auc + cv, (size_t)cv, &pa);
            routeval_paired(apgr, apgr + cv, (size_t)cv, &pp);
            printf("paired: AUC %+.4f +- %.4f (wins %zu/%d), APGR %+.4f +- %.4f (wins %zu/%d)\n", pa.diff.mean,
                   pa.diff.sd, pa.wins, cv, pp.diff.mean, pp.diff.sd, pp.wins, cv);
        }
        free(auc);
        free(apgr);
        goto done;
    }

    size_t *rows = xmalloc(d->n * sizeof *rows), k = 0;
    for (size_t i = 0; i < d->n; i++)
        if (trainable[i])
            rows[k++] = i;
    struct cmodel *m = trainer_fit_recipe(f, rows, k, weak, strong, &r, err, sizeof err);
    free(rows);
    if (!m) {
        fprintf(stderr, "classifier-train: %s\n", err);
        rc = 1;
        goto done;
    }
    /* The route-score distribution on rows each fold's model never saw. */
    if (version == 2) {
        dataset_group_folds(d, member, oof_folds, split_seed, fold);
        if (out_of_fold(d, f, fold, oof_folds, weak, strong, trainable, &r, jobs, route) < 0) {
            cmodel_free(m);
            rc = 1;
            goto done;
        }
        size_t n = 0;
        for (size_t i = 0; i < d->n; i++)
            if (fold[i] >= 0)
                route_b[n++] = route[i];
        float *q = xmalloc((size_t)n_q * sizeof *q);
        if (trainer_quantiles(route_b, n, q, n_q) < 0 || cmodel_set_quantiles(m, q, n_q) < 0) {
            fprintf(stderr, "classifier-train: cannot store the route-score distribution\n");
            rc = 1;
        }
        free(q);
        fprintf(stderr, "classifier-train: route-score distribution over %zu out-of-fold rows: median %.4f\n", n,
                cmodel_threshold_for_share(m, 0.5));
        /* What the held-out subjects (never trained on) would realise. */
        size_t nh = 0, nm = 0;
        float *hs = xmalloc(d->n * sizeof *hs), *mm = xmalloc(d->n * sizeof *mm);
        for (size_t i = 0; i < d->n; i++) {
            if (fold[i] >= 0 && strcmp(d->rows[i].source, "mmlu") == 0)
                mm[nm++] = route[i];
            if (d->rows[i].split != DATASET_VAL_SUBJECTS)
                continue;
            struct classifier_scores sc;
            cmodel_scores(m, &in[i], &sc);
            hs[nh++] = sc.route;
        }
        float *qm = xmalloc((size_t)n_q * sizeof *qm);
        trainer_quantiles(mm, nm, qm, n_q);
        for (double share = 0.2; share < 0.55; share += 0.15) {
            double t = cmodel_threshold_for_share(m, share);
            double tm = qm[(int)((1 - share) * (n_q - 1))];
            size_t a = 0, b = 0;
            for (size_t i = 0; i < nh; i++)
                a += hs[i] >= t, b += hs[i] >= tm;
            fprintf(stderr, "  share %.2f: t %.4f -> %.4f of the held-out subjects; MMLU-only t %.4f -> %.4f; folds:",
                    share, t, (double)a / nh, tm, (double)b / nh);
            for (int fk = 0; fk < oof_folds; fk++) {
                size_t in_k = 0, up = 0;
                for (size_t i = 0; i < d->n; i++)
                    if (fold[i] == fk)
                        in_k++, up += route[i] >= t;
                fprintf(stderr, " %.3f", (double)up / (double)in_k);
            }
            fprintf(stderr, "\n");
        }
        free(qm);
        free(hs);
        free(mm);
    }

    /* Provenance in the file: what data, which rows, which options. */
    char sha[SHA256_HEX_LEN + 1] = "", subjects[2048];
    file_sha256_hex(data, sha);
    dataset_heldout_subjects(d, subjects, sizeof subjects);
    const char *fname = strrchr(data, '/') ? strrchr(data, '/') + 1 : data;
    json_t *meta = json_pack(
        "{s:s, s:s, s:{s:s, s:s, s:I, s:I, s:s}, s:{s:I, s:f, s:f, s:s}, s:{s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:I, "
        "s:I}}",
        "model",
        version == 2 ? "cascade difficulty classifier v2: P(small right), P(large right), P(needs large); "
                       "route = (1 + P(large right) - P(small right)) / 2"
                     : "cascade difficulty classifier: P(strong_correct && !weak_correct)",
        "label", "needs_large = strong_correct && !weak_correct; small_right = weak_correct; large_right = "
                 "strong_correct",
        "data", "file", fname, "sha256", sha, "rows", (json_int_t)d->n, "train_rows", (json_int_t)n_train,
        "excluded_subjects", exclude,
        "split", "seed", (json_int_t)split_seed, "subject_frac", DATASET_SUBJECT_FRAC,
        "random_frac", DATASET_RANDOM_FRAC, "heldout_subjects", subjects,
        "options", "recipe", (json_int_t)version, "hash_bits", (json_int_t)r.lin.hash_bits, "hidden",
        (json_int_t)r.lin.n_hidden, "ensemble", (json_int_t)r.lin.n_ensemble, "l2_sparse", r.lin.l2_sparse,
        "l2_dense", r.lin.l2_dense, "l2_hidden", r.lin.l2_hidden, "iters", (json_int_t)r.lin.max_iter, "seed",
        (json_int_t)r.lin.seed);
    if (meta && version == 2) {
        json_t *o = json_object_get(meta, "options");
        json_object_set_new(o, "heads", json_integer(r.n_heads));
        json_object_set_new(o, "gbt_rounds", json_integer(r.gbt_rounds));
        json_object_set_new(o, "gbt_depth", json_integer(r.gbt_depth));
        json_object_set_new(o, "gbt_lr", json_real(r.gbt_lr));
        json_object_set_new(o, "gbt_l2", json_real(r.gbt_l2));
        json_object_set_new(o, "gbt_min_leaf", json_integer(r.gbt_min_leaf));
        json_object_set_new(o, "gbt_bins", json_integer(r.gbt_bins));
        json_object_set_new(o, "gbt_base_folds", json_integer(r.gbt_base_folds));
        json_object_set_new(o, "large_from_small", json_integer(r.large_from_small));
        json_object_set_new(o, "label_check", json_integer(r.group != NULL));
        json_object_set_new(o, "delta_l2", json_real(r.delta_l2));
        json_object_set_new(meta, "route_distribution",
                            json_pack("{s:I, s:I, s:s}", "quantiles", (json_int_t)n_q, "folds",
                                      (json_int_t)oof_folds, "rows", "out-of-fold scores of the training rows, "
                                                                     "folds grouped by subject"));
    }
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
    trainer_features_free(f);
    free(group);
    free(fold);
    free(route);
    free(route_b);
    free(trainable);
    free(member);
    free(in);
    free(weak);
    free(strong);
    dataset_free(d);
    return rc;
}
