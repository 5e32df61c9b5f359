/* redis.h: one asynchronous Redis connection per worker, that survives Redis.
 *
 * The response cache (cache.h) and the policies (budgets, rate limits, stats)
 * talk to Redis through this module. It owns what they must not each get
 * right on their own:
 *   - the connection: hiredis async on the worker's event_base, AUTH and
 *     SELECT from a redis:// or unix:// URL, pipelining (commands are written
 *     back to back; replies come in order). On a connection that is up, the
 *     commands of a loop turn are written at the end of that turn, before
 *     the answers queued after them (common/httpd.c writes those at the end
 *     of the turn too), so a cache fill reaches Redis before its answer
 *     reaches the client;
 *   - a timeout per command: past it the caller gets REDIS_CALL_TIMEOUT and a
 *     late reply is dropped;
 *   - failure: when the connection drops or times out repeatedly, commands
 *     fail at once (REDIS_CALL_DOWN) while it reconnects with backoff; the
 *     outage is logged once when it starts and once when it ends.
 *
 * Threads: a struct redis_shared is made once (parsed URL, settings) and
 * shared; each worker thread gets its own struct redis (redis_for_base) and
 * uses it only on that thread. Callbacks run on that thread, never inside
 * redis_call() itself.
 */
#ifndef CASCADE_REDIS_H
#define CASCADE_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

struct event_base;
struct redis_shared;
struct redis;

enum redis_call_status {
    REDIS_CALL_OK = 0,          /* reply is set (it may be a Redis error reply) */
    REDIS_CALL_TIMEOUT = -1,
    REDIS_CALL_DOWN = -2,       /* not connected: failed without trying */
};

/* reply is valid only during the callback (NULL unless status is OK). */
typedef void (*redis_reply_cb)(void *ctx, enum redis_call_status status, redisReply *reply);

struct redis_settings {
    const char *url;            /* redis://[:password@]host[:port][/db] or unix:///path[?db=N] */
    unsigned timeout_ms;        /* per command, and for connecting */
    const char *password;       /* when set, used instead of the URL's (a secret kept out of the config) */
};

/* Parse the URL and keep the settings. NULL with err set when the URL is bad. */
struct redis_shared *redis_shared_new(const struct redis_settings *s, char *err, size_t errlen);
void redis_shared_free(struct redis_shared *rs);
/* Called (from worker threads) each time a command fails: timeout,
 * connection down, or an error reply. For metrics; set before workers start. */
void redis_shared_set_error_hook(struct redis_shared *rs, void (*hook)(void *ctx), void *ctx);
/* Validate a URL without keeping anything (for config checks). */
int redis_url_check(const char *url, char *err, size_t errlen);

/* The calling worker's connection, created (and connecting) on first use. */
struct redis *redis_for_base(struct redis_shared *rs, struct event_base *base);
/* Send a command given as argv; cb runs later with the reply or a failure.
 * argvlen may be NULL for NUL-terminated strings. */
void redis_call(struct redis *r, redis_reply_cb cb, void *ctx, int argc, const char **argv, const size_t *argvlen);
/* 1 when this worker's connection is up now. */
int redis_connected(const struct redis *r);
/* 1 unless the connection is known to be down: a command sent while it is
 * still connecting waits in hiredis's queue. For fire-and-forget writes. */
int redis_usable(const struct redis *r);
/* Register a Lua script to be loaded (SCRIPT LOAD) on every connection as it
 * connects, so EVALSHA finds it; its SHA-1 hex goes to sha (41 bytes). Call
 * before any worker connects. */
void redis_shared_add_script(struct redis_shared *rs, const char *lua, char sha[41]);
/* Run a registered script: EVALSHA, falling back to EVAL if the server lost
 * it (a restart or SCRIPT FLUSH). argv holds the keys, then the arguments. */
void redis_eval(struct redis *r, redis_reply_cb cb, void *ctx, const char *sha, int nkeys, int argc,
                const char **argv);
/* Close every worker's connection (at shutdown, after workers stopped). */
void redis_shared_close_all(struct redis_shared *rs);

#endif
