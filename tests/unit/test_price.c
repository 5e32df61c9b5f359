/* price.h: the saturating helpers every token count and nano-USD amount goes
 * through. What a user would notice if they broke: a charge that wraps into
 * a credit (a negative cost), or a huge request whose estimate wraps small
 * enough to pass a budget. */
#include <math.h>
#include <stdint.h>

#include "policies/price.h"
#include "tests/unit/test.h"

int main(void)
{
    /* clamp: everything lands in [0, MONEY_MAX] */
    CHECK(money_clamp(-1) == 0);
    CHECK(money_clamp(INT64_MIN) == 0);
    CHECK(money_clamp(INT64_MAX) == MONEY_MAX);
    CHECK(money_clamp(42) == 42);

    /* add */
    CHECK(money_add(2, 3) == 5);
    CHECK(money_add(MONEY_MAX, 1) == MONEY_MAX);
    CHECK(money_add(INT64_MAX, INT64_MAX) == MONEY_MAX);
    CHECK(money_add(-5, 3) == 3); /* a negative input counts as 0 */
    CHECK(money_add(INT64_MIN, INT64_MIN) == 0);

    /* mul */
    CHECK(money_mul(1000, 1000) == 1000000);
    CHECK(money_mul(100000000000000000LL, 100000) == MONEY_MAX); /* 1e17 * 1e5 */
    CHECK(money_mul(INT64_MAX, 2) == MONEY_MAX);
    CHECK(money_mul(-3, 7) == 0);
    CHECK(money_mul(0, INT64_MAX) == 0);

    /* sub: a count never goes below 0 */
    CHECK(money_sub(10, 3) == 7);
    CHECK(money_sub(3, 10) == 0);
    CHECK(money_sub(MONEY_MAX, -5) == MONEY_MAX);

    /* price: USD per 1M tokens -> nano-USD per token is price * 1000 */
    CHECK(price_tokens_nano(0.14, 1000000) == 140000000); /* $0.14 for 1M tokens */
    CHECK(price_cost_nano(10, 100, 7, 3) == 7 * 10000 + 3 * 100000);
    CHECK(price_cost_nano(0.14, 0.28, 0, 0) == 0);
    /* The case: max_tokens 1e17 at $100 per 1M output tokens was
     * llround(1e22), undefined, in practice INT64_MIN: a negative estimate
     * that passed a spent budget. Now it saturates. */
    CHECK(price_cost_nano(10, 100, 12, 100000000000000000LL) == MONEY_MAX);
    CHECK(price_cost_nano(10, 100, 12, 100000000000000000LL) > 0);
    /* The largest configurable price (1e6 USD per 1M) on the largest count. */
    CHECK(price_cost_nano(1e6, 1e6, INT64_MAX, INT64_MAX) == MONEY_MAX);
    /* Exact while the product fits a double's 53 bits (9e15 nano: $9M),
     * and below the ceiling it is never clamped. */
    CHECK(price_tokens_nano(1, 1099511627776LL) == 1099511627776000LL);
    CHECK(price_tokens_nano(1, 999999999999999LL) < MONEY_MAX);
    CHECK(price_tokens_nano(1, 999999999999999LL) > 999999999999990000LL);
    /* Negative counts and prices, and NaN, cost nothing. */
    CHECK(price_cost_nano(10, 100, -5, -7) == 0);
    CHECK(price_tokens_nano(-1, 100) == 0);
    CHECK(price_tokens_nano(NAN, 100) == 0);
    /* Two huge halves saturate instead of wrapping. */
    CHECK(price_cost_nano(1e6, 1e6, 900000000000LL, 900000000000LL) == MONEY_MAX);

    /* budgets */
    CHECK(price_usd_to_nano(0.0105) == 10500000);
    CHECK(price_usd_to_nano(1e9) == MONEY_MAX);
    CHECK(price_usd_to_nano(1e12) == MONEY_MAX);
    CHECK(price_usd_to_nano(-1) == 0);
    CHECK(price_usd_to_nano(0) == 0);
    TEST_MAIN_END();
}
