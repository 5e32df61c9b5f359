#include "gateway/auth.h"

#include <string.h>
#include <strings.h>

const char *auth_bearer(const char *h)
{
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    return *h ? h : NULL;
}

void auth_key_digest(const char *key, uint8_t digest[SHA256_LEN])
{
    hash_sha256(key, strlen(key), digest);
}

const struct tenant_config *auth_tenant_digest(const struct config *cfg, const uint8_t digest[SHA256_LEN],
                                               const char **key_id)
{
    /* Visit every key, with no early exit, so timing reveals nothing. */
    const struct tenant_config *found = NULL;
    const char *id = NULL;
    for (size_t t = 0; t < cfg->n_tenants; t++)
        for (size_t k = 0; k < cfg->tenants[t].n_keys; k++)
            if (hash_ct_equal(digest, cfg->tenants[t].keys[k], SHA256_LEN)) {
                found = &cfg->tenants[t];
                id = cfg->tenants[t].key_ids ? cfg->tenants[t].key_ids[k] : NULL;
            }
    if (found && key_id)
        *key_id = id;
    return found;
}

const struct tenant_config *auth_tenant(const struct config *cfg, const char *key)
{
    if (!key)
        return NULL;
    uint8_t digest[SHA256_LEN];
    auth_key_digest(key, digest);
    return auth_tenant_digest(cfg, digest, NULL);
}

int auth_is_admin(const struct config *cfg, const char *key)
{
    if (!key || !cfg->has_admin)
        return 0;
    uint8_t digest[SHA256_LEN];
    hash_sha256(key, strlen(key), digest);
    return hash_ct_equal(digest, cfg->admin_key, SHA256_LEN);
}
