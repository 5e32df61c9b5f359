/* completions.h: OpenAI's legacy /v1/completions protocol (a prompt in,
 * text out), for cascade-engine.
 *
 * Parsing reuses the chat schema rather than repeating it: the body's
 * completions-only fields (prompt, echo, suffix, best_of, and logprobs as an
 * integer) are checked here, and everything else is validated by
 * chat_request_parse() on the same body rewritten with the prompt as one user
 * message. So temperature, top_p, max_tokens, stop, seed, n, stream and
 * stream_options mean and are checked exactly as for chat. The engine then
 * sends the prompt without any chat template.
 *
 * Supported: one string prompt (or an array holding one string); echo
 * without logprobs; logprobs 0..5 (the top alternatives per token). Refused
 * with 400: several prompts, token-id prompts, suffix, best_of > 1, echo with
 * logprobs.
 *
 * Writers build OpenAI's text_completion objects: a whole response, stream
 * chunks, and the usage chunk. The legacy logprobs object is
 *   {"tokens":[..],"token_logprobs":[..],"top_logprobs":[{tok:lp,..},..],
 *    "text_offset":[..]}
 * grown one token at a time with completion_logprobs_add().
 *
 * Ownership as in openai.h: a completion_request owns its JSON and strings;
 * writers return malloc'd strings. All functions are thread-safe.
 */
#ifndef CASCADE_COMPLETIONS_H
#define CASCADE_COMPLETIONS_H

#include "common/openai.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define COMPLETIONS_MAX_LOGPROBS 5

struct completion_request {
    struct chat_request chat;   /* sampling, stream, model; chat.logprobs / top_logprobs set
                                 * from the integer logprobs field */
    const char *prompt;         /* NUL-terminated, valid UTF-8; points into chat */
    size_t prompt_len;
    int echo;
    int logprobs;               /* -1: none asked; else 0..5 alternatives per token */
};

/* 0, or -1 with *err filled (status 400) and *req left empty. */
int completion_request_parse(const char *body, size_t len, struct completion_request *req,
                             struct openai_error *err);
void completion_request_free(struct completion_request *req);

/* The legacy logprobs object, empty. */
json_t *completion_logprobs_new(void);
/* Append one token: its text, logprob, the alternatives, and its offset in
 * the returned text. */
void completion_logprobs_add(json_t *lp, const char *token, size_t len, double logprob,
                             const char *const *top_tokens, const double *top_logprobs,
                             size_t n_top, size_t text_offset);

/* A whole text_completion; logprobs borrowed, NULL for null. */
char *completion_response(const char *id, int64_t created, const char *model, const char *text,
                          size_t len, const char *finish_reason, const struct openai_usage *usage,
                          json_t *logprobs);
/* One streamed chunk as an SSE event; finish_reason NULL until the last. */
char *completion_chunk_event(const char *id, int64_t created, const char *model, const char *text,
                             size_t len, json_t *logprobs, const char *finish_reason,
                             size_t *out_len);
/* The usage chunk (choices empty), sent last with stream_options.include_usage. */
char *completion_usage_event(const char *id, int64_t created, const char *model,
                             const struct openai_usage *usage, size_t *out_len);

#endif
