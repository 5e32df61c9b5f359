/* jsonr.c: see jsonr.h for the contract.
 *
 * A recursive-descent reader over [p, end). Every function returns NULL (or
 * -1) to mean "not decided here", and the caller gives up the whole parse:
 * jansson then reads the bytes again and reports what is wrong. So each
 * check below only has to be as strict as jansson, never produce its error.
 *
 * Where jansson's rules are subtle, the reader declines instead of copying
 * them: integers of more than 18 digits (jansson's strtoll range checks),
 * "\u0000" (refused without JSON_ALLOW_NUL), and duplicate keys (refused or
 * replaced depending on the flags; noticed here because the object did not
 * grow).
 */
#include "common/jsonr.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonscan.h"
#include "common/utf8.h"

static json_t *jr_value(struct jr_cursor *r);

static inline void skip_ws(struct jr_cursor *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t'))
        r->p++;
}

static inline int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

/* Room for n more decoded bytes. The decoded text is never longer than its
 * source, so this grows at most to the size of the input. */
static int buf_room(struct jr_cursor *r, size_t n)
{
    if (r->len + n <= r->cap)
        return 0;
    size_t cap = r->cap ? r->cap : 256;
    while (cap < r->len + n)
        cap *= 2;
    char *b = realloc(r->buf, cap);
    if (!b)
        return -1;
    r->buf = b;
    r->cap = cap;
    return 0;
}

/* The string whose opening quote r->p is just past. *s points into the
 * input when the string has no escapes (*scratch = 0), else into r->buf,
 * which the next string overwrites (*scratch = 1). */
static int jr_string(struct jr_cursor *r, const char **s, size_t *n, int *scratch)
{
    const char *start = r->p, *q = start;
    int ascii = 1;
    q += json_plain_run(q, (size_t)(r->end - q));
    /* The common case: no escapes, so the bytes are the value. */
    while (q < r->end) {
        unsigned char c = (unsigned char)*q;
        if (c == '"' || c == '\\')
            break;
        if (c < 0x20)
            return -1;
        ascii &= c < 0x80;
        q++;
    }
    if (q >= r->end)
        return -1;
    if (*q == '"') {
        if (!ascii && !utf8_valid(start, (size_t)(q - start)))
            return -1;
        *s = start;
        *n = (size_t)(q - start);
        *scratch = 0;
        r->p = q + 1;
        return 0;
    }
    /* Escapes: decode into r->buf, then check the whole as UTF-8 (an
     * escape's output always starts a character, so a bad raw sequence stays
     * bad next to one). */
    r->len = 0;
    if (buf_room(r, (size_t)(q - start) + 1) < 0)
        return -1;
    memcpy(r->buf, start, (size_t)(q - start));
    r->len = (size_t)(q - start);
    while (q < r->end) {
        unsigned char c = (unsigned char)*q;
        if (c == '"')
            break;
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            if (buf_room(r, 1) < 0)
                return -1;
            r->buf[r->len++] = (char)c;
            q++;
            continue;
        }
        if (r->end - q < 2)
            return -1;
        char e = q[1], out;
        q += 2;
        switch (e) {
        case '"': out = '"'; break;
        case '\\': out = '\\'; break;
        case '/': out = '/'; break;
        case 'b': out = '\b'; break;
        case 'f': out = '\f'; break;
        case 'n': out = '\n'; break;
        case 'r': out = '\r'; break;
        case 't': out = '\t'; break;
        case 'u': {
            unsigned u, lo;
            if (r->end - q < 4 || hex4(q, &u) < 0)
                return -1;
            q += 4;
            if (u == 0 || (u >= 0xDC00 && u <= 0xDFFF))
                return -1; /* NUL, or a lone low surrogate: jansson's call */
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (r->end - q < 6 || q[0] != '\\' || q[1] != 'u' || hex4(q + 2, &lo) < 0 || lo < 0xDC00 ||
                    lo > 0xDFFF)
                    return -1;
                q += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (buf_room(r, 4) < 0)
                return -1;
            char *b = r->buf + r->len;
            if (u < 0x80) {
                b[0] = (char)u;
                r->len += 1;
            } else if (u < 0x800) {
                b[0] = (char)(0xC0 | u >> 6);
                b[1] = (char)(0x80 | (u & 0x3F));
                r->len += 2;
            } else if (u < 0x10000) {
                b[0] = (char)(0xE0 | u >> 12);
                b[1] = (char)(0x80 | (u >> 6 & 0x3F));
                b[2] = (char)(0x80 | (u & 0x3F));
                r->len += 3;
            } else {
                b[0] = (char)(0xF0 | u >> 18);
                b[1] = (char)(0x80 | (u >> 12 & 0x3F));
                b[2] = (char)(0x80 | (u >> 6 & 0x3F));
                b[3] = (char)(0x80 | (u & 0x3F));
                r->len += 4;
            }
            continue;
        }
        default:
            return -1;
        }
        if (buf_room(r, 1) < 0)
            return -1;
        r->buf[r->len++] = out;
    }
    if (q >= r->end || !utf8_valid(r->buf, r->len))
        return -1;
    *s = r->buf;
    *n = r->len;
    *scratch = 1;
    r->p = q + 1;
    return 0;
}

/* A number at r->p, as jansson reads it: an integer when it has neither
 * fraction nor exponent (*real = 0, *iv), else a double (*real = 1, *dv).
 * -1: malformed, or an integer that may not fit, or a double that
 * overflows (jansson's errors). */
static int scan_number(struct jr_cursor *r, int *real, int64_t *iv, double *dv)
{
    const char *s = r->p, *q = s;
    int neg = 0;
    *real = 0;
    if (q < r->end && *q == '-') {
        neg = 1;
        q++;
    }
    if (q >= r->end)
        return -1;
    if (*q == '0') {
        q++;
        if (q < r->end && is_digit(*q))
            return -1; /* a leading zero */
    } else if (*q >= '1' && *q <= '9') {
        while (q < r->end && is_digit(*q))
            q++;
    } else {
        return -1;
    }
    if (q < r->end && *q == '.') {
        *real = 1;
        q++;
        if (q >= r->end || !is_digit(*q))
            return -1;
        while (q < r->end && is_digit(*q))
            q++;
    }
    if (q < r->end && (*q == 'e' || *q == 'E')) {
        *real = 1;
        q++;
        if (q < r->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= r->end || !is_digit(*q))
            return -1;
        while (q < r->end && is_digit(*q))
            q++;
    }
    size_t n = (size_t)(q - s);
    r->p = q;
    if (!*real) {
        if (n - (size_t)neg > 18)
            return -1; /* may not fit: jansson's range check decides */
        int64_t v = 0;
        for (const char *d = s + neg; d < q; d++)
            v = v * 10 + (*d - '0');
        *iv = neg ? -v : v;
        return 0;
    }
    char tmp[64];
    if (n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    char *e;
    *dv = strtod(tmp, &e);
    /* e short of the end: a locale whose decimal point is not '.' */
    if (e != tmp + n || isinf(*dv))
        return -1;
    return 0;
}

static json_t *jr_number(struct jr_cursor *r)
{
    int real;
    int64_t iv;
    double dv;
    if (scan_number(r, &real, &iv, &dv) < 0)
        return NULL;
    return real ? json_real(dv) : json_integer(iv);
}

static json_t *jr_object(struct jr_cursor *r)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    skip_ws(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        return o;
    }
    for (;;) {
        if (r->p >= r->end || *r->p != '"')
            goto fail;
        r->p++;
        const char *k;
        size_t kn;
        int scratch;
        char *own = NULL;
        if (jr_string(r, &k, &kn, &scratch) < 0)
            goto fail;
        if (scratch) {
            /* the value's strings reuse r->buf: keep the key apart (rare) */
            own = malloc(kn + 1);
            if (!own)
                goto fail;
            memcpy(own, k, kn);
            k = own;
        }
        skip_ws(r);
        if (r->p >= r->end || *r->p != ':') {
            free(own);
            goto fail;
        }
        r->p++;
        skip_ws(r);
        json_t *v = jr_value(r);
        size_t before = json_object_size(o);
        /* setn_new consumes v, NULL or not; a size that did not grow is a
         * duplicate key */
        int rc = v ? json_object_setn_new_nocheck(o, k, kn, v) : -1;
        free(own);
        if (rc < 0 || json_object_size(o) == before)
            goto fail;
        skip_ws(r);
        if (r->p >= r->end)
            goto fail;
        if (*r->p == ',') {
            r->p++;
            skip_ws(r);
            continue;
        }
        if (*r->p == '}') {
            r->p++;
            return o;
        }
        goto fail;
    }
fail:
    json_decref(o);
    return NULL;
}

static json_t *jr_array(struct jr_cursor *r)
{
    json_t *a = json_array();
    if (!a)
        return NULL;
    skip_ws(r);
    if (r->p < r->end && *r->p == ']') {
        r->p++;
        return a;
    }
    for (;;) {
        json_t *v = jr_value(r);
        if (!v || json_array_append_new(a, v) < 0)
            goto fail;
        skip_ws(r);
        if (r->p >= r->end)
            goto fail;
        if (*r->p == ',') {
            r->p++;
            skip_ws(r);
            continue;
        }
        if (*r->p == ']') {
            r->p++;
            return a;
        }
        goto fail;
    }
fail:
    json_decref(a);
    return NULL;
}

static int literal(struct jr_cursor *r, const char *word, size_t n)
{
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
        return -1;
    r->p += n;
    return 0;
}

/* One value at r->p (whitespace before it already skipped). */
static json_t *jr_value(struct jr_cursor *r)
{
    if (r->p >= r->end)
        return NULL;
    switch (*r->p) {
    case '{':
    case '[': {
        if (r->depth >= JSONR_MAX_DEPTH)
            return NULL;
        r->depth++;
        char open = *r->p++;
        json_t *v = open == '{' ? jr_object(r) : jr_array(r);
        r->depth--;
        return v;
    }
    case '"': {
        const char *s;
        size_t n;
        int scratch;
        r->p++;
        if (jr_string(r, &s, &n, &scratch) < 0)
            return NULL;
        return json_stringn_nocheck(s, n);
    }
    case 't':
        return literal(r, "true", 4) < 0 ? NULL : json_true();
    case 'f':
        return literal(r, "false", 5) < 0 ? NULL : json_false();
    case 'n':
        return literal(r, "null", 4) < 0 ? NULL : json_null();
    default:
        return jr_number(r);
    }
}

json_t *jr_parse(const char *s, size_t len)
{
    struct jr_cursor r = {.p = s, .end = s + len};
    skip_ws(&r);
    /* jansson without JSON_DECODE_ANY takes only these at the top */
    if (r.p >= r.end || (*r.p != '{' && *r.p != '['))
        return NULL;
    json_t *v = jr_value(&r);
    free(r.buf);
    if (!v)
        return NULL;
    skip_ws(&r);
    if (r.p != r.end) {
        json_decref(v);
        return NULL;
    }
    return v;
}

json_t *jr_load(const char *s, size_t len, size_t flags, json_error_t *err)
{
    if ((flags & ~(size_t)JSON_REJECT_DUPLICATES) == 0) {
        json_t *v = jr_parse(s, len);
        if (v)
            return v;
    }
    return json_loadb(s, len, flags, err);
}

/* ---- reading without a tree --------------------------------------------- */

void jr_cursor_init(struct jr_cursor *c, const char *s, size_t len)
{
    memset(c, 0, sizeof *c);
    c->p = s;
    c->end = s + len;
}

void jr_cursor_free(struct jr_cursor *c)
{
    free(c->buf);
    c->buf = NULL;
    c->cap = c->len = 0;
}

int jr_peek(struct jr_cursor *c)
{
    skip_ws(c);
    return c->p < c->end ? (unsigned char)*c->p : -1;
}

int jr_expect(struct jr_cursor *c, char ch)
{
    skip_ws(c);
    if (c->p >= c->end || *c->p != ch)
        return -1;
    c->p++;
    return 0;
}

int jr_at_end(struct jr_cursor *c)
{
    skip_ws(c);
    return c->p == c->end ? 0 : -1;
}

int jr_read_string(struct jr_cursor *c, const char **s, size_t *n)
{
    int scratch;
    if (jr_expect(c, '"') < 0)
        return -1;
    return jr_string(c, s, n, &scratch);
}

int jr_next_key(struct jr_cursor *c, int *first, const char **k, size_t *kn)
{
    int ch = jr_peek(c);
    if (*first) {
        *first = 0;
        if (ch == '}') {
            c->p++;
            return 0;
        }
    } else {
        if (ch == '}') {
            c->p++;
            return 0;
        }
        if (ch != ',')
            return -1;
        c->p++;
    }
    if (jr_read_string(c, k, kn) < 0 || jr_expect(c, ':') < 0)
        return -1;
    return 1;
}

int jr_read_number(struct jr_cursor *c, int *real, int64_t *iv, double *dv)
{
    skip_ws(c);
    return scan_number(c, real, iv, dv);
}

int jr_skip(struct jr_cursor *c, int *empty)
{
    int dummy;
    if (!empty)
        empty = &dummy;
    *empty = 0;
    skip_ws(c);
    if (c->p >= c->end)
        return -1;
    switch (*c->p) {
    case '{':
    case '[': {
        if (c->depth >= JSONR_MAX_DEPTH)
            return -1;
        char close = *c->p == '{' ? '}' : ']';
        c->p++;
        c->depth++;
        skip_ws(c);
        if (c->p < c->end && *c->p == close) {
            c->p++;
            c->depth--;
            *empty = close == ']';
            return 0;
        }
        for (;;) {
            if (close == '}') {
                const char *k;
                size_t kn;
                if (jr_read_string(c, &k, &kn) < 0 || jr_expect(c, ':') < 0)
                    return -1;
            }
            if (jr_skip(c, NULL) < 0)
                return -1;
            skip_ws(c);
            if (c->p >= c->end)
                return -1;
            if (*c->p == ',') {
                c->p++;
                continue;
            }
            if (*c->p == close) {
                c->p++;
                c->depth--;
                return 0;
            }
            return -1;
        }
    }
    case '"': {
        const char *s;
        size_t n;
        int scratch;
        c->p++;
        if (jr_string(c, &s, &n, &scratch) < 0)
            return -1;
        *empty = n == 0;
        return 0;
    }
    case 't':
        return literal(c, "true", 4);
    case 'f':
        return literal(c, "false", 5);
    case 'n':
        *empty = 1;
        return literal(c, "null", 4);
    default: {
        int real;
        int64_t iv;
        double dv;
        return scan_number(c, &real, &iv, &dv);
    }
    }
}
