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

/* Content part types: what a message's content array may hold, as bits, for
 * chat_request.parts and a tier's `accepts`. Only text parts are text the
 * gateway reads; the others go to an upstream that takes them, untouched. */
enum openai_part {
    OPENAI_PART_TEXT = 1u << 0,     /* {"type":"text","text":...} */
    OPENAI_PART_IMAGE = 1u << 1,    /* {"type":"image_url","image_url":{"url":...}} */
    OPENAI_PART_AUDIO = 1u << 2,    /* {"type":"input_audio","input_audio":{"data","format"}} */
    OPENAI_PART_FILE = 1u << 3,     /* {"type":"file","file":{...}} */
};
/* The bit of a part type's name ("text", "image_url", "input_audio",
 * "file"), or 0 for any other name. */
unsigned openai_part_bit(const char *type);
/* The type name of one bit, for messages. */
const char *openai_part_name(unsigned bit);

enum openai_response_format {
    OPENAI_RF_TEXT,         /* absent, or {"type":"text"} */
    OPENAI_RF_JSON_OBJECT,  /* {"type":"json_object"}: the answer is one JSON object */
    OPENAI_RF_JSON_SCHEMA,  /* {"type":"json_schema",...}: kept in root for the upstream */
};

/* logit_bias: a token id and the bias added to its logit, in [-100, 100]. */
struct openai_logit_bias {
    int64_t token;
    double bias;
};

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
    int has_presence_penalty;
    double presence_penalty;        /* -2..2 */
    int has_frequency_penalty;
    double frequency_penalty;       /* -2..2 */
    struct openai_logit_bias *logit_bias;   /* at most OPENAI_MAX_LOGIT_BIAS, ids >= 0 */
    size_t n_logit_bias;
    enum openai_response_format response_format;
    int has_tools;                  /* a non-empty tools (or legacy functions) array */
    unsigned parts;                 /* OPENAI_PART_* of every content part in messages */
    size_t n_media_parts;           /* parts that are not text (image, audio, file) */
    void *owned_;                   /* private: buffers the request owns */
};

#define OPENAI_MAX_LOGIT_BIAS 1024

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

/* Pass-through of fields we do not interpret (engine.h: engine_token's
 * extra and meta). The writers below take, each borrowed and NULL for none:
 *   extra: fields of the message (response) or delta (chunk) beside role
 *          and content: tool_calls, reasoning_content, refusal, ...; a key
 *          that the writer sets itself (role, content) is ignored;
 *   meta:  fields of the response or chunk object beside id, object,
 *          created, model, choices and usage: system_fingerprint, ...
 * A message whose content is empty and that carries tool_calls gets
 * "content": null, as OpenAI sends it. */

/* A non-streaming chat.completion object. logprobs_content is the array for
 * choices[0].logprobs.content, or NULL when logprobs were not asked for; it is
 * borrowed, not stolen. */
char *openai_chat_response(const char *id, int64_t created, const char *model,
                           const char *content, size_t len, const char *finish_reason,
                           const struct openai_usage *usage, json_t *logprobs_content,
                           json_t *extra, json_t *meta);

/* One chat.completion.chunk as a complete SSE event ("data: {...}\n\n").
 * role is set only on the first chunk; content may be NULL (no content key);
 * finish_reason NULL until the last chunk; logprobs_content as above.
 * *out_len receives the length. */
char *openai_chat_chunk_event(const char *id, int64_t created, const char *model,
                              const char *role, const char *content, size_t len,
                              json_t *logprobs_content, const char *finish_reason,
                              json_t *extra, json_t *meta, size_t *out_len);

/* The usage chunk sent last when stream_options.include_usage is set
 * (choices is empty), as a complete SSE event. */
char *openai_chat_usage_event(const char *id, int64_t created, const char *model,
                              const struct openai_usage *usage, json_t *meta, size_t *out_len);

/* Merge one streamed delta's extra fields into acc, the whole message's
 * extras so far, the way OpenAI's SDKs accumulate a stream:
 *   - tool_calls: entry `index` i goes to acc.tool_calls[i] (kept without
 *     its index, as a non-stream message holds it); id and type are set,
 *     function.name is set when first given, function.arguments is
 *     appended. An entry without an index (a non-stream message's) is
 *     appended after the others;
 *   - other string fields (reasoning_content, refusal) are appended;
 *   - anything else replaces what acc held.
 * 0, or -1 when delta is malformed (tool_calls not an array of objects, an
 * index not an integer in [0, OPENAI_MAX_TOOL_CALLS)); acc is then partly
 * merged and the caller should give up on it. */
#define OPENAI_MAX_TOOL_CALLS 128
int openai_delta_merge(json_t *acc, json_t *delta);

/* The deltas that replay a whole message's extras (as openai_delta_merge
 * built them) in a stream: first the fields other than tool_calls, then one
 * delta per tool call, {"tool_calls":[{"index":i,"id","type","function"}]}.
 * A new array (empty when extra is NULL or empty); merging its elements in
 * order gives back extra. */
json_t *openai_message_deltas(json_t *extra);

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
