/* tokenizer.c: what every tokenizer shares: id arrays, the UTF-8 input check
 * and the streaming decoder. See tokenizer.h for the policies. */
#include "tokenizer/tokenizer.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

void tok_ids_free(struct tok_ids *ids)
{
    if (!ids)
        return;
    free(ids->v);
    ids->v = NULL;
    ids->n = ids->cap = 0;
}

int tok_ids_reserve(struct tok_ids *ids, size_t extra)
{
    if (ids->cap - ids->n >= extra)
        return TOK_OK;
    if (extra > SIZE_MAX / sizeof(int32_t) / 2 - ids->n)
        return TOK_ENOMEM;
    /* Grow geometrically so a long encode costs amortised O(1) per id. */
    size_t cap = ids->cap ? ids->cap * 2 : 64;
    while (cap - ids->n < extra)
        cap *= 2;
    int32_t *v = realloc(ids->v, cap * sizeof(*v));
    if (!v)
        return TOK_ENOMEM;
    ids->v = v;
    ids->cap = cap;
    return TOK_OK;
}

/* The hot path of every encoder: one compare and a store while there is
 * room. */
int tok_ids_push(struct tok_ids *ids, int32_t id)
{
    if (ids->n == ids->cap && tok_ids_reserve(ids, 1) < 0)
        return TOK_ENOMEM;
    ids->v[ids->n++] = id;
    return TOK_OK;
}

/* The bounds a UTF-8 byte after lead byte c must fall in. The second byte of
 * a sequence is narrower for a few leads: that is how overlongs (E0, F0),
 * surrogates (ED) and code points above U+10FFFF (F4) are ruled out. */
static void second_byte_range(uint8_t c, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (c == 0xE0)
        *lo = 0xA0;
    else if (c == 0xED)
        *hi = 0x9F;
    else if (c == 0xF0)
        *lo = 0x90;
    else if (c == 0xF4)
        *hi = 0x8F;
}

/* Sequence length announced by lead byte c, or 0 when c cannot start one. */
static size_t lead_len(uint8_t c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF)
        return 3;
    if (c >= 0xF0 && c <= 0xF4)
        return 4;
    return 0;
}

/* RFC 3629 validation. The lead byte fixes the length and the allowed
 * range of the second byte; later bytes need only be continuations. */
int tok_utf8_valid(const char *str, size_t len)
{
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    while (i < len) {
        /* ASCII dominates prompts: skip it eight bytes at a time. */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        size_t n = lead_len(s[i]);
        if (!n || i + n > len)
            return 0;
        if (n > 1) {
            uint8_t lo, hi;
            second_byte_range(s[i], &lo, &hi);
            if (s[i + 1] < lo || s[i + 1] > hi)
                return 0;
            for (size_t k = 2; k < n; k++)
                if ((s[i + k] & 0xC0) != 0x80)
                    return 0;
        }
        i += n;
    }
    return 1;
}

/* Bounded output for the decoder: writes past cap are a caller bug (the cap
 * contract in tokenizer.h), caught by assert in debug builds and dropped in
 * release builds rather than overrunning the buffer. */
struct out_buf {
    char *p;
    size_t n, cap;
};

static void out_bytes(struct out_buf *o, const void *b, size_t n)
{
    assert(o->n + n <= o->cap);
    if (o->n + n > o->cap)
        return;
    memcpy(o->p + o->n, b, n);
    o->n += n;
}

static void out_replacement(struct out_buf *o)
{
    out_bytes(o, "\xEF\xBF\xBD", 3);
}

/* Feed one byte to the decoder. d->pending holds a valid, incomplete prefix
 * of one sequence; that prefix is all the state the WHATWG algorithm needs. */
static void decode_byte(struct tok_decoder *d, uint8_t c, struct out_buf *o)
{
    for (;;) {
        if (d->n_pending == 0) {
            size_t n = lead_len(c);
            if (n == 1)
                out_bytes(o, &c, 1);
            else if (n == 0)
                out_replacement(o);
            else
                d->pending[d->n_pending++] = (char)c;
            return;
        }
        uint8_t lead = (uint8_t)d->pending[0];
        uint8_t lo = 0x80, hi = 0xBF;
        if (d->n_pending == 1)
            second_byte_range(lead, &lo, &hi);
        if (c < lo || c > hi) {
            /* The held bytes are a maximal invalid subpart: one U+FFFD for
             * all of them, then c starts afresh. */
            out_replacement(o);
            d->n_pending = 0;
            continue;
        }
        d->pending[d->n_pending++] = (char)c;
        if (d->n_pending == lead_len(lead)) {
            out_bytes(o, d->pending, d->n_pending);
            d->n_pending = 0;
        }
        return;
    }
}

/* prev starts at -1, "no previous token", which the llama2.c format needs
 * to strip the space after BOS. */
void tok_decoder_init(struct tok_decoder *d, const struct tokenizer *t)
{
    memset(d, 0, sizeof(*d));
    d->t = t;
    d->prev = -1;
}

/* Unknown ids (token_bytes NULL) add nothing: a sampler can in principle
 * pick an id of the model's padded vocab that the tokenizer lacks, and the
 * stream must go on. */
size_t tok_decoder_push(struct tok_decoder *d, int32_t id, char *out, size_t cap)
{
    struct out_buf o = { out, 0, cap };
    size_t len = 0;
    const char *b = d->t->ops->token_bytes(d->t, d->prev, id, &len);
    d->prev = id;
    if (!b)
        return 0;
    /* Whole runs of ASCII pass straight through when nothing is held. */
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)b[i];
        if (c < 0x80 && d->n_pending == 0) {
            size_t j = i;
            while (j < len && (uint8_t)b[j] < 0x80)
                j++;
            out_bytes(&o, b + i, j - i);
            i = j - 1;
            continue;
        }
        decode_byte(d, c, &o);
    }
    return o.n;
}

size_t tok_decoder_flush(struct tok_decoder *d, char *out, size_t cap)
{
    struct out_buf o = { out, 0, cap };
    /* A sequence cut off by the end of the stream is one maximal subpart. */
    if (d->n_pending)
        out_replacement(&o);
    d->n_pending = 0;
    return o.n;
}

/* Whole-sequence decode through the streaming decoder, so both paths give
 * the same text by construction. The buffer grows before each token by the
 * token's worst case, so no push can be cut short. */
int tok_decode(const struct tokenizer *t, const int32_t *ids, size_t n, char **out, size_t *len)
{
    struct tok_decoder d;
    char *s = NULL;
    size_t used = 0, cap = 0;

    tok_decoder_init(&d, t);
    for (size_t i = 0; i <= n; i++) {
        size_t tl = 0;
        if (i < n)
            t->ops->token_bytes(t, d.prev, ids[i], &tl);
        size_t need = used + TOK_DECODE_CAP(tl) + 1;
        if (need > cap) {
            size_t ncap = cap ? cap : 256;
            while (ncap < need)
                ncap *= 2;
            char *ns = realloc(s, ncap);
            if (!ns) {
                free(s);
                return TOK_ENOMEM;
            }
            s = ns;
            cap = ncap;
        }
        if (i < n)
            used += tok_decoder_push(&d, ids[i], s + used, cap - used);
        else
            used += tok_decoder_flush(&d, s + used, cap - used);
    }
    s[used] = '\0';
    *out = s;
    *len = used;
    return TOK_OK;
}
