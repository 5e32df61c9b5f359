/* routes.h: the gateway's route table, and its small public endpoints.
 *
 * Every request a worker's httpd parses comes to routes_handle, which names
 * the request (x-request-id), authenticates it (Bearer key -> tenant, or the
 * admin token), checks the method, and hands it to the module that owns the
 * endpoint:
 *
 *   POST /v1/chat/completions          chat.c, the request state machine
 *   POST /v1/embeddings                embeddings.c
 *   GET  /v1/models, /v1/models/{id}   here
 *   GET  /admin/v1/...                 admin.c
 *   GET  /dashboard...                 dashboard.c
 *   GET  /healthz, /readyz, /metrics   here; not access-logged (probes, scrapes)
 *
 * Anything else is a 404 in OpenAI's error format. Every other endpoint
 * writes its own access-log line here; chat writes its own.
 *
 * A worker fills one struct route_services and passes it as the httpd
 * callbacks' argument; it must outlive the worker's httpd. The routes read
 * the config through the snapshot store, one snapshot per request, and call
 * nothing of the worker or lifecycle code (server.c), which calls them.
 * Every function runs on the worker thread that owns the request.
 */
#ifndef CASCADE_ROUTES_H
#define CASCADE_ROUTES_H

#include <stddef.h>

#include "gateway/chat.h"

struct httpd_req;
struct snapshot_store;

struct route_services {
    struct chat_services chat;      /* this worker's loop and the shared services, also for admin */
    struct snapshot_store *snaps;   /* the running config */
    size_t n_engines;               /* chat.engines[0..n_engines): one per tier */
};

/* The httpd handler (httpd_handler): answers r, now or later. */
void routes_handle(struct httpd_req *r, void *route_services);
/* The head hook (httpd_head_cb): a /v1/ request without a valid key is
 * answered 401 before its body is read, so an unauthenticated client is
 * never invited (100-continue) to upload it. 1 when it answered. */
int routes_head(struct httpd_req *r, void *route_services);
/* The reject callback (httpd_reject_cb): a request the HTTP layer refused
 * (bad framing, limits) still gets our headers and an access-log line. */
void routes_reject(struct httpd_req *r, int status, void *route_services);

#endif
