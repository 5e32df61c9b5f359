/* remote.c: see remote.h for the contract.
 *
 * The upstream HTTP client is libevent's evhttp client: one evhttp_connection
 * is one TCP connection that carries one request at a time, so a pool is a
 * stack of idle connections. State shared by all workers (replica health,
 * ejection, outstanding counts) is atomic; everything else lives in a
 * per-worker `struct remote_local` touched only by that worker's thread.
 *
 * One request (struct rreq) is a series of attempts:
 *   submit -> start_attempt: choose_replica, a pooled or new connection,
 *             evhttp_make_request;
 *   the attempt ends in done_cb (or timeout_cb, or a cancel), which calls
 *   attempt_end exactly once: the replica's verdict (outlier.h) and the
 *   metrics hook. A failure that may be retried goes to attempt_failed,
 *   which arms retry_timer (the backoff) -> retry_cb -> start_attempt
 *   again, or ends the request with the last failure's error.
 * Once any output reached the caller (ans.delivered), nothing is retried.
 */
#include "engines/remote/remote.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/dns.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/bevwrite.h"
#include "common/cfgjson.h"
#include "common/clock.h"
#include "common/fmt.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/openai.h"
#include "common/secret.h"
#include "common/sse.h"
#include "common/workpool.h"
#include "engines/engine.h"
#include "engines/remote/answer.h"
#include "engines/remote/outlier.h"
#include "engines/remote/tls.h"

#define MAX_LOCALS 256
#define MAX_REPLICAS 64
#define DOWN_BACKOFF_US 1000000u    /* after a connection failure, prefer others this long */
#define ERRBODY_MAX 8192            /* bytes of an upstream error body we keep */
/* Requests whose messages hold more text than this are serialized for the
 * upstream on the work pool: json_dumps of 10 MB takes longer than its
 * parse did, and on the worker's loop it would stall every other request. */
#define OFFLOAD_BODY_BYTES (64u << 10)

struct replica {
    char *url;
    char host[256];
    int port;
    char chat_path[512];            /* prefix + /chat/completions */
    char health_path[512];
    atomic_int outstanding;         /* requests in flight, all workers */
    atomic_int healthy;             /* last probe answered 2xx */
    atomic_int probed;              /* at least one probe finished */
    _Atomic uint64_t down_until_us; /* passive: a connection failed recently */
    int tls;                        /* https:// */
    int default_port;               /* the port is the scheme's (Host: leaves it out) */
    int numeric;                    /* host is an IP literal: no name to resolve */
    struct remote_tls_cache *tls_cache; /* https: the session new connections resume */
    struct outlier outlier;         /* ejection (outlier.h) */
};

struct pool {
    struct evhttp_connection **idle;
    size_t n;
};

struct rreq;

struct remote_local {
    struct remote *r;
    struct event_base *base;
    size_t index;
    struct pool *pools;             /* one per replica */
    struct rreq *active;            /* for cancel by id */
    /* This worker's resolver, made when a replica first needs a name
     * resolved: without one evhttp calls getaddrinfo() on the loop, which
     * blocks it for as long as DNS takes. NULL: none (yet, or it could
     * not be made: then the blocking way). */
    struct evdns_base *dns;
};

struct remote {
    struct engine base;
    struct remote_config cfg;
    struct replica *replicas;
    size_t n;
    pthread_mutex_t mu;             /* guards adding a local */
    struct remote_local *locals[MAX_LOCALS];
    atomic_size_t n_locals;
    atomic_uint rr;
    atomic_uint_fast64_t next_seq;
    pthread_t prober;
    pthread_mutex_t stop_mu;
    pthread_cond_t stop_cv;
    int stop;
    struct remote_hooks hooks;      /* metrics' observers; zeroed: none */
    void *hooks_ctx;
    size_t replica_base;
    struct remote_tls *tls;         /* for https replicas; NULL when there are none */
    struct outlier_policy eject;
    struct workpool *pool;          /* for serializing large bodies; may be NULL */
};

struct rreq {
    struct remote_local *L;
    struct rreq *prev, *next;
    uint64_t id;
    struct engine_callbacks cb;
    void *ctx;
    char *body;
    size_t body_len;
    int stream;
    char request_id[80];
    uint8_t tried[MAX_REPLICAS];
    int replica;                    /* index being tried, or -1 */
    struct evhttp_connection *conn;
    struct evhttp_request *req;     /* NULL once libevent is done with it */
    struct event *timer;            /* total timeout */
    struct sse_parser *sse;
    struct evbuffer *errbody;       /* a non-2xx streamed body, kept for its message */
    int got_headers;
    int status;
    int error_kind;                 /* enum evhttp_request_error, or -1 */
    int ended;                      /* the caller has been told (or cancelled) */
    int in_chunk_cb;
    int cancel_pending;             /* cancelled inside chunk_cb; a deferred call finishes it */
    int paused;                     /* reading stopped for a slow client (remote_pause) */
    int64_t max_tokens;             /* the request's output bound; 0: none */
    /* a large body being serialized on the work pool (building set): the
     * job owns these until build_done; a cancel or timeout meanwhile only
     * marks the request ended, and build_done frees it */
    int building;
    json_t *build_root;             /* a reference to the caller's request */
    char *build_model;
    int stream_error;               /* an error event arrived in the stream */
    char stream_error_msg[256];
    /* what is asked (engine_request's typed fields, copied) and the answer
     * being read: its usage, finish_reason and [DONE] (answer.h) */
    enum engine_endpoint endpoint;
    int logprobs;
    int top_logprobs;
    char traceparent[64];           /* W3C: 55 characters; "" for none */
    char tracestate[520];           /* W3C: at most 512; "" for none (or too long) */
    struct answer ans;
    /* retries (see start_attempt, attempt_failed) */
    unsigned attempts;              /* sent so far */
    int last_replica;               /* the replica of the last attempt, or -1 */
    int attempt_open;               /* the current attempt has not been reported (attempt_end) */
    int trial;                      /* the current attempt is its replica's trial (outlier.h) */
    int reused;                     /* the current attempt went out on a pooled connection */
    int stale_retried;              /* a stale pooled connection was forgiven once (done_cb) */
    int spared;                     /* attempt_end: no verdict on the replica for this one */
    struct event *retry_timer;      /* waiting out the backoff before the next attempt */
    enum remote_outcome last_outcome;   /* why the last attempt failed */
    int64_t retry_after_s;          /* its Retry-After (429, 503), or 0 */
    char fail_msg[320];             /* its description, for the final error */
};

/* ---- configuration ----------------------------------------------------- */

int remote_config_parse(json_t *j, const char *path, struct remote_config *cfg, char *err, size_t errlen)
{
    static const char *const keys[] = {"kind", "urls", "timeout_ms", "chunk_timeout_ms",
                                       "health_interval_ms", "health_path", "api_key", "api_key_env",
                                       "api_key_file", "tls", "eject_after", "eject_ms",
                                       "max_response_bytes", "max_idle_per_replica", NULL};
    static const char *const tls_keys[] = {"ca_file", NULL};
    char p[256];
    memset(cfg, 0, sizeof *cfg);
    cfg->timeout_ms = 120000;
    cfg->chunk_timeout_ms = 30000;
    cfg->health_interval_ms = 2000;
    cfg->max_response_bytes = 8u << 20;
    cfg->max_idle_per_replica = 64;
    cfg->eject_after = 3;
    cfg->eject_ms = 10000;
    if (cfgj_known_keys(j, path, keys, err, errlen) < 0)
        return -1;
    json_t *urls;
    if (cfgj_array(j, path, "urls", 1, &urls, err, errlen) < 0)
        return -1;
    cfgj_path(p, sizeof p, path, "urls");
    if (json_array_size(urls) == 0)
        return cfgj_fail(err, errlen, p, "must list at least one replica URL");
    if (json_array_size(urls) > MAX_REPLICAS)
        return cfgj_fail(err, errlen, p, "at most %d replicas", MAX_REPLICAS);
    cfg->urls = xcalloc(json_array_size(urls), sizeof *cfg->urls);
    size_t i;
    json_t *u;
    json_array_foreach(urls, i, u) {
        char up[280];
        cfgj_path_index(up, sizeof up, p, i);
        if (!json_is_string(u))
            return cfgj_fail(err, errlen, up, "must be a string");
        struct evhttp_uri *uri = evhttp_uri_parse(json_string_value(u));
        const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
        int ok = scheme && (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0) &&
                 evhttp_uri_get_host(uri) && *evhttp_uri_get_host(uri);
        if (uri)
            evhttp_uri_free(uri);
        if (!ok)
            return cfgj_fail(err, errlen, up, "not an http[s]://host[:port][/prefix] URL");
        cfg->urls[cfg->n_urls++] = xstrdup(json_string_value(u));
    }
    unsigned long long v;
    v = cfg->timeout_ms;
    if (cfgj_uint(j, path, "timeout_ms", 1, 86400000, &v, err, errlen) < 0)
        return -1;
    cfg->timeout_ms = (unsigned)v;
    v = cfg->chunk_timeout_ms;
    if (cfgj_uint(j, path, "chunk_timeout_ms", 1, 86400000, &v, err, errlen) < 0)
        return -1;
    cfg->chunk_timeout_ms = (unsigned)v;
    v = cfg->health_interval_ms;
    if (cfgj_uint(j, path, "health_interval_ms", 50, 3600000, &v, err, errlen) < 0)
        return -1;
    cfg->health_interval_ms = (unsigned)v;
    v = cfg->max_response_bytes;
    if (cfgj_uint(j, path, "max_response_bytes", 1024, 1ull << 30, &v, err, errlen) < 0)
        return -1;
    cfg->max_response_bytes = (size_t)v;
    v = cfg->max_idle_per_replica;
    if (cfgj_uint(j, path, "max_idle_per_replica", 0, 100000, &v, err, errlen) < 0)
        return -1;
    cfg->max_idle_per_replica = (unsigned)v;
    v = cfg->eject_after;
    if (cfgj_uint(j, path, "eject_after", 0, 1000, &v, err, errlen) < 0)
        return -1;
    cfg->eject_after = (unsigned)v;
    v = cfg->eject_ms;
    if (cfgj_uint(j, path, "eject_ms", 1, 3600000, &v, err, errlen) < 0)
        return -1;
    cfg->eject_ms = (unsigned)v;
    const char *s = "/v1/models";
    if (cfgj_string(j, path, "health_path", 0, &s, err, errlen) < 0)
        return -1;
    if (s[0] != '/') {
        cfgj_path(p, sizeof p, path, "health_path");
        return cfgj_fail(err, errlen, p, "must start with '/'");
    }
    cfg->health_path = xstrdup(s);
    /* The key: in the config (kept for old configs), or where it lives;
     * only the names are read here, the secret by remote_engine_new. */
    const char *key = NULL, *key_env = NULL, *key_file = NULL;
    if (cfgj_string(j, path, "api_key", 0, &key, err, errlen) < 0 ||
        cfgj_string(j, path, "api_key_env", 0, &key_env, err, errlen) < 0 ||
        cfgj_string(j, path, "api_key_file", 0, &key_file, err, errlen) < 0)
        return -1;
    if ((key != NULL) + (key_env != NULL) + (key_file != NULL) > 1) {
        cfgj_path(p, sizeof p, path, key_file ? "api_key_file" : "api_key_env");
        return cfgj_fail(err, errlen, p, "give only one of api_key, api_key_env and api_key_file");
    }
    if ((key_env && !*key_env) || (key_file && !*key_file)) {
        cfgj_path(p, sizeof p, path, key_env ? "api_key_env" : "api_key_file");
        return cfgj_fail(err, errlen, p, "must not be empty");
    }
    cfg->api_key = key ? xstrdup(key) : NULL;
    cfg->api_key_env = key_env ? xstrdup(key_env) : NULL;
    cfg->api_key_file = key_file ? xstrdup(key_file) : NULL;
    json_t *tls;
    if (cfgj_object(j, path, "tls", 0, &tls, err, errlen) < 0)
        return -1;
    if (tls) {
        cfgj_path(p, sizeof p, path, "tls");
        const char *ca = NULL;
        if (cfgj_known_keys(tls, p, tls_keys, err, errlen) < 0 || cfgj_string(tls, p, "ca_file", 0, &ca, err, errlen) < 0)
            return -1;
        if (ca && !*ca) {
            char cp[280];
            cfgj_path(cp, sizeof cp, p, "ca_file");
            return cfgj_fail(err, errlen, cp, "must not be empty");
        }
        cfg->tls_ca_file = ca ? xstrdup(ca) : NULL;
    }
    return 0;
}

void remote_config_free(struct remote_config *cfg)
{
    for (size_t i = 0; i < cfg->n_urls; i++)
        free(cfg->urls[i]);
    free(cfg->urls);
    free(cfg->health_path);
    free(cfg->api_key);
    free(cfg->api_key_env);
    free(cfg->api_key_file);
    free(cfg->tls_ca_file);
    memset(cfg, 0, sizeof *cfg);
}

static void config_copy(struct remote_config *dst, const struct remote_config *src)
{
    *dst = *src;
    dst->urls = xcalloc(src->n_urls, sizeof *dst->urls);
    for (size_t i = 0; i < src->n_urls; i++)
        dst->urls[i] = xstrdup(src->urls[i]);
    dst->health_path = xstrdup(src->health_path ? src->health_path : "/v1/models");
    dst->api_key = src->api_key ? xstrdup(src->api_key) : NULL;
    dst->api_key_env = src->api_key_env ? xstrdup(src->api_key_env) : NULL;
    dst->api_key_file = src->api_key_file ? xstrdup(src->api_key_file) : NULL;
    dst->tls_ca_file = src->tls_ca_file ? xstrdup(src->tls_ca_file) : NULL;
}

/* ---- per-worker state -------------------------------------------------- */

/* The caller's worker state, created on its first request. Reads are
 * lock-free: the array only grows, and each slot is published by the count. */
static struct remote_local *local_for(struct remote *r, struct event_base *base)
{
    size_t n = atomic_load(&r->n_locals);
    for (size_t i = 0; i < n; i++)
        if (r->locals[i]->base == base)
            return r->locals[i];
    pthread_mutex_lock(&r->mu);
    n = atomic_load(&r->n_locals);
    struct remote_local *L = NULL;
    for (size_t i = 0; i < n && !L; i++)
        if (r->locals[i]->base == base)
            L = r->locals[i];
    if (!L && n < MAX_LOCALS) {
        L = xcalloc(1, sizeof *L);
        L->r = r;
        L->base = base;
        L->index = n;
        L->pools = xcalloc(r->n, sizeof *L->pools);
        r->locals[n] = L;
        atomic_store(&r->n_locals, n + 1);
    }
    pthread_mutex_unlock(&r->mu);
    return L;
}

/* An idle connection to replica ri, or a new one. A pooled TLS connection
 * that closed while it sat idle is freed here (tls.h: it cannot reconnect);
 * we are in none of its callbacks, so at once. */
static struct evhttp_connection *pool_get(struct remote_local *L, int ri, int *reused)
{
    struct pool *p = &L->pools[ri];
    struct replica *rep = &L->r->replicas[ri];
    *reused = 0;
    while (p->n) {
        struct evhttp_connection *c = p->idle[--p->n];
        if (!rep->tls || remote_tls_conn_reusable(c)) {
            *reused = 1;
            return c;
        }
        evhttp_connection_free(c);
    }
    if (!rep->numeric && !L->dns)
        L->dns = evdns_base_new(L->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    struct evdns_base *dns = rep->numeric ? NULL : L->dns;
    struct evhttp_connection *c =
        rep->tls ? remote_tls_connect(L->r->tls, rep->tls_cache, L->base, dns, rep->host, (unsigned short)rep->port)
                 : evhttp_connection_base_new(L->base, dns, rep->host, (unsigned short)rep->port);
    if (!c)
        return NULL;
    struct timeval tv = {L->r->cfg.chunk_timeout_ms / 1000, (L->r->cfg.chunk_timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(c, &tv);
    evhttp_connection_set_retries(c, 0);
    evhttp_connection_set_max_headers_size(c, 64 * 1024);
    return c;
}

static void free_conn_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evhttp_connection_free(arg);
}

/* Return a connection for reuse. evhttp resets a failed plain connection
 * itself and reconnects on next use, so those are all reusable; a TLS one
 * only while its session lasts (tls.h). What is not kept is freed later,
 * since we may be inside one of its callbacks. */
static void pool_put(struct remote_local *L, int ri, struct evhttp_connection *c)
{
    struct pool *p = &L->pools[ri];
    int reusable = !L->r->replicas[ri].tls || remote_tls_conn_reusable(c);
    if (reusable && p->n < L->r->cfg.max_idle_per_replica) {
        if (!p->idle)
            p->idle = xcalloc(L->r->cfg.max_idle_per_replica, sizeof *p->idle);
        p->idle[p->n++] = c;
        return;
    }
    event_base_once(L->base, -1, EV_TIMEOUT, free_conn_cb, c, NULL);
}

/* ---- replica choice ---------------------------------------------------- */

/* Seen up: not failing its probes, no connection refused just now. */
static int replica_up(struct replica *rep, uint64_t now)
{
    int probed = atomic_load(&rep->probed);
    return (!probed || atomic_load(&rep->healthy)) && atomic_load(&rep->down_until_us) <= now;
}

/* Least outstanding requests among untried replicas, up ones first; the
 * rotating start breaks ties so equal replicas share the load. Ejected
 * replicas (outlier.h) are left out unless with_ejected; one on probation
 * is taken only with its trial slot, and *trial says so. -1: none. */
static int pick_replica(struct remote *r, const uint8_t *tried, int with_ejected, int *trial)
{
    uint64_t now = clock_mono_us();
    size_t start = atomic_fetch_add(&r->rr, 1) % r->n;
    uint8_t taken[MAX_REPLICAS] = {0}; /* on probation, but another request holds the trial */
    for (;;) {
        int best = -1, best_state = OUTLIER_LIVE;
        long best_score = 0;
        for (size_t k = 0; k < r->n; k++) {
            size_t i = (start + k) % r->n;
            if (tried[i] || taken[i])
                continue;
            struct replica *rep = &r->replicas[i];
            int state = outlier_state(&rep->outlier, now);
            if (state == OUTLIER_OUT && !with_ejected)
                continue;
            long score = atomic_load(&rep->outstanding) + (replica_up(rep, now) ? 0 : 1L << 30) +
                         (state == OUTLIER_OUT ? 1L << 40 : 0);
            if (best < 0 || score < best_score) {
                best = (int)i;
                best_score = score;
                best_state = state;
            }
        }
        *trial = 0;
        if (best < 0 || best_state != OUTLIER_PROBATION)
            return best;
        if (outlier_take_trial(&r->replicas[best].outlier)) {
            *trial = 1;
            return best;
        }
        taken[best] = 1; /* another worker's request is its trial: look again */
    }
}

/* The replica for a request's next attempt: an untried live one; when
 * every live one was tried, around again (the attempt budget bounds the
 * rounds), the last one failed last unless it is the only one; ejected
 * replicas only when no live one exists. -1 when there is none at all. */
static int choose_replica(struct rreq *q, int *trial)
{
    struct remote *r = q->L->r;
    int ri = pick_replica(r, q->tried, 0, trial);
    if (ri >= 0)
        return ri;
    uint64_t now = clock_mono_us();
    size_t live = 0;
    for (size_t i = 0; i < r->n; i++)
        live += outlier_state(&r->replicas[i].outlier, now) != OUTLIER_OUT;
    uint8_t tried[MAX_REPLICAS] = {0};
    if (live > 1 && q->last_replica >= 0)
        tried[q->last_replica] = 1;
    if (live) {
        ri = pick_replica(r, tried, 0, trial);
        if (ri >= 0) {
            memcpy(q->tried, tried, sizeof tried);
            return ri;
        }
    }
    ri = pick_replica(r, q->tried, 1, trial);
    if (ri < 0) {
        memset(q->tried, 0, sizeof q->tried);
        ri = pick_replica(r, q->tried, 1, trial);
    }
    return ri;
}

/* ---- delivering results ------------------------------------------------ */

static void rreq_free(struct rreq *q)
{
    struct remote_local *L = q->L;
    if (q->prev)
        q->prev->next = q->next;
    else if (L->active == q)
        L->active = q->next;
    if (q->next)
        q->next->prev = q->prev;
    if (q->timer)
        event_free(q->timer);
    if (q->retry_timer)
        event_free(q->retry_timer);
    sse_parser_free(q->sse);
    if (q->errbody)
        evbuffer_free(q->errbody);
    json_decref(q->build_root);
    free(q->build_model);
    free(q->body);
    free(q);
}

/* Let go of the upstream side: the connection goes back to the pool. */
static void release_upstream(struct rreq *q)
{
    if (q->replica >= 0) {
        atomic_fetch_sub(&q->L->r->replicas[q->replica].outstanding, 1);
        if (q->conn)
            pool_put(q->L, q->replica, q->conn);
    }
    q->conn = NULL;
    q->replica = -1;
}

void remote_engine_set_pool(struct engine *e, struct workpool *pool)
{
    ((struct remote *)e)->pool = pool;
}

const char *remote_outcome_name(enum remote_outcome o)
{
    static const char *const names[REMOTE_N_OUTCOMES] = {
        "ok", "http_4xx", "http_429", "http_5xx", "connect_error", "timeout", "bad_response", "cancelled",
    };
    return (unsigned)o < REMOTE_N_OUTCOMES ? names[o] : "unknown";
}

void remote_engine_set_hooks(struct engine *e, const struct remote_hooks *hooks, void *ctx, size_t replica_base)
{
    struct remote *r = (struct remote *)e;
    r->hooks = *hooks;
    r->hooks_ctx = ctx;
    r->replica_base = replica_base;
}

/* An ejection or a return (outlier.h reports each once): log it and tell
 * the metrics. Any thread. */
static void outlier_changed(struct remote *r, size_t ri, enum outlier_change ch, unsigned ms)
{
    if (ch == OUTLIER_SAME)
        return;
    if (ch == OUTLIER_EJECTED)
        log_warn("upstream %s ejected for %u ms: it failed %u attempts in a row", r->replicas[ri].url, ms,
                 atomic_load(&r->replicas[ri].outlier.fails));
    else
        log_info("upstream %s is back from ejection", r->replicas[ri].url);
    if (r->hooks.eject)
        r->hooks.eject(r->hooks_ctx, r->replica_base + ri, ch == OUTLIER_EJECTED);
}

/* The current attempt is over, with outcome o: its verdict on the replica
 * (outlier.h) and its count in the metrics, exactly once per attempt (the
 * cancel and failure paths may both get here). retried: another attempt
 * follows. Call it before release_upstream, which forgets the replica. */
static void attempt_end(struct rreq *q, enum remote_outcome o, int retried)
{
    if (!q->attempt_open || q->replica < 0)
        return;
    q->attempt_open = 0;
    struct remote *r = q->L->r;
    size_t ri = (size_t)q->replica;
    struct outlier *ol = &r->replicas[ri].outlier;
    enum outlier_change ch = OUTLIER_SAME;
    unsigned ms = 0;
    switch (q->spared ? REMOTE_CANCELLED : o) {
    case REMOTE_OK:
    case REMOTE_HTTP_4XX: /* it answered: it works */
        ch = outlier_success(ol);
        break;
    case REMOTE_HTTP_429:  /* busy, not broken */
    case REMOTE_CANCELLED: /* no verdict */
        break;
    default:
        ch = outlier_failure(ol, &r->eject, clock_mono_us(), &ms);
        break;
    }
    if (q->trial) {
        outlier_end_trial(ol);
        q->trial = 0;
    }
    q->spared = 0;
    outlier_changed(r, ri, ch, ms);
    if (r->hooks.attempt)
        r->hooks.attempt(r->hooks_ctx, r->replica_base + ri, o, retried);
}

static void finish_error(struct rreq *q, int status, const char *type, const char *code, const char *msg)
{
    if (!q->ended) {
        q->ended = 1;
        struct engine_error e = {.status = status, .type = type, .code = code, .message = msg};
        q->cb.on_error(q->ctx, &e);
    }
    rreq_free(q);
}

static void finish_done(struct rreq *q)
{
    if (!q->ended) {
        q->ended = 1;
        q->cb.on_done(q->ctx, &q->ans.usage, q->ans.finish_reason[0] ? q->ans.finish_reason : "stop");
    }
    rreq_free(q);
}

/* ---- parsing upstream answers ------------------------------------------ */

/* What the answer module (answer.h) hands over, to the caller. Nonzero
 * when the caller ended the request inside its callback (it cancelled). */
static int remote_emit(void *ctx, const struct engine_token *tok)
{
    struct rreq *q = ctx;
    if (q->ended)
        return 1;
    q->cb.on_token(q->ctx, tok);
    return q->ended;
}

/* The replica's path for an endpoint: its prefix (chat_path without
 * "/chat/completions", e.g. "/v1") and the endpoint's path under it. */
static void endpoint_path(const struct replica *rep, enum engine_endpoint ep, char *out, size_t size)
{
    static const char chat[] = "/chat/completions";
    size_t n = strlen(rep->chat_path), k = sizeof chat - 1;
    if (n >= k && strcmp(rep->chat_path + n - k, chat) == 0)
        n -= k;
    if (n >= size)
        n = size - 1;
    memcpy(out, rep->chat_path, n);
    fmt_copy(out + n, size - n, answer_path(ep));
}

static void cancel_deferred_cb(evutil_socket_t fd, short what, void *arg);

/* Inside chunk_cb, where libevent still holds the request: stop reading at
 * once and drop the connection on the next loop turn (as remote_cancel
 * does), so the upstream sees the close and stops sending. */
static void drop_upstream_later(struct rreq *q)
{
    if (q->conn)
        bufferevent_disable(evhttp_connection_get_bufferevent(q->conn), EV_READ);
    q->cancel_pending = 1;
    event_base_once(q->L->base, -1, EV_TIMEOUT, cancel_deferred_cb, q, NULL);
}

/* A stream past its max_tokens: done, with what came before the excess. */
static void cut_stream(struct rreq *q)
{
    q->ended = 1;
    q->cb.on_done(q->ctx, &q->ans.usage, "length");
    drop_upstream_later(q);
}

/* One event of a stream (sse.h): its meaning is answer.c's; here only what
 * ends the request. -1 stops the parser. */
static int on_sse_event(void *ctx, const char *event, const char *data, size_t len)
{
    (void)event;
    struct rreq *q = ctx;
    if (q->ended)
        return 0;
    switch (answer_stream_event(&q->ans, data, len)) {
    case ANSWER_OK:
        return 0;
    case ANSWER_CUT:
        cut_stream(q);
        return -1;
    case ANSWER_BAD:
    default:
        /* chunk_cb sees stream_error and aborts with 502 */
        q->stream_error = 1;
        snprintf(q->stream_error_msg, sizeof q->stream_error_msg, "%s", q->ans.error);
        return -1;
    }
}

static void finish_nonstream(struct rreq *q, const char *body, size_t len)
{
    if (answer_full(&q->ans, body, len) != ANSWER_OK) {
        finish_error(q, 502, "upstream_error", "bad_upstream_response", q->ans.error);
        return;
    }
    finish_done(q);
}

/* An upstream 4xx is the client's problem: pass its error through. */
static void finish_upstream_status(struct rreq *q, const char *body, size_t len, const char *url)
{
    char msg[300];
    if (q->status >= 400 && q->status < 500) {
        struct answer_error ae;
        answer_error_parse(body, len, &ae);
        finish_error(q, q->status, ae.type, ae.code[0] ? ae.code : NULL, ae.message);
        return;
    }
    snprintf(msg, sizeof msg, "upstream %s answered HTTP %d", url, q->status);
    finish_error(q, 502, "upstream_error", "upstream_error", msg);
}

/* ---- evhttp callbacks -------------------------------------------------- */

/* A stream that went bad (a malformed or error event, an event over the
 * size limit): tell the caller now and drop the connection, rather than
 * wait for an upstream that may never stop sending. */
static void abort_stream(struct rreq *q)
{
    attempt_end(q, REMOTE_BAD_RESPONSE, 0);
    q->ended = 1;
    struct engine_error e = {.status = 502, .type = "upstream_error", .code = "bad_upstream_stream", .message = q->stream_error_msg};
    q->cb.on_error(q->ctx, &e);
    drop_upstream_later(q);
}

/* TCP_NODELAY on c's socket, once it has one. evhttp writes a request's
 * headers and body as separate pieces; over TLS each becomes its own
 * record and segment, and Nagle held the second back until the upstream's
 * delayed ACK: 40 ms on every request of a kept-alive TLS connection
 * (bench/remote/upstream_tls.mjs). */
static void set_nodelay(struct evhttp_connection *c)
{
    evutil_socket_t fd = bufferevent_getfd(evhttp_connection_get_bufferevent(c));
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Send the request evhttp has just queued on c now (bevwrite.h), rather
 * than in the next loop turn, when c is a connected plain connection: only
 * then is the request in its output right after evhttp_make_request() (a
 * connecting one writes it once connected; TLS writes through OpenSSL's
 * bufferevent). Once all is written, the write callback tells evhttp,
 * which turns to reading the response. Else, when c's socket is new (a new
 * connection, or a pooled plain one reconnecting), it gets TCP_NODELAY; a
 * connected socket has had it since it was made, and a pooled TLS
 * connection never reconnects (tls.h). */
static void send_now(struct evhttp_connection *c, int tls, int reused)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(c);
    if (!tls && evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        bev_write_now(bev);
    else if (!(tls && reused))
        set_nodelay(c);
}

static int header_cb(struct evhttp_request *req, void *arg)
{
    struct rreq *q = arg;
    if (q->conn && !q->reused) /* a connection made for this attempt: its socket exists now */
        set_nodelay(q->conn);
    q->got_headers = 1;
    q->status = evhttp_request_get_response_code(req);
    atomic_store(&q->L->r->replicas[q->replica].down_until_us, 0);
    return 0;
}

static void chunk_cb(struct evhttp_request *req, void *arg)
{
    struct rreq *q = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    if (q->status != 200) {
        if (!q->errbody)
            q->errbody = evbuffer_new();
        size_t room = ERRBODY_MAX - evbuffer_get_length(q->errbody);
        size_t n = evbuffer_get_length(in);
        evbuffer_remove_buffer(in, q->errbody, n < room ? n : room);
        return;
    }
    if (q->ended || q->stream_error)
        return;
    /* Feed the parser straight from libevent's buffer, segment by segment. */
    int nvec = evbuffer_peek(in, -1, NULL, NULL, 0);
    struct evbuffer_iovec vs[16], *v = nvec <= 16 ? vs : xmalloc(sizeof *v * (size_t)nvec);
    evbuffer_peek(in, -1, NULL, v, nvec);
    q->in_chunk_cb = 1;
    for (int i = 0; i < nvec && !q->ended && !q->stream_error; i++) {
        int rc = sse_parser_feed(q->sse, v[i].iov_base, v[i].iov_len);
        if (rc == SSE_ETOOBIG) {
            q->stream_error = 1;
            snprintf(q->stream_error_msg, sizeof q->stream_error_msg, "upstream stream event too large");
        }
    }
    q->in_chunk_cb = 0;
    if (v != vs)
        free(v);
    if (q->stream_error && !q->ended)
        abort_stream(q);
}

static void error_cb(enum evhttp_request_error kind, void *arg)
{
    struct rreq *q = arg;
    q->error_kind = (int)kind;
}

static int start_attempt(struct rreq *q);

/* Every attempt failed (or the time ran out): the last failure decides the
 * error, which is retryable, since another tier need not fail alike. */
static void finish_exhausted(struct rreq *q)
{
    int status = 502;
    const char *code = "upstream_unreachable";
    switch (q->last_outcome) {
    case REMOTE_TIMEOUT:
        status = 504;
        code = "upstream_timeout";
        break;
    case REMOTE_HTTP_429:
        status = 503;
        code = "upstream_overloaded";
        break;
    case REMOTE_HTTP_5XX:
        status = q->status == 503 ? 503 : 502;
        code = q->status == 503 ? "upstream_unavailable" : "upstream_error";
        break;
    default:
        break;
    }
    char msg[400];
    if (q->attempts)
        snprintf(msg, sizeof msg, "%s (%u attempt%s)", q->fail_msg, q->attempts, q->attempts == 1 ? "" : "s");
    else
        snprintf(msg, sizeof msg, "%s", q->fail_msg[0] ? q->fail_msg : "no upstream replica is reachable");
    if (!q->ended) {
        q->ended = 1;
        struct engine_error e = {.status = status, .type = "upstream_error", .code = code, .message = msg,
                                 .retryable = 1, .retry_after_s = status == 503 ? q->retry_after_s : 0};
        q->cb.on_error(q->ctx, &e);
    }
    rreq_free(q);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rreq *q = arg;
    if (start_attempt(q) < 0)
        finish_exhausted(q);
}

static int retryable_outcome(enum remote_outcome o)
{
    return o == REMOTE_HTTP_5XX || o == REMOTE_HTTP_429 || o == REMOTE_CONNECT_ERROR || o == REMOTE_TIMEOUT;
}

/* The current attempt failed with o (msg says how). While nothing reached
 * the caller and tries remain, the request goes again after the backoff
 * (an event timer: the loop never waits); otherwise it ends here. */
static void attempt_failed(struct rreq *q, enum remote_outcome o, const char *msg, int64_t retry_after_s)
{
    struct remote *r = q->L->r;
    int delivered = q->ans.delivered > 0;
    unsigned max = r->cfg.retry_attempts ? r->cfg.retry_attempts : 1;
    int retry = !delivered && retryable_outcome(o) && q->attempts < max;
    q->last_replica = q->replica;
    attempt_end(q, o, retry);
    release_upstream(q);
    q->last_outcome = o;
    q->retry_after_s = retry_after_s;
    snprintf(q->fail_msg, sizeof q->fail_msg, "%s", msg);
    if (retry) {
        static struct log_limit lim;
        log_limited(&lim, 1000, LOG_WARN, "%s; trying again (attempt %u of %u)", msg, q->attempts + 1, max);
        /* backoff before the second try, doubled before each next one;
         * none when no try was counted yet (a stale connection, done_cb) */
        uint64_t ms = 0;
        if (q->attempts > 0) {
            unsigned doublings = q->attempts - 1 < 16 ? q->attempts - 1 : 16;
            ms = (uint64_t)r->cfg.retry_backoff_ms << doublings;
        }
        if (!q->retry_timer)
            q->retry_timer = evtimer_new(q->L->base, retry_cb, q);
        struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
        evtimer_add(q->retry_timer, &tv);
        return;
    }
    if (!delivered) {
        finish_exhausted(q);
        return;
    }
    /* Part of the answer is with the caller: final, and another tier
     * cannot take over a half-sent answer. */
    if (o == REMOTE_TIMEOUT)
        finish_error(q, 504, "upstream_error", "upstream_timeout", msg);
    else
        finish_error(q, 502, "upstream_error", "upstream_disconnected", msg);
}

static void done_cb(struct evhttp_request *req, void *arg)
{
    struct rreq *q = arg;
    struct remote *r = q->L->r;
    q->req = NULL; /* libevent frees it after we return */
    int ri = q->replica;
    const char *url = ri >= 0 ? r->replicas[ri].url : "?";
    if (q->ended) { /* cancelled while a chunk callback was running */
        attempt_end(q, REMOTE_CANCELLED, 0);
        release_upstream(q);
        if (!q->cancel_pending)
            rreq_free(q);
        return;
    }
    char msg[320];
    if (!req || evhttp_request_get_response_code(req) == 0) {
        if (q->error_kind == EVREQ_HTTP_DATA_TOO_LONG) {
            /* Past max_response_bytes: evhttp has closed the connection,
             * so the upstream stops; the caller keeps what came before.
             * Not retried: another replica would say as much. */
            attempt_end(q, REMOTE_BAD_RESPONSE, 0);
            release_upstream(q);
            finish_error(q, 502, "upstream_error", "upstream_response_too_large",
                         "upstream response exceeded max_response_bytes");
            return;
        }
        if (q->error_kind == EVREQ_HTTP_TIMEOUT) {
            /* evhttp's read timeout (chunk_timeout_ms): no headers yet,
             * or a stream that stalled. */
            snprintf(msg, sizeof msg, "upstream %s sent nothing for %u ms", url, r->cfg.chunk_timeout_ms);
            attempt_failed(q, REMOTE_TIMEOUT, msg, 0);
            return;
        }
        if (!q->got_headers && q->reused && !q->stale_retried) {
            /* A pooled connection that the upstream closed as we sent on
             * it (its keep-alive timeout raced our request): not the
             * replica's failure. Once per request it costs no attempt and
             * no blame; the next attempt takes a fresh connection. */
            q->stale_retried = 1;
            q->spared = 1;
            q->attempts--;
            snprintf(msg, sizeof msg, "upstream %s closed a kept-alive connection before answering", url);
            attempt_failed(q, REMOTE_CONNECT_ERROR, msg, 0);
            return;
        }
        if (!q->got_headers) {
            /* Refused, reset, or a TLS handshake that failed, before any
             * answer: prefer the other replicas for a while. */
            char why[200];
            const char *tls = q->conn && r->replicas[ri].tls ? remote_tls_conn_error(q->conn, why, sizeof why) : NULL;
            snprintf(msg, sizeof msg, "upstream %s unreachable%s%s", url, tls ? ": " : "", tls ? tls : "");
            atomic_store(&r->replicas[ri].down_until_us, clock_mono_us() + DOWN_BACKOFF_US);
        } else {
            snprintf(msg, sizeof msg, "upstream %s closed the connection mid-response", url);
        }
        attempt_failed(q, REMOTE_CONNECT_ERROR, msg, 0);
        return;
    }
    q->status = evhttp_request_get_response_code(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    if (q->status != 200) {
        struct evbuffer *b = q->errbody ? q->errbody : in;
        size_t len = evbuffer_get_length(b);
        char *body = xmalloc(len + 1);
        evbuffer_copyout(b, body, len);
        body[len] = '\0';
        if (q->status >= 500 || q->status == 429) {
            /* The replica cannot serve now; another may. */
            struct answer_error ae;
            answer_error_parse(body, len, &ae);
            free(body);
            int64_t ra = 0;
            if (q->status == 429 || q->status == 503)
                ra = answer_retry_after_s(evhttp_find_header(evhttp_request_get_input_headers(req), "Retry-After"),
                                          (int64_t)time(NULL));
            snprintf(msg, sizeof msg, "upstream %s answered HTTP %d: %.200s", url, q->status, ae.message);
            attempt_failed(q, q->status == 429 ? REMOTE_HTTP_429 : REMOTE_HTTP_5XX, msg, ra);
            return;
        }
        attempt_end(q, q->status >= 400 ? REMOTE_HTTP_4XX : REMOTE_BAD_RESPONSE, 0);
        release_upstream(q);
        finish_upstream_status(q, body, len, url);
        free(body);
        return;
    }
    if (q->stream) {
        if (q->stream_error) {
            attempt_end(q, REMOTE_BAD_RESPONSE, 0);
            release_upstream(q);
            finish_error(q, 502, "upstream_error", "bad_upstream_stream", q->stream_error_msg);
        } else if (q->ans.saw_done || q->ans.finish_reason[0]) {
            attempt_end(q, REMOTE_OK, 0);
            release_upstream(q);
            finish_done(q);
        } else {
            /* Closed before it finished: a broken connection, retried
             * while nothing reached the caller. */
            snprintf(msg, sizeof msg, "upstream %s: stream ended before it finished", url);
            attempt_failed(q, REMOTE_CONNECT_ERROR, msg, 0);
        }
        return;
    }
    attempt_end(q, REMOTE_OK, 0);
    size_t len = evbuffer_get_length(in);
    const char *body = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
    release_upstream(q);
    finish_nonstream(q, body ? body : "", len);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rreq *q = arg;
    if (q->building) {
        /* The body is still being built: tell the caller now (unless it
         * cancelled); build_done frees the request. */
        if (!q->ended) {
            q->ended = 1;
            struct engine_error e = {.status = 504, .type = "upstream_error", .code = "upstream_timeout", .message = "upstream timed out", .retryable = 1};
            q->cb.on_error(q->ctx, &e);
        }
        return;
    }
    /* The whole request's time is up, whatever attempt it is on (or
     * between attempts): no retry can fit any more. */
    if (q->req) {
        evhttp_cancel_request(q->req); /* closes the upstream connection */
        q->req = NULL;
    }
    attempt_end(q, REMOTE_TIMEOUT, 0);
    release_upstream(q);
    if (q->ans.delivered > 0) {
        finish_error(q, 504, "upstream_error", "upstream_timeout", "upstream timed out");
        return;
    }
    q->last_outcome = REMOTE_TIMEOUT;
    snprintf(q->fail_msg, sizeof q->fail_msg, "upstream timed out (timeout_ms %u)", q->L->r->cfg.timeout_ms);
    finish_exhausted(q);
}

/* What one attempt reads, made new for each: a retry starts from nothing
 * (it happens only while nothing reached the caller). */
static void attempt_reset(struct rreq *q)
{
    struct remote *r = q->L->r;
    q->got_headers = 0;
    q->status = 0;
    q->error_kind = -1;
    q->stream_error = 0;
    q->stream_error_msg[0] = '\0';
    if (q->errbody) {
        evbuffer_free(q->errbody);
        q->errbody = NULL;
    }
    answer_init(&q->ans, q->endpoint, q->max_tokens, remote_emit, q);
    if (q->stream) {
        sse_parser_free(q->sse);
        q->sse = sse_parser_new(r->cfg.max_response_bytes, on_sse_event, q);
    }
}

/* Send the request to the replica choose_replica() gives (another than the
 * last, when there is one). 0, or -1 when none could be sent to. */
static int start_attempt(struct rreq *q)
{
    struct remote *r = q->L->r;
    /* Each pass either sends or marks a replica tried; two rounds over the
     * replicas bound a run of replicas that cannot even be started. */
    for (size_t pass = 0; pass < 2 * r->n; pass++) {
        int trial;
        int ri = choose_replica(q, &trial);
        if (ri < 0)
            return -1;
        q->tried[ri] = 1;
        struct replica *rep = &r->replicas[ri];
        int reused;
        struct evhttp_connection *c = pool_get(q->L, ri, &reused);
        if (!c) {
            if (trial)
                outlier_end_trial(&rep->outlier);
            continue;
        }
        /* max_response_bytes caps a whole answer, streamed or not: evhttp
         * counts the body as it reads it (chunk sizes included) and fails
         * the request with EVREQ_HTTP_DATA_TOO_LONG past the cap, which is
         * what stops an upstream that streams without end. */
        evhttp_connection_set_max_body_size(c, (ev_ssize_t)r->cfg.max_response_bytes);
        struct evhttp_request *req = evhttp_request_new(done_cb, q);
        evhttp_request_set_header_cb(req, header_cb);
        if (q->stream) /* with a chunk callback, evhttp drains the body as it goes */
            evhttp_request_set_chunked_cb(req, chunk_cb);
        evhttp_request_set_error_cb(req, error_cb);
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        char hostport[300];
        if (rep->default_port) /* as browsers and curl send it; some hosted APIs route on it */
            fmt_copy(hostport, sizeof hostport, rep->host);
        else {
            char port[24];
            fmt_i64(port, sizeof port, rep->port);
            fmt_join(hostport, sizeof hostport, rep->host, ":", port, (char *)NULL);
        }
        evhttp_add_header(h, "Host", hostport);
        evhttp_add_header(h, "Content-Type", "application/json");
        evhttp_add_header(h, "Accept", q->stream ? "text/event-stream" : "application/json");
        evhttp_add_header(h, "x-request-id", q->request_id);
        if (q->traceparent[0])
            evhttp_add_header(h, "traceparent", q->traceparent);
        if (q->tracestate[0])
            evhttp_add_header(h, "tracestate", q->tracestate);
        if (r->cfg.api_key) {
            char auth[512];
            fmt_join(auth, sizeof auth, "Bearer ", r->cfg.api_key, (char *)NULL);
            evhttp_add_header(h, "Authorization", auth);
        }
        evbuffer_add(evhttp_request_get_output_buffer(req), q->body, q->body_len);
        attempt_reset(q);
        q->replica = ri;
        q->conn = c;
        q->req = req;
        atomic_fetch_add(&rep->outstanding, 1);
        char path[sizeof rep->chat_path];
        endpoint_path(rep, q->endpoint, path, sizeof path);
        if (evhttp_make_request(c, req, EVHTTP_REQ_POST, path) == 0) {
            send_now(c, rep->tls, reused);
            q->attempts++;
            q->attempt_open = 1;
            q->trial = trial;
            q->reused = reused;
            return 0;
        }
        /* Could not even start: the request was not queued, so free it. */
        evhttp_request_free(req);
        q->req = NULL;
        if (trial)
            outlier_end_trial(&rep->outlier);
        release_upstream(q);
        atomic_store(&rep->down_until_us, clock_mono_us() + DOWN_BACKOFF_US);
    }
    return -1;
}

/* ---- engine operations ------------------------------------------------- */

/* The upstream's body (answer.h): the client's request with the typed
 * fields written over it. Reads root only, so a pool thread may run it
 * while the caller holds a reference. NULL when it cannot be built. */
static char *build_body(const struct rreq *q, json_t *root, const char *model, size_t *len)
{
    struct answer_body b = {.root = root, .endpoint = q->endpoint, .model = model, .stream = q->stream,
                            .max_tokens = q->max_tokens, .logprobs = q->logprobs,
                            .top_logprobs = q->top_logprobs};
    return answer_request_body(&b, len);
}

/* A request whose body could not be built (not the upstream's fault, so
 * not retryable): reported on the next loop turn, as submit must. */
static void deferred_body_fail_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rreq *q = arg;
    if (q->ended) {
        rreq_free(q);
        return;
    }
    finish_error(q, 500, "server_error", "bad_upstream_request", "the request could not be built for the upstream");
}

static void deferred_fail_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rreq *q = arg;
    if (q->ended) { /* cancelled before we got here */
        rreq_free(q);
        return;
    }
    finish_exhausted(q);
}

/* Work pool: serialize a large body. */
static void build_work(void *arg)
{
    struct rreq *q = arg;
    q->body = build_body(q, q->build_root, q->build_model, &q->body_len);
}

/* Loop thread: the body is ready; send it, unless the request ended
 * (cancelled or timed out) meanwhile. */
static void build_done(void *arg)
{
    struct rreq *q = arg;
    q->building = 0;
    json_decref(q->build_root);
    q->build_root = NULL;
    if (q->ended) {
        rreq_free(q);
        return;
    }
    if (!q->body) {
        finish_error(q, 500, "server_error", "bad_upstream_request", "the request could not be built for the upstream");
        return;
    }
    if (start_attempt(q) < 0)
        finish_exhausted(q);
}

/* The text a request's messages hold: what its body's size grows with. */
static size_t body_text_bytes(const struct chat_request *chat)
{
    size_t n = 0;
    for (size_t i = 0; i < chat->n_messages; i++)
        n += chat->messages[i].content_len;
    return n;
}

static int remote_submit(struct engine *e, const struct engine_request *er, const struct engine_callbacks *cb,
                         void *ctx, uint64_t *id)
{
    struct remote *r = (struct remote *)e;
    struct remote_local *L = local_for(r, er->base);
    if (!L)
        return -EMFILE;
    struct rreq *q = xcalloc(1, sizeof *q);
    q->L = L;
    q->cb = *cb;
    q->ctx = ctx;
    q->endpoint = er->endpoint;
    q->stream = er->stream && answer_can_stream(er->endpoint);
    q->max_tokens = er->max_tokens > 0 ? er->max_tokens : 0;
    q->logprobs = er->logprobs;
    q->top_logprobs = er->top_logprobs;
    /* Trace context goes upstream as it came; a tracestate longer than the
     * W3C maximum may be dropped, and is. */
    if (er->traceparent && strlen(er->traceparent) < sizeof q->traceparent) {
        fmt_copy(q->traceparent, sizeof q->traceparent, er->traceparent);
        if (er->tracestate && strlen(er->tracestate) < sizeof q->tracestate)
            fmt_copy(q->tracestate, sizeof q->tracestate, er->tracestate);
    }
    answer_init(&q->ans, q->endpoint, q->max_tokens, remote_emit, q);
    q->replica = -1;
    q->last_replica = -1;
    fmt_copy(q->request_id, sizeof q->request_id, er->request_id ? er->request_id : "");
    q->id = ((uint64_t)L->index << 48) | (atomic_fetch_add(&r->next_seq, 1) & 0xFFFFFFFFFFFFull);
    q->next = L->active;
    if (L->active)
        L->active->prev = q;
    L->active = q;
    *id = q->id;
    q->timer = evtimer_new(L->base, timeout_cb, q);
    struct timeval tv = {r->cfg.timeout_ms / 1000, (r->cfg.timeout_ms % 1000) * 1000};
    evtimer_add(q->timer, &tv);
    if (r->pool && body_text_bytes(er->chat) > OFFLOAD_BODY_BYTES) {
        /* jansson's reference counts are atomic: the job's reference keeps
         * the request alive even if the caller cancels and frees its own. */
        q->build_root = json_incref(er->chat->root);
        q->build_model = xstrdup(er->model);
        q->building = 1;
        if (workpool_submit(r->pool, L->base, build_work, build_done, q) == 0)
            return 0;
        q->building = 0;
        json_decref(q->build_root);
        q->build_root = NULL;
    }
    q->body = build_body(q, er->chat->root, er->model, &q->body_len);
    if (!q->body) {
        event_base_once(L->base, -1, EV_TIMEOUT, deferred_body_fail_cb, q, NULL);
        return 0;
    }
    if (start_attempt(q) < 0) {
        /* Callbacks never run inside submit: report on the next loop turn. */
        event_base_once(L->base, -1, EV_TIMEOUT, deferred_fail_cb, q, NULL);
    }
    return 0;
}

static void cancel_deferred_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rreq *q = arg;
    if (q->req) { /* still running: close it (done_cb has not run) */
        evhttp_cancel_request(q->req);
        q->req = NULL;
    }
    attempt_end(q, REMOTE_CANCELLED, 0); /* unless abort_stream counted it already */
    release_upstream(q);
    rreq_free(q);
}

/* The live request with this id, on the calling worker's list (the id's
 * top 16 bits name the worker), or NULL. */
static struct rreq *find_request(struct remote *r, uint64_t id)
{
    size_t li = (size_t)(id >> 48);
    if (li >= atomic_load(&r->n_locals))
        return NULL;
    struct rreq *q = r->locals[li]->active;
    while (q && q->id != id)
        q = q->next;
    return q;
}

static void remote_cancel(struct engine *e, uint64_t id)
{
    struct rreq *q = find_request((struct remote *)e, id);
    if (!q || q->ended)
        return;
    q->ended = 1; /* no callback from now on */
    if (q->building)
        return; /* build_done frees it */
    if (q->in_chunk_cb) {
        /* Inside libevent's delivery of this very request, which cannot be
         * cancelled from here: finish on the next loop turn. */
        q->cancel_pending = 1;
        event_base_once(q->L->base, -1, EV_TIMEOUT, cancel_deferred_cb, q, NULL);
        return;
    }
    if (q->req) {
        evhttp_cancel_request(q->req); /* resets the connection: the upstream sees the close */
        q->req = NULL;
        attempt_end(q, REMOTE_CANCELLED, 0);
        release_upstream(q);
        rreq_free(q);
    } else if (q->retry_timer && evtimer_pending(q->retry_timer, NULL)) {
        rreq_free(q); /* between attempts: nothing upstream to close */
    }
    /* else a deferred failure is pending and will free it */
}

/* Backpressure: a paused request's connection stops reading, so the
 * upstream's sends block in TCP instead of growing our buffers; reading
 * starts again on resume. Only once the answer has begun (got_headers):
 * before that evhttp is still connecting or writing, and it manages
 * reading itself. */
static void remote_pause(struct engine *e, uint64_t id, int paused)
{
    struct rreq *q = find_request((struct remote *)e, id);
    if (!q || q->ended || !q->req || !q->conn || !q->got_headers || q->paused == !!paused)
        return;
    q->paused = !!paused;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(q->conn);
    if (paused)
        bufferevent_disable(bev, EV_READ);
    else
        bufferevent_enable(bev, EV_READ);
}

static int remote_health(struct engine *e)
{
    struct remote *r = (struct remote *)e;
    uint64_t now = clock_mono_us();
    for (size_t i = 0; i < r->n; i++)
        if (atomic_load(&r->replicas[i].healthy) && outlier_state(&r->replicas[i].outlier, now) != OUTLIER_OUT)
            return 1;
    return 0;
}

/* ---- health probing (its own thread; blocking sockets are fine here) --- */

/* GET health_path: 1 when it answers 2xx within timeout_ms, over TLS (with
 * the checks requests get) for an https replica. */
static int probe(struct remote *r, struct replica *rep, unsigned timeout_ms)
{
    uint64_t deadline = clock_mono_us() + (uint64_t)timeout_ms * 1000;
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    char port[16];
    snprintf(port, sizeof port, "%d", rep->port);
    if (getaddrinfo(rep->host, port, &hints, &ai) != 0)
        return 0;
    int ok = 0;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto out;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)
        goto out;
    struct pollfd pfd = {fd, POLLOUT, 0};
    if (poll(&pfd, 1, (int)timeout_ms) != 1)
        goto out;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr)
        goto out;
    char req[800];
    int n = rep->default_port
                ? snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                           rep->health_path, rep->host)
                : snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n",
                           rep->health_path, rep->host, rep->port);
    if (n < 0 || (size_t)n >= sizeof req)
        goto out;
    char buf[32] = {0};
    long got;
    if (rep->tls) {
        got = remote_tls_probe(r->tls, fd, rep->host, req, (size_t)n, buf, sizeof buf, deadline);
    } else {
        if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
            goto out;
        pfd.events = POLLIN;
        if (poll(&pfd, 1, (int)timeout_ms) != 1)
            goto out;
        got = (long)recv(fd, buf, sizeof buf - 1, 0);
    }
    ok = got >= 12 && strncmp(buf, "HTTP/1.", 7) == 0 && buf[9] == '2';
out:
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return ok;
}

static void *prober_main(void *arg)
{
    struct remote *r = arg;
    unsigned timeout = r->cfg.chunk_timeout_ms < 2000 ? r->cfg.chunk_timeout_ms : 2000;
    pthread_mutex_lock(&r->stop_mu);
    while (!r->stop) {
        pthread_mutex_unlock(&r->stop_mu);
        for (size_t i = 0; i < r->n; i++) {
            int ok = probe(r, &r->replicas[i], timeout);
            int was = atomic_exchange(&r->replicas[i].healthy, ok);
            if (was != ok && atomic_load(&r->replicas[i].probed))
                log_msg(ok ? LOG_INFO : LOG_WARN, "upstream %s is %s", r->replicas[i].url, ok ? "up" : "down");
            atomic_store(&r->replicas[i].probed, 1);
            /* An ejected replica whose time is up comes back when it
             * answers here (or when a trial request succeeds). */
            if (ok)
                outlier_changed(r, i, outlier_probe_up(&r->replicas[i].outlier, clock_mono_us()), 0);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += r->cfg.health_interval_ms / 1000;
        ts.tv_nsec += (long)(r->cfg.health_interval_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&r->stop_mu);
        if (!r->stop)
            pthread_cond_timedwait(&r->stop_cv, &r->stop_mu, &ts);
    }
    pthread_mutex_unlock(&r->stop_mu);
    return NULL;
}

static void remote_destroy(struct engine *e)
{
    struct remote *r = (struct remote *)e;
    pthread_mutex_lock(&r->stop_mu);
    r->stop = 1;
    pthread_cond_signal(&r->stop_cv);
    pthread_mutex_unlock(&r->stop_mu);
    pthread_join(r->prober, NULL);
    size_t n = atomic_load(&r->n_locals);
    for (size_t i = 0; i < n; i++) {
        struct remote_local *L = r->locals[i];
        while (L->active) {
            struct rreq *q = L->active;
            if (q->req)
                evhttp_cancel_request(q->req);
            q->req = NULL;
            q->ended = 1;
            release_upstream(q);
            rreq_free(q);
        }
        for (size_t k = 0; k < r->n; k++) {
            for (size_t j = 0; j < L->pools[k].n; j++)
                evhttp_connection_free(L->pools[k].idle[j]);
            free(L->pools[k].idle);
        }
        free(L->pools);
        if (L->dns) /* after the connections that used it */
            evdns_base_free(L->dns, 0);
        free(L);
    }
    for (size_t i = 0; i < r->n; i++) {
        free(r->replicas[i].url);
        remote_tls_cache_free(r->replicas[i].tls_cache); /* after every connection that used it */
    }
    free(r->replicas);
    remote_tls_free(r->tls);
    remote_config_free(&r->cfg);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->stop_mu);
    pthread_cond_destroy(&r->stop_cv);
    free(r);
}

static const struct engine_ops remote_ops = {
    .name = "remote",
    .submit = remote_submit,
    .cancel = remote_cancel,
    .health = remote_health,
    .destroy = remote_destroy,
    .pause = remote_pause,
};

/* libevent's resolver reports a failing nameserver on stderr, unformatted;
 * our log is JSON lines, so its warnings come through here (rate-limited:
 * a dead nameserver is reported on every query). */
static void dns_log(int is_warn, const char *msg)
{
    static struct log_limit lim;
    if (is_warn)
        log_limited(&lim, 10000, LOG_WARN, "dns: %s", msg);
}

static pthread_once_t dns_log_once = PTHREAD_ONCE_INIT;

static void dns_log_init(void)
{
    evdns_set_log_fn(dns_log);
}

/* A config path as the process should open it: relative ones are from
 * base_dir (the config file's folder), like every path in the config. */
static const char *config_path(const char *base_dir, const char *p, char *out, size_t n)
{
    if (p[0] == '/' || !base_dir)
        return p;
    snprintf(out, n, "%s/%s", base_dir, p);
    return out;
}

struct engine *remote_engine_new(const struct remote_config *cfg, const char *base_dir, char *err, size_t errlen)
{
    pthread_once(&dns_log_once, dns_log_init);
    struct remote *r = xcalloc(1, sizeof *r);
    r->base.ops = &remote_ops;
    config_copy(&r->cfg, cfg);
    r->eject.after = cfg->eject_after;
    r->eject.ms = cfg->eject_ms ? cfg->eject_ms : 10000;
    char path_buf[4096];
    /* The secret, now that the engine starts (secret.h). */
    if (cfg->api_key_env || cfg->api_key_file) {
        free(r->cfg.api_key);
        r->cfg.api_key = NULL;
        const char *file = cfg->api_key_file ? config_path(base_dir, cfg->api_key_file, path_buf, sizeof path_buf) : NULL;
        if (secret_read(cfg->api_key_env, file, &r->cfg.api_key, err, errlen) < 0)
            goto fail_cfg;
    }
    r->n = cfg->n_urls;
    r->replicas = xcalloc(r->n, sizeof *r->replicas);
    for (size_t i = 0; i < r->n; i++) {
        struct replica *rep = &r->replicas[i];
        struct evhttp_uri *uri = evhttp_uri_parse(cfg->urls[i]);
        if (!uri) {
            snprintf(err, errlen, "bad upstream URL %s", cfg->urls[i]);
            goto fail;
        }
        rep->url = xstrdup(cfg->urls[i]);
        snprintf(rep->host, sizeof rep->host, "%s", evhttp_uri_get_host(uri));
        const char *scheme = evhttp_uri_get_scheme(uri);
        rep->tls = scheme && strcmp(scheme, "https") == 0;
        rep->tls_cache = rep->tls ? remote_tls_cache_new() : NULL;
        rep->default_port = evhttp_uri_get_port(uri) <= 0;
        {
            unsigned char a[16];
            char bare[256];
            size_t hl = strlen(rep->host);
            if (hl >= 2 && rep->host[0] == '[')
                snprintf(bare, sizeof bare, "%.*s", (int)(hl - 2), rep->host + 1);
            else
                snprintf(bare, sizeof bare, "%s", rep->host);
            rep->numeric = inet_pton(AF_INET, bare, a) == 1 || inet_pton(AF_INET6, bare, a) == 1;
        }
        rep->port = !rep->default_port ? evhttp_uri_get_port(uri) : rep->tls ? 443 : 80;
        if (rep->tls && !r->tls) {
            const char *ca = cfg->tls_ca_file ? config_path(base_dir, cfg->tls_ca_file, path_buf, sizeof path_buf) : NULL;
            r->tls = remote_tls_new(ca, err, errlen);
            if (!r->tls) {
                evhttp_uri_free(uri);
                goto fail;
            }
        }
        const char *path = evhttp_uri_get_path(uri);
        /* "http://h:p" serves /v1/...; "http://h:p/prefix" serves /prefix/... */
        size_t pl = path ? strlen(path) : 0;
        while (pl && path[pl - 1] == '/')
            pl--;
        if (pl == 0)
            snprintf(rep->chat_path, sizeof rep->chat_path, "/v1/chat/completions");
        else
            snprintf(rep->chat_path, sizeof rep->chat_path, "%.*s/chat/completions", (int)pl, path);
        snprintf(rep->health_path, sizeof rep->health_path, "%s", r->cfg.health_path);
        evhttp_uri_free(uri);
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->stop_mu, NULL);
    pthread_cond_init(&r->stop_cv, NULL);
    if (pthread_create(&r->prober, NULL, prober_main, r) != 0) {
        snprintf(err, errlen, "cannot start the health prober thread");
        pthread_mutex_destroy(&r->mu);
        pthread_mutex_destroy(&r->stop_mu);
        pthread_cond_destroy(&r->stop_cv);
        goto fail;
    }
    return &r->base;
fail:
    for (size_t i = 0; i < r->n; i++) {
        free(r->replicas[i].url);
        remote_tls_cache_free(r->replicas[i].tls_cache);
    }
    free(r->replicas);
    remote_tls_free(r->tls);
fail_cfg:
    remote_config_free(&r->cfg);
    free(r);
    return NULL;
}
