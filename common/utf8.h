/* utf8.h: UTF-8 validation (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
 * Pure functions; thread-safe. */
#ifndef CASCADE_UTF8_H
#define CASCADE_UTF8_H

#include <stddef.h>

/* 1 when s[0..len) is valid UTF-8. */
int utf8_valid(const char *s, size_t len);
/* Length of the longest prefix of s[0..len) that ends on a character boundary
 * and holds only complete sequences; used to hold back a split character. */
size_t utf8_complete_prefix(const char *s, size_t len);
/* Drop, in place, every byte of s[0..len) that is not part of a valid
 * sequence, and return the new length. For text we format ourselves that may
 * cut a character in two (printf's %.40s counts bytes). */
size_t utf8_scrub(char *s, size_t len);

#endif
