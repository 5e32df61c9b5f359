/* chat.c: see chat.h. The states of one request:
 *
 *   parse, route, count ──> admit (policy) ──429──> reject
 *        │                     │ ok (maybe downgraded to a cheaper tier)
 *        │                     v
 *        │               cache lookup ──hit──────────────────────────> replay
 *        │                     │ miss: lead ──> engine ──> answer, store, wake waiters
 *        │                     │ miss: wait ──> leader's answer ──────> replay
 *        │                     │               leader failed ─────────> engine
 *        │                     └ Redis down/slow: bypass ─────────────> engine
 *        └ bad input: 4xx
 * and at the end, always: settle the reservation with the real cost (an
 * answer that came without usage is counted first, once, exactly).
 *
 * Work that grows with the body (parse, route, count; the cache key) runs
 * on the gateway's work pool when the body is over OFFLOAD_BODY_BYTES, so
 * one large request never stalls the others on this worker (offload()).
 * What comes back is bounded: the engine stops at max_tokens and at its
 * byte cap, a slow client pauses the engine (backpressure()), and the cache
 * stops collecting past cache.max_entry_bytes (cache_collect()).
 *
 * The HTTP request and this state have separate lifetimes: a client that
 * goes away releases the HTTP request at once, but a pending admission or
 * cache lookup still holds this state until its callback runs (`gone` then
 * says to drop it); a work-pool job holds both, since it reads the body.
 */
#include "gateway/chat.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cache/cache.h"
#include "cache/entry.h"
#include "cache/key.h"
#include "cache/singleflight.h"
#include "common/clock.h"
#include "common/httpd.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/openai.h"
#include "common/workpool.h"
#include "engines/engine.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "gateway/access.h"
#include "gateway/snapshot.h"
#include "gateway/metrics.h"
#include "policies/stats.h"
#include "classifier/classifier.h"
#include "policies/policy.h"
#include "policies/price.h"
#include "policies/routing.h"

/* Bodies larger than this are parsed, classified and counted on the work
 * pool: a tokenizer pass over 1 MB takes about 190 ms, the JSON parse of
 * 10 MB about 200, and on the worker's loop either would stall every other
 * request there. */
#define OFFLOAD_BODY_BYTES (64u << 10)
/* Received text longer than this is counted at settle on the work pool. */
#define OFFLOAD_COUNT_BYTES (4u << 10)
/* Stream backpressure: past HIGH bytes waiting for the client, the engine
 * is paused; httpd says when the client has taken the backlog down to
 * HTTPD_DRAIN_LOW_BYTES, and it goes on. */
#define STREAM_BACKLOG_HIGH (256u << 10)

/* How the tokens of an answer that came without usage are counted. */
enum count_mode {
    COUNT_PIECES,       /* one piece is one token (the native engine) */
    COUNT_TEXT,         /* the received text, by the gateway's tokenizer */
    COUNT_BYTES,        /* no tokenizer: an estimate from the bytes */
};

enum cache_plan {
    PLAN_BYPASS,        /* neither read nor write the cache */
    PLAN_LOOKUP,        /* read, and on a miss write */
    PLAN_REFRESH,       /* do not read, but write the fresh answer */
};

struct chat {
    const struct chat_services *svc; /* the worker's loop and the shared services */
    struct config_snap *snap;       /* the config this request runs under */
    const struct config *cfg;
    struct httpd_req *r;            /* NULL once released */
    const struct tenant_config *tenant;
    int tier;
    int is_auto;
    struct chat_request req;
    struct engine *engine;
    uint64_t engine_id;
    int engine_running;
    int engine_started;
    char id[48];                    /* chatcmpl-... */
    char request_id[80];
    int64_t created;
    uint64_t t0;
    uint64_t engine_t0, engine_us, ttft_us;   /* for the metrics */
    /* the answer so far: for the non-stream reply and for the cache entry */
    struct evbuffer *content;
    json_t *logprobs;
    int stream_open;                /* stream headers sent */
    struct engine_usage usage;
    int64_t tokens_received;        /* pieces from the engine: usage when it gives none */
    /* policy */
    int64_t prompt_tokens;          /* our count, for the estimate */
    const struct engine *counted_by;    /* the engine whose own tokenizer counted it, or NULL */
    int64_t counted_context;            /* that engine's context limit; 0 when unknown */
    int64_t max_requested;          /* the client's max_tokens, or -1 */
    int64_t max_tokens;             /* the output bound on the first tier (output_bound) */
    struct reservation *resv;
    int admit_pending;
    int64_t reserved_nano;          /* what admission reserved */
    int64_t cost_nano, saved_cache_nano, saved_routing_nano;
    int cost_warned;                /* the over-reservation warning was logged */
    int64_t charged_in, charged_out; /* the final tier's tokens settle charged */
    int hit_tier;                   /* the tier that produced a cache hit, or -1 */
    /* routing and the cascade */
    int scored;                     /* the classifier scored this request */
    float score;
    uint64_t classifier_us;
    int escalate_to;                /* -1: no cascade; else the tier to escalate to */
    int cascade_phase;              /* the cheap tier's answer is buffered for judging */
    int escalated;
    int client_logprobs;            /* the client asked for logprobs itself */
    double *lps;                    /* the cheap answer's token logprobs */
    int lps_failed;                 /* the cheap call failed: escalate regardless */
    size_t n_lps, cap_lps;
    int64_t first_cost_nano;        /* the cheap call's cost, when it escalated */
    /* cache */
    enum cache_plan plan;
    const char *cache_header;       /* x-cascade-cache: hit|miss|bypass */
    uint8_t key[32];
    int store;                      /* write the answer to the cache */
    int leader;                     /* we lead the single-flight for key */
    struct sf_waiter *waiter;       /* waiting on another request's answer */
    int lookup_pending;             /* a cache_get callback is due */
    int gone;                       /* the client left: drop, do not answer */
    /* bounds on what comes back */
    enum count_mode count_mode;
    size_t bytes_received;          /* text from the engine */
    int64_t counted_tokens;         /* COUNT_TEXT's result at settle, or -1 */
    size_t cache_bytes;             /* about what the cache entry holds so far */
    int paused;                     /* the engine is paused for a slow client */
    struct event *resume_ev;        /* made active when the paused client drains */
    int offload_pending;            /* a work-pool job holds this state (and reads r's body) */
    void (*offload_next)(struct chat *c);   /* what follows the job, on the loop */
    char route[200];                /* the cache key's route selector */
    int parse_rc;                   /* prepare_work's results, for prepared() */
    struct openai_error parse_err;
    int asked_tier;                 /* the tier the model names, before routing; -1: none */
    int done_status;                /* chat_done's status, kept while the count runs */
};

static const char *tier_name(const struct chat *c)
{
    return c->tier >= 0 ? c->cfg->tiers[c->tier].name : NULL;
}

static const char *model_name(const struct chat *c)
{
    return c->cfg->tiers[c->tier].model;
}

static int64_t tier_cost(const struct chat *c, int tier, int64_t prompt, int64_t completion)
{
    const struct tier_config *t = &c->cfg->tiers[tier];
    return price_cost_nano(t->price_in_per_1m, t->price_out_per_1m, prompt, completion);
}

static void chat_free(struct chat *c)
{
    chat_request_free(&c->req);
    if (c->content)
        evbuffer_free(c->content);
    json_decref(c->logprobs);
    free(c->lps);
    if (c->resume_ev)
        event_free(c->resume_ev);
    snapshot_release(c->snap);
    free(c);
}

/* What an engine sent, in tokens, when it reported no usage (cut at a
 * bound, cancelled, failed mid-answer): each piece carries at least one
 * token; COUNT_TEXT's exact count when settle made it; without a tokenizer,
 * four bytes a token. */
static int64_t received_tokens(const struct chat *c)
{
    int64_t n = c->tokens_received;
    int64_t other = c->count_mode == COUNT_TEXT && c->counted_tokens >= 0 ? c->counted_tokens
                    : c->count_mode == COUNT_PIECES                         ? 0
                                                                            : (int64_t)(c->bytes_received / 4);
    return other > n ? other : n;
}

/* The tokens one engine call is charged for: the usage the engine reported,
 * or, when it reported none (an error or a cancel mid-answer), our prompt
 * count and the pieces actually received. A call that produced nothing we
 * saw and reported nothing (no upstream accepted it, it failed or timed out
 * before the first token) costs nothing. */
static void charged_tokens(const struct chat *c, const struct engine_usage *u, int64_t received, int64_t *prompt,
                           int64_t *completion)
{
    if (u->prompt_tokens > 0 || u->completion_tokens > 0) {
        *prompt = u->prompt_tokens > 0 ? u->prompt_tokens : c->prompt_tokens;
        *completion = money_clamp(u->completion_tokens);
    } else if (received > 0) {
        *prompt = c->prompt_tokens;
        *completion = received;
    } else {
        *prompt = *completion = 0;
    }
}

/* What the request costs: an escalated request pays for both answers, and
 * never more than it reserved. Sets c->cost_nano; returns the tokens
 * charged on the final tier through prompt and completion, and the cost
 * before the reservation capped it (what savings are measured against). */
static int64_t compute_cost(struct chat *c, int64_t *prompt, int64_t *completion)
{
    *prompt = *completion = 0;
    c->cost_nano = 0;
    if (c->hit_tier >= 0 || !c->engine_started)
        return 0;
    charged_tokens(c, &c->usage, received_tokens(c), prompt, completion);
    c->cost_nano = money_add(c->first_cost_nano, tier_cost(c, c->tier, *prompt, *completion));
    int64_t uncapped = c->cost_nano;
    if (c->cost_nano > c->reserved_nano) {
        /* The engine counted more prompt tokens than our tokenizer, or a
         * cut answer's estimate ran high: the reservation is what the
         * budget allowed, so it is the charge. A client can cause this on
         * every request, so the line is rate-limited. */
        static struct log_limit over_log;
        if (!c->cost_warned++)
            log_limited(&over_log, 1000, LOG_WARN,
                        "request %s used more than it reserved (%" PRId64 " > %" PRId64 " nano-USD); charged the reservation",
                        c->request_id, c->cost_nano, c->reserved_nano);
        c->cost_nano = c->reserved_nano;
    }
    return uncapped;
}

/* Replace the reservation with what the request really cost (above). A hit
 * costs nothing and saves what its producer cost; a generation may save
 * against the tenant's largest tier. Only an answered request (status 200)
 * records savings: a failed, refused or abandoned one saved nothing. */
static void settle(struct chat *c, int status)
{
    int64_t prompt, completion;
    int64_t uncapped = compute_cost(c, &prompt, &completion);
    c->charged_in = prompt;
    c->charged_out = completion;
    c->saved_cache_nano = c->saved_routing_nano = 0;
    if (status == 200 && c->hit_tier >= 0) {
        c->saved_cache_nano = tier_cost(c, c->hit_tier, c->usage.prompt_tokens, c->usage.completion_tokens);
    } else if (status == 200 && c->engine_started) {
        /* Against the uncapped cost: a reservation that capped the charge
         * is not a saving of routing. */
        int64_t largest = tier_cost(c, c->tenant->largest_tier, prompt, completion);
        c->saved_routing_nano = money_sub(largest, uncapped);
    }
    if (!c->resv)
        return;
    struct settle_info info = {.cost_nano = c->cost_nano, .tokens = money_add(prompt, completion),
                               .saved_cache_nano = c->saved_cache_nano, .saved_routing_nano = c->saved_routing_nano};
    policy_settle(c->svc->policy, c->svc->base, c->resv, &info);
    c->resv = NULL;
}

/* One access line, after settle: its tokens are the ones charged (what an
 * operator reconciles with cost_nano), except for a hit, which charges
 * nothing and logs the cached answer's usage. */
static void log_access(struct chat *c, int status)
{
    int hit = c->hit_tier >= 0;
    struct access_entry e = {
        .request_id = c->request_id,
        .tenant = c->tenant->id,
        .tier = tier_name(c),
        .method = "POST",
        .path = "/v1/chat/completions",
        .status = status,
        .latency_us = clock_mono_us() - c->t0,
        .prompt_tokens = hit ? c->usage.prompt_tokens : c->charged_in,
        .completion_tokens = hit ? c->usage.completion_tokens : c->charged_out,
        .stream = c->req.stream,
        .cache = c->cache_header,
        .cost_nano = c->cost_nano,
        .saved_nano = c->saved_cache_nano + c->saved_routing_nano,
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
    sf_finish(cache_flights(c->svc->cache), c->key, value, len);
}

/* Fleet stats and Prometheus: what this request did, once, at its end. */
static void record(struct chat *c, int status)
{
    const struct chat_services *svc = c->svc;
    enum stats_cache cache = !c->cache_header || strcmp(c->cache_header, "bypass") == 0 ? STATS_CACHE_BYPASS
                             : strcmp(c->cache_header, "hit") == 0                   ? STATS_CACHE_HIT
                                                                                     : STATS_CACHE_MISS;
    int hit = c->hit_tier >= 0;
    uint64_t total = clock_mono_us() - c->t0;
    int tier = hit ? c->hit_tier : c->tier;
    struct stats_sample x = {
        .tenant = c->tenant->id, .tier = tier, .status = status, .cache = cache, .escalated = c->escalated,
        /* The tokens charged: the engine's usage, or what was received
         * when it reported none (a stream cut or broken mid-answer). */
        .tokens_in = hit ? 0 : c->charged_in, .tokens_out = hit ? 0 : c->charged_out,
        .cost_nano = c->cost_nano, .saved_cache_nano = c->saved_cache_nano,
        .saved_routing_nano = c->saved_routing_nano, .latency_us = total,
    };
    stats_record(svc->stats, c->svc->base, &x);
    metrics_request(svc->metrics, c->tenant->metrics_index, tier, status, cache, c->escalated, x.tokens_in, x.tokens_out, c->cost_nano,
                    c->saved_cache_nano + c->saved_routing_nano, total, c->req.stream ? c->ttft_us : 0,
                    total > c->engine_us ? total - c->engine_us : 0, c->scored ? c->classifier_us : 0);
}

/* The request is answered (or abandoned): settle, record, log and free. */
static void chat_finish(struct chat *c)
{
    int status = c->done_status;
    settle(c, status);
    record(c, status);
    metrics_inflight_add(c->svc->metrics, -1);
    log_access(c, status);
    chat_free(c);
}

/* Work pool (or loop, when short): the exact token count of the text. */
static void count_text_work(void *arg)
{
    struct chat *c = arg;
    size_t n = evbuffer_get_length(c->content);
    const char *text = (const char *)evbuffer_pullup(c->content, -1);
    struct tok_ids ids = {0};
    if (text && tokenizer_encode(c->svc->tokenizer, text, n, TOK_ADDED_AS_TEXT, &ids) == TOK_OK)
        c->counted_tokens = (int64_t)ids.n;
    tok_ids_free(&ids);
}

static void count_text_done(void *arg)
{
    chat_finish(arg);
}

/* The request is answered (or abandoned): settle, record, log and free.
 * An answer that came without usage is counted first, once, exactly (the
 * engine's stream was cut, cancelled or broken), off the loop when long:
 * the reply has gone already, so only settle waits for it. */
static void chat_done(struct chat *c, int status)
{
    finish_flight(c, NULL, 0);
    c->done_status = status;
    size_t n = c->content ? evbuffer_get_length(c->content) : 0;
    if (c->count_mode == COUNT_TEXT && c->engine_started && c->hit_tier < 0 && c->usage.completion_tokens <= 0 &&
        n > 0) {
        struct workpool *pool = c->svc->pool;
        if (n > OFFLOAD_COUNT_BYTES && pool &&
            workpool_submit(pool, c->svc->base, count_text_work, count_text_done, c) == 0)
            return;
        count_text_work(c);
    }
    chat_finish(c);
}

static int64_t output_bound(const struct chat *c, int tier);

static void set_headers(struct chat *c)
{
    /* The output bound used, whatever the tenant's expose_headers: it is
     * about the client's own parameter (clamped to the tier's ceiling). */
    if (c->tier >= 0 && c->max_tokens > 0) {
        char v[24];
        snprintf(v, sizeof v, "%" PRId64, output_bound(c, c->hit_tier >= 0 ? c->hit_tier : c->tier));
        httpd_resp_header(c->r, "x-cascade-max-tokens", v);
    }
    if (!c->tenant->expose_headers)
        return;
    httpd_resp_header(c->r, "x-cascade-tier", tier_name(c) ? tier_name(c) : "none");
    if (c->cache_header)
        httpd_resp_header(c->r, "x-cascade-cache", c->cache_header);
    if (c->scored) {
        char v[32];
        snprintf(v, sizeof v, "%.4f", c->score);
        httpd_resp_header(c->r, "x-cascade-score", v);
        httpd_resp_header(c->r, "x-cascade-escalated", c->escalated ? "true" : "false");
    }
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
    char *ev = openai_chat_chunk_event(c->id, c->created, model_name(c), "assistant", "", 0, NULL, NULL, NULL, NULL, &n);
    httpd_stream_write(c->r, ev, n);
    free(ev);
}

static void stream_piece(struct chat *c, const char *text, size_t len, json_t *entry)
{
    open_stream(c);
    json_t *arr = entry ? json_pack("[O]", entry) : NULL;
    size_t n;
    char *ev = openai_chat_chunk_event(c->id, c->created, model_name(c), NULL, text, len, arr, NULL, NULL, NULL, &n);
    httpd_stream_write(c->r, ev, n);
    free(ev);
    json_decref(arr);
}

/* A whole answer held back (a cache entry, or a judged cascade answer) sent
 * in the chunk format of a fresh stream: one chunk per token when logprob
 * entries are given, else the text in one piece. */
static void stream_whole(struct chat *c, const char *text, size_t len, json_t *entries)
{
    size_t off = 0, i;
    json_t *e;
    json_array_foreach(entries, i, e) {
        size_t n = json_string_length(json_object_get(e, "token"));
        if (off + n > len)
            n = len - off;
        stream_piece(c, text + off, n, e);
        off += n;
    }
    if (off < len)
        stream_piece(c, text + off, len - off, NULL);
}

/* The end of an answer, fresh or replayed: last chunk, usage, [DONE]; or the
 * whole JSON body. Releases the HTTP request. */
static void send_final(struct chat *c, const char *finish_reason)
{
    struct openai_usage u = {c->usage.prompt_tokens, c->usage.completion_tokens};
    if (c->req.stream) {
        open_stream(c);
        size_t n;
        char *ev = openai_chat_chunk_event(c->id, c->created, model_name(c), NULL, NULL, 0, NULL, finish_reason, NULL, NULL, &n);
        httpd_stream_write(c->r, ev, n);
        free(ev);
        if (c->req.include_usage) {
            ev = openai_chat_usage_event(c->id, c->created, model_name(c), &u, NULL, &n);
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
                                          &u, lp, NULL, NULL);
        json_decref(lp);
        set_headers(c);
        if (c->tenant->expose_headers) {
            /* Known before the body goes out only for a non-stream answer;
             * the same figure settle will charge. */
            int64_t prompt, completion;
            compute_cost(c, &prompt, &completion);
            char usd[32];
            snprintf(usd, sizeof usd, "%.9f", price_nano_to_usd(c->cost_nano));
            httpd_resp_header(c->r, "x-cascade-cost-usd", usd);
        }
        httpd_reply(c->r, 200, "application/json", body, strlen(body));
        free(body);
    }
    c->r = NULL;
}

/* The cache entry (cache/entry.h) of this answer; NULL when its content
 * is not valid UTF-8 (not worth storing). */
static char *cache_value(struct chat *c, const char *finish_reason, size_t *len)
{
    struct cache_entry e = {
        .content = (const char *)evbuffer_pullup(c->content, -1),
        .content_len = evbuffer_get_length(c->content),
        .finish_reason = finish_reason,
        .prompt_tokens = c->usage.prompt_tokens,
        .completion_tokens = c->usage.completion_tokens,
        .tier = tier_name(c),
        .model = model_name(c),
        .created = c->created,
        .logprobs = c->logprobs,
    };
    if (!e.content)
        e.content = "";
    return cache_entry_encode(&e, len);
}

/* Answer from a cache entry (ours or a single-flight leader's). The bytes
 * come from Redis and are checked by cache_entry_decode(). 0, or -1 when
 * the entry is unusable and the engine must answer instead. */
static int replay(struct chat *c, const char *value, size_t len)
{
    struct cache_entry e;
    if (cache_entry_decode(value, len, &e) < 0)
        return -1;
    if (c->req.logprobs && !e.logprobs) {
        cache_entry_free(&e);
        return -1;
    }
    c->usage.prompt_tokens = e.prompt_tokens;
    c->usage.completion_tokens = e.completion_tokens;
    int ht = e.tier ? config_tier_index(c->cfg, e.tier) : -1;
    c->hit_tier = ht >= 0 ? ht : c->tier;
    if (c->req.stream) {
        stream_whole(c, e.content, e.content_len, c->req.logprobs ? e.logprobs : NULL);
    } else {
        evbuffer_add(c->content, e.content, e.content_len);
        if (c->req.logprobs)
            c->logprobs = json_incref(e.logprobs);
    }
    send_final(c, e.finish_reason);
    cache_entry_free(&e);
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

/* The serialized size of a logprobs entry, about (its "bytes" arrays make
 * it about four characters a byte): what it adds to a cache entry. */
static size_t logprob_entry_bytes(const struct engine_token *t)
{
    size_t n = 48 + 4 * t->len;
    for (size_t i = 0; i < t->n_top; i++)
        n += 48 + 4 * strlen(t->top[i].token);
    return n;
}

/* The cache gives up on an answer once it is larger than an entry may be
 * (cache.max_entry_bytes): a stream stops collecting it, it will not be
 * stored, and requests waiting on it go to the engine on their own. */
static void cache_collect(struct chat *c, const struct engine_token *t, int with_entry)
{
    c->cache_bytes += t->len + (with_entry ? logprob_entry_bytes(t) : 0);
    if (c->cache_bytes <= c->cfg->cache.max_entry_bytes)
        return;
    c->store = 0;
    finish_flight(c, NULL, 0);
    if (c->req.stream) {
        json_decref(c->logprobs);
        c->logprobs = NULL;
    }
}

/* Stream backpressure (see STREAM_BACKLOG_HIGH). The client has caught
 * up: the engine goes on. Runs as its own event, not inside httpd's write
 * callback, so that the engine may deliver output (and the request end)
 * from here. */
static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct chat *c = arg;
    if (!c->paused)
        return;
    c->paused = 0;
    if (c->r)
        httpd_req_on_drain(c->r, NULL, NULL);
    if (c->engine_running)
        engine_pause(c->engine, c->engine_id, 0);
}

static void on_client_drain(struct httpd_req *r, void *arg)
{
    (void)r;
    struct chat *c = arg;
    if (c->paused)
        event_active(c->resume_ev, 0, 0);
}

static void backpressure(struct chat *c)
{
    if (c->paused || !c->r || httpd_stream_backlog(c->r) <= STREAM_BACKLOG_HIGH)
        return;
    if (!c->resume_ev)
        c->resume_ev = event_new(c->svc->base, -1, 0, resume_cb, c);
    if (!c->resume_ev)
        return; /* out of memory: no backpressure, the byte caps still hold */
    c->paused = 1;
    httpd_req_on_drain(c->r, on_client_drain, c);
    engine_pause(c->engine, c->engine_id, 1);
}

static void on_token(void *ctx, const struct engine_token *t)
{
    struct chat *c = ctx;
    c->tokens_received++;
    c->bytes_received += t->len;
    if (c->cascade_phase) {
        /* The cheap answer waits, whole, until it is judged. */
        if (t->has_logprob) {
            if (c->n_lps == c->cap_lps) {
                c->cap_lps = c->cap_lps ? c->cap_lps * 2 : 64;
                c->lps = xrealloc(c->lps, c->cap_lps * sizeof *c->lps);
            }
            c->lps[c->n_lps++] = t->logprob;
        }
        evbuffer_add(c->content, t->text, t->len);
        if (c->client_logprobs && t->has_logprob) {
            if (!c->logprobs)
                c->logprobs = json_array();
            json_array_append_new(c->logprobs, logprob_entry(t));
        }
        return;
    }
    if (!c->ttft_us)
        c->ttft_us = clock_mono_us() - c->t0;
    json_t *entry = (c->req.logprobs && t->has_logprob) ? logprob_entry(t) : NULL;
    if (c->req.stream && (t->len || entry)) {
        stream_piece(c, t->text, t->len, entry);
        backpressure(c);
    }
    if (c->store)
        cache_collect(c, t, entry != NULL);
    /* Kept whole for a non-stream reply and for the cache entry; a stream
     * keeps its text only to count it at settle, if usage never comes. */
    if (!c->req.stream || c->store || c->count_mode == COUNT_TEXT)
        evbuffer_add(c->content, t->text, t->len);
    if (entry && (!c->req.stream || c->store)) {
        if (!c->logprobs)
            c->logprobs = json_array();
        json_array_append(c->logprobs, entry);
    }
    json_decref(entry);
}

static void start_engine(struct chat *c);

/* The cheap tier has answered in the cascade zone: keep its answer, or
 * escalate. 1 when a new engine call took over the request. */
static int cascade_judge(struct chat *c, const struct engine_usage *usage)
{
    c->cascade_phase = 0;
    c->req.logprobs = c->client_logprobs;
    if (!c->client_logprobs)
        json_object_del(c->req.root, "logprobs");
    struct confidence conf = routing_confidence(c->lps, c->n_lps, c->tenant->routing.window);
    if (!c->lps_failed && !routing_should_escalate(&c->tenant->routing, &conf)) {
        if (c->req.stream) {
            /* Now the client gets it, in the usual chunks. */
            size_t len = evbuffer_get_length(c->content);
            stream_whole(c, (const char *)evbuffer_pullup(c->content, -1), len, c->logprobs);
            c->ttft_us = clock_mono_us() - c->t0;
        }
        return 0;
    }
    /* Not sure enough: pay for the cheap answer, drop it, ask the top tier.
     * A failed call is charged only for what it produced. */
    int64_t prompt, completion;
    charged_tokens(c, usage, c->tokens_received, &prompt, &completion);
    c->first_cost_nano = tier_cost(c, c->tier, prompt, completion);
    log_debug("request %s escalates from %s (mean logprob %.3f, window min %.3f over %zu tokens)", c->request_id,
              tier_name(c), conf.mean, conf.window_min, conf.n);
    evbuffer_drain(c->content, evbuffer_get_length(c->content));
    json_decref(c->logprobs);
    c->logprobs = NULL;
    c->tokens_received = 0;
    c->bytes_received = 0;
    c->escalated = 1;
    c->tier = c->escalate_to;
    start_engine(c);
    return 1;
}

static void on_done(void *ctx, const struct engine_usage *usage, const char *finish_reason)
{
    struct chat *c = ctx;
    c->engine_running = 0;
    c->engine_us += clock_mono_us() - c->engine_t0;
    if (c->cascade_phase && cascade_judge(c, usage))
        return;
    /* An upstream's usage is outside input: a negative count is none. */
    c->usage.prompt_tokens = money_clamp(usage->prompt_tokens);
    c->usage.completion_tokens = money_clamp(usage->completion_tokens);
    /* An entry replays its usage, so an answer without one (a stream cut
     * at max_tokens) is not stored. */
    size_t vlen = 0;
    char *value = c->store && c->usage.completion_tokens > 0 ? cache_value(c, finish_reason, &vlen) : NULL;
    if (value) {
        const struct tenant_config *t = c->tenant;
        cache_put(c->svc->cache, c->svc->base, t->id, c->key, value, vlen, t->cache_ttl_s);
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
    if (c->cascade_phase && e->status >= 500) {
        /* The cheap tier failed in the cascade zone: the top tier answers,
         * as it would have for an unsure answer. */
        struct engine_usage none = {0, 0};
        log_warn("request %s: %s failed (%s); escalating", c->request_id, tier_name(c), e->message);
        c->lps_failed = 1;
        cascade_judge(c, &none);
        return;
    }
    if (c->stream_open) {
        /* The status line is gone; OpenAI's clients read an error event. */
        struct openai_error oe;
        openai_error_set(&oe, e->status, e->type, e->code, NULL, "%s", e->message);
        size_t n;
        char *ev = openai_error_event(&oe, &n);
        httpd_stream_write(c->r, ev, n);
        free(ev);
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
    if (!c->content)
        c->content = evbuffer_new();
    struct engine_request er = {
        .base = c->svc->base,
        .chat = &c->req,
        .model = model_name(c),
        .stream = c->req.stream,
        .request_id = c->request_id,
        .max_tokens = output_bound(c, c->tier),
    };
    c->engine = c->svc->engines[c->tier];
    c->engine_t0 = clock_mono_us();
    /* Without usage from the engine, settle counts what it sent (above). */
    c->count_mode = c->svc->tokenizer ? COUNT_TEXT : COUNT_BYTES;
    if (engine_token_pieces(c->engine))
        c->count_mode = COUNT_PIECES;
    c->paused = 0;
    if (c->escalate_to >= 0 && !c->escalated && !c->cascade_phase) {
        /* The cheap try: its confidence comes from logprobs, asked for
         * whether or not the client wants them. */
        c->cascade_phase = 1;
        c->client_logprobs = c->req.logprobs;
        c->req.logprobs = 1;
        json_object_set_new(c->req.root, "logprobs", json_true());
    }
    /* The engine's own tokenizer counted this prompt (on the work pool
     * when it was big). One that cannot fit its context gets the engine's
     * own refusal here, without being tokenized again on this loop: a 10 MB
     * prompt would hold the worker for seconds. */
    if (c->counted_by == c->engine && c->counted_context > 0 &&
        c->prompt_tokens >= c->counted_context) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "This model's maximum context length is %" PRId64 " tokens. However, your messages resulted in "
                 "%" PRId64 " tokens. Please reduce the length of the messages.",
                 c->counted_context, c->prompt_tokens);
        struct engine_error err = {.status = 400, .type = "invalid_request_error", .code = "context_length_exceeded", .message = msg};
        c->engine_running = 1; /* on_error ends the call that never started */
        on_error(c, &err);
        return;
    }
    if (engine_submit(c->engine, &er, &chat_callbacks, c, &c->engine_id) < 0) {
        reply_error(c, 503, "server_error", "engine_unavailable", NULL, "the engine cannot take requests now");
        return;
    }
    c->engine_running = 1;
    c->engine_started = 1;
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
        c->hit_tier = -1;
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
    c->waiter = sf_join(cache_flights(c->svc->cache), c->key, c->svc->base, on_flight, c);
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

/* After admission: the cache, then the engine. */
static void key_work(void *arg);
static void keyed(struct chat *c);
static void offload(struct chat *c, workpool_fn work, void (*next)(struct chat *c));

static void serve(struct chat *c)
{
    c->plan = cache_plan(c);
    if (c->plan == PLAN_BYPASS) {
        c->cache_header = "bypass";
        start_engine(c);
        return;
    }
    /* The route selector: a tier by name (a model id maps to its tier), or
     * auto with what auto means for this tenant now. */
    if (c->is_auto && c->scored)
        snprintf(c->route, sizeof c->route, "%s", c->tenant->routing_version);
    else
        snprintf(c->route, sizeof c->route, "%s:%s", c->is_auto ? "auto" : "tier", tier_name(c));
    /* The key hashes the messages: for a large body, on the work pool. */
    offload(c, key_work, keyed);
}

/* Work pool or loop: the cache key (reads c->req and c->route). */
static void key_work(void *arg)
{
    struct chat *c = arg;
    cache_key(c->tenant->id, c->route, &c->req, c->key);
}

/* Keyed: refresh, or look the answer up. */
static void keyed(struct chat *c)
{
    if (c->plan == PLAN_REFRESH) {
        c->cache_header = "miss";
        c->store = 1;
        start_engine(c);
        return;
    }
    c->lookup_pending = 1;
    cache_get(c->svc->cache, c->svc->base, c->tenant->id, c->key, on_lookup, c);
}

/* ---- admission ---------------------------------------------------------- */

static void ratelimit_headers(struct chat *c, const struct admit_result *res)
{
    char v[32];
    if (res->limit_requests > 0) {
        snprintf(v, sizeof v, "%" PRId64, res->limit_requests);
        httpd_resp_header(c->r, "x-ratelimit-limit-requests", v);
        snprintf(v, sizeof v, "%" PRId64, res->remaining_requests);
        httpd_resp_header(c->r, "x-ratelimit-remaining-requests", v);
        snprintf(v, sizeof v, "%.3fs", (double)res->reset_requests_ms / 1000.0);
        httpd_resp_header(c->r, "x-ratelimit-reset-requests", v);
    }
    if (res->limit_tokens > 0) {
        snprintf(v, sizeof v, "%" PRId64, res->limit_tokens);
        httpd_resp_header(c->r, "x-ratelimit-limit-tokens", v);
        snprintf(v, sizeof v, "%" PRId64, res->remaining_tokens);
        httpd_resp_header(c->r, "x-ratelimit-remaining-tokens", v);
        snprintf(v, sizeof v, "%.3fs", (double)res->reset_tokens_ms / 1000.0);
        httpd_resp_header(c->r, "x-ratelimit-reset-tokens", v);
    }
}

static void on_admit(void *ctx, const struct admit_result *res, struct reservation *resv)
{
    struct chat *c = ctx;
    c->admit_pending = 0;
    c->resv = resv;
    c->reserved_nano = res->reserved_nano;
    if (c->gone) {
        chat_done(c, 499); /* settles the reservation at 0 */
        return;
    }
    ratelimit_headers(c, res);
    if (res->status != ADMIT_OK && res->status != ADMIT_DOWNGRADED) {
        char ra[24];
        snprintf(ra, sizeof ra, "%" PRId64, res->retry_after_s);
        httpd_resp_header(c->r, "Retry-After", ra);
        switch (res->status) {
        case ADMIT_LIMIT_REQUESTS:
            reply_error(c, 429, "rate_limit_exceeded", "rate_limit_exceeded", NULL,
                        "Rate limit reached for requests per minute");
            return;
        case ADMIT_LIMIT_TOKENS:
            reply_error(c, 429, "rate_limit_exceeded", "rate_limit_exceeded", NULL,
                        "Rate limit reached for tokens per minute");
            return;
        case ADMIT_LIMIT_CONCURRENCY:
            reply_error(c, 429, "rate_limit_exceeded", "concurrency_limit_exceeded", NULL,
                        "Too many concurrent requests for this tenant");
            return;
        default:
            reply_error(c, 429, "insufficient_quota", "budget_exceeded", NULL,
                        "The tenant's budget is exhausted");
            return;
        }
    }
    if (res->status == ADMIT_DOWNGRADED) {
        c->tier = c->tenant->cheapest_tier;
        c->escalate_to = -1;
        /* The cheaper tier's own bound (what alt_cost reserved), also for
         * the cache key, which covers the bound an answer was made with. */
        c->req.max_tokens = output_bound(c, c->tier);
    }
    serve(c);
}

/* model "auto": the classifier scores the prompt (the last user message,
 * the system prompt, the conversation's length) and the tenant's routing
 * settings pick the tier, or a cascade. */
static void route_auto(struct chat *c)
{
    struct classifier_input in = {.n_messages = (int)c->req.n_messages};
    for (size_t i = 0; i < c->req.n_messages; i++) {
        const struct chat_message *m = &c->req.messages[i];
        if ((m->role == ROLE_SYSTEM || m->role == ROLE_DEVELOPER) && !in.system) {
            in.system = m->content;
            in.system_len = m->content_len;
        } else if (m->role == ROLE_USER) {
            in.user = m->content;
            in.user_len = m->content_len;
        }
    }
    uint64_t t = clock_mono_us();
    c->score = classifier_score(c->svc->classifier, &in);
    c->classifier_us = clock_mono_us() - t;
    c->scored = 1;
    const struct tenant_config *tc = c->tenant;
    struct route_plan plan = routing_route(&tc->routing, tc->by_price, tc->n_allowed, c->score, c->req.stream,
                                           c->cfg->tiers[tc->by_price[0]].logprobs);
    c->tier = plan.tier;
    c->escalate_to = plan.escalate_to;
}

/* Prompt tokens as the DeepSeek tokenizer counts them through the chat
 * template; without a tokenizer, a deliberately high estimate. Sets
 * c->counted_by when an in-process engine counted them itself. */
static int64_t count_prompt(struct chat *c)
{
    c->counted_by = NULL;
    /* An engine that can count (the in-process one) counts with its own
     * tokenizer, as it will bill. */
    struct engine *e = c->svc->engines[c->tier];
    struct engine_prompt_count own;
    if (engine_count_prompt(e, &c->req, &own) == 0) {
        c->counted_by = e;
        c->counted_context = own.context;
        return own.tokens;
    }
    const struct tokenizer *tok = c->svc->tokenizer;
    if (tok) {
        struct chat_turn *turns = xcalloc(c->req.n_messages, sizeof *turns);
        for (size_t i = 0; i < c->req.n_messages; i++) {
            const struct chat_message *m = &c->req.messages[i];
            turns[i].role = m->role == ROLE_DEVELOPER ? "system" : chat_role_name(m->role);
            turns[i].content = m->content;
            turns[i].len = m->content_len;
        }
        size_t n = 0;
        int rc = chat_template_count(tok, turns, c->req.n_messages, 1, TOK_ADDED_AS_TEXT, &n);
        free(turns);
        if (rc == TOK_OK)
            return (int64_t)n;
    }
    int64_t bytes = 0;
    for (size_t i = 0; i < c->req.n_messages; i++)
        bytes += (int64_t)c->req.messages[i].content_len + 4;
    return bytes / 2 + 8;
}

/* The output bound on one tier: the tier's max_output_tokens is both the
 * default and the ceiling, and the tenant's cap lowers it further. A larger
 * max_tokens is clamped, not refused (an "auto" request cannot know its
 * tier, and SDKs send large defaults); the client learns the bound used
 * from x-cascade-max-tokens. The reservation covers exactly this bound, the
 * engine gets it as engine_request.max_tokens, and the client's JSON is left
 * as it came. */
static int64_t output_bound(const struct chat *c, int tier)
{
    int64_t ceiling = c->cfg->tiers[tier].max_output_tokens;
    if (c->tenant->max_tokens_cap > 0 && c->tenant->max_tokens_cap < ceiling)
        ceiling = c->tenant->max_tokens_cap;
    int64_t asked = c->max_requested;
    return asked > 0 && asked < ceiling ? asked : ceiling;
}

/* Fix the bound for the tier chosen so far. req.max_tokens takes it too,
 * since the cache key covers the bound an answer was generated with: asking
 * for 10^10 tokens or for the ceiling is the same request. */
static void bound_max_tokens(struct chat *c)
{
    c->max_requested = c->req.max_tokens;
    c->max_tokens = output_bound(c, c->tier);
    c->req.max_tokens = c->max_tokens;
}

/* ---- the client --------------------------------------------------------- */

static void on_client_close(struct httpd_req *r, void *arg)
{
    struct chat *c = arg;
    if (c->offload_pending) {
        /* The work pool is reading the body: the HTTP request stays until
         * the job is done, and prepare_done releases it. */
        c->gone = 1;
        return;
    }
    /* Release the HTTP request: replying to a gone client only frees it. */
    if (c->stream_open)
        httpd_stream_end(r);
    else
        httpd_reply(r, 499, NULL, NULL, 0);
    c->r = NULL;
    if (c->engine_running) {
        /* A cancelled generation is never cached; waiters go on their own.
         * The tokens generated so far are still charged. */
        engine_cancel(c->engine, c->engine_id);
        c->engine_running = 0;
    }
    if (c->waiter) {
        sf_leave(cache_flights(c->svc->cache), c->waiter);
        c->waiter = NULL;
    }
    if (c->lookup_pending || c->admit_pending) {
        c->gone = 1; /* the pending callback frees us */
        return;
    }
    chat_done(c, 499);
}

/* The part of a request's start whose time grows with its body: the JSON
 * parse, the classifier's score (and so the tier) for "auto", and the
 * prompt's token count. It replies nothing; prepared() reads its results.
 * It reads the body, the config and c (see offload()). */
static void prepare_work(void *arg)
{
    struct chat *c = arg;
    size_t len;
    const char *body = httpd_req_body(c->r, &len);
    c->parse_rc = chat_request_parse(body, len, &c->req, &c->parse_err);
    if (c->parse_rc < 0)
        return;
    /* "auto" is the tenant's default until the classifier routes it. */
    c->is_auto = strcmp(c->req.model, "auto") == 0;
    c->asked_tier = c->is_auto ? c->tenant->default_tier : config_tier_index(c->cfg, c->req.model);
    if (c->asked_tier < 0 || !config_tenant_allows(c->tenant, c->asked_tier))
        return;
    c->tier = c->asked_tier;
    if (c->is_auto && c->svc->classifier)
        route_auto(c);
    c->prompt_tokens = count_prompt(c);
}

static void admit_start(struct chat *c);

/* Loop thread, after prepare_work: bad input gets its error; a good
 * request gets its id and goes to admission. */
static void prepared(struct chat *c)
{
    if (c->parse_rc < 0) {
        struct openai_error *err = &c->parse_err;
        reply_error(c, err->status, err->type, err->code, err->param, err->message);
        return;
    }
    if (c->asked_tier < 0) {
        char msg[200];
        snprintf(msg, sizeof msg, "The model '%.100s' does not exist", c->req.model);
        reply_error(c, 404, "invalid_request_error", "model_not_found", "model", msg);
        return;
    }
    if (c->tier < 0) {
        char msg[200];
        snprintf(msg, sizeof msg, "Tier '%.100s' is not allowed for this API key", c->cfg->tiers[c->asked_tier].name);
        reply_error(c, 403, "permission_error", "tier_not_allowed", "model", msg);
        return;
    }
    char rid[17];
    access_new_id(rid);
    snprintf(c->id, sizeof c->id, "chatcmpl-%s", rid);
    c->created = clock_wall_s();
    c->content = evbuffer_new();
    httpd_req_on_close(c->r, on_client_close, c);
    admit_start(c);
}

static void offload_done(void *arg)
{
    struct chat *c = arg;
    c->offload_pending = 0;
    if (c->gone) {
        httpd_reply(c->r, 499, NULL, NULL, 0); /* the client has gone: this only frees */
        c->r = NULL;
        chat_done(c, 499);
        return;
    }
    c->offload_next(c);
}

/* Run work(c), whose time grows with the body, then next(c) on the loop.
 * For a body over OFFLOAD_BODY_BYTES the work goes to the pool, and the
 * loop serves other requests meanwhile; a client that leaves meanwhile is
 * seen when the job is done (on_client_close only marks it gone). */
static void offload(struct chat *c, workpool_fn work, void (*next)(struct chat *c))
{
    size_t len;
    httpd_req_body(c->r, &len);
    struct workpool *pool = c->svc->pool;
    if (len > OFFLOAD_BODY_BYTES && pool) {
        httpd_req_on_close(c->r, on_client_close, c);
        c->offload_next = next;
        if (workpool_submit(pool, c->svc->base, work, offload_done, c) == 0) {
            c->offload_pending = 1;
            return;
        }
    }
    work(c);
    next(c);
}

/* application/json, with or without parameters such as charset. */
static int is_json_type(const char *ct)
{
    if (!ct)
        return 0;
    size_t n = strcspn(ct, "; \t");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

void chat_handle(const struct chat_services *svc, struct httpd_req *r, struct config_snap *snap, const struct tenant_config *tenant,
                 const char *request_id, uint64_t t0)
{
    struct chat *c = xcalloc(1, sizeof *c);
    c->svc = svc;
    c->snap = snap;
    c->cfg = &snap->cfg;
    c->r = r;
    c->tenant = tenant;
    c->tier = -1;
    c->hit_tier = -1;
    c->escalate_to = -1;
    c->t0 = t0;
    c->req.max_tokens = -1;
    c->counted_tokens = -1;
    c->asked_tier = -1;
    snprintf(c->request_id, sizeof c->request_id, "%s", request_id);

    if (!is_json_type(httpd_req_header(r, "Content-Type"))) {
        reply_error(c, 415, "invalid_request_error", "unsupported_media_type", NULL,
                    "Content-Type must be application/json");
        return;
    }
    /* Parsing, classifying and counting grow with the body. */
    offload(c, prepare_work, prepared);
}

/* Prepared: fix the output bound, estimate the cost, and ask the policy. */
static void admit_start(struct chat *c)
{
    const struct chat_services *svc = c->svc;
    const struct tenant_config *tenant = c->tenant;
    bound_max_tokens(c);
    /* A cascade may run both tiers: reserve both, each at its own bound.
     * Saturating sums (price.h): no estimate can wrap into a credit. */
    int64_t est = tier_cost(c, c->tier, c->prompt_tokens, c->max_tokens);
    int64_t est_tokens = money_add(c->prompt_tokens, c->max_tokens);
    if (c->escalate_to >= 0) {
        int64_t bound = output_bound(c, c->escalate_to);
        est = money_add(est, tier_cost(c, c->escalate_to, c->prompt_tokens, bound));
        est_tokens = money_add(est_tokens, money_add(c->prompt_tokens, bound));
    }
    struct admit_request aq = {
        .tenant = tenant->id,
        .limits = &tenant->limits,
        .request_id = c->id, /* ours, unique: a client's x-request-id may repeat */
        .est_tokens = est_tokens,
        .est_cost_nano = est,
        .alt_cost_nano = -1,
    };
    if (tenant->downgrade && (tenant->cheapest_tier != c->tier || c->escalate_to >= 0))
        aq.alt_cost_nano = tier_cost(c, tenant->cheapest_tier, c->prompt_tokens, output_bound(c, tenant->cheapest_tier));
    c->admit_pending = 1;
    policy_admit(svc->policy, svc->base, &aq, on_admit, c);
}
