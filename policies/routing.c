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

struct route_plan routing_route(const struct routing_settings *s, const int *tiers, size_t n, double score,
                                int stream, int cheap_has_logprobs)
{
    struct route_plan p = {tiers[0], -1};
    if (n == 1)
        return p;
    int top = tiers[n - 1];
    if (score < s->t_low)
        return p;
    if (score >= s->t_high) {
        p.tier = top;
        return p;
    }
    int cascade = s->cascade && cheap_has_logprobs && !(stream && s->stream == CASCADE_STREAM_SKIP);
    if (cascade) {
        p.escalate_to = top;
        return p;
    }
    /* No cascade: split the zone at its middle. With more than two tiers
     * the middle of the zone goes to the middle tier. */
    double mid = (s->t_low + s->t_high) / 2;
    if (n > 2)
        p.tier = tiers[n / 2];
    else
        p.tier = score < mid ? tiers[0] : top;
    return p;
}

struct confidence routing_confidence(const double *lp, size_t n, size_t window)
{
    struct confidence c = {0, 0, n};
    if (n == 0)
        return c;
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += lp[i];
    c.mean = sum / (double)n;
    size_t w = window && window < n ? window : n;
    double ws = 0;
    for (size_t i = 0; i < w; i++)
        ws += lp[i];
    double best = ws;
    for (size_t i = w; i < n; i++) {
        ws += lp[i] - lp[i - w];
        if (ws < best)
            best = ws;
    }
    c.window_min = best / (double)w;
    return c;
}

int routing_should_escalate(const struct routing_settings *s, const struct confidence *c)
{
    if (c->n == 0)
        return 0;
    return c->mean < s->min_mean_logprob || c->window_min < s->min_window_logprob;
}
