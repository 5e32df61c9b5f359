/* json_constraint.c: the JSON grammar, the vocabulary's trie and the mask;
 * see json_constraint.h. */
#include "engines/native/runtime/json_constraint.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* The grammar                                                               */
/* ------------------------------------------------------------------------ */

static const char *const literals[] = {"true", "false", "null"};
static const uint8_t literal_len[] = {4, 5, 4};

void json_state_init(struct json_state *s)
{
    memset(s, 0, sizeof(*s));
    s->mode = JC_START;
}

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int top_is_array(const struct json_state *s)
{
    return (s->arrays >> (s->depth - 1)) & 1u;
}

/* A scalar value ended inside a container (depth >= 1: the only top-level
 * value is the object itself). */
static void value_end(struct json_state *s)
{
    s->mode = JC_AFTER;
    s->ws = 0;
}

/* '{' or '['. Refused past JSON_MAX_DEPTH, so the bit stack cannot overflow
 * and a looping model cannot nest forever. */
static int open_container(struct json_state *s, int array)
{
    if (s->depth >= JSON_MAX_DEPTH)
        return 0;
    if (array)
        s->arrays |= 1u << s->depth;
    else
        s->arrays &= ~(1u << s->depth);
    s->depth++;
    s->mode = array ? JC_ARR_FIRST : JC_OBJ_FIRST;
    return 1;
}

/* '}' or ']' closing the innermost container; closing the outermost one
 * completes the answer. */
static void close_container(struct json_state *s)
{
    s->depth--;
    s->mode = s->depth ? JC_AFTER : JC_DONE;
}

/* The first byte of a value (JC_VALUE, JC_ARR_FIRST). */
static int start_value(struct json_state *s, unsigned char c)
{
    switch (c) {
    case '{': return open_container(s, 0);
    case '[': return open_container(s, 1);
    case '"': s->mode = JC_STRING; s->key = 0; s->utf8_need = 0; return 1;
    case '-': s->mode = JC_NUM_MINUS; return 1;
    case '0': s->mode = JC_NUM_ZERO; return 1;
    case 't': s->mode = JC_LITERAL; s->lit = 0; s->count = 1; return 1;
    case 'f': s->mode = JC_LITERAL; s->lit = 1; s->count = 1; return 1;
    case 'n': s->mode = JC_LITERAL; s->lit = 2; s->count = 1; return 1;
    default:
        if (c >= '1' && c <= '9') {
            s->mode = JC_NUM_INT;
            return 1;
        }
        return 0;
    }
}

/* Outside strings, literals and numbers: whitespace (bounded), then the
 * one structural byte each mode takes. */
static int structural(struct json_state *s, unsigned char c)
{
    if (is_ws(c))
        return ++s->ws <= JSON_MAX_WS;
    s->ws = 0;
    switch ((enum json_mode)s->mode) {
    case JC_START:
        return c == '{' && open_container(s, 0);
    case JC_OBJ_FIRST:
        if (c == '}') {
            close_container(s);
            return 1;
        }
        /* a key, as after ',' */
        /* fall through */
    case JC_OBJ_KEY:
        if (c != '"')
            return 0;
        s->mode = JC_STRING;
        s->key = 1;
        s->utf8_need = 0;
        return 1;
    case JC_COLON:
        if (c != ':')
            return 0;
        s->mode = JC_VALUE;
        return 1;
    case JC_ARR_FIRST:
        if (c == ']') {
            close_container(s);
            return 1;
        }
        return start_value(s, c);
    case JC_VALUE:
        return start_value(s, c);
    case JC_AFTER:
        if (c == ',') {
            s->mode = top_is_array(s) ? JC_VALUE : JC_OBJ_KEY;
            return 1;
        }
        if (c == (top_is_array(s) ? ']' : '}')) {
            close_container(s);
            return 1;
        }
        return 0;
    default:    /* JC_DONE */
        return 0;
    }
}

/* A byte inside a string: UTF-8 checked as RFC 3629 defines it (no
 * overlong forms, no surrogates, nothing past U+10FFFF), since the client
 * must be able to parse what we send. */
static int string_byte(struct json_state *s, unsigned char c)
{
    if (s->utf8_need) {
        if (c < s->utf8_lo || c > s->utf8_hi)
            return 0;
        s->utf8_need--;
        s->utf8_lo = 0x80;
        s->utf8_hi = 0xBF;
        return 1;
    }
    if (c == '"') {
        if (s->key) {
            s->mode = JC_COLON;
            s->ws = 0;
        } else {
            value_end(s);
        }
        return 1;
    }
    if (c == '\\') {
        s->mode = JC_ESCAPE;
        return 1;
    }
    if (c < 0x20)
        return 0;       /* control characters must be escaped */
    if (c < 0x80)
        return 1;
    uint8_t need, lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
        return 0;
    s->utf8_need = need;
    s->utf8_lo = lo;
    s->utf8_hi = hi;
    return 1;
}

int json_feed(struct json_state *s, unsigned char c)
{
    switch ((enum json_mode)s->mode) {
    case JC_STRING:
        return string_byte(s, c);
    case JC_ESCAPE:
        if (c == 'u') {
            s->mode = JC_HEX;
            s->count = 4;
            return 1;
        }
        if (!strchr("\"\\/bfnrt", c) || c == '\0')
            return 0;
        s->mode = JC_STRING;
        return 1;
    case JC_HEX:
        if (!is_digit(c) && !((c | 0x20) >= 'a' && (c | 0x20) <= 'f'))
            return 0;
        if (--s->count == 0)
            s->mode = JC_STRING;
        return 1;
    case JC_LITERAL:
        if (c != (unsigned char)literals[s->lit][s->count])
            return 0;
        if (++s->count == literal_len[s->lit])
            value_end(s);
        return 1;
    case JC_NUM_MINUS:
        if (!is_digit(c))
            return 0;
        s->mode = c == '0' ? JC_NUM_ZERO : JC_NUM_INT;
        return 1;
    case JC_NUM_DOT:
        if (!is_digit(c))
            return 0;
        s->mode = JC_NUM_FRAC;
        return 1;
    case JC_NUM_E:
        if (c == '+' || c == '-') {
            s->mode = JC_NUM_ESIGN;
            return 1;
        }
        /* fall through */
    case JC_NUM_ESIGN:
        if (!is_digit(c))
            return 0;
        s->mode = JC_NUM_EXP;
        return 1;
    case JC_NUM_ZERO:
    case JC_NUM_INT:
    case JC_NUM_FRAC:
    case JC_NUM_EXP:
        /* A number may go on; any other byte ends it and is then read as
         * what follows the value. */
        if (is_digit(c) && s->mode != JC_NUM_ZERO)
            return 1;
        if (c == '.' && s->mode != JC_NUM_FRAC && s->mode != JC_NUM_EXP) {
            s->mode = JC_NUM_DOT;
            return 1;
        }
        if ((c == 'e' || c == 'E') && s->mode != JC_NUM_EXP) {
            s->mode = JC_NUM_E;
            return 1;
        }
        value_end(s);
        return structural(s, c);
    default:
        return structural(s, c);
    }
}

int json_feed_bytes(struct json_state *s, const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!json_feed(s, (unsigned char)p[i]))
            return 0;
    return 1;
}

/* The shortest completion: finish the item in hand with the fewest bytes
 * (close the string, a 1-byte value "0", the rest of a literal), then one
 * closer per open container. */
int json_min_close(const struct json_state *s)
{
    const int d = s->depth, key = s->key ? 2 : 0;     /* a key still needs ":0" */
    switch ((enum json_mode)s->mode) {
    case JC_START: return 2;                          /* {} */
    case JC_OBJ_KEY: return 4 + d;                    /* "":0 */
    case JC_COLON: return 2 + d;                      /* :0 */
    case JC_VALUE: return 1 + d;                      /* 0 */
    case JC_STRING: return s->utf8_need + 1 + key + d;
    case JC_ESCAPE: return 2 + key + d;               /* n" */
    case JC_HEX: return s->count + 1 + key + d;
    case JC_LITERAL: return literal_len[s->lit] - s->count + d;
    case JC_NUM_MINUS:
    case JC_NUM_DOT:
    case JC_NUM_E:
    case JC_NUM_ESIGN: return 1 + d;                  /* a digit */
    case JC_DONE: return 0;
    default: return d;  /* OBJ_FIRST, ARR_FIRST, AFTER, a complete number */
    }
}

/* ------------------------------------------------------------------------ */
/* The vocabulary                                                            */
/* ------------------------------------------------------------------------ */

enum { TOK_NEVER, TOK_PLAIN, TOK_OTHER };

/* A trie node: the byte that leads to it, its first child and next sibling
 * (0 = none: the root, node 0, is nobody's child), and the first token
 * whose bytes end here (others with the same bytes chain in tok_next). */
struct jnode {
    uint32_t child, sibling;
    int32_t tok;
    uint8_t byte;
};

struct json_vocab {
    int32_t n;
    uint8_t *kind;          /* [n] TOK_* */
    uint32_t *off;          /* [n] each token's bytes in blob */
    uint32_t *len;          /* [n] */
    char *blob;
    int32_t *tok_next;      /* [n] the next token ending at the same node, or -1 */
    int32_t *other;         /* the tokens that are not plain (never included) */
    int32_t n_other, n_plain;
    struct jnode *nodes;
    uint32_t n_nodes;
    uint32_t max_len;
    size_t bytes;
};

struct json_scratch {
    int32_t *ids;           /* [n] allowed tokens */
    float *vals;            /* [n] their logits while the rest is cleared */
    struct frame {
        uint32_t child;     /* the next child of this frame's node to try */
        struct json_state st;
    } *stack;               /* [max_len + 1] */
};

/* Valid UTF-8, no '"', '\\' or control bytes: inside a string such a token
 * is always accepted and leaves the state as it found it. */
static int plain(const char *p, size_t len)
{
    struct json_state s;
    json_state_init(&s);
    s.mode = JC_STRING;
    s.depth = 1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\' || !json_feed(&s, c))
            return 0;
    }
    return s.utf8_need == 0;
}

/* Tokens by their bytes, lexicographically (a prefix first); ties by id so
 * the trie's token lists do not depend on qsort. */
static int cmp_tokens(const void *a, const void *b, void *ctx)
{
    const struct json_vocab *v = ctx;
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    const uint32_t lx = v->len[x], ly = v->len[y];
    int c = memcmp(v->blob + v->off[x], v->blob + v->off[y], lx < ly ? lx : ly);
    if (c)
        return c;
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

struct json_vocab *json_vocab_new(int32_t n, json_token_bytes_fn bytes, void *ctx)
{
    if (n <= 0)
        return NULL;
    int32_t *order = NULL, n_order = 0;    /* the tokens with bytes, to be sorted */
    struct json_vocab *v = calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    v->n = n;
    v->kind = calloc((size_t)n, 1);
    v->off = calloc((size_t)n, sizeof(*v->off));
    v->len = calloc((size_t)n, sizeof(*v->len));
    v->tok_next = malloc((size_t)n * sizeof(*v->tok_next));
    v->other = malloc((size_t)n * sizeof(*v->other));
    if (!v->kind || !v->off || !v->len || !v->tok_next || !v->other)
        goto fail;

    /* Pass 1: sizes, so the blob and the trie are allocated once. */
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t l = 0;
        const char *p = bytes(ctx, i, &l);
        if (!p || l == 0 || l > UINT32_MAX / 2)
            continue;
        total += l;
        if (total > UINT32_MAX / 2)
            goto fail;
    }
    v->blob = malloc(total ? total : 1);
    v->nodes = calloc(total + 1, sizeof(*v->nodes));
    order = malloc((size_t)n * sizeof(*order));
    if (!v->blob || !v->nodes || !order)
        goto fail;
    v->nodes[0].tok = -1;
    v->n_nodes = 1;

    /* Pass 2: copy each token's bytes, classify it, and insert it. */
    uint32_t at = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t l = 0;
        const char *p = bytes(ctx, i, &l);
        v->tok_next[i] = -1;
        if (!p || l == 0 || l > UINT32_MAX / 2 || at + l > total) {
            v->kind[i] = TOK_NEVER;
            v->other[v->n_other++] = i;
            continue;
        }
        memcpy(v->blob + at, p, l);
        v->off[i] = at;
        v->len[i] = (uint32_t)l;
        at += (uint32_t)l;
        if (l > v->max_len)
            v->max_len = (uint32_t)l;
        if (plain(p, l)) {
            v->kind[i] = TOK_PLAIN;
            v->n_plain++;
        } else {
            v->kind[i] = TOK_OTHER;
            v->other[v->n_other++] = i;
        }
        order[n_order++] = i;
    }
    /* Pass 3: the trie, inserting tokens in byte order. Then a node's
     * children are made in increasing byte order and every token through a
     * child comes before the next child is made, so the child a token needs
     * is either the newest (the list's head) or new: O(1) per byte, where a
     * search of the sibling list cost over a second on a 129k vocabulary. */
    qsort_r(order, (size_t)n_order, sizeof(*order), cmp_tokens, v);
    for (int32_t k = 0; k < n_order; k++) {
        const int32_t i = order[k];
        const char *p = v->blob + v->off[i];
        uint32_t node = 0;
        for (size_t j = 0; j < v->len[i]; j++) {
            uint8_t b = (uint8_t)p[j];
            uint32_t c = v->nodes[node].child;
            if (!c || v->nodes[c].byte != b) {
                c = v->n_nodes++;
                v->nodes[c] = (struct jnode){0, v->nodes[node].child, -1, b};
                v->nodes[node].child = c;
            }
            node = c;
        }
        v->tok_next[i] = v->nodes[node].tok;
        v->nodes[node].tok = i;
    }
    free(order);
    v->bytes = sizeof(*v) + (size_t)n * (1 + 4 * sizeof(uint32_t)) + total +
               (size_t)v->n_nodes * sizeof(*v->nodes);
    return v;

fail:
    free(order);
    json_vocab_free(v);
    return NULL;
}

void json_vocab_free(struct json_vocab *v)
{
    if (!v)
        return;
    free(v->kind);
    free(v->off);
    free(v->len);
    free(v->blob);
    free(v->tok_next);
    free(v->other);
    free(v->nodes);
    free(v);
}

int32_t json_vocab_size(const struct json_vocab *v)
{
    return v->n;
}

size_t json_vocab_bytes(const struct json_vocab *v)
{
    return v->bytes;
}

struct json_scratch *json_scratch_new(const struct json_vocab *v)
{
    struct json_scratch *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->ids = malloc((size_t)v->n * sizeof(*s->ids));
    s->vals = malloc((size_t)v->n * sizeof(*s->vals));
    s->stack = malloc(((size_t)v->max_len + 1) * sizeof(*s->stack));
    if (!s->ids || !s->vals || !s->stack) {
        json_scratch_free(s);
        return NULL;
    }
    return s;
}

void json_scratch_free(struct json_scratch *s)
{
    if (!s)
        return;
    free(s->ids);
    free(s->vals);
    free(s->stack);
    free(s);
}

/* Inside a string with no character half read, the commonest state: plain
 * tokens keep the state, so they are allowed together when the budget
 * still holds for it; only the others are fed one by one. */
static int mask_in_string(const struct json_vocab *v, const struct json_state *s, int left,
                          float *logits)
{
    int n_ok = 0;
    for (int32_t k = 0; k < v->n_other; k++) {
        int32_t id = v->other[k];
        struct json_state t = *s;
        if (v->kind[id] == TOK_OTHER && json_feed_bytes(&t, v->blob + v->off[id], v->len[id]) &&
            json_min_close(&t) <= left)
            n_ok++;
        else
            logits[id] = -INFINITY;
    }
    if (json_min_close(s) <= left)
        return n_ok + v->n_plain;
    for (int32_t id = 0; id < v->n; id++)
        if (v->kind[id] == TOK_PLAIN)
            logits[id] = -INFINITY;
    return n_ok;
}

/* Elsewhere, few tokens fit: walk the trie from s, depth first, never
 * entering the subtree of a rejected byte, and collect the tokens whose
 * last byte leaves a state that can still close in `left` tokens. Then
 * every other logit is cleared at once. */
static int mask_by_trie(const struct json_vocab *v, struct json_scratch *sc,
                        const struct json_state *s, int left, float *logits)
{
    int n_ok = 0, sp = 0;
    sc->stack[0].child = v->nodes[0].child;
    sc->stack[0].st = *s;
    while (sp >= 0) {
        struct frame *f = &sc->stack[sp];
        uint32_t c = f->child;
        if (!c) {
            sp--;
            continue;
        }
        f->child = v->nodes[c].sibling;
        struct json_state t = f->st;
        if (!json_feed(&t, v->nodes[c].byte))
            continue;
        if (v->nodes[c].tok >= 0 && json_min_close(&t) <= left)
            for (int32_t id = v->nodes[c].tok; id >= 0; id = v->tok_next[id])
                sc->ids[n_ok++] = id;
        if (v->nodes[c].child) {
            /* depth <= max_len: a path of the trie is some token's bytes */
            sc->stack[++sp] = (struct frame){v->nodes[c].child, t};
        }
    }
    for (int k = 0; k < n_ok; k++)
        sc->vals[k] = logits[sc->ids[k]];
    for (int32_t id = 0; id < v->n; id++)
        logits[id] = -INFINITY;
    for (int k = 0; k < n_ok; k++)
        logits[sc->ids[k]] = sc->vals[k];
    return n_ok;
}

int json_constraint_mask(const struct json_vocab *v, struct json_scratch *sc,
                         const struct json_state *s, int left, float *logits)
{
    if (s->mode == JC_DONE) {
        for (int32_t id = 0; id < v->n; id++)
            logits[id] = -INFINITY;
        return 0;
    }
    if (s->mode == JC_STRING && s->utf8_need == 0)
        return mask_in_string(v, s, left, logits);
    return mask_by_trie(v, sc, s, left, logits);
}

int json_constraint_advance(const struct json_vocab *v, struct json_state *s, int32_t id)
{
    if (id < 0 || id >= v->n || v->kind[id] == TOK_NEVER)
        return 0;
    return json_feed_bytes(s, v->blob + v->off[id], v->len[id]);
}
