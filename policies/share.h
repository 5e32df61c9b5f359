/* share.h: the route-score distribution of one tenant's own traffic, so that
 * routing shares (routing.large_share and the others) hold on that traffic.
 *
 * Why: the model file carries the distribution of route scores measured on
 * its validation folds, and thresholds read from it realise the shares on
 * traffic like those folds. Real traffic is not like them: on the routing
 * data's held-out subjects, thresholds from the shipped distribution sent
 * 0.08 of prompts to the large tier for large_share 0.2 (bench/routing),
 * because a subject moves every score of its prompts by about as much as
 * the whole spread of scores within it. So a tenant's thresholds start from
 * the shipped distribution and follow its own traffic:
 *
 *   - the tracker keeps a histogram of the route scores it has seen
 *     (SHARE_BINS bins over [0, 1]), seeded with `prior` pseudo-observations
 *     drawn from the shipped distribution;
 *   - when the histogram holds 2 x window observations, every bin is halved,
 *     so it forgets at the pace of `window` requests and follows a drifting
 *     mix (and the prior fades the same way);
 *   - every SHARE_REFRESH observations it recomputes its quantile table
 *     (SHARE_QUANTILES points), which share_tracker_threshold() reads with
 *     the same meaning as classifier_threshold_for_share(): the score t with
 *     a share `share` of the tenant's recent traffic at or above it;
 *   - a quantile of past traffic still misses when the mix moves (traffic
 *     that arrives one product or subject at a time: the held-out subjects
 *     replayed in file order realised 0.10 for 0.2 from the histogram
 *     alone). So each share level (large; large + cascade; large + cascade
 *     + medium) also carries a feedback offset: after each request it moves
 *     by -(decided - share) / F, decided being 1 when the request fell in
 *     that level, F = share_feedback(window). The offset is the sum of the
 *     errors so far over F, so while it stays inside its clamp the realised
 *     share over N requests is within |offset change| x F / N of the
 *     setting, whatever the order of the traffic (a Robbins-Monro quantile
 *     step, in share units).
 *
 * The realised shares then match the settings after a few hundred
 * requests, at the price of routing not being a pure function of the
 * prompt: the same prompt may route differently as the mix changes. A
 * tenant that wants fixed thresholds sets routing.share_window to 0.
 *
 * Threads: share_tracker_observe() and share_tracker_threshold() may be
 * called from any number of threads at once without a lock. Counts and the
 * quantile table are relaxed atomics; a recompute is done by one thread at a
 * time (the others skip it), and a reader racing it may mix old and new
 * quantiles, each of which is a valid threshold. Observing costs one atomic
 * add, plus an O(SHARE_BINS) recompute every SHARE_REFRESH calls. */
#ifndef CASCADE_SHARE_H
#define CASCADE_SHARE_H

#include <stddef.h>

#define SHARE_BINS 4096
#define SHARE_QUANTILES 1001
#define SHARE_REFRESH 32
#define SHARE_PRIOR 32
#define SHARE_LEVELS 3 /* = ROUTING_SHARE_LEVELS */

struct routing_settings;

struct share_tracker;

/* A tracker whose histogram starts as `prior` observations of the
 * distribution threshold(ctx, share) describes (the model's shipped
 * quantile function). window >= 1. NULL when threshold answers < 0. */
struct share_tracker *share_tracker_new(double (*threshold)(const void *ctx, double share), const void *ctx,
                                        unsigned window, unsigned prior);
void share_tracker_free(struct share_tracker *t);

/* One request's route score (NaN and values outside [0,1] are clamped).
 * window: the tenant's routing.share_window now (a reload may change it). */
void share_tracker_observe(struct share_tracker *t, double score, unsigned window);

/* The score with a share `share` of tracked traffic at or above it: > 1
 * for share <= 0, 0 for share >= 1. The signature fits
 * routing_from_shares(); ctx is the tracker. */
double share_tracker_threshold(const void *tracker, double share);

/* Observations the histogram holds now (after halvings), prior included. */
double share_tracker_weight(const struct share_tracker *t);

/* One "auto" request of a tenant that sets shares: observe its score, set
 * rs's thresholds (t_high, t_low, t_medium) from the tracked distribution
 * and the feedback offsets, and feed back which levels the request fell
 * in. rs is the caller's copy of the tenant's settings (by_share). */
void share_tracker_route(struct share_tracker *t, struct routing_settings *rs, double score);
/* F for a window: window / 64, at least 16 requests. */
unsigned share_feedback(unsigned window);
/* Level k's feedback offset now, in share units (for tests and logs). */
double share_tracker_offset(const struct share_tracker *t, int level);

/* One tracker per tenant slot (the metrics slot: the tenants of the boot
 * config), made on first use so that tenants without shares cost nothing.
 * threshold/ctx: the shipped distribution every tracker starts from; ctx
 * must outlive the table. */
struct share_table;
struct share_table *share_table_new(size_t n_slots, double (*threshold)(const void *ctx, double share),
                                    const void *ctx);
void share_table_free(struct share_table *tb);
/* The slot's tracker, made now if needed; NULL for slot < 0 (a tenant added
 * by a reload), window 0, or a model without a distribution. */
struct share_tracker *share_table_get(struct share_table *tb, int slot, unsigned window);

#endif
