/* policy: the local fallback (no Redis) with amounts a caller should never
 * send: negative costs and estimates near INT64_MAX. What a user would
 * notice if it broke: a budget that a negative charge tops up, or a TPM
 * limit that a huge estimate wraps around and passes. (The Redis side is
 * tested against a real redis-server in tests/integration/money.test.mjs.) */
#include <event2/event.h>
#include <stdint.h>

#include "policies/policy.h"
#include "tests/unit/test.h"

static struct admit_result last;
static struct reservation *last_resv;

static void on_admit(void *ctx, const struct admit_result *res, struct reservation *resv)
{
    (void)ctx;
    last = *res;
    last_resv = resv;
}

/* One admission, run to its callback. */
static enum admit_status admit(struct policy *p, struct event_base *base, const struct tenant_limits *lim,
                               const char *id, int64_t tokens, int64_t cost)
{
    /* One tenant per limit under test: the local counters are per tenant. */
    const char *tenant = lim->tpm ? "tpm" : lim->max_concurrent ? "conc" : "budget";
    struct admit_request q = {.tenant = tenant, .limits = lim, .request_id = id, .est_tokens = tokens,
                              .est_cost_nano = cost, .alt_cost_nano = -1};
    last_resv = NULL;
    policy_admit(p, base, &q, on_admit, NULL);
    event_base_loop(base, EVLOOP_ONCE);
    return last.status;
}

static void settle(struct policy *p, struct event_base *base, int64_t cost, int64_t tokens)
{
    if (!last_resv)
        return;
    struct settle_info info = {.cost_nano = cost, .tokens = tokens};
    policy_settle(p, base, last_resv, &info);
    last_resv = NULL;
}

int main(void)
{
    struct event_base *base = event_base_new();
    struct policy_settings s = {.redis = NULL, .local_share = 1.0, .reservation_ttl_ms = 60000};
    struct policy *p = policy_new(&s);

    /* A budget of 1000 nano-USD a day. */
    struct tenant_limits budget = {.budget_day_nano = 1000, .budget_month_nano = -1};
    CHECK(admit(p, base, &budget, "a", 10, 400) == ADMIT_OK);
    settle(p, base, 400, 10);
    /* A negative estimate is taken as 0, and a negative charge as 0: it
     * must not give the tenant budget back. */
    CHECK(admit(p, base, &budget, "b", 10, -5) == ADMIT_OK);
    settle(p, base, -500, 10);
    CHECK(admit(p, base, &budget, "c", 10, 700) == ADMIT_BUDGET); /* 600 left, not 1100 */
    CHECK(admit(p, base, &budget, "d", 10, 600) == ADMIT_OK);
    settle(p, base, 600, 10);
    CHECK(admit(p, base, &budget, "e", 10, 1) == ADMIT_BUDGET);
    /* An estimate near INT64_MAX is refused, not wrapped. */
    CHECK(admit(p, base, &budget, "f", 10, INT64_MAX) == ADMIT_BUDGET);
    /* INT64_MIN is 0 after the clamp: it fits in the 0 left, and costs 0. */
    CHECK(admit(p, base, &budget, "g", 10, INT64_MIN) == ADMIT_OK && last.reserved_nano == 0);
    settle(p, base, 0, 10);
    CHECK(admit(p, base, &budget, "g2", 10, 1) == ADMIT_BUDGET);

    /* TPM 100: 10 tokens in the window, then an estimate that would wrap
     * toks + est into a negative number. */
    struct tenant_limits tpm = {.tpm = 100, .budget_day_nano = -1, .budget_month_nano = -1};
    CHECK(admit(p, base, &tpm, "h", 10, 0) == ADMIT_OK);
    settle(p, base, 0, 10);
    CHECK(admit(p, base, &tpm, "i", INT64_MAX, 0) == ADMIT_LIMIT_TOKENS);
    CHECK(admit(p, base, &tpm, "j", 90, 0) == ADMIT_OK);
    settle(p, base, 0, 90);
    CHECK(admit(p, base, &tpm, "k", 1, 0) == ADMIT_LIMIT_TOKENS);

    /* Concurrency never goes below zero, however often settle runs. */
    struct tenant_limits conc = {.max_concurrent = 1, .budget_day_nano = -1, .budget_month_nano = -1};
    CHECK(admit(p, base, &conc, "l", 1, 0) == ADMIT_OK);
    struct reservation *held = last_resv;
    CHECK(admit(p, base, &conc, "m", 1, 0) == ADMIT_LIMIT_CONCURRENCY);
    last_resv = held;
    settle(p, base, 0, 1);
    CHECK(admit(p, base, &conc, "n", 1, 0) == ADMIT_OK);
    held = last_resv;
    CHECK(admit(p, base, &conc, "o", 1, 0) == ADMIT_LIMIT_CONCURRENCY);
    last_resv = held;
    settle(p, base, 0, 1);

    CHECK(policy_journal_size(p) == 0);
    policy_free(p);
    event_base_free(base);
    TEST_MAIN_END();
}
