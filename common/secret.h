/* secret.h: secrets kept out of config files.
 *
 * A config names where a secret lives instead of holding it: an environment
 * variable (`*_env`) or a file (`*_file`, e.g. a Kubernetes Secret mounted
 * as a volume, or a systemd credential). secret_read() fetches it when the
 * process starts, so a config can be validated (cascaded --check-config) on
 * a machine that has none of the secrets.
 *
 * A file's secret is its content up to the first newline (editors add
 * one); an empty secret, a file over SECRET_MAX_BYTES, or a value with a
 * byte that cannot go in an HTTP header (control characters) is refused,
 * since an upstream would otherwise see a mangled Authorization header.
 * Error messages name the variable or file, never the secret. Any thread.
 */
#ifndef CASCADE_SECRET_H
#define CASCADE_SECRET_H

#include <stddef.h>

#define SECRET_MAX_BYTES 4096

/* Read the secret from env (a variable's name) or file (a path); exactly
 * one of them is non-NULL. 0 with a malloc'd *out, or -1 with err set. */
int secret_read(const char *env, const char *file, char **out, char *err, size_t errlen);

#endif
