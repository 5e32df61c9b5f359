/* secret.c: see secret.h. */
#include "common/secret.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/mem.h"

/* A secret goes into headers and AUTH commands: printable bytes only
 * (UTF-8 bytes >= 0x80 pass; CR, LF, NUL and other controls do not). */
static int secret_ok(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

static int read_file(const char *path, char **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open secret file %s", path);
        return -1;
    }
    char *buf = xmalloc(SECRET_MAX_BYTES + 2);
    size_t n = fread(buf, 1, SECRET_MAX_BYTES + 1, f);
    fclose(f);
    if (n > SECRET_MAX_BYTES) {
        free(buf);
        snprintf(err, errlen, "secret file %s is larger than %d bytes", path, SECRET_MAX_BYTES);
        return -1;
    }
    /* The first line: a trailing newline (CRLF too) is not part of it. */
    size_t len = 0;
    while (len < n && buf[len] != '\n')
        len++;
    if (len > 0 && buf[len - 1] == '\r')
        len--;
    buf[len] = '\0';
    if (!secret_ok(buf, len)) {
        free(buf);
        snprintf(err, errlen, "secret file %s is empty or holds control characters", path);
        return -1;
    }
    *out = buf;
    return 0;
}

int secret_read(const char *env, const char *file, char **out, char *err, size_t errlen)
{
    *out = NULL;
    if (file)
        return read_file(file, out, err, errlen);
    const char *v = env ? getenv(env) : NULL;
    if (!v) {
        snprintf(err, errlen, "environment variable %s is not set", env ? env : "(none)");
        return -1;
    }
    size_t n = strlen(v);
    if (n > SECRET_MAX_BYTES || !secret_ok(v, n)) {
        snprintf(err, errlen, "environment variable %s is empty, too long or holds control characters", env);
        return -1;
    }
    *out = xstrdup(v);
    return 0;
}
