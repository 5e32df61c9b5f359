/* Routing: the zones a score falls in, the quality knob and the shares.
 * The cascade's rules are test_judge's. */
#include <math.h>
#include <string.h>

#include "policies/routing.h"
#include "tests/unit/quantile_fns.h"
#include "tests/unit/test.h"

int main(void)
{
    struct routing_settings s = {.t_medium = 0.3, .t_low = 0.3, .t_high = 0.6, .cascade = 1,
                                 .stream = CASCADE_STREAM_BUFFER};
    int two[] = {4, 7}; /* tier indices, cheapest first */
    struct route_plan p = routing_route(&s, two, 2, 0.1, 0, 1);
    CHECK(p.tier == 4 && p.escalate_to == -1);
    p = routing_route(&s, two, 2, 0.9, 0, 1);
    CHECK(p.tier == 7 && p.escalate_to == -1);
    p = routing_route(&s, two, 2, 0.6, 0, 1); /* t_high itself is the top zone */
    CHECK(p.tier == 7);
    p = routing_route(&s, two, 2, 0.45, 0, 1);
    CHECK(p.tier == 4 && p.escalate_to == 7);
    /* No logprobs from the cheap tier, or a stream that skips: split at the middle. */
    p = routing_route(&s, two, 2, 0.40, 0, 0);
    CHECK(p.tier == 4 && p.escalate_to == -1);
    p = routing_route(&s, two, 2, 0.50, 0, 0);
    CHECK(p.tier == 7 && p.escalate_to == -1);
    s.stream = CASCADE_STREAM_SKIP;
    p = routing_route(&s, two, 2, 0.50, 1, 1);
    CHECK(p.tier == 7 && p.escalate_to == -1);
    p = routing_route(&s, two, 2, 0.50, 0, 1); /* non-stream still cascades */
    CHECK(p.escalate_to == 7);
    s.stream = CASCADE_STREAM_BUFFER;
    s.cascade = 0;
    p = routing_route(&s, two, 2, 0.40, 0, 1);
    CHECK(p.tier == 4 && p.escalate_to == -1);
    int three[] = {1, 2, 3};
    p = routing_route(&s, three, 3, 0.45, 0, 1);
    CHECK(p.tier == 2); /* the middle of the zone, the middle tier */
    CHECK(routing_route(&s, three, 3, 0.2, 0, 1).tier == 1); /* no medium band without shares */
    s.cascade = 1;
    int one[] = {5};
    p = routing_route(&s, one, 1, 0.99, 0, 1);
    CHECK(p.tier == 5 && p.escalate_to == -1);

    /* The knob. */
    double lo, hi;
    routing_from_quality(0.5, 0.2, &lo, &hi);
    CHECK(fabs(lo - 0.4) < 1e-12 && fabs(hi - 0.6) < 1e-12);
    routing_from_quality(0.0, 0.2, &lo, &hi);
    s.t_low = lo, s.t_high = hi;
    CHECK(routing_route(&s, two, 2, 1.0, 0, 1).tier == 4); /* quality 0: always cheap */
    routing_from_quality(1.0, 0.2, &lo, &hi);
    s.t_low = lo, s.t_high = hi;
    CHECK(routing_route(&s, two, 2, 0.0, 0, 1).tier == 7); /* quality 1: always the top */
    routing_from_quality(0.8, 0.2, &lo, &hi);
    double lo2, hi2;
    routing_from_quality(0.3, 0.2, &lo2, &hi2);
    CHECK(lo < lo2 && hi < hi2); /* more quality, lower thresholds */

    /* Shares: the bands follow from the quantile function. A uniform
     * distribution on [0,1] has t = 1 - share. */
    struct routing_settings sh = {.by_share = 1, .large_share = 0.2, .cascade_share = 0.1, .medium_share = 0.3,
                                  .cascade = 1, .stream = CASCADE_STREAM_BUFFER};
    CHECK(routing_from_shares(&sh, uniform_threshold, NULL) == 0);
    CHECK(fabs(sh.t_high - 0.8) < 1e-12 && fabs(sh.t_low - 0.7) < 1e-12 && fabs(sh.t_medium - 0.4) < 1e-12);
    p = routing_route(&sh, three, 3, 0.85, 0, 1);
    CHECK(p.tier == 3 && p.kind == ROUTE_LARGE);
    p = routing_route(&sh, three, 3, 0.75, 0, 1);
    CHECK(p.tier == 1 && p.escalate_to == 3 && p.kind == ROUTE_CASCADE);
    p = routing_route(&sh, three, 3, 0.5, 0, 1);
    CHECK(p.tier == 2 && p.escalate_to == -1 && p.kind == ROUTE_MEDIUM);
    p = routing_route(&sh, three, 3, 0.3, 0, 1);
    CHECK(p.tier == 1 && p.kind == ROUTE_SMALL);
    p = routing_route(&sh, two, 2, 0.5, 0, 1); /* two tiers: the medium band is the cheapest */
    CHECK(p.tier == 4 && p.kind == ROUTE_SMALL);
    /* Over a sweep of uniform scores the realised shares are the settings. */
    int kinds[ROUTE_N_KINDS] = {0};
    for (int i = 0; i < 1000; i++)
        kinds[routing_route(&sh, three, 3, (i + 0.5) / 1000.0, 0, 1).kind]++;
    CHECK(kinds[ROUTE_LARGE] == 200 && kinds[ROUTE_CASCADE] == 100 && kinds[ROUTE_MEDIUM] == 300 &&
          kinds[ROUTE_SMALL] == 400);
    CHECK(routing_from_shares(&sh, no_distribution, NULL) == -1);
    CHECK(strcmp(routing_kind_name(ROUTE_CASCADE), "cascade") == 0);

    TEST_MAIN_END();
}
