/* gateway.h: the gateway process and its worker threads.
 *
 * A struct gateway holds what every worker shares, read-only once the
 * workers start: the config and one engine per tier. Each struct worker is
 * one thread with its own event_base, its own SO_REUSEPORT listening socket
 * and its own httpd; a request lives and dies on the worker that accepted it.
 *
 * Shutdown (SIGTERM/SIGINT) drains: every worker stops accepting, closes idle
 * connections, and exits when its in-flight requests are done or the drain
 * timeout passes.
 */
#ifndef CASCADE_GATEWAY_H
#define CASCADE_GATEWAY_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include "gateway/config.h"
#include "gateway/routes.h"

struct cache;
struct classifier;
struct share_table;
struct stats;
struct metrics;
struct engine;
struct policy;
struct tokenizer;
struct event_base;
struct redis_shared;
struct event;
struct httpd;
struct httpd_req;
struct httpd_tls;
struct workpool;
struct snapshot_store;

struct worker {
    struct gateway *gw;
    int index;
    pthread_t thread;
    struct event_base *base;
    struct httpd *httpd;
    struct event *drain_ev;     /* made active by the main thread to start draining */
    struct event *drain_poll;   /* checks whether draining is done */
    struct route_services routes;   /* what this worker's requests use (routes.h) */
    int stats_flushed;          /* draining: the last stats were sent */
    atomic_int done;
};

struct gateway {
    struct config cfg;          /* as loaded at start: listen, workers, tiers, engines */
    const char *config_path;    /* reread on SIGHUP */
    const char *listen_override;    /* --listen, applied to every reload */
    struct snapshot_store *snaps;   /* the current policies (gateway/snapshot.h) */
    struct tokenizer *tokenizer;    /* DeepSeek's, for prompt token counts; may be NULL */
    struct classifier *classifier;  /* scores "auto" requests; may be NULL */
    struct share_table *shares;     /* each tenant's own score distribution (routing shares); may be NULL */
    struct policy *policy;
    struct engine **engines;    /* one per tier, shared by all workers */
    struct redis_shared *redis; /* NULL without redis.url */
    struct cache *cache;
    struct stats *stats;        /* fleet stats per tenant and minute (policies/stats.h) */
    struct metrics *metrics;    /* Prometheus, GET /metrics (gateway/metrics.h) */
    struct workpool *pool;      /* work too long for a worker's loop (common/workpool.h) */
    struct httpd_tls *tls;      /* tls: in the config: the listener's certificate, shared by every worker */
    struct worker *workers;
    int n_workers;
    int port;                   /* the port actually bound */
};

/* Block the signals the main thread waits for, in this thread and so in
 * every thread started after it (workers, engine threads): call first. */
void gateway_block_signals(sigset_t *set);
/* Build engines and bind sockets. 0, or -1 with err set. */
int gateway_init(struct gateway *gw, char *err, size_t errlen);
/* Start the workers and serve until a signal asks to stop; then drain. */
int gateway_run(struct gateway *gw);
void gateway_free(struct gateway *gw);

#endif
