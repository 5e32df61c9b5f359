/* fuzz_judge: the cascade's judge (policies/judge.c) over an upstream's
 * answer as it could arrive: any token texts, any logprobs (NaN, infinities,
 * positive numbers), any alternatives, and option letters from the prompt.
 *
 * Input layout (what is missing reads as zeros):
 *   byte 0: option letters n (low 4 bits, 0..10 used), options flag (bit 4)
 *   byte 1: rule (mod 4), quantile from byte 2 (/255), window from byte 3
 *   then tokens: text length (mod 16), text, logprob (8 raw bytes, a
 *   double), has_logprob (bit 0 of the next byte) and alternatives (bits
 *   1..3), each alternative: text length (mod 16), text, logprob (8 bytes).
 *
 * Besides memory errors, it checks what the gateway relies on: the verdict
 * is keep or escalate, the reason one that can go with it, the value finite
 * (option_prob in [0, 1], option_margin in [-1, 1]), and the letter one of
 * the prompt's or none. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policies/judge.h"

#define MAX_TOKENS 512
#define MAX_ALTS 7

struct reader {
    const uint8_t *p;
    size_t n;
};

static uint8_t byte(struct reader *r)
{
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}

static double number(struct reader *r)
{
    uint8_t b[8] = {0};
    for (int i = 0; i < 8; i++)
        b[i] = byte(r);
    double d;
    memcpy(&d, b, sizeof d);
    return d;
}

/* A text of up to 15 bytes, pointing into the input (not NUL-terminated). */
static const char *text(struct reader *r, size_t *len)
{
    size_t want = byte(r) % 16;
    if (want > r->n)
        want = r->n;
    const char *t = (const char *)r->p;
    r->p += want;
    r->n -= want;
    *len = want;
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct judge_token tokens[MAX_TOKENS];
    static struct judge_alt alts[MAX_TOKENS][MAX_ALTS];
    struct reader r = {data, size};
    uint8_t head = byte(&r);
    static const char all[] = {'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J'};
    size_t n_letters = head & 15;
    if (n_letters > 10)
        n_letters = 10;
    struct judge_settings s;
    judge_settings_default(&s);
    s.options = (head >> 4) & 1;
    s.rule = (enum judge_rule)(byte(&r) % 4);
    s.quantile = byte(&r) / 255.0;
    s.window = 1 + byte(&r);
    size_t n = 0;
    while (r.n && n < MAX_TOKENS) {
        struct judge_token *t = &tokens[n];
        t->text = text(&r, &t->len);
        t->logprob = number(&r);
        uint8_t flags = byte(&r);
        t->has_logprob = flags & 1;
        t->n_top = (flags >> 1) % (MAX_ALTS + 1);
        for (size_t k = 0; k < t->n_top; k++) {
            alts[n][k].text = text(&r, &alts[n][k].len);
            alts[n][k].logprob = number(&r);
        }
        t->top = alts[n];
        n++;
    }
    struct judgement j = judge(&s, tokens, n, all, n_letters);
    if (!judge_verdict_name(j.verdict) || !judge_reason_possible(j.verdict, j.reason) || !isfinite(j.value))
        abort();
    if (j.reason == JUDGE_OPTION_PROB && (j.value < 0 || j.value > 1))
        abort();
    if (j.reason == JUDGE_OPTION_MARGIN && (j.value < -1 || j.value > 1))
        abort();
    if (j.letter && (n_letters < 2 || !memchr(all, j.letter, n_letters)))
        abort();
    return 0;
}
