/* auth.h: who is calling. A Bearer key maps to a tenant; the admin token to
 * the operator.
 *
 * Keys are never stored: the config holds SHA-256 hex, we hash what the client
 * presents and compare it with every stored hash in constant time, so neither
 * the result nor the time taken tells an attacker how close a guess was.
 * Thread-safe (reads the read-only config). */
#ifndef CASCADE_AUTH_H
#define CASCADE_AUTH_H

#include "gateway/config.h"

/* The bearer token of an Authorization header value, or NULL. */
const char *auth_bearer(const char *authorization);
/* The tenant owning this key, or NULL. */
const struct tenant_config *auth_tenant(const struct config *cfg, const char *key);
/* The two halves of auth_tenant, for a caller that checks one request twice
 * (the head hook, then the handler, gateway/routes.c): hash the key once,
 * look the digest up each time. auth_tenant_digest also gives the key's id
 * from the config in *key_id (valid as long as cfg) when found and key_id
 * is not NULL. */
void auth_key_digest(const char *key, uint8_t digest[SHA256_LEN]);
const struct tenant_config *auth_tenant_digest(const struct config *cfg, const uint8_t digest[SHA256_LEN],
                                               const char **key_id);
/* 1 when key is the admin token. */
int auth_is_admin(const struct config *cfg, const char *key);

#endif
