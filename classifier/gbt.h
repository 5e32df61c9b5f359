/* gbt.h: gradient-boosted oblivious trees over the classifier's dense
 * signals, added to a logit the linear part already gives.
 *
 * An oblivious tree of depth d asks the same question at every node of a
 * level: level l tests x[feat[l]] > thr[l], and the d answers, read as the
 * bits of an index (level l is bit l), pick one of 2^d leaves. A forest is
 * n_trees such trees; its value is the sum of their leaves. Scoring is d
 * compares and one load per tree, with no branches that depend on the
 * data, so 3 heads of 100 depth-4 trees cost about a microsecond.
 *
 * Fitting (gbt_fit) is Newton boosting of the logistic loss from a given
 * base logit per row: each round fits one tree to the gradient and hessian
 * of the loss at the current logit, level by level, choosing the
 * (feature, threshold) whose split of every node gains the most; leaf value
 * = -lr * G / (H + l2). Thresholds come from fixed quantile bins of each
 * feature over the training rows, computed once. Every sum runs in row
 * order and ties keep the first candidate (lowest feature, then lowest
 * threshold): the same rows and options give the same forest, bit for bit.
 *
 * gbt_eval() is pure and allocates nothing; any thread may call it on a
 * forest nobody writes to. gbt_fit() is single-threaded and allocates its
 * working memory; the forest's arrays belong to the caller (gbt_release). */
#ifndef CASCADE_GBT_H
#define CASCADE_GBT_H

#include <stddef.h>
#include <stdint.h>

#define GBT_MAX_DEPTH 8
#define GBT_MAX_TREES 4096
#define GBT_MAX_BINS 256

struct gbt_forest {
    int n_trees, depth;
    uint32_t *feat; /* [n_trees * depth]: the signal each level tests */
    float *thr;     /* [n_trees * depth]: goes to bit 1 when x[feat] > thr */
    float *leaf;    /* [n_trees << depth] */
};

struct gbt_opts {
    int rounds;    /* trees */
    int depth;     /* 1..GBT_MAX_DEPTH */
    double lr;     /* shrinkage of every leaf */
    double l2;     /* ridge on leaf values (in hessian units) */
    int min_leaf;  /* a split may leave a node's side empty or with at least this many rows */
    int n_bins;    /* quantile bins per feature, 2..GBT_MAX_BINS */
};

/* The forest's value at the raw signals x (indexed by feat). */
float gbt_eval(const struct gbt_forest *f, const float *x);

/* Fit a forest to rows x[r * stride + j] (n rows, signals j with use[j]
 * nonzero, j < n_feat) and labels y[r] in {0,1}, boosting from base[r]
 * (the logit before the trees). 0, or -1 when out of memory or on bad
 * options. */
int gbt_fit(const float *x, size_t n, int n_feat, size_t stride, const unsigned char *use, const double *base,
            const int *y, const struct gbt_opts *o, struct gbt_forest *out);

void gbt_release(struct gbt_forest *f);

#endif
