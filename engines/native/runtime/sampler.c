/* sampler.c: greedy, temperature, top-k, top-p; logprobs. See sampler.h. */
#include "engines/native/runtime/sampler.h"

#include <math.h>
#include <stdlib.h>

struct cand {
    float p;        /* logit, then probability */
    int32_t id;
};

struct sampler {
    int vocab;
    struct cand *c;     /* [vocab] */
};

struct sampler *sampler_new(int vocab)
{
    struct sampler *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->vocab = vocab;
    s->c = malloc(sizeof(*s->c) * (size_t)vocab);
    if (!s->c) {
        free(s);
        return NULL;
    }
    return s;
}

void sampler_free(struct sampler *s)
{
    if (!s)
        return;
    free(s->c);
    free(s);
}

/* splitmix64: a full-period 64-bit generator whose outputs pass BigCrush. */
static uint64_t next_u64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 53 random bits. */
static double next_unit(uint64_t *state)
{
    return (double)(next_u64(state) >> 11) * (1.0 / 9007199254740992.0);
}

uint64_t sampler_seed(uint64_t seed)
{
    uint64_t s = seed ^ 0x5eedc0de5eedc0deull;
    next_u64(&s);
    return s;
}

/* The first index of the largest value (lowest id on ties). Two passes:
 * the maximum in 8 independent lanes (which the compiler vectorizes), then
 * the first position that holds it. */
static int32_t argmax(const float *x, int n)
{
    float lane[8];
    int i = 0;
    for (int j = 0; j < 8; j++)
        lane[j] = x[0];
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
    float mx = lane[0];
    for (int j = 1; j < 8; j++)
        mx = lane[j] > mx ? lane[j] : mx;
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (i = 0; i < n; i++)
        if (x[i] == mx)
            return i;
    return 0;   /* only when every value is NaN */
}

/* Higher p first; lower id first among equals, so results never depend on
 * qsort's order. */
static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Keep the k best of c[0..n) in c[0..k), sorted best first, with a heap of
 * size k whose root is the worst kept candidate: O(n log k). */
static void sift_down_worst(struct cand *h, int k, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < k && cand_cmp(&h[l], &h[m]) > 0)
            m = l;
        if (r < k && cand_cmp(&h[r], &h[m]) > 0)
            m = r;
        if (m == i)
            return;
        struct cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void top_k_select(struct cand *c, int n, int k)
{
    for (int i = k / 2 - 1; i >= 0; i--)
        sift_down_worst(c, k, i);
    for (int i = k; i < n; i++) {
        if (cand_cmp(&c[i], &c[0]) < 0) {
            c[0] = c[i];
            sift_down_worst(c, k, 0);
        }
    }
    qsort(c, (size_t)k, sizeof(*c), cand_cmp);
}

int32_t sampler_sample(struct sampler *s, const float *logits, const struct sampler_params *p,
                       uint64_t *rng)
{
    const int V = s->vocab;
    if (p->temperature <= 0.0 || p->top_k == 1)
        return argmax(logits, V);

    /* Candidates as scaled logits, cut to the top k, then turned into
     * probabilities relative to the best one. */
    int n = V;
    for (int i = 0; i < V; i++)
        s->c[i] = (struct cand){(float)(logits[i] / p->temperature), i};
    int sorted = 0;
    if (p->top_k > 0 && p->top_k < V) {
        top_k_select(s->c, V, p->top_k);
        n = p->top_k;
        sorted = 1;
    }
    float mx = s->c[0].p;
    for (int i = 1; i < n; i++)
        if (s->c[i].p > mx)
            mx = s->c[i].p;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        s->c[i].p = expf(s->c[i].p - mx);
        sum += s->c[i].p;
    }

    if (p->top_p > 0.0 && p->top_p < 1.0) {
        if (!sorted && n > 1) {
            /* Tokens below (1 - top_p) / (n - 1) of the mass can never be in
             * the nucleus: drop them before sorting (llama2.c's trick). */
            double cutoff = (1.0 - p->top_p) / (double)(n - 1) * sum;
            int m = 0;
            for (int i = 0; i < n; i++)
                if (s->c[i].p >= cutoff)
                    s->c[m++] = s->c[i];
            n = m;
            qsort(s->c, (size_t)n, sizeof(*s->c), cand_cmp);
        }
        double cum = 0.0, target = p->top_p * sum;
        int last = n - 1;
        for (int i = 0; i < n; i++) {
            cum += s->c[i].p;
            if (cum >= target) {
                last = i;
                break;
            }
        }
        n = last + 1;
        sum = cum;
    }

    double r = next_unit(rng) * sum, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += s->c[i].p;
        if (r < acc)
            return s->c[i].id;
    }
    return s->c[n - 1].id;     /* rounding left r at the very top */
}

void sampler_logprobs(struct sampler *s, const float *logits, int32_t id, int n_top,
                      struct sampler_logprobs *out)
{
    const int V = s->vocab;
    float mx = logits[argmax(logits, V)];
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        sum += exp((double)(logits[i] - mx));
    double lse = (double)mx + log(sum);

    out->logprob = (float)((double)logits[id] - lse);
    if (n_top > SAMPLER_MAX_TOP)
        n_top = SAMPLER_MAX_TOP;
    if (n_top > V)
        n_top = V;
    out->n_top = n_top;
    if (n_top <= 0)
        return;
    for (int i = 0; i < V; i++)
        s->c[i] = (struct cand){logits[i], i};
    top_k_select(s->c, V, n_top);
    for (int i = 0; i < n_top; i++) {
        out->top_id[i] = s->c[i].id;
        out->top_logprob[i] = (float)((double)s->c[i].p - lse);
    }
}

void sampler_apply_bias(float *logits, const struct sampler_bias *b, int n)
{
    for (int i = 0; i < n; i++)
        logits[b[i].id] += b[i].bias;
}

void sampler_apply_penalties(float *logits, const int32_t *count, const int32_t *seen, int n_seen,
                             float presence, float frequency)
{
    for (int i = 0; i < n_seen; i++) {
        const int32_t j = seen[i];
        /* The whole penalty in double, then one rounding, so it does not
         * depend on how the count was reached. */
        logits[j] -= (float)((double)presence + (double)frequency * (double)count[j]);
    }
}
