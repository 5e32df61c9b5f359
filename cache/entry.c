/* entry.c: the cache entry codec; see entry.h. */
#include "cache/entry.h"

#include <string.h>

#include "common/jsonr.h"

/* A finish reason as OpenAI names them ("stop", "length", "tool_calls",
 * "content_filter"): 1..32 of [a-z_]. Anything else would be replayed to a
 * client verbatim, so it is refused rather than passed on. */
static int finish_reason_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 32)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || s[i] == '_'))
            return 0;
    return 1;
}

/* A token count: an integer in [0, CACHE_ENTRY_MAX_TOKENS]. */
static int count_ok(json_t *v, int64_t *out)
{
    if (!json_is_integer(v))
        return 0;
    json_int_t n = json_integer_value(v);
    if (n < 0 || n > CACHE_ENTRY_MAX_TOKENS)
        return 0;
    *out = (int64_t)n;
    return 1;
}

/* An optional string field: absent or null is NULL, a string is itself,
 * anything else is a bad entry. */
static int opt_string(json_t *root, const char *key, const char **out)
{
    json_t *v = json_object_get(root, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 1;
    if (!json_is_string(v))
        return 0;
    *out = json_string_value(v);
    return 1;
}

/* logprobs: an array of {"token": string, "logprob": number, ...}; the
 * replay splits the content by the tokens' lengths. */
static int logprobs_ok(json_t *lp)
{
    if (!json_is_array(lp))
        return 0;
    size_t i;
    json_t *e;
    json_array_foreach(lp, i, e) {
        if (!json_is_object(e) || !json_is_string(json_object_get(e, "token")) ||
            !json_is_number(json_object_get(e, "logprob")))
            return 0;
    }
    return 1;
}

/* message: the assistant message's fields beside content (tool_calls,
 * reasoning_content, refusal, ...), replayed to the client as they are, so
 * the parts a client acts on are checked: each tool call is an object whose
 * function, when present, has a string name and string arguments. */
static int message_ok(json_t *m)
{
    if (!json_is_object(m))
        return 0;
    json_t *calls = json_object_get(m, "tool_calls");
    if (!calls)
        return 1;
    if (!json_is_array(calls))
        return 0;
    size_t i;
    json_t *c;
    json_array_foreach(calls, i, c) {
        json_t *fn = json_object_get(c, "function");
        if (!json_is_object(c) || (fn && (!json_is_object(fn) || !json_is_string(json_object_get(fn, "name")) ||
                                          !json_is_string(json_object_get(fn, "arguments")))))
            return 0;
    }
    return 1;
}

int cache_entry_decode(const char *buf, size_t len, struct cache_entry *e)
{
    memset(e, 0, sizeof(*e));
    /* No JSON_ALLOW_NUL: content with a NUL would be cut short by every C
     * string consumer after us. */
    /* jr_load: the same tree as json_loadb, in one pass (common/jsonr.h);
     * a hit parses its whole entry, so this is the cache-hit hot path. */
    json_t *root = jr_load(buf, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(root))
        goto fail;
    json_t *content = json_object_get(root, "content");
    json_t *fr = json_object_get(root, "finish_reason");
    json_t *usage = json_object_get(root, "usage");
    json_t *created = json_object_get(root, "created");
    json_t *lp = json_object_get(root, "logprobs");
    json_t *version = json_object_get(root, "v");
    json_t *message = json_object_get(root, "message");
    json_t *meta = json_object_get(root, "meta");
    /* Another version's entry is a miss: its shape may differ from what
     * this version replays (a rolling upgrade runs both at once). */
    if (!json_is_integer(version) || json_integer_value(version) != CACHE_ENTRY_VERSION)
        goto fail;
    if ((message && !json_is_null(message) && !message_ok(message)) ||
        (meta && !json_is_null(meta) && !json_is_object(meta)))
        goto fail;
    e->message = json_is_object(message) ? message : NULL;
    e->meta = json_is_object(meta) ? meta : NULL;
    if (!json_is_string(content) || !json_is_string(fr) || !finish_reason_ok(json_string_value(fr)) ||
        !json_is_object(usage) ||
        !count_ok(json_object_get(usage, "prompt_tokens"), &e->prompt_tokens) ||
        !count_ok(json_object_get(usage, "completion_tokens"), &e->completion_tokens) ||
        !opt_string(root, "tier", &e->tier) || !opt_string(root, "model", &e->model))
        goto fail;
    if (created && !json_is_null(created)) {
        if (!json_is_integer(created) || json_integer_value(created) < 0)
            goto fail;
        e->created = json_integer_value(created);
    }
    if (lp && !json_is_null(lp)) {
        if (!logprobs_ok(lp))
            goto fail;
        e->logprobs = lp;
    }
    e->content = json_string_value(content);
    e->content_len = json_string_length(content);
    e->finish_reason = json_string_value(fr);
    e->root_ = root;
    return 0;

fail:
    json_decref(root);
    memset(e, 0, sizeof(*e));
    return -1;
}

void cache_entry_free(struct cache_entry *e)
{
    json_decref(e->root_);
    memset(e, 0, sizeof(*e));
}

char *cache_entry_encode(const struct cache_entry *e, size_t *len)
{
    json_t *o = json_pack("{s:i, s:s%, s:s, s:{s:I, s:I}}", "v", CACHE_ENTRY_VERSION, "content", e->content ? e->content : "",
                          e->content ? e->content_len : 0, "finish_reason", e->finish_reason,
                          "usage", "prompt_tokens", (json_int_t)e->prompt_tokens,
                          "completion_tokens", (json_int_t)e->completion_tokens);
    if (!o)
        return NULL;
    if ((e->tier && json_object_set_new(o, "tier", json_string(e->tier)) != 0) ||
        (e->model && json_object_set_new(o, "model", json_string(e->model)) != 0) ||
        json_object_set_new(o, "created", json_integer(e->created)) != 0 ||
        (e->logprobs && json_object_set(o, "logprobs", e->logprobs) != 0) ||
        (json_object_size(e->message) && json_object_set(o, "message", e->message) != 0) ||
        (json_object_size(e->meta) && json_object_set(o, "meta", e->meta) != 0)) {
        json_decref(o);
        return NULL;
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s)
        *len = strlen(s);
    return s;
}
