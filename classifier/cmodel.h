/* cmodel.h: the classifier's model: its parameters, its forward pass and its
 * file format. classifier.h wraps it in an opaque handle for the gateway; the
 * trainer and the tools use the fields here directly.
 *
 * A model has one to three heads over the same features. Each head is a
 * logit of its own:
 *     z_i   = clamp((x_i - dense_mean[i]) * dense_scale[i], -8, 8)
 *     h_j   = max(0, hidden_b[j] + sum_i hidden_w[i*H + j] * z_i)
 *     logit = bias + sum_i dense_w[i] * z_i + features_sparse_dot(sparse_w of the head)
 *             + sum_j out_w[j] * h_j + gbt_eval(trees, x)
 * with x the raw dense signals (features.h), D of them, and H hidden units
 * (H = 0: no MLP; no trees: gbt_eval is 0). The trees (gbt.h) read the raw
 * signals, the linear part the standardized ones.
 *
 * The heads' kinds: needs_large (P(large right and small wrong)),
 * small_right and large_right. With both small_right and large_right the
 * routing score is the expected gain: route = (1 + P(large) - P(small)) / 2.
 * A model with only a needs_large head routes by it (classifier.h).
 *
 * File format, version 2. Every integer and float is little-endian,
 * whatever the machine; floats are IEEE-754 binary32.
 *
 *   offset  size  field
 *        0     8  magic "CASCDIFF"
 *        8     4  u32 format version (CMODEL_FORMAT_VERSION)
 *       12     4  u32 features version (FEATURES_VERSION of the trainer)
 *       16     8  u64 file size in bytes, checksum included
 *       24     4  u32 hash_bits (each head has 2^hash_bits sparse weights)
 *       28     4  u32 D, dense signals (must equal FEATURES_N_DENSE)
 *       32     4  u32 K, heads (1..CMODEL_MAX_HEADS)
 *       36     4  u32 metadata bytes
 *       40     4  u32 Q, route-score quantiles (0, or 2..CMODEL_MAX_QUANTILES)
 *       44    20  reserved, zero
 *       64        f32 dense_mean[D], dense_scale[D]
 *                 per head: u32 kind, u32 H, u32 T (trees), u32 depth,
 *                   f32 bias, dense_w[D], hidden_w[D*H] (input-major), hidden_b[H], out_w[H],
 *                   u32 tree_feat[T*depth], f32 tree_thr[T*depth], f32 leaf[T << depth]
 *                 f32 sparse_w[2^hash_bits * K], bucket-major: [bucket*K + head]
 *                 f32 quantiles[Q]: the route score's distribution on the
 *                   trainer's out-of-fold scores, q[i] at probability i/(Q-1)
 *                 then the metadata: UTF-8 JSON text, no terminating NUL
 *   size-32   32  SHA-256 of every byte before it
 *
 * A reader rejects a file whose magic, versions, size, checksum or shape do
 * not match, or whose weights are not finite, with a one-line reason; a
 * format-1 file is told to regenerate. The scoring functions are pure and
 * allocate nothing: any thread may call them on a model nobody writes to. */
#ifndef CASCADE_CMODEL_H
#define CASCADE_CMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "classifier/classifier.h"
#include "classifier/gbt.h"

#define CMODEL_MAGIC "CASCDIFF"
#define CMODEL_FORMAT_VERSION 2
#define CMODEL_HEADER_BYTES 64
#define CMODEL_MAX_HIDDEN 256
#define CMODEL_MAX_HEADS 3
/* In memory each bucket holds 4 floats (one per head, padded), so the
 * scorer reads every head's weight with one aligned load; the file holds
 * n_heads per bucket. */
#define CMODEL_SPARSE_STRIDE 4
#define CMODEL_MAX_QUANTILES 100001
#define CMODEL_MAX_META (1u << 20)

enum cmodel_head_kind { CMODEL_NEEDS_LARGE, CMODEL_SMALL_RIGHT, CMODEL_LARGE_RIGHT, CMODEL_N_KINDS };

struct cmodel_head {
    int kind;          /* enum cmodel_head_kind */
    int n_hidden;
    float bias;
    float *dense_w;    /* [n_dense] */
    float *hidden_w;   /* [n_dense * n_hidden], input-major: [i*H + j] */
    float *hidden_b, *out_w; /* [n_hidden] */
    struct gbt_forest trees;
};

struct cmodel {
    unsigned hash_bits;
    int n_dense, n_heads;
    float *dense_mean, *dense_scale; /* [n_dense] */
    float *sparse_w;                 /* [(1 << hash_bits) * CMODEL_SPARSE_STRIDE], bucket-major:
                                        [bucket * 4 + head], unused slots 0, 64-byte aligned */
    struct cmodel_head head[CMODEL_MAX_HEADS];
    int n_quantiles;
    float *quantiles;                /* [n_quantiles], ascending, or NULL */
    char *meta;                      /* JSON text, NUL-terminated, never NULL */
};

/* A zeroed model (dense_scale 1, no trees, no quantiles) with n_heads heads
 * of the given kinds (distinct) and hidden sizes. NULL on a bad shape or out
 * of memory. */
struct cmodel *cmodel_new(unsigned hash_bits, int n_heads, const int *kinds, const int *n_hidden);
void cmodel_free(struct cmodel *m);
/* Replace the metadata with a copy of json (NULL means none). 0 or -1. */
int cmodel_set_meta(struct cmodel *m, const char *json);
/* Replace the quantiles with a copy of q[0..n) (ascending, in [0,1]). 0 or -1. */
int cmodel_set_quantiles(struct cmodel *m, const float *q, int n);
/* The index of the head of kind, or -1. */
int cmodel_head_of(const struct cmodel *m, int kind);

/* Each head's logit, into logit[n_heads]. */
void cmodel_logits(const struct cmodel *m, const struct classifier_input *in, float *logit);
/* Each head's logit from the raw dense signals x[n_dense] and each head's
 * sparse dot product: the forward pass after the text is read. */
void cmodel_logits_from(const struct cmodel *m, const float *x, const float *sparse, float *logit);
/* The scores (classifier.h) from the heads' logits. */
void cmodel_scores_of(const struct cmodel *m, const float *logit, struct classifier_scores *out);
/* Every score of in (classifier.h): what classifier_scores() returns. */
void cmodel_scores(const struct cmodel *m, const struct classifier_input *in, struct classifier_scores *out);
/* The route score t with a share `share` of the stored distribution at or
 * above it (classifier_threshold_for_share); -1 without quantiles. */
double cmodel_threshold_for_share(const struct cmodel *m, double share);

/* Write m to path (through a temporary file and rename). 0, or -1 with err. */
int cmodel_write(const struct cmodel *m, const char *path, char *err, size_t errlen);
/* Parse and verify a model image of len bytes. NULL with err on failure. */
struct cmodel *cmodel_parse(const unsigned char *buf, size_t len, char *err, size_t errlen);
/* Read and verify path. NULL with err on failure. */
struct cmodel *cmodel_read(const char *path, char *err, size_t errlen);

#endif
