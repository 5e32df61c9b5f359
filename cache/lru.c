#include "cache/lru.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/mem.h"

/* Entries live in a chained hash table and on a recency list (head = most
 * recent). The byte count covers keys, values and per-entry overhead. */
struct entry {
    struct entry *hnext;
    struct entry *prev, *next;
    uint64_t hash;
    uint64_t expires_us;
    size_t len;
    char *key;
    char *value;
};

struct lru {
    pthread_mutex_t mu;
    struct entry **buckets;
    size_t n_buckets, count, bytes, max_bytes;
    struct entry *head, *tail;
};

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static size_t entry_bytes(const struct entry *e)
{
    return sizeof *e + strlen(e->key) + 1 + e->len;
}

struct lru *lru_new(size_t max_bytes)
{
    struct lru *l = xcalloc(1, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    l->n_buckets = 1024;
    l->buckets = xcalloc(l->n_buckets, sizeof *l->buckets);
    l->max_bytes = max_bytes;
    return l;
}

static void unlink_entry(struct lru *l, struct entry *e)
{
    struct entry **pp = &l->buckets[e->hash % l->n_buckets];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->prev)
        e->prev->next = e->next;
    else
        l->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        l->tail = e->prev;
    l->count--;
    l->bytes -= entry_bytes(e);
    free(e->key);
    free(e->value);
    free(e);
}

static void grow(struct lru *l)
{
    size_t nb = l->n_buckets * 2;
    struct entry **b = xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < l->n_buckets; i++) {
        struct entry *e = l->buckets[i], *next;
        for (; e; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash % nb];
            b[e->hash % nb] = e;
        }
    }
    free(l->buckets);
    l->buckets = b;
    l->n_buckets = nb;
}

static struct entry *find(struct lru *l, const char *key, uint64_t h)
{
    for (struct entry *e = l->buckets[h % l->n_buckets]; e; e = e->hnext)
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

void lru_put(struct lru *l, const char *key, const char *value, size_t len, uint64_t ttl_ms)
{
    uint64_t h = fnv1a(key);
    struct entry *e = xcalloc(1, sizeof *e);
    e->hash = h;
    e->key = xstrdup(key);
    e->value = xmalloc(len + 1);
    memcpy(e->value, value, len);
    e->value[len] = '\0';
    e->len = len;
    e->expires_us = clock_mono_us() + ttl_ms * 1000;
    size_t need = entry_bytes(e);
    pthread_mutex_lock(&l->mu);
    struct entry *old = find(l, key, h);
    if (old)
        unlink_entry(l, old);
    if (need > l->max_bytes) {
        pthread_mutex_unlock(&l->mu);
        free(e->key);
        free(e->value);
        free(e);
        return;
    }
    while (l->bytes + need > l->max_bytes && l->tail)
        unlink_entry(l, l->tail);
    if (l->count + 1 > l->n_buckets)
        grow(l);
    e->hnext = l->buckets[h % l->n_buckets];
    l->buckets[h % l->n_buckets] = e;
    e->next = l->head;
    if (l->head)
        l->head->prev = e;
    l->head = e;
    if (!l->tail)
        l->tail = e;
    l->count++;
    l->bytes += need;
    pthread_mutex_unlock(&l->mu);
}

char *lru_get(struct lru *l, const char *key, size_t *len)
{
    uint64_t h = fnv1a(key);
    char *copy = NULL;
    pthread_mutex_lock(&l->mu);
    struct entry *e = find(l, key, h);
    if (e && e->expires_us <= clock_mono_us()) {
        unlink_entry(l, e);
        e = NULL;
    }
    if (e) {
        if (l->head != e) { /* move to the front */
            e->prev->next = e->next;
            if (e->next)
                e->next->prev = e->prev;
            else
                l->tail = e->prev;
            e->prev = NULL;
            e->next = l->head;
            l->head->prev = e;
            l->head = e;
        }
        copy = xmalloc(e->len + 1);
        memcpy(copy, e->value, e->len + 1);
        *len = e->len;
    }
    pthread_mutex_unlock(&l->mu);
    return copy;
}

size_t lru_bytes(struct lru *l)
{
    pthread_mutex_lock(&l->mu);
    size_t b = l->bytes;
    pthread_mutex_unlock(&l->mu);
    return b;
}

size_t lru_count(struct lru *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = l->count;
    pthread_mutex_unlock(&l->mu);
    return n;
}

void lru_free(struct lru *l)
{
    if (!l)
        return;
    while (l->head)
        unlink_entry(l, l->head);
    free(l->buckets);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
