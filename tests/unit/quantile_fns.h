/* quantile_fns.h: quantile functions for tests of routing shares, with the
 * signature of classifier_threshold_for_share() (the score at or above which
 * a share of traffic falls). */
#ifndef CASCADE_TEST_QUANTILE_FNS_H
#define CASCADE_TEST_QUANTILE_FNS_H

/* Scores spread evenly over [0, 1]: the threshold for share s is 1 - s. */
static inline double uniform_threshold(const void *ctx, double share)
{
    (void)ctx;
    return 1.0 - share;
}

/* A model without a stored distribution. */
static inline double no_distribution(const void *ctx, double share)
{
    (void)ctx;
    (void)share;
    return -1;
}

#endif
