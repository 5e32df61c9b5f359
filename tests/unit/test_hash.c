/* SHA-256, hex, and the constant-time compare used for API keys. */
#include <stdint.h>
#include <time.h>

#include "common/hash.h"
#include "common/utf8.h"
#include "tests/unit/test.h"

/* CPU time of this thread for `rounds` compares, in ns. Thread CPU time, not
 * the wall clock: time spent descheduled on a busy machine is not counted. */
static double time_compare(const uint8_t *a, const uint8_t *b, int rounds)
{
    struct timespec t0, t1;
    volatile int sink = 0;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    for (int i = 0; i < rounds; i++)
        sink += hash_ct_equal(a, b, 4096);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
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
     * the last. An early exit would make the first-byte case ~4096 times
     * faster. Noise on a loaded machine (interrupts, cache misses after a
     * context switch) only ever adds time, so the minimum over many
     * interleaved samples of thread CPU time is a stable estimate of each
     * cost; their ratio must lie within 3x either way. */
    static uint8_t x[4096], y_first[4096], y_last[4096];
    memset(x, 7, sizeof x);
    memcpy(y_first, x, sizeof x);
    memcpy(y_last, x, sizeof x);
    y_first[0] ^= 1;
    y_last[4095] ^= 1;
    double min_first = 1e300, min_last = 1e300;
    for (int i = 0; i < 41; i++) {
        double tf = time_compare(x, y_first, 200), tl = time_compare(x, y_last, 200);
        min_first = tf < min_first ? tf : min_first;
        min_last = tl < min_last ? tl : min_last;
    }
    double ratio = min_first / min_last;
    printf("ct_equal first-byte/last-byte min CPU time ratio: %.3f\n", ratio);
    CHECK(ratio > 1.0 / 3 && ratio < 3.0);

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
