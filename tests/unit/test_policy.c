/* policy: the local fallback (no Redis) with amounts a caller should never
 * send: negative costs and estimates near INT64_MAX. What a user would
 * notice if it broke: a budget that a negative charge tops up, or a TPM
 * limit that a huge estimate wraps around and passes. (The Redis side is
 * tested against a real redis-server in tests/integration/money.test.mjs.)
 *
 * Then, against a redis-server this test starts:
 *   - routing's loss is stored beside its gain (the saved hashes' routing and
 *     routing_loss fields) and the usage API reports the NET routing savings
 *     (negative when escalations cost more than routing saved), both terms,
 *     and reads a hash an older gateway wrote (no routing_loss) as 0 loss;
 *   - a loss that would overflow the stored sum is refused before anything is
 *     written; a negative one is recorded as 0;
 *   - a settlement journaled while Redis is down carries its loss;
 * and, with and without Redis, Retry-After: a budget rejection waits for
 * the window that blocks it to reset (next UTC day or month), never 1 s; a
 * rate limit for its window. */
#include <event2/event.h>
#include <event2/thread.h>
#include <math.h>
#include <stdint.h>
#include <time.h>

#include "cache/redis.h"
#include "policies/policy.h"
#include "tests/unit/redis_server.h"
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

static void test_local(void)
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

    /* Settling replaces the estimate with the real tokens, as the Redis
     * path does: a request that reserved 60 and used 5 leaves 55 free. */
    struct tenant_limits tpm2 = {.tpm = 100, .rpm = 1000, .budget_day_nano = -1, .budget_month_nano = -1};
    struct admit_request q2 = {.tenant = "tpm2", .limits = &tpm2, .request_id = "t1", .est_tokens = 60,
                               .est_cost_nano = 0, .alt_cost_nano = -1};
    policy_admit(p, base, &q2, on_admit, NULL);
    event_base_loop(base, EVLOOP_ONCE);
    CHECK(last.status == ADMIT_OK);
    settle(p, base, 0, 5);
    q2.request_id = "t2";
    q2.est_tokens = 90; /* 5 + 90 fits in 100; 60 + 90 would not */
    policy_admit(p, base, &q2, on_admit, NULL);
    event_base_loop(base, EVLOOP_ONCE);
    CHECK(last.status == ADMIT_OK);
    settle(p, base, 0, 90);

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
}

/* ---- helpers for the tests below ----------------------------------------- */

static int admitted; /* callbacks seen */

static void on_admit_count(void *ctx, const struct admit_result *res, struct reservation *resv)
{
    (void)ctx;
    last = *res;
    last_resv = resv;
    admitted++;
}

/* Run base until *flag changes from its value now, or about 2 s. */
static void run_until_changed(struct event_base *base, const int *flag)
{
    int was = *flag;
    for (int i = 0; i < 200 && *flag == was; i++) {
        struct timeval tv = {0, 10000};
        event_base_loopexit(base, &tv);
        event_base_loop(base, 0);
    }
}

static void run_for(struct event_base *base, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_loop(base, 0);
}

static enum admit_status admit_as(struct policy *p, struct event_base *base, const char *tenant,
                                  const struct tenant_limits *lim, const char *id, int64_t cost, int64_t alt);

/* A limit whose share rounds down to 0 is still a limit: rpm 3 at a share
 * of 0.25 (four instances) admits 1 request per instance, not every one. */
static void test_local_small_share(void)
{
    struct event_base *base = event_base_new();
    struct policy_settings s = {.redis = NULL, .local_share = 0.25, .reservation_ttl_ms = 60000};
    struct policy *p = policy_new(&s);
    struct tenant_limits rpm = {.rpm = 3, .budget_day_nano = -1, .budget_month_nano = -1};
    CHECK(admit_as(p, base, "small-rpm", &rpm, "r1", 0, -1) == ADMIT_OK);
    CHECK(last.limit_requests == 1);
    settle(p, base, 0, 10);
    CHECK(admit_as(p, base, "small-rpm", &rpm, "r2", 0, -1) == ADMIT_LIMIT_REQUESTS);
    struct tenant_limits conc = {.max_concurrent = 2, .budget_day_nano = -1, .budget_month_nano = -1};
    CHECK(admit_as(p, base, "small-conc", &conc, "c1", 0, -1) == ADMIT_OK);
    struct reservation *held = last_resv;
    CHECK(admit_as(p, base, "small-conc", &conc, "c2", 0, -1) == ADMIT_LIMIT_CONCURRENCY);
    last_resv = held;
    settle(p, base, 0, 10);
    struct tenant_limits tpm = {.tpm = 2, .budget_day_nano = -1, .budget_month_nano = -1};
    CHECK(admit_as(p, base, "small-tpm", &tpm, "t1", 0, -1) == ADMIT_LIMIT_TOKENS); /* 10 tokens > 1 */
    policy_free(p);
    event_base_free(base);
}

/* One admission of tenant, run to its callback (Redis or local). */
static enum admit_status admit_as(struct policy *p, struct event_base *base, const char *tenant,
                                  const struct tenant_limits *lim, const char *id, int64_t cost, int64_t alt)
{
    struct admit_request q = {.tenant = tenant, .limits = lim, .request_id = id, .est_tokens = 10,
                              .est_cost_nano = cost, .alt_cost_nano = alt};
    last_resv = NULL;
    memset(&last, 0, sizeof last);
    policy_admit(p, base, &q, on_admit_count, NULL);
    run_until_changed(base, &admitted);
    return last.status;
}

static void settle_info(struct policy *p, struct event_base *base, const struct settle_info *info)
{
    CHECK(last_resv != NULL);
    if (!last_resv)
        return;
    policy_settle(p, base, last_resv, info);
    last_resv = NULL;
}

/* Retry-After of a budget rejection against the window reset, read around
 * the admission: a second may tick between. */
static int retry_is_reset(int64_t before, int64_t after, int monthly)
{
    int64_t a = policy_window_reset_s(before, monthly), b = policy_window_reset_s(after, monthly);
    return last.retry_after_s <= a && last.retry_after_s >= b && last.retry_after_s > 60;
}

/* ---- the window reset itself ---------------------------------------------- */

static void test_window_reset(void)
{
    /* 2026-12-31 23:59:59 UTC: one second to both the day's and the year's turn. */
    CHECK(policy_window_reset_s(1798761599, 0) == 1);
    CHECK(policy_window_reset_s(1798761599, 1) == 1);
    /* 2024-02-28 12:00:00 UTC, a leap year: half a day; the month ends
     * after the 29th. */
    CHECK(policy_window_reset_s(1709121600, 0) == 43200);
    CHECK(policy_window_reset_s(1709121600, 1) == 43200 + 86400);
    /* 2026-01-15 00:00:00 UTC, exactly at midnight: a whole day, 17 days. */
    CHECK(policy_window_reset_s(1768435200, 0) == 86400);
    CHECK(policy_window_reset_s(1768435200, 1) == 17 * 86400);
}

/* ---- Retry-After without Redis ---------------------------------------------- */

static void test_local_retry(void)
{
    struct event_base *base = event_base_new();
    struct policy_settings s = {.redis = NULL, .local_share = 1.0, .reservation_ttl_ms = 60000};
    struct policy *p = policy_new(&s);
    struct settle_info spent = {.cost_nano = 900, .tokens = 10};

    /* A day budget spent: until the next UTC midnight, not 1 s. */
    struct tenant_limits day = {.budget_day_nano = 1000, .budget_month_nano = -1};
    CHECK(admit_as(p, base, "rd", &day, "d1", 900, -1) == ADMIT_OK);
    settle_info(p, base, &spent);
    int64_t t0 = (int64_t)time(NULL);
    CHECK(admit_as(p, base, "rd", &day, "d2", 500, -1) == ADMIT_BUDGET);
    CHECK(retry_is_reset(t0, (int64_t)time(NULL), 0));

    /* A month budget spent: until the first of next month. */
    struct tenant_limits month = {.budget_day_nano = -1, .budget_month_nano = 1000};
    CHECK(admit_as(p, base, "rm", &month, "m1", 900, -1) == ADMIT_OK);
    settle_info(p, base, &spent);
    t0 = (int64_t)time(NULL);
    CHECK(admit_as(p, base, "rm", &month, "m2", 500, -1) == ADMIT_BUDGET);
    CHECK(retry_is_reset(t0, (int64_t)time(NULL), 1));

    /* Both set: the day is spent and the month has room: the day's reset.
     * Both spent: the month's, since tomorrow would not admit it either. */
    struct tenant_limits both = {.budget_day_nano = 1000, .budget_month_nano = 100000};
    CHECK(admit_as(p, base, "rb", &both, "b1", 900, -1) == ADMIT_OK);
    settle_info(p, base, &spent);
    t0 = (int64_t)time(NULL);
    CHECK(admit_as(p, base, "rb", &both, "b2", 500, -1) == ADMIT_BUDGET);
    CHECK(retry_is_reset(t0, (int64_t)time(NULL), 0));
    struct tenant_limits both_spent = {.budget_day_nano = 1000, .budget_month_nano = 1000};
    t0 = (int64_t)time(NULL);
    CHECK(admit_as(p, base, "rb", &both_spent, "b3", 500, -1) == ADMIT_BUDGET);
    CHECK(retry_is_reset(t0, (int64_t)time(NULL), 1));

    /* A rate limit: when the window's oldest request leaves it (about 60 s
     * from now), not 1 s. */
    struct tenant_limits rpm = {.rpm = 1, .budget_day_nano = -1, .budget_month_nano = -1};
    CHECK(admit_as(p, base, "rr", &rpm, "r1", 0, -1) == ADMIT_OK);
    settle_info(p, base, &(struct settle_info){0});
    CHECK(admit_as(p, base, "rr", &rpm, "r2", 0, -1) == ADMIT_LIMIT_REQUESTS);
    CHECK(last.retry_after_s >= 59 && last.retry_after_s <= 60);
    policy_free(p);
    event_base_free(base);
}

/* ---- against Redis ------------------------------------------------------------- */

static redisContext *cli;

static long long hget(const char *key, const char *field)
{
    redisReply *r = redisCommand(cli, "HGET %s %s", key, field);
    long long v = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1; /* -1: absent */
    freeReplyObject(r);
    return v;
}

static long long get_int(const char *key)
{
    redisReply *r = redisCommand(cli, "GET %s", key);
    long long v = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    freeReplyObject(r);
    return v;
}

static json_t *usage_got;
static int usage_calls;

static void on_usage(void *ctx, json_t *usage)
{
    (void)ctx;
    usage_got = usage ? json_incref(usage) : NULL;
    usage_calls++;
}

static json_t *usage_of(struct policy *p, struct event_base *base, const char *tenant, const struct tenant_limits *lim)
{
    usage_got = NULL;
    policy_usage(p, base, tenant, lim, on_usage, NULL);
    run_until_changed(base, &usage_calls);
    return usage_got;
}

static double field(json_t *u, const char *period, const char *k)
{
    return json_number_value(json_object_get(json_object_get(u, period), k));
}

static int near(double a, double b)
{
    return fabs(a - b) <= 1e-15 + 1e-9 * fabs(b);
}

static void saved_keys(const char *tenant, char day[96], char month[96])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char d[16], m[16];
    strftime(d, sizeof d, "%Y%m%d", &tm);
    strftime(m, sizeof m, "%Y%m", &tm);
    snprintf(day, 96, "cascade:{%s}:saved:%s", tenant, d);
    snprintf(month, 96, "cascade:{%s}:saved:%s", tenant, m);
}

static void test_redis(int port, pid_t *pid)
{
    char url[64], err[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    struct redis_settings rset = {.url = url, .timeout_ms = 300};
    struct redis_shared *rs = redis_shared_new(&rset, err, sizeof err);
    CHECK(rs != NULL);
    struct policy_settings ps = {.redis = rs, .local_share = 1.0, .reservation_ttl_ms = 60000};
    struct policy *p = policy_new(&ps);
    struct event_base *base = event_base_new();
    struct redis *r = redis_for_base(rs, base);
    for (int i = 0; i < 200 && !redis_connected(r); i++)
        run_for(base, 10);
    CHECK(redis_connected(r));
    char day[96], month[96];

    /* Routing's gain and loss, stored apart; the usage API nets them. A
     * budget makes admission go through the script (and reserve). */
    struct tenant_limits lim = {.budget_day_nano = 1000000, .budget_month_nano = -1};
    saved_keys("net", day, month);
    CHECK(admit_as(p, base, "net", &lim, "n1", 1000, -1) == ADMIT_OK && !last.local);
    settle_info(p, base, &(struct settle_info){.cost_nano = 700, .tokens = 10, .saved_routing_nano = 50});
    CHECK(admit_as(p, base, "net", &lim, "n2", 1000, -1) == ADMIT_OK);
    /* An escalation: paid for the cheap answer and the large one. */
    settle_info(p, base, &(struct settle_info){.cost_nano = 900, .tokens = 10, .routing_loss_nano = 200});
    CHECK(admit_as(p, base, "net", &lim, "n3", 1000, -1) == ADMIT_OK);
    settle_info(p, base, &(struct settle_info){.cost_nano = 0, .tokens = 10, .saved_cache_nano = 30});
    run_for(base, 100);
    CHECK(hget(day, "routing") == 50 && hget(month, "routing") == 50);
    CHECK(hget(day, "routing_loss") == 200 && hget(month, "routing_loss") == 200);
    CHECK(hget(day, "cache") == 30);
    json_t *u = usage_of(p, base, "net", &lim);
    CHECK(u != NULL);
    if (u) {
        for (int k = 0; k < 2; k++) {
            const char *per = k ? "month" : "today";
            CHECK(near(field(u, per, "saved_routing_usd"), (50 - 200) * 1e-9)); /* net, negative */
            CHECK(near(field(u, per, "routing_gain_usd"), 50e-9));
            CHECK(near(field(u, per, "routing_loss_usd"), 200e-9));
            CHECK(near(field(u, per, "saved_cache_usd"), 30e-9));
            CHECK(near(field(u, per, "spend_usd"), 1600e-9));
        }
        json_decref(u);
    }

    /* A hash an older gateway wrote has no routing_loss: it reads as 0. */
    saved_keys("old", day, month);
    freeReplyObject(redisCommand(cli, "HSET %s cache 10 routing 70", day));
    u = usage_of(p, base, "old", &lim);
    CHECK(u != NULL);
    if (u) {
        CHECK(near(field(u, "today", "saved_routing_usd"), 70e-9));
        CHECK(near(field(u, "today", "routing_gain_usd"), 70e-9));
        CHECK(field(u, "today", "routing_loss_usd") == 0);
        json_decref(u);
    }

    /* A negative loss is a caller's bug: recorded as 0, not as a gain. */
    saved_keys("neg", day, month);
    CHECK(admit_as(p, base, "neg", &lim, "g1", 1000, -1) == ADMIT_OK);
    settle_info(p, base, &(struct settle_info){.cost_nano = 10, .tokens = 10, .routing_loss_nano = -500});
    run_for(base, 100);
    CHECK(hget(day, "routing_loss") == -1 && hget(day, "routing") == -1);

    /* A loss that would overflow the stored sum: the whole settlement is
     * refused before any write (spend included), and not journaled. */
    saved_keys("ovf", day, month);
    freeReplyObject(redisCommand(cli, "HSET %s routing_loss 8999999999999999999", day));
    char spend_key[96];
    snprintf(spend_key, sizeof spend_key, "cascade:{ovf}:spend:%.8s", day + strlen("cascade:{ovf}:saved:"));
    CHECK(admit_as(p, base, "ovf", &lim, "o1", 1000, -1) == ADMIT_OK);
    settle_info(p, base, &(struct settle_info){.cost_nano = 10, .tokens = 10,
                                                .routing_loss_nano = 1000000000000000000LL});
    run_for(base, 100);
    CHECK(hget(day, "routing_loss") == 8999999999999999999LL);
    CHECK(get_int(spend_key) == -1);
    CHECK(policy_journal_size(p) == 0);

    /* Retry-After of budget rejections that went through the script. */
    struct tenant_limits dayb = {.budget_day_nano = 1000, .budget_month_nano = -1};
    CHECK(admit_as(p, base, "rday", &dayb, "rd1", 900, -1) == ADMIT_OK);
    settle_info(p, base, &(struct settle_info){.cost_nano = 900, .tokens = 10});
    run_for(base, 50);
    int64_t t0 = (int64_t)time(NULL);
    CHECK(admit_as(p, base, "rday", &dayb, "rd2", 500, 400) == ADMIT_BUDGET && !last.local);
    CHECK(retry_is_reset(t0, (int64_t)time(NULL), 0));
    struct tenant_limits monthb = {.budget_day_nano = 100000, .budget_month_nano = 1000};
    CHECK(admit_as(p, base, "rmon", &monthb, "rm1", 900, -1) == ADMIT_OK);
    settle_info(p, base, &(struct settle_info){.cost_nano = 900, .tokens = 10});
    run_for(base, 50);
    t0 = (int64_t)time(NULL);
    CHECK(admit_as(p, base, "rmon", &monthb, "rm2", 500, -1) == ADMIT_BUDGET);
    CHECK(retry_is_reset(t0, (int64_t)time(NULL), 1));
    /* The downgrade that fits is admitted, not told to wait. */
    CHECK(admit_as(p, base, "rmon", &monthb, "rm3", 500, 50) == ADMIT_DOWNGRADED);
    settle_info(p, base, &(struct settle_info){.cost_nano = 50, .tokens = 10});
    /* A rate limit keeps its window's reset. */
    struct tenant_limits rpm = {.rpm = 1, .budget_day_nano = -1, .budget_month_nano = -1};
    CHECK(admit_as(p, base, "rrpm", &rpm, "rr1", 0, -1) == ADMIT_OK);
    settle_info(p, base, &(struct settle_info){0});
    CHECK(admit_as(p, base, "rrpm", &rpm, "rr2", 0, -1) == ADMIT_LIMIT_REQUESTS && !last.local);
    CHECK(last.retry_after_s >= 59 && last.retry_after_s <= 60);

    /* Redis goes away between admission and settlement: the settlement
     * waits in the journal, with its loss, and lands when Redis is back. */
    saved_keys("jrn", day, month);
    CHECK(admit_as(p, base, "jrn", &lim, "j1", 1000, -1) == ADMIT_OK && !last.local);
    redis_stop(*pid);
    run_for(base, 400); /* the connection notices */
    settle_info(p, base, &(struct settle_info){.cost_nano = 300, .tokens = 10, .saved_routing_nano = 5,
                                                .routing_loss_nano = 77});
    run_for(base, 400);
    CHECK(policy_journal_size(p) == 1);
    *pid = redis_start(port);
    redisFree(cli);
    cli = redisConnect("127.0.0.1", port);
    for (int i = 0; i < 60 && policy_journal_size(p) > 0; i++) /* reconnect backoff: at most 2 s */
        run_for(base, 100);
    run_for(base, 200);
    CHECK(policy_journal_size(p) == 0);
    CHECK(hget(day, "routing_loss") == 77 && hget(month, "routing_loss") == 77);
    CHECK(hget(day, "routing") == 5);

    redis_shared_close_all(rs);
    policy_free(p);
    redis_shared_free(rs);
    event_base_free(base);
}

int main(void)
{
    evthread_use_pthreads();
    signal(SIGPIPE, SIG_IGN);
    test_local();
    test_local_small_share();
    test_window_reset();
    test_local_retry();
    int port = free_port();
    pid_t pid = redis_start(port);
    cli = redisConnect("127.0.0.1", port);
    test_redis(port, &pid);
    redisFree(cli);
    redis_stop(pid);
    TEST_MAIN_END();
}
