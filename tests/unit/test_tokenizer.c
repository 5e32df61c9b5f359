/* test_tokenizer.c: the shared tokenizer pieces (tokenizer.c): id arrays,
 * the UTF-8 input policy and the streaming decoder.
 *
 * The decoder is driven through a fake tokenizer whose tokens are arbitrary
 * byte strings, so split and broken UTF-8 sequences can be placed exactly
 * where a real model might emit them. */
#include <stdint.h>
#include <string.h>

#include "tokenizer/tokenizer.h"
#include "tests/unit/test.h"

/* A tokenizer whose id i decodes to fake_tokens[i]. */
static const char *const fake_tokens[] = {
    "Hello",        /* 0 */
    " w\xC3",       /* 1: ends with the lead byte of "é" (C3 A9) */
    "\xA9",         /* 2: its continuation */
    "\xE4\xBD",     /* 3: first two bytes of "你" (E4 BD A0) */
    "\xA0!",        /* 4: the last byte, then ASCII */
    "\xF0\x9F",     /* 5: half of U+1F600 (F0 9F 98 80) */
    "\x98",         /* 6 */
    "\x80",         /* 7 */
    "\xFF",         /* 8: never valid */
    "\xC0\xAF",     /* 9: an overlong "/" */
    "\xED\xA0\x80", /* 10: a UTF-16 surrogate, invalid in UTF-8 */
    "",             /* 11: empty */
    "abc\xE2\x82",  /* 12: ASCII, then two bytes of "€" (E2 82 AC) */
    "\xAC\xE2\x82", /* 13: the end of "€", then the start of another */
};
#define N_FAKE ((int32_t)(sizeof(fake_tokens) / sizeof(fake_tokens[0])))

static const char *fake_bytes(const struct tokenizer *t, int32_t prev, int32_t id, size_t *len)
{
    (void)t;
    (void)prev;
    if (id < 0 || id >= N_FAKE) {
        *len = 0;
        return NULL;
    }
    *len = strlen(fake_tokens[id]);
    return fake_tokens[id];
}

static const struct tokenizer_ops fake_ops = { .token_bytes = fake_bytes };
static const struct tokenizer fake = { .ops = &fake_ops, .vocab_size = N_FAKE, .bos_id = -1, .eos_id = -1 };

/* Stream ids through a decoder, checking every chunk is valid UTF-8 on its
 * own, and return the concatenation (static buffer). */
static const char *stream(const int32_t *ids, size_t n)
{
    static char all[1024];
    size_t used = 0;
    struct tok_decoder d;
    char chunk[256];
    tok_decoder_init(&d, &fake);
    for (size_t i = 0; i <= n; i++) {
        size_t k = i < n ? tok_decoder_push(&d, ids[i], chunk, sizeof(chunk))
                         : tok_decoder_flush(&d, chunk, sizeof(chunk));
        CHECK(tok_utf8_valid(chunk, k));
        memcpy(all + used, chunk, k);
        used += k;
    }
    all[used] = '\0';
    return all;
}

static void test_ids(void)
{
    struct tok_ids ids = { 0 };
    int ok = 1;
    for (int32_t i = 0; i < 100000; i++)
        ok &= tok_ids_push(&ids, i) == TOK_OK;
    CHECK(ok);
    CHECK(ids.n == 100000);
    for (int32_t i = 0; i < 100000; i++)
        ok &= ids.v[i] == i;
    CHECK(ok);
    CHECK(tok_ids_reserve(&ids, 10) == TOK_OK && ids.cap - ids.n >= 10);
    CHECK(tok_ids_reserve(&ids, SIZE_MAX / 2) == TOK_ENOMEM);
    tok_ids_free(&ids);
    CHECK(ids.v == NULL && ids.n == 0 && ids.cap == 0);
    tok_ids_free(&ids);  /* freeing twice, and NULL, are no-ops */
    tok_ids_free(NULL);
}

static void test_utf8_policy(void)
{
    static const struct {
        const char *s;
        size_t len;
        int valid;
    } cases[] = {
        { "", 0, 1 },
        { "plain ascii text that is longer than eight bytes", 48, 1 },
        { "nul\0inside", 10, 1 },                /* U+0000 is text */
        { "\xC3\xA9", 2, 1 },                    /* é */
        { "\xE4\xBD\xA0\xE5\xA5\xBD", 6, 1 },    /* 你好 */
        { "\xF0\x9F\x98\x80", 4, 1 },            /* U+1F600 */
        { "\xF4\x8F\xBF\xBF", 4, 1 },            /* U+10FFFF, the last code point */
        { "\xEF\xBF\xBF", 3, 1 },                /* U+FFFF, a noncharacter but valid */
        { "\x80", 1, 0 },                        /* lone continuation */
        { "\xC3", 1, 0 },                        /* truncated */
        { "abcdefgh\xC3", 9, 0 },                /* truncated after the fast path */
        { "\xC0\xAF", 2, 0 },                    /* overlong '/' */
        { "\xC1\xBF", 2, 0 },                    /* overlong */
        { "\xE0\x80\xAF", 3, 0 },                /* overlong, 3 bytes */
        { "\xF0\x80\x80\xAF", 4, 0 },            /* overlong, 4 bytes */
        { "\xED\xA0\x80", 3, 0 },                /* surrogate U+D800 */
        { "\xED\xBF\xBF", 3, 0 },                /* surrogate U+DFFF */
        { "\xF4\x90\x80\x80", 4, 0 },            /* U+110000 */
        { "\xF5\x80\x80\x80", 4, 0 },            /* never a lead byte */
        { "\xFF", 1, 0 },
        { "\xE4\xBD\x41", 3, 0 },                /* continuation replaced by 'A' */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = tok_utf8_valid(cases[i].s, cases[i].len);
        if (got != cases[i].valid)
            fprintf(stderr, "utf8 case %zu: got %d\n", i, got);
        CHECK(got == cases[i].valid);
    }
}

static void test_decoder(void)
{
    /* A character split across tokens is held back, then completed. */
    {
        struct tok_decoder d;
        char out[64];
        tok_decoder_init(&d, &fake);
        CHECK(tok_decoder_push(&d, 0, out, sizeof(out)) == 5 && memcmp(out, "Hello", 5) == 0);
        size_t k = tok_decoder_push(&d, 1, out, sizeof(out));
        CHECK(k == 2 && memcmp(out, " w", 2) == 0);        /* the C3 waits */
        k = tok_decoder_push(&d, 2, out, sizeof(out));
        CHECK(k == 2 && memcmp(out, "\xC3\xA9", 2) == 0);  /* é, whole */
        CHECK(tok_decoder_flush(&d, out, sizeof(out)) == 0);
    }
    { /* three-byte and four-byte characters across three tokens */
        int32_t ids[] = { 3, 4, 5, 6, 7 };
        CHECK_STR(stream(ids, 5), "\xE4\xBD\xA0!\xF0\x9F\x98\x80");
    }
    { /* one token ends a character and starts the next */
        int32_t ids[] = { 12, 13, 2 };
        /* "abc", then "€" across two tokens, then E2 82 + A9 = U+20A9 "₩" */
        CHECK_STR(stream(ids, 3), "abc\xE2\x82\xAC\xE2\x82\xA9");
    }
    /* Invalid bytes become U+FFFD, one per maximal subpart (WHATWG). */
    {
        int32_t ids[] = { 8 };
        CHECK_STR(stream(ids, 1), "\xEF\xBF\xBD");
    }
    {
        int32_t ids[] = { 9 }; /* C0 AF: two invalid bytes, two U+FFFD */
        CHECK_STR(stream(ids, 1), "\xEF\xBF\xBD\xEF\xBF\xBD");
    }
    {
        int32_t ids[] = { 10 }; /* ED A0 80: ED then two stray continuations */
        CHECK_STR(stream(ids, 1), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    }
    {
        int32_t ids[] = { 3, 0 }; /* E4 BD then 'H': one U+FFFD for E4 BD */
        CHECK_STR(stream(ids, 2), "\xEF\xBF\xBDHello");
    }
    {
        int32_t ids[] = { 0, 5 }; /* cut off by the end of the stream */
        CHECK_STR(stream(ids, 2), "Hello\xEF\xBF\xBD");
    }
    {
        int32_t ids[] = { 11, 99, -1, 0 }; /* empty and unknown ids add nothing */
        CHECK_STR(stream(ids, 4), "Hello");
    }
    /* tok_decode matches the streaming result and NUL-terminates. */
    {
        int32_t ids[] = { 0, 1, 2, 3, 4, 8 };
        char *s;
        size_t len;
        CHECK(tok_decode(&fake, ids, 6, &s, &len) == TOK_OK);
        CHECK_STR(s, "Hello w\xC3\xA9\xE4\xBD\xA0!\xEF\xBF\xBD");
        CHECK(len == strlen(s));
        free(s);
        CHECK(tok_decode(&fake, ids, 0, &s, &len) == TOK_OK && len == 0 && s[0] == '\0');
        free(s);
    }
    /* The documented worst case fits TOK_DECODE_CAP. */
    {
        struct tok_decoder d;
        char out[TOK_DECODE_CAP(3)];
        tok_decoder_init(&d, &fake);
        tok_decoder_push(&d, 5, out, sizeof(out)); /* holds F0 9F */
        size_t k = tok_decoder_push(&d, 10, out, sizeof(out));
        CHECK(k == 12 && k <= sizeof(out));        /* 4 x U+FFFD */
    }
}

int main(void)
{
    test_ids();
    test_utf8_policy();
    test_decoder();
    TEST_MAIN_END();
}
