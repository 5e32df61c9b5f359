/* classifier-eval: how well each router routes prompts from subjects it never
 * saw, measured over repeated grouped folds, with the spread.
 *
 *   classifier-eval --data ../shared/data/routing/routellm_mmlu_gsm8k.train.jsonl \
 *                   [--repeats 3] [--folds 5] [--jobs 1] [--recipes 1,2] \
 *                   [--out classifier/models] [--readme classifier/models/README.md]
 *
 * Every row of the file is scored out of fold, once per repeat. Each repeat
 * deals the rows into --folds folds with its own seed (dataset_group_folds):
 * an MMLU subject lies whole in one fold, so every fold's model meets its
 * test subjects for the first time; GSM8K rows fold by a seeded hash of
 * their id. For each fold, each router is fitted on the other folds' rows and
 * scores this fold's rows:
 *
 *   random      a constant score: the straight cost-quality line, AUC and
 *               APGR 0.5 exactly;
 *   length      the prompt's length in bytes, longer first (a reference: no
 *               fit at all);
 *   TF-IDF+LR   tfidf.h, its C chosen per fold by an inner grouped 5-fold CV
 *               on that fold's training rows only (or fixed by --baseline-c);
 *   v1, v2      the classifier's recipes (trainer_fit_recipe, trainer.h),
 *               scored through cmodel_scores(), the gateway's own code path:
 *               their route score; for v2 also its P(needs large) head;
 *   subject oracle  knows, for each test subject (GSM8K counts as one), its
 *               true share of prompts that need the large model in this
 *               fold, and nothing within a subject: the best any router that
 *               reads only "which subject is this" could do;
 *   oracle      knows the labels (score = strong - weak): the ceiling.
 *
 * Per fold it computes the AUC against needs_large = strong && !weak and the
 * APGR and CPT(50%) of routeval.h, on all the fold's rows, on the rows outside
 * the subjects whose strong-model labels look broken (below), and on the
 * fold's GSM8K rows alone. The report gives mean +- sd over the R x K folds
 * and, for the pairs that matter, the paired differences fold by fold with
 * the number of folds won.
 *
 * Broken labels: a subject is suspect when its strong model is right
 * significantly less often than its weak one (the strong model is better
 * everywhere else): McNemar's z = (b - c) / sqrt(b + c) > --suspect-z
 * (default 3), with b the rows only the weak model got right and c those only
 * the strong one did.
 *
 * Fits are the slow part. They run on a pool of --jobs threads, one (fold,
 * router) task each; every task writes only its own fold's scores, so the
 * numbers do not depend on --jobs. --save-scores FILE writes every
 * out-of-fold score, and --load-scores FILE reads them back instead of
 * fitting (the fold layout and the data must match), to rewrite the report
 * without refitting. --reuse-scores FILE --reuse tfidf_lr,v1 takes only those
 * routers' scores from a saved run and fits the rest; it refits the first
 * fold of each reused router and refuses the saved scores unless the refit
 * gives the same scores (within --reuse-tolerance, default 1e-6: the text
 * round trip), so a changed recipe or code cannot slip through unseen; the
 * report states the difference it measured.
 *
 * Writes into --out: eval.md (the report and every fold's figures),
 * metrics.json, curve.tsv, curve.gp and, with gnuplot, curve.png (the mean
 * cost-quality curves). --readme replaces the text between
 * "<!-- eval:begin -->" and "<!-- eval:end -->" in that file. */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "classifier/cmodel.h"
#include "classifier/dataset.h"
#include "classifier/routeval.h"
#include "classifier/tfidf.h"
#include "classifier/trainer.h"
#include "common/hash.h"
#include "common/mem.h"

/* ---- routers, metrics, pairs ------------------------------------------ */

enum {
    R_RANDOM,
    R_LENGTH,
    R_TFIDF,
    R_V1,
    R_V2,
    R_V2_NL,
    R_SUBJECT,
    R_ORACLE,
    N_ROUTERS
};
static const char *router_name[N_ROUTERS] = {
    "random", "prompt length", "TF-IDF + LR", "v1 recipe", "v2 recipe (route = expected gain)",
    "v2 recipe, P(needs large) head", "subject oracle (knows each subject's share)", "oracle (knows the labels)"};
static const char *router_key[N_ROUTERS] = {"random", "length", "tfidf_lr", "v1", "v2", "v2_needs_large",
                                            "subject_oracle", "oracle"};

enum { M_AUC, M_APGR, M_APGR_CLEAN, M_CPT50, M_GSM_AUC, M_GSM_APGR, N_METRICS };
static const char *metric_name[N_METRICS] = {"AUC", "APGR", "APGR w/o suspect", "CPT(50%)", "GSM8K AUC",
                                             "GSM8K APGR"};
static const char *metric_key[N_METRICS] = {"auc", "apgr", "apgr_clean", "cpt50", "gsm8k_auc", "gsm8k_apgr"};

static const int pairs[][2] = {{R_V2, R_V1},    {R_V2, R_TFIDF},    {R_V2, R_RANDOM},   {R_V1, R_TFIDF},
                               {R_V2, R_LENGTH}, {R_V2_NL, R_V1}, {R_V2_NL, R_TFIDF}};
#define N_PAIRS ((int)(sizeof pairs / sizeof pairs[0]))

static const double c_grid[] = {0.1, 0.3, 1, 3, 10};
#define N_C ((int)(sizeof c_grid / sizeof c_grid[0]))
#define INNER_FOLDS 5
#define PLOT_POINTS 101

/* ---- the run's state ---------------------------------------------------- */

enum task_kind { T_V2, T_V1, T_TFIDF };
static const char *task_name[] = {"v2 fit", "v1 fit", "TF-IDF + LR"};

struct task {
    enum task_kind kind;
    int repeat, fold;
    double seconds;
    double c;       /* TF-IDF: the C used */
    int failed;
    int verify;     /* a refit of reused scores: compare, do not count as new */
};

/* The routers a task kind fills. */
static const int kind_router[] = {R_V2, R_V1, R_TFIDF};

struct eval {
    const struct dataset *d;
    size_t n;
    int repeats, folds;
    uint64_t seed;
    int *fold;                       /* [repeats * n] */
    float *score;                    /* [(repeats * N_ROUTERS) * n]: out-of-fold scores */
    int *weak, *strong, *label;      /* [n] */
    unsigned char *suspect, *gsm;    /* [n] */
    int *group;                      /* [n]: subject index, GSM8K etc. one group each */
    int *mmlu_group;                 /* [n]: group for MMLU rows, -1 for the rest (trainer_recipe.group) */
    size_t n_groups;
    const char **texts;
    size_t *lens;
    struct classifier_input *in;
    struct trainer_features *feat[2]; /* for the recipes v1, v2 */
    struct trainer_recipe recipe[2];
    int use_recipe[2];
    double baseline_c;               /* 0: chosen by inner CV */

    struct task *tasks;
    int n_tasks, next_task, done_tasks;
    pthread_mutex_t lock;
    double t0;
};

static float *score_of(const struct eval *e, int repeat, int router)
{
    return e->score + ((size_t)repeat * N_ROUTERS + (size_t)router) * e->n;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- fitting: one task per (fold, router) ------------------------------- */

/* TF-IDF's C by an inner grouped CV over the outer fold's training rows only
 * (the outer test fold is never looked at): the C with the best mean
 * inner-fold AUC. */
static double inner_c(const struct eval *e, const size_t *train, size_t n_train, uint64_t seed)
{
    const struct dataset *d = e->d;
    unsigned char *member = xcalloc(e->n, 1);
    int *inner = xmalloc(e->n * sizeof *inner);
    size_t *rows = xmalloc(e->n * sizeof *rows);
    float *s = xmalloc(e->n * sizeof *s);
    int *lab = xmalloc(e->n * sizeof *lab);
    for (size_t j = 0; j < n_train; j++)
        member[train[j]] = 1;
    dataset_group_folds(d, member, INNER_FOLDS, seed, inner);
    double best = -1, best_c = 1;
    for (int g = 0; g < N_C; g++) {
        double auc_sum = 0;
        for (int k = 0; k < INNER_FOLDS; k++) {
            size_t nr = 0, m = 0;
            for (size_t j = 0; j < n_train; j++)
                if (inner[train[j]] != k)
                    rows[nr++] = train[j];
            struct tfidf *t = tfidf_fit(e->texts, e->lens, e->label, rows, nr, c_grid[g]);
            for (size_t j = 0; j < n_train; j++)
                if (inner[train[j]] == k) {
                    s[m] = tfidf_score(t, e->texts[train[j]], e->lens[train[j]]);
                    lab[m++] = e->label[train[j]];
                }
            tfidf_free(t);
            auc_sum += routeval_auc(s, lab, m);
        }
        if (auc_sum / INNER_FOLDS > best) {
            best = auc_sum / INNER_FOLDS;
            best_c = c_grid[g];
        }
    }
    free(member);
    free(inner);
    free(rows);
    free(s);
    free(lab);
    return best_c;
}

static void run_task(struct eval *e, struct task *t)
{
    const int *fold = e->fold + (size_t)t->repeat * e->n;
    size_t *train = xmalloc(e->n * sizeof *train), n_train = 0;
    for (size_t i = 0; i < e->n; i++)
        if (fold[i] != t->fold)
            train[n_train++] = i;
    double t0 = now();
    if (t->kind == T_TFIDF) {
        /* The inner seed differs by outer fold, so the inner folds are not
         * the outer ones restricted. */
        t->c = e->baseline_c > 0
                   ? e->baseline_c
                   : inner_c(e, train, n_train, e->seed + 7919u * (uint64_t)(t->repeat * e->folds + t->fold + 1));
        struct tfidf *m = tfidf_fit(e->texts, e->lens, e->label, train, n_train, t->c);
        float *s = score_of(e, t->repeat, R_TFIDF);
        for (size_t i = 0; i < e->n; i++)
            if (fold[i] == t->fold)
                s[i] = tfidf_score(m, e->texts[i], e->lens[i]);
        tfidf_free(m);
    } else {
        int v = t->kind == T_V1 ? 0 : 1;
        char err[256];
        struct cmodel *m =
            trainer_fit_recipe(e->feat[v], train, n_train, e->weak, e->strong, &e->recipe[v], err, sizeof err);
        if (!m) {
            fprintf(stderr, "classifier-eval: %s, repeat %d fold %d: %s\n", task_name[t->kind], t->repeat + 1,
                    t->fold + 1, err);
            t->failed = 1;
        } else {
            float *route = score_of(e, t->repeat, v ? R_V2 : R_V1), *nl = score_of(e, t->repeat, R_V2_NL);
            for (size_t i = 0; i < e->n; i++) {
                if (fold[i] != t->fold)
                    continue;
                struct classifier_scores sc;
                cmodel_scores(m, &e->in[i], &sc);
                route[i] = sc.route;
                if (v)
                    nl[i] = sc.needs_large;
            }
            cmodel_free(m);
        }
    }
    t->seconds = now() - t0;
    free(train);
}

static void *worker(void *p)
{
    struct eval *e = p;
    for (;;) {
        pthread_mutex_lock(&e->lock);
        int k = e->next_task < e->n_tasks ? e->next_task++ : -1;
        pthread_mutex_unlock(&e->lock);
        if (k < 0)
            return NULL;
        struct task *t = &e->tasks[k];
        run_task(e, t);
        pthread_mutex_lock(&e->lock);
        e->done_tasks++;
        fprintf(stderr, "classifier-eval: [%d/%d] repeat %d fold %d %s: %.1f s%s (%.0f s elapsed)\n",
                e->done_tasks, e->n_tasks, t->repeat + 1, t->fold + 1, task_name[t->kind], t->seconds,
                t->failed ? " FAILED" : "", now() - e->t0);
        pthread_mutex_unlock(&e->lock);
    }
}

/* The scores that need no fit: random, length, the two oracles. */
static void fill_reference_scores(struct eval *e)
{
    size_t *pos = xcalloc(e->n_groups, sizeof *pos), *cnt = xcalloc(e->n_groups, sizeof *cnt);
    for (int r = 0; r < e->repeats; r++) {
        const int *fold = e->fold + (size_t)r * e->n;
        float *rnd = score_of(e, r, R_RANDOM), *len = score_of(e, r, R_LENGTH), *sub = score_of(e, r, R_SUBJECT),
              *orc = score_of(e, r, R_ORACLE);
        for (size_t i = 0; i < e->n; i++) {
            rnd[i] = 0;
            len[i] = (float)e->lens[i];
            orc[i] = (float)(e->strong[i] - e->weak[i]);
        }
        for (int k = 0; k < e->folds; k++) {
            memset(pos, 0, e->n_groups * sizeof *pos);
            memset(cnt, 0, e->n_groups * sizeof *cnt);
            for (size_t i = 0; i < e->n; i++)
                if (fold[i] == k) {
                    cnt[e->group[i]]++;
                    pos[e->group[i]] += (size_t)e->label[i];
                }
            for (size_t i = 0; i < e->n; i++)
                if (fold[i] == k)
                    sub[i] = (float)pos[e->group[i]] / (float)cnt[e->group[i]];
        }
    }
    free(pos);
    free(cnt);
}

/* ---- per-fold metrics --------------------------------------------------- */

/* metric[((router * N_METRICS) + metric) * n_folds + f], f = repeat * K + fold. */
struct results {
    int n_folds;
    double *metric;
    double *curve; /* [router * PLOT_POINTS + p]: mean acc over folds at share p / (PLOT_POINTS - 1) */
    size_t *fold_rows, *fold_pos, *fold_gsm;
};

static double *metric_at(const struct results *res, int router, int metric)
{
    return res->metric + ((size_t)router * N_METRICS + (size_t)metric) * (size_t)res->n_folds;
}

/* Evaluate the rows of one fold that pass keep (NULL: all). */
static int eval_rows(const struct eval *e, const float *score, const int *fold, int k, const unsigned char *keep,
                     int want, struct routeval *out)
{
    float *s = xmalloc(e->n * sizeof *s);
    int *w = xmalloc(e->n * sizeof *w), *st = xmalloc(e->n * sizeof *st);
    size_t m = 0;
    for (size_t i = 0; i < e->n; i++)
        if (fold[i] == k && (!keep || keep[i] == want)) {
            s[m] = score[i];
            w[m] = e->weak[i];
            st[m++] = e->strong[i];
        }
    int rc = routeval_compute(s, w, st, m, out);
    free(s);
    free(w);
    free(st);
    return rc;
}

static int compute_results(const struct eval *e, struct results *res)
{
    int F = e->repeats * e->folds;
    res->n_folds = F;
    res->metric = xcalloc((size_t)N_ROUTERS * N_METRICS * (size_t)F, sizeof *res->metric);
    res->curve = xcalloc((size_t)N_ROUTERS * PLOT_POINTS, sizeof *res->curve);
    res->fold_rows = xcalloc((size_t)F, sizeof *res->fold_rows);
    res->fold_pos = xcalloc((size_t)F, sizeof *res->fold_pos);
    res->fold_gsm = xcalloc((size_t)F, sizeof *res->fold_gsm);
    for (int r = 0; r < e->repeats; r++) {
        const int *fold = e->fold + (size_t)r * e->n;
        for (int k = 0; k < e->folds; k++) {
            int f = r * e->folds + k;
            for (size_t i = 0; i < e->n; i++)
                if (fold[i] == k) {
                    res->fold_rows[f]++;
                    res->fold_pos[f] += (size_t)e->label[i];
                    res->fold_gsm[f] += e->gsm[i];
                }
            for (int q = 0; q < N_ROUTERS; q++) {
                if ((q == R_V1 && !e->use_recipe[0]) || ((q == R_V2 || q == R_V2_NL) && !e->use_recipe[1]))
                    continue;
                const float *s = score_of(e, r, q);
                struct routeval all, clean, gsm;
                if (eval_rows(e, s, fold, k, NULL, 0, &all) < 0 || eval_rows(e, s, fold, k, e->suspect, 0, &clean) < 0 ||
                    eval_rows(e, s, fold, k, e->gsm, 1, &gsm) < 0) {
                    fprintf(stderr, "classifier-eval: repeat %d fold %d has no rows (or no GSM8K rows)\n", r + 1,
                            k + 1);
                    return -1;
                }
                metric_at(res, q, M_AUC)[f] = all.auc;
                metric_at(res, q, M_APGR)[f] = all.apgr;
                metric_at(res, q, M_APGR_CLEAN)[f] = clean.apgr;
                metric_at(res, q, M_CPT50)[f] = all.cpt50;
                metric_at(res, q, M_GSM_AUC)[f] = gsm.auc;
                metric_at(res, q, M_GSM_APGR)[f] = gsm.apgr;
                for (int p = 0; p < PLOT_POINTS; p++)
                    res->curve[q * PLOT_POINTS + p] += routeval_acc_at(&all, (double)p / (PLOT_POINTS - 1)) / F;
                routeval_release(&all);
                routeval_release(&clean);
                routeval_release(&gsm);
            }
        }
    }
    return 0;
}

static void results_release(struct results *res)
{
    free(res->metric);
    free(res->curve);
    free(res->fold_rows);
    free(res->fold_pos);
    free(res->fold_gsm);
}

/* ---- the data's suspect subjects ---------------------------------------- */

struct group_stats {
    const char *name;
    size_t rows, weak_ok, strong_ok, weak_only, strong_only;
    double z;
};

static double mcnemar_z(size_t weak_only, size_t strong_only)
{
    double b = (double)weak_only, c = (double)strong_only;
    return b + c > 0 ? (b - c) / sqrt(b + c) : 0;
}

/* Groups: each MMLU subject, and each other source (GSM8K) as one. */
static struct group_stats *group_rows(struct eval *e)
{
    const struct dataset *d = e->d;
    struct group_stats *g = xcalloc(e->n ? e->n : 1, sizeof *g);
    size_t ng = 0;
    for (size_t i = 0; i < e->n; i++) {
        const struct dataset_row *r = &d->rows[i];
        const char *name = strcmp(r->source, "mmlu") == 0 ? r->subject : r->source;
        size_t j = 0;
        while (j < ng && strcmp(g[j].name, name) != 0)
            j++;
        if (j == ng)
            g[ng++].name = name;
        e->group[i] = (int)j;
        g[j].rows++;
        g[j].weak_ok += (size_t)e->weak[i];
        g[j].strong_ok += (size_t)e->strong[i];
        g[j].weak_only += (size_t)(e->weak[i] && !e->strong[i]);
        g[j].strong_only += (size_t)(e->strong[i] && !e->weak[i]);
    }
    for (size_t j = 0; j < ng; j++)
        g[j].z = mcnemar_z(g[j].weak_only, g[j].strong_only);
    e->n_groups = ng;
    return g;
}

/* ---- saved scores --------------------------------------------------------- */

/* One header line ("cascade-eval-scores 1 <data sha> <repeats> <folds>
 * <seed> <n>"), then per repeat and row: repeat, row, fold, the N_ROUTERS
 * scores (%.9g: floats round-trip). */
static int save_scores(const struct eval *e, const char *path, const char *data_sha)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "cascade-eval-scores 1 %s %d %d %llu %zu %d\n", data_sha, e->repeats, e->folds,
            (unsigned long long)e->seed, e->n, N_ROUTERS);
    for (int r = 0; r < e->repeats; r++)
        for (size_t i = 0; i < e->n; i++) {
            fprintf(f, "%d %zu %d", r, i, e->fold[(size_t)r * e->n + i]);
            for (int q = 0; q < N_ROUTERS; q++)
                fprintf(f, " %.9g", (double)score_of(e, r, q)[i]);
            fputc('\n', f);
        }
    return fclose(f) == 0 ? 0 : -1;
}

static int load_scores(const struct eval *e, float *dst, const char *path, const char *data_sha, char *err,
                       size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", path);
        return -1;
    }
    char sha[80];
    int ver, R, K, nr;
    unsigned long long seed;
    size_t n;
    int rc = -1;
    if (fscanf(f, "cascade-eval-scores %d %79s %d %d %llu %zu %d", &ver, sha, &R, &K, &seed, &n, &nr) != 7 ||
        ver != 1 || nr != N_ROUTERS) {
        snprintf(err, errlen, "%s: not a scores file of this version", path);
        goto out;
    }
    if (strcmp(sha, data_sha) != 0 || R != e->repeats || K != e->folds || seed != e->seed || n != e->n) {
        snprintf(err, errlen, "%s: saved for other data or folds (data %.12s, %d x %d folds, seed %llu)", path, sha,
                 R, K, seed);
        goto out;
    }
    for (int r = 0; r < R; r++)
        for (size_t i = 0; i < n; i++) {
            int rr, fk;
            size_t ii;
            if (fscanf(f, "%d %zu %d", &rr, &ii, &fk) != 3 || rr != r || ii != i ||
                fk != e->fold[(size_t)r * n + i]) {
                snprintf(err, errlen, "%s: row %zu of repeat %d does not match this run's folds", path, i, r + 1);
                goto out;
            }
            for (int q = 0; q < N_ROUTERS; q++) {
                double v;
                if (fscanf(f, "%lf", &v) != 1) {
                    snprintf(err, errlen, "%s: truncated at row %zu of repeat %d", path, i, r + 1);
                    goto out;
                }
                dst[((size_t)r * N_ROUTERS + (size_t)q) * e->n + i] = (float)v;
            }
        }
    rc = 0;
out:
    fclose(f);
    return rc;
}

/* Reused scores: take the routers of kind k (R_V2 brings R_V2_NL along)
 * from saved into e->score. */
static void take_scores(struct eval *e, const float *saved, int kind)
{
    for (int r = 0; r < e->repeats; r++) {
        size_t off = (size_t)r * N_ROUTERS * e->n;
        memcpy(score_of(e, r, kind_router[kind]), saved + off + (size_t)kind_router[kind] * e->n,
               e->n * sizeof(float));
        if (kind == T_V2)
            memcpy(score_of(e, r, R_V2_NL), saved + off + (size_t)R_V2_NL * e->n, e->n * sizeof(float));
    }
}

/* The largest |refit - saved| over fold 1.1 of kind k. */
static double verify_diff(const struct eval *e, const float *saved, int kind)
{
    double worst = 0;
    for (size_t i = 0; i < e->n; i++) {
        if (e->fold[i] != 0)
            continue;
        double dd = fabs((double)score_of(e, 0, kind_router[kind])[i] - (double)saved[(size_t)kind_router[kind] * e->n + i]);
        worst = dd > worst ? dd : worst;
    }
    return worst;
}

/* ---- the report ------------------------------------------------------------ */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0, got;
    char *buf = xmalloc(cap + 1);
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap)
            buf = xrealloc(buf, (cap *= 2) + 1);
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void sha256_file(const char *path, char *hex)
{
    size_t n;
    char *buf = slurp(path, &n);
    uint8_t sum[SHA256_LEN];
    hex[0] = '\0';
    if (!buf)
        return;
    hash_sha256(buf, n, sum);
    hash_hex(sum, SHA256_LEN, hex);
    free(buf);
}

static int router_shown(const struct eval *e, int q)
{
    if (q == R_V1)
        return e->use_recipe[0];
    if (q == R_V2 || q == R_V2_NL)
        return e->use_recipe[1];
    return 1;
}

static void describe_recipe(FILE *f, const struct trainer_recipe *r)
{
    const struct trainer_opts *o = &r->lin;
    fprintf(f, "version %d: hash bits %u, %d hidden units in %d fit%s, l2 sparse %g / dense %g / hidden %g, "
               "%d L-BFGS iterations, seed %llu",
            r->version, o->hash_bits, o->n_hidden, o->n_ensemble > 1 ? o->n_ensemble : 1,
            o->n_ensemble > 1 ? "s" : "", o->l2_sparse, o->l2_dense, o->l2_hidden, o->max_iter,
            (unsigned long long)o->seed);
    if (r->gbt_rounds > 0)
        fprintf(f, "; trees: %d rounds of depth %d, learning rate %g, leaf l2 %g, min leaf %d", r->gbt_rounds,
                r->gbt_depth, r->gbt_lr, r->gbt_l2, r->gbt_min_leaf);
    if (r->group)
        fprintf(f, "; label check on (subjects of 30+ training rows whose strong model trails the weak one by "
                   "more than 0.15 are left out of the fit)");
}

static void cell(FILE *f, const struct routeval_summary *s, int pct)
{
    if (pct)
        fprintf(f, " %.1f%% ± %.1f |", 100 * s->mean, 100 * s->sd);
    else
        fprintf(f, " %.3f ± %.3f |", s->mean, s->sd);
}

static const int pair_metrics[] = {M_AUC, M_APGR, M_APGR_CLEAN, M_GSM_AUC, M_GSM_APGR};
#define N_PAIR_METRICS ((int)(sizeof pair_metrics / sizeof pair_metrics[0]))

static int pair_shown(const struct eval *e, int p)
{
    return router_shown(e, pairs[p][0]) && router_shown(e, pairs[p][1]);
}

static void write_report(FILE *f, const struct eval *e, const struct results *res, const struct group_stats *g,
                         double z_min, const double *fit_sec, const int *n_fits, const double *reuse_diff,
                         double wall, int jobs, int loaded)
{
    int F = res->n_folds;
    size_t min_rows = SIZE_MAX, max_rows = 0, gsm_rows = 0, pos = 0;
    for (int k = 0; k < F; k++) {
        min_rows = res->fold_rows[k] < min_rows ? res->fold_rows[k] : min_rows;
        max_rows = res->fold_rows[k] > max_rows ? res->fold_rows[k] : max_rows;
    }
    for (size_t i = 0; i < e->n; i++) {
        gsm_rows += e->gsm[i];
        pos += (size_t)e->label[i];
    }
    fprintf(f, "%zu rows (%zu GSM8K), %zu need the large model (%.1f%%). %d repeats x %d folds = %d folds, "
               "seeds %llu..%llu: MMLU rows fold by subject (each fold's subjects are unseen by its models), "
               "GSM8K rows by a seeded hash of their id; every row is scored once per repeat. A fold holds "
               "%zu to %zu rows.\n\n",
            e->n, gsm_rows, pos, 100.0 * (double)pos / (double)e->n, e->repeats, e->folds, F,
            (unsigned long long)e->seed, (unsigned long long)(e->seed + (uint64_t)e->repeats - 1), min_rows,
            max_rows);

    fprintf(f, "Suspect labels (the strong model right less often than the weak one, McNemar z > %g):", z_min);
    int any = 0;
    for (size_t j = 0; j < e->n_groups; j++)
        if (g[j].z > z_min) {
            fprintf(f, "%s `%s`: %zu rows, weak %.1f%%, strong %.1f%% (only the weak right on %zu, only the "
                       "strong on %zu; z = %.1f)",
                    any ? ";" : "", g[j].name, g[j].rows, 100.0 * (double)g[j].weak_ok / (double)g[j].rows,
                    100.0 * (double)g[j].strong_ok / (double)g[j].rows, g[j].weak_only, g[j].strong_only, g[j].z);
            any = 1;
        }
    if (!any)
        fprintf(f, " none");
    /* The runner-up shows how far the rule is from flagging anything else. */
    size_t next = SIZE_MAX;
    for (size_t j = 0; j < e->n_groups; j++)
        if (g[j].z <= z_min && (next == SIZE_MAX || g[j].z > g[next].z))
            next = j;
    if (next != SIZE_MAX)
        fprintf(f, ". Next closest: `%s`, weak %.1f%%, strong %.1f%%, z = %.1f", g[next].name,
                100.0 * (double)g[next].weak_ok / (double)g[next].rows,
                100.0 * (double)g[next].strong_ok / (double)g[next].rows, g[next].z);
    fprintf(f, ". \"w/o suspect\" scores each fold without those rows. What a router trains on is its recipe's: "
               "v1 and TF-IDF + LR train on every training row, v2 runs its own label check (below).\n\n");

    fprintf(f, "Routers: TF-IDF + LR's C is chosen per fold by a grouped %d-fold CV on that fold's training rows "
               "(grid 0.1, 0.3, 1, 3, 10)%s.",
            INNER_FOLDS, e->baseline_c > 0 ? " -- overridden here by --baseline-c" : "");
    for (int v = 0; v < 2; v++)
        if (e->use_recipe[v]) {
            fprintf(f, " v%d recipe: ", v + 1);
            describe_recipe(f, &e->recipe[v]);
            fprintf(f, ".");
        }
    fprintf(f, "\n\n");

    fprintf(f, "Mean ± sd over the %d folds (sd: how much one fold's figure varies; the folds of different "
               "repeats share rows, so it is not a standard error):\n\n",
            F);
    fprintf(f, "| router |");
    for (int m = 0; m < N_METRICS; m++)
        fprintf(f, " %s |", metric_name[m]);
    fprintf(f, "\n|---|");
    for (int m = 0; m < N_METRICS; m++)
        fprintf(f, "---|");
    fprintf(f, "\n");
    for (int q = 0; q < N_ROUTERS; q++) {
        if (!router_shown(e, q))
            continue;
        fprintf(f, "| %s |", router_name[q]);
        for (int m = 0; m < N_METRICS; m++) {
            struct routeval_summary s;
            routeval_summarize(metric_at(res, q, m), (size_t)F, &s);
            cell(f, &s, m == M_CPT50);
        }
        fprintf(f, "\n");
    }

    fprintf(f, "\nPaired differences, fold by fold (mean ± sd of the difference, and the folds the first router "
               "wins of %d):\n\n| pair |",
            F);
    for (int m = 0; m < N_PAIR_METRICS; m++)
        fprintf(f, " Δ %s |", metric_name[pair_metrics[m]]);
    fprintf(f, "\n|---|");
    for (int m = 0; m < N_PAIR_METRICS; m++)
        fprintf(f, "---|");
    fprintf(f, "\n");
    for (int p = 0; p < N_PAIRS; p++) {
        if (!pair_shown(e, p))
            continue;
        fprintf(f, "| %s - %s |", router_key[pairs[p][0]], router_key[pairs[p][1]]);
        for (int m = 0; m < N_PAIR_METRICS; m++) {
            struct routeval_paired pr;
            routeval_paired(metric_at(res, pairs[p][0], pair_metrics[m]),
                            metric_at(res, pairs[p][1], pair_metrics[m]), (size_t)F, &pr);
            fprintf(f, " %+.3f ± %.3f (%zu/%d) |", pr.diff.mean, pr.diff.sd, pr.wins, F);
        }
        fprintf(f, "\n");
    }
    fprintf(f, "\n");
    if (loaded) {
        fprintf(f, "Scores read from a saved run (--load-scores); no model was fitted for this report.\n");
        return;
    }
    fprintf(f, "Run time: %.0f s wall with %d job%s on this machine (2 shared cores).", wall, jobs,
            jobs > 1 ? "s" : "");
    for (int k = T_V2; k <= T_TFIDF; k++)
        if (n_fits[k] > 0)
            fprintf(f, " %s: %d fit%s, %.0f s (%.0f s each)%s.", task_name[k], n_fits[k], n_fits[k] > 1 ? "s" : "",
                    fit_sec[k], fit_sec[k] / n_fits[k], k == T_TFIDF && e->baseline_c == 0 ? ", inner CV included" : "");
    for (int k = T_V2; k <= T_TFIDF; k++)
        if (reuse_diff[k] >= 0)
            fprintf(f, " %s scores reused from a saved run of this evaluation (the same folds); refitting fold "
                       "1.1 with this build moved no score by more than %.1e.",
                    router_name[kind_router[k]], reuse_diff[k]);
    fprintf(f, "\n");
}

/* Every fold's figures, for eval.md. */
static void write_folds(FILE *f, const struct eval *e, const struct results *res, const struct task *tasks,
                        int n_tasks)
{
    fprintf(f, "\n## Every fold\n\nAUC / APGR of each router on each fold (rows, rows that need the large model, "
               "GSM8K rows; TF-IDF's C):\n\n| repeat.fold | rows | need large | GSM8K | C |");
    for (int q = 0; q < N_ROUTERS; q++)
        if (router_shown(e, q))
            fprintf(f, " %s |", router_key[q]);
    fprintf(f, "\n|---|---|---|---|---|");
    for (int q = 0; q < N_ROUTERS; q++)
        if (router_shown(e, q))
            fprintf(f, "---|");
    fprintf(f, "\n");
    for (int k = 0; k < res->n_folds; k++) {
        double c = 0;
        for (int t = 0; t < n_tasks; t++)
            if (tasks[t].kind == T_TFIDF && tasks[t].repeat * e->folds + tasks[t].fold == k)
                c = tasks[t].c;
        char cbuf[32] = "reused";
        if (c > 0)
            snprintf(cbuf, sizeof cbuf, "%g", c);
        fprintf(f, "| %d.%d | %zu | %zu | %zu | %s |", k / e->folds + 1, k % e->folds + 1, res->fold_rows[k],
                res->fold_pos[k], res->fold_gsm[k], cbuf);
        for (int q = 0; q < N_ROUTERS; q++)
            if (router_shown(e, q))
                fprintf(f, " %.3f / %.3f |", metric_at(res, q, M_AUC)[k], metric_at(res, q, M_APGR)[k]);
        fprintf(f, "\n");
    }
}

static int replace_block(const char *path, const char *text)
{
    static const char begin[] = "<!-- eval:begin -->", end[] = "<!-- eval:end -->";
    size_t n;
    char *doc = slurp(path, &n);
    if (!doc)
        return -1;
    char *b = strstr(doc, begin), *e = b ? strstr(b, end) : NULL;
    if (!b || !e) {
        free(doc);
        return -1;
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        free(doc);
        return -1;
    }
    fwrite(doc, 1, (size_t)(b - doc) + sizeof begin - 1, f);
    fprintf(f, "\n%s\n", text);
    fputs(e, f);
    fclose(f);
    free(doc);
    return 0;
}

static json_t *summary_json(const double *x, int n)
{
    struct routeval_summary s;
    routeval_summarize(x, (size_t)n, &s);
    return json_pack("{s:f, s:f, s:f, s:f}", "mean", s.mean, "sd", s.sd, "min", s.min, "max", s.max);
}

static void write_json(const char *path, const struct eval *e, const struct results *res, const struct group_stats *g,
                       double z_min, const char *data_sha, const struct task *tasks, int n_tasks, const double *fit_sec,
                       double wall, int jobs)
{
    int F = res->n_folds;
    json_t *j = json_pack("{s:s, s:I, s:i, s:i, s:I, s:i, s:f, s:f}", "data_sha256", data_sha, "rows",
                          (json_int_t)e->n, "repeats", e->repeats, "folds", e->folds, "seed", (json_int_t)e->seed,
                          "jobs", jobs, "wall_seconds", wall, "suspect_z", z_min);
    json_object_set_new(j, "fit_seconds",
                        json_pack("{s:f, s:f, s:f}", "v2", fit_sec[T_V2], "v1", fit_sec[T_V1], "tfidf_lr",
                                  fit_sec[T_TFIDF]));
    json_t *sus = json_array();
    for (size_t k = 0; k < e->n_groups; k++)
        if (g[k].z > z_min)
            json_array_append_new(sus, json_pack("{s:s, s:I, s:f, s:f, s:f}", "subject", g[k].name, "rows",
                                                 (json_int_t)g[k].rows, "acc_weak",
                                                 (double)g[k].weak_ok / (double)g[k].rows, "acc_strong",
                                                 (double)g[k].strong_ok / (double)g[k].rows, "z", g[k].z));
    json_object_set_new(j, "suspect_subjects", sus);
    json_t *cs = json_array();
    for (int t = 0; t < n_tasks; t++)
        if (tasks[t].kind == T_TFIDF)
            json_array_append_new(cs, json_real(tasks[t].c));
    json_object_set_new(j, "tfidf_c_per_fold", cs);
    json_t *routers = json_object();
    for (int q = 0; q < N_ROUTERS; q++) {
        if (!router_shown(e, q))
            continue;
        json_t *jr = json_object(), *folds = json_object(), *sum = json_object();
        for (int m = 0; m < N_METRICS; m++) {
            json_t *a = json_array();
            for (int k = 0; k < F; k++)
                json_array_append_new(a, json_real(metric_at(res, q, m)[k]));
            json_object_set_new(folds, metric_key[m], a);
            json_object_set_new(sum, metric_key[m], summary_json(metric_at(res, q, m), F));
        }
        json_object_set_new(jr, "summary", sum);
        json_object_set_new(jr, "per_fold", folds);
        json_object_set_new(routers, router_key[q], jr);
    }
    json_object_set_new(j, "routers", routers);
    json_t *jp = json_array();
    for (int p = 0; p < N_PAIRS; p++) {
        if (!pair_shown(e, p))
            continue;
        json_t *o = json_pack("{s:s, s:s}", "a", router_key[pairs[p][0]], "b", router_key[pairs[p][1]]);
        for (int m = 0; m < N_PAIR_METRICS; m++) {
            struct routeval_paired pr;
            routeval_paired(metric_at(res, pairs[p][0], pair_metrics[m]),
                            metric_at(res, pairs[p][1], pair_metrics[m]), (size_t)F, &pr);
            json_object_set_new(o, metric_key[pair_metrics[m]],
                                json_pack("{s:f, s:f, s:I, s:I, s:I, s:f}", "mean", pr.diff.mean, "sd", pr.diff.sd,
                                          "wins", (json_int_t)pr.wins, "ties", (json_int_t)pr.ties, "of",
                                          (json_int_t)F, "p_sign", pr.p_sign));
        }
        json_array_append_new(jp, o);
    }
    json_object_set_new(j, "pairs", jp);
    if (json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) != 0)
        fprintf(stderr, "classifier-eval: cannot write %s\n", path);
    json_decref(j);
}

static void write_plot(const char *dir, const struct eval *e, const struct results *res)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/curve.tsv", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "classifier-eval: cannot write %s\n", path);
        return;
    }
    /* One gnuplot data block per router: share of large calls, mean accuracy over the folds. */
    int blocks[N_ROUTERS], nb = 0;
    for (int q = 0; q < N_ROUTERS; q++) {
        if (!router_shown(e, q))
            continue;
        blocks[nb++] = q;
        fprintf(f, "# %s\n", router_name[q]);
        for (int p = 0; p < PLOT_POINTS; p++)
            fprintf(f, "%.4f\t%.5f\n", 100.0 * p / (PLOT_POINTS - 1), 100 * res->curve[q * PLOT_POINTS + p]);
        fprintf(f, "\n\n");
    }
    fclose(f);

    snprintf(path, sizeof path, "%s/curve.gp", dir);
    f = fopen(path, "w");
    if (!f)
        return;
    double weak = res->curve[R_RANDOM * PLOT_POINTS], strong = res->curve[R_RANDOM * PLOT_POINTS + PLOT_POINTS - 1];
    fprintf(f, "# Generated by classifier-eval: the mean cost-quality curves of curve.tsv.\n"
               "set terminal pngcairo size 900,560 font 'sans,10'\n"
               "set output 'curve.png'\n"
               "set title 'Unseen subjects, mean over %d grouped folds: accuracy vs share of calls to the large "
               "model'\n"
               "set xlabel 'calls to the large model (%%)'\nset ylabel 'accuracy (%%)'\n"
               "set key bottom right\nset grid\nset xrange [0:100]\nset yrange [%.1f:%.1f]\n",
            res->n_folds, 100 * weak - 1, 100 * strong + 2);
    fprintf(f, "plot ");
    int first = 1;
    for (int b = 0; b < nb; b++) {
        int q = blocks[b];
        if (q == R_ORACLE || q == R_V2_NL) /* the oracle squashes the scale; one v2 line is enough */
            continue;
        fprintf(f, "%s'curve.tsv' index %d with lines lw %d dt %d title \"%s\"", first ? "" : ", ", b,
                q == R_V2 ? 3 : 2, q == R_RANDOM || q == R_SUBJECT ? 2 : 1, router_name[q]);
        first = 0;
    }
    fprintf(f, "\n");
    fclose(f);

    char cmd[2200];
    snprintf(cmd, sizeof cmd, "command -v gnuplot >/dev/null 2>&1 && cd '%s' && gnuplot curve.gp", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "classifier-eval: gnuplot missing or failed; curve.png not regenerated\n");
}

/* ---- main ------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: classifier-eval --data FILE [--repeats 3] [--folds 5] [--seed %u] [--jobs 1]\n"
            "       [--recipes 1,2|1|2|none] [--baseline-c auto|C] [--suspect-z 3]\n"
            "       [--out DIR] [--readme FILE] [--save-scores FILE]\n"
            "       [--load-scores FILE | --reuse-scores FILE --reuse tfidf_lr,v1,v2 [--reuse-tolerance 1e-6]]\n",
            DATASET_SPLIT_SEED);
}

int main(int argc, char **argv)
{
    const char *data = NULL, *out = NULL, *readme = NULL, *save = NULL, *load = NULL, *recipes = "1,2";
    const char *reuse_file = NULL, *reuse = NULL;
    double reuse_tol = 1e-6;
    int repeats = 3, folds = 5, jobs = 1;
    double baseline_c = 0, z_min = 3;
    uint64_t seed = DATASET_SPLIT_SEED;
    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--data"))
            data = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--readme"))
            readme = v;
        else if (!strcmp(a, "--repeats"))
            repeats = atoi(v);
        else if (!strcmp(a, "--folds"))
            folds = atoi(v);
        else if (!strcmp(a, "--jobs"))
            jobs = atoi(v);
        else if (!strcmp(a, "--seed"))
            seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--recipes"))
            recipes = v;
        else if (!strcmp(a, "--baseline-c"))
            baseline_c = strcmp(v, "auto") ? atof(v) : 0;
        else if (!strcmp(a, "--suspect-z"))
            z_min = atof(v);
        else if (!strcmp(a, "--save-scores"))
            save = v;
        else if (!strcmp(a, "--load-scores"))
            load = v;
        else if (!strcmp(a, "--reuse-scores"))
            reuse_file = v;
        else if (!strcmp(a, "--reuse"))
            reuse = v;
        else if (!strcmp(a, "--reuse-tolerance"))
            reuse_tol = atof(v);
        else {
            usage();
            return 2;
        }
    }
    if (!data || repeats < 1 || folds < 2 || jobs < 1 || baseline_c < 0 || (save && load) ||
        (load && reuse_file) || !reuse_file != !reuse) {
        usage();
        return 2;
    }
    struct eval e = {.repeats = repeats, .folds = folds, .seed = seed, .baseline_c = baseline_c};
    e.use_recipe[0] = strchr(recipes, '1') != NULL;
    e.use_recipe[1] = strchr(recipes, '2') != NULL;

    char err[512];
    struct dataset *d = dataset_load(data, err, sizeof err);
    if (!d) {
        fprintf(stderr, "classifier-eval: %s\n", err);
        return 1;
    }
    char data_sha[SHA256_HEX_LEN + 1];
    sha256_file(data, data_sha);
    double t_start = now();
    size_t n = d->n;
    e.d = d;
    e.n = n;
    e.fold = xmalloc((size_t)repeats * n * sizeof *e.fold);
    e.score = xcalloc((size_t)repeats * N_ROUTERS * n, sizeof *e.score);
    e.weak = xmalloc(n * sizeof *e.weak);
    e.strong = xmalloc(n * sizeof *e.strong);
    e.label = xmalloc(n * sizeof *e.label);
    e.suspect = xcalloc(n, 1);
    e.gsm = xcalloc(n, 1);
    e.group = xmalloc(n * sizeof *e.group);
    e.texts = xmalloc(n * sizeof *e.texts);
    e.lens = xmalloc(n * sizeof *e.lens);
    e.in = xmalloc(n * sizeof *e.in);
    for (size_t i = 0; i < n; i++) {
        const struct dataset_row *r = &d->rows[i];
        e.weak[i] = r->weak_correct;
        e.strong[i] = r->strong_correct;
        e.label[i] = r->label;
        e.gsm[i] = strcmp(r->source, "mmlu") != 0;
        e.texts[i] = r->prompt;
        e.lens[i] = r->prompt_len;
        /* The routing data is single-turn with no system prompt. */
        e.in[i] = (struct classifier_input){.user = r->prompt, .user_len = r->prompt_len, .n_messages = 1};
    }
    struct group_stats *g = group_rows(&e);
    for (size_t i = 0; i < n; i++)
        e.suspect[i] = g[e.group[i]].z > z_min;
    /* Repeat r deals the folds from seed + r. */
    for (int r = 0; r < repeats; r++)
        dataset_group_folds(d, NULL, folds, seed + (uint64_t)r, e.fold + (size_t)r * n);
    fill_reference_scores(&e);

    /* v2's shipped recipe checks labels by subject (trainer.h: it leaves out
     * of its training rows any subject whose strong model trails the weak
     * one by more than 0.15); it sees only the fold's training rows. */
    e.mmlu_group = xmalloc(n * sizeof *e.mmlu_group);
    for (size_t i = 0; i < n; i++)
        e.mmlu_group[i] = e.gsm[i] ? -1 : e.group[i];
    for (int v = 0; v < 2; v++)
        if (e.use_recipe[v])
            trainer_recipe_default(&e.recipe[v], v + 1);
    if (e.use_recipe[1])
        e.recipe[1].group = e.mmlu_group;
    double fit_sec[3] = {0, 0, 0}, reuse_diff[3] = {-1, -1, -1};
    int n_fits[3] = {0, 0, 0}, reused[3] = {0, 0, 0};
    float *saved = NULL;
    int rc = 1;
    if (reuse) {
        reused[T_TFIDF] = strstr(reuse, "tfidf") != NULL;
        reused[T_V1] = strstr(reuse, "v1") != NULL;
        reused[T_V2] = strstr(reuse, "v2") != NULL;
    }
    if (load || reuse_file) {
        saved = xmalloc((size_t)repeats * N_ROUTERS * n * sizeof *saved);
        if (load_scores(&e, saved, load ? load : reuse_file, data_sha, err, sizeof err) < 0) {
            fprintf(stderr, "classifier-eval: %s\n", err);
            goto done;
        }
    }
    if (load) {
        for (int k = T_V2; k <= T_TFIDF; k++)
            take_scores(&e, saved, k);
    } else {
        for (int v = 0; v < 2; v++) {
            if (!e.use_recipe[v])
                continue;
            unsigned bits = e.recipe[v].lin.hash_bits;
            if (v == 1 && e.feat[0] && e.recipe[0].lin.hash_bits == bits)
                continue; /* shares v1's features */
            fprintf(stderr, "classifier-eval: featurizing %zu rows (2^%u buckets)\n", n, bits);
            e.feat[v] = trainer_featurize(e.in, n, bits);
            if (!e.feat[v]) {
                fprintf(stderr, "classifier-eval: featurizing failed (out of memory)\n");
                goto done;
            }
        }
        if (e.use_recipe[1] && !e.feat[1])
            e.feat[1] = e.feat[0];
        /* Tasks: the slow fits first, so that with several jobs the cheap
         * ones fill the tail. */
        e.tasks = xcalloc((size_t)repeats * (size_t)folds * 3, sizeof *e.tasks);
        for (int kind = T_V2; kind <= T_TFIDF; kind++) {
            if ((kind == T_V2 && !e.use_recipe[1]) || (kind == T_V1 && !e.use_recipe[0]))
                continue;
            if (reused[kind]) {
                take_scores(&e, saved, kind);
                e.tasks[e.n_tasks++] = (struct task){.kind = (enum task_kind)kind, .verify = 1};
                continue;
            }
            for (int r = 0; r < repeats; r++)
                for (int k = 0; k < folds; k++)
                    e.tasks[e.n_tasks++] = (struct task){.kind = (enum task_kind)kind, .repeat = r, .fold = k};
        }
        pthread_mutex_init(&e.lock, NULL);
        e.t0 = now();
        fprintf(stderr, "classifier-eval: %d tasks (%d x %d folds) on %d thread%s\n", e.n_tasks, repeats, folds,
                jobs, jobs > 1 ? "s" : "");
        pthread_t *tid = xcalloc((size_t)jobs, sizeof *tid);
        int started = 0;
        for (int t = 0; t < jobs; t++)
            if (pthread_create(&tid[t], NULL, worker, &e) == 0)
                started++;
            else
                break;
        if (started == 0)
            worker(&e);
        for (int t = 0; t < started; t++)
            pthread_join(tid[t], NULL);
        free(tid);
        pthread_mutex_destroy(&e.lock);
        for (int t = 0; t < e.n_tasks; t++) {
            if (e.tasks[t].failed)
                goto done;
            fit_sec[e.tasks[t].kind] += e.tasks[t].seconds;
            n_fits[e.tasks[t].kind]++;
        }
        /* A reused router's refit must give back its saved scores. float
         * arithmetic in a fixed order makes them bit-identical when nothing
         * changed; the tolerance only forgives the text round trip. */
        for (int k = T_V2; k <= T_TFIDF; k++) {
            if (!reused[k])
                continue;
            reuse_diff[k] = verify_diff(&e, saved, k);
            fprintf(stderr, "classifier-eval: %s: refit of fold 1.1 against the saved scores: largest difference %.2e\n",
                    task_name[k], reuse_diff[k]);
            if (!(reuse_diff[k] <= reuse_tol)) {
                fprintf(stderr, "classifier-eval: the saved %s scores do not match a refit: the recipe or the code "
                                "changed since they were saved; run without --reuse\n",
                        task_name[k]);
                goto done;
            }
        }
        if (save && save_scores(&e, save, data_sha) < 0)
            fprintf(stderr, "classifier-eval: cannot write %s\n", save);
    }
    double wall = now() - t_start;

    struct results res;
    if (compute_results(&e, &res) < 0)
        goto done;
    char *report = NULL;
    size_t report_len = 0;
    FILE *mem = open_memstream(&report, &report_len);
    write_report(mem, &e, &res, g, z_min, fit_sec, n_fits, reuse_diff, wall, jobs, load != NULL);
    fclose(mem);
    fputs(report, stdout);
    if (out) {
        char path[1024];
        snprintf(path, sizeof path, "%s/eval.md", out);
        FILE *f = fopen(path, "w");
        if (f) {
            fprintf(f, "# Routing evaluation: repeated folds grouped by subject\n\n"
                       "Written by `classifier-eval` (classifier/models/README.md says how to regenerate it).\n\n");
            fputs(report, f);
            write_folds(f, &e, &res, e.tasks, e.n_tasks);
            fclose(f);
        } else {
            fprintf(stderr, "classifier-eval: cannot write %s\n", path);
        }
        snprintf(path, sizeof path, "%s/metrics.json", out);
        write_json(path, &e, &res, g, z_min, data_sha, e.tasks, e.n_tasks, fit_sec, wall, jobs);
        write_plot(out, &e, &res);
    }
    if (readme && replace_block(readme, report) < 0)
        fprintf(stderr, "classifier-eval: %s has no <!-- eval:begin --> ... <!-- eval:end --> block\n", readme);
    free(report);
    results_release(&res);
    rc = 0;

done:
    if (e.feat[1] != e.feat[0])
        trainer_features_free(e.feat[1]);
    trainer_features_free(e.feat[0]);
    free(e.tasks);
    free(saved);
    free(g);
    free(e.fold);
    free(e.score);
    free(e.weak);
    free(e.strong);
    free(e.label);
    free(e.suspect);
    free(e.gsm);
    free(e.group);
    free(e.mmlu_group);
    free(e.texts);
    free(e.lens);
    free(e.in);
    dataset_free(d);
    return rc;
}
