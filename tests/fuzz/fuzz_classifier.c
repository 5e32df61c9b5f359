/* fuzz_classifier: the difficulty classifier (classifier/), which reads two
 * kinds of outside bytes: every prompt's text (features and score, on every
 * request) and its model file.
 *
 * The first input byte's low two bits choose:
 *   0, 3: the rest is a prompt -- system and user text split at a point the
 *         second byte picks -- scored with the real model
 *         classifier/models/difficulty.cdm, loaded once. Every score must be
 *         a number in its range and the same on a second call (the header
 *         promises a pure function).
 *   1:    the rest is a model file (format 2: heads, trees, quantiles). The
 *         harness writes the size field and the SHA-256 trailer the format
 *         requires, so the fuzzer reaches the shape and weight checks behind
 *         them; an accepted model then scores a fixed prompt, in range,
 *         without reading out of bounds, and answers a share threshold.
 *   2:    the rest is a prompt for the multiple-choice parser
 *         (classifier/options.h), whose answer must hold together: 0 or 2..10
 *         options, letters A, B, ... in order, every span inside the text
 *         after the stem and on one line. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classifier/classifier.h"
#include "classifier/cmodel.h"
#include "classifier/options.h"
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
    struct classifier_scores s;
    classifier_scores(real, &in, &s);
    if (s.route != p || !(s.needs_large >= 0.0f && s.needs_large <= 1.0f) || !(s.gain >= -1.0f && s.gain <= 1.0f))
        abort();
}

static void parse_options(const uint8_t *data, size_t size)
{
    struct options o;
    int n = options_parse((const char *)data, size, &o);
    if (n != o.n || n < 0 || n == 1 || n > OPTIONS_MAX)
        abort();
    if (n == 0 && o.stem_len != 0)
        abort();
    for (int i = 0; i < n; i++) {
        const struct option_span *sp = &o.text[i];
        if (o.letters[i] != 'A' + i || sp->off < o.stem_len || sp->off > size || sp->len > size - sp->off ||
            sp->off + sp->len > OPTIONS_SCAN_MAX || memchr(data + sp->off, '\n', sp->len) ||
            (i && sp->off <= o.text[i - 1].off + o.text[i - 1].len))
            abort();
    }
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
    static const char text[] = "What is 17 * 23?\nA. 391\nB. 401\nAnswer:";
    struct classifier_input in = {.user = text, .user_len = sizeof text - 1, .n_messages = 1};
    struct classifier_scores s;
    cmodel_scores(m, &in, &s);
    if (!m->meta || !(s.route >= 0.0f && s.route <= 1.0f))
        abort();
    double t = cmodel_threshold_for_share(m, 0.3);
    if (!(t == -1 || (t >= 0 && t <= 1)))
        abort();
    cmodel_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    switch (data[0] & 3) {
    case 1:
        parse_model(data + 1, size - 1);
        break;
    case 2:
        parse_options(data + 1, size - 1);
        break;
    default:
        score_text(data + 1, size - 1);
        break;
    }
    return 0;
}
