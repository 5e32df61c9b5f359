/* fuzz_answer_fast: the remote engine's tree-less reader of common stream
 * chunks (engines/remote/answer.c, stream_event_fast) against its tree
 * reader, on arbitrary bytes.
 *
 * The first byte sets max_tokens and whether the receiver cancels at some
 * token; the rest is a stream's events, separated by '\n'. The same events
 * go to two answers, one with tree_only set; everything the caller can see
 * must be the same: each event's status, every token delivered (text,
 * logprobs, extra and meta as compact JSON), and at the end usage,
 * finish_reason, [DONE], the counts and the error. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engines/remote/answer.h"

struct trace {
    char *p;
    size_t len, cap;
    size_t n;
    size_t stop_at;         /* the receiver cancels at this token (0: never) */
};

static void put(struct trace *t, const void *p, size_t n)
{
    if (t->len + n > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        while (cap < t->len + n)
            cap *= 2;
        t->p = realloc(t->p, cap);
        if (!t->p)
            abort();
        t->cap = cap;
    }
    memcpy(t->p + t->len, p, n);
    t->len += n;
}

static void put_json(struct trace *t, const json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    put(t, s ? s : "-", s ? strlen(s) + 1 : 2);
    free(s);
}

static int on_token(void *ctx, const struct engine_token *tok)
{
    struct trace *t = ctx;
    put(t, &tok->len, sizeof tok->len);
    put(t, tok->text, tok->len);
    put(t, &tok->has_logprob, sizeof tok->has_logprob);
    put(t, &tok->logprob, sizeof tok->logprob);
    put(t, &tok->n_top, sizeof tok->n_top);
    put_json(t, tok->extra);
    put_json(t, tok->meta);
    t->n++;
    return t->stop_at && t->n >= t->stop_at;
}

static void run(const char *in, size_t size, int64_t max_tokens, size_t stop_at, int tree_only, struct trace *t,
                struct answer *a)
{
    memset(t, 0, sizeof *t);
    t->stop_at = stop_at;
    answer_init(a, ENGINE_EP_CHAT, max_tokens, on_token, t);
    a->tree_only = tree_only;
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && in[i] != '\n')
            continue;
        enum answer_status rc = answer_stream_event(a, in + start, i - start);
        put(t, &rc, sizeof rc);
        start = i + 1;
        if (rc != ANSWER_OK || (t->stop_at && t->n >= t->stop_at))
            break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int64_t max_tokens = data[0] & 7;            /* 0: no bound */
    size_t stop_at = (data[0] >> 3) & 3;         /* 0: never */
    const char *in = (const char *)data + 1;
    size -= 1;
    struct trace fast, tree;
    struct answer af, at;
    run(in, size, max_tokens, stop_at, 0, &fast, &af);
    run(in, size, max_tokens, stop_at, 1, &tree, &at);
    if (fast.len != tree.len || (fast.len && memcmp(fast.p, tree.p, fast.len) != 0))
        abort();
    if (af.usage.prompt_tokens != at.usage.prompt_tokens ||
        af.usage.completion_tokens != at.usage.completion_tokens ||
        strcmp(af.finish_reason, at.finish_reason) != 0 || af.saw_done != at.saw_done ||
        af.output_events != at.output_events || af.delivered != at.delivered || strcmp(af.error, at.error) != 0)
        abort();
    free(fast.p);
    free(tree.p);
    return 0;
}
