/* config.h: the gateway's configuration, one JSON file.
 *
 * config_load() reads and validates the whole file up front; any problem is
 * reported with the path of the bad field, e.g.
 *   tenants[1].keys[0]: not a sha256 hex string
 * so an operator can fix it without guessing. After loading, a struct config
 * is read-only and shared by all worker threads.
 *
 * Secrets are never in the file: API keys and the admin token are stored as
 * the SHA-256 hex of the key, and the secrets the gateway must send (an
 * upstream's API key, Redis's password) are named by an environment
 * variable or a file, read when the gateway starts, never by config_load:
 * `cascaded --check-config` validates a file on a machine without them.
 * See deploy/local.json for an example and README.md for every field.
 */
#ifndef CASCADE_CONFIG_H
#define CASCADE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "cache/cache.h"
#include "cache/key.h"
#include "common/hash.h"
#include "engines/remote/remote.h"
#include "policies/policy.h"
#include "policies/routing.h"

enum engine_kind { ENGINE_REMOTE, ENGINE_NATIVE };

/* What a tier serves (tiers[].endpoints), as bits. */
enum tier_endpoint {
    TIER_EP_CHAT = 1u << 0,
    TIER_EP_COMPLETIONS = 1u << 1,
    TIER_EP_EMBEDDINGS = 1u << 2,
};

struct tier_config {
    char *name;                 /* what clients may put in `model`, besides the model id */
    char *model;                /* the model id the engine runs */
    enum engine_kind kind;
    struct remote_config remote;
    char *native_json;          /* the native engine's own section, for its constructor */
    char *engine_json;          /* the engine section as written: reloads must not change it */
    double price_in_per_1m;     /* USD per 1M prompt tokens */
    double price_out_per_1m;    /* USD per 1M completion tokens */
    int64_t max_output_tokens;  /* what a request without max_tokens may generate */
    int logprobs;               /* the engine returns token logprobs (the cascade needs them) */
    unsigned accepts;           /* OPENAI_PART_* content parts it takes; text always */
    unsigned endpoints;         /* TIER_EP_*: remote all three, native chat and completions */
    int tools;                  /* it takes `tools` (remote: yes; native: not yet) */
    int fallback;               /* the tier that serves a request this one could not, or -1 */
    int64_t media_part_tokens;  /* what admission reserves per image/audio/file part */
};

struct tenant_config {
    char *id;
    uint8_t (*keys)[SHA256_LEN];
    char **key_ids;             /* each key's name, for logs and usage: its "id", or "<tenant>#<i>" */
    size_t n_keys;
    int *allowed;               /* tier indices */
    size_t n_allowed;
    int default_tier;
    enum cache_mode cache_mode;     /* which requests the cache may answer */
    unsigned cache_ttl_s;
    struct tenant_limits limits;    /* rate limits, concurrency, budgets */
    int downgrade;                  /* on_exhausted: downgrade, else reject */
    int64_t max_tokens_cap;         /* 0: none */
    int expose_headers;             /* send x-cascade-* headers */
    int cheapest_tier;              /* among allowed, by output price */
    int largest_tier;               /* among allowed, the most expensive */
    int baseline_tier;              /* routing savings are measured against it (routing.baseline_tier) */
    int *by_price;                  /* allowed tiers, cheapest first */
    struct routing_settings routing;
    char routing_version[192];       /* part of auto's cache key: a change invalidates */
    int metrics_index;              /* its label slot: the tenants at start-up; -1 ("none") otherwise */
};

struct limits_config {
    size_t max_body_bytes;
    size_t max_header_bytes;
    unsigned header_timeout_ms;
    unsigned read_timeout_ms;
    unsigned write_timeout_ms;
    unsigned upstream_timeout_ms;   /* default for tiers that set none */
    unsigned drain_timeout_ms;
    size_t max_connections_per_worker; /* past it, new connections are closed at once */
    size_t max_pipelined;           /* requests that may wait behind the one answered */
};

struct redis_config {
    char *url;                  /* NULL: no Redis */
    unsigned timeout_ms;        /* per command and for connecting */
    char *password_env;         /* the password (overriding the URL's) from this variable, or NULL */
    char *password_file;        /* ... or from this file's first line, or NULL */
};

struct cache_config {
    enum cache_backend backend; /* redis when redis.url is set, else memory */
    unsigned ttl_s;             /* default entry lifetime */
    size_t max_entry_bytes;     /* larger answers are not stored */
    size_t memory_max_bytes;    /* the memory backend's bound */
};

struct policy_config {
    double local_share;         /* of each limit, per instance, while Redis is down */
    unsigned reservation_ttl_ms;
    size_t journal_max;
};

struct config {
    char *listen_host;
    int listen_port;
    int workers;
    struct limits_config limits;
    struct redis_config redis;
    struct cache_config cache;
    struct policy_config policy;
    char *tokenizer;            /* DeepSeek tokenizer.json for token counts, or NULL */
    char *classifier;           /* difficulty model for "auto", or NULL (auto = default tier) */
    int has_admin;
    uint8_t admin_key[SHA256_LEN];
    int has_metrics_token;          /* metrics.token_sha256 set: /metrics wants a Bearer token */
    uint8_t metrics_key[SHA256_LEN];
    struct {
        char *cert_file;        /* TLS on the listener: both set, or both NULL */
        char *key_file;
    } tls;
    int *ready_require;         /* readiness.require: tiers that must be up themselves */
    size_t n_ready_require;
    struct tier_config *tiers;
    size_t n_tiers;
    struct tenant_config *tenants;
    size_t n_tenants;
};

/* Load and validate path. 0, or -1 with a message in err. */
int config_load(const char *path, struct config *cfg, char *err, size_t errlen);
/* Derive the score thresholds of tenants that set routing shares, through
 * threshold(ctx, share) (the classifier's quantile function), once the
 * classifier is loaded. 0, or -1 with a message when the model has no
 * distribution to read. */
int config_resolve_routing(struct config *cfg, double (*threshold)(const void *ctx, double share), const void *ctx,
                           char *err, size_t errlen);
/* classifier_threshold_for_share() with the callback signature the share
 * code takes (ctx: a const struct classifier *). */
double config_classifier_threshold(const void *classifier, double share);
/* The same from a JSON text (for tests). */
int config_parse(const char *text, struct config *cfg, char *err, size_t errlen);
void config_free(struct config *cfg);

/* Parse "host:port" (IPv4 name or [v6]:port). 0, or -1. host gets a malloc'd copy. */
int config_parse_listen(const char *s, char **host, int *port);

int config_tier_index(const struct config *cfg, const char *name_or_model);
/* NULL when next may replace cur by a reload (SIGHUP): same listen address,
 * workers, tiers and engines; otherwise what differs. */
const char *config_reload_conflict(const struct config *cur, const struct config *next);
/* The fields a reload accepts but that stay as they were until the next
 * start, because what uses them was built from the boot config: limits.*
 * (the listener and its timers), redis.timeout_ms and the password source
 * (the connection), policy.* (the journal and local limits), the memory
 * cache's bound and a raised cache.max_entry_bytes (the cache). Writes their
 * names, comma separated, into buf (truncated to n) and returns how many
 * changed, so a reload can say that it did not apply them. */
size_t config_reload_deferred(const struct config *boot, const struct config *next, char *buf, size_t n);
int config_tenant_allows(const struct tenant_config *t, int tier);
/* The next tier along tier's fallback chain (tiers[].fallback) for which
 * ok(ctx, tier) holds: the caller's test (the tenant may use it, it serves
 * the endpoint, it takes the request's parts...). -1 when none. */
int config_next_fallback(const struct config *cfg, int tier, int (*ok)(const void *ctx, int tier), const void *ctx);


#endif
