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
    const char *minimal = "{\"v\":2,\"content\":\"\",\"finish_reason\":\"length\","
                          "\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0}}";
    CHECK(!refused(minimal));

    /* Corrupt entries are refused. */
    CHECK(refused(""));
    CHECK(refused("[]"));
    CHECK(refused("{\"v\":2,\"content\":\"x\"}"));
    CHECK(refused("{\"v\":2,\"content\":\"x\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":-1,"
                  "\"completion_tokens\":0}}"));
    CHECK(refused("{\"v\":2,\"content\":\"x\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1.5,"
                  "\"completion_tokens\":0}}"));
    CHECK(refused("{\"v\":2,\"content\":\"x\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1,"
                  "\"completion_tokens\":100000000000000000}}"));
    CHECK(refused("{\"v\":2,\"content\":\"x\",\"finish_reason\":\"stop\\r\\nX-Evil: 1\",\"usage\":"
                  "{\"prompt_tokens\":1,\"completion_tokens\":1}}"));
    CHECK(refused("{\"v\":2,\"content\":\"x\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1,"
                  "\"completion_tokens\":1},\"logprobs\":[1]}"));
    CHECK(refused("{\"v\":2,\"content\":\"x\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1,"
                  "\"completion_tokens\":1},\"tier\":7}"));
    CHECK(refused("{\"v\":2,\"content\":\"a\\u0000b\",\"finish_reason\":\"stop\",\"usage\":"
                  "{\"prompt_tokens\":1,\"completion_tokens\":1}}"));
    /* Another version's entry (or one from before versions) is a miss. */
    CHECK(refused("{\"content\":\"\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":0,"
                  "\"completion_tokens\":0}}"));
    CHECK(refused("{\"v\":3,\"content\":\"\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":0,"
                  "\"completion_tokens\":0}}"));
    /* A tool call whose arguments are not a string is refused. */
    CHECK(refused("{\"v\":2,\"content\":\"\",\"finish_reason\":\"tool_calls\",\"usage\":{\"prompt_tokens\":1,"
                  "\"completion_tokens\":1},\"message\":{\"tool_calls\":[{\"function\":{\"name\":\"f\","
                  "\"arguments\":{}}}]}}"));
    CHECK(refused("{\"v\":2,\"content\":\"\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":1,"
                  "\"completion_tokens\":1},\"meta\":[]}"));
    /* The whole message round-trips: tool calls, reasoning, meta. */
    {
        json_t *msg = json_loads("{\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":"
                                 "{\"name\":\"get\",\"arguments\":\"{\\\"a\\\":1}\"}}],"
                                 "\"reasoning_content\":\"think\"}", 0, NULL);
        json_t *meta = json_pack("{s:s}", "system_fingerprint", "fp_1");
        struct cache_entry te = {.content = "", .content_len = 0, .finish_reason = "tool_calls",
                                 .prompt_tokens = 3, .completion_tokens = 4, .message = msg, .meta = meta};
        size_t tl;
        char *ts = cache_entry_encode(&te, &tl);
        CHECK(ts != NULL);
        struct cache_entry td;
        CHECK(ts && cache_entry_decode(ts, tl, &td) == 0);
        if (ts && td.root_) {
            CHECK(json_equal(td.message, msg));
            CHECK(json_equal(td.meta, meta));
            cache_entry_free(&td);
        }
        free(ts);
        json_decref(msg);
        json_decref(meta);
    }
    /* Content that is not UTF-8 is not stored. */
    struct cache_entry bad = {.content = "\xff", .content_len = 1, .finish_reason = "stop"};
    CHECK(cache_entry_encode(&bad, &len) == NULL);
    TEST_MAIN_END();
}
