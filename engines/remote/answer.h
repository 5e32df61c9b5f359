/* answer.h: what the remote engine says to an upstream and how it reads the
 * answer, for OpenAI's three generation endpoints.
 *
 * remote.c moves bytes (connections, replicas, retries, timeouts); this
 * module owns their meaning:
 *   - the request body sent upstream (answer_request_body): the client's
 *     JSON as sent, with the typed fields of struct engine_request written
 *     over it (model, stream, the output bound, logprobs), and for
 *     ENGINE_EP_COMPLETIONS turned back from the chat form the gateway
 *     parsed it into to a legacy completions body;
 *   - the answer, turned into engine callbacks the way engine.h says: the
 *     text as tokens (one per logprob entry when the entries add up to the
 *     text), every field of a delta or message we do not interpret as the
 *     token's `extra`, every field of a chunk or response object we do not
 *     interpret as its `meta`, usage and finish_reason;
 *   - the bound on a stream's length: an event that carries output (text,
 *     a tool-call fragment, reasoning) holds at least one token, so more
 *     such events than max_tokens means the upstream ignores the bound, and
 *     the answer is cut there ("length");
 *   - an upstream error body, read into OpenAI's fields.
 *
 * Everything here parses outside bytes: nothing trusts a field's type or
 * size (tests/fuzz/fuzz_answer.c). Nothing does I/O.
 *
 * Ownership and threads: a struct answer is owned by one request and used
 * by the thread that runs it; it holds no pointers into the parsed JSON
 * between calls. The extra/meta objects passed to emit are borrowed for the
 * call. answer_request_body reads the caller's JSON without changing it, so
 * a work-pool thread may run it while the caller holds a reference.
 */
#ifndef CASCADE_REMOTE_ANSWER_H
#define CASCADE_REMOTE_ANSWER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "engines/engine.h"

/* Deliver one token; returns nonzero when the request has ended meanwhile
 * (the receiver cancelled it), so no more tokens may follow. */
typedef int (*answer_emit_fn)(void *ctx, const struct engine_token *tok);

/* One upstream answer being read. answer_init sets it up; the results
 * (usage, finish_reason, saw_done, delivered) are read by the caller when
 * the answer ends. */
struct answer {
    enum engine_endpoint endpoint;
    int64_t max_tokens;             /* the output bound; 0: none */
    answer_emit_fn emit;
    void *ctx;
    /* results so far */
    int64_t output_events;          /* stream events that carried output */
    int64_t delivered;              /* emit calls: 0 means nothing reached the caller */
    struct engine_usage usage;      /* as the upstream reported it; never negative */
    char finish_reason[32];         /* "" until the upstream gave one */
    int saw_done;                   /* a stream's [DONE] arrived */
    char error[256];                /* why the last call failed */
    /* Tests only: read every stream event through a JSON tree, the
     * reference the tree-less reader of the common chunk shapes is checked
     * against (tests/fuzz/fuzz_answer_fast.c). 0 after answer_init. */
    int tree_only;
};

void answer_init(struct answer *a, enum engine_endpoint ep, int64_t max_tokens, answer_emit_fn emit,
                 void *ctx);

enum answer_status {
    ANSWER_OK = 0,
    ANSWER_BAD = -1,    /* malformed, or an error event: a->error says which; end with 502 */
    ANSWER_CUT = -2,    /* past max_tokens: end with "length" and drop the upstream */
};

/* One SSE event's data from a stream (the "[DONE]" marker included). */
enum answer_status answer_stream_event(struct answer *a, const char *data, size_t len);

/* A whole non-stream body. For ENGINE_EP_EMBEDDINGS the body itself is the
 * one token (it must be a JSON object). */
enum answer_status answer_full(struct answer *a, const char *body, size_t len);

/* An upstream's error body, in OpenAI's fields; defaults when it says
 * nothing usable. Strings are NUL-terminated and always set (code may be
 * ""). */
struct answer_error {
    char message[300];
    char type[64];
    char code[64];
    int64_t retry_after_s;  /* not read from the body: the caller's, from headers */
};
void answer_error_parse(const char *body, size_t len, struct answer_error *out);

/* What to send upstream. root is the client's parsed body (engine.h:
 * engine_request.chat->root); nothing here edits it. */
struct answer_body {
    json_t *root;
    enum engine_endpoint endpoint;
    const char *model;
    int stream;
    int64_t max_tokens;     /* 0: keep the client's */
    int logprobs;
    int top_logprobs;
};
/* The serialized body (malloc'd) and its length, or NULL when root cannot
 * be turned into one (a completions root without its one user message). */
char *answer_request_body(const struct answer_body *b, size_t *len);

/* The path under a replica's prefix (e.g. "/v1") for an endpoint:
 * "/chat/completions", "/completions" or "/embeddings". */
const char *answer_path(enum engine_endpoint ep);

/* Whether an endpoint's answer may stream (embeddings never do). */
int answer_can_stream(enum engine_endpoint ep);

/* An upstream's Retry-After header value (RFC 9110 10.2.3): delay-seconds,
 * or an HTTP-date (IMF-fixdate), as seconds after now (Unix time); 0 when
 * absent, unreadable or past, at most a day, so an upstream cannot park a
 * client's retries for longer. */
int64_t answer_retry_after_s(const char *value, int64_t now);

#endif
