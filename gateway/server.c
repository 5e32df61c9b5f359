/* server.c: the gateway's worker threads, listening sockets, start-up,
 * reload on SIGHUP, and shutdown. What a request meets is in routes.c. See
 * gateway.h. */
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
#include "gateway/metrics.h"
#include "gateway/routes.h"
#include "gateway/snapshot.h"
#include "policies/stats.h"
#include "gateway/engines.h"
#include "classifier/classifier.h"
#include "policies/share.h"
#include "tokenizer/tokenizer_bpe.h"
#include "policies/policy.h"

#define DRAIN_POLL_MS 20

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

/* Every attempt on a remote replica; failures also feed the older
 * per-replica error counter. */
static void count_upstream_attempt(void *ctx, size_t replica, enum remote_outcome o, int retried)
{
    struct metrics *m = ((struct gateway *)ctx)->metrics;
    metrics_upstream_attempt(m, (int)replica, (int)o, retried);
    if (o == REMOTE_CONNECT_ERROR || o == REMOTE_HTTP_5XX || o == REMOTE_TIMEOUT || o == REMOTE_BAD_RESPONSE)
        metrics_upstream_error(m, (int)replica);
}

static void count_upstream_ejected(void *ctx, size_t replica, int ejected)
{
    metrics_upstream_ejected(((struct gateway *)ctx)->metrics, (int)replica, ejected);
}

/* A worker's event loop. With the changelist, libevent folds the changes
 * made to one socket during a loop iteration (a bufferevent enables write
 * interest for each chunk it queues and drops it once the buffer drains)
 * into at most one epoll_ctl at the next epoll_wait: a stream did about 8
 * epoll_ctl calls per request without it (strace -c, issue 18). The flag is
 * unsafe only for descriptors shared through dup(), which no worker has. */
static struct event_base *worker_base_new(void)
{
    struct event_config *cfg = event_config_new();
    if (!cfg)
        return NULL;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
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
    /* Routing shares follow each tenant's own traffic, starting from the
     * model's distribution; one slot per tenant of the boot config. */
    if (gw->classifier && classifier_threshold_for_share(gw->classifier, 0.5) >= 0)
        gw->shares = share_table_new(cfg->n_tenants, config_classifier_threshold, gw->classifier);
    /* After the classifier: tenants' routing shares become thresholds
     * through its score distribution, on this load and every reload. */
    gw->snaps = snapshot_store_new(gw->config_path, gw->listen_override, cfg, gw->classifier, err, errlen);
    if (!gw->snaps)
        return -1;
    if (cfg->tokenizer) {
        if (tok_bpe_load(from_config(base_dir, cfg->tokenizer, path, sizeof path), &gw->tokenizer, err, errlen) !=
            TOK_OK)
            return -1;
    } else {
        log_warn("no \"tokenizer\" in the config: prompt tokens are estimated from their length, high");
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
            static const struct remote_hooks hooks = {count_upstream_attempt, count_upstream_ejected};
            for (size_t k = 0; k < cfg->tiers[i].remote.n_urls; k++)
                metrics_replica_tier(gw->metrics, (int)(replica_base + k), (int)i);
            remote_engine_set_hooks(gw->engines[i], &hooks, gw, replica_base);
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
    if (cfg->tls.cert_file) {
        /* Read once, here: every worker's listener serves the same context,
         * and a reload cannot change it (the config check asks for a restart). */
        char cert_path[8192], e2[768];
        const char *cert = from_config(base_dir, cfg->tls.cert_file, cert_path, sizeof cert_path);
        gw->tls = httpd_tls_new(cert, from_config(base_dir, cfg->tls.key_file, path, sizeof path), e2, sizeof e2);
        if (!gw->tls) {
            snprintf(err, errlen, "tls: %s", e2);
            return -1;
        }
    }
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
        w->base = worker_base_new();
        w->httpd = w->base ? httpd_new(w->base, fd, &lim, routes_handle, routes_reject, &w->routes) : NULL;
        if (!w->httpd) {
            close(fd);
            snprintf(err, errlen, "cannot start worker %d", i);
            return -1;
        }
        httpd_set_head_hook(w->httpd, routes_head);
        httpd_set_tls(w->httpd, gw->tls);
        w->drain_ev = event_new(w->base, -1, 0, drain_cb, w);
        w->drain_poll = event_new(w->base, -1, EV_PERSIST, drain_poll_cb, w);
        w->routes = (struct route_services){
            .chat = {
                .base = w->base,
                .cache = gw->cache,
                .policy = gw->policy,
                .stats = gw->stats,
                .metrics = gw->metrics,
                .pool = gw->pool,
                .tokenizer = gw->tokenizer,
                .classifier = gw->classifier,
                .shares = gw->shares,
                .engines = gw->engines,
            },
            .snaps = gw->snaps,
            .n_engines = cfg->n_tiers,
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
    json_t *f = json_pack("{s:s, s:i, s:i, s:b}", "addr", addr, "workers", gw->n_workers, "tiers", (int)gw->cfg.n_tiers,
                          "tls", gw->tls != NULL);
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
    httpd_tls_free(gw->tls); /* after every listener that served it */
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
    share_table_free(gw->shares); /* before the classifier: its trackers were seeded from it */
    classifier_free(gw->classifier);
    snapshot_store_free(gw->snaps);
    for (int i = 0; gw->workers && i < gw->n_workers; i++)
        if (gw->workers[i].base)
            event_base_free(gw->workers[i].base);
    free(gw->workers);
    free(gw->engines);
    config_free(&gw->cfg);
}
