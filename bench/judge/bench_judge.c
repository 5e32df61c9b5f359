/* bench_judge: the time of one cascade judgement (policies/judge.c) on the
 * gateway's loop, for answers of growing length: free text under each rule
 * (the quantile sorts a copy of the logprobs), and a multiple-choice answer
 * whose letter sits at the end, with 5 alternatives a token, so the letter
 * search reads every token's alternatives.
 *
 * Usage: bench_judge [iterations]   (default 2000 per case and round)
 * Prints, per case, the median and p99 of the per-call time over 5 rounds,
 * and the spread of the rounds' medians (min..max). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policies/judge.h"

#define ROUNDS 5

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* An answer of n tokens, pseudo-random logprobs in (-3, 0], each with 5
 * alternatives (" w", " x"...), the last but one token " B" among letters. */
static struct judge_token *answer(size_t n, struct judge_alt **alts_out)
{
    static const char *const words[] = {" w", " x", " y", " z", " v"};
    static const char *const letters[] = {" B", " A", " C", " D", " E"};
    struct judge_token *t = calloc(n, sizeof *t);
    struct judge_alt *a = calloc(n * 5, sizeof *a);
    unsigned s = 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        double lp = -3.0 * (double)(s >> 16 & 0x7fff) / 32768.0;
        int is_letter = i + 2 == n;
        const char *const *alt = is_letter ? letters : words;
        for (int k = 0; k < 5; k++)
            a[i * 5 + k] = (struct judge_alt){alt[k], 2, k == 0 ? lp : lp - 1 - k};
        t[i] = (struct judge_token){is_letter ? " B" : " w", 2, 1, lp, a + i * 5, 5};
    }
    *alts_out = a;
    return t;
}

static void run(const char *name, const struct judge_settings *s, size_t n, const char *letters, size_t nl,
                int iters)
{
    struct judge_alt *alts;
    struct judge_token *t = answer(n, &alts);
    double *us = malloc((size_t)iters * ROUNDS * sizeof *us), med[ROUNDS];
    volatile double sink = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < iters; i++) {
            double t0 = now_us();
            struct judgement j = judge(s, t, n, letters, nl);
            us[r * iters + i] = now_us() - t0;
            sink += j.value;
        }
        qsort(us + r * iters, (size_t)iters, sizeof *us, cmp);
        med[r] = us[r * iters + iters / 2];
    }
    qsort(us, (size_t)iters * ROUNDS, sizeof *us, cmp);
    qsort(med, ROUNDS, sizeof *med, cmp);
    size_t all = (size_t)iters * ROUNDS;
    printf("%-26s n=%5zu  median %8.2f us  p99 %8.2f us  (round medians %.2f..%.2f)\n", name, n, us[all / 2],
           us[all * 99 / 100], med[0], med[ROUNDS - 1]);
    (void)sink;
    free(us);
    free(t);
    free(alts);
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 2000;
    if (iters < 10)
        iters = 10;
    static const size_t lens[] = {64, 512, 4096};
    static const char abcd[] = {'A', 'B', 'C', 'D'};
    struct judge_settings s;
    for (size_t k = 0; k < 3; k++) {
        judge_settings_default(&s);
        run("free text, quantile", &s, lens[k], NULL, 0, iters);
        s.rule = JUDGE_RULE_MEAN;
        run("free text, mean", &s, lens[k], NULL, 0, iters);
        s.rule = JUDGE_RULE_WINDOW;
        run("free text, window", &s, lens[k], NULL, 0, iters);
        judge_settings_default(&s);
        run("multiple choice (5 alts)", &s, lens[k], abcd, 4, iters);
    }
    return 0;
}
