/* fmt.h against the snprintf calls it stands for: the same bytes and the
 * same return value, for every buffer size from 0 up, so truncation is
 * checked at every cut. */
#include <inttypes.h>
#include <stdio.h>

#include "common/fmt.h"
#include "tests/unit/test.h"

/* snprintf cutting its output is the reference here, not a mistake. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

/* Each size from 0 to 40: fmt's output equals ref's (the snprintf result
 * into a large buffer), cut as snprintf cuts it. */
#define SAME_AT_EVERY_SIZE(ref, call)                                            \
    do {                                                                         \
        for (size_t n_ = 0; n_ <= 40; n_++) {                                    \
            char got_[48];                                                       \
            memset(got_, 'x', sizeof got_);                                      \
            char *dst = got_;                                                    \
            size_t size = n_;                                                    \
            size_t r_ = (call);                                                  \
            char want_[48];                                                      \
            memset(want_, 'x', sizeof want_);                                    \
            if (n_)                                                              \
                snprintf(want_, n_, "%s", (ref));                                \
            CHECK(r_ == strlen(ref));                                            \
            CHECK(memcmp(got_, want_, sizeof got_) == 0);                        \
        }                                                                        \
    } while (0)

int main(void)
{
    char ref[128];
    const char *strs[] = {"", "a", "tenant-a", "chatcmpl-0123456789abcdef", "a string longer than the buffers here: 0123456789"};
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
        snprintf(ref, sizeof ref, "%s", strs[i]);
        SAME_AT_EVERY_SIZE(ref, fmt_copy(dst, size, strs[i]));
        snprintf(ref, sizeof ref, "cascade:{%s}:spend:%s", strs[i], "2026-12-02");
        SAME_AT_EVERY_SIZE(ref, fmt_join(dst, size, "cascade:{", strs[i], "}:spend:", "2026-12-02", (char *)NULL));
    }
    SAME_AT_EVERY_SIZE("", fmt_join(dst, size, (char *)NULL));

    const int64_t ints[] = {0, 1, -1, 9, 10, -10, 123456789, 999999999, 1000000000, -1000000001,
                            INT64_MAX, INT64_MIN, INT64_MIN + 1, 4611686018427387904LL};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        snprintf(ref, sizeof ref, "%" PRId64, ints[i]);
        SAME_AT_EVERY_SIZE(ref, fmt_i64(dst, size, ints[i]));
        /* %.9f of the amount: the integer part, then exactly nine digits. */
        int64_t v = ints[i];
        uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
        snprintf(ref, sizeof ref, "%s%" PRIu64 ".%09" PRIu64, v < 0 ? "-" : "", u / 1000000000u, u % 1000000000u);
        SAME_AT_EVERY_SIZE(ref, fmt_nano(dst, size, ints[i]));
    }
    /* What fmt_nano replaces: "%.9f" of a price converted to a double, for
     * amounts a double holds exactly at nine decimals. */
    const int64_t prices[] = {0, 1, 140, 280000, 123456789, 1000000000, 987654321012, -5};
    for (size_t i = 0; i < sizeof prices / sizeof *prices; i++) {
        char got[48];
        snprintf(ref, sizeof ref, "%.9f", (double)prices[i] / 1e9);
        fmt_nano(got, sizeof got, prices[i]);
        CHECK_STR(got, ref);
    }

    const uint64_t hexes[] = {0, 1, 0xabcdef, 0x8000000000000000ull, UINT64_MAX, 0x0123456789abcdefull};
    for (size_t i = 0; i < sizeof hexes / sizeof *hexes; i++) {
        char got[17];
        snprintf(ref, sizeof ref, "%016" PRIx64, hexes[i]);
        fmt_hex64(got, hexes[i]);
        CHECK_STR(got, ref);
    }
    TEST_MAIN_END();
}
