/* remote.h: the `remote` engine, a client of OpenAI-compatible upstreams.
 *
 * A tier whose engine is {kind:"remote", urls:[...]} sends each request to one
 * of its replicas: vLLM, SGLang, llama.cpp's server, or our cascade-engine.
 * This module owns the upstream side of the gateway:
 *   - http:// and https:// upstreams; TLS verifies the certificate and the
 *     host name by default (the system's CAs, or tls.ca_file), sends SNI,
 *     and never goes below TLS 1.2 (tls.h);
 *   - per-worker keep-alive connection pools, one per replica (a TLS
 *     connection that closed is freed, never reconnected);
 *   - least-outstanding-requests balancing over the replicas (the counts are
 *     shared by all workers), skipping replicas seen down or ejected;
 *   - retries: a connection error, a 5xx, a 429 or a timeout before any
 *     output reached the caller sends the request again, to another replica
 *     when there is one, up to retry_attempts tries in all, waiting
 *     retry_backoff_ms before the second and twice as long before each next
 *     one; the last failure decides the error (504 timeout, 503 for 429/503
 *     with the upstream's Retry-After, else 502), marked retryable so the
 *     caller may try a fallback tier. Once output was delivered, errors are
 *     final and not retryable;
 *   - outlier detection: a replica that fails eject_after attempts in a row
 *     is ejected for eject_ms (doubling, up to 10x) and probed back
 *     (outlier.h);
 *   - streams are parsed incrementally as they arrive (common/sse.h) and
 *     turned into engine callbacks; nothing buffers a whole streamed answer;
 *   - what an upstream sends is bounded: max_response_bytes caps a whole
 *     body, streamed or not (past it: 502 upstream_response_too_large and
 *     the connection is closed, so the upstream stops); a malformed or error
 *     event ends the request at once; engine_pause() stops reading the
 *     upstream while the client is slow, so TCP pushes back on it;
 *   - timeouts: a total per request (timeout_ms), and chunk_timeout_ms for
 *     connecting, for the answer's headers (a hung replica costs one
 *     attempt, not the whole request) and between reads of a stream;
 *   - upstream 4xx other than 429 pass through as OpenAI errors;
 *   - a background thread probes each replica's health_path, for /readyz,
 *     over TLS for https replicas;
 *   - secrets: api_key_env / api_key_file are read by remote_engine_new,
 *     never by remote_config_parse (so --check-config needs no secrets).
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
    char **urls;                    /* "http[s]://host[:port][/prefix]"; requests go to prefix or /v1 */
    size_t n_urls;
    unsigned timeout_ms;            /* whole request, first byte to last */
    unsigned chunk_timeout_ms;      /* between reads, and for connecting */
    unsigned health_interval_ms;
    char *health_path;              /* probed with GET; 2xx means up */
    char *api_key;                  /* sent as Bearer to the upstream, or NULL */
    char *api_key_env;              /* or the variable that holds it (read by remote_engine_new) */
    char *api_key_file;             /* or the file that holds it (likewise); at most one of the three */
    char *tls_ca_file;              /* tls.ca_file: the CAs to trust instead of the system's, or NULL;
                                     * relative to base_dir (remote_engine_new) */
    unsigned eject_after;           /* consecutive failures that eject a replica (0: never) */
    unsigned eject_ms;              /* the first ejection's length */
    size_t max_response_bytes;      /* a whole answer's body, streamed or not */
    unsigned max_idle_per_replica;  /* pooled keep-alive connections per worker */
    /* Set by the gateway from tiers[].retry, not parsed here: */
    unsigned retry_attempts;        /* tries of one request, over its replicas (1: no retry) */
    unsigned retry_backoff_ms;      /* wait before the second try; doubled for each after it */
};

/* Fill cfg from the engine object at config path `path` (for messages such as
 * "tiers[0].engine.urls[1]: ..."). 0, or -1 with err set. */
int remote_config_parse(json_t *engine, const char *path, struct remote_config *cfg, char *err,
                        size_t errlen);
void remote_config_free(struct remote_config *cfg);

/* What became of one attempt (one request sent to one replica). */
enum remote_outcome {
    REMOTE_OK,                      /* an answer: 2xx */
    REMOTE_HTTP_4XX,                /* the upstream refused the request (not 429): passed through */
    REMOTE_HTTP_429,                /* busy */
    REMOTE_HTTP_5XX,
    REMOTE_CONNECT_ERROR,           /* refused, reset, TLS failure, closed before or during the answer */
    REMOTE_TIMEOUT,
    REMOTE_BAD_RESPONSE,            /* malformed, incomplete or oversized answer */
    REMOTE_CANCELLED,               /* the caller cancelled (or the request's total timeout ended it) */
    REMOTE_N_OUTCOMES
};
const char *remote_outcome_name(enum remote_outcome o); /* "ok", "http_5xx", ... */

/* Observers, for metrics. Called from worker threads (attempt) and from
 * worker or prober threads (eject); they must be quick and thread-safe.
 * replica is replica_base + its index in urls, so a caller can number the
 * replicas of all tiers in one range.
 *   attempt: once per attempt; retried says another attempt follows.
 *   eject:   the replica was ejected (1) or came back (0). */
struct remote_hooks {
    void (*attempt)(void *ctx, size_t replica, enum remote_outcome outcome, int retried);
    void (*eject)(void *ctx, size_t replica, int ejected);
};
void remote_engine_set_hooks(struct engine *e, const struct remote_hooks *hooks, void *ctx, size_t replica_base);

/* A pool for work too long for a worker's loop: the body of a large
 * request is serialized there (common/workpool.h). Set before the first
 * request, or never (then everything runs on the loop). */
struct workpool;
void remote_engine_set_pool(struct engine *e, struct workpool *pool);

/* The engine copies cfg; it reads the API key from api_key_env or
 * api_key_file now, and tls_ca_file (relative to base_dir unless absolute;
 * base_dir may be NULL for the working directory). NULL with err set on
 * failure. */
struct engine *remote_engine_new(const struct remote_config *cfg, const char *base_dir, char *err, size_t errlen);

#endif
