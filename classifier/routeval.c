#include "classifier/routeval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct ranked {
    float score;
    size_t i;
};

/* Descending score; the index breaks ties so the sort is deterministic
 * (qsort is not stable), though tied rows are treated as one block anyway. */
static int cmp_desc(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return (x->i > y->i) - (x->i < y->i);
}

static struct ranked *rank(const float *score, size_t n)
{
    struct ranked *r = malloc(n * sizeof *r);
    if (!r)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        r[i].score = score[i];
        r[i].i = i;
    }
    qsort(r, n, sizeof *r, cmp_desc);
    return r;
}

double routeval_auc(const float *score, const int *label, size_t n)
{
    struct ranked *r = n ? rank(score, n) : NULL;
    if (!r)
        return 0.5;
    /* Mann-Whitney: count, over (positive, negative) pairs, how often the
     * positive scores higher, ties one half. Walking blocks of equal scores
     * from the top, each positive in a block beats every negative below. */
    double pos = 0, neg = 0, wins = 0;
    for (size_t i = 0; i < n; i++) {
        if (label[i])
            pos++;
        else
            neg++;
    }
    double neg_below = neg;
    for (size_t a = 0; a < n;) {
        size_t b = a;
        double bp = 0, bn = 0;
        while (b < n && r[b].score == r[a].score) {
            if (label[r[b].i])
                bp++;
            else
                bn++;
            b++;
        }
        neg_below -= bn;
        wins += bp * neg_below + 0.5 * bp * bn;
        a = b;
    }
    free(r);
    return pos > 0 && neg > 0 ? wins / (pos * neg) : 0.5;
}

int routeval_compute(const float *score, const int *weak, const int *strong, size_t n, struct routeval *out)
{
    memset(out, 0, sizeof *out);
    if (n == 0)
        return -1;
    struct ranked *r = rank(score, n);
    int *label = malloc(n * sizeof *label);
    out->curve = malloc((n + 1) * sizeof *out->curve);
    if (!r || !label || !out->curve) {
        free(r);
        free(label);
        routeval_release(out);
        return -1;
    }
    double weak_ok = 0, strong_ok = 0;
    for (size_t i = 0; i < n; i++) {
        weak_ok += weak[i] != 0;
        strong_ok += strong[i] != 0;
        label[i] = strong[i] && !weak[i];
    }
    out->n = n;
    out->acc_weak = weak_ok / (double)n;
    out->acc_strong = strong_ok / (double)n;
    out->auc = routeval_auc(score, label, n);

    /* The curve: one point per block of equal scores, top block first. */
    double correct = weak_ok;
    size_t k = 0;
    out->curve[k++] = (struct routeval_point){0.0, out->acc_weak};
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b < n && r[b].score == r[a].score) {
            correct += (double)(strong[r[b].i] != 0) - (double)(weak[r[b].i] != 0);
            b++;
        }
        out->curve[k++] = (struct routeval_point){(double)b / (double)n, correct / (double)n};
        a = b;
    }
    out->n_curve = k;

    double gap = out->acc_strong - out->acc_weak, area = 0;
    for (size_t i = 1; i < k; i++)
        area += (out->curve[i].share - out->curve[i - 1].share) *
                (out->curve[i].acc + out->curve[i - 1].acc - 2 * out->acc_weak) / 2;
    out->apgr = gap > 0 ? area / gap : 0;
    out->cpt50 = routeval_cpt(out, 0.5);
    out->cpt80 = routeval_cpt(out, 0.8);
    free(r);
    free(label);
    return 0;
}

void routeval_release(struct routeval *r)
{
    if (!r)
        return;
    free(r->curve);
    r->curve = NULL;
    r->n_curve = 0;
}

double routeval_acc_at(const struct routeval *r, double share)
{
    for (size_t i = 1; i < r->n_curve; i++) {
        const struct routeval_point *p = &r->curve[i - 1], *q = &r->curve[i];
        if (share <= q->share) {
            double t = q->share > p->share ? (share - p->share) / (q->share - p->share) : 1;
            return p->acc + t * (q->acc - p->acc);
        }
    }
    return r->n_curve ? r->curve[r->n_curve - 1].acc : 0;
}

double routeval_cpt(const struct routeval *r, double x)
{
    double gap = r->acc_strong - r->acc_weak;
    if (gap <= 0)
        return -1;
    double target = r->acc_weak + x * gap;
    if (r->n_curve && r->curve[0].acc >= target)
        return 0;
    for (size_t i = 1; i < r->n_curve; i++) {
        const struct routeval_point *p = &r->curve[i - 1], *q = &r->curve[i];
        if (q->acc >= target) {
            double t = q->acc > p->acc ? (target - p->acc) / (q->acc - p->acc) : 1;
            return p->share + t * (q->share - p->share);
        }
    }
    return -1;
}

void routeval_summarize(const double *x, size_t n, struct routeval_summary *out)
{
    memset(out, 0, sizeof *out);
    out->n = n;
    if (n == 0)
        return;
    /* Two passes: the mean, then squares of deviations from it (no
     * cancellation from sum(x^2) - n mean^2). */
    double sum = 0;
    out->min = out->max = x[0];
    for (size_t i = 0; i < n; i++) {
        sum += x[i];
        if (x[i] < out->min)
            out->min = x[i];
        if (x[i] > out->max)
            out->max = x[i];
    }
    out->mean = sum / (double)n;
    if (n < 2)
        return;
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (x[i] - out->mean) * (x[i] - out->mean);
    out->sd = sqrt(ss / (double)(n - 1));
}

void routeval_paired(const double *a, const double *b, size_t n, struct routeval_paired *out)
{
    memset(out, 0, sizeof *out);
    double *d = malloc((n ? n : 1) * sizeof *d);
    if (!d) {
        out->p_sign = 1;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        d[i] = a[i] - b[i];
        out->wins += d[i] > 0;
        out->ties += d[i] == 0;
    }
    routeval_summarize(d, n, &out->diff);
    free(d);
    /* P(X >= wins), X ~ Binomial(m, 1/2): sum of C(m, j) / 2^m, the terms
     * built by the ratio C(m, j+1) = C(m, j) (m - j) / (j + 1) in doubles
     * (m is a few dozen folds at most, far from any overflow). */
    size_t m = n - out->ties;
    if (m == 0) {
        out->p_sign = 1;
        return;
    }
    double term = pow(0.5, (double)m), p = 0;
    for (size_t j = 0; j <= m; j++) {
        if (j >= out->wins)
            p += term;
        term = term * (double)(m - j) / (double)(j + 1);
    }
    out->p_sign = p > 1 ? 1 : p;
}
