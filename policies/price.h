/* price.h: money in integer nano-USD (1e-9 USD).
 *
 * Prices are configured in USD per 1M tokens, so one token costs
 * price * 1000 nano-USD: any price with three decimals is an exact integer.
 * Budgets, spend and savings are int64 nano-USD everywhere (Redis INCRBY
 * included), so sums never drift and a budget holds to the cent. Pure. */
#ifndef CASCADE_PRICE_H
#define CASCADE_PRICE_H

#include <math.h>
#include <stdint.h>

#define NANO_PER_USD 1000000000LL

static inline int64_t price_cost_nano(double in_per_1m, double out_per_1m, int64_t prompt_tokens,
                                      int64_t completion_tokens)
{
    return llround((double)prompt_tokens * in_per_1m * 1000.0) + llround((double)completion_tokens * out_per_1m * 1000.0);
}

static inline int64_t price_usd_to_nano(double usd)
{
    return llround(usd * (double)NANO_PER_USD);
}

static inline double price_nano_to_usd(int64_t nano)
{
    return (double)nano / (double)NANO_PER_USD;
}

#endif
