/* cmodel.h: the classifier's model: its parameters, its forward pass and its
 * file format. classifier.h wraps it in an opaque handle for the gateway; the
 * trainer and the tools use the fields here directly.
 *
 * Forward pass. With x the raw dense signals (features.h), D of them, and H
 * hidden units:
 *     z_i   = clamp((x_i - dense_mean[i]) * dense_scale[i], -8, 8)
 *     h_j   = max(0, hidden_b[j] + sum_i hidden_w[i*H + j] * z_i)
 *     logit = bias + sum_i dense_w[i] * z_i + features_sparse_dot(sparse_w)
 *             + sum_j out_w[j] * h_j
 *     score = 1 / (1 + exp(-logit))
 * H = 0 makes it a logistic regression over hashed n-grams and signals.
 *
 * File format, version 1. Every integer and float is little-endian, whatever
 * the machine; floats are IEEE-754 binary32.
 *
 *   offset  size  field
 *        0     8  magic "CASCDIFF"
 *        8     4  u32 format version (CMODEL_FORMAT_VERSION)
 *       12     4  u32 features version (FEATURES_VERSION of the trainer)
 *       16     8  u64 file size in bytes, checksum included
 *       24     4  u32 hash_bits (sparse_w has 2^hash_bits entries)
 *       28     4  u32 D, dense signals (must equal FEATURES_N_DENSE)
 *       32     4  u32 H, hidden units (0..CMODEL_MAX_HIDDEN)
 *       36     4  u32 metadata bytes
 *       40    24  reserved, zero
 *       64        f32 dense_mean[D], dense_scale[D], bias, dense_w[D],
 *                 sparse_w[2^hash_bits], hidden_w[D*H] (input-major), hidden_b[H],
 *                 out_w[H]
 *                 then the metadata: UTF-8 JSON text, no terminating NUL
 *   size-32   32  SHA-256 of every byte before it
 *
 * A reader rejects a file whose magic, versions, size, checksum or shape do
 * not match, or whose weights are not finite, with a one-line reason.
 * cmodel_logit() is pure and allocates nothing: any thread may call it on a
 * model nobody writes to. */
#ifndef CASCADE_CMODEL_H
#define CASCADE_CMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "classifier/classifier.h"

#define CMODEL_MAGIC "CASCDIFF"
#define CMODEL_FORMAT_VERSION 1
#define CMODEL_HEADER_BYTES 64
#define CMODEL_MAX_HIDDEN 256
#define CMODEL_MAX_META (1u << 20)

struct cmodel {
    unsigned hash_bits;
    int n_dense, n_hidden;
    float *dense_mean, *dense_scale; /* [n_dense] */
    float bias;
    float *dense_w;                  /* [n_dense] */
    float *sparse_w;                 /* [1 << hash_bits] */
    float *hidden_w;                 /* [n_dense * n_hidden], input-major: [i*H + j] */
    float *hidden_b, *out_w;         /* [n_hidden] */
    char *meta;                      /* JSON text, NUL-terminated, never NULL */
};

/* A zeroed model (dense_scale 1). NULL on a bad shape or out of memory. */
struct cmodel *cmodel_new(unsigned hash_bits, int n_hidden);
void cmodel_free(struct cmodel *m);
/* Replace the metadata with a copy of json (NULL means none). 0 or -1. */
int cmodel_set_meta(struct cmodel *m, const char *json);

/* The logit of P(needs_large). */
float cmodel_logit(const struct cmodel *m, const struct classifier_input *in);
/* Every score of in (classifier.h): what classifier_scores() returns. */
void cmodel_scores(const struct cmodel *m, const struct classifier_input *in, struct classifier_scores *out);
/* The standardized dense signals z of in, as the forward pass sees them. */
void cmodel_dense_z(const struct cmodel *m, const struct classifier_input *in, float *z);

/* Write m to path (through a temporary file and rename). 0, or -1 with err. */
int cmodel_write(const struct cmodel *m, const char *path, char *err, size_t errlen);
/* Parse and verify a model image of len bytes. NULL with err on failure. */
struct cmodel *cmodel_parse(const unsigned char *buf, size_t len, char *err, size_t errlen);
/* Read and verify path. NULL with err on failure. */
struct cmodel *cmodel_read(const char *path, char *err, size_t errlen);

#endif
