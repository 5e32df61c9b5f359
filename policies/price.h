/* price.h: money in integer nano-USD (1e-9 USD), and the one place where
 * token counts and amounts are added and multiplied.
 *
 * Prices are configured in USD per 1M tokens, so one token costs
 * price * 1000 nano-USD: any price with three decimals is an exact integer.
 * Budgets, spend and savings are int64 nano-USD everywhere (Redis INCRBY
 * included), so sums never drift and a budget holds to the cent.
 *
 * Overflow: a token count or an amount comes from outside (a client's
 * max_tokens, an upstream's usage, a configured price) and a wrapped int64
 * turns a charge into a credit. So every count and amount on the money path
 * lives in [0, MONEY_MAX] and is combined only through the saturating
 * helpers below: a negative input counts as 0 and a result past MONEY_MAX is
 * MONEY_MAX. MONEY_MAX is 1e18: a billion USD in nano-USD (the largest
 * configurable budget), with 9x headroom below INT64_MAX for Redis sums of a
 * few such amounts, and exactly representable as a double for the Lua
 * scripts, which compare amounts in doubles. Pure; any thread. */
#ifndef CASCADE_PRICE_H
#define CASCADE_PRICE_H

#include <math.h>
#include <stdint.h>

#define NANO_PER_USD 1000000000LL
#define MONEY_MAX 1000000000000000000LL

/* v clamped into [0, MONEY_MAX]. */
static inline int64_t money_clamp(int64_t v)
{
    return v < 0 ? 0 : v > MONEY_MAX ? MONEY_MAX : v;
}

/* a + b for counts and amounts, saturating at MONEY_MAX; negatives are 0. */
static inline int64_t money_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(money_clamp(a), money_clamp(b), &r))
        return MONEY_MAX; /* cannot happen within the clamp; kept for the reader */
    return money_clamp(r);
}

/* a * b for counts and amounts, saturating at MONEY_MAX; negatives are 0. */
static inline int64_t money_mul(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_mul_overflow(money_clamp(a), money_clamp(b), &r))
        return MONEY_MAX;
    return money_clamp(r);
}

/* a - b where the result is a count or amount: never below 0. */
static inline int64_t money_sub(int64_t a, int64_t b)
{
    a = money_clamp(a);
    b = money_clamp(b);
    return a > b ? a - b : 0;
}

/* tokens at price_per_1m USD per 1M tokens, in nano-USD, rounded; a price
 * that is negative or not a number costs nothing (config refuses both). The
 * product is formed in double and compared before the conversion, since
 * llround of a value past INT64_MAX is undefined. */
static inline int64_t price_tokens_nano(double price_per_1m, int64_t tokens)
{
    if (!(price_per_1m > 0) || tokens <= 0)
        return 0;
    double v = (double)money_clamp(tokens) * price_per_1m * 1000.0;
    if (!(v < (double)MONEY_MAX))
        return MONEY_MAX;
    return money_clamp(llround(v));
}

static inline int64_t price_cost_nano(double in_per_1m, double out_per_1m, int64_t prompt_tokens,
                                      int64_t completion_tokens)
{
    return money_add(price_tokens_nano(in_per_1m, prompt_tokens), price_tokens_nano(out_per_1m, completion_tokens));
}

/* A configured amount (a budget) in nano-USD, within [0, MONEY_MAX]. */
static inline int64_t price_usd_to_nano(double usd)
{
    if (!(usd > 0))
        return 0;
    double v = usd * (double)NANO_PER_USD;
    if (!(v < (double)MONEY_MAX))
        return MONEY_MAX;
    return money_clamp(llround(v));
}

static inline double price_nano_to_usd(int64_t nano)
{
    return (double)nano / (double)NANO_PER_USD;
}

#endif
