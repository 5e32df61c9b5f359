/* trace.c: see trace.h. */
#include "common/trace.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/fmt.h"

static int lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static int all_zero(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0')
            return 0;
    return 1;
}

int trace_parse(const char *s, char trace_id[33], char flags[3])
{
    if (!s)
        return 0;
    size_t n = strnlen(s, TRACE_TRACEPARENT_LEN + 2);
    if (n < TRACE_TRACEPARENT_LEN)
        return 0;
    /* version "ff" is forbidden; 00 must be exactly 55 bytes; a later
     * version may carry more after a '-', which we drop. */
    if (!lower_hex(s, 2) || (s[0] == 'f' && s[1] == 'f') || s[2] != '-' || s[35] != '-' || s[52] != '-')
        return 0;
    int v00 = s[0] == '0' && s[1] == '0';
    if (v00 ? n != TRACE_TRACEPARENT_LEN : (n > TRACE_TRACEPARENT_LEN && s[TRACE_TRACEPARENT_LEN] != '-'))
        return 0;
    if (!lower_hex(s + 3, 32) || all_zero(s + 3, 32) || !lower_hex(s + 36, 16) || all_zero(s + 36, 16) ||
        !lower_hex(s + 53, 2))
        return 0;
    if (trace_id) {
        memcpy(trace_id, s + 3, 32);
        trace_id[32] = '\0';
    }
    if (flags) {
        memcpy(flags, s + 53, 2);
        flags[2] = '\0';
    }
    return 1;
}

/* Random hex ids: unique, not secret. A per-thread xorshift seeded by
 * the OS, never all zero. */
static void random_hex(char *out, size_t n_hex)
{
    static _Thread_local uint64_t st;
    if (!st) {
        if (getrandom(&st, sizeof st, 0) != sizeof st)
            st = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&st;
        st |= 1;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n_hex; i += 16) {
        st ^= st >> 12;
        st ^= st << 25;
        st ^= st >> 27;
        uint64_t v = st * 0x2545F4914F6CDD1Dull;
        for (size_t k = 0; k < 16 && i + k < n_hex; k++, v >>= 4)
            out[i + k] = hex[v & 15];
    }
    out[n_hex] = '\0';
    if (all_zero(out, n_hex))
        out[n_hex - 1] = '1';
}

void trace_begin(struct trace_context *t, const char *traceparent, const char *tracestate)
{
    t->tracestate[0] = '\0';
    if (trace_parse(traceparent, t->trace_id, t->flags)) {
        size_t n = tracestate ? strnlen(tracestate, TRACE_TRACESTATE_MAX + 1) : 0;
        if (n && n <= TRACE_TRACESTATE_MAX) {
            memcpy(t->tracestate, tracestate, n);
            t->tracestate[n] = '\0';
        }
    } else {
        random_hex(t->trace_id, 32);
        memcpy(t->flags, "01", 3);
    }
    random_hex(t->span_id, 16);
    fmt_join(t->traceparent, sizeof t->traceparent, "00-", t->trace_id, "-", t->span_id, "-", t->flags, (char *)NULL);
}
