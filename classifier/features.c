#include "classifier/features.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "classifier/options.h"

/* ---- text windows ------------------------------------------------------ */

/* The bytes we read: all of a short text, head and tail of a long one. */
struct windows {
    const unsigned char *p[2];
    size_t n[2];
    int count;
};

/* A prompt's question usually sits at its start or its end (an instruction
 * before a document, or a document before the question), so a long text is
 * read at both ends rather than cut at a fixed length. */
static void windows_of(const char *s, size_t len, struct windows *w)
{
    w->count = 0;
    if (!s || len == 0)
        return;
    const unsigned char *u = (const unsigned char *)s;
    if (len <= FEATURES_HEAD + FEATURES_TAIL) {
        w->p[0] = u;
        w->n[0] = len;
        w->count = 1;
        return;
    }
    w->p[0] = u;
    w->n[0] = FEATURES_HEAD;
    w->p[1] = u + len - FEATURES_TAIL;
    w->n[1] = FEATURES_TAIL;
    w->count = 2;
}

/* ---- sparse: hashed n-grams ------------------------------------------- */

/* norm[b]: lowercase ASCII letters, every digit as '0', every ASCII space
 * as ' '; other bytes (punctuation, UTF-8) as they are. */
static unsigned char norm[256];
/* wordc[b]: 1 for bytes that make up words (letters, digits, UTF-8). */
static unsigned char wordc[256];
/* cls[b]: byte classes for the dense signals. */
enum { C_ALPHA = 1, C_UPPER = 2, C_DIGIT = 4, C_HIGH = 8, C_SPECIAL = 16 };
static unsigned char cls[256];

static void tables_init(void)
{
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        else if (c >= '0' && c <= '9')
            c = '0';
        else if (c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r')
            c = ' ';
        norm[b] = c;
        wordc[b] = (c >= 'a' && c <= 'z') || c == '0' || c >= 0x80;
        cls[b] = (unsigned char)(((b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') ? C_ALPHA : 0) |
                                 (b >= 'A' && b <= 'Z' ? C_UPPER : 0) | (b >= '0' && b <= '9' ? C_DIGIT : 0) |
                                 (b >= 0x80 ? C_HIGH : 0) |
                                 (b && strchr("+*=^/-_\\$%{};()\"?.!", b) ? C_SPECIAL : 0));
    }
}

/* The tables are filled by a constructor, before main() and so before any
 * thread can score: no locking, and no first call sees a half-built table. */
__attribute__((constructor)) static void features_init(void)
{
    tables_init();
}

#define FNV_OFFSET 1469598103934665603ull
#define FNV_PRIME 1099511628211ull
/* Per-group salts keep a word and a character n-gram with equal bytes from
 * landing in the same bucket by construction. */
#define SALT_CHAR 0x243f6a8885a308d3ull
#define SALT_WORD 0x13198a2e03707344ull
#define SALT_BIGRAM 0xa4093822299f31d0ull
/* Multiplicative hashing: bucket = top hash_bits bits of (key * K) mod 2^64,
 * K odd. Every key bit reaches the top bits, and it costs one multiply per
 * n-gram, which matters at three n-grams per byte. */
#define HASH_K 0x9e3779b97f4a7c15ull
/* A character n-gram's key is its n bytes with n in the top byte, salted:
 * the masked window XOR TAGn (the top byte of a masked window is zero). */
#define TAG3 (SALT_CHAR ^ 3ull << 56)
#define TAG4 (SALT_CHAR ^ 4ull << 56)
#define TAG5 (SALT_CHAR ^ 5ull << 56)

/* Emitters receive a lane, not a group: the three character n-gram sizes
 * have a lane each, so the scorer keeps three independent running sums
 * instead of one long chain of dependent float additions. */
enum { LANE_CHAR3, LANE_CHAR4, LANE_CHAR5, LANE_WORD, LANE_BIGRAM, N_LANES };
static const unsigned lane_group[N_LANES] = {FEATURES_G_CHAR, FEATURES_G_CHAR, FEATURES_G_CHAR, FEATURES_G_WORD,
                                             FEATURES_G_BIGRAM};

typedef void (*emit_fn)(void *ctx, unsigned lane, uint32_t bucket);

/* Emit every n-gram of one window to emit(ctx, lane, bucket) and add the
 * number of n-grams per group to count[]. A virtual space before and after
 * the window marks where words start and end in the character n-grams.
 *
 * Always inlined into its two callers with a constant emit, so the scorer's
 * copy has no call per n-gram while the trainer sees the very same buckets. */
static inline __attribute__((always_inline)) void walk_window(const unsigned char *p, size_t n, unsigned shift,
                                                              uint32_t count[FEATURES_N_GROUPS], emit_fn emit,
                                                              void *ctx)
{
    uint64_t win = ' ';
    unsigned nchar = 1;
    int prev_space = 1;
    uint64_t wh = FNV_OFFSET, prev_wh = 0;
    int in_word = 0, have_prev = 0;
    uint32_t n_words = 0, n_bigrams = 0, n_chars = 0;

    for (size_t i = 0; i <= n; i++) {
        unsigned c = i < n ? norm[p[i]] : ' ';

        if (i < n && wordc[p[i]]) {
            wh = (wh ^ c) * FNV_PRIME;
            in_word = 1;
        } else if (in_word) {
            emit(ctx, LANE_WORD, (uint32_t)(((wh ^ SALT_WORD) * HASH_K) >> shift));
            n_words++;
            if (have_prev) {
                uint64_t b = (prev_wh * FNV_PRIME) ^ wh ^ SALT_BIGRAM;
                emit(ctx, LANE_BIGRAM, (uint32_t)(((b ^ (b >> 29)) * HASH_K) >> shift));
                n_bigrams++;
            }
            prev_wh = wh;
            have_prev = 1;
            wh = FNV_OFFSET;
            in_word = 0;
        }

        if (c == ' ' && prev_space)
            continue;
        prev_space = c == ' ';
        win = win << 8 | c;
        nchar++;
        /* The n-gram is the low n bytes of win (see TAG3..TAG5). */
        if (nchar >= 5) {
            emit(ctx, LANE_CHAR3, (uint32_t)(((win & 0xffffffull) ^ TAG3) * HASH_K >> shift));
            emit(ctx, LANE_CHAR4, (uint32_t)(((win & 0xffffffffull) ^ TAG4) * HASH_K >> shift));
            emit(ctx, LANE_CHAR5, (uint32_t)(((win & 0xffffffffffull) ^ TAG5) * HASH_K >> shift));
            n_chars += 3;
        } else if (nchar >= 3) {
            emit(ctx, LANE_CHAR3, (uint32_t)(((win & 0xffffffull) ^ TAG3) * HASH_K >> shift));
            n_chars++;
            if (nchar == 4) {
                emit(ctx, LANE_CHAR4, (uint32_t)(((win & 0xffffffffull) ^ TAG4) * HASH_K >> shift));
                n_chars++;
            }
        }
    }
    count[FEATURES_G_CHAR] += n_chars;
    count[FEATURES_G_WORD] += n_words;
    count[FEATURES_G_BIGRAM] += n_bigrams;
}

/* 1/sqrt(N): a group's n-grams count as a vector of unit-ish length, so a
 * 4 KB prompt does not outweigh a 40-byte one by sheer count. */
static inline float group_scale(uint32_t count)
{
    return count ? 1.0f / sqrtf((float)count) : 0.0f;
}

/* The scorer's consumer: per-lane sums of the weights. */
struct dot_ctx {
    const float *w;
    float sum[N_LANES];
};

static inline __attribute__((always_inline)) void dot_emit(void *ctx, unsigned lane, uint32_t bucket)
{
    struct dot_ctx *d = ctx;
    d->sum[lane] += d->w[bucket];
}

float features_sparse_dot(const struct classifier_input *in, unsigned hash_bits, const float *w)
{
    struct dot_ctx d = {.w = w};
    uint32_t count[FEATURES_N_GROUPS] = {0};
    struct windows win;
    windows_of(in->user, in->user_len, &win);
    for (int k = 0; k < win.count; k++)
        walk_window(win.p[k], win.n[k], 64 - hash_bits, count, dot_emit, &d);
    float chars = (d.sum[LANE_CHAR3] + d.sum[LANE_CHAR4]) + d.sum[LANE_CHAR5];
    return chars * group_scale(count[FEATURES_G_CHAR]) + d.sum[LANE_WORD] * group_scale(count[FEATURES_G_WORD]) +
           d.sum[LANE_BIGRAM] * group_scale(count[FEATURES_G_BIGRAM]);
}

/* The four-vector scorer: per lane, one 4-wide sum (GCC/clang vector
 * extension; SSE on x86-64, NEON on arm64, plain code elsewhere). */
typedef float v4f __attribute__((vector_size(16)));

struct dots_ctx {
    const v4f *w;
    v4f sum[N_LANES];
};

static inline __attribute__((always_inline)) void dots_emit(void *ctx, unsigned lane, uint32_t bucket)
{
    struct dots_ctx *d = ctx;
    d->sum[lane] += d->w[bucket];
}

void features_sparse_dots(const struct classifier_input *in, unsigned hash_bits, const float *w, float *out)
{
    struct dots_ctx d;
    memset(&d, 0, sizeof d);
    d.w = (const v4f *)(const void *)w;
    uint32_t count[FEATURES_N_GROUPS] = {0};
    struct windows win;
    windows_of(in->user, in->user_len, &win);
    for (int k = 0; k < win.count; k++)
        walk_window(win.p[k], win.n[k], 64 - hash_bits, count, dots_emit, &d);
    float gc = group_scale(count[FEATURES_G_CHAR]), gw = group_scale(count[FEATURES_G_WORD]);
    float gb = group_scale(count[FEATURES_G_BIGRAM]);
    for (int j = 0; j < FEATURES_MAX_DOTS; j++) {
        float chars = (d.sum[LANE_CHAR3][j] + d.sum[LANE_CHAR4][j]) + d.sum[LANE_CHAR5][j];
        out[j] = chars * gc + d.sum[LANE_WORD][j] * gw + d.sum[LANE_BIGRAM][j] * gb;
    }
}

/* The trainer's consumer: every (group, bucket) in order, as group << 28 |
 * bucket (buckets have at most 24 bits). */
struct collect_ctx {
    uint32_t *all;
    size_t n, cap;
    int failed;
};

static void collect_emit(void *ctx, unsigned lane, uint32_t bucket)
{
    struct collect_ctx *c = ctx;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4096;
        uint32_t *all = realloc(c->all, cap * sizeof *all);
        if (!all) {
            c->failed = 1;
            return;
        }
        c->all = all;
        c->cap = cap;
    }
    c->all[c->n++] = (uint32_t)lane_group[lane] << 28 | bucket;
}

static int cmp_bucket(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a & 0x0fffffffu, y = *(const uint32_t *)b & 0x0fffffffu;
    return (x > y) - (x < y);
}

/* Sorted and merged so the trainer's design matrix has one entry per
 * bucket; its dot product then differs from the scorer's only by float
 * rounding (test_classifier checks the two agree). */
int features_sparse_collect(const struct classifier_input *in, unsigned hash_bits,
                            struct features_entry **out, size_t *n)
{
    struct collect_ctx c = {0};
    uint32_t count[FEATURES_N_GROUPS] = {0};
    struct windows win;
    *out = NULL;
    *n = 0;
    windows_of(in->user, in->user_len, &win);
    for (int k = 0; k < win.count; k++)
        walk_window(win.p[k], win.n[k], 64 - hash_bits, count, collect_emit, &c);
    if (c.failed)
        goto fail;

    float scale[FEATURES_N_GROUPS];
    for (int g = 0; g < FEATURES_N_GROUPS; g++)
        scale[g] = group_scale(count[g]);
    /* Entries that share a bucket add up, exactly as their weights add up in
     * features_sparse_dot(). */
    if (c.n)
        qsort(c.all, c.n, sizeof *c.all, cmp_bucket);
    struct features_entry *e = malloc((c.n ? c.n : 1) * sizeof *e);
    if (!e)
        goto fail;
    size_t m = 0;
    for (size_t i = 0; i < c.n; i++) {
        uint32_t b = c.all[i] & 0x0fffffffu;
        float v = scale[c.all[i] >> 28];
        if (m > 0 && e[m - 1].index == b) {
            e[m - 1].value += v;
        } else {
            e[m].index = b;
            e[m].value = v;
            m++;
        }
    }
    free(c.all);
    *out = e;
    *n = m;
    return 0;

fail:
    free(c.all);
    return -1;
}

/* ---- dense: structural signals ---------------------------------------- */

enum { W_QWORD = 1, W_NEG = 2, W_CODE = 4 };

/* Classify a lowercased word of n bytes against small lists, grouped by
 * length so a word meets at most eight candidates. */
static int word_flags(const char *w, size_t n)
{
    struct entry {
        const char *s;
        int flags;
    };
    static const struct entry len3[] = {{"how", W_QWORD}, {"why", W_QWORD}, {"who", W_QWORD}, {"not", W_NEG},
                                        {"def", W_CODE},  {"int", W_CODE},  {"var", W_CODE},  {NULL, 0}};
    static const struct entry len4[] = {{"what", W_QWORD}, {"when", W_QWORD}, {"whom", W_QWORD},
                                        {"none", W_NEG},   {"void", W_CODE},  {"elif", W_CODE},
                                        {"char", W_CODE},  {"bool", W_CODE},  {NULL, 0}};
    static const struct entry len5[] = {{"which", W_QWORD}, {"where", W_QWORD}, {"whose", W_QWORD},
                                        {"least", W_NEG},   {"false", W_NEG},   {"never", W_NEG},
                                        {"const", W_CODE},  {NULL, 0}};
    static const struct entry len6[] = {{"except", W_NEG},  {"return", W_CODE}, {"printf", W_CODE},
                                        {"lambda", W_CODE}, {"struct", W_CODE}, {"import", W_CODE},
                                        {NULL, 0}};
    static const struct entry len7[] = {{"println", W_CODE}, {"include", W_CODE}, {"nullptr", W_CODE}, {NULL, 0}};
    static const struct entry len9[] = {{"incorrect", W_NEG}, {NULL, 0}};
    static const struct entry *by_len[10] = {NULL, NULL, NULL, len3, len4, len5, len6, len7, NULL, len9};
    if (n >= 10 || !by_len[n])
        return 0;
    for (const struct entry *e = by_len[n]; e->s; e++)
        if (e->s[0] == w[0] && memcmp(e->s, w, n) == 0)
            return e->flags;
    return 0;
}

static inline int is_digit(int c) { return c >= '0' && c <= '9'; }
static inline int is_upper(int c) { return c >= 'A' && c <= 'Z'; }
static inline int is_alpha(int c) { return (c >= 'a' && c <= 'z') || is_upper(c); }
static inline int is_hspace(int c) { return c == ' ' || c == '\t'; }
static inline int is_space(int c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* Counts gathered over the windows. */
struct dense_acc {
    uint64_t words, word_letters, long_words, sentences, digits, numbers, decimals, big_numbers;
    uint64_t arith, currency, percent, math, code_punct, code_words, options, option_bytes;
    uint64_t qmarks, qwords, negations, caps_words, upper, letters, nonascii, quotes_parens, lines;
    uint64_t stem_bytes;
    int seen_option;
};

/* Length of a multiple-choice marker at p[0..n) ("A. ", "B) ", "(c) "), or
 * 0 when the line does not start like an option. */
static size_t option_marker(const unsigned char *p, size_t n)
{
    if (n >= 3 && p[0] >= 'A' && p[0] <= 'J' && (p[1] == '.' || p[1] == ')') && is_hspace(p[2]))
        return 3;
    if (n >= 4 && p[0] == '(' && ((p[1] >= 'A' && p[1] <= 'J') || (p[1] >= 'a' && p[1] <= 'j')) &&
        p[2] == ')' && is_hspace(p[3]))
        return 4;
    return 0;
}

/* A byte >= 0x80 at p[i]: count it, and the symbols it starts. Greek letters
 * (U+0370-U+03FF, lead bytes CE and CF) and U+2200-U+22FF operators (E2 88
 * to E2 8B) are math; C3 97 and C3 B7 are the signs x and /; C2 A3, C2 A5
 * and E2 82 AC are pound, yen and euro. */
static inline void high_byte(const unsigned char *p, size_t i, size_t n, struct dense_acc *a)
{
    unsigned c = p[i], next = i + 1 < n ? p[i + 1] : 0;
    a->nonascii++;
    if ((c == 0xce || c == 0xcf) && next >= 0x80)
        a->math++;
    else if (c == 0xe2 && next >= 0x88 && next <= 0x8b)
        a->math++;
    else if (c == 0xc3 && (next == 0x97 || next == 0xb7))
        a->arith++;
    else if ((c == 0xc2 && (next == 0xa3 || next == 0xa5)) || (c == 0xe2 && next == 0x82 && i + 2 < n && p[i + 2] == 0xac))
        a->currency++;
}

/* One pass over a window: lines (for the option shape), then within each
 * line words, numbers and the few punctuation marks that are signals. The
 * byte classes come from cls[], so plain bytes cost one lookup. */
static void dense_window(const unsigned char *p, size_t n, size_t offset, struct dense_acc *a)
{
    for (size_t start = 0; start < n;) {
        const unsigned char *nl = memchr(p + start, '\n', n - start);
        size_t end = nl ? (size_t)(nl - p) : n;
        size_t k = start;
        while (k < end && is_hspace(p[k]))
            k++;
        a->lines += k < end;
        if (option_marker(p + k, end - k)) {
            a->options++;
            a->option_bytes += end - k;
            if (!a->seen_option) {
                a->seen_option = 1;
                a->stem_bytes = offset + start;
            }
        }

        for (size_t i = start; i < end; i++) {
            unsigned c = p[i], kc = cls[c];
            if (kc & (C_ALPHA | C_HIGH)) {
                /* A word: ASCII letters and UTF-8 bytes. */
                size_t ws = i;
                uint64_t upper = 0, letters = 0;
                do {
                    unsigned kb = cls[p[i]];
                    if (kb & C_HIGH)
                        high_byte(p, i, n, a);
                    upper += (kb & C_UPPER) != 0;
                    letters += kb & C_ALPHA;
                    i++;
                } while (i < end && (cls[p[i]] & (C_ALPHA | C_HIGH)));
                size_t wn = i - ws;
                a->upper += upper;
                a->letters += letters;
                a->words++;
                a->word_letters += wn;
                a->long_words += wn >= 9;
                a->caps_words += wn >= 2 && is_upper(p[ws]);
                if (wn >= 3 && wn <= 9 && letters == wn) {
                    char low[9];
                    for (size_t j = 0; j < wn; j++)
                        low[j] = (char)(p[ws + j] | 0x20); /* ASCII letters only here */
                    int f = word_flags(low, wn);
                    a->qwords += (f & W_QWORD) != 0;
                    a->negations += (f & W_NEG) != 0;
                    a->code_words += (f & W_CODE) != 0;
                }
                i--; /* the loop's i++ moves past the word */
                continue;
            }
            if (kc & C_DIGIT) {
                /* A number: digits, with '.', ',' or '/' inside it. */
                uint64_t digits = 0;
                int decimal = 0;
                while (i < end) {
                    if (is_digit(p[i])) {
                        digits++;
                    } else if ((p[i] == '.' || p[i] == ',' || p[i] == '/') && i + 1 < end && is_digit(p[i + 1])) {
                        decimal |= p[i] != ',';
                    } else {
                        break;
                    }
                    i++;
                }
                a->digits += digits;
                a->numbers++;
                a->decimals += decimal;
                a->big_numbers += digits >= 4;
                i--;
                continue;
            }
            if (!(kc & C_SPECIAL))
                continue;
            unsigned prev = i > 0 ? p[i - 1] : ' ';
            unsigned next = i + 1 < n ? p[i + 1] : ' ';
            switch (c) {
            case '+': case '*':
                a->arith++;
                break;
            case '=':
                a->arith++;
                if (prev == '=' || prev == '!')
                    a->code_punct++;
                break;
            case '^':
                a->arith++;
                a->math++;
                break;
            case '/':
                if (is_digit((int)prev) || is_digit((int)next))
                    a->arith++;
                break;
            case '-': {
                unsigned p2 = i > 1 ? p[i - 2] : ' ', n2 = i + 2 < n ? p[i + 2] : ' ';
                if ((is_digit((int)prev) || (prev == ' ' && is_digit((int)p2))) &&
                    (is_digit((int)next) || (next == ' ' && is_digit((int)n2))))
                    a->arith++;
                if (next == '>')
                    a->code_punct++;
                break;
            }
            case '_':
                a->math++;
                break;
            case '\\':
                if (is_alpha((int)next))
                    a->math++;
                break;
            case '$':
                a->currency++;
                break;
            case '%':
                a->percent++;
                break;
            case '{': case '}': case ';':
                a->code_punct++;
                break;
            case '(':
                a->quotes_parens++;
                if (next == ')')
                    a->code_punct++;
                break;
            case ')': case '"':
                a->quotes_parens++;
                break;
            case '?':
                a->qmarks++;
                /* fall through */
            case '.': case '!':
                if (is_space((int)next) || i + 1 == n)
                    a->sentences++;
                break;
            default:
                break;
            }
        }
        start = end + 1;
    }
}

/* 1 when the text, trailing space aside, ends with "answer:" (any case): the
 * completion-style prompt that benchmark harnesses (and MMLU here) use. */
static int ends_with_answer(const char *s, size_t n)
{
    size_t floor = n > FEATURES_TAIL ? n - FEATURES_TAIL : 0; /* bounded work */
    while (n > floor && is_space((unsigned char)s[n - 1]))
        n--;
    static const char tail[] = "answer:";
    size_t t = sizeof tail - 1;
    if (n < t)
        return 0;
    for (size_t i = 0; i < t; i++) {
        int c = (unsigned char)s[n - t + i];
        if (is_upper(c))
            c = c - 'A' + 'a';
        if (c != tail[i])
            return 0;
    }
    return 1;
}

static inline float lg(double x)
{
    return log1pf((float)x);
}

static inline float lgc(uint64_t n)
{
    return lg((double)n);
}

/* ---- option structure ---------------------------------------------------- */

/* Function words that every option and stem share; counting them would make
 * every pair of options overlap. */
static int stop_word(const char *w, size_t n)
{
    /* The word's bytes as one little-endian integer, compared with the
     * lists' (by length): no call per word. */
    static const char *const by_len[5] = {"", "a", "anoftoinonatbyorisbeitas", "theforandare", "withthatthis"};
    if (n == 0 || n > 4)
        return 0;
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint32_t)(unsigned char)w[i] << (8 * i);
    for (const char *c = by_len[n]; *c; c += n) {
        uint32_t u = 0;
        for (size_t i = 0; i < n; i++)
            u |= (uint32_t)(unsigned char)c[i] << (8 * i);
        if (u == v)
            return 1;
    }
    return 0;
}

/* Hashes of the words of p[0..n) into out (at most cap, in text order;
 * repeated words kept). Returns how many. */
static size_t word_hashes(const unsigned char *p, size_t n, uint64_t *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k < cap;) {
        if (!(cls[p[i]] & (C_ALPHA | C_DIGIT))) {
            i++;
            continue;
        }
        char low[16];
        size_t s = i, wl = 0;
        uint64_t h = FNV_OFFSET;
        for (; i < n && (cls[p[i]] & (C_ALPHA | C_DIGIT)); i++) {
            unsigned c = p[i] | ((cls[p[i]] & C_UPPER) ? 0x20u : 0u);
            h = (h ^ c) * FNV_PRIME;
            if (wl < sizeof low)
                low[wl++] = (char)c;
        }
        if (!(i - s <= sizeof low && stop_word(low, i - s)))
            out[k++] = h;
    }
    return k;
}

/* Sort and deduplicate h[0..n) in place (insertion sort: n is at most
 * FEATURES_OPT_WORDS). Returns the distinct count. */
static size_t uniq_small(uint64_t *h, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        uint64_t v = h[i];
        size_t j = i;
        for (; j > 0 && h[j - 1] > v; j--)
            h[j] = h[j - 1];
        h[j] = v;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (m == 0 || h[m - 1] != h[i])
            h[m++] = h[i];
    return m;
}

/* |a & b| of two sorted distinct arrays. */
static size_t n_common(const uint64_t *a, size_t na, const uint64_t *b, size_t nb)
{
    size_t i = 0, j = 0, c = 0;
    while (i < na && j < nb) {
        if (a[i] == b[j])
            c++, i++, j++;
        else if (a[i] < b[j])
            i++;
        else
            j++;
    }
    return c;
}

/* The stem's words as a Bloom filter of STEM_BITS bits, two probes per
 * word from its 64-bit hash: building it costs one pass and no sort (a sort
 * of a long stem's words cost more than the rest of the score), and with
 * FEATURES_STEM_WORDS words at most about 5% of lookups are false hits. */
#define STEM_BITS 8192

static inline void bloom_add(uint64_t *bits, uint64_t h)
{
    unsigned a = (unsigned)(h & (STEM_BITS - 1)), b = (unsigned)(h >> 40) & (STEM_BITS - 1);
    bits[a / 64] |= 1ull << (a % 64);
    bits[b / 64] |= 1ull << (b % 64);
}

static inline int bloom_has(const uint64_t *bits, uint64_t h)
{
    unsigned a = (unsigned)(h & (STEM_BITS - 1)), b = (unsigned)(h >> 40) & (STEM_BITS - 1);
    return (bits[a / 64] >> (a % 64) & 1) && (bits[b / 64] >> (b % 64) & 1);
}

/* The three option-structure signals of text (out[0..3)); zeros when the
 * text has no options. The stem is read over its last 512 bytes only: where a
 * long stem holds a document, the question sits at its end, and the cost
 * stays bounded. */
static void option_signals(const char *text, size_t len, const struct options *o, float *out)
{
    out[0] = out[1] = out[2] = 0.0f;
    if (o->n < 2)
        return;
    const unsigned char *p = (const unsigned char *)text;
    uint64_t ow[OPTIONS_MAX][FEATURES_OPT_WORDS];
    size_t on[OPTIONS_MAX];
    size_t min_len = SIZE_MAX, max_len = 0;
    for (int i = 0; i < o->n; i++) {
        on[i] = uniq_small(ow[i], word_hashes(p + o->text[i].off, o->text[i].len, ow[i], FEATURES_OPT_WORDS));
        min_len = o->text[i].len < min_len ? o->text[i].len : min_len;
        max_len = o->text[i].len > max_len ? o->text[i].len : max_len;
    }
    double jac = 0;
    int pairs = 0;
    for (int i = 0; i < o->n; i++)
        for (int j = i + 1; j < o->n; j++) {
            size_t c = n_common(ow[i], on[i], ow[j], on[j]), u = on[i] + on[j] - c;
            jac += u ? (double)c / (double)u : 0.0;
            pairs++;
        }
    out[0] = (float)(jac / pairs);

    uint64_t stem[FEATURES_STEM_WORDS], bloom[STEM_BITS / 64];
    memset(bloom, 0, sizeof bloom);
    size_t s0 = o->stem_len > 512 ? o->stem_len - 512 : 0;
    size_t sn = word_hashes(p + s0, (o->stem_len < len ? o->stem_len : len) - s0, stem, FEATURES_STEM_WORDS);
    for (size_t k = 0; k < sn; k++)
        bloom_add(bloom, stem[k]);
    double share = 0;
    int counted = 0;
    for (int i = 0; i < o->n; i++) {
        if (!on[i])
            continue;
        size_t hit = 0;
        for (size_t k = 0; k < on[i]; k++)
            hit += (size_t)bloom_has(bloom, ow[i][k]);
        share += (double)hit / (double)on[i];
        counted++;
    }
    out[1] = counted ? (float)(share / counted) : 0.0f;
    out[2] = log1pf((float)max_len) - log1pf((float)min_len);
}

/* Counts are turned into log(1 + count) or shares: the model standardizes
 * each signal, and logs keep one 5 KB outlier from setting the scale. */
void features_dense(const struct classifier_input *in, float *out)
{
    struct dense_acc a;
    memset(&a, 0, sizeof a);
    struct windows w;
    size_t len = in->user ? in->user_len : 0;
    windows_of(in->user, len, &w);
    for (int k = 0; k < w.count; k++)
        dense_window(w.p[k], w.n[k], (size_t)(w.p[k] - (const unsigned char *)in->user), &a);
    if (!a.seen_option)
        a.stem_bytes = len;

    double bytes = (double)len;
    double scanned = 0;
    for (int k = 0; k < w.count; k++)
        scanned += (double)w.n[k];
    double sentences = a.sentences > 0 ? (double)a.sentences : (a.words > 0 ? 1 : 0);

    out[FD_LOG_BYTES] = lg(bytes);
    out[FD_LOG_WORDS] = lgc(a.words);
    out[FD_LOG_LINES] = lgc(a.lines);
    out[FD_MEAN_WORD_LEN] = a.words > 0 ? (float)((double)a.word_letters / (double)a.words) : 0.0f;
    out[FD_LONG_WORD_FRAC] = a.words > 0 ? (float)((double)a.long_words / (double)a.words) : 0.0f;
    out[FD_LOG_SENTENCES] = lgc(a.sentences);
    out[FD_WORDS_PER_SENT] = sentences > 0 ? lg((double)a.words / sentences) : 0.0f;
    out[FD_LOG_DIGITS] = lgc(a.digits);
    out[FD_DIGIT_FRAC] = scanned > 0 ? (float)((double)a.digits / scanned) : 0.0f;
    out[FD_LOG_NUMBERS] = lgc(a.numbers);
    out[FD_LOG_DECIMALS] = lgc(a.decimals);
    out[FD_LOG_BIG_NUMBERS] = lgc(a.big_numbers);
    out[FD_LOG_ARITH] = lgc(a.arith);
    out[FD_LOG_CURRENCY] = lgc(a.currency);
    out[FD_LOG_PERCENT] = lgc(a.percent);
    out[FD_LOG_MATH] = lgc(a.math);
    out[FD_LOG_CODE_PUNCT] = lgc(a.code_punct);
    out[FD_LOG_CODE_WORDS] = lgc(a.code_words);
    out[FD_LOG_OPTIONS] = lgc(a.options);
    out[FD_HAS_4_OPTIONS] = a.options >= 4 ? 1.0f : 0.0f;
    out[FD_LOG_OPTION_LEN] = a.options > 0 ? lg((double)a.option_bytes / (double)a.options) : 0.0f;
    out[FD_LOG_STEM_LEN] = lgc(a.stem_bytes);
    out[FD_ENDS_ANSWER] = (float)ends_with_answer(in->user ? in->user : "", len);
    out[FD_LOG_QMARKS] = lgc(a.qmarks);
    out[FD_LOG_QWORDS] = lgc(a.qwords);
    out[FD_LOG_NEGATIONS] = lgc(a.negations);
    out[FD_LOG_CAPS_WORDS] = lgc(a.caps_words);
    out[FD_UPPER_FRAC] = a.letters > 0 ? (float)((double)a.upper / (double)a.letters) : 0.0f;
    out[FD_NONASCII_FRAC] = scanned > 0 ? (float)((double)a.nonascii / scanned) : 0.0f;
    out[FD_LOG_QUOTES_PARENS] = lgc(a.quotes_parens);
    out[FD_LOG_SYSTEM_BYTES] = lg(in->system ? (double)in->system_len : 0.0);
    out[FD_LOG_TURNS] = in->n_messages > 1 ? (float)log((double)in->n_messages) : 0.0f;

    /* Version 2. Length reaches a v2 model through FD_MC_* for prompts
     * with options and FD_WP_LOG_WORDS for the rest, so a word problem's
     * length can enter with a constrained sign (trainer.h). */
    struct options o;
    o.n = 0;
    /* Only a text whose windows show two option-shaped lines can parse as
     * multiple-choice: word problems skip the parser. */
    if (a.options >= 2)
        options_parse(in->user, len, &o);
    option_signals(in->user, len, &o, out + FD_OPT_OVERLAP);
    out[FD_MC_LOG_WORDS] = o.n ? out[FD_LOG_WORDS] : 0.0f;
    out[FD_MC_LOG_STEM] = o.n ? lg((double)o.stem_len) : 0.0f;
    out[FD_WP_LOG_WORDS] = o.n ? 0.0f : out[FD_LOG_WORDS];
}

const char *features_dense_name(int i)
{
    static const char *names[FEATURES_N_DENSE] = {
        "log_bytes",      "log_words",       "log_lines",      "mean_word_len",  "long_word_frac",
        "log_sentences",  "words_per_sent",  "log_digits",     "digit_frac",     "log_numbers",
        "log_decimals",   "log_big_numbers", "log_arith",      "log_currency",   "log_percent",
        "log_math",       "log_code_punct",  "log_code_words", "log_options",    "has_4_options",
        "log_option_len", "log_stem_len",    "ends_answer",    "log_qmarks",     "log_qwords",
        "log_negations",  "log_caps_words",  "upper_frac",     "nonascii_frac",  "log_quotes_parens",
        "log_system_bytes", "log_turns",  "opt_overlap",   "opt_stem_overlap", "opt_len_spread",
        "mc_log_words",   "mc_log_stem",     "wp_log_words",
    };
    return i >= 0 && i < FEATURES_N_DENSE ? names[i] : "?";
}
