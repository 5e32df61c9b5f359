/* metrics.h: the gateway's Prometheus metrics, for GET /metrics.
 *
 * One struct metrics per process, made from the config: tenants, tiers and
 * engine replicas are the only label values, so the number of series is
 * bounded by the config and never by request data. Callers pass indices
 * into the lists given to metrics_new; -1 (or anything out of range) means
 * "none" (no tenant yet, no tier chosen) and is labelled "none".
 *
 * Exposition (text format 0.0.4, Content-Type METRICS_CONTENT_TYPE):
 *   cascade_requests_total{tenant,tier,code}        counter; code is the exact
 *       status for a fixed set (200 400 401 402 403 404 405 408 409 413 422
 *       429 431 499 500 501 502 503 504), else its class ("2xx", "5xx"...)
 *   cascade_cache_total{tenant,tier,result}          counter; hit|miss|bypass
 *   cascade_tokens_total{tenant,tier,direction}      counter; in|out, what
 *       the engines processed (a cache hit adds none)
 *   cascade_cost_usd_total{tenant,tier}              counter
 *   cascade_saved_usd_total{tenant,tier,source}      counter; source "cache"
 *       for a cache hit (what answering it again would have cost), "routing"
 *       for routing's GAIN over the baseline tier (README "Savings")
 *   cascade_routing_loss_usd_total{tenant,tier}      counter; routing's LOSS
 *       against the baseline (an escalation paid twice, a route above it).
 *       Counters only grow, so the loss is its own counter: net routing
 *       savings = saved{source="routing"} - routing_loss, and may be negative
 *   cascade_escalations_total{tenant,tier}           counter; tier answered
 *   cascade_judgements_total{tenant,verdict,reason}  counter; the cascade
 *       judge's verdicts on cheap answers (policies/judge.h): verdict keep|
 *       escalate, reason option_prob, option_margin, no_option_letter, mean,
 *       quantile, window, no_logprobs (keep only), cheap_failed (escalate
 *       only); every possible pair of a configured tenant from the start
 *   cascade_admissions_total{tenant,result}          counter; the cost
 *       policy's decision on each request it admitted or refused (enum
 *       admit_status, policies/policy.h): admitted, downgraded,
 *       requests_limit, tokens_limit, concurrency_limit, budget. The 429s of
 *       requests_total do not tell a budget from a rate limit; this does.
 *       Every result of a configured tenant from the start
 *   cascade_redis_errors_total                       counter
 *   cascade_upstream_errors_total{replica}           counter; failed attempts
 *       (connect_error, http_5xx, timeout, bad_response below)
 *   cascade_upstream_attempts_total{tier,replica,outcome}  counter; every
 *       request sent to a replica, retries included; outcome is one of
 *       remote_outcome_name() (engines/remote/remote.h): ok, http_4xx,
 *       http_429, http_5xx, connect_error, timeout, bad_response, cancelled
 *   cascade_upstream_retries_total{tier,replica}     counter; failed attempts
 *       that another attempt followed
 *   cascade_upstream_ejected{tier,replica}           gauge; 1 while the
 *       replica is ejected (outlier detection)
 *   cascade_request_duration_seconds{tenant,tier}    histogram, whole request
 *   cascade_ttft_seconds{tenant,tier}                histogram, first token
 *       (streamed requests only)
 *   cascade_gateway_overhead_seconds{tenant,tier}    histogram, total minus
 *       engine time
 *   cascade_classifier_seconds{tenant}               histogram
 *   cascade_inflight_requests                        gauge
 *   cascade_engine_queue_depth{tier}                 gauge
 * Counters of every configured tenant x tier (and tier "none") are exposed
 * from the start at 0, so rate() sees their first increment; requests_total
 * so for code="200" only, other codes once they occur; so does the request
 * duration histogram. The other histograms, and the series of tenant "none"
 * (unauthenticated), appear once observed.
 *
 * Threads: every function may be called from any thread at any time.
 * Recording is a handful of relaxed atomic adds on counters of that label
 * set (no lock, no allocation). A render reads the counters as they are;
 * each histogram's _count is the sum of its buckets as read, so the
 * exposition is always self-consistent.
 */
#ifndef CASCADE_METRICS_H
#define CASCADE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "policies/stats.h" /* enum stats_cache */

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct metrics;

/* The lists are copied; label values are escaped on output. A name that
 * repeats in a list shares the first one's series. */
struct metrics *metrics_new(const char *const *tenants, size_t n_tenants, const char *const *tiers, size_t n_tiers,
                            const char *const *replicas, size_t n_replicas);
void metrics_free(struct metrics *m);

/* One finished request. tokens, cost, saved and routing_loss (USD x 1e9)
 * below 0 count as 0; saved is the cache's saving for a hit, else routing's
 * gain, and routing_loss_nano routing's loss (README "Savings"). ttft_us 0:
 * not streamed (no observation); classifier_us 0: the classifier did not
 * run. */
void metrics_request(struct metrics *m, int tenant, int tier, int status, enum stats_cache cache, int escalated,
                     int64_t tokens_in, int64_t tokens_out, int64_t cost_nano, int64_t saved_nano, uint64_t total_us,
                     uint64_t ttft_us, uint64_t overhead_us, uint64_t classifier_us, int64_t routing_loss_nano);
/* A request "auto" routed reached an engine; kind: enum route_kind (the
 * band its score fell in). */
void metrics_route(struct metrics *m, int tenant, int kind);
/* One judgement of the cascade: enum judge_verdict, enum judge_reason (a
 * pair judge_reason_possible() refuses is not counted). */
void metrics_judgement(struct metrics *m, int tenant, int verdict, int reason);
/* The cost policy's answer for one request; status: enum admit_status. */
void metrics_admission(struct metrics *m, int tenant, int status);
void metrics_redis_error(struct metrics *m);
void metrics_upstream_error(struct metrics *m, int replica);
/* Which tier replica (an index into metrics_new's list) belongs to, for the
 * tier label of the upstream series; before any recording. */
void metrics_replica_tier(struct metrics *m, int replica, int tier);
/* outcome: enum remote_outcome. */
void metrics_upstream_attempt(struct metrics *m, int replica, int outcome, int retried);
void metrics_upstream_ejected(struct metrics *m, int replica, int ejected);
void metrics_inflight_add(struct metrics *m, int delta);
void metrics_set_queue_depth(struct metrics *m, int tier, int64_t depth);

/* The whole exposition, NUL-terminated, malloc'd (free it); its length in
 * *len. */
char *metrics_render(struct metrics *m, size_t *len);

#endif
