/* cfgjson.h: reading typed fields out of a JSON config, with errors that name
 * the field by its path ("tenants[1].keys[0]: not a sha256 hex string").
 *
 * Every reader takes the object, the object's own path ("" for the root) and
 * a key; an absent optional field leaves *out unchanged, so callers set
 * defaults first. On error they write "path.key: reason" into err and return
 * -1. Pure functions; thread-safe. */
#ifndef CASCADE_CFGJSON_H
#define CASCADE_CFGJSON_H

#include <jansson.h>
#include <stddef.h>

/* Build "path.key" or "path[i]" into buf (for nested calls). */
void cfgj_path(char *buf, size_t n, const char *path, const char *key);
void cfgj_path_index(char *buf, size_t n, const char *path, size_t i);

/* Error unless every key of obj is in allowed (NULL-terminated): typos in a
 * config must not be silently ignored. */
int cfgj_known_keys(json_t *obj, const char *path, const char *const *allowed, char *err, size_t n);

int cfgj_string(json_t *obj, const char *path, const char *key, int required, const char **out,
                char *err, size_t n);
int cfgj_uint(json_t *obj, const char *path, const char *key, unsigned long long min,
              unsigned long long max, unsigned long long *out, char *err, size_t n);
int cfgj_number(json_t *obj, const char *path, const char *key, double min, double max, double *out,
                char *err, size_t n);
/* An object or absent (then *out = NULL). */
int cfgj_object(json_t *obj, const char *path, const char *key, int required, json_t **out, char *err,
                size_t n);
/* An array (of anything; callers check elements) or absent (*out = NULL). */
int cfgj_array(json_t *obj, const char *path, const char *key, int required, json_t **out, char *err,
               size_t n);

/* Write "path: reason" (printf-style) and return -1. */
int cfgj_fail(char *err, size_t n, const char *path, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
