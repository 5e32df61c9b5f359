/* tfidf.h: the baseline router the shipped classifier is measured against:
 * TF-IDF word features and a logistic regression, as scikit-learn's
 * TfidfVectorizer() and LogisticRegression(C) do it with their defaults:
 *
 *   tokens   runs of 2+ word characters (letters, digits, '_', any UTF-8
 *            byte), lowercased (ASCII);
 *   weights  raw term count * idf, idf = ln((1 + n) / (1 + df)) + 1, the row
 *            then scaled to unit L2 norm; the vocabulary is every token of
 *            the training rows;
 *   model    minimize sum_i logloss + |w|^2 / (2C), intercept unpenalized,
 *            by L-BFGS (trainer.h).
 *
 * Used by the evaluation tool only, never in service. Not thread-safe while
 * fitting; scoring is read-only. */
#ifndef CASCADE_TFIDF_H
#define CASCADE_TFIDF_H

#include <stddef.h>

struct tfidf;

/* Fit on rows[0..n_rows) of texts (len[i] bytes each) with labels y. */
struct tfidf *tfidf_fit(const char *const *texts, const size_t *len, const int *y, const size_t *rows,
                        size_t n_rows, double C);
void tfidf_free(struct tfidf *t);
/* P(label = 1) for one text. */
float tfidf_score(const struct tfidf *t, const char *text, size_t len);
size_t tfidf_vocab_size(const struct tfidf *t);

#endif
