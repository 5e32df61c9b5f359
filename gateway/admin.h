/* admin.h: the admin API, read-only views of what the policies recorded.
 *
 *   GET /admin/v1/tenants/{id}/usage   spend, budgets and limits of a tenant
 *   GET /admin/v1/stats?tenant=&from=&to=&step=   per-minute fleet stats
 *
 * Who may read what: the admin token sees every tenant; a tenant's API key
 * sees only its own. Both answers come from Redis, asynchronously: the
 * request is answered later on the loop that asked (base), or 503 when Redis
 * cannot answer. A client that goes away before then is let go; the answer
 * is dropped.
 *
 * The route table (routes.c) matches the paths and methods and hands the
 * request over; each call takes over r (answers it, now or later) and
 * returns the status for the access log (200 when the answer is pending).
 * cfg is the caller's config snapshot, read only during the call. Runs on the
 * worker thread that owns r.
 */
#ifndef CASCADE_ADMIN_H
#define CASCADE_ADMIN_H

struct httpd_req;
struct event_base;
struct config;
struct policy;
struct stats;

/* GET /admin/v1/tenants/{tenant_id}/usage; key is the Bearer token, or NULL. */
int admin_usage(struct httpd_req *r, struct policy *policy, struct event_base *base, const struct config *cfg,
                const char *key, const char *tenant_id);
/* GET /admin/v1/stats with the request's query string. */
int admin_stats(struct httpd_req *r, struct stats *stats, struct event_base *base, const struct config *cfg,
                const char *key);

#endif
