/* http1_dump: run common/http1's request parser over the bytes on stdin, as
 * the server would read one connection, and print what it made of them as one
 * line of JSON. The differential test (differential.test.mjs) feeds the same
 * bytes to Node's llhttp and compares.
 *
 *   {"requests":[{"method":..,"path":..,"query":..,"minor":1,"headers":[[name,value],..],
 *                 "body":"<hex>"},..],
 *    "result":"ok"|"reject"|"incomplete", "status":400, "why":".."}
 *
 * Strings are written byte for byte as code points (Latin-1), which is how
 * Node decodes header bytes, so the two sides compare directly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/http1.h"

static void put_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20 || *p >= 0x7f)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void dump(const char *in, size_t len)
{
    const struct http1_limits lim = {16384, 1 << 20};
    size_t off = 0;
    const char *result = "ok", *why = NULL;
    int status = 0, count = 0;
    printf("{\"requests\":[");
    for (;;) {
        while (len - off >= 2 && in[off] == '\r' && in[off + 1] == '\n')
            off += 2; /* empty lines before a request line (RFC 9112 2.2) */
        if (off == len)
            break;
        struct http1_scan scan = {0};
        size_t head_len = 0;
        int rc = http1_scan_head(&scan, in + off, len - off, lim.max_header_bytes, &head_len, &why);
        if (rc == HTTP1_MORE) {
            result = "incomplete";
            break;
        }
        if (rc != HTTP1_DONE) {
            result = "reject", status = rc;
            break;
        }
        char *head = malloc(head_len + 1);
        memcpy(head, in + off, head_len);
        head[head_len] = '\0';
        struct http1_head h;
        status = http1_parse_head(head, head_len, &lim, &h, &why);
        if (status) {
            free(head);
            result = "reject";
            break;
        }
        off += head_len;
        char *body = NULL;
        size_t body_len = 0;
        if (h.framing == HTTP1_BODY_LENGTH) {
            if (len - off < h.content_length) {
                free(head);
                result = "incomplete";
                break;
            }
            body = malloc(h.content_length + 1);
            memcpy(body, in + off, h.content_length);
            body_len = h.content_length;
            off += h.content_length;
        } else if (h.framing == HTTP1_BODY_CHUNKED) {
            struct http1_chunked ck;
            http1_chunked_init(&ck, lim.max_body_bytes);
            body = malloc(len - off + 1);
            /* Feed one byte at a time: the incremental path is the one a
             * slow network exercises. */
            rc = HTTP1_MORE;
            while (off < len && rc != HTTP1_DONE) {
                size_t used = 0, data = 0;
                rc = http1_chunked_parse(&ck, in + off, 1, &used, &data, &why);
                if (rc >= 400)
                    break;
                if (data)
                    body[body_len++] = in[off];
                off += used;
            }
            if (rc != HTTP1_DONE) {
                free(head);
                free(body);
                result = rc >= 400 ? "reject" : "incomplete";
                status = rc >= 400 ? rc : 0;
                break;
            }
        }
        printf("%s{\"method\":", count++ ? "," : "");
        put_str(h.method);
        printf(",\"path\":");
        put_str(h.path);
        if (h.query) {
            printf(",\"query\":");
            put_str(h.query);
        }
        printf(",\"minor\":%d,\"headers\":[", h.minor);
        for (int i = 0; i < h.n_fields; i++) {
            printf("%s[", i ? "," : "");
            put_str(h.fields[i].name);
            putchar(',');
            put_str(h.fields[i].value);
            putchar(']');
        }
        printf("],\"body\":\"");
        for (size_t i = 0; i < body_len; i++)
            printf("%02x", (unsigned char)body[i]);
        printf("\"}");
        free(body);
        free(head);
        if (!h.keep_alive)
            break; /* the connection ends after this request */
    }
    printf("],\"result\":\"%s\",\"status\":%d", result, status);
    if (why) {
        printf(",\"why\":");
        put_str(why);
    }
    printf("}\n");
}

/* Without arguments: one connection's bytes on stdin. With --batch: many,
 * each as "<decimal length>\n<bytes>", one line of JSON out per case (the
 * differential test runs hundreds of cases through one process). */
int main(int argc, char **argv)
{
    size_t cap = 1 << 16, len = 0;
    char *in = malloc(cap);
    size_t n;
    while (in && (n = fread(in + len, 1, cap - len, stdin)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            in = realloc(in, cap);
        }
    }
    if (!in)
        return 2;
    if (argc < 2 || strcmp(argv[1], "--batch") != 0) {
        dump(in, len);
        free(in);
        return 0;
    }
    size_t off = 0;
    while (off < len) {
        char *nl = memchr(in + off, '\n', len - off);
        if (!nl)
            return 2;
        size_t k = (size_t)strtoull(in + off, NULL, 10);
        off = (size_t)(nl - in) + 1;
        if (k > len - off)
            return 2;
        char *one = malloc(k + 1);
        memcpy(one, in + off, k);
        dump(one, k);
        free(one);
        off += k;
    }
    free(in);
    return 0;
}
