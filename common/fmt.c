/* fmt.c: see fmt.h. */
#include "common/fmt.h"

#include <stdarg.h>
#include <string.h>

/* Append n bytes of s at *len in dst[size]; *len counts what the whole result
 * would be, written or not. */
static void put(char *dst, size_t size, size_t *len, const char *s, size_t n)
{
    if (*len + 1 < size) {
        size_t room = size - 1 - *len;
        memcpy(dst + *len, s, n < room ? n : room);
    }
    *len += n;
}

static size_t finish(char *dst, size_t size, size_t len)
{
    if (size)
        dst[len < size ? len : size - 1] = '\0';
    return len;
}

size_t fmt_copy(char *dst, size_t size, const char *src)
{
    size_t len = 0;
    put(dst, size, &len, src, strlen(src));
    return finish(dst, size, len);
}

size_t fmt_join(char *dst, size_t size, ...)
{
    va_list ap;
    va_start(ap, size);
    size_t len = 0;
    for (const char *s = va_arg(ap, const char *); s; s = va_arg(ap, const char *))
        put(dst, size, &len, s, strlen(s));
    va_end(ap);
    return finish(dst, size, len);
}

/* The decimal digits of u, at least min of them (zero-padded), ending at end;
 * returns where they start. */
static char *digits(char *end, uint64_t u, int min)
{
    char *p = end;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
        min--;
    } while (u || min > 0);
    return p;
}

size_t fmt_i64(char *dst, size_t size, int64_t v)
{
    char buf[24], *end = buf + sizeof buf;
    /* The magnitude as unsigned, so INT64_MIN has one too. */
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    char *p = digits(end, u, 1);
    if (v < 0)
        *--p = '-';
    size_t len = 0;
    put(dst, size, &len, p, (size_t)(end - p));
    return finish(dst, size, len);
}

size_t fmt_nano(char *dst, size_t size, int64_t v)
{
    char buf[32], *end = buf + sizeof buf;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    char *p = digits(end, u % 1000000000u, 9);
    *--p = '.';
    p = digits(p, u / 1000000000u, 1);
    if (v < 0)
        *--p = '-';
    size_t len = 0;
    put(dst, size, &len, p, (size_t)(end - p));
    return finish(dst, size, len);
}

void fmt_hex64(char out[17], uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[i] = hex[v & 15];
    out[16] = '\0';
}
