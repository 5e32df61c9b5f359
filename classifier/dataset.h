/* dataset.h: the routing data (../shared/data/routing) and its splits, for
 * the trainer, the evaluation tool and the tests.
 *
 * A row is one prompt with the graded answers of a weak and a strong model;
 * its label is needs_large = strong_correct && !weak_correct. The split is a
 * pure function of the rows and a seed, so the trainer, the evaluation and
 * the tests all see the same validation rows:
 *
 *   held-out subjects  whole MMLU subjects, drawn in a seeded order until they
 *                      hold subject_frac of all rows: the model never sees a
 *                      prompt of these subjects, which is how a new domain
 *                      looks in service;
 *   held-out rows      random_frac of the other rows, chosen by a seeded hash
 *                      of the row id (GSM8K included);
 *   train              the rest.
 *
 * Cross-validation folds inside the train split follow the same idea: MMLU
 * rows fold by subject, GSM8K rows by a hash of their id. Not thread-safe
 * while loading; read-only afterwards. */
#ifndef CASCADE_DATASET_H
#define CASCADE_DATASET_H

#include <stddef.h>
#include <stdint.h>

#define DATASET_SPLIT_SEED 20240607u
#define DATASET_SUBJECT_FRAC 0.15
#define DATASET_RANDOM_FRAC 0.15

enum dataset_split { DATASET_TRAIN, DATASET_VAL_ROWS, DATASET_VAL_SUBJECTS };

struct dataset_row {
    char *id, *source, *subject, *prompt;
    size_t prompt_len;
    int weak_correct, strong_correct;
    int label; /* needs_large */
    enum dataset_split split;
};

struct dataset {
    struct dataset_row *rows;
    size_t n;
};

/* Load a routing JSONL file; every row starts in DATASET_TRAIN. NULL with a
 * reason (file, line) in err on any malformed line. */
struct dataset *dataset_load(const char *path, char *err, size_t errlen);
void dataset_free(struct dataset *d);

/* Assign every row its split (see above). */
void dataset_split(struct dataset *d, uint64_t seed, double subject_frac, double random_frac);

/* fold[i] in [0, k) for train rows, -1 for validation rows. */
void dataset_folds(const struct dataset *d, int k, uint64_t seed, int *fold);
/* The same grouping over any rows: fold[i] in [0, k) for the rows with
 * member[i] != 0 (every row when member is NULL), -1 for the rest. MMLU
 * subjects, in an order drawn from seed, each join the fold with the fewest
 * rows so far; other rows (GSM8K) fold by a seeded hash of their id. The
 * evaluation's repeated folds over the whole file (member NULL) and its inner
 * folds over one outer fold's training rows both come from here. */
void dataset_group_folds(const struct dataset *d, const unsigned char *member, int k, uint64_t seed, int *fold);

/* The held-out subjects, comma-separated, into buf (for reports). */
void dataset_heldout_subjects(const struct dataset *d, char *buf, size_t len);

const char *dataset_split_name(enum dataset_split s);

/* splitmix64: the project's seeded generator for splits and inits. */
uint64_t dataset_rand(uint64_t *state);

#endif
