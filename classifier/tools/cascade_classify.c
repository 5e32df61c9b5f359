/* cascade-classify: score prompts from the command line.
 *
 *   cascade-classify --model classifier/models/difficulty.cdm < prompts.jsonl > scored.jsonl
 *
 * Reads JSON Lines on stdin, one object per line with a "prompt" string (the
 * routing data's format; optional "system" string and "n_messages" integer),
 * and writes each line back with a "score" field, the routing score
 * (classifier_score(): for a v2 model (1 + P(large right) - P(small right)) / 2),
 * added as its last member. The line's other bytes are left as they were. A line that
 * is not such an object is reported on stderr with its number and skipped;
 * the exit status is then 1. A bad model file fails at start-up. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classifier/classifier.h"

static void usage(void)
{
    fprintf(stderr, "usage: cascade-classify --model FILE < in.jsonl > out.jsonl\n");
}

/* Write line (without its newline) with ,"score":S before the closing brace.
 * Rewriting the object through jansson would reformat every other field, so
 * we splice when the object has no "score" yet and fall back otherwise. */
static void write_scored(const char *line, size_t len, json_t *obj, float score)
{
    char num[32];
    snprintf(num, sizeof num, "%.9g", (double)score);
    if (!json_object_get(obj, "score")) {
        size_t end = len;
        while (end > 0 && line[end - 1] != '}')
            end--;
        size_t before = end - 1; /* the closing brace */
        size_t k = before;
        while (k > 0 && (line[k - 1] == ' ' || line[k - 1] == '\t' || line[k - 1] == '\r' || line[k - 1] == '\n'))
            k--;
        int empty = k > 0 && line[k - 1] == '{';
        fwrite(line, 1, before, stdout);
        printf("%s\"score\": %s}\n", empty ? "" : ", ", num);
        return;
    }
    json_object_set_new(obj, "score", json_real(score));
    char *s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    if (s)
        puts(s);
    free(s);
}

int main(int argc, char **argv)
{
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else {
            usage();
            return 2;
        }
    }
    if (!model) {
        usage();
        return 2;
    }
    char err[512];
    struct classifier *c = classifier_load(model, err, sizeof err);
    if (!c) {
        fprintf(stderr, "cascade-classify: %s\n", err);
        return 1;
    }

    int rc = 0;
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, stdin)) > 0) {
        lineno++;
        size_t len = (size_t)got;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        if (len == 0)
            continue;
        json_error_t jerr;
        json_t *obj = json_loadb(line, len, 0, &jerr);
        json_t *prompt = json_object_get(obj, "prompt"), *system = json_object_get(obj, "system");
        json_t *turns = json_object_get(obj, "n_messages");
        if (!json_is_object(obj) || !json_is_string(prompt) || (system && !json_is_string(system)) ||
            (turns && !json_is_integer(turns))) {
            fprintf(stderr, "cascade-classify: line %zu: %s\n", lineno,
                    obj ? "needs an object with a \"prompt\" string" : jerr.text);
            json_decref(obj);
            rc = 1;
            continue;
        }
        struct classifier_input in = {
            .user = json_string_value(prompt),
            .user_len = json_string_length(prompt),
            .system = system ? json_string_value(system) : NULL,
            .system_len = system ? json_string_length(system) : 0,
            .n_messages = !turns                               ? 1
                          : json_integer_value(turns) > 1000000 ? 1000000
                                                                : (int)json_integer_value(turns),
        };
        write_scored(line, len, obj, classifier_score(c, &in));
        json_decref(obj);
    }
    free(line);
    classifier_free(c);
    return rc;
}
