/* trainer.h: fit the classifier's model (cmodel.h) to labeled prompts.
 *
 * One linear head is fitted by minimizing, over the n rows chosen,
 *     (1/n) sum_i logloss(y_i, offset_i + logit_i)
 *       + l2_sparse/2 |sparse_w|^2 + l2_dense/2 |dense_w|^2
 *       + l2_hidden/2 (|hidden_w|^2 + |out_w|^2)
 * with logit_i the linear (and MLP) part of cmodel.h's forward pass,
 * by full-batch L-BFGS from a seeded start. A dense weight may be held to
 * a sign (w = +-softplus(u)) or to 0. With n_ensemble = E, E fits from seeds
 * seed, seed+1, ... are averaged (their mean logit) into one head.
 *
 * A recipe (trainer_recipe) fits a whole model from both correctness labels:
 * version 1 is the v1 model (one needs_large head with a small MLP), version
 * 2 the v2 model: heads small_right, large_right (stacked on small_right: its
 * logit is small_right's plus a heavily ridged difference, so the expected
 * gain is that difference rather than the gap between two independent
 * errors) and needs_large, each with gradient-boosted trees (gbt.h) boosted
 * from its linear logit. The trees never see a length signal and a word
 * problem's length enters only through sign-held weights, so the route score
 * never falls as a word problem grows.
 *
 * One thread per fit and a fixed order of every sum: the same data, options
 * and seed give the same model, bit for bit, on every run. Featurize every
 * row once (trainer_featurize), then fit on any subset of rows, e.g. one per
 * cross-validation fold; trainer_fit and trainer_fit_recipe only read the
 * features, so several threads may fit on one trainer_features at once.
 * trainer_fit_design() is the bare optimizer over a sparse design matrix,
 * which the TF-IDF baseline reuses. */
#ifndef CASCADE_TRAINER_H
#define CASCADE_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "classifier/classifier.h"
#include "classifier/cmodel.h"

#define TRAINER_ZERO 2

struct trainer_opts {
    unsigned hash_bits;
    int n_hidden;       /* in all: n_ensemble fits of n_hidden / n_ensemble units */
    int n_ensemble;     /* fits averaged into the model (0 or 1: one fit) */
    double l2_sparse, l2_dense, l2_hidden;
    int max_iter;
    uint64_t seed;
    int verbose; /* L-BFGS progress every this many iterations, 0 for none */
    uint64_t dense_off;  /* bit i set: dense signal i gets scale 0 (unseen). The v1 recipe
                            sees the v1 signals only. */
    const signed char *dense_sign; /* NULL, or per dense weight: 0 free, +1 kept >= 0, -1 kept <= 0,
                                      TRAINER_ZERO held at 0 */
};

/* The features of every row, computed once. */
struct trainer_features;

struct trainer_features *trainer_featurize(const struct classifier_input *in, size_t n, unsigned hash_bits);
void trainer_features_free(struct trainer_features *f);

/* Fit on rows[0..n_rows) (indices into the featurized rows) with labels
 * y (indexed like the featurized rows). NULL on failure, with err. */
struct cmodel *trainer_fit(const struct trainer_features *f, const size_t *rows, size_t n_rows, const int *y,
                           const struct trainer_opts *o, char *err, size_t errlen);

/* A recipe: how a whole model is fitted, from the featurized rows and both
 * correctness labels. Version 1 is the shipped v1 model: one needs_large
 * head (needs_large = strong && !weak), logistic regression over the hashed
 * n-grams and the v1 signals plus a small MLP, averaged over 4 fits. Version
 * 2 is the v2 model (cmodel.h): heads for needs_large, small_right and
 * large_right, each a linear logit with gradient-boosted trees (gbt.h) over
 * the dense signals on top. */
struct trainer_recipe {
    int version;               /* 1 or 2 */
    struct trainer_opts lin;   /* the linear (and MLP) part of every head */
    int gbt_rounds;            /* trees per head (v2; 0: none) */
    int gbt_depth;             /* levels per tree */
    double gbt_lr;             /* shrinkage */
    double gbt_l2;             /* leaf value ridge */
    int gbt_min_leaf;          /* rows a leaf must keep */
    int n_heads;               /* v2: 3 (small_right, large_right, needs_large) or 2 (no needs_large) */
    int gbt_bins;              /* quantile bins per signal */
    int large_from_small;      /* v2: 1: the large_right head is the small_right head's logit plus a
                                  difference fitted on top (its weights the sum), so the gain is
                                  that difference, not two independent errors; 0: heads apart */
    double delta_l2;           /* v2 with large_from_small: the difference's ridge, as a multiple
                                  of the linear part's */
    const int *group;          /* v2, optional: a group id per featurized row (an MMLU subject;
                                  -1: none). Of the rows it is given, v2 leaves out every group of
                                  30+ rows whose strong-model accuracy is more than 0.15 below the
                                  weak model's: labels that cannot be right (the large model does
                                  not lose a whole subject to the small one). NULL: keep all. */
    int gbt_base_folds;        /* 0: trees boost from the linear logit as fitted; K >= 2: from each
                                  row's logit under a linear fit without it (K inner folds) */
};

/* The shipped options of a recipe version (1 or 2) into r. */
void trainer_recipe_default(struct trainer_recipe *r, int version);

/* Fit a model on rows[0..n_rows) of the featurized rows, with both
 * correctness labels (indexed like the featurized rows; needs_large =
 * strong && !weak). NULL with err on failure. The model carries no
 * route-score distribution (trainer_route_quantiles adds one). */
struct cmodel *trainer_fit_recipe(const struct trainer_features *f, const size_t *rows, size_t n_rows,
                                  const int *weak, const int *strong, const struct trainer_recipe *r, char *err,
                                  size_t errlen);

/* Quantiles q[0..n_q) of score[0..n) at probabilities i/(n_q-1), linear
 * between order statistics, clamped to [0,1]: the route-score distribution
 * a model file carries. 0, or -1 when n is 0 or n_q < 2. */
int trainer_quantiles(const float *score, size_t n, float *q, int n_q);

/* A design matrix: n rows, CSR over n_sparse columns, n_dense dense columns
 * (already scaled) and labels. */
struct trainer_design {
    size_t n, n_sparse;
    int n_dense;
    const size_t *row_ptr;  /* [n + 1] */
    const uint32_t *idx;    /* [row_ptr[n]] */
    const float *val;       /* [row_ptr[n]] */
    const float *dense;     /* [n * n_dense], row-major */
    const int *y;           /* [n] */
    const double *offset;   /* [n], a fixed logit each row starts from; NULL for none */
};

/* Parameters in the order bias, dense_w, sparse_w, hidden_w, hidden_b,
 * out_w: 1 + D + S + H*D + 2H doubles. */
size_t trainer_n_params(const struct trainer_design *d, int n_hidden);

/* Minimize the objective over d from a seeded start into theta. Returns the
 * iterations run, or -1 when out of memory. *loss gets the final objective. */
int trainer_fit_design(const struct trainer_design *d, const struct trainer_opts *o, double *theta,
                       double *loss);

#endif
