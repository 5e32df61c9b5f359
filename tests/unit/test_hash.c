/* SHA-256, hex, and the constant-time compare used for API keys. */
#include <stdint.h>
#include <time.h>

#include "common/hash.h"
#include "common/utf8.h"
#include "tests/unit/test.h"

static double time_compare(const uint8_t *a, const uint8_t *b, int rounds)
{
    struct timespec t0, t1;
    volatile int sink = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < rounds; i++)
        sink += hash_ct_equal(a, b, 4096);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    (void)sink;
    return (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
}

int main(void)
{
    uint8_t d[SHA256_LEN];
    char hex[SHA256_HEX_LEN + 1];
    hash_sha256("abc", 3, d);
    hash_hex(d, SHA256_LEN, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    hash_sha256("", 0, d);
    hash_hex(d, SHA256_LEN, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

    uint8_t back[SHA256_LEN];
    CHECK(hash_unhex(hex, back, SHA256_LEN) == 0 && memcmp(back, d, SHA256_LEN) == 0);
    CHECK(hash_unhex("E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", back, SHA256_LEN) == 0);
    CHECK(hash_unhex("e3b0", back, SHA256_LEN) < 0);                 /* too short */
    hex[5] = 'g';
    CHECK(hash_unhex(hex, back, SHA256_LEN) < 0);                    /* not hex */

    uint8_t a[32] = {0}, b[32] = {0};
    CHECK(hash_ct_equal(a, b, 32));
    b[31] = 1;
    CHECK(!hash_ct_equal(a, b, 32));
    b[31] = 0;
    b[0] = 0x80;
    CHECK(!hash_ct_equal(a, b, 32));
    CHECK(hash_ct_equal(a, b, 0));

    /* No early exit: a difference in the first byte takes as long as one in
     * the last. Compared as a ratio of medians, loosely, since CI is noisy. */
    static uint8_t x[4096], y_first[4096], y_last[4096];
    memset(x, 7, sizeof x);
    memcpy(y_first, x, sizeof x);
    memcpy(y_last, x, sizeof x);
    y_first[0] ^= 1;
    y_last[4095] ^= 1;
    double tf[7], tl[7];
    for (int i = 0; i < 7; i++) {
        tf[i] = time_compare(x, y_first, 2000);
        tl[i] = time_compare(x, y_last, 2000);
    }
    for (int i = 0; i < 7; i++) /* sort for medians */
        for (int j = i + 1; j < 7; j++) {
            if (tf[j] < tf[i]) { double t = tf[i]; tf[i] = tf[j]; tf[j] = t; }
            if (tl[j] < tl[i]) { double t = tl[i]; tl[i] = tl[j]; tl[j] = t; }
        }
    double ratio = tf[3] / tl[3];
    printf("ct_equal first-byte/last-byte median time ratio: %.3f\n", ratio);
    CHECK(ratio > 0.25 && ratio < 4.0); /* an early exit would give ~1/4096 */

    /* UTF-8 validation. */
    CHECK(utf8_valid("hello", 5));
    CHECK(utf8_valid("caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80", 14));
    CHECK(!utf8_valid("\xc3", 1));                /* cut off */
    CHECK(!utf8_valid("\xc0\xaf", 2));            /* overlong */
    CHECK(!utf8_valid("\xed\xa0\x80", 3));        /* surrogate */
    CHECK(!utf8_valid("\xf4\x90\x80\x80", 4));    /* > U+10FFFF */
    CHECK(!utf8_valid("abcdefgh\xff", 9));        /* after the ASCII fast path */
    CHECK(utf8_complete_prefix("ab\xe4\xb8", 4) == 2);
    CHECK(utf8_complete_prefix("ab\xe4\xb8\xad", 5) == 5);
    CHECK(utf8_complete_prefix("abc", 3) == 3);
    TEST_MAIN_END();
}
