/* The fast JSON reader (common/jsonr.c): on the shapes the hot path reads
 * (requests, upstream chunks and answers) it must decide by itself, and its
 * tree must print exactly as jansson's does, keys in the same order; on
 * every case it leaves to jansson (errors, duplicates, \u0000, big integers,
 * deep nesting) it must decline, and jr_load must then give jansson's
 * answer, error text included. */
#include <jansson.h>
#include <string.h>

#include "common/jsonr.h"
#include "tests/unit/test.h"

static char *dump(const json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* jr_parse decides s, and agrees with json_loadb. */
static int same(const char *s)
{
    json_t *a = jr_parse(s, strlen(s));
    json_t *b = json_loadb(s, strlen(s), 0, NULL);
    int ok = 0;
    if (a && b) {
        char *da = dump(a), *db = dump(b);
        ok = da && db && strcmp(da, db) == 0 && json_equal(a, b);
        if (!ok)
            fprintf(stderr, "jsonr: %s\n  ours:    %s\n  jansson: %s\n", s, da, db);
        free(da);
        free(db);
    } else {
        fprintf(stderr, "jsonr: not decided: %s (jansson: %s)\n", s, b ? "ok" : "error");
    }
    json_decref(a);
    json_decref(b);
    return ok;
}

/* jr_parse declines s; jr_load then says what json_loadb says. */
static int declined(const char *s, size_t flags)
{
    size_t n = strlen(s);
    json_t *a = jr_parse(s, n);
    json_error_t e1, e2;
    json_t *b = jr_load(s, n, flags, &e1);
    json_t *c = json_loadb(s, n, flags, &e2);
    int ok = !a && !b == !c;
    if (b && c)
        ok = ok && json_equal(b, c);
    if (!b && !c)
        ok = ok && strcmp(e1.text, e2.text) == 0 && e1.line == e2.line && e1.column == e2.column;
    if (!ok)
        fprintf(stderr, "jsonr: should decline and match jansson: %s\n", s);
    json_decref(a);
    json_decref(b);
    json_decref(c);
    return ok;
}

int main(void)
{
    /* what the hot path reads */
    CHECK(same("{\"model\":\"deepseek-coder-1.3b\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
               "\"messages\":[{\"role\":\"user\",\"content\":\"Say hello to the benchmark.\"}]}"));
    CHECK(same("{\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"m\","
               "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok1 \"},\"logprobs\":null,"
               "\"finish_reason\":null}]}"));
    CHECK(same("{\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":8,\"total_tokens\":16}}"));
    CHECK(same("{\"choices\":[{\"logprobs\":{\"content\":[{\"token\":\"a\",\"logprob\":-0.25,"
               "\"bytes\":[97],\"top_logprobs\":[{\"token\":\"b\",\"logprob\":-1.5e-3}]}]}}]}"));
    CHECK(same("{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":"
               "{\"name\":\"f\",\"arguments\":\"{\\\"x\\\": 1}\"}}]}"));
    /* whitespace, empties, literals, nesting */
    CHECK(same(" \t\r\n{ } "));
    CHECK(same("[]"));
    CHECK(same("[ true , false , null , [ [ ] ] , { \"a\" : { } } ]"));
    /* numbers: integers to 18 digits, reals as strtod reads them */
    CHECK(same("[0,-0,7,-42,999999999999999999,-999999999999999999]"));
    CHECK(same("[0.5,-0.0,1e3,1E-3,2.5e+10,1e-400,6.02214076e23,123456789012345678901234.5]"));
    /* strings: escapes, surrogate pairs, raw UTF-8, DEL, keys with escapes */
    CHECK(same("[\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\",\"\\u00e9\\u4e2d\\ud83d\\ude00\",\"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\x7f\"]"));
    CHECK(same("{\"k\\u00e9y\":\"v\\n\",\"k2\":{\"\\\"\":[\"x\\ty\"]},\"z\":1}"));
    /* long strings (read eight bytes at a time) with the byte that needs a
     * look at every offset of a word */
    CHECK(same("[\"0123456789abcdef0123456789\",\"abcdefghijklmnop\\\"qrstuvwxyz\",\"abcdefghij\xc3\xa9klmnopq\"]"));
    for (int at = 0; at < 16; at++) {
        char doc[64], bad1[64], bad2[64];
        snprintf(doc, sizeof doc, "[\"%.*s\\n%s\"]", at, "0123456789abcdef", "tail-of-it");
        CHECK(same(doc));
        snprintf(bad1, sizeof bad1, "[\"%.*s\x01%s\"]", at, "0123456789abcdef", "tail-of-it");
        CHECK(declined(bad1, 0));
        snprintf(bad2, sizeof bad2, "[\"%.*s\xff%s\"]", at, "0123456789abcdef", "tail-of-it");
        CHECK(declined(bad2, 0));
    }
    /* key order is kept, as jansson keeps it */
    CHECK(same("{\"z\":1,\"a\":2,\"m\":3,\"b\":{\"y\":1,\"c\":2}}"));

    /* left to jansson: malformed */
    static const char *const bad[] = {
        "", " ", "{", "[", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "[1,]", "[1 2]", "{,}", "[01]", "[-]", "[1.]",
        "[.5]", "[1e]", "[1e+]", "[+1]", "[tru]", "[truex]", "[nul]", "[\"a]", "[\"\\x\"]", "[\"\\u12\"]",
        "[\"\\u12g4\"]", "[\"a\x01\"]", "[\"\xff\"]", "[\"\xc0\xaf\"]", "[\"\xed\xa0\x80\"]", "[\"\xf4\x90\x80\x80\"]",
        "[\"\\ud800\"]", "[\"\\udc00\"]", "[\"\\ud800\\u0041\"]", "[] x", "{}{}", "[\"\xc3\"]", "[\"abcdefghijklmnopqrstuvwxyz",
        /* valid, but jansson's to decide: the top level, NUL, big integers, infinities */
        "\"str\"", "1", "null", "[\"a\\u0000b\"]", "{\"\\u0000\":1}", "[9223372036854775807]",
        "[-9223372036854775808]", "[1234567890123456789]", "[99999999999999999999]", "[1e400]", "[-1e999]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(declined(bad[i], 0));
        CHECK(declined(bad[i], JSON_REJECT_DUPLICATES));
    }
    /* a duplicate key: replaced without the flag, refused with it, both by jansson */
    CHECK(declined("{\"a\":1,\"a\":2}", 0));
    CHECK(declined("{\"a\":1,\"b\":{\"c\":[1],\"c\":[2]}}", JSON_REJECT_DUPLICATES));
    /* nesting: to JSONR_MAX_DEPTH here, deeper to jansson */
    char deep[2 * (JSONR_MAX_DEPTH + 1) + 1];
    for (int d = JSONR_MAX_DEPTH; d <= JSONR_MAX_DEPTH + 1; d++) {
        memset(deep, '[', (size_t)d);
        memset(deep + d, ']', (size_t)d);
        deep[2 * d] = '\0';
        CHECK(d == JSONR_MAX_DEPTH ? same(deep) : declined(deep, 0));
    }
    /* not NUL-terminated: only len bytes are read */
    const char sub[] = "{\"a\":1}garbage";
    json_t *j = jr_parse(sub, 7);
    CHECK(j && json_integer_value(json_object_get(j, "a")) == 1);
    json_decref(j);
    TEST_MAIN_END();
}
