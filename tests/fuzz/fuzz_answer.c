/* fuzz_answer: the remote engine's reading of upstream answers and its
 * building of upstream bodies (engines/remote/answer.c) on arbitrary bytes.
 *
 * The first byte picks the endpoint (chat, completions, embeddings) and the
 * entry point; the second the max_tokens bound and the logprobs asked for;
 * the rest is the input:
 *   0 stream: events separated by '\n', fed to answer_stream_event in order
 *   1 whole answer: answer_full
 *   2 error body: answer_error_parse
 *   3 request body: the input as the client's JSON, answer_request_body
 * Besides memory errors, it checks what the callers rely on:
 *   - a token's extra and meta are objects or NULL, never hold the fields
 *     the writers own (role/content; id/object/created/model/choices/usage),
 *     and in a stream never a null, "" or [] (absent fields);
 *   - every streamed extra merges (openai_delta_merge), as the gateway does;
 *   - no more events with output than max_tokens are delivered (the cut);
 *   - a whole chat answer's tokens add up to its content, byte for byte; an
 *     embeddings answer is one token, the body itself;
 *   - usage is never negative; a refusal says why;
 *   - a built body is a JSON object with the model, never the client's JSON
 *     edited. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/openai.h"
#include "engines/remote/answer.h"

struct sink {
    int stream;
    json_t *acc;            /* stream: the merged extras */
    char *text;             /* whole answers: the tokens' text, joined */
    size_t len, cap;
    size_t n;
    int stop_at;            /* 1 in 8 inputs: the receiver cancels at token 3 */
};

static void check_fields(json_t *o, const char *const *own, int stream)
{
    if (!o)
        return;
    if (!json_is_object(o) || json_object_size(o) == 0)
        abort();
    for (size_t i = 0; own[i]; i++)
        if (json_object_get(o, own[i]))
            abort();
    if (!stream)
        return;
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0) ||
            (json_is_array(v) && json_array_size(v) == 0))
            abort();
    }
}

static const char *const message_own[] = {"role", "content", NULL};
static const char *const object_own[] = {"id", "object", "created", "model", "choices", "usage", NULL};

static int on_token(void *ctx, const struct engine_token *tok)
{
    struct sink *s = ctx;
    if (tok->len && !tok->text)
        abort();
    if (tok->n_top > 20 || (tok->has_logprob && !isfinite(tok->logprob)))
        abort();
    check_fields(tok->extra, message_own, s->stream);
    check_fields(tok->meta, object_own, s->stream);
    if (s->stream && tok->extra && openai_delta_merge(s->acc, tok->extra) < 0)
        abort();
    if (s->len + tok->len + 1 > s->cap) {
        s->cap = (s->len + tok->len + 1) * 2;
        s->text = realloc(s->text, s->cap);
        if (!s->text)
            abort();
    }
    memcpy(s->text + s->len, tok->text, tok->len);
    s->len += tok->len;
    s->n++;
    return s->stop_at && s->n >= (size_t)s->stop_at;
}

static void fuzz_stream(struct answer *a, struct sink *s, const char *in, size_t size)
{
    size_t start = 0;
    int64_t delivering_events = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && in[i] != '\n')
            continue;
        size_t before = s->n;
        enum answer_status rc = answer_stream_event(a, in + start, i - start);
        start = i + 1;
        if (s->n > before)
            delivering_events++;
        if (rc == ANSWER_BAD && !a->error[0])
            abort();
        if (rc != ANSWER_OK || (s->stop_at && s->n >= (size_t)s->stop_at))
            break;
    }
    if (a->max_tokens > 0 && (delivering_events > a->max_tokens || a->output_events > a->max_tokens))
        abort();
}

static void fuzz_full(struct answer *a, struct sink *s, const char *in, size_t size)
{
    enum answer_status rc = answer_full(a, in, size);
    if (rc == ANSWER_BAD) {
        if (!a->error[0] || s->n)
            abort();
        return;
    }
    if (a->endpoint == ENGINE_EP_EMBEDDINGS) {
        if (s->n != 1 || s->len != size || memcmp(s->text, in, size) != 0 || a->usage.completion_tokens)
            abort();
        return;
    }
    if (s->stop_at)
        return; /* cut short on purpose */
    /* The tokens are the content, however the logprobs split it. */
    json_t *root = json_loadb(in, size, 0, NULL);
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    json_t *c = a->endpoint == ENGINE_EP_COMPLETIONS ? json_object_get(choice, "text")
                                                     : json_object_get(json_object_get(choice, "message"), "content");
    size_t want = json_is_string(c) ? json_string_length(c) : 0;
    if (s->len != want || (want && memcmp(s->text, json_string_value(c), want) != 0))
        abort();
    json_decref(root);
}

static void fuzz_error(const char *in, size_t size)
{
    struct answer_error e;
    answer_error_parse(in, size, &e);
    if (!e.message[0] || !e.type[0] || strnlen(e.code, sizeof e.code) == sizeof e.code)
        abort();
}

static void fuzz_body(enum engine_endpoint ep, uint8_t b1, const char *in, size_t size)
{
    json_t *root = json_loadb(in, size, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return;
    }
    char *before = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    struct answer_body b = {.root = root, .endpoint = ep, .model = "fuzz-model", .stream = b1 & 1,
                            .max_tokens = (b1 >> 1) & 3, .logprobs = (b1 >> 3) & 1, .top_logprobs = (b1 >> 4) & 7};
    size_t len = 0;
    char *s = answer_request_body(&b, &len);
    if (s) {
        json_t *o = json_loadb(s, len, 0, NULL);
        if (!json_is_object(o) || strcmp(json_string_value(json_object_get(o, "model")), "fuzz-model") != 0)
            abort();
        if (ep == ENGINE_EP_COMPLETIONS && (json_object_get(o, "messages") || !json_is_string(json_object_get(o, "prompt"))))
            abort();
        if (ep == ENGINE_EP_CHAT && !b.logprobs && (json_object_get(o, "logprobs") || json_object_get(o, "top_logprobs")))
            abort();
        if (ep != ENGINE_EP_EMBEDDINGS && b.stream &&
            !json_is_true(json_object_get(json_object_get(o, "stream_options"), "include_usage")))
            abort();
        json_decref(o);
        free(s);
    } else if (ep != ENGINE_EP_COMPLETIONS) {
        abort(); /* only a completions root without its prompt cannot be built */
    }
    char *after = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    if ((before || after) && (!before || !after || strcmp(before, after) != 0))
        abort();
    free(before);
    free(after);
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    enum engine_endpoint ep = (enum engine_endpoint)(data[0] % 3);
    int kind = (data[0] / 3) % 4;
    const char *in = (const char *)data + 2;
    size -= 2;
    if (kind == 2) {
        fuzz_error(in, size);
        return 0;
    }
    if (kind == 3) {
        fuzz_body(ep, data[1], in, size);
        return 0;
    }
    struct sink s = {.stream = kind == 0, .acc = json_object(), .stop_at = (data[1] & 0xe0) == 0xe0 ? 3 : 0};
    struct answer a;
    answer_init(&a, ep, data[1] & 7, on_token, &s);
    if (kind == 0)
        fuzz_stream(&a, &s, in, size);
    else
        fuzz_full(&a, &s, in, size);
    if (a.usage.prompt_tokens < 0 || a.usage.completion_tokens < 0 || a.delivered != (int64_t)s.n)
        abort();
    json_decref(s.acc);
    free(s.text);
    return 0;
}
