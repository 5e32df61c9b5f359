/* engine.h: the seam between the gateway and whatever generates tokens.
 *
 * An engine turns one chat request into a stream of tokens. Implementations sit
 * behind a table of operations (struct engine_ops), in the style of ggml's
 * backends: remote/ talks to an OpenAI-compatible upstream over HTTP (vLLM,
 * SGLang, llama.cpp's server, our own cascade-engine); native/ runs the model
 * in this process. A test peer may be a third, in tests only.
 *
 * Threads and callbacks
 *   engine_submit() and engine_cancel() are called from the thread that runs
 *   req->base. Every callback of that request runs on that same thread, never
 *   from inside engine_submit() itself (an error found at once is delivered on
 *   the next loop turn), so a caller may hold no locks and fear no re-entry.
 *   A request ends with exactly one of on_done or on_error. After
 *   engine_cancel(id) returns, no callback of that request runs again.
 *
 * Ownership
 *   The engine copies what it keeps from struct engine_request; the caller's
 *   chat_request must stay valid until the request ends or is cancelled.
 *   Pointers passed to callbacks are valid only during the call.
 */
#ifndef CASCADE_ENGINE_H
#define CASCADE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct chat_request;
struct json_t;              /* jansson's json_t */
struct openai_error;

/* One alternative at a position, for OpenAI's top_logprobs. */
struct engine_top_logprob {
    const char *token;      /* UTF-8 text of the token, NUL-terminated */
    double logprob;
};

/* One generated piece. text may be empty: a partial UTF-8 sequence held
 * back, or a piece that carries only `extra` (a tool call's fragment).
 *
 * extra and meta are how a remote tier's answer reaches the client whole,
 * without the gateway knowing every field OpenAI or an upstream may add:
 *   extra: the fields of the upstream's choice delta (stream) or message
 *          (non-stream) other than role and content, as one JSON object:
 *          tool_calls (in a stream, fragments whose arguments arrive in
 *          pieces, keyed by index), reasoning_content, refusal, audio, ...
 *          A stream's extras are merged in order (openai_delta_merge) to
 *          make the whole message's.
 *   meta:  the fields of the upstream's chunk or response object other than
 *          id, object, created, model, choices and usage: system_fingerprint,
 *          service_tier, ...
 * Both are borrowed for the call and NULL when there is nothing. The native
 * engine sends neither. */
struct engine_token {
    const char *text;
    size_t len;
    int has_logprob;        /* logprob and top[] are meaningful only when set */
    double logprob;
    const struct engine_top_logprob *top;
    size_t n_top;
    struct json_t *extra;
    struct json_t *meta;
};

/* Token counts as the model's own tokenizer counts them. */
struct engine_usage {
    int64_t prompt_tokens;
    int64_t completion_tokens;
};

/* An error in OpenAI's terms: the HTTP status for the client and the error
 * object's fields. type and message are always set; code may be NULL. */
struct engine_error {
    int status;
    const char *type;
    const char *code;
    const char *message;
    const char *param;      /* the request field at fault, or NULL */
    /* Set when the request failed before the engine produced any output,
     * for a reason another tier need not share: no replica reachable, every
     * replica answered 5xx or 429, or timed out (after the engine's own
     * retries). The caller may then try the tier's fallback. Never set for
     * a refusal of the request itself (4xx other than 429). */
    int retryable;
    /* A replica's Retry-After, in seconds, when its last answer was 429 or
     * 503 and gave one; 0 otherwise. */
    int64_t retry_after_s;
};

struct engine_callbacks {
    void (*on_token)(void *ctx, const struct engine_token *tok);
    void (*on_done)(void *ctx, const struct engine_usage *usage, const char *finish_reason);
    void (*on_error)(void *ctx, const struct engine_error *err);
};

/* What a request asks for: OpenAI's three generation endpoints. */
enum engine_endpoint {
    ENGINE_EP_CHAT,         /* /v1/chat/completions */
    /* /v1/completions: the prompt is the one user message, no chat template.
     * chat->root is then the chat form common/completions.c rewrote the
     * client's body into (messages: [the prompt]; prompt, echo, suffix,
     * best_of and the integer logprobs gone); a remote tier rebuilds a
     * completions body from it (prompt, and every other field as sent) and
     * reads choices[0].text. echo is the caller's to apply. */
    ENGINE_EP_COMPLETIONS,
    ENGINE_EP_EMBEDDINGS,   /* /v1/embeddings: remote only; see on_token below */
};

struct engine_request {
    struct event_base *base;            /* callbacks run on this base's thread */
    /* The request's parsed body: messages and sampling parameters, and in
     * chat->root every field the client sent, which a remote tier passes
     * upstream as sent (tools, response_format, fields we do not know),
     * except where a typed field below overrides it. No engine edits it. */
    const struct chat_request *chat;
    /* ENGINE_EP_CHAT unless set. For ENGINE_EP_EMBEDDINGS the remote engine
     * posts chat->root (model replaced) to the replica's /embeddings and
     * delivers the upstream's whole 2xx response, unparsed, as one on_token
     * piece, then on_done with no usage: the caller checks the answer's
     * shape and reads its usage where it relays it (an answer runs to tens
     * of MB, too much to parse twice, or on the loop). */
    enum engine_endpoint endpoint;
    const char *model;                  /* the model id this engine should run */
    int stream;                         /* deliver tokens as they are generated */
    const char *request_id;             /* for logs and the upstream's x-request-id */
    /* The output bound, in tokens: what the caller reserved budget for, so
     * an engine must never generate more. The caller has already clamped it
     * (the gateway: to the tier's max_output_tokens). 0 or less: none given,
     * the engine's own default applies (native: the rest of the context).
     * It travels here, typed, rather than as an edit of chat->root, so the
     * client's request is never rewritten; remote writes it into the body it
     * builds for the upstream, and chat->max_tokens is NOT read. */
    int64_t max_tokens;
    /* Token logprobs, as the caller wants them now: the client's own
     * logprobs/top_logprobs, or forced on by the gateway's cascade, which
     * judges the cheap answer by them. Engines read these, not
     * chat->logprobs; remote writes them into the upstream body. */
    int logprobs;
    int top_logprobs;
    /* W3C trace context to forward upstream (traceparent, tracestate); NULL
     * when none. */
    const char *traceparent;
    const char *tracestate;
};

/* A prompt as an engine counts it (engine_count_prompt). */
struct engine_prompt_count {
    int64_t tokens;         /* prompt tokens, chat template included, as the engine will bill */
    int64_t context;        /* the longest prompt + completion it takes; 0 when unknown */
};

struct engine;

struct engine_ops {
    const char *name;
    /* Start generating; 0 and *id set, or a negative errno-style code when
     * the engine cannot take work at all (then no callback will run). */
    int (*submit)(struct engine *e, const struct engine_request *req,
                  const struct engine_callbacks *cb, void *ctx, uint64_t *id);
    /* Stop a request and free its slot at once; unknown ids are ignored. */
    void (*cancel)(struct engine *e, uint64_t id);
    /* 1 when the engine can serve now (a replica is reachable, the model is loaded). */
    int (*health)(struct engine *e);
    void (*destroy)(struct engine *e);
    /* Flow control for a client that reads slower than the engine writes:
     * stop taking the request's output (paused 1), then go on (0). NULL
     * when the engine needs none (native: its output is bounded by the
     * request's max_tokens). Unknown ids are ignored; a token already on
     * its way may still arrive while paused. */
    void (*pause)(struct engine *e, uint64_t id, int paused);
    /* Count chat's prompt exactly as the engine will (its own tokenizer and
     * chat template): 0 and *out set, or -1 when it cannot (NULL: never
     * can, e.g. remote, whose upstream counts). Any event-loop thread; it
     * may take a while on a huge prompt, so callers offload big ones. */
    int (*count_prompt)(struct engine *e, const struct chat_request *chat,
                        struct engine_prompt_count *out);
    /* Requests waiting for a slot now, for the queue-depth gauge; -1 when
     * the engine keeps no queue of its own (NULL: none). Any thread. */
    int (*queue_depth)(struct engine *e);
    /* 1 when every on_token piece is exactly one model token, so a caller
     * may count pieces when a request ends without usage. */
    int token_pieces;
    /* Whether the engine can honour chat at all (its parameters, content
     * parts), before the caller spends anything on it: 0, or -1 with *err
     * the 400 to answer, naming the parameter. submit refuses the same
     * requests anyway; this lets a refusal cost nothing. NULL: it takes
     * anything (remote: its upstream judges). Any thread. */
    int (*check)(struct engine *e, const struct chat_request *chat, struct openai_error *err);
};

/* Every implementation's handle starts with this, so the wrappers below work. */
struct engine {
    const struct engine_ops *ops;
};

static inline int engine_submit(struct engine *e, const struct engine_request *req,
                                const struct engine_callbacks *cb, void *ctx, uint64_t *id)
{
    return e->ops->submit(e, req, cb, ctx, id);
}

static inline void engine_cancel(struct engine *e, uint64_t id) { e->ops->cancel(e, id); }
static inline int engine_health(struct engine *e) { return e->ops->health(e); }

static inline void engine_pause(struct engine *e, uint64_t id, int paused)
{
    if (e->ops->pause)
        e->ops->pause(e, id, paused);
}

static inline int engine_count_prompt(struct engine *e, const struct chat_request *chat,
                                      struct engine_prompt_count *out)
{
    return e->ops->count_prompt ? e->ops->count_prompt(e, chat, out) : -1;
}

static inline int engine_check(struct engine *e, const struct chat_request *chat, struct openai_error *err)
{
    return e->ops->check ? e->ops->check(e, chat, err) : 0;
}

static inline int engine_queue_depth(struct engine *e)
{
    return e->ops->queue_depth ? e->ops->queue_depth(e) : -1;
}

static inline int engine_token_pieces(const struct engine *e)
{
    return e->ops->token_pieces;
}

static inline void engine_destroy(struct engine *e)
{
    if (e)
        e->ops->destroy(e);
}

#endif
