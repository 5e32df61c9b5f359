/* fuzz_json_constraint: the JSON-object grammar and mask
 * (engines/native/runtime/json_constraint.c), which consume whatever bytes
 * a model produces.
 *
 * Checks beyond memory safety:
 *   - the input fed byte by byte: while accepted, json_min_close() is 0
 *     exactly when the object is complete; an input accepted to completion
 *     is an object jansson parses (unless jansson itself cannot: numbers
 *     past a double, escaped lone surrogates, \u0000 in a key, which JSON
 *     allows);
 *   - the input cut at 0xFF bytes into a vocabulary, with fixed closers
 *     added: along a walk whose choices come from the input, the mask
 *     allows exactly the tokens a byte-by-byte check allows, and a walk
 *     that completes parses. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engines/native/runtime/json_constraint.h"

#define MAX_TOKENS 96

static const char *const fixed[] = {"{", "}", "[", "]", "\"", ":", ",", "0", "1", " ",
                                    "e", "t", "r", "u", "f", "a", "l", "s", "n"};
enum { N_FIXED = sizeof(fixed) / sizeof(fixed[0]) };

struct vocab {
    const char *p[MAX_TOKENS];
    size_t len[MAX_TOKENS];
    int n;
};

static const char *bytes_of(void *ctx, int32_t id, size_t *len)
{
    const struct vocab *v = ctx;
    if (id < 0 || id >= v->n || !v->p[id]) {
        *len = 0;
        return NULL;
    }
    *len = v->len[id];
    return v->p[id];
}

/* jansson refuses a few things JSON allows; those are not our bugs. */
static void must_parse(const char *text, size_t len)
{
    json_error_t jerr;
    json_t *j = json_loadb(text, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &jerr);
    if (!j && (strstr(jerr.text, "overflow") || strstr(jerr.text, "Unicode") ||
               strstr(jerr.text, "surrogate") || strstr(jerr.text, "NUL byte")))
        return;
    if (!json_is_object(j))
        abort();
    json_decref(j);
}

static void whole_input(const uint8_t *data, size_t size)
{
    struct json_state st;
    json_state_init(&st);
    for (size_t i = 0; i < size; i++) {
        if (!json_feed(&st, data[i]))
            return;
        if ((json_min_close(&st) == 0) != json_done(&st) || json_min_close(&st) < 0)
            abort();
    }
    if (json_done(&st))
        must_parse((const char *)data, size);
}

static void walk(const uint8_t *data, size_t size)
{
    struct vocab v = {0};
    for (int i = 0; i < N_FIXED; i++) {
        v.p[v.n] = fixed[i];
        v.len[v.n++] = strlen(fixed[i]);
    }
    v.p[v.n] = NULL;    /* a token never allowed, like end of sequence */
    v.len[v.n++] = 0;
    size_t start = 0;
    for (size_t i = 0; i <= size && v.n < MAX_TOKENS; i++) {
        if (i == size || data[i] == 0xFF) {
            v.p[v.n] = (const char *)data + start;
            v.len[v.n++] = i - start;   /* an empty piece is never allowed */
            start = i + 1;
        }
    }
    struct json_vocab *jv = json_vocab_new(v.n, bytes_of, &v);
    struct json_scratch *sc = jv ? json_scratch_new(jv) : NULL;
    if (!jv || !sc)
        abort();
    int budget = size ? 2 + data[0] % 48 : 8;
    struct json_state st;
    json_state_init(&st);
    static char text[48 * 4096];
    size_t tl = 0;
    float logits[MAX_TOKENS];
    for (int step = 0; step < budget && !json_done(&st); step++) {
        const int left = budget - step - 1;
        for (int i = 0; i < v.n; i++)
            logits[i] = (float)i;
        int n_ok = json_constraint_mask(jv, sc, &st, left, logits), count = 0;
        for (int i = 0; i < v.n; i++) {
            struct json_state t = st;
            int want = v.p[i] && v.len[i] && json_feed_bytes(&t, v.p[i], v.len[i]) &&
                       json_min_close(&t) <= left;
            int got = logits[i] == (float)i;
            if (!got && logits[i] > -1e30f)
                abort();        /* a logit is either kept or -inf */
            if (want != got)
                abort();
            count += got;
        }
        if (count != n_ok)
            abort();
        if (n_ok == 0)
            break;
        int pick = (int)(size ? data[(size_t)step % size] : 0) % n_ok, id = -1;
        for (int i = 0; i < v.n && id < 0; i++)
            if (logits[i] == (float)i && pick-- == 0)
                id = i;
        if (!json_constraint_advance(jv, &st, id) || tl + v.len[id] > sizeof(text))
            abort();
        memcpy(text + tl, v.p[id], v.len[id]);
        tl += v.len[id];
    }
    if (json_done(&st))
        must_parse(text, tl);
    json_scratch_free(sc);
    json_vocab_free(jv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    whole_input(data, size);
    walk(data, size);
    return 0;
}
