/* The SSE parser must give the same events however the stream is split:
 * upstreams flush at arbitrary points, including between CR and LF. */
#include "common/sse.h"
#include "tests/unit/test.h"

struct collect {
    char out[4096];
    size_t len;
    int events;
};

static int on_event(void *ctx, const char *event, const char *data, size_t len)
{
    struct collect *c = ctx;
    c->len += (size_t)snprintf(c->out + c->len, sizeof c->out - c->len, "[%s|%.*s]", event, (int)len, data);
    c->events++;
    return 0;
}

static void parse_all(const char *s, size_t n, const size_t *cuts, size_t ncuts, struct collect *c)
{
    memset(c, 0, sizeof *c);
    struct sse_parser *p = sse_parser_new(1024, on_event, c);
    size_t prev = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        CHECK(sse_parser_feed(p, s + prev, end - prev) == 0);
        prev = end;
    }
    sse_parser_free(p);
}

static int stop_cb(void *ctx, const char *event, const char *data, size_t len)
{
    (void)ctx, (void)event, (void)data, (void)len;
    return -7;
}

int main(void)
{
    static const char stream[] =
        ": keep-alive comment\r\n"
        "data: {\"a\":1}\r\n\r\n"
        "event: message\n"
        "data: line one\n"
        "data: line two\n\n"
        "data:no-space\r\r"
        "id: 5\nretry: 100\ndata: caf\xc3\xa9\n\n"
        "data: [DONE]\n\n";
    const char *expect = "[|{\"a\":1}][message|line one\nline two][|no-space][|caf\xc3\xa9][|[DONE]]";
    size_t n = sizeof stream - 1;

    struct collect whole;
    parse_all(stream, n, NULL, 0, &whole);
    CHECK_STR(whole.out, expect);
    CHECK(whole.events == 5);

    /* Every single split point, and every pair of split points. */
    int single_ok = 1, pair_ok = 1;
    for (size_t i = 0; i <= n; i++) {
        struct collect c;
        size_t cut[1] = {i};
        parse_all(stream, n, cut, 1, &c);
        single_ok &= strcmp(c.out, expect) == 0;
        for (size_t j = i; j <= n; j += 3) {
            size_t cuts[2] = {i, j};
            parse_all(stream, n, cuts, 2, &c);
            pair_ok &= strcmp(c.out, expect) == 0;
        }
    }
    CHECK(single_ok);
    CHECK(pair_ok);

    /* Byte by byte. */
    size_t cuts[sizeof stream];
    for (size_t i = 0; i < n; i++)
        cuts[i] = i;
    struct collect c;
    parse_all(stream, n, cuts, n, &c);
    CHECK_STR(c.out, expect);

    /* An event larger than the limit is an error, not a bigger buffer. */
    struct sse_parser *p = sse_parser_new(16, on_event, &c);
    CHECK(sse_parser_feed(p, "data: 0123456789abcdefghij\n\n", 28) == SSE_ETOOBIG);
    sse_parser_free(p);
    p = sse_parser_new(16, on_event, &c);
    CHECK(sse_parser_feed(p, "data: 0123456789", 16) == SSE_ETOOBIG);
    sse_parser_free(p);

    /* A callback's negative value stops parsing and is returned. */
    p = sse_parser_new(1024, stop_cb, NULL);
    CHECK(sse_parser_feed(p, "data: x\n\ndata: y\n\n", 18) == -7);
    sse_parser_free(p);
    sse_parser_free(NULL);
    TEST_MAIN_END();
}
