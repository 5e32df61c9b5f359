/* gbt.c: oblivious gradient-boosted trees (contract in gbt.h). */
#include "classifier/gbt.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

float gbt_eval(const struct gbt_forest *f, const float *x)
{
    float sum = 0.0f;
    int d = f->depth;
    for (int t = 0; t < f->n_trees; t++) {
        const uint32_t *feat = f->feat + (size_t)t * d;
        const float *thr = f->thr + (size_t)t * d;
        unsigned idx = 0;
        for (int l = 0; l < d; l++)
            idx |= (unsigned)(x[feat[l]] > thr[l]) << l;
        sum += f->leaf[((size_t)t << d) + idx];
    }
    return sum;
}

void gbt_release(struct gbt_forest *f)
{
    if (!f)
        return;
    free(f->feat);
    free(f->thr);
    free(f->leaf);
    memset(f, 0, sizeof *f);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Per usable feature: its edges (ascending, distinct, each below the
 * feature's maximum so a split can send rows both ways) and every row's bin,
 * the number of edges the row's value lies above. */
struct binned {
    int n_edges;
    float edges[GBT_MAX_BINS];
    uint8_t *bin; /* [n] */
};

static int bin_feature(const float *x, size_t n, size_t stride, int j, int n_bins, float *tmp, struct binned *b)
{
    for (size_t r = 0; r < n; r++)
        tmp[r] = x[r * stride + (size_t)j];
    qsort(tmp, n, sizeof *tmp, cmp_float);
    b->n_edges = 0;
    float max = tmp[n - 1];
    for (int k = 1; k < n_bins; k++) {
        float v = tmp[(size_t)k * n / (size_t)n_bins];
        if (v < max && (b->n_edges == 0 || v > b->edges[b->n_edges - 1]))
            b->edges[b->n_edges++] = v;
    }
    b->bin = malloc(n ? n : 1);
    if (!b->bin)
        return -1;
    for (size_t r = 0; r < n; r++) {
        float v = x[r * stride + (size_t)j];
        int lo = 0, hi = b->n_edges; /* count of edges < v */
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (v > b->edges[mid])
                lo = mid + 1;
            else
                hi = mid;
        }
        b->bin[r] = (uint8_t)lo;
    }
    return 0;
}

/* G^2 / (H + l2): the loss reduction a node's Newton step buys. */
static inline double score_of(double g, double h, double l2)
{
    return g * g / (h + l2);
}

int gbt_fit(const float *x, size_t n, int n_feat, size_t stride, const unsigned char *use, const double *base,
            const int *y, const struct gbt_opts *o, struct gbt_forest *out)
{
    memset(out, 0, sizeof *out);
    if (n == 0 || n_feat <= 0 || o->depth < 1 || o->depth > GBT_MAX_DEPTH || o->rounds < 0 ||
        o->rounds > GBT_MAX_TREES || o->n_bins < 2 || o->n_bins > GBT_MAX_BINS)
        return -1;
    int d = o->depth, T = o->rounds, rc = -1;
    size_t leaves = (size_t)1 << d;
    struct binned *bf = calloc((size_t)n_feat, sizeof *bf);
    float *tmp = malloc(n * sizeof *tmp);
    double *F = malloc(n * sizeof *F), *g = malloc(n * sizeof *g), *h = malloc(n * sizeof *h);
    unsigned *node = malloc(n * sizeof *node);
    /* Histograms of one feature at one level: per node and bin, G, H, count. */
    size_t hist_n = (leaves / 2) * (GBT_MAX_BINS + 1);
    double *hg = malloc(hist_n * sizeof *hg), *hh = malloc(hist_n * sizeof *hh);
    size_t *hc = malloc(hist_n * sizeof *hc);
    double *lg = malloc(leaves * sizeof *lg), *lh = malloc(leaves * sizeof *lh);
    out->feat = malloc(((size_t)T * d + 1) * sizeof *out->feat);
    out->thr = malloc(((size_t)T * d + 1) * sizeof *out->thr);
    out->leaf = calloc((size_t)T * leaves + 1, sizeof *out->leaf);
    if (!bf || !tmp || !F || !g || !h || !node || !hg || !hh || !hc || !lg || !lh || !out->feat || !out->thr ||
        !out->leaf)
        goto fail;
    for (int j = 0; j < n_feat; j++)
        if (use[j] && bin_feature(x, n, stride, j, o->n_bins, tmp, &bf[j]) < 0)
            goto fail;
    out->depth = d;
    for (size_t r = 0; r < n; r++)
        F[r] = base[r];

    for (int t = 0; t < T; t++) {
        for (size_t r = 0; r < n; r++) {
            double p = 1.0 / (1.0 + exp(-F[r]));
            g[r] = p - y[r];
            h[r] = p * (1.0 - p);
            node[r] = 0;
        }
        uint32_t *tf = out->feat + (size_t)t * d;
        float *tt = out->thr + (size_t)t * d;
        for (int l = 0; l < d; l++) {
            size_t nodes = (size_t)1 << l;
            double best = 1e-12;
            int best_j = -1, best_k = 0;
            for (int j = 0; j < n_feat; j++) {
                if (!use[j] || bf[j].n_edges == 0)
                    continue;
                size_t nb = (size_t)bf[j].n_edges + 1;
                memset(hg, 0, nodes * nb * sizeof *hg);
                memset(hh, 0, nodes * nb * sizeof *hh);
                memset(hc, 0, nodes * nb * sizeof *hc);
                const uint8_t *bin = bf[j].bin;
                for (size_t r = 0; r < n; r++) {
                    size_t at = node[r] * nb + bin[r];
                    hg[at] += g[r];
                    hh[at] += h[r];
                    hc[at]++;
                }
                /* Prefix sums per node: entry k then holds bins 0..k, the
                 * rows a split at edge k sends left. */
                for (size_t v = 0; v < nodes; v++)
                    for (size_t k = 1; k < nb; k++) {
                        hg[v * nb + k] += hg[v * nb + k - 1];
                        hh[v * nb + k] += hh[v * nb + k - 1];
                        hc[v * nb + k] += hc[v * nb + k - 1];
                    }
                for (size_t k = 0; k + 1 < nb; k++) {
                    double gain = 0;
                    int ok = 1;
                    for (size_t v = 0; v < nodes && ok; v++) {
                        double G = hg[v * nb + nb - 1], H = hh[v * nb + nb - 1];
                        size_t C = hc[v * nb + nb - 1];
                        double GL = hg[v * nb + k], HL = hh[v * nb + k];
                        size_t CL = hc[v * nb + k], CR = C - CL;
                        if ((CL && CL < (size_t)o->min_leaf) || (CR && CR < (size_t)o->min_leaf))
                            ok = 0;
                        gain += score_of(GL, HL, o->l2) + score_of(G - GL, H - HL, o->l2) - score_of(G, H, o->l2);
                    }
                    if (ok && gain > best) {
                        best = gain;
                        best_j = j;
                        best_k = (int)k;
                    }
                }
            }
            if (best_j < 0) {
                /* Nothing worth splitting: a level every row passes on the
                 * same side, so the tree keeps its shape. */
                tf[l] = 0;
                tt[l] = FLT_MAX;
                continue;
            }
            tf[l] = (uint32_t)best_j;
            tt[l] = bf[best_j].edges[best_k];
            const uint8_t *bin = bf[best_j].bin;
            for (size_t r = 0; r < n; r++)
                node[r] |= (unsigned)(bin[r] > best_k) << l;
        }
        memset(lg, 0, leaves * sizeof *lg);
        memset(lh, 0, leaves * sizeof *lh);
        for (size_t r = 0; r < n; r++) {
            lg[node[r]] += g[r];
            lh[node[r]] += h[r];
        }
        float *leaf = out->leaf + (size_t)t * leaves;
        for (size_t v = 0; v < leaves; v++)
            leaf[v] = (float)(-o->lr * lg[v] / (lh[v] + o->l2));
        for (size_t r = 0; r < n; r++)
            F[r] += leaf[node[r]];
        out->n_trees = t + 1;
    }
    rc = 0;

fail:
    /* Success and failure free the same scratch; only a failure drops the
     * trees. */
    if (bf)
        for (int j = 0; j < n_feat; j++)
            free(bf[j].bin);
    free(bf);
    free(tmp);
    free(F);
    free(g);
    free(h);
    free(node);
    free(hg);
    free(hh);
    free(hc);
    free(lg);
    free(lh);
    if (rc < 0)
        gbt_release(out);
    return rc;
}
