/* classifier-eval: the offline routing-quality report of a classifier model.
 *
 *   classifier-eval --data ../shared/data/routing/routellm_mmlu_gsm8k.train.jsonl \
 *                   --model classifier/models/difficulty.cdm --out classifier/models \
 *                   --readme classifier/models/README.md
 *
 * Rebuilds the split the trainer used (dataset.h), scores the held-out rows
 * with the model through classifier_score() (the gateway's own code path),
 * fits the TF-IDF + logistic-regression baseline (tfidf.h) on the same train
 * rows, and reports for each router and each held-out set the AUC, APGR,
 * CPT(50%), CPT(80%) and the cost-quality curve (routeval.h). Two reference
 * routers frame them: random (APGR 0.5 by construction) and the oracle that
 * knows the labels (the ceiling).
 *
 * Writes into --out: eval.md (the tables), metrics.json, curve.tsv,
 * curve.gp and, when gnuplot is installed, curve.png. --readme replaces the
 * text between "<!-- eval:begin -->" and "<!-- eval:end -->" in that file
 * with the tables. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classifier/classifier.h"
#include "classifier/dataset.h"
#include "classifier/routeval.h"
#include "classifier/tfidf.h"
#include "common/hash.h"
#include "common/mem.h"

enum { R_RANDOM, R_TFIDF, R_MODEL, R_ORACLE, N_ROUTERS };
static const char *router_name[N_ROUTERS] = {"random", "TF-IDF + LR (baseline)", "cascade classifier",
                                             "oracle (knows the labels)"};
static const char *router_key[N_ROUTERS] = {"random", "tfidf_lr", "cascade", "oracle"};

enum { S_SUBJECTS, S_ROWS, S_ALL, N_SETS };
static const char *set_name[N_SETS] = {"held-out subjects", "held-out rows", "all held-out"};
static const char *set_key[N_SETS] = {"heldout_subjects", "heldout_rows", "heldout_all"};

#define PLOT_POINTS 201

static int in_set(int set, enum dataset_split s)
{
    switch (set) {
    case S_SUBJECTS:
        return s == DATASET_VAL_SUBJECTS;
    case S_ROWS:
        return s == DATASET_VAL_ROWS;
    default:
        return s != DATASET_TRAIN;
    }
}

/* The baseline's C, chosen like our options were: the best out-of-fold AUC
 * over 5 folds of the train split (MMLU folds by subject). The choices and
 * their AUCs go to note[] for the report. */
static const double c_grid[] = {0.1, 0.3, 1, 3, 10};

static double choose_c(const struct dataset *d, const char **texts, const size_t *lens, const int *y,
                       uint64_t seed, char *note, size_t note_len)
{
    const int k = 5;
    int *fold = xmalloc(d->n * sizeof *fold);
    dataset_folds(d, k, seed, fold);
    size_t *rows = xmalloc(d->n * sizeof *rows);
    float *score = xmalloc(d->n * sizeof *score);
    int *lab = xmalloc(d->n * sizeof *lab);
    double best_auc = -1, best_c = 1;
    size_t used = (size_t)snprintf(note, note_len, "out-of-fold AUC by C:");
    for (size_t g = 0; g < sizeof c_grid / sizeof c_grid[0]; g++) {
        size_t m = 0;
        for (int fk = 0; fk < k; fk++) {
            size_t n_rows = 0;
            for (size_t i = 0; i < d->n; i++)
                if (fold[i] >= 0 && fold[i] != fk)
                    rows[n_rows++] = i;
            struct tfidf *t = tfidf_fit(texts, lens, y, rows, n_rows, c_grid[g]);
            for (size_t i = 0; i < d->n; i++)
                if (fold[i] == fk) {
                    score[m] = tfidf_score(t, texts[i], lens[i]);
                    lab[m++] = y[i];
                }
            tfidf_free(t);
        }
        double auc = routeval_auc(score, lab, m);
        if (used < note_len)
            used += (size_t)snprintf(note + used, note_len - used, " %g: %.4f%s", c_grid[g], auc,
                                     g + 1 < sizeof c_grid / sizeof c_grid[0] ? "," : "");
        if (auc > best_auc) {
            best_auc = auc;
            best_c = c_grid[g];
        }
    }
    free(fold);
    free(rows);
    free(score);
    free(lab);
    return best_c;
}

static void usage(void)
{
    fprintf(stderr, "usage: classifier-eval --data FILE --model MODEL [--out DIR] [--readme FILE]\n"
                    "       [--baseline-c auto|C] [--split-seed %u]\n",
            DATASET_SPLIT_SEED);
}

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

static void pct(char *buf, size_t len, double v)
{
    if (v < 0)
        snprintf(buf, len, "n/a");
    else
        snprintf(buf, len, "%.1f%%", 100 * v);
}

/* The markdown report. */
static void write_tables(FILE *f, struct routeval r[N_SETS][N_ROUTERS], const size_t *n_pos, double baseline_c,
                         const char *c_note, const char *subjects, const char *model_sha)
{
    fprintf(f, "Held-out subjects (never seen in training): %s.\n\n", subjects);
    fprintf(f, "Model file SHA-256 `%s`. Baseline: TF-IDF + logistic regression fit on the same train rows, "
               "C = %g (%s).\n\n", model_sha, baseline_c, c_note);
    for (int s = 0; s < N_SETS; s++) {
        fprintf(f, "**%s**: %zu prompts, %zu need the large model; weak model accuracy %.1f%%, strong %.1f%%.\n\n",
                set_name[s], r[s][0].n, n_pos[s], 100 * r[s][0].acc_weak, 100 * r[s][0].acc_strong);
        fprintf(f, "| router | AUC | APGR | CPT(50%%) | CPT(80%%) | accuracy at 20%% large | at 50%% large |\n");
        fprintf(f, "|---|---|---|---|---|---|---|\n");
        for (int k = 0; k < N_ROUTERS; k++) {
            char c50[16], c80[16];
            pct(c50, sizeof c50, r[s][k].cpt50);
            pct(c80, sizeof c80, r[s][k].cpt80);
            fprintf(f, "| %s | %.4f | %.4f | %s | %s | %.1f%% | %.1f%% |\n", router_name[k], r[s][k].auc,
                    r[s][k].apgr, c50, c80, 100 * routeval_acc_at(&r[s][k], 0.2),
                    100 * routeval_acc_at(&r[s][k], 0.5));
        }
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
    fprintf(f, "\n%s", text);
    fputs(e, f);
    fclose(f);
    free(doc);
    return 0;
}

static void write_plot(const char *dir, struct routeval r[N_SETS][N_ROUTERS])
{
    char path[1024];
    snprintf(path, sizeof path, "%s/curve.tsv", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "classifier-eval: cannot write %s\n", path);
        return;
    }
    /* One gnuplot data block per (set, router): share of large calls, accuracy. */
    for (int s = 0; s < N_SETS; s++)
        for (int k = 0; k < N_ROUTERS; k++) {
            fprintf(f, "# %s / %s\n", set_name[s], router_name[k]);
            for (int i = 0; i < PLOT_POINTS; i++) {
                double c = (double)i / (PLOT_POINTS - 1);
                fprintf(f, "%.4f\t%.5f\n", 100 * c, 100 * routeval_acc_at(&r[s][k], c));
            }
            fprintf(f, "\n\n");
        }
    fclose(f);

    snprintf(path, sizeof path, "%s/curve.gp", dir);
    f = fopen(path, "w");
    if (!f)
        return;
    fprintf(f, "# Generated by classifier-eval: the cost-quality curves of curve.tsv.\n"
               "set terminal pngcairo size 1500,520 font 'sans,10'\n"
               "set output 'curve.png'\n"
               "set multiplot layout 1,%d title 'Routing on held-out prompts: accuracy vs share of calls "
               "to the large model'\n"
               "set xlabel 'calls to the large model (%%)'\nset ylabel 'accuracy (%%)'\n"
               "set key bottom right\nset grid\nset xrange [0:100]\n",
            N_SETS);
    for (int s = 0; s < N_SETS; s++) {
        fprintf(f, "set title '%s (weak %.1f%%, strong %.1f%%)'\n", set_name[s], 100 * r[s][0].acc_weak,
                100 * r[s][0].acc_strong);
        /* The oracle (in the tables) would squash the others' scale; the
         * strong model's accuracy is drawn as a line instead. */
        fprintf(f, "plot %.5f with lines dt 2 lw 1.5 lc rgb 'gray40' title 'strong model alone', ", 100 * r[s][0].acc_strong);
        for (int k = 0; k < R_ORACLE; k++)
            fprintf(f, "%s'curve.tsv' index %d with lines lw %d dt %d title '%s'", k ? ", " : "",
                    s * N_ROUTERS + k, k == R_MODEL ? 3 : 2, k == R_RANDOM ? 2 : 1, router_name[k]);
        fprintf(f, "\n");
    }
    fprintf(f, "unset multiplot\n");
    fclose(f);

    char cmd[2200];
    snprintf(cmd, sizeof cmd, "command -v gnuplot >/dev/null 2>&1 && cd '%s' && gnuplot curve.gp", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "classifier-eval: gnuplot missing or failed; curve.png not regenerated\n");
}

int main(int argc, char **argv)
{
    const char *data = NULL, *model = NULL, *out = NULL, *readme = NULL;
    double baseline_c = 0; /* 0: choose by cross-validation */
    uint64_t split_seed = DATASET_SPLIT_SEED;
    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--data"))
            data = v;
        else if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--readme"))
            readme = v;
        else if (!strcmp(a, "--baseline-c"))
            baseline_c = strcmp(v, "auto") ? atof(v) : 0;
        else if (!strcmp(a, "--split-seed"))
            split_seed = strtoull(v, NULL, 10);
        else {
            usage();
            return 2;
        }
    }
    if (!data || !model || baseline_c < 0) {
        usage();
        return 2;
    }

    char err[512];
    struct classifier *c = classifier_load(model, err, sizeof err);
    if (!c) {
        fprintf(stderr, "classifier-eval: %s\n", err);
        return 1;
    }
    struct dataset *d = dataset_load(data, err, sizeof err);
    if (!d) {
        fprintf(stderr, "classifier-eval: %s\n", err);
        classifier_free(c);
        return 1;
    }
    dataset_split(d, split_seed, DATASET_SUBJECT_FRAC, DATASET_RANDOM_FRAC);

    size_t n = d->n, n_train = 0;
    const char **texts = xmalloc(n * sizeof *texts);
    size_t *lens = xmalloc(n * sizeof *lens), *train = xmalloc(n * sizeof *train);
    int *y = xmalloc(n * sizeof *y);
    for (size_t i = 0; i < n; i++) {
        texts[i] = d->rows[i].prompt;
        lens[i] = d->rows[i].prompt_len;
        y[i] = d->rows[i].label;
        if (d->rows[i].split == DATASET_TRAIN)
            train[n_train++] = i;
    }
    char c_note[512] = "C given on the command line";
    if (baseline_c == 0) {
        fprintf(stderr, "classifier-eval: choosing the baseline's C by cross-validation\n");
        baseline_c = choose_c(d, texts, lens, y, split_seed, c_note, sizeof c_note);
    }
    fprintf(stderr, "classifier-eval: fitting the TF-IDF baseline (C = %g) on %zu train rows\n", baseline_c,
            n_train);
    struct tfidf *base = tfidf_fit(texts, lens, y, train, n_train, baseline_c);
    fprintf(stderr, "classifier-eval: baseline vocabulary %zu terms\n", tfidf_vocab_size(base));

    struct routeval r[N_SETS][N_ROUTERS];
    size_t n_pos[N_SETS];
    float *sc[N_ROUTERS];
    for (int k = 0; k < N_ROUTERS; k++)
        sc[k] = xmalloc(n * sizeof **sc);
    int *weak = xmalloc(n * sizeof *weak), *strong = xmalloc(n * sizeof *strong);
    for (int s = 0; s < N_SETS; s++) {
        size_t m = 0;
        n_pos[s] = 0;
        for (size_t i = 0; i < n; i++) {
            const struct dataset_row *row = &d->rows[i];
            if (!in_set(s, row->split))
                continue;
            struct classifier_input in = {.user = row->prompt, .user_len = row->prompt_len, .n_messages = 1};
            sc[R_RANDOM][m] = 0.0f;
            sc[R_TFIDF][m] = tfidf_score(base, row->prompt, row->prompt_len);
            sc[R_MODEL][m] = classifier_score(c, &in);
            sc[R_ORACLE][m] = (float)(row->strong_correct - row->weak_correct);
            weak[m] = row->weak_correct;
            strong[m] = row->strong_correct;
            n_pos[s] += (size_t)row->label;
            m++;
        }
        for (int k = 0; k < N_ROUTERS; k++)
            if (routeval_compute(sc[k], weak, strong, m, &r[s][k]) < 0) {
                fprintf(stderr, "classifier-eval: empty held-out set %s\n", set_name[s]);
                return 1;
            }
    }

    char model_sha[SHA256_HEX_LEN + 1], data_sha[SHA256_HEX_LEN + 1], subjects[2048];
    sha256_file(model, model_sha);
    sha256_file(data, data_sha);
    dataset_heldout_subjects(d, subjects, sizeof subjects);

    char *report = NULL;
    size_t report_len = 0;
    FILE *mem = open_memstream(&report, &report_len);
    write_tables(mem, r, n_pos, baseline_c, c_note, subjects, model_sha);
    fclose(mem);
    fputs(report, stdout);

    if (out) {
        char path[1024];
        snprintf(path, sizeof path, "%s/eval.md", out);
        FILE *f = fopen(path, "w");
        if (f) {
            fputs(report, f);
            fclose(f);
        }
        json_t *j = json_pack("{s:s, s:s, s:f, s:I}", "model_sha256", model_sha, "data_sha256", data_sha,
                              "baseline_c", baseline_c, "split_seed", (json_int_t)split_seed);
        for (int s = 0; s < N_SETS; s++) {
            json_t *js = json_pack("{s:I, s:I, s:f, s:f}", "rows", (json_int_t)r[s][0].n, "positives",
                                   (json_int_t)n_pos[s], "acc_weak", r[s][0].acc_weak, "acc_strong",
                                   r[s][0].acc_strong);
            for (int k = 0; k < N_ROUTERS; k++)
                json_object_set_new(js, router_key[k],
                                    json_pack("{s:f, s:f, s:f, s:f}", "auc", r[s][k].auc, "apgr", r[s][k].apgr,
                                              "cpt50", r[s][k].cpt50, "cpt80", r[s][k].cpt80));
            json_object_set_new(j, set_key[s], js);
        }
        snprintf(path, sizeof path, "%s/metrics.json", out);
        if (json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) != 0)
            fprintf(stderr, "classifier-eval: cannot write %s\n", path);
        json_decref(j);
        write_plot(out, r);
    }
    if (readme && replace_block(readme, report) < 0)
        fprintf(stderr, "classifier-eval: %s has no <!-- eval:begin --> ... <!-- eval:end --> block\n", readme);

    free(report);
    for (int s = 0; s < N_SETS; s++)
        for (int k = 0; k < N_ROUTERS; k++)
            routeval_release(&r[s][k]);
    for (int k = 0; k < N_ROUTERS; k++)
        free(sc[k]);
    free(weak);
    free(strong);
    free(texts);
    free(lens);
    free(train);
    free(y);
    tfidf_free(base);
    dataset_free(d);
    classifier_free(c);
    return 0;
}
