/* test_native_sampler.c: the sampler against the distributions it should
 * draw from, computed here in double: greedy ties, temperature, top-k,
 * top-p, seeds, and logprobs with their alternatives. */
#include "engines/native/runtime/sampler.h"
#include "tests/unit/test.h"

#include <math.h>

#define V 6

/* Draw n times; freq[i] = share of draws that gave i. */
static void draw(const float *logits, const struct sampler_params *p, uint64_t seed, int n,
                 double *freq)
{
    struct sampler *s = sampler_new(V);
    uint64_t rng = sampler_seed(seed);
    int count[V] = {0};
    for (int i = 0; i < n; i++)
        count[sampler_sample(s, logits, p, &rng)]++;
    for (int i = 0; i < V; i++)
        freq[i] = (double)count[i] / n;
    sampler_free(s);
}

/* softmax(logits / t) restricted to `keep` (NULL: all), renormalized. */
static void expected(const float *logits, double t, const int *keep, double *out)
{
    double sum = 0;
    for (int i = 0; i < V; i++) {
        out[i] = (!keep || keep[i]) ? exp(logits[i] / t) : 0.0;
        sum += out[i];
    }
    for (int i = 0; i < V; i++)
        out[i] /= sum;
}

static int close_to(const double *a, const double *b, double tol)
{
    for (int i = 0; i < V; i++)
        if (fabs(a[i] - b[i]) > tol) {
            fprintf(stderr, "id %d: %.4f vs %.4f\n", i, a[i], b[i]);
            return 0;
        }
    return 1;
}

int main(void)
{
    const float logits[V] = {1.0f, 2.0f, 0.5f, 2.0f, -1.0f, 1.5f};
    struct sampler *s = sampler_new(V);
    uint64_t rng = sampler_seed(1);
    double f[V], e[V];
    const int n = 200000;
    const double tol = 0.006;   /* ~4 standard deviations at n = 200000 */

    /* Greedy: the first of the tied maxima. */
    struct sampler_params greedy = {0.0, 1.0, 0};
    CHECK(sampler_sample(s, logits, &greedy, &rng) == 1);
    struct sampler_params k1 = {1.5, 1.0, 1};
    CHECK(sampler_sample(s, logits, &k1, &rng) == 1);

    /* Temperature 1 and 0.5: the softmax. */
    struct sampler_params t1 = {1.0, 1.0, 0}, t05 = {0.5, 1.0, 0};
    draw(logits, &t1, 7, n, f);
    expected(logits, 1.0, NULL, e);
    CHECK(close_to(f, e, tol));
    draw(logits, &t05, 7, n, f);
    expected(logits, 0.5, NULL, e);
    CHECK(close_to(f, e, tol));

    /* top_k = 3: ids 1, 3 (tied best) and 5, renormalized. */
    struct sampler_params k3 = {1.0, 1.0, 3};
    const int keep_k3[V] = {0, 1, 0, 1, 0, 1};
    draw(logits, &k3, 9, n, f);
    expected(logits, 1.0, keep_k3, e);
    CHECK(close_to(f, e, tol));

    /* top_p = 0.6: the most likely ids until their mass reaches 0.6. */
    expected(logits, 1.0, NULL, e);
    const int order[V] = {1, 3, 5, 0, 2, 4};
    int keep_p[V] = {0};
    double mass = 0;
    for (int i = 0; i < V && mass < 0.6; i++) {
        keep_p[order[i]] = 1;
        mass += e[order[i]];
    }
    struct sampler_params p06 = {1.0, 0.6, 0};
    draw(logits, &p06, 11, n, f);
    expected(logits, 1.0, keep_p, e);
    CHECK(close_to(f, e, tol));

    /* A seed repeats its draws; another seed does not. */
    uint64_t a = sampler_seed(42), b = sampler_seed(42), c = sampler_seed(43);
    int same = 1, differ = 0;
    for (int i = 0; i < 64; i++) {
        int x = sampler_sample(s, logits, &t1, &a), y = sampler_sample(s, logits, &t1, &b);
        int z = sampler_sample(s, logits, &t1, &c);
        same &= x == y;
        differ |= x != z;
    }
    CHECK(same && differ);

    /* Logprobs: log_softmax of the raw logits, whatever the temperature;
     * alternatives best first, ties by id. */
    struct sampler_logprobs lp;
    sampler_logprobs(s, logits, 0, 3, &lp);
    double lse = 0;
    for (int i = 0; i < V; i++)
        lse += exp(logits[i]);
    lse = log(lse);
    CHECK(fabs(lp.logprob - (logits[0] - lse)) < 1e-6);
    CHECK(lp.n_top == 3 && lp.top_id[0] == 1 && lp.top_id[1] == 3 && lp.top_id[2] == 5);
    CHECK(fabs(lp.top_logprob[2] - (logits[5] - lse)) < 1e-6);
    sampler_logprobs(s, logits, 4, 50, &lp);       /* more than the vocabulary */
    CHECK(lp.n_top == V && lp.top_id[V - 1] == 4);
    sampler_logprobs(s, logits, 4, 0, &lp);
    CHECK(lp.n_top == 0);

    /* OpenAI's penalties, by hand: logit -= presence * (count > 0) +
     * frequency * count, only for the ids generated so far. */
    float pen[6] = {1.0f, 2.0f, 3.0f, 0.5f, -1.0f, 4.0f};
    const int32_t count[6] = {0, 3, 1, 0, 0, 2};
    const int32_t seen[3] = {1, 2, 5};
    sampler_apply_penalties(pen, count, seen, 3, 0.5f, 0.25f);
    CHECK(pen[0] == 1.0f && pen[3] == 0.5f && pen[4] == -1.0f);    /* not generated: untouched */
    CHECK(pen[1] == 0.75f);     /* 2 - (0.5 + 3 * 0.25) */
    CHECK(pen[2] == 2.25f);     /* 3 - (0.5 + 1 * 0.25) */
    CHECK(pen[5] == 3.0f);      /* 4 - (0.5 + 2 * 0.25) */
    /* Negative penalties (down to -2) encourage repetition instead. */
    sampler_apply_penalties(pen, count, seen, 1, -2.0f, -1.0f);
    CHECK(pen[1] == 5.75f);     /* 0.75 + 2 + 3 */
    /* No generated ids: nothing changes. */
    sampler_apply_penalties(pen, count, seen, 0, 2.0f, 2.0f);
    CHECK(pen[1] == 5.75f);

    /* logit_bias adds to the listed ids only; +100 / -100 decide greedy. */
    float lb[6] = {1.0f, 2.0f, 3.0f, 0.5f, -1.0f, 4.0f};
    const struct sampler_bias bias[2] = {{4, 100.0f}, {5, -100.0f}};
    sampler_apply_bias(lb, bias, 2);
    CHECK(lb[4] == 99.0f && lb[5] == -96.0f && lb[0] == 1.0f && lb[2] == 3.0f);
    rng = sampler_seed(1);
    CHECK(sampler_sample(s, lb, &greedy, &rng) == 4);
    sampler_apply_bias(lb, bias, 0);
    CHECK(lb[4] == 99.0f);
    sampler_free(s);
    TEST_MAIN_END();
}
