/* judge.h: the cascade's rules. The cheapest tier answered a request in the
 * cascade band; is its answer good enough to keep, or does the request
 * escalate to the top tier? The rules are written once, here, as pure
 * functions over the answer's tokens and logprobs.
 *
 * Two kinds of prompt, two kinds of evidence:
 *
 *   Multiple choice (the gateway found options "A. ... B. ..." in the last
 *   user message with options_parse() and passes their letters as plain
 *   chars): the answer's option letter is found among its tokens, and the
 *   probability the model gave each option letter at that position, from the
 *   token's top alternatives (top_logprobs), is read:
 *       P(L)    = the sum of exp(logprob) over the alternatives whose text is
 *                 a variant of letter L (" B", "B", "(B", "B)", "**B**"...);
 *       unseen  = 1 - the sum over every alternative shown (never < 0): mass
 *                 the upstream did not show, which could belong to any letter;
 *       total   = sum over the option letters of P(L), plus unseen;
 *       prob    = P(chosen) / total                       ("option_prob")
 *       margin  = (P(chosen) - runner_up) / total         ("option_margin")
 *   where runner_up is the best other letter shown, or what one unshown
 *   token could hold when that is more (at most the smallest alternative
 *   shown, since the upstream shows the top k; all of `unseen` when it
 *   showed none). So a position without alternatives is judged on the
 *   letter's own probability: prob = p, margin = 2p - 1. Either below its
 *   threshold escalates. The letter token is the first token that reads as
 *   one of the option letters standing alone (not glued to a word) whose
 *   alternatives include another option letter (where the model chose
 *   between letters); failing that, the first one that reads as a letter.
 *   A multiple-choice answer with no such token escalates
 *   ("no_option_letter"): it did not answer in the form asked.
 *
 *   Free text: one rule over the token logprobs, with its threshold:
 *       "mean"      the mean;
 *       "quantile"  the q-quantile (default q = 0.1: the 10th percentile),
 *                   linear between order statistics (rank q * (n - 1));
 *                   one collapsed span drags it down where the mean of a
 *                   long answer hardly moves. The default;
 *       "window"    the lowest mean over `window` consecutive tokens (the
 *                   whole answer when it is shorter).
 *   The pre-judge rule, kept for configs that set min_mean_logprob or
 *   min_window_logprob and no rule, is "mean" and "window" both.
 *
 * Every judgement (struct judgement) gives a verdict, the reason that
 * decided it, and the value measured for that reason. When more than one
 * check applies (option prob and margin; mean and window), the reason is the
 * check with the least slack (value - threshold): the one that failed, or
 * the closest to failing for a kept answer. The names are stable (metrics
 * labels, stats fields): see judge_reason_name().
 *
 * Upstream numbers are outside input: a NaN logprob is no measurement (the
 * token counts as having none), a logprob above 0 is 0, and one below
 * JUDGE_LOGPROB_FLOOR (-inf included) is the floor, so every value reported
 * is finite. An answer with no usable logprob at all (empty, or an upstream
 * that sent none) is kept ("no_logprobs"): there is nothing to judge it by,
 * and the router only cascades to tiers that give logprobs.
 *
 * Pure functions over read-only inputs (judge() allocates one scratch array
 * of n doubles and frees it); any thread. */
#ifndef CASCADE_JUDGE_H
#define CASCADE_JUDGE_H

#include <stddef.h>

#define JUDGE_LOGPROB_FLOOR (-100.0)
#define JUDGE_MAX_TOP 20            /* OpenAI's top_logprobs maximum */
#define JUDGE_MAX_LETTERS 10        /* options_parse's OPTIONS_MAX */

enum judge_rule { JUDGE_RULE_MEAN, JUDGE_RULE_QUANTILE, JUDGE_RULE_WINDOW, JUDGE_RULE_MEAN_WINDOW };

struct judge_settings {
    enum judge_rule rule;           /* free text */
    double min_mean;                /* "mean" (and MEAN_WINDOW): escalate below */
    double min_quantile;            /* "quantile": escalate when the quantile is below */
    double min_window;              /* "window" (and MEAN_WINDOW): escalate below */
    double quantile;                /* q in [0, 1] */
    size_t window;                  /* tokens, >= 1 */
    int options;                    /* judge multiple-choice answers by their letter */
    double min_option_prob;         /* escalate below, in [0, 1] */
    double min_option_margin;       /* escalate below, in [-1, 1] */
    int top_logprobs;               /* alternatives the cheap tier is asked for on a
                                     * multiple-choice prompt, 1..JUDGE_MAX_TOP */
};

/* The defaults (README, config): rule quantile, q 0.1, floor -2.5; mean
 * -1.0; window 8 tokens, floor -2.5; option prob 0.5, margin 0.2, 5
 * alternatives. */
void judge_settings_default(struct judge_settings *s);

enum judge_verdict { JUDGE_KEEP, JUDGE_ESCALATE, JUDGE_N_VERDICTS };

enum judge_reason {
    JUDGE_OPTION_PROB,              /* prob of the chosen letter among the letters */
    JUDGE_OPTION_MARGIN,            /* its margin over the runner-up */
    JUDGE_NO_OPTION_LETTER,         /* multiple choice, but no letter in the answer: escalate */
    JUDGE_MEAN,
    JUDGE_QUANTILE,
    JUDGE_WINDOW,
    JUDGE_NO_LOGPROBS,              /* nothing to judge: keep */
    JUDGE_CHEAP_FAILED,             /* the cheap call failed (set by the caller): escalate */
    JUDGE_N_REASONS
};

/* "option_prob", "option_margin", "no_option_letter", "mean", "quantile",
 * "window", "no_logprobs", "cheap_failed"; "keep", "escalate". NULL out of
 * range. */
const char *judge_reason_name(enum judge_reason r);
const char *judge_verdict_name(enum judge_verdict v);
/* Whether a verdict can come with a reason (no_option_letter and
 * cheap_failed only escalate, no_logprobs only keeps): the label pairs a
 * dashboard can see. */
int judge_reason_possible(enum judge_verdict v, enum judge_reason r);
/* "mean", "quantile", "window", "mean_window"; judge_rule_parse: 0, or -1
 * for another name. */
const char *judge_rule_name(enum judge_rule r);
int judge_rule_parse(const char *name, enum judge_rule *out);

/* One alternative at a token position; text need not be NUL-terminated. */
struct judge_alt {
    const char *text;
    size_t len;
    double logprob;
};

/* One token of the answer. has_logprob 0: the upstream sent none for it
 * (it still counts for finding the letter). */
struct judge_token {
    const char *text;
    size_t len;
    int has_logprob;
    double logprob;
    const struct judge_alt *top;
    size_t n_top;
};

struct judgement {
    enum judge_verdict verdict;
    enum judge_reason reason;
    double value;                   /* what the deciding check measured */
    double threshold;               /* what it was held against (0 when none) */
    size_t n;                       /* tokens with a usable logprob */
    int letter;                     /* the chosen option letter ('A'..), or 0 */
};

/* Judge an answer. letters: the prompt's option letters (upper case, as
 * options_parse reports them), n_letters 0 for free text. */
struct judgement judge(const struct judge_settings *s, const struct judge_token *tokens, size_t n,
                       const char *letters, size_t n_letters);

/* The option letter a token's text stands for, upper case, when it is one
 * of letters[0..n_letters) written as an answer letter (" B", "B", "(B",
 * "B)", "B.", "**B**", "(b)"); else 0. Exposed for the gateway's bound on
 * what it keeps of each alternative (see JUDGE_ALT_MAX) and for tests. */
int judge_letter_of(const char *text, size_t len, const char *letters, size_t n_letters);
/* No variant of a letter is longer than this: a caller keeping alternatives
 * may drop the text of longer ones (keep their logprob, with len 0). */
#define JUDGE_ALT_MAX 16

#endif
