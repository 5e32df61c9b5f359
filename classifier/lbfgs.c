#include "classifier/lbfgs.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static double max_abs(const double *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(a[i]) > m)
            m = fabs(a[i]);
    return m;
}

/* Two-loop recursion (Nocedal & Wright, Algorithm 7.4): d = -H g, where H
 * approximates the inverse Hessian from the last k pairs s_i = x_{i+1} - x_i,
 * y_i = g_{i+1} - g_i, with rho_i = 1 / (y_i . s_i), and H0 = gamma I,
 * gamma = s.y / y.y of the newest pair. */
static void direction(size_t n, int k, int head, int mem, double **s, double **y, const double *rho,
                      double *alpha, const double *g, double *d)
{
    for (size_t i = 0; i < n; i++)
        d[i] = -g[i];
    for (int c = 0; c < k; c++) {
        int j = (head - 1 - c + mem) % mem;
        alpha[j] = rho[j] * dot(s[j], d, n);
        for (size_t i = 0; i < n; i++)
            d[i] -= alpha[j] * y[j][i];
    }
    if (k > 0) {
        int j = (head - 1 + mem) % mem;
        double gamma = dot(s[j], y[j], n) / dot(y[j], y[j], n);
        for (size_t i = 0; i < n; i++)
            d[i] *= gamma;
    }
    for (int c = k - 1; c >= 0; c--) {
        int j = (head - 1 - c + mem) % mem;
        double beta = rho[j] * dot(y[j], d, n);
        for (size_t i = 0; i < n; i++)
            d[i] += (alpha[j] - beta) * s[j][i];
    }
}

int lbfgs_minimize(size_t n, double *x, lbfgs_fn f, void *ctx, const struct lbfgs_opts *o, double *fx)
{
    int mem = o->memory > 0 ? o->memory : 10;
    double *g = malloc(n * sizeof *g), *d = malloc(n * sizeof *d);
    double *xn = malloc(n * sizeof *xn), *gn = malloc(n * sizeof *gn);
    double *block = malloc(2 * (size_t)mem * n * sizeof *block);
    double **s = malloc((size_t)mem * sizeof *s), **y = malloc((size_t)mem * sizeof *y);
    double *rho = malloc((size_t)mem * sizeof *rho), *alpha = malloc((size_t)mem * sizeof *alpha);
    int it = -1;
    if (!g || !d || !xn || !gn || !block || !s || !y || !rho || !alpha)
        goto out;
    for (int j = 0; j < mem; j++) {
        s[j] = block + (size_t)(2 * j) * n;
        y[j] = block + (size_t)(2 * j + 1) * n;
    }

    double fv = f(ctx, x, g);
    int k = 0, head = 0;
    for (it = 0; it < o->max_iter; it++) {
        if (max_abs(g, n) < o->gtol)
            break;
        direction(n, k, head, mem, s, y, rho, alpha, g, d);
        double slope = dot(g, d, n);
        if (slope >= 0) {
            /* Not a descent direction (curvature went wrong): restart from
             * steepest descent and forget the history. */
            for (size_t i = 0; i < n; i++)
                d[i] = -g[i];
            slope = dot(g, d, n);
            k = 0;
        }
        /* The first step has no curvature to scale it: keep it short. */
        double step = k == 0 ? fmin(1.0, 1.0 / sqrt(-slope)) : 1.0, fn = 0;
        int accepted = 0;
        for (int tries = 0; tries < 40; tries++) {
            for (size_t i = 0; i < n; i++)
                xn[i] = x[i] + step * d[i];
            fn = f(ctx, xn, gn);
            if (isfinite(fn) && fn <= fv + 1e-4 * step * slope) {
                accepted = 1;
                break;
            }
            step *= 0.5;
        }
        if (!accepted)
            break;
        /* Keep the pair only when it has positive curvature, which keeps H
         * positive definite. */
        double *sj = s[head], *yj = y[head];
        for (size_t i = 0; i < n; i++) {
            sj[i] = xn[i] - x[i];
            yj[i] = gn[i] - g[i];
        }
        double sy = dot(sj, yj, n);
        if (sy > 1e-12 * dot(yj, yj, n)) {
            rho[head] = 1.0 / sy;
            head = (head + 1) % mem;
            if (k < mem)
                k++;
        }
        double improvement = fv - fn;
        memcpy(x, xn, n * sizeof *x);
        memcpy(g, gn, n * sizeof *g);
        fv = fn;
        if (o->verbose && (it + 1) % o->verbose == 0)
            fprintf(stderr, "lbfgs: iter %d f %.6f |g| %.3g step %.3g\n", it + 1, fv, max_abs(g, n), step);
        if (improvement < o->ftol * fmax(1.0, fabs(fv))) {
            it++;
            break;
        }
    }
    *fx = fv;

out:
    free(g);
    free(d);
    free(xn);
    free(gn);
    free(block);
    free(s);
    free(y);
    free(rho);
    free(alpha);
    return it;
}
