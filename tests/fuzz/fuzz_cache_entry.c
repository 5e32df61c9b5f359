/* fuzz_cache_entry: the response cache's entry decoder (cache/entry.c) on
 * arbitrary bytes, as Redis may hand them back.
 *
 * An accepted entry must obey the decoder's contract (counts in range,
 * content NUL-terminated at its length), and re-encoding it must give an
 * entry that decodes to the same fields: what a hit replays is what was
 * stored. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/entry.h"

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cache_entry e;
    if (cache_entry_decode((const char *)data, size, &e) != 0)
        return 0;
    if (e.prompt_tokens < 0 || e.prompt_tokens > CACHE_ENTRY_MAX_TOKENS || e.completion_tokens < 0 ||
        e.completion_tokens > CACHE_ENTRY_MAX_TOKENS || e.created < 0 || !e.finish_reason ||
        e.content[e.content_len] != '\0')
        abort();
    size_t len;
    char *s = cache_entry_encode(&e, &len);
    if (!s)
        abort(); /* decoded content is valid UTF-8, so it can always be stored */
    struct cache_entry back;
    if (cache_entry_decode(s, len, &back) != 0)
        abort();
    if (back.content_len != e.content_len || memcmp(back.content, e.content, e.content_len) ||
        !same_str(back.finish_reason, e.finish_reason) || back.prompt_tokens != e.prompt_tokens ||
        back.completion_tokens != e.completion_tokens || !same_str(back.tier, e.tier) ||
        !same_str(back.model, e.model) || back.created != e.created)
        abort();
    if ((back.logprobs || e.logprobs) && !json_equal(back.logprobs, e.logprobs))
        abort();
    cache_entry_free(&back);
    free(s);
    cache_entry_free(&e);
    return 0;
}
