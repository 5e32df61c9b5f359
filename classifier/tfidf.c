#include "classifier/tfidf.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "classifier/trainer.h"
#include "common/mem.h"

/* The vocabulary: an open-addressing table of tokens. */
struct term {
    uint64_t hash;
    size_t off, len; /* in the arena */
    uint32_t index;  /* column, or UINT32_MAX for an empty slot */
    uint32_t df;
};

struct tfidf {
    struct term *slots;
    size_t n_slots, n_terms;
    char *arena;
    size_t arena_len, arena_cap;
    double *idf;     /* [n_terms] */
    double *w;       /* [n_terms] */
    double bias;
};

static int word_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Call fn(ctx, token, len) for each token of s; tok is lowercased into buf. */
static void tokens(const char *s, size_t n, void (*fn)(void *, const char *, size_t), void *ctx)
{
    char buf[256];
    for (size_t i = 0; i < n;) {
        if (!word_byte((unsigned char)s[i])) {
            i++;
            continue;
        }
        size_t start = i;
        while (i < n && word_byte((unsigned char)s[i]))
            i++;
        size_t len = i - start;
        if (len < 2)
            continue;
        if (len > sizeof buf)
            len = sizeof buf; /* a 256-byte "word" is noise; its prefix will do */
        for (size_t k = 0; k < len; k++)
            buf[k] = (char)lower((unsigned char)s[start + k]);
        fn(ctx, buf, len);
    }
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static struct term *lookup(const struct tfidf *t, const char *s, size_t n, uint64_t h)
{
    size_t mask = t->n_slots - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct term *e = &t->slots[i];
        if (e->index == UINT32_MAX)
            return e;
        if (e->hash == h && e->len == n && memcmp(t->arena + e->off, s, n) == 0)
            return e;
    }
}

static void grow(struct tfidf *t)
{
    struct term *old = t->slots;
    size_t n_old = t->n_slots;
    t->n_slots = n_old ? n_old * 2 : 1 << 16;
    t->slots = xmalloc(t->n_slots * sizeof *t->slots);
    for (size_t i = 0; i < t->n_slots; i++)
        t->slots[i].index = UINT32_MAX;
    for (size_t i = 0; i < n_old; i++) {
        if (old[i].index == UINT32_MAX)
            continue;
        *lookup(t, t->arena + old[i].off, old[i].len, old[i].hash) = old[i];
    }
    free(old);
}

/* Fitting, pass 1: add each distinct token of a document once to df. */
struct doc_ctx {
    struct tfidf *t;
    uint32_t doc;        /* current document id + 1, to count df once */
    uint32_t *last_doc;  /* per term */
    size_t last_cap;
};

static void add_token(void *ctx, const char *s, size_t n)
{
    struct doc_ctx *c = ctx;
    struct tfidf *t = c->t;
    if (2 * (t->n_terms + 1) > t->n_slots)
        grow(t);
    uint64_t h = hash_bytes(s, n);
    struct term *e = lookup(t, s, n, h);
    if (e->index == UINT32_MAX) {
        if (t->arena_len + n > t->arena_cap) {
            t->arena_cap = (t->arena_cap + n) * 2;
            t->arena = xrealloc(t->arena, t->arena_cap);
        }
        memcpy(t->arena + t->arena_len, s, n);
        *e = (struct term){.hash = h, .off = t->arena_len, .len = n, .index = (uint32_t)t->n_terms};
        t->arena_len += n;
        t->n_terms++;
        if (t->n_terms > c->last_cap) {
            c->last_cap = c->last_cap ? c->last_cap * 2 : 1 << 16;
            c->last_doc = xrealloc(c->last_doc, c->last_cap * sizeof *c->last_doc);
        }
        c->last_doc[e->index] = 0;
    }
    if (c->last_doc[e->index] != c->doc) {
        c->last_doc[e->index] = c->doc;
        e->df++;
    }
}

/* A document's sparse tf-idf vector: term columns with counts, merged. */
struct vec {
    const struct tfidf *t;
    uint32_t *idx;
    float *val;
    size_t n, cap;
};

static void vec_token(void *ctx, const char *s, size_t n)
{
    struct vec *v = ctx;
    if (v->t->n_slots == 0)
        return; /* an empty vocabulary */
    const struct term *e = lookup(v->t, s, n, hash_bytes(s, n));
    if (e->index == UINT32_MAX)
        return; /* not in the vocabulary */
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 256;
        v->idx = xrealloc(v->idx, v->cap * sizeof *v->idx);
        v->val = xrealloc(v->val, v->cap * sizeof *v->val);
    }
    v->idx[v->n] = e->index;
    v->val[v->n] = 1.0f;
    v->n++;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Tokens to (column, tf * idf), merged and L2-normalized, into v. */
static void vectorize(const struct tfidf *t, const char *s, size_t n, struct vec *v)
{
    v->t = t;
    v->n = 0;
    tokens(s, n, vec_token, v);
    if (v->n == 0)
        return;
    qsort(v->idx, v->n, sizeof *v->idx, cmp_u32);
    size_t m = 0;
    for (size_t i = 0; i < v->n; i++) {
        if (m > 0 && v->idx[m - 1] == v->idx[i]) {
            v->val[m - 1] += 1.0f;
        } else {
            v->idx[m] = v->idx[i];
            v->val[m] = 1.0f;
            m++;
        }
    }
    v->n = m;
    double norm = 0;
    for (size_t i = 0; i < m; i++) {
        double x = v->val[i] * t->idf[v->idx[i]];
        v->val[i] = (float)x;
        norm += x * x;
    }
    norm = sqrt(norm);
    for (size_t i = 0; i < m && norm > 0; i++)
        v->val[i] = (float)(v->val[i] / norm);
}

struct tfidf *tfidf_fit(const char *const *texts, const size_t *len, const int *y, const size_t *rows,
                        size_t n_rows, double C)
{
    struct tfidf *t = xcalloc(1, sizeof *t);
    struct doc_ctx dc = {.t = t};
    for (size_t r = 0; r < n_rows; r++) {
        dc.doc = (uint32_t)r + 1;
        tokens(texts[rows[r]], len[rows[r]], add_token, &dc);
    }
    free(dc.last_doc);
    t->idf = xmalloc((t->n_terms ? t->n_terms : 1) * sizeof *t->idf);
    for (size_t i = 0; i < t->n_slots; i++) {
        const struct term *e = &t->slots[i];
        if (e->index != UINT32_MAX)
            t->idf[e->index] = log((1.0 + (double)n_rows) / (1.0 + e->df)) + 1.0;
    }

    size_t *row_ptr = xmalloc((n_rows + 1) * sizeof *row_ptr), nnz = 0, cap = 1 << 20;
    uint32_t *idx = xmalloc(cap * sizeof *idx);
    float *val = xmalloc(cap * sizeof *val);
    int *ys = xmalloc(n_rows * sizeof *ys);
    struct vec v = {0};
    for (size_t r = 0; r < n_rows; r++) {
        vectorize(t, texts[rows[r]], len[rows[r]], &v);
        while (nnz + v.n > cap) {
            cap *= 2;
            idx = xrealloc(idx, cap * sizeof *idx);
            val = xrealloc(val, cap * sizeof *val);
        }
        row_ptr[r] = nnz;
        if (v.n) {
            memcpy(idx + nnz, v.idx, v.n * sizeof *idx);
            memcpy(val + nnz, v.val, v.n * sizeof *val);
        }
        nnz += v.n;
        ys[r] = y[rows[r]];
    }
    row_ptr[n_rows] = nnz;
    free(v.idx);
    free(v.val);

    struct trainer_design d = {
        .n = n_rows, .n_sparse = t->n_terms, .n_dense = 0, .row_ptr = row_ptr, .idx = idx, .val = val,
        .dense = NULL, .y = ys,
    };
    /* scikit-learn's sum-of-losses + |w|^2/(2C) is our mean-of-losses
     * objective with l2 = 1 / (C n). */
    struct trainer_opts o = {.l2_sparse = 1.0 / (C * (double)n_rows), .max_iter = 1000, .seed = 1};
    double *theta = xmalloc(trainer_n_params(&d, 0) * sizeof *theta), loss;
    trainer_fit_design(&d, &o, theta, &loss);
    t->bias = theta[0];
    t->w = xmalloc((t->n_terms ? t->n_terms : 1) * sizeof *t->w);
    memcpy(t->w, theta + 1, t->n_terms * sizeof *t->w);
    free(theta);
    free(row_ptr);
    free(idx);
    free(val);
    free(ys);
    return t;
}

void tfidf_free(struct tfidf *t)
{
    if (!t)
        return;
    free(t->slots);
    free(t->arena);
    free(t->idf);
    free(t->w);
    free(t);
}

float tfidf_score(const struct tfidf *t, const char *text, size_t len)
{
    struct vec v = {0};
    vectorize(t, text, len, &v);
    double z = t->bias;
    for (size_t i = 0; i < v.n; i++)
        z += t->w[v.idx[i]] * v.val[i];
    free(v.idx);
    free(v.val);
    return (float)(1.0 / (1.0 + exp(-z)));
}

size_t tfidf_vocab_size(const struct tfidf *t)
{
    return t->n_terms;
}
