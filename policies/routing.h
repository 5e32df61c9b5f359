/* routing.h: turning a difficulty score into a tier, and judging whether a
 * cheap answer is good enough (the cascade).
 *
 * A tenant's allowed tiers, ordered by price, run from the cheapest to the
 * most expensive. For `model: "auto"`:
 *   score <  t_low             -> the cheapest tier;
 *   score >= t_high            -> the most expensive tier;
 *   t_low <= score < t_high    -> the cascade zone: the cheapest tier answers
 *                                 first, and the request escalates to the
 *                                 most expensive tier when that answer's
 *                                 confidence is low. Without a cascade (turned
 *                                 off, the cheap tier gives no logprobs, or a
 *                                 stream whose tenant chose "skip") the zone
 *                                 is split at its middle instead.
 * One knob, `quality` in [0,1], sets both thresholds: quality q puts the
 * zone around 1 - q (width `band`), so q = 0 sends everything cheap and
 * q = 1 everything to the top tier; experts set t_low and t_high directly.
 *
 * Confidence is computed from the cheap answer's token logprobs: the mean
 * over all tokens, and the lowest mean over any window of `window`
 * consecutive tokens (one unsure stretch in a long answer). Either below its
 * threshold escalates.
 *
 * Pure functions over read-only settings; any thread. */
#ifndef CASCADE_ROUTING_H
#define CASCADE_ROUTING_H

#include <stddef.h>

enum cascade_stream { CASCADE_STREAM_BUFFER, CASCADE_STREAM_SKIP };

struct routing_settings {
    double t_low, t_high;
    int cascade;                    /* use the cascade zone */
    double min_mean_logprob;        /* escalate below this mean */
    double min_window_logprob;      /* or below this mean over some window */
    size_t window;                  /* tokens */
    enum cascade_stream stream;     /* streams in the zone: buffer the cheap answer, or skip */
};

/* Thresholds from the quality knob. */
void routing_from_quality(double quality, double band, double *t_low, double *t_high);

struct route_plan {
    int tier;                       /* the tier that answers (first) */
    int escalate_to;                /* -1: no cascade; else the tier to escalate to */
};

/* tiers_by_price: the tenant's allowed tiers, cheapest first (n >= 1).
 * cheap_has_logprobs: whether the cheapest tier's engine returns logprobs. */
struct route_plan routing_route(const struct routing_settings *s, const int *tiers_by_price, size_t n, double score,
                                int stream, int cheap_has_logprobs);

struct confidence {
    double mean;                    /* mean logprob over all tokens */
    double window_min;              /* lowest mean over `window` consecutive tokens */
    size_t n;
};

struct confidence routing_confidence(const double *logprobs, size_t n, size_t window);
/* 1 when the answer should escalate. An answer with no logprobs is kept:
 * there is nothing to judge it by. */
int routing_should_escalate(const struct routing_settings *s, const struct confidence *c);

#endif
