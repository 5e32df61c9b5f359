/* fuzz_jsonr: the fast JSON reader (common/jsonr.c) against jansson's own,
 * on arbitrary bytes.
 *
 * The reader's one promise: whatever it decides, jansson decides the same.
 * So when jr_parse returns a tree, json_loadb must accept the same bytes,
 * with and without JSON_REJECT_DUPLICATES, and print the same compact text
 * (values, and keys in the same order). When it declines, jr_load must
 * return what json_loadb returns. A decided tree written back by jw_json
 * (common/jsonw.h) must read back equal. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonr.h"
#include "common/jsonw.h"

static char *dump(const json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    json_t *ours = jr_parse(s, size);
    json_t *theirs = json_loadb(s, size, 0, NULL);
    json_t *strict = json_loadb(s, size, JSON_REJECT_DUPLICATES, NULL);
    if (ours) {
        if (!theirs || !strict || !json_equal(ours, theirs))
            abort();
        char *a = dump(ours), *b = dump(theirs);
        if (!a || !b || strcmp(a, b) != 0)
            abort();
        free(a);
        free(b);
        /* and the hot path's writer (common/jsonw) writes it back equal */
        struct jsonw w;
        jw_init(&w, 64);
        jw_json(&w, ours);
        size_t n;
        char *out = jw_take(&w, &n);
        json_t *back = json_loadb(out, n, 0, NULL);
        if (!back || !json_equal(back, ours))
            abort();
        json_decref(back);
        free(out);
    } else {
        json_t *loaded = jr_load(s, size, 0, NULL);
        if (!loaded != !theirs || (loaded && !json_equal(loaded, theirs)))
            abort();
        json_decref(loaded);
    }
    json_decref(ours);
    json_decref(theirs);
    json_decref(strict);
    return 0;
}
