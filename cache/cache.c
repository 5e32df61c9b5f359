#include "cache/cache.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/lru.h"
#include "cache/redis.h"
#include "cache/singleflight.h"
#include "common/hash.h"
#include "common/mem.h"

struct cache {
    struct cache_settings s;
    struct lru *lru;
    struct singleflight *flights;
};

struct cache *cache_new(const struct cache_settings *s)
{
    struct cache *c = xcalloc(1, sizeof *c);
    c->s = *s;
    if (s->backend == CACHE_BACKEND_MEMORY)
        c->lru = lru_new(s->memory_max_bytes);
    c->flights = sf_new();
    return c;
}

void cache_free(struct cache *c)
{
    if (!c)
        return;
    lru_free(c->lru);
    sf_free(c->flights);
    free(c);
}

struct singleflight *cache_flights(struct cache *c)
{
    return c->flights;
}

const char *cache_backend_name(const struct cache *c)
{
    return c->s.backend == CACHE_BACKEND_REDIS ? "redis" : "memory";
}

/* cascade:{tenant}:resp:<hex> */
static void redis_key(char *buf, size_t n, const char *tenant, const uint8_t key[32])
{
    char hex[SHA256_HEX_LEN + 1];
    hash_hex(key, 32, hex);
    snprintf(buf, n, "cascade:{%s}:resp:%s", tenant, hex);
}

struct pending_get {
    cache_get_cb cb;
    void *ctx;
    enum cache_status status;
    char *value;
    size_t len;
};

static void deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pending_get *g = arg;
    g->cb(g->ctx, g->status, g->value, g->len);
    free(g->value);
    free(g);
}

static void redis_get_cb(void *ctx, enum redis_call_status st, redisReply *reply)
{
    struct pending_get *g = ctx;
    if (st != REDIS_CALL_OK || reply->type == REDIS_REPLY_ERROR)
        g->cb(g->ctx, CACHE_UNAVAILABLE, NULL, 0);
    else if (reply->type == REDIS_REPLY_STRING)
        g->cb(g->ctx, CACHE_HIT, reply->str, reply->len);
    else
        g->cb(g->ctx, CACHE_MISS, NULL, 0);
    free(g);
}

void cache_get(struct cache *c, struct event_base *base, const char *tenant, const uint8_t key[32], cache_get_cb cb,
               void *ctx)
{
    char k[300];
    redis_key(k, sizeof k, tenant, key);
    struct pending_get *g = xcalloc(1, sizeof *g);
    g->cb = cb;
    g->ctx = ctx;
    if (c->s.backend == CACHE_BACKEND_REDIS) {
        const char *argv[] = {"GET", k};
        redis_call(redis_for_base(c->s.redis, base), redis_get_cb, g, 2, argv, NULL);
        return;
    }
    /* The memory backend answers at once; deliver on the next loop turn so
     * callers see one behaviour. */
    g->value = lru_get(c->lru, k, &g->len);
    g->status = g->value ? CACHE_HIT : CACHE_MISS;
    event_base_once(base, -1, EV_TIMEOUT, deliver_cb, g, NULL);
}

static void ignore_reply(void *ctx, enum redis_call_status st, redisReply *reply)
{
    (void)ctx;
    (void)st;
    (void)reply;
}

int cache_put(struct cache *c, struct event_base *base, const char *tenant, const uint8_t key[32], const char *value,
              size_t len, unsigned ttl_s)
{
    if (len > c->s.max_entry_bytes || ttl_s == 0)
        return -1;
    char k[300];
    redis_key(k, sizeof k, tenant, key);
    if (c->s.backend == CACHE_BACKEND_MEMORY) {
        lru_put(c->lru, k, value, len, (uint64_t)ttl_s * 1000);
        return 0;
    }
    struct redis *r = redis_for_base(c->s.redis, base);
    if (!redis_usable(r))
        return -1;
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%u", ttl_s);
    const char *argv[] = {"SET", k, value, "EX", ttl};
    size_t lens[] = {3, strlen(k), len, 2, strlen(ttl)};
    redis_call(r, ignore_reply, NULL, 5, argv, lens);
    return 0;
}
