/* cascaded: the Cascade gateway. See README.md and gateway.h. */
#include <event2/thread.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef CASCADE_HAVE_MIMALLOC
#include <mimalloc.h>
#endif

#include "classifier/classifier.h"
#include "common/log.h"
#include "gateway/engines.h"
#include "gateway/gateway.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: cascaded -c FILE [--listen HOST:PORT] [--check-config]\n"
               "  -c, --config FILE     the JSON config (see deploy/local.json)\n"
               "  -l, --listen H:P      override the config's listen address (port 0 picks one)\n"
               "      --check-config    validate the config and exit\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"listen", required_argument, NULL, 'l'},
        {"check-config", no_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *listen = NULL;
    int check = 0, c;
    while ((c = getopt_long(argc, argv, "c:l:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'l': listen = optarg; break;
        case 'k': check = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!config_path || optind != argc) {
        usage(stderr);
        return 2;
    }
    struct gateway gw = {0};
    gw.config_path = config_path;
    gw.listen_override = listen;
    char err[512];
    if (config_load(config_path, &gw.cfg, err, sizeof err) < 0) {
        fprintf(stderr, "cascaded: %s: %s\n", config_path, err);
        return 2;
    }
    if (listen) {
        free(gw.cfg.listen_host);
        if (config_parse_listen(listen, &gw.cfg.listen_host, &gw.cfg.listen_port) < 0) {
            fprintf(stderr, "cascaded: --listen: must be HOST:PORT\n");
            gw.cfg.listen_host = NULL;
            config_free(&gw.cfg);
            return 2;
        }
    }
    if (check) {
        /* Every tier's engine options too, as start-up would check them,
         * without loading a model, probing a device or reading a secret. */
        char base_dir[4096];
        snprintf(base_dir, sizeof base_dir, "%s", config_path);
        char *slash = strrchr(base_dir, '/');
        if (slash)
            *slash = '\0';
        else
            snprintf(base_dir, sizeof base_dir, ".");
        for (size_t i = 0; i < gw.cfg.n_tiers; i++) {
            if (engines_check(&gw.cfg.tiers[i], base_dir, err, sizeof err) < 0) {
                fprintf(stderr, "cascaded: %s: tiers[%zu].engine: %s\n", config_path, i, err);
                config_free(&gw.cfg);
                return 2;
            }
        }
        /* The classifier's model too: it must load, and tenants' routing
         * shares must find a score distribution in it. */
        if (gw.cfg.classifier) {
            char mpath[8192];
            if (gw.cfg.classifier[0] == '/')
                snprintf(mpath, sizeof mpath, "%s", gw.cfg.classifier);
            else
                snprintf(mpath, sizeof mpath, "%s/%s", base_dir, gw.cfg.classifier);
            struct classifier *cl = classifier_load(mpath, err, sizeof err);
            int bad = !cl;
            if (bad)
                fprintf(stderr, "cascaded: %s: classifier.model: %s\n", config_path, err);
            else if (config_resolve_routing(&gw.cfg, config_classifier_threshold, cl, err, sizeof err) < 0) {
                fprintf(stderr, "cascaded: %s: %s\n", config_path, err);
                bad = 1;
            }
            classifier_free(cl);
            if (bad) {
                config_free(&gw.cfg);
                return 2;
            }
        }
        printf("%s: config OK (%zu tiers, %zu tenants)\n", config_path, gw.cfg.n_tiers, gw.cfg.n_tenants);
        config_free(&gw.cfg);
        return 0;
    }
    /* Before any thread exists, so that only the main thread takes signals. */
    sigset_t set;
    gateway_block_signals(&set);
    /* Engine threads hand results to workers with event_active(). */
    evthread_use_pthreads();
#ifdef CASCADE_HAVE_MIMALLOC
    /* Start-up parses the tokenizer (a 7.5 MB JSON: tens of MB of jansson
     * nodes, freed once its tables are built). mimalloc keeps freed pages
     * resident for reuse, so after start-up they stayed: idle RSS 56 MB with
     * the tokenizer against glibc's 18. While starting, freed pages go back
     * to the OS at once; after it, as mimalloc's defaults have it (handing
     * pages back on the request path costs an madvise each). */
    long decommit_delay = mi_option_get(mi_option_decommit_delay);
    mi_option_enable(mi_option_page_reset);
    mi_option_set(mi_option_decommit_delay, 0);
#endif
    int init = gateway_init(&gw, err, sizeof err);
#ifdef CASCADE_HAVE_MIMALLOC
    mi_collect(true);
    mi_option_disable(mi_option_page_reset);
    mi_option_set(mi_option_decommit_delay, decommit_delay);
#endif
    if (init < 0) {
        log_error("%s", err);
        gateway_free(&gw);
        return 1;
    }
#ifdef CASCADE_HAVE_MIMALLOC
    /* Also what keeps the library linked where the linker drops libraries
     * no symbol is taken from (--as-needed, Ubuntu's default). */
    log_info("allocator: mimalloc %d", mi_version());
#else
    log_info("allocator: glibc malloc");
#endif
    /* From here on workers log through the background writer. */
    log_async_start();
    int rc = gateway_run(&gw);
    gateway_free(&gw);
    log_async_stop();
    return rc;
}
