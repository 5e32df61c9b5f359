#include "common/openai.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonr.h"
#include "common/jsonw.h"
#include "common/mem.h"
#include "common/utf8.h"

#define MAX_STOP 4
#define MAX_TOP_LOGPROBS 20

/* Buffers a request owns beyond its JSON: joined multi-part contents. */
struct chat_owned {
    char **bufs;
    size_t n;
};

void openai_error_set(struct openai_error *e, int status, const char *type, const char *code,
                      const char *param, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->type = type;
    e->code = code;
    e->param = param;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    /* Messages quote client text cut at a byte count (%.40s, or the buffer's
     * end), which can split a character; the error JSON needs valid UTF-8. */
    size_t n = utf8_scrub(e->message, strlen(e->message));
    e->message[n] = '\0';
}

static const char *const role_names[] = {"system", "developer", "user", "assistant", "tool"};

const char *chat_role_name(enum chat_role role)
{
    return role_names[role];
}

static int parse_role(const char *s, enum chat_role *out)
{
    for (size_t i = 0; i < sizeof role_names / sizeof role_names[0]; i++) {
        if (strcmp(s, role_names[i]) == 0) {
            *out = (enum chat_role)i;
            return 0;
        }
    }
    return -1;
}

/* The param string for messages[i].field lives in the error's message buffer
 * tail, so errors stay allocation-free: we keep a static table of names for
 * the common fields and report the index in the message text. */
#define BAD(e, param, ...) \
    (openai_error_set((e), 400, "invalid_request_error", NULL, (param), __VA_ARGS__), -1)

/* Absent and null both mean "not given", as in OpenAI's API. */
static json_t *opt(json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);
    return json_is_null(v) ? NULL : v;
}

static const char *const part_names[] = {"text", "image_url", "input_audio", "file"};

unsigned openai_part_bit(const char *type)
{
    for (unsigned i = 0; i < sizeof part_names / sizeof part_names[0]; i++)
        if (strcmp(type, part_names[i]) == 0)
            return 1u << i;
    return 0;
}

const char *openai_part_name(unsigned bit)
{
    for (unsigned i = 0; i < sizeof part_names / sizeof part_names[0]; i++)
        if (bit == 1u << i)
            return part_names[i];
    return "unknown";
}

/* A non-text part carries an object named as its type (image_url holds a
 * string url); what is inside is the upstream's to judge. */
static int check_media_part(json_t *part, unsigned bit)
{
    json_t *o = json_object_get(part, openai_part_name(bit));
    if (!json_is_object(o))
        return -1;
    if (bit == OPENAI_PART_IMAGE && !json_is_string(json_object_get(o, "url")))
        return -1;
    return 0;
}

static int parse_content(json_t *msg, size_t i, struct chat_message *m, struct chat_owned *own,
                         struct chat_request *req, struct openai_error *err)
{
    json_t *c = json_object_get(msg, "content");
    if (!c || json_is_null(c)) {
        /* Only an assistant turn (carrying tool calls) may omit its content. */
        if (m->role != ROLE_ASSISTANT)
            return BAD(err, "messages", "messages[%zu].content is required for role '%s'", i,
                       chat_role_name(m->role));
        m->content = "";
        m->content_len = 0;
        return 0;
    }
    if (json_is_string(c)) {
        m->content = json_string_value(c);
        m->content_len = json_string_length(c);
        return 0;
    }
    if (!json_is_array(c))
        return BAD(err, "messages", "messages[%zu].content must be a string or an array of content parts", i);
    /* Text parts are joined with a newline, as vLLM does for the same
     * input. Other parts (images, audio, files) are checked for shape only
     * and counted: the gateway cannot read them, an upstream that accepts
     * them gets them as sent (in root), and the caller decides whether the
     * tier takes them (req->parts). */
    size_t total = 0, idx;
    json_t *part;
    json_array_foreach(c, idx, part) {
        json_t *type = json_object_get(part, "type");
        if (!json_is_object(part) || !json_is_string(type))
            return BAD(err, "messages", "messages[%zu].content[%zu] must be an object with a type", i, idx);
        unsigned bit = openai_part_bit(json_string_value(type));
        if (!bit)
            return BAD(err, "messages", "messages[%zu].content[%zu]: unsupported content part type '%.40s'",
                       i, idx, json_string_value(type));
        if (bit == OPENAI_PART_TEXT) {
            json_t *text = json_object_get(part, "text");
            if (!json_is_string(text))
                return BAD(err, "messages", "messages[%zu].content[%zu].text must be a string", i, idx);
            total += json_string_length(text) + 1;
        } else if (check_media_part(part, bit) < 0) {
            return BAD(err, "messages", "messages[%zu].content[%zu]: a '%s' part needs a '%s' object%s", i, idx,
                       openai_part_name(bit), openai_part_name(bit),
                       bit == OPENAI_PART_IMAGE ? " with a string url" : "");
        } else {
            req->n_media_parts++;
        }
        req->parts |= bit;
    }
    char *buf = xmalloc(total + 1), *p = buf;
    int first = 1;
    json_array_foreach(c, idx, part) {
        json_t *text = json_object_get(part, "text");
        if (!json_is_string(text) || openai_part_bit(json_string_value(json_object_get(part, "type"))) !=
                                         OPENAI_PART_TEXT)
            continue;
        if (!first)
            *p++ = '\n';
        first = 0;
        memcpy(p, json_string_value(text), json_string_length(text));
        p += json_string_length(text);
    }
    *p = '\0';
    own->bufs = xrealloc(own->bufs, (own->n + 1) * sizeof *own->bufs);
    own->bufs[own->n++] = buf;
    m->content = buf;
    m->content_len = (size_t)(p - buf);
    return 0;
}

static int parse_messages(json_t *root, struct chat_request *req, struct chat_owned *own,
                          struct openai_error *err)
{
    json_t *msgs = json_object_get(root, "messages");
    if (!msgs)
        return BAD(err, "messages", "'messages' is required");
    if (!json_is_array(msgs))
        return BAD(err, "messages", "'messages' must be an array");
    if (json_array_size(msgs) == 0)
        return BAD(err, "messages", "'messages' must contain at least one message");
    req->n_messages = json_array_size(msgs);
    req->messages = xcalloc(req->n_messages, sizeof *req->messages);
    size_t i;
    json_t *msg;
    json_array_foreach(msgs, i, msg) {
        struct chat_message *m = &req->messages[i];
        if (!json_is_object(msg))
            return BAD(err, "messages", "messages[%zu] must be an object", i);
        json_t *role = json_object_get(msg, "role");
        if (!json_is_string(role))
            return BAD(err, "messages", "messages[%zu].role must be a string", i);
        if (parse_role(json_string_value(role), &m->role) < 0)
            return BAD(err, "messages",
                       "messages[%zu].role '%.40s' is not one of system, developer, user, assistant, tool",
                       i, json_string_value(role));
        if (parse_content(msg, i, m, own, req, err) < 0)
            return -1;
    }
    return 0;
}

static int parse_number(json_t *root, const char *key, double lo, double hi, int *has, double *out,
                        struct openai_error *err)
{
    json_t *v = opt(root, key);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return BAD(err, key, "'%s' must be a number", key);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi))
        return BAD(err, key, "'%s' must be between %g and %g", key, lo, hi);
    *has = 1;
    *out = d;
    return 0;
}

static int parse_bool(json_t *root, const char *key, int *out, struct openai_error *err)
{
    json_t *v = opt(root, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return BAD(err, key, "'%s' must be a boolean", key);
    *out = json_is_true(v);
    return 0;
}

static int parse_stop(json_t *root, struct chat_request *req, struct openai_error *err)
{
    json_t *v = opt(root, "stop");
    if (!v)
        return 0;
    if (json_is_string(v)) {
        /* Empty would match at once and end every answer empty. */
        if (json_string_length(v) == 0)
            return BAD(err, "stop", "'stop' must be a non-empty string or an array of them");
        req->stop = xmalloc(sizeof *req->stop);
        req->stop[0] = json_string_value(v);
        req->n_stop = 1;
        return 0;
    }
    if (!json_is_array(v))
        return BAD(err, "stop", "'stop' must be a string or an array of strings");
    if (json_array_size(v) > MAX_STOP)
        return BAD(err, "stop", "'stop' may hold at most %d strings", MAX_STOP);
    req->stop = xcalloc(json_array_size(v) + 1, sizeof *req->stop);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!json_is_string(s) || json_string_length(s) == 0)
            return BAD(err, "stop", "stop[%zu] must be a non-empty string", i);
        req->stop[req->n_stop++] = json_string_value(s);
    }
    return 0;
}

/* {"<token id>": bias, ...}: the ids are decimal strings, as OpenAI takes
 * them; whether an id exists is the engine's to check (it knows its
 * vocabulary). */
static int parse_logit_bias(json_t *root, struct chat_request *req, struct openai_error *err)
{
    json_t *lb = opt(root, "logit_bias");
    if (!lb)
        return 0;
    if (!json_is_object(lb))
        return BAD(err, "logit_bias", "'logit_bias' must be an object mapping token ids to numbers");
    if (json_object_size(lb) > OPENAI_MAX_LOGIT_BIAS)
        return BAD(err, "logit_bias", "'logit_bias' may hold at most %d tokens", OPENAI_MAX_LOGIT_BIAS);
    req->logit_bias = xcalloc(json_object_size(lb) + 1, sizeof *req->logit_bias);
    const char *key;
    json_t *v;
    json_object_foreach(lb, key, v) {
        char *end;
        errno = 0;
        long long id = strtoll(key, &end, 10);
        if (!*key || *end || errno || id < 0 || key[0] == '+' || key[0] == '-' || key[0] == ' ')
            return BAD(err, "logit_bias", "logit_bias key '%.40s' is not a token id", key);
        if (!json_is_number(v) || !(json_number_value(v) >= -100 && json_number_value(v) <= 100))
            return BAD(err, "logit_bias", "logit_bias['%.40s'] must be a number between -100 and 100", key);
        req->logit_bias[req->n_logit_bias].token = id;
        req->logit_bias[req->n_logit_bias].bias = json_number_value(v);
        req->n_logit_bias++;
    }
    return 0;
}

static int parse_response_format(json_t *root, struct chat_request *req, struct openai_error *err)
{
    json_t *rf = opt(root, "response_format");
    if (!rf)
        return 0;
    json_t *type = json_object_get(rf, "type");
    if (!json_is_object(rf) || !json_is_string(type))
        return BAD(err, "response_format", "'response_format' must be an object with a type");
    const char *t = json_string_value(type);
    if (strcmp(t, "text") == 0)
        req->response_format = OPENAI_RF_TEXT;
    else if (strcmp(t, "json_object") == 0)
        req->response_format = OPENAI_RF_JSON_OBJECT;
    else if (strcmp(t, "json_schema") == 0 && json_is_object(json_object_get(rf, "json_schema")))
        req->response_format = OPENAI_RF_JSON_SCHEMA;
    else
        return BAD(err, "response_format",
                   "'response_format.type' must be text, json_object, or json_schema with a json_schema object");
    return 0;
}

/* tools (and the legacy functions): checked for shape, since a remote tier
 * passes them on as sent and a bad one should fail here, not upstream. */
static int parse_tools(json_t *root, struct chat_request *req, struct openai_error *err)
{
    json_t *tools = opt(root, "tools");
    if (tools) {
        if (!json_is_array(tools))
            return BAD(err, "tools", "'tools' must be an array");
        size_t i;
        json_t *t;
        json_array_foreach(tools, i, t) {
            json_t *fn = json_object_get(t, "function");
            if (!json_is_object(t) || !json_is_string(json_object_get(t, "type")))
                return BAD(err, "tools", "tools[%zu] must be an object with a type", i);
            if (strcmp(json_string_value(json_object_get(t, "type")), "function") == 0 &&
                (!json_is_object(fn) || !json_is_string(json_object_get(fn, "name"))))
                return BAD(err, "tools", "tools[%zu].function must be an object with a string name", i);
        }
        req->has_tools = json_array_size(tools) > 0;
    }
    json_t *fns = opt(root, "functions");
    if (fns) {
        if (!json_is_array(fns))
            return BAD(err, "functions", "'functions' must be an array");
        req->has_tools |= json_array_size(fns) > 0;
    }
    json_t *tc = opt(root, "tool_choice");
    if (tc && !json_is_string(tc) && !json_is_object(tc))
        return BAD(err, "tool_choice", "'tool_choice' must be a string or an object");
    return 0;
}

static int parse_fields(json_t *root, struct chat_request *req, struct openai_error *err)
{
    json_t *model = json_object_get(root, "model");
    if (!model)
        return BAD(err, "model", "'model' is required");
    if (!json_is_string(model) || json_string_length(model) == 0)
        return BAD(err, "model", "'model' must be a non-empty string");
    req->model = json_string_value(model);

    if (parse_bool(root, "stream", &req->stream, err) < 0)
        return -1;
    json_t *so = opt(root, "stream_options");
    if (so) {
        if (!json_is_object(so))
            return BAD(err, "stream_options", "'stream_options' must be an object");
        json_t *iu = opt(so, "include_usage");
        if (iu && !json_is_boolean(iu))
            return BAD(err, "stream_options.include_usage", "'stream_options.include_usage' must be a boolean");
        req->include_usage = iu && json_is_true(iu);
    }
    if (parse_number(root, "temperature", 0, 2, &req->has_temperature, &req->temperature, err) < 0 ||
        parse_number(root, "top_p", 0, 1, &req->has_top_p, &req->top_p, err) < 0)
        return -1;

    req->max_tokens = -1;
    static const char *const max_keys[] = {"max_completion_tokens", "max_tokens"};
    for (size_t k = 0; k < 2 && req->max_tokens < 0; k++) {
        json_t *v = opt(root, max_keys[k]);
        if (!v)
            continue;
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return BAD(err, max_keys[k], "'%s' must be a positive integer", max_keys[k]);
        req->max_tokens = json_integer_value(v);
    }

    json_t *n = opt(root, "n");
    if (n) {
        if (!json_is_integer(n) || json_integer_value(n) < 1)
            return BAD(err, "n", "'n' must be a positive integer");
        if (json_integer_value(n) != 1)
            return BAD(err, "n", "only n=1 is supported");
    }
    if (parse_stop(root, req, err) < 0)
        return -1;
    json_t *seed = opt(root, "seed");
    if (seed) {
        if (!json_is_integer(seed))
            return BAD(err, "seed", "'seed' must be an integer");
        req->has_seed = 1;
        req->seed = json_integer_value(seed);
    }
    json_t *user = opt(root, "user");
    if (user) {
        if (!json_is_string(user))
            return BAD(err, "user", "'user' must be a string");
        req->user = json_string_value(user);
    }
    if (parse_bool(root, "logprobs", &req->logprobs, err) < 0)
        return -1;
    json_t *tl = opt(root, "top_logprobs");
    if (tl) {
        if (!json_is_integer(tl) || json_integer_value(tl) < 0 || json_integer_value(tl) > MAX_TOP_LOGPROBS)
            return BAD(err, "top_logprobs", "'top_logprobs' must be an integer between 0 and %d", MAX_TOP_LOGPROBS);
        if (!req->logprobs)
            return BAD(err, "top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
        req->top_logprobs = (int)json_integer_value(tl);
    }
    if (parse_number(root, "presence_penalty", -2, 2, &req->has_presence_penalty, &req->presence_penalty, err) < 0 ||
        parse_number(root, "frequency_penalty", -2, 2, &req->has_frequency_penalty, &req->frequency_penalty,
                     err) < 0)
        return -1;
    if (parse_logit_bias(root, req, err) < 0 || parse_response_format(root, req, err) < 0 ||
        parse_tools(root, req, err) < 0)
        return -1;
    return 0;
}

int chat_request_parse(const char *body, size_t len, struct chat_request *req, struct openai_error *err)
{
    memset(req, 0, sizeof *req);
    req->max_tokens = -1;
    /* Check the encoding first so the client learns the real problem:
     * jansson would call invalid UTF-8 a syntax error. */
    if (!utf8_valid(body, len))
        return BAD(err, NULL, "request body is not valid UTF-8");
    json_error_t jerr;
    json_t *root = jr_load(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return BAD(err, NULL, "malformed JSON in request body: %s (line %d, column %d)", jerr.text,
                   jerr.line, jerr.column);
    req->root = root;
    if (!json_is_object(root)) {
        chat_request_free(req);
        return BAD(err, NULL, "request body must be a JSON object");
    }
    struct chat_owned *own = xcalloc(1, sizeof *own);
    req->owned_ = own;
    if (parse_fields(root, req, err) < 0 || parse_messages(root, req, own, err) < 0) {
        chat_request_free(req);
        return -1;
    }
    return 0;
}

void chat_request_free(struct chat_request *req)
{
    struct chat_owned *own = req->owned_;
    if (own) {
        for (size_t i = 0; i < own->n; i++)
            free(own->bufs[i]);
        free(own->bufs);
        free(own);
    }
    free(req->messages);
    free(req->stop);
    free(req->logit_bias);
    json_decref(req->root);
    memset(req, 0, sizeof *req);
    req->max_tokens = -1;
}

char *openai_error_event(const struct openai_error *e, size_t *out_len)
{
    char *js = openai_error_json(e);
    size_t n = strlen(js);
    char *ev = xmalloc(n + 9);
    memcpy(ev, "data: ", 6);
    memcpy(ev + 6, js, n);
    memcpy(ev + 6 + n, "\n\n", 3);
    free(js);
    *out_len = n + 8;
    return ev;
}

char *openai_error_json(const struct openai_error *e)
{
    json_t *o = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", e->message, "type", e->type,
                          "param", e->param, "code", e->code);
    if (!o) /* a message that is not valid UTF-8 cannot be sent as JSON */
        o = json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message", "invalid error message", "type",
                      e->type, "param", "code");
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

json_t *openai_text_json(const char *s, size_t len)
{
    if (utf8_valid(s, len))
        return json_stringn(s, len);
    char *buf = xmalloc(len * 3 + 1);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = 1;
        while (n <= 4 && i + n <= len && !utf8_valid(s + i, n))
            n++;
        if (n <= 4 && i + n <= len) {
            memcpy(buf + o, s + i, n);
            o += n;
            i += n;
        } else {
            memcpy(buf + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    json_t *j = json_stringn(buf, o);
    free(buf);
    return j;
}


static void jw_usage(struct jsonw *w, const struct openai_usage *u)
{
    jw_lit(w, "{\"prompt_tokens\":");
    jw_int(w, u->prompt_tokens);
    jw_lit(w, ",\"completion_tokens\":");
    jw_int(w, u->completion_tokens);
    jw_lit(w, ",\"total_tokens\":");
    jw_int(w, u->prompt_tokens + u->completion_tokens);
    jw_lit(w, "}");
}

/* "logprobs":{"content":[...]} or "logprobs":null */
static void jw_logprobs(struct jsonw *w, json_t *content)
{
    jw_lit(w, "\"logprobs\":");
    if (!content) {
        jw_lit(w, "null");
        return;
    }
    char *s = json_dumps(content, JSON_COMPACT);
    jw_lit(w, "{\"content\":");
    jw_lit(w, s ? s : "[]");
    jw_lit(w, "}");
    free(s);
}

static void jw_head(struct jsonw *w, const char *id, const char *object, int64_t created, const char *model)
{
    jw_lit(w, "{\"id\":");
    jw_cstr(w, id);
    jw_lit(w, ",\"object\":\"");
    jw_lit(w, object);
    jw_lit(w, "\",\"created\":");
    jw_int(w, created);
    jw_lit(w, ",\"model\":");
    jw_cstr(w, model);
}

/* ,"key":value for each field of o whose key is not in skip (NULL-ended);
 * *first says whether a comma is due. Values are written as jansson
 * serializes them: they came from JSON and go back as JSON. */
static void jw_fields(struct jsonw *w, json_t *o, const char *const *skip, int *first)
{
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        int skipped = 0;
        for (size_t i = 0; skip[i] && !skipped; i++)
            skipped = strcmp(key, skip[i]) == 0;
        if (skipped)
            continue;
        char *js = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!js)
            continue;
        if (!*first)
            jw_lit(w, ",");
        *first = 0;
        jw_cstr(w, key);
        jw_lit(w, ":");
        jw_lit(w, js);
        free(js);
    }
}

static const char *const message_own[] = {"role", "content", NULL};
static const char *const object_own[] = {"id", "object", "created", "model", "choices", "usage", NULL};

static int has_tool_calls(json_t *extra)
{
    json_t *tc = json_object_get(extra, "tool_calls");
    return json_is_array(tc) && json_array_size(tc) > 0;
}

/* These writers run for every response and every stream chunk, so they write
 * the text directly (jsonw.h) instead of building a jansson tree. */
char *openai_chat_response(const char *id, int64_t created, const char *model, const char *content, size_t len,
                           const char *finish_reason, const struct openai_usage *usage, json_t *logprobs_content,
                           json_t *extra, json_t *meta)
{
    struct jsonw w;
    jw_init(&w, 256 + len + len / 8);
    jw_head(&w, id, "chat.completion", created, model);
    jw_lit(&w, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    if (len == 0 && has_tool_calls(extra))
        jw_lit(&w, "null");
    else
        jw_str(&w, content, len);
    if (!json_object_get(extra, "refusal"))
        jw_lit(&w, ",\"refusal\":null");
    int first = 0;
    if (json_is_object(extra))
        jw_fields(&w, extra, message_own, &first);
    jw_lit(&w, "},");
    jw_logprobs(&w, logprobs_content);
    jw_lit(&w, ",\"finish_reason\":");
    jw_cstr(&w, finish_reason);
    jw_lit(&w, "}],\"usage\":");
    jw_usage(&w, usage);
    if (json_is_object(meta))
        jw_fields(&w, meta, object_own, &first);
    jw_lit(&w, "}");
    return jw_take(&w, NULL);
}

char *openai_chat_chunk_event(const char *id, int64_t created, const char *model, const char *role,
                              const char *content, size_t len, json_t *logprobs_content,
                              const char *finish_reason, json_t *extra, json_t *meta, size_t *out_len)
{
    struct jsonw w;
    jw_init(&w, 224 + len + len / 8);
    jw_lit(&w, "data: ");
    jw_head(&w, id, "chat.completion.chunk", created, model);
    int first = 0;
    if (json_is_object(meta))
        jw_fields(&w, meta, object_own, &first);
    jw_lit(&w, ",\"choices\":[{\"index\":0,\"delta\":{");
    first = 1;
    if (role) {
        jw_lit(&w, "\"role\":");
        jw_cstr(&w, role);
        first = 0;
    }
    if (content) {
        jw_lit(&w, first ? "\"content\":" : ",\"content\":");
        jw_str(&w, content, len);
        first = 0;
    }
    if (json_is_object(extra))
        jw_fields(&w, extra, message_own, &first);
    jw_lit(&w, "},");
    jw_logprobs(&w, logprobs_content);
    jw_lit(&w, ",\"finish_reason\":");
    jw_cstr(&w, finish_reason);
    jw_lit(&w, "}]}\n\n");
    return jw_take(&w, out_len);
}

char *openai_chat_usage_event(const char *id, int64_t created, const char *model,
                              const struct openai_usage *usage, json_t *meta, size_t *out_len)
{
    struct jsonw w;
    jw_init(&w, 256);
    jw_lit(&w, "data: ");
    jw_head(&w, id, "chat.completion.chunk", created, model);
    int first = 0;
    if (json_is_object(meta))
        jw_fields(&w, meta, object_own, &first);
    jw_lit(&w, ",\"choices\":[],\"usage\":");
    jw_usage(&w, usage);
    jw_lit(&w, "}\n\n");
    return jw_take(&w, out_len);
}

static json_t *bytes_json(const char *s, size_t len)
{
    json_t *a = json_array();
    for (size_t i = 0; i < len; i++)
        json_array_append_new(a, json_integer((unsigned char)s[i]));
    return a;
}

json_t *openai_logprob_entry(const char *token, size_t len, double logprob, const char *const *top_tokens,
                             const double *top_logprobs, size_t n_top)
{
    json_t *top = json_array();
    for (size_t i = 0; i < n_top; i++) {
        size_t tl = strlen(top_tokens[i]);
        json_array_append_new(top, json_pack("{s:o, s:f, s:o}", "token", openai_text_json(top_tokens[i], tl),
                                             "logprob", top_logprobs[i], "bytes",
                                             bytes_json(top_tokens[i], tl)));
    }
    return json_pack("{s:o, s:f, s:o, s:o}", "token", openai_text_json(token, len), "logprob",
                     isfinite(logprob) ? logprob : -9999.0, "bytes", bytes_json(token, len),
                     "top_logprobs", top);
}

/* ---- accumulating a streamed message ------------------------------------ */

/* Append s to the string at o[key] (or set it). */
static void append_string(json_t *o, const char *key, json_t *s)
{
    json_t *cur = json_object_get(o, key);
    if (!json_is_string(cur)) {
        json_object_set(o, key, s);
        return;
    }
    size_t a = json_string_length(cur), b = json_string_length(s);
    char *buf = xmalloc(a + b + 1);
    memcpy(buf, json_string_value(cur), a);
    memcpy(buf + a, json_string_value(s), b);
    json_object_set_new(o, key, json_stringn(buf, a + b));
    free(buf);
}

/* One tool_calls entry of a delta into its accumulated call. */
static int merge_tool_call(json_t *call, json_t *frag)
{
    const char *key;
    json_t *v;
    json_object_foreach(frag, key, v) {
        if (strcmp(key, "index") == 0)
            continue;
        if (strcmp(key, "function") != 0) {
            json_object_set(call, key, v);
            continue;
        }
        if (!json_is_object(v))
            return -1;
        json_t *fn = json_object_get(call, "function");
        if (!fn) {
            fn = json_object();
            json_object_set_new(call, "function", fn);
        }
        const char *fk;
        json_t *fv;
        json_object_foreach(v, fk, fv) {
            if (strcmp(fk, "arguments") == 0 && json_is_string(fv))
                append_string(fn, fk, fv);
            else if (strcmp(fk, "name") == 0 && json_is_string(fv) && json_object_get(fn, "name"))
                continue; /* given once; a repeat is not a continuation */
            else
                json_object_set(fn, fk, fv);
        }
    }
    return 0;
}

static int merge_tool_calls(json_t *acc, json_t *frags)
{
    if (!json_is_array(frags))
        return -1;
    json_t *calls = json_object_get(acc, "tool_calls");
    if (!json_is_array(calls)) {
        calls = json_array();
        json_object_set_new(acc, "tool_calls", calls);
    }
    size_t i;
    json_t *f;
    json_array_foreach(frags, i, f) {
        if (!json_is_object(f))
            return -1;
        json_t *idx = json_object_get(f, "index");
        size_t at;
        if (!idx) {
            at = json_array_size(calls);
        } else if (json_is_integer(idx) && json_integer_value(idx) >= 0 &&
                   json_integer_value(idx) < OPENAI_MAX_TOOL_CALLS) {
            at = (size_t)json_integer_value(idx);
        } else {
            return -1;
        }
        if (at >= OPENAI_MAX_TOOL_CALLS)
            return -1;
        while (json_array_size(calls) <= at)
            json_array_append_new(calls, json_object());
        if (merge_tool_call(json_array_get(calls, at), f) < 0)
            return -1;
    }
    return 0;
}

int openai_delta_merge(json_t *acc, json_t *delta)
{
    if (!json_is_object(acc) || !json_is_object(delta))
        return -1;
    const char *key;
    json_t *v;
    json_object_foreach(delta, key, v) {
        if (strcmp(key, "role") == 0 || strcmp(key, "content") == 0)
            continue;
        if (strcmp(key, "tool_calls") == 0) {
            if (json_is_null(v))
                continue;
            if (merge_tool_calls(acc, v) < 0)
                return -1;
        } else if (json_is_string(v)) {
            append_string(acc, key, v);
        } else if (!json_is_null(v) || !json_object_get(acc, key)) {
            /* A later null (reasoning_content: null beside content) does
             * not erase what came before. */
            json_object_set(acc, key, v);
        }
    }
    return 0;
}

json_t *openai_message_deltas(json_t *extra)
{
    json_t *out = json_array();
    if (!json_is_object(extra))
        return out;
    json_t *rest = json_object();
    const char *key;
    json_t *v;
    json_object_foreach(extra, key, v) {
        if (strcmp(key, "tool_calls") != 0)
            json_object_set(rest, key, v);
    }
    if (json_object_size(rest))
        json_array_append(out, rest);
    json_decref(rest);
    json_t *calls = json_object_get(extra, "tool_calls");
    size_t i;
    json_t *call;
    json_array_foreach(calls, i, call) {
        json_t *c = json_copy(call);
        if (!json_is_object(c)) {
            json_decref(c);
            continue;
        }
        json_object_set_new(c, "index", json_integer((json_int_t)i));
        json_array_append_new(out, json_pack("{s:[o]}", "tool_calls", c));
    }
    return out;
}
