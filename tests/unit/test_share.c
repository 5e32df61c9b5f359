/* The share tracker (policies/share.h): thresholds start from the shipped
 * distribution, follow the tenant's own traffic (a shifted and a drifting
 * one), realise the shares set, survive bad scores and concurrent callers. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>

#include "policies/routing.h"
#include "policies/share.h"
#include "tests/unit/quantile_fns.h"
#include "tests/unit/test.h"

/* A seeded uniform draw in [lo, hi). */
static double draw(uint64_t *s, double lo, double hi)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (double)(*s >> 11) / 9007199254740992.0;
}

/* The share of n fresh draws in [lo, hi) at or above t. */
static double share_above(double t, double lo, double hi, uint64_t seed)
{
    int above = 0;
    for (int i = 0; i < 20000; i++)
        above += draw(&seed, lo, hi) >= t;
    return above / 20000.0;
}

static void *hammer(void *arg)
{
    struct share_tracker *t = arg;
    uint64_t s = (uint64_t)(uintptr_t)arg;
    for (int i = 0; i < 200000; i++) {
        share_tracker_observe(t, draw(&s, 0.3, 0.7), 512);
        double th = share_tracker_threshold(t, 0.3);
        if (!(th >= 0 && th <= 1)) {
            fprintf(stderr, "threshold %g out of range\n", th);
            return (void *)1;
        }
    }
    return NULL;
}

int main(void)
{
    /* Before any traffic: the shipped distribution's thresholds, to the
     * prior's resolution (SHARE_PRIOR points). */
    struct share_tracker *t = share_tracker_new(uniform_threshold, NULL, 1024, SHARE_PRIOR);
    CHECK(t != NULL);
    CHECK(fabs(share_tracker_threshold(t, 0.2) - 0.8) < 1.0 / SHARE_PRIOR);
    CHECK(fabs(share_tracker_threshold(t, 0.5) - 0.5) < 1.0 / SHARE_PRIOR);
    CHECK(share_tracker_threshold(t, 0) > 1 && share_tracker_threshold(t, 1) == 0);
    CHECK(fabs(share_tracker_weight(t) - SHARE_PRIOR) < 1e-9);

    /* Traffic scoring in a narrow band unlike the prior (as unseen subjects
     * do): after a few windows the thresholds are its own quantiles, and a
     * fresh sample of it realises the shares. */
    uint64_t s = 7;
    for (int i = 0; i < 8192; i++)
        share_tracker_observe(t, draw(&s, 0.53, 0.61), 1024);
    for (double sh = 0.2; sh < 0.6; sh += 0.15) {
        double th = share_tracker_threshold(t, sh);
        double got = share_above(th, 0.53, 0.61, 99);
        if (fabs(got - sh) > 0.03)
            fprintf(stderr, "share %.2f: threshold %.4f realises %.3f\n", sh, th, got);
        CHECK(fabs(got - sh) < 0.03);
    }
    /* The window bounds what it holds: halved at 2 x window. */
    CHECK(share_tracker_weight(t) <= 2 * 1024 + 1);

    /* The mix drifts: the thresholds follow within a couple of windows. */
    for (int i = 0; i < 4096; i++)
        share_tracker_observe(t, draw(&s, 0.2, 0.3), 1024);
    CHECK(fabs(share_above(share_tracker_threshold(t, 0.3), 0.2, 0.3, 5) - 0.3) < 0.05);

    /* Outside input: NaN and out-of-range scores land in the end bins. */
    share_tracker_observe(t, NAN, 1024);
    share_tracker_observe(t, -3, 1024);
    share_tracker_observe(t, 7, 1024);
    CHECK(share_tracker_threshold(t, 0.3) >= 0 && share_tracker_threshold(t, 0.3) <= 1);
    share_tracker_free(t);

    /* Routing through a tracker: the realised large share over a stream,
     * warm-up included, is the setting. */
    struct routing_settings rs = {.by_share = 1, .large_share = 0.3, .share_window = 1024, .cascade = 0};
    t = share_tracker_new(uniform_threshold, NULL, rs.share_window, SHARE_PRIOR);
    int tiers[] = {0, 1}, large = 0, n = 3000;
    s = 11;
    for (int i = 0; i < n; i++) {
        double score = draw(&s, 0.5, 0.6);
        share_tracker_observe(t, score, rs.share_window);
        struct routing_settings r = rs;
        CHECK(routing_from_shares(&r, share_tracker_threshold, t) == 0);
        large += routing_route(&r, tiers, 2, score, 0, 0).kind == ROUTE_LARGE;
    }
    fprintf(stderr, "large_share 0.3 realised %.3f over %d requests\n", (double)large / n, n);
    CHECK(fabs((double)large / n - 0.3) < 0.03);
    share_tracker_free(t);

    /* Traffic that arrives in blocks (one product, or one subject, at a
     * time), each scoring in its own band, later blocks lower: a quantile
     * of the past alone under-serves the later blocks; with the feedback
     * the realised shares of all three levels hold over the stream. */
    struct routing_settings bs = {.by_share = 1, .large_share = 0.2, .cascade_share = 0.1, .medium_share = 0.2,
                                  .share_window = 4096, .cascade = 1};
    t = share_tracker_new(uniform_threshold, NULL, bs.share_window, SHARE_PRIOR);
    int three[] = {0, 1, 2}, kinds[ROUTE_N_KINDS] = {0};
    static const double band[][2] = {{0.60, 0.65}, {0.55, 0.60}, {0.50, 0.56}, {0.45, 0.52}};
    s = 3;
    n = 0;
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 300; i++, n++) {
            double score = draw(&s, band[b][0], band[b][1]);
            struct routing_settings r = bs;
            share_tracker_route(t, &r, score);
            CHECK(r.t_medium <= r.t_low && r.t_low <= r.t_high);
            kinds[routing_route(&r, three, 3, score, 0, 1).kind]++;
        }
    double got[] = {(double)kinds[ROUTE_LARGE] / n, (double)kinds[ROUTE_CASCADE] / n, (double)kinds[ROUTE_MEDIUM] / n};
    fprintf(stderr, "blocks: large %.3f cascade %.3f medium %.3f (want 0.2 0.1 0.2), offsets %.3f %.3f %.3f\n", got[0],
            got[1], got[2], share_tracker_offset(t, 0), share_tracker_offset(t, 1), share_tracker_offset(t, 2));
    CHECK(fabs(got[0] - 0.2) < 0.05 && fabs(got[1] - 0.1) < 0.05 && fabs(got[2] - 0.2) < 0.05);
    /* The bound share.h states: level k's realised share is off by at most
     * its offset's change x F / N (here 1200 requests, F = 64). */
    double level[] = {got[0], got[0] + got[1], got[0] + got[1] + got[2]}, want[] = {0.2, 0.3, 0.5};
    for (int k = 0; k < 3; k++)
        CHECK(fabs(level[k] - want[k]) <= fabs(share_tracker_offset(t, k)) * share_feedback(bs.share_window) / n + 1e-3);
    share_tracker_free(t);
    /* Without the feedback (the histogram alone) the same stream misses:
     * the case the feedback is for. */
    t = share_tracker_new(uniform_threshold, NULL, bs.share_window, SHARE_PRIOR);
    s = 3;
    int large_alone = 0;
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 300; i++) {
            double score = draw(&s, band[b][0], band[b][1]);
            share_tracker_observe(t, score, bs.share_window);
            large_alone += score >= share_tracker_threshold(t, 0.2);
        }
    fprintf(stderr, "blocks, histogram alone: large %.3f\n", (double)large_alone / n);
    CHECK(fabs((double)large_alone / n - 0.2) > 0.05);
    share_tracker_free(t);

    /* Concurrent observers and readers: thresholds stay in range, nothing
     * is lost beyond the halvings (ASan/TSan-friendly, no lock). */
    t = share_tracker_new(uniform_threshold, NULL, 512, SHARE_PRIOR);
    pthread_t th[2];
    void *rc[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, hammer, t);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], &rc[i]);
    CHECK(rc[0] == NULL && rc[1] == NULL);
    CHECK(share_tracker_weight(t) <= 2 * 512 + 64);
    CHECK(fabs(share_tracker_threshold(t, 0.5) - 0.5) < 0.02);
    share_tracker_free(t);

    /* The table: one tracker per slot, made once; none for a slot outside
     * the boot config, a window of 0, or a model without a distribution. */
    struct share_table *tb = share_table_new(3, uniform_threshold, NULL);
    struct share_tracker *a = share_table_get(tb, 1, 64);
    CHECK(a != NULL && share_table_get(tb, 1, 64) == a);
    CHECK(share_table_get(tb, -1, 64) == NULL && share_table_get(tb, 3, 64) == NULL);
    CHECK(share_table_get(tb, 0, 0) == NULL);
    share_table_free(tb);
    tb = share_table_new(2, no_distribution, NULL);
    CHECK(share_table_get(tb, 0, 64) == NULL);
    share_table_free(tb);
    CHECK(share_tracker_new(no_distribution, NULL, 64, 8) == NULL);
    TEST_MAIN_END();
}
