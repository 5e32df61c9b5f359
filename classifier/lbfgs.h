/* lbfgs.h: limited-memory BFGS minimization, for the classifier's trainer
 * and its TF-IDF baseline.
 *
 * Full-batch and single-threaded on purpose: every run over the same data
 * and start point takes the same steps and ends on the same bits, which is
 * what makes training reproducible. The line search backtracks from a unit
 * step until the Armijo condition holds. Thread-safe (no global state). */
#ifndef CASCADE_LBFGS_H
#define CASCADE_LBFGS_H

#include <stddef.h>

/* f(x) and its gradient into grad[n]. */
typedef double (*lbfgs_fn)(void *ctx, const double *x, double *grad);

struct lbfgs_opts {
    int memory;     /* correction pairs kept, e.g. 10 */
    int max_iter;   /* iterations (each one line search) */
    double gtol;    /* stop when max |grad_i| falls below this */
    double ftol;    /* stop when f improves by less than ftol * max(1, |f|) */
    int verbose;    /* progress on stderr every this many iterations, 0 for none */
};

/* Minimize f from x (updated in place); the final value goes to *fx.
 * Returns the number of iterations run, or -1 when out of memory. */
int lbfgs_minimize(size_t n, double *x, lbfgs_fn f, void *ctx, const struct lbfgs_opts *o, double *fx);

#endif
