/* fuzz_sse: the incremental SSE parser (common/sse.c) on arbitrary upstream
 * bytes.
 *
 * Besides memory errors, it checks the parser's one promise: the events are
 * the same however the stream is split. The input is parsed whole, then again
 * cut at points derived from its own bytes (between CR and LF, inside a
 * line); when both runs succeed their event lists must be equal. The size
 * bound is small (256) so the too-big paths are reached too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/sse.h"

#define MAX_EVENT 256

struct events {
    char *buf;      /* "event\0data\0" per event, length-prefixed data */
    size_t len, cap;
    int n;
};

static void put(struct events *e, const void *p, size_t n)
{
    if (e->len + n > e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 1024;
        while (cap < e->len + n)
            cap *= 2;
        e->buf = realloc(e->buf, cap);
        if (!e->buf)
            abort();
        e->cap = cap;
    }
    memcpy(e->buf + e->len, p, n);
    e->len += n;
}

static int on_event(void *ctx, const char *event, const char *data, size_t len)
{
    struct events *e = ctx;
    /* The contract: data is NUL-terminated at len and the event name fits. */
    if (data[len] != '\0' || strlen(event) >= 64)
        abort();
    put(e, event, strlen(event) + 1);
    put(e, &len, sizeof len);
    put(e, data, len);
    e->n++;
    return 0;
}

/* Parse data[0..size) in pieces whose ends are cuts[]; the feed status. */
static int parse(const uint8_t *data, size_t size, const size_t *cuts, size_t ncuts,
                 struct events *e)
{
    struct sse_parser *p = sse_parser_new(MAX_EVENT, on_event, e);
    size_t prev = 0;
    int rc = 0;
    for (size_t i = 0; i <= ncuts && rc == 0; i++) {
        size_t end = i < ncuts ? cuts[i] : size;
        rc = sse_parser_feed(p, (const char *)data + prev, end - prev);
        prev = end;
    }
    sse_parser_free(p);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct events whole = {0}, split = {0};
    int rc_whole = parse(data, size, NULL, 0, &whole);

    /* Cut points: a pseudo-random walk seeded from the input, so the fuzzer
     * can steer where the cuts fall by changing the bytes. */
    size_t cuts[64], ncuts = 0;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < size && i < 16; i++)
        h = (h ^ data[i]) * 16777619u;
    for (size_t pos = 0; ncuts < 64;) {
        h = h * 1103515245u + 12345u;
        pos += 1 + (h >> 16) % 17;
        if (pos >= size)
            break;
        cuts[ncuts++] = pos;
    }
    int rc_split = parse(data, size, cuts, ncuts, &split);

    if (rc_whole == 0 && rc_split == 0 &&
        (whole.n != split.n || whole.len != split.len ||
         (whole.len && memcmp(whole.buf, split.buf, whole.len))))
        abort();
    free(whole.buf);
    free(split.buf);
    return 0;
}
