/* routing.h: turning a routing score into a tier, and judging whether a
 * cheap answer is good enough (the cascade).
 *
 * A tenant's allowed tiers, ordered by price, run from the cheapest to the
 * most expensive. For `model: "auto"` the classifier's route score (higher
 * means a larger tier) falls in one of four bands:
 *   score >= t_high              -> "large":   the most expensive tier;
 *   t_low <= score < t_high      -> "cascade": the cheapest tier answers
 *                                   first, and the request escalates to the
 *                                   most expensive tier when that answer is
 *                                   judged weak. Without a cascade (turned
 *                                   off, the cheap tier gives no logprobs, or
 *                                   a stream whose tenant chose "skip") the
 *                                   band goes to the middle tier when there
 *                                   is one, else it is split at its middle;
 *   t_medium <= score < t_low    -> "medium":  the middle tier (with three
 *                                   or more tiers; else the cheapest);
 *   score < t_medium             -> "small":   the cheapest tier.
 *
 * Two ways to set the bands:
 *   - in the operator's terms, shares of traffic: large_share goes straight
 *     to the top tier, cascade_share below it cascades, medium_share below
 *     that goes to the middle tier, the rest to the cheapest. The thresholds
 *     follow from a quantile function (routing_from_shares()): the
 *     route-score distribution the model file carries, and, unless
 *     share_window is 0, the tenant's own recent traffic starting from it
 *     (policies/share.h says why: the shipped distribution alone misses on
 *     traffic unlike the model's validation folds);
 *   - on the score itself: `quality` in [0,1] puts a cascade band of width
 *     `band` around 1 - quality (q = 0 sends everything cheap, q = 1
 *     everything to the top tier), or t_low and t_high directly. These have
 *     no medium band (t_medium = t_low).
 *
 * Whether the cheap answer is kept or escalates is the cascade judge's
 * call (policies/judge.h), with the settings in routing_settings.judge.
 *
 * Pure functions over read-only settings; any thread. */
#ifndef CASCADE_ROUTING_H
#define CASCADE_ROUTING_H

#include <stddef.h>

#include "policies/judge.h"

enum cascade_stream { CASCADE_STREAM_BUFFER, CASCADE_STREAM_SKIP };

struct routing_settings {
    double t_medium, t_low, t_high; /* t_medium <= t_low <= t_high */
    /* Shares of auto traffic, when the tenant set them (by_share); the
     * thresholds above are then derived from them. */
    int by_share;
    double large_share, cascade_share, medium_share;
    unsigned share_window;          /* requests the tenant's own score distribution
                                     * follows (policies/share.h); 0: the shipped
                                     * distribution's thresholds, fixed */
    int cascade;                    /* use the cascade zone */
    enum cascade_stream stream;     /* streams in the zone: buffer the cheap answer, or skip */
    struct judge_settings judge;    /* how the cheap answer is judged (policies/judge.h) */
};

/* routing.share_window's default: requests a tenant's own score
 * distribution follows (policies/share.h). */
#define ROUTING_SHARE_WINDOW 4096

/* Thresholds from the quality knob (t_medium = t_low). */
void routing_from_quality(double quality, double band, double *t_low, double *t_high);

/* Thresholds from s->large_share, cascade_share and medium_share, through
 * threshold(ctx, share): the score t with a share `share` of traffic at or
 * above it (classifier_threshold_for_share()). 0, or -1 when threshold
 * answers < 0 (no distribution to read). */
int routing_from_shares(struct routing_settings *s, double (*threshold)(const void *ctx, double share),
                        const void *ctx);

/* The cumulative share levels the thresholds sit at, from the top: large;
 * large + cascade; large + cascade + medium (each clamped to [0,1]). */
#define ROUTING_SHARE_LEVELS 3
void routing_share_levels(const struct routing_settings *s, double level[ROUTING_SHARE_LEVELS]);
/* t_high, t_low, t_medium from the levels' thresholds, kept in order
 * (t_medium <= t_low <= t_high) whatever the quantile function answered. */
void routing_set_thresholds(struct routing_settings *s, const double th[ROUTING_SHARE_LEVELS]);

/* Which band a request fell in, for the realised-share metrics. */
enum route_kind { ROUTE_SMALL, ROUTE_MEDIUM, ROUTE_CASCADE, ROUTE_LARGE, ROUTE_N_KINDS };
const char *routing_kind_name(enum route_kind k);

struct route_plan {
    int tier;                       /* the tier that answers (first) */
    int escalate_to;                /* -1: no cascade; else the tier to escalate to */
    enum route_kind kind;           /* the band the score fell in */
};

/* tiers_by_price: the tenant's allowed tiers, cheapest first (n >= 1).
 * cheap_has_logprobs: whether the cheapest tier's engine returns logprobs. */
struct route_plan routing_route(const struct routing_settings *s, const int *tiers_by_price, size_t n, double score,
                                int stream, int cheap_has_logprobs);

#endif
