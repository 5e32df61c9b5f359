#include "gateway/chat.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/clock.h"
#include "common/httpd.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/openai.h"
#include "engines/engine.h"
#include "gateway/access.h"
#include "gateway/gateway.h"

struct chat {
    struct worker *w;
    struct httpd_req *r;
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
    struct evbuffer *content;       /* non-stream: the answer so far */
    json_t *logprobs;               /* non-stream with logprobs: entries so far */
    int stream_open;                /* stream headers sent */
    struct engine_usage usage;
};

static const char *tier_name(const struct chat *c)
{
    return c->tier >= 0 ? c->w->gw->cfg.tiers[c->tier].name : NULL;
}

/* Log, release the HTTP request (if not yet) and free the state. */
static void chat_finish(struct chat *c, int status)
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
    };
    access_log(&e);
    chat_request_free(&c->req);
    if (c->content)
        evbuffer_free(c->content);
    json_decref(c->logprobs);
    free(c);
}

static void reply_error(struct chat *c, int status, const char *type, const char *code, const char *param,
                        const char *msg)
{
    if (c->tier < 0)
        httpd_resp_header(c->r, "x-cascade-tier", "none");
    httpd_reply_error(c->r, status, type, code, param, msg);
    chat_finish(c, status);
}

static const char *model_name(const struct chat *c)
{
    /* Clients see the model that answered, as upstreams report it. */
    return c->w->gw->cfg.tiers[c->tier].model;
}

static void open_stream(struct chat *c)
{
    if (c->stream_open)
        return;
    c->stream_open = 1;
    httpd_resp_header(c->r, "Cache-Control", "no-cache");
    httpd_stream_begin(c->r, 200, "text/event-stream");
    size_t n;
    char *ev = openai_chat_chunk_event(c->id, c->created, model_name(c), "assistant", "", 0, NULL, NULL, &n);
    httpd_stream_write(c->r, ev, n);
    free(ev);
}

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
    if (c->req.stream) {
        if (t->len == 0 && !entry)
            return;
        open_stream(c);
        json_t *arr = entry ? json_pack("[O]", entry) : NULL;
        size_t n;
        char *ev = openai_chat_chunk_event(c->id, c->created, model_name(c), NULL, t->text, t->len, arr, NULL, &n);
        httpd_stream_write(c->r, ev, n);
        free(ev);
        json_decref(arr);
    } else {
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
    struct openai_usage u = {usage->prompt_tokens, usage->completion_tokens};
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
        json_t *lp = c->req.logprobs ? (c->logprobs ? c->logprobs : json_array()) : NULL;
        char *body = openai_chat_response(c->id, c->created, model_name(c), text ? text : "", len, finish_reason,
                                          &u, lp);
        if (lp && lp != c->logprobs)
            json_decref(lp);
        httpd_reply(c->r, 200, "application/json", body, strlen(body));
        free(body);
    }
    chat_finish(c, 200);
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
        chat_finish(c, e->status);
        return;
    }
    reply_error(c, e->status, e->type, e->code, NULL, e->message);
}

static void on_client_close(struct httpd_req *r, void *arg)
{
    (void)r;
    struct chat *c = arg;
    if (c->engine_running) {
        engine_cancel(c->engine, c->engine_id);
        c->engine_running = 0;
    }
    if (c->stream_open)
        httpd_stream_end(c->r); /* only frees: the client is gone */
    else
        httpd_reply(c->r, 499, NULL, NULL, 0);
    chat_finish(c, 499);
}

static const struct engine_callbacks chat_callbacks = {on_token, on_done, on_error};

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
    int tier = strcmp(c->req.model, "auto") == 0 ? tenant->default_tier : config_tier_index(&gw->cfg, c->req.model);
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
    httpd_resp_header(r, "x-cascade-tier", gw->cfg.tiers[tier].name);
    char rid[17];
    access_new_id(rid);
    snprintf(c->id, sizeof c->id, "chatcmpl-%s", rid);
    c->created = clock_wall_s();
    if (!c->req.stream)
        c->content = evbuffer_new();

    struct engine_request er = {
        .base = w->base,
        .chat = &c->req,
        .model = gw->cfg.tiers[tier].model,
        .stream = c->req.stream,
        .request_id = c->request_id,
    };
    if (engine_submit(c->engine, &er, &chat_callbacks, c, &c->engine_id) < 0) {
        reply_error(c, 503, "server_error", "engine_unavailable", NULL, "the engine cannot take requests now");
        return;
    }
    c->engine_running = 1;
    httpd_req_on_close(r, on_client_close, c);
}
