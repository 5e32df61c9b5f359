#include "classifier/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classifier/dataset.h"
#include "classifier/features.h"
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

/* ---- objective --------------------------------------------------------- */

struct objective {
    const struct trainer_design *d;
    int H;
    double l2_sparse, l2_dense, l2_hidden;
    double *act; /* hidden pre-activations of one row, [H] */
};

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
    const double *dw = th + 1, *sw = dw + D, *hw = sw + S, *hb = hw + H * D, *ow = hb + H;
    size_t np = 1 + D + S + H * D + 2 * H;
    double *gdw = g + 1, *gsw = gdw + D, *ghw = gsw + S, *ghb = ghw + H * D, *gow = ghb + H;
    memset(g, 0, np * sizeof *g);

    double loss = 0, inv_n = 1.0 / (double)d->n;
    for (size_t i = 0; i < d->n; i++) {
        const float *z = d->dense + i * D;
        double t = th[0];
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
    theta[0] = log(rate / (1 - rate));
    uint64_t st = o->seed;
    double a = sqrt(6.0 / (double)(D + H + 1));
    double *hw = theta + 1 + D + S, *ow = hw + H * D + H;
    for (size_t k = 0; k < H * D; k++)
        hw[k] = a * (2.0 * (double)(dataset_rand(&st) >> 11) * 0x1p-53 - 1.0);
    for (size_t j = 0; j < H; j++)
        ow[j] = 0.1 * a * (2.0 * (double)(dataset_rand(&st) >> 11) * 0x1p-53 - 1.0);

    struct objective obj = {
        .d = d, .H = o->n_hidden, .l2_sparse = o->l2_sparse, .l2_dense = o->l2_dense,
        .l2_hidden = o->l2_hidden, .act = xcalloc(H ? H : 1, sizeof(double)),
    };
    struct lbfgs_opts lo = {.memory = 10, .max_iter = o->max_iter, .gtol = 1e-7, .ftol = 1e-10,
                            .verbose = o->verbose};
    int it = lbfgs_minimize(np, theta, objective_eval, &obj, &lo, loss);
    free(obj.act);
    return it;
}

/* ---- fit a cmodel ------------------------------------------------------- */

struct cmodel *trainer_fit(const struct trainer_features *f, const size_t *rows, size_t n_rows, const int *y,
                           const struct trainer_opts *o, char *err, size_t errlen)
{
    const int D = FEATURES_N_DENSE;
    struct cmodel *m = cmodel_new(f->hash_bits, o->n_hidden);
    int ens = o->n_ensemble > 0 ? o->n_ensemble : 1;
    if (!m || o->hash_bits != f->hash_bits || n_rows == 0 || o->n_hidden % ens != 0) {
        snprintf(err, errlen, "bad training options (hash_bits %u vs features %u, %zu rows, %d hidden in %d fits)",
                 o->hash_bits, f->hash_bits, n_rows, o->n_hidden, ens);
        cmodel_free(m);
        return NULL;
    }

    /* Standardize the dense signals with the training rows' mean and
     * spread; a signal that never varies gets scale 0 (it cannot be
     * learned from these rows, so it must not move the score). */
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
        int used = o->n_dense_used <= 0 || k < o->n_dense_used;
        m->dense_mean[k] = (float)mean;
        m->dense_scale[k] = sd > 1e-6 && used ? (float)(1.0 / sd) : 0.0f;
    }

    /* The subset as its own design matrix. */
    size_t nnz = 0;
    for (size_t r = 0; r < n_rows; r++)
        nnz += f->row_ptr[rows[r] + 1] - f->row_ptr[rows[r]];
    size_t *row_ptr = xmalloc((n_rows + 1) * sizeof *row_ptr);
    uint32_t *idx = xmalloc((nnz ? nnz : 1) * sizeof *idx);
    float *val = xmalloc((nnz ? nnz : 1) * sizeof *val);
    float *dense = xmalloc(n_rows * D * sizeof *dense);
    int *ys = xmalloc(n_rows * sizeof *ys);
    double *theta = NULL;
    size_t at = 0;
    for (size_t r = 0; r < n_rows; r++) {
        size_t i = rows[r], len = f->row_ptr[i + 1] - f->row_ptr[i];
        row_ptr[r] = at;
        memcpy(idx + at, f->idx + f->row_ptr[i], len * sizeof *idx);
        memcpy(val + at, f->val + f->row_ptr[i], len * sizeof *val);
        at += len;
        for (int k = 0; k < D; k++) {
            float v = (f->x[i * D + k] - m->dense_mean[k]) * m->dense_scale[k];
            dense[r * D + k] = v < -8.0f ? -8.0f : v > 8.0f ? 8.0f : v;
        }
        ys[r] = y[i];
    }
    row_ptr[n_rows] = at;
    struct trainer_design d = {
        .n = n_rows, .n_sparse = (size_t)1 << f->hash_bits, .n_dense = D, .row_ptr = row_ptr, .idx = idx,
        .val = val, .dense = dense, .y = ys,
    };
    /* An ensemble of E fits from seeds seed..seed+E-1 averages their logits.
     * The linear parts average into one set of weights and the hidden
     * units sit side by side with out_w / E: one model of E*H units that
     * scores exactly the mean logit, so the file format needs nothing new. */
    int E = o->n_ensemble > 0 ? o->n_ensemble : 1;
    size_t H = (size_t)o->n_hidden / (size_t)E, S = d.n_sparse;
    struct trainer_opts one = *o;
    one.n_hidden = (int)H;
    size_t np = trainer_n_params(&d, one.n_hidden);
    theta = malloc(np * sizeof *theta);
    if (!theta) {
        snprintf(err, errlen, "out of memory while training");
        goto fail;
    }
    m->bias = 0;
    for (int e = 0; e < E; e++) {
        double loss;
        one.seed = o->seed + (uint64_t)e;
        if (trainer_fit_design(&d, &one, theta, &loss) < 0) {
            snprintf(err, errlen, "out of memory while training");
            goto fail;
        }
        if (o->verbose)
            fprintf(stderr, "trainer: fit %d/%d: %zu rows, %zu nonzeros, final objective %.6f\n", e + 1, E, n_rows,
                    nnz, loss);
        const double *p = theta;
        float inv = 1.0f / (float)E;
        m->bias += (float)*p++ * inv;
        for (int k = 0; k < D; k++)
            m->dense_w[k] += (float)*p++ * inv;
        for (size_t k = 0; k < S; k++)
            m->sparse_w[k] += (float)*p++ * inv;
        size_t u0 = (size_t)e * H, HT = (size_t)o->n_hidden; /* this fit's first unit; all units */
        for (size_t j = 0; j < H; j++) /* theta is unit-major, the model input-major */
            for (int k = 0; k < D; k++)
                m->hidden_w[(size_t)k * HT + u0 + j] = (float)*p++;
        for (size_t j = 0; j < H; j++)
            m->hidden_b[u0 + j] = (float)*p++;
        for (size_t j = 0; j < H; j++)
            m->out_w[u0 + j] = (float)*p++ * inv;
    }

    free(theta);
    free(row_ptr);
    free(idx);
    free(val);
    free(dense);
    free(ys);
    return m;

fail:
    free(theta);
    free(row_ptr);
    free(idx);
    free(val);
    free(dense);
    free(ys);
    cmodel_free(m);
    return NULL;
}

/* ---- recipes ------------------------------------------------------------ */

void trainer_recipe_default(struct trainer_recipe *r, int version)
{
    memset(r, 0, sizeof *r);
    r->version = version;
    /* v1: the options regenerate.sh shipped with format 1, chosen by
     * grouped cross-validation (classifier/models/README.md). */
    r->lin = (struct trainer_opts){
        .hash_bits = 18, .n_hidden = 16 * 4, .n_ensemble = 4, .l2_sparse = 1e-3, .l2_dense = 1e-3,
        .l2_hidden = 3e-3, .max_iter = 300, .seed = 1, .n_dense_used = FEATURES_N_DENSE_V1,
    };
}

struct cmodel *trainer_fit_recipe(const struct trainer_features *f, const size_t *rows, size_t n_rows,
                                  const int *weak, const int *strong, const struct trainer_recipe *r, char *err,
                                  size_t errlen)
{
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
