/* completions.c: /v1/completions parsing and writing; see completions.h. */
#include "common/completions.h"

#include "common/jsonr.h"
#include "common/mem.h"
#include "common/utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A 400 invalid_request_error about param; returns -1 for `return bad(...)`. */
static int bad(struct openai_error *err, const char *param, const char *msg)
{
    openai_error_set(err, 400, "invalid_request_error", NULL, param, "%s", msg);
    return -1;
}

/* The chat body this request means: the same fields, with the prompt as the
 * one user message and logprobs in chat's form. */
static json_t *as_chat(json_t *root, const char *prompt, size_t prompt_len, int logprobs)
{
    json_t *c = json_copy(root);
    static const char *const drop[] = {"prompt", "echo", "suffix", "best_of", "logprobs"};
    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        json_object_del(c, drop[i]);
    json_object_set_new(c, "messages",
                        json_pack("[{s:s, s:s%}]", "role", "user", "content", prompt, prompt_len));
    if (logprobs >= 0) {
        json_object_set_new(c, "logprobs", json_true());
        json_object_set_new(c, "top_logprobs", json_integer(logprobs));
    }
    return c;
}

/* The completions-only fields are checked here; then the body, rewritten
 * as a chat request, goes through chat_request_parse() for everything the
 * two endpoints share, so both validate those fields identically. */
int completion_request_parse(const char *body, size_t len, struct completion_request *req,
                             struct openai_error *err)
{
    memset(req, 0, sizeof(*req));
    req->chat.max_tokens = -1;
    req->logprobs = -1;
    if (!utf8_valid(body, len))
        return bad(err, NULL, "request body is not valid UTF-8");
    json_error_t jerr;
    json_t *root = jr_load(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        openai_error_set(err, 400, "invalid_request_error", NULL, NULL,
                         "malformed JSON in request body: %s (line %d, column %d)", jerr.text,
                         jerr.line, jerr.column);
        return -1;
    }
    int rc = -1;
    json_t *chat = NULL;
    if (!json_is_object(root)) {
        bad(err, NULL, "request body must be a JSON object");
        goto out;
    }
    /* OpenAI also takes arrays of prompts and token ids; one string prompt
     * (bare, or alone in an array, as some clients send it) is what a
     * single-choice engine can answer. */
    json_t *p = json_object_get(root, "prompt");
    if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0)))
        p = json_array_get(p, 0);
    if (!p) {
        bad(err, "prompt", "'prompt' is required");
        goto out;
    }
    if (!json_is_string(p)) {
        bad(err, "prompt", "'prompt' must be a string (one prompt per request; token ids are not "
                           "supported)");
        goto out;
    }
    json_t *v = json_object_get(root, "suffix");
    if (v && !json_is_null(v)) {
        bad(err, "suffix", "'suffix' is not supported");
        goto out;
    }
    v = json_object_get(root, "best_of");
    if (v && !json_is_null(v) && (!json_is_integer(v) || json_integer_value(v) != 1)) {
        bad(err, "best_of", "only best_of=1 is supported");
        goto out;
    }
    v = json_object_get(root, "echo");
    if (v && !json_is_null(v) && !json_is_boolean(v)) {
        bad(err, "echo", "'echo' must be a boolean");
        goto out;
    }
    int echo = json_is_true(v);
    v = json_object_get(root, "logprobs");
    int logprobs = -1;
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > COMPLETIONS_MAX_LOGPROBS) {
            char msg[96];
            snprintf(msg, sizeof(msg), "'logprobs' must be an integer between 0 and %d",
                     COMPLETIONS_MAX_LOGPROBS);
            bad(err, "logprobs", msg);
            goto out;
        }
        logprobs = (int)json_integer_value(v);
    }
    if (echo && logprobs >= 0) {
        bad(err, "echo", "'echo' together with 'logprobs' is not supported");
        goto out;
    }

    chat = as_chat(root, json_string_value(p), json_string_length(p), logprobs);
    char *cbody = chat ? json_dumps(chat, JSON_COMPACT) : NULL;
    if (!cbody) {
        openai_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        goto out;
    }
    if (chat_request_parse(cbody, strlen(cbody), &req->chat, err) == 0) {
        req->prompt = req->chat.messages[0].content;
        req->prompt_len = req->chat.messages[0].content_len;
        req->echo = echo;
        req->logprobs = logprobs;
        rc = 0;
    } else if (err->param && strcmp(err->param, "top_logprobs") == 0) {
        /* The client never sent top_logprobs: name the field it did send. */
        err->param = "logprobs";
    }
    free(cbody);
out:
    json_decref(chat);
    json_decref(root);
    return rc;
}

void completion_request_free(struct completion_request *req)
{
    chat_request_free(&req->chat);
    memset(req, 0, sizeof(*req));
    req->logprobs = -1;
}


/* Four parallel arrays, one entry per token, as the legacy API returns them. */
json_t *completion_logprobs_new(void)
{
    return json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs",
                     "text_offset");
}

void completion_logprobs_add(json_t *lp, const char *token, size_t len, double logprob,
                             const char *const *top_tokens, const double *top_logprobs,
                             size_t n_top, size_t text_offset)
{
    json_array_append_new(json_object_get(lp, "tokens"), openai_text_json(token, len));
    json_array_append_new(json_object_get(lp, "token_logprobs"),
                          json_real(isfinite(logprob) ? logprob : -9999.0));
    /* The alternatives are an object keyed by token text: two alternatives
     * with the same text (possible with byte tokens) keep the first, the
     * more likely one. */
    json_t *top = json_object();
    for (size_t i = 0; i < n_top; i++) {
        json_t *k = openai_text_json(top_tokens[i], strlen(top_tokens[i]));
        if (k && !json_object_get(top, json_string_value(k)))
            json_object_set_new(top, json_string_value(k),
                                json_real(isfinite(top_logprobs[i]) ? top_logprobs[i] : -9999.0));
        json_decref(k);
    }
    json_array_append_new(json_object_get(lp, "top_logprobs"), top);
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)text_offset));
}

static json_t *usage_json(const struct openai_usage *u)
{
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)u->prompt_tokens,
                     "completion_tokens", (json_int_t)u->completion_tokens, "total_tokens",
                     (json_int_t)(u->prompt_tokens + u->completion_tokens));
}

char *completion_response(const char *id, int64_t created, const char *model, const char *text,
                          size_t len, const char *finish_reason, const struct openai_usage *usage,
                          json_t *logprobs)
{
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[{s:o, s:i, s:O?, s:s}], s:o}", "id", id,
                          "object", "text_completion", "created", (json_int_t)created, "model",
                          model, "choices", "text", openai_text_json(text, len), "index", 0, "logprobs",
                          logprobs, "finish_reason", finish_reason, "usage", usage_json(usage));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

/* "data: " + compact JSON + "\n\n": one SSE event in one allocation. */
static char *sse_wrap(json_t *o, size_t *out_len)
{
    char *js = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    size_t n = strlen(js);
    char *ev = xmalloc(n + 9);
    memcpy(ev, "data: ", 6);
    memcpy(ev + 6, js, n);
    memcpy(ev + 6 + n, "\n\n", 3);
    free(js);
    *out_len = n + 8;
    return ev;
}

char *completion_chunk_event(const char *id, int64_t created, const char *model, const char *text,
                             size_t len, json_t *logprobs, const char *finish_reason,
                             size_t *out_len)
{
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[{s:o, s:i, s:O?, s:o}]}", "id", id, "object",
                          "text_completion", "created", (json_int_t)created, "model", model,
                          "choices", "text", openai_text_json(text ? text : "", text ? len : 0), "index",
                          0, "logprobs", logprobs, "finish_reason",
                          finish_reason ? json_string(finish_reason) : json_null());
    char *ev = sse_wrap(o, out_len);
    json_decref(o);
    return ev;
}

char *completion_usage_event(const char *id, int64_t created, const char *model,
                             const struct openai_usage *usage, size_t *out_len)
{
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", id, "object", "text_completion",
                          "created", (json_int_t)created, "model", model, "choices", "usage",
                          usage_json(usage));
    char *ev = sse_wrap(o, out_len);
    json_decref(o);
    return ev;
}
