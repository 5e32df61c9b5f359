/* Fleet stats (policies/stats.c): what the dashboard and GET /admin/v1/stats
 * will show must equal what was recorded.
 *   - memory mode: series, totals, steps, rates and percentiles by hand;
 *   - Redis mode, against a redis-server this test starts: two stats
 *     instances (two gateway processes) with two worker threads each write
 *     the same tenant; the Redis hashes and the query equal the samples;
 *   - a flush whose reply times out while Redis still runs it (CLIENT PAUSE)
 *     is counted once, not twice;
 *   - an outage: samples recorded while Redis is down arrive after it returns;
 *   - the bound on what a worker holds while Redis is away.
 */
#include <errno.h>
#include <fcntl.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache/redis.h"
#include "policies/judge.h"
#include "policies/routing.h"
#include "policies/stats.h"
#include "tests/unit/redis_server.h"
#include "tests/unit/test.h"

static const char *const TIERS[] = {"small", "large"};

/* ---- a clock each thread sets for itself -------------------------------- */

static _Thread_local int64_t tl_now;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return tl_now ? tl_now : (int64_t)time(NULL);
}

/* ---- redis-server: tests/unit/redis_server.h -------------------------------- */

static redisContext *cli;

static long long hget(const char *key, const char *field)
{
    redisReply *r = redisCommand(cli, "HGET %s %s", key, field);
    long long v = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
    freeReplyObject(r);
    return v;
}

static long long ttl_of(const char *key)
{
    redisReply *r = redisCommand(cli, "TTL %s", key);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -3;
    freeReplyObject(r);
    return v;
}

/* ---- samples ------------------------------------------------------------- */

/* Sample i of a deterministic sequence; *minute_back says how many minutes
 * before "now" it belongs to. */
static void gen_sample(uint32_t seed, int i, struct stats_sample *x, int *minute_back)
{
    uint32_t h = seed * 2654435761u + (uint32_t)i * 40503u;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    memset(x, 0, sizeof *x);
    x->tenant = "acme";
    x->tier = (int)(h % 3) - 1; /* -1, 0, 1 */
    x->status = (h >> 3) % 10 == 0 ? 502 : 200;
    x->cache = (enum stats_cache)((h >> 5) % 3);
    x->escalated = (h >> 7) % 4 == 0;
    x->tokens_in = 10 + (h >> 9) % 500;
    x->tokens_out = (h >> 11) % 300;
    x->cost_nano = x->tokens_in * 140 + x->tokens_out * 280;
    x->saved_cache_nano = x->cache == STATS_CACHE_HIT ? 1000 + (h >> 13) % 5000 : 0;
    x->saved_routing_nano = x->tier == 0 ? (h >> 15) % 7000 : 0;
    /* An escalation to the large tier paid for both calls: routing's loss. */
    x->routing_loss_nano = x->tier == 1 && x->escalated ? (h >> 16) % 9000 : 0;
    x->latency_us = 300 + (uint64_t)((h >> 4) % 2000000);
    *minute_back = (int)((h >> 17) % 3);
    /* About half were routed by score; the rest name a kind that must not
     * count (a hit, a named tier). */
    x->routed = (h >> 19) % 2;
    x->route_kind = (int)((h >> 20) % ROUTE_N_KINDS);
}

struct expect {
    long long requests, hits, misses, bypass, errors, escalations, tokens_in, tokens_out, cost, saved_cache,
        saved_routing, routing_loss, tier[2], lat_count, lat_sum, route[ROUTE_N_KINDS];
};

static void expect_add(struct expect *e, const struct stats_sample *x)
{
    e->requests++;
    e->hits += x->cache == STATS_CACHE_HIT;
    e->misses += x->cache == STATS_CACHE_MISS;
    e->bypass += x->cache == STATS_CACHE_BYPASS;
    e->errors += x->status >= 500;
    e->escalations += x->escalated != 0;
    e->tokens_in += x->tokens_in;
    e->tokens_out += x->tokens_out;
    e->cost += x->cost_nano;
    e->saved_cache += x->saved_cache_nano;
    e->saved_routing += x->saved_routing_nano;
    e->routing_loss += x->routing_loss_nano;
    if (x->tier >= 0)
        e->tier[x->tier]++;
    e->lat_count++;
    e->lat_sum += (long long)x->latency_us;
    if (x->routed)
        e->route[x->route_kind]++;
}

/* ---- running queries ----------------------------------------------------- */

struct answer {
    int called;
    int inside;         /* set while stats_query runs: the callback must not see it */
    int was_inside;
    json_t *result;     /* a reference of our own, or NULL */
};

static void on_answer(void *ctx, json_t *result)
{
    struct answer *a = ctx;
    a->called++;
    a->was_inside = a->inside;
    a->result = result ? json_incref(result) : NULL;
}

/* Query on base (this thread) and run it until the answer comes. */
static json_t *query(struct stats *s, struct event_base *base, const char *tenant, const char *const *all, size_t n,
                     int64_t from, int64_t to, int64_t step, int *failed)
{
    struct answer a = {0};
    a.inside = 1;
    int rc = stats_query(s, base, tenant, all, n, from, to, step, on_answer, &a);
    a.inside = 0;
    CHECK(rc == 0);
    for (int i = 0; i < 500 && !a.called; i++) {
        struct timeval tv = {0, 10000};
        event_base_loopexit(base, &tv);
        event_base_loop(base, 0);
    }
    CHECK(a.called == 1);
    CHECK(!a.was_inside);
    if (failed)
        *failed = a.called && !a.result;
    return a.result;
}

static double num(json_t *o, const char *k)
{
    return json_number_value(json_object_get(o, k));
}

static double at(json_t *series, const char *k, size_t i)
{
    return json_number_value(json_array_get(json_object_get(series, k), i));
}

static int near(double a, double b)
{
    return fabs(a - b) <= 1e-9 * (1 + fabs(b));
}

/* ---- memory mode ------------------------------------------------------------ */

static void test_memory(void)
{
    struct event_base *base = event_base_new();
    struct stats *s = stats_new(NULL, TIERS, 2);
    stats_set_clock(s, fake_clock, NULL);
    const int64_t m0 = 29000000; /* a minute well in the past, fixed */

    /* Minute m0: 10 requests, 4 hits, at 30 ms and 120 ms. */
    tl_now = m0 * 60 + 5;
    for (int i = 0; i < 10; i++) {
        struct stats_sample x = {.tenant = "acme", .tier = i < 4 ? -1 : (i < 8 ? 0 : 1), .status = 200,
                                 .cache = i < 4 ? STATS_CACHE_HIT : STATS_CACHE_MISS, .escalated = i == 9,
                                 .tokens_in = 100, .tokens_out = 50,
                                 .cost_nano = i < 4 ? 0 : 28000, .saved_cache_nano = i < 4 ? 28000 : 0,
                                 .saved_routing_nano = i >= 4 && i < 8 ? 5000 : 0,
                                 .routing_loss_nano = i == 9 ? 30000 : 0, /* the escalation */
                                 .latency_us = i % 2 ? 30000 : 120000};
        /* The cascade judged two of them: one kept, the escalation; a
         * pair that cannot happen (keep, cheap_failed) is not counted. */
        if (i >= 7)
            x.judged = 1;
        x.judge_verdict = i == 9 ? JUDGE_ESCALATE : JUDGE_KEEP;
        x.judge_reason = i == 9 ? JUDGE_QUANTILE : i == 8 ? JUDGE_OPTION_PROB : JUDGE_CHEAP_FAILED;
        /* "auto" routed the six misses: two small, one large, three cascade
         * (the escalation among them). The hits name a kind, not routed:
         * they must not count. */
        x.routed = i >= 4;
        x.route_kind = i < 4 ? ROUTE_LARGE : i < 6 ? ROUTE_SMALL : i == 6 ? ROUTE_LARGE : ROUTE_CASCADE;
        stats_record(s, base, &x);
    }
    /* Minute m0+3: another tenant and a 5xx; m0+4: beta, bypass. */
    tl_now = m0 * 60 + 3 * 60 + 59;
    struct stats_sample e = {.tenant = "acme", .tier = 0, .status = 503, .cache = STATS_CACHE_BYPASS,
                             .latency_us = 200000000, .routed = 1, .route_kind = ROUTE_MEDIUM};
    stats_record(s, base, &e);
    tl_now = m0 * 60 + 4 * 60;
    struct stats_sample b = {.tenant = "beta", .tier = 1, .status = 200, .cache = STATS_CACHE_BYPASS,
                             .tokens_in = 7, .tokens_out = 3, .cost_nano = 1234567891, .latency_us = 500,
                             .routed = 1, .route_kind = ROUTE_N_KINDS}; /* no such kind: not counted */
    stats_record(s, base, &b);
    stats_flush(s, base);

    int failed = 0;
    json_t *r = query(s, base, "acme", NULL, 0, m0 * 60, m0 * 60 + 300, 60, &failed);
    CHECK(r && !failed);
    if (r) {
        CHECK_STR(json_string_value(json_object_get(r, "tenant")), "acme");
        CHECK(json_object_get(r, "tenants") == NULL);
        CHECK(num(r, "from") == m0 * 60 && num(r, "to") == m0 * 60 + 300 && num(r, "step") == 60);
        json_t *se = json_object_get(r, "series");
        CHECK(json_array_size(json_object_get(se, "t")) == 5);
        CHECK(at(se, "t", 0) == m0 * 60 && at(se, "t", 4) == m0 * 60 + 240);
        CHECK(at(se, "requests", 0) == 10 && at(se, "hits", 0) == 4 && at(se, "misses", 0) == 6);
        CHECK(near(at(se, "hit_rate", 0), 0.4));
        CHECK(near(at(se, "escalation_rate", 0), 0.1));
        CHECK(near(at(se, "cost_usd", 0), 6 * 28000e-9));
        CHECK(near(at(se, "saved_cache_usd", 0), 4 * 28000e-9));
        /* Routing savings are net: four cheap answers gained 5000 each, the
         * escalation lost 30000, so routing cost money this minute. */
        CHECK(near(at(se, "saved_routing_usd", 0), 4 * 5000e-9 - 30000e-9));
        CHECK(at(se, "saved_routing_usd", 0) < 0);
        CHECK(near(at(se, "routing_gain_usd", 0), 4 * 5000e-9));
        CHECK(near(at(se, "routing_loss_usd", 0), 30000e-9));
        CHECK(at(se, "routing_loss_usd", 1) == 0);
        CHECK(at(se, "tokens_in", 0) == 1000 && at(se, "tokens_out", 0) == 500);
        /* Five samples in (25, 50] and five in (100, 150]: rank 5 tops the
         * first bucket (50 ms); rank 9.5 is 4.5/5 into the second. */
        CHECK(near(at(se, "p50_ms", 0), 50.0));
        CHECK(near(at(se, "p95_ms", 0), 100.0 + 50.0 * 4.5 / 5.0));
        json_t *tiers = json_object_get(se, "tiers");
        CHECK(json_integer_value(json_array_get(json_object_get(tiers, "small"), 0)) == 4);
        CHECK(json_integer_value(json_array_get(json_object_get(tiers, "large"), 0)) == 2);
        /* Empty minutes: zero counts, no rates, no percentiles. */
        CHECK(at(se, "requests", 1) == 0);
        CHECK(json_is_null(json_array_get(json_object_get(se, "hit_rate"), 1)));
        CHECK(json_is_null(json_array_get(json_object_get(se, "p50_ms"), 2)));
        /* Minute 3: a 5xx past the last bound answers that bound's floor. */
        CHECK(at(se, "requests", 3) == 1 && at(se, "errors", 3) == 1 && at(se, "bypass", 3) == 1);
        CHECK(near(at(se, "p95_ms", 3), 120000));
        CHECK(at(se, "requests", 4) == 0); /* beta's minute, not acme's */
        json_t *tot = json_object_get(r, "totals");
        CHECK(num(tot, "requests") == 11 && num(tot, "errors") == 1 && num(tot, "escalations") == 1);
        CHECK(near(num(tot, "saved_routing_usd"), 4 * 5000e-9 - 30000e-9));
        CHECK(near(num(tot, "routing_gain_usd"), 4 * 5000e-9) && near(num(tot, "routing_loss_usd"), 30000e-9));
        CHECK(near(num(tot, "hit_rate"), 4.0 / 11));
        CHECK(json_integer_value(json_object_get(json_object_get(tot, "tiers"), "small")) == 5);
        /* Judgements by verdict and reason, in the series and the totals;
         * every possible pair is listed, and only those. */
        json_t *sj = json_object_get(se, "judgements"), *tj = json_object_get(tot, "judgements");
        json_t *keep_prob = json_object_get(json_object_get(sj, "keep"), "option_prob");
        CHECK(json_array_size(keep_prob) == 5 && json_integer_value(json_array_get(keep_prob, 0)) == 1 &&
              json_integer_value(json_array_get(keep_prob, 1)) == 0);
        CHECK(json_integer_value(json_array_get(json_object_get(json_object_get(sj, "escalate"), "quantile"), 0)) == 1);
        CHECK(json_integer_value(json_object_get(json_object_get(tj, "keep"), "option_prob")) == 1);
        CHECK(json_integer_value(json_object_get(json_object_get(tj, "escalate"), "quantile")) == 1);
        CHECK(json_integer_value(json_object_get(json_object_get(tj, "escalate"), "option_margin")) == 0);
        CHECK(json_object_get(json_object_get(tj, "keep"), "cheap_failed") == NULL);
        CHECK(json_object_size(json_object_get(tj, "keep")) == 6 && json_object_size(json_object_get(tj, "escalate")) == 7);
        /* Routes: every kind listed, in the series and the totals. */
        json_t *sr = json_object_get(se, "routes"), *tr = json_object_get(tot, "routes");
        CHECK(json_object_size(sr) == ROUTE_N_KINDS && json_object_size(tr) == ROUTE_N_KINDS);
        static const long long want_m0[ROUTE_N_KINDS] = {[ROUTE_SMALL] = 2, [ROUTE_LARGE] = 1, [ROUTE_CASCADE] = 3};
        for (int k = 0; k < ROUTE_N_KINDS; k++) {
            json_t *a = json_object_get(sr, routing_kind_name((enum route_kind)k));
            CHECK(json_array_size(a) == 5);
            CHECK(json_integer_value(json_array_get(a, 0)) == want_m0[k]);
            CHECK(json_integer_value(json_array_get(a, 3)) == (k == ROUTE_MEDIUM));
            CHECK(json_integer_value(json_array_get(a, 1)) == 0);
            CHECK(json_integer_value(json_object_get(tr, routing_kind_name((enum route_kind)k))) ==
                  want_m0[k] + (k == ROUTE_MEDIUM));
        }
        json_decref(r);
    }

    /* Steps of 2 minutes and a range not on minute bounds. */
    r = query(s, base, "acme", NULL, 0, m0 * 60 + 30, m0 * 60 + 290, 120, NULL);
    CHECK(r != NULL); /* what follows checks r: it must exist */
    if (r) {
        json_t *se = json_object_get(r, "series");
        CHECK(num(r, "from") == m0 * 60 && num(r, "to") == m0 * 60 + 300);
        CHECK(json_array_size(json_object_get(se, "t")) == 3);
        CHECK(at(se, "requests", 0) == 10 && at(se, "requests", 1) == 1 && at(se, "requests", 2) == 0);
        json_decref(r);
    }

    /* All tenants: the sum, and the list that was summed. */
    const char *all[] = {"acme", "beta", "idle"};
    r = query(s, base, NULL, all, 3, m0 * 60, m0 * 60 + 300, 300, NULL);
    CHECK(r != NULL); /* what follows checks r: it must exist */
    if (r) {
        CHECK_STR(json_string_value(json_object_get(r, "tenant")), "*");
        CHECK(json_array_size(json_object_get(r, "tenants")) == 3);
        json_t *tot = json_object_get(r, "totals");
        CHECK(num(tot, "requests") == 12 && num(tot, "bypass") == 2);
        CHECK(near(num(tot, "cost_usd"), 6 * 28000e-9 + 1.234567891));
        json_t *tr = json_object_get(tot, "routes");
        CHECK(json_integer_value(json_object_get(tr, "small")) == 2 && json_integer_value(json_object_get(tr, "large")) == 1 &&
              json_integer_value(json_object_get(tr, "cascade")) == 3 && json_integer_value(json_object_get(tr, "medium")) == 1);
        CHECK(json_array_size(json_object_get(json_object_get(r, "series"), "t")) == 1);
        json_decref(r);
    }
    r = query(s, base, "", all, 1, m0 * 60, m0 * 60 + 300, 60, NULL); /* "" means all */
    CHECK(r != NULL); /* what follows checks r: it must exist */
    if (r) {
        CHECK_STR(json_string_value(json_object_get(r, "tenant")), "*");
        json_decref(r);
    }

    /* Ranges the endpoint must refuse. */
    char err[128];
    CHECK(stats_query_check(0, 3600, 60, err, sizeof err) == 0);
    CHECK(stats_query_check(100, 100, 60, err, sizeof err) < 0);
    CHECK(stats_query_check(-60, 100, 60, err, sizeof err) < 0);
    CHECK(stats_query_check(0, 3600, 30, err, sizeof err) < 0);
    CHECK(stats_query_check(0, 3600, 90, err, sizeof err) < 0);
    CHECK(stats_query_check(0, 49 * 3600, 600, err, sizeof err) < 0);
    CHECK(stats_query_check(0, 48 * 3600, 60, err, sizeof err) == 0);
    CHECK(stats_query_check(30, 48 * 3600 + 30, 60, err, sizeof err) < 0); /* 2881 minutes */
    CHECK(stats_query(s, base, "acme", NULL, 0, 0, 3600, 45, on_answer, NULL) < 0);

    /* Minutes older than 48 h are not kept. */
    tl_now = m0 * 60;
    struct stats_sample old = {.tenant = "acme", .status = 200, .cache = STATS_CACHE_MISS, .latency_us = 1};
    stats_record(s, base, &old);
    tl_now = m0 * 60 + 49 * 3600;
    stats_flush(s, base);
    tl_now = 0;
    r = query(s, base, "acme", NULL, 0, m0 * 60, m0 * 60 + 60, 60, NULL);
    CHECK(r != NULL); /* what follows checks r: it must exist */
    if (r) {
        CHECK(num(json_object_get(r, "totals"), "requests") == 10); /* not 11 */
        json_decref(r);
    }
    stats_free(s);
    stats_free(NULL);
    event_base_free(base);
}

/* ---- Redis mode: two instances, two workers each ----------------------------- */

struct worker_arg {
    struct stats *s;
    uint32_t seed;
    int n;
    int64_t now;
    struct event_base *base;
    atomic_int recorded;
};

static void *worker_main(void *p)
{
    struct worker_arg *w = p;
    for (int i = 0; i < w->n; i++) {
        struct stats_sample x;
        int back;
        gen_sample(w->seed, i, &x, &back);
        tl_now = w->now - back * 60;
        stats_record(w->s, w->base, &x);
    }
    tl_now = w->now;
    atomic_store(&w->recorded, 1);
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static long long total_requests(int64_t now_min)
{
    long long n = 0;
    char key[96];
    for (int b = 0; b < 3; b++) {
        snprintf(key, sizeof key, "cascade:{acme}:stats:%lld", (long long)(now_min - b));
        n += hget(key, "requests");
    }
    return n;
}

static void test_fleet(int port)
{
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    struct redis_settings rset = {.url = url, .timeout_ms = 500};
    char err[128];
    enum { INSTANCES = 2, WORKERS = 2, N = 400 };
    struct redis_shared *rs[INSTANCES];
    struct stats *st[INSTANCES];
    struct worker_arg wa[INSTANCES * WORKERS];
    pthread_t th[INSTANCES * WORKERS];
    int64_t now = (int64_t)time(NULL);
    for (int i = 0; i < INSTANCES; i++) {
        rs[i] = redis_shared_new(&rset, err, sizeof err);
        st[i] = stats_new(rs[i], TIERS, 2);
        stats_set_clock(st[i], fake_clock, NULL);
    }
    struct expect want[3] = {0};
    for (int k = 0; k < INSTANCES * WORKERS; k++) {
        wa[k] = (struct worker_arg){.s = st[k / WORKERS], .seed = 17u + (uint32_t)k, .n = N, .now = now,
                                    .base = event_base_new()};
        for (int i = 0; i < N; i++) {
            struct stats_sample x;
            int back;
            gen_sample(wa[k].seed, i, &x, &back);
            expect_add(&want[back], &x);
        }
        pthread_create(&th[k], NULL, worker_main, &wa[k]);
    }
    int64_t now_min = now / 60;
    long long all = 0;
    for (int i = 0; i < 160 && all < INSTANCES * WORKERS * N; i++) {
        all = total_requests(now_min);
        usleep(50000);
    }
    CHECK(all == INSTANCES * WORKERS * N);

    /* The hashes hold exactly what was recorded, minute by minute. */
    for (int b = 0; b < 3; b++) {
        char key[96];
        int64_t m = now_min - b;
        snprintf(key, sizeof key, "cascade:{acme}:stats:%lld", (long long)m);
        CHECK(hget(key, "requests") == want[b].requests);
        CHECK(hget(key, "hits") == want[b].hits);
        CHECK(hget(key, "misses") == want[b].misses);
        CHECK(hget(key, "bypass") == want[b].bypass);
        CHECK(hget(key, "errors") == want[b].errors);
        CHECK(hget(key, "escalations") == want[b].escalations);
        CHECK(hget(key, "tokens_in") == want[b].tokens_in);
        CHECK(hget(key, "tokens_out") == want[b].tokens_out);
        CHECK(hget(key, "cost_nano") == want[b].cost);
        CHECK(hget(key, "saved_cache_nano") == want[b].saved_cache);
        CHECK(hget(key, "saved_routing_nano") == want[b].saved_routing);
        CHECK(hget(key, "routing_loss_nano") == want[b].routing_loss);
        CHECK(hget(key, "tier:small") == want[b].tier[0]);
        CHECK(hget(key, "tier:large") == want[b].tier[1]);
        CHECK(hget(key, "lat_count") == want[b].lat_count);
        CHECK(hget(key, "lat_sum_us") == want[b].lat_sum);
        for (int k = 0; k < ROUTE_N_KINDS; k++) {
            char field[32];
            snprintf(field, sizeof field, "route:%s", routing_kind_name((enum route_kind)k));
            CHECK(hget(key, field) == want[b].route[k]); /* nil (never incremented) reads 0 */
        }
        /* It expires 48 h after its minute ends. */
        long long ttl = ttl_of(key), expect_ttl = (m + 1) * 60 + STATS_RETENTION_S - (long long)time(NULL);
        CHECK(ttl > 0 && llabs(ttl - expect_ttl) <= 2);
    }
    /* Every key the flush wrote carries a TTL. */
    redisReply *keys = redisCommand(cli, "KEYS cascade:*");
    CHECK(keys && keys->type == REDIS_REPLY_ARRAY && keys->elements >= 3);
    int no_ttl = 0, acks = 0;
    for (size_t i = 0; keys && i < keys->elements; i++) {
        no_ttl += ttl_of(keys->element[i]->str) < 0;
        acks += strstr(keys->element[i]->str, ":statsack:") != NULL;
    }
    CHECK(no_ttl == 0);
    CHECK(acks == INSTANCES * WORKERS); /* one per worker and tenant */
    freeReplyObject(keys);

    /* The query sums the fleet; either instance answers the same. */
    struct event_base *qb = event_base_new();
    for (int i = 0; i < INSTANCES; i++) {
        int failed = 0;
        json_t *r = query(st[i], qb, "acme", NULL, 0, (now_min - 2) * 60, (now_min + 1) * 60, 60, &failed);
        CHECK(r && !failed);
        if (!r)
            continue;
        json_t *se = json_object_get(r, "series"), *tot = json_object_get(r, "totals");
        long long treq = 0, thits = 0, tcost = 0;
        for (int b = 0; b < 3; b++) {
            size_t p = (size_t)(2 - b); /* point 0 is the oldest minute */
            CHECK(at(se, "requests", p) == want[b].requests);
            CHECK(at(se, "hits", p) == want[b].hits);
            CHECK(at(se, "tokens_in", p) == want[b].tokens_in);
            CHECK(near(at(se, "cost_usd", p), want[b].cost / 1e9));
            CHECK(near(at(se, "saved_routing_usd", p), (want[b].saved_routing - want[b].routing_loss) / 1e9));
            CHECK(near(at(se, "routing_loss_usd", p), want[b].routing_loss / 1e9));
            CHECK(near(at(se, "hit_rate", p), (double)want[b].hits / (double)want[b].requests));
            CHECK(json_integer_value(json_array_get(json_object_get(json_object_get(se, "tiers"), "large"), p)) ==
                  want[b].tier[1]);
            for (int k = 0; k < ROUTE_N_KINDS; k++)
                CHECK(json_integer_value(json_array_get(
                          json_object_get(json_object_get(se, "routes"), routing_kind_name((enum route_kind)k)), p)) ==
                      want[b].route[k]);
            double p50 = at(se, "p50_ms", p), p95 = at(se, "p95_ms", p);
            CHECK(p50 > 0 && p50 <= p95 && p95 <= 2000.3 + 1000); /* samples are < 2.0003 s */
            treq += want[b].requests;
            thits += want[b].hits;
            tcost += want[b].cost;
        }
        CHECK(num(tot, "requests") == treq);
        CHECK(near(num(tot, "hit_rate"), (double)thits / (double)treq));
        CHECK(near(num(tot, "cost_usd"), tcost / 1e9));
        json_decref(r);
    }
    /* A step of 3 minutes: one point with all of it. */
    json_t *r = query(st[0], qb, "acme", NULL, 0, (now_min - 2) * 60, (now_min + 1) * 60, 180, NULL);
    CHECK(r != NULL); /* what follows checks r: it must exist */
    if (r) {
        CHECK(json_array_size(json_object_get(json_object_get(r, "series"), "t")) == 1);
        CHECK(at(json_object_get(r, "series"), "requests", 0) == INSTANCES * WORKERS * N);
        json_decref(r);
    }
    /* 24 h, read in several calls per tenant (4 h each), at steps that do
     * and do not divide the chunk: nothing lost, nothing twice. */
    static const int64_t steps[] = {60, 420, 3600};
    for (size_t k = 0; k < 3; k++) {
        int64_t to = (now_min + 1) * 60, from = to - 86400;
        r = query(st[1], qb, "acme", NULL, 0, from, to, steps[k], NULL);
        CHECK(r != NULL);
        if (!r)
            continue;
        json_t *se = json_object_get(r, "series");
        size_t n = json_array_size(json_object_get(se, "t"));
        CHECK(n == (size_t)((86400 + steps[k] - 1) / steps[k]));
        double total = 0;
        for (size_t i = 0; i < n; i++)
            total += at(se, "requests", i);
        CHECK(total == INSTANCES * WORKERS * N);
        CHECK(num(json_object_get(r, "totals"), "requests") == INSTANCES * WORKERS * N);
        CHECK(at(se, "t", n - 1) == from + (int64_t)(n - 1) * steps[k]);
        json_decref(r);
    }
    /* A tenant with no data reads as zeros. */
    r = query(st[0], qb, "nobody", NULL, 0, (now_min - 2) * 60, (now_min + 1) * 60, 60, NULL);
    CHECK(r != NULL); /* what follows checks r: it must exist */
    if (r) {
        CHECK(num(json_object_get(r, "totals"), "requests") == 0);
        CHECK(json_is_null(json_object_get(json_object_get(r, "totals"), "hit_rate")));
        json_decref(r);
    }

    for (int k = 0; k < INSTANCES * WORKERS; k++) {
        event_base_loopexit(wa[k].base, NULL);
        pthread_join(th[k], NULL);
    }
    for (int i = 0; i < INSTANCES; i++) {
        redis_shared_close_all(rs[i]);
        stats_free(st[i]);
        redis_shared_free(rs[i]);
    }
    for (int k = 0; k < INSTANCES * WORKERS; k++)
        event_base_free(wa[k].base);
    event_base_free(qb);
}

/* ---- a reply that times out after Redis ran the command ------------------------ */

/* Run base for ms milliseconds. */
static void run_for(struct event_base *base, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_loop(base, 0);
}

static void test_ambiguous_timeout(int port)
{
    char url[64], err[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    struct redis_settings rset = {.url = url, .timeout_ms = 100};
    struct redis_shared *rs = redis_shared_new(&rset, err, sizeof err);
    struct stats *s = stats_new(rs, TIERS, 2);
    stats_set_clock(s, fake_clock, NULL);
    tl_now = (int64_t)time(NULL);
    struct event_base *base = event_base_new();
    char key[96];
    snprintf(key, sizeof key, "cascade:{pause}:stats:%lld", (long long)(tl_now / 60));
    struct stats_sample x = {.tenant = "pause", .tier = 0, .status = 200, .cache = STATS_CACHE_MISS,
                             .tokens_in = 5, .latency_us = 1000};
    /* Connect first, with a batch that goes through normally; busy while
     * its reply is due (what a drain waits for), then not. */
    CHECK(stats_busy(s, base) == 0);
    stats_record(s, base, &x);
    stats_flush(s, base);
    CHECK(stats_busy(s, base) == 1);
    run_for(base, 300);
    CHECK(stats_busy(s, base) == 0);
    CHECK(hget(key, "tokens_in") == 5);

    /* Redis holds every command for 600 ms: the flush times out at 100 ms,
     * Redis then runs it, and the next tick sends the same batch again. */
    struct stats_counters c0, c1;
    stats_get_counters(s, &c0);
    redisReply *rep = redisCommand(cli, "CLIENT PAUSE 600 ALL");
    freeReplyObject(rep);
    stats_record(s, base, &x);
    stats_flush(s, base);
    run_for(base, 2600); /* the timeout, the pause, two more ticks */
    stats_get_counters(s, &c1);
    CHECK(c1.retried > c0.retried);         /* the case did happen */
    CHECK(c1.flushed > c0.flushed);
    CHECK(hget(key, "tokens_in") == 10); /* once, not twice */
    CHECK(hget(key, "requests") == 2);
    tl_now = 0;

    redis_shared_close_all(rs);
    stats_free(s);
    redis_shared_free(rs);
    event_base_free(base);
}

/* ---- an outage ------------------------------------------------------------------- */

static void test_outage(int port, pid_t *pid)
{
    char url[64], err[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    struct redis_settings rset = {.url = url, .timeout_ms = 200};
    struct redis_shared *rs = redis_shared_new(&rset, err, sizeof err);
    struct stats *s = stats_new(rs, TIERS, 2);
    stats_set_clock(s, fake_clock, NULL);
    struct event_base *base = event_base_new();
    tl_now = (int64_t)time(NULL);
    struct stats_sample x = {.tenant = "outage", .tier = 1, .status = 200, .cache = STATS_CACHE_HIT,
                             .latency_us = 2000};
    stats_record(s, base, &x);
    stats_flush(s, base);
    run_for(base, 300);

    redis_stop(*pid);
    for (int i = 0; i < 7; i++)
        stats_record(s, base, &x);
    /* A drain with Redis gone does not wait: the failed flush is not busy. */
    run_for(base, 300);
    stats_flush(s, base);
    run_for(base, 50);
    CHECK(stats_busy(s, base) == 0);
    run_for(base, 2500); /* ticks fail while it is down */
    *pid = redis_start(port);
    redisFree(cli);
    cli = redisConnect("127.0.0.1", port);
    char key[96];
    snprintf(key, sizeof key, "cascade:{outage}:stats:%lld", (long long)(tl_now / 60));
    long long got = 0;
    for (int i = 0; i < 100 && got < 7; i++) { /* reconnect backoff is at most 2 s */
        run_for(base, 100);
        got = hget(key, "hits");
    }
    run_for(base, 1200); /* nothing more arrives */
    CHECK(hget(key, "hits") == 7);   /* the restarted Redis had none before */
    CHECK(hget(key, "tier:large") == 7);
    tl_now = 0;
    redis_shared_close_all(rs);
    stats_free(s);
    redis_shared_free(rs);
    event_base_free(base);
}

/* ---- the bound while Redis is away --------------------------------------------------- */

static void test_bound(void)
{
    char url[64], err[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", free_port()); /* nothing listens there */
    struct redis_settings rset = {.url = url, .timeout_ms = 100};
    struct redis_shared *rs = redis_shared_new(&rset, err, sizeof err);
    struct stats *s = stats_new(rs, TIERS, 2);
    struct event_base *base = event_base_new();
    char name[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof name, "t%d", i);
        struct stats_sample x = {.tenant = name, .status = 200, .cache = STATS_CACHE_MISS};
        stats_record(s, base, &x);
    }
    struct stats_counters c;
    stats_get_counters(s, &c);
    CHECK(c.dropped == 5000 - 4096);
    run_for(base, 1200); /* ticks against a Redis that is not there: nothing breaks */
    redis_shared_close_all(rs);
    stats_free(s);
    redis_shared_free(rs);
    event_base_free(base);
}

int main(void)
{
    evthread_use_pthreads();
    signal(SIGPIPE, SIG_IGN);
    test_memory();

    int port = free_port();
    pid_t pid = redis_start(port);
    cli = redisConnect("127.0.0.1", port);
    test_fleet(port);
    test_ambiguous_timeout(port);
    test_outage(port, &pid);
    test_bound();
    redisFree(cli);
    redis_stop(pid);
    TEST_MAIN_END();
}
