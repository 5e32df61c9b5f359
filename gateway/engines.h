/* engines.h: builds the engine a tier's config asks for (remote or native).
 * Kept apart from the config so config.c knows no engine's internals beyond
 * its settings. Called once per tier at start-up, from the main thread. */
#ifndef CASCADE_GATEWAY_ENGINES_H
#define CASCADE_GATEWAY_ENGINES_H

#include <stddef.h>

struct engine;
struct tier_config;

/* base_dir: the config file's folder, for relative paths in the tier. */
struct engine *engines_create(const struct tier_config *tier, const char *base_dir, char *err, size_t errlen);

/* Validate what engines_create would, without building anything: no model
 * loaded, no device probed, no secret read (cascaded --check-config). A
 * remote tier's settings were checked by config_load already. 0, or -1
 * with err naming the field. */
int engines_check(const struct tier_config *tier, const char *base_dir, char *err, size_t errlen);

#endif
