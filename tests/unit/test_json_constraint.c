/* test_json_constraint: the JSON grammar accepts every prefix of valid
 * objects and refuses invalid ones at the first bad byte; json_min_close is
 * what closing really takes; the mask (trie walk and in-string fast path)
 * allows exactly the tokens a byte-by-byte check allows; and random walks
 * over a vocabulary always end in an object jansson parses, within budget. */
#include "engines/native/runtime/json_constraint.h"

#include "test.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>

/* Feed all of s; the index of the first refused byte, or -1. */
static long first_bad(const char *s, size_t n, struct json_state *st)
{
    json_state_init(st);
    for (size_t i = 0; i < n; i++)
        if (!json_feed(st, (unsigned char)s[i]))
            return (long)i;
    return -1;
}

static void valid_objects(void)
{
    static const char *const ok[] = {
        "{}",
        " {}",
        "{ }",
        "{\"a\":1}",
        "{\"a\" : -0.5e+10 , \"b\":[1,2,[],{}],\"c\":{\"d\":null}}",
        "{\"k\":true,\"l\":false,\"m\":null,\"n\":0,\"o\":-12.25E-3}",
        "{\"esc\":\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9\\uD83D\\uDE00\"}",
        "{\"utf8\":\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \x7F\"}",
        "{\n  \"pretty\": [\n    1,\n    2\n  ]\n}\n",
        "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct json_state st;
        size_t n = strlen(ok[i]);
        long bad = first_bad(ok[i], n, &st);
        if (bad >= 0)
            fprintf(stderr, "refused valid %s at %ld\n", ok[i], bad);
        CHECK(bad < 0);
        CHECK(json_done(&st));
        CHECK(json_min_close(&st) == 0);
        /* Every proper prefix is open, and says so. */
        json_state_init(&st);
        int open_ok = 1;
        size_t end = n;
        while (end > 0 && (ok[i][end - 1] == '\n' || ok[i][end - 1] == ' '))
            end--;
        for (size_t k = 0; k + 1 < end; k++) {
            json_feed(&st, (unsigned char)ok[i][k]);
            if (json_done(&st) || json_min_close(&st) <= 0)
                open_ok = 0;
        }
        CHECK(open_ok);
        /* And jansson agrees it is an object. */
        json_t *j = json_loadb(ok[i], n, 0, NULL);
        CHECK(json_is_object(j));
        json_decref(j);
    }
}

static void invalid_prefixes(void)
{
    /* text, index of the first byte that must be refused */
    static const struct {
        const char *s;
        long at;
    } bad[] = {
        {"[", 0},
        {"x{}", 0},
        {"{'", 1},
        {"{\"a\" 1", 5},
        {"{\"a\":01", 6},
        {"{\"a\":-}", 6},
        {"{\"a\":tru}", 8},
        {"{\"a\":nul1", 8},
        {"{\"a\":\"\x01\"", 6},
        {"{\"a\":\"\\x\"", 7},
        {"{\"a\":\"\\u12g", 10},
        {"{\"a\":1,}", 7},
        {"{\"a\":1.}", 7},
        {"{\"a\":1e}", 7},
        {"{\"a\":+1}", 5},
        {"{}x", 2},
        {"{},", 2},
        {"{\"a\":[1}", 7},
        {"{\"a\":{]", 6},
        {"{,", 1},
        {"{\"a\":\"\xC0\x80\"}", 6},          /* overlong */
        {"{\"a\":\"\xED\xA0\x80\"}", 7},      /* a surrogate in UTF-8 */
        {"{\"a\":\"\xF4\x90\x80\x80\"}", 7},  /* past U+10FFFF */
        {"{\"a\":\"\xC3(\"}", 7},             /* a broken sequence */
        {"{\"a\":1\xC3\xA9}", 6},              /* non-ASCII outside a string */
        {"{                 }", 17},          /* the 17th whitespace byte of one run */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct json_state st;
        long got = first_bad(bad[i].s, strlen(bad[i].s), &st);
        if (got != bad[i].at)
            fprintf(stderr, "%s: refused at %ld, want %ld\n", bad[i].s, got, bad[i].at);
        CHECK(got == bad[i].at);
    }
    /* Nesting stops at JSON_MAX_DEPTH. */
    char deep[JSON_MAX_DEPTH + 8];
    deep[0] = '{';
    memcpy(deep + 1, "\"a\":", 4);
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        deep[5 + i] = '[';
    struct json_state st;
    CHECK(first_bad(deep, 5 + JSON_MAX_DEPTH - 1, &st) < 0);
    CHECK(first_bad(deep, 5 + JSON_MAX_DEPTH, &st) == 5 + JSON_MAX_DEPTH - 1);
}

/* What closing takes, by hand, at a few states. */
static void min_close(void)
{
    static const struct {
        const char *s;
        int close;
    } c[] = {
        {"", 2},                    /* {} */
        {"{", 1},                   /* } */
        {"{\"a", 4},                /* ":0} */
        {"{\"a\"", 3},              /* :0} */
        {"{\"a\":", 2},             /* 0} */
        {"{\"a\":[tr", 4},          /* ue]} */
        {"{\"a\":[1,", 3},          /* 0]} */
        {"{\"a\":\"\\u0", 5},       /* 000"} */
        {"{\"a\":\"\xE2\x82", 3},   /* one UTF-8 byte, "} */
        {"{\"a\":1,", 5},           /* "":0} */
        {"{\"a\":-", 2},            /* 0} */
        {"{\"a\":1.5", 1},
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        struct json_state st;
        CHECK(first_bad(c[i].s, strlen(c[i].s), &st) < 0);
        if (json_min_close(&st) != c[i].close)
            fprintf(stderr, "%s: min_close %d, want %d\n", c[i].s, json_min_close(&st), c[i].close);
        CHECK(json_min_close(&st) == c[i].close);
    }
}

/* A small vocabulary with the closers, multi-byte pieces, split UTF-8,
 * tokens sharing prefixes, an empty and a never token. */
static const char *const pieces[] = {
    "{", "}", "[", "]", "\"", ":", ",", "0", "1", "-", ".", "e", "t", "r", "u", "f", "a", "l",
    "s", "n", " ", "\n", "  ", "\\", "x", "{\"", "\"}", "\":", "\": ", "\",", "{}", "true",
    "null", "false", "ab", "abc", "abc\"", "12", "1.5", "\xC3", "\xA9", "caf\xC3\xA9", "\xE2\x82",
    "\xAC", " \"", "}\n", "\\n", "\\u", "00e9", "\x01", "é!", ":[", "],", "]}", NULL, "",
};
enum { NP = sizeof(pieces) / sizeof(pieces[0]) };

static const char *piece_bytes(void *ctx, int32_t id, size_t *len)
{
    (void)ctx;
    if (id < 0 || id >= NP || !pieces[id]) {
        *len = 0;
        return NULL;
    }
    *len = strlen(pieces[id]);
    return pieces[id];
}

static uint64_t rng_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* The mask against a byte-by-byte check of every token, along random walks
 * with random budgets; every walk ends in a complete object within its
 * budget, which jansson parses. */
static void mask_matches_brute_force(void)
{
    struct json_vocab *v = json_vocab_new(NP, piece_bytes, NULL);
    struct json_scratch *sc = v ? json_scratch_new(v) : NULL;
    CHECK(v && sc);
    if (!v || !sc)
        return;
    CHECK(json_vocab_size(v) == NP);
    uint64_t rng = 42;
    int mismatches = 0, incomplete = 0, unparsed = 0, walks = 0;
    for (int w = 0; w < 400; w++) {
        int budget = 2 + (int)(rng_next(&rng) % 40);
        struct json_state st;
        json_state_init(&st);
        char text[4096];
        size_t tl = 0;
        float logits[NP];
        int steps;
        for (steps = 0; steps < budget && !json_done(&st); steps++) {
            int left = budget - steps - 1;
            for (int i = 0; i < NP; i++)
                logits[i] = 0.0f;
            int n_ok = json_constraint_mask(v, sc, &st, left, logits);
            int count = 0;
            for (int i = 0; i < NP; i++) {
                size_t l;
                const char *b = piece_bytes(NULL, i, &l);
                struct json_state t = st;
                int want = b && l && json_feed_bytes(&t, b, l) && json_min_close(&t) <= left;
                int got = logits[i] == 0.0f;
                count += got;
                if (want != got)
                    mismatches++;
            }
            if (count != n_ok)
                mismatches++;
            if (n_ok == 0)
                break;
            /* A random allowed token. */
            int pick = (int)(rng_next(&rng) % (uint64_t)n_ok), id = -1;
            for (int i = 0; i < NP && id < 0; i++)
                if (logits[i] == 0.0f && pick-- == 0)
                    id = i;
            CHECK(json_constraint_advance(v, &st, id));
            memcpy(text + tl, pieces[id], strlen(pieces[id]));
            tl += strlen(pieces[id]);
        }
        walks++;
        if (!json_done(&st)) {
            incomplete++;
            continue;
        }
        /* jansson refuses numbers past a double; JSON does not. */
        json_error_t jerr;
        json_t *j = json_loadb(text, tl, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &jerr);
        if (!j && strstr(jerr.text, "overflow"))
            continue;
        if (!json_is_object(j)) {
            unparsed++;
            fprintf(stderr, "walk %d: %.*s is not an object\n", w, (int)tl, text);
        }
        json_decref(j);
    }
    CHECK(walks == 400);
    CHECK(mismatches == 0);
    CHECK(incomplete == 0);     /* the budget rule closes every object in time */
    CHECK(unparsed == 0);
    /* The never and empty tokens are never allowed, and cannot be fed. */
    struct json_state st;
    json_state_init(&st);
    CHECK(!json_constraint_advance(v, &st, NP - 2));
    CHECK(!json_constraint_advance(v, &st, NP - 1));
    CHECK(!json_constraint_advance(v, &st, NP));
    /* Budget 1 at the start: only "{}" fits; 0: nothing. */
    float logits[NP];
    for (int i = 0; i < NP; i++)
        logits[i] = 1.0f;
    CHECK(json_constraint_mask(v, sc, &st, 0, logits) == 1 && logits[30] == 1.0f &&
          isinf(logits[0]));
    json_state_init(&st);
    CHECK(json_feed_bytes(&st, "{}", 2) && json_done(&st));
    CHECK(json_constraint_mask(v, sc, &st, 100, logits) == 0);
    json_scratch_free(sc);
    json_vocab_free(v);
    json_vocab_free(NULL);
    json_scratch_free(NULL);
}

int main(void)
{
    valid_objects();
    invalid_prefixes();
    min_close();
    mask_matches_brute_force();
    TEST_MAIN_END();
}
