#include "gateway/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/redis.h"
#include "classifier/classifier.h"
#include "common/cfgjson.h"
#include "common/mem.h"
#include "common/openai.h"
#include "policies/price.h"

#define MAX_WORKERS 256

int config_parse_listen(const char *s, char **host, int *port)
{
    const char *colon;
    const char *h = s;
    size_t hl;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        hl = (size_t)(colon - s);
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (hl == 0 || colon[1] == '\0' || *end || p < 0 || p > 65535)
        return -1;
    *host = xstrndup(h, hl);
    *port = (int)p;
    return 0;
}

int config_tier_index(const struct config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_tiers; i++)
        if (strcmp(cfg->tiers[i].name, name) == 0)
            return (int)i;
    for (size_t i = 0; i < cfg->n_tiers; i++)
        if (strcmp(cfg->tiers[i].model, name) == 0)
            return (int)i;
    return -1;
}

int config_tenant_allows(const struct tenant_config *t, int tier)
{
    for (size_t i = 0; i < t->n_allowed; i++)
        if (t->allowed[i] == tier)
            return 1;
    return 0;
}

int config_next_fallback(const struct config *cfg, int tier, int (*ok)(const void *ctx, int tier), const void *ctx)
{
    /* config_load refuses chains that loop; the step bound is belt and
     * braces for a config built by hand. */
    size_t steps = 0;
    for (int f = cfg->tiers[tier].fallback; f >= 0 && steps++ < cfg->n_tiers; f = cfg->tiers[f].fallback)
        if (ok(ctx, f))
            return f;
    return -1;
}

static int parse_key_hex(json_t *v, const char *path, uint8_t out[SHA256_LEN], char *err, size_t n)
{
    if (!json_is_string(v) || hash_unhex(json_string_value(v), out, SHA256_LEN) < 0)
        return cfgj_fail(err, n, path, "not a sha256 hex string");
    return 0;
}

static int parse_limits(json_t *root, struct limits_config *l, char *err, size_t n)
{
    static const char *const keys[] = {"max_body_bytes", "max_header_bytes", "header_timeout_ms",
                                       "read_timeout_ms", "write_timeout_ms", "upstream_timeout_ms",
                                       "drain_timeout_ms", "max_connections_per_worker", "max_pipelined", NULL};
    l->max_body_bytes = 1u << 20;
    l->max_header_bytes = 16 * 1024;
    l->header_timeout_ms = 10000;
    l->read_timeout_ms = 30000;
    l->write_timeout_ms = 30000;
    l->upstream_timeout_ms = 120000;
    l->drain_timeout_ms = 10000;
    l->max_connections_per_worker = 10000;
    l->max_pipelined = 16;
    json_t *o;
    if (cfgj_object(root, "", "limits", 0, &o, err, n) < 0)
        return -1;
    if (!o)
        return 0;
    if (cfgj_known_keys(o, "limits", keys, err, n) < 0)
        return -1;
    struct {
        const char *key;
        unsigned long long min, max;
        size_t *sz;
        unsigned *ms;
    } f[] = {
        {"max_body_bytes", 64, 1ull << 30, &l->max_body_bytes, NULL},
        {"max_header_bytes", 256, 1u << 20, &l->max_header_bytes, NULL},
        {"header_timeout_ms", 1, 3600000, NULL, &l->header_timeout_ms},
        {"read_timeout_ms", 1, 3600000, NULL, &l->read_timeout_ms},
        {"write_timeout_ms", 1, 3600000, NULL, &l->write_timeout_ms},
        {"upstream_timeout_ms", 1, 86400000, NULL, &l->upstream_timeout_ms},
        {"drain_timeout_ms", 0, 3600000, NULL, &l->drain_timeout_ms},
        {"max_connections_per_worker", 1, 1000000, &l->max_connections_per_worker, NULL},
        {"max_pipelined", 1, 1024, &l->max_pipelined, NULL},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        unsigned long long v = f[i].sz ? *f[i].sz : *f[i].ms;
        if (cfgj_uint(o, "limits", f[i].key, f[i].min, f[i].max, &v, err, n) < 0)
            return -1;
        if (f[i].sz)
            *f[i].sz = (size_t)v;
        else
            *f[i].ms = (unsigned)v;
    }
    return 0;
}

static int parse_redis(json_t *root, struct redis_config *rc, char *err, size_t n)
{
    static const char *const keys[] = {"url", "timeout_ms", "password_env", "password_file", NULL};
    rc->timeout_ms = 100;
    json_t *o;
    if (cfgj_object(root, "", "redis", 0, &o, err, n) < 0)
        return -1;
    if (!o)
        return 0;
    if (cfgj_known_keys(o, "redis", keys, err, n) < 0)
        return -1;
    const char *url;
    if (cfgj_string(o, "redis", "url", 1, &url, err, n) < 0)
        return -1;
    char why[160];
    if (redis_url_check(url, why, sizeof why) < 0)
        return cfgj_fail(err, n, "redis.url", "%s", why);
    rc->url = xstrdup(url);
    unsigned long long v = rc->timeout_ms;
    if (cfgj_uint(o, "redis", "timeout_ms", 1, 60000, &v, err, n) < 0)
        return -1;
    rc->timeout_ms = (unsigned)v;
    /* The password from the environment or a file, read at start-up
     * (common/secret.h); the URL may then carry none. */
    const char *pe = NULL, *pf = NULL;
    if (cfgj_string(o, "redis", "password_env", 0, &pe, err, n) < 0 ||
        cfgj_string(o, "redis", "password_file", 0, &pf, err, n) < 0)
        return -1;
    if (pe && pf)
        return cfgj_fail(err, n, "redis.password_env", "give password_env or password_file, not both");
    if ((pe && !*pe) || (pf && !*pf))
        return cfgj_fail(err, n, pe ? "redis.password_env" : "redis.password_file", "must not be empty");
    rc->password_env = pe ? xstrdup(pe) : NULL;
    rc->password_file = pf ? xstrdup(pf) : NULL;
    return 0;
}

static int parse_cache(json_t *root, struct config *cfg, char *err, size_t n)
{
    static const char *const keys[] = {"backend", "ttl_s", "max_entry_bytes", "memory_max_bytes", NULL};
    struct cache_config *cc = &cfg->cache;
    cc->backend = cfg->redis.url ? CACHE_BACKEND_REDIS : CACHE_BACKEND_MEMORY;
    cc->ttl_s = 3600;
    cc->max_entry_bytes = 256 * 1024;
    cc->memory_max_bytes = 64u << 20;
    json_t *o;
    if (cfgj_object(root, "", "cache", 0, &o, err, n) < 0)
        return -1;
    if (!o)
        return 0;
    if (cfgj_known_keys(o, "cache", keys, err, n) < 0)
        return -1;
    const char *backend = NULL;
    if (cfgj_string(o, "cache", "backend", 0, &backend, err, n) < 0)
        return -1;
    if (backend) {
        if (strcmp(backend, "memory") == 0)
            cc->backend = CACHE_BACKEND_MEMORY;
        else if (strcmp(backend, "redis") == 0 && cfg->redis.url)
            cc->backend = CACHE_BACKEND_REDIS;
        else if (strcmp(backend, "redis") == 0)
            return cfgj_fail(err, n, "cache.backend", "\"redis\" needs redis.url");
        else
            return cfgj_fail(err, n, "cache.backend", "must be \"redis\" or \"memory\"");
    }
    unsigned long long v = cc->ttl_s;
    if (cfgj_uint(o, "cache", "ttl_s", 1, 365ull * 86400, &v, err, n) < 0)
        return -1;
    cc->ttl_s = (unsigned)v;
    v = cc->max_entry_bytes;
    if (cfgj_uint(o, "cache", "max_entry_bytes", 64, 64ull << 20, &v, err, n) < 0)
        return -1;
    cc->max_entry_bytes = (size_t)v;
    v = cc->memory_max_bytes;
    if (cfgj_uint(o, "cache", "memory_max_bytes", 0, 64ull << 30, &v, err, n) < 0)
        return -1;
    cc->memory_max_bytes = (size_t)v;
    return 0;
}

static int parse_policy(json_t *root, struct policy_config *pc, char *err, size_t n)
{
    static const char *const keys[] = {"local_share", "reservation_ttl_ms", "journal_max", NULL};
    pc->local_share = 1.0;
    pc->reservation_ttl_ms = 600000;
    pc->journal_max = 100000;
    json_t *o;
    if (cfgj_object(root, "", "policy", 0, &o, err, n) < 0)
        return -1;
    if (!o)
        return 0;
    if (cfgj_known_keys(o, "policy", keys, err, n) < 0 ||
        cfgj_number(o, "policy", "local_share", 0.001, 1, &pc->local_share, err, n) < 0)
        return -1;
    unsigned long long v = pc->reservation_ttl_ms;
    if (cfgj_uint(o, "policy", "reservation_ttl_ms", 1000, 86400000, &v, err, n) < 0)
        return -1;
    pc->reservation_ttl_ms = (unsigned)v;
    v = pc->journal_max;
    if (cfgj_uint(o, "policy", "journal_max", 1, 100000000, &v, err, n) < 0)
        return -1;
    pc->journal_max = (size_t)v;
    return 0;
}

/* A list of names from `names` (NULL-ended) as bits (1 << index). */
static int parse_name_bits(json_t *t, const char *path, const char *key, const char *const *names,
                           unsigned *out, char *err, size_t n)
{
    json_t *arr;
    if (cfgj_array(t, path, key, 0, &arr, err, n) < 0)
        return -1;
    if (!arr)
        return 0;
    char p[280], ep[300];
    cfgj_path(p, sizeof p, path, key);
    unsigned bits = 0;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        cfgj_path_index(ep, sizeof ep, p, i);
        unsigned bit = 0;
        for (unsigned k = 0; names[k] && json_is_string(v) && !bit; k++)
            if (strcmp(json_string_value(v), names[k]) == 0)
                bit = 1u << k;
        if (!bit) {
            char list[200] = "";
            for (unsigned k = 0; names[k]; k++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "", names[k]);
            return cfgj_fail(err, n, ep, "must be one of %s", list);
        }
        bits |= bit;
    }
    *out = bits;
    return 0;
}

/* What a tier serves and takes, and how it fails over: accepts,
 * endpoints, retry; fallback is a name here, resolved once every tier is
 * known (resolve_fallbacks). */
static int parse_tier_serving(json_t *t, const char *path, struct tier_config *tc, char *err, size_t n)
{
    static const char *const parts[] = {"text", "image_url", "input_audio", "file", NULL};
    static const char *const eps[] = {"chat", "completions", "embeddings", NULL};
    static const char *const retry_keys[] = {"attempts", "backoff_ms", NULL};
    char p[280];
    tc->accepts = OPENAI_PART_TEXT;
    if (parse_name_bits(t, path, "accepts", parts, &tc->accepts, err, n) < 0)
        return -1;
    tc->accepts |= OPENAI_PART_TEXT;
    int remote = tc->kind == ENGINE_REMOTE;
    tc->endpoints = TIER_EP_CHAT | TIER_EP_COMPLETIONS | (remote ? TIER_EP_EMBEDDINGS : 0);
    if (parse_name_bits(t, path, "endpoints", eps, &tc->endpoints, err, n) < 0)
        return -1;
    cfgj_path(p, sizeof p, path, "endpoints");
    if (!tc->endpoints)
        return cfgj_fail(err, n, p, "must name at least one endpoint");
    if (!remote && (tc->endpoints & TIER_EP_EMBEDDINGS))
        return cfgj_fail(err, n, p, "a native tier does not serve embeddings");
    if (!remote && (tc->accepts & ~OPENAI_PART_TEXT)) {
        cfgj_path(p, sizeof p, path, "accepts");
        return cfgj_fail(err, n, p, "a native tier takes text parts only");
    }
    tc->tools = remote;
    unsigned long long mpt = 1024;
    if (cfgj_uint(t, path, "media_part_tokens", 0, 1u << 24, &mpt, err, n) < 0)
        return -1;
    tc->media_part_tokens = (int64_t)mpt;
    /* Retries over the replicas of a remote tier: the first try and
     * attempts-1 more, before the fallback tier is asked. */
    unsigned long long attempts = remote && tc->remote.n_urls > 1 ? 2 : 1, backoff = 50;
    json_t *r;
    if (cfgj_object(t, path, "retry", 0, &r, err, n) < 0)
        return -1;
    if (r) {
        cfgj_path(p, sizeof p, path, "retry");
        if (!remote)
            return cfgj_fail(err, n, p, "only a remote tier retries (a native one has no replicas)");
        if (cfgj_known_keys(r, p, retry_keys, err, n) < 0 ||
            cfgj_uint(r, p, "attempts", 1, 10, &attempts, err, n) < 0 ||
            cfgj_uint(r, p, "backoff_ms", 0, 60000, &backoff, err, n) < 0)
            return -1;
    }
    if (remote) {
        tc->remote.retry_attempts = (unsigned)attempts;
        tc->remote.retry_backoff_ms = (unsigned)backoff;
    }
    tc->fallback = -1;
    return 0;
}

/* tiers[i].fallback names another tier; the chain may not loop. */
static int resolve_fallbacks(json_t *tiers, struct config *cfg, char *err, size_t n)
{
    char p[280];
    for (size_t i = 0; i < cfg->n_tiers; i++) {
        char tp[64];
        cfgj_path_index(tp, sizeof tp, "tiers", i);
        const char *fb = NULL;
        if (cfgj_string(json_array_get(tiers, i), tp, "fallback", 0, &fb, err, n) < 0)
            return -1;
        if (!fb)
            continue;
        cfgj_path(p, sizeof p, tp, "fallback");
        int fi = config_tier_index(cfg, fb);
        if (fi < 0 || strcmp(cfg->tiers[fi].name, fb) != 0)
            return cfgj_fail(err, n, p, "not the name of a tier");
        if (fi == (int)i)
            return cfgj_fail(err, n, p, "a tier cannot fall back to itself");
        cfg->tiers[i].fallback = fi;
    }
    for (size_t i = 0; i < cfg->n_tiers; i++) {
        size_t steps = 0;
        for (int t = cfg->tiers[i].fallback; t >= 0; t = cfg->tiers[t].fallback)
            if (++steps > cfg->n_tiers) {
                char tp[64];
                cfgj_path_index(tp, sizeof tp, "tiers", i);
                cfgj_path(p, sizeof p, tp, "fallback");
                return cfgj_fail(err, n, p, "the fallback chain from tier '%s' loops", cfg->tiers[i].name);
            }
    }
    return 0;
}

static int parse_tier(json_t *t, const char *path, const struct limits_config *lim, struct tier_config *tc,
                      char *err, size_t n)
{
    static const char *const keys[] = {"name", "model", "engine", "price", "max_output_tokens", "logprobs",
                                       "accepts", "endpoints", "retry", "fallback", "media_part_tokens", NULL};
    static const char *const price_keys[] = {"input_per_1m", "output_per_1m", NULL};
    char p[256];
    if (!json_is_object(t))
        return cfgj_fail(err, n, path, "must be an object");
    if (cfgj_known_keys(t, path, keys, err, n) < 0)
        return -1;
    const char *name, *model;
    if (cfgj_string(t, path, "name", 1, &name, err, n) < 0 || cfgj_string(t, path, "model", 1, &model, err, n) < 0)
        return -1;
    if (!*name || strcmp(name, "auto") == 0) {
        cfgj_path(p, sizeof p, path, "name");
        return cfgj_fail(err, n, p, "must be non-empty and not 'auto'");
    }
    tc->name = xstrdup(name);
    tc->model = xstrdup(model);
    json_t *price;
    if (cfgj_object(t, path, "price", 1, &price, err, n) < 0)
        return -1;
    cfgj_path(p, sizeof p, path, "price");
    if (cfgj_known_keys(price, p, price_keys, err, n) < 0 ||
        cfgj_number(price, p, "input_per_1m", 0, 1e6, &tc->price_in_per_1m, err, n) < 0 ||
        cfgj_number(price, p, "output_per_1m", 0, 1e6, &tc->price_out_per_1m, err, n) < 0)
        return -1;
    unsigned long long mot = 4096;
    if (cfgj_uint(t, path, "max_output_tokens", 1, 1u << 24, &mot, err, n) < 0)
        return -1;
    tc->max_output_tokens = (int64_t)mot;
    tc->logprobs = 1;
    json_t *lpv = json_object_get(t, "logprobs");
    if (lpv) {
        if (!json_is_boolean(lpv)) {
            cfgj_path(p, sizeof p, path, "logprobs");
            return cfgj_fail(err, n, p, "must be a boolean");
        }
        tc->logprobs = json_is_true(lpv);
    }
    json_t *eng;
    if (cfgj_object(t, path, "engine", 1, &eng, err, n) < 0)
        return -1;
    tc->engine_json = json_dumps(eng, JSON_COMPACT | JSON_SORT_KEYS);
    cfgj_path(p, sizeof p, path, "engine");
    const char *kind;
    if (cfgj_string(eng, p, "kind", 1, &kind, err, n) < 0)
        return -1;
    if (strcmp(kind, "remote") == 0) {
        tc->kind = ENGINE_REMOTE;
        if (remote_config_parse(eng, p, &tc->remote, err, n) < 0)
            return -1;
        if (!json_object_get(eng, "timeout_ms"))
            tc->remote.timeout_ms = lim->upstream_timeout_ms;
    } else if (strcmp(kind, "native") == 0) {
        tc->kind = ENGINE_NATIVE;
        const char *mp;
        if (cfgj_string(eng, p, "model", 1, &mp, err, n) < 0)
            return -1;
        tc->native_json = json_dumps(eng, JSON_COMPACT);
    } else {
        char kp[280];
        cfgj_path(kp, sizeof kp, p, "kind");
        return cfgj_fail(err, n, kp, "must be \"remote\" or \"native\"");
    }
    return parse_tier_serving(t, path, tc, err, n);
}

static int parse_tenant_cache(json_t *t, const char *path, const struct config *cfg, struct tenant_config *tc,
                              char *err, size_t n)
{
    static const char *const keys[] = {"mode", "ttl_s", NULL};
    char p[256];
    tc->cache_mode = CACHE_MODE_DETERMINISTIC;
    tc->cache_ttl_s = cfg->cache.ttl_s;
    json_t *o;
    if (cfgj_object(t, path, "cache", 0, &o, err, n) < 0)
        return -1;
    if (!o)
        return 0;
    cfgj_path(p, sizeof p, path, "cache");
    if (cfgj_known_keys(o, p, keys, err, n) < 0)
        return -1;
    const char *mode = NULL;
    if (cfgj_string(o, p, "mode", 0, &mode, err, n) < 0)
        return -1;
    if (mode && cache_mode_parse(mode, &tc->cache_mode) < 0) {
        char mp[280];
        cfgj_path(mp, sizeof mp, p, "mode");
        return cfgj_fail(err, n, mp, "must be \"off\", \"deterministic\" or \"always\"");
    }
    unsigned long long ttl = tc->cache_ttl_s;
    if (cfgj_uint(o, p, "ttl_s", 1, 365ull * 86400, &ttl, err, n) < 0)
        return -1;
    tc->cache_ttl_s = (unsigned)ttl;
    return 0;
}

static int parse_tenant_policy(json_t *t, const char *path, struct tenant_config *tc, char *err, size_t n)
{
    static const char *const budget_keys[] = {"usd_per_day", "usd_per_month", "on_exhausted", NULL};
    static const char *const limit_keys[] = {"rpm", "tpm", "max_concurrent", "max_tokens", NULL};
    char p[256];
    tc->limits.budget_day_nano = tc->limits.budget_month_nano = -1;
    tc->expose_headers = 1;
    json_t *v = json_object_get(t, "expose_headers");
    if (v) {
        if (!json_is_boolean(v)) {
            cfgj_path(p, sizeof p, path, "expose_headers");
            return cfgj_fail(err, n, p, "must be a boolean");
        }
        tc->expose_headers = json_is_true(v);
    }
    json_t *o;
    if (cfgj_object(t, path, "budget", 0, &o, err, n) < 0)
        return -1;
    if (o) {
        cfgj_path(p, sizeof p, path, "budget");
        if (cfgj_known_keys(o, p, budget_keys, err, n) < 0)
            return -1;
        double d = -1, m = -1;
        if (cfgj_number(o, p, "usd_per_day", 0, 1e9, &d, err, n) < 0 ||
            cfgj_number(o, p, "usd_per_month", 0, 1e9, &m, err, n) < 0)
            return -1;
        tc->limits.budget_day_nano = d >= 0 ? price_usd_to_nano(d) : -1;
        tc->limits.budget_month_nano = m >= 0 ? price_usd_to_nano(m) : -1;
        const char *mode = "reject";
        if (cfgj_string(o, p, "on_exhausted", 0, &mode, err, n) < 0)
            return -1;
        if (strcmp(mode, "downgrade") == 0) {
            tc->downgrade = 1;
        } else if (strcmp(mode, "reject") != 0) {
            char mp[280];
            cfgj_path(mp, sizeof mp, p, "on_exhausted");
            return cfgj_fail(err, n, mp, "must be \"reject\" or \"downgrade\"");
        }
    }
    if (cfgj_object(t, path, "limits", 0, &o, err, n) < 0)
        return -1;
    if (o) {
        cfgj_path(p, sizeof p, path, "limits");
        if (cfgj_known_keys(o, p, limit_keys, err, n) < 0)
            return -1;
        unsigned long long rpm = 0, tpm = 0, mc = 0, mt = 0;
        if (cfgj_uint(o, p, "rpm", 0, 1ull << 40, &rpm, err, n) < 0 ||
            cfgj_uint(o, p, "tpm", 0, 1ull << 50, &tpm, err, n) < 0 ||
            cfgj_uint(o, p, "max_concurrent", 0, 1u << 30, &mc, err, n) < 0 ||
            cfgj_uint(o, p, "max_tokens", 0, 1u << 24, &mt, err, n) < 0)
            return -1;
        tc->limits.rpm = (int64_t)rpm;
        tc->limits.tpm = (int64_t)tpm;
        tc->limits.max_concurrent = (int64_t)mc;
        tc->max_tokens_cap = (int64_t)mt;
    }
    return 0;
}

/* routing.baseline_tier: what a routed request's savings are measured
 * against. Default (-1 here): the most expensive allowed tier, set by the
 * caller once the allowed tiers' prices are known. */
static int parse_baseline(json_t *t, const char *path, const struct config *cfg, struct tenant_config *tc, char *err,
                          size_t n)
{
    char p[280], bp[300];
    json_t *o = json_object_get(t, "routing");
    const char *b = NULL;
    tc->baseline_tier = -1;
    cfgj_path(p, sizeof p, path, "routing");
    if (!json_is_object(o) || cfgj_string(o, p, "baseline_tier", 0, &b, err, n) < 0)
        return json_is_object(o) ? -1 : 0;
    if (!b)
        return 0;
    cfgj_path(bp, sizeof bp, p, "baseline_tier");
    int ti = config_tier_index(cfg, b);
    if (ti < 0 || strcmp(cfg->tiers[ti].name, b) != 0)
        return cfgj_fail(err, n, bp, "not the name of a tier");
    if (!config_tenant_allows(tc, ti))
        return cfgj_fail(err, n, bp, "not one of this tenant's allowed_tiers");
    tc->baseline_tier = ti;
    return 0;
}

/* routing_version names everything that can change which tier answers an
 * "auto" request: it is part of the cache key, so a change of settings
 * (a reload, or share thresholds derived anew) reads as a miss. */
static void set_routing_version(struct tenant_config *tc)
{
    const struct routing_settings *r = &tc->routing;
    /* The judge's settings change which answer an escalation-prone request
     * gets, so they are part of the version too, folded into a hash (the
     * version is bounded). */
    const struct judge_settings *j = &r->judge;
    char js[256];
    snprintf(js, sizeof js, "%s:%.17g:%.17g:%.17g:%.17g:%zu:%d:%.17g:%.17g:%d", judge_rule_name(j->rule), j->min_mean,
             j->min_quantile, j->min_window, j->quantile, j->window, j->options, j->min_option_prob,
             j->min_option_margin, j->top_logprobs);
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *q = js; *q; q++)
        h = (h ^ (uint8_t)*q) * 16777619u;
    /* Shares that follow the tenant's traffic move their thresholds all
     * the time; the settings are what a cached answer was routed by. */
    if (r->by_share && r->share_window)
        snprintf(tc->routing_version, sizeof tc->routing_version, "auto:share:%.4f:%.4f:%.4f:%u:%d:%d:j%08x",
                 r->large_share, r->cascade_share, r->medium_share, r->share_window, r->cascade, (int)r->stream,
                 (unsigned)h);
    else
        snprintf(tc->routing_version, sizeof tc->routing_version, "auto:%.4f:%.4f:%.4f:%d:%d:j%08x", r->t_medium,
                 r->t_low, r->t_high, r->cascade, (int)r->stream, (unsigned)h);
}

/* routing.large_share, cascade_share, medium_share: the operator's knob.
 * Shares and score thresholds are two ways to say the same thing, so a
 * tenant sets one or the other; the thresholds follow from the shares once
 * the classifier is loaded (config_resolve_routing). */
static int parse_shares(json_t *o, const char *p, struct routing_settings *r, char *err, size_t n)
{
    static const char *const shares[] = {"large_share", "cascade_share", "medium_share"};
    static const char *const knobs[] = {"quality", "band", "t_low", "t_high"};
    double *dst[] = {&r->large_share, &r->cascade_share, &r->medium_share};
    char sp[300];
    for (size_t i = 0; i < 3; i++) {
        if (!json_object_get(o, shares[i]))
            continue;
        if (cfgj_number(o, p, shares[i], 0, 1, dst[i], err, n) < 0)
            return -1;
        r->by_share = 1;
    }
    r->share_window = ROUTING_SHARE_WINDOW;
    if (!r->by_share) {
        if (json_object_get(o, "share_window")) {
            cfgj_path(sp, sizeof sp, p, "share_window");
            return cfgj_fail(err, n, sp, "only applies with large_share, cascade_share or medium_share");
        }
        return 0;
    }
    unsigned long long w = r->share_window;
    if (cfgj_uint(o, p, "share_window", 0, 1000000, &w, err, n) < 0)
        return -1;
    r->share_window = (unsigned)w;
    for (size_t i = 0; i < 4; i++)
        if (json_object_get(o, knobs[i])) {
            cfgj_path(sp, sizeof sp, p, knobs[i]);
            return cfgj_fail(err, n, sp, "cannot be set together with large_share, cascade_share or medium_share "
                                         "(shares set the thresholds)");
        }
    if (r->large_share + r->cascade_share + r->medium_share > 1.0 + 1e-9) {
        cfgj_path(sp, sizeof sp, p, "large_share");
        return cfgj_fail(err, n, sp, "large_share + cascade_share + medium_share must not exceed 1");
    }
    return 0;
}

/* A boolean field, or absent (*out unchanged). */
static int cascade_bool(json_t *c, const char *cp, const char *key, int *out, char *err, size_t n)
{
    json_t *v = json_object_get(c, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v)) {
        char ep[300];
        cfgj_path(ep, sizeof ep, cp, key);
        return cfgj_fail(err, n, ep, "must be a boolean");
    }
    *out = json_is_true(v);
    return 0;
}

/* routing.cascade: when to use the cascade band, and how its judge (policies/
 * judge.h) decides. A free-text rule is chosen by `rule` and held against
 * `threshold`; the keys from before the judge (min_mean_logprob,
 * min_window_logprob, window without a rule) select the old rule, mean and
 * window both, so configs written for it judge as they did. A key that
 * belongs to another rule than the one chosen is an error, not ignored. */
static int parse_cascade(json_t *c, const char *cp, struct routing_settings *r, char *err, size_t n)
{
    static const char *const ckeys[] = {"enabled", "stream", "rule", "threshold", "quantile", "min_mean_logprob",
                                        "min_window_logprob", "window", "options", "min_option_prob",
                                        "min_option_margin", "top_logprobs", NULL};
    struct judge_settings *j = &r->judge;
    char kp[300];
    if (cfgj_known_keys(c, cp, ckeys, err, n) < 0 || cascade_bool(c, cp, "enabled", &r->cascade, err, n) < 0)
        return -1;
    const char *st = NULL;
    if (cfgj_string(c, cp, "stream", 0, &st, err, n) < 0)
        return -1;
    if (st && strcmp(st, "skip") == 0) {
        r->stream = CASCADE_STREAM_SKIP;
    } else if (st && strcmp(st, "buffer") != 0) {
        cfgj_path(kp, sizeof kp, cp, "stream");
        return cfgj_fail(err, n, kp, "must be \"buffer\" or \"skip\"");
    }
    /* The rule, then the keys each rule reads. */
    const char *rule = NULL;
    if (cfgj_string(c, cp, "rule", 0, &rule, err, n) < 0)
        return -1;
    if (rule && judge_rule_parse(rule, &j->rule) < 0) {
        cfgj_path(kp, sizeof kp, cp, "rule");
        return cfgj_fail(err, n, kp, "must be \"quantile\", \"mean\", \"window\" or \"mean_window\"");
    }
    if (!rule && (json_object_get(c, "min_mean_logprob") || json_object_get(c, "min_window_logprob") ||
                  json_object_get(c, "window")))
        j->rule = JUDGE_RULE_MEAN_WINDOW;
    int mean = j->rule == JUDGE_RULE_MEAN || j->rule == JUDGE_RULE_MEAN_WINDOW;
    int window = j->rule == JUDGE_RULE_WINDOW || j->rule == JUDGE_RULE_MEAN_WINDOW;
    static const struct {
        const char *key, *rules;
    } owned[] = {{"min_mean_logprob", "mean or mean_window"}, {"min_window_logprob", "window or mean_window"},
                 {"window", "window or mean_window"}, {"quantile", "quantile"},
                 {"threshold", "quantile, mean or window"}};
    int applies[] = {mean, window, window, j->rule == JUDGE_RULE_QUANTILE, j->rule != JUDGE_RULE_MEAN_WINDOW};
    for (size_t i = 0; i < sizeof owned / sizeof *owned; i++) {
        if (json_object_get(c, owned[i].key) && !applies[i]) {
            cfgj_path(kp, sizeof kp, cp, owned[i].key);
            return cfgj_fail(err, n, kp, "applies to rule %s, and this rule is \"%s\"", owned[i].rules,
                             judge_rule_name(j->rule));
        }
    }
    double *rule_floor = j->rule == JUDGE_RULE_MEAN ? &j->min_mean : j->rule == JUDGE_RULE_WINDOW ? &j->min_window
                                                                                             : &j->min_quantile;
    const char *alias = j->rule == JUDGE_RULE_MEAN ? "min_mean_logprob" : j->rule == JUDGE_RULE_WINDOW ? "min_window_logprob" : NULL;
    if (alias && json_object_get(c, "threshold") && json_object_get(c, alias)) {
        cfgj_path(kp, sizeof kp, cp, "threshold");
        return cfgj_fail(err, n, kp, "and %s say the same for this rule: set one", alias);
    }
    unsigned long long w = j->window, top = (unsigned long long)j->top_logprobs;
    if (cfgj_number(c, cp, "threshold", JUDGE_LOGPROB_FLOOR, 0, rule_floor, err, n) < 0 ||
        cfgj_number(c, cp, "min_mean_logprob", JUDGE_LOGPROB_FLOOR, 0, &j->min_mean, err, n) < 0 ||
        cfgj_number(c, cp, "min_window_logprob", JUDGE_LOGPROB_FLOOR, 0, &j->min_window, err, n) < 0 ||
        cfgj_number(c, cp, "quantile", 0, 1, &j->quantile, err, n) < 0 ||
        cfgj_uint(c, cp, "window", 1, 4096, &w, err, n) < 0 ||
        cascade_bool(c, cp, "options", &j->options, err, n) < 0 ||
        cfgj_number(c, cp, "min_option_prob", 0, 1, &j->min_option_prob, err, n) < 0 ||
        cfgj_number(c, cp, "min_option_margin", -1, 1, &j->min_option_margin, err, n) < 0 ||
        cfgj_uint(c, cp, "top_logprobs", 1, JUDGE_MAX_TOP, &top, err, n) < 0)
        return -1;
    j->window = (size_t)w;
    j->top_logprobs = (int)top;
    return 0;
}

static int parse_tenant_routing(json_t *t, const char *path, struct tenant_config *tc, char *err, size_t n)
{
    static const char *const keys[] = {"quality",      "band",         "t_low",         "t_high",
                                       "large_share",  "cascade_share", "medium_share", "share_window",
                                       "cascade",      "baseline_tier", NULL};
    char p[256], cp[280];
    struct routing_settings *r = &tc->routing;
    double quality = 0.5, band = 0.2;
    r->cascade = 1;
    judge_settings_default(&r->judge);
    r->stream = CASCADE_STREAM_BUFFER;
    json_t *o;
    if (cfgj_object(t, path, "routing", 0, &o, err, n) < 0)
        return -1;
    if (o) {
        cfgj_path(p, sizeof p, path, "routing");
        if (cfgj_known_keys(o, p, keys, err, n) < 0 || cfgj_number(o, p, "quality", 0, 1, &quality, err, n) < 0 ||
            cfgj_number(o, p, "band", 0, 1, &band, err, n) < 0)
            return -1;
    }
    routing_from_quality(quality, band, &r->t_low, &r->t_high);
    if (o) {
        if (cfgj_number(o, p, "t_low", 0, 1, &r->t_low, err, n) < 0 ||
            cfgj_number(o, p, "t_high", 0, 1, &r->t_high, err, n) < 0)
            return -1;
        if (r->t_low > r->t_high) {
            cfgj_path(cp, sizeof cp, p, "t_low");
            return cfgj_fail(err, n, cp, "must not be above t_high");
        }
        if (parse_shares(o, p, r, err, n) < 0)
            return -1;
        json_t *c;
        if (cfgj_object(o, p, "cascade", 0, &c, err, n) < 0)
            return -1;
        if (c) {
            cfgj_path(cp, sizeof cp, p, "cascade");
            if (parse_cascade(c, cp, r, err, n) < 0)
                return -1;
        }
    }
    if (!r->by_share)
        r->t_medium = r->t_low;
    set_routing_version(tc);
    return 0;
}

/* One entry of keys: a SHA-256 hex string, or {"id": name, "sha256": hex}.
 * The id names the key in access logs and usage records (never the key);
 * a bare hash gets "<tenant>#<index>". */
static int parse_key(json_t *v, const char *path, const char *tenant, size_t i, struct tenant_config *tc,
                     char *err, size_t n)
{
    static const char *const keys[] = {"id", "sha256", NULL};
    char p[300];
    if (json_is_string(v)) {
        char id[160];
        snprintf(id, sizeof id, "%s#%zu", tenant, i);
        tc->key_ids[i] = xstrdup(id);
        return parse_key_hex(v, path, tc->keys[i], err, n);
    }
    if (!json_is_object(v))
        return cfgj_fail(err, n, path, "must be a sha256 hex string or an object {id, sha256}");
    const char *id;
    if (cfgj_known_keys(v, path, keys, err, n) < 0 || cfgj_string(v, path, "id", 1, &id, err, n) < 0)
        return -1;
    cfgj_path(p, sizeof p, path, "id");
    if (!*id || strlen(id) > 128 || strpbrk(id, "{}\"\\ \t\r\n"))
        return cfgj_fail(err, n, p, "must be 1..128 characters without spaces, quotes or braces");
    tc->key_ids[i] = xstrdup(id);
    cfgj_path(p, sizeof p, path, "sha256");
    return parse_key_hex(json_object_get(v, "sha256"), p, tc->keys[i], err, n);
}

static int parse_tenant(json_t *t, const char *path, struct config *cfg, struct tenant_config *tc, char *err,
                        size_t n)
{
    static const char *const keys[] = {"id", "keys", "allowed_tiers", "default_tier", "cache", "budget", "limits",
                                       "expose_headers", "routing", NULL};
    char p[256], ep[280];
    if (!json_is_object(t))
        return cfgj_fail(err, n, path, "must be an object");
    if (cfgj_known_keys(t, path, keys, err, n) < 0)
        return -1;
    const char *id;
    if (cfgj_string(t, path, "id", 1, &id, err, n) < 0)
        return -1;
    if (!*id || strpbrk(id, "{}:\"\\ ")) {
        cfgj_path(p, sizeof p, path, "id");
        return cfgj_fail(err, n, p, "must be non-empty without spaces, quotes, braces or colons");
    }
    tc->id = xstrdup(id);
    json_t *arr;
    if (cfgj_array(t, path, "keys", 1, &arr, err, n) < 0)
        return -1;
    cfgj_path(p, sizeof p, path, "keys");
    if (json_array_size(arr) == 0)
        return cfgj_fail(err, n, p, "must list at least one key");
    tc->keys = xcalloc(json_array_size(arr), sizeof *tc->keys);
    tc->key_ids = xcalloc(json_array_size(arr), sizeof *tc->key_ids);
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        cfgj_path_index(ep, sizeof ep, p, i);
        tc->n_keys++;
        if (parse_key(v, ep, id, i, tc, err, n) < 0)
            return -1;
        for (size_t k = 0; k < i; k++)
            if (strcmp(tc->key_ids[k], tc->key_ids[i]) == 0)
                return cfgj_fail(err, n, ep, "duplicate key id '%s'", tc->key_ids[i]);
    }
    if (cfgj_array(t, path, "allowed_tiers", 1, &arr, err, n) < 0)
        return -1;
    cfgj_path(p, sizeof p, path, "allowed_tiers");
    if (json_array_size(arr) == 0)
        return cfgj_fail(err, n, p, "must list at least one tier");
    tc->allowed = xcalloc(json_array_size(arr), sizeof *tc->allowed);
    json_array_foreach(arr, i, v) {
        cfgj_path_index(ep, sizeof ep, p, i);
        int ti = json_is_string(v) ? config_tier_index(cfg, json_string_value(v)) : -1;
        if (ti < 0 || strcmp(cfg->tiers[ti].name, json_string_value(v)) != 0)
            return cfgj_fail(err, n, ep, "not the name of a tier");
        tc->allowed[tc->n_allowed++] = ti;
    }
    const char *def = NULL;
    if (cfgj_string(t, path, "default_tier", 0, &def, err, n) < 0)
        return -1;
    if (def) {
        cfgj_path(p, sizeof p, path, "default_tier");
        int ti = config_tier_index(cfg, def);
        if (ti < 0 || strcmp(cfg->tiers[ti].name, def) != 0)
            return cfgj_fail(err, n, p, "not the name of a tier");
        if (!config_tenant_allows(tc, ti))
            return cfgj_fail(err, n, p, "not one of this tenant's allowed_tiers");
        tc->default_tier = ti;
    } else {
        tc->default_tier = tc->allowed[0];
    }
    if (parse_tenant_cache(t, path, cfg, tc, err, n) < 0 || parse_tenant_policy(t, path, tc, err, n) < 0 ||
        parse_tenant_routing(t, path, tc, err, n) < 0 || parse_baseline(t, path, cfg, tc, err, n) < 0)
        return -1;
    /* Downgrades go to the cheapest allowed tier; routing savings are
     * measured against the most expensive one. */
    tc->cheapest_tier = tc->largest_tier = tc->allowed[0];
    for (size_t k = 1; k < tc->n_allowed; k++) {
        const struct tier_config *a = &cfg->tiers[tc->allowed[k]];
        if (a->price_out_per_1m + a->price_in_per_1m <
            cfg->tiers[tc->cheapest_tier].price_out_per_1m + cfg->tiers[tc->cheapest_tier].price_in_per_1m)
            tc->cheapest_tier = tc->allowed[k];
        if (a->price_out_per_1m + a->price_in_per_1m >
            cfg->tiers[tc->largest_tier].price_out_per_1m + cfg->tiers[tc->largest_tier].price_in_per_1m)
            tc->largest_tier = tc->allowed[k];
    }
    if (tc->baseline_tier < 0)
        tc->baseline_tier = tc->largest_tier;
    /* The allowed tiers by price, cheapest first (insertion sort: few). */
    tc->by_price = xcalloc(tc->n_allowed, sizeof *tc->by_price);
    for (size_t k = 0; k < tc->n_allowed; k++) {
        int ti = tc->allowed[k];
        double price = cfg->tiers[ti].price_in_per_1m + cfg->tiers[ti].price_out_per_1m;
        size_t j = k;
        while (j > 0 && cfg->tiers[tc->by_price[j - 1]].price_in_per_1m +
                                cfg->tiers[tc->by_price[j - 1]].price_out_per_1m > price) {
            tc->by_price[j] = tc->by_price[j - 1];
            j--;
        }
        tc->by_price[j] = ti;
    }
    return 0;
}

/* readiness.require: tiers that must be up themselves for /readyz; any
 * other tier is ready when it or its fallback chain has a live replica. */
static int parse_readiness(json_t *root, struct config *cfg, char *err, size_t n)
{
    static const char *const keys[] = {"require", NULL};
    json_t *o, *arr;
    if (cfgj_object(root, "", "readiness", 0, &o, err, n) < 0)
        return -1;
    if (!o)
        return 0;
    if (cfgj_known_keys(o, "readiness", keys, err, n) < 0 ||
        cfgj_array(o, "readiness", "require", 0, &arr, err, n) < 0)
        return -1;
    cfg->ready_require = xcalloc(json_array_size(arr) + 1, sizeof *cfg->ready_require);
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        char p[64];
        cfgj_path_index(p, sizeof p, "readiness.require", i);
        int ti = json_is_string(v) ? config_tier_index(cfg, json_string_value(v)) : -1;
        if (ti < 0 || strcmp(cfg->tiers[ti].name, json_string_value(v)) != 0)
            return cfgj_fail(err, n, p, "not the name of a tier");
        cfg->ready_require[cfg->n_ready_require++] = ti;
    }
    return 0;
}

/* tls: {cert_file, key_file} turns the listener into HTTPS. The files are
 * read when the gateway starts (not here), like every other file. */
static int parse_tls(json_t *root, struct config *cfg, char *err, size_t n)
{
    static const char *const keys[] = {"cert_file", "key_file", NULL};
    json_t *o;
    if (cfgj_object(root, "", "tls", 0, &o, err, n) < 0)
        return -1;
    if (!o)
        return 0;
    const char *cert, *key;
    if (cfgj_known_keys(o, "tls", keys, err, n) < 0 || cfgj_string(o, "tls", "cert_file", 1, &cert, err, n) < 0 ||
        cfgj_string(o, "tls", "key_file", 1, &key, err, n) < 0)
        return -1;
    if (!*cert || !*key)
        return cfgj_fail(err, n, *cert ? "tls.key_file" : "tls.cert_file", "must not be empty");
    cfg->tls.cert_file = xstrdup(cert);
    cfg->tls.key_file = xstrdup(key);
    return 0;
}

static int parse_root(json_t *root, struct config *cfg, char *err, size_t n)
{
    static const char *const keys[] = {"listen", "workers", "limits", "redis", "cache", "policy", "tokenizer",
                                       "classifier", "admin_token_sha256", "metrics", "tiers", "tenants", "tls",
                                       "readiness", NULL};
    char p[256];
    if (!json_is_object(root))
        return cfgj_fail(err, n, "", "the config must be a JSON object");
    if (cfgj_known_keys(root, "", keys, err, n) < 0)
        return -1;
    const char *listen = "127.0.0.1:8080";
    if (cfgj_string(root, "", "listen", 0, &listen, err, n) < 0)
        return -1;
    if (config_parse_listen(listen, &cfg->listen_host, &cfg->listen_port) < 0)
        return cfgj_fail(err, n, "listen", "must be HOST:PORT");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned long long w = cores > 0 ? (unsigned long long)cores : 1;
    if (cfgj_uint(root, "", "workers", 1, MAX_WORKERS, &w, err, n) < 0)
        return -1;
    cfg->workers = (int)w;
    if (parse_limits(root, &cfg->limits, err, n) < 0 || parse_redis(root, &cfg->redis, err, n) < 0 ||
        parse_cache(root, cfg, err, n) < 0 || parse_policy(root, &cfg->policy, err, n) < 0)
        return -1;
    const char *tok = NULL;
    if (cfgj_string(root, "", "tokenizer", 0, &tok, err, n) < 0)
        return -1;
    cfg->tokenizer = tok ? xstrdup(tok) : NULL;
    json_t *cl;
    if (cfgj_object(root, "", "classifier", 0, &cl, err, n) < 0)
        return -1;
    if (cl) {
        static const char *const ckeys[] = {"model", NULL};
        const char *model;
        if (cfgj_known_keys(cl, "classifier", ckeys, err, n) < 0 ||
            cfgj_string(cl, "classifier", "model", 1, &model, err, n) < 0)
            return -1;
        cfg->classifier = xstrdup(model);
    }
    json_t *admin = json_object_get(root, "admin_token_sha256");
    if (admin) {
        if (parse_key_hex(admin, "admin_token_sha256", cfg->admin_key, err, n) < 0)
            return -1;
        cfg->has_admin = 1;
    }
    /* metrics.token_sha256: off by default (a local setup keeps /metrics
     * open); set, a scrape needs that Bearer token or the admin token. */
    json_t *mo;
    if (cfgj_object(root, "", "metrics", 0, &mo, err, n) < 0)
        return -1;
    if (mo) {
        static const char *const mkeys[] = {"token_sha256", NULL};
        if (cfgj_known_keys(mo, "metrics", mkeys, err, n) < 0)
            return -1;
        json_t *tok = json_object_get(mo, "token_sha256");
        if (tok) {
            if (parse_key_hex(tok, "metrics.token_sha256", cfg->metrics_key, err, n) < 0)
                return -1;
            cfg->has_metrics_token = 1;
        }
    }

    json_t *arr;
    if (cfgj_array(root, "", "tiers", 1, &arr, err, n) < 0)
        return -1;
    if (json_array_size(arr) == 0)
        return cfgj_fail(err, n, "tiers", "must define at least one tier");
    cfg->tiers = xcalloc(json_array_size(arr), sizeof *cfg->tiers);
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        cfgj_path_index(p, sizeof p, "tiers", i);
        /* Count the tier first so config_free releases a half-parsed one. */
        cfg->n_tiers++;
        if (parse_tier(v, p, &cfg->limits, &cfg->tiers[i], err, n) < 0)
            return -1;
        for (size_t k = 0; k < i; k++)
            if (strcmp(cfg->tiers[k].name, cfg->tiers[i].name) == 0) {
                char np[280];
                cfgj_path(np, sizeof np, p, "name");
                return cfgj_fail(err, n, np, "duplicate tier name '%s'", cfg->tiers[i].name);
            }
    }

    json_t *tiers_json = arr;
    if (resolve_fallbacks(tiers_json, cfg, err, n) < 0 || parse_readiness(root, cfg, err, n) < 0 ||
        parse_tls(root, cfg, err, n) < 0)
        return -1;

    if (cfgj_array(root, "", "tenants", 1, &arr, err, n) < 0)
        return -1;
    if (json_array_size(arr) == 0)
        return cfgj_fail(err, n, "tenants", "must define at least one tenant");
    cfg->tenants = xcalloc(json_array_size(arr), sizeof *cfg->tenants);
    json_array_foreach(arr, i, v) {
        cfgj_path_index(p, sizeof p, "tenants", i);
        cfg->n_tenants++;
        if (parse_tenant(v, p, cfg, &cfg->tenants[i], err, n) < 0)
            return -1;
        for (size_t k = 0; k < i; k++)
            if (strcmp(cfg->tenants[k].id, cfg->tenants[i].id) == 0) {
                char np[280];
                cfgj_path(np, sizeof np, p, "id");
                return cfgj_fail(err, n, np, "duplicate tenant id '%s'", cfg->tenants[i].id);
            }
    }
    for (size_t i = 0; i < cfg->n_tenants; i++)
        if (cfg->tenants[i].routing.by_share && !cfg->classifier) {
            snprintf(p, sizeof p, "tenants[%zu].routing", i);
            return cfgj_fail(err, n, p,
                             "large_share, cascade_share and medium_share need \"classifier\": the shares "
                             "are read from its model's score distribution");
        }
    /* One key must name one tenant, or auth would depend on file order. */
    for (size_t a = 0; a < cfg->n_tenants; a++)
        for (size_t ka = 0; ka < cfg->tenants[a].n_keys; ka++)
            for (size_t b = a; b < cfg->n_tenants; b++)
                for (size_t kb = (b == a ? ka + 1 : 0); kb < cfg->tenants[b].n_keys; kb++)
                    if (memcmp(cfg->tenants[a].keys[ka], cfg->tenants[b].keys[kb], SHA256_LEN) == 0) {
                        snprintf(p, sizeof p, "tenants[%zu].keys[%zu]", b, kb);
                        return cfgj_fail(err, n, p, "the same key is already used by tenant '%s'",
                                         cfg->tenants[a].id);
                    }
    return 0;
}

double config_classifier_threshold(const void *classifier, double share)
{
    return classifier_threshold_for_share(classifier, share);
}

int config_resolve_routing(struct config *cfg, double (*threshold)(const void *ctx, double share), const void *ctx,
                           char *err, size_t errlen)
{
    for (size_t i = 0; i < cfg->n_tenants; i++) {
        struct tenant_config *tc = &cfg->tenants[i];
        if (!tc->routing.by_share)
            continue;
        if (routing_from_shares(&tc->routing, threshold, ctx) < 0) {
            snprintf(err, errlen,
                     "tenants[%zu].routing: the classifier model carries no score distribution to turn shares "
                     "into thresholds (regenerate it with classifier/models/regenerate.sh, or set quality or "
                     "t_low/t_high)",
                     i);
            return -1;
        }
        set_routing_version(tc);
    }
    return 0;
}

int config_parse(const char *text, struct config *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, errlen, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
        return -1;
    }
    int rc = parse_root(root, cfg, err, errlen);
    json_decref(root);
    if (rc < 0)
        config_free(cfg);
    return rc;
}

int config_load(const char *path, struct config *cfg, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open config %s", path);
        memset(cfg, 0, sizeof *cfg);
        return -1;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            text = xrealloc(text, cap);
        }
        size_t got = fread(text + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0)
            break;
    }
    fclose(f);
    text[len] = '\0';
    int rc = config_parse(text, cfg, err, errlen);
    free(text);
    return rc;
}

void config_free(struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_tiers; i++) {
        struct tier_config *t = &cfg->tiers[i];
        free(t->name);
        free(t->model);
        if (t->kind == ENGINE_REMOTE)
            remote_config_free(&t->remote);
        free(t->native_json);
        free(t->engine_json);
    }
    free(cfg->tiers);
    for (size_t i = 0; i < cfg->n_tenants; i++) {
        free(cfg->tenants[i].id);
        free(cfg->tenants[i].keys);
        for (size_t k = 0; k < cfg->tenants[i].n_keys && cfg->tenants[i].key_ids; k++)
            free(cfg->tenants[i].key_ids[k]);
        free(cfg->tenants[i].key_ids);
        free(cfg->tenants[i].allowed);
        free(cfg->tenants[i].by_price);
    }
    free(cfg->tenants);
    free(cfg->listen_host);
    free(cfg->redis.url);
    free(cfg->redis.password_env);
    free(cfg->redis.password_file);
    free(cfg->tls.cert_file);
    free(cfg->tls.key_file);
    free(cfg->ready_require);
    free(cfg->tokenizer);
    free(cfg->classifier);
    memset(cfg, 0, sizeof *cfg);
}

static int str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

/* Appends name to the comma-separated list in buf (bounded by n). */
static void deferred_add(char *buf, size_t n, size_t *count, const char *name)
{
    size_t used = strlen(buf);
    if (used < n)
        snprintf(buf + used, n - used, "%s%s", *count ? ", " : "", name);
    (*count)++;
}

size_t config_reload_deferred(const struct config *boot, const struct config *next, char *buf, size_t n)
{
    size_t count = 0;
    if (n)
        buf[0] = '\0';
    const struct limits_config *a = &boot->limits, *b = &next->limits;
    if (a->max_body_bytes != b->max_body_bytes)
        deferred_add(buf, n, &count, "limits.max_body_bytes");
    if (a->max_header_bytes != b->max_header_bytes)
        deferred_add(buf, n, &count, "limits.max_header_bytes");
    if (a->header_timeout_ms != b->header_timeout_ms)
        deferred_add(buf, n, &count, "limits.header_timeout_ms");
    if (a->read_timeout_ms != b->read_timeout_ms)
        deferred_add(buf, n, &count, "limits.read_timeout_ms");
    if (a->write_timeout_ms != b->write_timeout_ms)
        deferred_add(buf, n, &count, "limits.write_timeout_ms");
    if (a->upstream_timeout_ms != b->upstream_timeout_ms)
        deferred_add(buf, n, &count, "limits.upstream_timeout_ms");
    if (a->drain_timeout_ms != b->drain_timeout_ms)
        deferred_add(buf, n, &count, "limits.drain_timeout_ms");
    if (a->max_connections_per_worker != b->max_connections_per_worker)
        deferred_add(buf, n, &count, "limits.max_connections_per_worker");
    if (a->max_pipelined != b->max_pipelined)
        deferred_add(buf, n, &count, "limits.max_pipelined");
    if (boot->redis.timeout_ms != next->redis.timeout_ms)
        deferred_add(buf, n, &count, "redis.timeout_ms");
    if (str_differs(boot->redis.password_env, next->redis.password_env) ||
        str_differs(boot->redis.password_file, next->redis.password_file))
        deferred_add(buf, n, &count, "redis.password_env/password_file");
    if (boot->policy.local_share != next->policy.local_share)
        deferred_add(buf, n, &count, "policy.local_share");
    if (boot->policy.reservation_ttl_ms != next->policy.reservation_ttl_ms)
        deferred_add(buf, n, &count, "policy.reservation_ttl_ms");
    if (boot->policy.journal_max != next->policy.journal_max)
        deferred_add(buf, n, &count, "policy.journal_max");
    if (boot->cache.memory_max_bytes != next->cache.memory_max_bytes)
        deferred_add(buf, n, &count, "cache.memory_max_bytes");
    /* A lowered bound applies at once (each store checks the snapshot's
     * value too); a raised one meets the cache's start-up bound. */
    if (next->cache.max_entry_bytes > boot->cache.max_entry_bytes)
        deferred_add(buf, n, &count, "cache.max_entry_bytes (raised)");
    return count;
}

const char *config_reload_conflict(const struct config *cur, const struct config *next)
{
    if (strcmp(cur->listen_host, next->listen_host) != 0 || cur->listen_port != next->listen_port)
        return "listen changed";
    if (cur->workers != next->workers)
        return "workers changed";
    if (str_differs(cur->redis.url, next->redis.url))
        return "redis.url changed";
    if ((cur->tls.cert_file == NULL) != (next->tls.cert_file == NULL) ||
        (cur->tls.cert_file && (strcmp(cur->tls.cert_file, next->tls.cert_file) != 0 ||
                                strcmp(cur->tls.key_file, next->tls.key_file) != 0)))
        return "tls changed";
    if (cur->cache.backend != next->cache.backend)
        return "cache.backend changed";
    if (str_differs(cur->classifier, next->classifier))
        return "classifier changed";
    if (str_differs(cur->tokenizer, next->tokenizer))
        return "tokenizer changed";
    if (cur->n_tiers != next->n_tiers)
        return "the number of tiers changed";
    for (size_t i = 0; i < cur->n_tiers; i++) {
        const struct tier_config *a = &cur->tiers[i], *b = &next->tiers[i];
        if (strcmp(a->name, b->name) != 0 || strcmp(a->model, b->model) != 0 ||
            strcmp(a->engine_json, b->engine_json) != 0)
            return "a tier's name, model or engine changed";
        /* The engine was built with its retry settings. */
        if (a->kind == ENGINE_REMOTE &&
            (a->remote.retry_attempts != b->remote.retry_attempts ||
             a->remote.retry_backoff_ms != b->remote.retry_backoff_ms))
            return "a tier's retry changed";
    }
    return NULL;
}
