#include "common/jsonw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/jsonscan.h"
#include "common/mem.h"
#include "common/utf8.h"

void jw_init(struct jsonw *w, size_t cap)
{
    w->cap = cap ? cap : 256;
    w->p = xmalloc(w->cap);
    w->len = 0;
}

void jw_free(struct jsonw *w)
{
    free(w->p);
    w->p = NULL;
    w->len = w->cap = 0;
}

static void reserve(struct jsonw *w, size_t n)
{
    if (w->len + n + 1 <= w->cap)
        return;
    while (w->len + n + 1 > w->cap)
        w->cap *= 2;
    w->p = xrealloc(w->p, w->cap);
}

char *jw_take(struct jsonw *w, size_t *len)
{
    reserve(w, 0);
    w->p[w->len] = '\0';
    char *p = w->p;
    if (len)
        *len = w->len;
    w->p = NULL;
    w->len = w->cap = 0;
    return p;
}

void jw_raw(struct jsonw *w, const char *s, size_t n)
{
    reserve(w, n);
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

void jw_str(struct jsonw *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    reserve(w, n + 2);
    w->p[w->len++] = '"';
    size_t i = 0;
    while (i < n) {
        /* Runs of plain ASCII are copied at once. */
        size_t j = i + json_plain_run(s + i, n - i);
        if (j > i) {
            jw_raw(w, s + i, j - i);
            i = j;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            /* A complete, valid sequence is copied; anything else is U+FFFD. */
            size_t k = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            if (i + k <= n && utf8_valid(s + i, k)) {
                jw_raw(w, s + i, k);
                i += k;
            } else {
                jw_raw(w, "\xEF\xBF\xBD", 3);
                i++;
            }
            continue;
        }
        char esc[7] = {'\\', 0};
        size_t en = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u', esc[2] = '0', esc[3] = '0', esc[4] = hex[c >> 4], esc[5] = hex[c & 15];
            en = 6;
        }
        jw_raw(w, esc, en);
        i++;
    }
    jw_raw(w, "\"", 1);
}

void jw_cstr(struct jsonw *w, const char *s)
{
    if (s)
        jw_str(w, s, strlen(s));
    else
        jw_raw(w, "null", 4);
}

void jw_int(struct jsonw *w, int64_t v)
{
    /* By hand: printf is measurable on the per-request path. */
    char b[24], *p = b + sizeof b;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    jw_raw(w, p, (size_t)(b + sizeof b - p));
}

void jw_real(struct jsonw *w, double v)
{
    if (!isfinite(v)) {
        jw_raw(w, "null", 4);
        return;
    }
    char b[32];
    int n = snprintf(b, sizeof b, "%.17g", v);
    /* Shortest form that reads back the same: try fewer digits first. */
    for (int p = 6; p < 17; p++) {
        char t[32];
        int m = snprintf(t, sizeof t, "%.*g", p, v);
        if (strtod(t, NULL) == v) {
            memcpy(b, t, (size_t)m + 1);
            n = m;
            break;
        }
    }
    /* Keep it a JSON number that reads as a real: "1" is fine either way. */
    jw_raw(w, b, (size_t)n);
}

/* jansson's own form for a real: "%.17g", with ".0" added when that reads
 * as an integer, so the type survives the round trip, and the exponent
 * trimmed as jansson trims it. */
static void tree_real(struct jsonw *w, double v)
{
    char b[40];
    int n = snprintf(b, sizeof b, "%.17g", v);
    if (n <= 0 || (size_t)n >= sizeof b - 2 || !isfinite(v)) {
        jw_raw(w, "null", 4);
        return;
    }
    char *e = strchr(b, 'e');
    if (!e && !strchr(b, '.')) {
        memcpy(b + n, ".0", 2);
        n += 2;
    } else if (e) {
        /* the exponent as jansson writes it: no '+', no leading zeros */
        char *d = e + 1, *src = d;
        if (*src == '+')
            src++;
        else if (*src == '-')
            *d++ = *src++;
        while (*src == '0' && src[1])
            src++;
        while (*src)
            *d++ = *src++;
        *d = '\0';
        n = (int)(d - b);
    }
    jw_raw(w, b, (size_t)n);
}

void jw_json(struct jsonw *w, json_t *v)
{
    switch (v ? json_typeof(v) : JSON_NULL) {
    case JSON_OBJECT: {
        const char *k;
        size_t kn;
        json_t *x;
        int first = 1;
        jw_raw(w, "{", 1);
        json_object_keylen_foreach(v, k, kn, x) {
            if (!first)
                jw_raw(w, ",", 1);
            first = 0;
            jw_str(w, k, kn);
            jw_raw(w, ":", 1);
            jw_json(w, x);
        }
        jw_raw(w, "}", 1);
        break;
    }
    case JSON_ARRAY: {
        jw_raw(w, "[", 1);
        for (size_t i = 0, n = json_array_size(v); i < n; i++) {
            if (i)
                jw_raw(w, ",", 1);
            jw_json(w, json_array_get(v, i));
        }
        jw_raw(w, "]", 1);
        break;
    }
    case JSON_STRING:
        jw_str(w, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        jw_int(w, (int64_t)json_integer_value(v));
        break;
    case JSON_REAL:
        tree_real(w, json_real_value(v));
        break;
    case JSON_TRUE:
        jw_raw(w, "true", 4);
        break;
    case JSON_FALSE:
        jw_raw(w, "false", 5);
        break;
    case JSON_NULL:
        jw_raw(w, "null", 4);
        break;
    }
}
