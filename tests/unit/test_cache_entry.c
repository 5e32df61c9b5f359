/* The cache entry codec: what a hit replays must round-trip, and an entry
 * that Redis hands back corrupt (or written by something else) must be
 * refused whole, never half-used: negative or fractional token counts, a
 * finish reason that is not a word, logprobs of the wrong shape. */
#include "cache/entry.h"
#include "tests/unit/test.h"

static int refused(const char *s)
{
    struct cache_entry e;
    int rc = cache_entry_decode(s, strlen(s), &e);
    cache_entry_free(&e);
    return rc == -1;
}

int main(void)
{
    /* Round trip, with every field. */
    json_t *lp = json_pack("[{s:s, s:f}, {s:s, s:f}]", "token", "Hel", "logprob", -0.5, "token", "lo",
                           "logprob", -0.25);
    struct cache_entry in = {.content = "Hello", .content_len = 5, .finish_reason = "stop",
                             .prompt_tokens = 12, .completion_tokens = 2, .tier = "small",
                             .model = "m", .created = 1733000000, .logprobs = lp};
    size_t len = 0;
    char *s = cache_entry_encode(&in, &len);
    CHECK(s && len == strlen(s));
    struct cache_entry out;
    CHECK(cache_entry_decode(s, len, &out) == 0);
    CHECK(out.content_len == 5 && memcmp(out.content, "Hello", 5) == 0);
    CHECK_STR(out.finish_reason, "stop");
    CHECK(out.prompt_tokens == 12 && out.completion_tokens == 2 && out.created == 1733000000);
    CHECK_STR(out.tier, "small");
    CHECK_STR(out.model, "m");
    CHECK(json_array_size(out.logprobs) == 2);
    cache_entry_free(&out);
    free(s);
    json_decref(lp);

    /* Optional fields may be absent; a minimal entry decodes. */
    const char *minimal = "{\"content\":\"\",\"finish_reason\":\"length\","
                          "\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0}}";
    CHECK(!refused(minimal));

    /* Corrupt entries are refused. */
    CHECK(refused(""));
    CHECK(refused("[]"));
    CHECK(refused("{\"content\":\"x\"}"));
    CHECK(refused("{\"content\":\"x\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":-1,"
                  "\"completion_tokens\":0}}"));
    CHECK(refused("{\"content\":\"x\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1.5,"
                  "\"completion_tokens\":0}}"));
    CHECK(refused("{\"content\":\"x\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1,"
                  "\"completion_tokens\":100000000000000000}}"));
    CHECK(refused("{\"content\":\"x\",\"finish_reason\":\"stop\\r\\nX-Evil: 1\",\"usage\":"
                  "{\"prompt_tokens\":1,\"completion_tokens\":1}}"));
    CHECK(refused("{\"content\":\"x\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1,"
                  "\"completion_tokens\":1},\"logprobs\":[1]}"));
    CHECK(refused("{\"content\":\"x\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1,"
                  "\"completion_tokens\":1},\"tier\":7}"));
    CHECK(refused("{\"content\":\"a\\u0000b\",\"finish_reason\":\"stop\",\"usage\":"
                  "{\"prompt_tokens\":1,\"completion_tokens\":1}}"));
    /* Content that is not UTF-8 is not stored. */
    struct cache_entry bad = {.content = "\xff", .content_len = 1, .finish_reason = "stop"};
    CHECK(cache_entry_encode(&bad, &len) == NULL);
    TEST_MAIN_END();
}
