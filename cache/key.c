#include "cache/key.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/openai.h"

/* Numbers go in as reals so that 0 and 0.0 (the same sampling value) agree. */
static void put_real(json_t *o, const char *k, int has, double v)
{
    if (has)
        json_object_set_new(o, k, json_real(v));
}

void cache_key(const char *tenant, const char *route, const struct chat_request *req, uint8_t out[SHA256_LEN])
{
    json_t *o = json_object();
    json_object_set_new(o, "v", json_integer(2)); /* bump when this encoding changes */
    json_object_set_new(o, "tenant", json_string(tenant));
    json_object_set_new(o, "route", json_string(route));
    /* Every field the client sent may change the answer (tools,
     * response_format, penalties, logit_bias, reasoning_effort, fields we
     * have never heard of), so each goes in verbatim, except those that
     * cannot change it (how it is delivered, who asked) and those given
     * in canonical form below. Leaving one out would let two different
     * requests share an answer. */
    static const char *const skip[] = {"model", "stream", "stream_options", "user", "metadata", "store",
                                       "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
                                       "seed", "logprobs", "top_logprobs", NULL};
    const char *k;
    json_t *v;
    json_object_foreach(req->root, k, v) {
        int skipped = json_is_null(v);
        for (size_t i = 0; skip[i] && !skipped; i++)
            skipped = strcmp(k, skip[i]) == 0;
        if (!skipped)
            json_object_set(o, k, v);
    }
    put_real(o, "temperature", req->has_temperature, req->temperature);
    put_real(o, "top_p", req->has_top_p, req->top_p);
    if (req->max_tokens >= 0)
        json_object_set_new(o, "max_tokens", json_integer(req->max_tokens));
    if (req->n_stop) {
        json_t *stop = json_array();
        for (size_t i = 0; i < req->n_stop; i++)
            json_array_append_new(stop, json_string(req->stop[i]));
        json_object_set_new(o, "stop", stop);
    }
    if (req->has_seed)
        json_object_set_new(o, "seed", json_integer(req->seed));
    if (req->logprobs) {
        json_object_set_new(o, "logprobs", json_true());
        json_object_set_new(o, "top_logprobs", json_integer(req->top_logprobs));
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
    hash_sha256(s, strlen(s), out);
    free(s);
    json_decref(o);
}

int cache_request_cacheable(const struct chat_request *req, enum cache_mode mode)
{
    switch (mode) {
    case CACHE_MODE_OFF:
        return 0;
    case CACHE_MODE_ALWAYS:
        return 1;
    case CACHE_MODE_DETERMINISTIC:
        return (req->has_temperature && req->temperature == 0) || req->has_seed;
    }
    return 0;
}

int cache_mode_parse(const char *s, enum cache_mode *out)
{
    static const char *const names[] = {"off", "deterministic", "always"};
    for (int i = 0; i < 3; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (enum cache_mode)i;
            return 0;
        }
    return -1;
}
