/* chat.c: see chat.h. The states of one request (enum chat_state):
 *
 *   PREPARING: parse, route, count ──> ADMITTING (policy) ──429──> reject
 *        │                               │ ok (maybe downgraded to a cheaper tier)
 *        │                               v
 *        │                KEYING ──> LOOKING_UP ──hit─────────────────> replay
 *        │                               │ miss: lead ──> GENERATING ──> answer, store, wake waiters
 *        │                               │ miss: WAITING ──> leader's answer ──> replay
 *        │                               │                   leader failed ──> GENERATING
 *        │                               └ Redis down/slow: bypass ─────> GENERATING
 *        └ bad input: 4xx
 *   GENERATING: an engine call runs. The cheap leg of a cascade is judged
 *   when it ends and may hand over to the top tier (escalate); a call that
 *   fails before any byte reached the client, for a reason another tier
 *   need not share (engine_error.retryable), hands over to the tier's
 *   fallback, then the fallback's, before the client sees an error.
 *   FINISHING: answered or abandoned; settle the reservation with the real
 *   cost (an answer that came without usage is counted first, once,
 *   exactly, maybe on the work pool), record, log, free.
 *
 * Remote tiers answer with more than text: tool calls, reasoning, refusals,
 * system_fingerprint. Those fields reach us as JSON beside the text
 * (engine_token.extra and .meta); a stream relays them in each chunk as
 * they come, and they are merged (openai_delta_merge) into the whole
 * message for a non-stream reply and for the cache entry, which replays
 * them both ways.
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

#include <assert.h>
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
#include "common/fmt.h"
#include "common/httpd.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/completions.h"
#include "common/openai.h"
#include "common/trace.h"
#include "common/workpool.h"
#include "engines/engine.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "gateway/access.h"
#include "gateway/snapshot.h"
#include "gateway/metrics.h"
#include "gateway/reply.h"
#include "policies/stats.h"
#include "classifier/classifier.h"
#include "classifier/options.h"
#include "policies/policy.h"
#include "policies/price.h"
#include "policies/judge.h"
#include "policies/routing.h"
#include "policies/share.h"

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

/* A token of the cheap answer as the judge needs it (policies/judge.h):
 * offsets into c->content and c->alt_text, since both grow. */
struct judged_tok {
    size_t off, len;
    int has_logprob;
    double logprob;
    size_t alt0, n_alt;             /* its alternatives in c->jalts */
};
struct judged_alt {
    size_t off, len;                /* len 0 for text longer than any letter (JUDGE_ALT_MAX) */
    double logprob;
};

/* How the tokens of an answer that came without usage are counted. */
enum count_mode {
    COUNT_PIECES,       /* one piece is one token (the native engine) */
    COUNT_TEXT,         /* the received text, by the gateway's tokenizer */
    COUNT_BYTES,        /* no tokenizer: an estimate from the bytes */
};

/* Where a request is. Each callback states which states it accepts (an
 * assert: only a bug could break it). */
enum chat_state {
    CHAT_PREPARING,     /* parse, route, count: maybe on the work pool */
    CHAT_ADMITTING,     /* policy_admit's callback is due */
    CHAT_KEYING,        /* the cache key is being made: maybe on the work pool */
    CHAT_LOOKING_UP,    /* cache_get's callback is due */
    CHAT_WAITING,       /* a single-flight leader's answer is awaited */
    CHAT_GENERATING,    /* an engine call runs (cascade_phase: the cheap leg) */
    CHAT_FINISHING,     /* answered or abandoned: settle, record, free */
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
    struct chat_request req;        /* for /v1/completions, the prompt as one user message */
    int completion;                 /* POST /v1/completions: its writers, no chat template */
    struct completion_request comp; /* its own fields (prompt, echo); comp.chat moved into req */
    size_t text_offset;             /* completions' logprobs: bytes of text sent so far */
    enum chat_state state;
    struct engine *engine;
    uint64_t engine_id;
    int engine_started;             /* some engine call was made: the request may cost */
    char id[48];                    /* chatcmpl-... */
    char request_id[80];
    int64_t created;
    uint64_t t0;
    uint64_t engine_t0, engine_us, ttft_us;   /* for the metrics */
    /* the answer so far: for the non-stream reply and for the cache entry */
    struct evbuffer *content;
    json_t *logprobs;
    json_t *extra;                  /* the message's other fields so far (openai_delta_merge), or NULL */
    json_t *meta;                   /* the latest chunk fields to pass on (system_fingerprint), or NULL */
    int extra_bad;                  /* the upstream's extras did not merge: relayed, never cached */
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
    int64_t reserved_nano;          /* what admission reserved */
    int64_t cost_nano, saved_cache_nano, saved_routing_nano, routing_loss_nano;
    int cost_warned;                /* the over-reservation warning was logged */
    int64_t charged_in, charged_out; /* the final tier's tokens settle charged */
    int hit_tier;                   /* the tier that produced a cache hit, or -1 */
    /* routing and the cascade */
    int scored;                     /* the classifier scored this request */
    int route_kind;                 /* enum route_kind of "auto"'s plan; -1: not routed */
    float score;
    uint64_t classifier_us;
    int escalate_to;                /* -1: no cascade; else the tier to escalate to */
    int cascade_phase;              /* the cheap tier's answer is buffered for judging */
    int escalated;
    int first_failed;               /* the tier that failed when a fallback took over, or -1 */
    int lps_failed;                 /* the cheap call failed: escalate regardless */
    /* The cheap answer's tokens, for the judge: each one's place in content,
     * its logprob and, on a multiple-choice prompt, its alternatives
     * (judged_tok, judged_alt; their text in alt_text). */
    struct judged_tok *jtoks;
    size_t n_jtoks, cap_jtoks;
    struct judged_alt *jalts;
    size_t n_jalts, cap_jalts;
    struct evbuffer *alt_text;
    char letters[OPTIONS_MAX];      /* the prompt's option letters (options_parse) */
    int n_letters;                  /* 0: free text */
    int judged;                     /* judgement holds the cascade's verdict */
    struct judgement judgement;
    int64_t first_cost_nano;        /* the cheap call's cost, when it escalated */
    /* cache */
    enum cache_plan plan;
    const char *cache_header;       /* x-cascade-cache: hit|miss|bypass */
    uint8_t key[32];
    int store;                      /* write the answer to the cache */
    int leader;                     /* we lead the single-flight for key */
    struct sf_waiter *waiter;       /* waiting on another request's answer */
    int gone;                       /* the client left: drop, do not answer */
    /* bounds on what comes back */
    enum count_mode count_mode;
    size_t bytes_received;          /* text from the engine */
    int64_t counted_tokens;         /* COUNT_TEXT's result at settle, or -1 */
    size_t cache_bytes;             /* about what the cache entry holds so far */
    int paused;                     /* the engine is paused for a slow client */
    struct event *resume_ev;        /* made active when the paused client drains */
    void (*offload_next)(struct chat *c);   /* what follows the job, on the loop */
    char route[256];                /* the cache key's route selector */
    int parse_rc;                   /* prepare_work's results, for prepared() */
    struct openai_error parse_err;
    int asked_tier;                 /* the tier the model names, before routing; -1: none */
    int done_status;                /* chat_done's status, kept while the count runs */
    const char *error_code;         /* the code of the error answered (static or config-owned), for the log */
    const char *key_id;             /* the caller's key id (config-owned) */
    struct trace_context trace;     /* W3C trace context, continued or started here */
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
    completion_request_free(&c->comp);
    if (c->content)
        evbuffer_free(c->content);
    json_decref(c->logprobs);
    json_decref(c->extra);
    json_decref(c->meta);
    free(c->jtoks);
    free(c->jalts);
    if (c->alt_text)
        evbuffer_free(c->alt_text);
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

/* Replace the reservation with what the request really cost (above), and
 * say what it saved, by the one definition in README.md ("Savings"):
 *   - a hit costs nothing and saves what its producer cost;
 *   - a request the router placed (model "auto"), answered by generation,
 *     gained or lost against the tenant's baseline tier (routing.
 *     baseline_tier, default its most expensive): the baseline's price of
 *     the tokens the answer took, minus what was paid, an escalation's
 *     cheap answer included. A loss is kept apart (routing_loss), since
 *     savings are sums of non-negative amounts everywhere they are stored;
 *     net routing savings = gain - loss;
 *   - a request for a named tier, one a fallback answered (not where the
 *     router placed it), and any failed, refused or abandoned request
 *     record none. */
static void settle(struct chat *c, int status)
{
    int64_t prompt, completion;
    int64_t uncapped = compute_cost(c, &prompt, &completion);
    c->charged_in = prompt;
    c->charged_out = completion;
    c->saved_cache_nano = c->saved_routing_nano = c->routing_loss_nano = 0;
    if (status == 200 && c->hit_tier >= 0) {
        c->saved_cache_nano = tier_cost(c, c->hit_tier, c->usage.prompt_tokens, c->usage.completion_tokens);
    } else if (status == 200 && c->engine_started && c->is_auto && c->first_failed < 0) {
        /* Against the uncapped cost: a reservation that capped the charge
         * is not a saving of routing. */
        int64_t baseline = tier_cost(c, c->tenant->baseline_tier, prompt, completion);
        c->saved_routing_nano = money_sub(baseline, uncapped);
        c->routing_loss_nano = money_sub(uncapped, baseline);
    }
    if (!c->resv)
        return;
    struct settle_info info = {.cost_nano = c->cost_nano, .tokens = money_add(prompt, completion),
                               .saved_cache_nano = c->saved_cache_nano, .saved_routing_nano = c->saved_routing_nano,
                               .routing_loss_nano = c->routing_loss_nano};
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
        .path = c->completion ? "/v1/completions" : "/v1/chat/completions",
        .status = status,
        .latency_us = clock_mono_us() - c->t0,
        .prompt_tokens = hit ? c->usage.prompt_tokens : c->charged_in,
        .completion_tokens = hit ? c->usage.completion_tokens : c->charged_out,
        .stream = c->req.stream,
        .cache = c->cache_header,
        .cost_nano = c->cost_nano,
        .saved_nano = c->saved_cache_nano + c->saved_routing_nano,
        .routing_loss_nano = c->routing_loss_nano,
        .key_id = c->key_id,
        .error_code = status == 200 ? NULL : c->error_code,
        .escalated = c->escalated,
        .judge_verdict = c->judged ? judge_verdict_name(c->judgement.verdict) : NULL,
        .judge_reason = c->judged ? judge_reason_name(c->judgement.reason) : NULL,
        .judge_value = c->judgement.value,
        .fallback = c->first_failed >= 0 ? c->cfg->tiers[c->first_failed].name : NULL,
        .trace_id = c->trace.trace_id,
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
        .saved_routing_nano = c->saved_routing_nano, .routing_loss_nano = c->routing_loss_nano,
        .latency_us = total,
        .judged = c->judged, .judge_verdict = (int)c->judgement.verdict, .judge_reason = (int)c->judgement.reason,
        /* The realised shares, counted as cascade_routes_total is below. */
        .routed = c->route_kind >= 0 && !hit && c->engine_t0, .route_kind = c->route_kind,
    };
    stats_record(svc->stats, c->svc->base, &x);
    if (c->judged)
        metrics_judgement(svc->metrics, c->tenant->metrics_index, c->judgement.verdict, c->judgement.reason);
    metrics_request(svc->metrics, c->tenant->metrics_index, tier, status, cache, c->escalated, x.tokens_in, x.tokens_out, c->cost_nano,
                    c->saved_cache_nano + c->saved_routing_nano, total, c->req.stream ? c->ttft_us : 0,
                    total > c->engine_us ? total - c->engine_us : 0, c->scored ? c->classifier_us : 0, c->routing_loss_nano);
    /* The realised shares: what "auto" sent to an engine (not hits, not
     * requests refused before any engine call). */
    if (x.routed)
        metrics_route(svc->metrics, c->tenant->metrics_index, c->route_kind);
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
    c->state = CHAT_FINISHING;
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
        fmt_i64(v, sizeof v, output_bound(c, c->hit_tier >= 0 ? c->hit_tier : c->tier));
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
    if (c->first_failed >= 0)
        httpd_resp_header(c->r, "x-cascade-fallback", c->cfg->tiers[c->first_failed].name);
}

static void fail(struct chat *c, int status, const char *type, const char *code, const char *param,
                        const char *msg)
{
    set_headers(c);
    c->error_code = code ? code : type;
    httpd_reply_error(c->r, status, type, code, param, msg);
    c->r = NULL;
    chat_done(c, status);
}

/* ---- writing answers ---------------------------------------------------- */

/* chat-format logprob entries as /v1/completions' legacy object, their
 * text offsets counted from offset. */
static json_t *legacy_logprobs(json_t *entries, size_t offset)
{
    json_t *lp = completion_logprobs_new();
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e) {
        json_t *tok = json_object_get(e, "token");
        const char *tops[21];
        double lps[21];
        size_t k = 0, j;
        json_t *te;
        json_array_foreach(json_object_get(e, "top_logprobs"), j, te) {
            if (k < 21 && json_is_string(json_object_get(te, "token"))) {
                tops[k] = json_string_value(json_object_get(te, "token"));
                lps[k++] = json_number_value(json_object_get(te, "logprob"));
            }
        }
        completion_logprobs_add(lp, json_string_value(tok), json_string_length(tok),
                                json_number_value(json_object_get(e, "logprob")), tops, lps, k, offset);
        offset += json_string_length(tok);
    }
    return lp;
}

static void open_stream(struct chat *c)
{
    if (c->stream_open)
        return;
    c->stream_open = 1;
    set_headers(c);
    httpd_resp_header(c->r, "Cache-Control", "no-cache");
    httpd_stream_begin(c->r, 200, "text/event-stream");
    size_t n;
    char *ev = NULL;
    if (!c->completion)
        ev = openai_chat_chunk_event(c->id, c->created, model_name(c), "assistant", "", 0, NULL, NULL, NULL,
                                     c->meta, &n);
    else if (c->comp.echo)
        ev = completion_chunk_event(c->id, c->created, model_name(c), c->comp.prompt, c->comp.prompt_len, NULL, NULL,
                                    &n);
    c->text_offset = c->completion && c->comp.echo ? c->comp.prompt_len : 0;
    if (ev)
        httpd_stream_write(c->r, ev, n);
    free(ev);
}

/* One chunk: text (none when the piece only carries extras, such as a
 * tool call's fragment), its logprob entry, and the delta's other fields. */
static void stream_piece(struct chat *c, const char *text, size_t len, json_t *entry, json_t *extra)
{
    open_stream(c);
    json_t *arr = entry ? json_pack("[O]", entry) : NULL;
    size_t n;
    char *ev;
    if (c->completion) {
        json_t *lp = arr ? legacy_logprobs(arr, c->text_offset) : NULL;
        ev = completion_chunk_event(c->id, c->created, model_name(c), text, len, lp, NULL, &n);
        c->text_offset += len;
        json_decref(lp);
    } else {
        const char *content = len || !extra ? text : NULL;
        ev = openai_chat_chunk_event(c->id, c->created, model_name(c), NULL, content, len, arr, NULL, extra, c->meta,
                                     &n);
    }
    httpd_stream_write(c->r, ev, n);
    free(ev);
    json_decref(arr);
}

/* A whole answer held back (a cache entry, or a judged cascade answer) sent
 * in the chunk format of a fresh stream, in the order an upstream sends it:
 * the extras that are not tool calls (reasoning comes before the answer),
 * then the text (one chunk per token when logprob entries are given, else
 * one piece), then one chunk per tool call. Merging these deltas gives back
 * the message (openai_message_deltas). */
static void stream_whole(struct chat *c, const char *text, size_t len, json_t *entries, json_t *extra)
{
    json_t *deltas = openai_message_deltas(extra);
    size_t off = 0, i;
    json_t *e, *d;
    json_array_foreach(deltas, i, d) {
        if (!json_object_get(d, "tool_calls"))
            stream_piece(c, "", 0, NULL, d);
    }
    json_array_foreach(entries, i, e) {
        size_t n = json_string_length(json_object_get(e, "token"));
        if (off + n > len)
            n = len - off;
        stream_piece(c, text + off, n, e, NULL);
        off += n;
    }
    if (off < len)
        stream_piece(c, text + off, len - off, NULL, NULL);
    json_array_foreach(deltas, i, d) {
        if (json_object_get(d, "tool_calls"))
            stream_piece(c, "", 0, NULL, d);
    }
    json_decref(deltas);
}

/* The end of an answer, fresh or replayed: last chunk, usage, [DONE]; or the
 * whole JSON body. Releases the HTTP request. */
static void send_final(struct chat *c, const char *finish_reason)
{
    struct openai_usage u = {c->usage.prompt_tokens, c->usage.completion_tokens};
    if (c->req.stream) {
        open_stream(c);
        size_t n;
        char *ev = c->completion ? completion_chunk_event(c->id, c->created, model_name(c), "", 0, NULL, finish_reason, &n)
                                 : openai_chat_chunk_event(c->id, c->created, model_name(c), NULL, NULL, 0, NULL,
                                                           finish_reason, NULL, c->meta, &n);
        httpd_stream_write(c->r, ev, n);
        free(ev);
        if (c->req.include_usage) {
            ev = c->completion ? completion_usage_event(c->id, c->created, model_name(c), &u, &n)
                               : openai_chat_usage_event(c->id, c->created, model_name(c), &u, c->meta, &n);
            httpd_stream_write(c->r, ev, n);
            free(ev);
        }
        httpd_stream_write(c->r, OPENAI_SSE_DONE, strlen(OPENAI_SSE_DONE));
        httpd_stream_end(c->r);
    } else {
        size_t len = evbuffer_get_length(c->content);
        const char *text = (const char *)evbuffer_pullup(c->content, -1);
        json_t *lp = c->req.logprobs ? (c->logprobs ? json_incref(c->logprobs) : json_array()) : NULL;
        char *body;
        if (c->completion) {
            /* echo: the prompt, then the answer (echo with logprobs is
             * refused by the parser, so offsets start after it). */
            size_t pl = c->comp.echo ? c->comp.prompt_len : 0;
            char *whole = xmalloc(pl + len + 1);
            memcpy(whole, c->comp.prompt, pl);
            if (len)
                memcpy(whole + pl, text, len);
            json_t *legacy = lp ? legacy_logprobs(lp, pl) : NULL;
            body = completion_response(c->id, c->created, model_name(c), whole, pl + len, finish_reason, &u, legacy);
            json_decref(legacy);
            free(whole);
        } else {
            body = openai_chat_response(c->id, c->created, model_name(c), text ? text : "", len, finish_reason, &u,
                                        lp, c->extra, c->meta);
        }
        json_decref(lp);
        set_headers(c);
        if (c->tenant->expose_headers) {
            /* Known before the body goes out only for a non-stream answer;
             * the same figure settle will charge. */
            int64_t prompt, completion;
            compute_cost(c, &prompt, &completion);
            char usd[32];
            fmt_nano(usd, sizeof usd, c->cost_nano); /* "%.9f" of the dollars, exactly */
            httpd_resp_header(c->r, "x-cascade-cost-usd", usd);
        }
        httpd_reply(c->r, 200, "application/json", body, strlen(body));
        free(body);
    }
    c->r = NULL;
}

/* The cache entry (cache/entry.h) of this answer, the whole message with
 * its extras; NULL when its content is not valid UTF-8 (not worth
 * storing). */
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
        .message = c->extra,
        .meta = c->meta,
    };
    if (!e.content)
        e.content = "";
    return cache_entry_encode(&e, len);
}

/* Answer from a cache entry (ours or a single-flight leader's). The bytes
 * come from Redis and are checked by cache_entry_decode(). 0, or -1 when
 * the entry is unusable (corrupt, or another format version) and the
 * engine must answer instead. */
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
    /* The entry's JSON goes when it is freed below; the message's fields
     * are kept by reference for the answer. */
    c->extra = e.message ? json_incref(e.message) : NULL;
    c->meta = e.meta ? json_incref(e.meta) : NULL;
    if (c->req.stream) {
        stream_whole(c, e.content, e.content_len, c->req.logprobs ? e.logprobs : NULL, c->extra);
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

/* The client's logprobs entry for a token, with at most max_top of its
 * alternatives (the cascade may have asked the cheap tier for more than the
 * client did). */
static json_t *logprob_entry(const struct engine_token *t, size_t max_top)
{
    const char *tops[21];
    double lps[21];
    size_t n = t->n_top < max_top ? t->n_top : max_top;
    if (n > 21)
        n = 21;
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
    if (t->extra)
        c->cache_bytes += json_dumpb(t->extra, NULL, 0, JSON_COMPACT);
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
    if (c->state == CHAT_GENERATING)
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

/* The chunk fields to pass on (system_fingerprint): kept as the latest
 * seen. A copy, since t->meta is borrowed; most chunks repeat the same. */
static void keep_meta(struct chat *c, json_t *meta)
{
    if (!meta || (c->meta && json_equal(c->meta, meta)))
        return;
    json_decref(c->meta);
    c->meta = json_deep_copy(meta);
}

/* A piece's extras into the whole message. One that does not merge (an
 * upstream's malformed tool_calls) is still relayed as it came, but the
 * message is no longer whole, so the answer is not cached. */
static void merge_extra(struct chat *c, json_t *extra)
{
    if (!extra || c->extra_bad)
        return;
    if (!c->extra)
        c->extra = json_object();
    if (openai_delta_merge(c->extra, extra) == 0)
        return;
    static struct log_limit bad_log;
    log_limited(&bad_log, 1000, LOG_WARN, "request %s: the %s tier sent a delta that does not merge; not caching it",
                c->request_id, tier_name(c));
    c->extra_bad = 1;
    c->store = 0;
    finish_flight(c, NULL, 0);
}

/* Drop what one engine call produced, before another call answers the
 * request instead (an escalation, a fallback). */
static void forget_answer(struct chat *c)
{
    evbuffer_drain(c->content, evbuffer_get_length(c->content));
    json_decref(c->logprobs);
    json_decref(c->extra);
    json_decref(c->meta);
    c->logprobs = c->extra = c->meta = NULL;
    c->extra_bad = 0;
    c->tokens_received = 0;
    c->bytes_received = 0;
    c->cache_bytes = 0;
    c->n_jtoks = c->n_jalts = 0;
    if (c->alt_text)
        evbuffer_drain(c->alt_text, evbuffer_get_length(c->alt_text));
    c->usage = (struct engine_usage){0, 0};
}

/* Keep what the judge reads of a cheap answer's token (before its text
 * joins c->content). Alternatives only on a multiple-choice prompt, where
 * the letter's are read; at most JUDGE_MAX_TOP a token, and the text of an
 * alternative only when it is short enough to be a letter, so what is kept
 * stays within the answer's own bound (max_tokens) times a constant. */
static void keep_for_judge(struct chat *c, const struct engine_token *t)
{
    if (c->n_jtoks == c->cap_jtoks) {
        c->cap_jtoks = c->cap_jtoks ? c->cap_jtoks * 2 : 64;
        c->jtoks = xrealloc(c->jtoks, c->cap_jtoks * sizeof *c->jtoks);
    }
    struct judged_tok *jt = &c->jtoks[c->n_jtoks++];
    *jt = (struct judged_tok){.off = evbuffer_get_length(c->content), .len = t->len,
                              .has_logprob = t->has_logprob, .logprob = t->logprob, .alt0 = c->n_jalts};
    if (!t->has_logprob || c->n_letters < 2)
        return;
    size_t k = t->n_top < JUDGE_MAX_TOP ? t->n_top : JUDGE_MAX_TOP;
    if (!c->alt_text)
        c->alt_text = evbuffer_new();
    for (size_t i = 0; i < k; i++) {
        if (c->n_jalts == c->cap_jalts) {
            c->cap_jalts = c->cap_jalts ? c->cap_jalts * 2 : 64;
            c->jalts = xrealloc(c->jalts, c->cap_jalts * sizeof *c->jalts);
        }
        const char *text = t->top[i].token ? t->top[i].token : "";
        size_t len = strlen(text);
        if (len > JUDGE_ALT_MAX)
            len = 0; /* its mass still counts; no letter is this long */
        c->jalts[c->n_jalts++] = (struct judged_alt){evbuffer_get_length(c->alt_text), len, t->top[i].logprob};
        evbuffer_add(c->alt_text, text, len);
    }
    jt->n_alt = k;
}

static void on_token(void *ctx, const struct engine_token *t)
{
    struct chat *c = ctx;
    assert(c->state == CHAT_GENERATING);
    c->tokens_received++;
    c->bytes_received += t->len;
    keep_meta(c, t->meta);
    if (c->cascade_phase) {
        /* The cheap answer waits, whole, until it is judged. */
        keep_for_judge(c, t);
        evbuffer_add(c->content, t->text, t->len);
        merge_extra(c, t->extra);
        if (c->req.logprobs && t->has_logprob) {
            if (!c->logprobs)
                c->logprobs = json_array();
            json_array_append_new(c->logprobs, logprob_entry(t, (size_t)c->req.top_logprobs));
        }
        return;
    }
    if (!c->ttft_us)
        c->ttft_us = clock_mono_us() - c->t0;
    json_t *entry = (c->req.logprobs && t->has_logprob) ? logprob_entry(t, t->n_top) : NULL;
    if (c->req.stream && (t->len || entry || t->extra)) {
        stream_piece(c, t->text, t->len, entry, t->extra);
        backpressure(c);
    }
    if (c->store)
        cache_collect(c, t, entry != NULL);
    /* Kept whole for a non-stream reply and for the cache entry; a stream
     * keeps its text only to count it at settle, if usage never comes. */
    if (!c->req.stream || c->store || c->count_mode == COUNT_TEXT)
        evbuffer_add(c->content, t->text, t->len);
    if (!c->req.stream || c->store)
        merge_extra(c, t->extra);
    if (entry && (!c->req.stream || c->store)) {
        if (!c->logprobs)
            c->logprobs = json_array();
        json_array_append(c->logprobs, entry);
    }
    json_decref(entry);
}

static void start_engine(struct chat *c);

/* The judge's verdict on the cheap answer kept in c (policies/judge.h): the
 * tokens are handed over as views into c->content and c->alt_text. */
static struct judgement judge_answer(struct chat *c)
{
    if (c->lps_failed)
        return (struct judgement){.verdict = JUDGE_ESCALATE, .reason = JUDGE_CHEAP_FAILED};
    const char *text = c->content ? (const char *)evbuffer_pullup(c->content, -1) : NULL;
    const char *alts = c->alt_text ? (const char *)evbuffer_pullup(c->alt_text, -1) : NULL;
    struct judge_token *jt = xcalloc(c->n_jtoks ? c->n_jtoks : 1, sizeof *jt);
    struct judge_alt *ja = xcalloc(c->n_jalts ? c->n_jalts : 1, sizeof *ja);
    for (size_t i = 0; i < c->n_jalts; i++)
        ja[i] = (struct judge_alt){alts ? alts + c->jalts[i].off : "", c->jalts[i].len, c->jalts[i].logprob};
    for (size_t i = 0; i < c->n_jtoks; i++) {
        const struct judged_tok *k = &c->jtoks[i];
        jt[i] = (struct judge_token){.text = text ? text + k->off : "", .len = k->len, .has_logprob = k->has_logprob,
                                     .logprob = k->logprob, .top = ja + k->alt0, .n_top = k->n_alt};
    }
    struct judgement j = judge(&c->tenant->routing.judge, jt, c->n_jtoks, c->letters,
                               c->n_letters > 0 ? (size_t)c->n_letters : 0);
    free(jt);
    free(ja);
    return j;
}

/* The cheap tier has answered in the cascade zone: keep its answer, or
 * escalate. Every judgement is recorded (record(): metrics and stats, by
 * verdict and reason; the access line). 1 when a new engine call took over
 * the request. */
static int cascade_judge(struct chat *c, const struct engine_usage *usage)
{
    c->cascade_phase = 0;
    c->judgement = judge_answer(c);
    c->judged = 1;
    const struct judgement *j = &c->judgement;
    if (j->verdict == JUDGE_KEEP) {
        if (c->req.stream) {
            /* Now the client gets it, in the usual chunks. */
            size_t len = evbuffer_get_length(c->content);
            stream_whole(c, (const char *)evbuffer_pullup(c->content, -1), len, c->logprobs, c->extra);
            c->ttft_us = clock_mono_us() - c->t0;
        }
        return 0;
    }
    /* Not sure enough: pay for the cheap answer, drop it, ask the top tier.
     * A failed call is charged only for what it produced. */
    int64_t prompt, completion;
    charged_tokens(c, usage, c->tokens_received, &prompt, &completion);
    c->first_cost_nano = tier_cost(c, c->tier, prompt, completion);
    log_debug("request %s escalates from %s (%s %.4f < %.4f over %zu tokens)", c->request_id, tier_name(c),
              judge_reason_name(j->reason), j->value, j->threshold, j->n);
    forget_answer(c);
    c->escalated = 1;
    c->tier = c->escalate_to;
    start_engine(c);
    return 1;
}

/* Whether tier may serve this request: the tenant allows it, it serves
 * chat, takes every content part the messages hold, and tools if given. */
static int tier_eligible(const struct chat *c, int tier)
{
    const struct tier_config *t = &c->cfg->tiers[tier];
    return config_tenant_allows(c->tenant, tier) && (t->endpoints & (c->completion ? TIER_EP_COMPLETIONS : TIER_EP_CHAT)) &&
           (c->req.parts & ~t->accepts) == 0 && (!c->req.has_tools || t->tools);
}

static int eligible_cb(const void *ctx, int tier)
{
    return tier_eligible(ctx, tier);
}

/* The next tier along tier's fallback chain that may serve this request,
 * or -1. */
static int next_fallback(const struct chat *c, int tier)
{
    return config_next_fallback(c->cfg, tier, eligible_cb, c);
}

/* An engine call failed before any byte reached the client, for a reason
 * the tier's fallback need not share: the fallback answers instead. Its
 * answer is not cached, since the cache key names the tier asked for, but
 * requests waiting on this one (single-flight) get it: they would only meet
 * the same failure on their own. 1 when a new call took over the request. */
static int try_fallback(struct chat *c, const struct engine_error *e)
{
    if (!e->retryable || c->stream_open || !c->r)
        return 0;
    int next = next_fallback(c, c->tier);
    if (next < 0)
        return 0;
    log_warn("request %s: tier %s failed (%s); tier %s answers instead", c->request_id, tier_name(c), e->message,
             c->cfg->tiers[next].name);
    if (c->first_failed < 0)
        c->first_failed = c->tier;
    c->store = 0;
    forget_answer(c);
    c->tier = next;
    start_engine(c);
    return 1;
}

static void on_done(void *ctx, const struct engine_usage *usage, const char *finish_reason)
{
    struct chat *c = ctx;
    assert(c->state == CHAT_GENERATING);
    c->engine_us += clock_mono_us() - c->engine_t0;
    if (c->cascade_phase && cascade_judge(c, usage))
        return;
    /* An upstream's usage is outside input: a negative count is none. */
    c->usage.prompt_tokens = money_clamp(usage->prompt_tokens);
    c->usage.completion_tokens = money_clamp(usage->completion_tokens);
    /* An entry replays its usage, so an answer without one (a stream cut
     * at max_tokens) is not stored. */
    size_t vlen = 0;
    char *value = (c->store || c->leader) && c->usage.completion_tokens > 0 ? cache_value(c, finish_reason, &vlen)
                                                                          : NULL;
    if (value) {
        const struct tenant_config *t = c->tenant;
        if (c->store)
            cache_put(c->svc->cache, c->svc->base, t->id, c->key, value, vlen, t->cache_ttl_s);
        finish_flight(c, value, vlen); /* a fallback's answer reaches the waiters, uncached */
        free(value);
    }
    send_final(c, finish_reason);
    chat_done(c, 200);
}

static void on_error(void *ctx, const struct engine_error *e)
{
    struct chat *c = ctx;
    assert(c->state == CHAT_GENERATING);
    c->engine_us += clock_mono_us() - c->engine_t0;
    if (c->cascade_phase && e->status >= 500) {
        /* The cheap tier failed in the cascade zone: the top tier answers,
         * as it would have for an unsure answer. */
        struct engine_usage none = {0, 0};
        log_warn("request %s: %s failed (%s); escalating", c->request_id, tier_name(c), e->message);
        c->lps_failed = 1;
        cascade_judge(c, &none);
        return;
    }
    if (try_fallback(c, e))
        return;
    c->error_code = e->code ? e->code : e->type;
    if (c->stream_open) {
        /* The status line is gone; OpenAI's clients read an error event. */
        struct openai_error oe;
        openai_error_set(&oe, e->status, e->type, e->code, e->param, "%s", e->message);
        size_t n;
        char *ev = openai_error_event(&oe, &n);
        httpd_stream_write(c->r, ev, n);
        free(ev);
        httpd_stream_end(c->r);
        c->r = NULL;
        chat_done(c, e->status);
        return;
    }
    if (e->retry_after_s > 0) {
        char ra[24];
        snprintf(ra, sizeof ra, "%" PRId64, e->retry_after_s);
        httpd_resp_header(c->r, "Retry-After", ra);
    }
    fail(c, e->status, e->type, e->code, e->param, e->message);
}

static const struct engine_callbacks chat_callbacks = {on_token, on_done, on_error};

/* The option letters of a multiple-choice prompt (options_parse over the
 * last user message), which the judge reads the cheap answer by; none for
 * free text, or when the tenant judges every answer as free text. */
static void find_letters(struct chat *c)
{
    c->n_letters = 0;
    if (!c->tenant->routing.judge.options)
        return;
    const struct chat_message *last = NULL;
    for (size_t i = 0; i < c->req.n_messages; i++)
        if (c->req.messages[i].role == ROLE_USER)
            last = &c->req.messages[i];
    struct options o;
    if (!last || !last->content || options_parse(last->content, last->content_len, &o) < 2)
        return;
    c->n_letters = o.n < OPTIONS_MAX ? o.n : OPTIONS_MAX;
    memcpy(c->letters, o.letters, (size_t)c->n_letters);
}

static void start_engine(struct chat *c)
{
    if (!c->content)
        c->content = evbuffer_new();
    c->state = CHAT_GENERATING;
    if (c->escalate_to >= 0 && !c->escalated && !c->cascade_phase) {
        c->cascade_phase = 1; /* the cheap try, judged by its logprobs */
        find_letters(c);
    }
    /* The client's own top_logprobs, or on the cheap try of a multiple-
     * choice prompt at least what the judge reads at the option letter. */
    int top = c->req.logprobs ? c->req.top_logprobs : 0;
    const struct judge_settings *js = &c->tenant->routing.judge;
    if (c->cascade_phase && c->n_letters >= 2 && js->top_logprobs > top)
        top = js->top_logprobs;
    struct engine_request er = {
        .base = c->svc->base,
        .chat = &c->req,
        .model = model_name(c),
        .stream = c->req.stream,
        .request_id = c->request_id,
        .max_tokens = output_bound(c, c->tier),
        .endpoint = c->completion ? ENGINE_EP_COMPLETIONS : ENGINE_EP_CHAT,
        /* The cascade judges the cheap answer by its logprobs, asked for
         * whether or not the client wants them (typed, so the client's
         * JSON is never edited). */
        .logprobs = c->cascade_phase || c->req.logprobs,
        .top_logprobs = top,
        .traceparent = c->trace.traceparent,
        .tracestate = c->trace.tracestate[0] ? c->trace.tracestate : NULL,
    };
    c->engine = c->svc->engines[c->tier];
    c->engine_t0 = clock_mono_us();
    /* Without usage from the engine, settle counts what it sent (above). */
    c->count_mode = c->svc->tokenizer ? COUNT_TEXT : COUNT_BYTES;
    if (engine_token_pieces(c->engine))
        c->count_mode = COUNT_PIECES;
    c->paused = 0;
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
        struct engine_error err = {.status = 400, .type = "invalid_request_error",
                                   .code = "context_length_exceeded", .message = msg};
        on_error(c, &err);
        return;
    }
    if (engine_submit(c->engine, &er, &chat_callbacks, c, &c->engine_id) < 0) {
        c->state = CHAT_FINISHING;
        fail(c, 503, "server_error", "engine_unavailable", NULL, "the engine cannot take requests now");
        return;
    }
    c->engine_started = 1;
}

/* ---- the cache ---------------------------------------------------------- */

static void on_flight(void *ctx, const char *value, size_t len)
{
    struct chat *c = ctx;
    assert(c->state == CHAT_WAITING);
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
    assert(c->state == CHAT_LOOKING_UP);
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
        c->state = CHAT_WAITING;
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
    /* A completion's prompt parses into the same shape as a chat message
     * but means something else (no chat template): its own key space. */
    const char *ep = c->completion ? "completions|" : "";
    if (c->is_auto && c->scored)
        fmt_join(c->route, sizeof c->route, ep, c->tenant->routing_version, (char *)NULL);
    else
        fmt_join(c->route, sizeof c->route, ep, c->is_auto ? "auto" : "tier", ":", tier_name(c), (char *)NULL);
    /* The key hashes the messages: for a large body, on the work pool. */
    c->state = CHAT_KEYING;
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
    c->state = CHAT_LOOKING_UP;
    cache_get(c->svc->cache, c->svc->base, c->tenant->id, c->key, on_lookup, c);
}

/* ---- admission ---------------------------------------------------------- */

static void on_admit(void *ctx, const struct admit_result *res, struct reservation *resv)
{
    struct chat *c = ctx;
    assert(c->state == CHAT_ADMITTING);
    c->resv = resv;
    c->reserved_nano = res->reserved_nano;
    if (c->gone) {
        chat_done(c, 499); /* settles the reservation at 0 */
        return;
    }
    /* x-ratelimit-*, and for a refusal the real Retry-After (and for a
     * budget x-should-retry: false): gateway/reply.h. */
    reply_admit_headers(c->r, res);
    metrics_admission(c->svc->metrics, c->tenant->metrics_index, (int)res->status);
    if (res->status != ADMIT_OK && res->status != ADMIT_DOWNGRADED) {
        const char *type, *code, *msg;
        reply_admit_error(res, &type, &code, &msg);
        fail(c, 429, type, code, NULL, msg);
        return;
    }
    if (res->status == ADMIT_DOWNGRADED) {
        /* admit_start asked for the downgrade only when the cheapest tier
         * can serve this request. */
        c->tier = c->tenant->cheapest_tier;
        c->escalate_to = -1;
        if (c->route_kind >= 0)
            c->route_kind = ROUTE_SMALL; /* the budget's choice, not the score's */
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
    /* Only among the tiers that can serve it (tools, content parts), so
     * the router never places a request where it would be refused. */
    const struct tenant_config *tc = c->tenant;
    int *cand = xcalloc(tc->n_allowed, sizeof *cand);
    size_t n = 0;
    for (size_t i = 0; i < tc->n_allowed; i++)
        if (tier_eligible(c, tc->by_price[i]))
            cand[n++] = tc->by_price[i];
    if (n) {
        /* Shares hold on the tenant's own traffic: its tracker's thresholds
         * (policies/share.h), else those of the shipped distribution that
         * config_resolve_routing set. */
        struct routing_settings rs = tc->routing;
        struct share_tracker *st =
            rs.by_share ? share_table_get(c->svc->shares, tc->metrics_index, rs.share_window) : NULL;
        if (st)
            share_tracker_route(st, &rs, c->score);
        struct route_plan plan = routing_route(&rs, cand, n, c->score, c->req.stream,
                                               c->cfg->tiers[cand[0]].logprobs);
        c->tier = plan.tier;
        c->escalate_to = plan.escalate_to;
        c->route_kind = (int)plan.kind;
    }
    free(cand);
}

/* model "auto" without a classifier: the tenant's default tier, or, when it
 * cannot serve this request, the cheapest allowed tier that can. */
static void route_default(struct chat *c)
{
    const struct tenant_config *tc = c->tenant;
    if (tier_eligible(c, c->tier))
        return;
    for (size_t i = 0; i < tc->n_allowed; i++)
        if (tier_eligible(c, tc->by_price[i])) {
            c->tier = tc->by_price[i];
            return;
        }
}

/* Why tier cannot serve this request (tier_eligible said no): 400 naming
 * the parameter, for a named tier or for "auto" when no tier can. */
static void reply_ineligible(struct chat *c, int tier)
{
    const struct tier_config *t = &c->cfg->tiers[tier];
    char msg[300];
    const char *who = c->is_auto ? "No tier this API key may use" : "This model";
    if (!(t->endpoints & (c->completion ? TIER_EP_COMPLETIONS : TIER_EP_CHAT))) {
        snprintf(msg, sizeof msg, "The model '%.100s' does not serve %s", t->name,
                 c->completion ? "/v1/completions" : "/v1/chat/completions");
        fail(c, 400, "invalid_request_error", "unsupported_endpoint", "model", msg);
    } else if (c->req.parts & ~t->accepts) {
        unsigned missing = c->req.parts & ~t->accepts;
        unsigned bit = missing & -missing;
        snprintf(msg, sizeof msg, "%s accepts '%s' content parts (tier '%.100s' takes: %s%s%s%s)", who,
                 openai_part_name(bit), t->name, "text", t->accepts & OPENAI_PART_IMAGE ? ", image_url" : "",
                 t->accepts & OPENAI_PART_AUDIO ? ", input_audio" : "", t->accepts & OPENAI_PART_FILE ? ", file" : "");
        fail(c, 400, "invalid_request_error", "unsupported_content_part", "messages", msg);
    } else {
        snprintf(msg, sizeof msg, "%s supports tools (tier '%.100s' runs on the native engine, which does not)", who,
                 t->name);
        fail(c, 400, "invalid_request_error", "unsupported_parameter", "tools", msg);
    }
}

/* The JSON text of what the upstream renders into its prompt beside the
 * messages' text (tool definitions, earlier tool calls), for counting. */
static void unseen_text(const struct chat *c, struct evbuffer *out)
{
    static const char *const keys[] = {"tools", "functions"};
    for (size_t k = 0; k < 2; k++) {
        json_t *v = json_object_get(c->req.root, keys[k]);
        char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
        if (s)
            evbuffer_add(out, s, strlen(s));
        free(s);
    }
    json_t *msgs = json_object_get(c->req.root, "messages");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        json_t *tc = json_object_get(m, "tool_calls");
        char *s = json_is_array(tc) ? json_dumps(tc, JSON_COMPACT) : NULL;
        if (s)
            evbuffer_add(out, s, strlen(s));
        free(s);
    }
}

/* Prompt tokens the messages' text does not show: the tool JSON (counted
 * like text), and a bound for each image, audio or file part, which the
 * gateway cannot count (tiers[].media_part_tokens, the largest among the
 * tenant's tiers, so a fallback is covered too). */
static int64_t unseen_prompt_tokens(const struct chat *c)
{
    int64_t media = 0;
    for (size_t i = 0; i < c->tenant->n_allowed; i++)
        if (c->cfg->tiers[c->tenant->allowed[i]].media_part_tokens > media)
            media = c->cfg->tiers[c->tenant->allowed[i]].media_part_tokens;
    int64_t n = money_mul((int64_t)c->req.n_media_parts, media);
    struct evbuffer *b = evbuffer_new();
    unseen_text(c, b);
    size_t len = evbuffer_get_length(b);
    if (len) {
        const char *text = (const char *)evbuffer_pullup(b, -1);
        struct tok_ids ids = {0};
        if (c->svc->tokenizer &&
            tokenizer_encode(c->svc->tokenizer, text, len, TOK_ADDED_AS_TEXT, &ids) == TOK_OK)
            n = money_add(n, (int64_t)ids.n);
        else
            n = money_add(n, (int64_t)len / 2 + 1);
        tok_ids_free(&ids);
    }
    evbuffer_free(b);
    return n;
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
        return money_add(own.tokens, unseen_prompt_tokens(c));
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
            return money_add((int64_t)n, unseen_prompt_tokens(c));
    }
    int64_t bytes = 0;
    for (size_t i = 0; i < c->req.n_messages; i++)
        bytes += (int64_t)c->req.messages[i].content_len + 4;
    return money_add(bytes / 2 + 8, unseen_prompt_tokens(c));
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
    if (c->state == CHAT_PREPARING || c->state == CHAT_KEYING) {
        /* Only a work-pool job leaves us here while the loop runs (the
         * inline path is synchronous), and it is reading the body: the
         * HTTP request stays until the job is done, and offload_done
         * releases it. */
        c->gone = 1;
        return;
    }
    /* Release the HTTP request: replying to a gone client only frees it. */
    if (c->stream_open)
        httpd_stream_end(r);
    else
        httpd_reply(r, 499, NULL, NULL, 0);
    c->r = NULL;
    if (c->state == CHAT_GENERATING) {
        /* A cancelled generation is never cached; waiters go on their own.
         * The tokens generated so far are still charged. */
        engine_cancel(c->engine, c->engine_id);
    }
    if (c->state == CHAT_WAITING) {
        sf_leave(cache_flights(c->svc->cache), c->waiter);
        c->waiter = NULL;
    }
    if (c->state == CHAT_LOOKING_UP || c->state == CHAT_ADMITTING) {
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
    if (c->completion) {
        /* The completion's chat view becomes c->req, so everything after
         * (routing, counting, the cache key, the engines) reads one shape;
         * c->comp keeps the prompt, echo and logprobs fields. */
        c->parse_rc = completion_request_parse(body, len, &c->comp, &c->parse_err);
        if (c->parse_rc == 0) {
            c->req = c->comp.chat;
            memset(&c->comp.chat, 0, sizeof c->comp.chat);
        }
    } else {
        c->parse_rc = chat_request_parse(body, len, &c->req, &c->parse_err);
    }
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
    else if (c->is_auto)
        route_default(c);
    /* What the engine would refuse (native: tools, penalties it lacks...)
     * is refused now, before it costs a reservation. */
    if (c->tier >= 0 && engine_check(c->svc->engines[c->tier], &c->req, &c->parse_err) < 0) {
        c->parse_rc = -1;
        return;
    }
    c->prompt_tokens = count_prompt(c);
}

static void admit_start(struct chat *c);

/* Loop thread, after prepare_work: bad input gets its error; a good
 * request gets its id and goes to admission. */
static void prepared(struct chat *c)
{
    if (c->parse_rc < 0) {
        struct openai_error *err = &c->parse_err;
        fail(c, err->status, err->type, err->code, err->param, err->message);
        return;
    }
    if (c->asked_tier < 0) {
        char msg[200];
        snprintf(msg, sizeof msg, "The model '%.100s' does not exist", c->req.model);
        fail(c, 404, "invalid_request_error", "model_not_found", "model", msg);
        return;
    }
    if (c->tier < 0) {
        char msg[200];
        snprintf(msg, sizeof msg, "Tier '%.100s' is not allowed for this API key", c->cfg->tiers[c->asked_tier].name);
        fail(c, 403, "permission_error", "tier_not_allowed", "model", msg);
        return;
    }
    if (!tier_eligible(c, c->tier)) {
        reply_ineligible(c, c->tier);
        return;
    }
    char rid[17];
    access_new_id(rid);
    fmt_join(c->id, sizeof c->id, c->completion ? "cmpl-" : "chatcmpl-", rid, (char *)NULL);
    c->created = clock_wall_s();
    c->content = evbuffer_new();
    httpd_req_on_close(c->r, on_client_close, c);
    admit_start(c);
}

static void offload_done(void *arg)
{
    struct chat *c = arg;
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
        if (workpool_submit(pool, c->svc->base, work, offload_done, c) == 0)
            return;
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

void chat_handle(const struct chat_services *svc, struct httpd_req *r, struct config_snap *snap,
                 const struct tenant_config *tenant, const char *key_id, const char *request_id, uint64_t t0,
                 enum chat_endpoint endpoint)
{
    struct chat *c = xcalloc(1, sizeof *c);
    c->completion = endpoint == CHAT_EP_COMPLETIONS;
    c->comp.logprobs = -1;
    c->svc = svc;
    c->snap = snap;
    c->cfg = &snap->cfg;
    c->r = r;
    c->tenant = tenant;
    c->tier = -1;
    c->hit_tier = -1;
    c->escalate_to = -1;
    c->route_kind = -1;
    c->t0 = t0;
    c->req.max_tokens = -1;
    c->counted_tokens = -1;
    c->asked_tier = -1;
    c->first_failed = -1;
    c->key_id = key_id;
    fmt_copy(c->request_id, sizeof c->request_id, request_id);
    /* This request is one hop of the client's trace, or starts one. */
    trace_begin(&c->trace, httpd_req_header(r, "traceparent"), httpd_req_header(r, "tracestate"));

    if (!is_json_type(httpd_req_header(r, "Content-Type"))) {
        fail(c, 415, "invalid_request_error", "unsupported_media_type", NULL,
                    "Content-Type must be application/json");
        return;
    }
    /* Parsing, classifying and counting grow with the body. */
    offload(c, prepare_work, prepared);
}

/* The most a call placed on tier may cost and the tokens it may take,
 * its fallback chain included. */
static void chain_worst(const struct chat *c, int tier, int64_t *cost, int64_t *tokens)
{
    *cost = *tokens = 0;
    size_t steps = 0;
    for (int t = tier; t >= 0 && steps++ <= c->cfg->n_tiers; t = next_fallback(c, t)) {
        int64_t bound = output_bound(c, t);
        int64_t cost_t = tier_cost(c, t, c->prompt_tokens, bound);
        int64_t tokens_t = money_add(c->prompt_tokens, bound);
        if (cost_t > *cost)
            *cost = cost_t;
        if (tokens_t > *tokens)
            *tokens = tokens_t;
    }
}

/* Prepared: fix the output bound, estimate the cost, and ask the policy. */
static void admit_start(struct chat *c)
{
    const struct chat_services *svc = c->svc;
    const struct tenant_config *tenant = c->tenant;
    bound_max_tokens(c);
    /* The worst case: the tier, or the costliest of its fallbacks (a
     * fallback must never overshoot what was reserved); a cascade may run
     * the cheap tier and then the top one (or the costliest of its
     * fallbacks), so it reserves both, each at its own bound. Saturating
     * sums (price.h): no estimate can wrap into a credit. */
    int64_t est, est_tokens;
    chain_worst(c, c->tier, &est, &est_tokens);
    if (c->escalate_to >= 0) {
        int64_t e2, t2;
        chain_worst(c, c->escalate_to, &e2, &t2);
        est = money_add(est, e2);
        est_tokens = money_add(est_tokens, t2);
    }
    struct admit_request aq = {
        .tenant = tenant->id,
        .limits = &tenant->limits,
        .request_id = c->id, /* ours, unique: a client's x-request-id may repeat */
        .est_tokens = est_tokens,
        .est_cost_nano = est,
        .alt_cost_nano = -1,
    };
    if (tenant->downgrade && (tenant->cheapest_tier != c->tier || c->escalate_to >= 0) &&
        tier_eligible(c, tenant->cheapest_tier)) {
        int64_t alt_tokens;
        chain_worst(c, tenant->cheapest_tier, &aq.alt_cost_nano, &alt_tokens);
    }
    c->state = CHAT_ADMITTING;
    policy_admit(svc->policy, svc->base, &aq, on_admit, c);
}
