/* tokenizer_bpe.c: Hugging Face tokenizer.json byte-level BPE.
 *
 * Layout of a loaded tokenizer (struct bpe):
 *   strings   every token string of the file (vocab entries in their
 *             byte-level spelling, added tokens as written), with an
 *             open-addressed index for string -> id;
 *   dec       the bytes each id decodes to;
 *   merges    (left id, right id) -> (rank, merged id), open-addressed;
 *   trie      the added tokens, for longest-first matching;
 *   re[]      the Split stages of the pre-tokenizer, compiled by PCRE2;
 *   cache     piece bytes -> ids, seqlocked slots (see below).
 * BPE itself works on ids only: a piece starts as one symbol per byte (each
 * byte's byte-level character is a vocab entry) and merges replace ids.
 */
#include "tokenizer/tokenizer_bpe.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <errno.h>
#include <jansson.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <pcre2.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Ids must be below this. The tables are sized by the largest id (about 21
 * bytes per id while loading), so one huge id in a small file would ask for
 * gigabytes; real vocabularies stay far below (DeepSeek-V3: 129,280). */
#define MAX_VOCAB (1 << 22)

/* Split stages of one pre-tokenizer; DeepSeek's files use three. */
#define MAX_STAGES 8

/* Word cache geometry: 65536 direct-mapped slots of one cache line each. A
 * piece is cached when it has at most CACHE_KEY_MAX bytes and CACHE_IDS_MAX
 * ids, which covers almost every word of prose; longer pieces are rare
 * enough to redo. */
#define CACHE_SLOTS 65536
#define CACHE_KEY_MAX 24
#define CACHE_IDS_MAX 8
#define CACHE_WORDS 15

/* Pieces up to this many bytes run BPE in stack scratch space. */
#define SMALL_PIECE 256

/* One name of a token. Strings live in one blob, not one malloc each: the
 * DeepSeek file has 128k of them, and a blob loads and frees in one go. */
struct str_entry {
    uint32_t off, len;
    int32_t id;
};

/* The merges table maps a pair of ids, packed into one 64-bit key, to the
 * pair's rank and the id it merges into. BPE only ever asks "does this
 * adjacent pair merge, at what rank", so ids (not strings) are the key. */
struct merge_slot {
    uint64_t key;       /* left << 32 | right; MERGE_EMPTY when free */
    uint32_t rank;
    int32_t id;
};
#define MERGE_EMPTY UINT64_MAX

/* An entry of the file's added_tokens. special decides whether user text
 * may produce it (TOK_ALLOW_SPECIAL). */
struct added_tok {
    uint32_t off, len;  /* content in the strings blob */
    int32_t id;
    int special;
};

/* Trie over added-token bytes; children are a sibling list (few per node). */
struct trie_node {
    int32_t child, sibling;
    int32_t tok;        /* index into added[], or -1 */
    uint8_t byte;
};

/* What a cache slot holds, as plain data: 60 bytes, 15 words. */
struct cache_entry {
    uint32_t meta;      /* key length | id count << 8; 0 for an empty slot */
    char key[CACHE_KEY_MAX];
    int32_t ids[CACHE_IDS_MAX];
};

/* The word cache is a seqlock per slot, so a hit costs a reader no lock and
 * no write to shared memory, and threads on other cores never fight over a
 * cache line they only read. seq is odd while a writer is inside; a reader
 * copies the words and keeps the copy only if seq was even and unchanged
 * around it. A writer claims a slot by moving seq from even to odd with a
 * compare-and-swap and simply skips caching when another writer has it.
 * Words are atomics (relaxed) so the racing copy is defined behaviour. */
struct cache_slot {
    _Atomic uint32_t seq;
    _Atomic uint32_t w[CACHE_WORDS];
};
_Static_assert(sizeof(struct cache_entry) == CACHE_WORDS * 4, "cache entry is 15 words");

struct bpe {
    struct tokenizer base;      /* first, so a struct tokenizer * is a struct bpe * */

    char *blob;                 /* string bytes of strs[] and added[] */
    size_t blob_len, blob_cap;
    struct str_entry *strs;
    size_t n_strs, strs_cap;
    int32_t *str_index;         /* index into strs[], -1 empty */
    size_t str_mask;

    char *dec_blob;             /* bytes of each id: dec_blob[dec_off[id]..dec_off[id+1]) */
    uint32_t *dec_off;
    uint8_t *kind;              /* per id: 0 vocab or unknown, 1 added, 2 added special */

    int32_t byte_id[256];       /* the single-byte token of each byte */
    uint32_t byte_cp[256];      /* each byte's byte-level code point */
    struct merge_slot *merges;
    size_t merge_mask;
    int ignore_merges;

    struct added_tok *added;
    size_t n_added;
    struct trie_node *trie;
    size_t n_trie, trie_cap;
    uint8_t first_byte[256];    /* 1 when some added token starts with the byte */

    pcre2_code *re[MAX_STAGES];
    int jit[MAX_STAGES];
    int n_re;

    int cache_on;
    struct cache_slot *cache;   /* 64-byte aligned inside cache_mem */
    void *cache_mem;
};

/* ---- small helpers ---- */

/* Load errors are reported as one line of text for the operator; callers
 * may pass no buffer when they only want the code. */
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

/* A fast 64-bit hash of short strings: 8 bytes at a time, multiply-mixed.
 * Keys come from the tokenizer file and from user text, but the tables are
 * open-addressed at load factor <= 1/2 and sized up front, so a poor spread
 * costs time, never correctness; no seed is needed. */
static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
    return h;
}

/* Hash of an id pair for the merges table (Fibonacci hashing of the packed
 * key, with the high bits folded down because the table mask keeps only
 * the low ones). */
static uint64_t hash_pair(int32_t a, int32_t b)
{
    uint64_t h = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* ---- the GPT-2 byte-to-unicode map ----
 * Printable Latin-1 bytes stand for themselves; the other 68 bytes take the
 * code points from U+0100 up, in byte order, so every byte has a visible
 * character and token strings stay printable. */
static void byte_level_maps(uint32_t byte_cp[256], int16_t cp_byte[512])
{
    int n = 0;
    for (int i = 0; i < 512; i++)
        cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

/* Encode code point cp (< 0x110000) as UTF-8 into out; returns its length. */
static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decode one code point of valid UTF-8 at s (n bytes left); sets *adv. */
static uint32_t utf8_get(const uint8_t *s, size_t n, size_t *adv)
{
    uint8_t c = s[0];
    size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (k > n)
        k = n;
    uint32_t cp = k == 1 ? c : k == 2 ? (c & 0x1Fu) : k == 3 ? (c & 0x0Fu) : (c & 0x07u);
    for (size_t i = 1; i < k; i++)
        cp = cp << 6 | (s[i] & 0x3Fu);
    *adv = k;
    return cp;
}

/* ---- string table ---- */

/* Append n bytes and a NUL (so names can be printed) to the blob. Offsets
 * are 32-bit to halve the index; a blob past 4 GiB is refused. */
static int blob_add(struct bpe *b, const char *s, size_t n, uint32_t *off)
{
    if (b->blob_len + n + 1 > b->blob_cap) {
        size_t cap = b->blob_cap ? b->blob_cap : 1 << 20;
        while (cap < b->blob_len + n + 1)
            cap *= 2;
        if (cap > UINT32_MAX)
            return TOK_ENOMEM;
        char *nb = realloc(b->blob, cap);
        if (!nb)
            return TOK_ENOMEM;
        b->blob = nb;
        b->blob_cap = cap;
    }
    memcpy(b->blob + b->blob_len, s, n);
    b->blob[b->blob_len + n] = '\0';
    *off = (uint32_t)b->blob_len;
    b->blob_len += n + 1;
    return TOK_OK;
}

/* The id named by s[0..n), or -1. Linear probing: the index is at most half
 * full, so a miss ends at an empty slot after a probe or two. */
static int32_t str_find(const struct bpe *b, const char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & b->str_mask;
    for (;; i = (i + 1) & b->str_mask) {
        int32_t e = b->str_index[i];
        if (e < 0)
            return -1;
        const struct str_entry *se = &b->strs[e];
        if (se->len == n && memcmp(b->blob + se->off, s, n) == 0)
            return se->id;
    }
}

/* Add string s as a name of id, and set *off to where its bytes live. A
 * later entry for the same string wins, as in the reference's Map. The
 * index is sized before the first add. */
static int str_add(struct bpe *b, const char *s, size_t n, int32_t id, uint32_t *off)
{
    size_t i = hash_bytes(s, n) & b->str_mask;
    for (;; i = (i + 1) & b->str_mask) {
        int32_t e = b->str_index[i];
        if (e < 0)
            break;
        struct str_entry *se = &b->strs[e];
        if (se->len == n && memcmp(b->blob + se->off, s, n) == 0) {
            se->id = id;
            *off = se->off;
            return TOK_OK;
        }
    }
    if (b->n_strs == b->strs_cap)
        return TOK_ENOMEM; /* the table is sized up front; a bug if reached */
    struct str_entry *se = &b->strs[b->n_strs];
    if (blob_add(b, s, n, &se->off) < 0)
        return TOK_ENOMEM;
    se->len = (uint32_t)n;
    se->id = id;
    *off = se->off;
    b->str_index[i] = (int32_t)b->n_strs++;
    return TOK_OK;
}

/* ---- merges table ---- */

/* The merge of (l, r), or NULL when the pair never merges. This is the
 * innermost lookup of BPE; the table is sized to at most half full. */
static const struct merge_slot *merge_find(const struct bpe *b, int32_t l, int32_t r)
{
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    size_t i = hash_pair(l, r) & b->merge_mask;
    for (;; i = (i + 1) & b->merge_mask) {
        const struct merge_slot *m = &b->merges[i];
        if (m->key == key)
            return m;
        if (m->key == MERGE_EMPTY)
            return NULL;
    }
}

static void merge_put(struct bpe *b, int32_t l, int32_t r, uint32_t rank, int32_t id)
{
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    size_t i = hash_pair(l, r) & b->merge_mask;
    while (b->merges[i].key != MERGE_EMPTY && b->merges[i].key != key)
        i = (i + 1) & b->merge_mask;
    /* A repeated pair keeps its last rank, as the reference's Map does. */
    b->merges[i].key = key;
    b->merges[i].rank = rank;
    b->merges[i].id = id;
}

/* ---- added-token trie ----
 * Added tokens are matched byte by byte from each position where one could
 * start, so the longest match is found in one walk however many tokens
 * share a prefix (DeepSeek's 818 all start with "<"). */

static int trie_node_new(struct bpe *b, uint8_t byte, int32_t *out)
{
    if (b->n_trie == b->trie_cap) {
        size_t cap = b->trie_cap ? b->trie_cap * 2 : 1024;
        struct trie_node *nt = realloc(b->trie, cap * sizeof(*nt));
        if (!nt)
            return TOK_ENOMEM;
        b->trie = nt;
        b->trie_cap = cap;
    }
    struct trie_node *t = &b->trie[b->n_trie];
    t->child = t->sibling = t->tok = -1;
    t->byte = byte;
    *out = (int32_t)b->n_trie++;
    return TOK_OK;
}

/* Add added-token tok (index into added[]) for bytes s[0..n). A repeated
 * content takes the later token, like the reference's Map. */
static int trie_insert(struct bpe *b, const uint8_t *s, size_t n, int32_t tok)
{
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = b->trie[node].child;
        while (c >= 0 && b->trie[c].byte != s[i])
            c = b->trie[c].sibling;
        if (c < 0) {
            if (trie_node_new(b, s[i], &c) < 0)
                return TOK_ENOMEM;
            b->trie[c].sibling = b->trie[node].child;
            b->trie[node].child = c;
        }
        node = c;
    }
    b->trie[node].tok = tok;
    b->first_byte[s[0]] = 1;
    return TOK_OK;
}

/* Longest allowed added token at s[0..n): its index in added[], or -1.
 * A special token that is not allowed is skipped but the walk goes on, so
 * a longer allowed token beneath it still matches: the same result as a
 * trie built from the allowed tokens alone, which is how the reference
 * for TOK_ALLOW_SPECIAL off is built. */
static int32_t trie_match(const struct bpe *b, const uint8_t *s, size_t n, unsigned flags)
{
    int32_t node = 0, best = -1;
    if (flags & TOK_ADDED_AS_TEXT)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int32_t c = b->trie[node].child;
        while (c >= 0 && b->trie[c].byte != s[i])
            c = b->trie[c].sibling;
        if (c < 0)
            break;
        node = c;
        int32_t t = b->trie[node].tok;
        if (t >= 0 && (!b->added[t].special || (flags & TOK_ALLOW_SPECIAL)))
            best = t;
    }
    return best;
}

/* ---- regex dialect ---- */

/* ECMAScript's WhiteSpace and LineTerminator code points, the members of its
 * \s, as PCRE2 class items. */
static const char JS_SPACE[] = "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}"
                               "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}";

/* A string builder for rewritten patterns. Running out of memory sets oom
 * and later appends do nothing, so callers check once at the end. */
struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
};

static void sb_add(struct sbuf *sb, const char *s, size_t n)
{
    if (sb->oom)
        return;
    if (sb->n + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap * 2 : 256;
        while (cap < sb->n + n + 1)
            cap *= 2;
        char *np = realloc(sb->p, cap);
        if (!np) {
            sb->oom = 1;
            return;
        }
        sb->p = np;
        sb->cap = cap;
    }
    memcpy(sb->p + sb->n, s, n);
    sb->n += n;
    sb->p[sb->n] = '\0';
}

static void sb_str(struct sbuf *sb, const char *s)
{
    sb_add(sb, s, strlen(s));
}

/* Rewrite \s and \S of a file regex into ECMAScript's explicit class (see
 * tokenizer_bpe.h). Escapes are copied in pairs so "\\s" stays a backslash
 * and an s; class boundaries are tracked because \s inside [...] must become
 * the bare members. Returns a malloc'd pattern, or NULL with err set. */
static char *regex_to_pcre2(const char *src, size_t n, char *err, size_t errlen)
{
    struct sbuf sb = { 0 };
    int in_class = 0;
    for (size_t i = 0; i < n;) {
        char c = src[i];
        if (c == '\\') {
            if (i + 1 >= n) {
                set_err(err, errlen, "regex ends in a backslash");
                goto fail;
            }
            char d = src[i + 1];
            if (d == 's' && in_class) {
                sb_str(&sb, JS_SPACE);
            } else if (d == 's' || d == 'S') {
                if (in_class) {
                    set_err(err, errlen, "regex uses \\S inside a class (unsupported)");
                    goto fail;
                }
                sb_str(&sb, d == 's' ? "[" : "[^");
                sb_str(&sb, JS_SPACE);
                sb_str(&sb, "]");
            } else if (d == 'Q') {
                set_err(err, errlen, "regex uses \\Q (unsupported)");
                goto fail;
            } else {
                sb_add(&sb, src + i, 2);
            }
            i += 2;
            continue;
        }
        if (!in_class && c == '[') {
            /* A ']' right after '[' or '[^' is a literal member. */
            in_class = 1;
            sb_add(&sb, src + i, 1);
            i++;
            if (i < n && src[i] == '^')
                sb_add(&sb, src + i++, 1);
            if (i < n && src[i] == ']')
                sb_add(&sb, src + i++, 1);
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && src[i + 1] == ':') {
            const char *end = strstr(src + i, ":]");
            if (!end || (size_t)(end - src) >= n) {
                set_err(err, errlen, "regex has an unterminated POSIX class");
                goto fail;
            }
            size_t k = (size_t)(end - src) + 2 - i;
            sb_add(&sb, src + i, k);
            i += k;
            continue;
        }
        if (in_class && c == ']')
            in_class = 0;
        sb_add(&sb, src + i, 1);
        i++;
    }
    if (sb.oom) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    if (!sb.p)
        sb_add(&sb, "", 0);
    return sb.p;
fail:
    free(sb.p);
    return NULL;
}

/* A Split pattern given as a plain string: every ASCII punctuation character
 * is escaped; other bytes (letters, digits, UTF-8) are literal in PCRE2. */
static char *string_to_pcre2(const char *src, size_t n)
{
    struct sbuf sb = { 0 };
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c < 0x80 && !((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
            sb_add(&sb, "\\", 1);
        sb_add(&sb, src + i, 1);
    }
    if (!sb.p)
        sb_add(&sb, "", 0);
    if (sb.oom) {
        free(sb.p);
        return NULL;
    }
    return sb.p;
}

/* Compile one Split stage. PCRE2_UTF makes the pattern and the subject
 * code points, not bytes; PCRE2_UCP makes \d, \w and the POSIX classes
 * Unicode-aware as in the reference (\p{..} classes are Unicode either way). */
static int add_stage(struct bpe *b, const char *pattern, char *err, size_t errlen)
{
    if (b->n_re == MAX_STAGES) {
        set_err(err, errlen, "pre_tokenizer has more than %d Split stages", MAX_STAGES);
        return TOK_EFORMAT;
    }
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                   &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof(msg));
        set_err(err, errlen, "pre_tokenizer regex does not compile at offset %zu: %s", (size_t)off,
                (const char *)msg);
        return TOK_EFORMAT;
    }
    /* JIT is a speed-up, not a requirement: without it the interpreter runs. */
    b->jit[b->n_re] = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    b->re[b->n_re++] = re;
    return TOK_OK;
}

/* The regex of a ByteLevel pre-tokenizer with use_regex (GPT-2's). The
 * reference keeps only its matches, but its last alternatives match any
 * character, so there are no gaps and Isolated splitting is the same. */
static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Turn one pre_tokenizer object (recursively, for Sequence) into stages.
 * ByteLevel must come last: it only changes how bytes are spelled, which
 * BPE-on-ids does implicitly, so nothing may split after it. */
static int add_pretokenizer(struct bpe *b, json_t *pt, int *saw_byte_level, char *err,
                            size_t errlen)
{
    const char *type = json_string_value(json_object_get(pt, "type"));
    if (!type) {
        set_err(err, errlen, "pre_tokenizer without a type");
        return TOK_EFORMAT;
    }
    if (*saw_byte_level) {
        set_err(err, errlen, "pre_tokenizer %s after ByteLevel (unsupported)", type);
        return TOK_EFORMAT;
    }
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(pt, "pretokenizers");
        size_t i;
        json_t *sub;
        if (!json_is_array(list)) {
            set_err(err, errlen, "Sequence pre_tokenizer without a pretokenizers array");
            return TOK_EFORMAT;
        }
        json_array_foreach(list, i, sub)
        {
            int rc = add_pretokenizer(b, sub, saw_byte_level, err, errlen);
            if (rc < 0)
                return rc;
        }
        return TOK_OK;
    }
    if (strcmp(type, "Split") == 0) {
        const char *behavior = json_string_value(json_object_get(pt, "behavior"));
        json_t *pat = json_object_get(pt, "pattern");
        json_t *rx = json_object_get(pat, "Regex"), *str = json_object_get(pat, "String");
        char *p;
        if (!behavior || strcmp(behavior, "Isolated") != 0) {
            set_err(err, errlen, "Split behavior %s is unsupported (only Isolated)",
                    behavior ? behavior : "(none)");
            return TOK_EFORMAT;
        }
        if (json_is_true(json_object_get(pt, "invert"))) {
            set_err(err, errlen, "inverted Split is unsupported");
            return TOK_EFORMAT;
        }
        if (json_is_string(rx))
            p = regex_to_pcre2(json_string_value(rx), json_string_length(rx), err, errlen);
        else if (json_is_string(str))
            p = string_to_pcre2(json_string_value(str), json_string_length(str));
        else {
            set_err(err, errlen, "Split without a Regex or String pattern");
            return TOK_EFORMAT;
        }
        if (!p)
            return TOK_EFORMAT;
        int rc = add_stage(b, p, err, errlen);
        free(p);
        return rc;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        *saw_byte_level = 1;
        if (json_is_true(json_object_get(pt, "add_prefix_space"))) {
            set_err(err, errlen, "ByteLevel add_prefix_space is unsupported");
            return TOK_EFORMAT;
        }
        if (json_is_true(json_object_get(pt, "use_regex"))) {
            char *p = regex_to_pcre2(GPT2_REGEX, strlen(GPT2_REGEX), err, errlen);
            if (!p)
                return TOK_EFORMAT;
            int rc = add_stage(b, p, err, errlen);
            free(p);
            return rc;
        }
        return TOK_OK;
    }
    set_err(err, errlen, "pre_tokenizer type %s is unsupported", type);
    return TOK_EFORMAT;
}

/* ---- encoding ---- */

/* Per-encode scratch: BPE symbol arrays and heap, in fixed arrays for
 * pieces up to SMALL_PIECE bytes and in one larger block (kept for the rest
 * of the call) for longer ones, plus the PCRE2 match data. One per call, so
 * encodes on different threads share nothing but the read-only tables. */
struct scratch {
    int32_t *id, *next, *prev;
    uint64_t *heap;
    size_t cap;             /* symbols the arrays hold */
    int32_t s_id[SMALL_PIECE], s_next[SMALL_PIECE], s_prev[SMALL_PIECE];
    uint64_t s_heap[3 * SMALL_PIECE];
    void *big;
    pcre2_match_data *md;
};

/* Make the symbol arrays hold n symbols (and the heap 3n entries: n - 1
 * initial pairs plus at most two pushes per merge). */
static int scratch_fit(struct scratch *sc, size_t n)
{
    if (n <= sc->cap)
        return TOK_OK;
    size_t cap = sc->cap;
    while (cap < n)
        cap *= 2;
    if (cap > SIZE_MAX / 32)
        return TOK_ENOMEM;
    void *big = malloc(cap * (3 * sizeof(int32_t) + 3 * sizeof(uint64_t)));
    if (!big)
        return TOK_ENOMEM;
    free(sc->big);
    sc->big = big;
    sc->heap = big;
    sc->id = (int32_t *)(sc->heap + 3 * cap);
    sc->next = sc->id + cap;
    sc->prev = sc->next + cap;
    sc->cap = cap;
    return TOK_OK;
}

/* Min-heap of (rank << 32 | left position): lowest rank first, and for one
 * rank the leftmost pair, which is the reference's order (rank + i/n). */
static void heap_down(uint64_t *h, size_t n, size_t i)
{
    uint64_t x = h[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h[c + 1] < h[c])
            c++;
        if (h[c] >= x)
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t x)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= x)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0];
    h[0] = h[--*n];
    if (*n)
        heap_down(h, *n, 0);
    return top;
}

/* BPE of one piece of n >= 2 bytes; appends the ids to out.
 * A heap entry is stale when its left symbol or that symbol's right
 * neighbour changed since the push; a merge's rank names exactly one pair,
 * so "the pair now at pos has this rank" proves the entry is current. */
static int bpe_merge(const struct bpe *b, const uint8_t *s, size_t n, struct scratch *sc,
                     struct tok_ids *out)
{
    if (scratch_fit(sc, n) < 0)
        return TOK_ENOMEM;
    int32_t *id = sc->id, *next = sc->next, *prev = sc->prev;
    uint64_t *heap = sc->heap;
    size_t nh = 0;

    for (size_t i = 0; i < n; i++) {
        id[i] = b->byte_id[s[i]];
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        const struct merge_slot *m = merge_find(b, id[i], id[i + 1]);
        if (m)
            heap[nh++] = (uint64_t)m->rank << 32 | i;
    }
    for (size_t i = nh / 2; i-- > 0;)
        heap_down(heap, nh, i);

    /* Symbols are merged in place: the left symbol takes the merged id, the
     * right one is unlinked (id -1). Only the two pairs touching the new
     * symbol can change, so only they are pushed. */
    while (nh) {
        uint64_t top = heap_pop(heap, &nh);
        int32_t p = (int32_t)(top & 0xFFFFFFFFu);
        uint32_t rank = (uint32_t)(top >> 32);
        if (id[p] < 0 || next[p] < 0)
            continue;
        int32_t r = next[p];
        const struct merge_slot *m = merge_find(b, id[p], id[r]);
        if (!m || m->rank != rank)
            continue;
        id[p] = m->id;
        id[r] = -1;
        next[p] = next[r];
        if (next[p] >= 0)
            prev[next[p]] = p;
        if (prev[p] >= 0) {
            int32_t q = prev[p];
            const struct merge_slot *mq = merge_find(b, id[q], id[p]);
            if (mq)
                heap_push(heap, &nh, (uint64_t)mq->rank << 32 | (uint32_t)q);
        }
        if (next[p] >= 0) {
            const struct merge_slot *mn = merge_find(b, id[p], id[next[p]]);
            if (mn)
                heap_push(heap, &nh, (uint64_t)mn->rank << 32 | (uint32_t)p);
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i])
        if (tok_ids_push(out, id[i]) < 0)
            return TOK_ENOMEM;
    return TOK_OK;
}

/* Copy slot into e; 1 when the copy is consistent (no writer overlapped).
 * The acquire fence orders the word loads before the second seq load: if a
 * writer's store reached any word, seq no longer reads s1. */
static int cache_read(struct cache_slot *slot, struct cache_entry *e)
{
    uint32_t w[CACHE_WORDS];
    uint32_t s1 = atomic_load_explicit(&slot->seq, memory_order_acquire);
    if (s1 & 1)
        return 0;
    for (int i = 0; i < CACHE_WORDS; i++)
        w[i] = atomic_load_explicit(&slot->w[i], memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&slot->seq, memory_order_relaxed) != s1)
        return 0;
    memcpy(e, w, sizeof(*e));
    return 1;
}

/* Store e in slot unless another writer holds it. The release fence keeps
 * the odd seq visible before any new word, so a reader that sees a new word
 * also sees seq changed and drops its copy. */
static void cache_write(struct cache_slot *slot, const struct cache_entry *e)
{
    uint32_t w[CACHE_WORDS];
    uint32_t s = atomic_load_explicit(&slot->seq, memory_order_relaxed);
    if ((s & 1) || !atomic_compare_exchange_strong_explicit(&slot->seq, &s, s + 1,
                                                            memory_order_relaxed,
                                                            memory_order_relaxed))
        return; /* another writer is in; the cache is best-effort */
    atomic_thread_fence(memory_order_release);
    memcpy(w, e, sizeof(w));
    for (int i = 0; i < CACHE_WORDS; i++)
        atomic_store_explicit(&slot->w[i], w[i], memory_order_relaxed);
    atomic_store_explicit(&slot->seq, s + 2, memory_order_release);
}

/* Ids of one pre-tokenized piece: a single byte is its byte token, a short
 * piece comes from the word cache when it is there, anything else runs
 * BPE (and short results go into the cache). */
static int encode_piece(const struct bpe *b, const uint8_t *s, size_t n, struct scratch *sc,
                        struct tok_ids *out)
{
    if (n == 1)
        return tok_ids_push(out, b->byte_id[s[0]]);

    if (b->ignore_merges) {
        /* ignore_merges: a piece that is itself a vocab entry is that entry. */
        char buf[4 * SMALL_PIECE];
        if (n <= SMALL_PIECE) {
            size_t k = 0;
            for (size_t i = 0; i < n; i++)
                k += utf8_put(b->byte_cp[s[i]], buf + k);
            int32_t whole = str_find(b, buf, k);
            if (whole >= 0 && b->kind[whole] == 0)
                return tok_ids_push(out, whole);
        }
    }

    int cacheable = b->cache_on && n <= CACHE_KEY_MAX;
    struct cache_slot *slot = NULL;
    struct cache_entry e;
    if (cacheable) {
        slot = &b->cache[hash_bytes(s, n) & (CACHE_SLOTS - 1)];
        if (cache_read(slot, &e) && (e.meta & 0xFF) == n && memcmp(e.key, s, n) == 0) {
            size_t nids = e.meta >> 8;
            if (tok_ids_reserve(out, nids) < 0)
                return TOK_ENOMEM;
            memcpy(out->v + out->n, e.ids, nids * sizeof(int32_t));
            out->n += nids;
            return TOK_OK;
        }
    }

    size_t before = out->n;
    int rc = bpe_merge(b, s, n, sc, out);
    if (rc < 0)
        return rc;
    size_t nids = out->n - before;
    if (cacheable && nids <= CACHE_IDS_MAX) {
        memset(&e, 0, sizeof(e));
        e.meta = (uint32_t)n | (uint32_t)nids << 8;
        memcpy(e.key, s, n);
        memcpy(e.ids, out->v + before, nids * sizeof(int32_t));
        cache_write(slot, &e);
    }
    return TOK_OK;
}

/* One regex match in s[0..n) from offset; 1 found, 0 none, <0 error. The
 * subject is the piece alone, so a lookahead sees the piece's end as the
 * end of text, as it does in the reference (each piece is its own string). */
static int stage_match(const struct bpe *b, int k, const uint8_t *s, size_t n, size_t off,
                       struct scratch *sc, size_t *ms, size_t *me)
{
    int rc;
    if (b->jit[k]) {
        rc = pcre2_jit_match(b->re[k], s, n, off, 0, sc->md, NULL);
        /* The JIT's default 32 KiB stack can run out on pathological input;
         * the interpreter keeps its backtracking on the heap instead. */
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(b->re[k], s, n, off, PCRE2_NO_JIT | PCRE2_NO_UTF_CHECK, sc->md, NULL);
    } else {
        rc = pcre2_match(b->re[k], s, n, off, PCRE2_NO_UTF_CHECK, sc->md, NULL);
    }
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc < 0)
        return TOK_EINVAL;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

/* Run pre-tokenizer stage k over s[0..n) with the Isolated behaviour: the
 * matches and the gaps between them both become pieces for stage k + 1. */
static int split_stage(const struct bpe *b, int k, const uint8_t *s, size_t n, struct scratch *sc,
                       struct tok_ids *out)
{
    if (k == b->n_re)
        return encode_piece(b, s, n, sc, out);
    size_t prev = 0, off = 0;
    while (off <= n) {
        size_t ms, me;
        int rc = stage_match(b, k, s, n, off, sc, &ms, &me);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        if (ms > prev && (rc = split_stage(b, k + 1, s + prev, ms - prev, sc, out)) < 0)
            return rc;
        if (me > ms && (rc = split_stage(b, k + 1, s + ms, me - ms, sc, out)) < 0)
            return rc;
        prev = me;
        if (me > ms) {
            off = me;
        } else {
            /* An empty match splits here; the search resumes one
             * character on, as JavaScript's matchAll does. */
            if (me >= n)
                break;
            size_t adv;
            utf8_get(s + me, n - me, &adv);
            off = me + adv;
        }
    }
    if (prev < n)
        return split_stage(b, k + 1, s + prev, n - prev, sc, out);
    return TOK_OK;
}

/* The encode op (see tokenizer_bpe.h for the steps). On error, out is left
 * as it was: a caller never sees half a text's ids. */
static int bpe_encode(const struct tokenizer *t, const char *text, size_t len, unsigned flags,
                      struct tok_ids *out)
{
    const struct bpe *b = (const struct bpe *)t;
    const uint8_t *s = (const uint8_t *)text;
    size_t n0 = out->n;
    int rc = TOK_OK;

    if (len && !text)
        return TOK_EINVAL;
    if (!tok_utf8_valid(text, len))
        return TOK_EINVAL;
    if (len == 0)
        return TOK_OK;

    struct scratch *sc = malloc(sizeof(*sc));
    if (!sc)
        return TOK_ENOMEM;
    sc->cap = SMALL_PIECE;
    sc->id = sc->s_id;
    sc->next = sc->s_next;
    sc->prev = sc->s_prev;
    sc->heap = sc->s_heap;
    sc->big = NULL;
    sc->md = pcre2_match_data_create(1, NULL);
    if (!sc->md) {
        free(sc);
        return TOK_ENOMEM;
    }

    /* Added tokens first: the text between two of them is a section that
     * the pre-tokenizer sees on its own. Only bytes that can start an added
     * token ("<" for DeepSeek) cost more than a table lookup. */
    size_t start = 0;
    for (size_t i = 0; i < len;) {
        if (!b->first_byte[s[i]]) {
            i++;
            continue;
        }
        int32_t a = trie_match(b, s + i, len - i, flags);
        if (a < 0) {
            i++;
            continue;
        }
        if (i > start && (rc = split_stage(b, 0, s + start, i - start, sc, out)) < 0)
            goto done;
        if ((rc = tok_ids_push(out, b->added[a].id)) < 0)
            goto done;
        i += b->added[a].len;
        start = i;
    }
    if (start < len)
        rc = split_stage(b, 0, s + start, len - start, sc, out);
done:
    pcre2_match_data_free(sc->md);
    free(sc->big);
    free(sc);
    if (rc < 0)
        out->n = n0;
    return rc;
}

/* ---- the other ops ---- */

/* Decoding is context-free for byte-level BPE, so prev is unused. */
static const char *bpe_token_bytes(const struct tokenizer *t, int32_t prev, int32_t id,
                                   size_t *len)
{
    const struct bpe *b = (const struct bpe *)t;
    (void)prev;
    if (id < 0 || id >= t->vocab_size) {
        *len = 0;
        return NULL;
    }
    *len = b->dec_off[id + 1] - b->dec_off[id];
    return b->dec_blob + b->dec_off[id];
}

static int32_t bpe_lookup(const struct tokenizer *t, const char *piece)
{
    return str_find((const struct bpe *)t, piece, strlen(piece));
}

static void bpe_free(struct tokenizer *t)
{
    struct bpe *b = (struct bpe *)t;
    if (!b)
        return;
    for (int i = 0; i < b->n_re; i++)
        pcre2_code_free(b->re[i]);
    free(b->cache_mem);
    free(b->trie);
    free(b->added);
    free(b->merges);
    free(b->kind);
    free(b->dec_off);
    free(b->dec_blob);
    free(b->str_index);
    free(b->strs);
    free(b->blob);
    free(b);
}

static const struct tokenizer_ops bpe_ops = {
    .encode = bpe_encode,
    .token_bytes = bpe_token_bytes,
    .lookup = bpe_lookup,
    .free = bpe_free,
};

/* The cache flag is read without synchronisation by encoders; the header
 * says not to flip it while they run. */
void tok_bpe_set_cache(struct tokenizer *t, int on)
{
    ((struct bpe *)t)->cache_on = on;
}

int tok_bpe_is_special(const struct tokenizer *t, int32_t id)
{
    const struct bpe *b = (const struct bpe *)t;
    return id >= 0 && id < t->vocab_size && b->kind[id] == 2;
}

/* A scan rather than a field: it is asked once, when a decoder buffer is
 * sized, and the decode table already holds every length. */
size_t tok_bpe_max_token_bytes(const struct tokenizer *t)
{
    const struct bpe *b = (const struct bpe *)t;
    size_t max = 0;
    for (int32_t id = 0; id < t->vocab_size; id++)
        if (b->dec_off[id + 1] - b->dec_off[id] > max)
            max = b->dec_off[id + 1] - b->dec_off[id];
    return max;
}

/* ---- loading ---- */

/* Content of an added-token field in tokenizer_config.json: a string or an
 * {"content": ...} object. */
static const char *config_token(json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    return json_string_value(v);
}

/* BOS and EOS ids. tokenizer.json does not say which tokens they are; the
 * config beside it does, and a directory from the Hugging Face hub always
 * has one. A missing or unreadable config is not an error: the well-known
 * DeepSeek names are tried, and the ids stay -1 when those are absent. */
static void load_bos_eos(struct bpe *b, const char *path)
{
    static const char *const bos_names[] = { "<｜begin▁of▁sentence｜>", NULL };
    static const char *const eos_names[] = { "<｜end▁of▁sentence｜>", NULL };
    b->base.bos_id = b->base.eos_id = -1;

    /* No path: loaded from memory, there is no folder to look in. */
    const char *slash = path ? strrchr(path, '/') : NULL;
    size_t dir = slash ? (size_t)(slash - path) + 1 : 0;
    char *cfg_path = path ? malloc(dir + sizeof("tokenizer_config.json")) : NULL;
    if (cfg_path) {
        memcpy(cfg_path, path, dir);
        strcpy(cfg_path + dir, "tokenizer_config.json");
        json_t *cfg = json_load_file(cfg_path, 0, NULL);
        free(cfg_path);
        if (cfg) {
            const char *bos = config_token(cfg, "bos_token");
            const char *eos = config_token(cfg, "eos_token");
            if (bos)
                b->base.bos_id = str_find(b, bos, strlen(bos));
            if (eos)
                b->base.eos_id = str_find(b, eos, strlen(eos));
            json_decref(cfg);
        }
    }
    for (int i = 0; b->base.bos_id < 0 && bos_names[i]; i++)
        b->base.bos_id = str_find(b, bos_names[i], strlen(bos_names[i]));
    for (int i = 0; b->base.eos_id < 0 && eos_names[i]; i++)
        b->base.eos_id = str_find(b, eos_names[i], strlen(eos_names[i]));
}

/* Fill dec[] for every id: vocab strings map back through the byte-level
 * table, added tokens decode to their own text (the reference does the same
 * for added tokens, which are not byte-level spelled). */
static int build_decode_table(struct bpe *b, json_t *vocab, const int16_t cp_byte[512])
{
    size_t n = (size_t)b->base.vocab_size;
    const char **src = calloc(n, sizeof(char *));
    size_t *src_len = calloc(n, sizeof(size_t));
    int rc = TOK_ENOMEM;
    const char *key;
    json_t *val;

    if (!src || !src_len)
        goto out;
    json_object_foreach(vocab, key, val)
    {
        int32_t id = (int32_t)json_integer_value(val);
        src[id] = key;
        src_len[id] = strlen(key);
    }
    for (size_t i = 0; i < b->n_added; i++) {
        src[b->added[i].id] = b->blob + b->added[i].off;
        src_len[b->added[i].id] = b->added[i].len;
    }
    /* Byte-level strings never grow when decoded, so their length bounds
     * the blob. */
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += src_len[i];
    if (total > UINT32_MAX)
        goto out;
    b->dec_blob = malloc(total + 1);
    b->dec_off = malloc((n + 1) * sizeof(uint32_t));
    if (!b->dec_blob || !b->dec_off)
        goto out;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        b->dec_off[i] = (uint32_t)k;
        const uint8_t *s = (const uint8_t *)src[i];
        if (!s)
            continue;
        if (b->kind[i]) {
            memcpy(b->dec_blob + k, s, src_len[i]);
            k += src_len[i];
            continue;
        }
        for (size_t j = 0; j < src_len[i];) {
            size_t adv;
            uint32_t cp = utf8_get(s + j, src_len[i] - j, &adv);
            if (cp < 512 && cp_byte[cp] >= 0)
                b->dec_blob[k++] = (char)cp_byte[cp];
            else {
                /* Not a byte-level character: keep it as it is written. */
                memcpy(b->dec_blob + k, s + j, adv);
                k += adv;
            }
            j += adv;
        }
    }
    b->dec_off[n] = (uint32_t)k;
    rc = TOK_OK;
out:
    free(src);
    free(src_len);
    return rc;
}

/* Split one merges entry into its two parts: "a b" (one space; byte-level
 * strings hold no spaces) or ["a", "b"]. */
static int merge_parts(json_t *m, const char **a, size_t *al, const char **c, size_t *cl)
{
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        const char *sp = memchr(s, ' ', n);
        if (!sp || sp == s || sp + 1 == s + n || memchr(sp + 1, ' ', (size_t)(s + n - sp - 1)))
            return -1;
        *a = s;
        *al = (size_t)(sp - s);
        *c = sp + 1;
        *cl = (size_t)(s + n - sp - 1);
        return 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *al = json_string_length(json_array_get(m, 0));
        *c = json_string_value(json_array_get(m, 1));
        *cl = json_string_length(json_array_get(m, 1));
        return 0;
    }
    return -1;
}

/* Build the merges table. Rank is the position in the file: lower ranks
 * merge first. Every part and result must be a vocab entry, which is what
 * lets BPE run on ids; a file that breaks this is refused at load time
 * rather than producing unknown tokens later. */
static int load_merges(struct bpe *b, json_t *merges, char *err, size_t errlen)
{
    size_t n = json_array_size(merges);
    size_t cap = pow2_at_least(2 * n + 16);
    b->merges = malloc(cap * sizeof(*b->merges));
    if (!b->merges)
        return TOK_ENOMEM;
    for (size_t i = 0; i < cap; i++)
        b->merges[i].key = MERGE_EMPTY;
    b->merge_mask = cap - 1;

    char *cat = NULL;
    size_t cat_cap = 0;
    for (size_t r = 0; r < n; r++) {
        const char *a, *c;
        size_t al, cl;
        if (merge_parts(json_array_get(merges, r), &a, &al, &c, &cl) < 0) {
            set_err(err, errlen, "merges[%zu] is not \"a b\" or [a, b]", r);
            free(cat);
            return TOK_EFORMAT;
        }
        if (al + cl > cat_cap) {
            cat_cap = 2 * (al + cl) + 64;
            char *nc = realloc(cat, cat_cap);
            if (!nc) {
                free(cat);
                return TOK_ENOMEM;
            }
            cat = nc;
        }
        memcpy(cat, a, al);
        memcpy(cat + al, c, cl);
        int32_t ia = str_find(b, a, al), ic = str_find(b, c, cl), im = str_find(b, cat, al + cl);
        if (ia < 0 || ic < 0 || im < 0) {
            set_err(err, errlen, "merges[%zu] uses a token that is not in the vocab", r);
            free(cat);
            return TOK_EFORMAT;
        }
        merge_put(b, ia, ic, (uint32_t)r, im);
    }
    free(cat);
    return TOK_OK;
}

/* Refuse BPE features this implementation does not have (see the header's
 * supported subset), each with a message naming the feature. */
static int check_model(json_t *model, json_t **vocab, json_t **merges, int *ignore_merges, char *err,
                       size_t errlen)
{
    const char *type = json_string_value(json_object_get(model, "type"));
    *vocab = json_object_get(model, "vocab");
    *merges = json_object_get(model, "merges");
    if (!json_is_object(model)) {
        set_err(err, errlen, "no model object (is this a tokenizer.json?)");
        return TOK_EFORMAT;
    }
    if (type && strcmp(type, "BPE") != 0) {
        set_err(err, errlen, "model type %s is unsupported (only BPE)", type ? type : "(none)");
        return TOK_EFORMAT;
    }
    if (!json_is_object(*vocab) || !json_is_array(*merges)) {
        set_err(err, errlen, "model has no vocab object or merges array");
        return TOK_EFORMAT;
    }
    if (json_is_true(json_object_get(model, "byte_fallback"))) {
        set_err(err, errlen, "BPE byte_fallback is unsupported");
        return TOK_EFORMAT;
    }
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout)) {
        set_err(err, errlen, "BPE dropout is unsupported");
        return TOK_EFORMAT;
    }
    static const char *const affixes[] = { "continuing_subword_prefix", "end_of_word_suffix" };
    for (size_t i = 0; i < 2; i++) {
        const char *v = json_string_value(json_object_get(model, affixes[i]));
        if (v && *v) {
            set_err(err, errlen, "BPE %s is unsupported", affixes[i]);
            return TOK_EFORMAT;
        }
    }
    *ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    return TOK_OK;
}

/* Only "no normalization" is supported; DeepSeek's files have an empty
 * Sequence. A real normalizer (NFC, lowercase, ...) would change ids, so it
 * is refused rather than ignored. */
static int check_normalizer(json_t *norm, char *err, size_t errlen)
{
    if (!norm || json_is_null(norm))
        return TOK_OK;
    const char *type = json_string_value(json_object_get(norm, "type"));
    if (type && strcmp(type, "Sequence") == 0 &&
        json_array_size(json_object_get(norm, "normalizers")) == 0)
        return TOK_OK;
    set_err(err, errlen, "normalizer %s is unsupported (only none)", type ? type : "(untyped)");
    return TOK_EFORMAT;
}

/* Read the added_tokens array into added[], kind[] and the trie. Their text
 * is also registered as a name of the id, so lookup() finds control tokens
 * by the text the chat template uses. */
static int load_added(struct bpe *b, json_t *list, char *err, size_t errlen)
{
    size_t n = json_array_size(list), i;
    json_t *a;
    b->added = calloc(n ? n : 1, sizeof(*b->added));
    if (!b->added)
        return TOK_ENOMEM;
    int32_t root;
    if (trie_node_new(b, 0, &root) < 0)
        return TOK_ENOMEM;
    json_array_foreach(list, i, a)
    {
        json_t *content = json_object_get(a, "content");
        json_t *jid = json_object_get(a, "id");
        json_int_t id = json_integer_value(jid);
        if (!json_is_string(content) || json_string_length(content) == 0 || !json_is_integer(jid) || id < 0 ||
            id >= b->base.vocab_size) {
            set_err(err, errlen, "added_tokens[%zu] lacks a content string or valid id", i);
            return TOK_EFORMAT;
        }
        struct added_tok *t = &b->added[b->n_added];
        t->len = (uint32_t)json_string_length(content);
        t->id = (int32_t)id;
        t->special = json_is_true(json_object_get(a, "special"));
        if (str_add(b, json_string_value(content), t->len, t->id, &t->off) < 0)
            return TOK_ENOMEM;
        b->kind[id] = t->special ? 2 : 1;
        if (trie_insert(b, (const uint8_t *)json_string_value(content), t->len,
                        (int32_t)b->n_added) < 0)
            return TOK_ENOMEM;
        b->n_added++;
    }
    return TOK_OK;
}

static int load_text(const char *text, size_t text_len, const char *path, const char *cfg_path,
                     struct tokenizer **out, char *err, size_t errlen);

/* The whole file at path in a malloc'd buffer, or NULL with err set. */
static char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (!f) {
        set_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                set_err(err, errlen, "out of memory reading %s", path);
                goto fail;
            }
            buf = nb;
            cap = ncap;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0)
            break;
    }
    if (ferror(f)) {
        set_err(err, errlen, "cannot read %s: %s", path, strerror(errno));
        goto fail;
    }
    fclose(f);
    *len = n;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

int tok_bpe_load(const char *path, struct tokenizer **out, char *err, size_t errlen)
{
    *out = NULL;
    size_t text_len;
    char *text = read_file(path, &text_len, err, errlen);
    if (!text)
        return TOK_EIO;
    /* Parse from memory: json_loadf reads a byte at a time through stdio,
     * which showed up in load-time profiles of this 7.8 MB file. */
    int rc = load_text(text, text_len, path, path, out, err, errlen);
    free(text);
    return rc;
}

int tok_bpe_load_buffer(const char *text, size_t len, const char *name, struct tokenizer **out,
                        char *err, size_t errlen)
{
    *out = NULL;
    return load_text(text, len, name ? name : "tokenizer.json", NULL, out, err, errlen);
}

/* Build a tokenizer from the file's text. path names it in messages;
 * cfg_path, when not NULL, is where it was read from, so the
 * tokenizer_config.json beside it can name BOS and EOS. */
static int load_text(const char *text, size_t text_len, const char *path, const char *cfg_path,
                     struct tokenizer **out, char *err, size_t errlen)
{
    json_t *root = NULL;
    struct bpe *b = NULL;
    int rc;
    json_error_t jerr;
    root = json_loadb(text, text_len, JSON_ALLOW_NUL, &jerr);
    if (!root) {
        set_err(err, errlen, "%s is not valid JSON (line %d: %s)", path, jerr.line, jerr.text);
        return TOK_EFORMAT;
    }

    b = calloc(1, sizeof(*b));
    if (!b) {
        rc = TOK_ENOMEM;
        goto fail;
    }
    b->base.ops = &bpe_ops;
    b->cache_on = 1;

    json_t *vocab, *merges, *added = json_object_get(root, "added_tokens");
    if ((rc = check_model(json_object_get(root, "model"), &vocab, &merges, &b->ignore_merges, err,
                          errlen)) < 0)
        goto fail;
    if ((rc = check_normalizer(json_object_get(root, "normalizer"), err, errlen)) < 0)
        goto fail;
    if (added && !json_is_array(added)) {
        set_err(err, errlen, "added_tokens is not an array");
        rc = TOK_EFORMAT;
        goto fail;
    }

    /* Ids run from 0 to the largest id of the vocab or the added tokens. */
    int64_t max_id = -1;
    const char *key;
    json_t *val;
    size_t i;
    json_object_foreach(vocab, key, val)
    {
        json_int_t id = json_integer_value(val);
        if (!json_is_integer(val) || id < 0 || id >= MAX_VOCAB) {
            set_err(err, errlen, "vocab entry %s has no valid id (an integer below %d)", key, MAX_VOCAB);
            rc = TOK_EFORMAT;
            goto fail;
        }
        if (id > max_id)
            max_id = id;
    }
    json_array_foreach(added, i, val)
    {
        json_int_t id = json_integer_value(json_object_get(val, "id"));
        if (id > max_id && id < MAX_VOCAB) /* a larger one is refused by load_added() */
            max_id = id;
    }
    if (max_id < 255) {
        set_err(err, errlen, "vocab is too small for byte-level BPE");
        rc = TOK_EFORMAT;
        goto fail;
    }
    b->base.vocab_size = (int32_t)(max_id + 1);

    /* The string index is sized once, at twice the names it will hold, so
     * it never rehashes and probes stay short. */
    size_t n_strings = json_object_size(vocab) + json_array_size(added);
    rc = TOK_ENOMEM;
    b->strs_cap = n_strings;
    b->strs = malloc(n_strings * sizeof(*b->strs));
    b->str_mask = pow2_at_least(2 * n_strings) - 1;
    b->str_index = malloc((b->str_mask + 1) * sizeof(int32_t));
    b->kind = calloc((size_t)b->base.vocab_size, 1);
    if (!b->strs || !b->str_index || !b->kind)
        goto fail;
    memset(b->str_index, 0xFF, (b->str_mask + 1) * sizeof(int32_t));

    json_object_foreach(vocab, key, val)
    {
        uint32_t off;
        if (str_add(b, key, strlen(key), (int32_t)json_integer_value(val), &off) < 0)
            goto fail;
    }

    /* BPE starts every piece from single-byte tokens, so all 256 must
     * exist; a file without them is not byte-level BPE. */
    int16_t cp_byte[512];
    byte_level_maps(b->byte_cp, cp_byte);
    for (int c = 0; c < 256; c++) {
        char u[4];
        size_t k = utf8_put(b->byte_cp[c], u);
        b->byte_id[c] = str_find(b, u, k);
        if (b->byte_id[c] < 0) {
            set_err(err, errlen, "vocab lacks the byte-level token of byte 0x%02X", c);
            rc = TOK_EFORMAT;
            goto fail;
        }
    }
    /* Merges refer to vocab strings only, so they are read before added
     * tokens could shadow a string. */
    if ((rc = load_merges(b, merges, err, errlen)) < 0)
        goto fail;
    if ((rc = load_added(b, added, err, errlen)) < 0)
        goto fail;
    if ((rc = build_decode_table(b, vocab, cp_byte)) < 0)
        goto fail;

    json_t *pt = json_object_get(root, "pre_tokenizer");
    int saw_byte_level = 0;
    if (!pt || json_is_null(pt)) {
        set_err(err, errlen, "tokenizer has no pre_tokenizer (byte-level BPE needs ByteLevel)");
        rc = TOK_EFORMAT;
        goto fail;
    }
    if ((rc = add_pretokenizer(b, pt, &saw_byte_level, err, errlen)) < 0)
        goto fail;
    if (!saw_byte_level) {
        set_err(err, errlen, "pre_tokenizer has no ByteLevel step (only byte-level BPE is supported)");
        rc = TOK_EFORMAT;
        goto fail;
    }

    rc = TOK_ENOMEM;
    /* calloc: all-zero is an empty slot (seq 0, meta 0), and untouched
     * pages of the 4 MiB table cost no memory until a word lands there. */
    b->cache_mem = calloc(1, CACHE_SLOTS * sizeof(*b->cache) + 64);
    if (!b->cache_mem)
        goto fail;
    b->cache = (struct cache_slot *)(((uintptr_t)b->cache_mem + 63) & ~(uintptr_t)63);

    load_bos_eos(b, cfg_path);
    json_decref(root);
#ifdef __GLIBC__
    /* The parsed JSON tree was several times the size of the tables built
     * from it; hand its freed pages back to the system rather than keep
     * them resident for the life of the process. */
    malloc_trim(0);
#endif
    *out = &b->base;
    return TOK_OK;

fail:
    /* bpe_free() copes with a half-built tokenizer: every table it frees
     * starts out NULL (calloc) and free(NULL) is a no-op. */
    if (rc == TOK_ENOMEM)
        set_err(err, errlen, "out of memory loading %s", path);
    json_decref(root);
    bpe_free(b ? &b->base : NULL);
    return rc;
}
