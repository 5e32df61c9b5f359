/* stats.h: fleet-wide statistics per tenant and minute, for the dashboard and
 * GET /admin/v1/stats.
 *
 * Every gateway instance adds what its requests did to one Redis hash per
 * tenant and minute, so a dashboard reading Redis sees the whole fleet, not
 * one process:
 *   cascade:{<tenant>}:stats:<unix minute>   HASH, expires 48 h after that minute
 * Fields (all integers, HINCRBY):
 *   requests hits misses bypass errors escalations tokens_in tokens_out
 *   cost_nano saved_cache_nano saved_routing_nano routing_loss_nano   (USD x 1e9;
 *     saved_routing_nano is routing's gain, routing_loss_nano its loss, each
 *     a sum that only grows; README "Savings")
 *   tier:<name>                                       requests answered by that tier
 *   lat_count lat_sum_us
 *   judge_<verdict>:<reason>                          the cascade's judgements
 *     (policies/judge.h): verdict keep|escalate, reason one of
 *     judge_reason_name(); a request the cascade judged counts once
 *   route:<kind>                                      where "auto" sent a request
 *     that reached an engine (policies/routing.h: small|medium|cascade|large,
 *     the band its score fell in; a cascade that escalated still counts as
 *     cascade, and once in escalations); hits and requests refused before
 *     any engine call are not counted, as in cascade_routes_total
 *   lat_le_<ms> ... lat_le_inf                        latency histogram; each field
 *     counts the requests in (previous bound, ms], NOT cumulative. Bounds in ms:
 *     1 2 5 10 25 50 75 100 150 200 300 500 750 1000 1500 2000 3000 5000 7500
 *     10000 15000 20000 30000 60000 120000, then inf.
 * errors counts responses with status >= 500 (the gateway or an engine
 * failed); a client that left (499) or was refused (4xx) is not an error.
 *
 * Recording is cheap: stats_record() adds to the calling worker's own
 * accumulator (no lock, no I/O). Once a second a timer on that worker's
 * event_base sends what accumulated, one command per tenant, pipelined. The
 * flush loses nothing and counts nothing twice: a batch is a Lua script that
 * applies its increments only if its sequence number is newer than the last
 * one this worker applied for that tenant (cascade:{<tenant>}:statsack:<id>),
 * so a batch whose reply timed out is resent as it was and applied once.
 * While Redis is down the accumulators are kept (bounded: 4096 tenant-minutes
 * per worker; the oldest are dropped beyond that, with a warning) and sent
 * when it returns.
 *
 * Without Redis (rs NULL) the same flush goes to a ring of the last 48 h in
 * this process's memory, and queries read it: one instance's view only.
 *
 * Query result (stats_query), a JSON object:
 *   {"tenant": "acme" or "*" (all tenants summed),
 *    "tenants": [ids...]                      only for "*": the tenants summed,
 *    "from": s, "to": s, "step": s,           the range as used (see below),
 *    "series": {"t": [point start, unix s...],
 *               "requests", "hits", "misses", "bypass", "errors", "escalations",
 *               "tokens_in", "tokens_out": [integers...],
 *               "cost_usd", "saved_cache_usd", "saved_routing_usd",
 *               "routing_gain_usd", "routing_loss_usd": [numbers...],
 *               "hit_rate", "escalation_rate": [0..1 or null when no requests],
 *               "p50_ms", "p95_ms": [numbers or null when no requests],
 *               "tiers": {"<tier>": [integers...], ...},
 *               "judgements": {"keep": {"<reason>": [integers...], ...},
 *                              "escalate": {"<reason>": [integers...], ...}},
 *               "routes": {"small", "medium", "cascade", "large": [integers...]}},
 *    "totals": {the same scalars over the whole range, plus "tiers": {"<tier>": n},
 *               "judgements": {"keep": {"<reason>": n}, "escalate": {...}}
 *               and "routes": {"small": n, "medium": n, "cascade": n, "large": n}}}
 * routes are the realised shares of "auto" traffic: every kind is listed,
 * at 0 when none went there, so routes.large / (sum of routes) is the share
 * to compare with the tenant's routing.large_share.
 * judgements count the cascade's verdicts by reason, so an operator sees the
 * escalation rate of each rule and tunes its threshold: every reason that
 * can occur with a verdict is listed (judge_reason_possible), at 0 when none
 * did. A request escalated by the judge counts in "escalations" too.
 * saved_routing_usd is NET: routing_gain_usd - routing_loss_usd, negative
 * where routing cost more than the baseline tier would have (README
 * "Savings"). hit_rate = hits / requests; escalation_rate = escalations / requests;
 * p50/p95 are interpolated linearly inside the histogram bucket that holds
 * the rank (as Prometheus' histogram_quantile does; the inf bucket answers
 * its lower bound). from is rounded down and to up to whole minutes; point k
 * starts at t = from + k*step and sums the minutes in [t, min(t+step, to)).
 *
 * Threads: one struct stats per process, made before the workers start.
 * stats_record, stats_flush and stats_query are called on worker threads,
 * each with that worker's event_base; their callbacks run on that thread,
 * never inside the call.
 */
#ifndef CASCADE_STATS_H
#define CASCADE_STATS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct redis_shared;
struct stats;

#define STATS_RETENTION_S (48 * 3600)
#define STATS_MAX_POINTS 2880

enum stats_cache { STATS_CACHE_HIT, STATS_CACHE_MISS, STATS_CACHE_BYPASS };

/* What one finished request did. Strings are borrowed during the call. */
struct stats_sample {
    const char *tenant;
    int tier;                       /* index into the tier names (x-cascade-tier; a hit: the tier
                                     * that produced it), or -1 when none was chosen */
    int status;                     /* HTTP status sent (499: the client left) */
    enum stats_cache cache;
    int escalated;
    int64_t tokens_in, tokens_out;  /* what the engines processed: 0 for a cache hit */
    /* USD x 1e9, all >= 0: what was paid; what a hit would have cost to
     * generate; routing's gain and its loss against the baseline tier (as
     * chat.c settles them; README "Savings"). */
    int64_t cost_nano, saved_cache_nano, saved_routing_nano;
    int64_t routing_loss_nano;      /* what routing cost above the baseline (README "Savings") */
    uint64_t latency_us;
    /* The cascade's judgement (policies/judge.h), when judged is set: enum
     * judge_verdict and enum judge_reason. */
    int judged;
    int judge_verdict, judge_reason;
    /* Where "auto" sent it (enum route_kind, policies/routing.h), when
     * routed is set: a request routed by score that reached an engine. */
    int routed;
    int route_kind;
};

/* rs (borrowed) may be NULL: keep stats in this process's memory only. The
 * tier names are copied. Registers the stats Lua scripts with rs, so call it
 * before any worker connects to Redis. */
struct stats *stats_new(struct redis_shared *rs, const char *const *tier_names, size_t n_tiers);
/* After the workers stopped and after redis_shared_close_all(rs) (which
 * answers the flushes still in flight), before the workers' event_bases are
 * freed. Flushes nothing: call stats_flush on each worker first to keep its
 * last second. */
void stats_free(struct stats *s);

/* Add one request to the calling worker's accumulator for the current minute.
 * No I/O; the first call on a base starts that worker's flush timer. */
void stats_record(struct stats *s, struct event_base *base, const struct stats_sample *x);
/* Send this worker's accumulator now instead of at the next tick (drain,
 * tests). Asynchronous, like the timer's flush. */
void stats_flush(struct stats *s, struct event_base *base);

/* 1 while a flush of this worker's is waiting for Redis to answer. For the
 * drain: when the last request is done, stats_flush, then stop the worker
 * once stats_busy is 0 (a failed flush is not busy: it is retried only
 * while the worker runs). */
int stats_busy(struct stats *s, struct event_base *base);

/* 0 when [from, to) with step is a range stats_query accepts, else -1 with a
 * message for a 400 reply: 0 <= from < to, to - from <= 48 h, step a positive
 * multiple of 60, at most STATS_MAX_POINTS points. */
int stats_query_check(int64_t from, int64_t to, int64_t step, char *err, size_t errlen);

/* result is borrowed during the call; NULL when Redis failed. */
typedef void (*stats_query_cb)(void *ctx, json_t *result);

/* Read the series of one tenant, or with tenant_or_null NULL or "" the sum of
 * all_tenants, over [from, to) in unix seconds, step seconds per point. cb
 * runs once, later, on base's thread. Returns 0, or -1 without calling cb
 * when the range fails stats_query_check. */
int stats_query(struct stats *s, struct event_base *base, const char *tenant_or_null,
                const char *const *all_tenants, size_t n_tenants, int64_t from, int64_t to, int64_t step,
                stats_query_cb cb, void *ctx);

/* Tests: read the wall clock (unix seconds) from wall_s instead of time().
 * Set before any worker records. */
void stats_set_clock(struct stats *s, int64_t (*wall_s)(void *arg), void *arg);

/* Batches acknowledged, batches retried, and tenant-minutes dropped over the
 * bound, since start, summed over workers (tests, logs). Thread-safe. */
struct stats_counters {
    uint64_t flushed, retried, dropped;
};
void stats_get_counters(struct stats *s, struct stats_counters *out);

#endif
