/* engines.h: builds the engine a tier's config asks for (remote or native).
 * Kept apart from the config so config.c knows no engine's internals beyond
 * its settings. Called once per tier at start-up, from the main thread. */
#ifndef CASCADE_GATEWAY_ENGINES_H
#define CASCADE_GATEWAY_ENGINES_H

#include <stddef.h>

struct engine;
struct tier_config;

struct engine *engines_create(const struct tier_config *tier, char *err, size_t errlen);

#endif
