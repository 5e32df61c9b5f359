/* entry.h: the response cache's entry format, what a cache hit replays.
 *
 * An entry is compact JSON (so an operator can read it with redis-cli):
 *   {"v": 2, "content": "...", "finish_reason": "stop",
 *    "usage": {"prompt_tokens": 12, "completion_tokens": 34},
 *    "tier": "small", "model": "deepseek-coder-1.3b", "created": 1733000000,
 *    "logprobs": [{"token": "...", "logprob": -0.1, ...}, ...],
 *    "message": {"tool_calls": [...], "reasoning_content": "...", ...},
 *    "meta": {"system_fingerprint": "..."}}
 * tier, model, created, logprobs, message and meta are optional. "message"
 * is the whole assistant message beside its content, as openai_delta_merge
 * (common/openai.h) builds it, so a hit replays tool calls too; "meta" the
 * response's own fields we pass through.
 *
 * "v" is the format's version. An entry of any other version (or none: the
 * entries of gateways before it) decodes as unusable, which the caller
 * treats as a miss and overwrites, so a rolling upgrade never replays an
 * old shape to a new client, nor a new one to an old gateway.
 *
 * The bytes come back from Redis, which other processes (other gateway
 * versions, an operator, anything that can reach it) may have written, so
 * cache_entry_decode() trusts nothing: every field's type is checked, token
 * counts are integers in [0, CACHE_ENTRY_MAX_TOKENS], the finish reason is a
 * short lowercase word, and logprobs is an array of objects each with a
 * string token and a numeric logprob. A bad entry is refused (-1), never
 * half-read; the caller answers from the engine instead.
 *
 * Ownership: a decoded entry owns its parsed JSON; its strings and logprobs
 * point into it and live until cache_entry_free(). Encoded strings are
 * malloc'd and belong to the caller. Pure functions; any thread may call.
 */
#ifndef CASCADE_CACHE_ENTRY_H
#define CASCADE_CACHE_ENTRY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define CACHE_ENTRY_VERSION 2

/* No real answer comes near this; a larger count is a corrupt entry. */
#define CACHE_ENTRY_MAX_TOKENS ((int64_t)INT32_MAX)

struct cache_entry {
    const char *content;        /* valid UTF-8, NUL-terminated at content_len */
    size_t content_len;
    const char *finish_reason;
    int64_t prompt_tokens;
    int64_t completion_tokens;
    const char *tier;           /* NULL when absent */
    const char *model;          /* NULL when absent */
    int64_t created;            /* 0 when absent */
    json_t *logprobs;           /* borrowed array of entries, or NULL */
    json_t *message;            /* borrowed: the message's other fields, or NULL */
    json_t *meta;               /* borrowed: system_fingerprint and such, or NULL */
    json_t *root_;              /* private: owns everything above after decode */
};

/* Parse and check buf[0..len). 0 with *e filled, or -1 with *e empty. */
int cache_entry_decode(const char *buf, size_t len, struct cache_entry *e);
void cache_entry_free(struct cache_entry *e);

/* The compact JSON of e (its root_ is not used), NUL-terminated, length in
 * *len; NULL when content is not valid UTF-8 (not worth storing). */
char *cache_entry_encode(const struct cache_entry *e, size_t *len);

#endif
