/* http1.c: see http1.h for the contract. The grammar comments quote RFC 9112
 * (HTTP/1.1) and RFC 9110 (semantics). */
#include "common/http1.h"

#include <string.h>
#include <strings.h>

/* tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 *         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA          (RFC 9110 5.6.2) */
static int is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return 1;
    switch (ch) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
        return 1;
    default:
        return 0;
    }
}

/* field-value bytes: VCHAR, obs-text, SP and HTAB. Everything else -- NUL, CR,
 * LF, the other controls and DEL -- is refused (RFC 9110 5.5 lets a recipient
 * reject them, and a proxy that strips or keeps them differently is how a
 * request gets smuggled). */
static int is_field_byte(unsigned char ch)
{
    return ch == '\t' || (ch >= 0x20 && ch != 0x7f);
}

/* request-target bytes: visible ASCII only. A target has no spaces (they end
 * it), no controls and no raw bytes >= 0x80 (they must be %-encoded). */
static int is_target_byte(unsigned char ch)
{
    return ch > 0x20 && ch < 0x7f;
}

static int hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static int fail(const char **why, const char *reason, int status)
{
    *why = reason;
    return status;
}

/* ---- 1. the end of the head --------------------------------------------- */

int http1_scan_head(struct http1_scan *s, const char *p, size_t n, size_t max_header_bytes,
                    size_t *head_len, const char **why)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (++s->len > max_header_bytes)
            return fail(why, "request header section exceeds the size limit", 431);
        if (s->prev == '\r' && ch != '\n')
            return fail(why, "bare CR in the request head", 400);
        if (ch == '\n') {
            if (s->prev != '\r')
                return fail(why, "bare LF in the request head (lines must end in CRLF)", 400);
            /* A line that held only its CR is the blank line -- unless it is
             * the first line, which http1_parse_head() refuses as empty. */
            int blank = s->line_len == 1 && s->len > 2;
            s->line_len = 0;
            s->prev = ch;
            if (blank) {
                *head_len = s->len;
                return HTTP1_DONE;
            }
            continue;
        }
        s->line_len++;
        s->prev = ch;
    }
    return HTTP1_MORE;
}

/* ---- 2. the head --------------------------------------------------------- */

/* Is `name` (case-insensitive) one element of the comma-separated list v? */
static int list_has(const char *v, const char *name)
{
    size_t nl = strlen(name);
    const char *p = v;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - p) == nl && strncasecmp(p, name, nl) == 0)
            return 1;
        p = e;
    }
    return 0;
}

/* Transfer-Encoding = #transfer-coding (RFC 9112 6.1). We decode only
 * `chunked`, which must come last and once; any coding before it would have
 * to be decoded too, which we do not do (501). An empty element, a parameter
 * or any other byte is refused rather than guessed at. */
static int check_transfer_encoding(const char *v, const char **why)
{
    int chunked_seen = 0, last_chunked = 0, unknown = 0;
    const char *p = v;
    for (;;) {
        const char *s = p;
        while (is_tchar((unsigned char)*p))
            p++;
        if (p == s)
            return fail(why, "malformed Transfer-Encoding", 400);
        last_chunked = (size_t)(p - s) == 7 && strncasecmp(s, "chunked", 7) == 0;
        if (last_chunked) {
            if (chunked_seen)
                return fail(why, "chunked applied more than once", 400);
            chunked_seen = 1;
        } else {
            unknown = 1;
        }
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        if (*p != ',')
            return fail(why, "malformed Transfer-Encoding", 400);
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
    }
    if (!last_chunked)
        return fail(why, "Transfer-Encoding must end with chunked", chunked_seen ? 400 : 501);
    if (unknown)
        return fail(why, "unsupported transfer coding", 501);
    return 0;
}

/* The request line: method SP request-target SP HTTP-version (RFC 9112 3).
 * Exactly one SP between the parts; origin-form targets only. */
static int parse_request_line(char *line, struct http1_head *h, const char **why)
{
    char *p = line;
    while (is_tchar((unsigned char)*p))
        p++;
    if (p == line || *p != ' ')
        return fail(why, "malformed request method", 400);
    if (p - line > HTTP1_MAX_METHOD)
        return fail(why, "request method too long", 400);
    *p++ = '\0';
    h->method = line;
    /* RFC 9110 9.1: a method we do not implement gets 501. Knowing the
     * methods also keeps us in step with llhttp, which refuses unknown ones. */
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                                        "PATCH", NULL};
    int ok = 0;
    for (int i = 0; known[i] && !ok; i++)
        ok = strcmp(line, known[i]) == 0;
    int method_st = ok ? 0 : 501;

    char *target = p;
    while (is_target_byte((unsigned char)*p))
        p++;
    if (p == target || *p != ' ')
        return fail(why, "malformed request target", 400);
    *p++ = '\0';
    /* We are an origin server: the absolute-form is for proxies, and the
     * asterisk-form (OPTIONS *) has nothing to serve here. */
    if (target[0] != '/')
        return fail(why, "request target must be an absolute path", 400);
    char *q = strchr(target, '?');
    if (q) {
        *q = '\0';
        h->query = q + 1;
    }
    h->path = target;

    /* HTTP-version = "HTTP" "/" DIGIT "." DIGIT, case-sensitive. */
    if (strlen(p) != 8 || strncmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' ||
        p[7] < '0' || p[7] > '9')
        return fail(why, "malformed HTTP version", 400);
    if (p[5] != '1' || p[7] > '1')
        return fail(why, "unsupported HTTP version", 505);
    h->minor = p[7] - '0';
    if (method_st)
        return fail(why, "request method not implemented", method_st);
    return 0;
}

/* field-line = field-name ":" OWS field-value OWS (RFC 9112 5). No space
 * before the colon (5.1: MUST reject), no obs-fold (5.2: we reject). */
static int parse_field_line(char *line, struct http1_field *f, const char **why)
{
    char *p = line;
    if (*p == ' ' || *p == '\t')
        return fail(why, "obsolete header line folding", 400);
    while (is_tchar((unsigned char)*p))
        p++;
    if (p == line || *p != ':')
        return fail(why, "malformed header field name", 400);
    *p++ = '\0';
    while (*p == ' ' || *p == '\t')
        p++;
    char *v = p;
    for (; *p; p++)
        if (!is_field_byte((unsigned char)*p))
            return fail(why, "control character in a header field value", 400);
    while (p > v && (p[-1] == ' ' || p[-1] == '\t'))
        p--;
    *p = '\0';
    f->name = line;
    f->value = v;
    return 0;
}

/* Decide the body's framing (RFC 9112 6.3) and refuse every ambiguity. */
static int parse_framing(struct http1_head *h, const struct http1_limits *lim, const char **why)
{
    const char *te = NULL, *cl = NULL, *conn = NULL, *expect = NULL;
    int hosts = 0;
    for (int i = 0; i < h->n_fields; i++) {
        const char *n = h->fields[i].name, *v = h->fields[i].value;
        if (strcasecmp(n, "Host") == 0) {
            hosts++;
        } else if (strcasecmp(n, "Content-Length") == 0) {
            if (cl)
                return fail(why, "more than one Content-Length", 400);
            cl = v;
        } else if (strcasecmp(n, "Transfer-Encoding") == 0) {
            if (te)
                return fail(why, "more than one Transfer-Encoding header", 400);
            te = v;
        } else if (strcasecmp(n, "Connection") == 0) {
            conn = v; /* several are joined by list_has() on each in turn below */
            if (list_has(v, "close"))
                h->keep_alive = -1;
        } else if (strcasecmp(n, "Expect") == 0) {
            expect = v;
        }
    }
    /* RFC 9112 3.2: a server MUST respond 400 to an HTTP/1.1 request with no
     * Host or more than one; one Host is all HTTP/1.0 may have too. */
    if (hosts > 1)
        return fail(why, "more than one Host header", 400);
    if (hosts == 0 && h->minor == 1)
        return fail(why, "missing Host header", 400);

    if (h->keep_alive == -1)
        h->keep_alive = 0;
    else if (h->minor >= 1)
        h->keep_alive = 1;
    else
        h->keep_alive = conn && list_has(conn, "keep-alive");
    h->expect_continue = h->minor >= 1 && expect && strcasecmp(expect, "100-continue") == 0;

    h->framing = HTTP1_BODY_NONE;
    h->content_length = 0;
    if (te) {
        /* Both is the classic smuggling pair: refuse rather than pick one. */
        if (cl)
            return fail(why, "both Content-Length and Transfer-Encoding", 400);
        /* HTTP/1.0 has no Transfer-Encoding; a 1.0 proxy would frame by close. */
        if (h->minor == 0)
            return fail(why, "Transfer-Encoding in an HTTP/1.0 request", 400);
        int st = check_transfer_encoding(te, why);
        if (st)
            return st;
        h->framing = HTTP1_BODY_CHUNKED;
    } else if (cl) {
        /* Content-Length = 1*DIGIT: no sign, no space, no list ("5, 5"). */
        size_t nd = strlen(cl);
        if (nd == 0 || strspn(cl, "0123456789") != nd)
            return fail(why, "invalid Content-Length", 400);
        if (nd > HTTP1_MAX_CL_DIGITS)
            return fail(why, "request body exceeds the size limit", 413);
        uint64_t v = 0;
        for (size_t i = 0; i < nd; i++)
            v = v * 10 + (uint64_t)(cl[i] - '0');
        if (v > lim->max_body_bytes)
            return fail(why, "request body exceeds the size limit", 413);
        h->framing = HTTP1_BODY_LENGTH;
        h->content_length = v;
    }
    return 0;
}

int http1_parse_head(char *buf, size_t len, const struct http1_limits *lim, struct http1_head *h,
                     const char **why)
{
    memset(h, 0, sizeof *h);
    if (len > lim->max_header_bytes)
        return fail(why, "request header section exceeds the size limit", 431);
    if (len < 4 || memcmp(buf + len - 4, "\r\n\r\n", 4) != 0)
        return fail(why, "incomplete request head", 400);
    /* Every line must end in CRLF and hold no other CR, LF or NUL: check the
     * whole head once, so the splitting below can use C strings safely. */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)buf[i];
        if (ch == '\0')
            return fail(why, "NUL byte in the request head", 400);
        if (ch == '\r' && buf[i + 1] != '\n')
            return fail(why, "bare CR in the request head", 400);
        if (ch == '\n' && (i == 0 || buf[i - 1] != '\r'))
            return fail(why, "bare LF in the request head (lines must end in CRLF)", 400);
    }
    /* Split into lines: each CRLF becomes NUL NUL. The final blank line is
     * the last 2 bytes. */
    char *end = buf + len - 2;
    char *line = buf;
    int first = 1;
    while (line < end) {
        char *cr = memchr(line, '\r', (size_t)(end - line));
        if (!cr) /* cannot happen: the head ends in CRLF CRLF; still never trust a search */
            return fail(why, "malformed request head", 400);
        cr[0] = cr[1] = '\0';
        if (first) {
            if (cr == line)
                return fail(why, "empty request line", 400);
            int st = parse_request_line(line, h, why);
            if (st)
                return st;
            first = 0;
        } else {
            if (h->n_fields == HTTP1_MAX_FIELDS)
                return fail(why, "too many header fields", 431);
            int st = parse_field_line(line, &h->fields[h->n_fields], why);
            if (st)
                return st;
            h->n_fields++;
        }
        line = cr + 2;
    }
    if (first)
        return fail(why, "empty request line", 400);
    return parse_framing(h, lim, why);
}

const char *http1_field(const struct http1_head *h, const char *name)
{
    for (int i = 0; i < h->n_fields; i++)
        if (strcasecmp(h->fields[i].name, name) == 0)
            return h->fields[i].value;
    return NULL;
}

/* ---- 3. chunked bodies --------------------------------------------------- */

void http1_chunked_init(struct http1_chunked *ck, uint64_t max_body_bytes)
{
    memset(ck, 0, sizeof *ck);
    ck->state = HTTP1_CK_SIZE;
    ck->max_body_bytes = max_body_bytes;
}

/* chunked-body   = *chunk last-chunk trailer-section CRLF
 * chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 * chunk-size     = 1*HEXDIG                      (we allow at most 16)
 * chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
 * chunk-ext-val  = token / quoted-string
 * We allow no BWS around ";" and "=": a sender has no reason for it, and
 * whitespace after a size is exactly what lets "25 x" read as 0x25 to one
 * parser and as garbage to another. */
int http1_chunked_parse(struct http1_chunked *ck, const char *p, size_t n, size_t *used, size_t *data_len,
                        const char **why)
{
    *data_len = 0;
    size_t i = 0;
    while (i < n) {
        unsigned char ch = (unsigned char)p[i];
        enum http1_chunk_state st = ck->state;
        if (st == HTTP1_CK_DATA) {
            size_t take = n - i;
            if ((uint64_t)take > ck->remaining)
                take = (size_t)ck->remaining;
            ck->remaining -= take;
            if (ck->remaining == 0)
                ck->state = HTTP1_CK_DATA_CR;
            *used = i + take;
            *data_len = take;
            return HTTP1_DATA;
        }
        i++;
        /* Bound the size line (digits and extensions) as it grows. */
        if (st <= HTTP1_CK_EXT_AFTER_QUOTE && ++ck->line_len > HTTP1_MAX_CHUNK_LINE) {
            *used = i;
            return fail(why, "chunk extensions exceed the size limit", 400);
        }
        if (st >= HTTP1_CK_TRAILER_START && st <= HTTP1_CK_END_LF &&
            ++ck->trailer_bytes > HTTP1_MAX_TRAILER_BYTES) {
            *used = i;
            return fail(why, "chunked trailer section exceeds the size limit", 400);
        }
        switch (st) {
        case HTTP1_CK_SIZE: {
            int hv = hexval(ch);
            if (hv >= 0) {
                if (ck->digits == HTTP1_MAX_CHUNK_DIGITS)
                    goto bad_size;
                ck->remaining = (ck->remaining << 4) | (uint64_t)hv;
                ck->digits++;
                break;
            }
            if (ck->digits == 0 || (ch != ';' && ch != '\r'))
                goto bad_size;
            if (ck->remaining > ck->max_body_bytes - ck->total) {
                *used = i;
                return fail(why, "request body exceeds the size limit", 413);
            }
            ck->last = ck->remaining == 0;
            ck->state = ch == ';' ? HTTP1_CK_EXT_NAME_START : HTTP1_CK_SIZE_LF;
            break;
        }
        case HTTP1_CK_EXT_NAME_START:
            /* An extension name is a token of at least one byte. */
            if (!is_tchar(ch))
                goto bad_ext;
            ck->state = HTTP1_CK_EXT_NAME;
            break;
        case HTTP1_CK_EXT_NAME:
            if (is_tchar(ch))
                break;
            if (ch == '=')
                ck->state = HTTP1_CK_EXT_VALUE_START;
            else if (ch == ';')
                ck->state = HTTP1_CK_EXT_NAME_START;
            else if (ch == '\r')
                ck->state = HTTP1_CK_SIZE_LF;
            else
                goto bad_ext;
            break;
        case HTTP1_CK_EXT_VALUE_START:
            if (is_tchar(ch))
                ck->state = HTTP1_CK_EXT_TOKEN;
            else if (ch == '"')
                ck->state = HTTP1_CK_EXT_QUOTED;
            else
                goto bad_ext;
            break;
        case HTTP1_CK_EXT_TOKEN:
            if (is_tchar(ch))
                break;
            if (ch == ';')
                ck->state = HTTP1_CK_EXT_NAME_START;
            else if (ch == '\r')
                ck->state = HTTP1_CK_SIZE_LF;
            else
                goto bad_ext;
            break;
        case HTTP1_CK_EXT_QUOTED:
            /* qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text */
            if (ch == '"')
                ck->state = HTTP1_CK_EXT_AFTER_QUOTE;
            else if (ch == '\\')
                ck->state = HTTP1_CK_EXT_ESCAPE;
            else if (!is_field_byte(ch))
                goto bad_ext;
            break;
        case HTTP1_CK_EXT_ESCAPE:
            /* quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ) */
            if (!is_field_byte(ch))
                goto bad_ext;
            ck->state = HTTP1_CK_EXT_QUOTED;
            break;
        case HTTP1_CK_EXT_AFTER_QUOTE:
            if (ch == ';')
                ck->state = HTTP1_CK_EXT_NAME_START;
            else if (ch == '\r')
                ck->state = HTTP1_CK_SIZE_LF;
            else
                goto bad_ext;
            break;
        case HTTP1_CK_SIZE_LF:
            if (ch != '\n') {
                *used = i;
                return fail(why, "chunk size line must end in CRLF", 400);
            }
            ck->line_len = 0;
            ck->digits = 0;
            ck->total += ck->remaining;
            ck->state = ck->last ? HTTP1_CK_TRAILER_START : HTTP1_CK_DATA;
            break;
        case HTTP1_CK_DATA_CR:
            if (ch != '\r')
                goto bad_data_end;
            ck->state = HTTP1_CK_DATA_LF;
            break;
        case HTTP1_CK_DATA_LF:
            if (ch != '\n')
                goto bad_data_end;
            ck->remaining = 0;
            ck->state = HTTP1_CK_SIZE;
            break;
        case HTTP1_CK_TRAILER_START:
            if (ch == '\r')
                ck->state = HTTP1_CK_END_LF;
            else if (is_tchar(ch))
                ck->state = HTTP1_CK_TRAILER_NAME;
            else
                goto bad_trailer;
            break;
        case HTTP1_CK_TRAILER_NAME:
            if (is_tchar(ch))
                break;
            if (ch != ':')
                goto bad_trailer;
            ck->state = HTTP1_CK_TRAILER_VALUE;
            break;
        case HTTP1_CK_TRAILER_VALUE:
            if (ch == '\r')
                ck->state = HTTP1_CK_TRAILER_LF;
            else if (!is_field_byte(ch))
                goto bad_trailer;
            break;
        case HTTP1_CK_TRAILER_LF:
            if (ch != '\n')
                goto bad_trailer;
            ck->state = HTTP1_CK_TRAILER_START;
            break;
        case HTTP1_CK_END_LF:
            if (ch != '\n')
                goto bad_trailer;
            ck->state = HTTP1_CK_DONE;
            *used = i;
            return HTTP1_DONE;
        case HTTP1_CK_DATA:
        case HTTP1_CK_DONE:
            *used = i - 1;
            return HTTP1_DONE;
        }
        continue;
    bad_size:
        *used = i;
        return fail(why, "malformed chunk size (1 to 16 hex digits)", 400);
    bad_ext:
        *used = i;
        return fail(why, "malformed chunk extension", 400);
    bad_data_end:
        *used = i;
        return fail(why, "chunk data must end in CRLF", 400);
    bad_trailer:
        *used = i;
        return fail(why, "malformed chunked trailer", 400);
    }
    *used = n;
    return ck->state == HTTP1_CK_DONE ? HTTP1_DONE : HTTP1_MORE;
}
