/* test_routeval: the routing evaluation (classifier/routeval.h) against
 * answers computed another way, so that the classifier's recorded figures
 * do not rest on the code that wrote them:
 *   - hand-computed cases: a small curve, ties, all positive, all negative,
 *     no gap between the models;
 *   - the AUC against a brute-force count over every (positive, negative)
 *     pair, on random scores with many ties;
 *   - the curve against brute force over every order of the tied rows: with
 *     ties broken at random, acc(k/n) is the mean, over all those orders, of
 *     the accuracy when the first k rows go to the strong model. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "classifier/dataset.h"
#include "classifier/routeval.h"
#include "tests/unit/test.h"

#define NEAR(a, b) (fabs((a) - (b)) < 1e-9)

static void test_hand_cases(void)
{
    /* AUC: positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4
     * pairs ordered right. */
    float s1[] = {0.1f, 0.4f, 0.35f, 0.8f};
    int l1[] = {0, 0, 1, 1};
    CHECK(NEAR(routeval_auc(s1, l1, 4), 0.75));
    /* Ties count one half: the positive ties one negative, beats the other. */
    float s2[] = {1, 1, 0};
    int l2[] = {1, 0, 0};
    CHECK(NEAR(routeval_auc(s2, l2, 3), 0.75));
    /* One class empty: 0.5 by contract, whatever the scores. */
    int all1[] = {1, 1, 1, 1}, all0[] = {0, 0, 0, 0};
    CHECK(NEAR(routeval_auc(s1, all1, 4), 0.5));
    CHECK(NEAR(routeval_auc(s1, all0, 4), 0.5));
    /* Perfectly reversed: 0. */
    int rev[] = {1, 1, 0, 0};
    CHECK(NEAR(routeval_auc(s1, rev, 4), 1.0 / 4));

    /* The curve, by hand. Rows by score: r0 0.9 (weak 1, strong 1), r1 0.8
     * (0, 1: needs the large model), r3 0.2 (1, 1), r2 0.1 (0, 0).
     * acc_weak 2/4, acc_strong 3/4; acc at shares 0, 1/4, 2/4, 3/4, 1 is
     * .5 .5 .75 .75 .75, so PGR is 0 0 1 1 1, APGR = .25 * (0 + .5 + 1 + 1)
     * = .625, PGR reaches .5 at 3/8 and .8 at .45, and AUC is 2/3 (r1 beats
     * r3 and r2, loses to r0). */
    float sc[] = {0.9f, 0.8f, 0.1f, 0.2f};
    int weak[] = {1, 0, 0, 1}, strong[] = {1, 1, 0, 1};
    struct routeval r;
    CHECK(routeval_compute(sc, weak, strong, 4, &r) == 0);
    CHECK(NEAR(r.acc_weak, 0.5) && NEAR(r.acc_strong, 0.75));
    CHECK(NEAR(r.apgr, 0.625));
    CHECK(NEAR(r.cpt50, 0.375) && NEAR(r.cpt80, 0.45));
    CHECK(NEAR(r.auc, 2.0 / 3));
    CHECK(NEAR(routeval_acc_at(&r, 0.25), 0.5) && NEAR(routeval_acc_at(&r, 0.5), 0.75));
    routeval_release(&r);

    /* One block of ties is the random router: a straight line, APGR .5. */
    float flat[] = {0.3f, 0.3f, 0.3f, 0.3f};
    CHECK(routeval_compute(flat, weak, strong, 4, &r) == 0);
    CHECK(NEAR(r.apgr, 0.5) && NEAR(r.auc, 0.5));
    CHECK(NEAR(routeval_acc_at(&r, 0.5), 0.625));
    routeval_release(&r);

    /* The oracle (score = strong - weak) recovers the gap at once: PGR 1
     * from share 1/4 on. Its APGR is above 1 here only because routing r2
     * (0, 0) costs nothing; the area is .25*.5 + .75*1 = .875. */
    float oracle[] = {0, 1, 0, 0};
    CHECK(routeval_compute(oracle, weak, strong, 4, &r) == 0);
    CHECK(NEAR(r.auc, 1.0) && NEAR(r.cpt50, 0.125));
    routeval_release(&r);

    /* No gap: the strong model is no better, so no share reaches any PGR. */
    int same[] = {1, 0, 1, 0};
    CHECK(routeval_compute(sc, same, same, 4, &r) == 0);
    CHECK(r.cpt50 == -1 && r.cpt80 == -1 && r.apgr == 0);
    routeval_release(&r);

    /* Everyone needs the large model / nobody does. */
    int zeros[] = {0, 0, 0, 0}, ones[] = {1, 1, 1, 1};
    CHECK(routeval_compute(sc, zeros, ones, 4, &r) == 0);
    CHECK(NEAR(r.auc, 0.5) && NEAR(r.apgr, 0.5) && NEAR(r.cpt50, 0.5));
    routeval_release(&r);
    CHECK(routeval_compute(sc, ones, ones, 4, &r) == 0);
    CHECK(NEAR(r.auc, 0.5) && r.cpt50 == -1);
    routeval_release(&r);

    CHECK(routeval_compute(sc, weak, strong, 0, &r) == -1);
}

/* Pairwise AUC by brute force: every (positive, negative) pair. */
static double brute_auc(const float *s, const int *l, size_t n)
{
    double wins = 0, pairs = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            if (l[i] && !l[j]) {
                pairs++;
                wins += s[i] > s[j] ? 1 : s[i] == s[j] ? 0.5 : 0;
            }
    return pairs ? wins / pairs : 0.5;
}

static void test_auc_brute_force(void)
{
    uint64_t seed = 42;
    enum { N = 600 };
    static float s[N];
    static int l[N];
    for (int round = 0; round < 5; round++) {
        for (size_t i = 0; i < N; i++) {
            /* 20 distinct scores: many ties. Labels lean on the score. */
            s[i] = (float)(dataset_rand(&seed) % 20) / 20.0f;
            l[i] = (double)(dataset_rand(&seed) % 1000) / 1000.0 < 0.2 + 0.5 * s[i];
        }
        double got = routeval_auc(s, l, N), want = brute_auc(s, l, N);
        if (!NEAR(got, want))
            fprintf(stderr, "round %d: AUC %.12f, brute force %.12f\n", round, got, want);
        CHECK(NEAR(got, want));
    }
}

/* Every order of rows that keeps the scores descending (ties in any order):
 * accumulate, for each k, the accuracy with the first k rows strong. */
static void orders(const float *s, const int *weak, const int *strong, int n, int *perm, int depth, int *used,
                   double *sum, double *count)
{
    if (depth == n) {
        for (int k = 0; k <= n; k++) {
            int ok = 0;
            for (int i = 0; i < n; i++)
                ok += i < k ? strong[perm[i]] : weak[perm[i]];
            sum[k] += (double)ok / n;
        }
        (*count)++;
        return;
    }
    for (int i = 0; i < n; i++) {
        if (used[i])
            continue;
        int ok = 1; /* i must be among the highest unused scores */
        for (int j = 0; j < n; j++)
            ok &= used[j] || s[j] <= s[i];
        if (!ok)
            continue;
        used[i] = 1;
        perm[depth] = i;
        orders(s, weak, strong, n, perm, depth + 1, used, sum, count);
        used[i] = 0;
    }
}

static void test_curve_brute_force(void)
{
    uint64_t seed = 7;
    enum { N = 7 };
    for (int round = 0; round < 20; round++) {
        float s[N];
        int weak[N], strong[N], perm[N], used[N] = {0};
        for (int i = 0; i < N; i++) {
            s[i] = (float)(dataset_rand(&seed) % 3); /* three scores: big tie blocks */
            weak[i] = (int)(dataset_rand(&seed) % 2);
            strong[i] = (int)(dataset_rand(&seed) % 2);
        }
        double sum[N + 1] = {0}, count = 0;
        orders(s, weak, strong, N, perm, 0, used, sum, &count);
        struct routeval r;
        CHECK(count > 0 && routeval_compute(s, weak, strong, N, &r) == 0);
        int bad = 0;
        for (int k = 0; k <= N; k++)
            bad += !NEAR(routeval_acc_at(&r, (double)k / N), sum[k] / count);
        /* APGR: the area under the averaged curve, over the gap. */
        double area = 0, gap = r.acc_strong - r.acc_weak;
        for (int k = 1; k <= N; k++)
            area += (sum[k] + sum[k - 1]) / count / 2 / N - r.acc_weak / N;
        if (gap > 0)
            bad += !NEAR(r.apgr, area / gap);
        if (bad)
            fprintf(stderr, "round %d: %d points differ from brute force\n", round, bad);
        CHECK(bad == 0);
        routeval_release(&r);
    }
}

/* Mean, sd and the paired differences, against values worked by hand. */
static void test_summary_and_pairs(void)
{
    /* 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum to 32, so the
     * sample sd is sqrt(32 / 7). */
    double x[] = {2, 4, 4, 4, 5, 5, 7, 9};
    struct routeval_summary s;
    routeval_summarize(x, 8, &s);
    CHECK(s.n == 8 && NEAR(s.mean, 5) && NEAR(s.sd, sqrt(32.0 / 7)) && s.min == 2 && s.max == 9);
    routeval_summarize(x, 1, &s);
    CHECK(NEAR(s.mean, 2) && s.sd == 0);
    routeval_summarize(x, 0, &s);
    CHECK(s.n == 0 && s.mean == 0);
    /* A constant offset far from zero: the two-pass sd has no cancellation. */
    double big[] = {1e9 + 1, 1e9 + 2, 1e9 + 3};
    routeval_summarize(big, 3, &s);
    CHECK(NEAR(s.sd, 1.0));

    /* a - b = .1 .2 -.1 0 .3: wins 3, one tie, mean .1. Sign test over the
     * 4 untied folds: P(X >= 3) = (4 + 1) / 16. */
    double a[] = {0.6, 0.7, 0.5, 0.55, 0.9}, b[] = {0.5, 0.5, 0.6, 0.55, 0.6};
    struct routeval_paired p;
    routeval_paired(a, b, 5, &p);
    CHECK(p.wins == 3 && p.ties == 1 && NEAR(p.diff.mean, 0.1) && p.diff.n == 5);
    CHECK(NEAR(p.p_sign, 5.0 / 16));
    /* Reversed: one win of 4, P(X >= 1) = 15/16. */
    routeval_paired(b, a, 5, &p);
    CHECK(p.wins == 1 && NEAR(p.diff.mean, -0.1) && NEAR(p.p_sign, 15.0 / 16));
    /* 15 of 15 folds: 2^-15. 12 of 15: (455 + 105 + 15 + 1) / 2^15. */
    double hi[15], lo[15];
    for (int i = 0; i < 15; i++)
        hi[i] = 1, lo[i] = 0;
    routeval_paired(hi, lo, 15, &p);
    CHECK(p.wins == 15 && NEAR(p.p_sign, 1.0 / 32768));
    lo[0] = lo[1] = lo[2] = 2;
    routeval_paired(hi, lo, 15, &p);
    CHECK(p.wins == 12 && NEAR(p.p_sign, 576.0 / 32768));
    /* Every fold tied: nothing to test. */
    routeval_paired(a, a, 5, &p);
    CHECK(p.ties == 5 && p.wins == 0 && p.p_sign == 1);
}

/* Grouped folds: an MMLU subject never straddles two folds, every member row
 * gets a fold in [0, k), non-members get -1, the folds are balanced by rows,
 * and another seed deals the subjects differently. */
static void test_group_folds(void)
{
    enum { N = 400, K = 5 };
    static struct dataset_row rows[N];
    static char ids[N][16];
    static const char *subjects[] = {"algebra", "anatomy", "astronomy", "biology", "chemistry", "ethics",
                                     "law", "logic", "music", "physics", "virology", "zoology"};
    uint64_t st = 3;
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "row/%d", i);
        rows[i].id = ids[i];
        int gsm = i % 5 == 0;
        rows[i].source = gsm ? "gsm8k" : "mmlu";
        rows[i].subject = gsm ? "" : (char *)subjects[dataset_rand(&st) % 12];
    }
    struct dataset d = {.rows = rows, .n = N};
    static int fold[N], fold2[N];
    static unsigned char member[N];
    dataset_group_folds(&d, NULL, K, 11, fold);
    int bad = 0, per_fold[K] = {0};
    for (int i = 0; i < N; i++) {
        bad += fold[i] < 0 || fold[i] >= K;
        if (fold[i] >= 0 && fold[i] < K)
            per_fold[fold[i]]++;
        for (int j = 0; j < i; j++)
            bad += !strcmp(rows[i].source, "mmlu") && !strcmp(rows[j].source, "mmlu") &&
                   !strcmp(rows[i].subject, rows[j].subject) && fold[i] != fold[j];
    }
    CHECK(bad == 0);
    for (int f = 0; f < K; f++)
        CHECK(per_fold[f] > N / K / 3); /* 12 subjects of ~27 rows into 5 folds: none starves */
    dataset_group_folds(&d, NULL, K, 12, fold2);
    int moved = 0;
    for (int i = 0; i < N; i++)
        moved += fold[i] != fold2[i];
    CHECK(moved > 0);
    /* Members only: the others get -1, the members keep the rules. */
    for (int i = 0; i < N; i++)
        member[i] = i % 3 != 0;
    dataset_group_folds(&d, member, K, 11, fold2);
    bad = 0;
    for (int i = 0; i < N; i++)
        bad += member[i] ? fold2[i] < 0 || fold2[i] >= K : fold2[i] != -1;
    CHECK(bad == 0);
}

int main(void)
{
    test_hand_cases();
    test_auc_brute_force();
    test_curve_brute_force();
    test_summary_and_pairs();
    test_group_folds();
    TEST_MAIN_END();
}
