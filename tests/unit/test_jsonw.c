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
    TEST_MAIN_END();
}
