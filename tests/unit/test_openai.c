/* Request validation: every bad input gets a 400 naming the problem, and good
 * requests parse into the fields the engines read. Also the writers' shapes. */
#include <jansson.h>

#include "common/openai.h"
#include "tests/unit/test.h"

static struct openai_error err;

static int parse(const char *body)
{
    struct chat_request r;
    int rc = chat_request_parse(body, strlen(body), &r, &err);
    chat_request_free(&r);
    return rc;
}

/* A bad body: rc -1, status 400, and the message mentions `needle`. */
static void bad(const char *body, const char *needle, const char *param, int line)
{
    int rc = parse(body);
    int ok = rc == -1 && err.status == 400 && strstr(err.message, needle) &&
             (param ? (err.param && strcmp(err.param, param) == 0) : 1);
    if (!ok)
        fprintf(stderr, "line %d: body %s -> rc %d status %d param %s message '%s'\n", line, body, rc, err.status,
                err.param ? err.param : "-", err.message);
    CHECK(ok);
}
#define BAD(body, needle, param) bad(body, needle, param, __LINE__)

#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

int main(void)
{
    /* A full, valid request. */
    const char *good =
        "{\"model\":\"small\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part one\"},{\"type\":\"text\",\"text\":\"two\"}]},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},{\"role\":\"tool\",\"content\":\"42\",\"tool_call_id\":\"x\"}],"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"temperature\":0.5,\"top_p\":0.9,"
        "\"max_tokens\":10,\"max_completion_tokens\":20,\"stop\":[\"\\n\",\"END\"],\"seed\":7,\"user\":\"u1\","
        "\"logprobs\":true,\"top_logprobs\":3,\"n\":1}";
    struct chat_request r;
    CHECK(chat_request_parse(good, strlen(good), &r, &err) == 0);
    CHECK_STR(r.model, "small");
    CHECK(r.n_messages == 4);
    CHECK(r.messages[0].role == ROLE_SYSTEM);
    CHECK_STR(r.messages[1].content, "part one\ntwo");
    CHECK(r.messages[1].content_len == 12);
    CHECK(r.messages[2].role == ROLE_ASSISTANT && r.messages[2].content_len == 0);
    CHECK(r.messages[3].role == ROLE_TOOL);
    CHECK(r.stream == 1 && r.include_usage == 1);
    CHECK(r.has_temperature && r.temperature == 0.5);
    CHECK(r.has_top_p && r.top_p == 0.9);
    CHECK(r.max_tokens == 20); /* max_completion_tokens wins */
    CHECK(r.n_stop == 2 && strcmp(r.stop[1], "END") == 0);
    CHECK(r.has_seed && r.seed == 7);
    CHECK_STR(r.user, "u1");
    CHECK(r.logprobs && r.top_logprobs == 3);
    chat_request_free(&r);

    /* Nulls mean absent. */
    CHECK(parse("{\"model\":\"m\"," MSG ",\"temperature\":null,\"stop\":null,\"n\":null}") == 0);
    CHECK(parse("{\"model\":\"m\"," MSG ",\"stop\":\"x\"}") == 0);

    /* Malformed JSON, and not an object. */
    BAD("{\"model\":\"m\",", "malformed JSON", NULL);
    BAD("", "malformed JSON", NULL);
    BAD("[1,2]", "must be a JSON object", NULL);
    BAD("{\"model\":\"m\",\"model\":\"n\"," MSG "}", "malformed JSON", NULL); /* duplicate key */
    /* Invalid UTF-8, raw or as a lone surrogate escape. */
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", "not valid UTF-8", NULL);
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}", "malformed JSON", NULL);
    /* model */
    BAD("{" MSG "}", "'model' is required", "model");
    BAD("{\"model\":5," MSG "}", "'model' must be a non-empty string", "model");
    BAD("{\"model\":\"\"," MSG "}", "'model' must be a non-empty string", "model");
    /* messages */
    BAD("{\"model\":\"m\"}", "'messages' is required", "messages");
    BAD("{\"model\":\"m\",\"messages\":{}}", "must be an array", "messages");
    BAD("{\"model\":\"m\",\"messages\":[]}", "at least one message", "messages");
    BAD("{\"model\":\"m\",\"messages\":[5]}", "messages[0] must be an object", "messages");
    BAD("{\"model\":\"m\",\"messages\":[{\"content\":\"x\"}]}", "messages[0].role must be a string", "messages");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "'wizard' is not one of", "messages");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", "content is required", "messages");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":7}]}", "must be a string or an array", "messages");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
        "needs a 'image_url' object", "messages");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"video\"}]}]}",
        "unsupported content part type 'video'", "messages");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\","
        "\"input_audio\":\"x\"}]}]}", "needs a 'input_audio' object", "messages");
    /* the parameters an engine must honour or refuse */
    BAD("{\"model\":\"m\"," MSG ",\"presence_penalty\":3}", "between -2 and 2", "presence_penalty");
    BAD("{\"model\":\"m\"," MSG ",\"frequency_penalty\":\"x\"}", "must be a number", "frequency_penalty");
    BAD("{\"model\":\"m\"," MSG ",\"logit_bias\":[1]}", "must be an object", "logit_bias");
    BAD("{\"model\":\"m\"," MSG ",\"logit_bias\":{\"abc\":1}}", "is not a token id", "logit_bias");
    BAD("{\"model\":\"m\"," MSG ",\"logit_bias\":{\"-5\":1}}", "is not a token id", "logit_bias");
    BAD("{\"model\":\"m\"," MSG ",\"logit_bias\":{\"5\":101}}", "between -100 and 100", "logit_bias");
    BAD("{\"model\":\"m\"," MSG ",\"response_format\":{\"type\":\"yaml\"}}", "response_format.type",
        "response_format");
    BAD("{\"model\":\"m\"," MSG ",\"tools\":{}}", "'tools' must be an array", "tools");
    BAD("{\"model\":\"m\"," MSG ",\"tools\":[{\"type\":\"function\"}]}", "tools[0].function", "tools");
    BAD("{\"model\":\"m\"," MSG ",\"tool_choice\":5}", "'tool_choice' must be", "tool_choice");
    BAD("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]}",
        "text must be a string", "messages");
    /* sampling fields: wrong types and ranges */
    BAD("{\"model\":\"m\"," MSG ",\"stream\":\"yes\"}", "'stream' must be a boolean", "stream");
    BAD("{\"model\":\"m\"," MSG ",\"stream_options\":[]}", "must be an object", "stream_options");
    BAD("{\"model\":\"m\"," MSG ",\"temperature\":\"hot\"}", "'temperature' must be a number", "temperature");
    BAD("{\"model\":\"m\"," MSG ",\"temperature\":2.5}", "between 0 and 2", "temperature");
    BAD("{\"model\":\"m\"," MSG ",\"top_p\":-0.1}", "between 0 and 1", "top_p");
    BAD("{\"model\":\"m\"," MSG ",\"max_tokens\":0}", "positive integer", "max_tokens");
    BAD("{\"model\":\"m\"," MSG ",\"max_completion_tokens\":1.5}", "positive integer", "max_completion_tokens");
    BAD("{\"model\":\"m\"," MSG ",\"n\":2}", "only n=1", "n");
    BAD("{\"model\":\"m\"," MSG ",\"n\":\"1\"}", "'n' must be a positive integer", "n");
    BAD("{\"model\":\"m\"," MSG ",\"stop\":5}", "'stop' must be a string or an array", "stop");
    BAD("{\"model\":\"m\"," MSG ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "at most 4", "stop");
    BAD("{\"model\":\"m\"," MSG ",\"stop\":[\"a\",3]}", "stop[1] must be a non-empty string", "stop");
    /* An empty stop string would end every answer at once; the lone string
     * form is held to the array form's rule (found by fuzz_openai). */
    BAD("{\"model\":\"m\"," MSG ",\"stop\":\"\"}", "'stop' must be a non-empty string", "stop");
    BAD("{\"model\":\"m\"," MSG ",\"seed\":1.5}", "'seed' must be an integer", "seed");
    BAD("{\"model\":\"m\"," MSG ",\"user\":1}", "'user' must be a string", "user");
    BAD("{\"model\":\"m\"," MSG ",\"logprobs\":1}", "'logprobs' must be a boolean", "logprobs");
    BAD("{\"model\":\"m\"," MSG ",\"logprobs\":true,\"top_logprobs\":21}", "between 0 and 20", "top_logprobs");
    BAD("{\"model\":\"m\"," MSG ",\"top_logprobs\":2}", "requires 'logprobs'", "top_logprobs");

    /* Error JSON: OpenAI's shape, with nulls for absent param and code. */
    struct openai_error e;
    json_t *o;
    openai_error_set(&e, 404, "invalid_request_error", "model_not_found", "model", "The model '%s' does not exist", "x");
    char *js = openai_error_json(&e);
    CHECK_STR(js, "{\"error\":{\"message\":\"The model 'x' does not exist\",\"type\":\"invalid_request_error\","
                  "\"param\":\"model\",\"code\":\"model_not_found\"}}");
    free(js);
    openai_error_set(&e, 401, "invalid_request_error", NULL, NULL, "quote \" and newline \n");
    js = openai_error_json(&e);
    CHECK_STR(js, "{\"error\":{\"message\":\"quote \\\" and newline \\n\",\"type\":\"invalid_request_error\","
                  "\"param\":null,\"code\":null}}");
    free(js);
    /* A message that quotes client text cut at a byte count (%.40s) must not
     * end up as invalid UTF-8, or the whole error turns into "invalid error
     * message" and loses its param (found by tests/fuzz/fuzz_openai). */
    CHECK(parse("{\"model\":\"m\",\"messages\":[{\"role\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9\","
                "\"content\":\"x\"}]}") == -1);
    js = openai_error_json(&err);
    o = json_loads(js, 0, NULL);
    CHECK(strstr(json_string_value(json_object_get(json_object_get(o, "error"), "message")),
                 "is not one of system") != NULL);
    CHECK_STR(json_string_value(json_object_get(json_object_get(o, "error"), "param")), "messages");
    json_decref(o);
    free(js);

    /* Media parts are kept for the upstream and counted; the text parts
     * alone are the message's text. */
    {
        const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":["
                           "{\"type\":\"text\",\"text\":\"look\"},{\"type\":\"image_url\",\"image_url\":"
                           "{\"url\":\"data:image/png;base64,AAAA\"}},{\"type\":\"text\",\"text\":\"here\"}]}],"
                           "\"presence_penalty\":0.5,\"frequency_penalty\":-1,\"logit_bias\":{\"7\":-100,"
                           "\"12\":2.5},\"response_format\":{\"type\":\"json_object\"},"
                           "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";
        struct chat_request r;
        CHECK(chat_request_parse(body, strlen(body), &r, &err) == 0);
        CHECK_STR(r.messages[0].content, "look\nhere");
        CHECK(r.parts == (OPENAI_PART_TEXT | OPENAI_PART_IMAGE) && r.n_media_parts == 1);
        CHECK(r.has_presence_penalty && r.presence_penalty == 0.5);
        CHECK(r.has_frequency_penalty && r.frequency_penalty == -1);
        CHECK(r.n_logit_bias == 2);
        int seen7 = 0, seen12 = 0;
        for (size_t i = 0; i < r.n_logit_bias; i++) {
            seen7 |= r.logit_bias[i].token == 7 && r.logit_bias[i].bias == -100;
            seen12 |= r.logit_bias[i].token == 12 && r.logit_bias[i].bias == 2.5;
        }
        CHECK(seen7 && seen12);
        CHECK(r.response_format == OPENAI_RF_JSON_OBJECT);
        CHECK(r.has_tools);
        chat_request_free(&r);
    }

    /* A stream's extras accumulate into the whole message as the SDKs do:
     * tool-call arguments by index, strings appended; and the replay deltas
     * merge back into the same message. */
    {
        const char *frags[] = {
            "{\"reasoning_content\":\"Let me \"}",
            "{\"reasoning_content\":\"think.\"}",
            "{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":"
            "{\"name\":\"get_weather\",\"arguments\":\"\"}}]}",
            "{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}",
            "{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":"
            "{\"name\":\"get_time\",\"arguments\":\"{}\"}}]}",
            "{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]}",
        };
        json_t *acc = json_object();
        for (size_t i = 0; i < sizeof frags / sizeof frags[0]; i++) {
            json_t *d = json_loads(frags[i], 0, NULL);
            CHECK(d && openai_delta_merge(acc, d) == 0);
            json_decref(d);
        }
        json_t *want = json_loads("{\"reasoning_content\":\"Let me think.\",\"tool_calls\":["
                                  "{\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                                  "\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}},"
                                  "{\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"get_time\","
                                  "\"arguments\":\"{}\"}}]}", 0, NULL);
        CHECK(want && json_equal(acc, want));
        json_t *deltas = openai_message_deltas(acc);
        CHECK(json_array_size(deltas) == 3);
        json_t *again = json_object();
        size_t i;
        json_t *d;
        json_array_foreach(deltas, i, d) CHECK(openai_delta_merge(again, d) == 0);
        CHECK(json_equal(again, acc));
        /* A non-stream message's tool calls (no index) merge in order. */
        json_t *whole = json_object();
        json_t *msg = json_pack("{s:O}", "tool_calls", json_object_get(acc, "tool_calls"));
        CHECK(openai_delta_merge(whole, msg) == 0);
        CHECK(json_equal(json_object_get(whole, "tool_calls"), json_object_get(acc, "tool_calls")));
        /* Malformed fragments are refused. */
        json_t *bad1 = json_loads("{\"tool_calls\":[{\"index\":100000}]}", 0, NULL);
        json_t *bad2 = json_loads("{\"tool_calls\":{}}", 0, NULL);
        json_t *bad3 = json_loads("{\"tool_calls\":[{\"index\":0,\"function\":7}]}", 0, NULL);
        json_t *t1 = json_object(), *t2 = json_object(), *t3 = json_object();
        CHECK(openai_delta_merge(t1, bad1) == -1);
        json_decref(t1);
        CHECK(openai_delta_merge(t2, bad2) == -1);
        CHECK(openai_delta_merge(t3, bad3) == -1);
        json_decref(t2);
        json_decref(t3);
        json_decref(bad1);
        json_decref(bad2);
        json_decref(bad3);
        json_decref(msg);
        json_decref(whole);
        json_decref(again);
        json_decref(deltas);

        /* The writers put extras where OpenAI does: content null beside
         * tool calls, meta at the top, our own keys never overridden. */
        struct openai_usage u0 = {1, 2};
        json_t *meta = json_pack("{s:s, s:s}", "system_fingerprint", "fp_9", "id", "upstream-id");
        json_object_set_new(acc, "content", json_string("smuggled"));
        char *resp = openai_chat_response("chatcmpl-x", 5, "m", "", 0, "tool_calls", &u0, NULL, acc, meta);
        json_t *o = json_loads(resp, 0, NULL);
        CHECK(o != NULL);
        CHECK_STR(json_string_value(json_object_get(o, "id")), "chatcmpl-x");
        CHECK_STR(json_string_value(json_object_get(o, "system_fingerprint")), "fp_9");
        json_t *m = json_object_get(json_array_get(json_object_get(o, "choices"), 0), "message");
        CHECK(json_is_null(json_object_get(m, "content")));
        CHECK(json_equal(json_object_get(m, "tool_calls"), json_object_get(want, "tool_calls")));
        CHECK_STR(json_string_value(json_object_get(m, "reasoning_content")), "Let me think.");
        json_decref(o);
        free(resp);
        size_t n;
        json_t *d0 = json_loads(frags[3], 0, NULL);
        char *ev = openai_chat_chunk_event("c", 1, "m", NULL, NULL, 0, NULL, NULL, d0, meta, &n);
        o = json_loadb(ev + 6, n - 8, 0, NULL);
        CHECK(o != NULL);
        CHECK_STR(json_string_value(json_object_get(o, "id")), "c");
        CHECK_STR(json_string_value(json_object_get(o, "system_fingerprint")), "fp_9");
        json_t *delta = json_object_get(json_array_get(json_object_get(o, "choices"), 0), "delta");
        CHECK(json_equal(json_object_get(delta, "tool_calls"), json_object_get(d0, "tool_calls")));
        CHECK(json_object_get(delta, "content") == NULL);
        json_decref(o);
        free(ev);
        json_decref(d0);
        json_decref(meta);
        json_decref(want);
        json_decref(acc);
    }

    /* Response writers. */
    struct openai_usage u = {5, 2};
    char *resp = openai_chat_response("chatcmpl-1", 1700000000, "m", "hi!", 3, "stop", &u, NULL, NULL, NULL);
    o = json_loads(resp, 0, NULL);
    CHECK(o != NULL);
    CHECK_STR(json_string_value(json_object_get(o, "object")), "chat.completion");
    json_t *ch = json_array_get(json_object_get(o, "choices"), 0);
    CHECK_STR(json_string_value(json_object_get(json_object_get(ch, "message"), "content")), "hi!");
    CHECK(json_integer_value(json_object_get(json_object_get(o, "usage"), "total_tokens")) == 7);
    json_decref(o);
    free(resp);

    size_t n;
    /* A split UTF-8 sequence in a chunk becomes U+FFFD, never invalid JSON. */
    char *ev = openai_chat_chunk_event("c", 1, "m", NULL, "a\xe4\xb8", 3, NULL, NULL, NULL, NULL, &n);
    CHECK(strncmp(ev, "data: {", 7) == 0 && strcmp(ev + n - 2, "\n\n") == 0);
    o = json_loadb(ev + 6, n - 8, 0, NULL);
    CHECK(o != NULL);
    json_t *delta = json_object_get(json_array_get(json_object_get(o, "choices"), 0), "delta");
    CHECK_STR(json_string_value(json_object_get(delta, "content")), "a\xef\xbf\xbd\xef\xbf\xbd");
    json_decref(o);
    free(ev);

    const char *tops[] = {"a", "b"};
    double tlp[] = {-0.1, -2.5};
    json_t *entry = openai_logprob_entry("a", 1, -0.1, tops, tlp, 2);
    CHECK(json_array_size(json_object_get(entry, "top_logprobs")) == 2);
    CHECK(json_integer_value(json_array_get(json_object_get(entry, "bytes"), 0)) == 'a');
    json_decref(entry);

    ev = openai_chat_usage_event("c", 1, "m", &u, NULL, &n);
    o = json_loadb(ev + 6, n - 8, 0, NULL);
    CHECK(json_array_size(json_object_get(o, "choices")) == 0);
    CHECK(json_integer_value(json_object_get(json_object_get(o, "usage"), "completion_tokens")) == 2);
    json_decref(o);
    free(ev);
    TEST_MAIN_END();
}
