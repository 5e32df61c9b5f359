/* fuzz_config: the gateway's config file (gateway/config.c) from arbitrary
 * bytes, through config_parse() -- what config_load() and every SIGHUP
 * reload run on the file's text.
 *
 * An accepted config is then compared with deploy/local.json through
 * config_reload_conflict(), as a reload does, in both directions; that
 * walks every string the parser promised to set. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/config.h"

static struct config base;
static int have_base;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/deploy/local.json", CASCADE_SOURCE_DIR);
    if (config_load(path, &base, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_config: %s: %s\n", path, err);
        abort();
    }
    have_base = 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* config_parse() takes the text as config_load() hands it over:
     * NUL-terminated (a NUL inside ends the text, as it would there). */
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    struct config cfg;
    char err[512];
    if (config_parse(text, &cfg, err, sizeof err) == 0) {
        if (have_base) {
            (void)config_reload_conflict(&base, &cfg);
            (void)config_reload_conflict(&cfg, &base);
        }
        for (size_t i = 0; i < cfg.n_tiers; i++)
            if (config_tier_index(&cfg, cfg.tiers[i].name) < 0)
                abort();
        config_free(&cfg);
    } else if (!memchr(err, '\0', sizeof err) || err[0] == '\0') {
        abort(); /* a refusal always says why */
    }
    free(text);
    return 0;
}
