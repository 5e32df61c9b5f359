/* classifier.h: the difficulty classifier, which scores how much a prompt
 * stands to gain from the large model.
 *
 * A format-2 model has three heads, each a linear logit over hashed n-grams
 * and structural signals plus boosted trees over the signals: P(the small
 * tier answers right), P(the large tier answers right), and P(needs_large),
 * where a prompt "needs the large model" when the strong model answers it
 * correctly and the weak model does not. Routing ranks by the expected gain,
 * large_right - small_right, as the route score (1 + gain) / 2; the policy
 * layer turns it into a tier (policies/routing.h), this module only scores.
 *
 * A model is a file written by classifier-train (format in cmodel.h): the
 * heads, and the distribution of route scores the trainer measured on its
 * out-of-fold rows, which classifier_threshold_for_share() reads. A file of
 * an older format is refused at load with the command that regenerates it.
 *
 *   char err[256];
 *   struct classifier *c = classifier_load("classifier/models/difficulty.cdm", err, sizeof err);
 *   if (!c) die(err);
 *   struct classifier_input in = { .user = text, .user_len = len, .n_messages = 1 };
 *   float p = classifier_score(c, &in);
 *   classifier_free(c);
 *
 * Ownership and threads: classifier_load() returns a handle that is read-only
 * from then on. classifier_score() is a pure function of the model and the
 * input: it allocates nothing, keeps no state and may be called from any
 * number of threads at once. The same input gives the same score, bit for
 * bit, on every call. Free the handle only once no thread scores with it. */
#ifndef CASCADE_CLASSIFIER_H
#define CASCADE_CLASSIFIER_H

#include <stddef.h>

struct classifier;

/* What the gateway knows about a request: the system prompt (may be NULL),
 * the last user message and the number of messages in the conversation.
 * Texts are UTF-8 (or any bytes) and need not be NUL-terminated. */
struct classifier_input {
    const char *system;
    size_t system_len;
    const char *user;
    size_t user_len;
    int n_messages;
};

/* Load and verify a model file (magic, version, size, SHA-256 checksum).
 * NULL on failure, with a one-line reason in err (errlen bytes, may be 0). */
struct classifier *classifier_load(const char *path, char *err, size_t errlen);
void classifier_free(struct classifier *c);

/* What a model says of a prompt. route is what the routing policy compares
 * with its thresholds and shares: higher means a larger tier. A format-2
 * model ranks by the expected gain, route = (1 + gain) / 2; a model with
 * one head has route = needs_large and the other fields are -1 (unknown). */
struct classifier_scores {
    float route;       /* [0,1] */
    float needs_large; /* P(large answers right and small does not) */
    float small_right; /* P(the small tier answers right), or -1 */
    float large_right; /* P(the large tier answers right), or -1 */
    float gain;        /* large_right - small_right in [-1,1], or 0 when unknown */
};

/* Every score of in. Never fails: empty or NULL text scores too. */
void classifier_scores(const struct classifier *c, const struct classifier_input *in, struct classifier_scores *out);

/* The routing score, scores.route: what x-cascade-score shows. */
float classifier_score(const struct classifier *c, const struct classifier_input *in);

/* The route score t such that a share `share` of prompts score >= t, read
 * from the distribution of route scores the trainer measured on its
 * validation folds (prompts of subjects each fold's model never saw) and
 * stored in the file. share <= 0 gives a t above every score (> 1); share >=
 * 1 gives 0. Between stored quantiles it interpolates linearly. -1 when the
 * model carries no distribution (an operator must then set thresholds). */
double classifier_threshold_for_share(const struct classifier *c, double share);

/* The model's metadata (a JSON object as text, written by the trainer), or
 * "" when the file carries none. Valid until classifier_free(). */
const char *classifier_metadata(const struct classifier *c);

#endif
