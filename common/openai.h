/* openai.h: the OpenAI chat-completions protocol, spoken by both binaries.
 *
 * This module owns the wire schema: it parses and validates a request body
 * into struct chat_request, and it writes responses, stream chunks and error
 * objects in OpenAI's shapes. Nothing here does I/O; the HTTP layers move the
 * bytes. Both cascaded and cascade-engine use it, so a client sees one schema.
 *
 * Validation is strict where a wrong value would silently change the answer
 * (types, ranges, n > 1, invalid UTF-8) and lenient about fields we do not act
 * on (they are kept in `root` and passed upstream untouched).
 *
 * Ownership: a chat_request owns its parsed JSON and every string it points
 * to; chat_request_free() releases all of it. Strings returned by the writers
 * are malloc'd and belong to the caller. All functions are thread-safe.
 */
#ifndef CASCADE_OPENAI_H
#define CASCADE_OPENAI_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

enum chat_role { ROLE_SYSTEM, ROLE_DEVELOPER, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL };

struct chat_message {
    enum chat_role role;
    const char *content;    /* text parts joined, NUL-terminated, valid UTF-8; "" when null */
    size_t content_len;
};

struct chat_request {
    json_t *root;                   /* the parsed body, owned */
    const char *model;
    struct chat_message *messages;
    size_t n_messages;
    int stream;
    int include_usage;              /* stream_options.include_usage */
    int has_temperature;
    double temperature;
    int has_top_p;
    double top_p;
    int64_t max_tokens;             /* max_completion_tokens or max_tokens; -1 when absent */
    const char **stop;              /* up to 4 stop strings */
    size_t n_stop;
    int has_seed;
    int64_t seed;
    const char *user;
    int logprobs;
    int top_logprobs;               /* 0..20, only with logprobs */
    void *owned_;                   /* private: buffers the request owns */
};

/* An error to send, in OpenAI's terms. Strings are static or owned by the
 * thing that produced the error; msg is a fixed buffer so parsing needs no
 * allocation to report a problem. */
struct openai_error {
    int status;
    const char *type;       /* "invalid_request_error", ... */
    const char *code;       /* may be NULL */
    const char *param;      /* may be NULL */
    char message[256];
};

void openai_error_set(struct openai_error *e, int status, const char *type, const char *code,
                      const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Parse and validate a chat-completions body. 0 on success; otherwise -1 with
 * *err filled (status 400) and *req left empty. */
int chat_request_parse(const char *body, size_t len, struct chat_request *req,
                       struct openai_error *err);
void chat_request_free(struct chat_request *req);
const char *chat_role_name(enum chat_role role);

/* {"error":{"message","type","param","code"}} as a malloc'd string. */
char *openai_error_json(const struct openai_error *e);

/* Token usage as reported to the client. */
struct openai_usage {
    int64_t prompt_tokens;
    int64_t completion_tokens;
};

/* A non-streaming chat.completion object. logprobs_content is the array for
 * choices[0].logprobs.content, or NULL when logprobs were not asked for; it is
 * borrowed, not stolen. */
char *openai_chat_response(const char *id, int64_t created, const char *model,
                           const char *content, size_t len, const char *finish_reason,
                           const struct openai_usage *usage, json_t *logprobs_content);

/* One chat.completion.chunk as a complete SSE event ("data: {...}\n\n").
 * role is set only on the first chunk; content may be NULL (no content key);
 * finish_reason NULL until the last chunk; logprobs_content as above.
 * *out_len receives the length. */
char *openai_chat_chunk_event(const char *id, int64_t created, const char *model,
                              const char *role, const char *content, size_t len,
                              json_t *logprobs_content, const char *finish_reason,
                              size_t *out_len);

/* The usage chunk sent last when stream_options.include_usage is set
 * (choices is empty), as a complete SSE event. */
char *openai_chat_usage_event(const char *id, int64_t created, const char *model,
                              const struct openai_usage *usage, size_t *out_len);

/* A JSON string for model text, which may hold a split UTF-8 sequence: the
 * invalid bytes become U+FFFD rather than failing the whole response. */
json_t *openai_text_json(const char *s, size_t len);

/* An error sent inside a stream whose status line is already out, as
 * OpenAI's clients read it: "data: {"error":{...}}\n\n". */
char *openai_error_event(const struct openai_error *e, size_t *out_len);

/* One entry of logprobs.content: {"token","logprob","bytes","top_logprobs"}. */
json_t *openai_logprob_entry(const char *token, size_t len, double logprob,
                             const char *const *top_tokens, const double *top_logprobs,
                             size_t n_top);

#define OPENAI_SSE_DONE "data: [DONE]\n\n"

#endif
