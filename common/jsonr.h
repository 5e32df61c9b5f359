/* jsonr.h: reading JSON fast into jansson trees, for the hot path.
 *
 * jansson's own reader (json_loadb) walks its input one character at a time
 * through a stream of callbacks, about 190 instructions a byte: on a
 * non-stream request that was a third of cascaded's CPU, and on a stream,
 * where every upstream chunk is parsed, more than half (callgrind, issue
 * 18). This reader builds the same tree, with the same jansson nodes, from
 * one pass over the bytes.
 *
 * It decides only what it can decide the way jansson would. On anything
 * else -- malformed JSON, a duplicate key, "\u0000", a number that does not
 * fit an int64 exactly or overflows a double, nesting deeper than
 * JSONR_MAX_DEPTH, a top level that is neither an object nor an array --
 * jr_parse returns NULL and jr_load hands the bytes to json_loadb, so errors
 * (and their messages) are jansson's, word for word. When jr_parse returns
 * a tree, json_loadb on the same bytes returns an equal one, keys in the
 * same order, with or without JSON_REJECT_DUPLICATES
 * (tests/fuzz/fuzz_jsonr.c checks exactly that).
 *
 * For the few shapes read on every stream chunk, a cursor reads the same
 * bytes without building a tree at all: it walks keys and values in order
 * and skips, fully checked, what the caller does not read. It follows the
 * same rule: -1 means "not decided here", and the caller then reads the
 * bytes with jr_load. Duplicate keys inside a skipped value are accepted
 * (jansson without JSON_REJECT_DUPLICATES accepts them, and a skipped value
 * is not read); a caller that reads a key must itself notice it twice.
 *
 * Pure functions over the caller's bytes; any thread may call them. The
 * tree returned belongs to the caller (json_decref); a cursor belongs to
 * the caller that made it.
 */
#ifndef CASCADE_JSONR_H
#define CASCADE_JSONR_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define JSONR_MAX_DEPTH 256

/* The tree of s[0..len), or NULL when this reader leaves the bytes to
 * jansson (see above). */
json_t *jr_parse(const char *s, size_t len);

/* json_loadb(s, len, flags, err), faster. flags may be 0 or
 * JSON_REJECT_DUPLICATES; any other flag goes straight to json_loadb. err
 * (may be NULL) is set only on failure. */
json_t *jr_load(const char *s, size_t len, size_t flags, json_error_t *err);

/* ---- reading without a tree -------------------------------------------- */

struct jr_cursor {
    const char *p, *end;
    int depth;
    char *buf;          /* decoded strings that held escapes; grown on demand */
    size_t len, cap;
};

void jr_cursor_init(struct jr_cursor *c, const char *s, size_t len);
void jr_cursor_free(struct jr_cursor *c);
/* The next character after whitespace, not consumed; -1 at the end. */
int jr_peek(struct jr_cursor *c);
/* Consume ch after whitespace: 0, or -1 when something else is there. */
int jr_expect(struct jr_cursor *c, char ch);
/* 0 when only whitespace is left. */
int jr_at_end(struct jr_cursor *c);
/* A string, decoded; *s stays valid until the cursor's next string. */
int jr_read_string(struct jr_cursor *c, const char **s, size_t *n);
/* Inside an object whose '{' was consumed (*first = 1 on the first call):
 * 1 with the next key (the cursor then at its value), 0 after the closing
 * '}', -1 when not decided here. */
int jr_next_key(struct jr_cursor *c, int *first, const char **k, size_t *kn);
/* A number: an integer (*real = 0, *iv) or a double (*real = 1, *dv). */
int jr_read_number(struct jr_cursor *c, int *real, int64_t *iv, double *dv);
/* Check and pass over one value; *empty (may be NULL) says whether it was
 * null, "" or []. */
int jr_skip(struct jr_cursor *c, int *empty);

#endif
