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
    /* Cumulative from the top: the large band first, then the cascade band
     * below it, then the medium band. */
    double large = clamp01(s->large_share);
    double cascade = clamp01(large + s->cascade_share);
    double medium = clamp01(cascade + s->medium_share);
    double hi = threshold(ctx, large), lo = threshold(ctx, cascade), me = threshold(ctx, medium);
    if (hi < 0 || lo < 0 || me < 0)
        return -1;
    /* A quantile function never rises with the share, but keep the order
     * the bands rely on whatever it answers. */
    s->t_high = hi;
    s->t_low = lo < hi ? lo : hi;
    s->t_medium = me < s->t_low ? me : s->t_low;
    return 0;
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
