/* sampler.h: choosing the next token from logits, and reporting logprobs.
 *
 * Sampling, in the order OpenAI-compatible servers apply it:
 *   temperature 0 (or top_k 1): greedy, the highest logit (lowest id on ties);
 *   otherwise softmax(logits / temperature), restricted to the top_k most
 *   likely tokens (top_k <= 0: no limit), then to the smallest set whose mass
 *   reaches top_p (top_p >= 1: no limit), renormalized and drawn from with a
 *   per-request generator, so a fixed seed repeats its tokens.
 *
 * Before that, a request may adjust its logits (OpenAI's parameters, in a
 * copy the scheduler owns, so requests without them sample the model's own
 * logits bit for bit):
 *   logit_bias:  logits[id] += bias, for each (id, bias) given;
 *   penalties:   logits[j] -= presence * (count[j] > 0) + frequency * count[j],
 *                count[j] being how often j was generated so far in this
 *                request (the prompt does not count), as OpenAI defines them.
 *
 * Logprobs are those of the model's own distribution, log_softmax(logits),
 * whatever the temperature, bias, penalties or constraint: the cascade reads
 * them as the model's confidence. top-n alternatives come out most likely
 * first.
 *
 * Threads: a struct sampler is scratch memory for one thread; the functions
 * are otherwise pure. The generator state belongs to the request.
 */
#ifndef CASCADE_NATIVE_SAMPLER_H
#define CASCADE_NATIVE_SAMPLER_H

#include <stdint.h>

#define SAMPLER_MAX_TOP 20     /* OpenAI's top_logprobs limit */

struct sampler_params {
    double temperature;     /* 0 = greedy */
    double top_p;           /* (0, 1]; 1 = off */
    int top_k;              /* <= 0 = off */
};

struct sampler_logprobs {
    float logprob;                      /* of the chosen token */
    int n_top;
    int32_t top_id[SAMPLER_MAX_TOP];
    float top_logprob[SAMPLER_MAX_TOP];
};

/* One logit_bias entry: an id inside the vocabulary and what to add. */
struct sampler_bias {
    int32_t id;
    float bias;
};

struct sampler;

/* Scratch for a vocabulary of `vocab` tokens; NULL when out of memory. */
struct sampler *sampler_new(int vocab);
void sampler_free(struct sampler *s);

/* Generator state for a seed: the same seed gives the same draws. */
uint64_t sampler_seed(uint64_t seed);

/* Pick the next token; advances *rng unless greedy. */
int32_t sampler_sample(struct sampler *s, const float *logits, const struct sampler_params *p,
                       uint64_t *rng);

/* Logprob of token id and the n_top (<= SAMPLER_MAX_TOP) best alternatives. */
void sampler_logprobs(struct sampler *s, const float *logits, int32_t id, int n_top,
                      struct sampler_logprobs *out);

/* logits[b.id] += b.bias for each of the n entries (ids already checked). */
void sampler_apply_bias(float *logits, const struct sampler_bias *b, int n);

/* OpenAI's presence and frequency penalties over the tokens generated so
 * far: count[] is per vocabulary id, seen[0..n_seen) the ids whose count is
 * not 0 (each once), so the cost is the number of distinct tokens, not the
 * vocabulary. */
void sampler_apply_penalties(float *logits, const int32_t *count, const int32_t *seen, int n_seen,
                             float presence, float frequency);

#endif
