/* native_engine.h: the `native` engine, the in-process implementation of
 * engine.h over this runtime.
 *
 * It loads a model (model.h), finds its tokenizer and chat format
 * (prompt.h), and runs a continuous-batching scheduler (sched.h) on its own
 * threads. A request is tokenized in engine_submit() on the caller's thread;
 * every token, stop-string check and detokenization then happens on the
 * engine thread, and results travel back to req->base with event_active():
 * libevent must have threading on (evthread_use_pthreads() before the base
 * is made), which the gateway and cascade-engine both do at start.
 *
 * Contract (engine.h): callbacks run on req->base's thread, never inside
 * submit (an error found at once arrives on the next loop turn); exactly one
 * of on_done / on_error ends a request; after engine_cancel() returns no
 * callback of that request runs, and its KV blocks are freed at the next
 * decode step (a queued request's place at once).
 *
 * Requests and answers:
 *   - chat messages: prompt.h's formatting; raw prompts (/v1/completions):
 *     native_engine_submit_text().
 *   - sampling: temperature (default 1), top_p, top_k (a non-standard
 *     "top_k" field of the body), seed, the output bound from the typed
 *     engine_request.max_tokens (default: the rest of the context; the
 *     body's max_tokens is not read), up to 4 stop strings (the text stops before the match and
 *     finish_reason is "stop"), logprobs with top_logprobs alternatives
 *     (always of the model's own distribution, before the adjustments
 *     below), presence_penalty and frequency_penalty (OpenAI's formula, over
 *     the tokens generated so far), logit_bias (ids must be in the model's
 *     vocabulary), response_format {"type":"json_object"} (constrained
 *     decoding, json_constraint.h: the answer is one JSON object and ends
 *     when it closes; if max_tokens is too small to close it -- below 2, or
 *     a vocabulary without single-byte closing tokens -- finish_reason is
 *     "length" and the text may be incomplete, as with OpenAI).
 *   - refused with 400 invalid_request_error, code unsupported_parameter,
 *     param the field (native_engine_check_request): tools, tool_choice,
 *     functions, function_call, parallel_tool_calls (an empty tools list and
 *     "none" pass), non-text content parts, response_format json_schema,
 *     store true, modalities other than ["text"], and every top-level field
 *     not in the allow-list (audio, prediction, web_search_options, ...).
 *     Ignored on purpose: user, metadata, store false. n > 1 is refused by
 *     the parser. engine_request.endpoint ENGINE_EP_EMBEDDINGS is refused;
 *     ENGINE_EP_COMPLETIONS sends the one user message without a template.
 *   - errors: prompt + max_tokens longer than the context: 400
 *     context_length_exceeded; the wait queue full: 503 engine_overloaded;
 *     text that cannot be encoded: 400.
 *   - usage counts the prompt ids and every sampled id (an end-of-sequence
 *     token included), as the model's tokenizer counts them.
 *   - a token's text may be empty: bytes of an unfinished UTF-8 character,
 *     or text that might be the start of a stop string, are held until they
 *     are known to be safe, then come out with a later token.
 *
 * Threads: submit, cancel and the count/info functions may be called from any
 * event-loop thread (each request stays on the base it was submitted from).
 * engine_destroy() must come after every request has ended or been cancelled.
 */
#ifndef CASCADE_NATIVE_ENGINE_H
#define CASCADE_NATIVE_ENGINE_H

#include "engines/engine.h"
#include "engines/native/backend/ops.h"

#include <stddef.h>
#include <stdint.h>

struct chat_request;
struct openai_error;

struct native_engine_config {
    const char *model_path;     /* llama2.c .bin, or an HF folder / config.json */
    const char *tokenizer_path; /* NULL: found beside the model */
    const char *model_name;     /* the id reported to clients; NULL: the path's last part */
    const char *device;         /* "cpu" (NULL: cpu) or "cuda:N" (backend/device.h) */
    int threads;                /* compute threads; 0: one per CPU */
    size_t kv_budget_bytes;     /* KV cache memory; 0: 256 MiB */
    int max_batch;              /* sequences decoded together; 0: 16 */
    int max_queue;              /* requests that may wait; 0: 64; < 0: none */
    int max_step_tokens;        /* tokens per forward step; 0: 256 */
    int n_ctx;                  /* context limit; 0: the model's */
    unsigned cpu_flags;         /* OPS_CPU_* (ops_cpu.h) */
    enum native_mla_mode mla;   /* MLA models: NATIVE_MLA_ABSORB (default) or _NAIVE */
    /* Tensor / expert parallel ranks in this process (model/parallel.h);
     * 0: one per GPU that device names (1 on the CPU; ep 1 for a dense
     * model). On the CPU, threads are shared out among the ranks. */
    int tp, ep;
};

/* Load the model and start the engine; NULL and a message in err on failure. */
struct engine *native_engine_new(const struct native_engine_config *cfg, char *err, size_t errlen);

/* The same, from a tier's "engine" section of cascaded's config (the JSON
 * text of the object):
 *   {"kind": "native", "model": PATH, "tokenizer": PATH, "name": ID,
 *    "device": "cpu" | "cuda:N", "threads": N, "kv_mib": N, "max_batch": N,
 *    "max_queue": N, "ctx": N, "tp": N, "ep": N}
 * Only "model" is required; the rest default as in the struct above. A
 * device this build or machine cannot drive is an error naming why.
 * Relative paths are taken from base_dir when it is not NULL (the config
 * file's folder). Unknown keys are an error, so a typo does not go unseen. */
struct engine *native_engine_from_json(const char *json, const char *base_dir, char *err,
                                       size_t errlen);

/* Validate a tier's "engine" section exactly as native_engine_from_json
 * does (the same parser: field names, types, ranges, the device's syntax,
 * tp/ep against the device, what this build can drive), but load nothing,
 * probe no device and read no file: for cascaded --check-config. 0, or -1
 * and the same message from_json would give, naming the field. */
int native_engine_check_json(const char *json, const char *base_dir, char *err, size_t errlen);

/* Whether the engine can honour a request, without queueing it: 0, or -1
 * with *err the 400 the engine would answer (param names the field). The
 * gateway may call it before admission so a refused request costs nothing;
 * submit runs the same check. e may be NULL: then token ids in logit_bias
 * are not checked against the vocabulary. Any thread. */
int native_engine_check_request(struct engine *e, const struct chat_request *chat,
                                struct openai_error *err);

/* Like engine_submit(), for a raw prompt: BOS then the text, no chat
 * template. Sampling fields come from req->chat; its messages are ignored. */
int native_engine_submit_text(struct engine *e, const struct engine_request *req, const char *text,
                              size_t len, const struct engine_callbacks *cb, void *ctx,
                              uint64_t *id);

/* The longest prompt + completion a request may have, in tokens. */
int native_engine_context(struct engine *e);
const char *native_engine_model_name(struct engine *e);

#endif
