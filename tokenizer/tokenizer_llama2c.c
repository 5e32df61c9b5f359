/* tokenizer_llama2c.c: llama2.c's tokenizer.bin; see tokenizer_llama2c.h. */
#include "tokenizer/tokenizer_llama2c.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A sane upper bound; the real files have 32000 tokens at most. */
#define MAX_VOCAB (1 << 21)
#define MAX_PIECE 1024

struct tok_llama2c {
    struct tokenizer base;
    int max_len;            /* longest piece in bytes */
    char **piece;           /* NUL-terminated pieces */
    int *len;
    float *score;
    int32_t *slots;         /* open-addressing hash: piece -> id, -1 empty */
    size_t mask;
    unsigned char bytes[256];   /* what "<0xHH>" decodes to */
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;    /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* The id of piece s[0..n), or -1. Pieces longer than any in the vocabulary
 * are rejected before hashing: the merge loop asks about many of them. */
static int32_t find(const struct tok_llama2c *t, const char *s, size_t n)
{
    if (n == 0 || n > (size_t)t->max_len)
        return -1;
    for (size_t i = hash_bytes(s, n) & t->mask;; i = (i + 1) & t->mask) {
        int32_t id = t->slots[i];
        if (id < 0)
            return -1;
        if ((size_t)t->len[id] == n && memcmp(t->piece[id], s, n) == 0)
            return id;
    }
}

/* "<0xHH>" -> the byte, else -1. */
static int byte_piece(const char *p, int len)
{
    static const char hex[] = "0123456789ABCDEF";
    if (len != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>')
        return -1;
    const char *hi = memchr(hex, p[3], 16), *lo = memchr(hex, p[4], 16);
    if (!hi || !lo || !p[3] || !p[4])
        return -1;
    return (int)((hi - hex) * 16 + (lo - hex));
}

/* ---- BPE merge: a linked list of symbols and a heap of candidate pairs ---- */

struct sym {
    int32_t id;
    int prev, next;         /* list links, -1 at the ends */
    int start;              /* byte offset in the text: orders equal scores */
    int alive;
};

struct pair {
    float score;
    int left, right;        /* symbol indices */
    int32_t id;             /* the merged token */
    int32_t left_id, right_id;  /* what the symbols held when queued */
};

/* Heap order: higher score first, then the leftmost pair. */
static int pair_before(const struct pair *a, const struct pair *b, const struct sym *s)
{
    if (a->score != b->score)
        return a->score > b->score;
    return s[a->left].start < s[b->left].start;
}

struct heap {
    struct pair *v;
    size_t n, cap;
};

static int heap_push(struct heap *h, const struct pair *p, const struct sym *s)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct pair *nv = realloc(h->v, cap * sizeof(*nv));
        if (!nv)
            return -1;
        h->v = nv;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!pair_before(p, &h->v[up], s))
            break;
        h->v[i] = h->v[up];
        i = up;
    }
    h->v[i] = *p;
    return 0;
}

static struct pair heap_pop(struct heap *h, const struct sym *s)
{
    struct pair top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = l;
        if (l >= h->n)
            break;
        if (r < h->n && pair_before(&h->v[r], &h->v[l], s))
            m = r;
        if (!pair_before(&h->v[m], &last, s))
            break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (h->n)
        h->v[i] = last;
    return top;
}

/* Queue the pair (a, a.next) if its concatenation is a token. llama2.c's
 * merge loop starts from a best score of -1e10, so nothing at or below that
 * ever merges; the same bound keeps the results identical. */
static int try_pair(const struct tok_llama2c *t, struct sym *s, int a, struct heap *h, char *buf)
{
    if (a < 0 || s[a].next < 0)
        return 0;
    int b = s[a].next;
    int la = t->len[s[a].id], lb = t->len[s[b].id];
    if (la + lb > t->max_len)
        return 0;
    memcpy(buf, t->piece[s[a].id], (size_t)la);
    memcpy(buf + la, t->piece[s[b].id], (size_t)lb);
    int32_t id = find(t, buf, (size_t)(la + lb));
    if (id < 0 || !(t->score[id] > -1e10f))
        return 0;
    struct pair p = {t->score[id], a, b, id, s[a].id, s[b].id};
    return heap_push(h, &p, s);
}

/* llama2.c's encode with a heap instead of its O(n^2) rescan. The heap
 * pops pairs in the order llama2.c would merge them (best score, then
 * leftmost); pairs made stale by an earlier merge are skipped when popped,
 * which is what checking the symbols' ids against the queued ones does. */
static int encode(const struct tokenizer *tk, const char *text, size_t len, unsigned flags,
                  struct tok_ids *out)
{
    const struct tok_llama2c *t = (const struct tok_llama2c *)tk;
    (void)flags;    /* the format has no special-token text to allow */
    if (len == 0)
        return TOK_OK;
    if (!tok_utf8_valid(text, len))
        return TOK_EINVAL;
    if (len > (size_t)INT32_MAX / 4)
        return TOK_ENOMEM;

    /* One symbol per character (or per byte when the character has no
     * piece), the dummy-prefix space first. */
    struct sym *s = malloc(sizeof(*s) * (len + 1));
    char *buf = malloc((size_t)t->max_len * 2 + 8);
    struct heap h = {0};
    int n = 0, rc = TOK_ENOMEM;
    if (!s || !buf)
        goto out;

    int32_t sp = find(t, " ", 1);
    s[n++] = (struct sym){sp >= 0 ? sp : (' ' + 3 < t->base.vocab_size ? ' ' + 3 : 0), -1, -1, -1, 1};
    for (size_t i = 0; i < len;) {
        size_t cl = 1;
        while (i + cl < len && cl < 4 && ((unsigned char)text[i + cl] & 0xC0) == 0x80)
            cl++;
        int32_t id = find(t, text + i, cl);
        if (id >= 0) {
            s[n] = (struct sym){id, -1, -1, (int)i, 1};
            n++;
        } else {
            /* Byte fallback: "<0xHH>" is id HH + 3; <unk> if the vocabulary has none. */
            for (size_t j = 0; j < cl; j++, n++) {
                int32_t b = (unsigned char)text[i + j] + 3;
                s[n] = (struct sym){b < t->base.vocab_size ? b : 0, -1, -1, (int)(i + j), 1};
            }
        }
        i += cl;
    }
    for (int i = 0; i < n; i++) {
        s[i].prev = i - 1;
        s[i].next = i + 1 < n ? i + 1 : -1;
    }
    for (int i = 0; i + 1 < n; i++)
        if (try_pair(t, s, i, &h, buf) != 0)
            goto out;

    while (h.n) {
        struct pair p = heap_pop(&h, s);
        /* Stale: one side was merged away or changed since it was queued. */
        if (!s[p.left].alive || !s[p.right].alive || s[p.left].next != p.right ||
            s[p.left].id != p.left_id || s[p.right].id != p.right_id)
            continue;
        s[p.left].id = p.id;
        s[p.right].alive = 0;
        s[p.left].next = s[p.right].next;
        if (s[p.right].next >= 0)
            s[s[p.right].next].prev = p.left;
        if (try_pair(t, s, s[p.left].prev, &h, buf) != 0 || try_pair(t, s, p.left, &h, buf) != 0)
            goto out;
    }
    if (tok_ids_reserve(out, (size_t)n) != TOK_OK)
        goto out;
    for (int i = 0; i >= 0; i = s[i].next)
        out->v[out->n++] = s[i].id;
    rc = TOK_OK;
out:
    free(h.v);
    free(buf);
    free(s);
    return rc;
}

/* A token's bytes as llama2.c prints them: raw bytes for "<0xHH>", and no
 * leading space right after BOS (sentencepiece's dummy prefix). */
static const char *token_bytes(const struct tokenizer *tk, int32_t prev, int32_t id, size_t *len)
{
    const struct tok_llama2c *t = (const struct tok_llama2c *)tk;
    if (id < 0 || id >= t->base.vocab_size) {
        *len = 0;
        return NULL;
    }
    const char *p = t->piece[id];
    int n = t->len[id];
    int b = byte_piece(p, n);
    if (b >= 0) {
        *len = 1;
        return (const char *)&t->bytes[b];
    }
    if (prev == t->base.bos_id && n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    *len = (size_t)n;
    return p;
}

static int32_t lookup(const struct tokenizer *tk, const char *piece)
{
    return find((const struct tok_llama2c *)tk, piece, strlen(piece));
}

static void tl_free(struct tokenizer *tk)
{
    struct tok_llama2c *t = (struct tok_llama2c *)tk;
    if (!t)
        return;
    if (t->piece)
        for (int i = 0; i < t->base.vocab_size; i++)
            free(t->piece[i]);
    free(t->piece);
    free(t->len);
    free(t->score);
    free(t->slots);
    free(t);
}

static const struct tokenizer_ops llama2c_ops = {
    .encode = encode,
    .token_bytes = token_bytes,
    .lookup = lookup,
    .free = tl_free,
};

/* Grow the per-token arrays to hold cap tokens (the count is only known
 * at the end of the file when the caller does not say). */
static int grow(struct tok_llama2c *t, int cap)
{
    char **p = realloc(t->piece, sizeof(*p) * (size_t)cap);
    if (!p)
        return -1;
    t->piece = p;
    int *l = realloc(t->len, sizeof(*l) * (size_t)cap);
    if (!l)
        return -1;
    t->len = l;
    float *s = realloc(t->score, sizeof(*s) * (size_t)cap);
    if (!s)
        return -1;
    t->score = s;
    return 0;
}

static int load_stream(FILE *f, const char *path, int vocab_size, struct tokenizer **out,
                       char *err, size_t errlen);

int tok_llama2c_load(const char *path, int vocab_size, struct tokenizer **out, char *err,
                     size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return TOK_EIO;
    }
    int rc = load_stream(f, path, vocab_size, out, err, errlen);
    fclose(f);
    return rc;
}

int tok_llama2c_load_buffer(const void *buf, size_t len, const char *name, int vocab_size,
                            struct tokenizer **out, char *err, size_t errlen)
{
    *out = NULL;
    if (len == 0) { /* fmemopen refuses an empty buffer; so would the header check */
        set_err(err, errlen, "%s: bad or missing header (max token length)", name);
        return TOK_EFORMAT;
    }
    /* Read-only mode: fmemopen never writes to buf, so the cast is safe. */
    FILE *f = fmemopen((void *)buf, len, "rb");
    if (!f) {
        set_err(err, errlen, "%s: %s", name, strerror(errno));
        return TOK_ENOMEM;
    }
    int rc = load_stream(f, name, vocab_size, out, err, errlen);
    fclose(f);
    return rc;
}

/* Read a tokenizer.bin from f (the caller closes it); path names it in
 * messages. Every length is checked before it is used to read or allocate. */
static int load_stream(FILE *f, const char *path, int vocab_size, struct tokenizer **out,
                       char *err, size_t errlen)
{
    struct tok_llama2c *t = calloc(1, sizeof(*t));
    int rc = TOK_ENOMEM, cap = 0;

    if (!t) {
        set_err(err, errlen, "out of memory");
        return TOK_ENOMEM;
    }
    t->base.ops = &llama2c_ops;
    t->base.bos_id = 1;
    t->base.eos_id = 2;
    if (vocab_size > MAX_VOCAB) {
        set_err(err, errlen, "%s: vocabulary of %d tokens is too large", path, vocab_size);
        rc = TOK_EFORMAT;
        goto fail;
    }
    int32_t max_len;
    if (fread(&max_len, sizeof(max_len), 1, f) != 1 || max_len < 1 || max_len > MAX_PIECE) {
        set_err(err, errlen, "%s: bad or missing header (max token length)", path);
        rc = TOK_EFORMAT;
        goto fail;
    }
    for (int i = 0; vocab_size <= 0 || i < vocab_size; i++) {
        float score;
        int32_t len;
        size_t got = fread(&score, sizeof(score), 1, f);
        if (got != 1 && vocab_size <= 0 && feof(f))
            break;
        if (got != 1 || fread(&len, sizeof(len), 1, f) != 1) {
            set_err(err, errlen, "%s: truncated at token %d (of %d)", path, i, vocab_size);
            rc = TOK_EFORMAT;
            goto fail;
        }
        if (len < 0 || len > max_len) {
            set_err(err, errlen, "%s: token %d has length %d (max %d)", path, i, len, max_len);
            rc = TOK_EFORMAT;
            goto fail;
        }
        if (i == cap) {
            cap = cap ? cap * 2 : 512;
            if (vocab_size > 0 && cap > vocab_size)
                cap = vocab_size;
            if (cap > MAX_VOCAB || grow(t, cap) != 0) {
                set_err(err, errlen, "%s: out of memory or too many tokens", path);
                goto fail;
            }
        }
        char *p = malloc((size_t)len + 1);
        if (!p) {
            set_err(err, errlen, "out of memory");
            goto fail;
        }
        t->piece[i] = p;
        t->base.vocab_size = i + 1;
        if (len && fread(p, 1, (size_t)len, f) != (size_t)len) {
            set_err(err, errlen, "%s: truncated in the text of token %d", path, i);
            rc = TOK_EFORMAT;
            goto fail;
        }
        p[len] = '\0';
        t->len[i] = len;
        t->score[i] = score;
        if (len > t->max_len)
            t->max_len = len;
    }
    if (t->base.vocab_size < 3) {
        set_err(err, errlen, "%s: only %d tokens", path, t->base.vocab_size);
        rc = TOK_EFORMAT;
        goto fail;
    }

    /* Hash table at most half full. When a piece appears twice, the first
     * id wins, as with llama2.c's sorted-vocabulary bsearch in practice. */
    size_t slots = 16;
    while (slots < (size_t)t->base.vocab_size * 2)
        slots *= 2;
    t->slots = malloc(sizeof(*t->slots) * slots);
    if (!t->slots) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    memset(t->slots, 0xff, sizeof(*t->slots) * slots);
    t->mask = slots - 1;
    for (int32_t id = 0; id < t->base.vocab_size; id++) {
        if (t->len[id] == 0 || find(t, t->piece[id], (size_t)t->len[id]) >= 0)
            continue;
        size_t i = hash_bytes(t->piece[id], (size_t)t->len[id]) & t->mask;
        while (t->slots[i] >= 0)
            i = (i + 1) & t->mask;
        t->slots[i] = id;
    }
    for (int b = 0; b < 256; b++)
        t->bytes[b] = (unsigned char)b;
    *out = &t->base;
    return TOK_OK;

fail:
    tl_free(&t->base);
    return rc;
}

float tok_llama2c_score(const struct tokenizer *tk, int32_t id)
{
    const struct tok_llama2c *t = (const struct tok_llama2c *)tk;
    return id >= 0 && id < t->base.vocab_size ? t->score[id] : 0.0f;
}
