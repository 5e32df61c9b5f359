#include "common/cfgjson.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void cfgj_path(char *buf, size_t n, const char *path, const char *key)
{
    if (path && *path)
        snprintf(buf, n, "%s.%s", path, key);
    else
        snprintf(buf, n, "%s", key);
}

void cfgj_path_index(char *buf, size_t n, const char *path, size_t i)
{
    snprintf(buf, n, "%s[%zu]", path, i);
}

int cfgj_fail(char *err, size_t n, const char *path, const char *fmt, ...)
{
    char reason[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    snprintf(err, n, "%s: %s", path && *path ? path : "(root)", reason);
    return -1;
}

int cfgj_known_keys(json_t *obj, const char *path, const char *const *allowed, char *err, size_t n)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, key) == 0;
        if (!ok) {
            char p[256];
            cfgj_path(p, sizeof p, path, key);
            return cfgj_fail(err, n, p, "unknown field");
        }
    }
    return 0;
}

/* Fetch obj[key]; 1 when present, 0 when absent and optional, -1 when
 * absent and required. */
static int get(json_t *obj, const char *path, const char *key, int required, json_t **v, char *p,
               size_t pn, char *err, size_t n)
{
    cfgj_path(p, pn, path, key);
    *v = json_object_get(obj, key);
    if (*v)
        return 1;
    return required ? cfgj_fail(err, n, p, "required field is missing") : 0;
}

int cfgj_string(json_t *obj, const char *path, const char *key, int required, const char **out,
                char *err, size_t n)
{
    char p[256];
    json_t *v;
    int rc = get(obj, path, key, required, &v, p, sizeof p, err, n);
    if (rc <= 0)
        return rc;
    if (!json_is_string(v))
        return cfgj_fail(err, n, p, "must be a string");
    *out = json_string_value(v);
    return 0;
}

int cfgj_uint(json_t *obj, const char *path, const char *key, unsigned long long min,
              unsigned long long max, unsigned long long *out, char *err, size_t n)
{
    char p[256];
    json_t *v;
    int rc = get(obj, path, key, 0, &v, p, sizeof p, err, n);
    if (rc <= 0)
        return rc;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return cfgj_fail(err, n, p, "must be a non-negative integer");
    unsigned long long u = (unsigned long long)json_integer_value(v);
    if (u < min || u > max)
        return cfgj_fail(err, n, p, "must be between %llu and %llu", min, max);
    *out = u;
    return 0;
}

int cfgj_number(json_t *obj, const char *path, const char *key, double min, double max, double *out,
                char *err, size_t n)
{
    char p[256];
    json_t *v;
    int rc = get(obj, path, key, 0, &v, p, sizeof p, err, n);
    if (rc <= 0)
        return rc;
    if (!json_is_number(v))
        return cfgj_fail(err, n, p, "must be a number");
    double d = json_number_value(v);
    if (!isfinite(d) || d < min || d > max)
        return cfgj_fail(err, n, p, "must be between %g and %g", min, max);
    *out = d;
    return 0;
}

int cfgj_object(json_t *obj, const char *path, const char *key, int required, json_t **out, char *err,
                size_t n)
{
    char p[256];
    json_t *v;
    *out = NULL;
    int rc = get(obj, path, key, required, &v, p, sizeof p, err, n);
    if (rc <= 0)
        return rc;
    if (!json_is_object(v))
        return cfgj_fail(err, n, p, "must be an object");
    *out = v;
    return 0;
}

int cfgj_array(json_t *obj, const char *path, const char *key, int required, json_t **out, char *err,
               size_t n)
{
    char p[256];
    json_t *v;
    *out = NULL;
    int rc = get(obj, path, key, required, &v, p, sizeof p, err, n);
    if (rc <= 0)
        return rc;
    if (!json_is_array(v))
        return cfgj_fail(err, n, p, "must be an array");
    *out = v;
    return 0;
}
