/* features.h: what the difficulty classifier sees of a prompt.
 *
 * Two kinds of features, both computed from the input alone:
 *
 *   sparse  hashed n-grams of the user message, in three groups: character
 *           3-, 4- and 5-grams, word unigrams and word bigrams. Text is
 *           lowercased, every digit reads as '0' (so "1984" and "2023" share
 *           the n-grams of a four-digit number) and whitespace runs collapse
 *           to one space. Each n-gram hashes to one of 2^hash_bits buckets.
 *           Within a group every occurrence counts 1/sqrt(N), N being the
 *           number of n-grams of that group in the text, so long and short
 *           prompts put vectors of the same scale into the model.
 *   dense   FEATURES_N_DENSE structural signals (see the enum below), raw;
 *           the model standardizes them with the mean and scale it stores.
 *
 * Very long texts are read in two windows, the first FEATURES_HEAD bytes and
 * the last FEATURES_TAIL bytes, so the cost of a score is bounded whatever
 * the prompt size; the length signals still see the whole length.
 *
 * The trainer and the scorer share this code, so a model scores a text in
 * service exactly as it saw it in training. Changing what these functions
 * compute changes FEATURES_VERSION, which model files record and the loader
 * checks. Pure functions, thread-safe; only features_sparse_collect()
 * allocates. */
#ifndef CASCADE_FEATURES_H
#define CASCADE_FEATURES_H

#include <stddef.h>
#include <stdint.h>

#include "classifier/classifier.h"

#define FEATURES_VERSION 2
#define FEATURES_HEAD 6144
#define FEATURES_TAIL 2048
#define FEATURES_MIN_BITS 10
#define FEATURES_MAX_BITS 24

enum features_group { FEATURES_G_CHAR, FEATURES_G_WORD, FEATURES_G_BIGRAM, FEATURES_N_GROUPS };

/* Dense signals, in this order. "log" means log(1 + count). */
enum features_dense {
    FD_LOG_BYTES,        /* user message length in bytes (whole message) */
    FD_LOG_WORDS,        /* words */
    FD_LOG_LINES,        /* non-empty lines */
    FD_MEAN_WORD_LEN,    /* mean letters per word */
    FD_LONG_WORD_FRAC,   /* share of words of 9+ letters */
    FD_LOG_SENTENCES,    /* '.', '!' or '?' before a space or the end */
    FD_WORDS_PER_SENT,   /* log(1 + words / sentences) */
    FD_LOG_DIGITS,       /* digit characters */
    FD_DIGIT_FRAC,       /* digits / bytes */
    FD_LOG_NUMBERS,      /* numbers (digit runs, "3.5" and "1,200" count once) */
    FD_LOG_DECIMALS,     /* numbers with a decimal point or a fraction bar */
    FD_LOG_BIG_NUMBERS,  /* numbers of 4+ digits */
    FD_LOG_ARITH,        /* + * / = ^ and a '-' between operands */
    FD_LOG_CURRENCY,     /* '$' and other currency signs */
    FD_LOG_PERCENT,      /* '%' */
    FD_LOG_MATH,         /* LaTeX commands, '^', '_', Greek letters, U+22xx operators */
    FD_LOG_CODE_PUNCT,   /* { } ; and "==" "!=" "->" "()" */
    FD_LOG_CODE_WORDS,   /* def, return, void, printf, lambda, ... */
    FD_LOG_OPTIONS,      /* lines shaped like a multiple-choice option: "A. ", "(b) " */
    FD_HAS_4_OPTIONS,    /* 1 when there are 4 or more options */
    FD_LOG_OPTION_LEN,   /* mean option length in bytes */
    FD_LOG_STEM_LEN,     /* bytes before the first option (the whole text if none) */
    FD_ENDS_ANSWER,      /* 1 when the text ends with "Answer:" */
    FD_LOG_QMARKS,       /* '?' */
    FD_LOG_QWORDS,       /* what, which, how, why, who, when, where, whose, whom */
    FD_LOG_NEGATIONS,    /* not, except, least, false, incorrect, never, none */
    FD_LOG_CAPS_WORDS,   /* capitalized words of 2+ letters */
    FD_UPPER_FRAC,       /* uppercase share of ASCII letters */
    FD_NONASCII_FRAC,    /* bytes >= 0x80 / bytes */
    FD_LOG_QUOTES_PARENS,/* quotes and parentheses */
    FD_LOG_SYSTEM_BYTES, /* system prompt length in bytes */
    FD_LOG_TURNS,        /* log(n_messages), 0 for one message */
    /* Version 2: the option structure, from options_parse() (options.h).
     * Words here are runs of ASCII letters and digits, lowercased, less a
     * few function words ("the", "of", ...); each option counts at most
     * FEATURES_OPT_WORDS distinct words, the stem (its last 512 bytes) at most
     * FEATURES_STEM_WORDS. */
    FD_OPT_OVERLAP,      /* mean Jaccard overlap of the word sets of every pair of options */
    FD_OPT_STEM_OVERLAP, /* mean over options of the share of its words found in the stem */
    FD_OPT_LEN_SPREAD,   /* log(1 + longest option) - log(1 + shortest), bytes */
    FD_MC_LOG_WORDS,     /* log_words when the prompt has options, else 0 */
    FD_MC_LOG_STEM,      /* log_stem_len when the prompt has options, else 0 */
    FD_WP_LOG_WORDS,     /* log_words when it has none (a word problem), else 0 */
    FEATURES_N_DENSE
};

/* The signals of FEATURES_VERSION 1: the v1 recipe sees these only. */
#define FEATURES_N_DENSE_V1 32
#define FEATURES_OPT_WORDS 32
#define FEATURES_STEM_WORDS 256

/* One hashed feature: bucket index and its value. */
struct features_entry {
    uint32_t index;
    float value;
};

/* Fill out[FEATURES_N_DENSE] with the raw dense signals of in. */
void features_dense(const struct classifier_input *in, float *out);

/* The sparse part of a linear score: sum over groups g of
 * (1/sqrt(N_g)) * sum over the group's n-gram occurrences of w[bucket].
 * w has 2^hash_bits entries. Allocates nothing. */
float features_sparse_dot(const struct classifier_input *in, unsigned hash_bits, const float *w);

/* The same sum against FEATURES_MAX_DOTS weight vectors at once, stored
 * bucket-major (w[bucket * 4 + j] is vector j's weight; w 16-byte aligned):
 * one pass over the text, one 16-byte load and one vector add per n-gram,
 * so up to four heads cost what one does. out[j] gets vector j's sum, equal
 * to features_sparse_dot() over that vector up to float rounding.
 * Allocates nothing. */
#define FEATURES_MAX_DOTS 4
void features_sparse_dots(const struct classifier_input *in, unsigned hash_bits, const float *w, float *out);

/* The same features as (bucket, value) pairs, duplicates merged, sorted by
 * bucket, for the trainer: *out is malloc'd (free it), *n its length.
 * 0 on success, -1 when out of memory. */
int features_sparse_collect(const struct classifier_input *in, unsigned hash_bits,
                            struct features_entry **out, size_t *n);

/* A short name for dense signal i, for reports ("log_bytes"). */
const char *features_dense_name(int i);

#endif
