/* Prometheus metrics (gateway/metrics.c): the numbers an operator's
 * Prometheus scrapes must be the requests recorded, in valid exposition:
 * exact series, cumulative histograms whose +Inf equals _count, escaped
 * label values, no label set twice, bounded codes, exact totals under
 * concurrent recording, and `promtool check metrics` clean (when installed).
 */
#include <pthread.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gateway/metrics.h"
#include "policies/policy.h"
#include "tests/unit/test.h"

/* The value of the series whose line starts with `series` + " ", or -1. */
static double value_of(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    }
    return -1;
}

static int count_lines(const char *text, const char *prefix)
{
    int k = 0;
    size_t n = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        k += strncmp(p, prefix, n) == 0;
    return k;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every sample line is `name{labels} value` or `name value`, every name has
 * a TYPE before it, and no series appears twice. */
static int well_formed(const char *text)
{
    char *copy = strdup(text), *save = NULL;
    char **series = calloc(strlen(text) / 8 + 1, sizeof *series);
    size_t ns = 0;
    int ok = 1;
    char typed[64][64];
    int ntyped = 0;
    for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (strncmp(l, "# TYPE ", 7) == 0) {
            sscanf(l + 7, "%63s", typed[ntyped < 63 ? ntyped++ : 63]);
            continue;
        }
        if (l[0] == '#')
            continue;
        char *sp = strrchr(l, ' ');
        if (!sp || sp == l) {
            ok = 0;
            continue;
        }
        char *end;
        strtod(sp + 1, &end);
        if (*end)
            ok = 0;
        *sp = 0;
        series[ns++] = l;
        size_t nl = strcspn(l, "{");
        int found = 0;
        for (int i = 0; i < ntyped; i++) {
            size_t tl = strlen(typed[i]);
            if (strncmp(l, typed[i], tl) == 0 &&
                (nl == tl || strncmp(l + tl, "_bucket", 7) == 0 || strncmp(l + tl, "_sum", 4) == 0 ||
                 strncmp(l + tl, "_count", 6) == 0))
                found = 1;
        }
        if (!found) {
            fprintf(stderr, "no TYPE for %s\n", l);
            ok = 0;
        }
    }
    qsort(series, ns, sizeof *series, cmp_str);
    for (size_t i = 1; i < ns; i++) {
        if (strcmp(series[i - 1], series[i]) == 0) {
            fprintf(stderr, "series twice: %s\n", series[i]);
            ok = 0;
        }
    }
    free(series);
    free(copy);
    return ok;
}

/* promtool check metrics < text: 0 clean, 1 complaints, -1 no promtool. */
static int promtool(const char *text)
{
    if (system("command -v promtool >/dev/null 2>&1") != 0)
        return -1;
    FILE *p = popen("promtool check metrics", "w");
    if (!p)
        return -1;
    fwrite(text, 1, strlen(text), p);
    int st = pclose(p);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}

struct hammer {
    struct metrics *m;
    int tenant;
};

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    for (int i = 0; i < 100000; i++) {
        metrics_request(h->m, h->tenant, i % 2, 200, STATS_CACHE_MISS, 0, 3, 2, 7, 0, 1000 + (uint64_t)i % 5000,
                        0, 50, 0, 1);
        metrics_inflight_add(h->m, 1);
        metrics_inflight_add(h->m, -1);
    }
    return NULL;
}

int main(void)
{
    const char *tenants[] = {"acme", "be\"ta\\x", "acme"}; /* a repeat shares acme's series */
    const char *tiers[] = {"small", "large"};
    const char *replicas[] = {"http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8001"};
    struct metrics *m = metrics_new(tenants, 3, tiers, 2, replicas, 3);

    /* acme/small: 3 x 200 (one a hit, one streamed), a 502; acme/large one
     * escalated 200 with classifier time; be"ta\x: a 429 with no tier; no
     * tenant: a 401; odd statuses go by class. */
    metrics_request(m, 0, 0, 200, STATS_CACHE_MISS, 0, 100, 50, 28000, 0, 120000, 0, 800, 0, 0);
    metrics_request(m, 0, 0, 200, STATS_CACHE_HIT, 0, 100, 50, 0, 28000, 2000, 0, 2000, 0, 0);
    metrics_request(m, 2, 0, 200, STATS_CACHE_MISS, 0, 10, 5, 2800, 1000, 3000000, 40000, 1500, 0, 0);
    metrics_request(m, 0, 0, 502, STATS_CACHE_MISS, 0, 100, 0, 0, 0, 60000, 0, 100, 0, 0);
    metrics_request(m, 0, 1, 200, STATS_CACHE_MISS, 1, 20, 400, 1234567891, 0, 400000000, 0, 300, 42, 5000000);
    metrics_request(m, 1, -1, 429, STATS_CACHE_BYPASS, 0, 0, 0, 0, 0, 300, 0, 300, 0, 0);
    metrics_request(m, -1, -1, 401, STATS_CACHE_BYPASS, 0, 0, 0, 0, 0, 100, 0, 100, 0, 0);
    metrics_request(m, 7, 9, 418, STATS_CACHE_BYPASS, 0, -5, -5, -5, -5, 1, 0, 1, 0, -5); /* out of range: none */
    metrics_request(m, 0, 0, 299, STATS_CACHE_MISS, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0);
    metrics_request(m, 0, 0, 0, STATS_CACHE_MISS, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0);
    metrics_redis_error(m);
    metrics_redis_error(m);
    metrics_upstream_error(m, 1);
    metrics_upstream_error(m, 0);
    metrics_upstream_error(m, 2); /* the same replica as 0 */
    metrics_inflight_add(m, 3);
    metrics_inflight_add(m, -1);
    metrics_set_queue_depth(m, 1, 17);
    /* The policy's decisions: a budget refusal and a rate limit are both
     * 429s above, and apart here. */
    metrics_admission(m, 0, ADMIT_OK);
    metrics_admission(m, 0, ADMIT_OK);
    metrics_admission(m, 1, ADMIT_BUDGET);
    metrics_admission(m, 2, ADMIT_LIMIT_REQUESTS); /* acme again */
    metrics_admission(m, 0, 99);                   /* not a status: not counted */

    size_t len = 0;
    char *t = metrics_render(m, &len);
    CHECK(t && len == strlen(t));
    CHECK(value_of(t, "cascade_requests_total{tenant=\"acme\",tier=\"small\",code=\"200\"}") == 3);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"acme\",tier=\"small\",code=\"502\"}") == 1);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"acme\",tier=\"large\",code=\"200\"}") == 1);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"be\\\"ta\\\\x\",tier=\"none\",code=\"429\"}") == 1);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"none\",tier=\"none\",code=\"401\"}") == 1);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"none\",tier=\"none\",code=\"4xx\"}") == 1);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"acme\",tier=\"small\",code=\"2xx\"}") == 1);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"acme\",tier=\"small\",code=\"other\"}") == 1);
    /* 200 for each configured tenant x tier (2 x 3), 6 more that occurred. */
    CHECK(count_lines(t, "cascade_requests_total{") == 12);
    CHECK(value_of(t, "cascade_admissions_total{tenant=\"acme\",result=\"admitted\"}") == 2);
    CHECK(value_of(t, "cascade_admissions_total{tenant=\"acme\",result=\"requests_limit\"}") == 1);
    CHECK(value_of(t, "cascade_admissions_total{tenant=\"be\\\"ta\\\\x\",result=\"budget\"}") == 1);
    CHECK(value_of(t, "cascade_admissions_total{tenant=\"be\\\"ta\\\\x\",result=\"downgraded\"}") == 0);
    CHECK(count_lines(t, "cascade_admissions_total{") == 12); /* 2 tenants x 6 results, from the start */
    CHECK(value_of(t, "cascade_requests_total{tenant=\"be\\\"ta\\\\x\",tier=\"large\",code=\"200\"}") == 0);
    CHECK(value_of(t, "cascade_cache_total{tenant=\"be\\\"ta\\\\x\",tier=\"small\",result=\"hit\"}") == 0);
    CHECK(value_of(t, "cascade_cost_usd_total{tenant=\"acme\",tier=\"none\"}") == 0);
    CHECK(count_lines(t, "cascade_cache_total{tenant=\"none\"") == 1); /* only what happened */
    /* Durations: each configured tenant x tier (6), and none/none observed. */
    CHECK(count_lines(t, "cascade_request_duration_seconds_count{") == 7);
    CHECK(value_of(t, "cascade_request_duration_seconds_bucket{tenant=\"acme\",tier=\"none\",le=\"+Inf\"}") == 0);
    CHECK(count_lines(t, "cascade_gateway_overhead_seconds_count{") == 4); /* only observed ones */
    CHECK(value_of(t, "cascade_cache_total{tenant=\"acme\",tier=\"small\",result=\"hit\"}") == 1);
    CHECK(value_of(t, "cascade_cache_total{tenant=\"acme\",tier=\"small\",result=\"miss\"}") == 5);
    CHECK(value_of(t, "cascade_cache_total{tenant=\"none\",tier=\"none\",result=\"bypass\"}") == 2);
    CHECK(value_of(t, "cascade_tokens_total{tenant=\"acme\",tier=\"small\",direction=\"in\"}") == 310);
    CHECK(value_of(t, "cascade_tokens_total{tenant=\"acme\",tier=\"large\",direction=\"out\"}") == 400);
    CHECK(count_lines(t, "cascade_tokens_total{tenant=\"none\"") == 0); /* negatives counted as 0 */
    CHECK(strstr(t, "cascade_cost_usd_total{tenant=\"acme\",tier=\"small\"} 0.000030800\n") != NULL);
    CHECK(strstr(t, "cascade_cost_usd_total{tenant=\"acme\",tier=\"large\"} 1.234567891\n") != NULL);
    CHECK(strstr(t, "cascade_saved_usd_total{tenant=\"acme\",tier=\"small\",source=\"cache\"} 0.000028000\n") != NULL);
    CHECK(strstr(t, "cascade_saved_usd_total{tenant=\"acme\",tier=\"small\",source=\"routing\"} 0.000001000\n") != NULL);
    /* Routing's loss is its own counter (a counter never goes down), at 0
     * for every configured label pair from the start; a negative counts 0. */
    CHECK(strstr(t, "cascade_routing_loss_usd_total{tenant=\"acme\",tier=\"large\"} 0.005000000\n") != NULL);
    CHECK(value_of(t, "cascade_routing_loss_usd_total{tenant=\"acme\",tier=\"small\"}") == 0);
    CHECK(count_lines(t, "cascade_routing_loss_usd_total{tenant=\"none\"") == 0);
    CHECK(strstr(t, "# TYPE cascade_routing_loss_usd_total counter\n") != NULL);
    CHECK(value_of(t, "cascade_escalations_total{tenant=\"acme\",tier=\"large\"}") == 1);
    CHECK(value_of(t, "cascade_redis_errors_total") == 2);
    CHECK(value_of(t, "cascade_upstream_errors_total{replica=\"http://127.0.0.1:8001\"}") == 2);
    CHECK(value_of(t, "cascade_upstream_errors_total{replica=\"http://127.0.0.1:8002\"}") == 1);
    CHECK(count_lines(t, "cascade_upstream_errors_total{") == 2);
    CHECK(value_of(t, "cascade_inflight_requests") == 2);
    CHECK(value_of(t, "cascade_engine_queue_depth{tier=\"large\"}") == 17);
    CHECK(value_of(t, "cascade_engine_queue_depth{tier=\"small\"}") == 0);

    /* Histograms: cumulative, +Inf == _count, _sum in seconds. acme/small
     * durations: 0.12, 0.002, 3, 0.06, 1e-6, 1e-6 s. */
    CHECK(value_of(t, "cascade_request_duration_seconds_bucket{tenant=\"acme\",tier=\"small\",le=\"0.005\"}") == 3);
    CHECK(value_of(t, "cascade_request_duration_seconds_bucket{tenant=\"acme\",tier=\"small\",le=\"0.1\"}") == 4);
    CHECK(value_of(t, "cascade_request_duration_seconds_bucket{tenant=\"acme\",tier=\"small\",le=\"0.25\"}") == 5);
    CHECK(value_of(t, "cascade_request_duration_seconds_bucket{tenant=\"acme\",tier=\"small\",le=\"2.5\"}") == 5);
    CHECK(value_of(t, "cascade_request_duration_seconds_bucket{tenant=\"acme\",tier=\"small\",le=\"5\"}") == 6);
    CHECK(value_of(t, "cascade_request_duration_seconds_bucket{tenant=\"acme\",tier=\"small\",le=\"+Inf\"}") == 6);
    CHECK(value_of(t, "cascade_request_duration_seconds_count{tenant=\"acme\",tier=\"small\"}") == 6);
    CHECK(value_of(t, "cascade_request_duration_seconds_sum{tenant=\"acme\",tier=\"small\"}") > 3.1819);
    CHECK(value_of(t, "cascade_request_duration_seconds_sum{tenant=\"acme\",tier=\"small\"}") < 3.1821);
    /* 400 s is past the last bound: only +Inf holds it. */
    CHECK(value_of(t, "cascade_request_duration_seconds_bucket{tenant=\"acme\",tier=\"large\",le=\"300\"}") == 0);
    CHECK(value_of(t, "cascade_request_duration_seconds_bucket{tenant=\"acme\",tier=\"large\",le=\"+Inf\"}") == 1);
    CHECK(value_of(t, "cascade_ttft_seconds_count{tenant=\"acme\",tier=\"small\"}") == 1);
    CHECK(value_of(t, "cascade_ttft_seconds_bucket{tenant=\"acme\",tier=\"small\",le=\"0.025\"}") == 0);
    CHECK(value_of(t, "cascade_ttft_seconds_bucket{tenant=\"acme\",tier=\"small\",le=\"0.05\"}") == 1);
    CHECK(count_lines(t, "cascade_ttft_seconds_count{") == 1); /* only streamed requests */
    CHECK(value_of(t, "cascade_gateway_overhead_seconds_bucket{tenant=\"acme\",tier=\"small\",le=\"0.001\"}") == 4);
    CHECK(value_of(t, "cascade_classifier_seconds_bucket{tenant=\"acme\",le=\"0.00005\"}") == 1);
    CHECK(value_of(t, "cascade_classifier_seconds_bucket{tenant=\"acme\",le=\"0.000025\"}") == 0);
    CHECK(count_lines(t, "cascade_classifier_seconds_count{") == 1);
    CHECK(strstr(t, "# TYPE cascade_request_duration_seconds histogram\n") != NULL);
    CHECK(strstr(t, "# TYPE cascade_requests_total counter\n") != NULL);
    CHECK(strstr(t, "# TYPE cascade_inflight_requests gauge\n") != NULL);
    CHECK(well_formed(t));
    int pt = promtool(t);
    if (pt < 0)
        TEST_SKIP("promtool check: promtool is not installed (Debian package prometheus)");
    else
        CHECK(pt == 0);
    free(t);
    metrics_free(m);
    metrics_free(NULL);

    /* A tenant named "none" keeps its name; "no tenant" steps aside. */
    const char *odd[] = {"none"};
    m = metrics_new(odd, 1, odd, 1, NULL, 0);
    metrics_request(m, 0, 0, 200, STATS_CACHE_MISS, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0);
    metrics_request(m, -1, -1, 401, STATS_CACHE_BYPASS, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0);
    metrics_upstream_error(m, 0); /* no replicas configured: "none" */
    t = metrics_render(m, NULL);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"none\",tier=\"none\",code=\"200\"}") == 1);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"_none\",tier=\"_none\",code=\"401\"}") == 1);
    CHECK(value_of(t, "cascade_upstream_errors_total{replica=\"none\"}") == 1);
    CHECK(well_formed(t));
    if (pt >= 0)
        CHECK(promtool(t) == 0);
    free(t);
    metrics_free(m);

    /* Exact under concurrent recording from four threads. */
    const char *two[] = {"a", "b"};
    m = metrics_new(two, 2, tiers, 2, NULL, 0);
    struct hammer h[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        h[i] = (struct hammer){m, i % 2};
        pthread_create(&th[i], NULL, hammer_main, &h[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    t = metrics_render(m, NULL);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"a\",tier=\"small\",code=\"200\"}") == 100000);
    CHECK(value_of(t, "cascade_requests_total{tenant=\"b\",tier=\"large\",code=\"200\"}") == 100000);
    CHECK(value_of(t, "cascade_tokens_total{tenant=\"a\",tier=\"small\",direction=\"in\"}") == 300000);
    CHECK(strstr(t, "cascade_routing_loss_usd_total{tenant=\"a\",tier=\"small\"} 0.000100000\n") != NULL);
    CHECK(value_of(t, "cascade_request_duration_seconds_count{tenant=\"b\",tier=\"small\"}") == 100000);
    CHECK(value_of(t, "cascade_inflight_requests") == 0);
    free(t);
    metrics_free(m);
    TEST_MAIN_END();
}
