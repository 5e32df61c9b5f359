#include "classifier/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classifier/dataset.h"
#include "classifier/features.h"
#include "classifier/gbt.h"
#include "classifier/lbfgs.h"
#include "common/mem.h"

struct trainer_features {
    size_t n;
    unsigned hash_bits;
    size_t *row_ptr;  /* CSR over all rows */
    uint32_t *idx;
    float *val;
    float *x;         /* raw dense signals, n * FEATURES_N_DENSE */
};

struct trainer_features *trainer_featurize(const struct classifier_input *in, size_t n, unsigned hash_bits)
{
    struct trainer_features *f = xcalloc(1, sizeof *f);
    size_t cap = 1 << 20, nnz = 0;
    f->n = n;
    f->hash_bits = hash_bits;
    f->row_ptr = xmalloc((n + 1) * sizeof *f->row_ptr);
    f->idx = xmalloc(cap * sizeof *f->idx);
    f->val = xmalloc(cap * sizeof *f->val);
    f->x = xmalloc(n * FEATURES_N_DENSE * sizeof *f->x);
    for (size_t i = 0; i < n; i++) {
        struct features_entry *e;
        size_t m;
        if (features_sparse_collect(&in[i], hash_bits, &e, &m) < 0)
            goto fail;
        while (nnz + m > cap) {
            cap *= 2;
            f->idx = xrealloc(f->idx, cap * sizeof *f->idx);
            f->val = xrealloc(f->val, cap * sizeof *f->val);
        }
        f->row_ptr[i] = nnz;
        for (size_t k = 0; k < m; k++, nnz++) {
            f->idx[nnz] = e[k].index;
            f->val[nnz] = e[k].value;
        }
        free(e);
        features_dense(&in[i], f->x + i * FEATURES_N_DENSE);
    }
    f->row_ptr[n] = nnz;
    return f;

fail:
    trainer_features_free(f);
    return NULL;
}

void trainer_features_free(struct trainer_features *f)
{
    if (!f)
        return;
    free(f->row_ptr);
    free(f->idx);
    free(f->val);
    free(f->x);
    free(f);
}

size_t trainer_n_params(const struct trainer_design *d, int n_hidden)
{
    size_t D = (size_t)d->n_dense, H = (size_t)n_hidden;
    return 1 + D + d->n_sparse + H * D + 2 * H;
}

static int cmp_score(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* ---- objective --------------------------------------------------------- */

struct objective {
    const struct trainer_design *d;
    int H;
    double l2_sparse, l2_dense, l2_hidden;
    double *act; /* hidden pre-activations of one row, [H] */
    const signed char *sign; /* per dense weight: 0 free, +1 kept >= 0, -1 kept <= 0; or NULL */
    double *dw;  /* the dense weights the parameters stand for, [D] */
};

/* A sign-constrained dense weight is w = s * softplus(u) for its parameter
 * u: smooth, so L-BFGS needs no bounds, and never of the wrong sign. */
static double dense_weight(const signed char *sign, size_t k, double u)
{
    if (!sign || !sign[k])
        return u;
    if (sign[k] == TRAINER_ZERO)
        return 0;
    double sp = u > 30 ? u : log1p(exp(u));
    return sign[k] > 0 ? sp : -sp;
}

/* log(1 + exp(-t)) for label 1, log(1 + exp(t)) for label 0, without
 * overflow for any t. */
static double logloss(double t, int y)
{
    double m = y ? -t : t;
    return m > 0 ? m + log1p(exp(-m)) : log1p(exp(m));
}

static double objective_eval(void *ctx, const double *th, double *g)
{
    const struct objective *o = ctx;
    const struct trainer_design *d = o->d;
    size_t D = (size_t)d->n_dense, S = d->n_sparse, H = (size_t)o->H;
    const double *sw = th + 1 + D, *hw = sw + S, *hb = hw + H * D, *ow = hb + H;
    double *dw = o->dw;
    for (size_t k = 0; k < D; k++)
        dw[k] = dense_weight(o->sign, k, th[1 + k]);
    size_t np = 1 + D + S + H * D + 2 * H;
    double *gdw = g + 1, *gsw = gdw + D, *ghw = gsw + S, *ghb = ghw + H * D, *gow = ghb + H;
    memset(g, 0, np * sizeof *g);

    double loss = 0, inv_n = 1.0 / (double)d->n;
    for (size_t i = 0; i < d->n; i++) {
        const float *z = d->dense + i * D;
        double t = th[0] + (d->offset ? d->offset[i] : 0.0);
        for (size_t k = 0; k < D; k++)
            t += dw[k] * z[k];
        for (size_t p = d->row_ptr[i]; p < d->row_ptr[i + 1]; p++)
            t += sw[d->idx[p]] * d->val[p];
        for (size_t j = 0; j < H; j++) {
            const double *row = hw + j * D;
            double a = hb[j];
            for (size_t k = 0; k < D; k++)
                a += row[k] * z[k];
            o->act[j] = a;
            if (a > 0)
                t += ow[j] * a;
        }
        loss += logloss(t, d->y[i]);
        /* d loss / d t = sigmoid(t) - y, averaged over rows. */
        double r = (1.0 / (1.0 + exp(-t)) - d->y[i]) * inv_n;
        g[0] += r;
        for (size_t k = 0; k < D; k++)
            gdw[k] += r * z[k];
        for (size_t p = d->row_ptr[i]; p < d->row_ptr[i + 1]; p++)
            gsw[d->idx[p]] += r * d->val[p];
        for (size_t j = 0; j < H; j++) {
            if (o->act[j] <= 0)
                continue;
            gow[j] += r * o->act[j];
            double rj = r * ow[j];
            ghb[j] += rj;
            for (size_t k = 0; k < D; k++)
                ghw[j * D + k] += rj * z[k];
        }
    }
    loss *= inv_n;

    double reg = 0;
    for (size_t k = 0; k < D; k++) {
        reg += 0.5 * o->l2_dense * dw[k] * dw[k];
        gdw[k] += o->l2_dense * dw[k];
    }
    for (size_t k = 0; k < S; k++) {
        reg += 0.5 * o->l2_sparse * sw[k] * sw[k];
        gsw[k] += o->l2_sparse * sw[k];
    }
    for (size_t k = 0; k < H * D; k++) {
        reg += 0.5 * o->l2_hidden * hw[k] * hw[k];
        ghw[k] += o->l2_hidden * hw[k];
    }
    for (size_t j = 0; j < H; j++) {
        reg += 0.5 * o->l2_hidden * ow[j] * ow[j];
        gow[j] += o->l2_hidden * ow[j];
    }
    /* Chain rule through w = s * softplus(u): dw/du = s * sigmoid(u). */
    for (size_t k = 0; k < D && o->sign; k++) {
        if (o->sign[k] == TRAINER_ZERO)
            gdw[k] = 0;
        else if (o->sign[k])
            gdw[k] *= o->sign[k] / (1.0 + exp(-th[1 + k]));
    }
    return loss + reg;
}

int trainer_fit_design(const struct trainer_design *d, const struct trainer_opts *o, double *theta,
                       double *loss)
{
    size_t D = (size_t)d->n_dense, S = d->n_sparse, H = (size_t)o->n_hidden;
    size_t np = trainer_n_params(d, o->n_hidden);
    memset(theta, 0, np * sizeof *theta);

    /* Start at the base rate, with the hidden layer drawn from the seed
     * (Glorot-uniform) so its units differ from the first step. */
    double pos = 0;
    for (size_t i = 0; i < d->n; i++)
        pos += d->y[i];
    double rate = (pos + 0.5) / ((double)d->n + 1.0);
    theta[0] = d->offset ? 0.0 : log(rate / (1 - rate));
    uint64_t st = o->seed;
    double a = sqrt(6.0 / (double)(D + H + 1));
    double *hw = theta + 1 + D + S, *ow = hw + H * D + H;
    for (size_t k = 0; k < H * D; k++)
        hw[k] = a * (2.0 * (double)(dataset_rand(&st) >> 11) * 0x1p-53 - 1.0);
    for (size_t j = 0; j < H; j++)
        ow[j] = 0.1 * a * (2.0 * (double)(dataset_rand(&st) >> 11) * 0x1p-53 - 1.0);
    /* A constrained weight starts near 0 (softplus(-3) = 0.05). */
    for (size_t k = 0; k < D && o->dense_sign; k++)
        if (o->dense_sign[k])
            theta[1 + k] = -3.0;

    struct objective obj = {
        .d = d, .H = o->n_hidden, .l2_sparse = o->l2_sparse, .l2_dense = o->l2_dense,
        .l2_hidden = o->l2_hidden, .act = xcalloc(H ? H : 1, sizeof(double)), .sign = o->dense_sign,
        .dw = xcalloc(D ? D : 1, sizeof(double)),
    };
    struct lbfgs_opts lo = {.memory = 10, .max_iter = o->max_iter, .gtol = 1e-7, .ftol = 1e-10,
                            .verbose = o->verbose};
    int it = lbfgs_minimize(np, theta, objective_eval, &obj, &lo, loss);
    free(obj.act);
    free(obj.dw);
    return it;
}

/* ---- fit a cmodel ------------------------------------------------------- */

/* The training rows as one design matrix: their n-grams, their dense
 * signals standardized with the model's mean and scale, and a label array
 * each head fills in. */
struct built {
    struct trainer_design d;
    size_t *row_ptr;
    uint32_t *idx;
    float *val, *dense;
    int *y;
};

static void built_free(struct built *b)
{
    free(b->row_ptr);
    free(b->idx);
    free(b->val);
    free(b->dense);
    free(b->y);
}

/* Standardize the dense signals with the training rows' mean and spread; a
 * signal that never varies, or that off masks out, gets scale 0 (it cannot
 * move the score). Then copy the rows into b. */
static void build_design(const struct trainer_features *f, const size_t *rows, size_t n_rows, uint64_t off,
                         struct cmodel *m, struct built *b)
{
    const int D = FEATURES_N_DENSE;
    for (int k = 0; k < D; k++) {
        double s = 0, ss = 0;
        for (size_t r = 0; r < n_rows; r++)
            s += f->x[rows[r] * D + k];
        double mean = s / (double)n_rows;
        for (size_t r = 0; r < n_rows; r++) {
            double v = f->x[rows[r] * D + k] - mean;
            ss += v * v;
        }
        double sd = sqrt(ss / (double)n_rows);
        m->dense_mean[k] = (float)mean;
        m->dense_scale[k] = sd > 1e-6 && !(off >> k & 1) ? (float)(1.0 / sd) : 0.0f;
    }
    size_t nnz = 0;
    for (size_t r = 0; r < n_rows; r++)
        nnz += f->row_ptr[rows[r] + 1] - f->row_ptr[rows[r]];
    b->row_ptr = xmalloc((n_rows + 1) * sizeof *b->row_ptr);
    b->idx = xmalloc((nnz ? nnz : 1) * sizeof *b->idx);
    b->val = xmalloc((nnz ? nnz : 1) * sizeof *b->val);
    b->dense = xmalloc(n_rows * D * sizeof *b->dense);
    b->y = xmalloc(n_rows * sizeof *b->y);
    size_t at = 0;
    for (size_t r = 0; r < n_rows; r++) {
        size_t i = rows[r], len = f->row_ptr[i + 1] - f->row_ptr[i];
        b->row_ptr[r] = at;
        memcpy(b->idx + at, f->idx + f->row_ptr[i], len * sizeof *b->idx);
        memcpy(b->val + at, f->val + f->row_ptr[i], len * sizeof *b->val);
        at += len;
        for (int k = 0; k < D; k++) {
            float v = (f->x[i * D + k] - m->dense_mean[k]) * m->dense_scale[k];
            b->dense[r * D + k] = v < -8.0f ? -8.0f : v > 8.0f ? 8.0f : v;
        }
    }
    b->row_ptr[n_rows] = at;
    b->d = (struct trainer_design){
        .n = n_rows, .n_sparse = (size_t)1 << f->hash_bits, .n_dense = D, .row_ptr = b->row_ptr, .idx = b->idx,
        .val = b->val, .dense = b->dense, .y = b->y,
    };
}

/* Fit head k of m on the design (labels in b->y). An ensemble of E fits
 * from seeds seed..seed+E-1 averages their logits: the linear parts
 * average into one set of weights and the hidden units sit side by side
 * with out_w / E, one model of E*H units that scores exactly the mean
 * logit. */
static int fit_head(const struct trainer_design *d, const struct trainer_opts *o, struct cmodel *m, int k,
                    char *err, size_t errlen)
{
    const int D = d->n_dense;
    int E = o->n_ensemble > 0 ? o->n_ensemble : 1;
    size_t H = (size_t)o->n_hidden / (size_t)E, S = d->n_sparse;
    struct cmodel_head *hd = &m->head[k];
    struct trainer_opts one = *o;
    one.n_hidden = (int)H;
    size_t np = trainer_n_params(d, one.n_hidden);
    double *theta = malloc(np * sizeof *theta);
    if (!theta) {
        snprintf(err, errlen, "out of memory while training");
        return -1;
    }
    hd->bias = 0;
    for (int e = 0; e < E; e++) {
        double loss;
        one.seed = o->seed + (uint64_t)e;
        if (trainer_fit_design(d, &one, theta, &loss) < 0) {
            snprintf(err, errlen, "out of memory while training");
            free(theta);
            return -1;
        }
        if (o->verbose)
            fprintf(stderr, "trainer: head %d fit %d/%d: %zu rows, final objective %.6f\n", k, e + 1, E, d->n, loss);
        const double *p = theta;
        float inv = 1.0f / (float)E;
        hd->bias += (float)*p++ * inv;
        for (int i = 0; i < D; i++)
            hd->dense_w[i] += (float)dense_weight(o->dense_sign, (size_t)i, *p++) * inv;
        for (size_t i = 0; i < S; i++)
            m->sparse_w[i * CMODEL_SPARSE_STRIDE + (size_t)k] += (float)*p++ * inv;
        size_t u0 = (size_t)e * H, HT = (size_t)o->n_hidden; /* this fit's first unit; all units */
        for (size_t j = 0; j < H; j++) /* theta is unit-major, the model input-major */
            for (int i = 0; i < D; i++)
                hd->hidden_w[(size_t)i * HT + u0 + j] = (float)*p++;
        for (size_t j = 0; j < H; j++)
            hd->hidden_b[u0 + j] = (float)*p++;
        for (size_t j = 0; j < H; j++)
            hd->out_w[u0 + j] = (float)*p++ * inv;
    }
    free(theta);
    return 0;
}

/* Head k's linear logit (no trees) of every design row, with the model's
 * float weights: what the trees are boosted from. */
static void design_logits(const struct trainer_design *d, const struct cmodel *m, int k, double *out)
{
    const struct cmodel_head *hd = &m->head[k];
    size_t D = (size_t)d->n_dense;
    int H = hd->n_hidden;
    for (size_t r = 0; r < d->n; r++) {
        const float *z = d->dense + r * D;
        double t = hd->bias;
        for (size_t i = 0; i < D; i++)
            t += hd->dense_w[i] * z[i];
        for (size_t p = d->row_ptr[r]; p < d->row_ptr[r + 1]; p++)
            t += m->sparse_w[(size_t)d->idx[p] * CMODEL_SPARSE_STRIDE + (size_t)k] * d->val[p];
        for (int j = 0; j < H; j++) {
            double a = hd->hidden_b[j];
            for (size_t i = 0; i < D; i++)
                a += hd->hidden_w[i * (size_t)H + (size_t)j] * z[i];
            if (a > 0)
                t += hd->out_w[j] * a;
        }
        out[r] = t;
    }
}

/* Head 0's linear logit of featurized row i under m (one head, no trees). */
static double row_logit(const struct trainer_features *f, size_t i, const struct cmodel *m)
{
    const int D = FEATURES_N_DENSE;
    float x[FEATURES_N_DENSE], sparse = 0, logit;
    memcpy(x, f->x + i * D, sizeof x);
    for (size_t p = f->row_ptr[i]; p < f->row_ptr[i + 1]; p++)
        sparse += m->sparse_w[(size_t)f->idx[p] * CMODEL_SPARSE_STRIDE] * f->val[p];
    cmodel_logits_from(m, x, &sparse, &logit);
    return logit;
}

static uint64_t v1_off(void)
{
    uint64_t off = 0;
    for (int k = FEATURES_N_DENSE_V1; k < FEATURES_N_DENSE; k++)
        off |= (uint64_t)1 << k;
    return off;
}

struct cmodel *trainer_fit(const struct trainer_features *f, const size_t *rows, size_t n_rows, const int *y,
                           const struct trainer_opts *o, char *err, size_t errlen)
{
    int kind = CMODEL_NEEDS_LARGE, hidden = o->n_hidden;
    struct cmodel *m = cmodel_new(f->hash_bits, 1, &kind, &hidden);
    int ens = o->n_ensemble > 0 ? o->n_ensemble : 1;
    if (!m || o->hash_bits != f->hash_bits || n_rows == 0 || o->n_hidden % ens != 0) {
        snprintf(err, errlen, "bad training options (hash_bits %u vs features %u, %zu rows, %d hidden in %d fits)",
                 o->hash_bits, f->hash_bits, n_rows, o->n_hidden, ens);
        cmodel_free(m);
        return NULL;
    }
    struct built b;
    build_design(f, rows, n_rows, o->dense_off, m, &b);
    for (size_t r = 0; r < n_rows; r++)
        b.y[r] = y[rows[r]];
    if (fit_head(&b.d, o, m, 0, err, errlen) < 0) {
        cmodel_free(m);
        m = NULL;
    }
    built_free(&b);
    return m;
}

/* ---- recipes ------------------------------------------------------------ */

/* Length signals. A v2 model sees a prompt's length only through
 * FD_MC_LOG_* (prompts with options) and FD_WP_LOG_WORDS (word problems),
 * and the trees see neither the v1 length signals nor FD_WP_LOG_WORDS: so a
 * word problem's length reaches the score only through one linear weight
 * per head, whose sign the trainer fixes. */
static const int v1_length[] = {FD_LOG_BYTES, FD_LOG_WORDS, FD_LOG_LINES, FD_LOG_SENTENCES, FD_LOG_STEM_LEN};

static uint64_t v2_linear_off(void)
{
    uint64_t off = 0;
    for (size_t i = 0; i < sizeof v1_length / sizeof v1_length[0]; i++)
        off |= (uint64_t)1 << v1_length[i];
    return off;
}

/* The trees' signals: none of the length ones, none masked out. */
static void tree_signals(uint64_t off, unsigned char *use)
{
    for (int k = 0; k < FEATURES_N_DENSE; k++)
        use[k] = !(off >> k & 1) && k != FD_WP_LOG_WORDS;
    for (size_t i = 0; i < sizeof v1_length / sizeof v1_length[0]; i++)
        use[v1_length[i]] = 0;
    use[FD_LOG_SYSTEM_BYTES] = use[FD_LOG_TURNS] = 0; /* never vary in the data */
}

void trainer_recipe_default(struct trainer_recipe *r, int version)
{
    memset(r, 0, sizeof *r);
    r->version = version;
    if (version == 1) {
        /* v1: the options regenerate.sh shipped with format 1, chosen by
         * grouped cross-validation (classifier/models/README.md). */
        r->lin = (struct trainer_opts){
            .hash_bits = 18, .n_hidden = 16 * 4, .n_ensemble = 4, .l2_sparse = 1e-3, .l2_dense = 1e-3,
            .l2_hidden = 3e-3, .max_iter = 300, .seed = 1, .dense_off = v1_off(),
        };
        return;
    }
    /* v2: chosen by grouped cross-validation inside the training rows
     * (classifier/models/README.md). */
    r->lin = (struct trainer_opts){
        .hash_bits = 14, .n_hidden = 0, .n_ensemble = 1, .l2_sparse = 1e-3, .l2_dense = 1e-2, .l2_hidden = 3e-3,
        .max_iter = 100, .seed = 1, .dense_off = v2_linear_off(),
    };
    r->n_heads = 3;
    r->gbt_rounds = 20;
    r->gbt_depth = 3;
    r->gbt_lr = 0.05;
    r->gbt_l2 = 10;
    r->gbt_min_leaf = 300;
    r->gbt_bins = 32;
    r->large_from_small = 1;
    r->delta_l2 = 1000;
}

/* Append forest b's trees to a (same depth). 0 or -1. */
static int forest_append(struct gbt_forest *a, const struct gbt_forest *b)
{
    if (b->n_trees == 0)
        return 0;
    if (a->n_trees && a->depth != b->depth)
        return -1;
    int d = b->depth;
    size_t n = (size_t)(a->n_trees + b->n_trees);
    uint32_t *feat = realloc(a->feat, n * d * sizeof *feat);
    if (feat)
        a->feat = feat;
    float *thr = realloc(a->thr, n * d * sizeof *thr);
    if (thr)
        a->thr = thr;
    float *leaf = realloc(a->leaf, (n << d) * sizeof *leaf);
    if (leaf)
        a->leaf = leaf;
    if (!feat || !thr || !leaf)
        return -1;
    memcpy(a->feat + (size_t)a->n_trees * d, b->feat, (size_t)b->n_trees * d * sizeof *feat);
    memcpy(a->thr + (size_t)a->n_trees * d, b->thr, (size_t)b->n_trees * d * sizeof *thr);
    memcpy(a->leaf + ((size_t)a->n_trees << d), b->leaf, ((size_t)b->n_trees << d) * sizeof *leaf);
    a->n_trees += b->n_trees;
    a->depth = d;
    return 0;
}

/* The large_right head k stacked on the small_right head 0: a linear
 * difference fitted from the small head's whole logit (its trees included),
 * then the sum of the two linear parts and the small head's trees as the
 * head's own, and trees boosted on top. P(large) - P(small) then moves only
 * with the difference, where two heads fitted apart would each carry their
 * own error into the gain. */
static int fit_difference(struct built *b, const float *x, const struct trainer_opts *lin,
                          const struct trainer_recipe *r, struct cmodel *m, int k, double *base, char *err,
                          size_t errlen)
{
    const int D = FEATURES_N_DENSE;
    size_t n = b->d.n, S = b->d.n_sparse;
    struct cmodel_head *small = &m->head[0], *hd = &m->head[k];
    double *off = xmalloc(n * sizeof *off);
    design_logits(&b->d, m, 0, off);
    for (size_t i = 0; i < n; i++)
        off[i] += small->trees.n_trees ? gbt_eval(&small->trees, x + i * D) : 0.0f;
    struct trainer_opts o = *lin;
    o.l2_sparse *= r->delta_l2;
    o.l2_dense *= r->delta_l2;
    b->d.offset = off;
    int rc = fit_head(&b->d, &o, m, k, err, errlen);
    b->d.offset = NULL;
    free(off);
    if (rc < 0)
        return -1;
    hd->bias += small->bias;
    for (int i = 0; i < D; i++)
        hd->dense_w[i] += small->dense_w[i];
    for (size_t i = 0; i < S; i++)
        m->sparse_w[i * CMODEL_SPARSE_STRIDE + (size_t)k] += m->sparse_w[i * CMODEL_SPARSE_STRIDE];
    if (forest_append(&hd->trees, &small->trees) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (r->gbt_rounds <= 0)
        return 0;
    design_logits(&b->d, m, k, base);
    for (size_t i = 0; i < n; i++)
        base[i] += hd->trees.n_trees ? gbt_eval(&hd->trees, x + i * D) : 0.0f;
    unsigned char use[FEATURES_N_DENSE];
    tree_signals(lin->dense_off, use);
    struct gbt_opts g = {.rounds = r->gbt_rounds, .depth = r->gbt_depth, .lr = r->gbt_lr, .l2 = r->gbt_l2,
                         .min_leaf = r->gbt_min_leaf, .n_bins = r->gbt_bins};
    struct gbt_forest more;
    if (gbt_fit(x, n, D, D, use, base, b->y, &g, &more) < 0) {
        snprintf(err, errlen, "bad tree options or out of memory");
        return -1;
    }
    rc = forest_append(&hd->trees, &more);
    gbt_release(&more);
    if (rc < 0)
        snprintf(err, errlen, "out of memory");
    return rc;
}

/* The v2 model: heads small_right, large_right (and needs_large), each a
 * linear logit over every row of the design, then trees boosted from it. */
static struct cmodel *fit_v2(const struct trainer_features *f, const size_t *rows, size_t n_rows, const int *weak,
                             const int *strong, const struct trainer_recipe *r, char *err, size_t errlen)
{
    const int D = FEATURES_N_DENSE;
    int n_heads = r->n_heads == 2 ? 2 : 3;
    int kinds[3] = {CMODEL_SMALL_RIGHT, CMODEL_LARGE_RIGHT, CMODEL_NEEDS_LARGE}, hidden[3];
    for (int k = 0; k < 3; k++)
        hidden[k] = r->lin.n_hidden;
    struct cmodel *m = cmodel_new(f->hash_bits, n_heads, kinds, hidden);
    int ens = r->lin.n_ensemble > 0 ? r->lin.n_ensemble : 1;
    if (!m || r->lin.hash_bits != f->hash_bits || n_rows == 0 || r->lin.n_hidden % ens != 0) {
        snprintf(err, errlen, "bad training options (hash_bits %u vs features %u, %zu rows)", r->lin.hash_bits,
                 f->hash_bits, n_rows);
        cmodel_free(m);
        return NULL;
    }
    struct built b;
    build_design(f, rows, n_rows, r->lin.dense_off, m, &b);
    double *base = xmalloc(n_rows * sizeof *base);
    float *x = xmalloc(n_rows * D * sizeof *x);
    for (size_t i = 0; i < n_rows; i++)
        memcpy(x + i * D, f->x + rows[i] * D, D * sizeof *x);
    unsigned char use[FEATURES_N_DENSE];
    tree_signals(r->lin.dense_off, use);

    for (int k = 0; k < n_heads; k++) {
        /* A longer word problem may only make the small model less likely
         * right and the large model's help more likely: the route score,
         * (1 + P(large) - P(small)) / 2, then never falls with length. */
        signed char sign[FEATURES_N_DENSE] = {0};
        sign[FD_WP_LOG_WORDS] = kinds[k] == CMODEL_SMALL_RIGHT ? -1 : 1;
        /* Stacked heads: the small head leaves length to the difference,
         * which then must raise P(large) with it. */
        if (r->large_from_small && kinds[k] == CMODEL_SMALL_RIGHT)
            sign[FD_WP_LOG_WORDS] = TRAINER_ZERO;
        struct trainer_opts o = r->lin;
        o.dense_sign = sign;
        for (size_t i = 0; i < n_rows; i++) {
            size_t j = rows[i];
            b.y[i] = kinds[k] == CMODEL_SMALL_RIGHT ? weak[j] != 0
                     : kinds[k] == CMODEL_LARGE_RIGHT ? strong[j] != 0
                                                      : strong[j] && !weak[j];
        }
        if (r->large_from_small && kinds[k] == CMODEL_LARGE_RIGHT) {
            if (fit_difference(&b, x, &o, r, m, k, base, err, errlen) < 0)
                goto fail;
            continue;
        }
        if (fit_head(&b.d, &o, m, k, err, errlen) < 0)
            goto fail;
        if (r->gbt_rounds > 0 && r->gbt_base_folds >= 2) {
            /* Boost from logits the linear part did not fit to: each row's
             * from a fit without its inner fold (rows dealt round-robin),
             * so the trees learn what the n-grams miss on unseen prompts
             * rather than on memorized ones. */
            int F = r->gbt_base_folds;
            int *yall = xcalloc(f->n, sizeof *yall);
            size_t *sub = xmalloc(n_rows * sizeof *sub);
            for (size_t i = 0; i < n_rows; i++)
                yall[rows[i]] = b.y[i];
            for (int fold = 0; fold < F; fold++) {
                size_t ns = 0;
                for (size_t i = 0; i < n_rows; i++)
                    if ((int)(i % (size_t)F) != fold)
                        sub[ns++] = rows[i];
                struct cmodel *part = trainer_fit(f, sub, ns, yall, &o, err, errlen);
                if (!part) {
                    free(yall);
                    free(sub);
                    goto fail;
                }
                for (size_t i = (size_t)fold; i < n_rows; i += (size_t)F)
                    base[i] = row_logit(f, rows[i], part);
                cmodel_free(part);
            }
            free(yall);
            free(sub);
        } else if (r->gbt_rounds > 0) {
            design_logits(&b.d, m, k, base);
        }
        if (r->gbt_rounds > 0) {
            struct gbt_opts g = {.rounds = r->gbt_rounds, .depth = r->gbt_depth, .lr = r->gbt_lr,
                                 .l2 = r->gbt_l2, .min_leaf = r->gbt_min_leaf, .n_bins = r->gbt_bins};
            if (gbt_fit(x, n_rows, D, D, use, base, b.y, &g, &m->head[k].trees) < 0) {
                snprintf(err, errlen, "bad tree options or out of memory");
                goto fail;
            }
        }
    }
    free(base);
    free(x);
    built_free(&b);
    return m;

fail:
    free(base);
    free(x);
    built_free(&b);
    cmodel_free(m);
    return NULL;
}

/* rows less those of groups whose labels look broken (trainer.h), into
 * keep; returns how many are kept. Decided from these rows' labels alone. */
static size_t drop_broken_groups(const size_t *rows, size_t n_rows, const int *group, const int *weak,
                                 const int *strong, size_t *keep)
{
    int max = -1;
    for (size_t i = 0; i < n_rows; i++)
        max = group[rows[i]] > max ? group[rows[i]] : max;
    size_t ng = (size_t)max + 1;
    size_t *cnt = xcalloc(ng ? ng : 1, sizeof *cnt), *w = xcalloc(ng ? ng : 1, sizeof *w);
    size_t *s = xcalloc(ng ? ng : 1, sizeof *s);
    for (size_t i = 0; i < n_rows; i++) {
        int g = group[rows[i]];
        if (g < 0)
            continue;
        cnt[g]++;
        w[g] += weak[rows[i]] != 0;
        s[g] += strong[rows[i]] != 0;
    }
    size_t k = 0;
    for (size_t i = 0; i < n_rows; i++) {
        int g = group[rows[i]];
        if (g >= 0 && cnt[g] >= 30 && (double)s[g] < (double)w[g] - 0.15 * (double)cnt[g])
            continue;
        keep[k++] = rows[i];
    }
    free(cnt);
    free(w);
    free(s);
    return k;
}

struct cmodel *trainer_fit_recipe(const struct trainer_features *f, const size_t *rows, size_t n_rows,
                                  const int *weak, const int *strong, const struct trainer_recipe *r, char *err,
                                  size_t errlen)
{
    if (r->version == 2 && r->group) {
        size_t *keep = xmalloc((n_rows ? n_rows : 1) * sizeof *keep);
        size_t k = drop_broken_groups(rows, n_rows, r->group, weak, strong, keep);
        struct cmodel *m = fit_v2(f, keep, k, weak, strong, r, err, errlen);
        free(keep);
        return m;
    }
    if (r->version == 2)
        return fit_v2(f, rows, n_rows, weak, strong, r, err, errlen);
    if (r->version != 1) {
        snprintf(err, errlen, "unknown recipe version %d", r->version);
        return NULL;
    }
    int *y = xmalloc((f->n ? f->n : 1) * sizeof *y);
    for (size_t i = 0; i < f->n; i++)
        y[i] = strong[i] && !weak[i];
    struct cmodel *m = trainer_fit(f, rows, n_rows, y, &r->lin, err, errlen);
    free(y);
    return m;
}

int trainer_quantiles(const float *score, size_t n, float *q, int n_q)
{
    if (n == 0 || n_q < 2)
        return -1;
    float *s = xmalloc(n * sizeof *s);
    memcpy(s, score, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_score);
    for (int i = 0; i < n_q; i++) {
        /* Linear interpolation between order statistics (type 7). */
        double pos = (double)i / (double)(n_q - 1) * (double)(n - 1);
        size_t a = (size_t)pos;
        double f = pos - (double)a;
        double v = a + 1 < n ? s[a] + f * ((double)s[a + 1] - s[a]) : s[n - 1];
        q[i] = (float)(v < 0 ? 0 : v > 1 ? 1 : v);
    }
    free(s);
    return 0;
}
