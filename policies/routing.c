#include "policies/routing.h"

static double clamp01(double x)
{
    return x < 0 ? 0 : x > 1 ? 1 : x;
}

void routing_from_quality(double quality, double band, double *t_low, double *t_high)
{
    double center = 1.0 - clamp01(quality);
    *t_low = clamp01(center - band / 2);
    *t_high = clamp01(center + band / 2);
    /* The ends mean "always": nothing may fall outside them. */
    if (quality <= 0)
        *t_low = *t_high = 1.0 + 1e-9;
    if (quality >= 1)
        *t_low = *t_high = 0.0;
}

int routing_from_shares(struct routing_settings *s, double (*threshold)(const void *ctx, double share),
                        const void *ctx)
{
    double level[ROUTING_SHARE_LEVELS], th[ROUTING_SHARE_LEVELS];
    routing_share_levels(s, level);
    for (int k = 0; k < ROUTING_SHARE_LEVELS; k++)
        if ((th[k] = threshold(ctx, level[k])) < 0)
            return -1;
    routing_set_thresholds(s, th);
    return 0;
}

void routing_share_levels(const struct routing_settings *s, double level[ROUTING_SHARE_LEVELS])
{
    /* Cumulative from the top: the large band first, then the cascade band
     * below it, then the medium band. */
    level[0] = clamp01(s->large_share);
    level[1] = clamp01(level[0] + s->cascade_share);
    level[2] = clamp01(level[1] + s->medium_share);
}

void routing_set_thresholds(struct routing_settings *s, const double th[ROUTING_SHARE_LEVELS])
{
    /* A quantile function never rises with the share, but keep the order
     * the bands rely on whatever it answers. */
    s->t_high = th[0];
    s->t_low = th[1] < s->t_high ? th[1] : s->t_high;
    s->t_medium = th[2] < s->t_low ? th[2] : s->t_low;
}

const char *routing_kind_name(enum route_kind k)
{
    static const char *const names[ROUTE_N_KINDS] = {"small", "medium", "cascade", "large"};
    return k < ROUTE_N_KINDS ? names[k] : "small";
}

struct route_plan routing_route(const struct routing_settings *s, const int *tiers, size_t n, double score,
                                int stream, int cheap_has_logprobs)
{
    struct route_plan p = {tiers[0], -1, ROUTE_SMALL};
    if (n == 1)
        return p;
    int top = tiers[n - 1];
    int middle = n > 2 ? tiers[n / 2] : -1;
    if (score >= s->t_high) {
        p.tier = top;
        p.kind = ROUTE_LARGE;
        return p;
    }
    if (score >= s->t_low) {
        p.kind = ROUTE_CASCADE;
        if (s->cascade && cheap_has_logprobs && !(stream && s->stream == CASCADE_STREAM_SKIP)) {
            p.escalate_to = top;
            return p;
        }
        /* No cascade: the middle tier, or with two tiers the band split at
         * its middle. */
        if (middle >= 0)
            p.tier = middle;
        else
            p.tier = score < (s->t_low + s->t_high) / 2 ? tiers[0] : top;
        return p;
    }
    if (score >= s->t_medium && middle >= 0) {
        p.tier = middle;
        p.kind = ROUTE_MEDIUM;
    }
    return p;
}
