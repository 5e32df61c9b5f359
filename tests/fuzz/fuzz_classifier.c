/* fuzz_classifier: the difficulty classifier (classifier/), which reads two
 * kinds of outside bytes: every prompt's text (features and score, on every
 * request) and its model file.
 *
 * The first input byte chooses:
 *   even: the rest is a prompt -- system and user text split at a point the
 *         second byte picks -- scored with the real model
 *         classifier/models/difficulty.cdm, loaded once. The score must be a
 *         number in [0, 1] and the same on a second call (the header
 *         promises a pure function).
 *   odd:  the rest is a model file. The harness writes the size field and
 *         the SHA-256 trailer the format requires, so the fuzzer reaches the
 *         shape and weight checks behind them; an accepted model then scores
 *         a fixed prompt, finitely or not, without reading out of bounds. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classifier/classifier.h"
#include "classifier/cmodel.h"
#include "common/hash.h"

static struct classifier *real;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/classifier/models/difficulty.cdm", CASCADE_SOURCE_DIR);
    real = classifier_load(path, err, sizeof err);
    if (!real) {
        fprintf(stderr, "fuzz_classifier: %s: %s\n", path, err);
        exit(1);
    }
    return 0;
}

static void score_text(const uint8_t *data, size_t size)
{
    size_t cut = size ? data[0] % (size + 1) : 0;
    if (cut > size)
        cut = size;
    struct classifier_input in = {
        .system = cut > 1 ? (const char *)data + 1 : NULL,
        .system_len = cut > 1 ? cut - 1 : 0,
        .user = (const char *)data + cut,
        .user_len = size - cut,
        .n_messages = 1 + (size ? data[size - 1] % 8 : 0),
    };
    float p = classifier_score(real, &in);
    if (!(p >= 0.0f && p <= 1.0f) || classifier_score(real, &in) != p)
        abort();
}

static void parse_model(const uint8_t *data, size_t size)
{
    if (size < CMODEL_HEADER_BYTES + SHA256_LEN)
        return;
    unsigned char *buf = malloc(size);
    memcpy(buf, data, size);
    memcpy(buf, CMODEL_MAGIC, 8);
    for (int i = 0; i < 8; i++)
        buf[16 + i] = (unsigned char)((uint64_t)size >> (8 * i));
    hash_sha256(buf, size - SHA256_LEN, buf + size - SHA256_LEN);
    char err[512];
    struct cmodel *m = cmodel_parse(buf, size, err, sizeof err);
    free(buf); /* the model must own copies of what it keeps */
    if (!m)
        return;
    static const char text[] = "What is 17 * 23? Answer with (A) 391 (B) 401.";
    struct classifier_input in = {.user = text, .user_len = sizeof text - 1, .n_messages = 1};
    (void)cmodel_logit(m, &in);
    if (!m->meta)
        abort();
    cmodel_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] & 1)
        parse_model(data + 1, size - 1);
    else
        score_text(data + 1, size - 1);
    return 0;
}
