/* chat.h: POST /v1/chat/completions, the request state machine.
 *
 *   parse -> pick tier -> engine_submit -> on_token* -> on_done | on_error
 *
 * Non-streaming answers are assembled and sent whole; streaming answers go
 * out as SSE chunks as tokens arrive. The stream's HTTP status is committed
 * only at the first token, so a request that fails before producing anything
 * still gets a proper error status. A client that disconnects cancels the
 * engine request. Runs on the worker thread that accepted the request.
 *
 * The state machine sees the gateway only through struct chat_services: the
 * worker's loop and the shared services a request uses. The worker code
 * fills one per worker and keeps it alive as long as the worker; chat.c does
 * not know workers, the route table or lifecycle, so the dependency runs one
 * way: the routes call chat, never the reverse. */
#ifndef CASCADE_CHAT_H
#define CASCADE_CHAT_H

#include <stdint.h>

struct httpd_req;
struct tenant_config;
struct config_snap;
struct event_base;
struct cache;
struct policy;
struct stats;
struct metrics;
struct workpool;
struct tokenizer;
struct classifier;
struct share_table;
struct engine;

/* What a chat request uses of the gateway, one per worker. None of it is
 * owned here: the gateway builds the services and frees them after the
 * workers stop. */
struct chat_services {
    struct event_base *base;            /* the worker's loop: every callback comes back here */
    struct cache *cache;
    struct policy *policy;
    struct stats *stats;
    struct metrics *metrics;
    struct workpool *pool;              /* work too long for the loop */
    const struct tokenizer *tokenizer;  /* may be NULL: counts are then estimated */
    const struct classifier *classifier; /* may be NULL: "auto" takes the default tier */
    struct share_table *shares;         /* tenants' own score distributions; may be NULL */
    struct engine *const *engines;      /* one per tier of the boot config */
};

/* The two generation endpoints share this state machine: a legacy
 * completion is parsed into the same request shape (its prompt as one user
 * message, sent without a chat template) and answered with
 * text_completion objects (common/completions.h). */
enum chat_endpoint {
    CHAT_EP_CHAT,           /* POST /v1/chat/completions */
    CHAT_EP_COMPLETIONS,    /* POST /v1/completions */
};

/* Takes over r: answers it, now or later, and the reference to snap (which
 * tenant and key_id point into). request_id is copied. svc must outlive
 * the request. */
void chat_handle(const struct chat_services *svc, struct httpd_req *r, struct config_snap *snap,
                 const struct tenant_config *tenant, const char *key_id, const char *request_id, uint64_t t0,
                 enum chat_endpoint endpoint);

#endif
