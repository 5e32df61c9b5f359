/* singleflight.h: concurrent identical cache misses share one engine call.
 *
 * The first request to miss on a key becomes the leader and calls the engine;
 * requests that miss on the same key while it runs become waiters. When the
 * leader finishes, every waiter gets the answer. When the leader fails or is
 * cancelled, waiters are told so (value NULL) and each goes to the engine on
 * its own: a waiter is never failed because its leader failed.
 *
 * Process-wide and thread-safe: a waiter may sit on another worker than its
 * leader. Its callback runs on its own worker's event_base (woken with
 * event_active), never inside sf_join or sf_finish. */
#ifndef CASCADE_SINGLEFLIGHT_H
#define CASCADE_SINGLEFLIGHT_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct singleflight;
struct sf_waiter;

/* value is NULL when the leader failed; it is valid only during the call. */
typedef void (*sf_cb)(void *ctx, const char *value, size_t len);

struct singleflight *sf_new(void);
void sf_free(struct singleflight *sf);
/* NULL: the caller leads and must call sf_finish(key) exactly once.
 * Otherwise the caller waits; cb(ctx, ...) runs later on base's thread. */
struct sf_waiter *sf_join(struct singleflight *sf, const uint8_t key[32], struct event_base *base, sf_cb cb,
                          void *ctx);
/* The leader is done: value on success, NULL on failure. */
void sf_finish(struct singleflight *sf, const uint8_t key[32], const char *value, size_t len);
/* A waiter gives up before its callback ran (call on its own thread). */
void sf_leave(struct singleflight *sf, struct sf_waiter *w);
/* Waiters currently parked, for tests and metrics. */
size_t sf_waiting(struct singleflight *sf);

#endif
