/* The /v1/embeddings schema (common/embeddings.c): the four shapes of
 * `input` parse into what the gateway counts and reserves by, and every bad
 * body gets a 400 whose param names the field, as OpenAI's does. */
#include <jansson.h>

#include "common/embeddings.h"
#include "tests/unit/test.h"

static struct openai_error err;

static int parse(const char *body)
{
    struct embeddings_request r;
    int rc = embeddings_request_parse(body, strlen(body), &r, &err);
    CHECK(rc == 0 || (r.root == NULL && r.inputs == NULL)); /* a refusal leaves nothing behind */
    embeddings_request_free(&r);
    return rc;
}

/* A bad body: rc -1, status 400, param as given, the message mentions needle. */
static void bad(const char *body, const char *needle, const char *param, int line)
{
    int rc = parse(body);
    int ok = rc == -1 && err.status == 400 && strcmp(err.type, "invalid_request_error") == 0 &&
             strstr(err.message, needle) && (param ? (err.param && strcmp(err.param, param) == 0) : !err.param);
    if (!ok)
        fprintf(stderr, "line %d: body %s -> rc %d status %d param %s message '%s'\n", line, body, rc, err.status,
                err.param ? err.param : "-", err.message);
    CHECK(ok);
}
#define BAD(body, needle, param) bad(body, needle, param, __LINE__)

/* The relay of body with model "mine": NULL, or the text, which must parse
 * to the upstream's object with model set. */
static int64_t relay_prompt; /* the last relay's prompt_tokens */

static char *relay(const char *body, const char *model)
{
    size_t n;
    int64_t pt = -1;
    char *out = embeddings_answer_relay(body, strlen(body), model, &n, &pt);
    relay_prompt = pt;
    if (!out)
        return NULL;
    CHECK(strlen(out) == n);
    json_t *got = json_loads(out, JSON_REJECT_DUPLICATES, NULL);
    json_t *want = json_loads(body, 0, NULL);
    json_object_set_new(want, "model", json_string(model));
    CHECK(got && json_equal(got, want));
    if (!got || !json_equal(got, want))
        fprintf(stderr, "relay of %s gave %s\n", body, out);
    json_decref(got);
    json_decref(want);
    return out;
}

static void relay_checks(void)
{
    /* Replaced in place: every other byte as the upstream sent it, numbers
     * with their own digits (jansson would print 0.1234 as
     * 0.12340000000000001). */
    char *s = relay("{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.1234,-1e-07]}],"
                    "\"model\":\"upstream-2024\",\"usage\":{\"prompt_tokens\":2,\"total_tokens\":2}}",
                    "mine");
    CHECK_STR(s, "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.1234,-1e-07]}],"
                 "\"model\":\"mine\",\"usage\":{\"prompt_tokens\":2,\"total_tokens\":2}}");
    CHECK(relay_prompt == 2);
    free(s);
    /* prompt_tokens that are not a count are none. */
    const char *counts[] = {"-1", "1.0", "\"3\"", "9007199254740992", "null"};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        char b[128];
        snprintf(b, sizeof b, "{\"data\":[],\"usage\":{\"prompt_tokens\":%s}}", counts[i]);
        free(relay(b, "mine"));
        CHECK(relay_prompt == 0);
    }
    free(relay("{\"data\":[],\"usage\":{\"prompt_tokens\":9007199254740991}}", "mine"));
    CHECK(relay_prompt == 9007199254740991LL);
    /* Whitespace, and a value that is not a string. */
    s = relay(" { \"data\" : [ ] ,\n \"model\" : {\"a\":[1,2]} , \"usage\" : { } } ", "mine");
    CHECK_STR(s, " { \"data\" : [ ] ,\n \"model\" : \"mine\" , \"usage\" : { } } ");
    free(s);
    s = relay("{\"data\":[],\"usage\":{},\"model\":null}", "mine");
    CHECK_STR(s, "{\"data\":[],\"usage\":{},\"model\":\"mine\"}");
    free(s);
    /* Strings that hold brackets, quotes and a fake key before the model. */
    s = relay("{\"x\":\"a\\\"}{[\\\\\",\"y\":[\"\\\"model\\\"\",{\"model\":1}],\"data\":[],\"model\":\"m\",\"usage\":{}}",
              "mine");
    CHECK(s && strstr(s, "\"y\":[\"\\\"model\\\"\",{\"model\":1}]") && strstr(s, ",\"model\":\"mine\","));
    free(s);
    /* No model: added first. */
    s = relay("{\"data\":[],\"usage\":{}}", "mine");
    CHECK_STR(s, "{\"model\":\"mine\",\"data\":[],\"usage\":{}}");
    free(s);
    /* A key spelled with an escape: printed anew, still one model. */
    s = relay("{\"data\":[1.5],\"mod\\u0065l\":\"up\",\"usage\":{}}", "mine");
    CHECK(s != NULL);
    free(s);
    /* A model id that needs escaping. */
    s = relay("{\"data\":[],\"model\":\"up\",\"usage\":{}}", "a\"b\\c\xc3\xa9");
    CHECK(s != NULL);
    free(s);
    /* Not an embeddings list: NULL. */
    const char *bad[] = {
        "", "[]", "null", "{}", "{\"data\":[]}", "{\"usage\":{}}", "{\"data\":{},\"usage\":{}}",
        "{\"data\":[],\"usage\":[]}", "{\"data\":[],\"usage\":{}", "{\"data\":[],\"usage\":{}} x",
        "{\"data\":[],\"usage\":{},\"model\":\"a\",\"model\":\"b\"}",
    };
    /* jansson lets a NUL byte pass between tokens; the relay does not. */
    static const char nul[] = "{\"data\":[1\0],\"usage\":{}}";
    size_t nn = 7;
    int64_t npt = 7;
    char *no = embeddings_answer_relay(nul, sizeof nul - 1, "mine", &nn, &npt);
    CHECK(no == NULL && nn == 0 && npt == 0);
    free(no);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = 7;
        int64_t pt = 7;
        char *o = embeddings_answer_relay(bad[i], strlen(bad[i]), "mine", &n, &pt);
        CHECK(o == NULL && n == 0 && pt == 0);
        if (o)
            fprintf(stderr, "relay accepted %s\n", bad[i]);
        free(o);
    }
}

int main(void)
{
    struct embeddings_request r;

    /* One string; defaults. */
    const char *one = "{\"model\":\"big\",\"input\":\"hello world\"}";
    CHECK(embeddings_request_parse(one, strlen(one), &r, &err) == 0);
    CHECK_STR(r.model, "big");
    CHECK(r.n_inputs == 1 && !r.token_input && r.inputs[0].len == 11 && r.text_bytes == 11);
    CHECK_STR(r.inputs[0].text, "hello world");
    CHECK(r.encoding == EMBEDDINGS_FLOAT && r.dimensions == 0 && r.user == NULL);
    embeddings_request_free(&r);
    embeddings_request_free(&r); /* freeing an empty request is a no-op */

    /* An array of strings with every option; unknown fields are kept. */
    const char *arr = "{\"model\":\"big\",\"input\":[\"a\",\"bc\",\"d\\u00e9\"],\"encoding_format\":\"base64\","
                      "\"dimensions\":8,\"user\":\"u1\",\"x_vendor\":{\"k\":1}}";
    CHECK(embeddings_request_parse(arr, strlen(arr), &r, &err) == 0);
    CHECK(r.n_inputs == 3 && r.text_bytes == 1 + 2 + 3);
    CHECK_STR(r.inputs[2].text, "d\xc3\xa9");
    CHECK(r.encoding == EMBEDDINGS_BASE64 && r.dimensions == 8);
    CHECK_STR(r.user, "u1");
    CHECK(json_is_object(json_object_get(r.root, "x_vendor")));
    embeddings_request_free(&r);

    /* Token ids: one input, and several. */
    const char *ids = "{\"model\":\"big\",\"input\":[1,2,3,2147483647]}";
    CHECK(embeddings_request_parse(ids, strlen(ids), &r, &err) == 0);
    CHECK(r.n_inputs == 1 && r.token_input && r.n_ids == 4 && r.inputs[0].n_ids == 4 && !r.inputs[0].text);
    embeddings_request_free(&r);
    const char *ids2 = "{\"model\":\"big\",\"input\":[[1,2],[3],[0,0,0]],\"encoding_format\":null,\"dimensions\":null}";
    CHECK(embeddings_request_parse(ids2, strlen(ids2), &r, &err) == 0);
    CHECK(r.n_inputs == 3 && r.token_input && r.n_ids == 6 && r.inputs[2].n_ids == 3 && r.text_bytes == 0);
    CHECK(r.encoding == EMBEDDINGS_FLOAT && r.dimensions == 0);
    embeddings_request_free(&r);

    /* The input limit: 2048 inputs pass, 2049 do not. */
    for (int n = EMBEDDINGS_MAX_INPUTS; n <= EMBEDDINGS_MAX_INPUTS + 1; n++) {
        size_t cap = 64 + (size_t)n * 4;
        char *b = malloc(cap);
        size_t off = (size_t)snprintf(b, cap, "{\"model\":\"m\",\"input\":[");
        for (int i = 0; i < n; i++)
            off += (size_t)snprintf(b + off, cap - off, "%s\"x\"", i ? "," : "");
        snprintf(b + off, cap - off, "]}");
        if (n == EMBEDDINGS_MAX_INPUTS)
            CHECK(parse(b) == 0);
        else
            BAD(b, "at most 2048", "input");
        free(b);
    }

    /* The body itself. */
    BAD("{\"model\":", "malformed JSON", NULL);
    BAD("[1]", "must be a JSON object", NULL);
    BAD("{\"model\":\"m\",\"input\":\"\xff\"}", "not valid UTF-8", NULL);
    BAD("{\"model\":\"m\",\"model\":\"n\",\"input\":\"x\"}", "malformed JSON", NULL);
    /* model */
    BAD("{\"input\":\"x\"}", "model", "model");
    BAD("{\"model\":null,\"input\":\"x\"}", "model", "model");
    BAD("{\"model\":\"\",\"input\":\"x\"}", "non-empty", "model");
    BAD("{\"model\":7,\"input\":\"x\"}", "non-empty string", "model");
    /* input */
    BAD("{\"model\":\"m\"}", "required", "input");
    BAD("{\"model\":\"m\",\"input\":null}", "required", "input");
    BAD("{\"model\":\"m\",\"input\":\"\"}", "empty string", "input");
    BAD("{\"model\":\"m\",\"input\":[]}", "empty array", "input");
    BAD("{\"model\":\"m\",\"input\":5}", "must be a string, an array", "input");
    BAD("{\"model\":\"m\",\"input\":{\"a\":1}}", "must be a string, an array", "input");
    BAD("{\"model\":\"m\",\"input\":[{\"a\":1}]}", "must be a string, an array", "input");
    BAD("{\"model\":\"m\",\"input\":[null]}", "must be a string, an array", "input");
    BAD("{\"model\":\"m\",\"input\":[\"a\",\"\"]}", "input[1] must not be an empty string", "input");
    BAD("{\"model\":\"m\",\"input\":[\"a\",1]}", "input[1] must be a string", "input");
    BAD("{\"model\":\"m\",\"input\":[1,\"a\"]}", "input[1] must be a token id", "input");
    BAD("{\"model\":\"m\",\"input\":[1,-1]}", "input[1] must be a token id", "input");
    BAD("{\"model\":\"m\",\"input\":[1,2.0]}", "input[1] must be a token id", "input");
    BAD("{\"model\":\"m\",\"input\":[2147483648]}", "input[0] must be a token id", "input");
    BAD("{\"model\":\"m\",\"input\":[[1],[]]}", "input[1] must not be an empty array", "input");
    BAD("{\"model\":\"m\",\"input\":[[1],[2,\"x\"]]}", "input[1][1] must be a token id", "input");
    BAD("{\"model\":\"m\",\"input\":[[1],2]}", "input[1] must be an array of token ids", "input");
    /* options */
    BAD("{\"model\":\"m\",\"input\":\"x\",\"encoding_format\":\"int8\"}", "'float' or 'base64'", "encoding_format");
    BAD("{\"model\":\"m\",\"input\":\"x\",\"encoding_format\":1}", "'float' or 'base64'", "encoding_format");
    BAD("{\"model\":\"m\",\"input\":\"x\",\"dimensions\":0}", "from 1", "dimensions");
    BAD("{\"model\":\"m\",\"input\":\"x\",\"dimensions\":-3}", "from 1", "dimensions");
    BAD("{\"model\":\"m\",\"input\":\"x\",\"dimensions\":1.5}", "from 1", "dimensions");
    BAD("{\"model\":\"m\",\"input\":\"x\",\"dimensions\":\"8\"}", "from 1", "dimensions");
    BAD("{\"model\":\"m\",\"input\":\"x\",\"dimensions\":65537}", "from 1", "dimensions");
    BAD("{\"model\":\"m\",\"input\":\"x\",\"user\":5}", "'user' must be a string", "user");

    /* The answer relayed: the bytes as sent, model replaced. */
    relay_checks();

    /* The error object a client gets: OpenAI's four fields, param named. */
    CHECK(parse("{\"model\":\"m\",\"input\":\"x\",\"dimensions\":0}") == -1);
    char *js = openai_error_json(&err);
    json_t *o = json_loads(js, 0, NULL);
    json_t *eo = json_object_get(o, "error");
    CHECK_STR(json_string_value(json_object_get(eo, "param")), "dimensions");
    CHECK_STR(json_string_value(json_object_get(eo, "type")), "invalid_request_error");
    CHECK(json_object_get(eo, "code") != NULL);
    json_decref(o);
    free(js);
    TEST_MAIN_END();
}
