/* Config snapshots (gateway/snapshot.h): a reload swaps in a new snapshot
 * while requests keep the one they started with; a reload that changes what
 * needs a restart, or a file that does not load, keeps the old one; each
 * tenant's metrics slot is its index in the boot config. Run under ASan, a
 * snapshot freed while still held shows up as a use after free, and one never
 * freed as a leak. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gateway/config.h"
#include "gateway/snapshot.h"
#include "tests/unit/test.h"

#define KEY_A "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae" /* sha256("foo") */
#define KEY_B "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9" /* sha256("bar") */

/* One tier; the tenants and the tier's URL vary between files. */
static void write_config(const char *path, const char *url, int with_beta)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    fprintf(f,
            "{\"listen\":\"127.0.0.1:8080\",\"workers\":1,"
            "\"tiers\":[{\"name\":\"small\",\"model\":\"m\",\"engine\":{\"kind\":\"remote\",\"urls\":[\"%s\"]},"
            "\"price\":{\"input_per_1m\":0.1,\"output_per_1m\":0.2}}],"
            "\"tenants\":[%s{\"id\":\"acme\",\"keys\":[\"" KEY_A "\"],\"allowed_tiers\":[\"small\"]}]}",
            url, with_beta ? "{\"id\":\"beta\",\"keys\":[\"" KEY_B "\"],\"allowed_tiers\":[\"small\"]}," : "");
    fclose(f);
}

static const struct tenant_config *tenant(const struct config *c, const char *id)
{
    for (size_t i = 0; i < c->n_tenants; i++)
        if (strcmp(c->tenants[i].id, id) == 0)
            return &c->tenants[i];
    return NULL;
}

struct reader {
    struct snapshot_store *st;
    atomic_int *stop;
    long reads;
};

/* Acquire, read, release, as every request does, while the main thread reloads. */
static void *read_loop(void *arg)
{
    struct reader *r = arg;
    while (!atomic_load(r->stop)) {
        struct config_snap *s = snapshot_acquire(r->st);
        if (tenant(&s->cfg, "acme"))
            r->reads++;
        snapshot_release(s);
    }
    return NULL;
}

int main(void)
{
    char dir[] = "/tmp/cascade-test-snapshot-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char path[128], err[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_config(path, "http://127.0.0.1:9001", 0);
    struct config boot = {0};
    CHECK(config_load(path, &boot, err, sizeof err) == 0);

    /* The first snapshot is the file as loaded. */
    struct snapshot_store *st = snapshot_store_new(path, NULL, &boot, NULL, err, sizeof err);
    CHECK(st != NULL);
    if (!st)
        return 1;
    struct config_snap *s1 = snapshot_acquire(st);
    CHECK(s1->cfg.n_tenants == 1);
    CHECK(tenant(&s1->cfg, "acme") && tenant(&s1->cfg, "acme")->metrics_index == 0);

    /* A policy change swaps in; the held snapshot stays as it was, and a
     * tenant the boot config did not have gets no metrics slot. */
    write_config(path, "http://127.0.0.1:9001", 1);
    CHECK(snapshot_reload(st, "test") == 0);
    struct config_snap *s2 = snapshot_acquire(st);
    CHECK(s2 != s1);
    CHECK(s2->cfg.n_tenants == 2);
    CHECK(tenant(&s2->cfg, "beta") && tenant(&s2->cfg, "beta")->metrics_index == -1);
    CHECK(tenant(&s2->cfg, "acme") && tenant(&s2->cfg, "acme")->metrics_index == 0);
    CHECK(s1->cfg.n_tenants == 1);
    CHECK_STR(s1->cfg.tenants[0].id, "acme");
    snapshot_release(s1); /* the last holder of the first snapshot: freed here */

    /* An engine change needs a restart, and a broken file cannot load: the
     * running snapshot stays. */
    write_config(path, "http://127.0.0.1:9999", 0);
    CHECK(snapshot_reload(st, "test") == -1);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("{\"listen\":", f);
        fclose(f);
    }
    CHECK(snapshot_reload(st, "test") == -1);
    struct config_snap *s3 = snapshot_acquire(st);
    CHECK(s3 == s2);
    snapshot_release(s3);
    snapshot_release(s2);

    /* Requests on other threads while reloads swap snapshots under them. */
    write_config(path, "http://127.0.0.1:9001", 0);
    atomic_int stop = 0;
    struct reader rd[2] = {{st, &stop, 0}, {st, &stop, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, read_loop, &rd[i]);
    int swapped = 0;
    for (int i = 0; i < 40; i++) {
        write_config(path, "http://127.0.0.1:9001", i & 1);
        swapped += snapshot_reload(st, "test") == 0;
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECK(swapped == 40);
    CHECK(rd[0].reads > 0 && rd[1].reads > 0);

    /* --listen applies to every snapshot, the reloaded ones too. */
    struct snapshot_store *st2 = snapshot_store_new(path, "127.0.0.1:0", &boot, NULL, err, sizeof err);
    CHECK(st2 != NULL);
    if (st2) {
        struct config_snap *s = snapshot_acquire(st2);
        CHECK(s->cfg.listen_port == 0);
        snapshot_release(s);
    }
    /* A missing file is an error, not a store. */
    CHECK(snapshot_store_new("/nonexistent/cascade.json", NULL, &boot, NULL, err, sizeof err) == NULL);

    snapshot_store_free(st2);
    snapshot_store_free(st);
    snapshot_store_free(NULL);
    snapshot_release(NULL);
    config_free(&boot);
    unlink(path);
    rmdir(dir);
    TEST_MAIN_END();
}
