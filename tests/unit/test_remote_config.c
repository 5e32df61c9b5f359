/* The remote engine's config (engines/remote/remote.h): https URLs, tls,
 * secrets and ejection keys are checked at parse time and named by path;
 * secrets and CA files are read only by remote_engine_new, relative to the
 * config's folder. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engines/engine.h"
#include "engines/remote/remote.h"
#include "tests/unit/test.h"

/* Parse text (a JSON engine object): 0, or -1 with err set. */
static int parse(const char *text, struct remote_config *cfg, char *err, size_t n)
{
    json_t *j = json_loads(text, 0, NULL);
    if (!j) {
        snprintf(err, n, "bad JSON in the test");
        return -1;
    }
    int rc = remote_config_parse(j, "tiers[0].engine", cfg, err, n);
    json_decref(j);
    return rc;
}

/* The parse fails and err starts with want. */
static int refused(const char *text, const char *want)
{
    struct remote_config cfg;
    char err[512] = "";
    int rc = parse(text, &cfg, err, sizeof err);
    remote_config_free(&cfg);
    if (rc == 0 || strncmp(err, want, strlen(want)) != 0) {
        fprintf(stderr, "  for %s\n  got: %s\n  want: %s...\n", text, rc == 0 ? "(accepted)" : err, want);
        return 0;
    }
    return 1;
}

static void test_parse(void)
{
    struct remote_config cfg;
    char err[512];
    CHECK(parse("{\"kind\":\"remote\",\"urls\":[\"https://api.example.com/v1\",\"http://10.0.0.1:8000\"],"
                "\"api_key_env\":\"UPSTREAM_KEY\",\"tls\":{\"ca_file\":\"ca.pem\"},\"eject_after\":5,\"eject_ms\":2000}",
                &cfg, err, sizeof err) == 0);
    CHECK(cfg.n_urls == 2);
    CHECK_STR(cfg.api_key_env, "UPSTREAM_KEY");
    CHECK(cfg.api_key == NULL && cfg.api_key_file == NULL);
    CHECK_STR(cfg.tls_ca_file, "ca.pem");
    CHECK(cfg.eject_after == 5 && cfg.eject_ms == 2000);
    remote_config_free(&cfg);
    /* defaults */
    CHECK(parse("{\"kind\":\"remote\",\"urls\":[\"http://h\"]}", &cfg, err, sizeof err) == 0);
    CHECK(cfg.eject_after == 3 && cfg.eject_ms == 10000 && cfg.tls_ca_file == NULL);
    remote_config_free(&cfg);

    CHECK(refused("{\"kind\":\"remote\",\"urls\":[\"ftp://h\"]}",
                  "tiers[0].engine.urls[0]: not an http[s]://host[:port][/prefix] URL"));
    CHECK(refused("{\"kind\":\"remote\",\"urls\":[\"https://\"]}", "tiers[0].engine.urls[0]"));
    CHECK(refused("{\"kind\":\"remote\",\"urls\":[\"http://h\"],\"api_key\":\"k\",\"api_key_file\":\"f\"}",
                  "tiers[0].engine.api_key_file: give only one of api_key, api_key_env and api_key_file"));
    CHECK(refused("{\"kind\":\"remote\",\"urls\":[\"http://h\"],\"api_key_env\":\"A\",\"api_key_file\":\"f\"}",
                  "tiers[0].engine.api_key_file: give only one"));
    CHECK(refused("{\"kind\":\"remote\",\"urls\":[\"http://h\"],\"api_key_env\":\"\"}",
                  "tiers[0].engine.api_key_env: must not be empty"));
    CHECK(refused("{\"kind\":\"remote\",\"urls\":[\"http://h\"],\"tls\":{\"ca_file\":\"x\",\"verify\":false}}",
                  "tiers[0].engine.tls"));
    CHECK(refused("{\"kind\":\"remote\",\"urls\":[\"http://h\"],\"tls\":{\"ca_file\":\"\"}}",
                  "tiers[0].engine.tls.ca_file: must not be empty"));
    CHECK(refused("{\"kind\":\"remote\",\"urls\":[\"http://h\"],\"tls\":\"ca.pem\"}", "tiers[0].engine.tls"));
    CHECK(refused("{\"kind\":\"remote\",\"urls\":[\"http://h\"],\"eject_ms\":0}", "tiers[0].engine.eject_ms"));
}

/* Build an engine from text with base_dir; NULL with err set on failure. */
static struct engine *make(const char *text, const char *base_dir, char *err, size_t n)
{
    struct remote_config cfg;
    if (parse(text, &cfg, err, n) < 0) {
        remote_config_free(&cfg);
        return NULL;
    }
    struct engine *e = remote_engine_new(&cfg, base_dir, err, n);
    remote_config_free(&cfg);
    return e;
}

static void test_secrets_at_start(void)
{
    char dir[] = "/tmp/cascade-remote-cfg-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/key.txt", dir);
    FILE *f = fopen(path, "w");
    fputs("sk-file\n", f);
    fclose(f);
    char err[512];
    /* relative to base_dir */
    struct engine *e = make("{\"kind\":\"remote\",\"urls\":[\"http://127.0.0.1:9\"],\"api_key_file\":\"key.txt\"}",
                            dir, err, sizeof err);
    CHECK(e != NULL);
    engine_destroy(e);
    /* the same from another folder: not found, and the message names the file */
    e = make("{\"kind\":\"remote\",\"urls\":[\"http://127.0.0.1:9\"],\"api_key_file\":\"key.txt\"}", "/nonexistent",
             err, sizeof err);
    CHECK(e == NULL && strstr(err, "/nonexistent/key.txt") != NULL);
    unsetenv("CASCADE_TEST_UNSET_KEY");
    e = make("{\"kind\":\"remote\",\"urls\":[\"http://127.0.0.1:9\"],\"api_key_env\":\"CASCADE_TEST_UNSET_KEY\"}", dir,
             err, sizeof err);
    CHECK(e == NULL && strstr(err, "CASCADE_TEST_UNSET_KEY") != NULL);
    setenv("CASCADE_TEST_SET_KEY", "sk-env", 1);
    e = make("{\"kind\":\"remote\",\"urls\":[\"http://127.0.0.1:9\"],\"api_key_env\":\"CASCADE_TEST_SET_KEY\"}", dir,
             err, sizeof err);
    CHECK(e != NULL);
    engine_destroy(e);
    /* a CA file that is not there: the engine does not start; a relative
     * path is from the config's folder */
    e = make("{\"kind\":\"remote\",\"urls\":[\"https://127.0.0.1:9\"],\"tls\":{\"ca_file\":\"missing.pem\"}}", dir, err,
             sizeof err);
    char want[600];
    snprintf(want, sizeof want, "%s/missing.pem", dir);
    CHECK(e == NULL && strstr(err, want) != NULL);
    /* the system's CAs when none is given */
    e = make("{\"kind\":\"remote\",\"urls\":[\"https://127.0.0.1:9\"]}", dir, err, sizeof err);
    CHECK(e != NULL);
    engine_destroy(e);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    test_parse();
    test_secrets_at_start();
    TEST_MAIN_END();
}
