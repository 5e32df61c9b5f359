/* policy.h: per-tenant cost policy: rate limits, concurrency and budgets that
 * hold across any number of gateway instances.
 *
 * Admission and settlement are each one atomic Redis Lua script (EVALSHA,
 * loaded on connect), so the check and the record can never be split by a
 * concurrent request:
 *   admit:  RPM and TPM over a sliding 60 s window of per-second buckets,
 *           max concurrent requests, and the budget: spend + open
 *           reservations + this estimate must fit the day and month budgets;
 *           then the estimate is reserved. With on_budget_exhausted
 *           "downgrade", a request that does not fit may still fit at the
 *           cheapest allowed tier's price (the caller routes it there).
 *   settle: the reservation is replaced by the real cost (spend per day and
 *           per month), savings are recorded, the TPM bucket is corrected to
 *           the real token count. Settlement is idempotent per request id.
 * Reservations expire (reservation_ttl_ms), so a crashed gateway cannot hold
 * a budget forever.
 *
 * Redis down: each instance enforces its local share of every limit and of
 * the budget left when Redis was last seen, admission keeps working, and
 * settlements go to a bounded in-memory journal replayed (idempotently) when
 * Redis returns. No spend is lost.
 *
 * Keys (all with the {tenant} hash tag):
 *   cascade:{t}:rl:req  cascade:{t}:rl:tok   HASH second -> count, 120 s TTL
 *   cascade:{t}:resv                          ZSET "id:nano" scored by expiry
 *   cascade:{t}:spend:<yyyymmdd>  cascade:{t}:spend:<yyyymm>   nano-USD, kept
 *   cascade:{t}:saved:<yyyymmdd>  cascade:{t}:saved:<yyyymm>   HASH cache, routing
 *       (routing's gain) and routing_loss (README "Savings"); a hash an older
 *       gateway wrote has no routing_loss, which reads as 0
 *   cascade:{t}:settled:<request id>          idempotency marker, 48 h TTL
 *
 * Numbers: every count and amount here is an int64 within [0, MONEY_MAX]
 * (price.h); the inputs are clamped into it, a negative one logged as a
 * caller's bug. They reach the scripts as decimal strings (%lld, never %g),
 * the scripts parse them strictly and refuse anything else before writing,
 * and Redis adds them with INCRBY/HINCRBY from those same strings, so Redis
 * never holds a negative or non-integer spend.
 *
 * Threads: one struct policy per process; admit/settle from worker threads;
 * callbacks on the caller's event_base thread, never inside the call.
 */
#ifndef CASCADE_POLICY_H
#define CASCADE_POLICY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct redis_shared;

struct tenant_limits {
    int64_t rpm, tpm;               /* 0: no limit */
    int64_t max_concurrent;         /* 0: no limit */
    int64_t budget_day_nano;        /* -1: no budget */
    int64_t budget_month_nano;      /* -1: no budget */
};

struct policy_settings {
    struct redis_shared *redis;     /* NULL: local enforcement only */
    double local_share;             /* share of each limit one instance may use when Redis is down */
    unsigned reservation_ttl_ms;
    size_t journal_max;
};

enum admit_status {
    ADMIT_OK,
    ADMIT_DOWNGRADED,               /* fits only at the alternative (cheapest) tier's price */
    ADMIT_LIMIT_REQUESTS,
    ADMIT_LIMIT_TOKENS,
    ADMIT_LIMIT_CONCURRENCY,
    ADMIT_BUDGET,
};

struct admit_request {
    const char *tenant;
    const struct tenant_limits *limits;
    const char *request_id;         /* unique; names the reservation */
    int64_t est_tokens;             /* prompt + max output tokens */
    int64_t est_cost_nano;          /* on the chosen tier */
    int64_t alt_cost_nano;          /* on the downgrade tier, or -1 for none */
};

struct admit_result {
    enum admit_status status;
    int local;                      /* decided without Redis */
    /* For OpenAI's x-ratelimit-* headers; limit 0 means none. */
    int64_t limit_requests, remaining_requests, reset_requests_ms;
    int64_t limit_tokens, remaining_tokens, reset_tokens_ms;
    /* For 429s: never before the limit can let this request through. A
     * rate limit's window frees up; a budget rejection waits for the
     * budget window that blocks it to reset (the next UTC day, or the
     * next month when the month's budget is spent too). */
    int64_t retry_after_s;
    int64_t budget_remaining_nano;  /* -1: no budget */
    int64_t reserved_nano;          /* what was reserved (the estimate, or the downgrade's) */
};

struct reservation;

/* res is valid during the call; resv is non-NULL exactly when admitted, and
 * must be passed to policy_settle() once. */
typedef void (*policy_admit_cb)(void *ctx, const struct admit_result *res, struct reservation *resv);

/* All >= 0. cost_nano is what an engine reported or was seen to produce
 * (0 for a request no upstream accepted); savings are 0 for any request that
 * did not succeed. */
struct settle_info {
    int64_t cost_nano;
    int64_t tokens;                 /* prompt + completion actually charged */
    int64_t saved_cache_nano;
    int64_t saved_routing_nano;     /* routing's gain over the baseline tier, >= 0 */
    int64_t routing_loss_nano;      /* routing's loss against it (an escalation), >= 0; net = saved - loss */
};

struct policy;

struct policy *policy_new(const struct policy_settings *s);
void policy_free(struct policy *p);
void policy_admit(struct policy *p, struct event_base *base, const struct admit_request *req, policy_admit_cb cb,
                  void *ctx);
/* Record the real cost and release the reservation. Fire and forget. */
void policy_settle(struct policy *p, struct event_base *base, struct reservation *resv, const struct settle_info *info);
/* Settlements waiting for Redis. */
size_t policy_journal_size(struct policy *p);

/* Usage for the admin API: spend and savings today and this month, the
 * budget left, and rate-limit state; cb gets a JSON object (borrowed) or
 * NULL when Redis failed. Per period: spend_usd, saved_cache_usd,
 * saved_routing_usd (NET: routing_gain_usd - routing_loss_usd, negative
 * when routing cost more than the baseline tier would have), and the two
 * terms (README "Savings"). */
void policy_usage(struct policy *p, struct event_base *base, const char *tenant, const struct tenant_limits *lim,
                  void (*cb)(void *ctx, json_t *usage), void *ctx);

/* Seconds from unix time now until the next UTC midnight (monthly 0) or the
 * next first of a month at 00:00 UTC (monthly 1): when a day or month budget
 * window resets. Always >= 1. */
int64_t policy_window_reset_s(int64_t now, int monthly);

#endif
