/* embeddings.c: see embeddings.h. The states of one request:
 *
 *   PREPARING ──bad input, wrong model──> reply 4xx
 *       │ parsed, tier chosen, prompt counted (on the work pool when big)
 *       v
 *   ADMITTING ──refused──> reply 429
 *       │ admitted: the budget holds the most expensive tier it may run on
 *       v
 *   GENERATING ──retryable failure──> GENERATING on the tier's fallback
 *       │ the upstream's whole answer (one token), then on_done
 *       v
 *   (RELAYING: a large answer is checked on the work pool)
 *       v
 *   reply 200 (or 502 for an answer that is not an embeddings list)
 * and at the end, always (FINISHED): settle the reservation with the real
 * cost, record the stats and metrics, log the access line, free.
 *
 * A client that leaves: while the work pool reads the body, the job
 * finishes first (it holds the HTTP request); while admission or the
 * relay job is pending, its callback finds `gone` and ends the request;
 * while the engine runs, the engine call is cancelled. Nothing is charged
 * for any of these, since an embeddings answer is all or nothing and the
 * client got none of it.
 */
#include "gateway/embeddings.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/clock.h"
#include "common/embeddings.h"
#include "common/httpd.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/openai.h"
#include "common/trace.h"
#include "common/workpool.h"
#include "engines/engine.h"
#include "gateway/access.h"
#include "gateway/config.h"
#include "gateway/metrics.h"
#include "gateway/reply.h"
#include "gateway/snapshot.h"
#include "policies/policy.h"
#include "policies/price.h"
#include "policies/stats.h"
#include "tokenizer/tokenizer.h"

/* Bodies larger than this are parsed and counted on the work pool, as chat
 * does: 2048 inputs of text take the tokenizer long enough to stall every
 * other request on this worker's loop. */
#define OFFLOAD_BODY_BYTES (64u << 10)
/* Answers larger than this are checked on the work pool: 2048 vectors of
 * 1536 floats are about 30 MB of JSON, a parse of a few hundred ms. */
#define OFFLOAD_ANSWER_BYTES (256u << 10)

/* Tokens a text input may carry beyond its text: the special tokens an
 * embedding model's tokenizer adds around each input (BOS, EOS, CLS). */
#define SPECIAL_TOKENS_PER_INPUT 2

enum emb_state {
    EMB_PREPARING,      /* parsing and counting; maybe on the work pool */
    EMB_ADMITTING,      /* policy_admit's callback is due */
    EMB_GENERATING,     /* an engine call runs */
    EMB_RELAYING,       /* the answer is checked on the work pool */
    EMB_FINISHED,       /* answered (or abandoned): settle, record, log, free */
};

struct emb {
    const struct chat_services *svc;
    struct config_snap *snap;       /* the config this request runs under */
    const struct config *cfg;
    struct httpd_req *r;            /* NULL once answered (replying releases it) */
    const struct tenant_config *tenant;
    const char *key_id;             /* config-owned */
    enum emb_state state;
    int gone;                       /* the client left while a callback was due */
    int offload_pending;            /* a work-pool job reads r's body */
    char request_id[80];
    struct trace_context trace;
    uint64_t t0, engine_t0, engine_us;
    /* the request */
    struct embeddings_request req;
    struct chat_request chat;       /* what the engine reads: root and model only */
    int parse_rc;
    struct openai_error parse_err;
    int asked_tier;                 /* the tier `model` names, or -1 */
    int tier;                       /* the tier running now (or that answered), or -1 */
    int first_failed;               /* the tier that failed when a fallback took over, or -1 */
    unsigned char *tried;           /* per tier: an engine call ran there */
    int64_t prompt_est;             /* our count, for the reservation */
    /* the engine */
    struct engine *engine;
    uint64_t engine_id;
    char *answer;                   /* the upstream's JSON, whole (its one token) */
    size_t answer_len;
    int extra_tokens;               /* tokens past the first: a broken engine */
    int64_t reported_prompt;        /* usage.prompt_tokens, as the engine read it */
    int64_t answer_prompt;          /* ... and as the relay read it from the answer */
    char *relayed;                  /* the answer as the client gets it, or NULL: not a list */
    size_t relayed_len;
    /* money */
    struct reservation *resv;
    int64_t reserved_nano;
    int64_t charged_in;             /* prompt tokens charged */
    int64_t cost_nano;
    int cost_warned;
    const char *error_code;         /* for the access line of a failed request */
};

static const char *tier_name(const struct emb *e)
{
    return e->tier >= 0 ? e->cfg->tiers[e->tier].name : NULL;
}

static int64_t input_cost(const struct emb *e, int tier, int64_t prompt)
{
    const struct tier_config *t = &e->cfg->tiers[tier];
    return price_cost_nano(t->price_in_per_1m, t->price_out_per_1m, prompt, 0);
}

static void emb_free(struct emb *e)
{
    embeddings_request_free(&e->req);
    free(e->tried);
    free(e->answer);
    free(e->relayed);
    snapshot_release(e->snap);
    free(e);
}

/* ---- the end: settle, record, log --------------------------------------- */

/* The charge: the prompt tokens the upstream reported (our estimate when it
 * reported none) at the answering tier's input price, only for an answer
 * the client got, and never more than was reserved (the estimate ran low:
 * the reservation is what the budget allowed, so it is the charge). */
static void compute_cost(struct emb *e, int status, int64_t reported)
{
    e->charged_in = 0;
    e->cost_nano = 0;
    if (status != 200)
        return;
    e->charged_in = reported > 0 ? money_clamp(reported) : e->prompt_est;
    e->cost_nano = input_cost(e, e->tier, e->charged_in);
    if (e->cost_nano > e->reserved_nano) {
        static struct log_limit over_log;
        if (!e->cost_warned++)
            log_limited(&over_log, 1000, LOG_WARN,
                        "embeddings request %s used more than it reserved (%" PRId64 " > %" PRId64
                        " nano-USD); charged the reservation",
                        e->request_id, e->cost_nano, e->reserved_nano);
        e->cost_nano = e->reserved_nano;
    }
}

/* Settle, record and log once, after the reply went out (or the client
 * left), then free. Embeddings save nothing: no cache, no routing. */
static void finish(struct emb *e, int status)
{
    const struct chat_services *svc = e->svc;
    e->state = EMB_FINISHED;
    if (e->resv) {
        struct settle_info info = {.cost_nano = e->cost_nano, .tokens = e->charged_in};
        policy_settle(svc->policy, svc->base, e->resv, &info);
        e->resv = NULL;
    }
    uint64_t total = clock_mono_us() - e->t0;
    struct stats_sample x = {
        .tenant = e->tenant->id, .tier = e->tier, .status = status, .cache = STATS_CACHE_BYPASS,
        .tokens_in = e->charged_in, .tokens_out = 0, .cost_nano = e->cost_nano, .latency_us = total,
    };
    stats_record(svc->stats, svc->base, &x);
    metrics_request(svc->metrics, e->tenant->metrics_index, e->tier, status, STATS_CACHE_BYPASS, 0, e->charged_in, 0,
                    e->cost_nano, 0, total, 0, total > e->engine_us ? total - e->engine_us : 0, 0, 0);
    metrics_inflight_add(svc->metrics, -1);
    struct access_entry a = {
        .request_id = e->request_id,
        .tenant = e->tenant->id,
        .tier = tier_name(e),
        .method = "POST",
        .path = "/v1/embeddings",
        .status = status,
        .latency_us = total,
        .prompt_tokens = e->charged_in,
        .cost_nano = e->cost_nano,
        .key_id = e->key_id,
        .error_code = status == 200 ? NULL : e->error_code,
        .fallback = e->first_failed >= 0 ? e->cfg->tiers[e->first_failed].name : NULL,
        .trace_id = e->trace.trace_id,
    };
    access_log(&a);
    emb_free(e);
}

/* ---- replies ------------------------------------------------------------ */

static void set_headers(struct emb *e)
{
    if (!e->tenant->expose_headers)
        return;
    httpd_resp_header(e->r, "x-cascade-tier", tier_name(e) ? tier_name(e) : "none");
    httpd_resp_header(e->r, "x-cascade-cache", "bypass"); /* embeddings are never cached */
    if (e->first_failed >= 0)
        httpd_resp_header(e->r, "x-cascade-fallback", e->cfg->tiers[e->first_failed].name);
}

static void fail(struct emb *e, int status, const char *type, const char *code, const char *param, const char *msg)
{
    set_headers(e);
    e->error_code = code ? code : type;
    httpd_reply_error(e->r, status, type, code, param, msg);
    e->r = NULL;
    finish(e, status);
}

/* ---- the engine --------------------------------------------------------- */

static void on_token(void *ctx, const struct engine_token *t)
{
    struct emb *e = ctx;
    /* engine.h: the upstream's whole answer comes as one piece. */
    if (e->answer) {
        e->extra_tokens++;
        return;
    }
    e->answer = xmalloc(t->len + 1);
    memcpy(e->answer, t->text, t->len);
    e->answer[t->len] = '\0';
    e->answer_len = t->len;
}

/* Work pool (or loop, when small): the answer as the client gets it, the
 * upstream's bytes with "model" set to the tier's model id (the client
 * named a tier; the upstream may call its model anything); NULL when it is
 * not an embeddings list. Reads only e's answer and config. */
static void relay_work(void *arg)
{
    struct emb *e = arg;
    if (e->answer && !e->extra_tokens)
        e->relayed = embeddings_answer_relay(e->answer, e->answer_len, e->cfg->tiers[e->tier].model, &e->relayed_len,
                                             &e->answer_prompt);
}

/* Loop thread: send what relay_work made, or a 502. */
static void relay_done(void *arg)
{
    struct emb *e = arg;
    if (e->gone) {
        finish(e, 499); /* the client left meanwhile: it got nothing, nothing is charged */
        return;
    }
    if (!e->relayed) {
        log_warn("embeddings request %s: tier %s answered something that is not an embeddings list", e->request_id,
                 tier_name(e));
        fail(e, 502, "upstream_error", "bad_upstream_response", NULL,
             "The upstream returned a malformed embeddings response");
        return;
    }
    compute_cost(e, 200, e->reported_prompt > 0 ? e->reported_prompt : e->answer_prompt);
    set_headers(e);
    if (e->tenant->expose_headers) {
        char usd[32];
        snprintf(usd, sizeof usd, "%.9f", price_nano_to_usd(e->cost_nano));
        httpd_resp_header(e->r, "x-cascade-cost-usd", usd);
    }
    httpd_reply(e->r, 200, "application/json", e->relayed, e->relayed_len);
    e->r = NULL;
    finish(e, 200);
}

static void on_done(void *ctx, const struct engine_usage *usage, const char *finish_reason)
{
    (void)finish_reason;
    struct emb *e = ctx;
    e->engine_us += clock_mono_us() - e->engine_t0;
    e->reported_prompt = usage->prompt_tokens;
    struct workpool *pool = e->svc->pool;
    if (e->answer_len > OFFLOAD_ANSWER_BYTES && pool &&
        workpool_submit(pool, e->svc->base, relay_work, relay_done, e) == 0) {
        e->state = EMB_RELAYING;
        return;
    }
    relay_work(e);
    relay_done(e);
}

static void start_engine(struct emb *e);

/* The next tier along tier's fallback chain that may serve this request:
 * one the tenant allows, that serves embeddings, and that has not run it
 * yet; or -1. The config refuses chains that loop; the bound is belt and
 * braces. */
/* A fallback for an embeddings request: not tried yet, allowed for the
 * tenant, a remote tier that serves embeddings. */
static int fallback_ok(const void *ctx, int tier)
{
    const struct emb *e = ctx;
    const struct tier_config *t = &e->cfg->tiers[tier];
    return !e->tried[tier] && config_tenant_allows(e->tenant, tier) && (t->endpoints & TIER_EP_EMBEDDINGS) &&
           t->kind == ENGINE_REMOTE;
}

static int next_fallback(const struct emb *e, int tier)
{
    return config_next_fallback(e->cfg, tier, fallback_ok, e);
}

static void on_error(void *ctx, const struct engine_error *err)
{
    struct emb *e = ctx;
    e->engine_us += clock_mono_us() - e->engine_t0;
    free(e->answer);
    e->answer = NULL;
    e->extra_tokens = 0;
    /* Nothing reached the client and another tier need not share the
     * failure (engine.h: retryable): the fallback answers instead. */
    int next = err->retryable ? next_fallback(e, e->tier) : -1;
    if (next >= 0) {
        log_warn("embeddings request %s: tier %s failed (%s); tier %s answers instead", e->request_id, tier_name(e),
                 err->message, e->cfg->tiers[next].name);
        if (e->first_failed < 0)
            e->first_failed = e->tier;
        e->tier = next;
        start_engine(e);
        return;
    }
    if (err->retry_after_s > 0) {
        char ra[24];
        snprintf(ra, sizeof ra, "%" PRId64, err->retry_after_s);
        httpd_resp_header(e->r, "Retry-After", ra);
    }
    fail(e, err->status, err->type, err->code, NULL, err->message);
}

static const struct engine_callbacks emb_callbacks = {on_token, on_done, on_error};

static void start_engine(struct emb *e)
{
    const struct tier_config *t = &e->cfg->tiers[e->tier];
    struct engine_request er = {
        .base = e->svc->base,
        .chat = &e->chat,
        .endpoint = ENGINE_EP_EMBEDDINGS,
        .model = t->model,
        .request_id = e->request_id,
        .traceparent = e->trace.traceparent,
        .tracestate = e->trace.tracestate[0] ? e->trace.tracestate : NULL,
    };
    e->tried[e->tier] = 1;
    e->engine = e->svc->engines[e->tier];
    e->engine_t0 = clock_mono_us();
    e->state = EMB_GENERATING;
    if (engine_submit(e->engine, &er, &emb_callbacks, e, &e->engine_id) < 0) {
        fail(e, 503, "server_error", "engine_unavailable", NULL, "the engine cannot take requests now");
        return;
    }
}

/* ---- admission ---------------------------------------------------------- */

static void on_admit(void *ctx, const struct admit_result *res, struct reservation *resv)
{
    struct emb *e = ctx;
    e->resv = resv;
    e->reserved_nano = res->reserved_nano;
    if (e->gone) {
        finish(e, 499); /* settles the reservation at 0 */
        return;
    }
    reply_admit_headers(e->r, res);
    metrics_admission(e->svc->metrics, e->tenant->metrics_index, (int)res->status);
    if (res->status != ADMIT_OK) {
        /* No downgrade was asked for (alt_cost -1): any other status is a
         * refusal. */
        const char *type, *code, *msg;
        reply_admit_error(res, &type, &code, &msg);
        fail(e, 429, type, code, NULL, msg);
        return;
    }
    start_engine(e);
}

/* The reservation covers the most expensive tier the request may end on:
 * its own, or one along its fallback chain that could take over. No output
 * is generated, so the prompt is the whole estimate; no downgrade, since
 * the cheapest tier need not serve embeddings, and another model's vectors
 * are not what the client asked for. */
static void admit_start(struct emb *e)
{
    int64_t est = input_cost(e, e->tier, e->prompt_est);
    size_t steps = 0;
    for (int f = e->cfg->tiers[e->tier].fallback; f >= 0 && steps++ < e->cfg->n_tiers; f = e->cfg->tiers[f].fallback) {
        int64_t c = input_cost(e, f, e->prompt_est);
        if (config_tenant_allows(e->tenant, f) && (e->cfg->tiers[f].endpoints & TIER_EP_EMBEDDINGS) && c > est)
            est = c;
    }
    struct admit_request aq = {
        .tenant = e->tenant->id,
        .limits = &e->tenant->limits,
        .request_id = e->request_id,
        .est_tokens = e->prompt_est,
        .est_cost_nano = est,
        .alt_cost_nano = -1,
    };
    e->state = EMB_ADMITTING;
    policy_admit(e->svc->policy, e->svc->base, &aq, on_admit, e);
}

/* ---- preparing ---------------------------------------------------------- */

/* Prompt tokens for the reservation. The upstream bills with its own
 * tokenizer, which the gateway does not have; the gateway's (DeepSeek's)
 * is the closest count, plus the special tokens each input may get. Without
 * it, a deliberately high estimate: half a token a byte (English runs near
 * a quarter), as chat's. Token-id inputs are their ids, exactly. */
static int64_t count_prompt(const struct emb *e)
{
    const struct embeddings_request *q = &e->req;
    if (q->token_input)
        return (int64_t)q->n_ids;
    const struct tokenizer *tok = e->svc->tokenizer;
    int64_t n = 0;
    for (size_t i = 0; i < q->n_inputs; i++) {
        const struct embeddings_input *in = &q->inputs[i];
        struct tok_ids ids = {0};
        if (tok && tokenizer_encode(tok, in->text, in->len, TOK_ADDED_AS_TEXT, &ids) == TOK_OK)
            n += (int64_t)ids.n + SPECIAL_TOKENS_PER_INPUT;
        else
            n += (int64_t)(in->len / 2) + 4;
        tok_ids_free(&ids);
    }
    return money_clamp(n);
}

/* The part of the start whose time grows with the body: parse, find the
 * tier, count. It answers nothing; prepared() reads what it found. Reads
 * the body, the config and e only (it may run on the work pool). */
static void prepare_work(void *arg)
{
    struct emb *e = arg;
    size_t len;
    const char *body = httpd_req_body(e->r, &len);
    e->parse_rc = embeddings_request_parse(body, len, &e->req, &e->parse_err);
    if (e->parse_rc < 0 || strcmp(e->req.model, "auto") == 0)
        return;
    e->asked_tier = config_tier_index(e->cfg, e->req.model);
    if (e->asked_tier < 0 || !config_tenant_allows(e->tenant, e->asked_tier))
        return;
    const struct tier_config *t = &e->cfg->tiers[e->asked_tier];
    if (!(t->endpoints & TIER_EP_EMBEDDINGS) || t->kind != ENGINE_REMOTE)
        return;
    e->tier = e->asked_tier;
    e->prompt_est = count_prompt(e);
}

/* Loop thread, after prepare_work: bad input and a model that cannot
 * serve get their error; a good request goes to admission. */
static void prepared(struct emb *e)
{
    char msg[256];
    if (e->parse_rc < 0) {
        const struct openai_error *pe = &e->parse_err;
        fail(e, pe->status, pe->type, pe->code, pe->param, pe->message);
        return;
    }
    if (strcmp(e->req.model, "auto") == 0) {
        fail(e, 400, "invalid_request_error", "model_not_supported", "model",
             "model 'auto' is not available for embeddings: name a model that serves embeddings (GET /v1/models)");
        return;
    }
    if (e->asked_tier < 0) {
        snprintf(msg, sizeof msg, "The model '%.100s' does not exist", e->req.model);
        fail(e, 404, "invalid_request_error", "model_not_found", "model", msg);
        return;
    }
    const struct tier_config *t = &e->cfg->tiers[e->asked_tier];
    if (!config_tenant_allows(e->tenant, e->asked_tier)) {
        snprintf(msg, sizeof msg, "Tier '%.100s' is not allowed for this API key", t->name);
        fail(e, 403, "permission_error", "tier_not_allowed", "model", msg);
        return;
    }
    if (e->tier < 0) {
        snprintf(msg, sizeof msg, "The model '%.100s' does not serve embeddings", e->req.model);
        fail(e, 400, "invalid_request_error", "model_not_supported", "model", msg);
        return;
    }
    /* The engine reads the body as sent (model replaced by the tier's
     * model id): a chat_request with only root and model, no messages. */
    e->chat.root = e->req.root;
    e->chat.model = e->req.model;
    e->chat.max_tokens = -1;
    admit_start(e);
}

/* ---- the client --------------------------------------------------------- */

static void on_client_close(struct httpd_req *r, void *arg)
{
    struct emb *e = arg;
    if (e->offload_pending) {
        /* The work pool reads the body: the HTTP request stays until the
         * job is done, and offload_done ends it. */
        e->gone = 1;
        return;
    }
    httpd_reply(r, 499, NULL, NULL, 0); /* only frees: the client is gone */
    e->r = NULL;
    e->error_code = "client_closed";
    switch (e->state) {
    case EMB_ADMITTING:
        e->gone = 1; /* on_admit ends it */
        return;
    case EMB_GENERATING:
        /* Nothing reached the client: nothing is charged (compute_cost). */
        engine_cancel(e->engine, e->engine_id);
        finish(e, 499);
        return;
    case EMB_RELAYING:
        e->gone = 1; /* relay_done ends it */
        return;
    case EMB_PREPARING:
    case EMB_FINISHED:
        break; /* not reached: preparing on the loop registers no callback; finished is freed */
    }
}

static void offload_done(void *arg)
{
    struct emb *e = arg;
    e->offload_pending = 0;
    if (e->gone) {
        httpd_reply(e->r, 499, NULL, NULL, 0); /* only frees */
        e->r = NULL;
        e->error_code = "client_closed";
        finish(e, 499);
        return;
    }
    prepared(e);
}

/* application/json, with or without parameters such as charset. */
static int is_json_type(const char *ct)
{
    if (!ct)
        return 0;
    size_t n = strcspn(ct, "; \t");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

void embeddings_handle(const struct chat_services *svc, struct httpd_req *r, struct config_snap *snap,
                       const struct tenant_config *tenant, const char *key_id, const char *request_id, uint64_t t0)
{
    struct emb *e = xcalloc(1, sizeof *e);
    e->svc = svc;
    e->snap = snap;
    e->cfg = &snap->cfg;
    e->r = r;
    e->tenant = tenant;
    e->key_id = key_id;
    e->state = EMB_PREPARING;
    e->t0 = t0;
    e->asked_tier = e->tier = e->first_failed = -1;
    e->tried = xcalloc(e->cfg->n_tiers ? e->cfg->n_tiers : 1, 1);
    snprintf(e->request_id, sizeof e->request_id, "%s", request_id);
    /* One hop of the client's trace, or the start of one. */
    trace_begin(&e->trace, httpd_req_header(r, "traceparent"), httpd_req_header(r, "tracestate"));
    metrics_inflight_add(svc->metrics, 1); /* finish takes it back */
    httpd_req_on_close(r, on_client_close, e);

    if (!is_json_type(httpd_req_header(r, "Content-Type"))) {
        fail(e, 415, "invalid_request_error", "unsupported_media_type", NULL, "Content-Type must be application/json");
        return;
    }
    size_t len;
    httpd_req_body(r, &len);
    if (len > OFFLOAD_BODY_BYTES && svc->pool &&
        workpool_submit(svc->pool, svc->base, prepare_work, offload_done, e) == 0) {
        e->offload_pending = 1;
        return;
    }
    prepare_work(e);
    prepared(e);
}
