/* fuzz_http: the HTTP/1.1 request parser (common/http1.c) on arbitrary bytes,
 * read the way httpd reads a connection: find a head, parse it, read its
 * body (Content-Length or chunked), repeat for pipelined requests.
 *
 * Besides memory errors and undefined behaviour, it checks the parser's
 * promises: the head scanner and the chunked parser give the same answer
 * however the bytes are split (whole, and one byte at a time); a parsed head
 * only holds the bytes the grammar allows; a decoded body never exceeds the
 * limit. Small limits (a 512-byte head, a 4 KiB body) so the limit paths are
 * reached too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/http1.h"

#define MAX_HEAD 512
#define MAX_BODY 4096

static void check(int ok)
{
    if (!ok)
        abort();
}

/* The head's end, scanned in one piece and byte by byte: same verdict. */
static int scan(const uint8_t *p, size_t n, size_t *head_len)
{
    struct http1_scan a = {0}, b = {0};
    const char *why;
    size_t la = 0, lb = 0;
    int ra = http1_scan_head(&a, (const char *)p, n, MAX_HEAD, &la, &why);
    int rb = HTTP1_MORE;
    for (size_t i = 0; i < n && rb == HTTP1_MORE; i++)
        rb = http1_scan_head(&b, (const char *)p + i, 1, MAX_HEAD, &lb, &why);
    check(ra == rb);
    if (ra == HTTP1_DONE) {
        check(la == lb && la <= n && la <= MAX_HEAD && la >= 4);
        check(memcmp(p + la - 4, "\r\n\r\n", 4) == 0);
    }
    *head_len = la;
    return ra;
}

static void check_head(const struct http1_head *h)
{
    check(h->method && h->path && h->path[0] == '/');
    check(h->minor == 0 || h->minor == 1);
    check(h->n_fields >= 0 && h->n_fields <= HTTP1_MAX_FIELDS);
    for (int i = 0; i < h->n_fields; i++) {
        for (const unsigned char *v = (const unsigned char *)h->fields[i].value; *v; v++)
            check(*v == '\t' || (*v >= 0x20 && *v != 0x7f));
        check(h->fields[i].name[0] != '\0');
    }
    if (h->framing == HTTP1_BODY_LENGTH)
        check(h->content_length <= MAX_BODY);
}

/* A chunked body, whole and byte by byte: same verdict, same bytes. Returns
 * the bytes consumed, or 0 when it did not complete. */
static size_t chunked(const uint8_t *p, size_t n)
{
    struct http1_chunked a, b;
    http1_chunked_init(&a, MAX_BODY);
    http1_chunked_init(&b, MAX_BODY);
    uint8_t *body_a = malloc(n + 1), *body_b = malloc(n + 1);
    size_t la = 0, lb = 0, off = 0;
    const char *why;
    int ra = HTTP1_MORE;
    while (off < n) {
        size_t used = 0, data = 0;
        ra = http1_chunked_parse(&a, (const char *)p + off, n - off, &used, &data, &why);
        check(used <= n - off && data <= used);
        if (ra >= 400)
            break;
        memcpy(body_a + la, p + off + used - data, data);
        la += data;
        off += used;
        if (ra == HTTP1_DONE)
            break;
    }
    int rb = HTTP1_MORE;
    size_t offb = 0;
    while (offb < n) {
        size_t used = 0, data = 0;
        rb = http1_chunked_parse(&b, (const char *)p + offb, 1, &used, &data, &why);
        check(used <= 1 && data <= used);
        if (rb >= 400)
            break;
        if (data)
            body_b[lb++] = p[offb];
        offb += used;
        if (rb == HTTP1_DONE)
            break;
    }
    check((ra >= 400) == (rb >= 400));
    if (ra == HTTP1_DONE || rb == HTTP1_DONE) {
        check(ra == rb && off == offb && la == lb && memcmp(body_a, body_b, la) == 0);
        check(la <= MAX_BODY);
    }
    free(body_a);
    free(body_b);
    return ra == HTTP1_DONE ? off : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct http1_limits lim = {MAX_HEAD, MAX_BODY};
    size_t off = 0;
    for (int req = 0; req < 8 && off < size; req++) {
        size_t head_len = 0;
        if (scan(data + off, size - off, &head_len) != HTTP1_DONE)
            return 0;
        char *head = malloc(head_len + 1);
        memcpy(head, data + off, head_len);
        head[head_len] = '\0';
        struct http1_head h;
        const char *why = NULL;
        int st = http1_parse_head(head, head_len, &lim, &h, &why);
        if (st) {
            check(st >= 400 && st < 600 && why);
            free(head);
            return 0;
        }
        check_head(&h);
        off += head_len;
        if (h.framing == HTTP1_BODY_LENGTH) {
            if (size - off < h.content_length) {
                free(head);
                return 0;
            }
            off += h.content_length;
        } else if (h.framing == HTTP1_BODY_CHUNKED) {
            size_t used = chunked(data + off, size - off);
            if (!used) {
                free(head);
                return 0;
            }
            off += used;
        }
        free(head);
    }
    /* The chunked parser on the raw input too, so it sees every byte
     * pattern and not only those behind a valid head. */
    chunked(data, size);
    return 0;
}
