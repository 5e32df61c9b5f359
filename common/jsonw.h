/* jsonw.h: writing JSON text straight into a buffer, for the hot path.
 *
 * jansson builds a tree of allocated nodes and then prints it; for the
 * shapes we send on every request (stream chunks, responses, log lines)
 * that costs more than the rest of the request. These writers append to a
 * growable buffer instead. Strings are escaped per RFC 8259; bytes that are
 * not valid UTF-8 become U+FFFD, so the output is always valid JSON.
 * A struct jsonw belongs to one thread. */
#ifndef CASCADE_JSONW_H
#define CASCADE_JSONW_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct jsonw {
    char *p;
    size_t len, cap;
};

void jw_init(struct jsonw *w, size_t cap);
void jw_free(struct jsonw *w);
/* Hand the buffer over (NUL-terminated); w is empty afterwards. */
char *jw_take(struct jsonw *w, size_t *len);
void jw_raw(struct jsonw *w, const char *s, size_t n);
static inline void jw_lit(struct jsonw *w, const char *s);
/* A quoted, escaped string. */
void jw_str(struct jsonw *w, const char *s, size_t n);
void jw_cstr(struct jsonw *w, const char *s);   /* NULL writes null */
void jw_int(struct jsonw *w, int64_t v);
/* A finite double with up to 17 significant digits; non-finite writes null. */
void jw_real(struct jsonw *w, double v);
/* A jansson tree (borrowed), compact, keys in their order: the same JSON as
 * json_dumps(v, JSON_COMPACT), which reads it back equal (a real stays a
 * real: "1.0", not "1"), at a fraction of the cost. NULL writes null. */
void jw_json(struct jsonw *w, json_t *v);

#include <string.h>
static inline void jw_lit(struct jsonw *w, const char *s)
{
    jw_raw(w, s, strlen(s));
}

#endif
