/* remote.h: the `remote` engine, a client of OpenAI-compatible upstreams.
 *
 * A tier whose engine is {kind:"remote", urls:[...]} sends each request to one
 * of its replicas: vLLM, SGLang, llama.cpp's server, or our cascade-engine.
 * This module owns the upstream side of the gateway:
 *   - per-worker keep-alive connection pools, one per replica;
 *   - least-outstanding-requests balancing over the replicas (the counts are
 *     shared by all workers), skipping replicas seen down;
 *   - a connection failure before any response moves the request to the next
 *     replica; after that, errors are final;
 *   - streams are parsed incrementally as they arrive (common/sse.h) and
 *     turned into engine callbacks; nothing buffers a whole streamed answer;
 *   - what an upstream sends is bounded: max_response_bytes caps a whole
 *     body, streamed or not (past it: 502 upstream_response_too_large and
 *     the connection is closed, so the upstream stops); a malformed or error
 *     event ends the request at once; engine_pause() stops reading the
 *     upstream while the client is slow, so TCP pushes back on it;
 *   - timeouts: a total per request (timeout_ms) and one between reads of a
 *     stream (chunk_timeout_ms);
 *   - upstream 4xx pass through as OpenAI errors; 5xx become 502, timeouts 504;
 *   - a background thread probes each replica's health_path, for /readyz.
 *
 * Threads: engine_submit/cancel from any worker thread (each has its own pools,
 * found by its event_base); callbacks run on that worker's thread.
 */
#ifndef CASCADE_REMOTE_H
#define CASCADE_REMOTE_H

#include <jansson.h>
#include <stddef.h>

struct engine;

struct remote_config {
    char **urls;                    /* "http://host:port[/prefix]"; requests go to prefix or /v1 */
    size_t n_urls;
    unsigned timeout_ms;            /* whole request, first byte to last */
    unsigned chunk_timeout_ms;      /* between reads, and for connecting */
    unsigned health_interval_ms;
    char *health_path;              /* probed with GET; 2xx means up */
    char *api_key;                  /* sent as Bearer to the upstream, or NULL */
    size_t max_response_bytes;      /* a whole answer's body, streamed or not */
    unsigned max_idle_per_replica;  /* pooled keep-alive connections per worker */
};

/* Fill cfg from the engine object at config path `path` (for messages such as
 * "tiers[0].engine.urls[1]: ..."). 0, or -1 with err set. */
int remote_config_parse(json_t *engine, const char *path, struct remote_config *cfg, char *err,
                        size_t errlen);
void remote_config_free(struct remote_config *cfg);

/* Called (from worker threads) when a replica fails a request: unreachable,
 * 5xx, timeout, or a broken stream. replica is replica_base + its index in
 * urls, so a caller can number the replicas of all tiers in one range. */
typedef void (*remote_error_hook)(void *ctx, size_t replica);
void remote_engine_set_error_hook(struct engine *e, remote_error_hook hook, void *ctx, size_t replica_base);

/* A pool for work too long for a worker's loop: the body of a large
 * request is serialized there (common/workpool.h). Set before the first
 * request, or never (then everything runs on the loop). */
struct workpool;
void remote_engine_set_pool(struct engine *e, struct workpool *pool);

/* The engine copies cfg. NULL with err set on failure. */
struct engine *remote_engine_new(const struct remote_config *cfg, char *err, size_t errlen);

#endif
