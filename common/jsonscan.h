/* jsonscan.h: the scan that both JSON hot loops share, the reader's
 * (jsonr.c, every string of every upstream chunk) and the writer's (jsonw.c,
 * every string of every event we send): how far a string's bytes can be
 * taken as they are.
 *
 * json_plain_run(s, n): the length of the longest prefix of s[0..n) made of
 * bytes that a JSON string holds unescaped and that need no UTF-8 check:
 * ASCII 0x20..0x7f except '"' and '\\'. Eight bytes at a time; strings are
 * mostly short keys and ids, so the word that holds the closing quote ends
 * the scan without a byte loop (bench/gateway/callgrind.sh, issue 18).
 * Reads s[0..n) only. */
#ifndef CASCADE_JSONSCAN_H
#define CASCADE_JSONSCAN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline int json_plain_byte(unsigned char c)
{
    return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

static inline size_t json_plain_run(const char *s, size_t n)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    size_t i = 0;
    for (; n - i >= 8; i += 8) {
        uint64_t x, qt, bs, hit;
        memcpy(&x, s + i, 8);
        qt = x ^ (ones * '"');
        bs = x ^ (ones * '\\');
        /* A byte's high bit is set here when it is non-ASCII, below 0x20, a
         * quote or a backslash. Borrows can set it in bytes above a true
         * hit too, never below one: the lowest set byte is exact. */
        hit = (x & highs) | ((x - ones * 0x20) & ~x & highs) | ((qt - ones) & ~qt & highs) |
              ((bs - ones) & ~bs & highs);
        if (hit) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return i + ((size_t)__builtin_ctzll(hit) >> 3); /* the lowest byte comes first in memory */
#else
            break;
#endif
        }
    }
    while (i < n && json_plain_byte((unsigned char)s[i]))
        i++;
    return i;
}

#endif
