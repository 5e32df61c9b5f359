/* routes.c: the route table and the small public endpoints. See routes.h. */
#include "gateway/routes.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/fmt.h"
#include "common/hash.h"
#include "common/httpd.h"
#include "engines/engine.h"
#include "gateway/access.h"
#include "gateway/admin.h"
#include "gateway/auth.h"
#include "gateway/config.h"
#include "gateway/dashboard.h"
#include "gateway/embeddings.h"
#include "gateway/metrics.h"
#include "gateway/reply.h"
#include "gateway/snapshot.h"
#include "policies/stats.h"

/* ---- probes and scrapes ------------------------------------------------ */

/* GET /readyz, the readiness probe. Under Kubernetes a 503 takes the pod out
 * of service, healthy tiers included, so one dead optional tier must not
 * make it: a tier counts as ready when its engine is healthy, or when its
 * fallback chain (tiers[].fallback) reaches a tier whose engine is, since
 * that tier then serves its requests. A tier named in readiness.require must
 * be healthy itself. 200 when every tier is ready and every required one is
 * up, else 503. The body says, per tier, what the probe saw:
 *   {"status":"ready","tiers":{"small":{"state":"up"},
 *    "large":{"state":"down","fallback":"small","served_by":"small"}}}
 * served_by is absent when nothing in the chain is up; "required": true
 * marks the tiers readiness.require names. */
static int readyz(const struct route_services *rs, const struct config *cfg, struct httpd_req *r)
{
    size_t n = cfg->n_tiers < rs->n_engines ? cfg->n_tiers : rs->n_engines;
    /* Each engine is asked once: a tier's health is read by every chain
     * through it, and two reads could disagree. */
    char *up = calloc(n ? n : 1, 1);
    if (!up) {
        reply_error(r, 503, "server_error", "out_of_memory", "cannot check readiness now");
        return 503;
    }
    for (size_t i = 0; i < n; i++)
        up[i] = engine_health(rs->chat.engines[i]) != 0;
    int ready = 1;
    json_t *tiers = json_object();
    for (size_t i = 0; i < n; i++) {
        const struct tier_config *tc = &cfg->tiers[i];
        json_t *st = json_pack("{s:s}", "state", up[i] ? "up" : "down");
        int required = 0;
        for (size_t k = 0; k < cfg->n_ready_require; k++)
            required |= cfg->ready_require[k] == (int)i;
        if (!up[i]) {
            /* config_load refused chains that loop; the step bound keeps a
             * bad index or a loop from hanging the probe all the same. */
            int served = -1;
            size_t steps = 0;
            for (int t = tc->fallback; t >= 0 && (size_t)t < n && steps < n; t = cfg->tiers[t].fallback, steps++)
                if (up[t]) {
                    served = t;
                    break;
                }
            if (tc->fallback >= 0 && (size_t)tc->fallback < n)
                json_object_set_new(st, "fallback", json_string(cfg->tiers[tc->fallback].name));
            if (served >= 0)
                json_object_set_new(st, "served_by", json_string(cfg->tiers[served].name));
            if (served < 0 || required)
                ready = 0;
        }
        if (required)
            json_object_set_new(st, "required", json_true());
        json_object_set_new(tiers, tc->name, st);
    }
    free(up);
    int status = ready ? 200 : 503;
    reply_json(r, status, json_pack("{s:s, s:o}", "status", ready ? "ready" : "not_ready", "tiers", tiers));
    return status;
}

/* /metrics is open unless metrics.token_sha256 is set; then it needs that
 * Bearer token, or the admin token. Both compared as SHA-256 in constant time. */
static int metrics_allowed(const struct config *cfg, struct httpd_req *r)
{
    if (!cfg->has_metrics_token)
        return 1;
    const char *key = auth_bearer(httpd_req_header(r, "Authorization"));
    if (!key)
        return 0;
    uint8_t digest[SHA256_LEN];
    hash_sha256(key, strlen(key), digest);
    return hash_ct_equal(digest, cfg->metrics_key, SHA256_LEN) | auth_is_admin(cfg, key);
}

static void metrics_endpoint(const struct route_services *rs, const struct config *cfg, struct httpd_req *r)
{
    if (!metrics_allowed(cfg, r)) {
        httpd_resp_header(r, "WWW-Authenticate", "Bearer");
        reply_error(r, 401, "invalid_request_error", "invalid_api_key",
                    "/metrics needs the metrics token or the admin token: send Authorization: Bearer <token>");
        return;
    }
    /* The queue-depth gauge is read when scraped: it is a level, not an event. */
    for (size_t i = 0; i < rs->n_engines; i++) {
        int depth = engine_queue_depth(rs->chat.engines[i]);
        if (depth >= 0)
            metrics_set_queue_depth(rs->chat.metrics, (int)i, depth);
    }
    size_t len;
    char *text = metrics_render(rs->chat.metrics, &len);
    httpd_reply(r, 200, METRICS_CONTENT_TYPE, text, len);
    free(text);
}

/* ---- models ------------------------------------------------------------ */

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

/* Decode %XX escapes of one path segment into out (NUL-terminated). The
 * openai SDK escapes the id it puts in the path, so a model id with a '/'
 * (deepseek-ai/DeepSeek-V3) arrives as deepseek-ai%2FDeepSeek-V3. -1 for a
 * bad escape, a NUL byte, or a result that does not fit. */
static int pct_decode(const char *in, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)in[i];
        if (c == '%') {
            if (n - i < 3) /* "%" needs two hex digits after it */
                return -1;
            char hex[3] = {in[i + 1], in[i + 2], 0};
            if (!isxdigit((unsigned char)hex[0]) || !isxdigit((unsigned char)hex[1]))
                return -1;
            c = (int)strtol(hex, NULL, 16);
            i += 2;
        }
        if (c == 0 || o + 1 >= cap)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

/* GET /v1/models/{id}: the model object for "auto", or for the name or the
 * model id of a tier the tenant may use -- what GET /v1/models lists, so a
 * client can retrieve what it was shown. Anything else is 404 model_not_found,
 * worded as OpenAI words it, whether the tier exists or the tenant may not
 * use it: a key must not learn which tiers other tenants have. */
static int retrieve_model(const struct config *cfg, struct httpd_req *r, const struct tenant_config *t,
                          const char *raw_id, size_t raw_len)
{
    char id[256];
    int ok = raw_len > 0 && pct_decode(raw_id, raw_len, id, sizeof id) == 0;
    if (ok && strcmp(id, "auto") == 0) {
        reply_json(r, 200, json_pack("{s:s, s:s, s:i, s:s}", "id", "auto", "object", "model", "created", 0,
                                     "owned_by", "cascade"));
        return 200;
    }
    for (size_t i = 0; ok && i < t->n_allowed; i++) {
        const struct tier_config *tc = &cfg->tiers[t->allowed[i]];
        if (strcmp(id, tc->name) == 0 || strcmp(id, tc->model) == 0) {
            reply_json(r, 200, json_pack("{s:s, s:s, s:i, s:s, s:s}", "id", id, "object", "model", "created", 0,
                                         "owned_by", "cascade", "model", tc->model));
            return 200;
        }
    }
    char msg[200];
    snprintf(msg, sizeof msg, "The model '%.100s' does not exist or you do not have access to it.",
             ok ? id : "(invalid id)");
    return reply_error(r, 404, "invalid_request_error", "model_not_found", msg);
}

/* ---- the table --------------------------------------------------------- */

/* A client's x-request-id is echoed only when it is a sane token. */
static int valid_request_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:") == n;
}

/* /healthz and /readyz: GET only, no key, no access-log line. */
static void probe(const struct route_services *rs, struct httpd_req *r, int is_get, int is_ready)
{
    if (!is_get) {
        httpd_resp_header(r, "Allow", "GET");
        reply_error(r, 405, "invalid_request_error", "method_not_allowed", "Method not allowed; use GET");
        return;
    }
    httpd_resp_header(r, "x-cascade-tier", "none");
    if (!is_ready) {
        reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    struct config_snap *snap = snapshot_acquire(rs->snaps);
    readyz(rs, &snap->cfg, r);
    snapshot_release(snap);
}

/* The SHA-256 of the request's API key. The head hook hashes it and leaves
 * the digest in the request's note; the handler, which checks the key again
 * against the config snapshot it runs with (a reload may have come between),
 * reuses it: one hash per request instead of two (issue 18: 5.7% of a
 * request's instructions went to hashing). */
static const uint8_t *key_digest(struct httpd_req *r, const char *key, uint8_t digest[SHA256_LEN])
{
    size_t n;
    const void *note = httpd_req_note(r, &n);
    if (note && n == SHA256_LEN)
        return note;
    auth_key_digest(key, digest);
    httpd_req_set_note(r, digest, SHA256_LEN);
    return digest;
}

void routes_handle(struct httpd_req *r, void *arg)
{
    const struct route_services *rs = arg;
    uint64_t t0 = clock_mono_us();
    const char *method = httpd_req_method(r), *path = httpd_req_path(r);
    char rid[80];
    const char *given = httpd_req_header(r, "x-request-id");
    if (valid_request_id(given))
        fmt_copy(rid, sizeof rid, given);
    else
        access_new_id(rid);
    httpd_resp_header(r, "x-request-id", rid);

    int is_get = strcmp(method, "GET") == 0, is_post = strcmp(method, "POST") == 0;
    if (strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0) {
        probe(rs, r, is_get, path[1] == 'r');
        return; /* probes are not access-logged: they would drown the log */
    }
    struct config_snap *snap = snapshot_acquire(rs->snaps);
    const struct config *cfg = &snap->cfg;
    if (strcmp(path, "/metrics") == 0 && is_get) {
        metrics_endpoint(rs, cfg, r);
        snapshot_release(snap);
        return; /* scrapes are not access-logged, like probes */
    }
    /* Replying frees the request, and its strings with it: keep copies. */
    char method_copy[16], path_copy[128];
    fmt_copy(method_copy, sizeof method_copy, method);
    fmt_copy(path_copy, sizeof path_copy, path);
    struct access_entry e = {.request_id = rid, .method = method_copy, .path = path_copy};
    const char *key = auth_bearer(httpd_req_header(r, "Authorization"));
    uint8_t digest[SHA256_LEN];
    int completion = strcmp(path, "/v1/completions") == 0;
    int chat = strcmp(path, "/v1/chat/completions") == 0 || completion, models = strcmp(path, "/v1/models") == 0;
    int stats = strcmp(path, "/admin/v1/stats") == 0, embeddings = strcmp(path, "/v1/embeddings") == 0;
    /* /v1/models/{id}: the id is the rest of the path, escaped or not. */
    static const char model_prefix[] = "/v1/models/";
    size_t mpl = sizeof model_prefix - 1;
    int model = strncmp(path, model_prefix, mpl) == 0;
    int dash_status = strncmp(path, "/dashboard", 10) == 0 ? dashboard_serve(r, path) : 0;
    if (dash_status) {
        snapshot_release(snap);
        e.status = dash_status;
        e.latency_us = clock_mono_us() - t0;
        access_log(&e);
        return;
    }
    /* /admin/v1/tenants/{id}/usage, where id is one path segment. */
    static const char usage_prefix[] = "/admin/v1/tenants/";
    size_t upl = sizeof usage_prefix - 1, plen = strlen(path);
    int usage = strncmp(path, usage_prefix, upl) == 0 && plen > upl + 6 && strcmp(path + plen - 6, "/usage") == 0 &&
                plen - upl - 6 < 64 && !memchr(path + upl, '/', plen - upl - 6);
    if (!chat && !embeddings && !models && !model && !usage && !stats) {
        char msg[160];
        snprintf(msg, sizeof msg, "Unknown request URL: %s %.100s", method, path);
        e.status = reply_error(r, 404, "invalid_request_error", "unknown_url", msg);
    } else if (((chat || embeddings) && !is_post) || ((models || model || usage || stats) && !is_get)) {
        httpd_resp_header(r, "Allow", chat || embeddings ? "POST" : "GET");
        e.status = reply_error(r, 405, "invalid_request_error", "method_not_allowed",
                               chat || embeddings ? "Method not allowed; use POST" : "Method not allowed; use GET");
    } else if (stats) {
        e.status = admin_stats(r, rs->chat.stats, rs->chat.base, cfg, key);
    } else if (usage) {
        char tenant_id[64];
        snprintf(tenant_id, sizeof tenant_id, "%.*s", (int)(plen - upl - 6), path + upl);
        e.status = admin_usage(r, rs->chat.policy, rs->chat.base, cfg, key, tenant_id);
    } else {
        const char *key_id = NULL;
        const struct tenant_config *t = key ? auth_tenant_digest(cfg, key_digest(r, key, digest), &key_id) : NULL;
        if (!t) {
            httpd_resp_header(r, "WWW-Authenticate", "Bearer");
            e.status = reply_error(r, 401, "invalid_request_error", "invalid_api_key",
                                   key ? "Incorrect API key provided" : "Missing API key: send Authorization: Bearer <key>");
            if (chat || embeddings)
                metrics_request(rs->chat.metrics, -1, -1, 401, STATS_CACHE_BYPASS, 0, 0, 0, 0, 0,
                                clock_mono_us() - t0, 0, clock_mono_us() - t0, 0, 0);
        } else if (chat) {
            metrics_inflight_add(rs->chat.metrics, 1); /* chat_done takes it back */
            chat_handle(&rs->chat, r, snap, t, key_id, rid, t0, completion ? CHAT_EP_COMPLETIONS : CHAT_EP_CHAT);
            return; /* the chat state machine logs its own line and releases snap */
        } else if (embeddings) {
            embeddings_handle(&rs->chat, r, snap, t, key_id, rid, t0);
            return; /* it logs its own line and releases snap */
        } else {
            e.tenant = t->id;
            httpd_resp_header(r, "x-cascade-tier", "none");
            e.status = model ? retrieve_model(cfg, r, t, path + mpl, strlen(path + mpl)) : list_models(cfg, r, t);
        }
    }
    snapshot_release(snap);
    e.latency_us = clock_mono_us() - t0;
    access_log(&e);
}

int routes_head(struct httpd_req *r, void *arg)
{
    const struct route_services *rs = arg;
    if (strncmp(httpd_req_path(r), "/v1/", 4) != 0)
        return 0;
    struct config_snap *snap = snapshot_acquire(rs->snaps);
    const char *key = auth_bearer(httpd_req_header(r, "Authorization"));
    uint8_t digest[SHA256_LEN];
    int ok = key && auth_tenant_digest(&snap->cfg, key_digest(r, key, digest), NULL) != NULL;
    snapshot_release(snap);
    if (ok)
        return 0;
    /* routes_handle answers 401 without reading the body. */
    routes_handle(r, arg);
    return 1;
}

void routes_reject(struct httpd_req *r, int status, void *arg)
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
