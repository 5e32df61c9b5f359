/* test_answer.c: the remote engine's answer module (engines/remote/answer.h)
 * on the shapes vLLM, SGLang and hosted APIs send: tool-call fragments,
 * reasoning_content, system_fingerprint, logprobs, legacy completions,
 * embeddings, malformed input, and the request bodies built for them. */
#include "engines/remote/answer.h"

#include <jansson.h>
#include <string.h>

#include "common/openai.h"
#include "test.h"

#define MAX_TOK 64

struct got {
    struct {
        char text[512];
        size_t len;
        int has_logprob;
        double logprob;
        size_t n_top;
        json_t *extra, *meta;   /* deep copies, or NULL */
    } t[MAX_TOK];
    size_t n;
    size_t stop_after;          /* receiver "cancels" after this many; 0: never */
};

static int collect(void *ctx, const struct engine_token *tok)
{
    struct got *g = ctx;
    if (g->n < MAX_TOK) {
        size_t n = tok->len < sizeof g->t[0].text - 1 ? tok->len : sizeof g->t[0].text - 1;
        memcpy(g->t[g->n].text, tok->text, n);
        g->t[g->n].text[n] = '\0';
        g->t[g->n].len = tok->len;
        g->t[g->n].has_logprob = tok->has_logprob;
        g->t[g->n].logprob = tok->logprob;
        g->t[g->n].n_top = tok->n_top;
        g->t[g->n].extra = tok->extra ? json_deep_copy(tok->extra) : NULL;
        g->t[g->n].meta = tok->meta ? json_deep_copy(tok->meta) : NULL;
        g->n++;
    }
    return g->stop_after && g->n >= g->stop_after;
}

static void got_free(struct got *g)
{
    for (size_t i = 0; i < g->n; i++) {
        json_decref(g->t[i].extra);
        json_decref(g->t[i].meta);
    }
    memset(g, 0, sizeof *g);
}

static enum answer_status ev(struct answer *a, const char *s)
{
    return answer_stream_event(a, s, strlen(s));
}

/* 1 when a and b are equal JSON texts. */
static int json_eq_text(json_t *a, const char *b)
{
    json_t *jb = json_loads(b, 0, NULL);
    int eq = a && jb && json_equal(a, jb);
    if (!eq) {
        char *s = a ? json_dumps(a, JSON_COMPACT) : NULL;
        fprintf(stderr, "  got %s\n  want %s\n", s ? s : "(null)", b);
        free(s);
    }
    json_decref(jb);
    return eq;
}

#define FP "\"system_fingerprint\":\"fp_peer\""

/* OpenAI's streamed tool call: the first fragment names the call, later ones
 * carry arguments in pieces; finish_reason tool_calls; usage last. */
static void test_stream_tool_calls(void)
{
    struct got g = {0};
    struct answer a;
    answer_init(&a, ENGINE_EP_CHAT, 0, collect, &g);
    const char *evs[] = {
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\"," FP ","
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"refusal\":null},"
        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\"," FP ","
        "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\","
        "\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\"," FP ","
        "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"ci\"}}]},"
        "\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\"," FP ","
        "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\":1}\"}}]},"
        "\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\"," FP ","
        "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\","
        "\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\"," FP ","
        "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}",
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\"," FP ","
        "\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":4,\"total_tokens\":16}}",
        "[DONE]",
    };
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        CHECK(ev(&a, evs[i]) == ANSWER_OK);
    /* the role chunk (refusal null only) and the finish and usage chunks
     * deliver nothing; each of the 4 fragments is one empty token */
    CHECK(g.n == 4);
    json_t *acc = json_object();
    for (size_t i = 0; i < g.n; i++) {
        CHECK(g.t[i].len == 0);
        CHECK(g.t[i].extra != NULL);
        CHECK(json_object_get(g.t[i].extra, "refusal") == NULL);
        CHECK(g.t[i].meta && json_eq_text(g.t[i].meta, "{" FP "}"));
        CHECK(openai_delta_merge(acc, g.t[i].extra) == 0);
    }
    CHECK(json_eq_text(acc, "{\"tool_calls\":[{\"id\":\"call_a\",\"type\":\"function\",\"function\":"
                            "{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":1}\"}},"
                            "{\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"get_time\","
                            "\"arguments\":\"{}\"}}]}"));
    json_decref(acc);
    CHECK_STR(a.finish_reason, "tool_calls");
    CHECK(a.usage.prompt_tokens == 12 && a.usage.completion_tokens == 4);
    CHECK(a.saw_done && a.output_events == 4 && a.delivered == 4);
    /* nothing after [DONE] counts */
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"content\":\"late\"}}]}") == ANSWER_OK);
    CHECK(g.n == 4);
    got_free(&g);
}

/* DeepSeek's reasoning_content before content; the other field is null. */
static void test_stream_reasoning(void)
{
    struct got g = {0};
    struct answer a;
    answer_init(&a, ENGINE_EP_CHAT, 0, collect, &g);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"reasoning_content\":null}}]}") ==
          ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"content\":null,\"reasoning_content\":\"Let me \"}}]}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"content\":null,\"reasoning_content\":\"think.\"}}]}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"content\":\"Hi\",\"reasoning_content\":null}}]}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}") == ANSWER_OK);
    CHECK(g.n == 3);
    CHECK(g.n == 3 && g.t[0].len == 0 && json_eq_text(g.t[0].extra, "{\"reasoning_content\":\"Let me \"}"));
    CHECK(g.n == 3 && json_eq_text(g.t[1].extra, "{\"reasoning_content\":\"think.\"}"));
    CHECK(g.n == 3 && strcmp(g.t[2].text, "Hi") == 0 && g.t[2].extra == NULL && g.t[2].meta == NULL);
    CHECK_STR(a.finish_reason, "stop");
    got_free(&g);
}

/* Logprob entries that add up to the content split it into tokens; the
 * chunk's extra and meta ride on the first. */
static void test_stream_logprobs(void)
{
    struct got g = {0};
    struct answer a;
    answer_init(&a, ENGINE_EP_CHAT, 0, collect, &g);
    CHECK(ev(&a, "{\"service_tier\":\"default\",\"choices\":[{\"delta\":{\"content\":\"Hello world\","
                 "\"refusal\":\"no\"},\"logprobs\":{\"content\":[{\"token\":\"Hello\",\"logprob\":-0.5,"
                 "\"top_logprobs\":[{\"token\":\"Hello\",\"logprob\":-0.5},{\"token\":\"Hi\",\"logprob\":-1}]},"
                 "{\"token\":\" world\",\"logprob\":-0.25,\"top_logprobs\":[]}]}}]}") == ANSWER_OK);
    CHECK(g.n == 2);
    CHECK(g.n == 2 && strcmp(g.t[0].text, "Hello") == 0 && g.t[0].has_logprob && g.t[0].logprob == -0.5 &&
          g.t[0].n_top == 2);
    CHECK(g.n == 2 && json_eq_text(g.t[0].extra, "{\"refusal\":\"no\"}") &&
          json_eq_text(g.t[0].meta, "{\"service_tier\":\"default\"}"));
    CHECK(g.n == 2 && strcmp(g.t[1].text, " world") == 0 && g.t[1].logprob == -0.25 && !g.t[1].extra &&
          !g.t[1].meta);
    CHECK(a.output_events == 1);
    /* entries that do not add up: one piece, no logprob */
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"content\":\"abc\"},\"logprobs\":{\"content\":[{\"token\":\"ab\","
                 "\"logprob\":-1}]}}]}") == ANSWER_OK);
    CHECK(g.n == 3 && strcmp(g.t[2].text, "abc") == 0 && !g.t[2].has_logprob);
    /* a receiver that cancels after the first token stops the split */
    got_free(&g);
    g.stop_after = 1;
    answer_init(&a, ENGINE_EP_CHAT, 0, collect, &g);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"content\":\"ab\"},\"logprobs\":{\"content\":[{\"token\":\"a\","
                 "\"logprob\":-1},{\"token\":\"b\",\"logprob\":-1}]},\"finish_reason\":\"stop\"}]}") == ANSWER_OK);
    CHECK(g.n == 1);
    got_free(&g);
}

/* More events with output than max_tokens: cut. A tool-call fragment and a
 * reasoning piece count like content; an empty delta does not. */
static void test_stream_bound(void)
{
    struct got g = {0};
    struct answer a;
    answer_init(&a, ENGINE_EP_CHAT, 3, collect, &g);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"reasoning_content\":\"x\"}}]}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"content\":\"y\"}}]}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"type\":\"function\","
                 "\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{}}]," FP "}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}") ==
          ANSWER_CUT);
    CHECK(g.n == 3);
    got_free(&g);
    /* legacy completions: text events count */
    answer_init(&a, ENGINE_EP_COMPLETIONS, 1, collect, &g);
    CHECK(ev(&a, "{\"object\":\"text_completion\",\"choices\":[{\"text\":\"a\"}]}") == ANSWER_OK);
    CHECK(ev(&a, "{\"object\":\"text_completion\",\"choices\":[{\"text\":\"b\"}]}") == ANSWER_CUT);
    CHECK(g.n == 1);
    got_free(&g);
}

static void test_stream_malformed(void)
{
    struct got g = {0};
    struct answer a;
    answer_init(&a, ENGINE_EP_CHAT, 0, collect, &g);
    CHECK(ev(&a, "not json") == ANSWER_BAD && strstr(a.error, "malformed"));
    CHECK(ev(&a, "[1,2]") == ANSWER_BAD);
    CHECK(ev(&a, "{\"error\":{\"message\":\"overloaded\"}}") == ANSWER_BAD && strstr(a.error, "overloaded"));
    CHECK(ev(&a, "{\"error\":null,\"choices\":[]}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"tool_calls\":{\"index\":0}}}]}") == ANSWER_BAD);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":-1}]}}]}") == ANSWER_BAD);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":128}]}}]}") == ANSWER_BAD);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"no index\"}]}}]}") == ANSWER_BAD);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"tool_calls\":[\"x\"]}}]}") == ANSWER_BAD);
    /* odd but harmless shapes deliver nothing */
    CHECK(ev(&a, "{\"choices\":[{\"delta\":\"x\"}],\"usage\":{\"prompt_tokens\":-5,\"completion_tokens\":1.5}}") ==
          ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":\"x\"}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"delta\":{\"content\":7},\"finish_reason\":7}]}") == ANSWER_OK);
    CHECK(g.n == 0 && a.usage.prompt_tokens == 0 && a.usage.completion_tokens == 0 && !a.finish_reason[0]);
    got_free(&g);
}

/* OpenAI's non-stream tool call: content null, tool_calls, refusal null. */
static void test_full_chat(void)
{
    struct got g = {0};
    struct answer a;
    answer_init(&a, ENGINE_EP_CHAT, 0, collect, &g);
    const char *body =
        "{\"id\":\"c\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\"," FP ","
        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,\"refusal\":null,"
        "\"tool_calls\":[{\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\","
        "\"arguments\":\"{\\\"q\\\":\\\"x\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],"
        "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":7,\"total_tokens\":16}}";
    CHECK(answer_full(&a, body, strlen(body)) == ANSWER_OK);
    CHECK(g.n == 1 && g.t[0].len == 0);
    CHECK(g.n == 1 && json_eq_text(g.t[0].extra, "{\"refusal\":null,\"tool_calls\":[{\"id\":\"call_a\",\"type\":"
                                                 "\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
                                                 "\"{\\\"q\\\":\\\"x\\\"}\"}}]}"));
    CHECK(g.n == 1 && json_eq_text(g.t[0].meta, "{" FP "}"));
    CHECK_STR(a.finish_reason, "tool_calls");
    CHECK(a.usage.prompt_tokens == 9 && a.usage.completion_tokens == 7);
    got_free(&g);

    /* content split by logprobs, reasoning on the first token */
    answer_init(&a, ENGINE_EP_CHAT, 0, collect, &g);
    body = "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"ab\",\"reasoning_content\":\"r\"},"
           "\"logprobs\":{\"content\":[{\"token\":\"a\",\"logprob\":-1},{\"token\":\"b\",\"logprob\":-2}]},"
           "\"finish_reason\":\"stop\"}]}";
    CHECK(answer_full(&a, body, strlen(body)) == ANSWER_OK);
    CHECK(g.n == 2 && json_eq_text(g.t[0].extra, "{\"reasoning_content\":\"r\"}") && !g.t[1].extra);
    CHECK(g.n == 2 && g.t[1].logprob == -2 && !g.t[0].meta);
    got_free(&g);

    /* a plain answer carries no extra; a malformed one is refused */
    answer_init(&a, ENGINE_EP_CHAT, 0, collect, &g);
    body = "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":\"length\"}]}";
    CHECK(answer_full(&a, body, strlen(body)) == ANSWER_OK);
    CHECK(g.n == 1 && strcmp(g.t[0].text, "hi") == 0 && !g.t[0].extra && !g.t[0].meta);
    CHECK_STR(a.finish_reason, "length");
    CHECK(answer_full(&a, "{\"choices\":[]}", 14) == ANSWER_BAD);
    CHECK(answer_full(&a, "{\"choices\":[{\"message\":{\"tool_calls\":7}}]}", 42) == ANSWER_BAD);
    CHECK(answer_full(&a, "", 0) == ANSWER_BAD);
    got_free(&g);
}

static void test_completions(void)
{
    struct got g = {0};
    struct answer a;
    answer_init(&a, ENGINE_EP_COMPLETIONS, 0, collect, &g);
    const char *body = "{\"id\":\"cmpl\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\","
                       "\"choices\":[{\"index\":0,\"text\":\"a b\",\"logprobs\":{\"tokens\":[\"a\",\" b\"],"
                       "\"token_logprobs\":[-1,-0.5],\"top_logprobs\":[{\"a\":-1,\"c\":-2},null],"
                       "\"text_offset\":[0,1]},\"finish_reason\":\"length\"}],"
                       "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}";
    CHECK(answer_full(&a, body, strlen(body)) == ANSWER_OK);
    CHECK(g.n == 2 && strcmp(g.t[0].text, "a") == 0 && g.t[0].n_top == 2 && g.t[0].logprob == -1);
    CHECK(g.n == 2 && strcmp(g.t[1].text, " b") == 0 && g.t[1].n_top == 0 && g.t[1].logprob == -0.5);
    CHECK_STR(a.finish_reason, "length");
    CHECK(a.usage.prompt_tokens == 3 && a.usage.completion_tokens == 2);
    CHECK(answer_full(&a, "{\"choices\":[{\"message\":{}}]}", 28) == ANSWER_BAD);
    got_free(&g);

    answer_init(&a, ENGINE_EP_COMPLETIONS, 0, collect, &g);
    CHECK(ev(&a, "{\"object\":\"text_completion\"," FP ",\"choices\":[{\"text\":\"x\",\"logprobs\":null,"
                 "\"finish_reason\":null}]}") == ANSWER_OK);
    CHECK(ev(&a, "{\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}") == ANSWER_OK);
    CHECK(g.n == 1 && strcmp(g.t[0].text, "x") == 0 && json_eq_text(g.t[0].meta, "{" FP "}"));
    CHECK_STR(a.finish_reason, "stop");
    got_free(&g);
}

static void test_embeddings(void)
{
    struct got g = {0};
    struct answer a;
    answer_init(&a, ENGINE_EP_EMBEDDINGS, 0, collect, &g);
    const char *body = "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.5,-1]}],"
                       "\"model\":\"e\",\"usage\":{\"prompt_tokens\":4,\"total_tokens\":4}}";
    CHECK(answer_full(&a, body, strlen(body)) == ANSWER_OK);
    CHECK(g.n == 1 && g.t[0].len == strlen(body) && strcmp(g.t[0].text, body) == 0 && !g.t[0].extra);
    /* Unparsed: the caller reads usage (and checks the shape) where it
     * relays the answer, off the worker's loop. */
    CHECK(a.usage.prompt_tokens == 0 && a.usage.completion_tokens == 0);
    CHECK(!answer_can_stream(ENGINE_EP_EMBEDDINGS) && answer_can_stream(ENGINE_EP_CHAT));
    CHECK_STR(answer_path(ENGINE_EP_EMBEDDINGS), "/embeddings");
    CHECK_STR(answer_path(ENGINE_EP_COMPLETIONS), "/completions");
    CHECK_STR(answer_path(ENGINE_EP_CHAT), "/chat/completions");
    got_free(&g);
}

static void test_error_parse(void)
{
    struct answer_error e;
    const char *b = "{\"error\":{\"message\":\"bad tools\",\"type\":\"invalid_request_error\",\"code\":\"x1\"}}";
    answer_error_parse(b, strlen(b), &e);
    CHECK_STR(e.message, "bad tools");
    CHECK_STR(e.type, "invalid_request_error");
    CHECK_STR(e.code, "x1");
    b = "{\"object\":\"error\",\"message\":\"too long\",\"type\":\"BadRequestError\",\"param\":null,\"code\":400}";
    answer_error_parse(b, strlen(b), &e);
    CHECK_STR(e.message, "too long");
    CHECK_STR(e.type, "BadRequestError");
    CHECK_STR(e.code, "");
    b = "{\"detail\":\"Not Found\"}";
    answer_error_parse(b, strlen(b), &e);
    CHECK_STR(e.message, "Not Found");
    answer_error_parse("<html>", 6, &e);
    CHECK_STR(e.message, "upstream rejected the request");
    CHECK_STR(e.type, "invalid_request_error");
}

static json_t *body_of(const struct answer_body *b)
{
    size_t len = 0;
    char *s = answer_request_body(b, &len);
    json_t *j = s ? json_loadb(s, len, 0, NULL) : NULL;
    CHECK(s == NULL || len == strlen(s));
    free(s);
    return j;
}

static void test_request_body(void)
{
    const char *client =
        "{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"what\"},"
        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,AAAA\"}}]}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}],"
        "\"tool_choice\":\"auto\",\"response_format\":{\"type\":\"json_object\"},\"x_unknown\":{\"a\":1},"
        "\"logprobs\":true,\"top_logprobs\":5,\"max_tokens\":1000,\"stream\":true,"
        "\"stream_options\":{\"include_usage\":false,\"continuous_usage_stats\":true}}";
    json_t *root = json_loads(client, 0, NULL);
    char *before = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);

    struct answer_body b = {.root = root, .endpoint = ENGINE_EP_CHAT, .model = "deepseek-v3", .stream = 1,
                            .max_tokens = 64, .logprobs = 0};
    json_t *o = body_of(&b);
    CHECK_STR(json_string_value(json_object_get(o, "model")), "deepseek-v3");
    CHECK(json_is_true(json_object_get(o, "stream")));
    CHECK(json_eq_text(json_object_get(o, "stream_options"), "{\"include_usage\":true,\"continuous_usage_stats\":true}"));
    CHECK(json_integer_value(json_object_get(o, "max_tokens")) == 64);
    CHECK(!json_object_get(o, "logprobs") && !json_object_get(o, "top_logprobs"));
    /* everything else exactly as the client sent it */
    const char *same[] = {"messages", "tools", "tool_choice", "response_format", "x_unknown"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
        CHECK(json_equal(json_object_get(o, same[i]), json_object_get(root, same[i])));
    json_decref(o);

    b.stream = 0;
    b.logprobs = 1;
    b.top_logprobs = 3;
    b.max_tokens = 0;
    o = body_of(&b);
    CHECK(json_is_false(json_object_get(o, "stream")) && !json_object_get(o, "stream_options"));
    CHECK(json_is_true(json_object_get(o, "logprobs")) && json_integer_value(json_object_get(o, "top_logprobs")) == 3);
    CHECK(json_integer_value(json_object_get(o, "max_tokens")) == 1000);
    json_decref(o);
    b.top_logprobs = 0;
    o = body_of(&b);
    CHECK(json_is_true(json_object_get(o, "logprobs")) && !json_object_get(o, "top_logprobs"));
    json_decref(o);

    /* the client's request is untouched */
    char *after = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    CHECK(strcmp(before, after) == 0);
    free(after);
    free(before);
    json_decref(root);

    /* completions: the chat form the gateway parsed turns back into a prompt */
    root = json_loads("{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"Once upon\"}],"
                      "\"max_tokens\":5,\"logprobs\":true,\"top_logprobs\":2,\"temperature\":0,\"stop\":[\"\\n\"]}",
                      0, NULL);
    b = (struct answer_body){.root = root, .endpoint = ENGINE_EP_COMPLETIONS, .model = "m", .stream = 1,
                             .max_tokens = 4, .logprobs = 1, .top_logprobs = 2};
    o = body_of(&b);
    CHECK_STR(json_string_value(json_object_get(o, "prompt")), "Once upon");
    CHECK(!json_object_get(o, "messages") && !json_object_get(o, "top_logprobs"));
    CHECK(json_integer_value(json_object_get(o, "logprobs")) == 2);
    CHECK(json_integer_value(json_object_get(o, "max_tokens")) == 4);
    CHECK(json_equal(json_object_get(o, "stop"), json_object_get(root, "stop")));
    CHECK(json_object_get(json_object_get(o, "stream_options"), "include_usage") == json_true());
    json_decref(o);
    b.logprobs = 0;
    o = body_of(&b);
    CHECK(!json_object_get(o, "logprobs"));
    json_decref(o);
    CHECK(json_array_size(json_object_get(root, "messages")) == 1);
    json_decref(root);
    root = json_loads("{\"model\":\"auto\",\"messages\":[]}", 0, NULL);
    b.root = root;
    size_t len = 7;
    CHECK(answer_request_body(&b, &len) == NULL && len == 0);
    json_decref(root);

    /* embeddings: only the model changes */
    root = json_loads("{\"model\":\"auto\",\"input\":[\"a\",\"b\"],\"dimensions\":8,\"encoding_format\":\"float\"}", 0,
                      NULL);
    b = (struct answer_body){.root = root, .endpoint = ENGINE_EP_EMBEDDINGS, .model = "e5", .stream = 1,
                             .max_tokens = 9, .logprobs = 1};
    o = body_of(&b);
    CHECK(json_eq_text(o, "{\"model\":\"e5\",\"input\":[\"a\",\"b\"],\"dimensions\":8,\"encoding_format\":\"float\"}"));
    json_decref(o);
    json_decref(root);
}

/* Retry-After: seconds or an HTTP-date, never negative, at most a day. */
static void test_retry_after(void)
{
    const int64_t now = 1764633600; /* Tue, 02 Dec 2025 00:00:00 GMT */
    CHECK(answer_retry_after_s(NULL, now) == 0);
    CHECK(answer_retry_after_s("120", now) == 120);
    CHECK(answer_retry_after_s(" 7 ", now) == 7);
    CHECK(answer_retry_after_s("10abc", now) == 0);
    CHECK(answer_retry_after_s("99999999999999999999", now) == 86400);
    CHECK(answer_retry_after_s("Tue, 02 Dec 2025 00:01:00 GMT", now) == 60);
    CHECK(answer_retry_after_s("Mon, 01 Dec 2025 00:00:00 GMT", now) == 0);
    CHECK(answer_retry_after_s("Fri, 02 Jan 2026 00:00:00 GMT", now) == 86400);
    CHECK(answer_retry_after_s("soon", now) == 0);
}

int main(void)
{
    test_retry_after();
    test_stream_tool_calls();
    test_stream_reasoning();
    test_stream_logprobs();
    test_stream_bound();
    test_stream_malformed();
    test_full_chat();
    test_completions();
    test_embeddings();
    test_error_parse();
    test_request_body();
    TEST_MAIN_END();
}
