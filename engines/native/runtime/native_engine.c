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

static int native_submit(struct engine *eng, const struct engine_request *req,
                         const struct engine_callbacks *cb, void *ctx, uint64_t *id)
{
    struct native_engine *e = (struct native_engine *)eng;
    return submit_ids(e, req, cb, ctx, id, encode_chat, req->chat);
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
    struct sched_config sc = {cfg->max_batch, cfg->max_queue, cfg->max_step_tokens,
                              kv_budget, cfg->n_ctx, cfg->mla};
    e->s = sched_new(e->m, e->be, &sc, err, errlen);
    if (!e->s) {
        pthread_mutex_destroy(&e->mu);
        goto fail;
    }
    log_model(e);
    return &e->base;

fail:
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

struct engine *native_engine_from_json(const char *json, const char *base_dir, char *err,
                                       size_t errlen)
{
    static const char *const int_keys[] = {"threads", "kv_mib", "max_batch", "max_queue", "ctx",
                                           "tp", "ep"};
    enum { N_INT_KEYS = sizeof(int_keys) / sizeof(int_keys[0]) };
    json_error_t jerr;
    json_t *o = json_loads(json, 0, &jerr);
    struct engine *e = NULL;
    char *model = NULL, *tok = NULL;
    long long v[N_INT_KEYS] = {0};

    if (!json_is_object(o)) {
        snprintf(err, errlen, "native engine: the engine section must be a JSON object");
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val) {
        int known = !strcmp(key, "kind") || !strcmp(key, "model") || !strcmp(key, "tokenizer") ||
                    !strcmp(key, "name") || !strcmp(key, "device");
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
                goto out;
            }
            v[i] = json_integer_value(val);
        }
        if (!known) {
            snprintf(err, errlen, "native engine: unknown key \"%s\"", key);
            goto out;
        }
    }
    const char *m = json_string_value(json_object_get(o, "model"));
    const char *t = json_string_value(json_object_get(o, "tokenizer"));
    json_t *jt = json_object_get(o, "tokenizer"), *jn = json_object_get(o, "name");
    json_t *jd = json_object_get(o, "device");
    if (!m || (jt && !t) || (jn && !json_is_string(jn)) || (jd && !json_is_string(jd))) {
        snprintf(err, errlen, "native engine: \"model\" (a path) is required; \"tokenizer\", "
                              "\"name\" and \"device\" must be strings");
        goto out;
    }
    /* A bad device name is refused here, before the model is read. */
    struct native_device dev;
    if (native_device_parse(json_string_value(jd), &dev, err, errlen) != 0)
        goto out;
    model = resolve(base_dir, m);
    tok = resolve(base_dir, t);
    if (!model || (t && !tok)) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    struct native_engine_config cfg = {0};
    cfg.model_path = model;
    cfg.tokenizer_path = tok;
    cfg.model_name = json_string_value(jn);
    cfg.device = json_string_value(jd);
    cfg.threads = (int)v[0];
    cfg.kv_budget_bytes = (size_t)v[1] << 20;
    cfg.max_batch = (int)v[2];
    cfg.max_queue = (int)v[3];
    cfg.n_ctx = (int)v[4];
    cfg.tp = (int)v[5];
    cfg.ep = (int)v[6];
    e = native_engine_new(&cfg, err, errlen);
out:
    free(model);
    free(tok);
    json_decref(o);
    return e;
}

