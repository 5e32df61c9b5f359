/* embeddings.c: see embeddings.h. */
#include "common/embeddings.h"

#include <stdlib.h>
#include <string.h>

#include "common/mem.h"
#include "common/utf8.h"

#define BAD(e, param, ...) \
    (openai_error_set((e), 400, "invalid_request_error", NULL, (param), __VA_ARGS__), -1)

/* Absent and null both mean "not given". */
static json_t *opt(json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);
    return json_is_null(v) ? NULL : v;
}

/* A token id as OpenAI's tokenizers number them: a JSON integer (1.0 is a
 * real, not an id) that fits an int32 and is not negative. */
static int is_token_id(json_t *v)
{
    return json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= INT32_MAX;
}

/* An array of token ids, every one checked; index is the input's position
 * in the outer array, or -1 when the array is the whole input. 0, or -1. */
static int check_ids(json_t *arr, long index, struct openai_error *err)
{
    size_t n = json_array_size(arr), i;
    if (n == 0)
        return index < 0 ? BAD(err, "input", "'input' must not be an empty array")
                         : BAD(err, "input", "input[%ld] must not be an empty array of token ids", index);
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (is_token_id(v))
            continue;
        if (index < 0)
            return BAD(err, "input", "input[%zu] must be a token id (an integer from 0 to 2147483647)", i);
        return BAD(err, "input", "input[%ld][%zu] must be a token id (an integer from 0 to 2147483647)", index, i);
    }
    return 0;
}

/* One text input; empty strings are refused, as OpenAI does: an empty
 * text has no embedding. jansson has checked that it is valid UTF-8. */
static int text_input(json_t *s, long index, struct embeddings_input *in, struct embeddings_request *req,
                      struct openai_error *err)
{
    in->text = json_string_value(s);
    in->len = json_string_length(s);
    if (in->len == 0)
        return index < 0 ? BAD(err, "input", "'input' must not be an empty string")
                         : BAD(err, "input", "input[%ld] must not be an empty string", index);
    req->text_bytes += in->len;
    return 0;
}

/* The four shapes of `input` (embeddings.h), told apart by the first
 * element of an array; every other element must have its shape. */
static int parse_input(json_t *input, struct embeddings_request *req, struct openai_error *err)
{
    static const char shapes[] =
        "'input' must be a string, an array of strings, an array of token ids, or an array of token-id arrays";
    if (!input)
        return BAD(err, "input", "you must provide an input ('input' is required)");
    if (json_is_string(input)) {
        req->inputs = xcalloc(1, sizeof *req->inputs);
        req->n_inputs = 1;
        return text_input(input, -1, &req->inputs[0], req, err);
    }
    if (!json_is_array(input))
        return BAD(err, "input", "%s", shapes);
    size_t n = json_array_size(input);
    if (n == 0)
        return BAD(err, "input", "'input' must not be an empty array");
    json_t *first = json_array_get(input, 0);
    if (json_is_integer(first)) {
        /* One input given as token ids. */
        if (check_ids(input, -1, err) < 0)
            return -1;
        req->inputs = xcalloc(1, sizeof *req->inputs);
        req->n_inputs = 1;
        req->token_input = 1;
        req->inputs[0].n_ids = n;
        req->n_ids = n;
        return 0;
    }
    if (!json_is_string(first) && !json_is_array(first))
        return BAD(err, "input", "%s", shapes);
    if (n > EMBEDDINGS_MAX_INPUTS)
        return BAD(err, "input", "'input' holds %zu inputs; at most %d are allowed per request", n,
                   EMBEDDINGS_MAX_INPUTS);
    req->token_input = json_is_array(first);
    req->inputs = xcalloc(n, sizeof *req->inputs);
    req->n_inputs = n;
    size_t i;
    json_t *v;
    json_array_foreach(input, i, v) {
        struct embeddings_input *in = &req->inputs[i];
        if (!req->token_input) {
            if (!json_is_string(v))
                return BAD(err, "input", "input[%zu] must be a string, as input[0] is", i);
            if (text_input(v, (long)i, in, req, err) < 0)
                return -1;
            continue;
        }
        if (!json_is_array(v))
            return BAD(err, "input", "input[%zu] must be an array of token ids, as input[0] is", i);
        if (check_ids(v, (long)i, err) < 0)
            return -1;
        in->n_ids = json_array_size(v);
        req->n_ids += in->n_ids;
    }
    return 0;
}

static int parse_fields(json_t *root, struct embeddings_request *req, struct openai_error *err)
{
    json_t *model = opt(root, "model");
    if (!model)
        return BAD(err, "model", "you must provide a model parameter");
    if (!json_is_string(model) || json_string_length(model) == 0)
        return BAD(err, "model", "'model' must be a non-empty string");
    req->model = json_string_value(model);

    json_t *enc = opt(root, "encoding_format");
    if (enc) {
        const char *s = json_is_string(enc) ? json_string_value(enc) : "";
        if (strcmp(s, "float") == 0)
            req->encoding = EMBEDDINGS_FLOAT;
        else if (strcmp(s, "base64") == 0)
            req->encoding = EMBEDDINGS_BASE64;
        else
            return BAD(err, "encoding_format", "'encoding_format' must be 'float' or 'base64'");
    }
    json_t *dim = opt(root, "dimensions");
    if (dim) {
        if (!json_is_integer(dim) || json_integer_value(dim) < 1 ||
            json_integer_value(dim) > EMBEDDINGS_MAX_DIMENSIONS)
            return BAD(err, "dimensions", "'dimensions' must be an integer from 1 to %d", EMBEDDINGS_MAX_DIMENSIONS);
        req->dimensions = json_integer_value(dim);
    }
    json_t *user = opt(root, "user");
    if (user) {
        if (!json_is_string(user))
            return BAD(err, "user", "'user' must be a string");
        req->user = json_string_value(user);
    }
    return parse_input(opt(root, "input"), req, err);
}

int embeddings_request_parse(const char *body, size_t len, struct embeddings_request *req,
                             struct openai_error *err)
{
    memset(req, 0, sizeof *req);
    /* The encoding first, so the client learns the real problem: jansson
     * would call invalid UTF-8 a syntax error. */
    if (!utf8_valid(body, len))
        return BAD(err, NULL, "request body is not valid UTF-8");
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return BAD(err, NULL, "malformed JSON in request body: %s (line %d, column %d)", jerr.text, jerr.line,
                   jerr.column);
    req->root = root;
    if (!json_is_object(root)) {
        embeddings_request_free(req);
        return BAD(err, NULL, "request body must be a JSON object");
    }
    if (parse_fields(root, req, err) < 0) {
        embeddings_request_free(req);
        return -1;
    }
    return 0;
}

void embeddings_request_free(struct embeddings_request *req)
{
    free(req->inputs);
    json_decref(req->root);
    memset(req, 0, sizeof *req);
}

/* ---- the answer --------------------------------------------------------- */

/* The scanners below walk JSON text that jansson has already accepted, so
 * they need not validate: they only find where values begin and end. Each
 * stops at n whatever the bytes say. */

static size_t skip_ws(const char *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* s[i] is the opening quote; returns the index past the closing one. */
static size_t skip_string(const char *s, size_t i, size_t n)
{
    for (i++; i < n && s[i] != '"'; i++)
        if (s[i] == '\\')
            i++; /* the escaped character, whatever it is */
    return i < n ? i + 1 : n;
}

/* One value from s[i]: a string, an object or array (brackets counted
 * outside strings), or a scalar (up to the next delimiter). */
static size_t skip_value(const char *s, size_t i, size_t n)
{
    if (i >= n)
        return n;
    if (s[i] == '"')
        return skip_string(s, i, n);
    if (s[i] != '{' && s[i] != '[') {
        while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' &&
               s[i] != '\r')
            i++;
        return i;
    }
    size_t depth = 0;
    while (i < n) {
        char c = s[i];
        if (c == '"') {
            i = skip_string(s, i, n);
            continue;
        }
        if (c == '{' || c == '[')
            depth++;
        else if ((c == '}' || c == ']') && --depth == 0)
            return i + 1;
        i++;
    }
    return n;
}

/* Where the top-level "model" value lies in the text of an object, spelled
 * plainly (no escapes in the key): [*vs, *ve). 1 when found, 0 when the
 * object has no such member, -1 when the text is not as expected. */
static int find_model(const char *s, size_t n, size_t *open, size_t *vs, size_t *ve)
{
    size_t i = skip_ws(s, 0, n);
    if (i >= n || s[i] != '{')
        return -1;
    *open = i++;
    i = skip_ws(s, i, n);
    while (i < n && s[i] == '"') {
        size_t ks = i;
        i = skip_string(s, i, n);
        int is_model = i - ks == 7 && memcmp(s + ks, "\"model\"", 7) == 0;
        i = skip_ws(s, i, n);
        if (i >= n || s[i] != ':')
            return -1;
        i = skip_ws(s, i + 1, n);
        size_t v = i;
        i = skip_value(s, i, n);
        if (is_model) {
            *vs = v;
            *ve = i;
            return 1;
        }
        i = skip_ws(s, i, n);
        if (i < n && s[i] == ',')
            i = skip_ws(s, i + 1, n);
    }
    return i < n && s[i] == '}' ? 0 : -1;
}

char *embeddings_answer_relay(const char *body, size_t len, const char *model, size_t *out_len,
                              int64_t *prompt_tokens)
{
    *out_len = 0;
    *prompt_tokens = 0;
    /* A NUL byte is never valid JSON outside a string (jansson lets one
     * pass between tokens), and the bytes go to the client as they are. */
    if (memchr(body, '\0', len))
        return NULL;
    /* Duplicate keys refused: the text then has one "model" at most. */
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    char *out = NULL, *name = NULL;
    if (!json_is_object(o) || !json_is_array(json_object_get(o, "data")) ||
        !json_is_object(json_object_get(o, "usage")))
        goto out;
    /* A count an upstream reports is outside input: an integer that a
     * double holds exactly, and not negative, or none. */
    json_t *pt = json_object_get(json_object_get(o, "usage"), "prompt_tokens");
    if (json_is_integer(pt) && json_integer_value(pt) >= 0 && json_integer_value(pt) < ((json_int_t)1 << 53))
        *prompt_tokens = (int64_t)json_integer_value(pt);
    json_t *m = json_string(model);
    name = m ? json_dumps(m, JSON_ENCODE_ANY) : NULL;
    json_decref(m);
    if (!name)
        goto out;
    size_t nlen = strlen(name), open = 0, vs = 0, ve = 0;
    int found = find_model(body, len, &open, &vs, &ve);
    if (found < 0 || (found == 0 && json_object_get(o, "model"))) {
        /* Not plainly spelled (an escaped key): print it anew, the one
         * case that re-prints the numbers. */
        json_object_set_new(o, "model", json_string(model));
        out = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        *out_len = out ? strlen(out) : 0;
        goto out;
    }
    if (found) {
        /* before the old value, the new one, after it */
        *out_len = vs + nlen + (len - ve);
        out = xmalloc(*out_len + 1);
        memcpy(out, body, vs);
        memcpy(out + vs, name, nlen);
        memcpy(out + vs + nlen, body + ve, len - ve);
    } else {
        /* {"model":<name>, then the members as sent (there are some: data
         * and usage) */
        static const char key[] = "\"model\":";
        size_t kl = sizeof key - 1;
        *out_len = (open + 1) + kl + nlen + 1 + (len - open - 1);
        out = xmalloc(*out_len + 1);
        char *p = out;
        memcpy(p, body, open + 1);
        p += open + 1;
        memcpy(p, key, kl);
        p += kl;
        memcpy(p, name, nlen);
        p += nlen;
        *p++ = ',';
        memcpy(p, body + open + 1, len - open - 1);
    }
    out[*out_len] = '\0';
out:
    free(name);
    json_decref(o);
    return out;
}
