/* judge.c: see judge.h. */
#include "policies/judge.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/mem.h"

void judge_settings_default(struct judge_settings *s)
{
    *s = (struct judge_settings){
        .rule = JUDGE_RULE_QUANTILE,
        .min_mean = -1.0,
        .min_quantile = -2.5,
        .min_window = -2.5,
        .quantile = 0.1,
        .window = 8,
        .options = 1,
        .min_option_prob = 0.5,
        .min_option_margin = 0.2,
        .top_logprobs = 5,
    };
}

static const char *const reason_names[JUDGE_N_REASONS] = {
    "option_prob", "option_margin", "no_option_letter", "mean", "quantile", "window", "no_logprobs", "cheap_failed",
};

const char *judge_reason_name(enum judge_reason r)
{
    return (unsigned)r < JUDGE_N_REASONS ? reason_names[r] : NULL;
}

const char *judge_verdict_name(enum judge_verdict v)
{
    return v == JUDGE_KEEP ? "keep" : v == JUDGE_ESCALATE ? "escalate" : NULL;
}

int judge_reason_possible(enum judge_verdict v, enum judge_reason r)
{
    if ((unsigned)r >= JUDGE_N_REASONS || (unsigned)v >= JUDGE_N_VERDICTS)
        return 0;
    if (r == JUDGE_NO_OPTION_LETTER || r == JUDGE_CHEAP_FAILED)
        return v == JUDGE_ESCALATE;
    if (r == JUDGE_NO_LOGPROBS)
        return v == JUDGE_KEEP;
    return 1;
}

static const char *const rule_names[] = {"mean", "quantile", "window", "mean_window"};

const char *judge_rule_name(enum judge_rule r)
{
    return (unsigned)r < sizeof rule_names / sizeof *rule_names ? rule_names[r] : NULL;
}

int judge_rule_parse(const char *name, enum judge_rule *out)
{
    for (size_t i = 0; i < sizeof rule_names / sizeof *rule_names; i++)
        if (name && strcmp(name, rule_names[i]) == 0) {
            *out = (enum judge_rule)i;
            return 0;
        }
    return -1;
}

/* ---- numbers from outside ------------------------------------------------- */

/* An upstream's logprob as a finite number in [FLOOR, 0]; 0 (not usable)
 * for NaN. */
static int usable(double lp, double *out)
{
    if (isnan(lp))
        return 0;
    *out = lp > 0 ? 0 : lp < JUDGE_LOGPROB_FLOOR ? JUDGE_LOGPROB_FLOOR : lp;
    return 1;
}

/* exp of an alternative's logprob; a NaN is no probability. */
static double prob_of(double lp)
{
    double v;
    return usable(lp, &v) ? exp(v) : 0;
}

/* ---- finding the letter ------------------------------------------------------ */

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

static int is_alnum(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch >= 0x80;
}

/* Optional spaces, an optional opener ( [ or **, the letter, optional
 * closers ) ] . : , or **, optional spaces: nothing else. A lower-case
 * letter counts only after an opener ("(b)"), since a bare "a" is a word. */
int judge_letter_of(const char *text, size_t len, const char *letters, size_t n_letters)
{
    size_t i = 0;
    if (!text)
        return 0;
    while (i < len && is_space(text[i]))
        i++;
    int opened = 0;
    if (i < len && (text[i] == '(' || text[i] == '[')) {
        opened = 1;
        i++;
    } else if (i + 1 < len && text[i] == '*' && text[i + 1] == '*') {
        opened = 1;
        i += 2;
    }
    if (i >= len)
        return 0;
    char ch = text[i++];
    if (ch >= 'a' && ch <= 'z') {
        if (!opened)
            return 0;
        ch = (char)(ch - 'a' + 'A');
    }
    while (i < len && (text[i] == ')' || text[i] == ']' || text[i] == '.' || text[i] == ':' || text[i] == ',' ||
                       text[i] == '*'))
        i++;
    while (i < len && is_space(text[i]))
        i++;
    if (i != len)
        return 0;
    for (size_t k = 0; k < n_letters; k++)
        if (letters[k] == ch)
            return ch;
    return 0;
}

/* Whether token k stands alone: not the tail of a word before it ("Vitamin"
 * "B" glued) nor the head of one after it ("B" "acteria"). A token that
 * opens with a space or bracket starts a new word whatever came before. */
static int stands_alone(const struct judge_token *t, size_t n, size_t k)
{
    const struct judge_token *cur = &t[k];
    if (k > 0 && cur->len && is_alnum((unsigned char)cur->text[0])) {
        const struct judge_token *prev = &t[k - 1];
        if (prev->len && is_alnum((unsigned char)prev->text[prev->len - 1]))
            return 0;
    }
    if (k + 1 < n && t[k + 1].len && is_alnum((unsigned char)t[k + 1].text[0]) && cur->len &&
        is_alnum((unsigned char)cur->text[cur->len - 1]))
        return 0;
    return 1;
}

/* Whether token k's alternatives name an option letter other than its own. */
static int chose_among_letters(const struct judge_token *t, int letter, const char *letters, size_t n_letters)
{
    for (size_t j = 0; j < t->n_top; j++) {
        int l = judge_letter_of(t->top[j].text, t->top[j].len, letters, n_letters);
        if (l && l != letter)
            return 1;
    }
    return 0;
}

/* The index of the answer's letter token, or n. */
static size_t find_letter(const struct judge_token *t, size_t n, const char *letters, size_t n_letters, int *letter)
{
    size_t first = n;
    int first_letter = 0;
    for (size_t k = 0; k < n; k++) {
        int l = judge_letter_of(t[k].text, t[k].len, letters, n_letters);
        if (!l || !stands_alone(t, n, k))
            continue;
        if (chose_among_letters(&t[k], l, letters, n_letters)) {
            *letter = l;
            return k;
        }
        if (first == n) {
            first = k;
            first_letter = l;
        }
    }
    *letter = first_letter;
    return first;
}

/* ---- multiple choice ----------------------------------------------------------- */

/* prob and margin of the chosen letter at token t (see judge.h). */
static void option_measure(const struct judge_token *t, int chosen, const char *letters, size_t n_letters,
                           double *prob, double *margin)
{
    double p[JUDGE_MAX_LETTERS] = {0};
    double shown = 0, smallest = 1;
    int self_listed = 0;
    size_t nt = t->n_top;
    for (size_t j = 0; j < nt; j++) {
        const struct judge_alt *a = &t->top[j];
        double pa = prob_of(a->logprob);
        shown += pa;
        if (pa < smallest)
            smallest = pa;
        if (a->len == t->len && (t->len == 0 || memcmp(a->text, t->text, t->len) == 0))
            self_listed = 1;
        int l = judge_letter_of(a->text, a->len, letters, n_letters);
        for (size_t k = 0; l && k < n_letters; k++)
            if (letters[k] == l)
                p[k] += pa;
    }
    if (!self_listed) {
        /* The sampled token is an alternative too, whether or not the
         * upstream listed it. */
        double ps = t->has_logprob ? prob_of(t->logprob) : 0;
        shown += ps;
        for (size_t k = 0; k < n_letters; k++)
            if (letters[k] == chosen)
                p[k] += ps;
    }
    double unseen = shown < 1 ? 1 - shown : 0;
    double total = unseen, pc = 0, best_other = 0;
    for (size_t k = 0; k < n_letters; k++) {
        total += p[k];
        if (letters[k] == chosen)
            pc = p[k];
        else if (p[k] > best_other)
            best_other = p[k];
    }
    /* One token the upstream did not show holds at most the smallest one it
     * showed (it shows the top k), and at most everything unseen. */
    double one_unseen = nt ? (unseen < smallest ? unseen : smallest) : unseen;
    double runner = best_other > one_unseen ? best_other : one_unseen;
    if (total <= 0) {
        *prob = 0;
        *margin = -1;
        return;
    }
    *prob = pc / total;
    *margin = (pc - runner) / total;
    if (*prob > 1)
        *prob = 1;
    if (*margin > 1)
        *margin = 1;
    if (*margin < -1)
        *margin = -1;
}

/* ---- free text --------------------------------------------------------------- */

/* The m smallest of sign * v[0..n), as a max-heap in h[0..m): h[0] is the
 * m-th smallest. O(n log m), whatever the order of v (an upstream's numbers
 * are outside input: no quickselect worst case on the worker's loop). */
static void heap_smallest(const double *v, size_t n, double sign, double *h, size_t m)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        double x = sign * v[i];
        size_t at;
        if (k < m) {
            at = k++;
            while (at > 0 && h[(at - 1) / 2] < x) { /* sift up */
                h[at] = h[(at - 1) / 2];
                at = (at - 1) / 2;
            }
            h[at] = x;
            continue;
        }
        if (x >= h[0])
            continue;
        at = 0;
        for (;;) { /* sift x down from the root */
            size_t c = 2 * at + 1;
            if (c >= m)
                break;
            if (c + 1 < m && h[c + 1] > h[c])
                c++;
            if (h[c] <= x)
                break;
            h[at] = h[c];
            at = c;
        }
        h[at] = x;
    }
}

/* The second largest of a max-heap of m >= 2. */
static double heap_second(const double *h, size_t m)
{
    return m >= 3 && h[2] > h[1] ? h[2] : h[1];
}

/* Rank q * (n - 1) of v (n >= 1), linear between the two order statistics
 * s[lo] and s[lo + 1] around it (s: v sorted ascending). Both come from a
 * heap of the smaller side: the lo + 2 smallest, or the n - lo largest. */
static double quantile_of(const double *v, size_t n, double q)
{
    double rank = (q < 0 ? 0 : q > 1 ? 1 : q) * (double)(n - 1);
    size_t lo = (size_t)rank;
    if (lo > n - 1)
        lo = n - 1;
    double frac = rank - (double)lo, a, b;
    double *h = xmalloc((n / 2 + 2) * sizeof *h);
    if (lo < n / 2) {
        size_t m = lo + 2 <= n ? lo + 2 : n;
        heap_smallest(v, n, 1, h, m);
        if (m == lo + 2) {
            b = h[0];
            a = heap_second(h, m);
        } else {
            a = b = h[0];
        }
    } else {
        /* Negated, ascending: s[lo] is the (n - lo)-th smallest. */
        size_t k = n - 1 - lo;
        heap_smallest(v, n, -1, h, k + 1);
        a = -h[0];
        b = k >= 1 ? -heap_second(h, k + 1) : a;
    }
    free(h);
    return a + (b - a) * frac;
}

static double mean_of(const double *v, size_t n)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    return sum / (double)n;
}

/* The lowest mean over w consecutive values (all of them when n <= w). */
static double window_min_of(const double *v, size_t n, size_t w)
{
    if (w == 0 || w > n)
        w = n;
    double ws = 0;
    for (size_t i = 0; i < w; i++)
        ws += v[i];
    double best = ws;
    for (size_t i = w; i < n; i++) {
        ws += v[i] - v[i - w];
        if (ws < best)
            best = ws;
    }
    return best / (double)w;
}

/* Take the check with the least slack (judge.h). */
static void consider(struct judgement *j, int *have, enum judge_reason r, double value, double threshold)
{
    if (*have && value - threshold >= j->value - j->threshold)
        return;
    *have = 1;
    j->reason = r;
    j->value = value;
    j->threshold = threshold;
    j->verdict = value < threshold ? JUDGE_ESCALATE : JUDGE_KEEP;
}

struct judgement judge(const struct judge_settings *s, const struct judge_token *tokens, size_t n,
                       const char *letters, size_t n_letters)
{
    struct judgement j = {.verdict = JUDGE_KEEP, .reason = JUDGE_NO_LOGPROBS};
    if (n_letters > JUDGE_MAX_LETTERS)
        n_letters = JUDGE_MAX_LETTERS;
    double *lp = n ? xmalloc(n * sizeof *lp) : NULL;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (tokens[i].has_logprob && usable(tokens[i].logprob, &lp[m]))
            m++;
    j.n = m;
    if (m == 0)
        goto out; /* nothing to judge it by: keep */
    int have = 0;
    if (s->options && n_letters >= 2) {
        int letter = 0;
        size_t k = find_letter(tokens, n, letters, n_letters, &letter);
        if (k == n) {
            j.verdict = JUDGE_ESCALATE;
            j.reason = JUDGE_NO_OPTION_LETTER;
            goto out;
        }
        double prob, margin;
        option_measure(&tokens[k], letter, letters, n_letters, &prob, &margin);
        j.letter = letter;
        consider(&j, &have, JUDGE_OPTION_PROB, prob, s->min_option_prob);
        consider(&j, &have, JUDGE_OPTION_MARGIN, margin, s->min_option_margin);
        goto out;
    }
    switch (s->rule) {
    case JUDGE_RULE_MEAN:
        consider(&j, &have, JUDGE_MEAN, mean_of(lp, m), s->min_mean);
        break;
    case JUDGE_RULE_QUANTILE:
        consider(&j, &have, JUDGE_QUANTILE, quantile_of(lp, m, s->quantile), s->min_quantile);
        break;
    case JUDGE_RULE_WINDOW:
        consider(&j, &have, JUDGE_WINDOW, window_min_of(lp, m, s->window), s->min_window);
        break;
    case JUDGE_RULE_MEAN_WINDOW:
        consider(&j, &have, JUDGE_MEAN, mean_of(lp, m), s->min_mean);
        consider(&j, &have, JUDGE_WINDOW, window_min_of(lp, m, s->window), s->min_window);
        break;
    }
out:
    free(lp);
    return j;
}
