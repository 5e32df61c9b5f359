/* bench_stats: what the metrics and fleet stats cost. Prints one JSON line
 * per scenario.
 *
 *   bench_stats record [--n N]
 *       Per-request recording on the hot path: metrics_request and
 *       stats_record, ns per call, single thread; and metrics_request from 2
 *       threads at once (the counters are shared atomics), calls/s in total.
 *   bench_stats render [--tenants T] [--tiers K]
 *       GET /metrics: metrics_render with every tenant x tier seen, ms and
 *       bytes, median of 21.
 *   bench_stats query --redis URL [--tenants T] [--runs R]
 *       GET /admin/v1/stats: fills 24 h of minutes (20 fields each, as real
 *       traffic leaves them) for T tenants with HSET, then times stats_query
 *       for 1 h / 6 h / 24 h (60 points each) for one tenant and all T
 *       summed; median and max of R runs, ms, on one event base.
 *   bench_stats flush --redis URL [--tenants T]
 *       One worker's flush of T tenants' minutes (one Lua call each,
 *       pipelined) until every one is acknowledged, ms, median of 5.
 */
#include <event2/event.h>
#include <event2/thread.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/redis.h"
#include "common/clock.h"
#include "gateway/metrics.h"
#include "policies/stats.h"

static const char *arg(int argc, char **argv, const char *name, const char *dflt)
{
    for (int i = 2; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return dflt;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* ---- record --------------------------------------------------------------- */

struct hammer {
    struct metrics *m;
    long n;
    int tenant;
};

static void *hammer_main(void *p)
{
    struct hammer *h = p;
    for (long i = 0; i < h->n; i++)
        metrics_request(h->m, h->tenant, (int)(i & 1), 200, STATS_CACHE_MISS, 0, 100, 50, 28000, 5000,
                        1000 + (uint64_t)(i & 4095) * 50, 0, 300, 20, 0);
    return NULL;
}

static void bench_record(long n)
{
    const char *tenants[] = {"t0", "t1", "t2", "t3"}, *tiers[] = {"small", "large"};
    struct metrics *m = metrics_new(tenants, 4, tiers, 2, NULL, 0);
    struct hammer h = {m, n, 0};
    uint64_t t0 = clock_mono_us();
    hammer_main(&h);
    double single = (double)(clock_mono_us() - t0) * 1000.0 / (double)n;

    struct hammer hs[2] = {{m, n / 2, 1}, {m, n / 2, 1}}; /* the same label set: the worst case */
    pthread_t th[2];
    t0 = clock_mono_us();
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, hammer_main, &hs[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    double two = (double)n / ((double)(clock_mono_us() - t0) / 1e6);
    metrics_free(m);

    struct stats *s = stats_new(NULL, tiers, 2);
    struct event_base *base = event_base_new();
    /* Routed by "auto" (route 0: small), so the route count is timed too. */
    struct stats_sample x = {.tenant = "t0", .tier = 0, .status = 200, .cache = STATS_CACHE_MISS, .tokens_in = 100,
                             .tokens_out = 50, .cost_nano = 28000, .latency_us = 1000, .routed = 1, .route_kind = 0};
    char names[16][16];
    for (int i = 0; i < 16; i++)
        snprintf(names[i], sizeof names[i], "t%d", i);
    t0 = clock_mono_us();
    for (long i = 0; i < n; i++) {
        x.tenant = names[i & 15];
        x.latency_us = 1000 + (uint64_t)(i & 4095) * 50;
        stats_record(s, base, &x);
    }
    double rec = (double)(clock_mono_us() - t0) * 1000.0 / (double)n;
    stats_free(s);
    event_base_free(base);
    printf("{\"scenario\":\"record\",\"calls\":%ld,\"metrics_request_ns\":%.1f,"
           "\"metrics_request_2threads_calls_per_s\":%.0f,\"stats_record_ns\":%.1f}\n",
           n, single, two, rec);
}

/* ---- render ---------------------------------------------------------------- */

static void bench_render(int nt, int nk)
{
    char **tn = calloc((size_t)nt, sizeof *tn), **kn = calloc((size_t)nk, sizeof *kn);
    for (int i = 0; i < nt; i++) {
        tn[i] = malloc(24);
        snprintf(tn[i], 24, "tenant%d", i);
    }
    for (int i = 0; i < nk; i++) {
        kn[i] = malloc(24);
        snprintf(kn[i], 24, "tier%d", i);
    }
    struct metrics *m = metrics_new((const char *const *)tn, (size_t)nt, (const char *const *)kn, (size_t)nk, NULL, 0);
    for (int t = 0; t < nt; t++)
        for (int k = 0; k < nk; k++)
            for (int i = 0; i < 20; i++)
                metrics_request(m, t, k, i % 7 ? 200 : 429, (enum stats_cache)(i % 3), i == 3, 10, 10, 100, 10,
                                (uint64_t)i * 20000, i & 1 ? 5000 : 0, 300, 20, 0);
    double ms[21];
    size_t len = 0;
    for (int r = 0; r < 21; r++) {
        uint64_t t0 = clock_mono_us();
        char *text = metrics_render(m, &len);
        ms[r] = (double)(clock_mono_us() - t0) / 1000.0;
        free(text);
    }
    printf("{\"scenario\":\"render\",\"tenants\":%d,\"tiers\":%d,\"bytes\":%zu,\"median_ms\":%.3f}\n", nt, nk, len,
           median(ms, 21));
    metrics_free(m);
    for (int i = 0; i < nt; i++)
        free(tn[i]);
    for (int i = 0; i < nk; i++)
        free(kn[i]);
    free(tn);
    free(kn);
}

/* ---- query and flush against Redis ----------------------------------------------- */

static int answered;

static void on_result(void *ctx, json_t *r)
{
    (void)ctx;
    answered = r ? 1 : -1;
}

static void run_until(struct event_base *base, int *flag)
{
    while (!*flag)
        event_base_loop(base, EVLOOP_ONCE);
}

static redisContext *connect_url(const char *url)
{
    char host[128] = "127.0.0.1";
    int port = 6379;
    sscanf(url, "redis://%127[^:/]:%d", host, &port);
    return redisConnect(host, port);
}

static void bench_query(const char *url, int nt, int runs)
{
    redisContext *c = connect_url(url);
    if (!c || c->err) {
        fprintf(stderr, "cannot connect to %s\n", url);
        exit(1);
    }
    const char *tiers[] = {"small", "large"};
    char **tn = calloc((size_t)nt, sizeof *tn);
    int64_t now_m = (int64_t)time(NULL) / 60;
    uint64_t t0 = clock_mono_us();
    for (int t = 0; t < nt; t++) {
        tn[t] = malloc(32);
        snprintf(tn[t], 32, "bench%d", t);
        for (int64_t m = now_m - 1440; m <= now_m; m++) {
            redisAppendCommand(c,
                               "HSET cascade:{%s}:stats:%lld requests 120 hits 48 misses 70 bypass 2 errors 1 "
                               "escalations 5 tier:small 90 tier:large 30 tokens_in 36000 tokens_out 12000 "
                               "cost_nano 8400000 saved_cache_nano 3100000 saved_routing_nano 9900000 "
                               "lat_count 120 lat_sum_us 9000000 lat_le_2 40 lat_le_50 30 lat_le_100 30 "
                               "lat_le_500 15 lat_le_3000 5",
                               tn[t], (long long)m);
            redisAppendCommand(c, "EXPIRE cascade:{%s}:stats:%lld 7200", tn[t], (long long)m);
        }
        for (int64_t m = now_m - 1440; m <= now_m; m++) {
            redisReply *r;
            redisGetReply(c, (void **)&r);
            freeReplyObject(r);
            redisGetReply(c, (void **)&r);
            freeReplyObject(r);
        }
    }
    double fill_ms = (double)(clock_mono_us() - t0) / 1000.0;
    struct redis_settings rset = {.url = url, .timeout_ms = 2000};
    char err[128];
    struct redis_shared *rs = redis_shared_new(&rset, err, sizeof err);
    struct stats *s = stats_new(rs, tiers, 2);
    struct event_base *base = event_base_new();
    static const int ranges[] = {3600, 21600, 86400};
    printf("{\"scenario\":\"query\",\"tenants\":%d,\"fill_ms\":%.0f,\"results\":[", nt, fill_ms);
    for (int ri = 0; ri < 3; ri++) {
        for (int all = 0; all < 2; all++) {
            double *ms = calloc((size_t)runs, sizeof *ms), worst = 0;
            for (int r = 0; r < runs; r++) {
                int64_t to = (now_m + 1) * 60;
                answered = 0;
                uint64_t q0 = clock_mono_us();
                stats_query(s, base, all ? NULL : tn[0], (const char *const *)tn, (size_t)nt, to - ranges[ri], to,
                            ranges[ri] / 60, on_result, NULL);
                run_until(base, &answered);
                ms[r] = (double)(clock_mono_us() - q0) / 1000.0;
                if (answered < 0)
                    fprintf(stderr, "query failed\n");
                worst = ms[r] > worst ? ms[r] : worst;
            }
            printf("%s{\"range_h\":%d,\"tenants_summed\":%d,\"median_ms\":%.2f,\"max_ms\":%.2f}",
                   ri || all ? "," : "", ranges[ri] / 3600, all ? nt : 1, median(ms, runs), worst);
            free(ms);
        }
    }
    printf("]}\n");
    redis_shared_close_all(rs);
    stats_free(s);
    redis_shared_free(rs);
    event_base_free(base);
    for (int t = 0; t < nt; t++)
        free(tn[t]);
    free(tn);
    redisFree(c);
}

static void bench_flush(const char *url, int nt)
{
    const char *tiers[] = {"small", "large"};
    struct redis_settings rset = {.url = url, .timeout_ms = 2000};
    char err[128], name[32];
    struct redis_shared *rs = redis_shared_new(&rset, err, sizeof err);
    struct stats *s = stats_new(rs, tiers, 2);
    struct event_base *base = event_base_new();
    struct stats_sample x = {.tier = 0, .status = 200, .cache = STATS_CACHE_MISS, .tokens_in = 100, .tokens_out = 50,
                             .cost_nano = 28000, .saved_routing_nano = 9000, .latency_us = 12000};
    double ms[6];
    for (int r = 0; r < 6; r++) { /* run 0 connects and loads the script: not counted */
        for (int t = 0; t < nt; t++) {
            snprintf(name, sizeof name, "flush%d", t);
            x.tenant = name;
            stats_record(s, base, &x);
        }
        struct stats_counters c0, c1;
        stats_get_counters(s, &c0);
        uint64_t t0 = clock_mono_us();
        stats_flush(s, base);
        do {
            event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
            stats_get_counters(s, &c1);
        } while (c1.flushed < c0.flushed + (uint64_t)nt && clock_mono_us() - t0 < 10000000);
        ms[r] = (double)(clock_mono_us() - t0) / 1000.0;
    }
    printf("{\"scenario\":\"flush\",\"tenants\":%d,\"median_ms\":%.2f}\n", nt, median(ms + 1, 5));
    redis_shared_close_all(rs);
    stats_free(s);
    redis_shared_free(rs);
    event_base_free(base);
}

int main(int argc, char **argv)
{
    evthread_use_pthreads();
    const char *what = argc > 1 ? argv[1] : "";
    if (strcmp(what, "record") == 0) {
        bench_record(atol(arg(argc, argv, "--n", "10000000")));
    } else if (strcmp(what, "render") == 0) {
        bench_render(atoi(arg(argc, argv, "--tenants", "10")), atoi(arg(argc, argv, "--tiers", "3")));
    } else if (strcmp(what, "query") == 0) {
        bench_query(arg(argc, argv, "--redis", "redis://127.0.0.1:6379"), atoi(arg(argc, argv, "--tenants", "1")),
                    atoi(arg(argc, argv, "--runs", "11")));
    } else if (strcmp(what, "flush") == 0) {
        bench_flush(arg(argc, argv, "--redis", "redis://127.0.0.1:6379"), atoi(arg(argc, argv, "--tenants", "100")));
    } else {
        fprintf(stderr, "usage: bench_stats record|render|query|flush [options] (see the top of bench_stats.c)\n");
        return 2;
    }
    return 0;
}
