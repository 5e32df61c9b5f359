/* fmt.h: the string formats the per-request path needs, without printf.
 *
 * snprintf costs 600 to 1,000 instructions a call: it parses its format and
 * writes through a stdio string stream. The proxied request made about 20
 * such calls, most of them plain copies ("%s") and integers
 * (bench/gateway/callgrind.sh, issue 18). These do the same work directly.
 *
 * Contract, as snprintf's: each writes at most size bytes into dst, always
 * NUL-terminated when size > 0 (truncating the result to size - 1 bytes),
 * and returns the length the whole result has, so a return >= size means it
 * was cut. Nothing allocates; all are thread-safe.
 */
#ifndef CASCADE_FMT_H
#define CASCADE_FMT_H

#include <stddef.h>
#include <stdint.h>

/* snprintf(dst, size, "%s", src) */
size_t fmt_copy(char *dst, size_t size, const char *src);

/* The strings up to the NULL, one after another: fmt_join(buf, n, "a", b,
 * ":", c, NULL) is snprintf(buf, n, "a%s:%s", b, c). */
size_t fmt_join(char *dst, size_t size, ...) __attribute__((sentinel));

/* snprintf(dst, size, "%lld", (long long)v) */
size_t fmt_i64(char *dst, size_t size, int64_t v);

/* snprintf(dst, size, "%.9f", v / 1e9) for an amount in billionths (a
 * price in nano-dollars), exactly, with no rounding through a double. */
size_t fmt_nano(char *dst, size_t size, int64_t v);

/* snprintf(out, 17, "%016llx", v) */
void fmt_hex64(char out[17], uint64_t v);

#endif
