/* sched.h: continuous batching over one model, on one engine thread.
 *
 * The scheduler owns the forward pass, the paged KV cache and the sampler,
 * on a backend it is handed (it never picks one). Requests arrive as
 * prompt ids; every step it builds one batch of the running sequences (one
 * token for each that is decoding, then prompt chunks for those still
 * prefilling, up to max_step_tokens), runs the forward pass, samples, and
 * reports each new token. Requests join and leave the batch at every step.
 *
 * Admission: a request reserves KV blocks for prompt + max_tokens positions
 * when it starts running, so a running request never waits for memory. One
 * that does not fit waits in a FIFO queue of at most max_queue requests;
 * past that sched_submit() refuses it (the engine answers 503). A request
 * whose prompt + max_tokens exceeds the context (the model's, or what the KV
 * budget holds, whichever is smaller) is refused at once.
 *
 * Per request, before sampling, OpenAI's logit_bias and presence/frequency
 * penalties adjust a copy of its logits, and a JSON constraint masks what
 * would break the object (json_constraint.h); a request with none of these
 * samples the forward pass's logits as they are.
 *
 * Results go to the request's sink, on the engine thread: on_token for each
 * generated token (never for an end-of-sequence token), then on_end exactly
 * once, last, for every accepted request, cancelled ones included.
 *
 * Cancellation: sched_cancel() takes a queued request out of the queue at
 * once (its queue slot is free when the call returns); a running one is
 * dropped, and its KV blocks freed, at the next step boundary, before any
 * further on_token.
 *
 * Threads: sched_submit, sched_cancel and sched_stats may be called from any
 * thread. The sink runs on the scheduler's thread and must not call back into
 * the scheduler except sched_cancel.
 */
#ifndef CASCADE_NATIVE_SCHED_H
#define CASCADE_NATIVE_SCHED_H

#include "engines/native/model/model.h"
#include "engines/native/runtime/json_constraint.h"
#include "engines/native/runtime/sampler.h"

#include <stddef.h>
#include <stdint.h>

struct sched_config {
    int max_batch;          /* running sequences at once (default 16) */
    int max_queue;          /* waiting requests (0: default 64; < 0: none may wait) */
    int max_step_tokens;    /* tokens per forward step (default 256; at least max_batch) */
    size_t kv_budget;       /* bytes of KV cache (default 256 MiB) */
    int n_ctx;              /* 0: the model's max_pos */
    enum native_mla_mode mla;   /* MLA models: absorbed (default) or naive attention */
    /* The model's vocabulary for JSON-constrained requests
     * (json_constraint.h), or NULL when none may ask; it must outlive the
     * scheduler, which sizes its mask scratch for it once. */
    const struct json_vocab *json;
};

struct sched_token {
    int32_t id;
    int index;                              /* 0-based among the completion tokens */
    const struct sampler_logprobs *lp;      /* NULL unless logprobs were asked for */
};

enum sched_end_reason {
    SCHED_END_STOP,         /* end-of-sequence token, or the sink asked to stop */
    SCHED_END_LENGTH,       /* max_tokens reached */
    SCHED_END_CANCELLED,
    SCHED_END_SHUTDOWN,     /* the scheduler was freed first */
};

struct sched_end {
    enum sched_end_reason reason;
    int prompt_tokens;
    int completion_tokens;  /* sampled tokens, an end-of-sequence token included */
};

struct sched_sink {
    /* Return nonzero to finish the request now (SCHED_END_STOP). */
    int (*on_token)(void *ctx, const struct sched_token *tok);
    void (*on_end)(void *ctx, const struct sched_end *end);
    void *ctx;
};

struct sched_request {
    const int32_t *prompt;      /* copied */
    int n_prompt;               /* >= 1 */
    int max_tokens;             /* >= 1 */
    struct sampler_params sampling;
    uint64_t seed;
    int logprobs;               /* report logprobs */
    int top_logprobs;           /* 0..SAMPLER_MAX_TOP alternatives */
    /* Logit adjustments (sampler.h), all off when 0: then the model's
     * logits are sampled untouched. Their state (counts per vocabulary id,
     * the bias list) is allocated here, with the request, never in a step. */
    float presence_penalty, frequency_penalty;
    const struct sampler_bias *bias;    /* copied; ids must be in the vocabulary */
    int n_bias;
    /* Constrain the output to one JSON object with sched_config.json: the
     * request ends (SCHED_END_STOP) as soon as the object closes, or with
     * SCHED_END_LENGTH when no token fits what is left of max_tokens. */
    int json_object;
    struct sched_sink sink;
};

enum {
    SCHED_OK = 0,
    SCHED_EFULL = -1,       /* queue full */
    SCHED_ETOOLONG = -2,    /* prompt + max_tokens > context */
    SCHED_EINVAL = -3,
    SCHED_ENOMEM = -4,
};

struct sched_stats {
    int running, queued;
    int free_blocks, total_blocks;
    uint64_t steps, step_tokens;
};

struct sched;

/* Build the compute state for model m on backend be (both must outlive it)
 * and start the engine thread. NULL and a message in err on failure. */
struct sched *sched_new(const struct native_model *m, struct native_backend *be,
                        const struct sched_config *cfg, char *err, size_t errlen);
/* Stop the thread; requests still queued or running end with SCHED_END_SHUTDOWN. */
void sched_free(struct sched *s);

/* Queue a request: SCHED_OK and *id set, or a SCHED_E* code (no sink call then). */
int sched_submit(struct sched *s, const struct sched_request *r, uint64_t *id);
void sched_cancel(struct sched *s, uint64_t id);

/* The longest prompt + max_tokens a request may have. */
int sched_context(const struct sched *s);
void sched_stats(struct sched *s, struct sched_stats *out);
/* Bytes the scheduler allocated (activations, KV pool size), for reports. */
size_t sched_memory_bytes(const struct sched *s);
/* Bytes of one KV block (kvcache_block_size() positions). */
size_t sched_kv_block_bytes(const struct sched *s);

#endif
