/* The hand-written JSON writer must always produce valid JSON that reads
 * back as what was written: integers at their limits, strings with every
 * kind of escape and broken UTF-8, doubles. Checked by parsing with jansson. */
#include <jansson.h>
#include <stdint.h>

#include "common/jsonw.h"
#include "tests/unit/test.h"

static json_t *parse(struct jsonw *w)
{
    size_t n;
    char *s = jw_take(w, &n);
    json_t *j = json_loadb(s, n, JSON_DECODE_ANY, NULL);
    free(s);
    return j;
}

int main(void)
{
    static const int64_t ints[] = {0, 7, -42, 1000000007, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        struct jsonw w;
        jw_init(&w, 8);
        jw_int(&w, ints[i]);
        json_t *j = parse(&w);
        CHECK(json_is_integer(j) && json_integer_value(j) == ints[i]);
        json_decref(j);
    }
    struct jsonw w;
    jw_init(&w, 4);
    const char text[] = "quote \" back \\ nl \n tab \t cr \r ctl \x01 caf\xc3\xa9 \xe4\xb8\xad";
    jw_str(&w, text, sizeof text - 1);
    json_t *j = parse(&w);
    CHECK(json_is_string(j) && strcmp(json_string_value(j), text) == 0);
    json_decref(j);

    jw_init(&w, 4);
    jw_str(&w, "a\xff" "b\xe4\xb8", 5); /* an invalid byte, and a cut sequence */
    j = parse(&w);
    CHECK_STR(json_string_value(j), "a\xef\xbf\xbd" "b\xef\xbf\xbd\xef\xbf\xbd");
    json_decref(j);

    static const double reals[] = {0.0, -1.5, 0.1, 1e-9, 123456.789, -2.5e300};
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        jw_init(&w, 4);
        jw_real(&w, reals[i]);
        j = parse(&w);
        CHECK(json_is_number(j) && json_number_value(j) == reals[i]);
        json_decref(j);
    }
    jw_init(&w, 4);
    jw_lit(&w, "[");
    jw_cstr(&w, NULL);
    jw_lit(&w, "]");
    j = parse(&w);
    CHECK(json_is_array(j) && json_is_null(json_array_get(j, 0)));
    json_decref(j);

    /* jw_json: a tree written reads back equal (reals stay reals, keys keep
     * their order), and without control characters in its strings it is
     * byte for byte what json_dumps(JSON_COMPACT) writes. */
    static const char *const trees[] = {
        "{\"model\":\"m\",\"stream\":true,\"max_tokens\":16,\"temperature\":0.7,\"top_p\":1.0,"
        "\"messages\":[{\"role\":\"user\",\"content\":\"Say \\\"hello\\\" \\u00e9\\ud83d\\ude00 /\"}],"
        "\"stop\":null,\"n\":-1,\"e\":1e300,\"f\":-0.0,\"z\":{},\"a\":[],\"k\\u00e9\":false}",
        "[1,2.5,-3e-7,\"x\",[[[]]],{\"b\":1,\"a\":2}]",
    };
    for (size_t i = 0; i < sizeof trees / sizeof trees[0]; i++) {
        json_t *t = json_loads(trees[i], 0, NULL);
        CHECK(t != NULL);
        jw_init(&w, 4);
        jw_json(&w, t);
        size_t n;
        char *out = jw_take(&w, &n);
        json_t *back = json_loadb(out, n, 0, NULL);
        CHECK(back && json_equal(back, t));
        char *ref = json_dumps(t, JSON_COMPACT);
        CHECK(ref && strcmp(out, ref) == 0);
        if (ref && strcmp(out, ref) != 0)
            fprintf(stderr, "jw_json: %s\njson_dumps: %s\n", out, ref);
        free(ref);
        free(out);
        json_decref(back);
        json_decref(t);
    }
    /* control characters: escaped, read back the same */
    json_t *t = json_pack("{s:s}", "c", "a\x01\x1f\n\tb");
    jw_init(&w, 4);
    jw_json(&w, t);
    j = parse(&w);
    CHECK(j && json_equal(j, t));
    json_decref(j);
    json_decref(t);
    TEST_MAIN_END();
}
