/* key.h: what makes two requests "the same" for the response cache.
 *
 * The key is SHA-256 over a canonical JSON encoding (sorted keys, no
 * whitespace) of: the tenant, the route selector (a tier, or "auto" with the
 * tenant's routing version), the messages as sent, tools, tool_choice,
 * response_format, and every sampling field that changes the output
 * (temperature, top_p, max tokens, stop, seed, logprobs, top_logprobs).
 * Key order and whitespace in the client's JSON do not matter; anything else
 * does. The tenant is inside the hash, so one tenant can never address
 * another's entry. Pure functions; thread-safe. */
#ifndef CASCADE_CACHE_KEY_H
#define CASCADE_CACHE_KEY_H

#include <stdint.h>

#include "common/hash.h"

struct chat_request;

enum cache_mode { CACHE_MODE_OFF, CACHE_MODE_DETERMINISTIC, CACHE_MODE_ALWAYS };

void cache_key(const char *tenant, const char *route, const struct chat_request *req, uint8_t out[SHA256_LEN]);
/* Whether a request may be answered from, and stored in, the cache. In
 * deterministic mode only requests whose answer is reproducible qualify:
 * temperature 0, or a seed given. */
int cache_request_cacheable(const struct chat_request *req, enum cache_mode mode);
/* "off" | "deterministic" | "always" -> mode; -1 when unknown. */
int cache_mode_parse(const char *s, enum cache_mode *out);

#endif
