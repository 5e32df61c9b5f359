/* native_engine.c: engine.h over the scheduler; see native_engine.h.
 *
 * A request (struct nreq) lives on two threads. The submitting event loop
 * owns its callbacks and its libevent event; the engine thread produces its
 * tokens through the scheduler's sink. They meet in a mailbox: the engine
 * thread appends events under the request's mutex and calls event_active();
 * deliver() drains the mailbox on the base's thread and calls the user's
 * callbacks. Each side holds a reference; the last one frees the request.
 *
 * Cancellation sets `cancelled` under the mutex. The engine thread checks it
 * under the same mutex before touching the event, so once engine_cancel()
 * has returned nothing reaches the base again and the event can be freed.
 *
 * Text: the engine thread turns ids into text with the streaming decoder
 * (whole UTF-8 characters only) and then holds back any tail that could be
 * the start of a stop string; released text rides on the token events.
 */
#include "engines/native/runtime/native_engine.h"

#include "common/openai.h"
#include "engines/native/model/model.h"
#include "engines/native/model/parallel.h"
#include "engines/native/runtime/json_constraint.h"
#include "engines/native/runtime/prompt.h"
#include "engines/native/runtime/sched.h"
#include "engines/native/backend/cpu/ops_cpu.h"
#include "engines/native/backend/device.h"
#include "common/log.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <event2/event.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum ev_kind { EV_TOKEN, EV_DONE, EV_ERROR };

/* One mailbox entry: everything a callback will need, copied, because the
 * engine thread has moved on by the time the base's thread reads it. */
struct nevent {
    struct nevent *next;
    enum ev_kind kind;
    char *text;
    size_t len;
    int has_logprob;
    double logprob;
    struct engine_top_logprob *top;
    size_t n_top;
    char *top_text;                 /* the top[] strings, back to back */
    struct engine_usage usage;
    const char *finish;
    struct engine_error err;        /* message points into msg */
    char msg[320];
};

struct native_engine;

/* One request. refs: the base's (until on_done/on_error is delivered or
 * the request is cancelled) and the engine thread's (until the scheduler's
 * on_end), plus one held by deliver() while it runs callbacks. */
struct nreq {
    struct native_engine *e;
    uint64_t id;            /* the engine.h id the caller knows */
    uint64_t sched_id;      /* the scheduler's id, for sched_cancel */
    int in_sched;           /* the scheduler holds it (no early error) */
    atomic_int refs;
    pthread_mutex_t mu;     /* guards the mailbox and `cancelled` */

    /* base side */
    struct event *ev;
    struct engine_callbacks cb;
    void *ctx;
    int cancelled;          /* written under mu, on the base thread */
    int delivering;         /* deliver() is on the stack: it frees the event */
    int finished;           /* on_done or on_error was delivered */
    struct nreq *live_prev, *live_next;     /* the engine's list, for cancel by id */

    /* mailbox, under mu */
    struct nevent *head, *tail;

    /* engine side */
    struct tok_decoder dec;
    char **stops;
    size_t n_stop;
    char *gen;              /* decoded text so far */
    size_t gen_len, gen_cap, emitted;
    int stopped;            /* a stop string matched: drop what follows */
    int prompt_tokens;
};

struct native_engine {
    struct engine base;     /* first: engine.h's wrappers cast to it */
    struct native_model *m;
    struct native_backend *be;
    struct tokenizer *tok;
    enum prompt_style style;
    struct sched *s;
    struct json_vocab *jv;      /* the vocabulary for response_format json_object */
    char *name;
    pthread_mutex_t mu;     /* the live list */
    struct nreq *live;
    atomic_uint_fast64_t next_id;
};

static const struct engine_ops native_ops;

/* ------------------------------------------------------------------------ */
/* Requests and their mailbox                                                */
/* ------------------------------------------------------------------------ */

static void event_free_all(struct nevent *ev)
{
    while (ev) {
        struct nevent *next = ev->next;
        free(ev->text);
        free(ev->top);
        free(ev->top_text);
        free(ev);
        ev = next;
    }
}

/* Drop one reference; the last one frees the request and whatever its
 * mailbox still holds (events nobody will deliver after a cancel). */
static void nreq_unref(struct nreq *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    event_free_all(r->head);
    for (size_t i = 0; i < r->n_stop; i++)
        free(r->stops[i]);
    free(r->stops);
    free(r->gen);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Engine thread (or submit, for early errors): queue ev and wake the base,
 * unless the request was cancelled. */
static void post(struct nreq *r, struct nevent *ev)
{
    pthread_mutex_lock(&r->mu);
    if (r->cancelled) {
        pthread_mutex_unlock(&r->mu);
        event_free_all(ev);
        return;
    }
    if (r->tail)
        r->tail->next = ev;
    else
        r->head = ev;
    r->tail = ev;
    event_active(r->ev, EV_TIMEOUT, 0);
    pthread_mutex_unlock(&r->mu);
}

static void post_error(struct nreq *r, int status, const char *type, const char *code,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* An error as the request's final event. From submit it reaches the
 * callback on the next loop turn, never inside engine_submit(). */
static void post_error(struct nreq *r, int status, const char *type, const char *code,
                       const char *fmt, ...)
{
    struct nevent *ev = calloc(1, sizeof(*ev));
    if (!ev)
        return;     /* nothing sensible is left to do; the request stays open */
    ev->kind = EV_ERROR;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ev->msg, sizeof(ev->msg), fmt, ap);
    va_end(ap);
    ev->err = (struct engine_error){.status = status, .type = type, .code = code, .message = ev->msg};
    post(r, ev);
}

static void live_unlink(struct native_engine *e, struct nreq *r)
{
    pthread_mutex_lock(&e->mu);
    if (r->live_prev)
        r->live_prev->live_next = r->live_next;
    else if (e->live == r)
        e->live = r->live_next;
    if (r->live_next)
        r->live_next->live_prev = r->live_prev;
    r->live_prev = r->live_next = NULL;
    pthread_mutex_unlock(&e->mu);
}

/* Base thread: hand the mailbox to the user's callbacks. */
static void deliver(evutil_socket_t fd, short what, void *arg)
{
    struct nreq *r = arg;
    (void)fd;
    (void)what;
    atomic_fetch_add(&r->refs, 1);      /* a callback may cancel and drop the base's ref */
    r->delivering = 1;
    pthread_mutex_lock(&r->mu);
    struct nevent *list = r->head;
    r->head = r->tail = NULL;
    pthread_mutex_unlock(&r->mu);

    for (struct nevent *ev = list; ev && !r->cancelled && !r->finished; ev = ev->next) {
        if (ev->kind == EV_TOKEN) {
            struct engine_token t = {.text = ev->text ? ev->text : "", .len = ev->len,
                                     .has_logprob = ev->has_logprob, .logprob = ev->logprob,
                                     .top = ev->top, .n_top = ev->n_top};
            if (r->cb.on_token)
                r->cb.on_token(r->ctx, &t);
        } else if (ev->kind == EV_DONE) {
            r->finished = 1;
            r->cb.on_done(r->ctx, &ev->usage, ev->finish);
        } else {
            r->finished = 1;
            r->cb.on_error(r->ctx, &ev->err);
        }
    }
    event_free_all(list);
    r->delivering = 0;
    if ((r->cancelled || r->finished) && r->ev) {
        event_free(r->ev);
        r->ev = NULL;
    }
    if (r->finished && !r->cancelled) {
        live_unlink(r->e, r);
        nreq_unref(r);                  /* the base's reference */
    }
    nreq_unref(r);
}

/* ------------------------------------------------------------------------ */
/* Engine-thread sink                                                        */
/* ------------------------------------------------------------------------ */

/* Room for extra more bytes of decoded text. The whole completion is kept
 * (not just a window) so a stop string is found wherever it starts. */
static int gen_reserve(struct nreq *r, size_t extra)
{
    if (r->gen_cap - r->gen_len >= extra)
        return 0;
    size_t cap = r->gen_cap ? r->gen_cap : 256;
    while (cap - r->gen_len < extra)
        cap *= 2;
    char *g = realloc(r->gen, cap);
    if (!g)
        return -1;
    r->gen = g;
    r->gen_cap = cap;
    return 0;
}

/* Bytes at the end of gen (past `emitted`) that could begin a stop string. */
static size_t stop_hold(const struct nreq *r)
{
    size_t best = 0, avail = r->gen_len - r->emitted;
    for (size_t i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stops[i]);
        for (size_t k = sl - 1 < avail ? sl - 1 : avail; k > best; k--) {
            if (memcmp(r->gen + r->gen_len - k, r->stops[i], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

/* Release what is safe to show: up to a stop string (then stop), or all but
 * a possible stop-string prefix. The released bytes go to text and len. */
static int release(struct nreq *r, char **text, size_t *len)
{
    size_t end = r->gen_len;
    int hit = 0;
    for (size_t i = 0; i < r->n_stop; i++) {
        const char *p = memmem(r->gen + r->emitted, r->gen_len - r->emitted, r->stops[i],
                               strlen(r->stops[i]));
        if (p && (size_t)(p - r->gen) < end) {
            end = (size_t)(p - r->gen);
            hit = 1;
        }
    }
    if (!hit)
        end -= stop_hold(r);
    *len = end - r->emitted;
    *text = *len ? malloc(*len) : NULL;
    if (*len && *text)
        memcpy(*text, r->gen + r->emitted, *len);
    else
        *len = 0;
    r->emitted = end;
    if (hit)
        r->stopped = 1;
    return hit;
}

/* A token's own bytes as valid UTF-8, invalid bytes as U+FFFD; for the
 * top_logprobs strings (a byte token of a multi-byte character is not text
 * on its own). Writes at most 3 * len + 1 bytes. */
static size_t sanitize(const char *s, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
        if (n && i + n <= len && tok_utf8_valid(s + i, n)) {
            memcpy(out + o, s + i, n);
            o += n;
            i += n;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    return o;
}

/* Engine thread: one generated id becomes text (whole characters only),
 * minus anything that might be the start of a stop string, plus its
 * logprobs with the alternatives' text; then it is posted to the base.
 * Returns 1 to end the request (a stop string matched, or it was cancelled). */
static int sink_token(void *ctx, const struct sched_token *tok)
{
    struct nreq *r = ctx;
    pthread_mutex_lock(&r->mu);
    int cancelled = r->cancelled;
    pthread_mutex_unlock(&r->mu);
    if (cancelled)
        return 1;

    const struct tokenizer *t = r->e->tok;
    int32_t prev = r->dec.prev;
    size_t tl = 0;
    t->ops->token_bytes(t, prev, tok->id, &tl);
    if (gen_reserve(r, TOK_DECODE_CAP(tl) + 1) != 0)
        return 1;
    r->gen_len += tok_decoder_push(&r->dec, tok->id, r->gen + r->gen_len, r->gen_cap - r->gen_len);

    struct nevent *ev = calloc(1, sizeof(*ev));
    if (!ev)
        return 1;
    ev->kind = EV_TOKEN;
    int hit = release(r, &ev->text, &ev->len);

    if (tok->lp) {
        /* The alternatives' strings live in one buffer owned by the event;
         * each is decoded with the same previous id as the chosen token. */
        ev->has_logprob = 1;
        ev->logprob = tok->lp->logprob;
        int n = tok->lp->n_top > 0 ? tok->lp->n_top : 0;
        size_t bytes = 0;
        for (int i = 0; i < n; i++) {
            size_t l = 0;
            t->ops->token_bytes(t, prev, tok->lp->top_id[i], &l);
            bytes += 3 * l + 1;
        }
        ev->top = n ? calloc((size_t)n, sizeof(*ev->top)) : NULL;
        ev->top_text = n ? malloc(bytes) : NULL;
        if (n && (!ev->top || !ev->top_text)) {
            n = 0;
        }
        size_t off = 0;
        for (int i = 0; i < n; i++) {
            size_t l = 0;
            const char *b = t->ops->token_bytes(t, prev, tok->lp->top_id[i], &l);
            char *dst = ev->top_text + off;
            off += sanitize(b ? b : "", b ? l : 0, dst) + 1;
            ev->top[i] = (struct engine_top_logprob){dst, tok->lp->top_logprob[i]};
        }
        ev->n_top = (size_t)n;
    }
    if (ev->len == 0 && !ev->has_logprob) {
        free(ev->text);
        free(ev);       /* nothing to show yet: held bytes come out later */
    } else {
        post(r, ev);
    }
    return hit;
}

/* Engine thread, exactly once per scheduled request: the final event. A
 * cancelled request gets nothing (its base side is gone); the others get
 * their held-back text, then on_done, or on_error if the engine is going. */
static void sink_end(void *ctx, const struct sched_end *end)
{
    struct nreq *r = ctx;
    if (end->reason == SCHED_END_SHUTDOWN) {
        post_error(r, 503, "server_error", "engine_shutdown", "the engine is shutting down");
    } else if (end->reason != SCHED_END_CANCELLED) {
        /* Whatever the decoder or the stop-string check still holds is
         * text the client should see, unless a stop string cut it off. */
        if (!r->stopped && gen_reserve(r, 16) == 0) {
            r->gen_len += tok_decoder_flush(&r->dec, r->gen + r->gen_len, r->gen_cap - r->gen_len);
            if (r->gen_len > r->emitted) {
                struct nevent *tail = calloc(1, sizeof(*tail));
                if (tail) {
                    tail->kind = EV_TOKEN;
                    tail->len = r->gen_len - r->emitted;
                    tail->text = malloc(tail->len);
                    if (tail->text)
                        memcpy(tail->text, r->gen + r->emitted, tail->len);
                    else
                        tail->len = 0;
                    r->emitted = r->gen_len;
                    post(r, tail);
                }
            }
        }
        struct nevent *ev = calloc(1, sizeof(*ev));
        if (ev) {
            ev->kind = EV_DONE;
            ev->usage = (struct engine_usage){end->prompt_tokens, end->completion_tokens};
            ev->finish = end->reason == SCHED_END_LENGTH ? "length" : "stop";
            post(r, ev);
        }
    }
    nreq_unref(r);      /* the engine thread's reference */
}

/* ------------------------------------------------------------------------ */
/* Submit and cancel                                                         */
/* ------------------------------------------------------------------------ */

/* Without a seed, sampling should differ from call to call: wall time
 * mixed with the request id. */
static uint64_t fresh_seed(uint64_t id)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^ (id * 0x9e3779b97f4a7c15ull);
}

/* ------------------------------------------------------------------------ */
/* What the engine honours, and what it refuses                              */
/* ------------------------------------------------------------------------ */

/* Top-level fields of a request body this engine honours or may safely
 * ignore. Anything else is refused by name: a parameter that silently does
 * nothing would give the client an answer it did not ask for.
 *   honoured: the rest of the list but those below;
 *   ignored:  user (an end-user id for abuse tracking: nothing to do here),
 *             metadata (tags for stored completions, which change nothing
 *             in the answer), store when false (see refuse_field). */
static const char *const allowed_fields[] = {
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "top_k",
    "max_tokens", "max_completion_tokens", "stop", "seed", "user", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "logit_bias", "response_format", "n", "metadata",
};

/* A 400 naming param, in OpenAI's shape; -1 for `return refuse(...)`. */
static int refuse(struct openai_error *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int refuse(struct openai_error *err, const char *param, const char *fmt, ...)
{
    char msg[sizeof(err->message)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    openai_error_set(err, 400, "invalid_request_error", "unsupported_parameter", param, "%s", msg);
    return -1;
}

/* Fields outside the allow-list that are harmless with one value: the
 * value that asks for nothing (no tools, text only, do not store). 1 when
 * this value may pass. */
static int harmless(const char *key, json_t *v)
{
    if (!strcmp(key, "tools") || !strcmp(key, "functions"))
        return json_is_array(v) && json_array_size(v) == 0;
    if (!strcmp(key, "tool_choice") || !strcmp(key, "function_call"))
        return json_is_string(v) && !strcmp(json_string_value(v), "none");
    if (!strcmp(key, "modalities"))
        return json_is_array(v) && json_array_size(v) == 1 &&
               json_is_string(json_array_get(v, 0)) &&
               !strcmp(json_string_value(json_array_get(v, 0)), "text");
    /* store: true asks that the exchange be kept for the client's later use;
     * dropping that silently would lose what was asked for. */
    if (!strcmp(key, "store"))
        return json_is_false(v);
    return 0;
}

int native_engine_check_request(struct engine *eng, const struct chat_request *chat,
                                struct openai_error *err)
{
    static const char *const tool_fields[] = {"tools", "functions", "tool_choice",
                                              "function_call", "parallel_tool_calls"};
    const char *key;
    json_t *v;
    /* Tools first: they are the commonest reason a request cannot run here,
     * and the message should say so rather than name a side field. */
    for (size_t i = 0; i < sizeof(tool_fields) / sizeof(tool_fields[0]); i++) {
        v = chat->root ? json_object_get(chat->root, tool_fields[i]) : NULL;
        if (v && !json_is_null(v) && !harmless(tool_fields[i], v))
            return refuse(err, tool_fields[i],
                          "tools are not supported by this tier's engine (native): '%s' "
                          "cannot be honoured", tool_fields[i]);
    }
    if (chat->has_tools)
        return refuse(err, "tools", "tools are not supported by this tier's engine (native)");
    if (chat->n_media_parts || (chat->parts & ~(unsigned)OPENAI_PART_TEXT)) {
        unsigned bit = chat->parts & ~(unsigned)OPENAI_PART_TEXT;
        bit &= -bit;    /* the first kind of non-text part */
        return refuse(err, "messages",
                      "%s content parts are not supported by this tier's engine (native): it "
                      "takes text only", bit ? openai_part_name(bit) : "non-text");
    }
    if (chat->response_format == OPENAI_RF_JSON_SCHEMA)
        return refuse(err, "response_format",
                      "response_format json_schema is not supported by this tier's engine "
                      "(native); json_object is");
    if (chat->root) {
        json_object_foreach(chat->root, key, v) {
            if (json_is_null(v))
                continue;       /* null is "not given", as the parser reads it */
            int ok = harmless(key, v);
            for (size_t i = 0; !ok && i < sizeof(allowed_fields) / sizeof(allowed_fields[0]); i++)
                ok = !strcmp(key, allowed_fields[i]);
            if (!ok)
                return refuse(err, key, "'%.60s' is not supported by this tier's engine (native)",
                              key);
        }
    }
    if (eng) {
        const struct native_engine *e = (const struct native_engine *)eng;
        const int V = e->m->cfg.vocab_size;
        for (size_t i = 0; i < chat->n_logit_bias; i++)
            if (chat->logit_bias[i].token >= V)
                return refuse(err, "logit_bias",
                              "logit_bias: token id %lld is outside this model's vocabulary "
                              "(ids 0 to %d)", (long long)chat->logit_bias[i].token, V - 1);
    }
    return 0;
}

/* Submit, shared by chat and raw-text prompts (encode differs). The request
 * and its event exist before anything can fail, so every failure after
 * that is an error event on the next loop turn, as engine.h requires; only
 * a request that cannot be built at all returns a negative code. */
static int submit_ids(struct native_engine *e, const struct engine_request *req,
                      const struct engine_callbacks *cb, void *ctx, uint64_t *id,
                      int (*encode)(struct native_engine *e, const void *arg, struct tok_ids *out),
                      const void *arg)
{
    const struct chat_request *chat = req->chat;
    if (!req->base || !cb || !cb->on_done || !cb->on_error || !chat)
        return -EINVAL;
    struct nreq *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->e = e;
    r->cb = *cb;
    r->ctx = ctx;
    atomic_init(&r->refs, 1);
    if (pthread_mutex_init(&r->mu, NULL) != 0) {
        free(r);
        return -ENOMEM;
    }
    /* Persistent, with a timeout a day away that never matters: a pending
     * event keeps the caller's loop running while the request is in flight,
     * as a pending socket would. event_active() is what wakes it. */
    static const struct timeval far = {86400, 0};
    r->ev = event_new(req->base, -1, EV_PERSIST, deliver, r);
    if (!r->ev || event_add(r->ev, &far) != 0) {
        if (r->ev)
            event_free(r->ev);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return -ENOMEM;
    }
    r->id = atomic_fetch_add(&e->next_id, 1);
    tok_decoder_init(&r->dec, e->tok);

    pthread_mutex_lock(&e->mu);
    r->live_next = e->live;
    if (e->live)
        e->live->live_prev = r;
    e->live = r;
    pthread_mutex_unlock(&e->mu);
    *id = r->id;

    /* What this engine cannot honour is refused before any work, by name. */
    struct openai_error oe;
    if (req->endpoint == ENGINE_EP_EMBEDDINGS) {
        post_error(r, 400, "invalid_request_error", "unsupported_endpoint",
                   "embeddings are not served by this tier's engine (native)");
        return 0;
    }
    if (native_engine_check_request(&e->base, chat, &oe) != 0) {
        post_error(r, oe.status, oe.type, oe.code, "%s", oe.message);
        return 0;
    }

    struct tok_ids ids = {0};
    int rc = encode(e, arg, &ids);
    if (rc != TOK_OK) {
        if (rc == TOK_ENOMEM)
            post_error(r, 500, "server_error", NULL, "out of memory while tokenizing");
        else
            post_error(r, 400, "invalid_request_error", "invalid_prompt",
                       "the prompt cannot be tokenized (invalid UTF-8 or an unknown role)");
        tok_ids_free(&ids);
        return 0;
    }
    /* The typed bound (engine.h), never the body's: what the caller
     * reserved for. None given means "until the context is full", as
     * OpenAI's API. A bound past the context is refused below, so the int
     * cast for the scheduler cannot truncate. */
    const int ctx_len = sched_context(e->s);
    int64_t max_tokens = req->max_tokens > 0 ? req->max_tokens : (int64_t)ctx_len - (int64_t)ids.n;
    /* Compared as "max_tokens > room", never "n + max_tokens > ctx": a
     * client of cascade-engine may send max_tokens near INT64_MAX, and the
     * sum would overflow. */
    if ((int64_t)ids.n >= ctx_len || max_tokens > (int64_t)ctx_len - (int64_t)ids.n) {
        int64_t out = max_tokens > 0 ? max_tokens : 0, asked;
        if (__builtin_add_overflow((int64_t)ids.n, out, &asked))
            asked = INT64_MAX;
        post_error(r, 400, "invalid_request_error", "context_length_exceeded",
                   "This model's maximum context length is %d tokens. However, you requested "
                   "%lld tokens (%zu in the prompt, %lld in the completion). Please reduce the "
                   "length of the prompt or completion.",
                   ctx_len, (long long)asked, ids.n, (long long)out);
        tok_ids_free(&ids);
        return 0;
    }

    if (chat->n_stop) {
        r->stops = calloc(chat->n_stop, sizeof(*r->stops));
        for (size_t i = 0; r->stops && i < chat->n_stop; i++) {
            if (chat->stop[i] && chat->stop[i][0] && (r->stops[r->n_stop] = strdup(chat->stop[i])))
                r->n_stop++;
        }
    }
    /* Decoding continues from the prompt: llama2.c drops the leading space
     * of the first piece only right after BOS, so the decoder must know
     * what came last. */
    if (ids.n)
        r->dec.prev = ids.v[ids.n - 1];
    r->prompt_tokens = (int)ids.n;

    struct sched_request sr = {0};
    sr.prompt = ids.v;
    sr.n_prompt = (int)ids.n;
    sr.max_tokens = (int)max_tokens;
    sr.sampling.temperature = chat->has_temperature ? chat->temperature : 1.0;
    sr.sampling.top_p = chat->has_top_p ? chat->top_p : 1.0;
    /* top_k is not in OpenAI's schema; chat_request keeps the body, so a
     * client that sends it (as to vLLM) gets it. */
    json_t *tk = chat->root ? json_object_get(chat->root, "top_k") : NULL;
    sr.sampling.top_k = json_is_integer(tk) && json_integer_value(tk) > 0 &&
                                json_integer_value(tk) < INT32_MAX
                            ? (int)json_integer_value(tk)
                            : 0;
    sr.seed = chat->has_seed ? (uint64_t)chat->seed : fresh_seed(r->id);
    sr.logprobs = req->logprobs;
    sr.top_logprobs = req->logprobs ? req->top_logprobs : 0;
    if (sr.top_logprobs > SAMPLER_MAX_TOP)
        sr.top_logprobs = SAMPLER_MAX_TOP;
    sr.presence_penalty = chat->has_presence_penalty ? (float)chat->presence_penalty : 0.0f;
    sr.frequency_penalty = chat->has_frequency_penalty ? (float)chat->frequency_penalty : 0.0f;
    /* The parser bounds logit_bias (OPENAI_MAX_LOGIT_BIAS entries) and the
     * check above its ids; the scheduler copies the list. */
    struct sampler_bias bias[OPENAI_MAX_LOGIT_BIAS];
    for (size_t i = 0; i < chat->n_logit_bias && i < OPENAI_MAX_LOGIT_BIAS; i++)
        bias[sr.n_bias++] = (struct sampler_bias){(int32_t)chat->logit_bias[i].token,
                                                  (float)chat->logit_bias[i].bias};
    sr.bias = bias;
    sr.json_object = chat->response_format == OPENAI_RF_JSON_OBJECT;
    sr.sink = (struct sched_sink){sink_token, sink_end, r};

    atomic_fetch_add(&r->refs, 1);      /* the engine thread's reference */
    rc = sched_submit(e->s, &sr, &r->sched_id);
    tok_ids_free(&ids);
    if (rc != SCHED_OK) {
        atomic_fetch_sub(&r->refs, 1);
        if (rc == SCHED_EFULL)
            post_error(r, 503, "server_error", "engine_overloaded",
                       "the engine is overloaded: too many requests are waiting; retry later");
        else if (rc == SCHED_ETOOLONG)
            post_error(r, 400, "invalid_request_error", "context_length_exceeded",
                       "This model's maximum context length is %d tokens.", ctx_len);
        else
            post_error(r, 500, "server_error", NULL, "the engine could not take the request");
        return 0;
    }
    r->in_sched = 1;
    return 0;
}

static int encode_chat(struct native_engine *e, const void *arg, struct tok_ids *out)
{
    const struct chat_request *chat = arg;
    return prompt_encode_chat(e->tok, e->style, chat->messages, chat->n_messages, out);
}

struct text_arg {
    const char *text;
    size_t len;
};

static int encode_text(struct native_engine *e, const void *arg, struct tok_ids *out)
{
    const struct text_arg *t = arg;
    return prompt_encode_text(e->tok, e->style, t->text, t->len, out);
}

/* /v1/completions through engine.h: the prompt is the one user message
 * (completions.h's chat view), sent without a chat template. */
static int encode_completion(struct native_engine *e, const void *arg, struct tok_ids *out)
{
    const struct chat_request *chat = arg;
    if (chat->n_messages != 1)
        return TOK_EINVAL;
    return prompt_encode_text(e->tok, e->style, chat->messages[0].content,
                              chat->messages[0].content_len, out);
}

static int native_submit(struct engine *eng, const struct engine_request *req,
                         const struct engine_callbacks *cb, void *ctx, uint64_t *id)
{
    struct native_engine *e = (struct native_engine *)eng;
    return submit_ids(e, req, cb, ctx, id,
                      req->endpoint == ENGINE_EP_COMPLETIONS ? encode_completion : encode_chat,
                      req->chat);
}

int native_engine_submit_text(struct engine *eng, const struct engine_request *req, const char *text,
                              size_t len, const struct engine_callbacks *cb, void *ctx,
                              uint64_t *id)
{
    struct native_engine *e = (struct native_engine *)eng;
    struct text_arg arg = {text, len};
    return submit_ids(e, req, cb, ctx, id, encode_text, &arg);
}

/* Base thread. After this returns no callback of the request runs: the
 * flag is set under the request's mutex, which the engine thread holds
 * whenever it posts, and the event is freed (or, inside a callback, freed
 * by deliver() when the callback returns). */
static void native_cancel(struct engine *eng, uint64_t id)
{
    struct native_engine *e = (struct native_engine *)eng;
    struct nreq *r;
    pthread_mutex_lock(&e->mu);
    for (r = e->live; r && r->id != id; r = r->live_next)
        ;
    pthread_mutex_unlock(&e->mu);
    if (!r || r->cancelled || r->finished)
        return;
    live_unlink(e, r);
    pthread_mutex_lock(&r->mu);
    r->cancelled = 1;
    pthread_mutex_unlock(&r->mu);
    if (r->in_sched)
        sched_cancel(e->s, r->sched_id);
    if (!r->delivering) {
        event_free(r->ev);
        r->ev = NULL;
    }
    nreq_unref(r);      /* the base's reference; deliver() holds its own if running */
}

/* A device that faulted (ops_cuda_error) cannot serve again: unhealthy, so
 * the gateway routes around it. */
static int native_health(struct engine *eng)
{
    struct native_engine *e = (struct native_engine *)eng;
    return e->s != NULL && native_device_error(e->be) == NULL;
}

/* Stops the scheduler (requests still running end with a 503 posted to
 * their bases), then frees the model. */
static void native_destroy(struct engine *eng)
{
    struct native_engine *e = (struct native_engine *)eng;
    sched_free(e->s);
    json_vocab_free(e->jv);
    native_backend_free(e->be);
    tokenizer_free(e->tok);
    native_model_free(e->m);
    pthread_mutex_destroy(&e->mu);
    free(e->name);
    free(e);
}

static int native_count_prompt(struct engine *eng, const struct chat_request *chat,
                               struct engine_prompt_count *out)
{
    struct native_engine *e = (struct native_engine *)eng;
    struct tok_ids ids = {0};
    int rc = prompt_encode_chat(e->tok, e->style, chat->messages, chat->n_messages, &ids);
    out->tokens = (int64_t)ids.n;
    out->context = sched_context(e->s);
    tok_ids_free(&ids);
    return rc == TOK_OK ? 0 : -1;
}

static int native_queue_depth(struct engine *eng)
{
    struct sched_stats st;
    sched_stats(((struct native_engine *)eng)->s, &st);
    return st.queued;
}

static const struct engine_ops native_ops = {
    .name = "native",
    .submit = native_submit,
    .cancel = native_cancel,
    .health = native_health,
    .destroy = native_destroy,
    .count_prompt = native_count_prompt,
    .queue_depth = native_queue_depth,
    .token_pieces = 1,
    .check = native_engine_check_request,
};

/* ------------------------------------------------------------------------ */

/* What an operator needs to size a node: the architecture, the weights'
 * dtype and size, parameters (all, and read per token), and what each
 * position costs in the KV cache. */
static void log_model(const struct native_engine *e)
{
    const struct native_model *m = e->m;
    const struct native_layer *l0 = &m->layers[m->cfg.n_layers > 1 ? m->cfg.n_layers - 1 : 0];
    const struct native_mat *w = m->cfg.arch == NATIVE_ARCH_DEEPSEEK_V3 ? &l0->mla.o : &l0->wo;
    char dev[160];
    native_parallel_describe(e->be, dev, sizeof(dev));
    log_info("model %s: arch %s, weights %s (%.1f MiB), %.3g parameters (%.3g active per token), "
             "KV cache %zu bytes per token, context %d, backend %s",
             e->name, native_arch_name(m->cfg.arch), native_dtype_name(w->dtype),
             (double)m->weight_bytes / (1 << 20), (double)m->n_params, (double)m->n_active_params,
             native_model_kv_bytes_per_token(&m->cfg), sched_context(e->s), dev);
}

/* The bytes the decoder will emit for a token, for the JSON constraint;
 * NULL for tokens that never belong in an answer (end of sequence, BOS).
 * prev -1: generated text never follows BOS directly in a chat prompt, so
 * llama2.c's "no leading space after BOS" does not apply. */
struct jv_ctx {
    const struct tokenizer *t;
    const struct native_model *m;
};

static const char *jv_bytes(void *ctx, int32_t id, size_t *len)
{
    const struct jv_ctx *c = ctx;
    *len = 0;
    if (native_model_is_eos(c->m, id) || id == c->t->bos_id)
        return NULL;
    return tokenizer_token_bytes(c->t, -1, id, len);
}

/* Ranks asked for explicitly (tp/ep are 1 or 0 by default on the CPU). */
static int explicit_ranks(const struct native_engine_config *cfg)
{
    return cfg->tp > cfg->ep ? cfg->tp : cfg->ep > 1 ? cfg->ep : 1;
}

/* Model, tokenizer and chat format, then the scheduler and its threads;
 * unwinds in reverse on failure. */
struct engine *native_engine_new(const struct native_engine_config *cfg, char *err, size_t errlen)
{
    struct native_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->base.ops = &native_ops;
    atomic_init(&e->next_id, 1);
    if (!cfg->model_path) {
        snprintf(err, errlen, "native engine: no model path");
        goto fail;
    }
    if (native_model_load(cfg->model_path, &e->m, err, errlen) != 0)
        goto fail;
    if (prompt_tokenizer_load(e->m, cfg->tokenizer_path, &e->tok, &e->style, err, errlen) != 0)
        goto fail;
    if (cfg->model_name) {
        e->name = strdup(cfg->model_name);
    } else {
        const char *p = e->m->path;
        size_t n = strlen(p);
        while (n > 1 && p[n - 1] == '/')
            n--;
        size_t b = n;
        while (b > 0 && p[b - 1] != '/')
            b--;
        e->name = strndup(p + b, n - b);
    }
    if (!e->name || pthread_mutex_init(&e->mu, NULL) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* The engine picks the backend; the scheduler is handed it. */
    struct native_device dev;
    int threads = cfg->threads;
    if (explicit_ranks(cfg) > 1) {
        /* CPU ranks share the machine's (or the configured) threads. */
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        threads = (int)((threads ? threads : ncpu > 0 ? ncpu : 1) / explicit_ranks(cfg));
        threads = threads > 0 ? threads : 1;
    }
    if (native_device_parse(cfg->device, &dev, err, errlen) != 0 ||
        !(e->be = native_parallel_on_device(e->m, &dev, cfg->tp, cfg->ep, threads, cfg->cpu_flags,
                                            err, errlen))) {
        pthread_mutex_destroy(&e->mu);
        goto fail;
    }
    /* On a GPU with no kv_mib given, the KV pool is planned from free device
     * memory, before anything else is allocated: what max_batch sequences
     * at the full context need, capped by what the weights leave, less a
     * tenth of the device (and 1 GiB) for activations, scratch and cuBLAS. */
    size_t kv_budget = cfg->kv_budget_bytes, dev_free = 0, dev_total = 0;
    if (!kv_budget && native_device_memory(e->be, &dev_free, &dev_total) == 0) {
        const size_t ctx = (size_t)(cfg->n_ctx > 0 && cfg->n_ctx < e->m->cfg.max_pos ? cfg->n_ctx
                                                                                    : e->m->cfg.max_pos);
        const size_t want = (size_t)(cfg->max_batch > 0 ? cfg->max_batch : 16) * (ctx + 64) *
                            native_model_kv_bytes_per_token(&e->m->cfg);
        const size_t keep = e->m->weight_bytes + dev_total / 10 + ((size_t)1 << 30);
        const size_t room = dev_free > keep ? dev_free - keep : 0;
        kv_budget = want < room ? want : room;
        if (kv_budget < ((size_t)64 << 20)) {
            snprintf(err, errlen, "%.1f GiB of device memory free: not enough for %.1f GiB of weights and a KV cache",
                     (double)dev_free / (1 << 30), (double)e->m->weight_bytes / (1 << 30));
            pthread_mutex_destroy(&e->mu);
            goto fail;
        }
        log_info("KV cache planned at %.1f MiB (%.1f GiB free on the device, weights %.1f GiB)",
                 (double)kv_budget / (1 << 20), (double)dev_free / (1 << 30),
                 (double)e->m->weight_bytes / (1 << 30));
    }
    /* The JSON constraint's tables, once per vocabulary (json_constraint.h). */
    struct jv_ctx jc = {e->tok, e->m};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    e->jv = json_vocab_new(e->m->cfg.vocab_size, jv_bytes, &jc);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!e->jv) {
        snprintf(err, errlen, "out of memory (the JSON constraint's tables)");
        pthread_mutex_destroy(&e->mu);
        goto fail;
    }
    log_info("JSON constraint tables: %.1f MiB, built in %.1f ms",
             (double)json_vocab_bytes(e->jv) / (1 << 20),
             (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    struct sched_config sc = {cfg->max_batch, cfg->max_queue, cfg->max_step_tokens,
                              kv_budget, cfg->n_ctx, cfg->mla, e->jv};
    e->s = sched_new(e->m, e->be, &sc, err, errlen);
    if (!e->s) {
        pthread_mutex_destroy(&e->mu);
        goto fail;
    }
    log_model(e);
    return &e->base;

fail:
    json_vocab_free(e->jv);
    native_backend_free(e->be);
    tokenizer_free(e->tok);
    native_model_free(e->m);
    free(e->name);
    free(e);
    return NULL;
}

int native_engine_context(struct engine *eng)
{
    return sched_context(((struct native_engine *)eng)->s);
}

const char *native_engine_model_name(struct engine *eng)
{
    return ((struct native_engine *)eng)->name;
}

/* Paths in a config are relative to the config's folder, not to wherever
 * cascaded happens to be started. */
static char *resolve(const char *base_dir, const char *p)
{
    if (!p)
        return NULL;
    if (p[0] == '/' || !base_dir || !*base_dir)
        return strdup(p);
    size_t n = strlen(base_dir) + strlen(p) + 2;
    char *out = malloc(n);
    if (out)
        snprintf(out, n, "%s/%s", base_dir, p);
    return out;
}

/* A tier's engine section, parsed: the config and the strings it owns. */
struct engine_json {
    struct native_engine_config cfg;
    json_t *root;           /* owns name and device */
    char *model, *tok;      /* resolved paths */
};

static void engine_json_free(struct engine_json *ej)
{
    free(ej->model);
    free(ej->tok);
    json_decref(ej->root);
}

/* tp and ep against the device, as far as they are known without the model
 * (ep's default depends on the architecture: one per GPU for DeepSeek-V3,
 * 1 for a dense model), and what this build can drive. The messages are
 * those model/parallel.c and backend/device.c give when the engine starts. */
static int check_ranks(const struct native_device *d, int tp, int ep, char *err, size_t errlen)
{
    const int gpus = d->kind == NATIVE_DEVICE_CUDA ? d->n : 1;
    const int t = tp > 0 ? tp : gpus;
    if (ep > 0) {
        const int world = t > ep ? t : ep;
        if ((t != 1 && t != world) || (ep != 1 && ep != world)) {
            snprintf(err, errlen, "native engine: tp %d, ep %d: each must be 1 or the number of "
                     "ranks (at most %d)", t, ep, NATIVE_MAX_WORLD);
            return -1;
        }
        if (d->kind == NATIVE_DEVICE_CUDA && world != d->n) {
            snprintf(err, errlen, "native engine: tp %d, ep %d make %d ranks, one per GPU, but %d "
                     "GPU%s named", t, ep, world, d->n, d->n == 1 ? " is" : "s are");
            return -1;
        }
    } else if (d->kind == NATIVE_DEVICE_CUDA && t != 1 && t != d->n) {
        snprintf(err, errlen, "native engine: tp %d, ep %d make %d ranks, one per GPU, but %d "
                 "GPU%s named", t, gpus, t > gpus ? t : gpus, d->n, d->n == 1 ? " is" : "s are");
        return -1;
    }
    if (d->kind != NATIVE_DEVICE_CUDA)
        return 0;
#ifndef CASCADE_HAVE_CUDA
    snprintf(err, errlen,
             "native engine: cuda:%d: this build has no CUDA backend (nvcc was not found at build "
             "time, or -DCASCADE_CUDA=OFF); use \"device\": \"cpu\"", d->ids[0]);
    return -1;
#elif !defined(CASCADE_HAVE_NCCL)
    if (d->n > 1) {
        snprintf(err, errlen, "native engine: %d GPUs: this build has no NCCL, so one GPU at most",
                 d->n);
        return -1;
    }
    return 0;
#else
    return 0;
#endif
}

/* The one parser of the engine section, for from_json and check_json:
 * every field's name, type and range, the device, the ranks; nothing is
 * loaded or probed. 0, or -1 with err naming the field. */
static int engine_json_parse(const char *json, const char *base_dir, struct engine_json *ej,
                             char *err, size_t errlen)
{
    static const char *const int_keys[] = {"threads", "kv_mib", "max_batch", "max_queue", "ctx",
                                           "tp", "ep"};
    enum { N_INT_KEYS = sizeof(int_keys) / sizeof(int_keys[0]) };
    static const char *const str_keys[] = {"kind", "model", "tokenizer", "name", "device"};
    long long v[N_INT_KEYS] = {0};
    json_error_t jerr;

    memset(ej, 0, sizeof(*ej));
    ej->root = json ? json_loads(json, 0, &jerr) : NULL;
    json_t *o = ej->root;
    if (!json_is_object(o)) {
        snprintf(err, errlen, "native engine: the engine section must be a JSON object");
        return -1;
    }
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val) {
        int known = 0;
        for (size_t i = 0; i < sizeof(str_keys) / sizeof(str_keys[0]); i++) {
            if (strcmp(key, str_keys[i]) != 0)
                continue;
            known = 1;
            if (!json_is_string(val)) {
                snprintf(err, errlen, "native engine: \"%s\" must be a string", key);
                return -1;
            }
        }
        for (size_t i = 0; i < N_INT_KEYS; i++) {
            if (strcmp(key, int_keys[i]) != 0)
                continue;
            known = 1;
            /* max_queue may be -1 (no queue); tp and ep count ranks. */
            const long long lo = i == 3 ? -1 : 0;
            const long long hi = i == 1 ? (1ll << 30) : i >= 5 ? NATIVE_MAX_WORLD : (1ll << 24);
            if (!json_is_integer(val) || json_integer_value(val) < lo ||
                json_integer_value(val) > hi) {
                snprintf(err, errlen, "native engine: \"%s\" must be an integer from %lld to %lld",
                         key, lo, hi);
                return -1;
            }
            v[i] = json_integer_value(val);
        }
        if (!known) {
            snprintf(err, errlen, "native engine: unknown key \"%s\"", key);
            return -1;
        }
    }
    const char *kind = json_string_value(json_object_get(o, "kind"));
    if (kind && strcmp(kind, "native") != 0) {
        snprintf(err, errlen, "native engine: \"kind\" must be \"native\"");
        return -1;
    }
    const char *m = json_string_value(json_object_get(o, "model"));
    const char *t = json_string_value(json_object_get(o, "tokenizer"));
    if (!m || !*m) {
        snprintf(err, errlen, "native engine: \"model\" (a path) is required");
        return -1;
    }
    /* A bad device name or rank count is refused here, before the model is read. */
    const char *dv = json_string_value(json_object_get(o, "device"));
    struct native_device dev;
    char why[200];
    if (native_device_parse(dv, &dev, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "native engine: \"device\": %s", why);
        return -1;
    }
    if (check_ranks(&dev, (int)v[5], (int)v[6], err, errlen) != 0)
        return -1;
    ej->model = resolve(base_dir, m);
    ej->tok = resolve(base_dir, t);
    if (!ej->model || (t && !ej->tok)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct native_engine_config *cfg = &ej->cfg;
    cfg->model_path = ej->model;
    cfg->tokenizer_path = ej->tok;
    cfg->model_name = json_string_value(json_object_get(o, "name"));
    cfg->device = dv;
    cfg->threads = (int)v[0];
    cfg->kv_budget_bytes = (size_t)v[1] << 20;
    cfg->max_batch = (int)v[2];
    cfg->max_queue = (int)v[3];
    cfg->n_ctx = (int)v[4];
    cfg->tp = (int)v[5];
    cfg->ep = (int)v[6];
    return 0;
}

int native_engine_check_json(const char *json, const char *base_dir, char *err, size_t errlen)
{
    struct engine_json ej;
    int rc = engine_json_parse(json, base_dir, &ej, err, errlen);
    engine_json_free(&ej);
    return rc;
}

struct engine *native_engine_from_json(const char *json, const char *base_dir, char *err,
                                       size_t errlen)
{
    struct engine_json ej;
    struct engine *e = NULL;
    if (engine_json_parse(json, base_dir, &ej, err, errlen) == 0)
        e = native_engine_new(&ej.cfg, err, errlen);
    engine_json_free(&ej);
    return e;
}
