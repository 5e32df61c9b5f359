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
        "unsupported content part type", "messages");
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

    /* Response writers. */
    struct openai_usage u = {5, 2};
    char *resp = openai_chat_response("chatcmpl-1", 1700000000, "m", "hi!", 3, "stop", &u, NULL);
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
    char *ev = openai_chat_chunk_event("c", 1, "m", NULL, "a\xe4\xb8", 3, NULL, NULL, &n);
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

    ev = openai_chat_usage_event("c", 1, "m", &u, &n);
    o = json_loadb(ev + 6, n - 8, 0, NULL);
    CHECK(json_array_size(json_object_get(o, "choices")) == 0);
    CHECK(json_integer_value(json_object_get(json_object_get(o, "usage"), "completion_tokens")) == 2);
    json_decref(o);
    free(ev);
    TEST_MAIN_END();
}
