/* Config validation: a good config loads; each bad field is reported by its
 * path, so operators can find it. */
#include <jansson.h>
#include <math.h>

#include "common/openai.h"
#include "gateway/config.h"
#include "tests/unit/quantile_fns.h"
#include "tests/unit/test.h"

#define KEY_A "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae" /* sha256("foo") */
#define KEY_B "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9" /* sha256("bar") */

static const char *base =
    "{\"listen\":\"127.0.0.1:8080\",\"workers\":2,"
    "\"limits\":{\"max_body_bytes\":1048576,\"max_header_bytes\":16384,\"header_timeout_ms\":10000,"
    "\"read_timeout_ms\":30000,\"write_timeout_ms\":30000,\"upstream_timeout_ms\":60000,\"drain_timeout_ms\":5000},"
    "\"admin_token_sha256\":\"" KEY_B "\","
    "\"tiers\":[{\"name\":\"small\",\"model\":\"deepseek-coder-1.3b\","
    "\"engine\":{\"kind\":\"remote\",\"urls\":[\"http://127.0.0.1:9001\",\"http://127.0.0.1:9002/v1\"],"
    "\"timeout_ms\":1000,\"chunk_timeout_ms\":500},\"price\":{\"input_per_1m\":0.14,\"output_per_1m\":0.28}},"
    "{\"name\":\"large\",\"model\":\"deepseek-v3\",\"engine\":{\"kind\":\"remote\",\"urls\":[\"http://10.0.0.1:8000\"]},"
    "\"price\":{\"input_per_1m\":0.27,\"output_per_1m\":1.1}}],"
    "\"tenants\":[{\"id\":\"acme\",\"keys\":[\"" KEY_A "\"],\"allowed_tiers\":[\"small\",\"large\"],"
    "\"default_tier\":\"small\"},{\"id\":\"beta\",\"keys\":[\"" KEY_B "\"],\"allowed_tiers\":[\"large\"]}]}";

/* Follow "a.b[1].c" to the parent of its last step, which is returned in
 * *key (an object member) or *index (an array element). */
static json_t *walk(json_t *cur, const char *p, char *key, size_t n, int *index)
{
    *index = -1;
    key[0] = '\0';
    for (;;) {
        if (*p == '[') {
            int i = atoi(p + 1);
            p = strchr(p, ']') + 1;
            if (!*p) {
                *index = i;
                return cur;
            }
            cur = json_array_get(cur, (size_t)i);
        } else {
            size_t len = strcspn(p, ".[");
            char k[64];
            snprintf(k, sizeof k, "%.*s", (int)len, p);
            if (!p[len]) {
                snprintf(key, n, "%s", k);
                return cur;
            }
            cur = json_object_get(cur, k);
            p += len;
        }
        if (*p == '.')
            p++;
    }
}

/* Set path (e.g. "tiers[0].engine.urls[1]") in the base config to value_json,
 * or delete it when NULL; load the result and expect `want` as the error, or
 * success when want is NULL. */
static void expect(const char *path, const char *value_json, const char *want, int line)
{
    json_t *root = json_loads(base, 0, NULL);
    char last[64];
    int index;
    json_t *parent = walk(root, path, last, sizeof last, &index);
    json_t *v = value_json ? json_loads(value_json, JSON_DECODE_ANY, NULL) : NULL;
    if (index >= 0) {
        if (v)
            json_array_set_new(parent, (size_t)index, v);
        else
            json_array_remove(parent, (size_t)index);
    } else if (v) {
        json_object_set_new(parent, last, v);
    } else {
        json_object_del(parent, last);
    }
    char *text = json_dumps(root, 0);
    struct config cfg;
    char err[512] = "";
    int rc = config_parse(text, &cfg, err, sizeof err);
    int ok = want ? (rc == -1 && strcmp(err, want) == 0) : rc == 0;
    if (!ok)
        fprintf(stderr, "line %d: set %s=%s: rc %d err '%s', want '%s'\n", line, path, value_json ? value_json : "(deleted)",
                rc, err, want ? want : "(ok)");
    CHECK(ok);
    if (rc == 0)
        config_free(&cfg);
    free(text);
    json_decref(root);
}
#define EXPECT(path, value, want) expect(path, value, want, __LINE__)

int main(void)
{
    struct config cfg;
    char err[512];
    CHECK(config_parse(base, &cfg, err, sizeof err) == 0);
    CHECK_STR(cfg.listen_host, "127.0.0.1");
    CHECK(cfg.listen_port == 8080 && cfg.workers == 2);
    CHECK(cfg.limits.max_body_bytes == 1048576 && cfg.limits.drain_timeout_ms == 5000);
    CHECK(cfg.n_tiers == 2 && cfg.n_tenants == 2);
    CHECK(cfg.tiers[0].remote.n_urls == 2 && cfg.tiers[0].remote.timeout_ms == 1000);
    CHECK(cfg.tiers[1].remote.timeout_ms == 60000); /* from limits.upstream_timeout_ms */
    CHECK(cfg.tiers[1].price_out_per_1m == 1.1);
    CHECK(cfg.tenants[1].default_tier == 1); /* first allowed when not given */
    CHECK(config_tier_index(&cfg, "deepseek-v3") == 1 && config_tier_index(&cfg, "small") == 0);
    CHECK(config_tier_index(&cfg, "nope") == -1);
    CHECK(cfg.has_admin);
    CHECK(cfg.limits.max_connections_per_worker == 10000 && cfg.limits.max_pipelined == 16); /* defaults */
    CHECK(!cfg.has_metrics_token); /* /metrics open unless asked */
    config_free(&cfg);

    CHECK(config_parse("{", &cfg, err, sizeof err) == -1 && strstr(err, "invalid JSON"));
    CHECK(config_parse("[]", &cfg, err, sizeof err) == -1 && strstr(err, "must be a JSON object"));

    EXPECT("surprise", "1", "surprise: unknown field");
    EXPECT("listen", "\"nope\"", "listen: must be HOST:PORT");
    EXPECT("listen", "\"127.0.0.1:99999\"", "listen: must be HOST:PORT");
    EXPECT("listen", "5", "listen: must be a string");
    EXPECT("workers", "0", "workers: must be between 1 and 256");
    EXPECT("workers", "\"2\"", "workers: must be a non-negative integer");
    EXPECT("limits", "[]", "limits: must be an object");
    EXPECT("limits.max_body_bytes", "10", "limits.max_body_bytes: must be between 64 and 1073741824");
    EXPECT("limits.max_header_bytes", "-1", "limits.max_header_bytes: must be a non-negative integer");
    EXPECT("limits.header_timeout_ms", "0", "limits.header_timeout_ms: must be between 1 and 3600000");
    EXPECT("limits.read_timeout_ms", "1.5", "limits.read_timeout_ms: must be a non-negative integer");
    EXPECT("limits.write_timeout_ms", "0", "limits.write_timeout_ms: must be between 1 and 3600000");
    EXPECT("limits.upstream_timeout_ms", "0", "limits.upstream_timeout_ms: must be between 1 and 86400000");
    EXPECT("limits.drain_timeout_ms", "true", "limits.drain_timeout_ms: must be a non-negative integer");
    EXPECT("limits.bogus", "1", "limits.bogus: unknown field");
    EXPECT("limits.max_connections_per_worker", "0", "limits.max_connections_per_worker: must be between 1 and 1000000");
    EXPECT("limits.max_connections_per_worker", "500", NULL);
    EXPECT("limits.max_pipelined", "0", "limits.max_pipelined: must be between 1 and 1024");
    EXPECT("limits.max_pipelined", "1", NULL);
    EXPECT("metrics", "[]", "metrics: must be an object");
    EXPECT("metrics", "{}", NULL);
    EXPECT("metrics", "{\"token_sha256\":\"abc\"}", "metrics.token_sha256: not a sha256 hex string");
    EXPECT("metrics", "{\"token_sha256\":\"" KEY_A "\"}", NULL);
    EXPECT("metrics", "{\"user\":\"x\"}", "metrics.user: unknown field");
    EXPECT("admin_token_sha256", "\"abc\"", "admin_token_sha256: not a sha256 hex string");
    EXPECT("tiers", NULL, "tiers: required field is missing");
    EXPECT("tiers", "[]", "tiers: must define at least one tier");
    EXPECT("tiers[0]", "3", "tiers[0]: must be an object");
    EXPECT("tiers[0].name", NULL, "tiers[0].name: required field is missing");
    EXPECT("tiers[0].name", "\"auto\"", "tiers[0].name: must be non-empty and not 'auto'");
    EXPECT("tiers[1].name", "\"small\"", "tiers[1].name: duplicate tier name 'small'");
    EXPECT("tiers[0].model", "7", "tiers[0].model: must be a string");
    EXPECT("tiers[0].color", "\"red\"", "tiers[0].color: unknown field");
    EXPECT("tiers[0].price", NULL, "tiers[0].price: required field is missing");
    EXPECT("tiers[0].price.input_per_1m", "-1", "tiers[0].price.input_per_1m: must be between 0 and 1e+06");
    EXPECT("tiers[0].price.output_per_1m", "\"x\"", "tiers[0].price.output_per_1m: must be a number");
    EXPECT("tiers[0].engine", NULL, "tiers[0].engine: required field is missing");
    EXPECT("tiers[0].engine.kind", "\"magic\"", "tiers[0].engine.kind: must be \"remote\" or \"native\"");
    EXPECT("tiers[0].engine.urls", "[]", "tiers[0].engine.urls: must list at least one replica URL");
    EXPECT("tiers[0].engine.urls[1]", "\"ftp://x\"", "tiers[0].engine.urls[1]: not an http[s]://host[:port][/prefix] URL");
    EXPECT("tiers[0].engine.urls[0]", "1", "tiers[0].engine.urls[0]: must be a string");
    EXPECT("tiers[0].engine.timeout_ms", "0", "tiers[0].engine.timeout_ms: must be between 1 and 86400000");
    EXPECT("tiers[0].engine.chunk_timeout_ms", "-5", "tiers[0].engine.chunk_timeout_ms: must be a non-negative integer");
    EXPECT("tiers[0].engine.health_path", "\"health\"", "tiers[0].engine.health_path: must start with '/'");
    EXPECT("tiers[0].engine.retries", "3", "tiers[0].engine.retries: unknown field");
    EXPECT("tiers[0].engine", "{\"kind\":\"native\"}", "tiers[0].engine.model: required field is missing");
    /* issue 15: what a tier serves and how it fails over */
    EXPECT("tiers[0].accepts", "[\"text\",\"video\"]",
           "tiers[0].accepts[1]: must be one of text, image_url, input_audio, file");
    EXPECT("tiers[0].accepts", "[\"image_url\"]", NULL);
    EXPECT("tiers[0].endpoints", "[]", "tiers[0].endpoints: must name at least one endpoint");
    EXPECT("tiers[0].endpoints", "[\"chat\",\"speech\"]", "tiers[0].endpoints[1]: must be one of chat, completions, embeddings");
    EXPECT("tiers[0].retry", "{\"attempts\":0}", "tiers[0].retry.attempts: must be between 1 and 10");
    EXPECT("tiers[0].retry", "{\"tries\":2}", "tiers[0].retry.tries: unknown field");
    EXPECT("tiers[0].retry", "{\"attempts\":3,\"backoff_ms\":10}", NULL);
    EXPECT("tiers[0].fallback", "\"nope\"", "tiers[0].fallback: not the name of a tier");
    EXPECT("tiers[0].fallback", "\"small\"", "tiers[0].fallback: a tier cannot fall back to itself");
    EXPECT("tiers[0].fallback", "\"large\"", NULL);
    EXPECT("tiers[0].media_part_tokens", "-1", "tiers[0].media_part_tokens: must be a non-negative integer");
    EXPECT("readiness", "{\"require\":[\"medium\"]}", "readiness.require[0]: not the name of a tier");
    EXPECT("readiness", "{\"require\":[\"large\"],\"x\":1}", "readiness.x: unknown field");
    EXPECT("tls", "{\"cert_file\":\"c.pem\"}", "tls.key_file: required field is missing");
    EXPECT("tls", "{\"cert_file\":\"c.pem\",\"key_file\":\"k.pem\"}", NULL);
    EXPECT("redis", "{\"url\":\"redis://127.0.0.1\",\"password_env\":\"A\",\"password_file\":\"b\"}",
           "redis.password_env: give password_env or password_file, not both");
    EXPECT("redis", "{\"url\":\"redis://127.0.0.1\",\"password_env\":\"REDIS_PASSWORD\"}", NULL);
    EXPECT("tenants[0].keys[0]", "{\"id\":\"ci bot\",\"sha256\":\"" KEY_A "\"}",
           "tenants[0].keys[0].id: must be 1..128 characters without spaces, quotes or braces");
    EXPECT("tenants[0].keys[0]", "{\"id\":\"ci-bot\"}", "tenants[0].keys[0].sha256: not a sha256 hex string");
    EXPECT("tenants[0].keys[0]", "{\"id\":\"ci-bot\",\"sha256\":\"" KEY_A "\"}", NULL);
    EXPECT("tenants[0].routing", "{\"baseline_tier\":\"medium\"}", "tenants[0].routing.baseline_tier: not the name of a tier");
    EXPECT("tenants[1].routing", "{\"baseline_tier\":\"small\"}",
           "tenants[1].routing.baseline_tier: not one of this tenant's allowed_tiers");
    /* Routing shares: one knob or the other, a sum of at most 1, and a
     * classifier to read the distribution from. */
    EXPECT("tenants[0].routing", "{\"large_share\":0.3,\"quality\":0.5}",
           "tenants[0].routing.quality: cannot be set together with large_share, cascade_share or medium_share "
           "(shares set the thresholds)");
    EXPECT("tenants[0].routing", "{\"cascade_share\":0.3,\"t_high\":0.5}",
           "tenants[0].routing.t_high: cannot be set together with large_share, cascade_share or medium_share "
           "(shares set the thresholds)");
    EXPECT("tenants[0].routing", "{\"large_share\":0.6,\"cascade_share\":0.3,\"medium_share\":0.2}",
           "tenants[0].routing.large_share: large_share + cascade_share + medium_share must not exceed 1");
    EXPECT("tenants[0].routing", "{\"large_share\":1.5}", "tenants[0].routing.large_share: must be between 0 and 1");
    EXPECT("tenants[0].routing", "{\"large_share\":0.3}",
           "tenants[0].routing: large_share, cascade_share and medium_share need \"classifier\": the shares are "
           "read from its model's score distribution");
    EXPECT("tenants[0].routing", "{\"share_window\":100}",
           "tenants[0].routing.share_window: only applies with large_share, cascade_share or medium_share");
    EXPECT("classifier", "{\"model\":\"m.cdm\"}", NULL);
    /* The cascade's judge (policies/judge.h): a rule and its keys, the old
     * keys selecting the old rule, and nothing that belongs to another rule. */
    EXPECT("tenants[0].routing", "{\"cascade\":{\"rule\":\"median\"}}",
           "tenants[0].routing.cascade.rule: must be \"quantile\", \"mean\", \"window\" or \"mean_window\"");
    EXPECT("tenants[0].routing", "{\"cascade\":{\"rule\":\"quantile\",\"quantile\":0.05,\"threshold\":-3}}", NULL);
    EXPECT("tenants[0].routing", "{\"cascade\":{\"quantile\":1.5}}",
           "tenants[0].routing.cascade.quantile: must be between 0 and 1");
    EXPECT("tenants[0].routing", "{\"cascade\":{\"rule\":\"mean\",\"quantile\":0.2}}",
           "tenants[0].routing.cascade.quantile: applies to rule quantile, and this rule is \"mean\"");
    EXPECT("tenants[0].routing", "{\"cascade\":{\"min_mean_logprob\":-1,\"threshold\":-2}}",
           "tenants[0].routing.cascade.threshold: applies to rule quantile, mean or window, and this rule is "
           "\"mean_window\"");
    EXPECT("tenants[0].routing", "{\"cascade\":{\"rule\":\"mean\",\"min_mean_logprob\":-1,\"threshold\":-2}}",
           "tenants[0].routing.cascade.threshold: and min_mean_logprob say the same for this rule: set one");
    EXPECT("tenants[0].routing", "{\"cascade\":{\"rule\":\"window\",\"window\":4,\"threshold\":-2}}", NULL);
    EXPECT("tenants[0].routing", "{\"cascade\":{\"threshold\":1}}",
           "tenants[0].routing.cascade.threshold: must be between -100 and 0");
    EXPECT("tenants[0].routing", "{\"cascade\":{\"top_logprobs\":21}}",
           "tenants[0].routing.cascade.top_logprobs: must be between 1 and 20");
    EXPECT("tenants[0].routing", "{\"cascade\":{\"min_option_margin\":-2}}",
           "tenants[0].routing.cascade.min_option_margin: must be between -1 and 1");
    EXPECT("tenants[0].routing", "{\"cascade\":{\"options\":1}}", "tenants[0].routing.cascade.options: must be a boolean");
    EXPECT("tenants[0].routing", "{\"cascade\":{\"margin\":0.1}}", "tenants[0].routing.cascade.margin: unknown field");
    {
        /* What the keys set, and the routing version (the cache key's
         * route) changing with the judge's settings. */
        static const char *const cascades[] = {
            "{}",
            "{\"min_mean_logprob\":-0.5,\"window\":4}",
            "{\"rule\":\"mean\",\"threshold\":-0.7,\"min_option_prob\":0.6,\"min_option_margin\":0.3,"
            "\"top_logprobs\":10,\"options\":false}",
        };
        char versions[3][sizeof(((struct tenant_config *)0)->routing_version)];
        for (int k = 0; k < 3; k++) {
            json_t *root = json_loads(base, 0, NULL);
            json_t *t0 = json_array_get(json_object_get(root, "tenants"), 0);
            json_t *routing = json_object();
            json_object_set_new(routing, "cascade", json_loads(cascades[k], 0, NULL));
            json_object_set_new(t0, "routing", routing);
            char *text = json_dumps(root, 0);
            struct config sc;
            char serr[512] = "";
            CHECK(config_parse(text, &sc, serr, sizeof serr) == 0);
            const struct judge_settings *j = &sc.tenants[0].routing.judge;
            if (k == 0)
                CHECK(j->rule == JUDGE_RULE_QUANTILE && j->quantile == 0.1 && j->min_quantile == -2.5 && j->options &&
                      j->min_option_prob == 0.5 && j->min_option_margin == 0.2 && j->top_logprobs == 5);
            if (k == 1) /* the old keys: the old rule, its defaults kept */
                CHECK(j->rule == JUDGE_RULE_MEAN_WINDOW && j->min_mean == -0.5 && j->min_window == -2.5 && j->window == 4);
            if (k == 2)
                CHECK(j->rule == JUDGE_RULE_MEAN && j->min_mean == -0.7 && !j->options && j->min_option_prob == 0.6 &&
                      j->min_option_margin == 0.3 && j->top_logprobs == 10);
            memcpy(versions[k], sc.tenants[0].routing_version, sizeof versions[k]);
            config_free(&sc);
            free(text);
            json_decref(root);
        }
        CHECK(strcmp(versions[0], versions[1]) != 0 && strcmp(versions[1], versions[2]) != 0 &&
              strcmp(versions[0], versions[2]) != 0);
    }
    {
        /* With a classifier, the thresholds follow from the shares through
         * its quantile function (here a uniform one: t = 1 - share), and
         * the routing version (the cache key's route) names them. */
        json_t *root = json_loads(base, 0, NULL);
        json_object_set_new(root, "classifier", json_pack("{s:s}", "model", "m.cdm"));
        json_t *t0 = json_array_get(json_object_get(root, "tenants"), 0);
        json_object_set_new(t0, "routing", json_pack("{s:f,s:f}", "large_share", 0.25, "cascade_share", 0.25));
        char *text = json_dumps(root, 0);
        struct config sc;
        char serr[512] = "";
        CHECK(config_parse(text, &sc, serr, sizeof serr) == 0);
        const struct routing_settings *r = &sc.tenants[0].routing;
        CHECK(r->by_share && r->large_share == 0.25 && r->cascade_share == 0.25 && r->medium_share == 0);
        CHECK(r->share_window == ROUTING_SHARE_WINDOW);
        /* The shares name the route (the cache key), not the thresholds the
         * tenant's traffic moves. */
        CHECK(strstr(sc.tenants[0].routing_version, "auto:share:0.2500:0.2500:0.0000:4096:") ==
              sc.tenants[0].routing_version);
        char before[sizeof sc.tenants[0].routing_version];
        memcpy(before, sc.tenants[0].routing_version, sizeof before);
        CHECK(config_resolve_routing(&sc, uniform_threshold, NULL, serr, sizeof serr) == 0);
        CHECK(fabs(r->t_high - 0.75) < 1e-12 && fabs(r->t_low - 0.5) < 1e-12 && fabs(r->t_medium - 0.5) < 1e-12);
        CHECK(strcmp(before, sc.tenants[0].routing_version) == 0);
        /* share_window 0: the shipped thresholds, fixed, are the route. */
        r = &sc.tenants[0].routing;
        sc.tenants[0].routing.share_window = 0;
        CHECK(config_resolve_routing(&sc, uniform_threshold, NULL, serr, sizeof serr) == 0);
        CHECK(strstr(sc.tenants[0].routing_version, "auto:0.5000:0.5000:0.7500:") == sc.tenants[0].routing_version);
        CHECK(config_resolve_routing(&sc, no_distribution, NULL, serr, sizeof serr) == -1);
        CHECK(strstr(serr, "tenants[0].routing: the classifier model carries no score distribution") == serr);
        config_free(&sc);
        free(text);
        json_decref(root);
    }
    {
        /* A fallback chain that loops is refused; a native tier serves no
         * embeddings and takes text only. */
        const char *loop = "{\"tiers\":[{\"name\":\"a\",\"model\":\"a\",\"fallback\":\"b\",\"engine\":{\"kind\":\"remote\","
                           "\"urls\":[\"http://127.0.0.1:1\"]},\"price\":{\"input_per_1m\":1,\"output_per_1m\":1}},"
                           "{\"name\":\"b\",\"model\":\"b\",\"fallback\":\"a\",\"engine\":{\"kind\":\"remote\","
                           "\"urls\":[\"http://127.0.0.1:2\"]},\"price\":{\"input_per_1m\":1,\"output_per_1m\":1}}],"
                           "\"tenants\":[{\"id\":\"t\",\"keys\":[\"" KEY_A "\"],\"allowed_tiers\":[\"a\",\"b\"]}]}";
        struct config lc;
        char lerr[512] = "";
        CHECK(config_parse(loop, &lc, lerr, sizeof lerr) == -1);
        CHECK(strstr(lerr, "loops") != NULL);
        const char *nat = "{\"tiers\":[{\"name\":\"n\",\"model\":\"n\",\"endpoints\":[\"embeddings\"],"
                          "\"engine\":{\"kind\":\"native\",\"model\":\"m.bin\"},\"price\":{\"input_per_1m\":1,"
                          "\"output_per_1m\":1}}],\"tenants\":[{\"id\":\"t\",\"keys\":[\"" KEY_A "\"],"
                          "\"allowed_tiers\":[\"n\"]}]}";
        CHECK(config_parse(nat, &lc, lerr, sizeof lerr) == -1);
        CHECK_STR(lerr, "tiers[0].endpoints: a native tier does not serve embeddings");
        /* defaults: remote serves all three, text only; key ids named */
        CHECK(config_parse(base, &lc, lerr, sizeof lerr) == 0);
        CHECK(lc.tiers[0].endpoints == (TIER_EP_CHAT | TIER_EP_COMPLETIONS | TIER_EP_EMBEDDINGS));
        CHECK(lc.tiers[0].accepts == OPENAI_PART_TEXT && lc.tiers[0].fallback == -1 && lc.tiers[0].tools);
        CHECK(lc.tiers[0].remote.retry_attempts == 2 && lc.tiers[1].remote.retry_attempts == 1);
        CHECK_STR(lc.tenants[0].key_ids[0], "acme#0");
        CHECK(lc.tenants[0].baseline_tier == 1); /* the most expensive allowed */
        config_free(&lc);
    }
    EXPECT("tenants", "[]", "tenants: must define at least one tenant");
    EXPECT("tenants[1].id", "\"a b\"", "tenants[1].id: must be non-empty without spaces, quotes, braces or colons");
    EXPECT("tenants[1].id", "\"acme\"", "tenants[1].id: duplicate tenant id 'acme'");
    EXPECT("tenants[1].keys", "[]", "tenants[1].keys: must list at least one key");
    EXPECT("tenants[1].keys[0]", "\"not-hex\"", "tenants[1].keys[0]: not a sha256 hex string");
    EXPECT("tenants[1].keys[0]", "\"" KEY_A "\"", "tenants[1].keys[0]: the same key is already used by tenant 'acme'");
    EXPECT("tenants[0].allowed_tiers", "[\"small\",\"huge\"]", "tenants[0].allowed_tiers[1]: not the name of a tier");
    EXPECT("tenants[0].allowed_tiers", "[]", "tenants[0].allowed_tiers: must list at least one tier");
    EXPECT("tenants[0].default_tier", "\"huge\"", "tenants[0].default_tier: not the name of a tier");
    EXPECT("tenants[1].default_tier", "\"small\"", "tenants[1].default_tier: not one of this tenant's allowed_tiers");
    EXPECT("tenants[0].budget", "1", "tenants[0].budget: must be an object");
    EXPECT("tenants[0].budget", "{\"usd_per_day\":-1}", "tenants[0].budget.usd_per_day: must be between 0 and 1e+09");
    EXPECT("tenants[0].budget", "{\"on_exhausted\":\"panic\"}", "tenants[0].budget.on_exhausted: must be \"reject\" or \"downgrade\"");
    EXPECT("tenants[0].limits", "{\"rpm\":\"many\"}", "tenants[0].limits.rpm: must be a non-negative integer");
    EXPECT("tenants[0].cache", "{\"mode\":\"sometimes\"}", "tenants[0].cache.mode: must be \"off\", \"deterministic\" or \"always\"");
    EXPECT("tenants[0].color", "1", "tenants[0].color: unknown field");
    EXPECT("redis", "{\"url\":\"http://x\"}", "redis.url: must start with redis:// or unix://");
    EXPECT("cache", "{\"backend\":\"disk\"}", "cache.backend: must be \"redis\" or \"memory\"");
    EXPECT("policy", "{\"local_share\":2}", "policy.local_share: must be between 0.001 and 1");
    EXPECT("workers", NULL, NULL); /* optional: defaults to the core count */
    TEST_MAIN_END();
}
