/* admin.c: the admin API (usage, stats). See admin.h. */
#include "gateway/admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/httpd.h"
#include "common/mem.h"
#include "gateway/auth.h"
#include "gateway/config.h"
#include "gateway/reply.h"
#include "policies/policy.h"
#include "policies/stats.h"

/* Who is asking: the admin token, a tenant's key (*caller), or nobody (then
 * the request has been answered 401 and -1 is returned). */
static int identify(struct httpd_req *r, const struct config *cfg, const char *key,
                    const struct tenant_config **caller, int *admin)
{
    *caller = auth_tenant(cfg, key);
    *admin = auth_is_admin(cfg, key);
    if (*caller || *admin)
        return 0;
    httpd_resp_header(r, "WWW-Authenticate", "Bearer");
    reply_error(r, 401, "invalid_request_error", "invalid_api_key", "a valid admin token or tenant key is required");
    return -1;
}

/* ---- usage ------------------------------------------------------------- */

/* Lives until the policy answers, which may be after the client left: the
 * close callback marks it gone so the answer is dropped, not sent. */
struct usage_req {
    struct httpd_req *r;
    int gone;
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

int admin_usage(struct httpd_req *r, struct policy *policy, struct event_base *base, const struct config *cfg,
                const char *key, const char *tenant_id)
{
    const struct tenant_config *caller;
    int admin;
    if (identify(r, cfg, key, &caller, &admin) < 0)
        return 401;
    const struct tenant_config *t = NULL;
    for (size_t i = 0; i < cfg->n_tenants; i++)
        if (strcmp(cfg->tenants[i].id, tenant_id) == 0)
            t = &cfg->tenants[i];
    /* 403 before 404: a tenant's key must not learn which other tenants exist. */
    if (!admin && caller != t)
        return reply_error(r, 403, "permission_error", "forbidden", "a tenant key may read only its own tenant");
    if (!t)
        return reply_error(r, 404, "invalid_request_error", "tenant_not_found", "no such tenant");
    httpd_resp_header(r, "x-cascade-tier", "none");
    struct usage_req *u = xcalloc(1, sizeof *u);
    u->r = r;
    httpd_req_on_close(r, usage_close_cb, u);
    policy_usage(policy, base, t->id, &t->limits, usage_done, u);
    return 200;
}

/* ---- stats ------------------------------------------------------------- */

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
            /* Rates and costs are reals: twelve digits keep them readable
             * without losing what the dashboard plots. */
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

/* An integer parameter, dflt when absent; -1 when present and not a number. */
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

/* No tenant: the admin token sees every tenant summed, a tenant key its own.
 * from/to default to the last hour, step to 60 s. */
int admin_stats(struct httpd_req *r, struct stats *stats, struct event_base *base, const struct config *cfg,
                const char *key)
{
    const struct tenant_config *caller;
    int admin;
    if (identify(r, cfg, key, &caller, &admin) < 0)
        return 401;
    const char *q = httpd_req_query(r);
    char tenant[80] = "";
    query_param(q, "tenant", tenant, sizeof tenant);
    if (!admin) {
        if (*tenant && strcmp(tenant, caller->id) != 0)
            return reply_error(r, 403, "permission_error", "forbidden", "a tenant key may read only its own tenant");
        snprintf(tenant, sizeof tenant, "%s", caller->id);
    } else if (*tenant) {
        int found = 0;
        for (size_t i = 0; i < cfg->n_tenants; i++)
            found |= strcmp(cfg->tenants[i].id, tenant) == 0;
        if (!found)
            return reply_error(r, 404, "invalid_request_error", "tenant_not_found", "no such tenant");
    }
    int64_t now = clock_wall_s(), from, to, step;
    char err[160];
    if (query_int(q, "to", now, &to) < 0 || query_int(q, "from", to - 3600, &from) < 0 ||
        query_int(q, "step", 60, &step) < 0)
        return reply_error(r, 400, "invalid_request_error", "invalid_range", "from, to and step must be integers");
    if (stats_query_check(from, to, step, err, sizeof err) < 0)
        return reply_error(r, 400, "invalid_request_error", "invalid_range", err);
    /* The ids are copied by stats_query: the snapshot may go after this call. */
    const char **ids = xcalloc(cfg->n_tenants ? cfg->n_tenants : 1, sizeof *ids);
    for (size_t i = 0; i < cfg->n_tenants; i++)
        ids[i] = cfg->tenants[i].id;
    httpd_resp_header(r, "x-cascade-tier", "none");
    struct stats_req *sq = xcalloc(1, sizeof *sq);
    sq->r = r;
    httpd_req_on_close(r, stats_close_cb, sq);
    stats_query(stats, base, *tenant ? tenant : NULL, ids, cfg->n_tenants, from, to, step, stats_done, sq);
    free(ids);
    return 200;
}
