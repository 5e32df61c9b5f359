/* embeddings.h: OpenAI's /v1/embeddings request, parsed and validated.
 *
 * Both binaries speak the protocol, so its schema lives here, beside the
 * chat schema (openai.h), and refuses bad input in the same terms: status
 * 400, type invalid_request_error, and `param` naming the field.
 *
 * What a body may hold (anything else is kept in `root` and passed upstream
 * as sent, as for chat):
 *   model            required, a non-empty string
 *   input            required: a non-empty string, an array of non-empty
 *                    strings, an array of token ids, or an array of
 *                    non-empty token-id arrays; at most EMBEDDINGS_MAX_INPUTS
 *                    inputs; token ids are integers in [0, 2^31)
 *   encoding_format  "float" (the default) or "base64"
 *   dimensions       a positive integer (at most EMBEDDINGS_MAX_DIMENSIONS)
 *   user             a string
 * null means "not given", as in OpenAI's API. The body's size is the HTTP
 * layer's limit (limits.max_body_bytes); the per-input token limits are the
 * model's, so the upstream judges them.
 *
 * The answer an upstream sends back is relayed nearly as it came
 * (embeddings_answer_relay): checked for its shape, with `model` set.
 *
 * Ownership: a request owns its parsed JSON; every string and array it
 * points to lives in it, and embeddings_request_free() releases all of it.
 * No allocation survives a failed parse. All functions are thread-safe.
 */
#ifndef CASCADE_EMBEDDINGS_H
#define CASCADE_EMBEDDINGS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/openai.h"

#define EMBEDDINGS_MAX_INPUTS 2048
#define EMBEDDINGS_MAX_DIMENSIONS 65536

enum embeddings_encoding {
    EMBEDDINGS_FLOAT,
    EMBEDDINGS_BASE64,
};

/* One input: text, or token ids (then text is NULL). */
struct embeddings_input {
    const char *text;       /* NUL-terminated valid UTF-8, len > 0; points into root */
    size_t len;
    size_t n_ids;           /* token ids, when text is NULL (> 0) */
};

struct embeddings_request {
    json_t *root;                   /* the parsed body, owned */
    const char *model;
    struct embeddings_input *inputs;
    size_t n_inputs;                /* 1..EMBEDDINGS_MAX_INPUTS */
    int token_input;                /* the inputs are token ids */
    size_t text_bytes;              /* the sum of the text inputs' lengths */
    size_t n_ids;                   /* the sum of the token inputs' ids */
    enum embeddings_encoding encoding;
    int64_t dimensions;             /* 0: not given */
    const char *user;               /* NULL: not given */
};

/* Parse and validate a body. 0, or -1 with *err filled (status 400) and
 * *req left empty (safe to free). */
int embeddings_request_parse(const char *body, size_t len, struct embeddings_request *req,
                             struct openai_error *err);
/* Free what req owns and leave it empty; an empty request is a no-op. */
void embeddings_request_free(struct embeddings_request *req);

/* An upstream's /embeddings answer as the client gets it: the same bytes
 * with the top-level "model" set to model (added when absent), so the
 * client sees the model it named, not what the upstream calls it. NULL
 * when body is not a JSON object holding a "data" array and a "usage"
 * object. The vectors are copied as sent, never re-printed: a float
 * answer keeps its digits and its size (jansson would print each number
 * with 17), and only the validating parse grows with the answer. malloc'd;
 * *out_len gets its length, and *prompt_tokens the answer's
 * usage.prompt_tokens (0 when it is not a count), so a caller that relays
 * need not parse the answer again to bill it. */
char *embeddings_answer_relay(const char *body, size_t len, const char *model, size_t *out_len,
                              int64_t *prompt_tokens);

#endif
