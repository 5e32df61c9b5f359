#include "gateway/engines.h"

#include <stdio.h>

#include "engines/remote/remote.h"
#include "gateway/config.h"
#include "engines/native/runtime/native_engine.h"

struct engine *engines_create(const struct tier_config *tier, const char *base_dir, char *err, size_t errlen)
{
    switch (tier->kind) {
    case ENGINE_REMOTE:
        /* Relative tls.ca_file and api_key_file are from the config's folder too. */
        return remote_engine_new(&tier->remote, base_dir, err, errlen);
    case ENGINE_NATIVE:
        /* In-process: relative model paths are from the config's folder. */
        return native_engine_from_json(tier->native_json, base_dir, err, errlen);
    }
    snprintf(err, errlen, "unknown engine kind");
    return NULL;
}

int engines_check(const struct tier_config *tier, const char *base_dir, char *err, size_t errlen)
{
    if (tier->kind == ENGINE_NATIVE)
        return native_engine_check_json(tier->native_json, base_dir, err, errlen);
    return 0;
}
