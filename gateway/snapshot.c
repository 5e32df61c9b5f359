/* snapshot.c: refcounted config snapshots and their reload. See snapshot.h. */
#include "gateway/snapshot.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/mem.h"

struct snapshot_store {
    const char *path;            /* borrowed: reread on every reload */
    const char *listen_override; /* borrowed: --listen, applied to every reload */
    const struct config *boot;   /* borrowed: what reloads are checked against */
    const struct classifier *classifier; /* borrowed, may be NULL: routing shares -> thresholds */
    pthread_mutex_t mu;          /* guards cur: the swap and a reader's incref */
    struct config_snap *cur;     /* one reference held by the store */
};

static struct config_snap *snap_load(struct snapshot_store *st, char *err, size_t errlen)
{
    struct config_snap *s = xcalloc(1, sizeof *s);
    if (config_load(st->path, &s->cfg, err, errlen) < 0) {
        free(s);
        return NULL;
    }
    if (st->classifier &&
        config_resolve_routing(&s->cfg, config_classifier_threshold, st->classifier, err, errlen) < 0) {
        config_free(&s->cfg);
        free(s);
        return NULL;
    }
    if (st->listen_override) {
        free(s->cfg.listen_host);
        s->cfg.listen_host = NULL;
        /* main.c has already refused a malformed --listen. */
        config_parse_listen(st->listen_override, &s->cfg.listen_host, &s->cfg.listen_port);
    }
    /* Metrics labels were fixed at start-up from the boot config; find each
     * tenant's slot once here rather than on every request. A tenant added
     * by a reload has none (-1). */
    for (size_t i = 0; i < s->cfg.n_tenants; i++) {
        s->cfg.tenants[i].metrics_index = -1;
        for (size_t k = 0; k < st->boot->n_tenants; k++)
            if (strcmp(st->boot->tenants[k].id, s->cfg.tenants[i].id) == 0)
                s->cfg.tenants[i].metrics_index = (int)k;
    }
    atomic_init(&s->refs, 1);
    return s;
}

struct snapshot_store *snapshot_store_new(const char *path, const char *listen_override, const struct config *boot,
                                          const struct classifier *classifier, char *err, size_t errlen)
{
    struct snapshot_store *st = xcalloc(1, sizeof *st);
    st->classifier = classifier;
    st->path = path;
    st->listen_override = listen_override;
    st->boot = boot;
    if (pthread_mutex_init(&st->mu, NULL) != 0) {
        snprintf(err, errlen, "cannot create the config snapshot lock");
        goto fail_store;
    }
    st->cur = snap_load(st, err, errlen);
    if (!st->cur)
        goto fail_mutex;
    return st;

fail_mutex:
    pthread_mutex_destroy(&st->mu);
fail_store:
    free(st);
    return NULL;
}

void snapshot_store_free(struct snapshot_store *st)
{
    if (!st)
        return;
    snapshot_release(st->cur);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

struct config_snap *snapshot_acquire(struct snapshot_store *st)
{
    /* The incref happens under the lock: otherwise a reload could drop the
     * store's reference, and free the snapshot, between our load of cur and
     * our increment. */
    pthread_mutex_lock(&st->mu);
    struct config_snap *s = st->cur;
    atomic_fetch_add(&s->refs, 1);
    pthread_mutex_unlock(&st->mu);
    return s;
}

void snapshot_release(struct config_snap *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
        config_free(&s->cfg);
        free(s);
    }
}

int snapshot_reload(struct snapshot_store *st, const char *why)
{
    char err[512];
    struct config_snap *next = snap_load(st, err, sizeof err);
    if (!next) {
        log_error("%s: reload failed, keeping the running config: %s", why, err);
        return -1;
    }
    /* Tiers, engines, listen address and workers were built from the boot
     * config; a snapshot that disagrees with them cannot be served. */
    const char *conflict = config_reload_conflict(st->boot, &next->cfg);
    if (conflict) {
        log_error("%s: reload refused (%s; those need a restart), keeping the running config", why, conflict);
        snapshot_release(next);
        return -1;
    }
    pthread_mutex_lock(&st->mu);
    struct config_snap *old = st->cur;
    st->cur = next;
    pthread_mutex_unlock(&st->mu);
    snapshot_release(old); /* freed when its last request ends */
    log_info("%s: configuration reloaded (%zu tenants)", why, next->cfg.n_tenants);
    /* Compared with the boot config, not the previous snapshot: what these
     * fields feed was built once, so the warning repeats on every reload
     * until a restart brings the two back together. */
    char deferred[512];
    if (config_reload_deferred(st->boot, &next->cfg, deferred, sizeof deferred) > 0)
        log_warn("%s: %s changed, which takes effect only after a restart", why, deferred);
    return 0;
}
