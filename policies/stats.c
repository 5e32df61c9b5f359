/* stats.c: see stats.h.
 *
 * Data flow: stats_record -> the worker's tacc (one per tenant) -> a `live`
 * list of minute cells. Each tick cuts the oldest live cells into `pending`,
 * gives the batch a sequence number and sends it (Lua APPLY_LUA). Pending is
 * freed only when Redis answers the script; on a timeout or an outage the
 * same batch, same number, is sent again at the next tick, and the script
 * skips it if it was applied already. So a tenant has at most one batch out,
 * and new samples never join a batch already sent. Without Redis, the tick
 * adds live cells straight into a 48 h ring in memory.
 *
 * Reading (READ_LUA) sums the minutes of each point inside Redis, one call per
 * tenant and 4 hours, one call after the other: a 24 h range moves 60 short
 * lists, not 1440 hashes; a call keeps Redis busy for about 1.5 ms (2.4 ms
 * at most on a quiet machine: bench/stats/results.md), and a long "all
 * tenants" query never sits in the worker's pipeline ahead of the request
 * path's cache lookups.
 */
#include "policies/stats.h"

#include <event2/event.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/redis.h"
#include "policies/judge.h"
#include "policies/price.h"
#include "policies/routing.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/mem.h"

#define MAX_WORKERS 256
#define MAX_CELLS_PER_WORKER 4096       /* tenant-minutes held while Redis is away */
#define MAX_BATCH_CELLS 128             /* minutes of one tenant in one script call */
#define MAX_ERROR_REPLIES 30            /* a batch Redis keeps refusing is dropped */
#define RING_MINUTES (STATS_RETENTION_S / 60)
#define TICK_MS 1000
#define READ_CHUNK_MINUTES 240          /* per read call: bounds how long one blocks Redis */

/* The fixed fields of a cell; tier counts and latency buckets follow. */
enum {
    F_REQUESTS, F_HITS, F_MISSES, F_BYPASS, F_ERRORS, F_ESCALATIONS, F_TOKENS_IN, F_TOKENS_OUT,
    F_COST, F_SAVED_CACHE, F_SAVED_ROUTING, F_ROUTING_LOSS, F_LAT_COUNT, F_LAT_SUM, F_FIXED
};

static const char *const fixed_names[F_FIXED] = {
    "requests", "hits", "misses", "bypass", "errors", "escalations", "tokens_in", "tokens_out",
    "cost_nano", "saved_cache_nano", "saved_routing_nano", "routing_loss_nano", "lat_count", "lat_sum_us",
};

/* Upper bounds of the latency buckets, ms; the last bucket is unbounded. */
static const uint32_t lat_bounds_ms[] = {1, 2, 5, 10, 25, 50, 75, 100, 150, 200, 300, 500, 750,
                                         1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000,
                                         30000, 60000, 120000};
#define N_LAT_FINITE (sizeof lat_bounds_ms / sizeof *lat_bounds_ms)
#define N_LAT (N_LAT_FINITE + 1)

/* The cascade's judgements, one field per verdict and reason, after the
 * latency buckets: judge_<verdict>:<reason>. */
#define N_JUDGE (JUDGE_N_VERDICTS * JUDGE_N_REASONS)
/* Where "auto" sent requests, one field per route kind, after those:
 * route:<kind>. */
#define N_ROUTE ((size_t)ROUTE_N_KINDS)

/* KEYS[1] the ack key, KEYS[2..] minute hashes; ARGV: seq, ttl, then per
 * minute: expire-at, field count, field/increment pairs. Applied at most
 * once per (worker, tenant, seq): sequence numbers only grow, and a tenant
 * has one batch out at a time, so "seq <= last applied" means "done". */
static const char APPLY_LUA[] =
    "local last = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "local seq = tonumber(ARGV[1])\n"
    "if seq <= last then return 0 end\n"
    "local a = 3\n"
    "for k = 2, #KEYS do\n"
    "  local at, n = ARGV[a], tonumber(ARGV[a + 1])\n"
    "  a = a + 2\n"
    "  for i = 1, n do\n"
    "    redis.call('HINCRBY', KEYS[k], ARGV[a], ARGV[a + 1])\n"
    "    a = a + 2\n"
    "  end\n"
    "  redis.call('EXPIREAT', KEYS[k], at)\n"
    "end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])\n"
    "return 1\n";

/* KEYS: one tenant's minute hashes in time order; ARGV[1]: minutes per
 * point. One flat {field, sum, ...} list per point. Lua sums in doubles:
 * exact while a point's sum stays below 2^53 (cost_nano: 9 million USD). */
static const char READ_LUA[] =
    "local per = tonumber(ARGV[1])\n"
    "local out = {}\n"
    "for p = 1, math.ceil(#KEYS / per) do\n"
    "  local acc = {}\n"
    "  for i = (p - 1) * per + 1, math.min(p * per, #KEYS) do\n"
    "    local h = redis.call('HGETALL', KEYS[i])\n"
    "    for j = 1, #h, 2 do acc[h[j]] = (acc[h[j]] or 0) + tonumber(h[j + 1]) end\n"
    "  end\n"
    "  local flat = {}\n"
    "  for f, v in pairs(acc) do\n"
    "    flat[#flat + 1] = f\n"
    "    flat[#flat + 1] = string.format('%.0f', v)\n"
    "  end\n"
    "  out[p] = flat\n"
    "end\n"
    "return out\n";

struct cell {
    int64_t minute;
    int64_t f[];                    /* stats->nf counters */
};

struct cellv {
    struct cell **v;
    size_t n, cap;
};

struct stats_worker;

/* One tenant on one worker. */
struct tacc {
    struct stats_worker *w;
    char *tenant;
    struct tacc *next;              /* hash chain */
    struct cellv live;              /* sorted by minute; samples go here */
    struct cellv pending;           /* the batch sent and not yet acknowledged */
    uint64_t seq;                   /* pending's sequence number */
    int inflight;                   /* a command for pending is out */
    int error_replies;
};

struct stats_worker {
    struct stats *s;
    struct event_base *base;
    struct event *timer;
    unsigned id;
    struct tacc **table;            /* hash of taccs by tenant */
    size_t table_size;
    struct tacc **all;              /* the same, in creation order, for the tick */
    size_t n_all, cap_all;
    size_t n_cells;                 /* live + pending, bounded */
    uint64_t seq;
    int drop_warned;
};

/* Memory mode: one tenant's last 48 h, a slot per minute (minute % RING). */
struct ring_tenant {
    char *name;
    struct cell **slot;
    struct ring_tenant *next;
};

struct field_ix {
    const char *name;
    int ix;
};

struct stats {
    struct redis_shared *rs;
    char **tiers;
    size_t n_tiers;
    size_t nf;                      /* counters per cell */
    char **fname;                   /* nf field names, as stored in Redis */
    struct field_ix *by_name;       /* fname sorted, for reading replies */
    char apply_sha[41], read_sha[41];
    char instance[17];              /* random per process: ack keys never collide */
    int64_t (*clock)(void *);
    void *clock_arg;
    pthread_mutex_t mu;             /* registering workers; the memory ring */
    struct stats_worker *workers[MAX_WORKERS];
    atomic_size_t n_workers;
    struct ring_tenant *ring;
    atomic_uint_fast64_t flushed, retried, dropped;
};

static int64_t now_s(const struct stats *s)
{
    return s->clock ? s->clock(s->clock_arg) : clock_wall_s();
}

/* ---- construction -------------------------------------------------------- */

static int cmp_field(const void *a, const void *b)
{
    return strcmp(((const struct field_ix *)a)->name, ((const struct field_ix *)b)->name);
}

struct stats *stats_new(struct redis_shared *rs, const char *const *tier_names, size_t n_tiers)
{
    struct stats *s = xcalloc(1, sizeof *s);
    s->rs = rs;
    s->n_tiers = n_tiers;
    s->tiers = xcalloc(n_tiers ? n_tiers : 1, sizeof *s->tiers);
    for (size_t i = 0; i < n_tiers; i++)
        s->tiers[i] = xstrdup(tier_names[i]);
    s->nf = F_FIXED + n_tiers + N_LAT + N_JUDGE + N_ROUTE;
    s->fname = xcalloc(s->nf, sizeof *s->fname);
    s->by_name = xcalloc(s->nf, sizeof *s->by_name);
    char buf[256];
    for (size_t i = 0; i < s->nf; i++) {
        if (i < F_FIXED)
            snprintf(buf, sizeof buf, "%s", fixed_names[i]);
        else if (i < F_FIXED + n_tiers)
            snprintf(buf, sizeof buf, "tier:%s", tier_names[i - F_FIXED]);
        else if (i - F_FIXED - n_tiers < N_LAT_FINITE)
            snprintf(buf, sizeof buf, "lat_le_%u", lat_bounds_ms[i - F_FIXED - n_tiers]);
        else if (i - F_FIXED - n_tiers == N_LAT_FINITE)
            snprintf(buf, sizeof buf, "lat_le_inf");
        else if (i - F_FIXED - n_tiers - N_LAT < N_JUDGE) {
            size_t k = i - F_FIXED - n_tiers - N_LAT;
            snprintf(buf, sizeof buf, "judge_%s:%s", judge_verdict_name((enum judge_verdict)(k / JUDGE_N_REASONS)),
                     judge_reason_name((enum judge_reason)(k % JUDGE_N_REASONS)));
        } else {
            snprintf(buf, sizeof buf, "route:%s",
                     routing_kind_name((enum route_kind)(i - F_FIXED - n_tiers - N_LAT - N_JUDGE)));
        }
        s->fname[i] = xstrdup(buf);
        s->by_name[i] = (struct field_ix){s->fname[i], (int)i};
    }
    qsort(s->by_name, s->nf, sizeof *s->by_name, cmp_field);

    uint8_t rnd[8];
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        /* Unlikely; a clock-based id still differs between restarts. */
        uint64_t t = clock_mono_us() ^ ((uint64_t)clock_wall_s() << 20);
        memcpy(rnd, &t, sizeof rnd);
    }
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(s->instance + 2 * i, 3, "%02x", rnd[i]);
    if (rs) {
        redis_shared_add_script(rs, APPLY_LUA, s->apply_sha);
        redis_shared_add_script(rs, READ_LUA, s->read_sha);
    }
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

void stats_set_clock(struct stats *s, int64_t (*wall_s)(void *), void *arg)
{
    s->clock = wall_s;
    s->clock_arg = arg;
}

static void cellv_free(struct cellv *cv)
{
    for (size_t i = 0; i < cv->n; i++)
        free(cv->v[i]);
    free(cv->v);
}

void stats_free(struct stats *s)
{
    if (!s)
        return;
    size_t nw = atomic_load(&s->n_workers);
    for (size_t i = 0; i < nw; i++) {
        struct stats_worker *w = s->workers[i];
        event_free(w->timer);
        for (size_t k = 0; k < w->n_all; k++) {
            struct tacc *t = w->all[k];
            cellv_free(&t->live);
            cellv_free(&t->pending);
            free(t->tenant);
            free(t);
        }
        free(w->all);
        free(w->table);
        free(w);
    }
    while (s->ring) {
        struct ring_tenant *rt = s->ring;
        s->ring = rt->next;
        for (size_t m = 0; m < RING_MINUTES; m++)
            free(rt->slot[m]);
        free(rt->slot);
        free(rt->name);
        free(rt);
    }
    for (size_t i = 0; i < s->n_tiers; i++)
        free(s->tiers[i]);
    for (size_t i = 0; i < s->nf; i++)
        free(s->fname[i]);
    free(s->tiers);
    free(s->fname);
    free(s->by_name);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

void stats_get_counters(struct stats *s, struct stats_counters *out)
{
    out->flushed = atomic_load(&s->flushed);
    out->retried = atomic_load(&s->retried);
    out->dropped = atomic_load(&s->dropped);
}

/* ---- per-worker accumulators ---------------------------------------------- */

static void tick_cb(evutil_socket_t fd, short what, void *arg);

/* The worker that owns base, registered (with its timer) on first use.
 * Workers are only ever appended, and a slot is filled before the count
 * that publishes it, so the scan needs no lock; only registering takes one,
 * once per worker. */
static struct stats_worker *worker_for(struct stats *s, struct event_base *base)
{
    size_t n = atomic_load(&s->n_workers);
    for (size_t i = 0; i < n; i++)
        if (s->workers[i]->base == base)
            return s->workers[i];
    struct stats_worker *w = NULL;
    pthread_mutex_lock(&s->mu);
    n = atomic_load(&s->n_workers);
    if (n < MAX_WORKERS) {
        w = xcalloc(1, sizeof *w);
        w->s = s;
        w->base = base;
        w->id = (unsigned)n;
        w->table_size = 64;
        w->table = xcalloc(w->table_size, sizeof *w->table);
        w->timer = event_new(base, -1, EV_PERSIST, tick_cb, w);
        s->workers[n] = w;
        atomic_store(&s->n_workers, n + 1);
    }
    pthread_mutex_unlock(&s->mu);
    if (w) {
        /* Added here, on the worker's own thread: its base is not running
         * anything else of ours yet. */
        struct timeval tv = {TICK_MS / 1000, (TICK_MS % 1000) * 1000};
        event_add(w->timer, &tv);
    } else {
        log_error("stats: more than %d event bases; samples from the others are not counted", MAX_WORKERS);
    }
    return w;
}

/* Tenants per worker: a power-of-two table chained by FNV-1a; tenants are
 * few (the config's), but a lookup happens on every request. */
static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static struct tacc *tacc_get(struct stats_worker *w, const char *tenant)
{
    uint64_t h = fnv1a(tenant);
    struct tacc **slot = &w->table[h & (w->table_size - 1)];
    for (struct tacc *t = *slot; t; t = t->next)
        if (strcmp(t->tenant, tenant) == 0)
            return t;
    if (w->n_all + 1 > w->table_size) { /* keep chains short: rehash at load 1 */
        size_t ns = w->table_size * 2;
        struct tacc **nt = xcalloc(ns, sizeof *nt);
        for (size_t i = 0; i < w->n_all; i++) {
            struct tacc *t = w->all[i];
            size_t b = fnv1a(t->tenant) & (ns - 1);
            t->next = nt[b];
            nt[b] = t;
        }
        free(w->table);
        w->table = nt;
        w->table_size = ns;
        slot = &w->table[h & (ns - 1)];
    }
    struct tacc *t = xcalloc(1, sizeof *t);
    t->w = w;
    t->tenant = xstrdup(tenant);
    t->next = *slot;
    *slot = t;
    if (w->n_all == w->cap_all) {
        w->cap_all = w->cap_all ? 2 * w->cap_all : 16;
        w->all = xrealloc(w->all, w->cap_all * sizeof *w->all);
    }
    w->all[w->n_all++] = t;
    return t;
}

static void cellv_insert(struct cellv *cv, size_t at, struct cell *c)
{
    if (cv->n == cv->cap) {
        cv->cap = cv->cap ? 2 * cv->cap : 4;
        cv->v = xrealloc(cv->v, cv->cap * sizeof *cv->v);
    }
    memmove(cv->v + at + 1, cv->v + at, (cv->n - at) * sizeof *cv->v);
    cv->v[at] = c;
    cv->n++;
}

/* Remove the first k cells (they were moved or freed by the caller). */
static void cellv_shift(struct cellv *cv, size_t k)
{
    memmove(cv->v, cv->v + k, (cv->n - k) * sizeof *cv->v);
    cv->n -= k;
}

/* Make room for one cell by dropping the oldest live tenant-minute of this
 * worker. 0, or -1 when every held cell is in a batch already sent. */
static int drop_oldest(struct stats_worker *w)
{
    struct tacc *victim = NULL;
    for (size_t i = 0; i < w->n_all; i++) {
        struct tacc *t = w->all[i];
        if (t->live.n && (!victim || t->live.v[0]->minute < victim->live.v[0]->minute))
            victim = t;
    }
    if (!victim)
        return -1;
    free(victim->live.v[0]);
    cellv_shift(&victim->live, 1);
    w->n_cells--;
    atomic_fetch_add(&w->s->dropped, 1);
    if (!w->drop_warned) {
        w->drop_warned = 1;
        log_warn("stats: %d tenant-minutes held on a worker (Redis unavailable?): dropping the oldest",
                 MAX_CELLS_PER_WORKER);
    }
    return 0;
}

/* The live cell of this tenant and minute, made if needed; NULL when over
 * the bound with nothing to drop. Samples nearly always hit the last cell. */
static struct cell *live_cell(struct stats_worker *w, struct tacc *t, int64_t minute)
{
    struct cellv *cv = &t->live;
    size_t at = cv->n;
    while (at > 0 && cv->v[at - 1]->minute >= minute) {
        if (cv->v[at - 1]->minute == minute)
            return cv->v[at - 1];
        at--; /* the clock went back: keep the list sorted */
    }
    if (w->n_cells >= MAX_CELLS_PER_WORKER) {
        if (drop_oldest(w) < 0) {
            atomic_fetch_add(&w->s->dropped, 1);
            return NULL;
        }
        at = cv->n; /* the drop may have shifted this very list */
        while (at > 0 && cv->v[at - 1]->minute > minute)
            at--;
    }
    struct cell *c = xcalloc(1, sizeof *c + w->s->nf * sizeof c->f[0]);
    c->minute = minute;
    cellv_insert(cv, at, c);
    w->n_cells++;
    return c;
}

static size_t judge_field(const struct stats *s, int verdict, int reason)
{
    return F_FIXED + s->n_tiers + N_LAT + (size_t)verdict * JUDGE_N_REASONS + (size_t)reason;
}

static size_t route_field(const struct stats *s, int kind)
{
    return F_FIXED + s->n_tiers + N_LAT + N_JUDGE + (size_t)kind;
}

static size_t lat_bucket(uint64_t us)
{
    size_t b = 0;
    while (b < N_LAT_FINITE && us > (uint64_t)lat_bounds_ms[b] * 1000)
        b++;
    return b;
}

void stats_record(struct stats *s, struct event_base *base, const struct stats_sample *x)
{
    if (!s || !x || !x->tenant || !*x->tenant)
        return;
    struct stats_worker *w = worker_for(s, base);
    if (!w)
        return;
    struct cell *c = live_cell(w, tacc_get(w, x->tenant), now_s(s) / 60);
    if (!c)
        return;
    /* Counters only grow on the way in: a negative count or amount is a
     * caller's bug and must not make a dashboard's series go backwards (a
     * wrapped cost once showed a fleet cost of minus nine billion dollars),
     * and the sums saturate instead of wrapping (price.h). */
    int64_t *f = c->f;
    f[F_REQUESTS]++;
    f[x->cache == STATS_CACHE_HIT ? F_HITS : x->cache == STATS_CACHE_MISS ? F_MISSES : F_BYPASS]++;
    if (x->status >= 500)
        f[F_ERRORS]++;
    if (x->escalated)
        f[F_ESCALATIONS]++;
    f[F_TOKENS_IN] = money_add(f[F_TOKENS_IN], x->tokens_in);
    f[F_TOKENS_OUT] = money_add(f[F_TOKENS_OUT], x->tokens_out);
    f[F_COST] = money_add(f[F_COST], x->cost_nano);
    f[F_SAVED_CACHE] = money_add(f[F_SAVED_CACHE], x->saved_cache_nano);
    /* Routing's gain and its loss are two sums that only grow; the net
     * (README "Savings") is taken when a query reads them. */
    f[F_SAVED_ROUTING] = money_add(f[F_SAVED_ROUTING], x->saved_routing_nano);
    f[F_ROUTING_LOSS] = money_add(f[F_ROUTING_LOSS], x->routing_loss_nano);
    if (x->tier >= 0 && (size_t)x->tier < s->n_tiers)
        f[F_FIXED + x->tier]++;
    f[F_LAT_COUNT]++;
    f[F_LAT_SUM] = money_add(f[F_LAT_SUM], x->latency_us > (uint64_t)MONEY_MAX ? MONEY_MAX : (int64_t)x->latency_us);
    f[F_FIXED + s->n_tiers + lat_bucket(x->latency_us)]++;
    if (x->judged && judge_reason_possible((enum judge_verdict)x->judge_verdict, (enum judge_reason)x->judge_reason))
        f[judge_field(s, x->judge_verdict, x->judge_reason)]++;
    if (x->routed && x->route_kind >= 0 && x->route_kind < ROUTE_N_KINDS)
        f[route_field(s, x->route_kind)]++;
}

/* ---- flushing -------------------------------------------------------------- */

/* Memory mode: add the live cells into the ring (caller holds no lock). */
static void flush_to_ring(struct stats_worker *w, int64_t oldest)
{
    /* One lock per tick and worker, not per sample: readers (queries) and
     * the other workers' ticks are the only contention. */
    struct stats *s = w->s;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < w->n_all; i++) {
        struct tacc *t = w->all[i];
        if (!t->live.n)
            continue;
        struct ring_tenant *rt = s->ring;
        while (rt && strcmp(rt->name, t->tenant) != 0)
            rt = rt->next;
        if (!rt) {
            rt = xcalloc(1, sizeof *rt);
            rt->name = xstrdup(t->tenant);
            rt->slot = xcalloc(RING_MINUTES, sizeof *rt->slot);
            rt->next = s->ring;
            s->ring = rt;
        }
        for (size_t k = 0; k < t->live.n; k++) {
            struct cell *c = t->live.v[k];
            if (c->minute >= oldest) {
                struct cell **slot = &rt->slot[c->minute % RING_MINUTES];
                if (!*slot) {
                    *slot = c; /* adopt it */
                    c = NULL;
                } else if ((*slot)->minute != c->minute) {
                    free(*slot); /* 48 h old: its minute has expired */
                    *slot = c;
                    c = NULL;
                } else {
                    for (size_t j = 0; j < s->nf; j++)
                        (*slot)->f[j] = money_add((*slot)->f[j], c->f[j]);
                }
            }
            free(c);
        }
        w->n_cells -= t->live.n;
        t->live.n = 0;
        atomic_fetch_add(&s->flushed, 1);
    }
    pthread_mutex_unlock(&s->mu);
}

/* argv under construction: strings owned here. */
struct argv {
    char **v;
    size_t n, cap;
};

static void argv_push(struct argv *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void argv_push(struct argv *a, const char *fmt, ...)
{
    char buf[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 64;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = xstrdup(buf);
}

static void argv_free(struct argv *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
}

static void batch_reply_cb(void *ctx, enum redis_call_status st, redisReply *reply)
{
    struct tacc *t = ctx;
    struct stats_worker *w = t->w;
    t->inflight = 0;
    if (st == REDIS_CALL_OK && reply->type == REDIS_REPLY_INTEGER) {
        /* 1: applied now; 0: applied by an earlier attempt. Either way done. */
        w->n_cells -= t->pending.n;
        cellv_free(&t->pending);
        memset(&t->pending, 0, sizeof t->pending);
        t->error_replies = 0;
        w->drop_warned = 0;
        atomic_fetch_add(&w->s->flushed, 1);
        return;
    }
    if (st == REDIS_CALL_OK) {
        /* Redis refused the script (a key of another type, OOM...): retry a
         * while, as it may pass, then give the batch up rather than hold it
         * forever. */
        const char *why = reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply type";
        if (++t->error_replies == 1)
            log_warn("stats: Redis refused the batch for tenant %s: %s", t->tenant, why);
        if (t->error_replies >= MAX_ERROR_REPLIES) {
            log_error("stats: dropping %zu tenant-minutes of %s after %d refusals", t->pending.n, t->tenant,
                      t->error_replies);
            atomic_fetch_add(&w->s->dropped, t->pending.n);
            w->n_cells -= t->pending.n;
            cellv_free(&t->pending);
            memset(&t->pending, 0, sizeof t->pending);
            t->error_replies = 0;
        }
    }
    /* Timeout or down: pending stays as it is and goes again next tick. */
}

/* One EVALSHA for the tenant's pending batch. Only non-zero fields travel:
 * a typical minute holds 15 to 20 of the ~60 possible. */
static void send_batch(struct redis *r, struct tacc *t)
{
    struct stats *s = t->w->s;
    struct argv a = {0};
    argv_push(&a, "cascade:{%s}:statsack:%s:%u", t->tenant, s->instance, t->w->id);
    for (size_t k = 0; k < t->pending.n; k++)
        argv_push(&a, "cascade:{%s}:stats:%lld", t->tenant, (long long)t->pending.v[k]->minute);
    int nkeys = (int)a.n;
    argv_push(&a, "%llu", (unsigned long long)t->seq);
    argv_push(&a, "%d", STATS_RETENTION_S);
    for (size_t k = 0; k < t->pending.n; k++) {
        const struct cell *c = t->pending.v[k];
        /* A minute's hash lives 48 h from the end of that minute, however
         * late its last increment came. */
        argv_push(&a, "%lld", (long long)((c->minute + 1) * 60 + STATS_RETENTION_S));
        size_t count_at = a.n; /* the field count, filled in once known */
        argv_push(&a, "0");
        int nz = 0;
        for (size_t j = 0; j < s->nf; j++) {
            if (c->f[j]) {
                argv_push(&a, "%s", s->fname[j]);
                argv_push(&a, "%lld", (long long)c->f[j]);
                nz++;
            }
        }
        free(a.v[count_at]);
        char nb[16];
        snprintf(nb, sizeof nb, "%d", nz);
        a.v[count_at] = xstrdup(nb);
    }
    t->inflight = 1;
    redis_eval(r, batch_reply_cb, t, s->apply_sha, nkeys, (int)a.n, (const char **)a.v);
    argv_free(&a);
}

/* The tick: per tenant, resend the batch still unacknowledged, or cut a
 * new one from the oldest live minutes (at most MAX_BATCH_CELLS, so a long
 * outage drains in bounded calls). Minutes older than the retention are
 * dropped rather than sent: their EXPIREAT would lie in the past. */
static void flush_worker(struct stats_worker *w)
{
    struct stats *s = w->s;
    int64_t oldest = now_s(s) / 60 - RING_MINUTES + 1; /* older minutes have expired */
    if (!w->n_cells)
        return;
    if (!s->rs) {
        flush_to_ring(w, oldest);
        return;
    }
    struct redis *r = NULL;
    for (size_t i = 0; i < w->n_all; i++) {
        struct tacc *t = w->all[i];
        if (t->inflight)
            continue;
        if (t->pending.n) {
            atomic_fetch_add(&s->retried, 1);
        } else {
            /* Cut a new batch from the oldest live minutes. */
            size_t k = 0;
            while (k < t->live.n && t->pending.n < MAX_BATCH_CELLS) {
                struct cell *c = t->live.v[k++];
                if (c->minute < oldest) {
                    free(c);
                    w->n_cells--;
                    continue;
                }
                cellv_insert(&t->pending, t->pending.n, c);
            }
            cellv_shift(&t->live, k);
            if (!t->pending.n)
                continue;
            t->seq = ++w->seq;
        }
        if (!r)
            r = redis_for_base(s->rs, w->base);
        if (!r)
            return; /* no connection slot: everything waits for the next tick */
        send_batch(r, t);
    }
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    flush_worker(arg);
}

void stats_flush(struct stats *s, struct event_base *base)
{
    if (!s)
        return;
    struct stats_worker *w = worker_for(s, base);
    if (w)
        flush_worker(w);
}

int stats_busy(struct stats *s, struct event_base *base)
{
    if (!s)
        return 0;
    size_t n = atomic_load(&s->n_workers);
    for (size_t i = 0; i < n; i++) {
        struct stats_worker *w = s->workers[i];
        if (w->base != base)
            continue;
        for (size_t k = 0; k < w->n_all; k++)
            if (w->all[k]->inflight)
                return 1;
    }
    return 0;
}

/* ---- queries ----------------------------------------------------------------- */

/* The bounds keep a query's memory (points x fields) and its Redis work
 * (minutes x tenants) proportional to what a dashboard shows. */
int stats_query_check(int64_t from, int64_t to, int64_t step, char *err, size_t errlen)
{
    const int64_t far = (int64_t)1 << 40; /* keeps the arithmetic below from overflowing */
    if (from < 0 || to <= from || to > far) {
        snprintf(err, errlen, "need 0 <= from < to (unix seconds)");
        return -1;
    }
    if (to - from > STATS_RETENTION_S) {
        snprintf(err, errlen, "range longer than the %d h kept", STATS_RETENTION_S / 3600);
        return -1;
    }
    if (step < 60 || step % 60 || step > STATS_RETENTION_S) {
        snprintf(err, errlen, "step must be a positive multiple of 60 seconds, at most %d", STATS_RETENTION_S);
        return -1;
    }
    int64_t from_m = from / 60, to_m = (to + 59) / 60;
    if ((to_m - from_m + step / 60 - 1) / (step / 60) > STATS_MAX_POINTS) {
        snprintf(err, errlen, "more than %d points: use a larger step", STATS_MAX_POINTS);
        return -1;
    }
    return 0;
}

struct query {
    struct stats *s;
    struct redis *r;
    stats_query_cb cb;
    void *ctx;
    char *tenant;                   /* NULL: all */
    char **tenants;                 /* the tenants to read and sum */
    size_t n_tenants, next;         /* next: the tenant the next call reads */
    int64_t next_m;                 /* and the first minute it reads */
    int64_t from_m, to_m, per;      /* minutes [from_m, to_m), minutes per point */
    size_t n_points;
    int64_t *acc;                   /* n_points x nf */
    json_t *result;                 /* built, for a deferred answer */
};

static void query_free(struct query *q)
{
    for (size_t i = 0; i < q->n_tenants; i++)
        free(q->tenants[i]);
    free(q->tenants);
    free(q->tenant);
    free(q->acc);
    json_decref(q->result);
    free(q);
}

static int field_index(const struct stats *s, const char *name)
{
    struct field_ix key = {name, 0};
    const struct field_ix *f = bsearch(&key, s->by_name, s->nf, sizeof *s->by_name, cmp_field);
    return f ? f->ix : -1;
}

/* Rank q (0..1) of a latency histogram, in ms; -1 when it is empty. With
 * cumulative count C(b) and the rank r = q * total falling in bucket b
 * (lo, hi]: lo + (hi - lo) * (r - C(b-1)) / count(b). */
static double quantile_ms(const int64_t *bucket, double q)
{
    int64_t total = 0;
    for (size_t b = 0; b < N_LAT; b++)
        total += bucket[b];
    if (total <= 0)
        return -1;
    double rank = q * (double)total, cum = 0;
    for (size_t b = 0; b < N_LAT; b++) {
        double lo = b ? lat_bounds_ms[b - 1] : 0;
        if (bucket[b] > 0 && cum + (double)bucket[b] >= rank) {
            if (b == N_LAT_FINITE)
                return lo; /* unbounded: the best we know is its floor */
            return lo + ((double)lat_bounds_ms[b] - lo) * ((rank - cum) / (double)bucket[b]);
        }
        cum += (double)bucket[b];
    }
    return lat_bounds_ms[N_LAT_FINITE - 1];
}

/* The scalars of a point and of the totals, in the order of the JSON. */
enum {
    S_REQUESTS, S_HITS, S_MISSES, S_BYPASS, S_ERRORS, S_ESCALATIONS, S_TOKENS_IN, S_TOKENS_OUT,
    S_COST, S_SAVED_CACHE, S_SAVED_ROUTING, S_ROUTING_GAIN, S_ROUTING_LOSS, S_HIT_RATE, S_ESCALATION_RATE, S_P50,
    S_P95, S_COUNT
};
static const char *const scalar_names[S_COUNT] = {
    "requests", "hits", "misses", "bypass", "errors", "escalations", "tokens_in", "tokens_out",
    "cost_usd", "saved_cache_usd", "saved_routing_usd", "routing_gain_usd", "routing_loss_usd", "hit_rate",
    "escalation_rate", "p50_ms", "p95_ms",
};

_Static_assert((int)S_TOKENS_OUT == (int)F_TOKENS_OUT && (int)S_COST == (int)F_COST &&
                   (int)S_SAVED_CACHE == (int)F_SAVED_CACHE,
               "the first scalars mirror the first fields");

static json_t *ratio(int64_t num, int64_t den)
{
    return den > 0 ? json_real((double)num / (double)den) : json_null();
}

/* Scalar i of the counters f (one point, or the totals). */
static json_t *scalar(const struct stats *s, const int64_t *f, int i)
{
    if (i <= S_TOKENS_OUT) /* the first scalars are the first fields, in order */
        return json_integer(f[i]);
    if (i <= S_SAVED_CACHE)
        return json_real((double)f[F_COST + (i - S_COST)] / 1e9);
    /* Routing savings are NET (README "Savings"): gain minus loss, which
     * may be negative; both sums are within [0, MONEY_MAX], so the
     * difference fits. The two terms are reported beside it. */
    if (i == S_SAVED_ROUTING)
        return json_real((double)(f[F_SAVED_ROUTING] - f[F_ROUTING_LOSS]) / 1e9);
    if (i == S_ROUTING_GAIN)
        return json_real((double)f[F_SAVED_ROUTING] / 1e9);
    if (i == S_ROUTING_LOSS)
        return json_real((double)f[F_ROUTING_LOSS] / 1e9);
    if (i == S_HIT_RATE)
        return ratio(f[F_HITS], f[F_REQUESTS]);
    if (i == S_ESCALATION_RATE)
        return ratio(f[F_ESCALATIONS], f[F_REQUESTS]);
    double ms = quantile_ms(f + F_FIXED + s->n_tiers, i == S_P50 ? 0.50 : 0.95);
    return ms < 0 ? json_null() : json_real(ms);
}

/* The judgement counts of f into o: appended to the series' arrays
 * (series 1), or set as the totals' integers. */
static void judgements_add(const struct stats *s, json_t *o, const int64_t *f, int series)
{
    for (int v = 0; v < JUDGE_N_VERDICTS; v++) {
        const char *vn = judge_verdict_name((enum judge_verdict)v);
        json_t *byr = json_object_get(o, vn);
        if (!byr) {
            byr = json_object();
            json_object_set_new(o, vn, byr);
        }
        for (int r = 0; r < JUDGE_N_REASONS; r++) {
            if (!judge_reason_possible((enum judge_verdict)v, (enum judge_reason)r))
                continue;
            json_t *n = json_integer(f[judge_field(s, v, r)]);
            const char *rn = judge_reason_name((enum judge_reason)r);
            if (series)
                json_array_append_new(json_object_get(byr, rn), n);
            else
                json_object_set_new(byr, rn, n);
        }
    }
}

/* The route counts of f into o (every kind, 0 when none): appended to the
 * series' arrays (series 1), or set as the totals' integers. */
static void routes_add(const struct stats *s, json_t *o, const int64_t *f, int series)
{
    for (int k = 0; k < ROUTE_N_KINDS; k++) {
        const char *kn = routing_kind_name((enum route_kind)k);
        json_t *n = json_integer(f[route_field(s, k)]);
        if (series)
            json_array_append_new(json_object_get(o, kn), n);
        else
            json_object_set_new(o, kn, n);
    }
}

/* The JSON of stats.h from the summed counters. Rates and percentiles of a
 * point without requests are null, not 0, so charts show a gap rather than
 * a fall to zero. */
static json_t *build_result(struct query *q)
{
    const struct stats *s = q->s;
    json_t *o = json_object();
    json_object_set_new(o, "tenant", json_string(q->tenant ? q->tenant : "*"));
    if (!q->tenant) {
        json_t *ts = json_array();
        for (size_t i = 0; i < q->n_tenants; i++)
            json_array_append_new(ts, json_string(q->tenants[i]));
        json_object_set_new(o, "tenants", ts);
    }
    json_object_set_new(o, "from", json_integer(q->from_m * 60));
    json_object_set_new(o, "to", json_integer(q->to_m * 60));
    json_object_set_new(o, "step", json_integer(q->per * 60));

    json_t *series = json_object(), *t = json_array(), *tiers = json_object();
    json_t *arr[S_COUNT];
    json_object_set_new(series, "t", t);
    for (int i = 0; i < S_COUNT; i++) {
        arr[i] = json_array();
        json_object_set_new(series, scalar_names[i], arr[i]);
    }
    json_object_set_new(series, "tiers", tiers);
    for (size_t k = 0; k < s->n_tiers; k++)
        json_object_set_new(tiers, s->tiers[k], json_array());
    /* judgements: {"keep": {"<reason>": [...]}, "escalate": {...}}, only the
     * pairs that can occur (judge_reason_possible). */
    json_t *judged = json_object();
    json_object_set_new(series, "judgements", judged);
    for (int v = 0; v < JUDGE_N_VERDICTS; v++) {
        json_t *byr = json_object();
        json_object_set_new(judged, judge_verdict_name((enum judge_verdict)v), byr);
        for (int r = 0; r < JUDGE_N_REASONS; r++)
            if (judge_reason_possible((enum judge_verdict)v, (enum judge_reason)r))
                json_object_set_new(byr, judge_reason_name((enum judge_reason)r), json_array());
    }
    json_t *routes = json_object();
    json_object_set_new(series, "routes", routes);
    for (int k = 0; k < ROUTE_N_KINDS; k++)
        json_object_set_new(routes, routing_kind_name((enum route_kind)k), json_array());
    int64_t *tot = xcalloc(s->nf, sizeof *tot);
    for (size_t p = 0; p < q->n_points; p++) {
        const int64_t *f = q->acc + p * s->nf;
        json_array_append_new(t, json_integer((q->from_m + (int64_t)p * q->per) * 60));
        for (int i = 0; i < S_COUNT; i++)
            json_array_append_new(arr[i], scalar(s, f, i));
        for (size_t k = 0; k < s->n_tiers; k++)
            json_array_append_new(json_object_get(tiers, s->tiers[k]), json_integer(f[F_FIXED + k]));
        judgements_add(s, judged, f, 1);
        routes_add(s, routes, f, 1);
        for (size_t j = 0; j < s->nf; j++)
            tot[j] = money_add(tot[j], f[j]);
    }
    json_object_set_new(o, "series", series);

    json_t *totals = json_object(), *ttiers = json_object();
    for (int i = 0; i < S_COUNT; i++)
        json_object_set_new(totals, scalar_names[i], scalar(s, tot, i));
    for (size_t k = 0; k < s->n_tiers; k++)
        json_object_set_new(ttiers, s->tiers[k], json_integer(tot[F_FIXED + k]));
    json_object_set_new(totals, "tiers", ttiers);
    json_t *tjudged = json_object();
    judgements_add(s, tjudged, tot, 0);
    json_object_set_new(totals, "judgements", tjudged);
    json_t *troutes = json_object();
    routes_add(s, troutes, tot, 0);
    json_object_set_new(totals, "routes", troutes);
    json_object_set_new(o, "totals", totals);
    free(tot);
    return o;
}

static void query_answer(struct query *q, int ok)
{
    json_t *res = ok ? build_result(q) : NULL;
    q->cb(q->ctx, res);
    json_decref(res);
    query_free(q);
}

static void read_next(struct query *q);

/* Minutes per read call: whole points, about READ_CHUNK_MINUTES. */
static int64_t chunk_minutes(const struct query *q)
{
    int64_t k = READ_CHUNK_MINUTES / q->per;
    return (k > 0 ? k : 1) * q->per;
}

struct read_call {
    struct query *q;
    size_t first_point, n_points;
};

static void read_reply_cb(void *ctx, enum redis_call_status st, redisReply *reply)
{
    struct read_call *rc = ctx;
    struct query *q = rc->q;
    size_t first = rc->first_point, np = rc->n_points;
    free(rc);
    const struct stats *s = q->s;
    if (st != REDIS_CALL_OK || reply->type != REDIS_REPLY_ARRAY || reply->elements != np) {
        if (st == REDIS_CALL_OK)
            log_warn("stats: unexpected reply to the read script (%s)",
                     reply->type == REDIS_REPLY_ERROR ? reply->str : "shape");
        query_answer(q, 0);
        return;
    }
    for (size_t i = 0; i < np; i++) {
        const redisReply *pt = reply->element[i];
        size_t p = first + i;
        if (pt->type != REDIS_REPLY_ARRAY)
            continue;
        for (size_t j = 0; j + 1 < pt->elements; j += 2) {
            const redisReply *k = pt->element[j], *v = pt->element[j + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            /* Unknown fields are skipped: tiers removed from the config, or
             * fields of a newer version sharing the Redis. */
            int ix = field_index(s, k->str);
            if (ix >= 0) /* saturating, and a negative value (never ours) as 0 */
                q->acc[p * s->nf + (size_t)ix] = money_add(q->acc[p * s->nf + (size_t)ix], strtoll(v->str, NULL, 10));
        }
    }
    read_next(q);
}

/* One call per tenant and chunk of minutes, each after the previous reply
 * (see the top): Redis runs each script alone, so a call is kept short. */
static void read_next(struct query *q)
{
    if (q->next_m >= q->to_m) {
        q->next++;
        q->next_m = q->from_m;
    }
    if (q->next == q->n_tenants) {
        query_answer(q, 1);
        return;
    }
    const char *t = q->tenants[q->next];
    int64_t start = q->next_m, end = start + chunk_minutes(q);
    if (end > q->to_m)
        end = q->to_m;
    q->next_m = end;
    size_t nm = (size_t)(end - start);
    struct read_call *rc = xmalloc(sizeof *rc);
    rc->q = q;
    rc->first_point = (size_t)((start - q->from_m) / q->per);
    rc->n_points = (nm + (size_t)q->per - 1) / (size_t)q->per;
    char **argv = xcalloc(nm + 1, sizeof *argv);
    char buf[320];
    for (size_t i = 0; i < nm; i++) {
        snprintf(buf, sizeof buf, "cascade:{%s}:stats:%lld", t, (long long)(start + (int64_t)i));
        argv[i] = xstrdup(buf);
    }
    snprintf(buf, sizeof buf, "%lld", (long long)q->per);
    argv[nm] = xstrdup(buf);
    redis_eval(q->r, read_reply_cb, rc, q->s->read_sha, (int)nm, (int)nm + 1, (const char **)argv);
    for (size_t i = 0; i <= nm; i++)
        free(argv[i]);
    free(argv);
}

/* Memory mode: the ring holds only this process's minutes; a slot whose
 * minute tag differs belongs to 48 h earlier and is not ours. */
static void read_ring(struct query *q)
{
    struct stats *s = q->s;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < q->n_tenants; i++) {
        const struct ring_tenant *rt = s->ring;
        while (rt && strcmp(rt->name, q->tenants[i]) != 0)
            rt = rt->next;
        for (int64_t m = q->from_m; rt && m < q->to_m; m++) {
            const struct cell *c = rt->slot[m % RING_MINUTES];
            if (!c || c->minute != m)
                continue;
            int64_t *acc = q->acc + (size_t)((m - q->from_m) / q->per) * s->nf;
            for (size_t j = 0; j < s->nf; j++)
                acc[j] = money_add(acc[j], c->f[j]);
        }
    }
    pthread_mutex_unlock(&s->mu);
}

static void deferred_answer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct query *q = arg;
    q->cb(q->ctx, q->result);
    query_free(q);
}

int stats_query(struct stats *s, struct event_base *base, const char *tenant_or_null,
                const char *const *all_tenants, size_t n_tenants, int64_t from, int64_t to, int64_t step,
                stats_query_cb cb, void *ctx)
{
    char err[128];
    if (!s || stats_query_check(from, to, step, err, sizeof err) < 0)
        return -1;
    struct query *q = xcalloc(1, sizeof *q);
    q->s = s;
    q->cb = cb;
    q->ctx = ctx;
    q->from_m = from / 60;
    q->to_m = (to + 59) / 60;
    q->per = step / 60;
    q->next_m = q->from_m;
    q->n_points = (size_t)((q->to_m - q->from_m + q->per - 1) / q->per);
    q->acc = xcalloc(q->n_points * s->nf, sizeof *q->acc);
    if (tenant_or_null && *tenant_or_null) {
        q->tenant = xstrdup(tenant_or_null);
        q->n_tenants = 1;
        q->tenants = xcalloc(1, sizeof *q->tenants);
        q->tenants[0] = xstrdup(tenant_or_null);
    } else {
        q->n_tenants = n_tenants;
        q->tenants = xcalloc(n_tenants ? n_tenants : 1, sizeof *q->tenants);
        for (size_t i = 0; i < n_tenants; i++)
            q->tenants[i] = xstrdup(all_tenants[i]);
    }
    if (s->rs && q->n_tenants) {
        q->r = redis_for_base(s->rs, base);
        if (q->r) {
            read_next(q); /* never answers inside this call: replies come later */
            return 0;
        }
        /* No connection for this base: answered as a Redis failure. */
    } else {
        read_ring(q);
        q->result = build_result(q);
    }
    /* Answered from the loop, never from inside this call, in every mode:
     * the caller may still be setting up what the callback uses. */
    event_base_once(base, -1, EV_TIMEOUT, deferred_answer_cb, q, NULL);
    return 0;
}
