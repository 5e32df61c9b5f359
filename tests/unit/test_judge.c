/* The cascade's rules (policies/judge.h) on answers built token by token:
 * the logprobs and top alternatives an upstream sends for a confident
 * multiple-choice answer, a split one, a free-text answer with one collapsed
 * span, and the edges (no logprobs, no letter, letters outside the options,
 * NaN and infinite logprobs, an empty answer). */
#include <math.h>
#include <string.h>

#include "policies/judge.h"
#include "tests/unit/test.h"

#define MAXT 64

/* An answer under construction: tokens with their alternatives. */
struct answer {
    struct judge_token t[MAXT];
    struct judge_alt alts[MAXT][8];
    size_t n;
};

/* Add a token with logprob lp and alternatives given as "text", lp pairs
 * (n_alt of them), the token itself listed first as an upstream does. */
static void tok(struct answer *a, const char *text, double lp, size_t n_alt, const char *const *alt_text,
                const double *alt_lp)
{
    struct judge_token *t = &a->t[a->n];
    *t = (struct judge_token){.text = text, .len = strlen(text), .has_logprob = 1, .logprob = lp};
    for (size_t i = 0; i < n_alt; i++)
        a->alts[a->n][i] = (struct judge_alt){alt_text[i], strlen(alt_text[i]), alt_lp[i]};
    t->top = a->alts[a->n];
    t->n_top = n_alt;
    a->n++;
}

static void plain(struct answer *a, const char *text, double lp)
{
    tok(a, text, lp, 0, NULL, NULL);
}

static const char ABCD[] = {'A', 'B', 'C', 'D'};

static void multiple_choice(void)
{
    struct judge_settings s;
    judge_settings_default(&s);

    /* "The answer is B." with B at 0.92, then A, C, D: kept. */
    struct answer a = {0};
    plain(&a, "The", -0.05);
    plain(&a, " answer", -0.01);
    plain(&a, " is", -0.02);
    {
        const char *at[] = {" B", " A", " C", " D", " (B"};
        double al[] = {log(0.92), log(0.03), log(0.02), log(0.01), log(0.01)};
        tok(&a, " B", log(0.92), 5, at, al);
    }
    plain(&a, ".", -0.01);
    struct judgement j = judge(&s, a.t, a.n, ABCD, 4);
    CHECK(j.verdict == JUDGE_KEEP);
    CHECK(j.letter == 'B');
    /* prob = (0.92 + 0.01) / (0.99 + 0.01 unseen) = 0.93; margin =
     * (0.93 - 0.03) / 1.0 = 0.90. The reason is the check with less slack:
     * prob's 0.93 - 0.5 = 0.43 against margin's 0.90 - 0.2 = 0.70. */
    CHECK(j.reason == JUDGE_OPTION_PROB);
    CHECK(fabs(j.value - 0.93) < 1e-9);

    /* The same answer split between B (0.45) and C (0.40): escalates. */
    struct answer b = {0};
    plain(&b, "The", -0.05);
    plain(&b, " answer", -0.01);
    plain(&b, " is", -0.02);
    {
        const char *at[] = {" B", " C", " A", " D"};
        double al[] = {log(0.45), log(0.40), log(0.08), log(0.05)};
        tok(&b, " B", log(0.45), 4, at, al);
    }
    plain(&b, ".", -0.01);
    j = judge(&s, b.t, b.n, ABCD, 4);
    CHECK(j.verdict == JUDGE_ESCALATE);
    CHECK(j.letter == 'B');
    /* prob 0.45 (< 0.5, slack -0.05); margin 0.05 (< 0.2, slack -0.15):
     * the margin decides. */
    CHECK(j.reason == JUDGE_OPTION_MARGIN);
    CHECK(fabs(j.value - 0.05) < 1e-9);
    /* Every token but the letter is sure: a free-text rule would keep it. */
    s.options = 0;
    CHECK(judge(&s, b.t, b.n, ABCD, 4).verdict == JUDGE_KEEP);
    s.options = 1;

    /* A sure letter without alternatives is judged on its own probability:
     * prob p, margin 2p - 1 (the rest could all be one other letter). */
    struct answer c = {0};
    plain(&c, "C", log(0.8));
    j = judge(&s, c.t, c.n, ABCD, 4); /* prob 0.8 (slack 0.3), margin 0.6 (slack 0.4) */
    CHECK(j.letter == 'C');
    CHECK(j.reason == JUDGE_OPTION_PROB && fabs(j.value - 0.8) < 1e-9 && j.verdict == JUDGE_KEEP);
    c.t[0].logprob = log(0.55); /* margin 0.1 */
    j = judge(&s, c.t, c.n, ABCD, 4);
    CHECK(j.verdict == JUDGE_ESCALATE && j.reason == JUDGE_OPTION_MARGIN);

    /* The letter token is the one where the model chose between letters,
     * not an article "A" at the start of a sentence. */
    struct answer d = {0};
    {
        const char *at[] = {"A", "The", "Cells"};
        double al[] = {log(0.5), log(0.3), log(0.1)};
        tok(&d, "A", log(0.5), 3, at, al);
    }
    plain(&d, " cell", -0.3);
    plain(&d, " divides", -0.2);
    plain(&d, ", so", -0.1);
    {
        const char *at[] = {" (", " B"};
        double al[] = {log(0.9), log(0.05)};
        tok(&d, " (", log(0.9), 2, at, al);
    }
    {
        const char *at[] = {"D", "B", "A"};
        double al[] = {log(0.97), log(0.02), log(0.005)};
        tok(&d, "D", log(0.97), 3, at, al);
    }
    plain(&d, ")", -0.01);
    j = judge(&s, d.t, d.n, ABCD, 4);
    CHECK(j.letter == 'D' && j.verdict == JUDGE_KEEP);

    /* Variants of one letter add up: "B", " B" and "(B" are all B. */
    struct answer e = {0};
    {
        const char *at[] = {"B", " B", "(B", "A"};
        double al[] = {log(0.3), log(0.3), log(0.3), log(0.1)};
        tok(&e, "B", log(0.3), 4, at, al);
    }
    j = judge(&s, e.t, e.n, ABCD, 4);
    CHECK(j.letter == 'B' && j.verdict == JUDGE_KEEP);
    CHECK(j.reason == JUDGE_OPTION_PROB && fabs(j.value - 0.9) < 1e-9);
}

static void letter_edges(void)
{
    struct judge_settings s;
    judge_settings_default(&s);

    CHECK(judge_letter_of(" B", 2, ABCD, 4) == 'B');
    CHECK(judge_letter_of("(B", 2, ABCD, 4) == 'B');
    CHECK(judge_letter_of("B)", 2, ABCD, 4) == 'B');
    CHECK(judge_letter_of("**C**", 5, ABCD, 4) == 'C');
    CHECK(judge_letter_of("(d)", 3, ABCD, 4) == 'D');
    CHECK(judge_letter_of(" a", 2, ABCD, 4) == 0);   /* a word, not a letter */
    CHECK(judge_letter_of(" E", 2, ABCD, 4) == 0);   /* not an option */
    CHECK(judge_letter_of(" Be", 3, ABCD, 4) == 0);
    CHECK(judge_letter_of("", 0, ABCD, 4) == 0);
    CHECK(judge_letter_of(NULL, 0, ABCD, 4) == 0);

    /* A multiple-choice answer without a letter escalates. */
    struct answer a = {0};
    plain(&a, "Mito", -0.1);
    plain(&a, "chondria", -0.1);
    struct judgement j = judge(&s, a.t, a.n, ABCD, 4);
    CHECK(j.verdict == JUDGE_ESCALATE && j.reason == JUDGE_NO_OPTION_LETTER);

    /* A letter glued to a word is no answer letter: "B" "acteria". */
    struct answer g = {0};
    plain(&g, "B", -0.1);
    plain(&g, "acteria", -0.1);
    j = judge(&s, g.t, g.n, ABCD, 4);
    CHECK(j.reason == JUDGE_NO_OPTION_LETTER);

    /* A letter outside the options ("E" on an A-D question) is none, and
     * alternatives outside them count as no letter's mass. */
    struct answer o = {0};
    {
        const char *at[] = {" E", " F"};
        double al[] = {log(0.6), log(0.4)};
        tok(&o, " E", log(0.6), 2, at, al);
    }
    j = judge(&s, o.t, o.n, ABCD, 4);
    CHECK(j.verdict == JUDGE_ESCALATE && j.reason == JUDGE_NO_OPTION_LETTER);
    struct answer o2 = {0};
    {
        const char *at[] = {" A", " E", " F"};
        double al[] = {log(0.5), log(0.3), log(0.2)};
        tok(&o2, " A", log(0.5), 3, at, al);
    }
    j = judge(&s, o2.t, o2.n, ABCD, 4); /* A is the only option letter shown: prob 1 */
    CHECK(j.letter == 'A' && j.verdict == JUDGE_KEEP);

    /* One "letter" is not multiple choice: free text rules. */
    j = judge(&s, a.t, a.n, ABCD, 1);
    CHECK(j.reason == JUDGE_QUANTILE && j.verdict == JUDGE_KEEP);
}

/* A free-text answer of 40 sure tokens with one collapsed span of 5. */
static void free_text(void)
{
    struct judge_settings s;
    judge_settings_default(&s);
    struct answer a = {0};
    for (int i = 0; i < 40; i++)
        plain(&a, " w", i >= 20 && i < 25 ? -4.0 : -0.1);
    /* mean = (35 * -0.1 + 5 * -4) / 40 = -0.5875: above -1, kept by mean;
     * the 10th percentile is -4 (rank 3.9 of 40 falls among the five -4s):
     * escalated by quantile; the window of 8 holding all five: mean
     * (5 * -4 + 3 * -0.1) / 8 = -2.5375: below -2.5. */
    struct judgement j = judge(&s, a.t, a.n, NULL, 0);
    CHECK(j.verdict == JUDGE_ESCALATE && j.reason == JUDGE_QUANTILE);
    CHECK(fabs(j.value + 4.0) < 1e-9 && j.n == 40);
    s.rule = JUDGE_RULE_MEAN;
    j = judge(&s, a.t, a.n, NULL, 0);
    CHECK(j.verdict == JUDGE_KEEP && j.reason == JUDGE_MEAN && fabs(j.value + 0.5875) < 1e-9);
    s.rule = JUDGE_RULE_WINDOW;
    j = judge(&s, a.t, a.n, NULL, 0);
    CHECK(j.verdict == JUDGE_ESCALATE && j.reason == JUDGE_WINDOW && fabs(j.value + 2.5375) < 1e-9);
    /* The old rule (mean and window both): the window fails. */
    s.rule = JUDGE_RULE_MEAN_WINDOW;
    j = judge(&s, a.t, a.n, NULL, 0);
    CHECK(j.verdict == JUDGE_ESCALATE && j.reason == JUDGE_WINDOW);
    s.min_window = -3;
    j = judge(&s, a.t, a.n, NULL, 0); /* both pass; the mean has less slack */
    CHECK(j.verdict == JUDGE_KEEP && j.reason == JUDGE_MEAN);

    /* The rule's cases from before the judge (routing.c's confidence, mean
     * -1 and window -2 over 3 tokens): one unsure stretch in a long, sure
     * answer escalates on the window; a window longer than the answer is
     * the whole answer. */
    struct judge_settings old;
    judge_settings_default(&old);
    old.rule = JUDGE_RULE_MEAN_WINDOW;
    old.min_mean = -1.0;
    old.min_window = -2.0;
    old.window = 3;
    static const double sure[] = {-0.1, -0.2, -0.1, -0.05, -0.3, -0.1};
    static const double stretch[] = {-0.01, -0.01, -0.01, -3.0, -4.0, -2.5, -0.01, -0.01, -0.01, -0.01, -0.01, -0.01};
    static const double unsure[] = {-1.5, -1.2, -0.9};
    struct answer o = {0};
    for (size_t i = 0; i < 6; i++)
        plain(&o, "x", sure[i]);
    j = judge(&old, o.t, o.n, NULL, 0); /* mean -0.1417 (slack 0.858), window -0.15 (slack 1.85) */
    CHECK(j.verdict == JUDGE_KEEP && j.reason == JUDGE_MEAN && fabs(j.value + 0.85 / 6) < 1e-12);
    struct answer st = {0};
    for (size_t i = 0; i < 12; i++)
        plain(&st, "x", stretch[i]);
    j = judge(&old, st.t, st.n, NULL, 0);
    CHECK(j.verdict == JUDGE_ESCALATE && j.reason == JUDGE_WINDOW && fabs(j.value + 9.5 / 3) < 1e-12);
    struct answer un = {0};
    for (size_t i = 0; i < 3; i++)
        plain(&un, "x", unsure[i]);
    old.window = 8;
    j = judge(&old, un.t, un.n, NULL, 0); /* window = mean = -1.2: under the mean's -1, over the window's -2 */
    CHECK(j.verdict == JUDGE_ESCALATE && j.reason == JUDGE_MEAN && fabs(j.value + 1.2) < 1e-12);

    /* The same answer without the span is kept by every rule. */
    judge_settings_default(&s);
    for (int i = 20; i < 25; i++)
        a.t[i].logprob = -0.1;
    j = judge(&s, a.t, a.n, NULL, 0);
    CHECK(j.verdict == JUDGE_KEEP && j.reason == JUDGE_QUANTILE && fabs(j.value + 0.1) < 1e-9);

    /* Quantile between order statistics: values 0, -1, -2, -3, q 0.5 ->
     * rank 1.5 -> -1.5. */
    struct answer q = {0};
    plain(&q, "a", 0);
    plain(&q, "b", -1);
    plain(&q, "c", -2);
    plain(&q, "d", -3);
    s.quantile = 0.5;
    j = judge(&s, q.t, q.n, NULL, 0);
    CHECK(fabs(j.value + 1.5) < 1e-9);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The quantile (taken from a heap of the smaller side, not a sort) against a
 * full sort, for every length up to 40 and many q, ties included. */
static void quantile_against_sort(void)
{
    struct judge_settings s;
    judge_settings_default(&s);
    unsigned seed = 7;
    int bad = 0;
    for (size_t n = 1; n <= 40; n++) {
        struct answer a = {0};
        double v[MAXT];
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            v[i] = -(double)(seed >> 16 & 7) / 2; /* few distinct values: ties */
            plain(&a, "x", v[i]);
        }
        qsort(v, n, sizeof *v, cmp_double);
        for (int k = 0; k <= 20; k++) {
            s.quantile = k / 20.0;
            double rank = s.quantile * (double)(n - 1);
            size_t lo = (size_t)rank;
            double want = lo + 1 < n ? v[lo] + (v[lo + 1] - v[lo]) * (rank - (double)lo) : v[lo];
            struct judgement j = judge(&s, a.t, a.n, NULL, 0);
            if (fabs(j.value - want) > 1e-12) {
                if (!bad++)
                    fprintf(stderr, "quantile n=%zu q=%.2f: %.6f, sorted says %.6f\n", n, s.quantile, j.value, want);
            }
        }
    }
    CHECK(bad == 0);
}

static void no_logprobs_and_bad_numbers(void)
{
    struct judge_settings s;
    judge_settings_default(&s);

    /* An empty answer, and one without logprobs: nothing to judge, kept. */
    struct judgement j = judge(&s, NULL, 0, NULL, 0);
    CHECK(j.verdict == JUDGE_KEEP && j.reason == JUDGE_NO_LOGPROBS && j.n == 0);
    j = judge(&s, NULL, 0, ABCD, 4);
    CHECK(j.verdict == JUDGE_KEEP && j.reason == JUDGE_NO_LOGPROBS);
    struct answer a = {0};
    plain(&a, "Hello", 0);
    plain(&a, " B", 0);
    a.t[0].has_logprob = a.t[1].has_logprob = 0;
    j = judge(&s, a.t, a.n, ABCD, 4);
    CHECK(j.verdict == JUDGE_KEEP && j.reason == JUDGE_NO_LOGPROBS);

    /* NaN is no measurement; the rest is judged. */
    struct answer n = {0};
    plain(&n, "x", NAN);
    plain(&n, "y", -0.2);
    j = judge(&s, n.t, n.n, NULL, 0);
    CHECK(j.n == 1 && j.verdict == JUDGE_KEEP && fabs(j.value + 0.2) < 1e-9);
    n.t[1].logprob = NAN;
    j = judge(&s, n.t, n.n, NULL, 0);
    CHECK(j.reason == JUDGE_NO_LOGPROBS && j.verdict == JUDGE_KEEP);

    /* -inf is a collapse, held at the floor so the value is finite; +inf
     * (impossible for a logprob) is 0. */
    struct answer f = {0};
    plain(&f, "x", -INFINITY);
    plain(&f, "y", INFINITY);
    s.rule = JUDGE_RULE_MEAN;
    j = judge(&s, f.t, f.n, NULL, 0);
    CHECK(j.verdict == JUDGE_ESCALATE && isfinite(j.value) && fabs(j.value - JUDGE_LOGPROB_FLOOR / 2) < 1e-9);

    /* NaN and infinite alternatives at the letter: a NaN holds nothing, an
     * infinite one everything; the result stays in range. */
    judge_settings_default(&s);
    struct answer m = {0};
    {
        const char *at[] = {" B", " C", " A"};
        double al[] = {NAN, INFINITY, -INFINITY};
        tok(&m, " B", NAN, 3, at, al);
    }
    j = judge(&s, m.t, m.n, ABCD, 4);
    /* The letter token's own logprob is NaN: no usable logprob at all. */
    CHECK(j.reason == JUDGE_NO_LOGPROBS);
    m.t[0].logprob = log(0.5);
    m.alts[0][0].logprob = log(0.5);
    j = judge(&s, m.t, m.n, ABCD, 4);
    CHECK(j.verdict == JUDGE_ESCALATE && j.letter == 'B');
    CHECK(isfinite(j.value) && j.value >= -1 && j.value <= 1);
}

static void names(void)
{
    CHECK_STR(judge_reason_name(JUDGE_OPTION_PROB), "option_prob");
    CHECK_STR(judge_reason_name(JUDGE_OPTION_MARGIN), "option_margin");
    CHECK_STR(judge_reason_name(JUDGE_NO_OPTION_LETTER), "no_option_letter");
    CHECK_STR(judge_reason_name(JUDGE_MEAN), "mean");
    CHECK_STR(judge_reason_name(JUDGE_QUANTILE), "quantile");
    CHECK_STR(judge_reason_name(JUDGE_WINDOW), "window");
    CHECK_STR(judge_reason_name(JUDGE_NO_LOGPROBS), "no_logprobs");
    CHECK_STR(judge_reason_name(JUDGE_CHEAP_FAILED), "cheap_failed");
    CHECK(judge_reason_name(JUDGE_N_REASONS) == NULL);
    CHECK_STR(judge_verdict_name(JUDGE_ESCALATE), "escalate");
    CHECK(judge_reason_possible(JUDGE_ESCALATE, JUDGE_CHEAP_FAILED));
    CHECK(!judge_reason_possible(JUDGE_KEEP, JUDGE_CHEAP_FAILED));
    CHECK(!judge_reason_possible(JUDGE_ESCALATE, JUDGE_NO_LOGPROBS));
    enum judge_rule r;
    CHECK(judge_rule_parse("window", &r) == 0 && r == JUDGE_RULE_WINDOW);
    CHECK(judge_rule_parse("median", &r) < 0);
    CHECK_STR(judge_rule_name(JUDGE_RULE_MEAN_WINDOW), "mean_window");
}

int main(void)
{
    multiple_choice();
    letter_edges();
    free_text();
    quantile_against_sort();
    no_logprobs_and_bad_numbers();
    names();
    TEST_MAIN_END();
}
