#include "common/sse.h"

#include <stdlib.h>
#include <string.h>

#include "common/mem.h"

struct growbuf {
    char *p;
    size_t len, cap;
};

struct sse_parser {
    sse_event_cb cb;
    void *ctx;
    size_t max;
    struct growbuf line;    /* the current, incomplete line */
    struct growbuf data;    /* data lines of the current event, each + '\n' */
    char event[64];         /* the event's name; longer names are cut */
    int skip_lf;            /* the last byte was CR: a following LF ends nothing */
};

static int gb_append(struct growbuf *b, const char *s, size_t n, size_t max)
{
    if (b->len + n + 1 > max)
        return SSE_ETOOBIG;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

struct sse_parser *sse_parser_new(size_t max_event_bytes, sse_event_cb cb, void *ctx)
{
    struct sse_parser *p = xcalloc(1, sizeof *p);
    p->cb = cb;
    p->ctx = ctx;
    p->max = max_event_bytes;
    return p;
}

void sse_parser_free(struct sse_parser *p)
{
    if (!p)
        return;
    free(p->line.p);
    free(p->data.p);
    free(p);
}

static int dispatch(struct sse_parser *p)
{
    int rc = 0;
    if (p->data.len > 0) {
        p->data.len--; /* the spec drops the last data line's '\n' */
        p->data.p[p->data.len] = '\0';
        rc = p->cb(p->ctx, p->event, p->data.p, p->data.len);
    }
    p->data.len = 0;
    p->event[0] = '\0';
    return rc;
}

static int process_line(struct sse_parser *p, const char *line, size_t len)
{
    if (len == 0)
        return dispatch(p);
    if (line[0] == ':')
        return 0; /* a comment, often a keep-alive */
    const char *colon = memchr(line, ':', len);
    size_t flen = colon ? (size_t)(colon - line) : len;
    const char *val = colon ? colon + 1 : line + len;
    size_t vlen = (size_t)(line + len - val);
    if (vlen && *val == ' ') {
        val++;
        vlen--;
    }
    if (flen == 4 && memcmp(line, "data", 4) == 0) {
        int rc = gb_append(&p->data, val, vlen, p->max);
        return rc ? rc : gb_append(&p->data, "\n", 1, p->max);
    }
    if (flen == 5 && memcmp(line, "event", 5) == 0) {
        size_t n = vlen < sizeof p->event - 1 ? vlen : sizeof p->event - 1;
        memcpy(p->event, val, n);
        p->event[n] = '\0';
    }
    return 0; /* id, retry and unknown fields do not concern us */
}

int sse_parser_feed(struct sse_parser *p, const char *buf, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (p->skip_lf) {
            p->skip_lf = 0;
            if (buf[i] == '\n') {
                i++;
                continue;
            }
        }
        /* The line ends at the first CR or LF: memchr for each (upstreams
         * send LF alone, so the CR search covers one line), not a loop over
         * the bytes, which was 6% of a stream's instructions (issue 18). */
        const char *lf = memchr(buf + i, '\n', len - i);
        size_t end = lf ? (size_t)(lf - buf) : len;
        const char *cr = memchr(buf + i, '\r', end - i);
        size_t j = cr ? (size_t)(cr - buf) : end;
        if (j == len) /* an incomplete line: keep it for the next feed */
            return gb_append(&p->line, buf + i, j - i, p->max);
        int rc;
        if (p->line.len) {
            if ((rc = gb_append(&p->line, buf + i, j - i, p->max)) < 0)
                return rc;
            rc = process_line(p, p->line.p, p->line.len);
            p->line.len = 0;
        } else {
            rc = process_line(p, buf + i, j - i);
        }
        if (rc < 0)
            return rc;
        p->skip_lf = buf[j] == '\r';
        i = j + 1;
    }
    return 0;
}
