#include "cache/singleflight.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/mem.h"

#define N_BUCKETS 256

struct sf_waiter {
    struct sf_waiter *next;
    struct flight *flight;          /* NULL once woken */
    struct event *ev;
    sf_cb cb;
    void *ctx;
    char *value;                    /* copy of the leader's answer, or NULL */
    size_t len;
};

struct flight {
    struct flight *next;
    uint8_t key[32];
    struct sf_waiter *waiters;
};

struct singleflight {
    pthread_mutex_t mu;
    struct flight *buckets[N_BUCKETS];
    size_t waiting;
};

struct singleflight *sf_new(void)
{
    struct singleflight *sf = xcalloc(1, sizeof *sf);
    pthread_mutex_init(&sf->mu, NULL);
    return sf;
}

static struct flight **slot(struct singleflight *sf, const uint8_t key[32])
{
    struct flight **pp = &sf->buckets[key[0]];
    while (*pp && memcmp((*pp)->key, key, 32) != 0)
        pp = &(*pp)->next;
    return pp;
}

static void waiter_free(struct sf_waiter *w)
{
    event_free(w->ev);
    free(w->value);
    free(w);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sf_waiter *w = arg;
    w->cb(w->ctx, w->value, w->len);
    waiter_free(w);
}

struct sf_waiter *sf_join(struct singleflight *sf, const uint8_t key[32], struct event_base *base, sf_cb cb,
                          void *ctx)
{
    pthread_mutex_lock(&sf->mu);
    struct flight **pp = slot(sf, key);
    if (!*pp) {
        struct flight *f = xcalloc(1, sizeof *f);
        memcpy(f->key, key, 32);
        *pp = f;
        pthread_mutex_unlock(&sf->mu);
        return NULL; /* the caller leads */
    }
    struct sf_waiter *w = xcalloc(1, sizeof *w);
    w->flight = *pp;
    w->ev = event_new(base, -1, 0, wake_cb, w);
    w->cb = cb;
    w->ctx = ctx;
    w->next = (*pp)->waiters;
    (*pp)->waiters = w;
    sf->waiting++;
    pthread_mutex_unlock(&sf->mu);
    return w;
}

void sf_finish(struct singleflight *sf, const uint8_t key[32], const char *value, size_t len)
{
    pthread_mutex_lock(&sf->mu);
    struct flight **pp = slot(sf, key);
    struct flight *f = *pp;
    if (!f) {
        pthread_mutex_unlock(&sf->mu);
        return;
    }
    *pp = f->next;
    for (struct sf_waiter *w = f->waiters, *next; w; w = next) {
        next = w->next;
        w->flight = NULL;
        if (value) {
            w->value = xmalloc(len + 1);
            memcpy(w->value, value, len);
            w->value[len] = '\0';
            w->len = len;
        }
        sf->waiting--;
        /* Thread-safe with evthread_use_pthreads(): wakes the waiter's worker. */
        event_active(w->ev, EV_TIMEOUT, 0);
    }
    pthread_mutex_unlock(&sf->mu);
    free(f);
}

void sf_leave(struct singleflight *sf, struct sf_waiter *w)
{
    pthread_mutex_lock(&sf->mu);
    if (w->flight) {
        struct sf_waiter **pp = &w->flight->waiters;
        while (*pp != w)
            pp = &(*pp)->next;
        *pp = w->next;
        sf->waiting--;
    }
    pthread_mutex_unlock(&sf->mu);
    /* If it was already woken, freeing the event drops the pending wake-up:
     * we are on its own thread, so its callback cannot be running. */
    waiter_free(w);
}

size_t sf_waiting(struct singleflight *sf)
{
    pthread_mutex_lock(&sf->mu);
    size_t n = sf->waiting;
    pthread_mutex_unlock(&sf->mu);
    return n;
}

void sf_free(struct singleflight *sf)
{
    if (!sf)
        return;
    for (int i = 0; i < N_BUCKETS; i++)
        for (struct flight *f = sf->buckets[i], *next; f; f = next) {
            next = f->next;
            for (struct sf_waiter *w = f->waiters, *wn; w; w = wn) {
                wn = w->next;
                waiter_free(w);
            }
            free(f);
        }
    pthread_mutex_destroy(&sf->mu);
    free(sf);
}
