/* server.c: the gateway's worker threads, listening sockets, shutdown, and
 * the router that sends each request to its endpoint. See gateway.h. */
#include "gateway/gateway.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cache/redis.h"
#include "common/clock.h"
#include "common/httpd.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/secret.h"
#include "common/workpool.h"
#include "engines/engine.h"
#include "engines/remote/remote.h"
#include "gateway/access.h"
#include "gateway/auth.h"
#include "gateway/chat.h"
#include "gateway/dashboard.h"
#include "gateway/metrics.h"
#include "gateway/snapshot.h"
#include "policies/stats.h"
#include "gateway/engines.h"
#include "classifier/classifier.h"
#include "tokenizer/tokenizer_bpe.h"
#include "policies/policy.h"

#define DRAIN_POLL_MS 20

/* ---- small endpoints --------------------------------------------------- */

static void reply_json(struct httpd_req *r, int status, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    httpd_reply(r, status, "application/json", s, strlen(s));
    free(s);
    json_decref(o);
}

static int readyz(struct gateway *gw, struct httpd_req *r)
{
    json_t *tiers = json_object();
    int ready = 1;
    for (size_t i = 0; i < gw->cfg.n_tiers; i++) {
        int ok = engine_health(gw->engines[i]);
        ready &= ok;
        json_object_set_new(tiers, gw->cfg.tiers[i].name, json_string(ok ? "ready" : "unavailable"));
    }
    int status = ready ? 200 : 503;
    reply_json(r, status, json_pack("{s:s, s:o}", "status", ready ? "ready" : "not_ready", "tiers", tiers));
    return status;
}

static int list_models(const struct config *cfg, struct httpd_req *r, const struct tenant_config *t)
{
    json_t *data = json_array();
    json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s}", "id", "auto", "object", "model", "created", 0,
                                          "owned_by", "cascade"));
    for (size_t i = 0; i < t->n_allowed; i++) {
        const struct tier_config *tc = &cfg->tiers[t->allowed[i]];
        json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s, s:s}", "id", tc->name, "object", "model",
                                              "created", 0, "owned_by", "cascade", "model", tc->model));
    }
    reply_json(r, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
    return 200;
}

/* A client's x-request-id is echoed only when it is a sane token. */
static int valid_request_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:") == n;
}

static int error_reply(struct httpd_req *r, int status, const char *type, const char *code, const char *msg)
{
    httpd_resp_header(r, "x-cascade-tier", "none");
    httpd_reply_error(r, status, type, code, NULL, msg);
    return status;
}

/* GET /admin/v1/tenants/{id}/usage: the admin token sees any tenant, a
 * tenant's key only its own. */
struct usage_req {
    struct httpd_req *r;
    int gone;
    int pending;
};

static void usage_close_cb(struct httpd_req *r, void *arg)
{
    struct usage_req *u = arg;
    httpd_reply(r, 499, NULL, NULL, 0);
    u->gone = 1;
}

static void usage_done(void *ctx, json_t *usage)
{
    struct usage_req *u = ctx;
    if (!u->gone) {
        httpd_req_on_close(u->r, NULL, NULL);
        if (usage)
            reply_json(u->r, 200, json_incref(usage));
        else
            httpd_reply_error(u->r, 503, "server_error", "redis_unavailable", NULL,
                              "usage is kept in Redis, which is not reachable now");
    }
    free(u);
}

static int admin_usage(struct worker *w, struct httpd_req *r, const struct config *cfg, const char *key,
                       const char *tenant_id)
{
    const struct tenant_config *caller = auth_tenant(cfg, key);
    int admin = auth_is_admin(cfg, key);
    if (!caller && !admin) {
        httpd_resp_header(r, "WWW-Authenticate", "Bearer");
        return error_reply(r, 401, "invalid_request_error", "invalid_api_key", "a valid admin token or tenant key is required");
    }
    const struct tenant_config *t = NULL;
    for (size_t i = 0; i < cfg->n_tenants; i++)
        if (strcmp(cfg->tenants[i].id, tenant_id) == 0)
            t = &cfg->tenants[i];
    if (!admin && caller != t)
        return error_reply(r, 403, "permission_error", "forbidden", "a tenant key may read only its own tenant");
    if (!t)
        return error_reply(r, 404, "invalid_request_error", "tenant_not_found", "no such tenant");
    httpd_resp_header(r, "x-cascade-tier", "none");
    struct usage_req *u = xcalloc(1, sizeof *u);
    u->r = r;
    httpd_req_on_close(r, usage_close_cb, u);
    policy_usage(w->gw->policy, w->base, t->id, &t->limits, usage_done, u);
    return 200;
}

/* GET /admin/v1/stats?tenant=&from=&to=&step=: the admin token sees every
 * tenant (no tenant: all summed); a tenant key only its own (no tenant: its
 * own). from/to default to the last hour, step to 60. */
struct stats_req {
    struct httpd_req *r;
    int gone;
};

static void stats_close_cb(struct httpd_req *r, void *arg)
{
    struct stats_req *q = arg;
    httpd_reply(r, 499, NULL, NULL, 0);
    q->gone = 1;
}

static void stats_done(void *ctx, json_t *result)
{
    struct stats_req *q = ctx;
    if (!q->gone) {
        httpd_req_on_close(q->r, NULL, NULL);
        if (result) {
            char *s = json_dumps(result, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
            httpd_reply(q->r, 200, "application/json", s, strlen(s));
            free(s);
        } else {
            httpd_reply_error(q->r, 503, "server_error", "redis_unavailable", NULL,
                              "stats are kept in Redis, which is not reachable now");
        }
    }
    free(q);
}

/* The value of name in a query string (no decoding: ids and numbers only). */
static int query_param(const char *q, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    for (const char *p = q; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            snprintf(out, n, "%.*s", (int)(len - nl - 1), p + nl + 1);
            return 1;
        }
        p = amp ? amp + 1 : NULL;
    }
    return 0;
}

static int query_int(const char *q, const char *name, int64_t dflt, int64_t *out)
{
    char b[32], *end;
    if (!query_param(q, name, b, sizeof b)) {
        *out = dflt;
        return 0;
    }
    long long v = strtoll(b, &end, 10);
    if (!*b || *end)
        return -1;
    *out = v;
    return 0;
}

static int admin_stats(struct worker *w, struct httpd_req *r, const struct config *cfg, const char *key)
{
    const struct tenant_config *caller = auth_tenant(cfg, key);
    int admin = auth_is_admin(cfg, key);
    if (!caller && !admin) {
        httpd_resp_header(r, "WWW-Authenticate", "Bearer");
        return error_reply(r, 401, "invalid_request_error", "invalid_api_key", "a valid admin token or tenant key is required");
    }
    const char *q = httpd_req_query(r);
    char tenant[80] = "";
    query_param(q, "tenant", tenant, sizeof tenant);
    if (!admin) {
        if (*tenant && strcmp(tenant, caller->id) != 0)
            return error_reply(r, 403, "permission_error", "forbidden", "a tenant key may read only its own tenant");
        snprintf(tenant, sizeof tenant, "%s", caller->id);
    } else if (*tenant) {
        int found = 0;
        for (size_t i = 0; i < cfg->n_tenants; i++)
            found |= strcmp(cfg->tenants[i].id, tenant) == 0;
        if (!found)
            return error_reply(r, 404, "invalid_request_error", "tenant_not_found", "no such tenant");
    }
    int64_t now = clock_wall_s(), from, to, step;
    char err[160];
    if (query_int(q, "to", now, &to) < 0 || query_int(q, "from", to - 3600, &from) < 0 ||
        query_int(q, "step", 60, &step) < 0)
        return error_reply(r, 400, "invalid_request_error", "invalid_range", "from, to and step must be integers");
    if (stats_query_check(from, to, step, err, sizeof err) < 0)
        return error_reply(r, 400, "invalid_request_error", "invalid_range", err);
    const char **ids = xcalloc(cfg->n_tenants ? cfg->n_tenants : 1, sizeof *ids);
    for (size_t i = 0; i < cfg->n_tenants; i++)
        ids[i] = cfg->tenants[i].id;
    httpd_resp_header(r, "x-cascade-tier", "none");
    struct stats_req *sq = xcalloc(1, sizeof *sq);
    sq->r = r;
    httpd_req_on_close(r, stats_close_cb, sq);
    stats_query(w->gw->stats, w->base, *tenant ? tenant : NULL, ids, cfg->n_tenants, from, to, step, stats_done, sq);
    free(ids);
    return 200;
}

/* /metrics is open unless metrics.token_sha256 is set; then it needs that
 * Bearer token, or the admin token. Both compared as SHA-256 in constant time. */
static int metrics_allowed(struct gateway *gw, struct httpd_req *r)
{
    struct config_snap *snap = snapshot_acquire(gw->snaps);
    const struct config *cfg = &snap->cfg;
    int ok = !cfg->has_metrics_token;
    if (!ok) {
        const char *key = auth_bearer(httpd_req_header(r, "Authorization"));
        if (key) {
            uint8_t digest[SHA256_LEN];
            hash_sha256(key, strlen(key), digest);
            ok = hash_ct_equal(digest, cfg->metrics_key, SHA256_LEN) | auth_is_admin(cfg, key);
        }
    }
    snapshot_release(snap);
    return ok;
}

void gateway_handle(struct httpd_req *r, void *arg)
{
    struct worker *w = arg;
    struct gateway *gw = w->gw;
    uint64_t t0 = clock_mono_us();
    const char *method = httpd_req_method(r), *path = httpd_req_path(r);
    char rid[80];
    const char *given = httpd_req_header(r, "x-request-id");
    if (valid_request_id(given))
        snprintf(rid, sizeof rid, "%s", given);
    else
        access_new_id(rid);
    httpd_resp_header(r, "x-request-id", rid);

    int is_get = strcmp(method, "GET") == 0, is_post = strcmp(method, "POST") == 0;
    if (strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0) {
        if (!is_get) {
            httpd_resp_header(r, "Allow", "GET");
            error_reply(r, 405, "invalid_request_error", "method_not_allowed", "Method not allowed; use GET");
        } else if (path[1] == 'h') {
            httpd_resp_header(r, "x-cascade-tier", "none");
            reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
        } else {
            httpd_resp_header(r, "x-cascade-tier", "none");
            readyz(gw, r);
        }
        return; /* probes are not access-logged: they would drown the log */
    }

    if (strcmp(path, "/metrics") == 0 && is_get) {
        if (!metrics_allowed(gw, r)) {
            httpd_resp_header(r, "WWW-Authenticate", "Bearer");
            error_reply(r, 401, "invalid_request_error", "invalid_api_key",
                        "/metrics needs the metrics token or the admin token: send Authorization: Bearer <token>");
            return;
        }
        /* The queue-depth gauge is read when scraped: it is a level, not an event. */
        for (size_t i = 0; i < gw->cfg.n_tiers; i++) {
            int depth = engine_queue_depth(gw->engines[i]);
            if (depth >= 0)
                metrics_set_queue_depth(gw->metrics, (int)i, depth);
        }
        size_t len;
        char *text = metrics_render(gw->metrics, &len);
        httpd_reply(r, 200, METRICS_CONTENT_TYPE, text, len);
        free(text);
        return; /* scrapes are not access-logged, like probes */
    }
    /* Replying frees the request, and its strings with it: keep copies. */
    char method_copy[16], path_copy[128];
    snprintf(method_copy, sizeof method_copy, "%s", method);
    snprintf(path_copy, sizeof path_copy, "%s", path);
    struct access_entry e = {.request_id = rid, .method = method_copy, .path = path_copy};
    struct config_snap *snap = snapshot_acquire(gw->snaps);
    const struct config *cfg = &snap->cfg;
    const char *key = auth_bearer(httpd_req_header(r, "Authorization"));
    int chat = strcmp(path, "/v1/chat/completions") == 0, models = strcmp(path, "/v1/models") == 0;
    int stats = strcmp(path, "/admin/v1/stats") == 0;
    int dash_status = strncmp(path, "/dashboard", 10) == 0 ? dashboard_serve(r, path) : 0;
    if (dash_status) {
        snapshot_release(snap);
        e.status = dash_status;
        e.latency_us = clock_mono_us() - t0;
        access_log(&e);
        return;
    }
    static const char usage_prefix[] = "/admin/v1/tenants/";
    size_t upl = sizeof usage_prefix - 1, plen = strlen(path);
    int usage = strncmp(path, usage_prefix, upl) == 0 && plen > upl + 6 && strcmp(path + plen - 6, "/usage") == 0 &&
                plen - upl - 6 < 64 && !memchr(path + upl, '/', plen - upl - 6);
    if (!chat && !models && !usage && !stats) {
        char msg[160];
        snprintf(msg, sizeof msg, "Unknown request URL: %s %.100s", method, path);
        e.status = error_reply(r, 404, "invalid_request_error", "unknown_url", msg);
    } else if ((chat && !is_post) || ((models || usage || stats) && !is_get)) {
        httpd_resp_header(r, "Allow", chat ? "POST" : "GET");
        e.status = error_reply(r, 405, "invalid_request_error", "method_not_allowed",
                               chat ? "Method not allowed; use POST" : "Method not allowed; use GET");
    } else if (stats) {
        e.status = admin_stats(w, r, cfg, key);
    } else if (usage) {
        char tenant_id[64];
        snprintf(tenant_id, sizeof tenant_id, "%.*s", (int)(plen - upl - 6), path + upl);
        e.status = admin_usage(w, r, cfg, key, tenant_id);
    } else {
        const struct tenant_config *t = auth_tenant(cfg, key);
        if (!t) {
            httpd_resp_header(r, "WWW-Authenticate", "Bearer");
            e.status = error_reply(r, 401, "invalid_request_error", "invalid_api_key",
                                   key ? "Incorrect API key provided" : "Missing API key: send Authorization: Bearer <key>");
            if (chat)
                metrics_request(gw->metrics, -1, -1, 401, STATS_CACHE_BYPASS, 0, 0, 0, 0, 0,
                                clock_mono_us() - t0, 0, clock_mono_us() - t0, 0);
        } else if (chat) {
            metrics_inflight_add(gw->metrics, 1); /* chat_done takes it back */
            chat_handle(&w->svc, r, snap, t, rid, t0);
            return; /* the chat state machine logs its own line and releases snap */
        } else {
            e.tenant = t->id;
            httpd_resp_header(r, "x-cascade-tier", "none");
            e.status = list_models(cfg, r, t);
        }
    }
    snapshot_release(snap);
    e.latency_us = clock_mono_us() - t0;
    access_log(&e);
}

/* The head hook: runs when a request's head is complete, before its body is
 * read and before a client that sent Expect: 100-continue is told to go on.
 * A /v1/ request without a valid key is answered here (401, through
 * gateway_handle, which needs no body for it), so an unauthenticated client
 * is never invited to upload its body. */
static int gateway_head(struct httpd_req *r, void *arg)
{
    struct worker *w = arg;
    if (strncmp(httpd_req_path(r), "/v1/", 4) != 0)
        return 0;
    struct config_snap *snap = snapshot_acquire(w->gw->snaps);
    const char *key = auth_bearer(httpd_req_header(r, "Authorization"));
    int ok = auth_tenant(&snap->cfg, key) != NULL;
    snapshot_release(snap);
    if (ok)
        return 0;
    gateway_handle(r, arg);
    return 1;
}

/* The HTTP layer refused a request (bad framing, limits): it still gets our
 * headers and an access-log line. */
static void gateway_reject(struct httpd_req *r, int status, void *arg)
{
    (void)arg;
    char rid[17];
    access_new_id(rid);
    httpd_resp_header(r, "x-request-id", rid);
    httpd_resp_header(r, "x-cascade-tier", "none");
    const char *m = httpd_req_method(r), *p = httpd_req_path(r);
    struct access_entry e = {.request_id = rid, .method = m ? m : "-", .path = p ? p : "-", .status = status};
    access_log(&e);
}

/* ---- sockets and threads ----------------------------------------------- */


static void drain_poll_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    /* A request may still settle after its reply, on the work pool. */
    if (httpd_inflight(w->httpd) == 0 && httpd_connections(w->httpd) == 0 && workpool_pending(w->gw->pool) == 0) {
        /* Every request has recorded its stats: send this worker's last
         * second, and stop once Redis has answered (or failed). */
        if (!w->stats_flushed) {
            stats_flush(w->gw->stats, w->base);
            w->stats_flushed = 1;
        }
        if (!stats_busy(w->gw->stats, w->base))
            event_base_loopexit(w->base, NULL);
    }
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    httpd_drain(w->httpd);
    struct timeval tv = {0, DRAIN_POLL_MS * 1000};
    event_add(w->drain_poll, &tv);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    /* Connect to Redis now rather than on the first request: the first
     * request does not pay for the connect, and the start-up checks the
     * connection makes (AOF, redis.c) run without waiting for traffic. */
    if (w->gw->redis)
        (void)redis_for_base(w->gw->redis, w->base);
    event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
    atomic_store(&w->done, 1);
    return NULL;
}

void gateway_block_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static const char *from_config(const char *base_dir, const char *p, char *out, size_t n)
{
    if (p[0] == '/')
        return p;
    snprintf(out, n, "%s/%s", base_dir, p);
    return out;
}

static void count_redis_error(void *ctx)
{
    metrics_redis_error(((struct gateway *)ctx)->metrics);
}

static void count_upstream_error(void *ctx, size_t replica)
{
    metrics_upstream_error(((struct gateway *)ctx)->metrics, (int)replica);
}

int gateway_init(struct gateway *gw, char *err, size_t errlen)
{
    struct config *cfg = &gw->cfg;
    /* Relative paths in the config are from the config file's folder, so a
     * config works from any working directory. */
    char base_dir[4096], path[8192];
    snprintf(base_dir, sizeof base_dir, "%s", gw->config_path ? gw->config_path : ".");
    char *slash = strrchr(base_dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(base_dir, sizeof base_dir, ".");
    gw->snaps = snapshot_store_new(gw->config_path, gw->listen_override, cfg, err, errlen);
    if (!gw->snaps)
        return -1;
    if (cfg->tokenizer) {
        if (tok_bpe_load(from_config(base_dir, cfg->tokenizer, path, sizeof path), &gw->tokenizer, err, errlen) !=
            TOK_OK)
            return -1;
    } else {
        log_warn("no \"tokenizer\" in the config: prompt tokens are estimated from their length, high");
    }
    if (cfg->classifier) {
        char e2[256];
        gw->classifier = classifier_load(from_config(base_dir, cfg->classifier, path, sizeof path), e2, sizeof e2);
        if (!gw->classifier) {
            snprintf(err, errlen, "classifier.model: %s", e2);
            return -1;
        }
    } else {
        log_warn("no \"classifier\" in the config: model \"auto\" goes to each tenant's default tier");
    }
    if (cfg->redis.url) {
        /* The password, when the config names where it lives (secret.h). */
        char *password = NULL;
        if ((cfg->redis.password_env || cfg->redis.password_file) &&
            secret_read(cfg->redis.password_env, cfg->redis.password_file, &password, err, errlen) < 0)
            return -1;
        struct redis_settings rs = {cfg->redis.url, cfg->redis.timeout_ms, password};
        gw->redis = redis_shared_new(&rs, err, errlen);
        free(password);
        if (!gw->redis)
            return -1;
    }
    struct cache_settings cs = {
        .backend = cfg->cache.backend,
        .redis = gw->redis,
        .memory_max_bytes = cfg->cache.memory_max_bytes,
        .max_entry_bytes = cfg->cache.max_entry_bytes,
    };
    gw->cache = cache_new(&cs);
    {
        const char **tiers = xcalloc(cfg->n_tiers, sizeof *tiers), **tenants = xcalloc(cfg->n_tenants + 1, sizeof *tenants);
        size_t n_rep = 0;
        for (size_t i = 0; i < cfg->n_tiers; i++) {
            tiers[i] = cfg->tiers[i].name;
            n_rep += cfg->tiers[i].kind == ENGINE_REMOTE ? cfg->tiers[i].remote.n_urls : 0;
        }
        const char **reps = xcalloc(n_rep + 1, sizeof *reps);
        n_rep = 0;
        for (size_t i = 0; i < cfg->n_tiers; i++)
            for (size_t k = 0; cfg->tiers[i].kind == ENGINE_REMOTE && k < cfg->tiers[i].remote.n_urls; k++)
                reps[n_rep++] = cfg->tiers[i].remote.urls[k];
        for (size_t i = 0; i < cfg->n_tenants; i++)
            tenants[i] = cfg->tenants[i].id;
        gw->stats = stats_new(gw->redis, tiers, cfg->n_tiers);
        if (gw->redis)
            redis_shared_set_error_hook(gw->redis, count_redis_error, gw);
        gw->metrics = metrics_new(tenants, cfg->n_tenants, tiers, cfg->n_tiers, reps, n_rep);
        free(tiers);
        free(tenants);
        free(reps);
    }
    struct policy_settings ps = {
        .redis = gw->redis,
        .local_share = cfg->policy.local_share,
        .reservation_ttl_ms = cfg->policy.reservation_ttl_ms,
        .journal_max = cfg->policy.journal_max,
    };
    gw->policy = policy_new(&ps);
    gw->pool = workpool_new(0, err, errlen);
    if (!gw->pool)
        return -1;
    gw->engines = xcalloc(cfg->n_tiers, sizeof *gw->engines);
    size_t replica_base = 0;
    for (size_t i = 0; i < cfg->n_tiers; i++) {
        char e2[256];
        gw->engines[i] = engines_create(&cfg->tiers[i], base_dir, e2, sizeof e2);
        if (!gw->engines[i]) {
            snprintf(err, errlen, "tiers[%zu] (%s): %s", i, cfg->tiers[i].name, e2);
            return -1;
        }
        if (cfg->tiers[i].kind == ENGINE_REMOTE) {
            /* Replicas are numbered across tiers, as metrics_new() got them. */
            remote_engine_set_error_hook(gw->engines[i], count_upstream_error, gw, replica_base);
            remote_engine_set_pool(gw->engines[i], gw->pool);
            replica_base += cfg->tiers[i].remote.n_urls;
        }
    }
    gw->n_workers = cfg->workers;
    gw->workers = xcalloc((size_t)gw->n_workers, sizeof *gw->workers);
    struct httpd_limits lim = {
        .max_header_bytes = cfg->limits.max_header_bytes,
        .max_body_bytes = cfg->limits.max_body_bytes,
        .header_timeout_ms = cfg->limits.header_timeout_ms,
        .read_timeout_ms = cfg->limits.read_timeout_ms,
        .write_timeout_ms = cfg->limits.write_timeout_ms,
        .max_connections = cfg->limits.max_connections_per_worker,
        .max_pipelined = cfg->limits.max_pipelined,
    };
    int port = cfg->listen_port;
    for (int i = 0; i < gw->n_workers; i++) {
        struct worker *w = &gw->workers[i];
        w->gw = gw;
        w->index = i;
        /* Every worker binds the same port: the first one fixes it when the
         * config asks for port 0, and SO_REUSEPORT spreads connections. */
        int fd = httpd_listen(cfg->listen_host, port, &port, err, errlen);
        if (fd < 0)
            return -1;
        w->base = event_base_new();
        w->httpd = w->base ? httpd_new(w->base, fd, &lim, gateway_handle, gateway_reject, w) : NULL;
        if (!w->httpd) {
            close(fd);
            snprintf(err, errlen, "cannot start worker %d", i);
            return -1;
        }
        httpd_set_head_hook(w->httpd, gateway_head);
        w->drain_ev = event_new(w->base, -1, 0, drain_cb, w);
        w->drain_poll = event_new(w->base, -1, EV_PERSIST, drain_poll_cb, w);
        w->svc = (struct chat_services){
            .base = w->base,
            .cache = gw->cache,
            .policy = gw->policy,
            .stats = gw->stats,
            .metrics = gw->metrics,
            .pool = gw->pool,
            .tokenizer = gw->tokenizer,
            .classifier = gw->classifier,
            .engines = gw->engines,
        };
    }
    gw->port = port;
    return 0;
}

int gateway_run(struct gateway *gw)
{
    sigset_t set;
    gateway_block_signals(&set);
    for (int i = 0; i < gw->n_workers; i++)
        pthread_create(&gw->workers[i].thread, NULL, worker_main, &gw->workers[i]);
    char addr[300];
    snprintf(addr, sizeof addr, strchr(gw->cfg.listen_host, ':') ? "[%s]:%d" : "%s:%d", gw->cfg.listen_host, gw->port);
    json_t *f = json_pack("{s:s, s:i, s:i}", "addr", addr, "workers", gw->n_workers, "tiers", (int)gw->cfg.n_tiers);
    log_fields(LOG_INFO, "listening", f);
    json_decref(f);

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            snapshot_reload(gw->snaps, "SIGHUP");
            continue;
        }
        log_info("signal %d: draining (up to %u ms)", sig, gw->cfg.limits.drain_timeout_ms);
        break;
    }
    for (int i = 0; i < gw->n_workers; i++)
        event_active(gw->workers[i].drain_ev, EV_TIMEOUT, 0);
    uint64_t deadline = clock_mono_us() + (uint64_t)gw->cfg.limits.drain_timeout_ms * 1000;
    for (;;) {
        int all = 1;
        for (int i = 0; i < gw->n_workers; i++)
            all &= atomic_load(&gw->workers[i].done);
        if (all)
            break;
        if (clock_mono_us() >= deadline) {
            log_warn("drain timeout: closing the remaining connections");
            for (int i = 0; i < gw->n_workers; i++)
                event_base_loopbreak(gw->workers[i].base);
            break;
        }
        usleep(DRAIN_POLL_MS * 1000);
    }
    for (int i = 0; i < gw->n_workers; i++)
        pthread_join(gw->workers[i].thread, NULL);
    log_info("stopped");
    return 0;
}

void gateway_free(struct gateway *gw)
{
    /* Connections first (they may hold engine requests), then engines. */
    for (int i = 0; gw->workers && i < gw->n_workers; i++) {
        struct worker *w = &gw->workers[i];
        httpd_free(w->httpd);
        if (w->drain_ev)
            event_free(w->drain_ev);
        if (w->drain_poll)
            event_free(w->drain_poll);
    }
    workpool_free(gw->pool); /* after the connections: no job is left */
    for (size_t i = 0; gw->engines && i < gw->cfg.n_tiers; i++)
        engine_destroy(gw->engines[i]);
    /* Closing Redis answers pending commands (as failures) on their workers'
     * state, so it goes before the event bases. */
    redis_shared_free(gw->redis);
    stats_free(gw->stats); /* after Redis answered its flushes, before the bases go */
    metrics_free(gw->metrics);
    policy_free(gw->policy);
    cache_free(gw->cache);
    tokenizer_free(gw->tokenizer);
    classifier_free(gw->classifier);
    snapshot_store_free(gw->snaps);
    for (int i = 0; gw->workers && i < gw->n_workers; i++)
        if (gw->workers[i].base)
            event_base_free(gw->workers[i].base);
    free(gw->workers);
    free(gw->engines);
    config_free(&gw->cfg);
}
