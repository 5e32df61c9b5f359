/* parse.c: how long the gateway's own parse of one request body takes.
 *
 * bench/bigbody/run.mjs compares the delay a 10 MB request adds to small
 * requests on the same worker with the time that request's JSON parse
 * takes, since the parse is the one step that stays on the event loop
 * (chat_request_parse: jansson's load, then the OpenAI validation).
 *
 *   bench_bigbody_parse FILE [REPEATS]
 *
 * Prints one line per repeat, "parse_ms=<ms>", then "bytes=<n>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/openai.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [REPEATS]\n", argv[0]);
        return 2;
    }
    int repeats = argc > 2 ? atoi(argv[2]) : 5;
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *body = malloc((size_t)n + 1);
    if (!body || fread(body, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "%s: cannot read\n", argv[1]);
        return 1;
    }
    fclose(f);
    body[n] = '\0';
    for (int i = 0; i < repeats; i++) {
        struct chat_request req = {0};
        struct openai_error err;
        double t0 = now_ms();
        int rc = chat_request_parse(body, (size_t)n, &req, &err);
        double t1 = now_ms();
        if (rc < 0) {
            fprintf(stderr, "parse failed: %s\n", err.message);
            return 1;
        }
        chat_request_free(&req);
        printf("parse_ms=%.2f\n", t1 - t0);
    }
    printf("bytes=%ld\n", n);
    free(body);
    return 0;
}
