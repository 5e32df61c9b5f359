/* chat.c: see chat.h. The states of one request:
 *
 *   parse, route ──> cache lookup ──hit──────────────────────────> replay
 *        │                │ miss: lead ──> engine ──> answer, store, wake waiters
 *        │                │ miss: wait ──> leader's answer ──────> replay
 *        │                │               leader failed ─────────> engine
 *        │                └ Redis down/slow: bypass ─────────────> engine
 *        └ not cacheable, or the client said no-store: bypass ──> engine
 *
 * The HTTP request and this state have separate lifetimes: a client that
 * goes away releases the HTTP request at once, but a pending cache lookup
 * still holds this state until its callback runs (`gone` says to drop it).
 */
#include "gateway/chat.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cache/cache.h"
#include "cache/key.h"
#include "cache/singleflight.h"
#include "common/clock.h"
#include "common/httpd.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/openai.h"
#include "engines/engine.h"
#include "gateway/access.h"
#include "gateway/gateway.h"

enum cache_plan {
    PLAN_BYPASS,        /* neither read nor write the cache */
    PLAN_LOOKUP,        /* read, and on a miss write */
    PLAN_REFRESH,       /* do not read, but write the fresh answer */
};

struct chat {
    struct worker *w;
    struct httpd_req *r;            /* NULL once released */
    const struct tenant_config *tenant;
    int tier;
    struct chat_request req;
    struct engine *engine;
    uint64_t engine_id;
    int engine_running;
    char id[48];                    /* chatcmpl-... */
    char request_id[80];
    int64_t created;
    uint64_t t0;
    /* the answer so far: for the non-stream reply and for the cache entry */
    struct evbuffer *content;
    json_t *logprobs;
    int stream_open;                /* stream headers sent */
    struct engine_usage usage;
    /* cache */
    enum cache_plan plan;
    const char *cache_header;       /* x-cascade-cache: hit|miss|bypass */
    uint8_t key[32];
    int store;                      /* write the answer to the cache */
    int leader;                     /* we lead the single-flight for key */
    struct sf_waiter *waiter;       /* waiting on another request's answer */
    int lookup_pending;             /* a cache_get callback is due */
    int gone;                       /* the client left: drop, do not answer */
};

static const char *tier_name(const struct chat *c)
{
    return c->tier >= 0 ? c->w->gw->cfg.tiers[c->tier].name : NULL;
}

static const char *model_name(const struct chat *c)
{
    return c->w->gw->cfg.tiers[c->tier].model;
}

static void chat_free(struct chat *c)
{
    chat_request_free(&c->req);
    if (c->content)
        evbuffer_free(c->content);
    json_decref(c->logprobs);
    free(c);
}

static void log_access(struct chat *c, int status)
{
    struct access_entry e = {
        .request_id = c->request_id,
        .tenant = c->tenant->id,
        .tier = tier_name(c),
        .method = "POST",
        .path = "/v1/chat/completions",
        .status = status,
        .latency_us = clock_mono_us() - c->t0,
        .prompt_tokens = c->usage.prompt_tokens,
        .completion_tokens = c->usage.completion_tokens,
        .stream = c->req.stream,
        .cache = c->cache_header,
    };
    access_log(&e);
}

/* The single-flight must always be finished by its leader, success or not,
 * or its waiters would wait forever. */
static void finish_flight(struct chat *c, const char *value, size_t len)
{
    if (!c->leader)
        return;
    c->leader = 0;
    sf_finish(cache_flights(c->w->gw->cache), c->key, value, len);
}

/* The request is answered (or abandoned): log and free. */
static void chat_done(struct chat *c, int status)
{
    finish_flight(c, NULL, 0);
    log_access(c, status);
    chat_free(c);
}

static void set_headers(struct chat *c)
{
    httpd_resp_header(c->r, "x-cascade-tier", tier_name(c) ? tier_name(c) : "none");
    if (c->cache_header)
        httpd_resp_header(c->r, "x-cascade-cache", c->cache_header);
}

static void reply_error(struct chat *c, int status, const char *type, const char *code, const char *param,
                        const char *msg)
{
    set_headers(c);
    httpd_reply_error(c->r, status, type, code, param, msg);
    c->r = NULL;
    chat_done(c, status);
}

/* ---- writing answers ---------------------------------------------------- */

static void open_stream(struct chat *c)
{
    if (c->stream_open)
        return;
    c->stream_open = 1;
    set_headers(c);
    httpd_resp_header(c->r, "Cache-Control", "no-cache");
    httpd_stream_begin(c->r, 200, "text/event-stream");
    size_t n;
    char *ev = openai_chat_chunk_event(c->id, c->created, model_name(c), "assistant", "", 0, NULL, NULL, &n);
    httpd_stream_write(c->r, ev, n);
    free(ev);
}

static void stream_piece(struct chat *c, const char *text, size_t len, json_t *entry)
{
    open_stream(c);
    json_t *arr = entry ? json_pack("[O]", entry) : NULL;
    size_t n;
    char *ev = openai_chat_chunk_event(c->id, c->created, model_name(c), NULL, text, len, arr, NULL, &n);
    httpd_stream_write(c->r, ev, n);
    free(ev);
    json_decref(arr);
}

/* The end of an answer, fresh or replayed: last chunk, usage, [DONE]; or the
 * whole JSON body. Releases the HTTP request. */
static void send_final(struct chat *c, const char *finish_reason)
{
    struct openai_usage u = {c->usage.prompt_tokens, c->usage.completion_tokens};
    if (c->req.stream) {
        open_stream(c);
        size_t n;
        char *ev = openai_chat_chunk_event(c->id, c->created, model_name(c), NULL, NULL, 0, NULL, finish_reason, &n);
        httpd_stream_write(c->r, ev, n);
        free(ev);
        if (c->req.include_usage) {
            ev = openai_chat_usage_event(c->id, c->created, model_name(c), &u, &n);
            httpd_stream_write(c->r, ev, n);
            free(ev);
        }
        httpd_stream_write(c->r, OPENAI_SSE_DONE, strlen(OPENAI_SSE_DONE));
        httpd_stream_end(c->r);
    } else {
        size_t len = evbuffer_get_length(c->content);
        const char *text = (const char *)evbuffer_pullup(c->content, -1);
        json_t *lp = c->req.logprobs ? (c->logprobs ? json_incref(c->logprobs) : json_array()) : NULL;
        char *body = openai_chat_response(c->id, c->created, model_name(c), text ? text : "", len, finish_reason,
                                          &u, lp);
        json_decref(lp);
        set_headers(c);
        httpd_reply(c->r, 200, "application/json", body, strlen(body));
        free(body);
    }
    c->r = NULL;
}

/* The cache entry: compact JSON of what a replay needs. */
static char *cache_value(struct chat *c, const char *finish_reason, size_t *len)
{
    size_t n = evbuffer_get_length(c->content);
    const char *text = (const char *)evbuffer_pullup(c->content, -1);
    json_t *o = json_pack("{s:s%, s:s, s:{s:I, s:I}, s:s, s:s, s:I}", "content", text ? text : "", n,
                          "finish_reason", finish_reason, "usage", "prompt_tokens",
                          (json_int_t)c->usage.prompt_tokens, "completion_tokens",
                          (json_int_t)c->usage.completion_tokens, "tier", tier_name(c), "model", model_name(c),
                          "created", (json_int_t)c->created);
    if (!o) /* content that is not valid UTF-8 is not worth storing */
        return NULL;
    if (c->logprobs)
        json_object_set(o, "logprobs", c->logprobs);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    *len = strlen(s);
    return s;
}

/* Answer from a cache entry (ours or a single-flight leader's). 0, or -1
 * when the entry is unusable and the engine must answer instead. */
static int replay(struct chat *c, const char *value, size_t len)
{
    json_t *o = json_loadb(value, len, 0, NULL);
    json_t *content = json_object_get(o, "content");
    json_t *usage = json_object_get(o, "usage");
    json_t *fr = json_object_get(o, "finish_reason");
    json_t *lp = json_object_get(o, "logprobs");
    if (!json_is_string(content) || !json_is_object(usage) || !json_is_string(fr) || (c->req.logprobs && !lp)) {
        json_decref(o);
        return -1;
    }
    c->usage.prompt_tokens = json_integer_value(json_object_get(usage, "prompt_tokens"));
    c->usage.completion_tokens = json_integer_value(json_object_get(usage, "completion_tokens"));
    const char *text = json_string_value(content);
    size_t tlen = json_string_length(content);
    if (c->req.stream) {
        /* The same chunk format as a fresh stream: one chunk per token when
         * logprobs were kept, else the content in one piece. */
        size_t off = 0, i;
        json_t *e;
        if (c->req.logprobs && json_is_array(lp)) {
            json_array_foreach(lp, i, e) {
                size_t n = json_string_length(json_object_get(e, "token"));
                if (off + n > tlen)
                    n = tlen - off;
                stream_piece(c, text + off, n, e);
                off += n;
            }
        }
        if (off < tlen)
            stream_piece(c, text + off, tlen - off, NULL);
    } else {
        evbuffer_add(c->content, text, tlen);
        if (c->req.logprobs)
            c->logprobs = json_incref(lp);
    }
    send_final(c, json_string_value(fr));
    json_decref(o);
    return 0;
}

/* ---- the engine --------------------------------------------------------- */

static json_t *logprob_entry(const struct engine_token *t)
{
    const char *tops[21];
    double lps[21];
    size_t n = t->n_top < 21 ? t->n_top : 21;
    for (size_t i = 0; i < n; i++) {
        tops[i] = t->top[i].token;
        lps[i] = t->top[i].logprob;
    }
    return openai_logprob_entry(t->text, t->len, t->logprob, tops, lps, n);
}

static void on_token(void *ctx, const struct engine_token *t)
{
    struct chat *c = ctx;
    json_t *entry = (c->req.logprobs && t->has_logprob) ? logprob_entry(t) : NULL;
    if (c->req.stream && (t->len || entry))
        stream_piece(c, t->text, t->len, entry);
    /* Kept whole for a non-stream reply, and for the cache entry. */
    if (!c->req.stream || c->store) {
        evbuffer_add(c->content, t->text, t->len);
        if (entry) {
            if (!c->logprobs)
                c->logprobs = json_array();
            json_array_append(c->logprobs, entry);
        }
    }
    json_decref(entry);
}

static void on_done(void *ctx, const struct engine_usage *usage, const char *finish_reason)
{
    struct chat *c = ctx;
    c->engine_running = 0;
    c->usage = *usage;
    size_t vlen = 0;
    char *value = c->store ? cache_value(c, finish_reason, &vlen) : NULL;
    if (value) {
        const struct tenant_config *t = c->tenant;
        cache_put(c->w->gw->cache, c->w->base, t->id, c->key, value, vlen, t->cache_ttl_s);
        finish_flight(c, value, vlen);
        free(value);
    }
    send_final(c, finish_reason);
    chat_done(c, 200);
}

static void on_error(void *ctx, const struct engine_error *e)
{
    struct chat *c = ctx;
    c->engine_running = 0;
    if (c->stream_open) {
        /* The status line is gone; OpenAI's clients read an error event. */
        struct openai_error oe;
        openai_error_set(&oe, e->status, e->type, e->code, NULL, "%s", e->message);
        char *js = openai_error_json(&oe);
        httpd_stream_write(c->r, "data: ", 6);
        httpd_stream_write(c->r, js, strlen(js));
        httpd_stream_write(c->r, "\n\n", 2);
        free(js);
        httpd_stream_end(c->r);
        c->r = NULL;
        chat_done(c, e->status);
        return;
    }
    reply_error(c, e->status, e->type, e->code, NULL, e->message);
}

static const struct engine_callbacks chat_callbacks = {on_token, on_done, on_error};

static void start_engine(struct chat *c)
{
    struct gateway *gw = c->w->gw;
    if (!c->content)
        c->content = evbuffer_new();
    struct engine_request er = {
        .base = c->w->base,
        .chat = &c->req,
        .model = gw->cfg.tiers[c->tier].model,
        .stream = c->req.stream,
        .request_id = c->request_id,
    };
    if (engine_submit(c->engine, &er, &chat_callbacks, c, &c->engine_id) < 0) {
        reply_error(c, 503, "server_error", "engine_unavailable", NULL, "the engine cannot take requests now");
        return;
    }
    c->engine_running = 1;
}

/* ---- the cache ---------------------------------------------------------- */

static void on_flight(void *ctx, const char *value, size_t len)
{
    struct chat *c = ctx;
    c->waiter = NULL;
    if (value && replay(c, value, len) == 0) {
        chat_done(c, 200);
        return;
    }
    /* The leader failed: this request goes to the engine on its own, and
     * stores what it gets. */
    c->cache_header = "miss";
    start_engine(c);
}

static void on_lookup(void *ctx, enum cache_status st, const char *value, size_t len)
{
    struct chat *c = ctx;
    c->lookup_pending = 0;
    if (c->gone) {
        chat_done(c, 499);
        return;
    }
    if (st == CACHE_HIT) {
        c->cache_header = "hit";
        if (replay(c, value, len) == 0) {
            chat_done(c, 200);
            return;
        }
        log_warn("cache entry for tenant %s is unreadable; answering fresh", c->tenant->id);
    }
    if (st == CACHE_UNAVAILABLE) {
        /* Fail open: serve without the cache until it is back. */
        c->cache_header = "bypass";
        c->store = 0;
        start_engine(c);
        return;
    }
    c->cache_header = "miss";
    c->store = 1;
    c->waiter = sf_join(cache_flights(c->w->gw->cache), c->key, c->w->base, on_flight, c);
    if (c->waiter) {
        c->cache_header = "hit"; /* answered by the leader's engine call, not ours */
        return;
    }
    c->leader = 1;
    start_engine(c);
}

/* What the client and the tenant allow: bypass, lookup, or refresh. */
static enum cache_plan cache_plan(const struct chat *c)
{
    const char *xc = httpd_req_header(c->r, "x-cascade-cache");
    const char *cc = httpd_req_header(c->r, "Cache-Control");
    if (!cache_request_cacheable(&c->req, c->tenant->cache_mode))
        return PLAN_BYPASS;
    if ((xc && strcasecmp(xc, "bypass") == 0) || (cc && strcasestr(cc, "no-store")))
        return PLAN_BYPASS;
    if ((xc && strcasecmp(xc, "refresh") == 0) || (cc && strcasestr(cc, "no-cache")))
        return PLAN_REFRESH;
    return PLAN_LOOKUP;
}

/* ---- the client --------------------------------------------------------- */

static void on_client_close(struct httpd_req *r, void *arg)
{
    struct chat *c = arg;
    /* Release the HTTP request: replying to a gone client only frees it. */
    if (c->stream_open)
        httpd_stream_end(r);
    else
        httpd_reply(r, 499, NULL, NULL, 0);
    c->r = NULL;
    if (c->engine_running) {
        /* A cancelled generation is never cached; waiters go on their own. */
        engine_cancel(c->engine, c->engine_id);
        c->engine_running = 0;
    }
    if (c->waiter) {
        sf_leave(cache_flights(c->w->gw->cache), c->waiter);
        c->waiter = NULL;
    }
    if (c->lookup_pending) {
        c->gone = 1; /* on_lookup frees us */
        return;
    }
    chat_done(c, 499);
}

/* application/json, with or without parameters such as charset. */
static int is_json_type(const char *ct)
{
    if (!ct)
        return 0;
    size_t n = strcspn(ct, "; \t");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

void chat_handle(struct worker *w, struct httpd_req *r, const struct tenant_config *tenant, const char *request_id,
                 uint64_t t0)
{
    struct gateway *gw = w->gw;
    struct chat *c = xcalloc(1, sizeof *c);
    c->w = w;
    c->r = r;
    c->tenant = tenant;
    c->tier = -1;
    c->t0 = t0;
    c->req.max_tokens = -1;
    snprintf(c->request_id, sizeof c->request_id, "%s", request_id);

    if (!is_json_type(httpd_req_header(r, "Content-Type"))) {
        reply_error(c, 415, "invalid_request_error", "unsupported_media_type", NULL,
                    "Content-Type must be application/json");
        return;
    }
    size_t len;
    const char *body = httpd_req_body(r, &len);
    struct openai_error err;
    if (chat_request_parse(body, len, &c->req, &err) < 0) {
        reply_error(c, err.status, err.type, err.code, err.param, err.message);
        return;
    }
    /* "auto" is the tenant's default until the classifier routes it. */
    int is_auto = strcmp(c->req.model, "auto") == 0;
    int tier = is_auto ? tenant->default_tier : config_tier_index(&gw->cfg, c->req.model);
    if (tier < 0) {
        char msg[200];
        snprintf(msg, sizeof msg, "The model '%.100s' does not exist", c->req.model);
        reply_error(c, 404, "invalid_request_error", "model_not_found", "model", msg);
        return;
    }
    if (!config_tenant_allows(tenant, tier)) {
        char msg[200];
        snprintf(msg, sizeof msg, "Tier '%.100s' is not allowed for this API key", gw->cfg.tiers[tier].name);
        reply_error(c, 403, "permission_error", "tier_not_allowed", "model", msg);
        return;
    }
    c->tier = tier;
    c->engine = gw->engines[tier];
    char rid[17];
    access_new_id(rid);
    snprintf(c->id, sizeof c->id, "chatcmpl-%s", rid);
    c->created = clock_wall_s();
    c->content = evbuffer_new();
    httpd_req_on_close(r, on_client_close, c);

    c->plan = cache_plan(c);
    if (c->plan == PLAN_BYPASS) {
        c->cache_header = "bypass";
        start_engine(c);
        return;
    }
    /* The route selector: a tier by name (a model id maps to its tier), or
     * auto with what auto means for this tenant now. */
    char route[200];
    snprintf(route, sizeof route, "%s:%s", is_auto ? "auto" : "tier", gw->cfg.tiers[tier].name);
    cache_key(tenant->id, route, &c->req, c->key);
    if (c->plan == PLAN_REFRESH) {
        c->cache_header = "miss";
        c->store = 1;
        start_engine(c);
        return;
    }
    c->lookup_pending = 1;
    cache_get(gw->cache, w->base, tenant->id, c->key, on_lookup, c);
}
