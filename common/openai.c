#include "common/openai.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int parse_content(json_t *msg, size_t i, struct chat_message *m, struct chat_owned *own,
                         struct openai_error *err)
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
        return BAD(err, "messages", "messages[%zu].content must be a string or an array of text parts", i);
    /* Text parts are joined with a newline, as vLLM does for the same input. */
    size_t total = 0, idx;
    json_t *part;
    json_array_foreach(c, idx, part) {
        json_t *type = json_object_get(part, "type");
        json_t *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type))
            return BAD(err, "messages", "messages[%zu].content[%zu] must be an object with a type", i, idx);
        if (strcmp(json_string_value(type), "text") != 0)
            return BAD(err, "messages", "messages[%zu].content[%zu]: unsupported content part type '%s'",
                       i, idx, json_string_value(type));
        if (!json_is_string(text))
            return BAD(err, "messages", "messages[%zu].content[%zu].text must be a string", i, idx);
        total += json_string_length(text) + 1;
    }
    char *buf = xmalloc(total + 1), *p = buf;
    json_array_foreach(c, idx, part) {
        json_t *text = json_object_get(part, "text");
        if (idx)
            *p++ = '\n';
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
        if (parse_content(msg, i, m, own, err) < 0)
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
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
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

/* These writers run for every response and every stream chunk, so they write
 * the text directly (jsonw.h) instead of building a jansson tree. */
char *openai_chat_response(const char *id, int64_t created, const char *model, const char *content, size_t len,
                           const char *finish_reason, const struct openai_usage *usage, json_t *logprobs_content)
{
    struct jsonw w;
    jw_init(&w, 256 + len + len / 8);
    jw_head(&w, id, "chat.completion", created, model);
    jw_lit(&w, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    jw_str(&w, content, len);
    jw_lit(&w, ",\"refusal\":null},");
    jw_logprobs(&w, logprobs_content);
    jw_lit(&w, ",\"finish_reason\":");
    jw_cstr(&w, finish_reason);
    jw_lit(&w, "}],\"usage\":");
    jw_usage(&w, usage);
    jw_lit(&w, "}");
    return jw_take(&w, NULL);
}

char *openai_chat_chunk_event(const char *id, int64_t created, const char *model, const char *role,
                              const char *content, size_t len, json_t *logprobs_content,
                              const char *finish_reason, size_t *out_len)
{
    struct jsonw w;
    jw_init(&w, 224 + len + len / 8);
    jw_lit(&w, "data: ");
    jw_head(&w, id, "chat.completion.chunk", created, model);
    jw_lit(&w, ",\"choices\":[{\"index\":0,\"delta\":{");
    if (role) {
        jw_lit(&w, "\"role\":");
        jw_cstr(&w, role);
    }
    if (content) {
        jw_lit(&w, role ? ",\"content\":" : "\"content\":");
        jw_str(&w, content, len);
    }
    jw_lit(&w, "},");
    jw_logprobs(&w, logprobs_content);
    jw_lit(&w, ",\"finish_reason\":");
    jw_cstr(&w, finish_reason);
    jw_lit(&w, "}]}\n\n");
    return jw_take(&w, out_len);
}

char *openai_chat_usage_event(const char *id, int64_t created, const char *model,
                              const struct openai_usage *usage, size_t *out_len)
{
    struct jsonw w;
    jw_init(&w, 256);
    jw_lit(&w, "data: ");
    jw_head(&w, id, "chat.completion.chunk", created, model);
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
