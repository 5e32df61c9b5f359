/* sched.c: the engine thread's loop; see sched.h.
 *
 * State and locking. `mu` guards the queue, the cancelled list, the running
 * array's membership and the counters; the engine thread holds it only to
 * admit and retire requests, never during a forward step. A sequence's
 * token buffers and KV blocks belong to the engine thread alone. Each
 * sequence keeps all its known ids (prompt, then generated) in `tokens`;
 * `n_cached` of them are in the KV cache. A step feeds the next uncached ids
 * (one for a decoding sequence, a chunk for a prefilling one) and, when the
 * chunk reaches the last known id, samples the next.
 */
#include "engines/native/runtime/sched.h"

#include "engines/native/model/forward.h"
#include "engines/native/runtime/kvcache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One request while the scheduler holds it: queued, then running. */
struct seq {
    uint64_t id;
    int32_t *tokens;        /* prompt then generated: capacity n_prompt + max_tokens */
    int n_prompt, n_tokens, n_cached;
    int max_tokens, generated;
    int32_t *blocks;
    int n_blocks;
    struct sampler_params sp;
    uint64_t rng;
    int logprobs, top;
    /* Logit adjustments, allocated at submit (sched.h). count/seen exist
     * only with a penalty: count per vocabulary id, seen the distinct ids
     * generated (at most min(vocab, max_tokens)). */
    int adjust;             /* any of the below: sample from the scheduler's copy */
    float presence, frequency;
    int32_t *count, *seen;
    int n_seen;
    struct sampler_bias *bias;
    int n_bias;
    int json;               /* constrained to one JSON object */
    struct json_state js;
    struct sched_sink sink;
    atomic_int cancelled;   /* set by sched_cancel() from any thread; read each step */
    struct seq *next;       /* queue and cancelled-list link */
    /* per step */
    int take;               /* ids fed this step */
    int out_row;            /* index of its logits this step, or -1 */
};

struct sched {
    const struct native_model *m;
    struct sched_config cfg;
    int ctx;                    /* min(model context, n_ctx, positions the KV pool holds) */
    struct native_backend *be;
    struct kvcache *kv;
    struct native_forward *fw;
    struct sampler *smp;
    float *adj;                 /* [vocab] a request's adjusted logits, one step at a time */
    struct json_scratch *jscratch;  /* the JSON mask's working memory, when cfg.json */

    /* The step's batch, sized once for max_step_tokens tokens and max_batch
     * sequences: building a batch allocates nothing. */
    int32_t *b_token, *b_pos, *b_seq, *b_out;
    struct native_seq_view *b_views;
    struct seq **b_seqs;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    struct seq *q_head, *q_tail;
    int n_queued;
    struct seq *cancelled;      /* taken off the queue by sched_cancel; on_end pending */
    struct seq **running;       /* max_batch slots; order changes on retire */
    int n_running;
    uint64_t next_id;
    uint64_t steps, step_tokens;    /* for stats: forward passes, tokens they carried */
    size_t bytes;
};

static void seq_free(struct seq *q)
{
    if (!q)
        return;
    free(q->tokens);
    free(q->blocks);
    free(q->count);
    free(q->seen);
    free(q->bias);
    free(q);
}

/* The request's last word to its sink; the scheduler forgets it after. */
static void end_seq(struct seq *q, enum sched_end_reason why)
{
    struct sched_end e = {why, q->n_prompt, q->generated};
    q->sink.on_end(q->sink.ctx, &e);
}

/* Retire running[i]: give its blocks back and end it. Called without mu;
 * takes it to change membership. */
static void retire(struct sched *s, int i, enum sched_end_reason why)
{
    struct seq *q = s->running[i];
    pthread_mutex_lock(&s->mu);
    s->running[i] = s->running[--s->n_running];
    kvcache_release(s->kv, q->blocks, q->n_blocks);
    pthread_mutex_unlock(&s->mu);
    end_seq(q, why);
    seq_free(q);
}

/* Move queued requests into the batch while a slot and their blocks are
 * free. Strict FIFO, so a long request is not starved by short ones. All the
 * blocks a request can ever use (prompt + max_tokens) are taken now, so a
 * running request never stalls for memory and nothing has to be preempted.
 * Under mu. */
static void admit(struct sched *s)
{
    while (s->q_head && s->n_running < s->cfg.max_batch) {
        struct seq *q = s->q_head;
        int need = kvcache_blocks_for(s->kv, (int64_t)q->n_prompt + q->max_tokens);
        if (need > kvcache_free_blocks(s->kv))
            break;
        q->blocks = malloc(sizeof(int32_t) * (size_t)need);
        if (!q->blocks)
            break;          /* try again next step */
        kvcache_alloc(s->kv, need, q->blocks);
        q->n_blocks = need;
        s->q_head = q->next;
        if (!s->q_head)
            s->q_tail = NULL;
        s->n_queued--;
        q->next = NULL;
        s->running[s->n_running++] = q;
    }
}

/* Fill the batch: decoding sequences first (one id each: a long prompt must
 * not delay everyone's next token), then prefill chunks in running-array
 * order until the step's token budget is spent. A sequence whose chunk
 * reaches its last known id gets a logits row. Returns the token count. */
static int build_batch(struct sched *s, struct native_batch *b)
{
    int n = 0, n_out = 0, budget = s->cfg.max_step_tokens;
    for (int i = 0; i < s->n_running; i++) {
        struct seq *q = s->running[i];
        q->take = 0;
        q->out_row = -1;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < s->n_running && budget > 0; i++) {
            struct seq *q = s->running[i];
            int remaining = q->n_tokens - q->n_cached;
            if ((pass == 0) != (remaining == 1) || q->take)
                continue;
            int take = remaining < budget ? remaining : budget;
            int slot = b->n_seqs++;
            s->b_views[slot] = (struct native_seq_view){q->blocks, q->n_blocks};
            for (int k = 0; k < take; k++) {
                s->b_token[n] = q->tokens[q->n_cached + k];
                s->b_pos[n] = q->n_cached + k;
                s->b_seq[n] = slot;
                n++;
            }
            q->take = take;
            if (q->n_cached + take == q->n_tokens) {
                q->out_row = n_out;
                s->b_out[n_out++] = n - 1;
            }
            s->b_seqs[slot] = q;
            budget -= take;
        }
    }
    b->n_tokens = n;
    b->n_out = n_out;
    return n;
}

/* Sample the next id of q from its logits and report it. Returns the end
 * reason, or -1 while the sequence goes on. An end-of-sequence id counts as
 * generated (usage) but is never shown to the sink. */
static int advance(struct sched *s, struct seq *q, const float *logits)
{
    /* The request's own view of the logits: bias, penalties, then the JSON
     * mask, in a copy, since logprobs report the model's distribution. */
    const float *dist = logits;
    if (q->adjust) {
        const int V = s->m->cfg.vocab_size;
        memcpy(s->adj, logits, sizeof(float) * (size_t)V);
        sampler_apply_bias(s->adj, q->bias, q->n_bias);
        if (q->count)
            sampler_apply_penalties(s->adj, q->count, q->seen, q->n_seen, q->presence, q->frequency);
        /* Tokens left after this one: what the object must still close in. */
        if (q->json && json_constraint_mask(s->cfg.json, s->jscratch, &q->js,
                                            q->max_tokens - q->generated - 1, s->adj) == 0)
            return SCHED_END_LENGTH;
        dist = s->adj;
    }
    int32_t id = sampler_sample(s->smp, dist, &q->sp, &q->rng);
    q->generated++;
    if (native_model_is_eos(s->m, id))
        return SCHED_END_STOP;
    int complete = 0;
    if (q->json) {
        json_constraint_advance(s->cfg.json, &q->js, id);
        complete = json_done(&q->js);
    }
    if (q->count && q->count[id]++ == 0)
        q->seen[q->n_seen++] = id;

    struct sampler_logprobs lp;
    if (q->logprobs)
        sampler_logprobs(s->smp, logits, id, q->top, &lp);
    struct sched_token tok = {id, q->generated - 1, q->logprobs ? &lp : NULL};
    if (q->sink.on_token(q->sink.ctx, &tok) || complete)
        return SCHED_END_STOP;
    if (q->generated >= q->max_tokens)
        return SCHED_END_LENGTH;
    q->tokens[q->n_tokens++] = id;
    return -1;
}

/* One forward pass over the batch, then every sequence that got logits
 * moves on by one token. Runs without mu: only this thread touches the
 * sequences' buffers, and sched_cancel() only flips their atomic flag. */
static void step(struct sched *s)
{
    struct native_batch b = {0};
    b.token = s->b_token;
    b.pos = s->b_pos;
    b.seq = s->b_seq;
    b.seqs = s->b_views;
    b.out_rows = s->b_out;
    if (build_batch(s, &b) == 0)
        return;
    const float *logits = native_forward_run(s->fw, kvcache_kv(s->kv), &b);
    s->steps++;
    s->step_tokens += (uint64_t)b.n_tokens;

    const int V = s->m->cfg.vocab_size;
    for (int k = 0; k < b.n_seqs; k++) {
        struct seq *q = s->b_seqs[k];
        q->n_cached += q->take;
        /* A request cancelled during the pass gets no token; the loop
         * retires it before the next step. */
        if (q->out_row < 0 || atomic_load(&q->cancelled))
            continue;
        int why = advance(s, q, logits + (size_t)q->out_row * V);
        if (why >= 0) {
            for (int i = 0; i < s->n_running; i++) {
                if (s->running[i] == q) {
                    retire(s, i, (enum sched_end_reason)why);
                    break;
                }
            }
        }
    }
}

/* The engine thread: sleep while there is nothing to do; otherwise admit,
 * retire what was cancelled, and run one step. Sinks are called with mu
 * released, so a sink may call sched_cancel(). */
static void *sched_main(void *arg)
{
    struct sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stop && !s->cancelled && !s->q_head && s->n_running == 0)
            pthread_cond_wait(&s->cv, &s->mu);
        struct seq *dead = s->cancelled;
        s->cancelled = NULL;
        int stop = s->stop;
        if (!stop)
            admit(s);
        pthread_mutex_unlock(&s->mu);

        while (dead) {
            struct seq *q = dead;
            dead = q->next;
            end_seq(q, SCHED_END_CANCELLED);
            seq_free(q);
        }
        for (int i = s->n_running - 1; i >= 0; i--)
            if (atomic_load(&s->running[i]->cancelled))
                retire(s, i, SCHED_END_CANCELLED);
        if (stop)
            break;
        step(s);
    }

    /* Shutting down: end everything still here. */
    while (s->n_running)
        retire(s, s->n_running - 1, SCHED_END_SHUTDOWN);
    pthread_mutex_lock(&s->mu);
    struct seq *q = s->q_head;
    s->q_head = s->q_tail = NULL;
    s->n_queued = 0;
    pthread_mutex_unlock(&s->mu);
    while (q) {
        struct seq *next = q->next;
        end_seq(q, SCHED_END_SHUTDOWN);
        seq_free(q);
        q = next;
    }
    return NULL;
}

struct sched *sched_new(const struct native_model *m, struct native_backend *be,
                        const struct sched_config *cfg, char *err,
                        size_t errlen)
{
    struct sched *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    const struct native_model_config *c = &m->cfg;
    s->m = m;
    s->cfg = *cfg;
    if (s->cfg.max_batch <= 0)
        s->cfg.max_batch = 16;
    if (s->cfg.max_queue == 0)
        s->cfg.max_queue = 64;
    else if (s->cfg.max_queue < 0)
        s->cfg.max_queue = 0;
    if (s->cfg.max_step_tokens <= 0)
        s->cfg.max_step_tokens = 256;
    if (s->cfg.max_step_tokens < s->cfg.max_batch)
        s->cfg.max_step_tokens = s->cfg.max_batch;
    if (!s->cfg.kv_budget)
        s->cfg.kv_budget = (size_t)256 << 20;
    s->ctx = s->cfg.n_ctx > 0 && s->cfg.n_ctx < c->max_pos ? s->cfg.n_ctx : c->max_pos;
    s->next_id = 1;

    s->be = be;
    struct native_kv_desc kvd;
    native_forward_kv_desc(m, &kvd);
    s->kv = kvcache_new(be, &kvd, s->cfg.kv_budget, err, errlen);
    if (!s->kv)
        goto fail_kv;
    /* The pool's size caps the longest request: prompt + max_tokens must fit
     * in it alone, or the request could never be admitted. */
    int64_t kv_pos = (int64_t)kvcache_total_blocks(s->kv) * kvcache_block_size(s->kv);
    if (kv_pos < s->ctx)
        s->ctx = (int)kv_pos;
    struct native_forward_opts fo = {.max_tokens = s->cfg.max_step_tokens,
                                     .max_out = s->cfg.max_batch,
                                     .n_ctx = s->ctx,
                                     .mla = s->cfg.mla};
    s->fw = native_forward_new(m, be, &fo, err, errlen);
    if (!s->fw)
        goto fail_fw;
    s->smp = sampler_new(c->vocab_size);
    s->adj = malloc(sizeof(float) * (size_t)c->vocab_size);
    if (s->cfg.json && json_vocab_size(s->cfg.json) != c->vocab_size) {
        snprintf(err, errlen, "the JSON constraint's vocabulary has %d tokens, the model %d",
                 (int)json_vocab_size(s->cfg.json), c->vocab_size);
        goto fail_bufs;
    }
    if (s->cfg.json)
        s->jscratch = json_scratch_new(s->cfg.json);
    const size_t T = (size_t)s->cfg.max_step_tokens, B = (size_t)s->cfg.max_batch;
    s->b_token = malloc(T * sizeof(int32_t));
    s->b_pos = malloc(T * sizeof(int32_t));
    s->b_seq = malloc(T * sizeof(int32_t));
    s->b_out = malloc(B * sizeof(int32_t));
    s->b_views = malloc(B * sizeof(*s->b_views));
    s->b_seqs = malloc(B * sizeof(*s->b_seqs));
    s->running = malloc(B * sizeof(*s->running));
    if (!s->smp || !s->adj || (s->cfg.json && !s->jscratch) || !s->b_token || !s->b_pos || !s->b_seq || !s->b_out || !s->b_views ||
        !s->b_seqs || !s->running) {
        snprintf(err, errlen, "out of memory");
        goto fail_bufs;
    }
    s->bytes = native_forward_bytes(s->fw) + kvcache_block_bytes(s->kv) *
                                                  (size_t)kvcache_total_blocks(s->kv);
    if (pthread_mutex_init(&s->mu, NULL) != 0)
        goto fail_bufs;
    if (pthread_cond_init(&s->cv, NULL) != 0)
        goto fail_cond;
    if (pthread_create(&s->thread, NULL, sched_main, s) != 0) {
        snprintf(err, errlen, "cannot start the engine thread");
        goto fail_thread;
    }
    return s;

fail_thread:
    pthread_cond_destroy(&s->cv);
fail_cond:
    pthread_mutex_destroy(&s->mu);
fail_bufs:
    free(s->b_token);
    free(s->b_pos);
    free(s->b_seq);
    free(s->b_out);
    free(s->b_views);
    free(s->b_seqs);
    free(s->running);
    free(s->adj);
    json_scratch_free(s->jscratch);
    sampler_free(s->smp);
    native_forward_free(s->fw);
fail_fw:
    kvcache_free(s->kv);
fail_kv:
    free(s);
    return NULL;
}

void sched_free(struct sched *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    /* Requests cancelled after the thread's last look. */
    while (s->cancelled) {
        struct seq *q = s->cancelled;
        s->cancelled = q->next;
        end_seq(q, SCHED_END_CANCELLED);
        seq_free(q);
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->b_token);
    free(s->b_pos);
    free(s->b_seq);
    free(s->b_out);
    free(s->b_views);
    free(s->b_seqs);
    free(s->running);
    free(s->adj);
    json_scratch_free(s->jscratch);
    sampler_free(s->smp);
    native_forward_free(s->fw);
    kvcache_free(s->kv);
    free(s);
}

/* How many requests would be left waiting if q joined the queue now: the
 * queue is admitted in order while batch slots and KV blocks last, so
 * requests about to start running do not count against max_queue. Under mu. */
static int would_wait(const struct sched *s, const struct seq *q)
{
    int slots = s->cfg.max_batch - s->n_running, free_blocks = kvcache_free_blocks(s->kv);
    int waiting = 0, blocked = 0;
    for (const struct seq *p = s->q_head;; p = p->next) {
        const struct seq *cur = p ? p : q;
        int need = kvcache_blocks_for(s->kv, (int64_t)cur->n_prompt + cur->max_tokens);
        if (!blocked && slots > 0 && need <= free_blocks) {
            slots--;
            free_blocks -= need;
        } else {
            blocked = 1;
            waiting++;
        }
        if (!p)
            break;
    }
    return waiting;
}

/* Validate, copy the prompt, and queue; the engine thread admits it. */
int sched_submit(struct sched *s, const struct sched_request *r, uint64_t *id)
{
    if (r->n_prompt < 1 || r->max_tokens < 1 || r->top_logprobs < 0 ||
        r->top_logprobs > SAMPLER_MAX_TOP || !r->sink.on_token || !r->sink.on_end ||
        r->n_bias < 0 || (r->n_bias && !r->bias) || (r->json_object && !s->cfg.json))
        return SCHED_EINVAL;
    const int V = s->m->cfg.vocab_size;
    for (int i = 0; i < r->n_bias; i++)
        if (r->bias[i].id < 0 || r->bias[i].id >= V)
            return SCHED_EINVAL;
    if ((int64_t)r->n_prompt + r->max_tokens > s->ctx)
        return SCHED_ETOOLONG;
    for (int i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= s->m->cfg.vocab_size)
            return SCHED_EINVAL;

    struct seq *q = calloc(1, sizeof(*q));
    if (!q)
        return SCHED_ENOMEM;
    q->tokens = malloc(sizeof(int32_t) * ((size_t)r->n_prompt + (size_t)r->max_tokens));
    if (!q->tokens) {
        free(q);
        return SCHED_ENOMEM;
    }
    memcpy(q->tokens, r->prompt, sizeof(int32_t) * (size_t)r->n_prompt);
    q->n_prompt = q->n_tokens = r->n_prompt;
    q->max_tokens = r->max_tokens;
    q->sp = r->sampling;
    q->rng = sampler_seed(r->seed);
    q->logprobs = r->logprobs;
    q->top = r->logprobs ? r->top_logprobs : 0;
    q->sink = r->sink;
    atomic_init(&q->cancelled, 0);
    /* The request's sampling state, bounded by the vocabulary and its own
     * max_tokens, is allocated now so that a step never allocates. */
    q->presence = r->presence_penalty;
    q->frequency = r->frequency_penalty;
    if (q->presence != 0.0f || q->frequency != 0.0f) {
        size_t n_seen = (size_t)(r->max_tokens < V ? r->max_tokens : V);
        q->count = calloc((size_t)V, sizeof(*q->count));
        q->seen = malloc(n_seen * sizeof(*q->seen));
        if (!q->count || !q->seen)
            goto nomem;
    }
    if (r->n_bias) {
        q->bias = malloc((size_t)r->n_bias * sizeof(*q->bias));
        if (!q->bias)
            goto nomem;
        memcpy(q->bias, r->bias, (size_t)r->n_bias * sizeof(*q->bias));
        q->n_bias = r->n_bias;
    }
    q->json = r->json_object;
    json_state_init(&q->js);
    q->adjust = q->count || q->n_bias || q->json;

    pthread_mutex_lock(&s->mu);
    if (would_wait(s, q) > s->cfg.max_queue) {
        pthread_mutex_unlock(&s->mu);
        seq_free(q);
        return SCHED_EFULL;
    }
    q->id = s->next_id++;
    if (s->q_tail)
        s->q_tail->next = q;
    else
        s->q_head = q;
    s->q_tail = q;
    s->n_queued++;
    *id = q->id;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return SCHED_OK;

nomem:
    seq_free(q);
    return SCHED_ENOMEM;
}

/* A queued request leaves the queue here and now (so its place is free at
 * once) and goes to the cancelled list, whose on_end the engine thread
 * sends; a running one is only flagged, since the engine thread may be in
 * the middle of a step with it. */
void sched_cancel(struct sched *s, uint64_t id)
{
    pthread_mutex_lock(&s->mu);
    struct seq *prev = NULL;
    for (struct seq *q = s->q_head; q; prev = q, q = q->next) {
        if (q->id != id)
            continue;
        if (prev)
            prev->next = q->next;
        else
            s->q_head = q->next;
        if (s->q_tail == q)
            s->q_tail = prev;
        s->n_queued--;
        q->next = s->cancelled;
        s->cancelled = q;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i]->id == id)
            atomic_store(&s->running[i]->cancelled, 1);
    pthread_mutex_unlock(&s->mu);
}

int sched_context(const struct sched *s)
{
    return s->ctx;
}

void sched_stats(struct sched *s, struct sched_stats *out)
{
    pthread_mutex_lock(&s->mu);
    out->running = s->n_running;
    out->queued = s->n_queued;
    out->free_blocks = kvcache_free_blocks(s->kv);
    out->total_blocks = kvcache_total_blocks(s->kv);
    out->steps = s->steps;
    out->step_tokens = s->step_tokens;
    pthread_mutex_unlock(&s->mu);
}

size_t sched_memory_bytes(const struct sched *s)
{
    return s->bytes;
}

size_t sched_kv_block_bytes(const struct sched *s)
{
    return kvcache_block_bytes(s->kv);
}
