/* cache.h: the response cache. Cache hits are the cheapest answers we give.
 *
 * Two backends behind one pair of calls, cache_get and cache_put:
 *   - redis: shared by every gateway instance, keys
 *     cascade:{tenant}:resp:<sha256 hex> with a TTL (the {tenant} hash tag
 *     keeps a tenant's keys on one Redis Cluster slot);
 *   - memory: a bounded LRU inside this process, for a gateway run without
 *     Redis (the embedded default).
 * Keys come from key.h; values are the compact JSON written by the chat
 * state machine. Entries over max_entry_bytes are never stored.
 *
 * Fail-open: when Redis is down or slow, cache_get answers
 * CACHE_UNAVAILABLE (the request is served without the cache, marked
 * bypass) and cache_put does nothing; hits resume by themselves when Redis
 * returns (redis.h reconnects).
 *
 * Threads: one struct cache per process; call from worker threads, each with
 * its own event_base. The callback runs on that thread, never inside
 * cache_get. */
#ifndef CASCADE_CACHE_H
#define CASCADE_CACHE_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct redis_shared;
struct singleflight;

enum cache_backend { CACHE_BACKEND_MEMORY, CACHE_BACKEND_REDIS };

struct cache_settings {
    enum cache_backend backend;
    struct redis_shared *redis;     /* borrowed; required for the redis backend */
    size_t memory_max_bytes;
    size_t max_entry_bytes;
};

enum cache_status { CACHE_HIT, CACHE_MISS, CACHE_UNAVAILABLE };

/* value is valid only during the call (NULL unless HIT). */
typedef void (*cache_get_cb)(void *ctx, enum cache_status status, const char *value, size_t len);

struct cache;

struct cache *cache_new(const struct cache_settings *s);
void cache_free(struct cache *c);
void cache_get(struct cache *c, struct event_base *base, const char *tenant, const uint8_t key[32], cache_get_cb cb,
               void *ctx);
/* Store, fire and forget. 0 when sent, -1 when refused (too large, or
 * Redis down). */
int cache_put(struct cache *c, struct event_base *base, const char *tenant, const uint8_t key[32], const char *value,
              size_t len, unsigned ttl_s);
/* The process-wide single-flight table for cache misses. */
struct singleflight *cache_flights(struct cache *c);
const char *cache_backend_name(const struct cache *c);

#endif
