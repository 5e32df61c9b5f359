/* share.c: a tenant's own route-score distribution. See share.h. */
#include "policies/share.h"

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/mem.h"
#include "policies/routing.h"

/* An observation counts UNIT in a bin, so halving keeps some precision for
 * bins that hold a few observations. */
#define UNIT 16u

/* Feedback offsets are fixed-point, so that concurrent corrections add
 * exactly (an atomic add) and none is lost. */
#define OFF_ONE 1000000000.0

struct share_tracker {
    _Atomic uint32_t bins[SHARE_BINS];
    _Atomic int64_t off[SHARE_LEVELS];  /* per share level, x OFF_ONE */
    _Atomic float q[SHARE_QUANTILES];   /* q[k]: threshold for share k / (SHARE_QUANTILES - 1) */
    atomic_uint_fast64_t seen;          /* observations, for the refresh pace */
    atomic_flag busy;                   /* one recompute at a time */
};

static int bin_of(double score)
{
    if (!(score > 0)) /* NaN too */
        return 0;
    if (score >= 1)
        return SHARE_BINS - 1;
    return (int)(score * SHARE_BINS);
}

/* Rebuild the quantile table from the bins; halve them first when they hold
 * 2 x window observations. Only one thread at a time (busy). */
static void recompute(struct share_tracker *t, unsigned window)
{
    uint32_t b[SHARE_BINS]; /* 16 KB of stack, once every SHARE_REFRESH requests */
    uint64_t sum = 0;
    for (int i = 0; i < SHARE_BINS; i++) {
        b[i] = atomic_load_explicit(&t->bins[i], memory_order_relaxed);
        sum += b[i];
    }
    if (window && sum >= 2ull * window * UNIT) {
        sum = 0;
        for (int i = 0; i < SHARE_BINS; i++) {
            uint32_t drop = b[i] - b[i] / 2;
            /* A subtraction, not a store: adds racing this one are kept. */
            atomic_fetch_sub_explicit(&t->bins[i], drop, memory_order_relaxed);
            b[i] -= drop;
            sum += b[i];
        }
    }
    if (sum == 0)
        return;
    /* From the top bin down: the threshold for share s is where the mass
     * at or above it reaches s * sum, spread evenly inside its bin. */
    int k = 1, i = SHARE_BINS - 1;
    uint64_t above = 0;
    atomic_store_explicit(&t->q[0], 1.0f + 1e-6f, memory_order_relaxed);
    for (; k < SHARE_QUANTILES; k++) {
        double want = (double)k / (SHARE_QUANTILES - 1) * (double)sum;
        while (i > 0 && (double)(above + b[i]) < want) {
            above += b[i];
            i--;
        }
        double f = b[i] ? (want - (double)above) / (double)b[i] : 1.0;
        if (f < 0)
            f = 0;
        if (f > 1)
            f = 1;
        float thr = (float)((i + 1 - f) / SHARE_BINS);
        atomic_store_explicit(&t->q[k], thr, memory_order_relaxed);
    }
    atomic_store_explicit(&t->q[SHARE_QUANTILES - 1], 0.0f, memory_order_relaxed);
}

struct share_tracker *share_tracker_new(double (*threshold)(const void *ctx, double share), const void *ctx,
                                        unsigned window, unsigned prior)
{
    if (window == 0 || prior == 0)
        return NULL;
    struct share_tracker *t = xcalloc(1, sizeof *t);
    atomic_flag_clear(&t->busy);
    for (unsigned j = 0; j < prior; j++) {
        double s = threshold(ctx, (j + 0.5) / prior);
        if (s < 0) {
            free(t);
            return NULL;
        }
        atomic_fetch_add_explicit(&t->bins[bin_of(s)], UNIT, memory_order_relaxed);
    }
    recompute(t, window);
    return t;
}

void share_tracker_free(struct share_tracker *t)
{
    free(t);
}

void share_tracker_observe(struct share_tracker *t, double score, unsigned window)
{
    atomic_fetch_add_explicit(&t->bins[bin_of(score)], UNIT, memory_order_relaxed);
    uint64_t n = atomic_fetch_add_explicit(&t->seen, 1, memory_order_relaxed) + 1;
    if (n % SHARE_REFRESH)
        return;
    if (atomic_flag_test_and_set_explicit(&t->busy, memory_order_acquire))
        return; /* another thread is at it; the next refresh catches up */
    recompute(t, window);
    atomic_flag_clear_explicit(&t->busy, memory_order_release);
}

double share_tracker_threshold(const void *tracker, double share)
{
    const struct share_tracker *t = tracker;
    if (!(share > 0))
        return 1.0 + 1e-6;
    if (share >= 1)
        return 0.0;
    double x = share * (SHARE_QUANTILES - 1);
    int i = (int)x;
    if (i >= SHARE_QUANTILES - 1)
        i = SHARE_QUANTILES - 2;
    double f = x - i;
    double a = atomic_load_explicit(&((struct share_tracker *)t)->q[i], memory_order_relaxed);
    double b = atomic_load_explicit(&((struct share_tracker *)t)->q[i + 1], memory_order_relaxed);
    return a + (b - a) * f;
}

double share_tracker_weight(const struct share_tracker *t)
{
    uint64_t sum = 0;
    for (int i = 0; i < SHARE_BINS; i++)
        sum += atomic_load_explicit(&((struct share_tracker *)t)->bins[i], memory_order_relaxed);
    return (double)sum / UNIT;
}

/* The level's share, corrected by its feedback offset. */
static double corrected(const struct share_tracker *t, int k, double share)
{
    double u = share + (double)atomic_load_explicit(&((struct share_tracker *)t)->off[k], memory_order_relaxed) / OFF_ONE;
    return u < 0 ? 0 : u > 1 ? 1 : u;
}

/* Move level k's offset by -(decided - share) / feedback, kept where the
 * corrected share stays in [0, 1] (so a mix the tracker cannot serve does
 * not wind it up for later). */
static void correct(struct share_tracker *t, int k, double share, int decided, unsigned feedback)
{
    int64_t d = (int64_t)llround(-((double)decided - share) / feedback * OFF_ONE);
    int64_t v = atomic_fetch_add_explicit(&t->off[k], d, memory_order_relaxed) + d;
    int64_t lo = (int64_t)llround(-share * OFF_ONE), hi = (int64_t)llround((1 - share) * OFF_ONE);
    while (v < lo || v > hi) {
        int64_t want = v < lo ? lo : hi;
        if (atomic_compare_exchange_weak_explicit(&t->off[k], &v, want, memory_order_relaxed, memory_order_relaxed))
            break;
    }
}

void share_tracker_route(struct share_tracker *t, struct routing_settings *rs, double score)
{
    share_tracker_observe(t, score, rs->share_window);
    /* A level at 0 or 1 is an end: nothing to correct. */
    double level[SHARE_LEVELS], th[SHARE_LEVELS];
    routing_share_levels(rs, level);
    for (int k = 0; k < SHARE_LEVELS; k++) {
        double c = level[k];
        int end = !(c > 0 && c < 1);
        th[k] = share_tracker_threshold(t, end ? c : corrected(t, k, c));
        if (!end)
            correct(t, k, c, score >= th[k], share_feedback(rs->share_window));
    }
    routing_set_thresholds(rs, th);
}

unsigned share_feedback(unsigned window)
{
    unsigned f = window / 64;
    return f < 16 ? 16 : f;
}

double share_tracker_offset(const struct share_tracker *t, int level)
{
    if (level < 0 || level >= SHARE_LEVELS)
        return 0;
    return (double)atomic_load_explicit(&((struct share_tracker *)t)->off[level], memory_order_relaxed) / OFF_ONE;
}

/* ---- one lazily made tracker per tenant slot --------------------------- */

struct share_table {
    size_t n;
    _Atomic(struct share_tracker *) *slot;
    double (*threshold)(const void *ctx, double share);
    const void *ctx;
};

struct share_table *share_table_new(size_t n_slots, double (*threshold)(const void *ctx, double share),
                                    const void *ctx)
{
    struct share_table *tb = xcalloc(1, sizeof *tb);
    tb->n = n_slots;
    tb->slot = xcalloc(n_slots ? n_slots : 1, sizeof *tb->slot);
    tb->threshold = threshold;
    tb->ctx = ctx;
    return tb;
}

void share_table_free(struct share_table *tb)
{
    if (!tb)
        return;
    for (size_t i = 0; i < tb->n; i++)
        share_tracker_free(atomic_load(&tb->slot[i]));
    free(tb->slot);
    free(tb);
}

struct share_tracker *share_table_get(struct share_table *tb, int slot, unsigned window)
{
    if (!tb || slot < 0 || (size_t)slot >= tb->n || window == 0)
        return NULL;
    struct share_tracker *t = atomic_load_explicit(&tb->slot[slot], memory_order_acquire);
    if (t)
        return t;
    struct share_tracker *mine = share_tracker_new(tb->threshold, tb->ctx, window, SHARE_PRIOR);
    if (!mine)
        return NULL;
    struct share_tracker *none = NULL;
    if (atomic_compare_exchange_strong_explicit(&tb->slot[slot], &none, mine, memory_order_acq_rel,
                                                memory_order_acquire))
        return mine;
    share_tracker_free(mine); /* another worker made it first */
    return none;
}
