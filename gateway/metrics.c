/* metrics.c: see metrics.h.
 *
 * Layout: one `cell` of counters per (tenant, tier) label pair, in a flat
 * array indexed by (tenant + 1) * (n_tiers + 1) + (tier + 1), so slot 0 of
 * each axis is "none". Histograms keep one counter per bucket (not
 * cumulative, so an observation is one add) and the sum in microseconds;
 * the render makes them cumulative.
 *
 * Counters of every configured tenant and tier are printed from the start,
 * at 0: a series that first appears with its value already counted loses
 * that first increment to rate() and increase(). So is the request duration
 * histogram (the headline latency); the other histograms (up to 18 lines
 * per label set) and the "none" tenant appear with their first observation,
 * which keeps the page smaller for large configs.
 */
#include "gateway/metrics.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/mem.h"
#include "engines/remote/remote.h" /* enum remote_outcome and its names */
#include "policies/judge.h"         /* the cascade's verdicts and reasons */
#include "policies/policy.h"        /* enum admit_status */
#include "policies/routing.h"         /* enum route_kind and its names */

typedef atomic_uint_fast64_t ctr;

/* Status codes that get a series of their own; others go by class, so a
 * client sending odd requests cannot mint new series. */
static const int known_codes[] = {200, 400, 401, 402, 403, 404, 405, 408, 409, 413,
                                  422, 429, 431, 499, 500, 501, 502, 503, 504};
#define N_KNOWN (sizeof known_codes / sizeof *known_codes)
#define N_CODES (N_KNOWN + 6) /* + 1xx..5xx + "other" */

enum { DIR_IN, DIR_OUT };
/* cascade_admissions_total's result label, indexed by enum admit_status. */
static const char *const admit_names[] = {"admitted",     "downgraded",        "requests_limit",
                                          "tokens_limit", "concurrency_limit", "budget"};
#define N_ADMIT ((int)(sizeof admit_names / sizeof *admit_names))
_Static_assert(sizeof admit_names / sizeof *admit_names == ADMIT_BUDGET + 1, "a name for every enum admit_status");
enum { SRC_CACHE, SRC_ROUTING };

/* Histogram bucket bounds: microseconds, and how `le` prints them (kept as
 * text so the label is exactly the bound, never a float's rounding). Request
 * times span a cache hit (~1 ms) to a long generation (minutes); overhead
 * and classifier times are the gateway's own, from 10 us up. */
struct bound {
    uint64_t us;
    const char *le;
};

static const struct bound latency_bounds[] = {
    {5000, "0.005"}, {10000, "0.01"}, {25000, "0.025"}, {50000, "0.05"}, {100000, "0.1"},
    {250000, "0.25"}, {500000, "0.5"}, {1000000, "1"}, {2500000, "2.5"}, {5000000, "5"},
    {10000000, "10"}, {30000000, "30"}, {60000000, "60"}, {120000000, "120"}, {300000000, "300"},
};
static const struct bound overhead_bounds[] = {
    {100, "0.0001"}, {250, "0.00025"}, {500, "0.0005"}, {1000, "0.001"}, {2500, "0.0025"}, {5000, "0.005"},
    {10000, "0.01"}, {25000, "0.025"}, {50000, "0.05"}, {100000, "0.1"}, {250000, "0.25"}, {1000000, "1"},
};
static const struct bound classifier_bounds[] = {
    {10, "0.00001"}, {25, "0.000025"}, {50, "0.00005"}, {100, "0.0001"}, {250, "0.00025"}, {500, "0.0005"},
    {1000, "0.001"}, {2500, "0.0025"}, {5000, "0.005"}, {10000, "0.01"}, {50000, "0.05"},
};
#define COUNT(a) (sizeof(a) / sizeof *(a))
#define MAX_BOUNDS 15

struct hist {
    ctr bucket[MAX_BOUNDS + 1];     /* the last one is +Inf */
    ctr sum_us;
};

struct cell {
    ctr requests[N_CODES];
    ctr cache[3];                   /* by enum stats_cache */
    ctr tokens[2];
    ctr cost_nano;
    ctr saved_nano[2];
    ctr routing_loss_nano;          /* its own counter: counters never go down */
    ctr escalations;
    struct hist duration, ttft, overhead;
};

/* One label axis: values from the config, slot 0 being "none". */
struct axis {
    size_t n;                       /* slots: 1 + the config's count */
    char **label;                   /* escaped for a label value */
    size_t *canon;                  /* the slot whose series this slot shares */
};

struct metrics {
    struct axis tenant, tier, replica;
    struct cell *cells;             /* tenant.n x tier.n */
    struct hist *classifier;        /* per tenant slot */
    struct judged {                 /* per tenant slot: the cascade's judgements */
        ctr n[JUDGE_N_VERDICTS][JUDGE_N_REASONS];
    } *judged;
    ctr (*routes)[ROUTE_N_KINDS];   /* per tenant slot: where "auto" sent requests */
    ctr (*admissions)[N_ADMIT];     /* per tenant slot: by enum admit_status */
    ctr redis_errors;
    ctr *upstream_errors;           /* per replica slot */
    /* Per replica slot too, but a replica's series carry its tier, so two
     * slots share one only when both URL and tier match (up_canon). */
    struct upstream {
        int tier;                   /* tier slot */
        size_t canon;
        ctr attempts[REMOTE_N_OUTCOMES];
        ctr retries;
        atomic_int ejected;
    } *up;
    atomic_int_fast64_t inflight;
    atomic_int_fast64_t *queue_depth;   /* per tier slot */
};

/* ---- construction ----------------------------------------------------------- */

/* The escaped form of a label value: \ " and newline are the only escapes. */
static char *escape_label(const char *s)
{
    char *out = xmalloc(2 * strlen(s) + 1), *o = out;
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') {
            *o++ = '\\';
            *o++ = *s;
        } else if (*s == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
    return out;
}

static void axis_init(struct axis *a, const char *const *names, size_t n)
{
    a->n = n + 1;
    a->label = xcalloc(a->n, sizeof *a->label);
    a->canon = xcalloc(a->n, sizeof *a->canon);
    /* "none" must not be the name of a real one, or two series would share
     * a label set: lengthen it until it is free. */
    char none[64] = "none";
    for (int clash = 1; clash && strlen(none) < sizeof none - 2;) {
        clash = 0;
        for (size_t i = 0; i < n; i++)
            clash |= strcmp(names[i], none) == 0;
        if (clash) {
            memmove(none + 1, none, strlen(none) + 1);
            none[0] = '_';
        }
    }
    a->label[0] = xstrdup(none);
    for (size_t i = 0; i < n; i++) {
        a->label[i + 1] = escape_label(names[i]);
        a->canon[i + 1] = i + 1;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(names[j], names[i]) == 0) {
                a->canon[i + 1] = j + 1;
                break;
            }
        }
    }
}

static void axis_free(struct axis *a)
{
    for (size_t i = 0; a->label && i < a->n; i++)
        free(a->label[i]);
    free(a->label);
    free(a->canon);
}

/* Slot of index i (-1 or out of range: none), through duplicates. */
static size_t axis_slot(const struct axis *a, int i)
{
    if (i < 0 || (size_t)i + 1 >= a->n)
        return 0;
    return a->canon[i + 1];
}

struct metrics *metrics_new(const char *const *tenants, size_t n_tenants, const char *const *tiers, size_t n_tiers,
                            const char *const *replicas, size_t n_replicas)
{
    struct metrics *m = xcalloc(1, sizeof *m);
    axis_init(&m->tenant, tenants, n_tenants);
    axis_init(&m->tier, tiers, n_tiers);
    axis_init(&m->replica, replicas, n_replicas);
    /* Zeroed memory is a valid zero for these lock-free atomics. */
    m->cells = xcalloc(m->tenant.n * m->tier.n, sizeof *m->cells);
    m->classifier = xcalloc(m->tenant.n, sizeof *m->classifier);
    m->judged = xcalloc(m->tenant.n, sizeof *m->judged);
    m->routes = xcalloc(m->tenant.n, sizeof *m->routes);
    m->admissions = xcalloc(m->tenant.n, sizeof *m->admissions);
    m->upstream_errors = xcalloc(m->replica.n, sizeof *m->upstream_errors);
    m->up = xcalloc(m->replica.n, sizeof *m->up);
    /* A URL listed twice is one replica until metrics_replica_tier says
     * which tier each belongs to: one series, not two with equal labels. */
    for (size_t i = 0; i < m->replica.n; i++)
        m->up[i].canon = m->replica.canon[i];
    m->queue_depth = xcalloc(m->tier.n, sizeof *m->queue_depth);
    return m;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    axis_free(&m->tenant);
    axis_free(&m->tier);
    axis_free(&m->replica);
    free(m->cells);
    free(m->classifier);
    free(m->judged);
    free(m->routes);
    free(m->admissions);
    free(m->upstream_errors);
    free(m->up);
    free(m->queue_depth);
    free(m);
}

/* ---- recording --------------------------------------------------------------- */

static void add(ctr *c, uint64_t v)
{
    atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static uint64_t nonneg(int64_t v)
{
    return v > 0 ? (uint64_t)v : 0;
}

static size_t code_slot(int status)
{
    for (size_t i = 0; i < N_KNOWN; i++)
        if (known_codes[i] == status)
            return i;
    if (status >= 100 && status <= 599)
        return N_KNOWN + (size_t)(status / 100 - 1);
    return N_KNOWN + 5;
}

/* le semantics: a value equal to a bound falls in that bound's bucket. */
static void observe(struct hist *h, const struct bound *b, size_t nb, uint64_t us)
{
    size_t i = 0;
    while (i < nb && us > b[i].us)
        i++;
    add(&h->bucket[i], 1);
    add(&h->sum_us, us);
}

void metrics_request(struct metrics *m, int tenant, int tier, int status, enum stats_cache cache, int escalated,
                     int64_t tokens_in, int64_t tokens_out, int64_t cost_nano, int64_t saved_nano, uint64_t total_us,
                     uint64_t ttft_us, uint64_t overhead_us, uint64_t classifier_us, int64_t routing_loss_nano)
{
    if (!m)
        return;
    size_t ts = axis_slot(&m->tenant, tenant);
    struct cell *c = &m->cells[ts * m->tier.n + axis_slot(&m->tier, tier)];
    add(&c->requests[code_slot(status)], 1);
    if ((unsigned)cache <= STATS_CACHE_BYPASS)
        add(&c->cache[cache], 1);
    add(&c->tokens[DIR_IN], nonneg(tokens_in));
    add(&c->tokens[DIR_OUT], nonneg(tokens_out));
    add(&c->cost_nano, nonneg(cost_nano));
    /* One saving per request: a hit saved its generation; anything else can
     * only have saved by routing to a cheaper tier. */
    add(&c->saved_nano[cache == STATS_CACHE_HIT ? SRC_CACHE : SRC_ROUTING], nonneg(saved_nano));
    add(&c->routing_loss_nano, nonneg(routing_loss_nano));
    if (escalated)
        add(&c->escalations, 1);
    observe(&c->duration, latency_bounds, COUNT(latency_bounds), total_us);
    if (ttft_us)
        observe(&c->ttft, latency_bounds, COUNT(latency_bounds), ttft_us);
    observe(&c->overhead, overhead_bounds, COUNT(overhead_bounds), overhead_us);
    if (classifier_us)
        observe(&m->classifier[ts], classifier_bounds, COUNT(classifier_bounds), classifier_us);
}

void metrics_admission(struct metrics *m, int tenant, int status)
{
    if (m && status >= 0 && status < N_ADMIT)
        add(&m->admissions[axis_slot(&m->tenant, tenant)][status], 1);
}

void metrics_route(struct metrics *m, int tenant, int kind)
{
    if (m && kind >= 0 && kind < ROUTE_N_KINDS)
        add(&m->routes[axis_slot(&m->tenant, tenant)][kind], 1);
}

void metrics_judgement(struct metrics *m, int tenant, int verdict, int reason)
{
    if (!m || !judge_reason_possible((enum judge_verdict)verdict, (enum judge_reason)reason))
        return;
    add(&m->judged[axis_slot(&m->tenant, tenant)].n[verdict][reason], 1);
}

void metrics_redis_error(struct metrics *m)
{
    if (m)
        add(&m->redis_errors, 1);
}

void metrics_upstream_error(struct metrics *m, int replica)
{
    if (m)
        add(&m->upstream_errors[axis_slot(&m->replica, replica)], 1);
}

void metrics_replica_tier(struct metrics *m, int replica, int tier)
{
    if (!m || replica < 0 || (size_t)replica + 1 >= m->replica.n)
        return;
    size_t s = (size_t)replica + 1;
    m->up[s].tier = (int)axis_slot(&m->tier, tier);
    m->up[s].canon = s;
    for (size_t j = 1; j < s; j++) {
        if (m->up[j].canon == j && m->up[j].tier == m->up[s].tier && strcmp(m->replica.label[j], m->replica.label[s]) == 0) {
            m->up[s].canon = j;
            break;
        }
    }
}

static struct upstream *upstream_of(struct metrics *m, int replica)
{
    size_t s = replica < 0 || (size_t)replica + 1 >= m->replica.n ? 0 : (size_t)replica + 1;
    return &m->up[m->up[s].canon];
}

void metrics_upstream_attempt(struct metrics *m, int replica, int outcome, int retried)
{
    if (!m || outcome < 0 || outcome >= REMOTE_N_OUTCOMES)
        return;
    struct upstream *u = upstream_of(m, replica);
    add(&u->attempts[outcome], 1);
    if (retried)
        add(&u->retries, 1);
}

void metrics_upstream_ejected(struct metrics *m, int replica, int ejected)
{
    if (m)
        atomic_store_explicit(&upstream_of(m, replica)->ejected, !!ejected, memory_order_relaxed);
}

void metrics_inflight_add(struct metrics *m, int delta)
{
    if (m)
        atomic_fetch_add_explicit(&m->inflight, delta, memory_order_relaxed);
}

void metrics_set_queue_depth(struct metrics *m, int tier, int64_t depth)
{
    if (m)
        atomic_store_explicit(&m->queue_depth[axis_slot(&m->tier, tier)], depth, memory_order_relaxed);
}

/* ---- rendering ------------------------------------------------------------------ */

struct buf {
    char *p;
    size_t n, cap;
};

/* Append to the exposition, growing it; vsnprintf tells how much it needs. */
static void bprintf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(struct buf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k >= 0 && (size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        b->cap = 2 * b->cap + (k > 0 ? (size_t)k : 0);
        b->p = xrealloc(b->p, b->cap);
    }
}

static uint64_t get(ctr *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
    bprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The label pairs of a (tenant, tier) cell, e.g. tenant="acme",tier="small". */
static void pair_labels(const struct metrics *m, size_t ts, size_t ks, char *out, size_t len)
{
    snprintf(out, len, "tenant=\"%s\",tier=\"%s\"", m->tenant.label[ts], m->tier.label[ks]);
}

/* Every canonical (tenant, tier) cell, with its labels. */
#define FOR_CELLS(m, ts, ks, c, lab)                                                                 \
    for (size_t ts = 0; ts < (m)->tenant.n; ts++)                                                    \
        for (size_t ks = 0; ks < (m)->tier.n; ks++)                                                  \
            if ((m)->tenant.canon[ts] == ts && (m)->tier.canon[ks] == ks &&                          \
                ((c) = &(m)->cells[ts * (m)->tier.n + ks], pair_labels((m), ts, ks, lab, sizeof lab), 1))

/* One histogram's series; with none observed, only when `always`. */
static void histogram(struct buf *b, const char *name, const char *labels, struct hist *h, const struct bound *bd,
                      size_t nb, int always)
{
    uint64_t v[MAX_BOUNDS + 1], total = 0;
    for (size_t i = 0; i <= nb; i++)
        total += v[i] = get(&h->bucket[i]);
    if (!total && !always)
        return;
    uint64_t cum = 0;
    for (size_t i = 0; i < nb; i++) {
        cum += v[i];
        bprintf(b, "%s_bucket{%s,le=\"%s\"} %llu\n", name, labels, bd[i].le, (unsigned long long)cum);
    }
    bprintf(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, (unsigned long long)total);
    bprintf(b, "%s_sum{%s} %.6f\n", name, labels, (double)get(&h->sum_us) / 1e6);
    bprintf(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)total);
}

/* Families in a fixed order, each HELP and TYPE once even with no series,
 * so a dashboard's queries always name metrics that exist. Slot 0 of the
 * tenant axis ("none") is printed only when it counted something. */
char *metrics_render(struct metrics *m, size_t *len)
{
    struct buf b = {xmalloc(16384), 0, 16384};
    char lab[600];
    struct cell *c;
    static const char *const cache_names[3] = {"hit", "miss", "bypass"};

    family(&b, "cascade_requests_total", "counter", "Requests answered, by tenant, tier and HTTP status.");
    FOR_CELLS(m, ts, ks, c, lab) {
        for (size_t i = 0; i < N_CODES; i++) {
            uint64_t v = get(&c->requests[i]);
            if (!v && !(i == 0 && ts)) /* 200 is always there for a configured tenant */
                continue;
            char code[8];
            if (i < N_KNOWN)
                snprintf(code, sizeof code, "%d", known_codes[i]);
            else if (i < N_KNOWN + 5)
                snprintf(code, sizeof code, "%zuxx", i - N_KNOWN + 1);
            else
                snprintf(code, sizeof code, "other");
            bprintf(&b, "cascade_requests_total{%s,code=\"%s\"} %llu\n", lab, code, (unsigned long long)v);
        }
    }
    family(&b, "cascade_cache_total", "counter", "Cache lookups by result: hit, miss, or bypass (not cacheable, or Redis down).");
    FOR_CELLS(m, ts, ks, c, lab) {
        for (int i = 0; i < 3; i++) {
            uint64_t v = get(&c->cache[i]);
            if (v || ts)
                bprintf(&b, "cascade_cache_total{%s,result=\"%s\"} %llu\n", lab, cache_names[i],
                        (unsigned long long)v);
        }
    }
    family(&b, "cascade_tokens_total", "counter", "Tokens by direction: in (prompt) and out (completion).");
    FOR_CELLS(m, ts, ks, c, lab) {
        for (int i = 0; i < 2; i++) {
            uint64_t v = get(&c->tokens[i]);
            if (v || ts)
                bprintf(&b, "cascade_tokens_total{%s,direction=\"%s\"} %llu\n", lab, i == DIR_IN ? "in" : "out",
                        (unsigned long long)v);
        }
    }
    family(&b, "cascade_cost_usd_total", "counter", "What the answers cost, USD.");
    FOR_CELLS(m, ts, ks, c, lab) {
        uint64_t v = get(&c->cost_nano);
        if (v || ts)
            bprintf(&b, "cascade_cost_usd_total{%s} %.9f\n", lab, (double)v / 1e9);
    }
    family(&b, "cascade_saved_usd_total", "counter",
           "Savings, USD: source=cache (cache hits) or routing (routing's gain over the baseline tier; "
           "net routing savings = this minus cascade_routing_loss_usd_total).");
    FOR_CELLS(m, ts, ks, c, lab) {
        for (int i = 0; i < 2; i++) {
            uint64_t v = get(&c->saved_nano[i]);
            if (v || ts)
                bprintf(&b, "cascade_saved_usd_total{%s,source=\"%s\"} %.9f\n", lab, i == SRC_CACHE ? "cache" : "routing",
                        (double)v / 1e9);
        }
    }
    family(&b, "cascade_routing_loss_usd_total", "counter",
           "Routing's loss against the baseline tier, USD (escalations, routes above it); "
           "net routing savings = cascade_saved_usd_total with source=routing, minus this.");
    FOR_CELLS(m, ts, ks, c, lab) {
        uint64_t v = get(&c->routing_loss_nano);
        if (v || ts)
            bprintf(&b, "cascade_routing_loss_usd_total{%s} %.9f\n", lab, (double)v / 1e9);
    }
    family(&b, "cascade_escalations_total", "counter", "Requests escalated to a larger tier; tier is the one that answered.");
    FOR_CELLS(m, ts, ks, c, lab) {
        uint64_t v = get(&c->escalations);
        if (v || ts)
            bprintf(&b, "cascade_escalations_total{%s} %llu\n", lab, (unsigned long long)v);
    }
    family(&b, "cascade_judgements_total", "counter",
           "The cascade's verdicts on cheap answers (keep or escalate), by the reason that decided.");
    for (size_t ts = 0; ts < m->tenant.n; ts++) {
        if (m->tenant.canon[ts] != ts)
            continue;
        for (int v = 0; v < JUDGE_N_VERDICTS; v++)
            for (int r = 0; r < JUDGE_N_REASONS; r++) {
                if (!judge_reason_possible((enum judge_verdict)v, (enum judge_reason)r))
                    continue;
                uint64_t n = get(&m->judged[ts].n[v][r]);
                if (n || ts)
                    bprintf(&b, "cascade_judgements_total{tenant=\"%s\",verdict=\"%s\",reason=\"%s\"} %llu\n",
                            m->tenant.label[ts], judge_verdict_name((enum judge_verdict)v),
                            judge_reason_name((enum judge_reason)r), (unsigned long long)n);
            }
    }
    family(&b, "cascade_redis_errors_total", "counter", "Redis commands that failed or timed out.");
    bprintf(&b, "cascade_redis_errors_total %llu\n", (unsigned long long)get(&m->redis_errors));
    family(&b, "cascade_upstream_errors_total", "counter", "Failed calls to an engine replica.");
    for (size_t r = 1; r < m->replica.n; r++)
        if (m->replica.canon[r] == r)
            bprintf(&b, "cascade_upstream_errors_total{replica=\"%s\"} %llu\n", m->replica.label[r],
                    (unsigned long long)get(&m->upstream_errors[r]));
    /* Errors from a replica the config did not list (or -1): one series. */
    if (get(&m->upstream_errors[0]))
        bprintf(&b, "cascade_upstream_errors_total{replica=\"%s\"} %llu\n", m->replica.label[0],
                (unsigned long long)get(&m->upstream_errors[0]));
    /* Slot 0 (a replica the config did not list) only once it counted. */
    family(&b, "cascade_upstream_attempts_total", "counter", "Requests sent to an engine replica, retries included, by outcome.");
    for (size_t r = 0; r < m->replica.n; r++) {
        struct upstream *u = &m->up[r];
        if (u->canon != r)
            continue;
        for (int o = 0; o < REMOTE_N_OUTCOMES; o++)
            if (r || get(&u->attempts[o]))
                bprintf(&b, "cascade_upstream_attempts_total{tier=\"%s\",replica=\"%s\",outcome=\"%s\"} %llu\n",
                        m->tier.label[u->tier], m->replica.label[r], remote_outcome_name((enum remote_outcome)o),
                        (unsigned long long)get(&u->attempts[o]));
    }
    family(&b, "cascade_upstream_retries_total", "counter", "Failed attempts on a replica that another attempt followed.");
    for (size_t r = 0; r < m->replica.n; r++)
        if (m->up[r].canon == r && (r || get(&m->up[r].retries)))
            bprintf(&b, "cascade_upstream_retries_total{tier=\"%s\",replica=\"%s\"} %llu\n", m->tier.label[m->up[r].tier],
                    m->replica.label[r], (unsigned long long)get(&m->up[r].retries));
    family(&b, "cascade_upstream_ejected", "gauge", "1 while outlier detection keeps the replica out of rotation.");
    for (size_t r = 1; r < m->replica.n; r++)
        if (m->up[r].canon == r)
            bprintf(&b, "cascade_upstream_ejected{tier=\"%s\",replica=\"%s\"} %d\n", m->tier.label[m->up[r].tier],
                    m->replica.label[r], atomic_load_explicit(&m->up[r].ejected, memory_order_relaxed));

    family(&b, "cascade_request_duration_seconds", "histogram", "Whole request time, first byte in to last byte out.");
    FOR_CELLS(m, ts, ks, c, lab)
        histogram(&b, "cascade_request_duration_seconds", lab, &c->duration, latency_bounds, COUNT(latency_bounds),
                  ts != 0);
    family(&b, "cascade_ttft_seconds", "histogram", "Time to the first token of streamed answers.");
    FOR_CELLS(m, ts, ks, c, lab)
        histogram(&b, "cascade_ttft_seconds", lab, &c->ttft, latency_bounds, COUNT(latency_bounds), 0);
    family(&b, "cascade_gateway_overhead_seconds", "histogram", "Request time minus engine time: what the gateway adds.");
    FOR_CELLS(m, ts, ks, c, lab)
        histogram(&b, "cascade_gateway_overhead_seconds", lab, &c->overhead, overhead_bounds, COUNT(overhead_bounds), 0);
    family(&b, "cascade_classifier_seconds", "histogram", "Time to score a request's difficulty.");
    for (size_t ts = 0; ts < m->tenant.n; ts++) {
        if (m->tenant.canon[ts] != ts)
            continue;
        snprintf(lab, sizeof lab, "tenant=\"%s\"", m->tenant.label[ts]);
        histogram(&b, "cascade_classifier_seconds", lab, &m->classifier[ts], classifier_bounds,
                  COUNT(classifier_bounds), 0);
    }
    family(&b, "cascade_routes_total", "counter",
           "Requests \"auto\" sent to an engine, by the band the routing score fell in: small, medium, cascade "
           "(the cheap tier first; escalations are cascade_escalations_total) or large. "
           "Realised share of a band = its count / the tenant's sum.");
    for (size_t ts = 0; ts < m->tenant.n; ts++) {
        if (m->tenant.canon[ts] != ts)
            continue;
        for (int k = 0; k < ROUTE_N_KINDS; k++) {
            uint64_t v = get(&m->routes[ts][k]);
            if (v || ts)
                bprintf(&b, "cascade_routes_total{tenant=\"%s\",route=\"%s\"} %llu\n", m->tenant.label[ts],
                        routing_kind_name((enum route_kind)k), (unsigned long long)v);
        }
    }

    family(&b, "cascade_admissions_total", "counter",
           "The cost policy's decision per request: admitted, downgraded (to the cheapest tier by the budget), "
           "or refused by requests_limit, tokens_limit, concurrency_limit or budget.");
    for (size_t ts = 0; ts < m->tenant.n; ts++) {
        if (m->tenant.canon[ts] != ts)
            continue;
        for (int k = 0; k < N_ADMIT; k++) {
            uint64_t v = get(&m->admissions[ts][k]);
            if (v || ts)
                bprintf(&b, "cascade_admissions_total{tenant=\"%s\",result=\"%s\"} %llu\n", m->tenant.label[ts],
                        admit_names[k], (unsigned long long)v);
        }
    }

    family(&b, "cascade_inflight_requests", "gauge", "Requests being served now.");
    bprintf(&b, "cascade_inflight_requests %lld\n",
            (long long)atomic_load_explicit(&m->inflight, memory_order_relaxed));
    family(&b, "cascade_engine_queue_depth", "gauge", "Requests waiting in a tier's engine queue.");
    for (size_t k = 1; k < m->tier.n; k++)
        if (m->tier.canon[k] == k)
            bprintf(&b, "cascade_engine_queue_depth{tier=\"%s\"} %lld\n", m->tier.label[k],
                    (long long)atomic_load_explicit(&m->queue_depth[k], memory_order_relaxed));
    if (len)
        *len = b.n;
    return b.p;
}
