/* lru.h: a bounded in-memory key-value store with per-entry TTLs, evicting
 * the least recently used entries to stay under a byte limit. It backs the
 * response cache when the gateway runs without Redis (the embedded default).
 * One mutex guards it; every function is thread-safe. Values are copied in
 * and out, so no caller ever holds a pointer into the store. */
#ifndef CASCADE_LRU_H
#define CASCADE_LRU_H

#include <stddef.h>
#include <stdint.h>

struct lru;

struct lru *lru_new(size_t max_bytes);
void lru_free(struct lru *l);
/* Store a copy (replacing any entry of that key). Entries larger than the
 * whole store are not kept. */
void lru_put(struct lru *l, const char *key, const char *value, size_t len, uint64_t ttl_ms);
/* A malloc'd copy of the value and its length, or NULL when absent or expired. */
char *lru_get(struct lru *l, const char *key, size_t *len);
size_t lru_bytes(struct lru *l);
size_t lru_count(struct lru *l);

#endif
