#include "common/utf8.h"

#include <stdint.h>

/* Length of the sequence starting at s[i], or 0 when it is invalid or cut off. */
static size_t seq_len(const uint8_t *s, size_t i, size_t len)
{
    uint8_t c = s[i];
    if (c < 0x80)
        return 1;
    size_t n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (i + n > len)
        return 0;
    for (size_t k = 1; k < n; k++) {
        if ((s[i + k] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i + k] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    if (cp >= 0xD800 && cp <= 0xDFFF)
        return 0;
    return n;
}

int utf8_valid(const char *str, size_t len)
{
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path: eight bytes at a time when none has the high bit. */
        while (i + 8 <= len) {
            uint64_t w = 0;
            for (int k = 0; k < 8; k++)
                w |= (uint64_t)s[i + k] << (8 * k);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        size_t n = seq_len(s, i, len);
        if (!n)
            return 0;
        i += n;
    }
    return 1;
}

size_t utf8_complete_prefix(const char *str, size_t len)
{
    const uint8_t *s = (const uint8_t *)str;
    /* Walk back over at most 3 continuation bytes to the last lead byte. */
    size_t i = len;
    for (int k = 0; k < 4 && i > 0; k++) {
        i--;
        uint8_t c = s[i];
        if ((c & 0xC0) != 0x80) {
            size_t need = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            return (len - i >= need) ? len : i;
        }
    }
    return len;
}

size_t utf8_scrub(char *str, size_t len)
{
    uint8_t *s = (uint8_t *)str;
    size_t i = 0, o = 0;
    while (i < len) {
        size_t n = seq_len(s, i, len);
        if (!n) {
            i++;
            continue;
        }
        for (size_t k = 0; k < n; k++)
            s[o++] = s[i++];
    }
    return o;
}
