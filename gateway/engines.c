#include "gateway/engines.h"

#include <stdio.h>

#include "engines/remote/remote.h"
#include "gateway/config.h"

struct engine *engines_create(const struct tier_config *tier, char *err, size_t errlen)
{
    switch (tier->kind) {
    case ENGINE_REMOTE:
        return remote_engine_new(&tier->remote, err, errlen);
    case ENGINE_NATIVE:
        snprintf(err, errlen, "the native engine is not built into this cascaded");
        return NULL;
    }
    snprintf(err, errlen, "unknown engine kind");
    return NULL;
}
