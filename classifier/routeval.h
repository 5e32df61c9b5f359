/* routeval.h: how well a router's scores route, offline, on graded rows.
 *
 * Each row has a score (higher = send to the large model) and the graded
 * answers of the weak and the strong model. Routing the top share c of rows
 * by score to the strong model and the rest to the weak one gives an
 * accuracy acc(c); that is the cost-quality curve, from acc(0) = weak
 * accuracy to acc(1) = strong accuracy. Rows with equal scores are one block
 * taken together, and the curve is linear across a block: the expected
 * accuracy of breaking the tie at random. So a constant score is exactly the
 * random router, a straight line.
 *
 * From the curve, as RouteLLM defines them:
 *   PGR(c)  = (acc(c) - acc_weak) / (acc_strong - acc_weak), the share of the
 *             performance gap recovered;
 *   APGR    = the area under PGR(c) for c in [0,1] (trapezoids; exact for
 *             the piecewise-linear curve). The random router scores 0.5.
 *   CPT(x)  = the smallest share of strong calls c with PGR(c) >= x.
 * RouteLLM samples the curve at 10 score quantiles; here every block is a
 * point, which is the same curve at full resolution.
 *
 * Also the ROC AUC of the scores against needs_large = strong && !weak
 * (ties count one half). Pure functions; thread-safe. */
#ifndef CASCADE_ROUTEVAL_H
#define CASCADE_ROUTEVAL_H

#include <stddef.h>

struct routeval_point {
    double share; /* of calls to the strong model, in [0,1] */
    double acc;   /* accuracy of the routed mix */
};

struct routeval {
    size_t n;
    double auc;
    double acc_weak, acc_strong;
    double apgr, cpt50, cpt80; /* cpt* are -1 when the strong model is no better */
    struct routeval_point *curve;
    size_t n_curve;
};

/* Evaluate scores on n rows. 0, or -1 when n is 0 or out of memory. */
int routeval_compute(const float *score, const int *weak, const int *strong, size_t n, struct routeval *out);
void routeval_release(struct routeval *r);

/* ROC AUC of score against label (0 or 1); 0.5 when one class is empty. */
double routeval_auc(const float *score, const int *label, size_t n);
/* acc(c), interpolated on the curve. */
double routeval_acc_at(const struct routeval *r, double share);
/* The smallest c with PGR(c) >= x, or -1. */
double routeval_cpt(const struct routeval *r, double x);

/* Spread over repeated folds. The folds of one repeat share no row, but the
 * repeats reuse every row, so the folds are not independent samples: sd is
 * the spread a single fold shows, not the standard error of the mean. */
struct routeval_summary {
    size_t n;
    double mean, sd; /* sd: sample standard deviation (n - 1), 0 when n < 2 */
    double min, max;
};
void routeval_summarize(const double *x, size_t n, struct routeval_summary *out);

/* a - b fold by fold (the same folds, so the differences are paired):
 * their summary, how many folds a wins (a > b), ties (a == b), and the
 * one-sided sign-test p-value of that many wins among the untied folds,
 * P(X >= wins) for X ~ Binomial(n - ties, 1/2) (1 when every fold ties). The
 * p-value treats folds as independent, which repeated folds are not: read it
 * as a rough guide. */
struct routeval_paired {
    struct routeval_summary diff;
    size_t wins, ties;
    double p_sign;
};
void routeval_paired(const double *a, const double *b, size_t n, struct routeval_paired *out);

#endif
