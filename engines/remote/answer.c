/* answer.c: upstream request bodies and answers; see answer.h.
 *
 * The shapes read here, as vLLM, SGLang and hosted APIs send them:
 *   chat stream chunk  {"id","object","created","model","system_fingerprint",
 *                       "choices":[{"index":0,"delta":{"role","content",
 *                       "reasoning_content","tool_calls":[{"index","id",
 *                       "type","function":{"name","arguments"}}]},
 *                       "logprobs":{"content":[...]},"finish_reason"}],
 *                       "usage"}
 *   chat response      the same with "message" for "delta"
 *   completions        choices[0].text, and the legacy logprobs object
 *                      {"tokens","token_logprobs","top_logprobs","text_offset"}
 *   embeddings         any JSON object; only usage.prompt_tokens is read
 */
#include "engines/remote/answer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/fmt.h"
#include "common/jsonr.h"
#include "common/jsonw.h"
#include "common/openai.h"

#define MAX_TOP 20      /* OpenAI's top_logprobs maximum; more are ignored */

void answer_init(struct answer *a, enum engine_endpoint ep, int64_t max_tokens, answer_emit_fn emit,
                 void *ctx)
{
    memset(a, 0, sizeof *a);
    a->endpoint = ep;
    a->max_tokens = max_tokens > 0 ? max_tokens : 0;
    a->emit = emit;
    a->ctx = ctx;
}

static enum answer_status bad(struct answer *a, const char *msg)
{
    snprintf(a->error, sizeof a->error, "%s", msg);
    return ANSWER_BAD;
}

/* ---- reading fields ------------------------------------------------------ */

/* A token count from usage: an integer in [0, 2^53), else 0, so an upstream
 * cannot make the caller's arithmetic overflow or go negative. */
static int64_t count_value(json_t *v)
{
    if (!json_is_integer(v))
        return 0;
    json_int_t n = json_integer_value(v);
    return n < 0 || n >= ((json_int_t)1 << 53) ? 0 : (int64_t)n;
}

static void read_usage(struct answer *a, json_t *root)
{
    json_t *u = json_object_get(root, "usage");
    if (!json_is_object(u))
        return; /* streams send "usage": null on every chunk but the last */
    a->usage.prompt_tokens = count_value(json_object_get(u, "prompt_tokens"));
    a->usage.completion_tokens = count_value(json_object_get(u, "completion_tokens"));
}

static void read_finish(struct answer *a, json_t *choice)
{
    json_t *fr = json_object_get(choice, "finish_reason");
    if (json_is_string(fr) && json_string_length(fr) > 0 && json_string_length(fr) < sizeof a->finish_reason)
        fmt_copy(a->finish_reason, sizeof a->finish_reason, json_string_value(fr));
}

/* Whether a value says nothing in a stream: null, "" or []. A delta's
 * `"reasoning_content": null` beside content, or vLLM's `"tool_calls": []`,
 * is the absence of the field, and delivering it would make every chunk
 * carry an extra. */
static int is_empty_value(json_t *v)
{
    return json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0);
}

/* The fields of o other than those in own, or NULL when none is left. In a
 * stream (drop_empty), fields that say nothing are left out too. */
static json_t *fields_except(json_t *o, const char *const *own, int drop_empty)
{
    if (!json_is_object(o))
        return NULL;
    json_t *out = NULL;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        int skip = drop_empty && is_empty_value(v);
        for (size_t i = 0; own[i] && !skip; i++)
            skip = strcmp(key, own[i]) == 0;
        if (skip)
            continue;
        if (!out)
            out = json_object();
        json_object_set(out, key, v);
    }
    return out;
}

static const char *const message_own[] = {"role", "content", NULL};
static const char *const object_own[] = {"id", "object", "created", "model", "choices", "usage", NULL};

/* tool_calls as a client's accumulator takes them (openai_delta_merge): an
 * array of objects, each with an integer index in range when streamed. A
 * relay of anything else would break every SDK that reads it. */
static int tool_calls_ok(json_t *extra, int stream)
{
    json_t *tc = json_object_get(extra, "tool_calls");
    if (!tc || json_is_null(tc))
        return 1;
    if (!json_is_array(tc) || json_array_size(tc) > OPENAI_MAX_TOOL_CALLS)
        return 0;
    size_t i;
    json_t *c;
    json_array_foreach(tc, i, c) {
        if (!json_is_object(c))
            return 0;
        json_t *idx = json_object_get(c, "index");
        if (stream && !(json_is_integer(idx) && json_integer_value(idx) >= 0 &&
                        json_integer_value(idx) < OPENAI_MAX_TOOL_CALLS))
            return 0;
        json_t *fn = json_object_get(c, "function");
        if (fn && !json_is_null(fn) && !json_is_object(fn))
            return 0;
    }
    return 1;
}

/* ---- tokens and their logprobs ------------------------------------------ */

/* The per-token logprobs of one choice, in either of OpenAI's shapes:
 * chat's logprobs.content array of {token, logprob, top_logprobs:[...]}, or
 * the legacy completions object of parallel arrays. */
struct lp_view {
    json_t *chat;               /* logprobs.content, or NULL */
    json_t *tokens, *lps, *tops; /* legacy arrays, or NULL */
    size_t n;
};

static void lp_view_init(struct lp_view *v, json_t *choice, enum engine_endpoint ep)
{
    memset(v, 0, sizeof *v);
    json_t *lp = json_object_get(choice, "logprobs");
    if (ep == ENGINE_EP_COMPLETIONS) {
        v->tokens = json_object_get(lp, "tokens");
        v->lps = json_object_get(lp, "token_logprobs");
        v->tops = json_object_get(lp, "top_logprobs");
        if (json_is_array(v->tokens) && json_is_array(v->lps) &&
            json_array_size(v->lps) == json_array_size(v->tokens))
            v->n = json_array_size(v->tokens);
    } else {
        v->chat = json_object_get(lp, "content");
        v->n = json_is_array(v->chat) ? json_array_size(v->chat) : 0;
    }
}

/* Piece i's token text (a JSON string, or NULL when it is not one), its
 * logprob, and up to MAX_TOP alternatives whose strings point into the
 * JSON. */
static json_t *lp_piece(const struct lp_view *v, size_t i, double *logprob, struct engine_top_logprob *tops,
                        size_t *n_top)
{
    *n_top = 0;
    *logprob = 0;
    json_t *tok, *lp, *top;
    if (v->chat) {
        json_t *e = json_array_get(v->chat, i);
        tok = json_object_get(e, "token");
        lp = json_object_get(e, "logprob");
        top = json_object_get(e, "top_logprobs");
        size_t ti;
        json_t *te;
        json_array_foreach(top, ti, te) {
            json_t *tt = json_object_get(te, "token");
            if (*n_top < MAX_TOP && json_is_string(tt)) {
                tops[*n_top].token = json_string_value(tt);
                tops[*n_top].logprob = json_number_value(json_object_get(te, "logprob"));
                (*n_top)++;
            }
        }
    } else {
        tok = json_array_get(v->tokens, i);
        lp = json_array_get(v->lps, i);
        top = json_array_get(v->tops, i); /* {token: logprob, ...} or null */
        const char *key;
        json_t *tv;
        json_object_foreach(top, key, tv) {
            if (*n_top < MAX_TOP) {
                tops[*n_top].token = key;
                tops[*n_top].logprob = json_number_value(tv);
                (*n_top)++;
            }
        }
    }
    *logprob = json_number_value(lp); /* 0 for null or a missing entry */
    if (!isfinite(*logprob))
        *logprob = -9999.0;
    return json_is_string(tok) ? tok : NULL;
}

/* Deliver one choice's output: its text as one token per logprob entry
 * when the entries' texts add up to it (what the cascade's judge needs),
 * else as one piece; extra and meta ride on the first token. With no text
 * but an extra (a tool call's fragment), one empty token carries it.
 * Returns nonzero when the receiver ended the request. */
static int emit_output(struct answer *a, const char *text, size_t len, const struct lp_view *lv, json_t *extra,
                       json_t *meta)
{
    if (lv->n && len) {
        size_t sum = 0;
        int ok = 1;
        double lp;
        struct engine_top_logprob tops[MAX_TOP];
        size_t k;
        for (size_t i = 0; i < lv->n && ok; i++) {
            json_t *t = lp_piece(lv, i, &lp, tops, &k);
            ok = t != NULL && json_string_length(t) <= len - sum;
            if (ok)
                sum += json_string_length(t);
        }
        if (ok && sum == len) {
            size_t off = 0;
            for (size_t i = 0; i < lv->n; i++) {
                json_t *t = lp_piece(lv, i, &lp, tops, &k);
                struct engine_token tok = {.text = text + off, .len = json_string_length(t), .has_logprob = 1,
                                           .logprob = lp, .top = tops, .n_top = k,
                                           .extra = i == 0 ? extra : NULL, .meta = i == 0 ? meta : NULL};
                off += tok.len;
                a->delivered++;
                if (a->emit(a->ctx, &tok))
                    return 1;
            }
            return 0;
        }
    }
    if (!len && !extra && !meta)
        return 0;
    struct engine_token tok = {.text = text ? text : "", .len = len, .extra = extra, .meta = meta};
    a->delivered++;
    return a->emit(a->ctx, &tok);
}

/* ---- streams ------------------------------------------------------------ */

/* The chunk nearly every chat stream is made of, read without a tree:
 *   {"id":..,"object":..,"created":..,"model":..,
 *    "choices":[{"index":..,"delta":{"role":..,"content":".."},
 *                "logprobs":null,"finish_reason":null|".."}],
 *    "usage":null|{"prompt_tokens":N,"completion_tokens":N,..}}
 * Fields the tree reader would drop (null, "" or [] in the object and the
 * delta, anything else in a choice or in usage, choices after the first)
 * are checked and skipped. Anything that would reach the caller as an extra
 * or a meta (a tool call, reasoning, system_fingerprint), logprobs, an
 * error, a key read twice, or bytes whose meaning jansson must decide:
 * returns 0 and the tree reader takes the event from the start. Nothing is
 * delivered before the whole event has been read, so that never repeats a
 * token. Returns 1 with *rc set when it read the event. */
enum { K_CHOICES = 1, K_USAGE = 2, K_ERROR = 4, K_DELTA = 8, K_LOGPROBS = 16, K_FINISH = 32, K_CONTENT = 64,
       K_PROMPT = 128, K_COMPLETION = 256 };

static int key_is(const char *k, size_t n, const char *name)
{
    return strlen(name) == n && memcmp(k, name, n) == 0;
}

/* A token count as count_value reads it: an integer in [0, 2^53), else 0. */
static int fast_count(struct jr_cursor *c, int64_t *out)
{
    *out = 0;
    int ch = jr_peek(c);
    if (ch != '-' && (ch < '0' || ch > '9'))
        return jr_skip(c, NULL);
    int real;
    int64_t iv;
    double dv;
    if (jr_read_number(c, &real, &iv, &dv) < 0)
        return -1;
    if (!real && iv >= 0 && iv < ((int64_t)1 << 53))
        *out = iv;
    return 0;
}

static int fast_usage(struct jr_cursor *c, unsigned *seen, int *have, int64_t *prompt, int64_t *completion)
{
    if (jr_peek(c) != '{')
        return jr_skip(c, NULL); /* null, or not an object: read_usage ignores it */
    c->p++;
    *have = 1;
    int first = 1, rc;
    const char *k;
    size_t kn;
    while ((rc = jr_next_key(c, &first, &k, &kn)) == 1) {
        unsigned bit = key_is(k, kn, "prompt_tokens") ? K_PROMPT : key_is(k, kn, "completion_tokens") ? K_COMPLETION : 0;
        if (bit & *seen)
            return -1;
        *seen |= bit;
        if (bit && fast_count(c, bit == K_PROMPT ? prompt : completion) < 0)
            return -1;
        if (!bit && jr_skip(c, NULL) < 0)
            return -1;
    }
    return rc;
}

struct fast_event {
    const char *text;
    size_t tlen;
    char *text_own;                 /* text decoded from escapes, copied off the cursor */
    char finish[sizeof ((struct answer *)0)->finish_reason];
    int have_choice, have_usage;
    int64_t prompt, completion;
};

static int fast_delta(struct jr_cursor *c, unsigned *seen, struct fast_event *ev)
{
    if (jr_expect(c, '{') < 0)
        return -1; /* a delta that is not an object: the tree reader's case */
    int first = 1, rc;
    const char *k;
    size_t kn;
    while ((rc = jr_next_key(c, &first, &k, &kn)) == 1) {
        if (key_is(k, kn, "content")) {
            if (*seen & K_CONTENT)
                return -1;
            *seen |= K_CONTENT;
            if (jr_peek(c) != '"') {
                if (jr_skip(c, NULL) < 0)
                    return -1;
                continue;
            }
            const char *s;
            size_t n;
            if (jr_read_string(c, &s, &n) < 0)
                return -1;
            if (s == c->buf) {
                /* decoded from escapes: the next key would overwrite it */
                ev->text_own = malloc(n + 1);
                if (!ev->text_own)
                    return -1;
                memcpy(ev->text_own, s, n);
                s = ev->text_own;
            }
            ev->text = s;
            ev->tlen = n;
        } else {
            int empty;
            if (jr_skip(c, &empty) < 0 || (!empty && !key_is(k, kn, "role")))
                return -1; /* an extra to deliver (tool call, reasoning) */
        }
    }
    return rc;
}

static int fast_choice(struct jr_cursor *c, unsigned *seen, struct fast_event *ev)
{
    if (jr_peek(c) != '{')
        return jr_skip(c, NULL); /* not an object: nothing to deliver */
    c->p++;
    ev->have_choice = 1;
    int first = 1, rc;
    const char *k;
    size_t kn;
    while ((rc = jr_next_key(c, &first, &k, &kn)) == 1) {
        unsigned bit = key_is(k, kn, "delta") ? K_DELTA : key_is(k, kn, "logprobs") ? K_LOGPROBS
                                                         : key_is(k, kn, "finish_reason") ? K_FINISH : 0;
        if (bit & *seen)
            return -1;
        *seen |= bit;
        if (bit == K_DELTA) {
            if (fast_delta(c, seen, ev) < 0)
                return -1;
        } else if (bit == K_LOGPROBS) {
            if (jr_peek(c) != 'n' || jr_skip(c, NULL) < 0)
                return -1; /* logprobs to read, or not null: the tree reader's */
        } else if (bit == K_FINISH && jr_peek(c) == '"') {
            const char *s;
            size_t n;
            if (jr_read_string(c, &s, &n) < 0)
                return -1;
            if (n > 0 && n < sizeof ev->finish) {
                memcpy(ev->finish, s, n);
                ev->finish[n] = '\0';
            }
        } else if (jr_skip(c, NULL) < 0) {
            return -1;
        }
    }
    return rc;
}

static int fast_choices(struct jr_cursor *c, unsigned *seen, struct fast_event *ev)
{
    if (jr_peek(c) != '[')
        return jr_skip(c, NULL); /* not an array: no choice */
    c->p++;
    if (jr_peek(c) == ']') {
        c->p++;
        return 0;
    }
    if (fast_choice(c, seen, ev) < 0)
        return -1;
    for (;;) {
        int ch = jr_peek(c);
        if (ch == ']') {
            c->p++;
            return 0;
        }
        if (ch != ',')
            return -1;
        c->p++;
        if (jr_skip(c, NULL) < 0) /* later choices: only the first is read */
            return -1;
    }
}

static int fast_event_read(struct jr_cursor *c, struct fast_event *ev)
{
    unsigned seen = 0;
    if (jr_expect(c, '{') < 0)
        return -1;
    int first = 1, rc;
    const char *k;
    size_t kn;
    while ((rc = jr_next_key(c, &first, &k, &kn)) == 1) {
        unsigned bit = key_is(k, kn, "choices") ? K_CHOICES : key_is(k, kn, "usage") ? K_USAGE
                                                           : key_is(k, kn, "error") ? K_ERROR : 0;
        if (bit & seen)
            return -1;
        seen |= bit;
        if (bit == K_CHOICES) {
            if (fast_choices(c, &seen, ev) < 0)
                return -1;
        } else if (bit == K_USAGE) {
            if (fast_usage(c, &seen, &ev->have_usage, &ev->prompt, &ev->completion) < 0)
                return -1;
        } else if (bit == K_ERROR) {
            if (jr_peek(c) != 'n' || jr_skip(c, NULL) < 0)
                return -1; /* an error event: the tree reader reports it */
        } else {
            int empty;
            if (jr_skip(c, &empty) < 0)
                return -1;
            if (!empty && !key_is(k, kn, "id") && !key_is(k, kn, "object") && !key_is(k, kn, "created") &&
                !key_is(k, kn, "model"))
                return -1; /* a meta to deliver (system_fingerprint) */
        }
    }
    return rc < 0 ? -1 : jr_at_end(c);
}

static int stream_event_fast(struct answer *a, const char *data, size_t len, enum answer_status *rc)
{
    if (a->tree_only || a->endpoint != ENGINE_EP_CHAT)
        return 0;
    struct jr_cursor c;
    struct fast_event ev = {0};
    jr_cursor_init(&c, data, len);
    int ok = fast_event_read(&c, &ev) == 0;
    jr_cursor_free(&c);
    if (!ok) {
        free(ev.text_own);
        return 0;
    }
    /* What the tree reader does with the same event, in its order. */
    *rc = ANSWER_OK;
    if (ev.have_usage) {
        a->usage.prompt_tokens = ev.prompt;
        a->usage.completion_tokens = ev.completion;
    }
    if (ev.have_choice) {
        int ended = 0;
        if (ev.tlen > 0) {
            if (a->max_tokens > 0 && a->output_events >= a->max_tokens) {
                *rc = ANSWER_CUT;
                ended = 1;
            } else {
                a->output_events++;
                struct engine_token tok = {.text = ev.text, .len = ev.tlen};
                a->delivered++;
                ended = a->emit(a->ctx, &tok);
            }
        }
        if (!ended && ev.finish[0])
            memcpy(a->finish_reason, ev.finish, sizeof a->finish_reason);
    }
    free(ev.text_own);
    return 1;
}

enum answer_status answer_stream_event(struct answer *a, const char *data, size_t len)
{
    enum answer_status fast_rc;
    if (a->saw_done)
        return ANSWER_OK; /* nothing after [DONE] counts */
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        a->saw_done = 1;
        return ANSWER_OK;
    }
    if (stream_event_fast(a, data, len, &fast_rc))
        return fast_rc;
    json_t *root = jr_load(data, len, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return bad(a, "upstream sent a malformed stream event");
    }
    json_t *err = json_object_get(root, "error");
    if (err && !json_is_null(err)) {
        json_t *m = json_object_get(err, "message");
        snprintf(a->error, sizeof a->error, "upstream error: %s",
                 json_is_string(m) ? json_string_value(m) : "unknown");
        json_decref(root);
        return ANSWER_BAD;
    }
    read_usage(a, root);
    enum answer_status rc = ANSWER_OK;
    json_t *extra = NULL, *meta = NULL;
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    if (!json_is_object(choice))
        goto out; /* the usage chunk, or a choice we cannot read: nothing to deliver */
    const char *text = NULL;
    size_t tlen = 0;
    if (a->endpoint == ENGINE_EP_COMPLETIONS) {
        json_t *t = json_object_get(choice, "text");
        if (json_is_string(t)) {
            text = json_string_value(t);
            tlen = json_string_length(t);
        }
    } else {
        json_t *delta = json_object_get(choice, "delta");
        json_t *c = json_object_get(delta, "content");
        if (json_is_string(c)) {
            text = json_string_value(c);
            tlen = json_string_length(c);
        }
        extra = fields_except(delta, message_own, 1);
        if (extra && !tool_calls_ok(extra, 1)) {
            rc = bad(a, "upstream sent a malformed tool call in a stream");
            goto out;
        }
    }
    if (tlen > 0 || extra) {
        /* Every event with output carries at least one token, so one more
         * than max_tokens means the upstream ignores the bound: the answer
         * ends here, as a bounded one would ("length"). */
        if (a->max_tokens > 0 && a->output_events >= a->max_tokens) {
            rc = ANSWER_CUT;
            goto out;
        }
        a->output_events++;
        meta = fields_except(root, object_own, 1);
        struct lp_view lv;
        lp_view_init(&lv, choice, a->endpoint);
        if (emit_output(a, text, tlen, &lv, extra, meta))
            goto out; /* the receiver ended the request: stop reading this event */
    }
    read_finish(a, choice);
out:
    json_decref(extra);
    json_decref(meta);
    json_decref(root);
    return rc;
}

/* ---- whole answers ------------------------------------------------------ */

enum answer_status answer_full(struct answer *a, const char *body, size_t len)
{
    if (a->endpoint == ENGINE_EP_EMBEDDINGS) {
        /* Relayed as it came, unparsed: an embeddings answer runs to tens of
         * MB, and parsing it here (on the worker's loop) would stall every
         * other request there. The caller checks its shape and reads its
         * usage where it relays it, off the loop (engine.h). */
        a->usage.prompt_tokens = a->usage.completion_tokens = 0;
        struct engine_token tok = {.text = body, .len = len};
        a->delivered++;
        a->emit(a->ctx, &tok);
        return ANSWER_OK;
    }
    json_t *root = jr_load(body, len, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return bad(a, "upstream returned a malformed completion");
    }
    read_usage(a, root);
    enum answer_status rc = ANSWER_OK;
    json_t *extra = NULL, *meta = NULL;
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    const char *text = NULL;
    size_t tlen = 0;
    if (a->endpoint == ENGINE_EP_COMPLETIONS) {
        json_t *t = json_object_get(choice, "text");
        if (!json_is_string(t)) {
            rc = bad(a, "upstream returned a malformed completion");
            goto out;
        }
        text = json_string_value(t);
        tlen = json_string_length(t);
    } else {
        json_t *msg = json_object_get(choice, "message");
        if (!json_is_object(msg)) {
            rc = bad(a, "upstream returned a malformed chat completion");
            goto out;
        }
        json_t *c = json_object_get(msg, "content");
        if (json_is_string(c)) {
            text = json_string_value(c);
            tlen = json_string_length(c);
        }
        /* A whole message's fields pass as they came (a null refusal
         * included): this is the message the client would have read. */
        extra = fields_except(msg, message_own, 0);
        if (extra && !tool_calls_ok(extra, 0)) {
            rc = bad(a, "upstream returned a malformed tool call");
            goto out;
        }
    }
    read_finish(a, choice);
    meta = fields_except(root, object_own, 0);
    struct lp_view lv;
    lp_view_init(&lv, choice, a->endpoint);
    emit_output(a, text, tlen, &lv, extra, meta);
out:
    json_decref(extra);
    json_decref(meta);
    json_decref(root);
    return rc;
}

/* ---- errors ------------------------------------------------------------- */

void answer_error_parse(const char *body, size_t len, struct answer_error *out)
{
    memset(out, 0, sizeof *out);
    json_t *root = jr_load(body, len, 0, NULL);
    /* OpenAI's {"error":{...}}; older vLLM put the same fields at the top
     * ({"object":"error","message",...}), FastAPI a bare {"detail":...}. */
    json_t *e = json_object_get(root, "error");
    if (!json_is_object(e))
        e = root;
    json_t *m = json_object_get(e, "message"), *t = json_object_get(e, "type"), *c = json_object_get(e, "code");
    if (!json_is_string(m))
        m = json_object_get(root, "detail");
    snprintf(out->message, sizeof out->message, "%s",
             json_is_string(m) && json_string_length(m) ? json_string_value(m) : "upstream rejected the request");
    snprintf(out->type, sizeof out->type, "%s",
             json_is_string(t) && json_string_length(t) ? json_string_value(t) : "invalid_request_error");
    snprintf(out->code, sizeof out->code, "%s", json_is_string(c) ? json_string_value(c) : "");
    json_decref(root);
}

/* ---- request bodies ----------------------------------------------------- */

const char *answer_path(enum engine_endpoint ep)
{
    switch (ep) {
    case ENGINE_EP_COMPLETIONS:
        return "/completions";
    case ENGINE_EP_EMBEDDINGS:
        return "/embeddings";
    case ENGINE_EP_CHAT:
    default:
        return "/chat/completions";
    }
}

int answer_can_stream(enum engine_endpoint ep)
{
    return ep != ENGINE_EP_EMBEDDINGS;
}

/* stream and stream_options, as the upstream must see them: a stream asks
 * for the usage chunk (what the caller bills by), keeping any other option
 * the client set (vLLM's continuous_usage_stats); a non-stream request has
 * none, since servers refuse stream_options without stream. */
static void set_stream(json_t *o, int stream)
{
    json_object_set_new(o, "stream", json_boolean(stream));
    if (!stream) {
        json_object_del(o, "stream_options");
        return;
    }
    json_t *so = json_object_get(o, "stream_options");
    json_t *nso = json_is_object(so) ? json_copy(so) : json_object(); /* never edit the client's */
    json_object_set_new(nso, "include_usage", json_true());
    json_object_set_new(o, "stream_options", nso);
}

/* The output bound is the caller's typed one (what its budget reservation
 * covers), never the client's number: written under the key(s) the client
 * used, so an upstream that knows only one of them (older servers:
 * max_tokens; OpenAI's reasoning models: max_completion_tokens) sees what
 * it expects. */
static void set_max_tokens(json_t *o, int64_t max_tokens)
{
    if (max_tokens <= 0)
        return;
    int mct = json_object_get(o, "max_completion_tokens") != NULL;
    int mt = json_object_get(o, "max_tokens") != NULL;
    if (mct)
        json_object_set_new(o, "max_completion_tokens", json_integer((json_int_t)max_tokens));
    if (mt || !mct)
        json_object_set_new(o, "max_tokens", json_integer((json_int_t)max_tokens));
}

char *answer_request_body(const struct answer_body *b, size_t *len)
{
    /* A shallow copy shares the (read-only) values of the client's request;
     * only the keys set here differ, and nested objects we change are
     * copied first. */
    json_t *o = json_copy(b->root);
    char *s = NULL;
    if (!json_is_object(o))
        goto out;
    if (b->model)
        json_object_set_new(o, "model", json_string(b->model));
    if (b->endpoint == ENGINE_EP_EMBEDDINGS)
        goto dump; /* input, dimensions, encoding_format: all the client's */
    set_stream(o, b->stream);
    set_max_tokens(o, b->max_tokens);
    json_object_del(o, "logprobs");
    json_object_del(o, "top_logprobs");
    if (b->endpoint == ENGINE_EP_COMPLETIONS) {
        /* The gateway parsed a completions body into chat form, the prompt
         * as the one user message (common/completions.c): put it back. */
        json_t *msg = json_array_get(json_object_get(o, "messages"), 0);
        json_t *prompt = json_object_get(msg, "content");
        if (!json_is_string(prompt))
            goto out;
        json_object_set(o, "prompt", prompt);
        json_object_del(o, "messages");
        if (b->logprobs) /* legacy logprobs: the number of alternatives */
            json_object_set_new(o, "logprobs", json_integer(b->top_logprobs > 0 ? b->top_logprobs : 0));
    } else if (b->logprobs) {
        json_object_set_new(o, "logprobs", json_true());
        if (b->top_logprobs > 0)
            json_object_set_new(o, "top_logprobs", json_integer(b->top_logprobs));
    }
dump: {
    /* jw_json, not json_dumps: the same JSON at a fraction of the cost
     * (30k of a stream's 307k instructions went to json_dumps; issue 18) */
    struct jsonw w;
    jw_init(&w, 512);
    jw_json(&w, o);
    s = jw_take(&w, len);
    json_decref(o);
    return s;
}
out:
    json_decref(o);
    *len = 0;
    return NULL;
}

int64_t answer_retry_after_s(const char *v, int64_t now)
{
    if (!v)
        return 0;
    while (*v == ' ' || *v == '\t')
        v++;
    int64_t s = 0;
    if (*v >= '0' && *v <= '9') {
        /* Digits only, up to optional whitespace: "10abc" is not a delay. */
        for (; *v >= '0' && *v <= '9' && s <= 86400; v++)
            s = s * 10 + (*v - '0');
        while (*v >= '0' && *v <= '9')
            v++;
        while (*v == ' ' || *v == '\t')
            v++;
        if (*v)
            return 0;
    } else {
        struct tm tm = {0};
        const char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        if (!end)
            return 0;
        s = (int64_t)timegm(&tm) - now;
    }
    return s < 0 ? 0 : s > 86400 ? 86400 : s;
}
